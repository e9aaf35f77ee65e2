//! Hundreds of crashes of one store at random points, each followed by a restart through
//! recovery, under a mixed write load whose I/O completes out of order and with garbage
//! collection running (small logs).
//!
//! A crash is simulated in process: the store's state is dropped at a random point — possibly
//! in the middle of a write part, of which only the first blocks land — and the writes it had
//! issued but not executed never happen. The SSD file is then opened again and recovered, as
//! after `kill -9` (server/tests/kill9.rs does the same to the real binary, fewer times, since
//! a process start per round costs far more). After every restart: every acknowledged write
//! reads back with its value, a key never holds a value other than its last acknowledged one
//! or one written after it (nothing unacknowledged from before, nothing never written), and
//! values read while the store runs obey the same rule.
//!
//! `SCALIO_CRASH_ROUNDS` sets the number of crashes (default 200) and `SCALIO_CRASH_SEED` the
//! seed (default: fixed, so CI is repeatable).

use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const BLOCKS: u64 = 2048;
const BUCKETS: u32 = 32;
const KEYS: u8 = 48;

/// One key: its last acknowledged state, and the writes submitted since that may or may not
/// have taken effect (None: absent / a delete).
#[derive(Default, Clone)]
struct KeyModel {
    acked: Option<Vec<u8>>,
    unsettled: Vec<Option<Vec<u8>>>,
    /// Every write submitted in this life, in order (for reads that overlap them).
    log: Vec<Option<Vec<u8>>>,
}

/// A server read in flight while the store runs: it may return what the key held when it
/// started, or anything written to the key since.
struct Read {
    key: u8,
    acked: Option<Vec<u8>>,
    unsettled: Vec<Option<Vec<u8>>>,
    log_from: usize,
}

/// Ids of reads start here; writes count up from 1.
const READ_IDS: u64 = 1 << 40;

impl KeyModel {
    fn allows(&self, v: &Option<Vec<u8>>) -> bool {
        *v == self.acked || self.unsettled.contains(v)
    }
}

struct Write {
    key: u8,
    op: WriteOp,
    value: Option<Vec<u8>>,
}

/// The store of one life between two crashes, its I/O held so that it can complete in any order.
struct Life {
    ssd: Arc<Ssd>,
    store: DataStore<u64>,
    held: Vec<IoRequest>,
    now: Instant,
    /// Block writes left before the crash.
    crash_after_blocks: u64,
    crashed: bool,
}

impl Life {
    fn open(dir: &Path, cfg: &StoreConfig, crash_after_blocks: u64) -> Life {
        let ssd = open_ssd(dir, BLOCKS);
        let opened = recovery::open(std::slice::from_ref(&ssd), Some(BUCKETS)).expect("recovery");
        let (geo, state) = opened.ssds.into_iter().next().unwrap();
        let store = DataStore::new(0, 1, geo, opened.seed, state, cfg.clone(), None);
        Life { ssd, store, held: Vec::new(), now: Instant::now(), crash_after_blocks, crashed: false }
    }

    /// Executes one held I/O, chosen at random; false once crashed or idle.
    fn step(&mut self, rng: &mut StdRng) -> bool {
        self.held.extend(self.store.take_io());
        if self.crashed || self.held.is_empty() {
            return false;
        }
        let req = self.held.swap_remove(rng.random_range(0..self.held.len()));
        match req {
            IoRequest::Read { token, lba, count } => {
                let r = self.ssd.read(lba, count, Issuer::Worker);
                self.store.on_io(token, IoResult::Read(r), self.now);
            }
            IoRequest::Write { token, parts } => {
                for (lba, data) in parts {
                    let blocks = (data.len() / BLOCK_SIZE) as u64;
                    if self.crash_after_blocks < blocks {
                        // The crash: the first blocks of this part land, nothing else does.
                        let n = self.crash_after_blocks as usize * BLOCK_SIZE;
                        if n > 0 {
                            self.ssd.write(lba, &AlignedBuf::copy_padded(&data[..n], n), Issuer::Worker).unwrap();
                        }
                        self.crashed = true;
                        return false;
                    }
                    self.crash_after_blocks -= blocks;
                    self.ssd.write(lba, &data, Issuer::Worker).unwrap();
                }
                self.store.on_io(token, IoResult::Write(Ok(())), self.now);
            }
        }
        true
    }

    /// Lets time pass (batches fill or time out).
    fn tick(&mut self, rng: &mut StdRng) {
        self.now += Duration::from_micros(rng.random_range(0..1500));
        self.store.poll(self.now);
    }

    fn kill(self) {
        self.ssd.shutdown();
    }
}

fn key_bytes(k: u8) -> Vec<u8> {
    format!("crash-key-{k:03}").into_bytes()
}

/// A value naming its key, its write and its length, so that any mix-up is visible.
fn crash_value(k: u8, serial: u64, rng: &mut StdRng) -> Vec<u8> {
    let len = rng.random_range(1..900usize);
    let mut v = format!("{k}:{serial}:").into_bytes();
    v.resize(len.max(v.len()), b'a' + (serial % 26) as u8);
    v
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[test]
fn acknowledged_writes_survive_hundreds_of_crashes() {
    let rounds = env_u64("SCALIO_CRASH_ROUNDS", 200);
    let seed = env_u64("SCALIO_CRASH_SEED", 0x5ca1_10c4);
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut model: Vec<KeyModel> = vec![KeyModel::default(); usize::from(KEYS)];
    let mut serial = 0u64;
    let mut tally = Tally::default();
    let (mut torn, mut gc_steps) = (0u64, 0u64);
    for round in 0..rounds {
        let batch = rng.random_range(1..9);
        let cfg = StoreConfig { batch, max_inflight: rng.random_range(1..5), ..config(batch) };
        let mut life = Life::open(dir.path(), &cfg, rng.random_range(0..400));
        // After the restart: everything acknowledged is there; whatever else a key holds was
        // written after its last acknowledgement. What recovery found is now the state.
        for k in 0..KEYS {
            let m = &mut model[usize::from(k)];
            let got = server_get(&mut life, &key_bytes(k), &mut rng);
            assert!(
                m.allows(&got),
                "seed {seed:#x} round {round}: key {k} recovered {:?}; acknowledged {:?}",
                got.as_deref().map(String::from_utf8_lossy),
                m.acked.as_deref().map(String::from_utf8_lossy),
            );
            *m = KeyModel { acked: got, ..KeyModel::default() };
        }
        // A mixed load until the crash (or a crash at the end, with I/O still held).
        let mut inflight: HashMap<u64, Write> = HashMap::new();
        let mut reads: HashMap<u64, Read> = HashMap::new();
        let mut next_id = 1u64;
        tally.last_acked = 0;
        for _ in 0..rng.random_range(10..150) {
            let k = rng.random_range(0..KEYS);
            if rng.random_bool(0.15) {
                let m = &model[usize::from(k)];
                let id = READ_IDS + next_id;
                next_id += 1;
                let read =
                    Read { key: k, acked: m.acked.clone(), unsettled: m.unsettled.clone(), log_from: m.log.len() };
                life.store.submit_get(key_bytes(k), id);
                reads.insert(id, read);
            }
            let op = match rng.random_range(0..10) {
                0..6 => WriteOp::Put,
                6..8 => WriteOp::Update,
                _ => WriteOp::Delete,
            };
            serial += 1;
            let value = (op != WriteOp::Delete).then(|| crash_value(k, serial, &mut rng));
            let id = next_id;
            next_id += 1;
            model[usize::from(k)].unsettled.push(value.clone());
            model[usize::from(k)].log.push(value.clone());
            let req = WriteRequest {
                op,
                key: key_bytes(k),
                value: value.clone().unwrap_or_default(),
                unbatched: rng.random_bool(0.1),
                reply: id,
            };
            life.store.submit_write(req, life.now);
            inflight.insert(id, Write { key: k, op, value });
            for _ in 0..rng.random_range(0..4) {
                if rng.random_bool(0.3) {
                    life.tick(&mut rng);
                }
                life.step(&mut rng);
            }
            drain(&mut life, &mut model, &mut inflight, &mut reads, &mut tally, (seed, round));
            if life.crashed {
                break;
            }
        }
        if !life.crashed {
            // Run a little more, then crash with whatever is still held.
            for _ in 0..rng.random_range(0..20) {
                life.tick(&mut rng);
                life.step(&mut rng);
            }
            drain(&mut life, &mut model, &mut inflight, &mut reads, &mut tally, (seed, round));
        } else {
            torn += 1;
        }
        let c = life.store.counters();
        gc_steps += c.gc_value_steps.load(Ordering::Relaxed) + c.gc_bucket_steps.load(Ordering::Relaxed);
        life.kill();
    }
    eprintln!(
        "{rounds} crashes (seed {seed:#x}): {} writes finished, {} reads checked while running, {torn} crashes \
         inside a write, {} completions out of submission order, {gc_steps} GC steps",
        tally.writes, tally.reads, tally.out_of_order
    );
    if rounds >= 100 {
        assert!(gc_steps > 0, "garbage collection ran");
        assert!(torn > rounds / 4, "many crashes hit a write in progress");
        assert!(tally.out_of_order > 0, "batches completed out of order");
    }
}

#[derive(Default)]
struct Tally {
    writes: u64,
    reads: u64,
    out_of_order: u64,
    last_acked: u64,
}

/// Checks the reads and settles the writes the store finished.
fn drain(
    life: &mut Life,
    model: &mut [KeyModel],
    inflight: &mut HashMap<u64, Write>,
    reads: &mut HashMap<u64, Read>,
    tally: &mut Tally,
    (seed, round): (u64, u64),
) {
    for c in life.store.take_completed() {
        if let Some(r) = reads.remove(&c.reply) {
            let got = match c.outcome {
                Outcome::Value(v) => Some(v),
                Outcome::NotFound => None,
                other => panic!("seed {seed:#x} round {round}: a read of key {} ended {other:?}", r.key),
            };
            let since = &model[usize::from(r.key)].log[r.log_from..];
            assert!(
                got == r.acked || r.unsettled.contains(&got) || since.contains(&got),
                "seed {seed:#x} round {round}: a read of key {} returned {:?}, never written or overwritten",
                r.key,
                got.as_deref().map(String::from_utf8_lossy)
            );
            tally.reads += 1;
            continue;
        }
        let w = inflight.remove(&c.reply).expect("a submitted write");
        if c.reply < tally.last_acked {
            tally.out_of_order += 1;
        }
        tally.last_acked = tally.last_acked.max(c.reply);
        settle(&mut model[usize::from(w.key)], &w, &c.outcome, seed, round);
        tally.writes += 1;
    }
}

/// Folds a write's outcome into its key's model. A key's writes finish in the order the store
/// applied them, so the last one finished is the key's state; writes still unfinished are
/// concurrent with it and may yet land after it (an unbatched write may overtake a batched one
/// submitted before it), so they stay unsettled.
fn settle(m: &mut KeyModel, w: &Write, outcome: &Outcome, seed: u64, round: u64) {
    let pos = m.unsettled.iter().position(|v| *v == w.value).expect("the write is unsettled");
    m.unsettled.remove(pos);
    match (outcome, w.op) {
        (Outcome::Ok, _) => m.acked = w.value.clone(),
        // An UPDATE or DELETE that found no key: the key was absent when it was applied.
        (Outcome::NotFound, WriteOp::Update | WriteOp::Delete) => m.acked = None,
        (Outcome::NoSpace(_), _) => {}
        (other, op) => panic!("seed {seed:#x} round {round}: {op:?} ended {other:?}"),
    }
}

/// A server read run to completion (other held I/O may complete meanwhile; the crash point is
/// not reached by reads).
fn server_get(life: &mut Life, key: &[u8], rng: &mut StdRng) -> Option<Vec<u8>> {
    const ID: u64 = u64::MAX;
    life.store.submit_get(key.to_vec(), ID);
    loop {
        if let Some(pos) = life.store.done.iter().position(|c| c.reply == ID) {
            return match life.store.done.remove(pos).outcome {
                Outcome::Value(v) => Some(v),
                Outcome::NotFound => None,
                other => panic!("{}: {other:?}", String::from_utf8_lossy(key)),
            };
        }
        assert!(life.step(rng), "the read finishes");
    }
}
