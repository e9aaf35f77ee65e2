//! One NVMe/TCP connection (one queue) on the controller side, as a sans-IO state machine.
//!
//! The driver feeds it received bytes, namespace completions and clock ticks; it produces bytes
//! to send, namespace operations to start, and whether to close. It owns the protocol rules:
//! initialization, Connect, the command table (many commands in flight, any completion order),
//! R2T/H2CData for data the host sends, C2HData for data it receives, SQ head reporting, and
//! fatal-error handling (a C2HTermReq, then the connection closes). Memory is bounded: what a
//! peer claims is checked against the negotiated limits before anything is allocated, and data
//! buffers per connection are capped (commands wait in order when the cap is reached).

mod commands;
mod connect;
mod transfer;

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

#[cfg(test)]
mod tests;
