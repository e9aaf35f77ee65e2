//! The operation stream: YCSB `CoreWorkload`'s choice of operations and keys, one stream per
//! driver thread over state shared by all of them.

use std::ops::Range;
use std::sync::Arc;

use super::generator::{
    AckError, AcknowledgedCounterGenerator, CounterGenerator, DiscreteGenerator, HotspotIntegerGenerator,
    ScrambledZipfianGenerator, SkewedLatestGenerator, UniformLongGenerator, ZIPFIAN_CONSTANT,
};
use super::keys::{build_key_name, KeyName, StoreKey};
use super::properties::Properties;
use super::rng::SeededRng;
use super::spec::{InsertOrder, RequestDistribution, WorkloadError, WorkloadSpec};
use super::value::fill_value;

/// What an operation does to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// Read the record.
    Read,
    /// Overwrite the record (the whole value: the store keeps a record as one value).
    Update,
    /// Insert a new record; acknowledge it with [`OpStream::ack_insert`] when it completes.
    Insert,
    /// Read the record, then update it.
    ReadModifyWrite,
}

/// One operation: what to do, on which record, and that record's store key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Op {
    pub kind: OpKind,
    /// The YCSB key number; [`Workload::key_name`] gives its name.
    pub keynum: u64,
    /// The key to send to the store: the XXH3-128 hash of the key name.
    pub key: StoreKey,
}

/// The per-thread key chooser, cloned from the workload's prototype.
#[derive(Debug, Clone)]
enum KeyChooser {
    Uniform(UniformLongGenerator),
    Zipfian(ScrambledZipfianGenerator),
    Latest(SkewedLatestGenerator),
    Hotspot(HotspotIntegerGenerator),
}

#[derive(Debug)]
struct Shared {
    spec: WorkloadSpec,
    op_chooser: DiscreteGenerator<OpKind>,
    /// Built (zeta computed) once; each thread clones it.
    key_chooser: KeyChooser,
    /// The load phase's key sequence (YCSB `keysequence`), from `insertstart`.
    load_sequence: CounterGenerator,
    /// The run phase's insert key sequence (YCSB `transactioninsertkeysequence`), from
    /// `recordcount`; requests go only to keys it has acknowledged.
    insert_sequence: AcknowledgedCounterGenerator,
}

/// A YCSB core workload: the settings and the state shared by all driver threads. Cloning is
/// cheap (an `Arc`).
#[derive(Debug, Clone)]
pub struct Workload {
    shared: Arc<Shared>,
}

impl Workload {
    /// Reads the settings from `properties` and builds the workload.
    pub fn from_properties(properties: &Properties) -> Result<Workload, WorkloadError> {
        Workload::new(WorkloadSpec::from_properties(properties)?)
    }

    /// Builds the workload: the shared counters and the key chooser, whose zeta (for `latest`,
    /// over `recordcount` items; for `zipfian` with θ ≠ 0.99, over 10^10) is computed here once.
    pub fn new(spec: WorkloadSpec) -> Result<Workload, WorkloadError> {
        spec.validate()?;
        let op_chooser = DiscreteGenerator::new([
            (spec.read_proportion, OpKind::Read),
            (spec.update_proportion, OpKind::Update),
            (spec.insert_proportion, OpKind::Insert),
            (spec.read_modify_write_proportion, OpKind::ReadModifyWrite),
        ])
        .map_err(|_| WorkloadError::NoOperations)?;
        let insert_sequence = AcknowledgedCounterGenerator::new(spec.record_count);
        let first = spec.insert_start;
        let last = first + spec.insert_count - 1;
        let key_chooser = match spec.request_distribution {
            RequestDistribution::Uniform => KeyChooser::Uniform(UniformLongGenerator::new(first, last)?),
            RequestDistribution::Zipfian => {
                // Room for the keys the run will insert, so that the popular keys do not move as
                // the key space grows (YCSB guesses twice the expected inserts). Keys beyond the
                // acknowledged ones are skipped when drawn.
                let expected_new_keys = (spec.operation_count as f64 * spec.insert_proportion * 2.0) as u64;
                // (Capped so that the range still counts in a u64.)
                let max = last.saturating_add(1).saturating_add(expected_new_keys).min(u64::MAX - 1);
                KeyChooser::Zipfian(ScrambledZipfianGenerator::new(first, max, spec.zipfian_constant)?)
            }
            RequestDistribution::Latest => {
                KeyChooser::Latest(SkewedLatestGenerator::new(&insert_sequence, ZIPFIAN_CONSTANT)?)
            }
            RequestDistribution::Hotspot { data_fraction, opn_fraction } => {
                KeyChooser::Hotspot(HotspotIntegerGenerator::new(first, last, data_fraction, opn_fraction)?)
            }
        };
        Ok(Workload {
            shared: Arc::new(Shared {
                load_sequence: CounterGenerator::new(spec.insert_start),
                spec,
                op_chooser,
                key_chooser,
                insert_sequence,
            }),
        })
    }

    /// The settings.
    pub fn spec(&self) -> &WorkloadSpec {
        &self.shared.spec
    }

    /// The operation stream of driver thread `thread_id`, its random stream derived from the run
    /// `seed` and the thread id. Cheap: nothing is recomputed.
    pub fn thread_state(&self, thread_id: u64, seed: u64) -> OpStream {
        OpStream {
            workload: self.clone(),
            rng: SeededRng::for_thread(seed, thread_id),
            key_chooser: self.shared.key_chooser.clone(),
        }
    }

    /// The YCSB key name of record `keynum`.
    pub fn key_name(&self, keynum: u64) -> KeyName {
        let spec = &self.shared.spec;
        build_key_name(keynum, spec.zero_padding, spec.insert_order == InsertOrder::Ordered)
    }

    /// The store key of record `keynum`.
    pub fn store_key(&self, keynum: u64) -> StoreKey {
        self.key_name(keynum).store_key()
    }

    /// Bytes of a record's value.
    pub fn value_len(&self) -> usize {
        self.shared.spec.value_len()
    }

    /// Writes the value of record `keynum` at `version` into `out`, which should be
    /// [`value_len`](Self::value_len) long (see [`value`](super::value) for the format).
    pub fn fill_value(&self, keynum: u64, version: u64, out: &mut [u8]) {
        fill_value(&self.store_key(keynum), version, out);
    }

    /// The keynums the load phase inserts: `[insertstart, insertstart + insertcount)`.
    pub fn load_range(&self) -> Range<u64> {
        let spec = &self.shared.spec;
        spec.insert_start..spec.insert_start + spec.insert_count
    }

    /// Records that the run-phase insert of `keynum` has completed, successfully or not, so that
    /// requests may go to it. Every [`OpKind::Insert`] from [`OpStream::next_op`] must be
    /// acknowledged exactly once.
    pub fn ack_insert(&self, keynum: u64) -> Result<(), AckError> {
        self.shared.insert_sequence.acknowledge(keynum)
    }

    /// Keys below this are loaded or acknowledged inserts: the ones requests may go to.
    pub fn acknowledged_below(&self) -> u64 {
        self.shared.insert_sequence.acknowledged_below()
    }
}

/// One driver thread's source of operations. Drawing allocates nothing; the only state shared
/// with other threads is two atomic counters.
#[derive(Debug)]
pub struct OpStream {
    workload: Workload,
    rng: SeededRng,
    key_chooser: KeyChooser,
}

impl OpStream {
    /// The next record to load, or `None` once all of [`Workload::load_range`] was handed out
    /// (to this thread or another: the load sequence is shared, as in YCSB).
    pub fn next_load_key(&mut self) -> Option<Op> {
        let shared = &self.workload.shared;
        let end = shared.spec.insert_start + shared.spec.insert_count;
        // Read first so that the counter stops growing once the range is done.
        if shared.load_sequence.peek_next() >= end {
            return None;
        }
        let keynum = shared.load_sequence.next_value();
        (keynum < end).then(|| Op { kind: OpKind::Insert, keynum, key: self.workload.store_key(keynum) })
    }

    /// The next run-phase operation (YCSB `doTransaction`). For an insert the keynum is new and
    /// must be acknowledged with [`ack_insert`](Self::ack_insert) once the insert completes.
    pub fn next_op(&mut self) -> Op {
        let kind = self.workload.shared.op_chooser.next(&mut self.rng);
        let keynum = match kind {
            OpKind::Insert => self.workload.shared.insert_sequence.next_value(),
            OpKind::Read | OpKind::Update | OpKind::ReadModifyWrite => self.next_keynum(),
        };
        Op { kind, keynum, key: self.workload.store_key(keynum) }
    }

    /// The key of the next request (YCSB `nextKeynum`): a draw of the request distribution,
    /// drawn again while it is beyond the acknowledged inserts. For `latest` the draw is already
    /// `last acknowledged - zipfian`, so it never is.
    pub fn next_keynum(&mut self) -> u64 {
        let insert_sequence = &self.workload.shared.insert_sequence;
        loop {
            let keynum = match &mut self.key_chooser {
                KeyChooser::Uniform(g) => g.next(&mut self.rng),
                KeyChooser::Zipfian(g) => g.next(&mut self.rng),
                KeyChooser::Hotspot(g) => g.next(&mut self.rng),
                // The counter starts at recordcount ≥ 1, so some key is always acknowledged.
                KeyChooser::Latest(g) => g.next(insert_sequence, &mut self.rng).unwrap_or(0),
            };
            if keynum < insert_sequence.acknowledged_below() {
                return keynum;
            }
        }
    }

    /// Acknowledges a completed insert (see [`Workload::ack_insert`]).
    pub fn ack_insert(&self, keynum: u64) -> Result<(), AckError> {
        self.workload.ack_insert(keynum)
    }

    /// The workload this stream draws from.
    pub fn workload(&self) -> &Workload {
        &self.workload
    }

    /// This thread's random generator, for a driver's own draws (think times, versions).
    pub fn rng(&mut self) -> &mut SeededRng {
        &mut self.rng
    }
}

/// YCSB's share of `total` operations for thread `thread_id` of `threads`: `total / threads`, plus
/// one for the first `total % threads` threads.
pub fn thread_operation_count(total: u64, thread_id: u64, threads: u64) -> u64 {
    if threads == 0 {
        return 0;
    }
    total / threads + u64::from(thread_id < total % threads)
}

/// The workload files shipped in `benches/workloads/`, by name.
pub const BUILTIN_WORKLOADS: [(&str, &str); 6] = [
    ("workloada", include_str!("../../workloads/workloada")),
    ("workloadb", include_str!("../../workloads/workloadb")),
    ("workloadc", include_str!("../../workloads/workloadc")),
    ("workloadd", include_str!("../../workloads/workloadd")),
    ("workloade", include_str!("../../workloads/workloade")),
    ("workloadf", include_str!("../../workloads/workloadf")),
];

/// The text of a shipped workload file, by its name (`workloada`) or letter (`a`).
pub fn builtin_workload(name: &str) -> Option<&'static str> {
    let name = name.trim();
    BUILTIN_WORKLOADS
        .iter()
        .find(|(file, _)| *file == name || file.strip_prefix("workload") == Some(name))
        .map(|(_, text)| *text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(text: &str) -> Workload {
        Workload::from_properties(&Properties::parse(text).unwrap()).unwrap()
    }

    #[test]
    fn workload_is_shared_and_streams_move_between_threads() {
        fn shared<T: Send + Sync>() {}
        fn movable<T: Send>() {}
        shared::<Workload>();
        movable::<OpStream>();
    }

    #[test]
    fn concurrent_inserting_threads_read_only_acknowledged_keys() {
        let w = workload(
            "recordcount=1000\noperationcount=100000\nreadproportion=0.8\nupdateproportion=0\n\
             insertproportion=0.2\nrequestdistribution=latest\n",
        );
        let per_thread = 20_000;
        let inserted: Vec<Vec<u64>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..2)
                .map(|t| {
                    let mut s = w.thread_state(t, 5);
                    scope.spawn(move || {
                        let mut mine = Vec::new();
                        let mut in_flight = Vec::new();
                        for _ in 0..per_thread {
                            let op = s.next_op();
                            if op.kind == OpKind::Insert {
                                in_flight.push(op.keynum);
                                mine.push(op.keynum);
                            } else {
                                assert!(op.keynum < s.workload().acknowledged_below());
                                assert!(!in_flight.contains(&op.keynum), "read of this thread's own in-flight insert");
                            }
                            if in_flight.len() == 3 {
                                for k in in_flight.drain(..) {
                                    s.ack_insert(k).unwrap();
                                }
                            }
                        }
                        for k in in_flight {
                            s.ack_insert(k).unwrap();
                        }
                        mine
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut all: Vec<u64> = inserted.concat();
        let total = all.len() as u64;
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len() as u64, total, "an insert keynum was handed out twice");
        assert_eq!(w.acknowledged_below(), 1000 + total);
    }

    #[test]
    fn thread_shares_follow_ycsb() {
        assert_eq!((0..4).map(|t| thread_operation_count(10, t, 4)).collect::<Vec<_>>(), [3, 3, 2, 2]);
        assert_eq!(thread_operation_count(10, 0, 0), 0);
    }

    #[test]
    fn load_hands_out_each_key_once_across_threads() {
        let w = workload("recordcount=1000\ninsertstart=100\ninsertcount=500\n");
        let mut a = w.thread_state(0, 1);
        let mut b = w.thread_state(1, 1);
        let mut keys = Vec::new();
        loop {
            match (a.next_load_key(), b.next_load_key()) {
                (None, None) => break,
                (x, y) => keys.extend(x.into_iter().chain(y).map(|op| op.keynum)),
            }
        }
        keys.sort_unstable();
        assert_eq!(keys, (100..600).collect::<Vec<_>>());
        assert_eq!(w.load_range(), 100..600);
    }

    #[test]
    fn ops_carry_the_store_key_of_their_name() {
        let w = workload("recordcount=100\noperationcount=100\nreadproportion=1\nupdateproportion=0\n");
        let mut s = w.thread_state(0, 7);
        for _ in 0..100 {
            let op = s.next_op();
            assert_eq!(op.kind, OpKind::Read);
            assert!(op.keynum < 100);
            assert_eq!(op.key, w.key_name(op.keynum).store_key());
        }
    }

    #[test]
    fn inserts_are_new_keys_and_become_readable_once_acknowledged() {
        let w = workload(
            "recordcount=10\noperationcount=1000\nreadproportion=0.5\nupdateproportion=0\n\
             insertproportion=0.5\nrequestdistribution=latest\n",
        );
        let mut s = w.thread_state(0, 3);
        let mut pending = Vec::new();
        let mut next_insert = 10;
        for _ in 0..2000 {
            let op = s.next_op();
            match op.kind {
                OpKind::Insert => {
                    assert_eq!(op.keynum, next_insert);
                    next_insert += 1;
                    pending.push(op.keynum);
                }
                OpKind::Read => assert!(op.keynum < w.acknowledged_below(), "read of unacknowledged key"),
                other => panic!("unexpected {other:?}"),
            }
            // Acknowledge in batches, so that some reads happen while inserts are in flight.
            if pending.len() == 5 {
                for k in pending.drain(..).rev() {
                    s.ack_insert(k).unwrap();
                }
            }
        }
        assert!(w.acknowledged_below() > 10);
    }

    #[test]
    fn same_seed_same_stream() {
        let w = workload("recordcount=1000\noperationcount=1000\nrequestdistribution=zipfian\n");
        let draw = |thread| {
            let mut s = w.thread_state(thread, 99);
            (0..50).map(|_| s.next_op()).collect::<Vec<_>>()
        };
        assert_eq!(draw(0), draw(0));
        assert_ne!(draw(0), draw(1));
    }

    #[test]
    fn builtin_workloads_are_found_by_name_or_letter() {
        assert_eq!(builtin_workload("a"), builtin_workload("workloada"));
        assert!(builtin_workload("f").unwrap().contains("readmodifywriteproportion=0.5"));
        assert!(builtin_workload("g").is_none());
    }
}
