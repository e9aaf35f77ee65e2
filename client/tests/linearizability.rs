//! Concurrent readers and writers never observe a value that was never written, nor one older
//! than the last write acknowledged before the read began — with READs torn by injected pauses,
//! a small cache that keeps evicting and re-reserving slots, and a small SSD whose garbage
//! collection keeps moving data under the readers.

mod common;

use common::start;
use scalio_client::{Client, ClientConfig};
use scalio_common::key::TableKey;
use scalio_common::table::{encode_fill, off};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A logical clock: every event gets a distinct, totally ordered time.
static CLOCK: AtomicU64 = AtomicU64::new(1);
fn tick() -> u64 {
    CLOCK.fetch_add(1, Ordering::SeqCst)
}

#[derive(Debug, Clone)]
struct Write {
    seq: u64,
    invoked: u64,
    acked: u64,
}

#[derive(Debug, Clone)]
struct Read {
    key: usize,
    seq: Option<u64>,
    invoked: u64,
    returned: u64,
}

fn value(key: usize, seq: u64) -> Vec<u8> {
    // Sizes vary so that some values are too large to be cached and some are not.
    let mut v = format!("{key}:{seq}:").into_bytes();
    let len = if seq.is_multiple_of(5) { 100 } else { 20 + (seq % 40) as usize };
    v.resize(len, b'.');
    v
}

fn parse(key: usize, v: &[u8]) -> u64 {
    let s = std::str::from_utf8(v).expect("utf8 value");
    let mut parts = s.split(':');
    let k: usize = parts.next().unwrap().parse().expect("key part");
    assert_eq!(k, key, "read another key's value: {s}");
    let seq = parts.next().unwrap().parse().expect("seq part");
    assert_eq!(v, value(key, seq), "a value that was never written");
    seq
}

/// Runs writers (each owning some keys, writing them in sequence) and readers (reading every
/// key) concurrently, then checks the history.
async fn run(clients: Vec<Client>, keys: usize, writes_per_key: u64) {
    let writers_done = Arc::new(AtomicBool::new(false));
    // Seq 0 of every key, acknowledged before any reader starts.
    let mut writes: Vec<Vec<Write>> = Vec::new();
    for k in 0..keys {
        let invoked = tick();
        clients[0].put(format!("key{k}").as_bytes(), &value(k, 0)).await.unwrap();
        writes.push(vec![Write { seq: 0, invoked, acked: tick() }]);
    }
    let writer_count = 2;
    let mut writer_tasks = Vec::new();
    for w in 0..writer_count {
        let c = clients[w % clients.len()].clone();
        writer_tasks.push(tokio::spawn(async move {
            let mut log: Vec<(usize, Write)> = Vec::new();
            for seq in 1..=writes_per_key {
                for k in (w..keys).step_by(writer_count) {
                    let invoked = tick();
                    c.put(format!("key{k}").as_bytes(), &value(k, seq)).await.unwrap();
                    log.push((k, Write { seq, invoked, acked: tick() }));
                }
            }
            log
        }));
    }
    let mut reader_tasks = Vec::new();
    for r in 0..4 {
        let c = clients[(r + 1) % clients.len()].clone();
        let done = writers_done.clone();
        reader_tasks.push(tokio::spawn(async move {
            let mut log = Vec::new();
            let mut i = r;
            while !done.load(Ordering::Relaxed) {
                let k = i % keys;
                i += 7;
                let invoked = tick();
                let got = c.get(format!("key{k}").as_bytes()).await.unwrap();
                let returned = tick();
                log.push(Read { key: k, seq: got.map(|v| parse(k, &v)), invoked, returned });
            }
            log
        }));
    }
    for t in writer_tasks {
        for (k, w) in t.await.unwrap() {
            writes[k].push(w);
        }
    }
    writers_done.store(true, Ordering::Relaxed);
    let mut reads = Vec::new();
    for t in reader_tasks {
        reads.extend(t.await.unwrap());
    }
    assert!(reads.len() > 100, "readers made progress ({} reads)", reads.len());
    check(&writes, &reads);
}

fn check(writes: &[Vec<Write>], reads: &[Read]) {
    let mut by_key: HashMap<usize, Vec<&Read>> = HashMap::new();
    for r in reads {
        let ws = &writes[r.key];
        let seq = r.seq.expect("every key was written before the readers started");
        // Not older than the last write acknowledged before the read began.
        let floor = ws.iter().filter(|w| w.acked < r.invoked).map(|w| w.seq).max().unwrap_or(0);
        assert!(seq >= floor, "key {}: read seq {seq}, but seq {floor} was acknowledged before the read", r.key);
        // Not a write that had not even started when the read returned.
        let w = ws.iter().find(|w| w.seq == seq).expect("the write exists");
        assert!(w.invoked < r.returned, "key {}: read seq {seq} before it was written", r.key);
        by_key.entry(r.key).or_default().push(r);
    }
    // Reads that do not overlap see non-decreasing values.
    for (k, mut rs) in by_key {
        rs.sort_by_key(|r| r.invoked);
        let mut done: Vec<&Read> = Vec::new(); // reads, by return time, to compare against
        for r in rs {
            let newest_before = done.iter().filter(|p| p.returned < r.invoked).map(|p| p.seq.unwrap()).max();
            if let Some(prev) = newest_before {
                assert!(r.seq.unwrap() >= prev, "key {k}: a later read saw seq {:?} after {prev}", r.seq);
            }
            done.push(r);
        }
    }
}

/// Over `mem`, with every READ paused in the middle so that concurrent fills, invalidations,
/// reservations and evictions tear it; a 2-slot cache over 8 keys; a 512 KiB SSD with GC.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn linearizable_with_torn_reads_and_gc() {
    let s = start(1, false, common::stress);
    s.server.mem_fabric().faults().set_read_pause(Duration::from_micros(30));
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(s.mem_client(ClientConfig::default()).await);
    }
    run(clients, 8, 250).await;
    assert!(s.stat("gc_value_steps") > 0, "garbage collection ran during the test");
    assert!(s.stat("table_evictions") + s.stat("table_expired_reclaims") > 0, "slots were re-bound");
    assert!(s.stat("table_invalidations") > 0);
}

/// The same over the software NIC: real sockets, NIC threads serving READs while workers write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn linearizable_over_tcp() {
    let s = start(2, true, |c| {
        c.cache.buckets = 2;
        c.cache.assoc = 2;
        c.write.batch = 4;
        c.write.batch_timeout_us = 200;
    });
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(s.tcp_client(ClientConfig::default()).await);
    }
    run(clients, 10, 300).await;
}

/// A READ torn deterministically: in the middle of a probe, the server re-binds the key's slot
/// to another key and a client fills it. The reader must not return the other key's bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_torn_by_a_rebinding_is_detected() {
    let s = start(1, false, |c| {
        c.cache.buckets = 1;
        c.cache.assoc = 1;
        c.cache.lease_ms = 0;
    });
    let c = s.mem_client(ClientConfig::default()).await;
    c.put(b"victim", b"victim-value").await.unwrap();
    c.put(b"other", b"other-value").await.unwrap();
    assert_eq!(c.get(b"victim").await.unwrap(), Some(b"victim-value".to_vec())); // fills the slot
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
        assert_eq!(c.get(b"other").await.unwrap(), Some(b"other-value".to_vec()));
    }
    assert!(!armed.load(Ordering::SeqCst), "the tear happened");
}
