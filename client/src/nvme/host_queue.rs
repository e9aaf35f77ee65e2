//! One queue on the host side, as a sans-IO state machine: connection initialization,
//! command identifiers, in-capsule data or R2T-driven H2CData for data the host sends,
//! reassembly of C2HData (several PDUs per command, SUCCESS flag), and checks of everything the
//! controller sends. Generic over the responder `R` the driver attaches to each command.

use std::collections::HashMap;
use std::sync::Arc;

use scalio_common::nvme::command::opcode;
use scalio_common::nvme::pdu::{self, C2HData, Digests, Fes, IcReq, Pdu, R2t, TxParams};
use scalio_common::nvme::sqe::{Cqe, Sgl, Sqe};
use scalio_common::nvme::stream::{decode_initial, FatalError, PduDecoder, PduError, Role, RxParams};

use super::error::NvmeError;

/// In-capsule data a host may always send on the admin queue and with Fabrics commands.
pub const ADMIN_IN_CAPSULE: u32 = 8192;

/// The result of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub cqe: Cqe,
    /// Data the controller sent (C2HData), if the command reads.
    pub data: Vec<u8>,
}

/// What a queue negotiated with ICReq/ICResp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    pub tx: TxParams,
    pub rx: RxParams,
    pub maxh2cdata: u32,
}

/// The ICReq a host sends first.
pub fn ic_request(digests: Digests, hpda: u8) -> IcReq {
    // MAXR2T 0: one R2T outstanding per command, as Linux hosts announce.
    IcReq { pfv: 0, hpda, digests, maxr2t: 0 }
}

/// Checks the controller's ICResp against the ICReq. `max_c2h_data` bounds the data a C2HData
/// PDU may carry (the largest transfer the host will ask for).
pub fn negotiate(req: &IcReq, resp_bytes: &[u8], max_c2h_data: u32) -> Result<Negotiated, NvmeError> {
    let resp = match decode_initial(Role::Host, resp_bytes) {
        Ok(Some((d, _))) => match d.pdu {
            Pdu::IcResp(r) => r,
            _ => return Err(NvmeError::Protocol("expected ICResp".into())),
        },
        Ok(None) => return Err(NvmeError::Protocol("short ICResp".into())),
        Err(PduError::Fatal(e)) => return Err(NvmeError::Fatal(e)),
        Err(e) => return Err(NvmeError::Protocol(e.to_string())),
    };
    if (resp.digests.header && !req.digests.header) || (resp.digests.data && !req.digests.data) {
        return Err(NvmeError::Fatal(FatalError::new(
            Fes::UnsupportedParameter,
            11,
            "controller enabled a digest the host did not ask for",
            resp_bytes,
        )));
    }
    Ok(Negotiated {
        tx: TxParams { digests: resp.digests, pda: resp.cpda },
        rx: RxParams { digests: resp.digests, pda: req.hpda, max_capsule_data: 0, max_h2c_data: 0, max_c2h_data },
        maxh2cdata: resp.maxh2cdata,
    })
}

struct Pending<R> {
    /// `None` once the caller stopped waiting (timeout); the CID stays reserved until the
    /// controller answers.
    responder: Option<R>,
    /// Expected data from the controller and how much arrived (in order).
    data_in: Vec<u8>,
    received: usize,
    /// Data for the controller that waits for R2Ts, and how much was asked for so far.
    data_out: Option<Arc<[u8]>>,
    requested: usize,
    digest_error: bool,
}

/// A queue's failure: the error for every waiting command, and a termination request to send
/// before closing if the controller broke the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueFailure {
    pub error: NvmeError,
    pub term_req: Option<Vec<u8>>,
}

/// A finished command for the driver to report.
pub type Finished<R> = (R, Result<Completion, NvmeError>);

pub struct HostQueue<R> {
    qid: u16,
    decoder: PduDecoder,
    tx: TxParams,
    maxh2cdata: u32,
    io_in_capsule: u32,
    /// Whether the controller reports SQ heads (then C2HData SUCCESS is not allowed).
    sq_flow_control: bool,
    pending: HashMap<u16, Pending<R>>,
    next_cid: u16,
    failed: bool,
}

impl<R> HostQueue<R> {
    pub fn new(qid: u16, negotiated: Negotiated) -> HostQueue<R> {
        HostQueue {
            qid,
            decoder: PduDecoder::established(Role::Host, negotiated.rx),
            tx: negotiated.tx,
            maxh2cdata: negotiated.maxh2cdata,
            io_in_capsule: 0,
            sq_flow_control: true,
            pending: HashMap::new(),
            next_cid: 0,
            failed: false,
        }
    }

    pub fn qid(&self) -> u16 {
        self.qid
    }

    /// In-capsule data allowed for I/O commands (from the controller's IOCCSZ).
    pub fn set_io_in_capsule(&mut self, bytes: u32) {
        self.io_in_capsule = bytes;
    }

    /// Records whether the controller disabled SQ flow control (Connect response SQHD 0xFFFF).
    pub fn set_sq_flow_control(&mut self, enabled: bool) {
        self.sq_flow_control = enabled;
    }

    /// Commands the controller has not answered (including abandoned ones).
    pub fn outstanding(&self) -> usize {
        self.pending.len()
    }

    pub fn is_failed(&self) -> bool {
        self.failed
    }

    fn alloc_cid(&mut self) -> Option<u16> {
        for _ in 0..=u16::MAX {
            let cid = self.next_cid;
            self.next_cid = self.next_cid.wrapping_add(1);
            if cid != 0xFFFF && !self.pending.contains_key(&cid) {
                return Some(cid);
            }
        }
        None
    }

    /// Submits a command: encodes its capsule (with in-capsule data when it fits) into `out`.
    /// `data_in` is the length of data the command reads. Returns the CID.
    pub fn submit(
        &mut self,
        mut sqe: Sqe,
        data_out: Option<Arc<[u8]>>,
        data_in: u32,
        responder: R,
        out: &mut Vec<u8>,
    ) -> Result<u16, (R, NvmeError)> {
        if self.failed {
            return Err((responder, NvmeError::Disconnected));
        }
        if data_out.as_ref().is_some_and(|d| !d.is_empty()) && data_in > 0 {
            return Err((responder, NvmeError::InvalidArgument("bidirectional commands are not supported".into())));
        }
        let Some(cid) = self.alloc_cid() else {
            return Err((responder, NvmeError::Protocol("no free command identifier".into())));
        };
        sqe.set_cid(cid);
        let in_capsule_limit =
            if self.qid == 0 || sqe.opcode() == opcode::FABRICS { ADMIN_IN_CAPSULE } else { self.io_in_capsule };
        let mut pending = Pending {
            responder: Some(responder),
            data_in: vec![0u8; data_in as usize],
            received: 0,
            data_out: None,
            requested: 0,
            digest_error: false,
        };
        match data_out {
            Some(d) if !d.is_empty() && d.len() as u64 <= u64::from(in_capsule_limit) => {
                sqe.set_sgl(Sgl::in_capsule(0, d.len() as u32));
                pdu::encode_capsule_cmd(&sqe, &d, &self.tx, out);
            }
            Some(d) if !d.is_empty() => {
                sqe.set_sgl(Sgl::transport(d.len() as u32));
                pdu::encode_capsule_cmd(&sqe, &[], &self.tx, out);
                pending.data_out = Some(d);
            }
            _ => {
                sqe.set_sgl(Sgl::transport(data_in));
                pdu::encode_capsule_cmd(&sqe, &[], &self.tx, out);
            }
        }
        self.pending.insert(cid, pending);
        Ok(cid)
    }

    /// The caller gave up waiting for `cid`: returns its responder; the CID stays in use until
    /// the controller completes the command.
    pub fn abandon(&mut self, cid: u16) -> Option<R> {
        self.pending.get_mut(&cid).and_then(|p| p.responder.take())
    }

    /// Fails every waiting command (the connection is gone).
    pub fn fail_all(&mut self, error: &NvmeError) -> Vec<Finished<R>> {
        self.failed = true;
        self.pending.drain().filter_map(|(_, p)| p.responder.map(|r| (r, Err(error.clone())))).collect()
    }

    /// Bytes from the controller: finished commands go to `done`, PDUs to send (H2CData) to
    /// `out`. An error means the queue is unusable; every waiting command has been failed.
    pub fn receive(
        &mut self,
        bytes: &[u8],
        out: &mut Vec<u8>,
        done: &mut Vec<Finished<R>>,
    ) -> Result<(), QueueFailure> {
        if self.failed {
            return Err(QueueFailure { error: NvmeError::Disconnected, term_req: None });
        }
        self.decoder.feed(bytes);
        loop {
            let step = match self.decoder.next_pdu() {
                Ok(Some(d)) => self.on_pdu(d.pdu, d.data_digest_ok, out, done),
                Ok(None) => return Ok(()),
                Err(PduError::Fatal(e)) => Err(self.fatal(e)),
                Err(e) => Err(QueueFailure { error: NvmeError::Protocol(e.to_string()), term_req: None }),
            };
            if let Err(f) = step {
                done.extend(self.fail_all(&f.error));
                return Err(f);
            }
        }
    }

    fn fatal(&self, e: FatalError) -> QueueFailure {
        QueueFailure { term_req: Some(e.term_req(Role::Host)), error: NvmeError::Fatal(e) }
    }

    fn fatal_for(&self, p: &Pdu, fes: Fes, fei: u32, reason: &'static str) -> QueueFailure {
        let mut header = p.to_vec(&self.tx);
        header.truncate(pdu::DATA_HLEN);
        self.fatal(FatalError::new(fes, fei, reason, &header))
    }

    fn on_pdu(
        &mut self,
        p: Pdu,
        digest_ok: bool,
        out: &mut Vec<u8>,
        done: &mut Vec<Finished<R>>,
    ) -> Result<(), QueueFailure> {
        match p {
            Pdu::CapsuleResp(r) => self.on_response(r.cqe, done),
            Pdu::C2HData(d) => {
                if d.success && self.sq_flow_control {
                    let p = Pdu::C2HData(d);
                    return Err(self.fatal_for(
                        &p,
                        Fes::InvalidHeaderField,
                        1,
                        "SUCCESS flag while SQ flow control is on",
                    ));
                }
                self.on_data(d, digest_ok, done)
            }
            Pdu::R2t(r) => self.on_r2t(r, out),
            Pdu::C2HTermReq(t) => Err(QueueFailure {
                error: NvmeError::Terminated {
                    fes: t.fes,
                    name: Fes::from_u16(t.fes).map_or("unknown", |f| f.name()),
                    fei: t.fei,
                },
                term_req: None,
            }),
            _ => Err(QueueFailure { error: NvmeError::Protocol("unexpected PDU".into()), term_req: None }),
        }
    }

    fn on_response(&mut self, cqe: Cqe, done: &mut Vec<Finished<R>>) -> Result<(), QueueFailure> {
        let Some(p) = self.pending.remove(&cqe.cid) else {
            return Err(QueueFailure {
                error: NvmeError::Protocol(format!("response for command {} that is not outstanding", cqe.cid)),
                term_req: None,
            });
        };
        let Some(r) = p.responder else { return Ok(()) };
        let result = if !cqe.status.is_success() {
            // The command failed: data that arrived is meaningless.
            Ok(Completion { cqe, data: Vec::new() })
        } else if p.digest_error {
            Err(NvmeError::DataDigest { cid: cqe.cid })
        } else if p.received != p.data_in.len() {
            Err(NvmeError::Protocol(format!(
                "command {} completed with {} of {} data bytes",
                cqe.cid,
                p.received,
                p.data_in.len()
            )))
        } else {
            Ok(Completion { cqe, data: p.data_in })
        };
        done.push((r, result));
        Ok(())
    }

    fn on_data(&mut self, d: C2HData, digest_ok: bool, done: &mut Vec<Finished<R>>) -> Result<(), QueueFailure> {
        let (fes, fei, reason) = match self.pending.get_mut(&d.cccid) {
            None => (Fes::InvalidHeaderField, 8, "C2HData for a command that is not outstanding"),
            Some(p) if p.data_in.is_empty() => (Fes::InvalidHeaderField, 8, "C2HData for a command that reads nothing"),
            Some(p) => {
                let at = d.datao as usize;
                let end = at as u64 + d.data.len() as u64;
                if end > p.data_in.len() as u64 {
                    (Fes::DataTransferOutOfRange, 0, "C2HData beyond the command's data")
                } else if at != p.received {
                    (Fes::PduSequenceError, 0, "C2HData out of order")
                } else if (end == p.data_in.len() as u64) != d.last {
                    (Fes::PduSequenceError, 0, "LAST_PDU flag does not match the end of the data")
                } else {
                    p.data_in[at..end as usize].copy_from_slice(&d.data);
                    p.received = end as usize;
                    p.digest_error |= !digest_ok;
                    if d.success {
                        let cid = d.cccid;
                        if let Some(p) = self.pending.remove(&cid) {
                            if let Some(r) = p.responder {
                                let cqe = Cqe { cid, sqhd: 0xFFFF, sqid: self.qid, ..Cqe::default() };
                                let result = if p.digest_error {
                                    Err(NvmeError::DataDigest { cid })
                                } else {
                                    Ok(Completion { cqe, data: p.data_in })
                                };
                                done.push((r, result));
                            }
                        }
                    }
                    return Ok(());
                }
            }
        };
        Err(self.fatal_for(&Pdu::C2HData(d), fes, fei, reason))
    }

    fn on_r2t(&mut self, r: R2t, out: &mut Vec<u8>) -> Result<(), QueueFailure> {
        let tx = self.tx;
        let maxh2cdata = self.maxh2cdata.max(pdu::MIN_MAXH2CDATA) as usize;
        let problem = match self.pending.get_mut(&r.cccid) {
            Some(Pending { data_out: Some(data), requested, .. }) => {
                let start = r.r2to as usize;
                let end = start as u64 + u64::from(r.r2tl);
                if r.r2tl == 0 {
                    Some((Fes::InvalidHeaderField, 16, "R2T for no data"))
                } else if end > data.len() as u64 {
                    Some((Fes::DataTransferOutOfRange, 0, "R2T beyond the command's data"))
                } else if start != *requested {
                    Some((Fes::PduSequenceError, 0, "R2T out of order"))
                } else {
                    *requested = end as usize;
                    let mut at = start;
                    while at < end as usize {
                        let n = (end as usize - at).min(maxh2cdata);
                        let last = at + n == end as usize;
                        pdu::encode_h2c_data(r.cccid, r.ttag, at as u32, &data[at..at + n], last, &tx, out);
                        at += n;
                    }
                    None
                }
            }
            _ => Some((Fes::InvalidHeaderField, 8, "R2T for a command with no data to send")),
        };
        match problem {
            None => Ok(()),
            Some((fes, fei, reason)) => Err(self.fatal_for(&Pdu::R2t(r), fes, fei, reason)),
        }
    }
}

/// The status of a completion as a result: the data, or the failure named after `command`.
pub fn check_status(command: &str, c: Completion) -> Result<Completion, NvmeError> {
    if c.cqe.status.is_success() {
        Ok(c)
    } else {
        Err(NvmeError::Status { command: command.to_string(), status: c.cqe.status })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use scalio_common::nvme::command::IoCommand;
    use scalio_common::nvme::pdu::{pdu_type, CapsuleResp, H2CData, TermReq};
    use scalio_common::nvme::sqe::StatusField;
    use scalio_common::nvme::stream::decode_established;

    fn queue(digests: Digests, maxh2cdata: u32) -> HostQueue<u32> {
        let n = Negotiated {
            tx: TxParams { digests, pda: 0 },
            rx: RxParams { digests, pda: 0, max_capsule_data: 0, max_h2c_data: 0, max_c2h_data: 1 << 20 },
            maxh2cdata,
        };
        let mut q = HostQueue::new(1, n);
        q.set_io_in_capsule(4096);
        q
    }

    fn read(q: &mut HostQueue<u32>, tag: u32, len: u32) -> u16 {
        let mut out = Vec::new();
        let sqe = IoCommand::Read { nsid: 1, slba: 0, nlb: (len / 512 - 1) as u16 }.to_sqe();
        q.submit(sqe, None, len, tag, &mut out).map_err(|(_, e)| e).unwrap()
    }

    fn c2h(cccid: u16, datao: u32, data: Vec<u8>, last: bool, success: bool) -> Vec<u8> {
        Pdu::C2HData(C2HData { cccid, datao, last, success, data }).to_vec(&TxParams::default())
    }

    fn resp(cid: u16, status: StatusField) -> Vec<u8> {
        Pdu::CapsuleResp(CapsuleResp { cqe: Cqe { cid, status, ..Cqe::default() } }).to_vec(&TxParams::default())
    }

    fn feed(q: &mut HostQueue<u32>, b: &[u8]) -> (Result<(), QueueFailure>, Vec<u8>, Vec<Finished<u32>>) {
        let mut out = Vec::new();
        let mut done = Vec::new();
        let r = q.receive(b, &mut out, &mut done);
        (r, out, done)
    }

    fn term_of(f: &QueueFailure) -> (u16, u32) {
        let t = f.term_req.as_ref().expect("a termination request");
        assert_eq!(t[0], pdu_type::H2C_TERM_REQ);
        (u16::from_le_bytes([t[8], t[9]]), u32::from_le_bytes(t[10..14].try_into().unwrap()))
    }

    #[test]
    fn data_in_several_pdus_is_reassembled() {
        let mut q = queue(Digests::default(), 4096);
        let cid = read(&mut q, 7, 2048);
        let mut bytes = c2h(cid, 0, vec![1; 1000], false, false);
        bytes.extend(c2h(cid, 1000, vec![2; 1048], true, false));
        bytes.extend(resp(cid, StatusField::SUCCESS));
        // Fed one byte at a time.
        let mut done = Vec::new();
        for b in &bytes {
            let (r, out, d) = feed(&mut q, std::slice::from_ref(b));
            r.unwrap();
            assert!(out.is_empty());
            done.extend(d);
        }
        assert_eq!(done.len(), 1);
        let (tag, r) = done.pop().unwrap();
        assert_eq!(tag, 7);
        let c = r.unwrap();
        assert_eq!(&c.data[..1000], &[1u8; 1000][..]);
        assert_eq!(&c.data[1000..], &[2u8; 1048][..]);
        assert_eq!(q.outstanding(), 0);
    }

    #[test]
    fn the_success_flag_completes_without_a_response_only_without_sq_flow_control() {
        let mut q = queue(Digests::default(), 4096);
        q.set_sq_flow_control(false);
        let cid = read(&mut q, 1, 512);
        let (r, _, done) = feed(&mut q, &c2h(cid, 0, vec![3; 512], true, true));
        r.unwrap();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].1.as_ref().unwrap().data, vec![3u8; 512]);

        let mut q = queue(Digests::default(), 4096);
        let cid = read(&mut q, 1, 512);
        let (r, _, done) = feed(&mut q, &c2h(cid, 0, vec![3; 512], true, true));
        assert_eq!(term_of(&r.unwrap_err()), (Fes::InvalidHeaderField as u16, 1));
        assert!(matches!(done[0].1, Err(NvmeError::Fatal(_))));
    }

    #[test]
    fn bad_data_pdus_are_fatal_with_the_right_fes() {
        // Unknown command.
        let mut q = queue(Digests::default(), 4096);
        read(&mut q, 1, 512);
        let (r, _, done) = feed(&mut q, &c2h(999, 0, vec![0; 512], true, false));
        assert_eq!(term_of(&r.unwrap_err()), (Fes::InvalidHeaderField as u16, 8));
        assert_eq!(done.len(), 1, "the waiting command fails too");
        assert!(q.is_failed());
        // Beyond the command's data.
        let mut q = queue(Digests::default(), 4096);
        let cid = read(&mut q, 1, 512);
        let (r, _, _) = feed(&mut q, &c2h(cid, 256, vec![0; 512], true, false));
        assert_eq!(term_of(&r.unwrap_err()), (Fes::DataTransferOutOfRange as u16, 0));
        // Out of order.
        let mut q = queue(Digests::default(), 4096);
        let cid = read(&mut q, 1, 1024);
        let (r, _, _) = feed(&mut q, &c2h(cid, 512, vec![0; 512], true, false));
        assert_eq!(term_of(&r.unwrap_err()), (Fes::PduSequenceError as u16, 0));
    }

    #[test]
    fn a_short_read_or_a_bad_digest_fails_only_that_command() {
        let mut q = queue(Digests::default(), 4096);
        let cid = read(&mut q, 1, 1024);
        let mut b = c2h(cid, 0, vec![0; 512], false, false);
        b.extend(resp(cid, StatusField::SUCCESS));
        let (r, _, done) = feed(&mut q, &b);
        r.unwrap();
        assert!(matches!(done[0].1, Err(NvmeError::Protocol(_))));

        let digests = Digests { header: false, data: true };
        let mut q = queue(digests, 4096);
        let cid = read(&mut q, 1, 512);
        let mut b = Pdu::C2HData(C2HData { cccid: cid, datao: 0, last: true, success: false, data: vec![4; 512] })
            .to_vec(&TxParams { digests, pda: 0 });
        let n = b.len();
        b[n - 5] ^= 1;
        b.extend(resp(cid, StatusField::SUCCESS));
        let (r, _, done) = feed(&mut q, &b);
        r.unwrap();
        assert_eq!(done[0].1, Err(NvmeError::DataDigest { cid }));
        // The queue goes on.
        let cid = read(&mut q, 2, 512);
        let (r, _, done) = feed(&mut q, &resp(cid, StatusField::generic(0x80)));
        r.unwrap();
        assert_eq!(done[0].1.as_ref().unwrap().cqe.status.sc(), 0x80);
    }

    #[test]
    fn r2ts_are_answered_with_h2c_data_in_maxh2cdata_pieces() {
        let mut q = queue(Digests::default(), 4096);
        let data: Arc<[u8]> = (0..10240u32).map(|i| i as u8).collect::<Vec<u8>>().into();
        let mut out = Vec::new();
        let sqe = IoCommand::Write { nsid: 1, slba: 0, nlb: 19 }.to_sqe();
        let cid = q.submit(sqe, Some(data.clone()), 0, 1, &mut out).map_err(|(_, e)| e).unwrap();
        // Too big for in-capsule (4 KiB): the SGL asks the controller for an R2T.
        let (cmd, _) = decode_established(Role::Controller, RxParams::default(), &out).unwrap().unwrap();
        match cmd.pdu {
            Pdu::CapsuleCmd(c) => {
                assert!(c.data.is_empty());
                assert_eq!(c.sqe.sgl(), Sgl::transport(10240));
            }
            other => panic!("{other:?}"),
        }
        let r2t = Pdu::R2t(R2t { cccid: cid, ttag: 3, r2to: 0, r2tl: 10240 }).to_vec(&TxParams::default());
        let (r, out, _) = feed(&mut q, &r2t);
        r.unwrap();
        let rx = RxParams { max_h2c_data: 4096, ..RxParams::default() };
        let mut dec = PduDecoder::established(Role::Controller, rx);
        dec.feed(&out);
        let mut pieces = Vec::new();
        while let Some(d) = dec.next_pdu().unwrap() {
            match d.pdu {
                Pdu::H2CData(h) => pieces.push(h),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(pieces.iter().map(|h| h.data.len()).collect::<Vec<_>>(), vec![4096, 4096, 2048]);
        assert_eq!(pieces.iter().map(|h| h.last).collect::<Vec<_>>(), vec![false, false, true]);
        let joined: Vec<u8> = pieces.iter().flat_map(|h| h.data.clone()).collect();
        assert_eq!(&joined[..], &data[..]);
        assert!(pieces.iter().all(|h: &H2CData| h.ttag == 3 && h.cccid == cid));
        // An R2T past the end of the data.
        let bad = Pdu::R2t(R2t { cccid: cid, ttag: 3, r2to: 10240, r2tl: 512 }).to_vec(&TxParams::default());
        let (r, _, _) = feed(&mut q, &bad);
        assert_eq!(term_of(&r.unwrap_err()), (Fes::DataTransferOutOfRange as u16, 0));
    }

    #[test]
    fn small_writes_go_in_capsule() {
        let mut q = queue(Digests::default(), 4096);
        let mut out = Vec::new();
        let sqe = IoCommand::Write { nsid: 1, slba: 0, nlb: 7 }.to_sqe();
        q.submit(sqe, Some(Arc::from(vec![6u8; 4096])), 0, 1, &mut out).map_err(|(_, e)| e).unwrap();
        let (cmd, _) = decode_established(Role::Controller, RxParams::default(), &out).unwrap().unwrap();
        match cmd.pdu {
            Pdu::CapsuleCmd(c) => {
                assert_eq!(c.data, vec![6u8; 4096]);
                assert_eq!(c.sqe.sgl(), Sgl::in_capsule(0, 4096));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_controller_termination_request_fails_everything() {
        let mut q = queue(Digests::default(), 4096);
        read(&mut q, 1, 512);
        read(&mut q, 2, 512);
        let t = Pdu::C2HTermReq(TermReq { fes: 2, fei: 0, data: vec![] }).to_vec(&TxParams::default());
        let (r, _, done) = feed(&mut q, &t);
        let f = r.unwrap_err();
        assert!(f.term_req.is_none(), "a termination request is never answered");
        assert!(matches!(f.error, NvmeError::Terminated { fes: 2, .. }));
        assert_eq!(done.len(), 2);
        let mut out = Vec::new();
        assert!(q.submit(Sqe::new(0x02), None, 512, 3, &mut out).is_err());
    }

    #[test]
    fn abandoned_commands_keep_their_identifier_until_answered() {
        let mut q = queue(Digests::default(), 4096);
        let a = read(&mut q, 1, 512);
        assert_eq!(q.abandon(a), Some(1));
        let b = read(&mut q, 2, 512);
        assert_ne!(a, b);
        // The late answer is swallowed.
        let (r, _, done) = feed(&mut q, &resp(a, StatusField::SUCCESS));
        r.unwrap();
        assert!(done.is_empty());
        assert_eq!(q.outstanding(), 1);
    }

    #[test]
    fn a_response_for_an_unknown_command_breaks_the_queue() {
        let mut q = queue(Digests::default(), 4096);
        let (r, _, _) = feed(&mut q, &resp(42, StatusField::SUCCESS));
        assert!(matches!(r.unwrap_err().error, NvmeError::Protocol(_)));
    }

    #[test]
    fn negotiation_refuses_digests_that_were_not_asked_for() {
        let req = ic_request(Digests::default(), 0);
        let resp = Pdu::IcResp(pdu::IcResp {
            pfv: 0,
            cpda: 0,
            digests: Digests { header: true, data: false },
            maxh2cdata: 8192,
        })
        .to_vec(&TxParams::default());
        match negotiate(&req, &resp, 1 << 20) {
            Err(NvmeError::Fatal(e)) => assert_eq!((e.fes, e.fei), (Fes::UnsupportedParameter, 11)),
            other => panic!("{other:?}"),
        }
        let req = ic_request(Digests { header: true, data: true }, 0);
        let n = negotiate(&req, &resp, 1 << 20).unwrap();
        assert_eq!(n.tx.digests, Digests { header: true, data: false });
        assert_eq!(n.maxh2cdata, 8192);
    }

    proptest! {
        #[test]
        fn arbitrary_controller_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..1500), cut in 1usize..200) {
            let mut q = queue(Digests::default(), 4096);
            read(&mut q, 1, 1024);
            let mut out = Vec::new();
            let sqe = IoCommand::Write { nsid: 1, slba: 0, nlb: 15 }.to_sqe();
            let _ = q.submit(sqe, Some(Arc::from(vec![1u8; 8192])), 0, 2, &mut out);
            for chunk in bytes.chunks(cut) {
                let (r, _, _) = feed(&mut q, chunk);
                if r.is_err() {
                    break;
                }
            }
        }
    }
}
