//! The target against malformed and out-of-order PDUs, over real sockets: each gets a
//! C2HTermReq with the expected FES/FEI and its connection closed, while another association
//! keeps working; arbitrary bytes never bring the target down.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use scalio_common::nvme::command::{cns, AdminCommand, Connect, FabricsCommand, IoCommand, PropertySize};
use scalio_common::nvme::fabrics::{property, Cc, ConnectData};
use scalio_common::nvme::pdu::{self, Digests, Fes, H2CData, IcReq, Pdu, TxParams};
use scalio_common::nvme::sqe::{Cqe, Sgl, Sqe};
use scalio_common::nvme::status::{generic, sct};
use scalio_common::nvme::stream::{PduDecoder, Role, RxParams};
use scalio_server::target::{MemNamespace, NvmeTarget, SubsystemConfig, TargetConfig};

const NQN: &str = "nqn.2024-01.io.scalio:robust";

fn target() -> NvmeTarget {
    let ns = Arc::new(MemNamespace::with_contents((0..512 * 64).map(|i| (i % 253) as u8).collect()));
    let mut cfg =
        TargetConfig::on("127.0.0.1:0".parse().unwrap()).subsystem(SubsystemConfig::new(NQN, ns).allow_writes(true));
    cfg.maxh2cdata = 4096;
    NvmeTarget::start(cfg).unwrap()
}

/// A bare host connection speaking through the codec.
struct RawHost {
    s: TcpStream,
    tx: TxParams,
    dec: PduDecoder,
    cid: u16,
    /// Controller ID returned by an admin queue's Connect.
    cntlid: u16,
}

impl RawHost {
    fn open(addr: SocketAddr, digests: Digests) -> RawHost {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&Pdu::IcReq(IcReq { pfv: 0, hpda: 0, digests, maxr2t: 0 }).to_vec(&TxParams::default())).unwrap();
        let mut resp = [0u8; 128];
        s.read_exact(&mut resp).unwrap();
        assert_eq!(resp[0], pdu::pdu_type::IC_RESP);
        let rx = RxParams { digests, pda: 0, max_capsule_data: 0, max_h2c_data: 0, max_c2h_data: 1 << 20 };
        RawHost { s, tx: TxParams { digests, pda: 0 }, dec: PduDecoder::established(Role::Host, rx), cid: 0, cntlid: 0 }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    /// The next PDU, or `None` when the target closed the connection.
    fn recv(&mut self) -> Option<Pdu> {
        let mut buf = [0u8; 65536];
        loop {
            if let Some(d) = self.dec.next_pdu().unwrap() {
                return Some(d.pdu);
            }
            match self.s.read(&mut buf) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.dec.feed(&buf[..n]),
            }
        }
    }

    fn command(&mut self, mut sqe: Sqe, data: &[u8], data_in: u32) -> (Cqe, Vec<u8>) {
        self.cid += 1;
        sqe.set_cid(self.cid);
        if data.is_empty() {
            sqe.set_sgl(Sgl::transport(data_in));
        } else {
            sqe.set_sgl(Sgl::in_capsule(0, data.len() as u32));
        }
        let mut out = Vec::new();
        pdu::encode_capsule_cmd(&sqe, data, &self.tx, &mut out);
        self.send(&out);
        let mut got = Vec::new();
        loop {
            match self.recv().expect("connection closed while waiting for a response") {
                Pdu::C2HData(d) => {
                    got.extend_from_slice(&d.data);
                    if d.success {
                        return (Cqe { cid: d.cccid, ..Cqe::default() }, got);
                    }
                }
                Pdu::CapsuleResp(r) => return (r.cqe, got),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// Connect an admin queue and enable the controller.
    fn admin(addr: SocketAddr, digests: Digests) -> RawHost {
        let mut h = RawHost::open(addr, digests);
        let data = ConnectData { hostid: [1; 16], cntlid: 0xFFFF, subnqn: NQN.into(), hostnqn: "nqn.test:host".into() };
        let c = FabricsCommand::Connect(Connect { recfmt: 0, qid: 0, sqsize: 31, cattr: 0, kato: 0 });
        let (cqe, _) = h.command(c.to_sqe(), &data.encode(), 0);
        assert!(cqe.status.is_success(), "{}", cqe.status);
        let cc = FabricsCommand::PropertySet {
            size: PropertySize::Four,
            offset: property::CC,
            value: Cc::enabled_nvm().to_u32().into(),
        };
        assert!(h.command(cc.to_sqe(), &[], 0).0.status.is_success());
        h.cntlid = cqe.dw0 as u16;
        h
    }

    /// An I/O queue of controller `cntlid`.
    fn io(addr: SocketAddr, digests: Digests, cntlid: u16) -> RawHost {
        let mut h = RawHost::open(addr, digests);
        let data = ConnectData { hostid: [1; 16], cntlid, subnqn: NQN.into(), hostnqn: "nqn.test:host".into() };
        let c = FabricsCommand::Connect(Connect { recfmt: 0, qid: 1, sqsize: 127, cattr: 0, kato: 0 });
        let (cqe, _) = h.command(c.to_sqe(), &data.encode(), 0);
        assert!(cqe.status.is_success(), "{}", cqe.status);
        h
    }

    fn identify_works(&mut self) {
        let id = AdminCommand::Identify { cns: cns::CONTROLLER, cntid: 0, nsid: 0, csi: 0 };
        let (cqe, data) = self.command(id.to_sqe(), &[], 4096);
        assert!(cqe.status.is_success());
        assert_eq!(data.len(), 4096);
    }

    /// Expects a C2HTermReq, then the connection to close.
    fn expect_term(&mut self, fes: Fes, fei: Option<u32>) {
        match self.recv() {
            Some(Pdu::C2HTermReq(t)) => {
                assert_eq!(Fes::from_u16(t.fes), Some(fes), "FES {:#x}", t.fes);
                if let Some(fei) = fei {
                    assert_eq!(t.fei, fei);
                }
                assert!(t.data.len() <= 128);
            }
            other => panic!("expected a C2HTermReq, got {other:?}"),
        }
        assert_eq!(self.recv(), None, "the connection must close after a termination request");
    }
}

/// Runs `bad` on a fresh connection and checks that an established association still works.
fn with_witness(t: &NvmeTarget, bad: impl FnOnce(SocketAddr)) {
    let mut witness = RawHost::admin(t.local_addr(), Digests::default());
    let sent_before = t.stats().term_reqs_sent;
    bad(t.local_addr());
    witness.identify_works();
    assert_eq!(t.stats().term_reqs_sent, sent_before + 1);
}

fn capsule_bytes(sqe: Sqe, data: &[u8], tx: &TxParams) -> Vec<u8> {
    let mut out = Vec::new();
    pdu::encode_capsule_cmd(&sqe, data, tx, &mut out);
    out
}

#[test]
fn unknown_pdu_type_is_an_invalid_header_field_at_byte_0() {
    let t = target();
    with_witness(&t, |addr| {
        let mut h = RawHost::open(addr, Digests::default());
        let mut b = capsule_bytes(Sqe::new(0x06), &[], &h.tx);
        b[0] = 0x08;
        h.send(&b);
        h.expect_term(Fes::InvalidHeaderField, Some(0));
    });
}

#[test]
fn bad_hlen_is_reported_at_byte_2() {
    let t = target();
    with_witness(&t, |addr| {
        let mut h = RawHost::open(addr, Digests::default());
        let mut b = capsule_bytes(Sqe::new(0x06), &[], &h.tx);
        b[2] = 80;
        h.send(&b);
        h.expect_term(Fes::InvalidHeaderField, Some(2));
    });
}

#[test]
fn bad_pdo_is_reported_at_byte_3() {
    let t = target();
    with_witness(&t, |addr| {
        let mut h = RawHost::open(addr, Digests::default());
        let mut b = capsule_bytes(Sqe::new(0x01), &[0u8; 512], &h.tx);
        b[3] = 60; // inside the SQE
        h.send(&b);
        h.expect_term(Fes::InvalidHeaderField, Some(3));
    });
}

#[test]
fn header_digest_errors_are_fatal_when_negotiated() {
    let t = target();
    with_witness(&t, |addr| {
        let digests = Digests { header: true, data: false };
        let mut h = RawHost::open(addr, digests);
        let mut b = capsule_bytes(Sqe::new(0x06), &[], &h.tx);
        b[9] ^= 0x40;
        let received = u32::from_le_bytes(b[72..76].try_into().unwrap());
        h.send(&b);
        h.expect_term(Fes::HeaderDigestError, Some(received));
    });
}

#[test]
fn a_data_digest_error_fails_the_command_not_the_connection() {
    let t = target();
    let digests = Digests { header: true, data: true };
    let mut admin = RawHost::admin(t.local_addr(), digests);
    let cntlid = admin.cntlid;
    let mut io = RawHost::io(t.local_addr(), digests, cntlid);
    let mut sqe = IoCommand::Write { nsid: 1, slba: 2, nlb: 0 }.to_sqe();
    sqe.set_cid(77);
    sqe.set_sgl(Sgl::in_capsule(0, 512));
    let mut b = capsule_bytes(sqe, &[5u8; 512], &io.tx);
    let n = b.len();
    b[n - 100] ^= 1; // a data byte: the data digest no longer matches
    io.send(&b);
    match io.recv() {
        Some(Pdu::CapsuleResp(r)) => {
            assert_eq!(r.cqe.cid, 77);
            assert_eq!(r.cqe.status.code(), (sct::GENERIC, generic::TRANSIENT_TRANSPORT_ERROR));
        }
        other => panic!("{other:?}"),
    }
    // Same connection, next command fine; the block was not written.
    let (cqe, data) = io.command(IoCommand::Read { nsid: 1, slba: 2, nlb: 0 }.to_sqe(), &[], 512);
    assert!(cqe.status.is_success());
    assert_ne!(data, vec![5u8; 512]);
    admin.identify_works();
}

/// An I/O queue with a write waiting for data: returns the R2T's transfer tag.
fn pending_write(h: &mut RawHost, cid: u16, blocks: u16) -> (u16, u32) {
    let mut sqe = IoCommand::Write { nsid: 1, slba: 0, nlb: blocks - 1 }.to_sqe();
    sqe.set_cid(cid);
    sqe.set_sgl(Sgl::transport(u32::from(blocks) * 512));
    let b = capsule_bytes(sqe, &[], &h.tx);
    h.send(&b);
    match h.recv() {
        Some(Pdu::R2t(r)) => {
            assert_eq!(r.cccid, cid);
            assert_eq!(r.r2to, 0);
            (r.ttag, r.r2tl)
        }
        other => panic!("expected an R2T, got {other:?}"),
    }
}

fn h2c(h: &RawHost, cccid: u16, ttag: u16, datao: u32, len: usize, last: bool) -> Vec<u8> {
    Pdu::H2CData(H2CData { cccid, ttag, datao, last, data: vec![9; len] }).to_vec(&h.tx)
}

#[test]
fn h2c_data_without_an_r2t_is_refused() {
    let t = target();
    let mut admin = RawHost::admin(t.local_addr(), Digests::default());
    let mut io = RawHost::io(t.local_addr(), Digests::default(), admin.cntlid);
    let sent = t.stats().term_reqs_sent;
    let b = h2c(&io, 1, 0x1234, 0, 512, true);
    io.send(&b);
    io.expect_term(Fes::InvalidHeaderField, Some(10));
    admin.identify_works();
    assert_eq!(t.stats().term_reqs_sent, sent + 1);
}

#[test]
fn h2c_data_out_of_range_of_its_r2t_is_refused() {
    let t = target();
    let mut admin = RawHost::admin(t.local_addr(), Digests::default());
    let mut io = RawHost::io(t.local_addr(), Digests::default(), admin.cntlid);
    let (ttag, r2tl) = pending_write(&mut io, 5, 16);
    assert_eq!(r2tl, 4096, "R2Ts ask for at most MAXH2CDATA");
    let b = h2c(&io, 5, ttag, 4096, 512, true);
    io.send(&b);
    io.expect_term(Fes::DataTransferOutOfRange, Some(0));
    admin.identify_works();
}

#[test]
fn h2c_data_out_of_order_is_a_sequence_error() {
    let t = target();
    let admin = RawHost::admin(t.local_addr(), Digests::default());
    let mut io = RawHost::io(t.local_addr(), Digests::default(), admin.cntlid);
    let (ttag, _) = pending_write(&mut io, 5, 16);
    let b = h2c(&io, 5, ttag, 512, 512, false);
    io.send(&b);
    io.expect_term(Fes::PduSequenceError, Some(0));
}

#[test]
fn h2c_data_larger_than_maxh2cdata_exceeds_the_limit() {
    let t = target();
    let admin = RawHost::admin(t.local_addr(), Digests::default());
    let mut io = RawHost::io(t.local_addr(), Digests::default(), admin.cntlid);
    let (ttag, _) = pending_write(&mut io, 5, 16);
    let b = h2c(&io, 5, ttag, 0, 8192, false);
    io.send(&b);
    io.expect_term(Fes::DataTransferLimitExceeded, Some(0));
}

#[test]
fn a_write_through_several_r2ts_lands() {
    let t = target();
    let admin = RawHost::admin(t.local_addr(), Digests::default());
    let mut io = RawHost::io(t.local_addr(), Digests::default(), admin.cntlid);
    let (ttag, first) = pending_write(&mut io, 9, 16);
    let mut offset = 0u32;
    let mut len = first;
    loop {
        // Answer each R2T with two H2CData PDUs.
        let half = len / 2;
        let b1 = h2c(&io, 9, ttag, offset, half as usize, false);
        let b2 = h2c(&io, 9, ttag, offset + half, (len - half) as usize, true);
        io.send(&b1);
        io.send(&b2);
        offset += len;
        match io.recv() {
            Some(Pdu::R2t(r)) => {
                assert_eq!(r.r2to, offset);
                len = r.r2tl;
            }
            Some(Pdu::CapsuleResp(r)) => {
                assert!(r.cqe.status.is_success(), "{}", r.cqe.status);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(offset, 16 * 512);
    let (cqe, data) = io.command(IoCommand::Read { nsid: 1, slba: 0, nlb: 15 }.to_sqe(), &[], 8192);
    assert!(cqe.status.is_success());
    assert_eq!(data, vec![9u8; 8192]);
}

#[test]
fn commands_before_initialization_are_a_sequence_error() {
    let t = target();
    with_witness(&t, |addr| {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&capsule_bytes(Sqe::new(0x06), &[], &TxParams::default())).unwrap();
        let mut dec = PduDecoder::established(Role::Host, RxParams::default());
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).unwrap();
        dec.feed(&buf[..n]);
        match dec.next_pdu().unwrap().map(|d| d.pdu) {
            Some(Pdu::C2HTermReq(t)) => assert_eq!((t.fes, t.fei), (Fes::PduSequenceError as u16, 0)),
            other => panic!("{other:?}"),
        }
    });
}

#[test]
fn a_second_icreq_is_a_sequence_error() {
    let t = target();
    with_witness(&t, |addr| {
        let mut h = RawHost::open(addr, Digests::default());
        h.send(
            &Pdu::IcReq(IcReq { pfv: 0, hpda: 0, digests: Digests::default(), maxr2t: 0 }).to_vec(&TxParams::default()),
        );
        h.expect_term(Fes::PduSequenceError, Some(0));
    });
}

#[test]
fn an_unsupported_pdu_version_is_an_unsupported_parameter() {
    let t = target();
    with_witness(&t, |addr| {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(
            &Pdu::IcReq(IcReq { pfv: 1, hpda: 0, digests: Digests::default(), maxr2t: 0 }).to_vec(&TxParams::default()),
        )
        .unwrap();
        let mut buf = [0u8; 24];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(buf[0], pdu::pdu_type::C2H_TERM_REQ);
        assert_eq!(u16::from_le_bytes([buf[8], buf[9]]), Fes::UnsupportedParameter as u16);
        assert_eq!(u32::from_le_bytes(buf[10..14].try_into().unwrap()), 8);
    });
}

#[test]
fn too_much_in_capsule_data_exceeds_the_limit() {
    let t = target();
    with_witness(&t, |addr| {
        let mut h = RawHost::open(addr, Digests::default());
        let mut sqe = IoCommand::Write { nsid: 1, slba: 0, nlb: 16 }.to_sqe();
        sqe.set_sgl(Sgl::in_capsule(0, 8704));
        let b = capsule_bytes(sqe, &vec![0u8; 8704], &h.tx);
        h.send(&b);
        h.expect_term(Fes::DataTransferLimitExceeded, Some(0));
    });
}

#[test]
fn a_host_termination_request_closes_quietly() {
    let t = target();
    let mut h = RawHost::open(t.local_addr(), Digests::default());
    let term = Pdu::H2CTermReq(pdu::TermReq { fes: 1, fei: 0, data: vec![] }).to_vec(&TxParams::default());
    h.send(&term);
    assert_eq!(h.recv(), None);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while t.stats().term_reqs_received == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(t.stats().term_reqs_received, 1);
    assert_eq!(t.stats().term_reqs_sent, 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn arbitrary_bytes_never_crash_the_target(
        bytes in prop::collection::vec(any::<u8>(), 1..2048),
        after_ic in any::<bool>(),
        plausible_header in any::<bool>(),
    ) {
        let t = shared_target();
        let mut witness = RawHost::admin(t.local_addr(), Digests::default());
        let mut bytes = bytes;
        if plausible_header && bytes.len() >= 8 {
            // Steer toward PDUs that pass the first checks.
            bytes[0] = [4u8, 6, 2, 0][bytes[1] as usize % 4];
            bytes[2] = [72u8, 24, 128][bytes[3] as usize % 3];
        }
        let mut s = if after_ic {
            RawHost::open(t.local_addr(), Digests::default()).s
        } else {
            TcpStream::connect(t.local_addr()).unwrap()
        };
        s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let _ = s.write_all(&bytes);
        let mut sink = vec![0u8; 8192];
        let _ = s.read(&mut sink);
        drop(s);
        witness.identify_works();
    }
}

/// One target for all proptest cases (its threads must keep running across them).
fn shared_target() -> &'static NvmeTarget {
    static T: std::sync::OnceLock<NvmeTarget> = std::sync::OnceLock::new();
    T.get_or_init(target)
}
