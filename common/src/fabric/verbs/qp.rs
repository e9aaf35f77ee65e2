//! The client's queue pair on verbs: one RC queue pair, its completion queue and a thread that
//! polls it.
//!
//! A chain is posted as one list of work requests (one doorbell); only its last request is
//! signaled (or none, for unsignaled chains, with selective signaling from [`SendQueue`]
//! accounting). Completions arrive in posting order, so the chains waiting for them are a FIFO:
//! a signaled completion finishes every chain before it. A failed completion says which request
//! failed (its work-request id carries the chain's sequence number and the request's index); the
//! queue pair is then in the error state, and everything pending or posted later is flushed, as
//! RC does. RPCs are SENDs into the server's pre-posted receive buffers, within the credits the
//! server granted; responses come back into this queue pair's own receive buffers.
//!
//! Connection setup ([`VerbsQueuePair::connect`]) goes through rdma_cm by default: resolve the
//! server's IP address and route, connect with the handshake as private data, take the queue
//! pair to RTS with the negotiated attributes, establish. The TCP handshake is the other way
//! (`verbs.connect = "tcp"`).

use super::cm::{self, Channel, CmId};
use super::device::{Cq, VerbsDevice, MAX_INLINE, READ_DEPTH};
use super::queue::{self, completion_error, send_wr_id, split_send_wr_id, PostedAt, RecvSide, SendSide, Wc, RECV_BIT};
use super::ring::Ring;
use super::wire::{self, ClientHello, CmRequest, Grant, MessageHeader, MessageKind, Reassembly, ServerHello};
use crate::fabric::{
    completion, validate_chain, CmError, Completer, Completion, Disconnect, FabricError, LocalKey, LocalRegions,
    MemoryRegion, ProtocolError, QueuePair, Secret, SendQueue, VerbsConnect, WorkCompletion, WorkRequest,
    DEFAULT_SEND_QUEUE_DEPTH, HELD_PER_CREDIT, MAX_TRANSFER,
};
use parking_lot::Mutex;
use sideway::ibverbs::memory_region::MemoryRegion as Mr;
use sideway::ibverbs::queue_pair::BasicQueuePair;
use sideway::ibverbs::queue_pair::{
    PostSendGuard as _, QueuePair as _, SetInlineData as _, SetScatterGatherEntry as _, WorkRequestFlags,
};
use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Waker;
use std::time::Duration;

/// Receive buffers for responses. More responses than this in flight wait in the server's NIC
/// (receiver-not-ready retries) until the poller re-posts a buffer.
const RESPONSE_BUFFERS: usize = 32;
/// Bytes of the staging ring: the largest READ returned in a `Vec`, plus room to keep posting.
const STAGING: usize = MAX_TRANSFER + (256 << 10);

/// A client queue pair on an RDMA device.
pub struct VerbsQueuePair {
    shared: Arc<Shared>,
    poller: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    cq: Cq,
    state: Mutex<State>,
    completions: Mutex<CompletionQueue>,
    async_errors: AtomicU64,
    stop: AtomicBool,
    recv: RecvSide,
    grant: Grant,
    dev: Arc<VerbsDevice>,
    control: Control,
}

/// What holds the connection open, and says when the server has left.
enum Control {
    /// The TCP handshake's connection, kept open for the life of the queue pair: the server
    /// takes its end closing as the sign that this client is gone.
    Tcp { _stream: TcpStream },
    /// The rdma_cm identifier of the connection (disconnected and destroyed with the queue
    /// pair: the server gets `DISCONNECTED`), and its channel, where the server's disconnect
    /// arrives.
    Cm { channel: Arc<Channel>, id: CmId },
}

impl Control {
    /// Whether the server has disconnected (rdma_cm only: over TCP the queue pair's own errors
    /// say it).
    fn peer_left(&self) -> bool {
        let Control::Cm { channel, id } = self else { return false };
        let mut left = false;
        while let Ok(Some(e)) = channel.next(Duration::ZERO) {
            left |= e.id == id.key()
                && matches!(e.kind, cm::event::RDMA_CM_EVENT_DISCONNECTED | cm::event::RDMA_CM_EVENT_DEVICE_REMOVAL);
        }
        left
    }
}

/// How long address and route resolution may take, each.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the server may take to answer a connect request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// The kind of error a resolution event's status (a negative errno) stands for.
fn status_kind(status: i32) -> std::io::ErrorKind {
    if status == 0 {
        std::io::ErrorKind::Other
    } else {
        std::io::Error::from_raw_os_error(status.saturating_abs()).kind()
    }
}

#[derive(Default)]
struct CompletionQueue {
    done: VecDeque<WorkCompletion>,
    armed: Option<Waker>,
}

struct State {
    send: SendSide,
    pending: VecDeque<Pending>,
    /// In the error state: nothing more is posted.
    errored: bool,
    locals: LocalRegions,
    local_mrs: Vec<Arc<Mr>>,
    rpc: Rpc,
}

struct Rpc {
    next_id: u64,
    /// Receive buffers of the server this queue pair may still fill.
    credits: u32,
    waiting: HashMap<u64, Completer<Vec<u8>>>,
    /// Calls that wait for credits (or send-queue room), in order.
    held: VecDeque<(u64, Vec<u8>, Completer<Vec<u8>>)>,
    reassembly: Reassembly,
}

struct Pending {
    at: PostedAt,
    what: What,
}

enum What {
    /// `post`: the READs' bytes are at these ring offsets.
    Post {
        done: Completer<Vec<u8>>,
        reads: Vec<(usize, usize)>,
    },
    /// `post_signaled`: a completion with this id goes to the completion queue.
    Signaled(u64),
    Unsignaled,
    /// An RPC message.
    Send,
}

/// Something to do after the state's lock is released.
#[derive(Default)]
struct Deferred {
    wake: Option<Waker>,
}

impl VerbsQueuePair {
    /// Opens a queue pair to the server whose verbs listener is at `addr`: through rdma_cm (an
    /// IP address on the RDMA network; IPv6 link-local with its scope) or, with
    /// `verbs.connect = "tcp"`, the TCP handshake's address.
    pub fn connect(
        dev: &Arc<VerbsDevice>,
        addr: SocketAddr,
        secret: Option<&Secret>,
    ) -> Result<VerbsQueuePair, FabricError> {
        let depth = DEFAULT_SEND_QUEUE_DEPTH;
        let cq = dev.completion_queue(depth + RESPONSE_BUFFERS as u32 + 64)?;
        let mut qp = dev.queue_pair(&cq, depth + 16, RESPONSE_BUFFERS as u32 + 4)?;
        let (grant, recv, control) = match dev.connect_method() {
            VerbsConnect::RdmaCm => Self::handshake_cm(dev, &mut qp, addr, secret)?,
            VerbsConnect::Tcp => Self::handshake_tcp(dev, &mut qp, addr, secret)?,
        };
        Self::start(dev, cq, qp, grant, recv, control)
    }

    /// rdma_cm: resolve, connect with a [`CmRequest`], take the grant from the accept's
    /// private data (or the reason from the reject's), go to RTS, establish.
    fn handshake_cm(
        dev: &Arc<VerbsDevice>,
        qp: &mut BasicQueuePair,
        addr: SocketAddr,
        secret: Option<&Secret>,
    ) -> Result<(Grant, RecvSide, Control), FabricError> {
        let fail = |e: CmError| Err(FabricError::ConnectionManager(e));
        let channel = Channel::new()?;
        let id = channel.create_id()?;
        // From this device's own address when it is of the same family: rdma_cm then binds
        // the configured device, port and GID rather than whatever the routing table picks.
        let src = dev.ip_addr().filter(|s| s.is_ipv4() == addr.is_ipv4());
        id.resolve_addr(src, addr, RESOLVE_TIMEOUT)?;
        let e = channel.wait_for(&id, RESOLVE_TIMEOUT + Duration::from_secs(1))?;
        match e.kind {
            cm::event::RDMA_CM_EVENT_ADDR_RESOLVED => {}
            cm::event::RDMA_CM_EVENT_ADDR_ERROR => return fail(CmError::AddressResolution(status_kind(e.status))),
            other => return fail(CmError::UnexpectedEvent(other)),
        }
        dev.check_cm_device(&id)?;
        id.resolve_route(RESOLVE_TIMEOUT)?;
        let e = channel.wait_for(&id, RESOLVE_TIMEOUT + Duration::from_secs(1))?;
        match e.kind {
            cm::event::RDMA_CM_EVENT_ROUTE_RESOLVED => {}
            cm::event::RDMA_CM_EVENT_ROUTE_ERROR => return fail(CmError::RouteResolution(status_kind(e.status))),
            other => return fail(CmError::UnexpectedEvent(other)),
        }
        let request = CmRequest { secret_digest: secret.map(|s| wire::secret_digest(s.as_bytes())) };
        id.connect(qp.qp_number(), &request.encode(), READ_DEPTH)?;
        let e = channel.wait_for(&id, CONNECT_TIMEOUT)?;
        let grant = match (e.kind, ServerHello::decode(&e.private_data)) {
            (cm::event::RDMA_CM_EVENT_CONNECT_RESPONSE, Ok(ServerHello::Accepted { grant, .. })) => grant,
            (
                cm::event::RDMA_CM_EVENT_CONNECT_RESPONSE | cm::event::RDMA_CM_EVENT_REJECTED,
                Ok(ServerHello::Refused(r)),
            ) => return Err(FabricError::Refused(r)),
            (_, Err(wire::HandshakeError::Version(server))) => {
                return Err(FabricError::Protocol(ProtocolError::Version { server, client: wire::VERSION }))
            }
            (cm::event::RDMA_CM_EVENT_CONNECT_RESPONSE, Err(_)) => {
                return Err(FabricError::Protocol(ProtocolError::BadHandshake))
            }
            (cm::event::RDMA_CM_EVENT_REJECTED, Err(_)) => return fail(CmError::Rejected { reason: e.status }),
            (cm::event::RDMA_CM_EVENT_UNREACHABLE | cm::event::RDMA_CM_EVENT_CONNECT_ERROR, _) => {
                return fail(CmError::Unreachable(status_kind(e.status)))
            }
            (other, _) => return fail(CmError::UnexpectedEvent(other)),
        };
        let recv = RecvSide::new(dev, RESPONSE_BUFFERS, grant.buffer_len as usize)?;
        recv.post(qp, 0..RESPONSE_BUFFERS)?;
        dev.connect_cm(qp, &id)?;
        id.establish()?;
        Ok((grant, recv, Control::Cm { channel, id }))
    }

    /// The TCP handshake: queue pair numbers, PSNs and GIDs exchanged by hand.
    fn handshake_tcp(
        dev: &Arc<VerbsDevice>,
        qp: &mut BasicQueuePair,
        addr: SocketAddr,
        secret: Option<&Secret>,
    ) -> Result<(Grant, RecvSide, Control), FabricError> {
        let mut control = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        control.set_nodelay(true)?;
        control.set_read_timeout(Some(Duration::from_secs(20)))?;
        let psn = initial_psn();
        let hello = ClientHello {
            secret: secret.map(|s| s.as_bytes().to_vec()).unwrap_or_default(),
            endpoint: dev.endpoint(qp, psn),
        };
        control.write_all(&hello.encode())?;
        let mut reply = [0u8; wire::SERVER_HELLO_LEN];
        control.read_exact(&mut reply).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => FabricError::Disconnected(Disconnect::PeerClosed),
            k => FabricError::Io(k),
        })?;
        let (peer, grant) = match ServerHello::decode(&reply) {
            Ok(ServerHello::Accepted { endpoint, grant }) => (endpoint, grant),
            Ok(ServerHello::Refused(reason)) => return Err(FabricError::Refused(reason)),
            Err(wire::HandshakeError::Version(server)) => {
                return Err(FabricError::Protocol(ProtocolError::Version { server, client: wire::VERSION }))
            }
            Err(_) => return Err(FabricError::Protocol(ProtocolError::BadHandshake)),
        };
        let recv = RecvSide::new(dev, RESPONSE_BUFFERS, grant.buffer_len as usize)?;
        recv.post(qp, 0..RESPONSE_BUFFERS)?;
        dev.connect(qp, psn, &peer)?;
        Ok((grant, recv, Control::Tcp { _stream: control }))
    }

    /// The connected queue pair's staging ring, state and poller thread.
    fn start(
        dev: &Arc<VerbsDevice>,
        cq: Cq,
        qp: BasicQueuePair,
        grant: Grant,
        recv: RecvSide,
        control: Control,
    ) -> Result<VerbsQueuePair, FabricError> {
        let depth = DEFAULT_SEND_QUEUE_DEPTH;
        let staging = Arc::new(MemoryRegion::new(STAGING));
        let staging_mr = dev.register(&staging, crate::fabric::Access::NONE, true)?;
        let send = SendSide {
            qp,
            sq: SendQueue::new(depth),
            ring: Ring::new(STAGING),
            staging,
            staging_mr,
            unsignaled_bytes: 0,
        };
        let shared = Arc::new(Shared {
            cq,
            state: Mutex::new(State {
                send,
                pending: VecDeque::new(),
                errored: false,
                locals: LocalRegions::default(),
                local_mrs: Vec::new(),
                rpc: Rpc {
                    next_id: 1,
                    credits: grant.credits,
                    waiting: HashMap::new(),
                    held: VecDeque::new(),
                    reassembly: Reassembly::default(),
                },
            }),
            completions: Mutex::new(CompletionQueue::default()),
            async_errors: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            recv,
            grant,
            dev: dev.clone(),
            control,
        });
        let poller_shared = shared.clone();
        let poller = std::thread::Builder::new()
            .name("verbs-qp".into())
            .spawn(move || {
                let s = &poller_shared;
                queue::run_poller(
                    &s.cq,
                    || {
                        if s.control.peer_left() {
                            let mut st = s.state.lock();
                            let mut d = Deferred::default();
                            s.enter_error(&mut st, FabricError::Disconnected(Disconnect::PeerClosed), &mut d);
                            drop(st);
                            if let Some(w) = d.wake {
                                w.wake();
                            }
                        }
                        s.stop.load(Ordering::Acquire)
                    },
                    || {
                        let found = s.progress();
                        (found, s.outstanding())
                    },
                );
            })
            .map_err(FabricError::from)?;
        Ok(VerbsQueuePair { shared, poller: Some(poller) })
    }

    /// The server's grant: RPC credits, receive buffer size, largest message.
    pub fn grant(&self) -> Grant {
        self.shared.grant
    }
}

fn initial_psn() -> u32 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(1);
    (t ^ (t >> 7)) & 0xFF_FFFF
}

impl Drop for VerbsQueuePair {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(p) = self.poller.take() {
            let _ = p.join();
        }
        // Whatever still waits will never complete.
        let mut st = self.shared.state.lock();
        let mut d = Deferred::default();
        self.shared.enter_error(&mut st, FabricError::Disconnected(Disconnect::Closed), &mut d);
        // Tell the server now (destroying the identifier would too, later).
        if let Control::Cm { id, .. } = &self.shared.control {
            let _ = id.disconnect();
        }
    }
}

/// A refused post: the reason, and the completer of a `post` to resolve with it.
type Refusal = (FabricError, Option<Completer<Vec<u8>>>);

/// How a chain was posted.
enum Mode {
    Post(Completer<Vec<u8>>),
    Signaled(u64),
    Unsignaled,
}

impl Shared {
    fn submit(&self, chain: &[WorkRequest<'_>], mode: Mode) -> Result<(), Refusal> {
        let give_back = |mode: Mode| match mode {
            Mode::Post(c) => Some(c),
            _ => None,
        };
        let mut st = self.state.lock();
        let st = &mut *st;
        if st.errored {
            return Err((FabricError::Flushed, give_back(mode)));
        }
        // Local memory first: a refusal here sends nothing and changes nothing.
        let mut locals = Vec::with_capacity(chain.len());
        for wr in chain {
            if let WorkRequest::ReadInto { local, .. } | WorkRequest::WriteFrom { local, .. } = wr {
                match st.locals.resolve(local) {
                    Ok((region, offset)) => {
                        locals.push((st.local_mrs[local.lkey.0 as usize].lkey(), region.addr() + offset as u64))
                    }
                    Err(e) => return Err((e, give_back(mode))),
                }
            }
        }
        let need: usize = chain
            .iter()
            .map(|wr| match wr {
                WorkRequest::Read { len, .. } => *len as usize,
                WorkRequest::Write { data, .. } if data.len() > MAX_INLINE => data.len(),
                _ => 0,
            })
            .sum();
        let signaled = !matches!(mode, Mode::Unsignaled);
        let (offset, at) = match st.send.reserve(need, chain.len(), signaled) {
            Ok(r) => r,
            Err(e) => return Err((e, give_back(mode))),
        };
        let send = &mut st.send;
        let staging_lkey = send.staging_mr.lkey();
        let staging_base = send.staging.addr();
        let mut cursor = offset;
        let mut reads = Vec::new();
        let mut locals = locals.into_iter();
        let last = chain.len() - 1;
        let mut guard = send.qp.start_post_send();
        for (i, wr) in chain.iter().enumerate() {
            let flags = if i == last && at.signaled { WorkRequestFlags::Signaled } else { WorkRequestFlags::none() };
            let handle = guard.construct_wr(send_wr_id(at.seq, i), flags);
            // SAFETY (every setup_sge below): the SGE names registered memory that outlives the
            // request: either `len` bytes of the staging ring inside the space `reserve` handed
            // to this chain (kept until a signaled completion covers the chain), or a slice of
            // the caller's registered region that `LocalRegions::resolve` checked to lie inside
            // it (the region and its registration live as long as this queue pair).
            match *wr {
                WorkRequest::Read { remote, len } => {
                    let h = handle.setup_read(remote.rkey, remote.addr);
                    unsafe { h.setup_sge(staging_lkey, staging_base + cursor as u64, len) };
                    reads.push((cursor, len as usize));
                    cursor += len as usize;
                }
                WorkRequest::Write { remote, data } if data.len() <= MAX_INLINE => {
                    handle.setup_write(remote.rkey, remote.addr).setup_inline_data(data);
                }
                WorkRequest::Write { remote, data } => {
                    send.staging.write(cursor, data).expect("reserved");
                    let h = handle.setup_write(remote.rkey, remote.addr);
                    unsafe { h.setup_sge(staging_lkey, staging_base + cursor as u64, data.len() as u32) };
                    cursor += data.len();
                }
                WorkRequest::ReadInto { remote, local } => {
                    let (lkey, addr) = locals.next().expect("resolved above");
                    let h = handle.setup_read(remote.rkey, remote.addr);
                    unsafe { h.setup_sge(lkey, addr, local.len) };
                }
                WorkRequest::WriteFrom { remote, local } => {
                    let (lkey, addr) = locals.next().expect("resolved above");
                    let h = handle.setup_write(remote.rkey, remote.addr);
                    unsafe { h.setup_sge(lkey, addr, local.len) };
                }
            }
        }
        if let Err(e) = guard.post() {
            let e = queue::post_error(e);
            let mut d = Deferred::default();
            self.enter_error(st, e.clone(), &mut d);
            drop(d);
            return Err((e, give_back(mode)));
        }
        let what = match mode {
            Mode::Post(done) => What::Post { done, reads },
            Mode::Signaled(id) => What::Signaled(id),
            Mode::Unsignaled => What::Unsignaled,
        };
        st.pending.push_back(Pending { at, what });
        Ok(())
    }

    /// Polls the completion queue and handles what it finds, under the state's lock (so in the
    /// queue's order, whether the poller thread or a caller of `poll_cq` polls). Returns how many.
    fn progress(&self) -> usize {
        let mut d = Deferred::default();
        let mut batch = Vec::new();
        {
            let mut st = self.state.lock();
            if queue::poll(&self.cq, &mut batch) == 0 {
                return 0;
            }
            for wc in &batch {
                if wc.wr_id & RECV_BIT != 0 {
                    self.on_receive(&mut st, wc, &mut d);
                } else {
                    self.on_send(&mut st, wc, &mut d);
                }
            }
            self.pump_held(&mut st, &mut d);
        }
        if let Some(w) = d.wake {
            w.wake();
        }
        batch.len()
    }

    /// Whether anything waits for a completion (a chain, or an RPC's response).
    fn outstanding(&self) -> bool {
        let st = self.state.lock();
        !st.pending.is_empty() || !st.rpc.waiting.is_empty()
    }

    fn finish(&self, p: Pending, result: Result<(), FabricError>, st: &mut State, d: &mut Deferred) {
        match p.what {
            What::Post { done, reads } => done.complete(result.map(|()| {
                let mut out = vec![0u8; reads.iter().map(|r| r.1).sum()];
                let mut at = 0;
                for (offset, len) in reads {
                    st.send.staging.read(offset, &mut out[at..at + len]).expect("inside the ring");
                    at += len;
                }
                out
            })),
            What::Signaled(wr_id) => {
                let mut cq = self.completions.lock();
                cq.done.push_back(WorkCompletion { wr_id, result });
                if let Some(w) = cq.armed.take() {
                    d.wake = Some(w);
                }
            }
            What::Unsignaled => {
                if result.is_err() && result != Err(FabricError::Flushed) {
                    self.async_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            What::Send => {}
        }
    }

    fn on_send(&self, st: &mut State, wc: &Wc, d: &mut Deferred) {
        let (seq, index) = split_send_wr_id(wc.wr_id);
        if st.errored {
            return; // everything was flushed when the error state began
        }
        // Chains before this one executed (RC completes in order).
        while st.pending.front().is_some_and(|p| p.at.seq < seq) {
            let p = st.pending.pop_front().expect("checked");
            st.send.retire(p.at);
            self.finish(p, Ok(()), st, d);
        }
        let result = if wc.status == queue::status::SUCCESS { Ok(()) } else { Err(completion_error(wc.status, index)) };
        if st.pending.front().is_some_and(|p| p.at.seq == seq) {
            let p = st.pending.pop_front().expect("checked");
            st.send.retire(p.at);
            self.finish(p, result.clone(), st, d);
        }
        if let Err(e) = result {
            let reason = if matches!(e, FabricError::Remote { .. }) { FabricError::Flushed } else { e };
            self.enter_error(st, reason, d);
        }
    }

    fn on_receive(&self, st: &mut State, wc: &Wc, d: &mut Deferred) {
        if st.errored {
            return;
        }
        if wc.status != queue::status::SUCCESS {
            self.enter_error(st, completion_error(wc.status, 0), d);
            return;
        }
        let index = (wc.wr_id & !RECV_BIT) as usize;
        let fragment = self.recv.take(index, wc.byte_len as usize);
        if let Err(e) = self.recv.post(&mut st.send.qp, std::iter::once(index)) {
            self.enter_error(st, e, d);
            return;
        }
        let message = st.rpc.reassembly.push(&fragment, MAX_TRANSFER + wire::HEADER_LEN);
        match message {
            Ok(None) => {}
            Ok(Some((h, body, _))) if h.kind == MessageKind::Response => {
                st.rpc.credits = st.rpc.credits.saturating_add(h.credits).min(self.grant.credits);
                match st.rpc.waiting.remove(&h.id) {
                    Some(done) if body.is_empty() => done.complete(Err(FabricError::Protocol(ProtocolError::Dropped))),
                    Some(done) => done.complete(Ok(body)),
                    None => self.enter_error(st, FabricError::Protocol(ProtocolError::UnknownRequest(h.id)), d),
                }
            }
            Ok(Some(_)) | Err(_) => self.enter_error(st, FabricError::Protocol(ProtocolError::Malformed), d),
        }
    }

    /// Sends held calls, in order, while credits and the send queue allow.
    fn pump_held(&self, st: &mut State, d: &mut Deferred) {
        while let Some((id, request, _)) = st.rpc.held.front() {
            let frags = wire::fragments(request.len(), self.grant.buffer_len as usize) as u32;
            if st.rpc.credits < frags {
                break;
            }
            let header = MessageHeader { kind: MessageKind::Request, id: *id, len: request.len() as u32, credits: 0 };
            match st.send.post_message(header, request, self.grant.buffer_len as usize) {
                Ok(None) => break,
                Ok(Some(at)) => {
                    st.rpc.credits -= frags;
                    st.pending.push_back(Pending { at, what: What::Send });
                    let (id, _, done) = st.rpc.held.pop_front().expect("checked");
                    st.rpc.waiting.insert(id, done);
                }
                Err(e) => {
                    self.enter_error(st, e, d);
                    break;
                }
            }
        }
    }

    /// The error state: everything waiting completes with `reason` (RPCs and chains alike), and
    /// nothing is posted any more.
    fn enter_error(&self, st: &mut State, reason: FabricError, d: &mut Deferred) {
        st.errored = true;
        while let Some(p) = st.pending.pop_front() {
            self.finish(p, Err(reason.clone()), st, d);
        }
        for (_, done) in st.rpc.waiting.drain() {
            done.complete(Err(reason.clone()));
        }
        for (_, _, done) in st.rpc.held.drain(..) {
            done.complete(Err(reason.clone()));
        }
    }
}

impl QueuePair for VerbsQueuePair {
    fn post(&self, chain: &[WorkRequest<'_>]) -> Completion<Vec<u8>> {
        if let Err(e) = validate_chain(chain, true) {
            return Completion::ready(Err(e));
        }
        let (done, f) = completion();
        if let Err((e, Some(done))) = self.shared.submit(chain, Mode::Post(done)) {
            done.complete(Err(e));
        }
        f
    }

    fn max_message(&self) -> usize {
        (self.shared.grant.max_message as usize).saturating_sub(wire::HEADER_LEN)
    }

    fn post_unsignaled(&self, chain: &[WorkRequest<'_>]) -> Result<(), FabricError> {
        validate_chain(chain, false)?;
        self.shared.submit(chain, Mode::Unsignaled).map_err(|(e, _)| e)
    }

    fn call(&self, request: &[u8]) -> Completion<Vec<u8>> {
        let s = &self.shared;
        let buffer_len = s.grant.buffer_len as usize;
        let frags = wire::fragments(request.len(), buffer_len);
        if request.len() + wire::HEADER_LEN > s.grant.max_message as usize || frags > s.grant.credits as usize {
            return Completion::ready(Err(FabricError::TooLarge(request.len())));
        }
        let (done, f) = completion();
        let mut d = Deferred::default();
        {
            let mut st = s.state.lock();
            if st.errored {
                done.complete(Err(FabricError::Flushed));
                return f;
            }
            if st.rpc.held.len() >= HELD_PER_CREDIT * s.grant.credits as usize {
                done.complete(Err(FabricError::QueueFull));
                return f;
            }
            let id = st.rpc.next_id;
            st.rpc.next_id += 1;
            st.rpc.held.push_back((id, request.to_vec(), done));
            s.pump_held(&mut st, &mut d);
        }
        if let Some(w) = d.wake {
            w.wake();
        }
        f
    }

    fn async_errors(&self) -> u64 {
        self.shared.async_errors.load(Ordering::Relaxed)
    }

    fn register_local(&self, region: Arc<MemoryRegion>) -> Result<LocalKey, FabricError> {
        let mut st = self.shared.state.lock();
        if st.local_mrs.len() >= crate::fabric::MAX_LOCAL_REGIONS {
            return Err(FabricError::LocalAccess(crate::fabric::LocalAccessError::TooManyRegistrations));
        }
        let mr = self.shared.dev.register(&region, crate::fabric::Access::NONE, true)?;
        let key = st.locals.register(region)?;
        st.local_mrs.push(mr);
        Ok(key)
    }

    fn post_signaled(&self, wr_id: u64, chain: &[WorkRequest<'_>]) -> Result<(), FabricError> {
        if chain.iter().any(|wr| matches!(wr, WorkRequest::Read { .. })) {
            return Err(FabricError::ReadWithoutBuffer);
        }
        validate_chain(chain, true)?;
        self.shared.submit(chain, Mode::Signaled(wr_id)).map_err(|(e, _)| e)
    }

    fn poll_cq(&self, out: &mut Vec<WorkCompletion>, max: usize) -> usize {
        // Reap the device's queue on the caller's thread too: no hand-off to the poller thread
        // on the path of a caller that polls.
        self.shared.progress();
        let mut cq = self.shared.completions.lock();
        let n = max.min(cq.done.len());
        out.extend(cq.done.drain(..n));
        n
    }

    fn arm_cq(&self, waker: &Waker) {
        let mut cq = self.shared.completions.lock();
        if cq.done.is_empty() {
            cq.armed = Some(waker.clone());
        } else {
            drop(cq);
            waker.wake_by_ref();
        }
    }
}
