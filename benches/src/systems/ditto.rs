//! LEED+Ditto: the baseline the paper compares Scalio with (`--system ditto`).
//!
//! LEED is our own server driven the LEED way, through a [`scalio_client::Client`] with
//! [`ReadPath::Server`] and unbatched writes: every GET is an RPC whose worker reads the SSD
//! (bucket, then value: 2 dependent reads), every SET an unbatched RPC (bucket read, value
//! write, bucket write). In front of it sits a Ditto-style cache in the server's registered
//! memory (`[ditto]` in the server configuration), which **clients** fill, read, write through
//! and evict with one-sided operations; the server never touches it. Its layout is in
//! [`layout`].
//!
//! * **GET**: READ the key's index bucket; for each slot whose fingerprint matches, READ its
//!   object and verify it (checksum, key, value length). A hit is two dependent READs plus an
//!   unsignaled WRITE of the access timestamp — Ditto's cost, where Scalio's hit is one READ.
//!   Otherwise a LEED GET RPC, then a fill: one chain of WRITEs, the object and then the index
//!   slot (entry and timestamp), posted unsignaled.
//! * **UPDATE / INSERT**: a LEED SET (PUT, unbatched), then a write-through: READ the index
//!   bucket and WRITE the object and index slot into the key's slot, an empty one, or the least
//!   recently accessed one (evicting it), waiting for the WRITEs to complete. A value too large
//!   to cache clears the key's entries instead, so an older cached value cannot outlive it.
//!
//! **No consistency protocol** between the SSD and the cache, as in the artifact's LEED+Ditto:
//! no reservations, leases or generations, and the fabric has no atomic verbs, so entries are
//! plain 8-byte WRITEs where Ditto uses CAS. Verification makes every hit a value that *was*
//! written for the key, but not necessarily the newest: a GET that missed and read the old value
//! from LEED can fill it after a concurrent SET wrote the new value through, and the stale value
//! is then served until the key is written again or evicted; two clients filling one key at once
//! can both take a slot (the next write-through of that key removes the duplicates it sees). This
//! is the baseline's known weakness, which Scalio's server-side reservations fix.

pub mod layout;

use layout::{DittoLayout, Entry, IndexSlot, Placement, SlotChoice, INLINE_VALUE_MAX, OBJECT_SIZE};
use scalio_client::{post_when_room, BlockPath, Client, ClientConfig, ClientError, ClientStats, ReadPath};
use scalio_common::block::{BlockError, BlockFuture, BlockReader};
use scalio_common::fabric::tcp::AsyncTcpQueuePair;
use scalio_common::fabric::{FabricError, QueuePair, RemoteAddr, WorkRequest};
use scalio_common::key::{self, KeyError};
use scalio_common::rpc::{Op, TableInfo};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// A failed LEED+Ditto operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DittoError {
    #[error("invalid key: {0}")]
    Key(#[from] KeyError),
    #[error("LEED: {0}")]
    Leed(#[from] ClientError),
    /// A one-sided operation on the cache failed. After a SET, the store holds the new value but
    /// the cache may still hold the old one.
    #[error("one-sided access to the Ditto cache: {0}")]
    Fabric(#[from] FabricError),
    #[error("the server has no Ditto cache region (start it with [ditto] enabled = true)")]
    NoRegion,
    #[error("a READ of the Ditto cache returned {got} bytes instead of {expected}")]
    ShortRead { expected: usize, got: usize },
    #[error("configuration: {0}")]
    Config(String),
}

/// Settings of [`DittoClient::connect`].
#[derive(Debug, Clone)]
pub struct DittoConfig {
    /// Fabric connections, shared by the one-sided operations and the LEED RPCs.
    pub queue_pairs: usize,
}

impl Default for DittoConfig {
    fn default() -> Self {
        DittoConfig { queue_pairs: 1 }
    }
}

/// A snapshot of a [`DittoClient`]'s counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DittoStats {
    /// GET operations.
    pub gets: u64,
    /// GETs served by the cache.
    pub hits: u64,
    /// GETs that went to LEED (a GET RPC each).
    pub misses: u64,
    /// Misses for which LEED had no value.
    pub absent: u64,
    /// UPDATE and INSERT operations (a LEED SET each).
    pub sets: u64,
    /// One-sided READs of an index bucket (every GET, every write-through).
    pub index_reads: u64,
    /// One-sided READs of an object (GETs whose bucket had a matching fingerprint).
    pub object_reads: u64,
    /// Objects read but not served: torn, overwritten, another key's, or another length.
    pub object_rejects: u64,
    /// Unsignaled access-timestamp WRITEs of hits.
    pub timestamp_writes: u64,
    /// Objects posted after a miss.
    pub fills: u64,
    /// Objects written through after a SET.
    pub write_throughs: u64,
    /// Valid slots overwritten by a fill or write-through of another key (LRU of the bucket).
    pub evictions: u64,
    /// Index entries cleared (duplicates of the key, or the key's entry when its new value is
    /// too large to cache).
    pub invalidations: u64,
    /// Values larger than [`INLINE_VALUE_MAX`] served or written without caching.
    pub uncacheable: u64,
    /// The LEED client's own counters (RPCs by type: `leed.rpcs(Op::Get)`, ...).
    pub leed: ClientStats,
}

impl DittoStats {
    /// LEED RPCs of `op` sent.
    pub fn rpcs(&self, op: Op) -> u64 {
        self.leed.rpcs(op)
    }

    /// Every counter by name, for reports (`rpc_*` are the LEED RPCs by type).
    pub fn counters(&self) -> Vec<(String, u64)> {
        let mut c: Vec<(String, u64)> = [
            ("gets", self.gets),
            ("hits", self.hits),
            ("misses", self.misses),
            ("absent", self.absent),
            ("sets", self.sets),
            ("index_reads", self.index_reads),
            ("object_reads", self.object_reads),
            ("object_rejects", self.object_rejects),
            ("timestamp_writes", self.timestamp_writes),
            ("fills", self.fills),
            ("write_throughs", self.write_throughs),
            ("evictions", self.evictions),
            ("invalidations", self.invalidations),
            ("uncacheable", self.uncacheable),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_string(), v))
        .collect();
        for op in Op::ALL {
            c.push((format!("rpc_{}", op.name()), self.leed.rpcs(op)));
        }
        c
    }
}

#[derive(Default)]
struct Counters {
    gets: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    absent: AtomicU64,
    sets: AtomicU64,
    index_reads: AtomicU64,
    object_reads: AtomicU64,
    object_rejects: AtomicU64,
    timestamp_writes: AtomicU64,
    fills: AtomicU64,
    write_throughs: AtomicU64,
    evictions: AtomicU64,
    invalidations: AtomicU64,
    uncacheable: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The block path of a LEED client: none. LEED's GETs are read by the server, so the scalio
/// client never reads blocks itself; this refuses if it ever tried.
struct NoBlockPath;

impl BlockReader for NoBlockPath {
    fn read_blocks(&self, _ssd: u16, _lba: u64, _count: u32) -> BlockFuture<'_> {
        Box::pin(async { Err(BlockError::Protocol("LEED reads through the server; it has no block path".into())) })
    }

    fn kind(&self) -> &'static str {
        "none"
    }
}

/// The LEED settings of the scalio client: server-side reads, unbatched writes.
pub fn leed_client_config() -> ClientConfig {
    ClientConfig {
        read_path: ReadPath::Server,
        batched_writes: false,
        block: BlockPath::Custom(Arc::new(NoBlockPath)),
        ..ClientConfig::default()
    }
}

struct Inner {
    leed: Client,
    qps: Vec<Arc<dyn QueuePair>>,
    next_qp: AtomicUsize,
    region: TableInfo,
    layout: DittoLayout,
    /// Last timestamp handed out: timestamps are strictly increasing within a process.
    last_ts: AtomicU64,
    counters: Counters,
}

/// A LEED+Ditto client. Cheap to clone; use it from many tasks at once.
#[derive(Clone)]
pub struct DittoClient {
    inner: Arc<Inner>,
}

impl DittoClient {
    /// Connects to a scalio server (started with `[ditto] enabled = true`) over the software NIC,
    /// with queue pairs driven on the current tokio runtime (as the scalio client's are).
    pub async fn connect(addr: &str, cfg: DittoConfig) -> Result<DittoClient, DittoError> {
        let mut qps: Vec<Arc<dyn QueuePair>> = Vec::new();
        for _ in 0..cfg.queue_pairs.max(1) {
            qps.push(Arc::new(AsyncTcpQueuePair::connect(addr)?));
        }
        DittoClient::with_queue_pairs(qps).await
    }

    /// A client over queue pairs of any fabric backend (e.g. `Server::connect_mem()`), used for
    /// both the LEED RPCs and the one-sided operations.
    pub async fn with_queue_pairs(qps: Vec<Arc<dyn QueuePair>>) -> Result<DittoClient, DittoError> {
        let leed = Client::with_queue_pairs(qps.clone(), leed_client_config()).await?;
        DittoClient::from_client(leed, qps)
    }

    /// A client from an existing LEED client (it must read through the server and write
    /// unbatched: see [`leed_client_config`]) and queue pairs for the one-sided operations.
    pub fn from_client(leed: Client, qps: Vec<Arc<dyn QueuePair>>) -> Result<DittoClient, DittoError> {
        if leed.config().read_path != ReadPath::Server || leed.config().batched_writes {
            return Err(DittoError::Config("the LEED client must read through the server and write unbatched".into()));
        }
        if qps.is_empty() {
            return Err(DittoError::Config("no queue pairs".into()));
        }
        let region = leed.info().ditto.ok_or(DittoError::NoRegion)?;
        Ok(DittoClient {
            inner: Arc::new(Inner {
                leed,
                qps,
                next_qp: AtomicUsize::new(0),
                region,
                layout: DittoLayout::new(region.geometry),
                last_ts: AtomicU64::new(0),
                counters: Counters::default(),
            }),
        })
    }

    /// The cache region the server advertised.
    pub fn region(&self) -> &TableInfo {
        &self.inner.region
    }

    /// The region's layout (offsets, placement of keys).
    pub fn layout(&self) -> &DittoLayout {
        &self.inner.layout
    }

    /// The LEED client (e.g. for `server_stats`).
    pub fn leed(&self) -> &Client {
        &self.inner.leed
    }

    /// The value of `key`, or `None` if it has none.
    pub async fn read(&self, key: &[u8]) -> Result<Option<Vec<u8>>, DittoError> {
        self.inner.read(key).await
    }

    /// Stores `value` under `key` (a LEED SET), then writes it through to the cache.
    pub async fn update(&self, key: &[u8], value: &[u8]) -> Result<(), DittoError> {
        self.inner.set(key, value).await
    }

    /// Same as [`update`](Self::update): LEED's SET inserts or replaces.
    pub async fn insert(&self, key: &[u8], value: &[u8]) -> Result<(), DittoError> {
        self.inner.set(key, value).await
    }

    /// A snapshot of this client's counters.
    pub fn stats(&self) -> DittoStats {
        let c = &self.inner.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DittoStats {
            gets: g(&c.gets),
            hits: g(&c.hits),
            misses: g(&c.misses),
            absent: g(&c.absent),
            sets: g(&c.sets),
            index_reads: g(&c.index_reads),
            object_reads: g(&c.object_reads),
            object_rejects: g(&c.object_rejects),
            timestamp_writes: g(&c.timestamp_writes),
            fills: g(&c.fills),
            write_throughs: g(&c.write_throughs),
            evictions: g(&c.evictions),
            invalidations: g(&c.invalidations),
            uncacheable: g(&c.uncacheable),
            leed: self.inner.leed.stats(),
        }
    }
}

impl Inner {
    fn qp(&self) -> &dyn QueuePair {
        let i = if self.qps.len() == 1 { 0 } else { self.next_qp.fetch_add(1, Ordering::Relaxed) % self.qps.len() };
        &*self.qps[i]
    }

    fn at(&self, offset: usize) -> RemoteAddr {
        RemoteAddr { addr: self.region.addr + offset as u64, rkey: self.region.rkey }
    }

    /// Wall-clock microseconds (comparable across clients, as Ditto's `gettimeofday`), made
    /// strictly increasing within this process so that LRU order never ties.
    fn now_us(&self) -> u64 {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let prev = self.last_ts.fetch_max(wall, Ordering::Relaxed);
        if prev < wall {
            wall
        } else {
            self.last_ts.fetch_add(1, Ordering::Relaxed) + 1
        }
    }

    async fn read_exact(&self, qp: &dyn QueuePair, offset: usize, len: usize) -> Result<Vec<u8>, DittoError> {
        // Waits for room in a full send queue (many operations in flight) rather than failing.
        let bytes = post_when_room(qp, &[WorkRequest::Read { remote: self.at(offset), len: len as u32 }]).await?;
        if bytes.len() != len {
            return Err(DittoError::ShortRead { expected: len, got: bytes.len() });
        }
        Ok(bytes)
    }

    /// One READ of the key's index bucket.
    async fn read_index(&self, qp: &dyn QueuePair, p: &Placement) -> Result<Vec<IndexSlot>, DittoError> {
        bump(&self.counters.index_reads);
        let bytes = self.read_exact(qp, self.layout.index_offset(p.bucket), self.layout.index_bucket_bytes()).await?;
        Ok(layout::parse_index_bucket(&bytes))
    }

    async fn read(&self, key: &[u8]) -> Result<Option<Vec<u8>>, DittoError> {
        key::validate(key)?;
        bump(&self.counters.gets);
        let p = self.layout.place(key);
        let qp = self.qp();
        let slots = self.read_index(qp, &p).await?;
        for (slot, entry) in layout::candidates(&slots, &p) {
            bump(&self.counters.object_reads);
            let object = self.read_exact(qp, self.layout.object_offset(p.bucket, slot), OBJECT_SIZE).await?;
            match layout::verify_object(&object, key, &entry) {
                Ok(value) => {
                    bump(&self.counters.hits);
                    let ts = self.now_us().to_le_bytes();
                    let at = self.at(self.layout.index_slot_offset(p.bucket, slot) + layout::ACCESS_TS_OFFSET);
                    // A lost timestamp only makes eviction less precise; the queue pair counts
                    // failures of unsignaled chains.
                    if qp.post_unsignaled(&[WorkRequest::Write { remote: at, data: &ts }]).is_ok() {
                        bump(&self.counters.timestamp_writes);
                    }
                    return Ok(Some(value.to_vec()));
                }
                Err(_) => bump(&self.counters.object_rejects),
            }
        }
        bump(&self.counters.misses);
        let Some(value) = self.leed.get(key).await? else {
            bump(&self.counters.absent);
            return Ok(None);
        };
        if value.len() > INLINE_VALUE_MAX {
            bump(&self.counters.uncacheable);
        } else if let Some(choice) = layout::choose_slot(&slots, &p) {
            // The fill needs no reply: the GET already has its value.
            let fill = CacheWrites { object: Some(self.object_write(&p, choice, key, &value)), clear: Vec::new() };
            if qp.post_unsignaled(&fill.requests(self)).is_ok() {
                bump(&self.counters.fills);
                self.count_eviction(choice);
            }
        }
        Ok(Some(value))
    }

    async fn set(&self, key: &[u8], value: &[u8]) -> Result<(), DittoError> {
        key::validate(key)?;
        bump(&self.counters.sets);
        self.leed.put(key, value).await?;
        let p = self.layout.place(key);
        let qp = self.qp();
        let slots = self.read_index(qp, &p).await?;
        let mut writes = CacheWrites::default();
        if value.len() > INLINE_VALUE_MAX {
            bump(&self.counters.uncacheable);
        } else if let Some(choice) = layout::choose_slot(&slots, &p) {
            writes.object = Some(self.object_write(&p, choice, key, value));
        }
        let keep = writes.object.as_ref().map(|o| o.choice.slot());
        // Other slots that may hold the key would serve an older value: clear them.
        for (slot, _) in layout::candidates(&slots, &p).filter(|(s, _)| Some(*s) != keep) {
            writes.clear.push(self.layout.index_slot_offset(p.bucket, slot));
        }
        if writes.is_empty() {
            return Ok(());
        }
        // Waited for, so that a later GET through any queue pair sees the new value.
        post_when_room(qp, &writes.requests(self)).await?;
        if let Some(o) = &writes.object {
            bump(&self.counters.write_throughs);
            self.count_eviction(o.choice);
        }
        self.counters.invalidations.fetch_add(writes.clear.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn count_eviction(&self, choice: SlotChoice) {
        if let SlotChoice::Evict(_) = choice {
            bump(&self.counters.evictions);
        }
    }

    /// The WRITEs that store `key`'s object in `choice`: the object first, then the index slot,
    /// so an entry is never visible before its object (a chain executes in order).
    fn object_write(&self, p: &Placement, choice: SlotChoice, key: &[u8], value: &[u8]) -> ObjectWrite {
        let slot = choice.slot();
        ObjectWrite {
            choice,
            object: layout::encode_object(key, value),
            object_at: self.layout.object_offset(p.bucket, slot),
            index: layout::encode_index_slot(Entry::for_value(p, value.len()), self.now_us()),
            index_at: self.layout.index_slot_offset(p.bucket, slot),
        }
    }
}

/// The WRITEs that store one object, owned until they are posted.
struct ObjectWrite {
    choice: SlotChoice,
    object: [u8; OBJECT_SIZE],
    object_at: usize,
    index: [u8; layout::INDEX_SLOT_SIZE],
    index_at: usize,
}

/// The WRITEs of a fill or write-through.
#[derive(Default)]
struct CacheWrites {
    object: Option<ObjectWrite>,
    /// Index entries to clear (offsets of their word 0).
    clear: Vec<usize>,
}

const EMPTY_ENTRY: [u8; 8] = [0; 8];

impl CacheWrites {
    fn is_empty(&self) -> bool {
        self.object.is_none() && self.clear.is_empty()
    }

    fn requests<'a>(&'a self, inner: &Inner) -> Vec<WorkRequest<'a>> {
        let mut chain = Vec::with_capacity(2 + self.clear.len());
        if let Some(o) = &self.object {
            chain.push(WorkRequest::Write { remote: inner.at(o.object_at), data: &o.object });
            chain.push(WorkRequest::Write { remote: inner.at(o.index_at), data: &o.index });
        }
        for &at in &self.clear {
            chain.push(WorkRequest::Write { remote: inner.at(at), data: &EMPTY_ENTRY });
        }
        chain
    }
}
