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

pub mod index;
pub mod recovery;
pub mod space;

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

struct Pending<R> {
    req: WriteRequest<R>,
    bucket: u32,
    arrived: Instant,
}

struct Batch<R> {
    writes: Vec<(WriteRequest<R>, u32)>,
    buckets: Vec<u32>,
    contents: HashMap<u32, Bucket>,
    failed: HashMap<u32, String>,
    awaiting: usize,
    estimate: (u64, u64),
    outcomes: Vec<Outcome>,
    publish: Vec<(u32, ChainLoc)>,
    live_blocks_delta: i64,
    live_bytes_delta: i64,
}

struct Get<R> {
    key: Vec<u8>,
    bucket: u32,
    reply: R,
    attempts: u32,
    /// The chain the current attempt reads (the index may move on while it is read).
    loc: Option<ChainLoc>,
    item: Option<Item>,
}

struct GcRecord {
    lpos: u64,
    key: Vec<u8>,
    value: Vec<u8>,
    bucket: u32,
}

enum Gc {
    BucketScan { start: u64, blocks: u64 },
    ValueScan { start: u64, base: u64, blocks: u64 },
    ValueBuckets { new_head: u64, records: Vec<GcRecord>, contents: HashMap<u32, Bucket>, awaiting: usize },
    Write { new_head: u64, value_log: bool, publish: Vec<(u32, ChainLoc)> },
}

enum Purpose {
    BatchBucket { batch: u64, bucket: u32 },
    BatchWrite { batch: u64 },
    GetBucket { get: u64 },
    GetValue { get: u64 },
    Gc,
    GcBucket { bucket: u32 },
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
    locked: HashSet<u32>,
    batches: HashMap<u64, Batch<R>>,
    gets: HashMap<u64, Get<R>>,
    gc: Option<Gc>,
    gc_wanted: bool,
    /// Space a waiting batch needs that GC must make (zero when GC runs for the watermarks).
    gc_need: (u64, u64),
    /// GC steps in the current burst, and whether the last burst was abandoned as futile.
    gc_steps: u64,
    gc_futile: bool,
    reserved: (u64, u64),
    purposes: HashMap<u64, Purpose>,
    next_id: u64,
    io_out: Vec<IoRequest>,
    done: Vec<Completed<R>>,
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
            locked: HashSet::new(),
            batches: HashMap::new(),
            gets: HashMap::new(),
            gc: None,
            gc_wanted: false,
            gc_need: (0, 0),
            gc_steps: 0,
            gc_futile: false,
            reserved: (0, 0),
            purposes: HashMap::new(),
            next_id: 1,
            io_out: Vec::new(),
            done: Vec::new(),
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

    /// Whether requests are still in flight (reads, writes or GC).
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty() && self.batches.is_empty() && self.gets.is_empty() && self.gc.is_none()
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
    pub fn submit_write(&mut self, req: WriteRequest<R>, now: Instant) {
        let bucket = self.bucket_of(&req.key);
        self.pending.push_back(Pending { req, bucket, arrived: now });
        self.poll(now);
    }

    /// Starts a server-side read of `key` (the LEED-style path: two dependent SSD reads).
    pub fn submit_get(&mut self, key: Vec<u8>, reply: R) {
        self.counters.server_gets.fetch_add(1, Ordering::Relaxed);
        let bucket = self.bucket_of(&key);
        let id = self.next_id;
        self.next_id += 1;
        self.gets.insert(id, Get { key, bucket, reply, attempts: 0, loc: None, item: None });
        self.start_get(id);
    }

    fn start_get(&mut self, id: u64) {
        let g = self.gets.get_mut(&id).expect("get exists");
        g.attempts += 1;
        g.item = None;
        g.loc = self.index.get(g.bucket);
        match g.loc {
            None => self.finish_get(id, Outcome::NotFound),
            Some(loc) => self.read_chain(loc, Purpose::GetBucket { get: id }),
        }
    }

    fn finish_get(&mut self, id: u64, outcome: Outcome) {
        if let Some(g) = self.gets.remove(&id) {
            self.done.push(Completed { reply: g.reply, outcome });
        }
    }

    /// A read found blocks that do not hold what the index said when the read was issued: space
    /// reused (or being rewritten) by garbage collection. Retry from the index, a bounded number
    /// of times; then it is corruption.
    fn retry_get(&mut self, id: u64, why: LayoutError) {
        let attempts = self.gets.get(&id).map_or(u32::MAX, |g| g.attempts);
        if attempts < self.cfg.read_retries {
            self.counters.stale_retries.fetch_add(1, Ordering::Relaxed);
            self.start_get(id);
        } else {
            self.counters.corrupt_reads.fetch_add(1, Ordering::Relaxed);
            self.finish_get(id, Outcome::Io(format!("SSD {}: {why}", self.ssd)));
        }
    }

    /// The earliest time [`poll`](Self::poll) has something to do without new input.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.gc.is_some() || self.gc_wanted {
            return None;
        }
        self.pending.front().map(|p| p.arrived + self.cfg.batch_timeout)
    }

    /// Starts whatever is ready: GC steps, batches.
    pub fn poll(&mut self, now: Instant) {
        // Each round starts a GC step or a batch (or refuses a write); the bound only guards
        // against a bookkeeping bug turning into a busy loop.
        for _ in 0..1024 {
            if self.gc.is_some() {
                return;
            }
            if self.gc_wanted {
                if self.batches.is_empty() {
                    self.start_gc_step();
                }
                return;
            }
            if self.batches.len() >= self.cfg.max_inflight || !self.start_batch(now) {
                return;
            }
        }
    }

    /// Selects and starts one batch if one is ready. Returns whether it started one.
    fn start_batch(&mut self, now: Instant) -> bool {
        // Writes whose bucket is free, in arrival order (a locked bucket's later writes wait too,
        // which keeps per-key order).
        let mut chosen = Vec::new();
        let mut first_unbatched = None;
        for (i, p) in self.pending.iter().enumerate() {
            if self.locked.contains(&p.bucket) {
                continue;
            }
            if p.req.unbatched {
                first_unbatched.get_or_insert(i);
            }
            chosen.push(i);
            if chosen.len() >= self.cfg.batch.max(1) {
                break;
            }
        }
        let Some(&oldest) = chosen.first() else { return false };
        let take: Vec<usize> = if let Some(u) = first_unbatched {
            vec![u]
        } else if chosen.len() >= self.cfg.batch.max(1) || self.pending[oldest].arrived + self.cfg.batch_timeout <= now
        {
            chosen
        } else {
            return false;
        };
        let estimate = self.estimate(&take);
        if !self.fits(estimate) {
            if !self.batches.is_empty() {
                return false; // in-flight batches still hold reservations: wait for them
            }
            if !self.gc_futile && self.could_fit(estimate) {
                // Garbage collection can make room: run it before this batch.
                self.gc_need = estimate;
                self.gc_wanted = true;
                self.gc_steps = 0;
                return false;
            }
            // Even a fully compacted SSD could not hold it: refuse the oldest write.
            let p = self.pending.remove(take[0]).expect("chosen index");
            self.counters.no_space.fetch_add(1, Ordering::Relaxed);
            let msg = format!("SSD {} is full ({} live value bytes)", self.ssd, self.live_bytes);
            self.done.push(Completed { reply: p.req.reply, outcome: Outcome::NoSpace(msg) });
            return true;
        }
        let mut writes = Vec::with_capacity(take.len());
        for (n, i) in take.into_iter().enumerate() {
            let p = self.pending.remove(i - n).expect("chosen index");
            writes.push((p.req, p.bucket));
        }
        self.reserved.0 += estimate.0;
        self.reserved.1 += estimate.1;
        let id = self.next_id;
        self.next_id += 1;
        let mut buckets = Vec::new();
        for (_, b) in &writes {
            if self.locked.insert(*b) {
                buckets.push(*b);
            }
        }
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        self.counters.batched_writes.fetch_add(writes.len() as u64, Ordering::Relaxed);
        let mut batch = Batch {
            writes,
            buckets: buckets.clone(),
            contents: HashMap::new(),
            failed: HashMap::new(),
            awaiting: 0,
            estimate,
            outcomes: Vec::new(),
            publish: Vec::new(),
            live_blocks_delta: 0,
            live_bytes_delta: 0,
        };
        for b in buckets {
            match self.index.get(b) {
                Some(loc) => {
                    batch.awaiting += 1;
                    self.read_chain(loc, Purpose::BatchBucket { batch: id, bucket: b });
                }
                None => {
                    batch.contents.insert(b, Bucket::default());
                }
            }
        }
        let ready = batch.awaiting == 0;
        self.batches.insert(id, batch);
        if ready {
            self.build_batch(id);
        }
        true
    }

    /// Worst-case space of the writes at `take`: (value-log bytes, bucket-log blocks).
    fn estimate(&self, take: &[usize]) -> (u64, u64) {
        let mut bytes = 0;
        let mut buckets: HashMap<u32, u64> = HashMap::new();
        for &i in take {
            let p = &self.pending[i];
            bytes += record_len(p.req.key.len(), p.req.value.len()) as u64;
            *buckets.entry(p.bucket).or_insert(0) += 1;
        }
        let chains: Vec<u64> =
            buckets.iter().map(|(b, n)| self.index.get(*b).map_or(0, |l| u64::from(l.len)) + n.div_ceil(16)).collect();
        // The values go out as one run, which may skip up to its own size at the end of the log;
        // chains are placed one by one, so at most the longest is skipped.
        let blocks = chains.iter().sum::<u64>() + chains.iter().max().copied().unwrap_or(0);
        (LogSpace::worst_case(round_block(bytes)), blocks)
    }

    fn fits(&self, (bytes, blocks): (u64, u64)) -> bool {
        bytes + self.reserved.0 <= self.vl.free() && blocks + self.reserved.1 <= self.bl.free()
    }

    /// Whether `estimate` would fit once all dead space is collected (with a margin that keeps
    /// garbage collection able to relocate live data).
    fn could_fit(&self, (bytes, blocks): (u64, u64)) -> bool {
        let room = |live: u64, need: u64, s: &LogSpace| (live + need) as f64 <= GC_FULL * s.size as f64;
        room(self.live_bytes, bytes, &self.vl) && room(self.live_blocks, blocks, &self.bl)
    }

    /// Applies a batch whose buckets have all been read, and issues its write.
    fn build_batch(&mut self, id: u64) {
        let mut batch = self.batches.remove(&id).expect("batch exists");
        // Pass 1: outcomes, and how much value space they need.
        let mut exists: HashMap<Vec<u8>, bool> = HashMap::new();
        let mut value_bytes = 0u64;
        for (w, b) in &batch.writes {
            let outcome = if let Some(e) = batch.failed.get(b) {
                Outcome::Io(e.clone())
            } else {
                let present = exists
                    .entry(w.key.clone())
                    .or_insert_with(|| batch.contents.get(b).is_some_and(|c| c.find(&w.key).is_some()));
                let (outcome, writes_record) = match (w.op, *present) {
                    (WriteOp::Put, _) | (WriteOp::Update, true) => (Outcome::Ok, true),
                    (WriteOp::Delete, true) => (Outcome::Ok, false),
                    (WriteOp::Update | WriteOp::Delete, false) => (Outcome::NotFound, false),
                };
                if outcome == Outcome::Ok {
                    *present = w.op != WriteOp::Delete;
                }
                if writes_record {
                    value_bytes += record_len(w.key.len(), w.value.len()) as u64;
                }
                outcome
            };
            batch.outcomes.push(outcome);
        }
        // Pass 2: apply, packing the values into one run of blocks.
        let padded = round_block(value_bytes);
        let base = self.vl.place(self.vl.tail, padded);
        let mut records = Vec::with_capacity(padded as usize);
        let mut changed: Vec<u32> = Vec::new();
        for (i, (w, b)) in batch.writes.iter().enumerate() {
            if batch.outcomes[i] != Outcome::Ok {
                continue;
            }
            let content = batch.contents.get_mut(b).expect("read bucket");
            let old = content.find(&w.key).map_or(0, |it| it.record_len() as i64);
            if w.op == WriteOp::Delete {
                content.remove(&w.key);
                batch.live_bytes_delta -= old;
            } else {
                let lpos = base + records.len() as u64;
                encode_record(&mut records, self.seed, lpos, &w.key, &w.value);
                let item = Item { key: w.key.clone(), value_len: w.value.len() as u32, value_pos: lpos };
                let new = item.record_len() as i64;
                if let Err(e) = content.upsert(item) {
                    batch.outcomes[i] = Outcome::NoSpace(format!("SSD {}: {e}", self.ssd));
                    continue;
                }
                batch.live_bytes_delta += new - old;
            }
            if !changed.contains(b) {
                changed.push(*b);
            }
        }
        let mut parts = Vec::new();
        if value_bytes > 0 {
            let lba = self.geo.value_log.start + (base % self.vl.size) / BLOCK_SIZE as u64;
            parts.push((lba, AlignedBuf::copy_padded(&records, padded as usize)));
            self.vl.tail = base + padded;
        }
        // The changed chains, appended to the bucket log.
        let mut chains: Vec<(u64, Vec<u8>)> = Vec::new();
        for b in changed {
            let content = &batch.contents[&b];
            let len = content.chain_len() as u64;
            let lseq = self.bl.place(self.bl.tail, len);
            match content.encode(b, lseq, self.seed) {
                Ok(bytes) => {
                    self.bl.tail = lseq + len;
                    let old = self.index.get(b).map_or(0, |l| i64::from(l.len));
                    batch.live_blocks_delta += len as i64 - old;
                    batch.publish.push((b, ChainLoc { lseq, len: len as u8 }));
                    chains.push((lseq, bytes));
                }
                Err(e) => {
                    for (i, (_, wb)) in batch.writes.iter().enumerate() {
                        if *wb == b && batch.outcomes[i] == Outcome::Ok {
                            batch.outcomes[i] = Outcome::NoSpace(format!("SSD {}: {e}", self.ssd));
                        }
                    }
                }
            }
        }
        parts.extend(self.chain_parts(chains));
        self.reserved.0 -= batch.estimate.0;
        self.reserved.1 -= batch.estimate.1;
        if parts.is_empty() {
            self.batches.insert(id, batch);
            self.finish_batch(id, Ok(()));
            return;
        }
        let token = self.token(Purpose::BatchWrite { batch: id });
        self.io_out.push(IoRequest::Write { token, parts });
        self.batches.insert(id, batch);
    }

    /// Groups chains placed at consecutive positions into write parts.
    fn chain_parts(&self, chains: Vec<(u64, Vec<u8>)>) -> Vec<(u64, AlignedBuf)> {
        let mut parts = Vec::new();
        let mut run: Option<(u64, u64, Vec<u8>)> = None; // (first lseq, next lseq, bytes)
        for (lseq, bytes) in chains {
            let blocks = (bytes.len() / BLOCK_SIZE) as u64;
            match &mut run {
                // Contiguous, and not across the physical end of the log.
                Some((_, next, buf)) if *next == lseq && lseq % self.bl.size != 0 => {
                    buf.extend_from_slice(&bytes);
                    *next += blocks;
                }
                _ => {
                    if let Some((first, _, buf)) = run.take() {
                        parts.push((self.geo.bucket_block(first), AlignedBuf::copy_padded(&buf, buf.len())));
                    }
                    run = Some((lseq, lseq + blocks, bytes));
                }
            }
        }
        if let Some((first, _, buf)) = run {
            parts.push((self.geo.bucket_block(first), AlignedBuf::copy_padded(&buf, buf.len())));
        }
        parts
    }

    fn finish_batch(&mut self, id: u64, result: Result<(), DeviceError>) {
        let batch = self.batches.remove(&id).expect("batch exists");
        match result {
            Ok(()) => {
                // Invalidate every written key before publishing any new location.
                if let Some(t) = &self.table {
                    for (i, (w, _)) in batch.writes.iter().enumerate() {
                        if batch.outcomes[i] == Outcome::Ok {
                            t.invalidate(&TableKey::new(&w.key));
                        }
                    }
                }
                for (b, loc) in &batch.publish {
                    self.index.set(*b, *loc);
                }
                self.live_blocks = (self.live_blocks as i64 + batch.live_blocks_delta) as u64;
                self.live_bytes = (self.live_bytes as i64 + batch.live_bytes_delta) as u64;
                for ((w, _), outcome) in batch.writes.into_iter().zip(batch.outcomes) {
                    self.done.push(Completed { reply: w.reply, outcome });
                }
            }
            Err(e) => {
                tracing::error!(ssd = self.ssd, error = %e, "batch write failed");
                for (w, _) in batch.writes {
                    self.done.push(Completed { reply: w.reply, outcome: Outcome::Io(e.to_string()) });
                }
            }
        }
        for b in &batch.buckets {
            self.locked.remove(b);
        }
        self.gc_futile = false; // this batch may have turned live data into garbage
        self.check_space();
    }

    /// Whether log `s` (with `live` units live) should be collected. Starting needs less free
    /// space and more garbage than continuing, so that a burst does not stop and start again at
    /// once; relocating live data makes a little garbage itself (padding), so a log whose garbage
    /// is only that is left alone.
    fn log_needs_gc(&self, s: &LogSpace, live: u64, need: u64, reserved: u64, unit: u64, starting: bool) -> bool {
        let dead = s.used().saturating_sub(live);
        if dead == 0 {
            return false;
        }
        if need > 0 && need + reserved > s.free() {
            return true; // a waiting batch needs the room
        }
        let (free_frac, dead_frac) = if starting { (self.cfg.gc_low, 0.05) } else { (self.cfg.gc_high, 0.025) };
        let chunk = u64::from(self.cfg.gc_chunk_blocks) * unit;
        (s.free() as f64) < free_frac * s.size as f64 && dead >= chunk && dead as f64 >= dead_frac * s.size as f64
    }

    /// (value log, bucket log) need collecting.
    fn gc_targets(&self, starting: bool) -> (bool, bool) {
        let v =
            self.log_needs_gc(&self.vl, self.live_bytes, self.gc_need.0, self.reserved.0, BLOCK_SIZE as u64, starting);
        let b = self.log_needs_gc(&self.bl, self.live_blocks, self.gc_need.1, self.reserved.1, 1, starting);
        (v, b)
    }

    fn check_space(&mut self) {
        let (v, b) = self.gc_targets(true);
        if v || b {
            self.gc_wanted = true;
            self.gc_steps = 0;
        }
    }

    /// Feeds the result of I/O `token`.
    pub fn on_io(&mut self, token: u64, result: IoResult, now: Instant) {
        let Some(purpose) = self.purposes.remove(&token) else {
            tracing::warn!(ssd = self.ssd, token, "result for an unknown I/O");
            return;
        };
        match (purpose, result) {
            (Purpose::BatchBucket { batch, bucket }, IoResult::Read(r)) => {
                let loc = self.index.get(bucket).expect("locked bucket stays in the index");
                let b = self.batches.get_mut(&batch).expect("batch exists");
                match r.map_err(|e| e.to_string()).and_then(|bytes| {
                    Bucket::decode(&bytes, bucket, loc.lseq, loc.len, self.seed).map_err(|e| e.to_string())
                }) {
                    Ok(content) => {
                        b.contents.insert(bucket, content);
                    }
                    Err(e) => {
                        self.counters.corrupt_reads.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(ssd = self.ssd, bucket, error = %e, "cannot read bucket for a write");
                        b.failed.insert(bucket, format!("SSD {} bucket {bucket}: {e}", self.ssd));
                    }
                }
                b.awaiting -= 1;
                if b.awaiting == 0 {
                    self.build_batch(batch);
                }
            }
            (Purpose::BatchWrite { batch }, IoResult::Write(r)) => self.finish_batch(batch, r),
            (Purpose::GetBucket { get }, IoResult::Read(r)) => self.on_get_bucket(get, r),
            (Purpose::GetValue { get }, IoResult::Read(r)) => self.on_get_value(get, r),
            (Purpose::Gc, r) => self.on_gc_io(r),
            (Purpose::GcBucket { bucket }, IoResult::Read(r)) => self.on_gc_bucket(bucket, r),
            (_, _) => tracing::error!(ssd = self.ssd, token, "I/O result of the wrong kind"),
        }
        self.poll(now);
    }

    fn on_get_bucket(&mut self, id: u64, r: Result<AlignedBuf, DeviceError>) {
        let Some(g) = self.gets.get(&id) else { return };
        let bytes = match r {
            Ok(b) => b,
            Err(e) => return self.finish_get(id, Outcome::Io(e.to_string())),
        };
        let loc = g.loc.expect("a chain was read");
        // The chain as the index named it when the read was issued: a newer chain published since
        // is as good a linearization point as this one, so no re-check is needed.
        let decoded = Bucket::decode(&bytes, g.bucket, loc.lseq, loc.len, self.seed);
        let item = match decoded {
            Ok(content) => content.find(&g.key).cloned(),
            Err(e) => return self.retry_get(id, e),
        };
        match item {
            None => self.finish_get(id, Outcome::NotFound),
            Some(item) => {
                let (lba, count, _) = self.geo.record_blocks(item.value_pos, item.record_len());
                self.gets.get_mut(&id).expect("get exists").item = Some(item);
                let token = self.token(Purpose::GetValue { get: id });
                self.io_out.push(IoRequest::Read { token, lba, count });
            }
        }
    }

    fn on_get_value(&mut self, id: u64, r: Result<AlignedBuf, DeviceError>) {
        let Some(g) = self.gets.get(&id) else { return };
        let item = g.item.clone().expect("item located");
        let bytes = match r {
            Ok(b) => b,
            Err(e) => return self.finish_get(id, Outcome::Io(e.to_string())),
        };
        let (_, _, offset) = self.geo.record_blocks(item.value_pos, item.record_len());
        match decode_expected_record(&bytes[offset..], self.seed, item.value_pos, &g.key, item.value_len) {
            Ok(rec) => {
                let v = rec.value.to_vec();
                self.finish_get(id, Outcome::Value(v))
            }
            Err(e) => self.retry_get(id, e),
        }
    }

    // ---- garbage collection -------------------------------------------------------------

    fn start_gc_step(&mut self) {
        let ratio = |s: &LogSpace| s.free() as f64 / s.size as f64;
        let chunk = u64::from(self.cfg.gc_chunk_blocks);
        let (want_v, want_b) = self.gc_targets(false);
        if want_v && (!want_b || ratio(&self.vl) <= ratio(&self.bl)) {
            self.start_value_scan(chunk);
        } else if want_b {
            self.start_bucket_scan(chunk);
        } else {
            self.gc_wanted = false;
            self.gc_need = (0, 0);
        }
    }

    fn start_bucket_scan(&mut self, chunk: u64) {
        let start = self.bl.head;
        let end = self.bl.tail.min(self.bl.lap_end(start));
        let blocks = chunk.min(end - start);
        if blocks == 0 {
            self.gc_wanted = false;
            return;
        }
        self.counters.gc_bucket_steps.fetch_add(1, Ordering::Relaxed);
        let token = self.token(Purpose::Gc);
        self.io_out.push(IoRequest::Read { token, lba: self.geo.bucket_block(start), count: blocks as u32 });
        self.gc = Some(Gc::BucketScan { start, blocks });
    }

    fn start_value_scan(&mut self, chunk: u64) {
        let start = self.vl.head;
        let base = start - start % BLOCK_SIZE as u64;
        let end = self.vl.tail.min(self.vl.lap_end(start));
        let blocks = chunk.min((end - base).div_ceil(BLOCK_SIZE as u64));
        if end <= start || blocks == 0 {
            self.gc_wanted = false;
            return;
        }
        self.scan_value(start, base, blocks);
    }

    fn scan_value(&mut self, start: u64, base: u64, blocks: u64) {
        self.counters.gc_value_steps.fetch_add(1, Ordering::Relaxed);
        let token = self.token(Purpose::Gc);
        let lba = self.geo.value_log.start + (base % self.vl.size) / BLOCK_SIZE as u64;
        self.io_out.push(IoRequest::Read { token, lba, count: blocks as u32 });
        self.gc = Some(Gc::ValueScan { start, base, blocks });
    }

    fn gc_failed(&mut self, e: impl std::fmt::Display) {
        tracing::error!(ssd = self.ssd, error = %e, "garbage collection step failed");
        self.gc = None;
        self.gc_wanted = false;
        self.gc_need = (0, 0);
        // Until a batch changes things, a write that does not fit is refused rather than
        // waiting for a collection that cannot happen.
        self.gc_futile = true;
    }

    fn on_gc_io(&mut self, r: IoResult) {
        match (self.gc.take(), r) {
            (Some(Gc::BucketScan { start, blocks }), IoResult::Read(Ok(bytes))) => {
                self.on_bucket_scan(start, blocks, &bytes)
            }
            (Some(Gc::ValueScan { start, base, blocks }), IoResult::Read(Ok(bytes))) => {
                self.on_value_scan(start, base, blocks, &bytes)
            }
            (Some(Gc::Write { new_head, value_log, publish }), IoResult::Write(Ok(()))) => {
                for (b, loc) in publish {
                    self.index.set(b, loc);
                }
                if value_log {
                    self.vl.head = new_head;
                } else {
                    self.bl.head = new_head;
                }
                self.after_gc_step();
            }
            (_, IoResult::Read(Err(e))) => self.gc_failed(e),
            (_, IoResult::Write(Err(e))) => self.gc_failed(e),
            (_, _) => self.gc_failed("unexpected GC I/O result"),
        }
    }

    fn after_gc_step(&mut self) {
        self.gc = None;
        self.gc_steps += 1;
        let (v, b) = self.gc_targets(false);
        // Two passes over both logs without reaching the goal: the garbage is not where it can
        // be reclaimed (or is only relocation padding). Give up until writes change things.
        let limit = 2 * (self.vl.size / BLOCK_SIZE as u64 + self.bl.size) / u64::from(self.cfg.gc_chunk_blocks).max(1);
        if !(v || b) || self.gc_steps > limit {
            if v || b {
                tracing::warn!(ssd = self.ssd, steps = self.gc_steps, "garbage collection is not making room");
                self.gc_futile = true;
            }
            self.gc_wanted = false;
            self.gc_need = (0, 0);
            self.gc_steps = 0;
        }
    }

    /// Re-appends the live chains found among `blocks` blocks from `start`.
    fn on_bucket_scan(&mut self, start: u64, blocks: u64, bytes: &[u8]) {
        let mut p = start;
        let end = start + blocks;
        let mut moved: Vec<(u32, Bucket, u64)> = Vec::new();
        let mut relocated_end = self.bl.tail;
        while p < end {
            let at = ((p - start) as usize) * BLOCK_SIZE;
            let live = match BlockHeader::decode(&bytes[at..at + BLOCK_SIZE], self.seed) {
                Ok(h) if h.chain_index == 0 && h.lseq == p => {
                    let loc = ChainLoc { lseq: p, len: h.chain_len };
                    (self.index.get(h.bucket) == Some(loc)).then_some((h.bucket, loc))
                }
                _ => None,
            };
            let Some((bucket, loc)) = live else {
                p += 1;
                continue;
            };
            let len = u64::from(loc.len);
            if p + len > end {
                if p == start {
                    // A chain longer than the chunk: read it whole.
                    let token = self.token(Purpose::Gc);
                    self.io_out.push(IoRequest::Read { token, lba: self.geo.bucket_block(p), count: loc.len.into() });
                    self.gc = Some(Gc::BucketScan { start: p, blocks: len });
                    return;
                }
                break;
            }
            // Relocate only as much as fits in the free space; the rest waits for the next step.
            let placed = self.bl.place(relocated_end, len) + len;
            if placed - self.bl.tail > self.bl.free() {
                break;
            }
            match Bucket::decode(&bytes[at..at + len as usize * BLOCK_SIZE], bucket, p, loc.len, self.seed) {
                Ok(content) => {
                    relocated_end = placed;
                    moved.push((bucket, content, len))
                }
                Err(e) => {
                    // The index points here, so this is the only copy: keep it and stop.
                    return self.gc_failed(format!("live chain of bucket {bucket} is unreadable: {e}"));
                }
            }
            p += len;
        }
        let new_head = p;
        if new_head == start {
            return self.gc_failed("no room to relocate the oldest live chain");
        }
        if moved.is_empty() {
            self.bl.head = new_head;
            return self.after_gc_step();
        }
        let mut chains = Vec::new();
        let mut publish = Vec::new();
        for (bucket, content, len) in moved {
            let lseq = self.bl.place(self.bl.tail, len);
            let encoded = content.encode(bucket, lseq, self.seed).expect("re-encoding a decoded chain");
            self.bl.tail = lseq + len;
            publish.push((bucket, ChainLoc { lseq, len: len as u8 }));
            chains.push((lseq, encoded));
        }
        self.counters.gc_moved_chains.fetch_add(publish.len() as u64, Ordering::Relaxed);
        let parts = self.chain_parts(chains);
        let token = self.token(Purpose::Gc);
        self.io_out.push(IoRequest::Write { token, parts });
        self.gc = Some(Gc::Write { new_head, value_log: false, publish });
    }

    /// Parses the records among the blocks read from `base`, from position `start`.
    fn on_value_scan(&mut self, start: u64, base: u64, blocks: u64, bytes: &[u8]) {
        let limit = (base + blocks * BLOCK_SIZE as u64).min(self.vl.tail).min(self.vl.lap_end(start));
        let block = BLOCK_SIZE as u64;
        let mut p = start;
        let mut records = Vec::new();
        while p < limit {
            let rel = (p - base) as usize;
            match decode_record(&bytes[rel..], self.seed) {
                Ok(r) if r.lpos == p => {
                    let len = r.len() as u64;
                    records.push(GcRecord {
                        lpos: p,
                        key: r.key.to_vec(),
                        value: r.value.to_vec(),
                        bucket: self.bucket_of(r.key),
                    });
                    p += len;
                }
                Err(LayoutError::Short { need, .. }) => {
                    if p + need as u64 > self.vl.tail.min(self.vl.lap_end(start)) {
                        // Would extend past the log's data: padding or garbage, not a record.
                        p = (p / block + 1) * block;
                        continue;
                    }
                    if p == start && records.is_empty() {
                        // A record longer than the chunk: read enough blocks for it.
                        let blocks = (rel as u64 + need as u64).div_ceil(block);
                        return self.scan_value(start, base, blocks);
                    }
                    break;
                }
                // Padding after a batch, a skipped lap end, or a stale record: next block.
                _ => p = (p / block + 1) * block,
            }
        }
        let new_head = p.min(limit);
        if records.is_empty() {
            self.vl.head = new_head.max(self.vl.head);
            return self.after_gc_step();
        }
        let mut contents = HashMap::new();
        let mut awaiting = 0;
        let buckets: HashSet<u32> = records.iter().map(|r| r.bucket).collect();
        for b in buckets {
            if let Some(loc) = self.index.get(b) {
                awaiting += 1;
                self.read_chain(loc, Purpose::GcBucket { bucket: b });
            } else {
                contents.insert(b, Bucket::default());
            }
        }
        self.gc = Some(Gc::ValueBuckets { new_head, records, contents, awaiting });
        if awaiting == 0 {
            self.relocate_values();
        }
    }

    fn on_gc_bucket(&mut self, bucket: u32, r: Result<AlignedBuf, DeviceError>) {
        let Some(Gc::ValueBuckets { contents, awaiting, .. }) = &mut self.gc else {
            return;
        };
        let loc = self.index.get(bucket).expect("GC runs alone: the index is stable");
        match r
            .map_err(|e| e.to_string())
            .and_then(|bytes| Bucket::decode(&bytes, bucket, loc.lseq, loc.len, self.seed).map_err(|e| e.to_string()))
        {
            Ok(c) => {
                contents.insert(bucket, c);
                *awaiting -= 1;
                if *awaiting == 0 {
                    self.relocate_values();
                }
            }
            Err(e) => self.gc_failed(format!("bucket {bucket}: {e}")),
        }
    }

    /// Re-appends the live records of a scanned value-log range and rewrites their buckets.
    fn relocate_values(&mut self) {
        let Some(Gc::ValueBuckets { new_head, records, mut contents, .. }) = self.gc.take() else {
            return;
        };
        let is_live = |r: &GcRecord| {
            contents
                .get(&r.bucket)
                .and_then(|c| c.find(&r.key))
                .is_some_and(|it| it.value_pos == r.lpos && it.value_len as usize == r.value.len())
        };
        // Relocate the live records in order, as many as fit in the free space of both logs; the
        // head advances to the first record left behind.
        let mut live: Vec<&GcRecord> = Vec::new();
        let mut new_head = new_head;
        let (mut total, mut buckets) = (0u64, HashSet::new());
        for r in &records {
            if !is_live(r) {
                continue;
            }
            let t = total + record_len(r.key.len(), r.value.len()) as u64;
            let padded = round_block(t);
            let mut b = buckets.clone();
            b.insert(r.bucket);
            let chain_blocks: u64 = b.iter().map(|x| contents[x].chain_len() as u64).sum();
            let v_end = self.vl.place(self.vl.tail, padded) + padded;
            if v_end - self.vl.tail > self.vl.free() || LogSpace::worst_case(chain_blocks) > self.bl.free() {
                new_head = r.lpos;
                break;
            }
            total = t;
            buckets = b;
            live.push(r);
        }
        if live.is_empty() && new_head == self.vl.head {
            return self.gc_failed("no room to relocate the oldest live value");
        }
        if live.is_empty() {
            self.vl.head = new_head;
            return self.after_gc_step();
        }
        let padded = round_block(total);
        let base = self.vl.place(self.vl.tail, padded);
        let mut buf = Vec::with_capacity(padded as usize);
        let mut changed = Vec::new();
        for r in &live {
            let lpos = base + buf.len() as u64;
            encode_record(&mut buf, self.seed, lpos, &r.key, &r.value);
            let content = contents.get_mut(&r.bucket).expect("bucket read");
            let item = Item { key: r.key.clone(), value_len: r.value.len() as u32, value_pos: lpos };
            content.upsert(item).expect("replacing an existing item");
            if !changed.contains(&r.bucket) {
                changed.push(r.bucket);
            }
        }
        self.vl.tail = base + padded;
        let mut parts = vec![(
            self.geo.value_log.start + (base % self.vl.size) / BLOCK_SIZE as u64,
            AlignedBuf::copy_padded(&buf, padded as usize),
        )];
        let mut chains = Vec::new();
        let mut publish = Vec::new();
        for b in changed {
            let content = &contents[&b];
            let len = content.chain_len() as u64;
            let lseq = self.bl.place(self.bl.tail, len);
            let encoded = content.encode(b, lseq, self.seed).expect("re-encoding a decoded chain");
            self.bl.tail = lseq + len;
            publish.push((b, ChainLoc { lseq, len: len as u8 }));
            chains.push((lseq, encoded));
        }
        self.counters.gc_moved_records.fetch_add(live.len() as u64, Ordering::Relaxed);
        parts.extend(self.chain_parts(chains));
        let token = self.token(Purpose::Gc);
        self.io_out.push(IoRequest::Write { token, parts });
        self.gc = Some(Gc::Write { new_head, value_log: true, publish });
    }
}

#[cfg(test)]
mod tests;
