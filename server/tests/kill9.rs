//! An acknowledged write survives `kill -9` of a real `scalio-server` process, round after round,
//! under a mixed write load (PUT, UPDATE, DELETE from several tasks, so that batches on
//! different buckets and SSDs complete out of order) on small SSDs where garbage collection
//! runs. Each round kills the server at a random moment, restarts it on the same SSD files and
//! checks every key: it holds its last acknowledged state, or the write that was in flight on
//! it when the server died — never anything else.
//!
//! CI runs `SCALIO_KILL9_ROUNDS` rounds (default 20; most crash cases run in process, see
//! `server/src/store/tests/crash_loop.rs`); `SCALIO_KILL9_SEED` picks the kill times.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use scalio_client::{Client, ClientConfig};
use std::collections::HashMap;
mod support;

use std::path::Path;
use std::process::Child;
use std::time::Duration;

const KEYS: u64 = 200;
const TASKS: u64 = 8;

/// Starts the server binary on the SSD files in `dir`; returns it and its fabric address.
fn spawn_server(dir: &Path) -> (Child, String) {
    // Two 2 MiB SSDs with 64 buckets each: the logs wrap within a few rounds.
    support::spawn_server(
        dir,
        "ssd_buckets = 64\n",
        &["--ssds", "2", "--ssd-size", "2MiB", "--workers", "2", "--no-target"],
        "warn",
    )
}

fn key(i: u64) -> Vec<u8> {
    format!("key-{i:06}").into_bytes()
}

fn value(i: u64, version: u64) -> Vec<u8> {
    let mut v = format!("{i}/{version}/").into_bytes();
    v.resize(24 + (version.wrapping_mul(7919) % 1500) as usize, b'#');
    v
}

/// What the writers know about one key (each key is written by one task, in sequence).
/// `None` is an absent key.
#[derive(Default, Clone, Copy)]
struct Known {
    /// The state after the last acknowledged write.
    acked: Option<u64>,
    /// The write in flight when the server died: it may or may not have taken effect.
    in_flight: Option<Option<u64>>,
}

fn version_of(v: &[u8]) -> u64 {
    String::from_utf8_lossy(v).split('/').nth(1).and_then(|s| s.parse().ok()).expect("a version in the value")
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    let rounds = env_u64("SCALIO_KILL9_ROUNDS", 20);
    let seed = env_u64("SCALIO_KILL9_SEED", 9);
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut known: HashMap<u64, Known> = (0..KEYS).map(|i| (i, Known::default())).collect();
    let (mut total_writes, mut gc_steps) = (0, 0);
    for round in 0..rounds {
        let (mut child, addr) = spawn_server(dir.path());
        let client = Client::connect(&addr, ClientConfig::default()).await.unwrap();
        // Every key holds its last acknowledged state, or the write in flight at the crash.
        for (i, k) in known.iter_mut() {
            let got = client.get(&key(*i)).await.unwrap();
            let found = got.as_deref().map(version_of);
            assert!(
                found == k.acked || k.in_flight == Some(found),
                "seed {seed} round {round}, key {i}: found version {found:?}, acknowledged {:?}, in flight {:?}",
                k.acked,
                k.in_flight
            );
            if let (Some(v), Some(bytes)) = (found, &got) {
                assert_eq!(bytes, &value(*i, v), "key {i}: the bytes of version {v}");
            }
            *k = Known { acked: found, in_flight: None };
        }
        // A mixed write load from several tasks, each owning its keys; the server is killed
        // during it.
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let client = client.clone();
            let task_seed = rng.random::<u64>();
            let mine: Vec<u64> = (0..KEYS).filter(|i| i % TASKS == t).collect();
            // The task's view of its keys, starting from what recovery found.
            let mut log: HashMap<u64, Known> = mine.iter().map(|i| (*i, known[i])).collect();
            tasks.push(tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(task_seed);
                for n in 0u64.. {
                    let i = mine[rng.random_range(0..mine.len())];
                    let v = round * 1_000_000 + n;
                    let k = log.get_mut(&i).expect("one of the task's keys");
                    let (attempt, result) = match rng.random_range(0..10) {
                        0..6 => (Some(v), client.put(&key(i), &value(i, v)).await.map(|()| true)),
                        6..8 => (Some(v), client.update(&key(i), &value(i, v)).await),
                        _ => (None, client.delete(&key(i)).await),
                    };
                    match result {
                        // An UPDATE or DELETE that found nothing leaves the key absent.
                        Ok(applied) => k.acked = if applied { attempt } else { None },
                        Err(_) => {
                            k.in_flight = Some(attempt);
                            return (log, n);
                        }
                    }
                }
                unreachable!()
            }));
        }
        // Let the load run for a random time.
        tokio::time::sleep(Duration::from_millis(rng.random_range(150..700))).await;
        if let Ok(stats) = client.server_stats().await {
            gc_steps += stats.get("gc_value_steps").unwrap_or(0) + stats.get("gc_bucket_steps").unwrap_or(0);
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let mut writes = 0;
        for t in tasks {
            let (log, n) = t.await.unwrap();
            writes += n;
            known.extend(log);
        }
        total_writes += writes;
        assert!(writes > 20, "round {round}: the load made progress ({writes} acknowledged writes)");
        eprintln!("round {round}: {writes} acknowledged writes, {gc_steps} GC steps in all rounds so far");
    }
    eprintln!("{rounds} kill -9 rounds (seed {seed}), {total_writes} acknowledged writes, {gc_steps} GC steps");
    if rounds >= 8 {
        assert!(gc_steps > 0, "garbage collection ran");
    }
}
