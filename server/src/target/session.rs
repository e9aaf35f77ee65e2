//! One NVMe/TCP connection (one queue) on the controller side, as a sans-IO state machine.
//!
//! The driver feeds it received bytes, namespace completions and clock ticks; it produces bytes
//! to send, namespace operations to start, and whether to close. It owns the protocol rules:
//! initialization, Connect, the command table (many commands in flight, any completion order),
//! R2T/H2CData for data the host sends, C2HData for data it receives, SQ head reporting, and
//! fatal-error handling (a C2HTermReq, then the connection closes). Memory is bounded: what a
//! peer claims is checked against the negotiated limits before anything is allocated, and data
//! buffers per connection are capped (commands wait in order when the cap is reached).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use scalio_common::nvme::command::{
    AdminCommand, Command, Connect, DataDirection, FabricsCommand, IoCommand, QueueKind,
};
use scalio_common::nvme::fabrics::{invalid_parameter_info, ConnectData, CONNECT_DATA_LEN, DISCOVERY_NQN};
use scalio_common::nvme::pdu::{self, Fes, H2CData, IcReq, IcResp, Pdu, R2t, TxParams};
use scalio_common::nvme::sqe::{Cqe, Sgl, Sqe, StatusField};
use scalio_common::nvme::status::{command_specific, generic, media};
use scalio_common::nvme::stream::{FatalError, PduDecoder, PduError, Role, RxParams};
use scalio_common::nvme::Digests;

use super::admin;
use super::controller::{Controller, ControllerKind, NewController, TargetShared};
use super::namespace::{NamespaceError, TargetNamespace, LBA_SIZE};
use super::stats::{CommandKind, TargetCounters};

/// How long a connection may stay without a successful Connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Broadcast namespace ID (Flush of every namespace).
const NSID_ALL: u32 = 0xFFFF_FFFF;

/// A namespace operation for the driver to start; its completion comes back with `token`.
pub(crate) struct NsRequest {
    pub token: u64,
    pub namespace: Arc<dyn TargetNamespace>,
    pub op: NsOp,
}

pub(crate) enum NsOp {
    Read { lba: u64, count: u32 },
    Write { lba: u64, data: Vec<u8> },
    Flush,
}

/// The result of a namespace operation.
pub(crate) enum NsResult {
    Read(Result<Vec<u8>, NamespaceError>),
    Write(Result<(), NamespaceError>),
}

/// Whether the connection should close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Close {
    No,
    /// Once the pending output (a response, a termination request) is written.
    AfterFlush,
    /// At once.
    Now,
}

struct Binding {
    ctrl: Arc<Controller>,
    qid: u16,
    sqsize: u16,
    sq_flow_disabled: bool,
    /// The controller's reset epoch when this queue connected: a reset deletes I/O queues.
    epoch: u64,
}

/// What a command does once it has its data and memory.
enum Op {
    Connect(Connect),
    Read { ns: Arc<dyn TargetNamespace>, lba: u64, blocks: u32 },
    Write { ns: Arc<dyn TargetNamespace>, lba: u64, blocks: u32 },
    Flush,
    AsyncEvent,
}

enum Stage {
    /// Waiting for the connection's data budget.
    Waiting { bytes: usize },
    /// Receiving the host's data through R2T/H2CData.
    Receiving { buf: Vec<u8>, r2t_offset: u32, r2t_len: u32, r2t_got: u32, digest_error: bool },
    /// At the namespace.
    Executing,
    /// An Asynchronous Event Request, held until an event (none are generated).
    Held,
}

struct Cmd {
    op: Op,
    stage: Stage,
    /// Budget bytes held.
    charged: usize,
}

/// How a command's data moves, from its SGL and in-capsule data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transfer {
    None,
    InCapsule(u32),
    FromHost(u32),
    ToHost(u32),
}

pub(crate) struct QueueSession {
    shared: Arc<TargetShared>,
    local: SocketAddr,
    created: Instant,
    decoder: PduDecoder,
    tx: TxParams,
    rx_digests: Digests,
    binding: Option<Binding>,
    sqhd: u16,
    commands: HashMap<u16, Cmd>,
    tokens: HashMap<u64, u16>,
    ttags: HashMap<u16, u16>,
    next_ttag: u16,
    next_token: u64,
    waiting: VecDeque<u16>,
    inflight_bytes: usize,
    out: Vec<u8>,
    out_pos: usize,
    requests: Vec<NsRequest>,
    close: Close,
    reason: Option<String>,
}

fn status(sc: u8) -> StatusField {
    StatusField::generic(sc).dnr()
}

impl QueueSession {
    pub fn new(shared: Arc<TargetShared>, local: SocketAddr, now: Instant) -> QueueSession {
        QueueSession {
            shared,
            local,
            created: now,
            decoder: PduDecoder::new(Role::Controller),
            tx: TxParams::default(),
            rx_digests: Digests::default(),
            binding: None,
            sqhd: 0,
            commands: HashMap::new(),
            tokens: HashMap::new(),
            ttags: HashMap::new(),
            next_ttag: 0,
            next_token: 1,
            waiting: VecDeque::new(),
            inflight_bytes: 0,
            out: Vec::new(),
            out_pos: 0,
            requests: Vec::new(),
            close: Close::No,
            reason: None,
        }
    }

    /// Encoded bytes waiting to be written.
    pub fn output(&self) -> &[u8] {
        &self.out[self.out_pos..]
    }

    /// `n` bytes of [`output`](Self::output) were written.
    pub fn consume_output(&mut self, n: usize) {
        self.out_pos = (self.out_pos + n).min(self.out.len());
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        } else if self.out_pos >= 1 << 20 {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
        self.pump();
    }

    /// Namespace operations to start.
    pub fn take_requests(&mut self) -> Vec<NsRequest> {
        std::mem::take(&mut self.requests)
    }

    pub fn close_state(&self) -> Close {
        self.close
    }

    /// Why the connection is closing, for logs.
    pub fn close_reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    /// Whether the driver should stop reading for now (too much output not yet sent).
    pub fn wants_backpressure(&self) -> bool {
        self.output().len() > self.shared.settings.output_high_water
    }

    /// The controller and queue this connection serves, once connected.
    pub fn queue(&self) -> Option<(u16, u16)> {
        self.binding.as_ref().map(|b| (b.ctrl.cntlid, b.qid))
    }

    fn close_with(&mut self, close: Close, reason: String) {
        if self.close != Close::Now {
            self.close = close;
        }
        if self.reason.is_none() {
            self.reason = Some(reason);
        }
    }

    /// Bytes received from the host.
    pub fn on_bytes(&mut self, bytes: &[u8], now: Instant) {
        if self.close != Close::No {
            return;
        }
        self.decoder.feed(bytes);
        while self.close == Close::No {
            match self.decoder.next_pdu() {
                Ok(Some(d)) => self.on_pdu(d.pdu, d.data_digest_ok, now),
                Ok(None) => break,
                Err(PduError::Fatal(e)) => self.fatal(e),
                Err(e @ PduError::MalformedTermReq { .. }) => self.close_with(Close::Now, e.to_string()),
            }
        }
        self.pump();
    }

    /// Periodic check: keep-alive expiry, a dead or reset controller, a connection that never
    /// connected.
    pub fn on_tick(&mut self, now: Instant) {
        if self.close != Close::No {
            return;
        }
        match &self.binding {
            None if now.duration_since(self.created) > CONNECT_TIMEOUT => {
                self.close_with(Close::Now, "no Connect in time".into());
            }
            None => {}
            Some(b) if b.qid == 0 => {
                if !b.ctrl.is_dead() && b.ctrl.keep_alive_expired(now) {
                    TargetCounters::add(&self.shared.counters.keep_alive_expired, 1);
                    let reason = format!("controller {}: keep alive timeout expired", b.ctrl.cntlid);
                    self.shared.destroy_controller(&b.ctrl);
                    self.close_with(Close::Now, reason);
                } else if b.ctrl.is_dead() {
                    self.close_with(Close::Now, "controller gone".into());
                }
            }
            Some(b) if b.ctrl.is_dead() || b.ctrl.reset_epoch() != b.epoch => {
                let reason = format!("controller {} gone or reset", b.ctrl.cntlid);
                self.close_with(Close::Now, reason);
            }
            Some(_) => {}
        }
    }

    /// A namespace operation finished.
    pub fn on_ns_done(&mut self, token: u64, result: NsResult) {
        let Some(cid) = self.tokens.remove(&token) else { return };
        let Some(cmd) = self.commands.get(&cid) else { return };
        let blocks = match &cmd.op {
            Op::Read { blocks, .. } | Op::Write { blocks, .. } => u64::from(*blocks),
            _ => 0,
        };
        let counters = &self.shared.counters;
        match result {
            NsResult::Read(Ok(data)) if data.len() as u64 == blocks * u64::from(LBA_SIZE) => {
                TargetCounters::add(&counters.blocks_read, blocks);
                self.complete_with_data(cid, &data);
            }
            NsResult::Read(Ok(_)) => self.complete(cid, status(generic::INTERNAL_ERROR), 0, 0),
            NsResult::Write(Ok(())) => {
                if matches!(cmd.op, Op::Write { .. }) {
                    TargetCounters::add(&counters.blocks_written, blocks);
                }
                self.complete(cid, StatusField::SUCCESS, 0, 0);
            }
            NsResult::Read(Err(e)) | NsResult::Write(Err(e)) => {
                let st = match e {
                    NamespaceError::OutOfRange { .. } => status(generic::LBA_OUT_OF_RANGE),
                    NamespaceError::ReadOnly => status(generic::NAMESPACE_WRITE_PROTECTED),
                    NamespaceError::Read(_) => StatusField::new(2, media::UNRECOVERED_READ_ERROR),
                    NamespaceError::Write(_) => StatusField::new(2, media::WRITE_FAULT),
                };
                self.complete(cid, st, 0, 0);
            }
        }
        self.pump();
    }

    fn fatal(&mut self, e: FatalError) {
        TargetCounters::add(&self.shared.counters.term_reqs_sent, 1);
        self.out.extend_from_slice(&e.term_req(Role::Controller));
        self.close_with(Close::AfterFlush, format!("C2HTermReq sent: {e}"));
    }

    fn on_pdu(&mut self, p: Pdu, data_digest_ok: bool, now: Instant) {
        match p {
            Pdu::IcReq(req) => self.on_ic_req(req),
            Pdu::H2CTermReq(t) => {
                TargetCounters::add(&self.shared.counters.term_reqs_received, 1);
                let reason = format!("host sent H2CTermReq FES {:#x} FEI {:#x}", t.fes, t.fei);
                self.close_with(Close::Now, reason);
            }
            Pdu::CapsuleCmd(c) => self.on_capsule(c.sqe, c.data, data_digest_ok, now),
            Pdu::H2CData(d) => self.on_h2c_data(d, data_digest_ok, now),
            // The decoder only lets host-to-controller PDUs through.
            _ => self.close_with(Close::Now, "unexpected PDU".into()),
        }
    }

    fn on_ic_req(&mut self, req: IcReq) {
        let s = &self.shared.settings;
        let digests = Digests {
            header: req.digests.header && s.digests_allowed.header,
            data: req.digests.data && s.digests_allowed.data,
        };
        let resp = IcResp { pfv: 0, cpda: s.cpda, digests, maxh2cdata: s.maxh2cdata };
        Pdu::IcResp(resp).encode(&TxParams::default(), &mut self.out);
        self.tx = TxParams { digests, pda: req.hpda };
        self.rx_digests = digests;
        self.decoder.establish(RxParams {
            digests,
            pda: s.cpda,
            max_capsule_data: s.admin_in_capsule.max(s.io_in_capsule),
            max_h2c_data: s.maxh2cdata,
            max_c2h_data: 0,
        });
    }

    fn max_outstanding(&self) -> usize {
        match &self.binding {
            // Room for a whole SQ whose head the host saw advance before the commands
            // completed, plus the held Asynchronous Event Requests.
            Some(b) => 2 * (usize::from(b.sqsize) + 1) + usize::from(admin::AERL) + 1,
            None => 4,
        }
    }

    fn on_capsule(&mut self, sqe: Sqe, data: Vec<u8>, digest_ok: bool, now: Instant) {
        TargetCounters::add(&self.shared.counters.bytes_from_host, data.len() as u64);
        if let Some(b) = &self.binding {
            if b.ctrl.is_dead() || (b.qid > 0 && b.ctrl.reset_epoch() != b.epoch) {
                // The association is over: no more commands on its queues.
                let reason = format!("controller {} gone or reset", b.ctrl.cntlid);
                return self.close_with(Close::Now, reason);
            }
            self.sqhd = ((u32::from(self.sqhd) + 1) % (u32::from(b.sqsize) + 1)) as u16;
        }
        let cid = sqe.cid();
        if self.commands.contains_key(&cid) {
            return self.respond(cid, status(generic::COMMAND_ID_CONFLICT), 0, 0);
        }
        if self.commands.len() >= self.max_outstanding() {
            let header = Pdu::CapsuleCmd(pdu::CapsuleCmd { sqe, data: Vec::new() }).to_vec(&self.tx);
            return self.fatal(FatalError::new(
                Fes::PduSequenceError,
                0,
                "more commands outstanding than the submission queue holds",
                &header[..pdu::CAPSULE_CMD_HLEN],
            ));
        }
        let queue = match &self.binding {
            Some(b) if b.qid > 0 => QueueKind::Io,
            _ => QueueKind::Admin,
        };
        let cmd = Command::parse(&sqe, queue);
        self.shared.counters.command(command_kind(&cmd));
        if !digest_ok {
            // A data digest error fails the command; the connection is still in sync.
            return self.respond(cid, StatusField::generic(generic::TRANSIENT_TRANSPORT_ERROR), 0, 0);
        }
        if sqe.fuse() != 0 || !matches!(sqe.psdt(), 1 | 2) {
            return self.respond(cid, status(generic::INVALID_FIELD), 0, 0);
        }
        let cmd = match cmd {
            Ok(c) => c,
            Err(e) => return self.respond(cid, e.status, 0, 0),
        };
        let transfer = match transfer_of(&sqe, &data) {
            Ok(t) => t,
            Err(st) => return self.respond(cid, st, 0, 0),
        };
        if let Err(st) = self.start(cid, cmd, transfer, data, now) {
            self.respond(cid, st, 0, 0);
        }
    }

    /// Starts a parsed command. An error is the status to complete it with at once.
    fn start(
        &mut self,
        cid: u16,
        cmd: Command,
        transfer: Transfer,
        data: Vec<u8>,
        now: Instant,
    ) -> Result<(), StatusField> {
        let expect = |t: Transfer, want: Transfer| {
            if t == want {
                Ok(())
            } else {
                Err(status(generic::DATA_SGL_LENGTH_INVALID))
            }
        };
        let (ctrl, qid) = match (&cmd, &self.binding) {
            (Command::Fabrics(FabricsCommand::Connect(c)), None) => {
                let c = *c;
                return match transfer {
                    Transfer::InCapsule(n) if n as usize == CONNECT_DATA_LEN => {
                        self.connect(cid, c, &data, now);
                        Ok(())
                    }
                    Transfer::FromHost(n) if n as usize == CONNECT_DATA_LEN => {
                        self.enqueue(cid, Op::Connect(c), CONNECT_DATA_LEN);
                        Ok(())
                    }
                    _ => Err(status(generic::DATA_SGL_LENGTH_INVALID)),
                };
            }
            (_, None) => return Err(status(generic::COMMAND_SEQUENCE_ERROR)),
            (_, Some(b)) => (b.ctrl.clone(), b.qid),
        };
        let shared = self.shared.clone();
        match cmd {
            // A queue connects once.
            Command::Fabrics(FabricsCommand::Connect(_)) => return Err(status(generic::COMMAND_SEQUENCE_ERROR)),
            Command::Fabrics(FabricsCommand::PropertyGet { size, offset }) => {
                if qid != 0 {
                    return Err(status(generic::INVALID_OPCODE));
                }
                expect(transfer, Transfer::None)?;
                let v = admin::property_get(&shared, &ctrl, size, offset)?;
                self.respond(cid, StatusField::SUCCESS, v as u32, (v >> 32) as u32);
            }
            Command::Fabrics(FabricsCommand::PropertySet { size, offset, value }) => {
                if qid != 0 {
                    return Err(status(generic::INVALID_OPCODE));
                }
                expect(transfer, Transfer::None)?;
                admin::property_set(&ctrl, size, offset, value)?;
                self.respond(cid, StatusField::SUCCESS, 0, 0);
            }
            Command::Fabrics(FabricsCommand::Disconnect { .. }) => {
                if qid == 0 {
                    return Err(StatusField::command_specific(command_specific::INVALID_QUEUE_TYPE).dnr());
                }
                self.respond(cid, StatusField::SUCCESS, 0, 0);
                self.close_with(Close::AfterFlush, format!("queue {qid} disconnected"));
            }
            Command::Admin(a) => {
                if !ctrl.ready() {
                    return Err(status(generic::COMMAND_SEQUENCE_ERROR));
                }
                self.admin(cid, &ctrl, a, transfer, now)?;
            }
            Command::Io(io) => self.io(cid, &ctrl, io, transfer, data)?,
        }
        Ok(())
    }

    fn admin(
        &mut self,
        cid: u16,
        ctrl: &Arc<Controller>,
        a: AdminCommand,
        transfer: Transfer,
        now: Instant,
    ) -> Result<(), StatusField> {
        let shared = self.shared.clone();
        let sgl_len = || status(generic::DATA_SGL_LENGTH_INVALID);
        match a {
            AdminCommand::Identify { cns, nsid, csi, .. } => {
                if transfer != Transfer::ToHost(scalio_common::nvme::identify::IDENTIFY_LEN as u32) {
                    return Err(sgl_len());
                }
                let data = admin::identify(&shared, ctrl, cns, nsid, csi)?;
                self.complete_with_data(cid, &data);
            }
            AdminCommand::GetLogPage { lid, numd, offset, .. } => {
                let len = (u64::from(numd) + 1) * 4;
                if len > u64::from(shared.settings.max_transfer) {
                    return Err(status(generic::INVALID_FIELD));
                }
                if transfer != Transfer::ToHost(len as u32) {
                    return Err(sgl_len());
                }
                let data = admin::get_log_page(&shared, ctrl, self.local, lid, offset, len as u32)?;
                self.complete_with_data(cid, &data);
            }
            AdminCommand::SetFeatures { fid, save, cdw11, .. } => {
                if transfer != Transfer::None {
                    return Err(sgl_len());
                }
                let dw0 = admin::set_features(&shared, ctrl, fid, save, cdw11, now)?;
                self.respond(cid, StatusField::SUCCESS, dw0, 0);
            }
            AdminCommand::GetFeatures { fid, sel, .. } => {
                if transfer != Transfer::None {
                    return Err(sgl_len());
                }
                let dw0 = admin::get_features(ctrl, fid, sel)?;
                self.respond(cid, StatusField::SUCCESS, dw0, 0);
            }
            AdminCommand::KeepAlive => {
                ctrl.keep_alive(now);
                self.respond(cid, StatusField::SUCCESS, 0, 0);
            }
            AdminCommand::AsyncEventRequest => {
                let held = self.commands.values().filter(|c| matches!(c.stage, Stage::Held)).count();
                if held > usize::from(admin::AERL) {
                    return Err(
                        StatusField::command_specific(command_specific::ASYNC_EVENT_REQUEST_LIMIT_EXCEEDED).dnr()
                    );
                }
                self.commands.insert(cid, Cmd { op: Op::AsyncEvent, stage: Stage::Held, charged: 0 });
            }
            AdminCommand::Abort { .. } => {
                // Dword 0 bit 0 set: the command was not aborted (commands here finish on their own).
                self.respond(cid, StatusField::SUCCESS, 1, 0);
            }
        }
        Ok(())
    }

    fn io(
        &mut self,
        cid: u16,
        ctrl: &Arc<Controller>,
        io: IoCommand,
        transfer: Transfer,
        data: Vec<u8>,
    ) -> Result<(), StatusField> {
        let ControllerKind::Io(index) = ctrl.kind else { return Err(status(generic::INVALID_OPCODE)) };
        let Some(subsystem) = self.shared.subsystems.get(index) else { return Err(status(generic::INTERNAL_ERROR)) };
        let ns = subsystem.namespace.clone();
        let allow_writes = subsystem.allow_writes;
        let max_transfer = self.shared.settings.max_transfer;
        let io_in_capsule = self.shared.settings.io_in_capsule;
        match io {
            IoCommand::Read { nsid, slba, .. } | IoCommand::Write { nsid, slba, .. } => {
                if nsid != 1 {
                    return Err(status(generic::INVALID_NAMESPACE_OR_FORMAT));
                }
                let blocks = io.blocks();
                let bytes = u64::from(blocks) * u64::from(LBA_SIZE);
                if bytes > u64::from(max_transfer) {
                    return Err(status(generic::INVALID_FIELD));
                }
                match slba.checked_add(u64::from(blocks)) {
                    Some(end) if end <= ns.blocks() => {}
                    _ => return Err(status(generic::LBA_OUT_OF_RANGE)),
                }
                let bytes = bytes as u32;
                if let IoCommand::Read { .. } = io {
                    if transfer != Transfer::ToHost(bytes) {
                        return Err(status(generic::DATA_SGL_LENGTH_INVALID));
                    }
                    self.enqueue(cid, Op::Read { ns, lba: slba, blocks }, bytes as usize);
                    return Ok(());
                }
                // A write to a read-only subsystem: the namespace is write protected (NSATTR
                // says so in Identify Namespace too).
                if !allow_writes {
                    return Err(status(generic::NAMESPACE_WRITE_PROTECTED));
                }
                match transfer {
                    Transfer::InCapsule(n) if n == bytes && n <= io_in_capsule => {
                        let token = self.issue(NsOp::Write { lba: slba, data }, ns.clone());
                        self.tokens.insert(token, cid);
                        self.inflight_bytes += bytes as usize;
                        let op = Op::Write { ns, lba: slba, blocks };
                        self.commands.insert(cid, Cmd { op, stage: Stage::Executing, charged: bytes as usize });
                    }
                    Transfer::FromHost(n) if n == bytes => {
                        self.enqueue(cid, Op::Write { ns, lba: slba, blocks }, bytes as usize);
                    }
                    _ => return Err(status(generic::DATA_SGL_LENGTH_INVALID)),
                }
            }
            IoCommand::Flush { nsid } => {
                if nsid != 1 && nsid != NSID_ALL {
                    return Err(status(generic::INVALID_NAMESPACE_OR_FORMAT));
                }
                if transfer != Transfer::None {
                    return Err(status(generic::DATA_SGL_LENGTH_INVALID));
                }
                let token = self.issue(NsOp::Flush, ns);
                self.tokens.insert(token, cid);
                self.commands.insert(cid, Cmd { op: Op::Flush, stage: Stage::Executing, charged: 0 });
            }
        }
        Ok(())
    }

    fn issue(&mut self, op: NsOp, namespace: Arc<dyn TargetNamespace>) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        self.requests.push(NsRequest { token, namespace, op });
        token
    }

    /// Queues a command that needs `bytes` of buffer for its data.
    fn enqueue(&mut self, cid: u16, op: Op, bytes: usize) {
        self.commands.insert(cid, Cmd { op, stage: Stage::Waiting { bytes }, charged: 0 });
        self.waiting.push_back(cid);
    }

    /// Starts waiting commands while the connection's memory budget allows.
    fn pump(&mut self) {
        while let Some(&cid) = self.waiting.front() {
            if self.close != Close::No {
                return;
            }
            let bytes = match self.commands.get(&cid) {
                Some(Cmd { stage: Stage::Waiting { bytes }, .. }) => *bytes,
                _ => {
                    self.waiting.pop_front();
                    continue;
                }
            };
            let s = &self.shared.settings;
            let fits = self.inflight_bytes == 0 || self.inflight_bytes + bytes <= s.max_inflight_bytes;
            if !fits || self.output().len() > s.output_high_water {
                return;
            }
            self.waiting.pop_front();
            self.inflight_bytes += bytes;
            let maxh2cdata = s.maxh2cdata;
            let read = match self.commands.get(&cid).map(|c| &c.op) {
                Some(Op::Read { ns, lba, blocks }) => Some((ns.clone(), *lba, *blocks)),
                _ => None,
            };
            if let Some((ns, lba, count)) = read {
                let token = self.issue(NsOp::Read { lba, count }, ns);
                self.tokens.insert(token, cid);
                if let Some(c) = self.commands.get_mut(&cid) {
                    c.stage = Stage::Executing;
                    c.charged = bytes;
                }
                continue;
            }
            // Data to fetch from the host: a buffer, a transfer tag, and the first R2T.
            let ttag = self.alloc_ttag();
            self.ttags.insert(ttag, cid);
            let r2t_len = (bytes as u32).min(maxh2cdata);
            if let Some(c) = self.commands.get_mut(&cid) {
                c.charged = bytes;
                c.stage =
                    Stage::Receiving { buf: vec![0u8; bytes], r2t_offset: 0, r2t_len, r2t_got: 0, digest_error: false };
            }
            pdu::encode_r2t(&R2t { cccid: cid, ttag, r2to: 0, r2tl: r2t_len }, &self.tx, &mut self.out);
        }
    }

    fn alloc_ttag(&mut self) -> u16 {
        loop {
            let t = self.next_ttag;
            self.next_ttag = self.next_ttag.wrapping_add(1);
            if t != 0xFFFF && !self.ttags.contains_key(&t) {
                return t;
            }
        }
    }

    fn h2c_fatal(&mut self, d: &H2CData, fes: Fes, fei: u32, reason: &'static str) {
        let mut header = Vec::new();
        let link = TxParams { digests: self.rx_digests, pda: self.shared.settings.cpda };
        pdu::encode_h2c_data(d.cccid, d.ttag, d.datao, &d.data, d.last, &link, &mut header);
        header.truncate(pdu::DATA_HLEN);
        self.fatal(FatalError::new(fes, fei, reason, &header));
    }

    fn on_h2c_data(&mut self, d: H2CData, digest_ok: bool, now: Instant) {
        TargetCounters::add(&self.shared.counters.bytes_from_host, d.data.len() as u64);
        let Some(&cid) = self.ttags.get(&d.ttag) else {
            return self.h2c_fatal(&d, Fes::InvalidHeaderField, 10, "H2CData with a transfer tag of no R2T");
        };
        if cid != d.cccid {
            return self.h2c_fatal(&d, Fes::InvalidHeaderField, 8, "H2CData CCCID does not match its R2T");
        }
        let maxh2cdata = self.shared.settings.maxh2cdata;
        let len = d.data.len() as u64;
        let outcome = {
            let Some(Cmd { stage: Stage::Receiving { buf, r2t_offset, r2t_len, r2t_got, digest_error, .. }, .. }) =
                self.commands.get_mut(&cid)
            else {
                return self.h2c_fatal(&d, Fes::PduSequenceError, 0, "H2CData for a command not receiving data");
            };
            let start = u64::from(*r2t_offset);
            let end = start + u64::from(*r2t_len);
            let at = u64::from(d.datao);
            if at < start || at + len > end {
                Err((Fes::DataTransferOutOfRange, "H2CData outside the range of its R2T"))
            } else if at != start + u64::from(*r2t_got) {
                Err((Fes::PduSequenceError, "H2CData out of order"))
            } else if (u64::from(*r2t_got) + len == u64::from(*r2t_len)) != d.last {
                Err((Fes::PduSequenceError, "LAST_PDU flag does not match the end of the R2T's data"))
            } else {
                buf[at as usize..(at + len) as usize].copy_from_slice(&d.data);
                *r2t_got += len as u32;
                *digest_error |= !digest_ok;
                if r2t_got != r2t_len {
                    Ok(None)
                } else if (end as usize) < buf.len() {
                    // Next R2T for the rest.
                    *r2t_offset = end as u32;
                    *r2t_len = ((buf.len() as u64 - end) as u32).min(maxh2cdata);
                    *r2t_got = 0;
                    Ok(Some((false, *r2t_offset, *r2t_len)))
                } else {
                    Ok(Some((true, 0, 0)))
                }
            }
        };
        match outcome {
            Err((fes, reason)) => self.h2c_fatal(&d, fes, 0, reason),
            Ok(None) => {}
            Ok(Some((false, r2to, r2tl))) => {
                pdu::encode_r2t(&R2t { cccid: cid, ttag: d.ttag, r2to, r2tl }, &self.tx, &mut self.out);
            }
            Ok(Some((true, _, _))) => {
                self.ttags.remove(&d.ttag);
                self.data_received(cid, now);
            }
        }
    }

    /// All of a command's data arrived through R2Ts: run it.
    fn data_received(&mut self, cid: u16, now: Instant) {
        let Some(cmd) = self.commands.get_mut(&cid) else { return };
        let (buf, digest_error) = match std::mem::replace(&mut cmd.stage, Stage::Executing) {
            Stage::Receiving { buf, digest_error, .. } => (buf, digest_error),
            other => {
                cmd.stage = other;
                return;
            }
        };
        if digest_error {
            return self.complete(cid, StatusField::generic(generic::TRANSIENT_TRANSPORT_ERROR), 0, 0);
        }
        match &cmd.op {
            Op::Connect(c) => {
                let c = *c;
                self.release(cid);
                self.commands.remove(&cid);
                self.connect(cid, c, &buf, now);
            }
            Op::Write { ns, lba, .. } => {
                let (ns, lba) = (ns.clone(), *lba);
                let token = self.issue(NsOp::Write { lba, data: buf }, ns);
                self.tokens.insert(token, cid);
            }
            _ => self.complete(cid, status(generic::INTERNAL_ERROR), 0, 0),
        }
    }

    /// Runs a Connect and answers it: binds this connection to a new controller (admin queue)
    /// or to an existing one (I/O queue).
    fn connect(&mut self, cid: u16, c: Connect, data: &[u8], now: Instant) {
        let invalid = |in_data: bool, offset: u16| {
            (
                StatusField::command_specific(command_specific::CONNECT_INVALID_PARAMETERS).dnr(),
                invalid_parameter_info(in_data, offset),
            )
        };
        let result = self.try_connect(c, data, now, invalid);
        match result {
            Ok((cntlid, binding)) => {
                self.sqhd = (1 % (u32::from(binding.sqsize) + 1)) as u16;
                self.binding = Some(binding);
                self.respond(cid, StatusField::SUCCESS, u32::from(cntlid), 0);
            }
            Err((st, dw0)) => self.respond(cid, st, dw0, 0),
        }
    }

    fn try_connect(
        &mut self,
        c: Connect,
        data: &[u8],
        now: Instant,
        invalid: impl Fn(bool, u16) -> (StatusField, u32),
    ) -> Result<(u16, Binding), (StatusField, u32)> {
        if c.recfmt != 0 {
            return Err((StatusField::command_specific(command_specific::CONNECT_INCOMPATIBLE_FORMAT).dnr(), 0));
        }
        let d = ConnectData::decode(data).map_err(|e| invalid(true, e.offset))?;
        if c.sqsize == 0 || c.sqsize > self.shared.settings.mqes {
            return Err(invalid(false, Connect::OFFSET_SQSIZE));
        }
        let sq_flow_disabled = c.cattr & Connect::DISABLE_SQ_FLOW_CONTROL != 0;
        if c.qid == 0 {
            let kind = if d.subnqn == DISCOVERY_NQN {
                ControllerKind::Discovery
            } else {
                ControllerKind::Io(
                    self.shared.subsystem_index(&d.subnqn).ok_or_else(|| invalid(true, ConnectData::OFFSET_SUBNQN))?,
                )
            };
            // Dynamic controller model: the host must let the subsystem pick the ID.
            if d.cntlid != 0xFFFF && d.cntlid != 0xFFFE {
                return Err(invalid(true, ConnectData::OFFSET_CNTLID));
            }
            let kato_ms = if kind == ControllerKind::Discovery && c.kato == 0 {
                self.shared.settings.discovery_kato_ms
            } else {
                c.kato
            };
            let new = NewController { kind, subnqn: d.subnqn, hostnqn: d.hostnqn, hostid: d.hostid, kato_ms };
            let ctrl = self
                .shared
                .create_controller(new, now)
                .ok_or((StatusField::command_specific(command_specific::CONNECT_CONTROLLER_BUSY), 0))?;
            let cntlid = ctrl.cntlid;
            return Ok((cntlid, Binding { ctrl, qid: 0, sqsize: c.sqsize, sq_flow_disabled, epoch: 0 }));
        }
        let ctrl = self
            .shared
            .find_controller(d.cntlid)
            .filter(|x| x.subnqn == d.subnqn && x.hostnqn == d.hostnqn && x.hostid == d.hostid && !x.is_dead())
            .ok_or_else(|| invalid(true, ConnectData::OFFSET_CNTLID))?;
        if ctrl.is_discovery() {
            return Err(invalid(false, Connect::OFFSET_QID));
        }
        let epoch = {
            let mut st = ctrl.state.lock();
            if !st.csts.ready {
                return Err((status(generic::COMMAND_SEQUENCE_ERROR), 0));
            }
            if c.qid > st.io_queues_allowed {
                return Err(invalid(false, Connect::OFFSET_QID));
            }
            if !st.io_queues.insert(c.qid) {
                return Err((status(generic::COMMAND_SEQUENCE_ERROR), 0));
            }
            st.reset_epoch
        };
        let cntlid = ctrl.cntlid;
        Ok((cntlid, Binding { ctrl, qid: c.qid, sqsize: c.sqsize, sq_flow_disabled, epoch }))
    }

    fn release(&mut self, cid: u16) {
        if let Some(c) = self.commands.get_mut(&cid) {
            self.inflight_bytes = self.inflight_bytes.saturating_sub(c.charged);
            c.charged = 0;
        }
    }

    /// Completes a command with a response capsule.
    fn complete(&mut self, cid: u16, st: StatusField, dw0: u32, dw1: u32) {
        self.release(cid);
        self.commands.remove(&cid);
        self.respond(cid, st, dw0, dw1);
    }

    /// Sends a response capsule (the command is not, or no longer, in the table).
    fn respond(&mut self, cid: u16, st: StatusField, dw0: u32, dw1: u32) {
        if !st.is_success() {
            TargetCounters::add(&self.shared.counters.commands_failed, 1);
        }
        let (sqhd, sqid) = match &self.binding {
            Some(b) if b.sq_flow_disabled => (0xFFFF, b.qid),
            Some(b) => (self.sqhd, b.qid),
            None => (self.sqhd, 0),
        };
        let cqe = Cqe { dw0, dw1, sqhd, sqid, cid, status: st };
        pdu::encode_capsule_resp(&cqe, &self.tx, &mut self.out);
    }

    /// Completes a command with data for the host: C2HData PDUs, then a response capsule, or
    /// the SUCCESS flag on the last C2HData when the host disabled SQ flow control.
    fn complete_with_data(&mut self, cid: u16, data: &[u8]) {
        TargetCounters::add(&self.shared.counters.bytes_to_host, data.len() as u64);
        let s = &self.shared.settings;
        let success_flag = s.c2h_success && self.binding.as_ref().is_some_and(|b| b.sq_flow_disabled);
        let chunk = s.c2h_chunk.max(1) as usize;
        let mut off = 0;
        while off < data.len() {
            let end = (off + chunk).min(data.len());
            let last = end == data.len();
            pdu::encode_c2h_data(cid, off as u32, &data[off..end], last, last && success_flag, &self.tx, &mut self.out);
            off = end;
        }
        if success_flag && !data.is_empty() {
            self.release(cid);
            self.commands.remove(&cid);
        } else {
            self.complete(cid, StatusField::SUCCESS, 0, 0);
        }
    }
}

impl Drop for QueueSession {
    fn drop(&mut self) {
        if let Some(b) = &self.binding {
            if b.qid == 0 {
                // The admin queue's connection is the association: without it the controller
                // is gone, and its I/O queues close on their next tick.
                self.shared.destroy_controller(&b.ctrl);
            } else {
                b.ctrl.state.lock().io_queues.remove(&b.qid);
            }
        }
    }
}

/// How the SGL and in-capsule data of a command move its data.
fn transfer_of(sqe: &Sqe, data: &[u8]) -> Result<Transfer, StatusField> {
    let sgl = sqe.sgl();
    let dir = DataDirection::of(sqe);
    if !data.is_empty() {
        if dir != DataDirection::HostToController {
            return Err(status(generic::INVALID_FIELD));
        }
        if sgl.sgl_type != Sgl::IN_CAPSULE {
            return Err(status(generic::DATA_SGL_LENGTH_INVALID));
        }
        if sgl.address != 0 {
            return Err(status(generic::SGL_OFFSET_INVALID));
        }
        if sgl.length as usize != data.len() {
            return Err(status(generic::DATA_SGL_LENGTH_INVALID));
        }
        return Ok(Transfer::InCapsule(sgl.length));
    }
    match sgl.sgl_type {
        Sgl::IN_CAPSULE | Sgl::TRANSPORT if sgl.length == 0 => Ok(Transfer::None),
        Sgl::IN_CAPSULE => Err(status(generic::DATA_SGL_LENGTH_INVALID)),
        Sgl::TRANSPORT => match dir {
            DataDirection::HostToController => Ok(Transfer::FromHost(sgl.length)),
            DataDirection::ControllerToHost => Ok(Transfer::ToHost(sgl.length)),
            _ => Err(status(generic::INVALID_FIELD)),
        },
        _ => Err(status(generic::SGL_DESCRIPTOR_TYPE_INVALID)),
    }
}

fn command_kind(cmd: &Result<Command, scalio_common::nvme::CommandError>) -> CommandKind {
    match cmd {
        Ok(Command::Fabrics(f)) => match f {
            FabricsCommand::Connect(_) => CommandKind::Connect,
            FabricsCommand::PropertyGet { .. } => CommandKind::PropertyGet,
            FabricsCommand::PropertySet { .. } => CommandKind::PropertySet,
            FabricsCommand::Disconnect { .. } => CommandKind::Disconnect,
        },
        Ok(Command::Admin(a)) => match a {
            AdminCommand::Identify { .. } => CommandKind::Identify,
            AdminCommand::GetLogPage { .. } => CommandKind::GetLogPage,
            AdminCommand::SetFeatures { .. } => CommandKind::SetFeatures,
            AdminCommand::GetFeatures { .. } => CommandKind::GetFeatures,
            AdminCommand::KeepAlive => CommandKind::KeepAlive,
            AdminCommand::AsyncEventRequest => CommandKind::AsyncEventRequest,
            AdminCommand::Abort { .. } => CommandKind::Abort,
        },
        Ok(Command::Io(io)) => match io {
            IoCommand::Read { .. } => CommandKind::Read,
            IoCommand::Write { .. } => CommandKind::Write,
            IoCommand::Flush { .. } => CommandKind::Flush,
        },
        Err(_) => CommandKind::Unsupported,
    }
}

#[cfg(test)]
mod tests {
    //! The session without sockets: deterministic checks of what is hard to provoke over TCP
    //! (memory budget, keep-alive expiry on a synthetic clock, the AER limit).

    use super::*;
    use crate::target::controller::Settings;
    use crate::target::namespace::MemNamespace;
    use scalio_common::nvme::command::PropertySize;
    use scalio_common::nvme::fabrics::{property, Cc};
    use scalio_common::nvme::pdu::CapsuleResp;

    const NQN: &str = "nqn.test:session";

    fn settings() -> Settings {
        Settings {
            mqes: 1023,
            max_io_queues: 4,
            mdts: 5,
            max_transfer: 128 * 1024,
            io_in_capsule: 8192,
            admin_in_capsule: 8192,
            maxh2cdata: 32 * 1024,
            c2h_chunk: 32 * 1024,
            c2h_success: false,
            max_inflight_bytes: 128 * 1024,
            output_high_water: 4 << 20,
            cpda: 0,
            digests_allowed: Digests::default(),
            discovery_kato_ms: 120_000,
            model: "test".into(),
            firmware: "0".into(),
        }
    }

    fn shared() -> Arc<TargetShared> {
        let ns: Arc<dyn TargetNamespace> = Arc::new(MemNamespace::new(4096));
        let sub = crate::target::controller::Subsystem::new(NQN.into(), ns, true);
        Arc::new(TargetShared::new(settings(), vec![sub], "127.0.0.1:4420".parse().unwrap()))
    }

    struct Host {
        dec: PduDecoder,
        cid: u16,
    }

    impl Host {
        fn new(s: &mut QueueSession, now: Instant) -> Host {
            let req = IcReq { pfv: 0, hpda: 0, digests: Digests::default(), maxr2t: 0 };
            s.on_bytes(&Pdu::IcReq(req).to_vec(&TxParams::default()), now);
            let n = s.output().len();
            assert_eq!(n, 128);
            s.consume_output(n);
            let rx = RxParams { max_c2h_data: 1 << 20, ..RxParams::default() };
            Host { dec: PduDecoder::established(Role::Host, rx), cid: 0 }
        }

        fn send(&mut self, s: &mut QueueSession, mut sqe: Sqe, data: &[u8], data_in: u32, now: Instant) -> u16 {
            self.cid += 1;
            sqe.set_cid(self.cid);
            sqe.set_sgl(if data.is_empty() { Sgl::transport(data_in) } else { Sgl::in_capsule(0, data.len() as u32) });
            let mut b = Vec::new();
            pdu::encode_capsule_cmd(&sqe, data, &TxParams::default(), &mut b);
            s.on_bytes(&b, now);
            self.cid
        }

        fn responses(&mut self, s: &mut QueueSession) -> Vec<Cqe> {
            let out = s.output().to_vec();
            s.consume_output(out.len());
            self.dec.feed(&out);
            let mut v = Vec::new();
            while let Some(d) = self.dec.next_pdu().unwrap() {
                if let Pdu::CapsuleResp(CapsuleResp { cqe }) = d.pdu {
                    v.push(cqe);
                }
            }
            v
        }
    }

    fn connect_data(cntlid: u16) -> Vec<u8> {
        ConnectData { hostid: [7; 16], cntlid, subnqn: NQN.into(), hostnqn: "nqn.test:h".into() }.encode().to_vec()
    }

    /// An enabled admin queue with the given KATO; returns its controller ID.
    fn admin(s: &mut QueueSession, h: &mut Host, kato: u32, now: Instant) -> u16 {
        let c = FabricsCommand::Connect(Connect { recfmt: 0, qid: 0, sqsize: 31, cattr: 4, kato });
        h.send(s, c.to_sqe(), &connect_data(0xFFFF), 0, now);
        let cntlid = h.responses(s)[0].dw0 as u16;
        let en = FabricsCommand::PropertySet {
            size: PropertySize::Four,
            offset: property::CC,
            value: Cc::enabled_nvm().to_u32().into(),
        };
        h.send(s, en.to_sqe(), &[], 0, now);
        assert!(h.responses(s)[0].status.is_success());
        cntlid
    }

    #[test]
    fn keep_alive_expiry_follows_the_kato_on_the_session_clock() {
        let sh = shared();
        let t0 = Instant::now();
        let mut s = QueueSession::new(sh.clone(), "127.0.0.1:4420".parse().unwrap(), t0);
        let mut h = Host::new(&mut s, t0);
        admin(&mut s, &mut h, 1000, t0);
        s.on_tick(t0 + Duration::from_millis(900));
        assert_eq!(s.close_state(), Close::No);
        // A Keep Alive restarts the timer.
        h.send(&mut s, AdminCommand::KeepAlive.to_sqe(), &[], 0, t0 + Duration::from_millis(900));
        assert!(h.responses(&mut s)[0].status.is_success());
        s.on_tick(t0 + Duration::from_millis(1800));
        assert_eq!(s.close_state(), Close::No);
        s.on_tick(t0 + Duration::from_millis(1901));
        assert_eq!(s.close_state(), Close::Now);
        assert_eq!(sh.counters.keep_alive_expired.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[test]
    fn reads_wait_for_the_memory_budget() {
        let sh = shared();
        let now = Instant::now();
        let mut a = QueueSession::new(sh.clone(), "127.0.0.1:4420".parse().unwrap(), now);
        let mut ha = Host::new(&mut a, now);
        let cntlid = admin(&mut a, &mut ha, 0, now);
        let mut s = QueueSession::new(sh, "127.0.0.1:4420".parse().unwrap(), now);
        let mut h = Host::new(&mut s, now);
        let c = FabricsCommand::Connect(Connect { recfmt: 0, qid: 1, sqsize: 127, cattr: 4, kato: 0 });
        h.send(&mut s, c.to_sqe(), &connect_data(cntlid), 0, now);
        assert!(h.responses(&mut s)[0].status.is_success());
        // Eight 64 KiB reads against a 128 KiB budget: two at a time reach the namespace.
        for i in 0..8u64 {
            h.send(&mut s, IoCommand::Read { nsid: 1, slba: i * 128, nlb: 127 }.to_sqe(), &[], 65536, now);
        }
        let mut issued = s.take_requests();
        assert_eq!(issued.len(), 2);
        let mut total = 2;
        while let Some(r) = issued.pop() {
            s.on_ns_done(r.token, NsResult::Read(Ok(vec![0; 65536])));
            let next = s.take_requests();
            assert!(next.len() <= 1);
            total += next.len();
            issued.extend(next);
            let out = s.output().len();
            s.consume_output(out);
        }
        assert_eq!(total, 8);
    }

    #[test]
    fn asynchronous_event_requests_are_held_up_to_the_limit() {
        let sh = shared();
        let now = Instant::now();
        let mut s = QueueSession::new(sh, "127.0.0.1:4420".parse().unwrap(), now);
        let mut h = Host::new(&mut s, now);
        admin(&mut s, &mut h, 0, now);
        for _ in 0..=admin::AERL {
            h.send(&mut s, AdminCommand::AsyncEventRequest.to_sqe(), &[], 0, now);
        }
        assert!(h.responses(&mut s).is_empty(), "held, not answered");
        h.send(&mut s, AdminCommand::AsyncEventRequest.to_sqe(), &[], 0, now);
        let r = h.responses(&mut s);
        assert_eq!(r[0].status.code(), (1, command_specific::ASYNC_EVENT_REQUEST_LIMIT_EXCEEDED));
    }

    #[test]
    fn admin_commands_wait_for_the_controller_to_be_enabled() {
        let sh = shared();
        let now = Instant::now();
        let mut s = QueueSession::new(sh, "127.0.0.1:4420".parse().unwrap(), now);
        let mut h = Host::new(&mut s, now);
        // Before Connect.
        h.send(&mut s, AdminCommand::KeepAlive.to_sqe(), &[], 0, now);
        assert_eq!(h.responses(&mut s)[0].status.code(), (0, generic::COMMAND_SEQUENCE_ERROR));
        let c = FabricsCommand::Connect(Connect { recfmt: 0, qid: 0, sqsize: 31, cattr: 4, kato: 0 });
        h.send(&mut s, c.to_sqe(), &connect_data(0xFFFF), 0, now);
        assert!(h.responses(&mut s)[0].status.is_success());
        // Connected, not enabled.
        let id = AdminCommand::Identify { cns: 1, cntid: 0, nsid: 0, csi: 0 };
        h.send(&mut s, id.to_sqe(), &[], 4096, now);
        assert_eq!(h.responses(&mut s)[0].status.code(), (0, generic::COMMAND_SEQUENCE_ERROR));
        // A second Connect on the same queue.
        h.send(&mut s, c.to_sqe(), &connect_data(0xFFFF), 0, now);
        assert_eq!(h.responses(&mut s)[0].status.code(), (0, generic::COMMAND_SEQUENCE_ERROR));
    }
}
