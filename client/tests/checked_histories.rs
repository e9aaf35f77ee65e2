//! Histories recorded from a real embedded server, checked for linearizability.
//!
//! Many clients (each its own connection, half of them with unbatched writes) run random mixes
//! of get, put, update and delete on a few hot keys, with values that are sometimes small
//! enough to be cached and sometimes not. The server has a two-slot cache (constant eviction),
//! 2 ms leases (reservations expire under slow fillers), tiny SSDs (garbage collection keeps
//! moving data) and small batches. Over `mem`, each seed also picks injected faults: READs
//! paused halfway (torn by concurrent fills and invalidations), delayed work requests (late
//! fills), delayed RPCs. Some operations are abandoned midway (a timeout drops the future, so
//! their outcome is unknown), and one client is killed mid-run. Every history goes through
//! `scalio_lincheck`.
//!
//! Over `tcp`, some runs go through a proxy that cuts the byte stream into random pieces and
//! delays them (frames split anywhere, responses late): the software NIC's framing and the
//! client's driver under a misbehaving network.
//!
//! A deterministic tear (a READ in the middle of which the key's slot is re-bound to another key
//! and filled) is checked the same way (`read_torn_by_a_rebinding_is_linearizable`).
//!
//! The fixed seeds run in `cargo test`; `SCALIO_LIN_SEEDS=N` runs N more seeds from
//! `SCALIO_LIN_SEED_BASE` (default: derived from the clock, printed). With the `seeded-bugs`
//! feature, the same scenarios run against deliberately broken servers and must be caught.

mod common;

use common::start;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use scalio_client::{Client, ClientConfig, ClientError};
use scalio_lincheck::{check, Call, CheckError, Op, Outcome, Recorder, Ret, Summary};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest an operation may take before the test calls it stuck.
const STUCK: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fabric {
    Mem,
    Tcp,
    /// `tcp` through [`ChaosProxy`].
    TcpChaos,
}

/// A TCP proxy between clients and the server that forwards each direction in pieces of random
/// size (1 byte to 4 KiB), sleeping a random while (up to 300 µs) before some of them: frames
/// arrive split anywhere, and late.
struct ChaosProxy {
    addr: std::net::SocketAddr,
    stop: Arc<std::sync::atomic::AtomicBool>,
    /// Bytes forwarded, both directions.
    forwarded: Arc<std::sync::atomic::AtomicU64>,
}

impl ChaosProxy {
    fn start(upstream: std::net::SocketAddr, seed: u64) -> ChaosProxy {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let forwarded = Arc::new(AtomicU64::new(0));
        let (stop2, fwd) = (stop.clone(), forwarded.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                client.set_nodelay(true).unwrap();
                let server = std::net::TcpStream::connect(upstream).unwrap();
                server.set_nodelay(true).unwrap();
                for (from, to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)] {
                    n += 1;
                    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(31).wrapping_add(n));
                    let fwd = fwd.clone();
                    std::thread::spawn(move || Self::pump(from, to, &mut rng, &fwd));
                }
            }
        });
        ChaosProxy { addr, stop, forwarded }
    }

    fn pump(mut from: std::net::TcpStream, mut to: std::net::TcpStream, rng: &mut StdRng, fwd: &AtomicU64) {
        use std::io::{Read, Write};
        let mut buf = vec![0u8; 4096];
        loop {
            let want = rng.random_range(1..=buf.len());
            let n = match from.read(&mut buf[..want]) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if rng.random_bool(0.2) {
                std::thread::sleep(Duration::from_micros(rng.random_range(0..300)));
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
            fwd.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
        let _ = from.shutdown(std::net::Shutdown::Read);
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Faults injected into the `mem` fabric for one run.
#[derive(Debug, Clone, Copy, Default)]
struct Faults {
    read_pause: Duration,
    wr_delay: Duration,
    rpc_delay: Duration,
}

#[derive(Debug, Clone)]
struct Scenario {
    fabric: Fabric,
    seed: u64,
    clients: u32,
    ops_per_client: usize,
    keys: usize,
    faults: Faults,
    #[cfg(feature = "seeded-bugs")]
    bug: Option<scalio_server::SeededBug>,
}

impl Scenario {
    fn new(fabric: Fabric, seed: u64) -> Scenario {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5CA1_1000);
        let us = Duration::from_micros;
        let faults = match fabric {
            Fabric::Mem => Faults {
                read_pause: us([0, 10, 40][rng.random_range(0..3)]),
                wr_delay: us([0, 0, 20, 60][rng.random_range(0..4)]),
                rpc_delay: us([0, 0, 50][rng.random_range(0..3)]),
            },
            Fabric::Tcp | Fabric::TcpChaos => Faults::default(),
        };
        Scenario {
            fabric,
            seed,
            clients: 6,
            ops_per_client: 150,
            keys: 3,
            faults,
            #[cfg(feature = "seeded-bugs")]
            bug: None,
        }
    }
}

/// What one run produced.
struct Run {
    history: Vec<Op>,
    /// Operations that failed with an error (recorded as of unknown outcome).
    errors: Vec<ClientError>,
    /// Operations abandoned by a timeout.
    abandoned: usize,
    /// Whether the killed client was still running when it was killed.
    killed_mid_run: bool,
    gc_steps: u64,
    rebinds: u64,
    invalidations: u64,
}

/// A value unique to (client, n): sometimes small enough for a cache slot, sometimes not.
fn value(rng: &mut StdRng, client: u32, n: usize) -> Vec<u8> {
    let mut v = format!("c{client}-{n}:").into_bytes();
    let len = if rng.random_bool(0.6) { rng.random_range(v.len()..=64) } else { rng.random_range(65..1500) };
    v.resize(len, b'a' + (n % 26) as u8);
    v
}

async fn perform(c: &Client, key: &[u8], call: &Call) -> Result<Ret, ClientError> {
    Ok(match call {
        Call::Get => Ret::Get(c.get(key).await?),
        Call::Put(v) => {
            c.put(key, v).await?;
            Ret::Put
        }
        Call::Update(v) => Ret::Update(c.update(key, v).await?),
        Call::Delete => Ret::Delete(c.delete(key).await?),
    })
}

/// Runs one operation and records it; an error or a timeout leaves its outcome unknown.
async fn recorded(
    rec: &Arc<Recorder>,
    c: &Client,
    id: u32,
    key: &[u8],
    call: Call,
    deadline: Option<Duration>,
) -> Result<bool, ClientError> {
    let op = rec.invoke(id, key, call.clone());
    let fut = perform(c, key, &call);
    let result = match deadline {
        // Liveness: an operation nobody abandons must finish.
        None => match tokio::time::timeout(STUCK, fut).await {
            Ok(r) => r.map(Some),
            Err(_) => panic!("client {id}: {call:?} on {:?} did not finish in {STUCK:?}", String::from_utf8_lossy(key)),
        },
        Some(d) => tokio::time::timeout(d, fut).await.map_or(Ok(None), |r| r.map(Some)),
    };
    match result {
        Ok(Some(ret)) => {
            op.returned(ret);
            Ok(true)
        }
        Ok(None) => {
            op.unknown();
            Ok(false)
        }
        Err(e) => {
            op.unknown();
            Err(e)
        }
    }
}

/// One client's random mix. Returns its errors and how many operations it abandoned.
async fn client_loop(rec: Arc<Recorder>, c: Client, id: u32, sc: Scenario) -> (Vec<ClientError>, usize) {
    let mut rng = StdRng::seed_from_u64(sc.seed.wrapping_mul(1_000_003).wrapping_add(u64::from(id)));
    let (mut errors, mut abandoned) = (Vec::new(), 0);
    for n in 0..sc.ops_per_client {
        let key = format!("hot{}", rng.random_range(0..sc.keys)).into_bytes();
        let call = match rng.random_range(0..100) {
            0..50 => Call::Get,
            50..75 => Call::Put(value(&mut rng, id, n)),
            75..88 => Call::Update(value(&mut rng, id, n)),
            _ => Call::Delete,
        };
        // Now and then a client gives up on an operation midway.
        let deadline = rng.random_bool(0.05).then(|| Duration::from_micros(rng.random_range(0..400)));
        match recorded(&rec, &c, id, &key, call, deadline).await {
            Ok(true) => {}
            Ok(false) => abandoned += 1,
            Err(e) => errors.push(e),
        }
    }
    (errors, abandoned)
}

async fn record(sc: &Scenario) -> Run {
    let tcp = sc.fabric != Fabric::Mem;
    let s = start(if tcp { 2 } else { 1 }, tcp, |c| {
        common::stress(c);
        #[cfg(feature = "seeded-bugs")]
        {
            c.seeded_bug = sc.bug;
        }
    });
    if sc.fabric == Fabric::Mem {
        let f = s.server.mem_fabric().faults();
        f.set_read_pause(sc.faults.read_pause);
        f.set_wr_delay(sc.faults.wr_delay);
        f.set_rpc_delay(sc.faults.rpc_delay);
    }
    let proxy =
        (sc.fabric == Fabric::TcpChaos).then(|| ChaosProxy::start(s.server.local_addr().expect("listening"), sc.seed));
    let rec = Recorder::new();
    let mut clients = Vec::new();
    for i in 0..=sc.clients {
        let cfg = ClientConfig { batched_writes: i % 2 == 0, ..ClientConfig::default() };
        clients.push(match (sc.fabric, &proxy) {
            (Fabric::Mem, _) => s.mem_client(cfg).await,
            (_, Some(p)) => Client::connect(&p.addr.to_string(), cfg).await.expect("connect through the proxy"),
            (_, None) => s.tcp_client(cfg).await,
        });
    }
    let checker_client = clients.pop().expect("one spare client");
    let mut tasks = Vec::new();
    for (id, c) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(client_loop(rec.clone(), c, id as u32, sc.clone())));
    }
    // Kill the last client mid-run: its operation in flight is dropped wherever it was (a
    // reservation not yet filled, a write not yet acknowledged).
    let mut rng = StdRng::seed_from_u64(sc.seed ^ 0xDEAD);
    tokio::time::sleep(Duration::from_millis(rng.random_range(2..20))).await;
    let victim = tasks.pop().expect("clients");
    victim.abort();
    let killed_mid_run = victim.await.is_err_and(|e| e.is_cancelled());
    let (mut errors, mut abandoned) = (Vec::new(), 0);
    for t in tasks {
        let (e, a) = t.await.expect("client task");
        errors.extend(e);
        abandoned += a;
    }
    // Let abandoned writes land (or not), then read every key once more.
    tokio::time::sleep(Duration::from_millis(5)).await;
    for k in 0..sc.keys {
        let key = format!("hot{k}").into_bytes();
        if let Err(e) = recorded(&rec, &checker_client, sc.clients, &key, Call::Get, None).await {
            errors.push(e);
        }
    }
    if let Some(p) = &proxy {
        assert!(p.forwarded.load(std::sync::atomic::Ordering::Relaxed) > 0, "the clients went through the proxy");
    }
    Run {
        history: rec.history(),
        errors,
        abandoned,
        killed_mid_run,
        gc_steps: s.stat("gc_value_steps") + s.stat("gc_bucket_steps"),
        rebinds: s.stat("table_evictions") + s.stat("table_expired_reclaims"),
        invalidations: s.stat("table_invalidations"),
    }
}

/// The seeds to run: `fixed`, or `SCALIO_LIN_SEEDS` of them from `SCALIO_LIN_SEED_BASE`.
fn seeds(fixed: std::ops::RangeInclusive<u64>) -> Vec<u64> {
    let Some(n) = std::env::var("SCALIO_LIN_SEEDS").ok().and_then(|s| s.parse::<u64>().ok()) else {
        return fixed.collect();
    };
    let base = std::env::var("SCALIO_LIN_SEED_BASE").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_secs() * 1000)
    });
    eprintln!("SCALIO_LIN_SEED_BASE={base}, {n} seeds");
    (base..base + n).collect()
}

/// Totals over a test's runs, printed for the CI log.
#[derive(Default)]
struct Totals {
    histories: usize,
    checked: Summary,
    errors: usize,
    abandoned: usize,
    kills: usize,
    gc_steps: u64,
    rebinds: u64,
    invalidations: u64,
}

async fn check_seeds(fabric: Fabric, fixed: std::ops::RangeInclusive<u64>) -> Totals {
    let mut t = Totals::default();
    for seed in seeds(fixed) {
        let sc = Scenario::new(fabric, seed);
        let started = Instant::now();
        let run = record(&sc).await;
        let s = match check(&run.history) {
            Ok(s) => s,
            Err(e @ CheckError::Violation(_)) => panic!("{fabric:?} seed {seed} ({:?}): {e}", sc.faults),
            Err(e) => panic!("{fabric:?} seed {seed}: the check did not finish: {e}"),
        };
        eprintln!(
            "{fabric:?} seed {seed}: {} ops on {} keys, {} unknown, {} errors, {} search steps, {:?} ({:?})",
            s.ops,
            s.keys,
            s.unknown,
            run.errors.len(),
            s.steps,
            started.elapsed(),
            sc.faults
        );
        for e in run.errors.iter().take(3) {
            eprintln!("  error: {e}");
        }
        // Errors are legitimate only as rare events (a miss whose blocks GC keeps reusing):
        // most operations must complete.
        assert!(
            run.errors.len() * 20 < s.ops,
            "{fabric:?} seed {seed}: {} of {} operations failed: {:?}",
            run.errors.len(),
            s.ops,
            run.errors.first()
        );
        t.histories += 1;
        t.checked.ops += s.ops;
        t.checked.unknown += s.unknown;
        t.checked.steps += s.steps;
        t.errors += run.errors.len();
        t.abandoned += run.abandoned;
        t.kills += usize::from(run.killed_mid_run);
        t.gc_steps += run.gc_steps;
        t.rebinds += run.rebinds;
        t.invalidations += run.invalidations;
    }
    eprintln!(
        "{fabric:?}: {} histories, {} operations ({} unknown, {} abandoned, {} errors, {} clients killed mid-run) linearizable; GC steps {}, slot rebinds {}, invalidations {}",
        t.histories, t.checked.ops, t.checked.unknown, t.abandoned, t.errors, t.kills, t.gc_steps, t.rebinds, t.invalidations
    );
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn mem_histories_with_injected_faults_are_linearizable() {
    let t = check_seeds(Fabric::Mem, 1..=6).await;
    // The scenario exercised what it is meant to.
    assert!(t.gc_steps > 0, "garbage collection ran");
    assert!(t.rebinds > 0, "cache slots were evicted or reclaimed");
    assert!(t.invalidations > 0, "writes invalidated cached values");
    assert!(t.abandoned > 0 && t.checked.unknown >= t.abandoned, "operations were abandoned midway");
    assert!(t.kills > 0, "a client was killed mid-run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn tcp_histories_are_linearizable() {
    let t = check_seeds(Fabric::Tcp, 1..=2).await;
    assert!(t.rebinds > 0 && t.invalidations > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn tcp_histories_through_a_chaotic_network_are_linearizable() {
    let t = check_seeds(Fabric::TcpChaos, 1..=2).await;
    assert!(t.rebinds > 0 && t.invalidations > 0);
    assert!(t.abandoned > 0 && t.kills > 0);
}

/// A READ torn deterministically: in the middle of a probe, the server re-binds the key's slot
/// to another key and a client fills it. The reader must not return the other key's bytes: the
/// GETs return their own values, and the history (with the two PUTs) is linearizable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_torn_by_a_rebinding_is_linearizable() {
    use scalio_common::key::TableKey;
    use scalio_common::table::{encode_fill, off};
    use std::sync::atomic::{AtomicBool, Ordering};
    let s = start(1, false, |c| {
        c.cache.buckets = 1;
        c.cache.assoc = 1;
        c.cache.lease_ms = 0;
    });
    let c = s.mem_client(ClientConfig::default()).await;
    let rec = Recorder::new();
    let run = |key: &'static [u8], call: Call| {
        let (rec, c) = (rec.clone(), c.clone());
        async move { recorded(&rec, &c, 0, key, call, None).await.expect("no error") }
    };
    run(b"victim", Call::Put(b"victim-value".to_vec())).await;
    run(b"other", Call::Put(b"other-value".to_vec())).await;
    run(b"victim", Call::Get).await; // fills the slot
    let table = s.server.table().unwrap().clone();
    let armed = Arc::new(AtomicBool::new(true));
    let hook_armed = armed.clone();
    s.server.mem_fabric().faults().set_tear_hook(Some(Arc::new(move || {
        if hook_armed.swap(false, Ordering::SeqCst) {
            // Mid-READ: evict "victim", bind the slot to "other" and fill it.
            let tk = TableKey::new(b"other");
            let r = table.reserve(&tk).expect("the lease is zero, so the slot can be taken");
            let g = table.geometry();
            let base = g.slot_offset(tk.bucket(g.buckets), r.slot);
            table.region().write(base + off::FILL, &encode_fill(r.generation, &tk, b"other-value")).unwrap();
            table.region().store_u8(base + off::INTEGRITY, 1);
        }
    })));
    for _ in 0..3 {
        assert_eq!(c.get(b"victim").await.unwrap(), Some(b"victim-value".to_vec()));
        run(b"victim", Call::Get).await;
        run(b"other", Call::Get).await;
    }
    assert!(!armed.load(Ordering::SeqCst), "the tear happened");
    let history = rec.history();
    let got: Vec<_> = history
        .iter()
        .filter_map(|op| match &op.outcome {
            Outcome::Returned { ret: Ret::Get(v), .. } => Some((op.key.clone(), v.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(got.len(), 7);
    for (key, v) in &got {
        let want: &[u8] = if key == b"victim" { b"victim-value" } else { b"other-value" };
        assert_eq!(v.as_deref(), Some(want), "a GET of {:?}", String::from_utf8_lossy(key));
    }
    check(&history).expect("linearizable");
}

/// The same scenarios against deliberately broken servers: the checker must catch each bug
/// (run with `cargo test -p scalio-client --features seeded-bugs --test checked_histories`).
#[cfg(feature = "seeded-bugs")]
mod seeded_bugs {
    use super::*;
    use scalio_server::SeededBug;

    /// Runs the scenario of each seed with `bug` until the checker reports a violation;
    /// returns the seed and the report.
    async fn caught(bug: SeededBug, seeds: std::ops::RangeInclusive<u64>) -> Option<(u64, String)> {
        for seed in seeds {
            let mut sc = Scenario::new(Fabric::Mem, seed);
            sc.bug = Some(bug);
            let run = record(&sc).await;
            match check(&run.history) {
                Ok(s) => eprintln!("{bug:?} seed {seed}: not caught ({} ops)", s.ops),
                Err(e @ CheckError::Violation(_)) => return Some((seed, e.to_string())),
                Err(e) => panic!("{bug:?} seed {seed}: {e}"),
            }
        }
        None
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 8)]
    async fn acknowledging_before_invalidation_is_caught() {
        let (seed, report) =
            caught(SeededBug::AckBeforeInvalidate, 1..=6).await.expect("the checker reports a violation");
        eprintln!("AckBeforeInvalidate caught at seed {seed}:\n{report}");
        assert!(report.contains("is not linearizable"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 8)]
    async fn fills_without_a_generation_check_are_caught() {
        let (seed, report) =
            caught(SeededBug::FillWithoutGenerationCheck, 1..=6).await.expect("the checker reports a violation");
        eprintln!("FillWithoutGenerationCheck caught at seed {seed}:\n{report}");
        assert!(report.contains("is not linearizable"));
    }
}
