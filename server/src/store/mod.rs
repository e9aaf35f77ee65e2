//! One data store per SSD: the bucket log, the value log, the bucket-meta index, write batching,
//! garbage collection, and the LEED-style server read.
//!
//! [`DataStore`] is a sans-IO state machine owned by one worker thread: it is fed requests
//! ([`DataStore::submit_write`], [`DataStore::submit_get`]), I/O results ([`DataStore::on_io`])
//! and the passage of time ([`DataStore::poll`]), and it produces I/O requests
//! ([`DataStore::take_io`]) and finished requests ([`DataStore::take_completed`]). The worker
//! thread drives it against the real device; tests drive it synchronously.
//!
//! **Writes.** Writes wait in `pending` until a batch starts: when `batch` writes are waiting,
//! when the oldest has waited `batch_timeout`, or at once for an unbatched write. A batch locks
//! its buckets (batches on disjoint buckets run concurrently), reads their chains, applies its
//! writes in order, packs all values into one value-log write and all changed chains into one
//! bucket-log write (values first: each part is durable before the next starts), and then —
//! in this order — invalidates the cache slots of the keys it wrote, publishes the new chain
//! locations in the index, and acknowledges. META_GETs run on the same worker thread, so they
//! see either the old location (and a cache reservation that the invalidation voids) or the new
//! one: a stale value never becomes cached after an acknowledged write.
//!
//! **Garbage collection.** When either log's free space falls below `gc_low` of its size, new
//! batches are held, the in-flight ones drain, and GC steps run alone until free space is back
//! above `gc_high` (or nothing more can be reclaimed). A bucket-log step re-appends the live
//! chains of the oldest blocks; a value-log step re-appends the live records of the oldest
//! blocks (their owners are found through the key stored in each record) and rewrites the
//! buckets that point to them. Readers holding old positions detect reused space through the
//! positions stored in every block and record, and retry.
//!
//! **Bounds.** Everything that waits in the store is bounded ([`StoreConfig::max_pending_writes`],
//! [`StoreConfig::max_pending_bytes`], [`StoreConfig::max_server_gets`]; batches in flight by
//! `max_inflight × batch`): a request over a limit is refused at once with
//! [`Refusal::Overloaded`], before anything of it is done.
//!
//! **Fail-stop.** A failed write (a batch's or a GC step's) may have left some of its parts
//! durable: a bucket chain the store believes unwritten can be complete on the SSD, and
//! recovery would adopt it. Going on would let GC reclaim the space it points to as dead, so
//! after the first failed write the store refuses every write ([`Refusal::WritesStopped`]) and
//! collects nothing until a restart, whose recovery settles each failed write as fully present
//! or absent. Reads keep working meanwhile.

mod batch;
mod gc;
pub mod index;
mod read;
pub mod recovery;
pub mod scan;
pub mod space;

use batch::{Batch, Pending};
use gc::Gc;
use read::Get;
use scan::Scan;

use crate::device::DeviceError;
use crate::table::CacheTable;
use index::{BucketIndex, ChainLoc};
use scalio_common::aligned::AlignedBuf;
use scalio_common::key::{route, TableKey};
use scalio_common::ssd::{
    decode_expected_record, decode_record, encode_record, record_len, BlockHeader, Bucket, Item, LayoutError,
    SsdGeometry, BLOCK_SIZE,
};
use space::LogSpace;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a store batches writes and collects garbage.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Most writes per batch (1: every write on its own).
    pub batch: usize,
    /// Longest a write waits for its batch to fill.
    pub batch_timeout: Duration,
    /// Batches (on disjoint buckets) in flight at once.
    pub max_inflight: usize,
    /// Start collecting when a log's free space falls below this fraction of its size.
    pub gc_low: f64,
    /// Stop collecting when free space is back above this fraction.
    pub gc_high: f64,
    /// Blocks scanned per GC step.
    pub gc_chunk_blocks: u32,
    /// Attempts of a server read whose blocks were reused meanwhile.
    pub read_retries: u32,
    /// Most writes waiting for a batch; more are refused as [`Refusal::Overloaded`].
    pub max_pending_writes: usize,
    /// Most key and value bytes of the writes waiting for a batch (a write is always admitted
    /// into an empty queue, so one value of any allowed size can pass).
    pub max_pending_bytes: usize,
    /// Most server reads (LEED-style GETs) in progress; each may hold a value of up to
    /// [`MAX_VALUE_LEN`](scalio_common::ssd::MAX_VALUE_LEN) bytes.
    pub max_server_gets: usize,
    /// Test-only seeded bug (see `SeededBug::AckBeforeInvalidate`).
    #[cfg(feature = "seeded-bugs")]
    pub ack_before_invalidate: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            batch: 8,
            batch_timeout: Duration::from_millis(1),
            max_inflight: 4,
            gc_low: 0.25,
            gc_high: 0.40,
            gc_chunk_blocks: 64,
            read_retries: 4,
            max_pending_writes: 256,
            max_pending_bytes: 32 << 20,
            max_server_gets: 64,
            #[cfg(feature = "seeded-bugs")]
            ack_before_invalidate: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOp {
    /// Insert or replace.
    Put,
    /// Replace an existing key.
    Update,
    Delete,
}

/// A write waiting for the store, with the handle to answer it.
pub struct WriteRequest<R> {
    pub op: WriteOp,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// Do not wait for a batch.
    pub unbatched: bool,
    pub reply: R,
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Value(Vec<u8>),
    NotFound,
    NoSpace(String),
    Io(String),
    /// Not attempted: nothing of it reached the SSD.
    Refused(Refusal),
    /// The SSD's blocks fail their checks (checksum, position, owner) on every attempt; their
    /// contents are never served.
    Corrupt(CorruptBlocks),
    /// A scan's keys, and the first bucket after the range it covered.
    Keys {
        keys: Vec<Vec<u8>>,
        next: u32,
    },
}

/// Blocks of an SSD that do not hold what the index says they hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("SSD {ssd} blocks {first}..{end}: {error}", end = first + u64::from(*count))]
pub struct CorruptBlocks {
    pub ssd: u16,
    /// The first block of the read that failed its checks.
    pub first: u64,
    pub count: u32,
    pub error: LayoutError,
}

/// A queue of the store that is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    PendingWrites,
    PendingWriteBytes,
    ServerGets,
}

impl std::fmt::Display for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Queue::PendingWrites => "pending writes",
            Queue::PendingWriteBytes => "pending write bytes",
            Queue::ServerGets => "server reads in progress",
        })
    }
}

/// Why the store refused a request without attempting it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A bounded queue is full; the same request may succeed later.
    #[error("SSD {ssd} is overloaded: {queue} at the limit of {limit}")]
    Overloaded { ssd: u16, queue: Queue, limit: usize },
    /// A write to the SSD failed earlier, possibly after part of it became durable. The store
    /// stopped taking writes (fail-stop) so that nothing can reuse the space the failed write
    /// may still claim on the SSD; recovery at the next start settles it.
    #[error("SSD {ssd} stopped taking writes after a device error ({cause}); restart the server to recover")]
    WritesStopped { ssd: u16, cause: String },
}

/// A finished request.
pub struct Completed<R> {
    pub reply: R,
    pub outcome: Outcome,
}

/// An I/O the store needs. Parts of a write execute in order, each durable before the next.
#[derive(Debug)]
pub enum IoRequest {
    Read { token: u64, lba: u64, count: u32 },
    Write { token: u64, parts: Vec<(u64, AlignedBuf)> },
}

/// The result of an [`IoRequest`].
#[derive(Debug)]
pub enum IoResult {
    Read(Result<AlignedBuf, DeviceError>),
    Write(Result<(), DeviceError>),
}

/// Counters of one store.
#[derive(Debug, Default)]
pub struct StoreCounters {
    pub batches: AtomicU64,
    pub batched_writes: AtomicU64,
    pub server_gets: AtomicU64,
    pub gc_bucket_steps: AtomicU64,
    pub gc_value_steps: AtomicU64,
    pub gc_moved_chains: AtomicU64,
    pub gc_moved_records: AtomicU64,
    pub stale_retries: AtomicU64,
    pub corrupt_reads: AtomicU64,
    pub no_space: AtomicU64,
    /// Requests refused because a bounded queue was full.
    pub overloaded: AtomicU64,
    /// 1 once a write error has stopped the store's writes (a gauge).
    pub writes_stopped: AtomicU64,
}

/// What the store knows about its space, for statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpaceReport {
    pub bucket_log: LogSpace,
    pub value_log: LogSpace,
    pub live_blocks: u64,
    pub live_bytes: u64,
}

/// The state a store starts from (a freshly formatted or a recovered SSD).
#[derive(Debug)]
pub struct Recovered {
    pub index: BucketIndex,
    pub bucket_log: LogSpace,
    pub value_log: LogSpace,
    pub live_blocks: u64,
    pub live_bytes: u64,
}

impl Recovered {
    /// The state of an empty SSD.
    pub fn empty(geo: &SsdGeometry) -> Recovered {
        Recovered {
            index: BucketIndex::new(geo.buckets),
            bucket_log: LogSpace::new(0, 0, geo.bucket_log.blocks),
            value_log: LogSpace::new(0, 0, geo.value_log.bytes()),
            live_blocks: 0,
            live_bytes: 0,
        }
    }
}

enum Purpose {
    BatchBucket { batch: u64, bucket: u32 },
    BatchWrite { batch: u64 },
    GetBucket { get: u64 },
    GetValue { get: u64 },
    Gc,
    GcBucket { bucket: u32 },
    ScanBucket { scan: u64, bucket: u32, loc: ChainLoc },
}

/// The data store of one SSD.
pub struct DataStore<R> {
    ssd: u16,
    ssds: u16,
    geo: SsdGeometry,
    seed: u64,
    index: BucketIndex,
    bl: LogSpace,
    vl: LogSpace,
    live_blocks: u64,
    live_bytes: u64,
    cfg: StoreConfig,
    table: Option<Arc<CacheTable>>,
    counters: Arc<StoreCounters>,
    pending: VecDeque<Pending<R>>,
    /// Key and value bytes in `pending`.
    pending_bytes: usize,
    /// Set by the first failed write: the store takes no more writes (see [`Refusal::WritesStopped`]).
    writes_stopped: Option<String>,
    locked: HashSet<u32>,
    batches: HashMap<u64, Batch<R>>,
    gets: HashMap<u64, Get<R>>,
    scans: HashMap<u64, Scan<R>>,
    /// Scans waiting for the writes submitted before them: (first write sequence number not
    /// to wait for, range start, buckets, reply).
    deferred_scans: VecDeque<(u64, u32, u32, R)>,
    /// The sequence number of the next write submitted.
    write_seq: u64,
    gc: Option<Gc>,
    gc_wanted: bool,
    /// Space a waiting batch needs that GC must make (zero when GC runs for the watermarks).
    gc_need: (u64, u64),
    /// GC steps in the current burst, and whether the last burst was abandoned as futile.
    gc_steps: u64,
    gc_futile: bool,
    /// When `poll` last found nothing it could start. Nothing changes that but an event (an I/O
    /// completion, a new request), so a batch deadline that had passed by then is not a reason
    /// to wake up again: waking would only spin.
    stalled_at: Option<Instant>,
    reserved: (u64, u64),
    purposes: HashMap<u64, Purpose>,
    next_id: u64,
    io_out: Vec<IoRequest>,
    done: Vec<Completed<R>>,
    /// Test-only seeded bug: invalidations left for the next completed batch.
    #[cfg(feature = "seeded-bugs")]
    deferred_invalidations: Vec<TableKey>,
}

/// Fraction of a log that live data may fill; beyond it writes are refused as out of space.
const GC_FULL: f64 = 0.90;

fn round_block(n: u64) -> u64 {
    n.div_ceil(BLOCK_SIZE as u64) * BLOCK_SIZE as u64
}

impl<R> DataStore<R> {
    /// A store for SSD `ssd` of `ssds`, starting from `state`. `table` is the cache to
    /// invalidate before publishing writes (None when the cache is off).
    pub fn new(
        ssd: u16,
        ssds: u16,
        geo: SsdGeometry,
        seed: u64,
        state: Recovered,
        cfg: StoreConfig,
        table: Option<Arc<CacheTable>>,
    ) -> DataStore<R> {
        DataStore {
            ssd,
            ssds,
            geo,
            seed,
            index: state.index,
            bl: state.bucket_log,
            vl: state.value_log,
            live_blocks: state.live_blocks,
            live_bytes: state.live_bytes,
            cfg,
            table,
            counters: Arc::new(StoreCounters::default()),
            pending: VecDeque::new(),
            pending_bytes: 0,
            writes_stopped: None,
            locked: HashSet::new(),
            batches: HashMap::new(),
            gets: HashMap::new(),
            scans: HashMap::new(),
            deferred_scans: VecDeque::new(),
            write_seq: 0,
            gc: None,
            gc_wanted: false,
            gc_need: (0, 0),
            gc_steps: 0,
            gc_futile: false,
            stalled_at: None,
            reserved: (0, 0),
            purposes: HashMap::new(),
            next_id: 1,
            io_out: Vec::new(),
            done: Vec::new(),
            #[cfg(feature = "seeded-bugs")]
            deferred_invalidations: Vec::new(),
        }
    }

    pub fn ssd(&self) -> u16 {
        self.ssd
    }

    pub fn geometry(&self) -> &SsdGeometry {
        &self.geo
    }

    pub fn counters(&self) -> &Arc<StoreCounters> {
        &self.counters
    }

    pub fn space(&self) -> SpaceReport {
        SpaceReport {
            bucket_log: self.bl,
            value_log: self.vl,
            live_blocks: self.live_blocks,
            live_bytes: self.live_bytes,
        }
    }

    /// The bucket of `key` on this SSD.
    pub fn bucket_of(&self, key: &[u8]) -> u32 {
        route(key, self.ssds, self.geo.buckets).bucket
    }

    /// META_GET's lookup: where the newest chain of `key`'s bucket is. No I/O.
    pub fn locate(&self, key: &[u8]) -> Option<ChainLoc> {
        self.index.get(self.bucket_of(key))
    }

    /// The number of buckets (the end of a scan).
    pub fn buckets(&self) -> u32 {
        self.index.buckets()
    }

    /// Whether requests are still in flight (reads, writes or GC).
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty()
            && self.batches.is_empty()
            && self.gets.is_empty()
            && self.scans.is_empty()
            && self.deferred_scans.is_empty()
            && self.gc.is_none()
    }

    /// I/O requests produced since the last call.
    pub fn take_io(&mut self) -> Vec<IoRequest> {
        std::mem::take(&mut self.io_out)
    }

    /// Requests finished since the last call.
    pub fn take_completed(&mut self) -> Vec<Completed<R>> {
        std::mem::take(&mut self.done)
    }

    fn token(&mut self, purpose: Purpose) -> u64 {
        let t = self.next_id;
        self.next_id += 1;
        self.purposes.insert(t, purpose);
        t
    }

    fn read_chain(&mut self, loc: ChainLoc, purpose: Purpose) {
        let token = self.token(purpose);
        self.io_out.push(IoRequest::Read { token, lba: self.geo.bucket_block(loc.lseq), count: u32::from(loc.len) });
    }

    /// Queues a write; it starts at the next [`poll`](Self::poll) that finds its batch ready.
    /// It is refused at once when the store has stopped taking writes or its queue is full.
    pub fn submit_write(&mut self, req: WriteRequest<R>, now: Instant) {
        if let Some(cause) = &self.writes_stopped {
            let refusal = Refusal::WritesStopped { ssd: self.ssd, cause: cause.clone() };
            self.done.push(Completed { reply: req.reply, outcome: Outcome::Refused(refusal) });
            return;
        }
        let size = req.key.len() + req.value.len();
        let full = if self.pending.len() >= self.cfg.max_pending_writes {
            Some((Queue::PendingWrites, self.cfg.max_pending_writes))
        } else if !self.pending.is_empty() && self.pending_bytes + size > self.cfg.max_pending_bytes {
            Some((Queue::PendingWriteBytes, self.cfg.max_pending_bytes))
        } else {
            None
        };
        if let Some((queue, limit)) = full {
            self.counters.overloaded.fetch_add(1, Ordering::Relaxed);
            let refusal = Refusal::Overloaded { ssd: self.ssd, queue, limit };
            self.done.push(Completed { reply: req.reply, outcome: Outcome::Refused(refusal) });
            return;
        }
        let bucket = self.bucket_of(&req.key);
        self.pending_bytes += size;
        let seq = self.write_seq;
        self.write_seq += 1;
        self.pending.push_back(Pending { req, bucket, arrived: now, seq });
        self.poll(now);
    }

    /// Removes the pending write at `i`.
    fn take_pending(&mut self, i: usize) -> Pending<R> {
        let p = self.pending.remove(i).expect("a pending write");
        self.pending_bytes -= p.req.key.len() + p.req.value.len();
        p
    }

    /// Why the store takes no more writes, if it stopped (fail-stop after a write error).
    pub fn writes_stopped(&self) -> Option<&str> {
        self.writes_stopped.as_deref()
    }

    /// Fail-stop: a write failed, and some of its parts may be durable (a bucket chain whose
    /// write was reported failed can still be complete on the SSD and be adopted by recovery).
    /// Continuing would let garbage collection and new writes reuse space that such a chain
    /// points to, so the store refuses every further write, and collects nothing, until a
    /// restart recovers a consistent state from the SSD. Reads keep working.
    fn stop_writes(&mut self, cause: &DeviceError) {
        if self.writes_stopped.is_some() {
            return;
        }
        tracing::error!(ssd = self.ssd, error = %cause, "a write failed: this SSD takes no more writes until restarted");
        self.writes_stopped = Some(cause.to_string());
        self.counters.writes_stopped.store(1, Ordering::Relaxed);
        self.gc_wanted = false;
        self.gc_need = (0, 0);
        let refusal = Refusal::WritesStopped { ssd: self.ssd, cause: cause.to_string() };
        while !self.pending.is_empty() {
            let p = self.take_pending(0);
            self.done.push(Completed { reply: p.req.reply, outcome: Outcome::Refused(refusal.clone()) });
        }
    }

    /// The earliest time [`poll`](Self::poll) has something to do without new input.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.gc.is_some() || self.gc_wanted || self.writes_stopped.is_some() {
            return None;
        }
        let due = self.pending.front().map(|p| p.arrived + self.cfg.batch_timeout)?;
        match self.stalled_at {
            Some(t) if due <= t => None,
            _ => Some(due),
        }
    }

    /// Starts whatever is ready: scans whose earlier writes are done, GC steps, batches.
    pub fn poll(&mut self, now: Instant) {
        self.start_deferred_scans();
        // Each round starts a GC step or a batch (or refuses a write); the bound only guards
        // against a bookkeeping bug turning into a busy loop.
        for _ in 0..1024 {
            if self.gc.is_some() || self.writes_stopped.is_some() {
                return;
            }
            if self.gc_wanted {
                if self.batches.is_empty() {
                    self.start_gc_step();
                }
                return;
            }
            if self.batches.len() >= self.cfg.max_inflight {
                self.stalled_at = Some(now);
                return;
            }
            if !self.start_batch(now) {
                // A batch that must wait for garbage collection asks for it (`gc_wanted`): go
                // round again to start it now, since nothing else would wake this store (its
                // deadline waits for GC, and no I/O of it is in flight).
                if self.gc_wanted {
                    continue;
                }
                self.stalled_at = Some(now);
                return;
            }
        }
    }

    /// Feeds the result of I/O `token`.
    pub fn on_io(&mut self, token: u64, result: IoResult, now: Instant) {
        let Some(purpose) = self.purposes.remove(&token) else {
            tracing::warn!(ssd = self.ssd, token, "result for an unknown I/O");
            return;
        };
        match (purpose, result) {
            (Purpose::BatchBucket { batch, bucket }, IoResult::Read(r)) => self.on_batch_bucket(batch, bucket, r),
            (Purpose::BatchWrite { batch }, IoResult::Write(r)) => {
                self.finish_batch(batch, r);
                self.start_deferred_scans();
            }
            (Purpose::GetBucket { get }, IoResult::Read(r)) => self.on_get_bucket(get, r),
            (Purpose::GetValue { get }, IoResult::Read(r)) => self.on_get_value(get, r),
            (Purpose::Gc, r) => self.on_gc_io(r),
            (Purpose::GcBucket { bucket }, IoResult::Read(r)) => self.on_gc_bucket(bucket, r),
            (Purpose::ScanBucket { scan, bucket, loc }, IoResult::Read(r)) => self.on_scan_bucket(scan, bucket, loc, r),
            (_, _) => tracing::error!(ssd = self.ssd, token, "I/O result of the wrong kind"),
        }
        self.poll(now);
    }
}

#[cfg(test)]
mod tests;
