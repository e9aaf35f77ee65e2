//! The server's side on verbs: registrations on the device's protection domain (the NIC itself
//! then checks key, bounds and rights of every one-sided access; no server code runs for them),
//! and a listener that accepts clients: a handshake (admission: secret, connection limit; the
//! grant) through rdma_cm (a listening identifier; the CM exchanges the queue pairs' numbers
//! and GIDs) or over TCP (exchanged by hand), then one RC queue pair per client with `credits`
//! receive buffers pre-posted, and a thread that polls its completion queue, hands complete
//! requests to the [`RpcService`] and posts the responses. A client has left when its CM
//! identifier reports `DISCONNECTED` (or its TCP connection closes); the service's
//! `peer_closed` then frees what it held.

use super::cm::{self, Channel, CmId};
use super::device::{Cq, VerbsDevice, READ_DEPTH};
use super::queue::send_wr_id;
use super::queue::{self, split_send_wr_id, PostedAt, RecvSide, SendSide, Wc, RECV_BIT};
use super::ring::Ring;
use super::window::Window;
use super::wire::{self, ClientHello, CmRequest, Endpoint, Grant, MessageHeader, MessageKind, Reassembly, ServerHello};
use crate::fabric::{
    Access, CloseReason, Disconnect, FabricError, IncomingRpc, MemoryRegion, PeerId, RegionDesc, Registrar, ReplySink,
    Responder, RpcService, Secret, SendQueue, Strided, Unsupported, VerbsConnect, MAX_TRANSFER,
};
use parking_lot::Mutex;
use sideway::ibverbs::memory_region::MemoryRegion as Mr;
use sideway::ibverbs::queue_pair::{BasicQueuePair, QueuePair as _};
use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::Weak;
use std::time::{Duration, Instant};

/// A registered region and its registration (dropped together: the registration first).
type Registered = (Arc<Mr>, Arc<MemoryRegion>);

/// The registrations of one protection domain: remote key → the region and its registration.
pub struct VerbsRegistrar {
    dev: Arc<VerbsDevice>,
    regions: Mutex<HashMap<u32, Registered>>,
    /// The connections of the listeners started with [`peers`](Self::peers) in their
    /// [`NicConfig`]: where windows are bound.
    peers: Arc<WindowPeers>,
    /// The device has type-2 memory windows.
    windows: bool,
}

impl VerbsRegistrar {
    pub fn new(dev: Arc<VerbsDevice>) -> VerbsRegistrar {
        let windows = dev.has_type2_windows();
        VerbsRegistrar { dev, regions: Mutex::new(HashMap::new()), peers: Arc::default(), windows }
    }

    /// The directory a listener must be started with ([`NicConfig::peers`]) for this
    /// registrar to grant windows to its connections.
    pub fn peers(&self) -> Arc<WindowPeers> {
        self.peers.clone()
    }

    /// Whether the device has type-2 memory windows, so that [`Registrar::grant_window`] works.
    pub fn has_windows(&self) -> bool {
        self.windows
    }
}

/// The server's connections by peer, for binding windows on their queue pairs.
#[derive(Default)]
pub struct WindowPeers(Mutex<HashMap<PeerId, Weak<Conn>>>);

impl std::fmt::Debug for WindowPeers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowPeers").field("connections", &self.0.lock().len()).finish()
    }
}

impl WindowPeers {
    fn get(&self, peer: PeerId) -> Option<Arc<Conn>> {
        self.0.lock().get(&peer).and_then(Weak::upgrade)
    }
}

impl Registrar for VerbsRegistrar {
    fn register(&self, region: Arc<MemoryRegion>, access: Access) -> Result<RegionDesc, FabricError> {
        let mr = self.dev.register(&region, access, false)?;
        let desc = RegionDesc { addr: region.addr(), len: region.len() as u64, rkey: mr.rkey() };
        self.regions.lock().insert(desc.rkey, (mr, region));
        Ok(desc)
    }

    /// Verbs keys cover one contiguous range; a pattern of windows would need a memory window
    /// per window (each with its own key) or a vendor's strided key. Refused, so that nothing
    /// grants more than it was asked to.
    fn register_strided(&self, _: Arc<MemoryRegion>, _: Access, _: Strided) -> Result<RegionDesc, FabricError> {
        Err(FabricError::Unsupported(Unsupported::StridedRegistration))
    }

    fn deregister(&self, rkey: u32) -> bool {
        self.regions.lock().remove(&rkey).is_some()
    }

    /// A type-2 memory window bound, on the server's queue pair to `peer`, over the range of
    /// `base`'s registration (which must have been made with [`Access::WINDOWS`]).
    fn grant_window(
        &self,
        peer: PeerId,
        base: RegionDesc,
        offset: u64,
        len: u64,
        access: Access,
    ) -> Result<RegionDesc, FabricError> {
        if !self.windows {
            return Err(FabricError::Unsupported(Unsupported::MemoryWindows));
        }
        let not_bindable = FabricError::Unsupported(Unsupported::NotBindable);
        let mr = match self.regions.lock().get(&base.rkey) {
            Some((mr, region)) if region.addr() == base.addr => mr.clone(),
            _ => return Err(not_bindable),
        };
        if offset.checked_add(len).is_none_or(|end| end > base.len) || len == 0 {
            return Err(FabricError::TooLarge(len as usize));
        }
        // Only WRITE windows are bound (what client fills need); READ would need its own flag.
        if access != Access::WRITE {
            return Err(not_bindable);
        }
        let conn = self.peers.get(peer).ok_or(FabricError::Unsupported(Unsupported::UnknownPeer))?;
        let rkey = conn.bind_window(&self.dev, &mr, base.addr + offset, len)?;
        Ok(RegionDesc { addr: base.addr + offset, len, rkey })
    }

    fn revoke_window(&self, peer: PeerId, rkey: u32) -> bool {
        self.peers.get(peer).is_some_and(|c| c.invalidate_window(rkey))
    }
}

/// What the listener grants and admits.
#[derive(Debug, Clone)]
pub struct NicConfig {
    /// Receive buffers pre-posted per connection: the RPC credits.
    pub credits: u32,
    /// Bytes of each receive buffer (the largest SEND).
    pub buffer_len: u32,
    pub max_connections: usize,
    pub secret: Option<Secret>,
    /// Where the listener lists its connections for a [`VerbsRegistrar`] to bind windows on
    /// ([`VerbsRegistrar::peers`]); None: no windows for its clients.
    pub peers: Option<Arc<WindowPeers>>,
}

impl Default for NicConfig {
    fn default() -> Self {
        NicConfig { credits: 64, buffer_len: 16 << 10, max_connections: 256, secret: None, peers: None }
    }
}

impl NicConfig {
    /// The largest message: as many receive buffers as the credits, at most `MAX_TRANSFER` of
    /// payload.
    pub fn grant(&self) -> Grant {
        let max = (self.credits as u64 * self.buffer_len as u64).min((MAX_TRANSFER + wire::HEADER_LEN) as u64);
        Grant { credits: self.credits, buffer_len: self.buffer_len, max_message: max as u32 }
    }
}

/// A running verbs listener. Dropping it closes every connection.
pub struct VerbsNic {
    inner: Arc<Inner>,
    addr: SocketAddr,
    accept: Option<std::thread::JoinHandle<()>>,
}

struct Inner {
    dev: Arc<VerbsDevice>,
    service: Arc<dyn RpcService>,
    config: NicConfig,
    /// The digest of the secret an rdma_cm request must present (as a secret, to compare in
    /// constant time).
    secret_digest: Option<Secret>,
    stop: AtomicBool,
    connections: AtomicUsize,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// rdma_cm connections by identifier: set when the client disconnects.
    departures: Mutex<HashMap<usize, Arc<AtomicBool>>>,
}

impl VerbsNic {
    /// Listens on `listen` and serves clients on `dev`: an rdma_cm identifier bound to that
    /// address (an address of the device's network interface, or the wildcard), or with
    /// `verbs.connect = "tcp"` a TCP listener for the handshakes.
    pub fn start(
        dev: Arc<VerbsDevice>,
        listen: SocketAddr,
        config: NicConfig,
        service: Arc<dyn RpcService>,
    ) -> Result<VerbsNic, FabricError> {
        if config.credits == 0 || (config.buffer_len as usize) < wire::HEADER_LEN + 1 {
            return Err(FabricError::TooLarge(config.buffer_len as usize));
        }
        let secret_digest =
            config.secret.as_ref().map(|s| Secret::new(wire::secret_digest(s.as_bytes()).to_vec()).expect("32 bytes"));
        let inner = Arc::new(Inner {
            dev,
            service,
            config,
            secret_digest,
            stop: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            threads: Mutex::new(Vec::new()),
            departures: Mutex::new(HashMap::new()),
        });
        let i = inner.clone();
        let spawn = |f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new().name("verbs-listen".into()).spawn(f).map_err(FabricError::from)
        };
        let (addr, accept) = match inner.dev.connect_method() {
            VerbsConnect::RdmaCm => {
                let channel = Channel::new()?;
                let id = channel.create_id()?;
                id.bind(listen)?;
                // Bound to a specific address, the identifier has its device: it must be ours.
                if id.device().is_some() {
                    inner.dev.check_cm_device(&id)?;
                }
                id.listen(128)?;
                let addr = id.local_addr().unwrap_or(listen);
                (addr, spawn(Box::new(move || i.cm_loop(channel, id)))?)
            }
            VerbsConnect::Tcp => {
                let listener = TcpListener::bind(listen)?;
                listener.set_nonblocking(true)?;
                (listener.local_addr()?, spawn(Box::new(move || i.accept_loop(listener)))?)
            }
        };
        Ok(VerbsNic { inner, addr, accept: Some(accept) })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.inner.connections.load(Ordering::Relaxed)
    }
}

impl Drop for VerbsNic {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Release);
        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
        for t in std::mem::take(&mut *self.inner.threads.lock()) {
            let _ = t.join();
        }
    }
}

impl Inner {
    fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        while !self.stop.load(Ordering::Acquire) {
            match listener.accept() {
                Ok((stream, _)) => {
                    if let Err(e) = self.admit(stream) {
                        tracing::debug!("verbs: connection not admitted: {e}");
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => {
                    tracing::warn!("verbs: accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// Serves rdma_cm events: connect requests (admitted or rejected with a reason) and
    /// disconnects (the client left), until the listener stops.
    fn cm_loop(self: Arc<Self>, channel: Arc<Channel>, listener: CmId) {
        while !self.stop.load(Ordering::Acquire) {
            match channel.next(Duration::from_millis(50)) {
                Ok(Some(e)) => match e.kind {
                    cm::event::RDMA_CM_EVENT_CONNECT_REQUEST => {
                        if let Some(id) = e.request {
                            if let Err(err) = self.admit_cm(id, &e.private_data) {
                                tracing::debug!("verbs: connection not admitted: {err}");
                            }
                        }
                    }
                    // Gone: disconnected, or (a client that vanished between our accept and
                    // its confirmation) the CM gave up on the connection or the client refused it.
                    cm::event::RDMA_CM_EVENT_DISCONNECTED
                    | cm::event::RDMA_CM_EVENT_DEVICE_REMOVAL
                    | cm::event::RDMA_CM_EVENT_CONNECT_ERROR
                    | cm::event::RDMA_CM_EVENT_UNREACHABLE
                    | cm::event::RDMA_CM_EVENT_REJECTED => {
                        if let Some(departed) = self.departures.lock().get(&e.id) {
                            departed.store(true, Ordering::Release);
                        }
                    }
                    // ESTABLISHED (the client's queue pair is ready: ours was before we
                    // accepted), TIMEWAIT_EXIT, address changes: nothing to do.
                    _ => {}
                },
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!("verbs: rdma_cm events: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        drop(listener);
    }

    /// Whether a client that presented `secret_ok` may connect now; why not otherwise.
    fn admission(&self, secret_ok: bool) -> Result<(), CloseReason> {
        if !secret_ok {
            return Err(CloseReason::Unauthenticated);
        }
        if self.connections.load(Ordering::Acquire) >= self.config.max_connections {
            return Err(CloseReason::TooManyConnections);
        }
        Ok(())
    }

    fn admit_cm(self: &Arc<Self>, id: CmId, private_data: &[u8]) -> Result<(), FabricError> {
        let refuse = |id: CmId, reason: CloseReason| {
            let _ = id.reject(&ServerHello::Refused(reason).encode());
            Err(FabricError::Refused(reason))
        };
        let request = match CmRequest::decode(private_data) {
            Ok(r) => r,
            Err(wire::HandshakeError::Version(_)) => return refuse(id, CloseReason::UnsupportedVersion),
            Err(_) => return refuse(id, CloseReason::BadHandshake),
        };
        let secret_ok = match &self.secret_digest {
            Some(want) => request.secret_digest.is_some_and(|d| want.matches(&d)),
            None => true,
        };
        if let Err(reason) = self.admission(secret_ok) {
            return refuse(id, reason);
        }
        // A wildcard listener hears every device; registrations live on ours only.
        if let Err(e) = self.dev.check_cm_device(&id) {
            let _ = id.reject(&[]);
            return Err(e);
        }
        let grant = self.config.grant();
        let (cq, mut qp, recv) = self.queue_pair(grant)?;
        self.dev.connect_cm(&mut qp, &id)?;
        let departed = Arc::new(AtomicBool::new(false));
        let id = Arc::new(id);
        self.departures.lock().insert(id.key(), departed.clone());
        let endpoint = Endpoint { qpn: 0, psn: 0, gid: [0; 16], lid: 0 };
        if let Err(e) = id.accept(qp.qp_number(), &ServerHello::Accepted { endpoint, grant }.encode(), READ_DEPTH) {
            self.departures.lock().remove(&id.key());
            return Err(e);
        }
        let key = id.key();
        let served = self.serve(cq, qp, recv, grant, Liveness::Cm { id, departed });
        if served.is_err() {
            self.departures.lock().remove(&key);
        }
        served
    }

    fn admit(self: &Arc<Self>, mut stream: TcpStream) -> Result<(), FabricError> {
        stream.set_nonblocking(false)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut hello = [0u8; wire::CLIENT_HELLO_LEN];
        stream.read_exact(&mut hello)?;
        let refuse = |mut s: TcpStream, reason: CloseReason| {
            let _ = s.write_all(&ServerHello::Refused(reason).encode());
            Err(FabricError::Refused(reason))
        };
        let hello = match ClientHello::decode(&hello) {
            Ok(h) => h,
            Err(wire::HandshakeError::Version(_)) => return refuse(stream, CloseReason::UnsupportedVersion),
            Err(_) => return refuse(stream, CloseReason::BadHandshake),
        };
        let secret_ok = self.config.secret.as_ref().is_none_or(|s| s.matches(&hello.secret));
        if let Err(reason) = self.admission(secret_ok) {
            return refuse(stream, reason);
        }
        let grant = self.config.grant();
        let (cq, mut qp, recv) = self.queue_pair(grant)?;
        let psn = hello.endpoint.psn.wrapping_add(0x5A5A) & 0xFF_FFFF;
        self.dev.connect(&mut qp, psn, &hello.endpoint)?;
        let endpoint = self.dev.endpoint(&qp, psn);
        stream.write_all(&ServerHello::Accepted { endpoint, grant }.encode())?;
        stream.set_nonblocking(true)?;
        self.serve(cq, qp, recv, grant, Liveness::Tcp(stream))
    }

    /// A client's queue pair (in INIT) with `grant.credits` receive buffers posted.
    fn queue_pair(&self, grant: Grant) -> Result<(Cq, BasicQueuePair, RecvSide), FabricError> {
        let depth = crate::fabric::DEFAULT_SEND_QUEUE_DEPTH;
        let cq = self.dev.completion_queue(depth + grant.credits + 64)?;
        let mut qp = self.dev.queue_pair(&cq, depth + 16, grant.credits + 4)?;
        let recv = RecvSide::new(&self.dev, grant.credits as usize, grant.buffer_len as usize)?;
        recv.post(&mut qp, 0..grant.credits as usize)?;
        Ok((cq, qp, recv))
    }

    /// Serves a connected client on its own thread.
    fn serve(
        self: &Arc<Self>,
        cq: Cq,
        qp: BasicQueuePair,
        recv: RecvSide,
        grant: Grant,
        liveness: Liveness,
    ) -> Result<(), FabricError> {
        let depth = crate::fabric::DEFAULT_SEND_QUEUE_DEPTH;
        let staging_len = MAX_TRANSFER + (256 << 10);
        let staging = Arc::new(MemoryRegion::new(staging_len));
        let staging_mr = self.dev.register(&staging, Access::NONE, true)?;
        let conn = Arc::new(Conn {
            peer: PeerId::fresh(),
            service: self.service.clone(),
            cq,
            recv,
            grant,
            state: Mutex::new(ConnState {
                send: SendSide {
                    qp,
                    sq: SendQueue::new(depth),
                    ring: Ring::new(staging_len),
                    staging,
                    staging_mr,
                    unsignaled_bytes: 0,
                },
                pending: VecDeque::new(),
                backlog: VecDeque::new(),
                request_fragments: HashMap::new(),
                reassembly: Reassembly::default(),
                dead: false,
                windows: Windows::default(),
            }),
        });
        if let Some(peers) = &self.config.peers {
            peers.0.lock().insert(conn.peer, Arc::downgrade(&conn));
        }
        self.connections.fetch_add(1, Ordering::AcqRel);
        let inner = self.clone();
        let t = std::thread::Builder::new()
            .name("verbs-conn".into())
            .spawn(move || {
                conn.run(&inner, &liveness);
                if let Liveness::Cm { id, .. } = &liveness {
                    // Tell the client (if it is still there), and forget the identifier.
                    let _ = id.disconnect();
                    inner.departures.lock().remove(&id.key());
                }
                inner.connections.fetch_sub(1, Ordering::AcqRel);
            })
            .map_err(FabricError::from)?;
        let mut threads = self.threads.lock();
        threads.retain(|t| !t.is_finished());
        threads.push(t);
        Ok(())
    }
}

/// What says a client is still there.
enum Liveness {
    /// The TCP handshake's connection: the client keeps its end open while its queue pair lives.
    Tcp(TcpStream),
    /// The connection's rdma_cm identifier; the listener sets `departed` on its `DISCONNECTED`.
    Cm { id: Arc<CmId>, departed: Arc<AtomicBool> },
}

/// One client's connection.
pub struct Conn {
    peer: PeerId,
    service: Arc<dyn RpcService>,
    cq: Cq,
    recv: RecvSide,
    grant: Grant,
    state: Mutex<ConnState>,
}

struct ConnState {
    send: SendSide,
    pending: VecDeque<PostedAt>,
    /// Responses waiting for room in the send queue or the ring (at most one per credit).
    backlog: VecDeque<(u64, Vec<u8>)>,
    /// Receive buffers each unanswered request took: returned as credits with its response.
    request_fragments: HashMap<u64, u32>,
    reassembly: Reassembly,
    dead: bool,
    windows: Windows,
}

/// The type-2 memory windows bound on one connection's queue pair, by key.
#[derive(Default)]
struct Windows {
    bound: HashMap<u32, Window>,
}

impl Conn {
    fn run(self: Arc<Self>, nic: &Inner, liveness: &Liveness) {
        let mut next_check = Instant::now();
        let stop = || {
            if nic.stop.load(Ordering::Acquire) || self.state.lock().dead {
                return true;
            }
            match liveness {
                Liveness::Cm { departed, .. } => return departed.load(Ordering::Acquire),
                Liveness::Tcp(control) if Instant::now() >= next_check => {
                    next_check = Instant::now() + Duration::from_millis(50);
                    match control.peek(&mut [0u8; 1]) {
                        Ok(0) => return true,
                        Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => return true,
                        _ => {}
                    }
                }
                Liveness::Tcp(_) => {}
            }
            false
        };
        queue::run_poller(&self.cq, stop, || {
            let found = self.progress();
            let st = self.state.lock();
            // Requests at the service may be answered any moment: keep polling for a while.
            (found, !st.pending.is_empty() || !st.request_fragments.is_empty())
        });
        {
            let mut st = self.state.lock();
            st.dead = true;
            // Deallocating a window unbinds it: no key granted to this client works any more.
            st.windows = Windows::default();
        }
        if let Some(peers) = &nic.config.peers {
            peers.0.lock().remove(&self.peer);
        }
        // After `dead` (what `is_closed` reports): the service may free what this client held.
        self.service.peer_closed(self.peer);
    }

    /// Binds a window (a free one, or a new one) over `len` bytes at `addr` of `mr` on this
    /// connection's queue pair, ordered before every response posted after it. Returns its key.
    fn bind_window(&self, dev: &VerbsDevice, mr: &Mr, addr: u64, len: u64) -> Result<u32, FabricError> {
        let mut st = self.state.lock();
        if st.dead {
            return Err(FabricError::Disconnected(Disconnect::PeerClosed));
        }
        let mut window = Window::alloc(dev)?;
        let (_, at) = st.send.reserve(0, 1, true)?;
        let rkey = match window.post_bind(&mut st.send.qp, send_wr_id(at.seq, 0), mr, addr, len) {
            Ok(k) => k,
            Err(e) => {
                // A queue pair that refuses a post is not used further (as for responses).
                st.dead = true;
                return Err(e);
            }
        };
        st.pending.push_back(at);
        st.windows.bound.insert(rkey, window);
        Ok(rkey)
    }

    /// Revokes the window bound under `rkey` by deallocating it (`ibv_dealloc_mw`, which
    /// unbinds it before it returns: no WRITE with its key executes after this call). Returns
    /// whether it was bound. (An `IBV_WR_LOCAL_INV` posted on the queue pair would keep the
    /// window for the next bind, but on Soft-RoCE it ended the connection, in the guest.)
    fn invalidate_window(&self, rkey: u32) -> bool {
        let window = self.state.lock().windows.bound.remove(&rkey);
        // Dropped outside the lock: deallocation is a system call.
        window.is_some()
    }

    /// Polls the completion queue and handles what it finds; requests go to the service after
    /// the lock is released. Returns how many completions it found.
    fn progress(self: &Arc<Self>) -> usize {
        let mut incoming = Vec::new();
        let mut batch = Vec::new();
        {
            let mut st = self.state.lock();
            if queue::poll(&self.cq, &mut batch) == 0 {
                return 0;
            }
            for wc in &batch {
                if st.dead {
                    break;
                }
                if wc.wr_id & RECV_BIT != 0 {
                    self.on_receive(&mut st, wc, &mut incoming);
                } else if wc.status == queue::status::SUCCESS {
                    let (seq, _) = split_send_wr_id(wc.wr_id);
                    while st.pending.front().is_some_and(|p| p.seq <= seq) {
                        let at = st.pending.pop_front().expect("checked");
                        st.send.retire(at);
                    }
                } else {
                    // The queue pair is in the error state (the client failed an access, or is gone).
                    st.dead = true;
                }
            }
            self.pump_backlog(&mut st);
        }
        // Outside the lock: a service may answer from inside `handle`.
        for (id, payload) in incoming {
            let responder = Responder::new(self.clone() as Arc<dyn ReplySink>, id);
            self.service.handle(IncomingRpc { payload, peer: self.peer, responder });
        }
        batch.len()
    }

    fn on_receive(&self, st: &mut ConnState, wc: &Wc, incoming: &mut Vec<(u64, Vec<u8>)>) {
        if wc.status != queue::status::SUCCESS {
            st.dead = true;
            return;
        }
        let index = (wc.wr_id & !RECV_BIT) as usize;
        let fragment = self.recv.take(index, wc.byte_len as usize);
        if self.recv.post(&mut st.send.qp, std::iter::once(index)).is_err() {
            st.dead = true;
            return;
        }
        match st.reassembly.push(&fragment, self.grant.max_message as usize) {
            Ok(None) => {}
            Ok(Some((h, body, frags))) if h.kind == MessageKind::Request => {
                st.request_fragments.insert(h.id, frags);
                incoming.push((h.id, body));
            }
            // A peer that breaks the protocol is disconnected.
            Ok(Some(_)) | Err(_) => st.dead = true,
        }
    }

    fn pump_backlog(&self, st: &mut ConnState) {
        while !st.dead {
            let Some((id, payload)) = st.backlog.front() else { break };
            let credits = st.request_fragments.get(id).copied().unwrap_or(0);
            let header = MessageHeader { kind: MessageKind::Response, id: *id, len: payload.len() as u32, credits };
            match st.send.post_message(header, payload, self.grant.buffer_len as usize) {
                Ok(None) => break,
                Ok(Some(at)) => {
                    st.pending.push_back(at);
                    let (id, _) = st.backlog.pop_front().expect("checked");
                    st.request_fragments.remove(&id);
                }
                Err(_) => st.dead = true,
            }
        }
    }
}

impl ReplySink for Conn {
    fn is_closed(&self) -> bool {
        self.state.lock().dead
    }

    fn reply(&self, id: u64, payload: &[u8]) {
        let mut st = self.state.lock();
        if st.dead {
            return;
        }
        // A response larger than a client can take is a server bug: the client gets an empty
        // one (the request failed) rather than a stalled connection.
        let payload = if payload.len() > MAX_TRANSFER { Vec::new() } else { payload.to_vec() };
        st.backlog.push_back((id, payload));
        self.pump_backlog(&mut st);
    }
}
