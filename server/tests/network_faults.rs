//! Network faults against a real server: a client dropped in the middle of its requests, a
//! client that stops reading its socket, a client that takes reservations and never fills.
//! (A server that stops answering: `client/tests/timeouts.rs`.)
//!
//! The `tcp` cases run the real `scalio-server` binary, so that its memory can be measured apart
//! from the test's (`/proc/PID/status`, as in `flood.rs`) and its counters read over STATS.

use scalio_client::{Client, ClientConfig};
use scalio_common::fabric::tcp::{wire, TcpQueuePair};
use scalio_common::fabric::{QueuePair, RemoteAddr};
use scalio_common::rpc::{MetaGetReply, Op, Request, Response, Stats, Status};
use std::io::{Read, Write};
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};
mod support;

const MIB: u64 = 1 << 20;
const T: Duration = Duration::from_secs(20);

fn key(i: u64) -> Vec<u8> {
    format!("net-{i:05}").into_bytes()
}

fn value(i: u64) -> Vec<u8> {
    let mut v = format!("value-{i}:").into_bytes();
    v.resize(40, b'v');
    v
}

/// The server process, killed when dropped (also when a test fails).
struct ServerProcess(Child);

impl ServerProcess {
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The server binary with one SSD and the cache on; `extra` is more TOML.
fn spawn_server(dir: &Path, extra: &str) -> (ServerProcess, String) {
    let (child, addr) = support::spawn_server(
        dir,
        &format!("io_threads = 8\n{extra}"),
        &["--no-target", "--ssds", "1", "--ssd-size", "64MiB", "--workers", "1"],
        "error",
    );
    (ServerProcess(child), addr)
}

/// A field of `/proc/PID/status` in bytes (the kernel reports kB).
fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("no {field} in status"));
    let kb: u64 = line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("a number of kB");
    kb * 1024
}

fn stat(s: &Stats, name: &str) -> u64 {
    s.get(name).unwrap_or_else(|| panic!("no counter {name}"))
}

/// Polls the server's counters until `done` holds for them (or panics after `T`).
async fn wait_for_stats(c: &Client, what: &str, done: impl Fn(&Stats) -> bool) -> Stats {
    let deadline = Instant::now() + T;
    loop {
        let s = c.server_stats().await.expect("STATS");
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: {:?}", s.counters);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends a META_GET as `qp`; returns whether it got a reservation.
fn meta_get_reserves(qp: &dyn QueuePair, key: &[u8]) -> bool {
    let resp = qp.call(&Request::new(Op::MetaGet, key, b"").to_vec()).wait_timeout(T).expect("META_GET");
    let resp = Response::decode(&resp).expect("a response");
    assert_eq!(resp.status, Status::Ok);
    MetaGetReply::decode(resp.body).expect("a META_GET reply").reservation.is_some()
}

/// A client that dies with reservations held and RPCs outstanding (META_GETs and PUTs waiting
/// behind a slow SSD) leaves nothing held: its unfilled reservations end when its connection
/// closes, not when their (here one-minute) leases would run out, META_GETs of it still queued
/// reserve nothing, and its connection is gone from the server's count. Another client then
/// misses, fills and hits on those keys at once. Before the release on close, each of those
/// keys stayed "fill in progress" for a minute: every GET of them went to the SSD.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_dropped_mid_request_leaves_nothing_held() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, addr) = spawn_server(dir.path(), "[cache]\nlease_ms = 60000\n[emulation]\nssd_latency_us = 20000\n");
    let other = Client::connect(&addr, ClientConfig::default()).await.expect("connect");
    const KEYS: u64 = 24;
    for i in 0..KEYS {
        other.put(&key(i), &value(i)).await.unwrap();
    }
    let before = other.server_stats().await.unwrap();

    // The client that dies: reservations on the first half of the keys, then META_GETs of the
    // other half and PUTs pipelined behind the slow SSD, then its connection closes.
    let dying = TcpQueuePair::connect(addr.as_str()).expect("connect");
    for i in 0..KEYS / 2 {
        assert!(meta_get_reserves(&dying, &key(i)), "key {i} reserved");
    }
    let mut outstanding = Vec::new();
    for i in 0..64 {
        outstanding.push(dying.call(&Request::new(Op::Put, &key(1000 + i), &vec![7u8; 8192]).to_vec()));
    }
    for i in KEYS / 2..KEYS {
        outstanding.push(dying.call(&Request::new(Op::MetaGet, &key(i), b"").to_vec()));
    }
    drop(dying);
    drop(outstanding);

    let after = wait_for_stats(&other, "the dead client's connection closes", |s| {
        stat(s, "nic_connections") == stat(&before, "nic_connections") && stat(s, "table_released_on_close") >= KEYS / 2
    })
    .await;
    assert_eq!(stat(&after, "table_released_on_close"), KEYS / 2, "each unfilled reservation, once");
    // Its queued RPCs drain (served, answered into nothing): the worker goes back to idle.
    let drained = wait_for_stats(&other, "the dead client's RPCs drain", |s| {
        let puts = stat(s, "rpc_put") - stat(&before, "rpc_put");
        let refused = stat(s, "rpc_overloaded") + stat(s, "store_overloaded");
        let got = stat(s, "rpc_meta_get") - stat(&before, "rpc_meta_get");
        puts + refused >= 64 && got >= KEYS
    })
    .await;
    eprintln!(
        "released on close: {}, reservations {} -> {}",
        stat(&drained, "table_released_on_close"),
        stat(&before, "table_reservations"),
        stat(&drained, "table_reservations")
    );
    assert_eq!(
        stat(&drained, "table_reservations") - stat(&before, "table_reservations"),
        KEYS / 2,
        "the queued META_GETs of the dead client reserved nothing"
    );

    // Every key: a miss that the other client fills, then a hit.
    for i in 0..KEYS {
        assert_eq!(other.get(&key(i)).await.unwrap(), Some(value(i)), "key {i}");
    }
    let st = other.stats();
    assert_eq!(st.fills, KEYS, "the other client filled every key: {st:?}");
    for i in 0..KEYS {
        assert_eq!(other.get(&key(i)).await.unwrap(), Some(value(i)));
    }
    assert_eq!(other.stats().hits, KEYS, "{:?}", other.stats());
}

/// The same over `mem`: dropping a queue pair is closing its connection.
#[test]
fn a_dropped_mem_queue_pair_releases_its_reservations() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = scalio_server::ServerConfig::default().with_ssd_files(dir.path(), 1, 16 << 20);
    c.cache.buckets = 64;
    c.cache.lease_ms = 60_000;
    c.ssd_buckets = Some(64);
    let server = scalio_server::Server::start(&c).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let qp: std::sync::Arc<dyn QueuePair> = std::sync::Arc::new(server.connect_mem());
    let other = rt.block_on(Client::with_queue_pairs(vec![qp], ClientConfig::default())).unwrap();
    for i in 0..8 {
        rt.block_on(other.put(&key(i), &value(i))).unwrap();
    }
    let dying = server.connect_mem();
    for i in 0..8 {
        assert!(meta_get_reserves(&dying, &key(i)));
    }
    let released = || server.stats().get("table_released_on_close").unwrap();
    assert_eq!(released(), 0);
    drop(dying);
    assert_eq!(released(), 8);
    for i in 0..8 {
        assert_eq!(rt.block_on(other.get(&key(i))).unwrap(), Some(value(i)));
        assert_eq!(rt.block_on(other.get(&key(i))).unwrap(), Some(value(i)));
    }
    assert_eq!((other.stats().fills, other.stats().hits), (8, 8));
}

/// A client that completes the handshake, then posts without ever reading its socket: READs of
/// half a MiB of the cache table each, and RPCs (GETs of a 64 KiB value) up to its credits.
/// Returns how many requests the network took from it in `for_how_long` (the rest would block).
fn slow_reader(addr: &str, table: RemoteAddr, for_how_long: Duration) -> (u64, u64, std::net::TcpStream) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    let mut hello = Vec::new();
    wire::encode_hello(&mut hello, wire::VERSION, &[]);
    s.write_all(&hello).unwrap();
    let mut theirs = [0u8; wire::SERVER_HELLO_LEN];
    s.read_exact(&mut theirs).unwrap();
    s.set_nonblocking(true).unwrap();
    let mut frames = Vec::new();
    for id in 0..200u64 {
        wire::encode_rpc(&mut frames, id, &Request::new(Op::Get, b"big", b"").to_vec());
    }
    let rpcs = 200;
    let mut reads = 0u64;
    let mut at = 0;
    let deadline = Instant::now() + for_how_long;
    while Instant::now() < deadline {
        if at == frames.len() {
            frames.clear();
            at = 0;
            for _ in 0..64 {
                wire::encode_read(&mut frames, reads as u32, wire::WrFlags::LAST, table, 512 << 10);
                reads += 1;
            }
        }
        match s.write(&frames[at..]) {
            Ok(n) => at += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("the server closed the slow reader: {e}"),
        }
    }
    // Requests not wholly sent do not count.
    let unsent = (frames.len() - at).div_ceil(wire::WR_HEADER_LEN) as u64;
    (reads - unsent.min(reads), rpcs, s)
}

/// A client that stops reading its socket while it keeps posting cannot make the server hold
/// more than its per-connection bounds (the NIC stops reading a connection whose responses
/// pile up past `out_high_water`; its RPC replies are bounded by its credits), and the other
/// clients go on completing their operations meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_held_to_its_bounds_and_others_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let (server, addr) = spawn_server(dir.path(), "[cache]\nbuckets = 8192\n");
    let pid = server.pid();
    let setup = Client::connect(&addr, ClientConfig::default()).await.expect("connect");
    setup.put(b"big", &vec![9u8; 64 << 10]).await.unwrap();
    for i in 0..64 {
        setup.put(&key(i), &value(i)).await.unwrap();
    }
    let t = setup.info().table.expect("cache on");
    let idle = proc_status_bytes(pid, "VmRSS:");

    // Four honest clients, each doing GETs and PUTs for as long as the slow reader posts.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut honest = Vec::new();
    for c in 0..4u64 {
        let client = Client::connect(&addr, ClientConfig::default()).await.expect("connect");
        let stop = stop.clone();
        honest.push(tokio::spawn(async move {
            let mut ops = 0u64;
            let mut n = c;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let i = n % 64;
                if n.is_multiple_of(4) {
                    client.put(&key(i), &value(i)).await.expect("PUT beside the slow reader");
                } else {
                    assert_eq!(client.get(&key(i)).await.expect("GET beside the slow reader"), Some(value(i)));
                }
                n += 5;
                ops += 1;
            }
            ops
        }));
    }
    let remote = RemoteAddr { addr: t.addr, rkey: t.rkey };
    let addr2 = addr.clone();
    let reader = tokio::task::spawn_blocking(move || slow_reader(&addr2, remote, Duration::from_secs(4)));
    let (reads, rpcs, stream) = reader.await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut ops = Vec::new();
    for h in honest {
        ops.push(h.await.expect("an honest client"));
    }
    let peak = proc_status_bytes(pid, "VmHWM:");
    let st = setup.server_stats().await.unwrap();
    let offered = reads * (512 << 10) + rpcs * (64 << 10);
    eprintln!(
        "slow reader: {reads} READs of 512 KiB and {rpcs} GETs of 64 KiB taken ({} MiB of responses offered), \
         NIC returned {} MiB to all READs; honest clients' operations meanwhile {ops:?}; \
         server RSS idle {} MiB, peak {} MiB",
        offered / MIB,
        stat(&st, "nic_bytes_read") / MIB,
        idle / MIB,
        peak / MIB
    );
    assert!(offered > 512 * MIB, "the slow reader asked for far more than the bound ({} MiB)", offered / MIB);
    // What the NIC served at all (the honest clients' hits included) is what the slow reader's
    // socket buffers and the NIC's output bound hold, not what it asked for.
    assert!(stat(&st, "nic_bytes_read") < 128 * MIB, "the NIC stopped serving the slow reader: {:?}", st.counters);
    for (c, n) in ops.iter().enumerate() {
        assert!(*n >= 50, "honest client {c} completed only {n} operations beside the slow reader");
    }
    // Per connection: out_high_water (4 MiB) plus one response over it, plus its RPC replies
    // (200 x 64 KiB); the rest is the allocator's slack.
    assert!(
        peak.saturating_sub(idle) < 64 * MIB,
        "server memory grew by {} MiB (idle {} MiB, peak {} MiB)",
        peak.saturating_sub(idle) / MIB,
        idle / MIB,
        peak / MIB
    );
    // The slow reader is still connected (nothing it did was a violation); when it goes, so does
    // its connection.
    assert_eq!(stat(&st, "nic_connections"), 2);
    drop(stream);
    wait_for_stats(&setup, "the slow reader's connection closes", |s| stat(s, "nic_connections") == 1).await;
}

/// A client that reserves and never fills holds the keys only for the lease: meanwhile the
/// others read the value from the SSD (correct, uncached), then the first META_GET after the
/// lease takes the slot over, fills it and hits. (The per-client quota that bounds how many
/// such reservations one client can hold: `client/tests/trust.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_never_filled_expire_by_lease() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, addr) = spawn_server(dir.path(), "[cache]\nlease_ms = 300\n");
    let other = Client::connect(&addr, ClientConfig::default()).await.expect("connect");
    const KEYS: u64 = 16;
    for i in 0..KEYS {
        other.put(&key(i), &value(i)).await.unwrap();
    }
    let hog = TcpQueuePair::connect(addr.as_str()).expect("connect");
    let reserved_at = Instant::now();
    for i in 0..KEYS {
        assert!(meta_get_reserves(&hog, &key(i)));
    }
    for i in 0..KEYS {
        assert_eq!(other.get(&key(i)).await.unwrap(), Some(value(i)));
    }
    let during = other.stats();
    assert!(reserved_at.elapsed() < Duration::from_millis(300), "the lease ran out during the test's first reads");
    assert_eq!((during.fills, during.hits, during.no_reservation), (0, 0, KEYS), "{during:?}");
    tokio::time::sleep(Duration::from_millis(350).saturating_sub(reserved_at.elapsed())).await;
    for i in 0..KEYS {
        assert_eq!(other.get(&key(i)).await.unwrap(), Some(value(i)));
        assert_eq!(other.get(&key(i)).await.unwrap(), Some(value(i)));
    }
    let after = other.stats().since(&during);
    assert_eq!((after.fills, after.hits), (KEYS, KEYS), "{after:?}");
    let st = other.server_stats().await.unwrap();
    assert_eq!(stat(&st, "table_expired_reclaims"), KEYS);
    assert_eq!(stat(&st, "table_released_on_close"), 0, "the hog is still connected");
    drop(hog);
}

/// A server that stops answering in the middle of a session (the process stopped with SIGSTOP,
/// its sockets open): every operation fails with a timeout, none hangs; once the server runs
/// again, the same client works again. (A server that never answers after its handshake:
/// `client/tests/timeouts.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stops_answering_gives_timeouts_then_recovers() {
    use scalio_client::ClientError;
    use scalio_common::fabric::FabricError;
    let dir = tempfile::tempdir().unwrap();
    let (server, addr) = spawn_server(dir.path(), "");
    let timeout = Duration::from_millis(300);
    let c = Client::connect(&addr, ClientConfig { op_timeout: Some(timeout), ..ClientConfig::default() })
        .await
        .expect("connect");
    c.put(b"cached", b"v1").await.unwrap();
    assert_eq!(c.get(b"cached").await.unwrap(), Some(b"v1".to_vec()));
    let pid = server.pid() as libc::pid_t;
    // SAFETY: sends a signal to the server process this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    // The signal is delivered asynchronously: wait until every thread is stopped.
    let stopped = || {
        std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().all(|t| {
            let stat = std::fs::read_to_string(t.unwrap().path().join("stat")).unwrap_or_default();
            stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('T'))
        })
    };
    while !stopped() {
        std::thread::sleep(Duration::from_millis(1));
    }
    let timed = |started: Instant, what: &str, r: Result<(), ClientError>| {
        assert_eq!(r, Err(ClientError::Fabric(FabricError::Timeout)), "{what} on a stopped server");
        let waited = started.elapsed();
        assert!(waited >= timeout && waited < Duration::from_secs(10), "{what} waited {waited:?}");
    };
    let started = Instant::now();
    timed(started, "GET", c.get(b"cached").await.map(drop));
    let started = Instant::now();
    timed(started, "PUT", c.put(b"cached", b"v2").await);
    let started = Instant::now();
    timed(started, "DELETE", c.delete(b"other").await.map(drop));
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    // The PUT that timed out may or may not have taken effect; either way the key reads back
    // one of the two values, and new writes succeed.
    let deadline = Instant::now() + T;
    loop {
        match c.put(b"after", b"x").await {
            Ok(()) => break,
            Err(e) => assert!(Instant::now() < deadline, "the client does not recover: {e}"),
        }
    }
    let v = c.get(b"cached").await.unwrap();
    assert!(v == Some(b"v1".to_vec()) || v == Some(b"v2".to_vec()), "{v:?}");
    assert_eq!(c.get(b"after").await.unwrap(), Some(b"x".to_vec()));
}
