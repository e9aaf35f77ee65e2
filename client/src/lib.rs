//! The scalio client library.
//!
//! A [`Client`] talks to one server over the fabric. A GET is one one-sided READ of a cache
//! bucket when it hits; on a miss it asks the server where the key's bucket is on flash
//! (META_GET: one RPC, no server SSD I/O), reads the bucket and value blocks **itself** through
//! its block path, and fills the cache slot the server reserved for it. Writes are RPCs that the
//! server acknowledges once they are durable.
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
pub mod nvme;
mod read;
mod stats;
mod write;

pub use block::BlockPath;
pub use error::ClientError;
pub use stats::ClientStats;

use scalio_common::block::BlockReader;
use scalio_common::fabric::tcp::TcpQueuePair;
use scalio_common::fabric::QueuePair;
use scalio_common::rpc::{Op, Request, Response, ServerInfo, Stats, Status, PROTOCOL_VERSION};
use scalio_common::ssd::store_seed;
use stats::Counters;
use std::sync::atomic::{AtomicUsize, Ordering};
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
        }
    }
}

pub(crate) struct Inner {
    qps: Vec<Arc<dyn QueuePair>>,
    next_qp: AtomicUsize,
    info: ServerInfo,
    seed: u64,
    block: Arc<dyn BlockReader>,
    cfg: ClientConfig,
    counters: Counters,
}

/// A connection to a scalio server.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Connects to the server's fabric address over the software NIC (TCP).
    pub async fn connect(addr: &str, cfg: ClientConfig) -> Result<Client, ClientError> {
        let mut qps: Vec<Arc<dyn QueuePair>> = Vec::new();
        let mut peer = None;
        for _ in 0..cfg.queue_pairs.max(1) {
            let qp = TcpQueuePair::connect(addr)?;
            peer = Some(qp.peer_addr().ip());
            qps.push(Arc::new(qp));
        }
        Client::build(qps, cfg, peer).await
    }

    /// A client over queue pairs of any fabric backend.
    pub async fn with_queue_pairs(qps: Vec<Arc<dyn QueuePair>>, cfg: ClientConfig) -> Result<Client, ClientError> {
        Client::build(qps, cfg, None).await
    }

    async fn build(
        qps: Vec<Arc<dyn QueuePair>>,
        cfg: ClientConfig,
        peer: Option<std::net::IpAddr>,
    ) -> Result<Client, ClientError> {
        if qps.is_empty() {
            return Err(ClientError::Config("no queue pairs".into()));
        }
        let body = call(&*qps[0], Request::new(Op::Hello, b"", b"")).await?;
        let info = ServerInfo::decode(&body)?;
        if info.protocol != PROTOCOL_VERSION {
            return Err(ClientError::ProtocolVersion { server: info.protocol, client: PROTOCOL_VERSION });
        }
        let block = block::open(&cfg.block, &info, peer, cfg.block_io_threads)?;
        let counters = Counters::default();
        Counters::add(&counters.rpcs[Op::Hello as usize], 1);
        Ok(Client {
            inner: Arc::new(Inner {
                qps,
                next_qp: AtomicUsize::new(0),
                seed: store_seed(&info.store_id),
                info,
                block,
                cfg,
                counters,
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

    /// Stores `value` under `key` (insert or replace). Returns once it is durable.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), ClientError> {
        self.inner.write(Op::Put, key, value).await.map(|_| ())
    }

    /// Replaces the value of an existing key. Returns false (and changes nothing) if the key
    /// has no value.
    pub async fn update(&self, key: &[u8], value: &[u8]) -> Result<bool, ClientError> {
        self.inner.write(Op::Update, key, value).await
    }

    /// Removes `key`. Returns false if it had no value.
    pub async fn delete(&self, key: &[u8]) -> Result<bool, ClientError> {
        self.inner.write(Op::Delete, key, b"").await
    }

    /// The server's counters.
    pub async fn server_stats(&self) -> Result<Stats, ClientError> {
        let body = self.inner.rpc_ok(Request::new(Op::Stats, b"", b"")).await?;
        Ok(Stats::decode(&body)?)
    }
}

/// One RPC: sends `req`, checks the reply's op, returns its status and body.
async fn call_status(qp: &dyn QueuePair, req: Request<'_>) -> Result<(Status, Vec<u8>), ClientError> {
    let bytes = qp.call(&req.to_vec()).await?;
    let resp = Response::decode(&bytes)?;
    if resp.op != req.op {
        return Err(ClientError::WrongReply { asked: req.op.name(), got: resp.op.name() });
    }
    Ok((resp.status, resp.body.to_vec()))
}

async fn call(qp: &dyn QueuePair, req: Request<'_>) -> Result<Vec<u8>, ClientError> {
    match call_status(qp, req).await? {
        (Status::Ok, body) => Ok(body),
        (status, body) => Err(ClientError::from_status(status, &body)),
    }
}

impl Inner {
    fn qp(&self) -> &dyn QueuePair {
        let i = if self.qps.len() == 1 { 0 } else { self.next_qp.fetch_add(1, Ordering::Relaxed) % self.qps.len() };
        &*self.qps[i]
    }

    /// An RPC, counted; returns the status and body.
    async fn rpc(&self, req: Request<'_>) -> Result<(Status, Vec<u8>), ClientError> {
        Counters::add(&self.counters.rpcs[req.op as usize], 1);
        call_status(self.qp(), req).await
    }

    /// An RPC that must succeed.
    async fn rpc_ok(&self, req: Request<'_>) -> Result<Vec<u8>, ClientError> {
        match self.rpc(req).await? {
            (Status::Ok, body) => Ok(body),
            (status, body) => Err(ClientError::from_status(status, &body)),
        }
    }
}
