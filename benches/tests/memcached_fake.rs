//! The memcached client's connection handling against a small in-test server that speaks the
//! same text protocol: FIFO matching of pipelined replies, replies split across reads, and the
//! errors (SERVER_ERROR for one request, a malformed reply or a closed connection for all).

use scalio_bench::systems::memcached::{MemcachedClient, MemcachedError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// How the fake server misbehaves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Answer like memcached.
    Normal,
    /// Hold replies until this many requests arrived on the connection, then answer them all.
    HoldUntil(usize),
    /// Answer `set`s of values longer than 100 bytes with SERVER_ERROR (as memcached does for
    /// items over its size limit).
    SmallItems,
    /// Answer the request whose key is "bad" with garbage.
    GarbageFor(&'static str),
    /// Close the connection on the request whose key is this.
    CloseOn(&'static str),
}

type Store = Arc<Mutex<HashMap<String, Vec<u8>>>>;

async fn fake_memcached(mode: Mode) -> (String, Store) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let store: Store = Arc::default();
    let s = store.clone();
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else { return };
            tokio::spawn(serve(conn, mode, s.clone()));
        }
    });
    (addr, store)
}

async fn serve(conn: TcpStream, mode: Mode, store: Store) {
    let (read, mut write) = conn.into_split();
    let mut read = BufReader::new(read);
    let mut held = Vec::new();
    let mut answered = 0usize;
    let mut line = String::new();
    loop {
        line.clear();
        if read.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let parts: Vec<&str> = line.trim_end().split(' ').collect();
        let key = parts.get(1).copied().unwrap_or("").to_string();
        let mut reply = match parts[0] {
            "get" => match store.lock().unwrap().get(&key) {
                Some(v) => {
                    let mut r = format!("VALUE {key} 0 {}\r\n", v.len()).into_bytes();
                    r.extend_from_slice(v);
                    r.extend_from_slice(b"\r\nEND\r\n");
                    r
                }
                None => b"END\r\n".to_vec(),
            },
            "set" => {
                let len: usize = parts[4].parse().unwrap();
                let mut data = vec![0; len + 2];
                read.read_exact(&mut data).await.unwrap();
                data.truncate(len);
                if mode == Mode::SmallItems && len > 100 {
                    b"SERVER_ERROR object too large for cache\r\n".to_vec()
                } else {
                    store.lock().unwrap().insert(key.clone(), data);
                    b"STORED\r\n".to_vec()
                }
            }
            _ => b"ERROR\r\n".to_vec(),
        };
        match mode {
            Mode::GarbageFor(k) if key_of(&key) == k => reply = b"WHAT?\r\n".to_vec(),
            Mode::CloseOn(k) if key_of(&key) == k => return,
            _ => {}
        }
        held.extend_from_slice(&reply);
        answered += 1;
        if let Mode::HoldUntil(n) = mode {
            if answered < n {
                continue;
            }
        }
        // Reply in small, uneven pieces so that replies straddle the client's reads.
        for piece in held.chunks(7 + answered % 5) {
            if write.write_all(piece).await.is_err() {
                return;
            }
            write.flush().await.unwrap();
        }
        held.clear();
    }
}

/// The binary key the client hex-encoded into `text`.
fn key_of(text: &str) -> String {
    let bytes: Vec<u8> =
        (0..text.len() / 2).map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap()).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn value(i: usize, len: usize) -> Vec<u8> {
    // Includes \r\n bytes: values are binary.
    (0..len).map(|j| [b'\r', b'\n', b'a' + (i % 26) as u8][j % 3]).collect()
}

/// Guards against a hang (a request that never gets its reply) without timing anything.
async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f).await.expect("the client hung")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_share_a_pipelined_connection() {
    let (addr, store) = fake_memcached(Mode::Normal).await;
    let c = MemcachedClient::connect(&addr, 1).await.unwrap();
    let tasks: Vec<_> = (0..32)
        .map(|t| {
            let c = c.clone();
            tokio::spawn(async move {
                for i in (t * 20)..(t * 20 + 20) {
                    let k = format!("key-{i:012}");
                    assert_eq!(c.read(k.as_bytes()).await.unwrap(), None);
                    c.insert(k.as_bytes(), &value(i, 64 + i % 50)).await.unwrap();
                    assert_eq!(c.read(k.as_bytes()).await.unwrap(), Some(value(i, 64 + i % 50)), "{k}");
                }
            })
        })
        .collect();
    within(async {
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await;
    let s = c.stats();
    assert_eq!((s.gets, s.hits, s.misses, s.sets, s.errors), (1280, 640, 640, 640, 0));
    assert_eq!(s.requests_sent, 1920);
    assert!(s.writes <= s.requests_sent);
    assert_eq!(s.connections, 1);
    // Keys travel as hex.
    assert!(store.lock().unwrap().contains_key("6b65792d303030303030303030303030"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_in_flight_together() {
    // The server answers nothing until it has 16 requests: a client that waited for each reply
    // before sending the next request would never finish.
    let (addr, _) = fake_memcached(Mode::HoldUntil(16)).await;
    let c = MemcachedClient::connect(&addr, 1).await.unwrap();
    let reads: Vec<_> = (0..16)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move { c.read(format!("k{i}").as_bytes()).await })
        })
        .collect();
    within(async {
        for r in reads {
            assert_eq!(r.await.unwrap().unwrap(), None);
        }
    })
    .await;
}

#[tokio::test]
async fn server_error_fails_only_its_request() {
    let (addr, _) = fake_memcached(Mode::SmallItems).await;
    let c = MemcachedClient::connect(&addr, 1).await.unwrap();
    let err = c.update(b"big", &[7; 500]).await.unwrap_err();
    assert_eq!(err, MemcachedError::Server("object too large for cache".into()));
    c.update(b"small", &[7; 50]).await.unwrap();
    assert_eq!(c.read(b"small").await.unwrap(), Some(vec![7; 50]));
    assert_eq!(c.read(b"big").await.unwrap(), None);
    assert_eq!(c.stats().errors, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_reply_fails_that_request_and_closes_the_connection() {
    let (addr, _) = fake_memcached(Mode::GarbageFor("bad")).await;
    let c = MemcachedClient::connect(&addr, 1).await.unwrap();
    c.insert(b"good", b"v").await.unwrap();
    let err = within(c.read(b"bad")).await.unwrap_err();
    assert!(matches!(err, MemcachedError::Protocol(_)), "{err}");
    // The stream is out of step: the connection is not used again.
    let err = within(c.read(b"good")).await.unwrap_err();
    assert!(matches!(&err, MemcachedError::Closed(why) if why.contains("malformed")), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_connection_fails_every_request_in_flight() {
    let (addr, _) = fake_memcached(Mode::CloseOn("boom")).await;
    let c = MemcachedClient::connect(&addr, 1).await.unwrap();
    c.insert(b"a", b"1").await.unwrap();
    let err = within(c.read(b"boom")).await.unwrap_err();
    assert!(matches!(err, MemcachedError::Closed(_)), "{err}");
    let err = within(c.insert(b"a", b"2")).await.unwrap_err();
    assert!(matches!(err, MemcachedError::Closed(_)), "{err}");
}

#[tokio::test]
async fn bad_keys_and_addresses_are_refused() {
    let (addr, _) = fake_memcached(Mode::Normal).await;
    let c = MemcachedClient::connect(&addr, 2).await.unwrap();
    assert!(matches!(c.read(b"").await, Err(MemcachedError::Key(_))));
    assert!(matches!(c.insert(&[1; 200], b"v").await, Err(MemcachedError::Key(_))));
    assert_eq!(c.stats().connections, 2);
    assert!(matches!(MemcachedClient::connect(&addr, 0).await, Err(MemcachedError::Config(_))));
    // A port nobody listens on (bound, then released).
    let free = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().to_string();
    assert!(matches!(MemcachedClient::connect(&free, 1).await, Err(MemcachedError::Connect { .. })));
}
