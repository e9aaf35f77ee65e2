//! An acknowledged write survives `kill -9` of a real `scalio-server` process under write load.

use scalio_client::{Client, ClientConfig};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const KEYS: u64 = 200;

/// Starts the server binary on the SSD files in `dir`; returns it and its fabric address.
fn spawn_server(dir: &Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_scalio-server"))
        .args(["--listen", "127.0.0.1:0", "--ssds", "2", "--ssd-size", "16MiB", "--workers", "2"])
        .arg("--ssd-dir")
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start scalio-server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).expect("server output");
    let addr = line.trim().strip_prefix("scalio-server listening on ").unwrap_or_else(|| panic!("unexpected: {line}"));
    (child, addr.to_string())
}

fn key(i: u64) -> Vec<u8> {
    format!("key-{i:06}").into_bytes()
}

fn value(i: u64, version: u64) -> Vec<u8> {
    let mut v = format!("{i}/{version}/").into_bytes();
    v.resize(24 + (version % 90) as usize, b'#');
    v
}

/// What the writers know about one key (each key is written by one task, in sequence).
#[derive(Default, Clone, Copy)]
struct Known {
    /// Last version acknowledged.
    acked: Option<u64>,
    /// The version in flight when the server died (it may or may not have been written).
    in_flight: Option<u64>,
}

fn version_of(v: &[u8]) -> u64 {
    String::from_utf8_lossy(v).split('/').nth(1).and_then(|s| s.parse().ok()).expect("a version in the value")
}

const TASKS: u64 = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut known: HashMap<u64, Known> = HashMap::new();
    for round in 0..3u64 {
        let (mut child, addr) = spawn_server(dir.path());
        let client = Client::connect(&addr, ClientConfig::default()).await.unwrap();
        // Everything acknowledged before the previous crash is there (or the write that was in
        // flight when it happened).
        for (i, k) in known.iter_mut() {
            let got = client.get(&key(*i)).await.unwrap();
            let found = got.as_deref().map(version_of);
            assert!(
                found == k.acked || (found.is_some() && found == k.in_flight),
                "round {round}, key {i}: found version {found:?}, acknowledged {:?}, in flight {:?}",
                k.acked,
                k.in_flight
            );
            if let (Some(v), Some(bytes)) = (found, &got) {
                assert_eq!(bytes, &value(*i, v), "key {i}: the bytes of version {v}");
            }
            *k = Known { acked: found, in_flight: None };
        }
        // Write load from several tasks, each owning its keys; the server is killed during it.
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                let mut log: HashMap<u64, Known> = HashMap::new();
                let mine: Vec<u64> = (0..KEYS).filter(|i| i % TASKS == t).collect();
                for n in 0u64.. {
                    let i = mine[(n as usize) % mine.len()];
                    let v = round * 1_000_000 + n;
                    let ok = client.put(&key(i), &value(i, v)).await.is_ok();
                    let k = log.entry(i).or_default();
                    if ok {
                        k.acked = Some(v);
                    } else {
                        k.in_flight = Some(v);
                        return (log, n);
                    }
                }
                unreachable!()
            }));
        }
        tokio::time::sleep(Duration::from_millis(600)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let mut writes = 0;
        for t in tasks {
            let (log, n) = t.await.unwrap();
            writes += n;
            for (i, k) in log {
                let e = known.entry(i).or_default();
                if k.acked.is_some() {
                    e.acked = k.acked;
                }
                e.in_flight = k.in_flight;
            }
        }
        assert!(writes > 50, "round {round}: the load made progress ({writes} acknowledged writes)");
    }
}
