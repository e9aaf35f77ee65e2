//! Device errors in the middle of a write (hole 3): the store fails stop.
//!
//! A failure is injected at every step of a batch's durable write (the value-log part, each
//! bucket-log part) and of a garbage-collection write, in three shapes: the part is lost, torn
//! after its first block, or fully written but reported failed. In every case the writes of the
//! failed batch are reported failed, the store refuses further writes until restarted while
//! reads keep working, and a restart through recovery yields a state in which every
//! acknowledged write reads back and each failed write either fully exists or does not; the
//! store then takes writes again, and garbage collection never revives or corrupts anything.

use super::*;

const BLOCKS: u64 = 2048;
/// 64 buckets on a 2048-block SSD: a 256-block bucket log.
const BUCKETS: u32 = 64;

const KINDS: [FaultKind; 3] = [FaultKind::Lost, FaultKind::Torn, FaultKind::LandedButFailed];

/// What a key may read back.
#[derive(Debug, Default, Clone)]
struct KeyState {
    /// The last acknowledged value (None: absent).
    acked: Option<Vec<u8>>,
    /// Values of writes reported failed since (None: a delete): each may or may not exist.
    failed: Vec<Option<Vec<u8>>>,
}

#[derive(Default)]
struct Model {
    keys: HashMap<Vec<u8>, KeyState>,
}

impl Model {
    fn acked(&mut self, key: &[u8], v: Option<Vec<u8>>) {
        let s = self.keys.entry(key.to_vec()).or_default();
        s.acked = v;
        s.failed.clear();
    }

    fn failed(&mut self, key: &[u8], v: Option<Vec<u8>>) {
        self.keys.entry(key.to_vec()).or_default().failed.push(v);
    }

    /// Folds one write's outcome into the model.
    fn apply(&mut self, key: &[u8], v: Option<Vec<u8>>, outcome: &Outcome) {
        match outcome {
            Outcome::Ok => self.acked(key, v),
            Outcome::Io(_) => self.failed(key, v),
            Outcome::Refused(_) => {}
            Outcome::NotFound if v.is_none() => self.acked(key, None),
            other => panic!("{}: unexpected {other:?}", String::from_utf8_lossy(key)),
        }
    }

    /// Every key reads back its acknowledged value or one of its failed writes, whole. With
    /// `settle`, what was read becomes the acknowledged state (after a restart it is final).
    fn check(&mut self, d: &mut Driver, settle: bool, what: &str) {
        for (k, s) in self.keys.iter_mut() {
            let got = match d.get(k) {
                Outcome::Value(v) => Some(v),
                Outcome::NotFound => None,
                other => panic!("{what}: key {}: {other:?}", String::from_utf8_lossy(k)),
            };
            assert!(
                got == s.acked || s.failed.contains(&got),
                "{what}: key {} read {:?} bytes; acknowledged {:?}, failed writes {:?}",
                String::from_utf8_lossy(k),
                got.as_ref().map(|v| v.len()),
                s.acked.as_ref().map(|v| v.len()),
                s.failed.iter().map(|v| v.as_ref().map(|v| v.len())).collect::<Vec<_>>()
            );
            if settle {
                s.acked = got;
                s.failed.clear();
            }
        }
    }
}

/// Puts every key of `keys` once (version `round`), runs the store until quiet, and folds the
/// outcomes into the model.
fn put_round(d: &mut Driver, model: &mut Model, keys: &[Vec<u8>], round: u64, len: usize) {
    let ids: Vec<(u64, &Vec<u8>, Vec<u8>)> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let v = value(i as u64, round, len);
            (d.write(WriteOp::Put, k, &v), k, v)
        })
        .collect();
    d.run();
    for (id, k, v) in ids {
        let outcome = d.done.remove(&id).expect("write finished");
        model.apply(k, Some(v), &outcome);
    }
}

/// The store refuses a new write with the fail-stop refusal, and still serves reads.
fn assert_stopped(d: &mut Driver, model: &mut Model, what: &str) {
    assert!(d.store.writes_stopped().is_some(), "{what}: the store stopped taking writes");
    assert_eq!(d.store.counters().writes_stopped.load(Ordering::Relaxed), 1);
    let id = d.write(WriteOp::Put, b"after-the-failure", b"x");
    d.run();
    assert!(
        matches!(d.done.remove(&id), Some(Outcome::Refused(Refusal::WritesStopped { ssd: 0, .. }))),
        "{what}: a write after the failure is refused"
    );
    // Reads keep working; the failed writes are not visible before the restart.
    let before: HashMap<Vec<u8>, KeyState> =
        model.keys.iter().map(|(k, s)| (k.clone(), KeyState { acked: s.acked.clone(), failed: Vec::new() })).collect();
    let mut unsettled = Model { keys: before };
    unsettled.check(d, false, &format!("{what}, before the restart"));
}

/// Keys 0..n, and the workload that wraps both logs of the small SSD (garbage collection runs).
fn keys(n: u64) -> Vec<Vec<u8>> {
    (0..n).map(key).collect()
}

fn churn(d: &mut Driver, model: &mut Model, keys: &[Vec<u8>], rounds: std::ops::Range<u64>) {
    for round in rounds {
        put_round(d, model, keys, round, 2000);
    }
}

/// Writes single keys until the bucket log's tail is `blocks_before_end` blocks before the
/// physical end of the log, so that the next batch's chains wrap (two bucket-log parts).
fn bring_bucket_tail_near_the_end(d: &mut Driver, model: &mut Model, blocks_before_end: u64) {
    for n in 0..10_000u64 {
        let bl = d.store.space().bucket_log;
        if bl.tail % bl.size == bl.size - blocks_before_end {
            return;
        }
        let k = key(1000 + n % 7);
        let v = value(n, n, 40);
        let o = d.put_now(&k, &v);
        model.apply(&k, Some(v), &o);
    }
    panic!("the bucket log's tail never reached the wanted position");
}

/// One failing batch: returns false when the batch had no part `part` (nothing was injected).
fn failing_batch(kind: FaultKind, part: usize, wrap: bool) -> bool {
    let what = format!("{kind:?} at part {part}{}", if wrap { ", chains wrapping" } else { "" });
    let dir = tempfile::tempdir().unwrap();
    // The eight writes below must make one batch however slowly a loaded machine submits them:
    // only a full batch (or the driver's far-future poll) starts one.
    let cfg = StoreConfig { batch_timeout: Duration::from_secs(600), ..config(8) };
    let mut d = Driver::open(dir.path(), BLOCKS, Some(BUCKETS), cfg.clone(), None);
    let mut model = Model::default();
    let base = keys(24);
    put_round(&mut d, &mut model, &base, 0, 100);
    if wrap {
        bring_bucket_tail_near_the_end(&mut d, &mut model, 3);
    }
    // One batch: four updates, three inserts and a delete, over several buckets.
    let mut batch: Vec<(WriteOp, Vec<u8>, Option<Vec<u8>>)> =
        (0..4).map(|i| (WriteOp::Put, key(i), Some(value(i, 1, 200)))).collect();
    batch.extend((0..3).map(|i| (WriteOp::Put, key(200 + i), Some(value(200 + i, 1, 200)))));
    batch.push((WriteOp::Delete, key(5), None));
    d.fault = Some(WriteFault { target: FaultTarget::Batch, part, kind });
    let ids: Vec<u64> = batch.iter().map(|(op, k, v)| d.write(*op, k, v.as_deref().unwrap_or(b""))).collect();
    d.run();
    let outcomes: Vec<Outcome> = ids.iter().map(|id| d.done.remove(id).expect("write finished")).collect();
    if d.fault.take().is_some() {
        assert!(outcomes.iter().all(|o| *o == Outcome::Ok), "{what}: no fault, no failure");
        return false;
    }
    for ((_, k, v), o) in batch.iter().zip(&outcomes) {
        assert!(matches!(o, Outcome::Io(_)), "{what}: {} reported {o:?}", String::from_utf8_lossy(k));
        model.apply(k, v.clone(), o);
    }
    assert_stopped(&mut d, &mut model, &what);

    let mut d = d.restart(dir.path(), BLOCKS, cfg.clone());
    assert!(d.store.writes_stopped().is_none(), "{what}: a restart takes writes again");
    if kind == FaultKind::Lost && part == 0 {
        for (_, k, _) in &batch {
            let old = model.keys[k].acked.clone().map_or(Outcome::NotFound, Outcome::Value);
            assert_eq!(d.get(k), old, "{what}: nothing of a batch whose value write was lost exists");
        }
    }
    model.check(&mut d, true, &format!("{what}, after the restart"));
    // Writes work again, garbage collection runs over what recovery settled, and a second
    // restart finds everything.
    let all: Vec<Vec<u8>> = model.keys.keys().cloned().collect();
    churn(&mut d, &mut model, &all[..all.len().min(30)], 2..40);
    assert!(d.store.counters().gc_value_steps.load(Ordering::Relaxed) > 0, "{what}: the value log was collected");
    model.check(&mut d, false, &format!("{what}, after more writes"));
    let mut d = d.restart(dir.path(), BLOCKS, cfg);
    model.check(&mut d, false, &format!("{what}, after a second restart"));
    true
}

#[test]
fn a_batch_failing_at_any_step_fails_stop_and_recovers() {
    let mut injected = Vec::new();
    for kind in KINDS {
        for wrap in [false, true] {
            for part in 0..3 {
                if failing_batch(kind, part, wrap) {
                    injected.push((kind, part, wrap));
                }
            }
        }
    }
    // The value-log part and one bucket-log part always; a second bucket-log part when the
    // chains wrap around the end of the log.
    for kind in KINDS {
        for (part, wrap) in [(0, false), (1, false), (0, true), (1, true), (2, true)] {
            assert!(injected.contains(&(kind, part, wrap)), "{kind:?} at part {part} (wrap {wrap}) was injected");
        }
    }
}

/// Hole 3: a write reported failed whose bucket chain reached the SSD. Before fail-stop, the
/// store went on: garbage collection reclaimed the failed write's value as dead, new values
/// reused its space, and recovery adopted the orphaned chain, which then pointed at someone
/// else's bytes (the read failed as corrupt).
#[test]
fn a_write_reported_failed_never_comes_back_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(8);
    let mut d = Driver::open(dir.path(), BLOCKS, Some(BUCKETS), cfg.clone(), None);
    let mut model = Model::default();
    // Few keys with large values: the value log wraps many times while the bucket log does not
    // (so the orphaned chain is still there for recovery to find).
    let workload = keys(4);
    // A key alone in its bucket, so that no later write to its bucket replaces its chain.
    let buckets: HashSet<u32> = workload.iter().map(|k| d.store.bucket_of(k)).collect();
    let lonely =
        (0..).map(|n| format!("lonely-{n}").into_bytes()).find(|k| !buckets.contains(&d.store.bucket_of(k))).unwrap();
    put_round(&mut d, &mut model, &workload, 0, 30_000);
    d.fault = Some(WriteFault { target: FaultTarget::Batch, part: 1, kind: FaultKind::LandedButFailed });
    let v = value(7, 7, 300);
    let id = d.write(WriteOp::Put, &lonely, &v);
    d.run();
    let o = d.done.remove(&id).unwrap();
    assert!(matches!(o, Outcome::Io(_)), "{o:?}");
    model.apply(&lonely, Some(v), &o);
    // Enough writes to wrap the value log twice.
    for round in 1..16 {
        put_round(&mut d, &mut model, &workload, round, 30_000);
    }
    let mut d = d.restart(dir.path(), BLOCKS, cfg.clone());
    model.check(&mut d, true, "after the restart");
    for round in 16..32 {
        put_round(&mut d, &mut model, &workload, round, 30_000);
    }
    let mut d = d.restart(dir.path(), BLOCKS, cfg);
    model.check(&mut d, false, "after a second restart");
}

#[test]
fn a_failed_gc_write_fails_stop_and_recovers() {
    for kind in KINDS {
        for part in 0..2 {
            let what = format!("GC write, {kind:?} at part {part}");
            let dir = tempfile::tempdir().unwrap();
            let cfg = config(8);
            let mut d = Driver::open(dir.path(), BLOCKS, Some(BUCKETS), cfg.clone(), None);
            let mut model = Model::default();
            // Live data that garbage collection must relocate, then churn.
            let live: Vec<Vec<u8>> = (0..200).map(|i| format!("live-{i}").into_bytes()).collect();
            put_round(&mut d, &mut model, &live, 0, 1000);
            let workload = keys(30);
            d.fault = Some(WriteFault { target: FaultTarget::Gc, part, kind });
            let mut round = 1;
            while d.fault.is_some() && round < 200 {
                put_round(&mut d, &mut model, &workload, round, 2000);
                round += 1;
            }
            if d.fault.is_some() {
                assert!(part > 0, "{what}: a GC write happened");
                continue; // no GC write had this many parts
            }
            assert_stopped(&mut d, &mut model, &what);
            let mut d = d.restart(dir.path(), BLOCKS, cfg.clone());
            model.check(&mut d, true, &format!("{what}, after the restart"));
            churn(&mut d, &mut model, &workload, 200..240);
            let mut d = d.restart(dir.path(), BLOCKS, cfg);
            model.check(&mut d, false, &format!("{what}, after a second restart"));
        }
    }
}
