//! The memcached client against a real memcached, at `SCALIO_MEMCACHED_ADDR` (HOST:PORT).
//! Skipped (passing, with a note) when the variable is unset; `scripts/ci/memcached.sh run --
//! cargo test -p scalio-bench --test memcached_server` starts one and sets it.

use scalio_bench::systems::memcached::{MemcachedClient, MemcachedError};

fn server() -> Option<String> {
    match std::env::var("SCALIO_MEMCACHED_ADDR") {
        Ok(a) if !a.is_empty() => Some(a),
        _ => {
            eprintln!("SCALIO_MEMCACHED_ADDR is not set: skipping the test against a real memcached");
            None
        }
    }
}

/// 16-byte keys unique to this run, so that runs against one memcached do not see each other.
fn key(run: u64, i: u64) -> Vec<u8> {
    let mut k = run.to_le_bytes().to_vec();
    k.extend_from_slice(&i.to_le_bytes());
    k
}

fn run_id() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    t.as_nanos() as u64 ^ u64::from(std::process::id()) << 48
}

fn value(i: u64, round: u8, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i as u8).wrapping_mul(13).wrapping_add(j as u8).wrapping_add(round)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_writes_and_misses_from_many_tasks() {
    let Some(addr) = server() else { return };
    let c = MemcachedClient::connect(&addr, 2).await.unwrap();
    let run = run_id();
    let tasks: Vec<_> = (0..16u64)
        .map(|t| {
            let c = c.clone();
            tokio::spawn(async move {
                for i in (t * 64)..(t * 64 + 64) {
                    assert_eq!(c.read(&key(run, i)).await.unwrap(), None);
                    c.insert(&key(run, i), &value(i, 0, 64)).await.unwrap();
                }
                for i in (t * 64)..(t * 64 + 64) {
                    c.update(&key(run, i), &value(i, 1, 64)).await.unwrap();
                    assert_eq!(c.read(&key(run, i)).await.unwrap(), Some(value(i, 1, 64)));
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let s = c.stats();
    assert_eq!((s.gets, s.hits, s.misses, s.sets, s.errors), (2048, 1024, 1024, 2048, 0));
    eprintln!("{} requests in {} writes", s.requests_sent, s.writes);
}

#[tokio::test]
async fn binary_and_large_values_and_a_refused_item() {
    let Some(addr) = server() else { return };
    let c = MemcachedClient::connect(&addr, 1).await.unwrap();
    let run = run_id();
    let binary: Vec<u8> = (0..=255u8).chain(b"\r\nEND\r\n".iter().copied()).collect();
    c.insert(&key(run, 1), &binary).await.unwrap();
    assert_eq!(c.read(&key(run, 1)).await.unwrap(), Some(binary));
    c.insert(&key(run, 2), b"").await.unwrap();
    assert_eq!(c.read(&key(run, 2)).await.unwrap(), Some(Vec::new()));
    let large = value(3, 0, 200_000);
    c.insert(&key(run, 3), &large).await.unwrap();
    assert_eq!(c.read(&key(run, 3)).await.unwrap(), Some(large));
    // Over memcached's default 1 MiB item limit: SERVER_ERROR, and the connection goes on.
    let err = c.insert(&key(run, 4), &vec![1; 2 << 20]).await.unwrap_err();
    assert!(matches!(&err, MemcachedError::Server(m) if m.contains("too large")), "{err}");
    assert_eq!(c.read(&key(run, 4)).await.unwrap(), None);
    assert_eq!(c.read(&key(run, 2)).await.unwrap(), Some(Vec::new()));
}
