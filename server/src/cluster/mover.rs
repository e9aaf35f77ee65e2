//! The receiving side of a move: copies into this server the partitions the map moves to it,
//! and reports each one ready when its copy is complete.
//!
//! For the moves `{to: this server, from: S, since}` of the map held, grouped by source, one
//! pass:
//! 1. **purge**: scans this server's own store and removes the keys of those partitions that no
//!    write reached since the move began (stale data from an earlier time in the chain, which
//!    the source may have deleted since);
//! 2. **copy**: asks S for its keys ([`Op::Scan`], which S answers only once it holds the map
//!    of the move, and only after every write it took before) and reads each key of those
//!    partitions from S with a copy read ([`flags::COPY`]); each value is applied here unless
//!    a newer write reached the key first ([`super::received`]);
//! 3. **repair**: once the chain has answered the writes whose answer here was a guess, reads
//!    again from S the keys whose value here is unknown, until none is left;
//! 4. reports the partitions whose moves are unchanged ready (`ReadySink`: one record in etcd
//!    per receiver), and the reconciler's next map lets this server take any place in the chain.
//!
//! A pass that meets a changed map (the source refuses, a copy is cancelled) is abandoned and
//! started again from the new map. Every step is idempotent: copies never overwrite newer
//! writes, so running a pass twice is harmless.

use super::{Ownership, PeerConnector};
use crate::stats::StatsSource;
use crate::worker::{CopyResult, CopyWrite, WorkerEvent};
use crossbeam_channel::Sender;
use parking_lot::Mutex;
use scalio_common::cluster::{partition_of, ClusterMap, Member, Move, NodeId};
use scalio_common::fabric::{rendezvous, FabricError, QueuePair};
use scalio_common::key::route;
use scalio_common::rpc::{flags, CodecError, Op, Request, Response, ScanReply, ScanRequest, Status};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Buckets asked for per scan request.
const SCAN_CHUNK: u32 = 256;
/// Longest wait for one answer (a scan, a copy read, a local copy write).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the map is looked at for new moves.
const IDLE: Duration = Duration::from_millis(50);
/// Copy reads (and then copy writes) in flight at once.
const COPY_WINDOW: usize = 32;
/// Most repair rounds per pass (each re-reads the keys still dirty).
const MAX_REPAIR_ROUNDS: usize = 64;

/// Where a receiver says which of its copies are complete.
pub trait ReadySink: Send + Sync {
    /// The moves to `to` of the partitions in `done` (partition → the move's `since`) have
    /// their copies complete. `done` holds every such move of the current map (it replaces
    /// what was reported before), so that one report ends one pass.
    fn ready(&self, to: &NodeId, done: &BTreeMap<u32, u64>) -> Result<(), ReportError>;
}

/// Why a [`ReadySink`] could not record a report (for etcd, an [`EtcdError`](scalio_common::cluster::etcd::EtcdError)).
pub type ReportError = Box<dyn std::error::Error + Send + Sync>;

/// Why a pass stopped before the end.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    /// Connecting to `peer`, or a call to it, failed (`peer` is this server itself for the scan
    /// of its own keys).
    #[error("cannot reach {peer}: {error}")]
    Unreachable {
        peer: NodeId,
        #[source]
        error: FabricError,
    },
    #[error("the source answered {0:?}")]
    Source(Status),
    #[error("malformed answer from {peer}: {error}")]
    Malformed {
        peer: NodeId,
        #[source]
        error: CodecError,
    },
    /// A scan reply whose next bucket is not past the one asked for (it would never end).
    #[error("{peer}'s scan of SSD {ssd} did not advance past bucket {bucket}")]
    ScanStalled { peer: NodeId, ssd: u16, bucket: u32 },
    #[error("the map changed under the copy")]
    MapChanged,
    #[error("a local copy write failed: {0:?}")]
    Local(Status),
    #[error("reporting ready failed: {0}")]
    Report(#[source] ReportError),
    #[error("keys stayed dirty after {0} repair rounds")]
    Dirty(usize),
    #[error("{0} writes still wait for the chain's answer")]
    Pending(usize),
}

/// Counters of the moves into this server.
#[derive(Default)]
pub struct MoveCounters {
    pub passes: AtomicU64,
    pub failed_passes: AtomicU64,
    pub keys_copied: AtomicU64,
    pub bytes_copied: AtomicU64,
    /// Copies dropped because a newer write had reached the key here.
    pub copies_skipped: AtomicU64,
    pub keys_purged: AtomicU64,
    pub keys_repaired: AtomicU64,
    pub partitions_ready: AtomicU64,
    /// Time spent in passes that completed, in milliseconds.
    pub copy_ms: AtomicU64,
    /// Per partition received: (keys, bytes) copied.
    pub per_partition: Mutex<BTreeMap<u32, (u64, u64)>>,
    /// Why the last abandoned pass stopped.
    pub last_error: Mutex<Option<String>>,
}

/// Applies copy writes through the workers that own the keys' SSDs.
#[derive(Clone)]
pub struct LocalWrites {
    pub(crate) workers: Vec<Sender<WorkerEvent>>,
    pub(crate) ssds: u16,
}

/// A copy write handed to a worker, and where its result will come.
struct Submitted(Option<crossbeam_channel::Receiver<CopyResult>>);

impl Submitted {
    fn wait(self) -> CopyResult {
        match self.0 {
            Some(rx) => rx.recv_timeout(CALL_TIMEOUT).unwrap_or(CopyResult::Failed(Status::Unavailable)),
            None => CopyResult::Failed(Status::Unavailable),
        }
    }
}

impl LocalWrites {
    /// Hands `event` (about `key`) to the worker of the key's SSD.
    pub(crate) fn send(&self, key: &[u8], event: WorkerEvent) -> Result<(), crossbeam_channel::SendError<WorkerEvent>> {
        let ssd = route(key, self.ssds, 1).ssd;
        self.workers[usize::from(ssd) % self.workers.len()].send(event)
    }

    /// Hands a copy write to the worker of the key's SSD (several may be in flight, so that
    /// the store batches them).
    fn submit(&self, key: Vec<u8>, value: Option<Vec<u8>>, mv: &Move, repair: Option<u64>) -> Submitted {
        let ssd = route(&key, self.ssds, 1).ssd;
        let (done, rx) = crossbeam_channel::bounded(1);
        let c = CopyWrite { key, value, partition: mv.partition, since: mv.since, repair, done };
        match self.workers[usize::from(ssd) % self.workers.len()].send(WorkerEvent::Copy(c)) {
            Ok(()) => Submitted(Some(rx)),
            Err(_) => Submitted(None),
        }
    }
}

/// The mover thread; stops when dropped.
pub struct Mover {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    counters: Arc<MoveCounters>,
}

struct Ctx {
    own: Arc<Ownership>,
    peers: Arc<dyn PeerConnector>,
    local: Arc<dyn QueuePair>,
    writes: LocalWrites,
    sink: Arc<dyn ReadySink>,
    counters: Arc<MoveCounters>,
}

impl Mover {
    pub(crate) fn start(
        own: Arc<Ownership>,
        peers: Arc<dyn PeerConnector>,
        local: Arc<dyn QueuePair>,
        writes: LocalWrites,
        sink: Arc<dyn ReadySink>,
    ) -> std::io::Result<Mover> {
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(MoveCounters::default());
        let ctx = Ctx { own, peers, local, writes, sink, counters: counters.clone() };
        let s = stop.clone();
        let thread = std::thread::Builder::new().name("cluster-mover".into()).spawn(move || run(&ctx, &s))?;
        Ok(Mover { stop, thread: Some(thread), counters })
    }

    pub fn counters(&self) -> &Arc<MoveCounters> {
        &self.counters
    }

    /// The counters for STATS.
    pub fn stats_source(&self) -> Arc<dyn StatsSource> {
        Arc::new(MoveStats(self.counters.clone()))
    }
}

impl Drop for Mover {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(ctx: &Ctx, stop: &AtomicBool) {
    // Moves reported ready: partition → since.
    let mut reported: BTreeMap<u32, u64> = BTreeMap::new();
    while !stop.load(Ordering::Relaxed) {
        let Some(map) = ctx.own.map() else {
            std::thread::sleep(IDLE);
            continue;
        };
        let me = ctx.own.me().clone();
        // Forget the records of moves that ended. A record newer than this snapshot of the map
        // (a worker saw a newer map, with a move this one does not show yet) is kept: dropping
        // it would let a copy overwrite the writes it holds.
        ctx.own
            .received()
            .lock()
            .retain(|p, since| since > map.epoch || map.move_to(p, &me).is_some_and(|m| m.since == since));
        reported.retain(|p, since| map.move_to(*p, &me).is_some_and(|m| m.since == *since));
        let mut by_source: BTreeMap<u16, Vec<Move>> = BTreeMap::new();
        for mv in map.moves.iter().filter(|m| map.nodes[usize::from(m.to)].id == me) {
            if reported.get(&mv.partition) != Some(&mv.since) {
                by_source.entry(mv.from).or_default().push(*mv);
            }
        }
        if by_source.is_empty() {
            std::thread::sleep(IDLE);
            continue;
        }
        for (from, moves) in by_source {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let source = map.nodes[usize::from(from)].clone();
            let started = Instant::now();
            ctx.counters.passes.fetch_add(1, Ordering::Relaxed);
            super::trace::event(&me, || {
                let ps: Vec<String> = moves.iter().map(|m| format!("{}@{}", m.partition, m.since)).collect();
                format!("pass from {} at {}: {}", source.id, map.epoch, ps.join(","))
            });
            let result = pass(ctx, &map, &source, &moves, &mut reported, stop);
            super::trace::event(&me, || {
                format!("pass from {} at {} -> {:?}", source.id, map.epoch, result.as_ref().map(|d| d.len()))
            });
            match result {
                Ok(done) => {
                    ctx.counters.copy_ms.fetch_add(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                    tracing::info!(from = %source.id, partitions = done.len(), ms = started.elapsed().as_millis() as u64, "partition copies ready");
                }
                Err(e) => {
                    ctx.counters.failed_passes.fetch_add(1, Ordering::Relaxed);
                    *ctx.counters.last_error.lock() = Some(e.to_string());
                    tracing::info!(from = %source.id, error = %e, "partition copy pass abandoned; retrying");
                    std::thread::sleep(IDLE * 4);
                }
            }
        }
    }
}

/// One pass over the moves from `source`; the ones completed join `reported`, which is
/// reported whole. Returns the partitions completed.
fn pass(
    ctx: &Ctx,
    map: &ClusterMap,
    source: &Member,
    moves: &[Move],
    reported: &mut BTreeMap<u32, u64>,
    stop: &AtomicBool,
) -> Result<Vec<u32>, MoveError> {
    let bits = map.params.partition_bits;
    let by_partition: HashMap<u32, Move> = moves.iter().map(|m| (m.partition, *m)).collect();
    let epoch = Some(map.epoch);
    // 1. Purge what this server holds of those partitions and no write reached.
    scan_keys(&*ctx.local, ctx.own.me(), epoch, stop, |keys| {
        let mut waiting = Vec::new();
        for key in keys {
            if let Some(mv) = by_partition.get(&partition_of(&key, bits)) {
                waiting.push(ctx.writes.submit(key, None, mv, None));
            }
        }
        for w in waiting {
            match w.wait() {
                CopyResult::Applied => {
                    ctx.counters.keys_purged.fetch_add(1, Ordering::Relaxed);
                }
                CopyResult::Skipped => {}
                CopyResult::Cancelled => return Err(MoveError::MapChanged),
                CopyResult::Failed(s) => return Err(MoveError::Local(s)),
            }
        }
        Ok(())
    })?;
    // 2. Copy from the source.
    let remote =
        ctx.peers.connect(source).map_err(|error| MoveError::Unreachable { peer: source.id.clone(), error })?;
    scan_keys(&*remote, &source.id, epoch, stop, |keys| {
        let mine: Vec<(Vec<u8>, &Move, Option<u64>)> = keys
            .into_iter()
            .filter_map(|k| by_partition.get(&partition_of(&k, bits)).map(|mv| (k, mv, None)))
            .collect();
        copy_keys(ctx, &*remote, &source.id, epoch, mine)
    })?;
    // 3. Repair the keys whose value here is unknown (an UPDATE of a key not copied yet, a
    //    write refused further down the chain), once the chain has answered the writes whose
    //    answer here was a guess: the source has applied them by then.
    let answers_by = Instant::now() + 2 * super::chain::FORWARD_TIMEOUT;
    for mv in moves {
        let mut rounds = 0;
        loop {
            let (dirty, pending) = {
                let r = ctx.own.received().lock();
                (r.dirty(mv.partition, mv.since), r.pending(mv.partition, mv.since))
            };
            if dirty.is_empty() {
                if pending == 0 {
                    break;
                }
                if Instant::now() > answers_by || stop.load(Ordering::Relaxed) {
                    return Err(MoveError::Pending(pending));
                }
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            rounds += 1;
            if rounds > MAX_REPAIR_ROUNDS {
                return Err(MoveError::Dirty(rounds));
            }
            let n = dirty.len() as u64;
            copy_keys(ctx, &*remote, &source.id, epoch, dirty.into_iter().map(|(k, g)| (k, mv, Some(g))).collect())?;
            ctx.counters.keys_repaired.fetch_add(n, Ordering::Relaxed);
        }
    }
    // 4. Report the moves that are still as they were (with those reported before).
    let now = ctx.own.map().ok_or(MoveError::MapChanged)?;
    let done: Vec<u32> = moves
        .iter()
        .filter(|mv| now.move_to(mv.partition, ctx.own.me()).is_some_and(|m| m.since == mv.since))
        .map(|mv| mv.partition)
        .collect();
    let mut all = reported.clone();
    for mv in moves.iter().filter(|mv| done.contains(&mv.partition)) {
        all.insert(mv.partition, mv.since);
    }
    ctx.sink.ready(ctx.own.me(), &all).map_err(MoveError::Report)?;
    ctx.counters.partitions_ready.fetch_add(done.len() as u64, Ordering::Relaxed);
    *reported = all;
    Ok(done)
}

/// Reads `keys` from the source with copy reads and applies them here (`repair`: the dirty
/// mark's generation a value repairs), [`COPY_WINDOW`] at a time.
fn copy_keys(
    ctx: &Ctx,
    remote: &dyn QueuePair,
    source: &NodeId,
    epoch: Option<u64>,
    keys: Vec<(Vec<u8>, &Move, Option<u64>)>,
) -> Result<(), MoveError> {
    let mut keys = keys.into_iter().peekable();
    while keys.peek().is_some() {
        let window: Vec<_> = keys.by_ref().take(COPY_WINDOW).collect();
        let reads: Vec<_> = window
            .iter()
            .map(|(key, _, _)| {
                // (A GET is far below any channel's largest message: no rendezvous needed.)
                let req = Request::new(Op::Get, key, b"").with_flags(flags::COPY).with_epoch(epoch).to_vec();
                remote.call(&req)
            })
            .collect();
        let mut writes = Vec::new();
        for ((key, mv, repair), read) in window.into_iter().zip(reads) {
            let bytes = read
                .wait_timeout(CALL_TIMEOUT)
                .map_err(|error| MoveError::Unreachable { peer: source.clone(), error })?;
            let resp =
                Response::decode(&bytes).map_err(|error| MoveError::Malformed { peer: source.clone(), error })?;
            let value = match resp.status {
                Status::Ok => Some(resp.body.to_vec()),
                // Deleted at the source since the scan: the delete reached this server first.
                Status::NotFound if repair.is_none() => continue,
                Status::NotFound => None,
                s => return Err(MoveError::Source(s)),
            };
            let len = value.as_ref().map_or(0, |v| v.len() as u64);
            writes.push((mv.partition, len, ctx.writes.submit(key, value, mv, repair)));
        }
        for (partition, len, w) in writes {
            match w.wait() {
                CopyResult::Applied => {
                    ctx.counters.keys_copied.fetch_add(1, Ordering::Relaxed);
                    ctx.counters.bytes_copied.fetch_add(len, Ordering::Relaxed);
                    let mut per = ctx.counters.per_partition.lock();
                    let e = per.entry(partition).or_default();
                    e.0 += 1;
                    e.1 += len;
                }
                CopyResult::Skipped => {
                    ctx.counters.copies_skipped.fetch_add(1, Ordering::Relaxed);
                }
                CopyResult::Cancelled => return Err(MoveError::MapChanged),
                CopyResult::Failed(s) => return Err(MoveError::Local(s)),
            }
        }
    }
    Ok(())
}

fn call(qp: &dyn QueuePair, peer: &NodeId, req: &[u8]) -> Result<Vec<u8>, MoveError> {
    rendezvous::call_blocking(qp, req, CALL_TIMEOUT)
        .map_err(|error| MoveError::Unreachable { peer: peer.clone(), error })
}

/// Lists every key of the server behind `qp`, SSD by SSD, in chunks of buckets.
fn scan_keys(
    qp: &dyn QueuePair,
    peer: &NodeId,
    epoch: Option<u64>,
    stop: &AtomicBool,
    mut each: impl FnMut(Vec<Vec<u8>>) -> Result<(), MoveError>,
) -> Result<(), MoveError> {
    let (mut ssd, mut bucket, mut ssds) = (0u16, 0u32, 1u16);
    while ssd < ssds {
        if stop.load(Ordering::Relaxed) {
            return Err(MoveError::MapChanged);
        }
        let scan = ScanRequest { ssd, bucket, max_buckets: SCAN_CHUNK };
        // A scan names no key: its key is empty.
        let req = Request::new(Op::Scan, b"", &scan.encode()).with_epoch(epoch).to_vec();
        let bytes = call(qp, peer, &req)?;
        let malformed = |error| MoveError::Malformed { peer: peer.clone(), error };
        let resp = Response::decode(&bytes).map_err(malformed)?;
        if resp.status != Status::Ok {
            return Err(MoveError::Source(resp.status));
        }
        let reply = ScanReply::decode(resp.body).map_err(malformed)?;
        ssds = reply.ssds;
        each(reply.keys)?;
        if reply.done {
            ssd += 1;
            bucket = 0;
        } else if reply.next <= bucket {
            return Err(MoveError::ScanStalled { peer: peer.clone(), ssd, bucket });
        } else {
            bucket = reply.next;
        }
    }
    Ok(())
}

struct MoveStats(Arc<MoveCounters>);

impl StatsSource for MoveStats {
    fn append(&self, out: &mut Vec<(String, u64)>) {
        let c = &self.0;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        out.push(("move_passes".into(), load(&c.passes)));
        out.push(("move_failed_passes".into(), load(&c.failed_passes)));
        out.push(("move_keys_copied".into(), load(&c.keys_copied)));
        out.push(("move_bytes_copied".into(), load(&c.bytes_copied)));
        out.push(("move_copies_skipped".into(), load(&c.copies_skipped)));
        out.push(("move_keys_purged".into(), load(&c.keys_purged)));
        out.push(("move_keys_repaired".into(), load(&c.keys_repaired)));
        out.push(("move_partitions_ready".into(), load(&c.partitions_ready)));
        out.push(("move_copy_ms".into(), load(&c.copy_ms)));
        for (p, (keys, bytes)) in c.per_partition.lock().iter() {
            out.push((format!("move_partition_keys/{p}"), *keys));
            out.push((format!("move_partition_bytes/{p}"), *bytes));
        }
    }
}
