//! Soak: many clients write at a high rate for a fixed time against the real server binary on
//! small SSDs (garbage collection runs all the time), each reading its own keys back as it goes;
//! then every key is verified. The server's resident memory is sampled throughout and must stay
//! bounded: no growth from the first half of the run to the second beyond allocator slack, and
//! a peak within the configured bounds.
//!
//! `SCALIO_SOAK_SECS` sets the duration (default 3 s, a smoke run in `cargo test`);
//! `SCALIO_SOAK_CLIENTS` the number of clients (default 16).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use scalio_client::{Client, ClientConfig, ClientError};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
mod support;

const MIB: u64 = 1 << 20;
/// Keys per client; each is written by its client only.
const KEYS_PER_CLIENT: u64 = 128;

struct ServerProcess(Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Two 16 MiB SSDs with 256 buckets each: with 16 clients' keys (up to ~2 MiB live) the logs
/// wrap every few seconds, so garbage collection runs throughout.
fn spawn_server(dir: &Path) -> (ServerProcess, String) {
    let (child, addr) = support::spawn_server(
        dir,
        "ssd_buckets = 256\n[cache]\nbuckets = 256\nassoc = 4\n",
        &["--ssds", "2", "--ssd-size", "16MiB", "--workers", "2", "--no-target"],
        "error",
    );
    (ServerProcess(child), addr)
}

fn key(client: u64, i: u64) -> Vec<u8> {
    format!("soak-{client:03}-{i:04}").into_bytes()
}

fn value(client: u64, i: u64, version: u64) -> Vec<u8> {
    let mut v = format!("{client}/{i}/{version}/").into_bytes();
    v.resize(24 + (version.wrapping_mul(7919) % 1000) as usize, b'a' + (version % 26) as u8);
    v
}

fn rss(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    let line = status.lines().find(|l| l.starts_with(field)).expect("the field");
    line.split_whitespace().nth(1).and_then(|n| n.parse::<u64>().ok()).expect("kB") * 1024
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// What a client knows about one of its keys: its state after the last acknowledged write
/// (`None`: absent), and the states of the writes after it whose outcome is unknown.
#[derive(Debug, Clone, Default)]
struct Known {
    acked: Option<u64>,
    uncertain: Vec<Option<u64>>,
}

impl Known {
    fn allows(&self, found: Option<u64>) -> bool {
        found == self.acked || self.uncertain.contains(&found)
    }
}

/// Errors that say nothing was done.
fn nothing_done(e: &ClientError) -> bool {
    matches!(e, ClientError::Unavailable(_) | ClientError::NoSpace(_) | ClientError::WritesStopped(_))
}

#[derive(Default)]
struct Tally {
    writes: u64,
    reads: u64,
    errors: BTreeMap<String, u64>,
}

async fn client_loop(c: Client, id: u64, stop: Arc<AtomicBool>) -> (HashMap<u64, Known>, Tally) {
    let mut rng = StdRng::seed_from_u64(0x50A4 ^ id);
    let mut known: HashMap<u64, Known> = (0..KEYS_PER_CLIENT).map(|i| (i, Known::default())).collect();
    let mut t = Tally::default();
    let mut version = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let i = rng.random_range(0..KEYS_PER_CLIENT);
        let k = key(id, i);
        let kn = known.get_mut(&i).expect("own key");
        if rng.random_bool(0.25) {
            // Read back: while no write of the key is uncertain, exactly the acknowledged state.
            match c.get(&k).await {
                Ok(got) => {
                    let found = got.as_deref().map(|v| version_of(v, id, i));
                    assert!(kn.allows(found), "client {id} key {i}: read {found:?}, known {kn:?}");
                    if let (Some(v), Some(bytes)) = (found, &got) {
                        assert_eq!(bytes, &value(id, i, v), "client {id} key {i}: the bytes of version {v}");
                    }
                    *kn = Known { acked: found, uncertain: Vec::new() };
                    t.reads += 1;
                }
                Err(e) => *t.errors.entry(format!("GET {}", kind(&e))).or_default() += 1,
            }
            continue;
        }
        version += 1;
        let (attempt, op, r) = match rng.random_range(0..10) {
            0..7 => (Some(version), "PUT", c.put(&k, &value(id, i, version)).await.map(|()| true)),
            7..9 => (Some(version), "UPDATE", c.update(&k, &value(id, i, version)).await),
            _ => (None, "DELETE", c.delete(&k).await),
        };
        match r {
            Ok(applied) => {
                kn.acked = if applied { attempt } else { None };
                kn.uncertain.clear();
                t.writes += 1;
            }
            Err(e) => {
                *t.errors.entry(format!("{op} {}", kind(&e))).or_default() += 1;
                if !nothing_done(&e) {
                    // It may have taken effect, now or later; the next read settles it.
                    kn.uncertain.push(attempt);
                }
            }
        }
    }
    (known, t)
}

fn kind(e: &ClientError) -> String {
    let s = format!("{e:?}");
    s.split(['(', ' ', '{']).next().unwrap_or("?").to_string()
}

fn version_of(v: &[u8], client: u64, i: u64) -> u64 {
    let s = String::from_utf8_lossy(v);
    let mut parts = s.split('/');
    let c: u64 = parts.next().and_then(|p| p.parse().ok()).expect("a client in the value");
    let k: u64 = parts.next().and_then(|p| p.parse().ok()).expect("a key in the value");
    assert_eq!((c, k), (client, i), "another key's value");
    parts.next().and_then(|p| p.parse().ok()).expect("a version in the value")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_many_clients_with_gc_then_verify_everything() {
    let secs = env_u64("SCALIO_SOAK_SECS", 3);
    let clients = env_u64("SCALIO_SOAK_CLIENTS", 16);
    let dir = tempfile::tempdir().unwrap();
    let (server, addr) = spawn_server(dir.path());
    let pid = server.0.id();
    let admin = Client::connect(&addr, ClientConfig::default()).await.expect("connect");
    let idle = rss(pid, "VmRSS:");

    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for id in 0..clients {
        let c = Client::connect(&addr, ClientConfig::default()).await.expect("connect");
        tasks.push(tokio::spawn(client_loop(c, id, stop.clone())));
    }
    // Memory and progress, sampled 20 times over the run (at least every second).
    let started = Instant::now();
    let every = Duration::from_secs(secs).div_f64(20.0).min(Duration::from_secs(1));
    let mut samples: Vec<(f64, u64, u64, u64)> = Vec::new(); // (s, RSS, writes, GC steps)
    while started.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(every).await;
        let st = admin.server_stats().await.expect("STATS");
        let g = |n: &str| st.get(n).unwrap_or(0);
        samples.push((
            started.elapsed().as_secs_f64(),
            rss(pid, "VmRSS:"),
            g("store_batched_writes"),
            g("gc_value_steps") + g("gc_bucket_steps"),
        ));
    }
    stop.store(true, Ordering::Relaxed);
    let mut known = HashMap::new();
    let mut total = Tally::default();
    for (id, t) in tasks.into_iter().enumerate() {
        let (k, t) = t.await.expect("a client task");
        known.insert(id as u64, k);
        total.writes += t.writes;
        total.reads += t.reads;
        for (e, n) in t.errors {
            *total.errors.entry(e).or_default() += n;
        }
    }
    let elapsed = started.elapsed();

    // The verification pass: every key of every client.
    let mut present = 0;
    for (id, keys) in &known {
        for (i, kn) in keys {
            let got = admin.get(&key(*id, *i)).await.expect("verification GET");
            let found = got.as_deref().map(|v| version_of(v, *id, *i));
            assert!(kn.allows(found), "verification, client {id} key {i}: found {found:?}, known {kn:?}");
            if let (Some(v), Some(bytes)) = (found, &got) {
                assert_eq!(bytes, &value(*id, *i, v));
                present += 1;
            }
        }
    }
    let peak = rss(pid, "VmHWM:");
    let st = admin.server_stats().await.unwrap();
    let gc = st.get("gc_value_steps").unwrap_or(0) + st.get("gc_bucket_steps").unwrap_or(0);
    eprintln!(
        "soak: {clients} clients, {:.0} s: {} acknowledged writes ({:.0}/s), {} read-backs, errors {:?}, \
         {} GC steps; verified {} keys ({present} present); server RSS idle {} MiB, peak {} MiB",
        elapsed.as_secs_f64(),
        total.writes,
        total.writes as f64 / elapsed.as_secs_f64(),
        total.reads,
        total.errors,
        gc,
        clients * KEYS_PER_CLIENT,
        idle / MIB,
        peak / MIB
    );
    for (t, r, w, g) in &samples {
        eprintln!("  t={t:6.1}s  RSS {:4} MiB  writes {w:9}  GC steps {g:6}", r / MIB);
    }

    assert!(total.writes > 100 * secs, "the load made progress: {} writes", total.writes);
    let errors: u64 = total.errors.values().sum();
    assert!(errors * 100 <= total.writes + total.reads, "more than 1% of operations failed: {:?}", total.errors);
    if secs >= 2 {
        assert!(gc > 0, "garbage collection ran");
    }
    // Bounded: the peak within the limits' reach, and no growth from the first half to the
    // second beyond slack (a leak per operation would show as a steady climb).
    assert!(peak - idle.min(peak) < 256 * MIB, "server memory grew by {} MiB", (peak - idle.min(peak)) / MIB);
    let half = samples.len() / 2;
    let first = samples[..half].iter().map(|s| s.1).max().unwrap_or(0);
    let second = samples[half..].iter().map(|s| s.1).max().unwrap_or(0);
    assert!(
        second <= first + first / 4 + 16 * MIB,
        "server RSS climbed from {} MiB in the first half to {} MiB in the second",
        first / MIB,
        second / MIB
    );
}
