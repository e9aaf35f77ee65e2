//! The scalio client library.
//!
//! A [`Client`] talks to one server over the fabric. A GET is one one-sided READ of a cache
//! bucket when it hits; on a miss it asks the server where the key's bucket is on flash
//! (META_GET: one RPC, no server SSD I/O), reads the bucket and value blocks **itself** through
//! its block path, and fills the cache slot the server reserved for it. Writes are RPCs that the
//! server acknowledges once they are durable.
//!
//! In a cluster, [`routing::ClusterClient`] holds one [`Client`] per server and sends each key
//! to the server that owns it in the cluster map.
//!
//! [`Client`] is cheap to clone and can be used from many tasks at once; its futures do not
//! depend on a particular executor. [`blocking::Client`] wraps it for simple programs.
//!
//! ```no_run
//! # async fn demo() -> Result<(), scalio_client::ClientError> {
//! use scalio_client::{Client, ClientConfig};
//! let client = Client::connect("127.0.0.1:7400", ClientConfig::default()).await?;
//! client.put(b"key", b"value").await?;
//! assert_eq!(client.get(b"key").await?, Some(b"value".to_vec()));
//! # Ok(()) }
//! ```

pub mod block;
pub mod blocking;
mod error;
mod lanes;
pub mod nvme;
mod read;
pub mod routing;
mod stats;
mod write;

pub use block::BlockPath;
pub use error::ClientError;
pub use read::post_when_room;
pub use stats::ClientStats;

use parking_lot::RwLock;
use scalio_common::block::BlockReader;
use scalio_common::fabric::tcp::{AsyncTcpQueuePair, ConnectOptions};
use scalio_common::fabric::{rendezvous, FabricError, FabricKind, QueuePair, Secret, VerbsConfig};
use scalio_common::rpc::{Op, Request, Response, ServerInfo, Stats, Status, WrongOwner, PROTOCOL_VERSION};
use scalio_common::ssd::store_seed;
use stats::Counters;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// How GETs read (the design stages of the paper's breakdown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadPath {
    /// Every GET is an RPC and the server reads the SSD (LEED-style; stage 0).
    Server,
    /// META_GET, then the client reads the SSD itself; no cache (stage 1).
    Offloaded,
    /// Probe the cache with one READ; on a miss, offloaded read and fill (stages 2 and 3).
    #[default]
    Cached,
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub read_path: ReadPath,
    /// Let the server batch writes (stage 3). Off: every write is written on its own.
    pub batched_writes: bool,
    pub block: BlockPath,
    /// Fabric connections to open (requests are spread over them).
    pub queue_pairs: usize,
    /// I/O threads of the `direct` block path.
    pub block_io_threads: usize,
    /// Re-probes of a slot whose fill is in progress before going to the server.
    pub probe_retries: u32,
    /// Attempts of a miss whose blocks keep being reused under it, before giving up.
    pub miss_attempts: u32,
    /// The server's shared secret, when it asks for one.
    pub secret: Option<Secret>,
    /// How long one fabric operation (an RPC, a cache probe) may take before it fails with
    /// [`FabricError::Timeout`]; `None` waits forever. A write that timed out may still happen.
    pub op_timeout: Option<std::time::Duration>,
    /// Cache probes in flight per queue pair that READ into registered memory with no
    /// allocation; beyond, probes take the allocating path. 0: always the allocating path.
    pub registered_probes: usize,
    /// The fabric to the server: the software NIC (`Tcp`) or RDMA verbs (`Verbs`, on the
    /// device of [`verbs`](Self::verbs); cargo feature `rdma`).
    pub fabric: FabricKind,
    /// The RDMA device, port and GID when `fabric` is `Verbs`.
    pub verbs: VerbsConfig,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            read_path: ReadPath::Cached,
            batched_writes: true,
            block: BlockPath::Auto,
            queue_pairs: 1,
            block_io_threads: 4,
            probe_retries: 3,
            miss_attempts: 8,
            secret: None,
            op_timeout: Some(DEFAULT_OP_TIMEOUT),
            registered_probes: DEFAULT_REGISTERED_PROBES,
            fabric: FabricKind::Tcp,
            verbs: VerbsConfig::default(),
        }
    }
}

/// Opens a new queue pair to the server, to replace one that entered the error state or lost its
/// connection.
pub type Connector = Arc<dyn Fn() -> Result<Arc<dyn QueuePair>, FabricError> + Send + Sync>;

/// Default of [`ClientConfig::op_timeout`]: long enough for a write queued behind a full batch
/// pipeline on a slow SSD, short enough that a server that stopped answering is noticed.
pub const DEFAULT_OP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Default of [`ClientConfig::registered_probes`]: more than a benchmark thread keeps in flight
/// (32), for a few kilobytes of registered memory per queue pair (a bucket each).
pub const DEFAULT_REGISTERED_PROBES: usize = 128;

/// How long a reconnection waits for the server.
const RECONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// A queue pair in use, with its registered probe lanes (none when the client does not probe the
/// cache, or registration failed).
pub(crate) struct Conn {
    qp: Arc<dyn QueuePair>,
    lanes: Option<lanes::ProbeLanes>,
}

impl Conn {
    fn new(qp: Arc<dyn QueuePair>, info: &ServerInfo, cfg: &ClientConfig) -> Conn {
        let probes = info.table.filter(|_| cfg.read_path == ReadPath::Cached && cfg.registered_probes > 0);
        let lanes = probes.and_then(|t| {
            lanes::ProbeLanes::new(qp.clone(), cfg.registered_probes, t.geometry.bucket_bytes())
                .inspect_err(|e| tracing::warn!(error = %e, "no registered probe lanes: probes allocate"))
                .ok()
        });
        Conn { qp, lanes }
    }
}

pub(crate) struct Inner {
    /// The queue pairs in use; one is replaced (through `connector`) when it fails.
    qps: Vec<RwLock<Arc<Conn>>>,
    connector: Option<Connector>,
    next_qp: AtomicUsize,
    info: ServerInfo,
    seed: u64,
    block: Arc<dyn BlockReader>,
    cfg: ClientConfig,
    counters: Counters,
    /// The newest cluster-map epoch this client routes by; 0 outside a cluster (requests then
    /// carry no epoch).
    epoch: AtomicU64,
}

/// A connection to a scalio server.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Connects to the server's fabric address over the software NIC (TCP), with queue pairs
    /// driven on the current tokio runtime ([`AsyncTcpQueuePair`]).
    pub async fn connect(addr: &str, cfg: ClientConfig) -> Result<Client, ClientError> {
        if cfg.fabric == FabricKind::Verbs {
            return Client::connect_verbs(addr, cfg).await;
        }
        let mut qps: Vec<Arc<dyn QueuePair>> = Vec::new();
        let mut peer = None;
        let opts = ConnectOptions { secret: cfg.secret.clone(), ..ConnectOptions::default() };
        for _ in 0..cfg.queue_pairs.max(1) {
            let qp = AsyncTcpQueuePair::connect_with(addr, &opts)?;
            peer = Some(qp.peer_addr());
            qps.push(Arc::new(qp));
        }
        let peer = peer.expect("at least one queue pair");
        let reconnect = ConnectOptions { timeout: RECONNECT_TIMEOUT, ..opts };
        let connector: Connector =
            Arc::new(move || Ok(Arc::new(AsyncTcpQueuePair::connect_with(peer, &reconnect)?) as Arc<dyn QueuePair>));
        Client::build(qps, Some(connector), cfg, Some(peer.ip())).await
    }

    /// Connects over RDMA verbs: `addr` is the server's verbs handshake address (its `listen`).
    #[cfg(feature = "rdma")]
    async fn connect_verbs(addr: &str, cfg: ClientConfig) -> Result<Client, ClientError> {
        use scalio_common::fabric::verbs::{VerbsDevice, VerbsQueuePair};
        use std::net::ToSocketAddrs;
        let peer = scalio_common::fabric::parse_scoped_addr(addr)
            .or_else(|| addr.to_socket_addrs().ok().and_then(|mut a| a.next()))
            .ok_or_else(|| ClientError::Config(format!("{addr} is not a host:port address")))?;
        let device = VerbsDevice::open(&cfg.verbs)?;
        let secret = cfg.secret.clone();
        let connector: Connector = Arc::new(move || {
            Ok(Arc::new(VerbsQueuePair::connect(&device, peer, secret.as_ref())?) as Arc<dyn QueuePair>)
        });
        let qps = (0..cfg.queue_pairs.max(1)).map(|_| connector()).collect::<Result<Vec<_>, _>>()?;
        Client::build(qps, Some(connector), cfg, Some(peer.ip())).await
    }

    #[cfg(not(feature = "rdma"))]
    async fn connect_verbs(_: &str, _: ClientConfig) -> Result<Client, ClientError> {
        Err(ClientError::Config("fabric = verbs needs a build with RDMA support (cargo feature rdma)".into()))
    }

    /// A client over queue pairs of any fabric backend. A queue pair that fails stays failed:
    /// use [`with_connector`](Self::with_connector) for a client that replaces it.
    pub async fn with_queue_pairs(qps: Vec<Arc<dyn QueuePair>>, cfg: ClientConfig) -> Result<Client, ClientError> {
        Client::build(qps, None, cfg, None).await
    }

    /// A client that opens its `cfg.queue_pairs` queue pairs with `connector`, and opens a new
    /// one whenever one enters the error state or loses its connection.
    pub async fn with_connector(connector: Connector, cfg: ClientConfig) -> Result<Client, ClientError> {
        let qps = (0..cfg.queue_pairs.max(1)).map(|_| connector()).collect::<Result<Vec<_>, _>>()?;
        Client::build(qps, Some(connector), cfg, None).await
    }

    async fn build(
        qps: Vec<Arc<dyn QueuePair>>,
        connector: Option<Connector>,
        cfg: ClientConfig,
        peer: Option<std::net::IpAddr>,
    ) -> Result<Client, ClientError> {
        if qps.is_empty() {
            return Err(ClientError::Config("no queue pairs".into()));
        }
        let body = call(&*qps[0], Request::new(Op::Hello, b"", b""), cfg.op_timeout).await?;
        let info = ServerInfo::decode(&body)?;
        if info.protocol != PROTOCOL_VERSION {
            return Err(ClientError::ProtocolVersion { server: info.protocol, client: PROTOCOL_VERSION });
        }
        let block = block::open(&cfg.block, &info, peer, cfg.block_io_threads)?;
        let counters = Counters::default();
        Counters::add(&counters.rpcs[Op::Hello as usize], 1);
        Ok(Client {
            inner: Arc::new(Inner {
                qps: qps.into_iter().map(|qp| RwLock::new(Arc::new(Conn::new(qp, &info, &cfg)))).collect(),
                connector,
                next_qp: AtomicUsize::new(0),
                seed: store_seed(&info.store_id),
                info,
                block,
                cfg,
                counters,
                epoch: AtomicU64::new(0),
            }),
        })
    }

    /// What the server said about itself.
    pub fn info(&self) -> &ServerInfo {
        &self.inner.info
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.cfg
    }

    /// The block path in use ("direct", "nvme-tcp", ...).
    pub fn block_path(&self) -> &'static str {
        self.inner.block.kind()
    }

    /// This client's counters.
    pub fn stats(&self) -> ClientStats {
        self.inner.counters.snapshot()
    }

    /// The value of `key`, or `None` if it has none.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        self.inner.get(key).await
    }

    /// Like [`get`](Self::get), but leaves the value in `out` (replacing its contents) and says
    /// whether the key has one. A cache hit then allocates nothing once `out` has room for the
    /// value: the bucket is READ into memory the client registered with its queue pair, and the
    /// READ's completion is found by work-request id.
    pub async fn get_into(&self, key: &[u8], out: &mut Vec<u8>) -> Result<bool, ClientError> {
        self.inner.get_into(key, out).await
    }

    /// Stores `value` under `key` (insert or replace). Returns once it is durable.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), ClientError> {
        self.inner.write(Op::Put, key, value, None).await.map(|_| ())
    }

    /// Replaces the value of an existing key. Returns false (and changes nothing) if the key
    /// has no value.
    pub async fn update(&self, key: &[u8], value: &[u8]) -> Result<bool, ClientError> {
        self.inner.write(Op::Update, key, value, None).await
    }

    /// Removes `key`. Returns false if it had no value.
    pub async fn delete(&self, key: &[u8]) -> Result<bool, ClientError> {
        self.inner.write(Op::Delete, key, b"", None).await
    }

    /// A PUT, UPDATE or DELETE (`op`) carrying the request id `id`, which its sender keeps
    /// the same on each retry of this one write (and unique among its writes to `key`): the
    /// members of a cluster's chain that applied it already answer as they did then instead of
    /// applying it again. Returns what [`put`](Self::put), [`update`](Self::update) or
    /// [`delete`](Self::delete) return (true for a PUT).
    pub async fn write_with_id(&self, op: Op, key: &[u8], value: &[u8], id: u64) -> Result<bool, ClientError> {
        if !op.is_write() {
            return Err(ClientError::Config(format!("{} is not a write", op.name())));
        }
        self.inner.write(op, key, if op == Op::Delete { b"" } else { value }, Some(id)).await
    }

    /// Makes every later request carry cluster-map epoch `epoch` (or a newer one already set):
    /// the server then refuses keys it does not own at that epoch with
    /// [`ClientError::WrongOwner`].
    pub fn set_cluster_epoch(&self, epoch: u64) {
        self.inner.epoch.fetch_max(epoch, Ordering::Relaxed);
    }

    /// The server's counters.
    pub async fn server_stats(&self) -> Result<Stats, ClientError> {
        let body = self.inner.rpc_ok(Request::new(Op::Stats, b"", b"")).await?;
        Ok(Stats::decode(&body)?)
    }
}

/// Waits for `op` at most `limit` (forever if `None`): a server that stops answering gives
/// [`FabricError::Timeout`], not a hang. The timer is the caller's tokio runtime's (the client
/// runs on tokio with time enabled, as its NVMe/TCP miss path already does): arming it is an
/// insertion into that runtime's timer wheel, where a timer thread of its own would cost a
/// cross-thread wake-up on every operation.
pub(crate) async fn within<T>(
    limit: Option<std::time::Duration>,
    op: impl std::future::Future<Output = Result<T, FabricError>>,
) -> Result<T, FabricError> {
    match limit {
        None => op.await,
        Some(limit) => tokio::time::timeout(limit, op).await.unwrap_or(Err(FabricError::Timeout)),
    }
}

/// One RPC: sends `req`, checks the reply's op, returns its status and body.
async fn call_status(
    qp: &dyn QueuePair,
    req: Request<'_>,
    limit: Option<std::time::Duration>,
) -> Result<(Status, Vec<u8>), ClientError> {
    // Requests over the connection's largest message (large values) go by rendezvous.
    let bytes = within(limit, call_when_room(qp, &req.to_vec())).await?;
    let resp = Response::decode(&bytes)?;
    if resp.op != req.op {
        return Err(ClientError::WrongReply { asked: req.op.name(), got: resp.op.name() });
    }
    Ok((resp.status, resp.body.to_vec()))
}

/// [`rendezvous::call`], waiting while the queue pair refuses a request that fits one message
/// with [`FabricError::QueueFull`] (every RPC credit in use and its queue of held requests full:
/// nothing was sent) instead of failing the operation. A staged (rendezvous) request is not
/// retried: a refusal between its steps would leave its first step done.
async fn call_when_room(qp: &dyn QueuePair, request: &[u8]) -> Result<Vec<u8>, FabricError> {
    if request.len() > qp.max_message() {
        return rendezvous::call(qp, request).await;
    }
    let mut attempt = 0u32;
    loop {
        match qp.call(request).await {
            Err(FabricError::QueueFull) => read::wait_for_room(&mut attempt).await,
            done => return done,
        }
    }
}

async fn call(
    qp: &dyn QueuePair,
    req: Request<'_>,
    limit: Option<std::time::Duration>,
) -> Result<Vec<u8>, ClientError> {
    match call_status(qp, req, limit).await? {
        (Status::Ok, body) => Ok(body),
        (status, body) => Err(ClientError::from_status(status, &body)),
    }
}

/// One of the client's queue pairs, and which slot it came from (to replace it if it fails).
pub(crate) struct QpRef {
    slot: usize,
    conn: Arc<Conn>,
}

impl QpRef {
    /// Its registered probe lanes, if it has them.
    pub(crate) fn lanes(&self) -> Option<&lanes::ProbeLanes> {
        self.conn.lanes.as_ref()
    }
}

impl std::ops::Deref for QpRef {
    type Target = dyn QueuePair;
    fn deref(&self) -> &Self::Target {
        &*self.conn.qp
    }
}

impl Inner {
    /// The next queue pair (round robin).
    fn qp(&self) -> QpRef {
        let slot = if self.qps.len() == 1 { 0 } else { self.next_qp.fetch_add(1, Ordering::Relaxed) % self.qps.len() };
        QpRef { slot, conn: self.qps[slot].read().clone() }
    }

    /// After `qp` returned `e`: if the error ended the queue pair (the RC error state, or a lost
    /// connection), replaces it with a new one, once (the first caller to notice does it).
    pub(crate) fn recover(&self, qp: &QpRef, e: &FabricError) {
        let Some(connect) = &self.connector else { return };
        if !e.ends_queue_pair() {
            return;
        }
        let mut current = self.qps[qp.slot].write();
        if !Arc::ptr_eq(&current, &qp.conn) {
            return; // already replaced
        }
        match connect() {
            Ok(new) => {
                *current = Arc::new(Conn::new(new, &self.info, &self.cfg));
                Counters::add(&self.counters.reconnects, 1);
                tracing::debug!(error = %e, "replaced a failed queue pair");
            }
            Err(err) => tracing::warn!(error = %err, after = %e, "cannot replace a failed queue pair"),
        }
    }

    /// An RPC, counted, with the cluster epoch if there is one; returns the status and body.
    /// A "wrong owner" reply is an error, so that no caller mistakes it for an answer.
    async fn rpc(&self, req: Request<'_>) -> Result<(Status, Vec<u8>), ClientError> {
        self.rpc_via(&self.qp(), req).await
    }

    /// [`rpc`](Self::rpc) on the queue pair `qp` (a META_GET whose fill window, bound to the
    /// queue pair it came on, the fill must use).
    async fn rpc_via(&self, qp: &QpRef, req: Request<'_>) -> Result<(Status, Vec<u8>), ClientError> {
        Counters::add(&self.counters.rpcs[req.op as usize], 1);
        let epoch = self.epoch.load(Ordering::Relaxed);
        let req = req.with_epoch((epoch != 0).then_some(epoch));
        let r = call_status(&**qp, req, self.cfg.op_timeout).await;
        if let Err(ClientError::Fabric(e)) = &r {
            self.recover(qp, e);
        }
        match r? {
            (Status::WrongOwner, body) => Err(ClientError::WrongOwner { epoch: WrongOwner::decode(&body)?.epoch }),
            reply => Ok(reply),
        }
    }

    /// Whether an operation that failed with `e` may be tried again on a new queue pair.
    pub(crate) fn can_retry(&self, e: &ClientError) -> bool {
        matches!(e, ClientError::Fabric(f) if f.ends_queue_pair()) && self.connector.is_some()
    }

    /// An RPC that must succeed.
    async fn rpc_ok(&self, req: Request<'_>) -> Result<Vec<u8>, ClientError> {
        self.rpc_ok_via(&self.qp(), req).await
    }

    /// [`rpc_ok`](Self::rpc_ok) on the queue pair `qp`.
    async fn rpc_ok_via(&self, qp: &QpRef, req: Request<'_>) -> Result<Vec<u8>, ClientError> {
        match self.rpc_via(qp, req).await? {
            (Status::Ok, body) => Ok(body),
            (status, body) => Err(ClientError::from_status(status, &body)),
        }
    }
}
