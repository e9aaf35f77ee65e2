//! The LEED+Ditto baseline against an in-process server (the `mem` fabric, and once over the
//! software NIC): what a hit and a miss cost, eviction, and that a damaged object is a miss.

use scalio_bench::systems::ditto::layout::{encode_object, DittoLayout, OBJECT_SIZE};
use scalio_bench::systems::ditto::{leed_client_config, DittoClient, DittoConfig, DittoError, DittoStats};
use scalio_client::Client;
use scalio_common::fabric::{QueuePair, RemoteAddr, WorkRequest};
use scalio_common::rpc::{Op, Stats};
use scalio_server::{Server, ServerConfig};
use std::sync::Arc;

struct TestServer {
    server: Server,
    _dir: tempfile::TempDir,
}

/// A server with a Ditto region of `buckets × assoc` slots (and the Scalio cache off: LEED
/// does not use it).
fn start(buckets: u32, assoc: u8, listen: bool) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let mut c = ServerConfig::default().with_ssd_files(dir.path(), 1, 16 << 20);
    c.ssd_buckets = Some(1024);
    c.workers = 2;
    c.io_threads = 2;
    c.cache.enabled = false;
    c.ditto.enabled = true;
    c.ditto.buckets = buckets;
    c.ditto.assoc = assoc;
    if listen {
        c.listen = Some("127.0.0.1:0".into());
        c.target.enabled = false;
    }
    TestServer { server: Server::start(&c).unwrap(), _dir: dir }
}

impl TestServer {
    fn qp(&self) -> Arc<dyn QueuePair> {
        Arc::new(self.server.connect_mem())
    }

    async fn ditto(&self) -> DittoClient {
        DittoClient::with_queue_pairs(vec![self.qp()]).await.unwrap()
    }

    /// A plain LEED client: writes the store without touching the cache.
    async fn leed(&self) -> Client {
        Client::with_queue_pairs(vec![self.qp()], leed_client_config()).await.unwrap()
    }

    fn stats(&self) -> Stats {
        self.server.stats()
    }
}

fn key(i: u64) -> Vec<u8> {
    format!("user{i:012}").into_bytes()
}

fn value(i: u64, round: u8, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i as u8).wrapping_mul(31).wrapping_add(j as u8).wrapping_add(round)).collect()
}

/// Counter deltas of the client and the server around `f`.
async fn measure<F: std::future::Future<Output = ()>>(
    t: &TestServer,
    c: &DittoClient,
    f: F,
) -> (DittoStats, impl Fn(&str) -> u64) {
    let (c0, s0) = (c.stats(), t.stats());
    f.await;
    let (c1, s1) = (c.stats(), t.stats());
    let d = s1.delta(&s0);
    (since(&c1, &c0), move |n: &str| d.get(n).unwrap_or_else(|| panic!("no counter {n}")))
}

fn since(a: &DittoStats, b: &DittoStats) -> DittoStats {
    DittoStats {
        gets: a.gets - b.gets,
        hits: a.hits - b.hits,
        misses: a.misses - b.misses,
        absent: a.absent - b.absent,
        sets: a.sets - b.sets,
        index_reads: a.index_reads - b.index_reads,
        object_reads: a.object_reads - b.object_reads,
        object_rejects: a.object_rejects - b.object_rejects,
        timestamp_writes: a.timestamp_writes - b.timestamp_writes,
        fills: a.fills - b.fills,
        write_throughs: a.write_throughs - b.write_throughs,
        evictions: a.evictions - b.evictions,
        invalidations: a.invalidations - b.invalidations,
        uncacheable: a.uncacheable - b.uncacheable,
        leed: a.leed.since(&b.leed),
    }
}

#[tokio::test]
async fn read_your_writes_and_absent_keys() {
    let t = start(64, 8, false);
    let c = t.ditto().await;
    assert_eq!(c.read(&key(1)).await.unwrap(), None);
    for i in 0..50 {
        c.insert(&key(i), &value(i, 0, 64)).await.unwrap();
    }
    for i in 0..50 {
        assert_eq!(c.read(&key(i)).await.unwrap(), Some(value(i, 0, 64)), "key {i}");
    }
    for i in 0..50 {
        c.update(&key(i), &value(i, 1, 10 + i as usize)).await.unwrap();
        assert_eq!(c.read(&key(i)).await.unwrap(), Some(value(i, 1, 10 + i as usize)), "key {i} after update");
    }
    let s = c.stats();
    assert_eq!(s.sets, 100);
    assert_eq!(s.write_throughs, 100);
    assert_eq!(s.rpcs(Op::Put), 100, "every insert and update is one LEED SET");
    assert_eq!(t.stats().value("store_batches"), 100, "LEED writes are not batched");
}

#[tokio::test]
async fn a_hit_costs_two_reads_and_no_rpc() {
    let t = start(64, 8, false);
    let c = t.ditto().await;
    c.insert(&key(7), &value(7, 0, 64)).await.unwrap();
    let (d, server) = measure(&t, &c, async {
        assert_eq!(c.read(&key(7)).await.unwrap(), Some(value(7, 0, 64)));
    })
    .await;
    assert_eq!((d.gets, d.hits, d.misses), (1, 1, 0));
    assert_eq!((d.index_reads, d.object_reads), (1, 1), "index bucket, then the object");
    assert_eq!(d.timestamp_writes, 1);
    assert_eq!(d.leed.total_rpcs(), 0);
    assert_eq!(server("rpc_get"), 0);
    assert_eq!(server("ssd_reads_worker"), 0);
}

#[tokio::test]
async fn a_miss_costs_one_get_rpc_and_two_worker_ssd_reads_then_fills() {
    let t = start(64, 8, false);
    t.leed().await.put(&key(3), &value(3, 0, 64)).await.unwrap(); // in the store, not cached
    let c = t.ditto().await;
    let (d, server) = measure(&t, &c, async {
        assert_eq!(c.read(&key(3)).await.unwrap(), Some(value(3, 0, 64)));
    })
    .await;
    assert_eq!((d.gets, d.hits, d.misses, d.fills), (1, 0, 1, 1));
    assert_eq!((d.index_reads, d.object_reads), (1, 0), "no fingerprint matched: no object READ");
    assert_eq!(d.leed.rpcs(Op::Get), 1);
    assert_eq!(d.leed.total_rpcs(), 1);
    assert_eq!(server("rpc_get"), 1);
    assert_eq!(server("ssd_reads_worker"), 2, "LEED: bucket, then value, both read by the worker");
    // The fill makes the next read a hit.
    let (d, server) = measure(&t, &c, async {
        assert_eq!(c.read(&key(3)).await.unwrap(), Some(value(3, 0, 64)));
    })
    .await;
    assert_eq!((d.hits, d.misses), (1, 0));
    assert_eq!(server("rpc_get"), 0);
}

#[tokio::test]
async fn an_unbatched_set_costs_three_worker_ssd_ios() {
    let t = start(64, 8, false);
    let c = t.ditto().await;
    c.insert(&key(1), &value(1, 0, 64)).await.unwrap();
    let (d, server) = measure(&t, &c, async {
        c.update(&key(1), &value(1, 1, 64)).await.unwrap();
    })
    .await;
    assert_eq!(d.leed.rpcs(Op::Put), 1);
    assert_eq!((d.index_reads, d.write_throughs), (1, 1));
    assert_eq!(server("ssd_reads_worker") + server("ssd_writes_worker"), 3, "bucket read, value write, bucket write");
}

#[tokio::test]
async fn a_full_bucket_evicts_its_least_recently_accessed_slot() {
    // One bucket of two slots: every key competes for it.
    let t = start(1, 2, false);
    let leed = t.leed().await;
    for i in 0..3 {
        leed.put(&key(i), &value(i, 0, 64)).await.unwrap();
    }
    let c = t.ditto().await;
    let read = |i: u64| {
        let c = c.clone();
        async move { assert_eq!(c.read(&key(i)).await.unwrap(), Some(value(i, 0, 64)), "key {i}") }
    };
    read(0).await; // fills slot 0
    read(1).await; // fills slot 1
    assert_eq!(c.stats().evictions, 0);
    read(0).await; // a hit: key 0 is now more recent than key 1
    let (d, _) = measure(&t, &c, read(2)).await;
    assert_eq!((d.misses, d.fills, d.evictions), (1, 1, 1), "key 2 evicts the LRU slot, key 1's");
    let (d, _) = measure(&t, &c, read(0)).await;
    assert_eq!(d.hits, 1, "key 0 stayed");
    let (d, server) = measure(&t, &c, read(1)).await;
    assert_eq!((d.hits, d.misses, d.evictions), (0, 1, 1), "key 1 was evicted; its refill evicts key 2");
    assert_eq!(server("rpc_get"), 1);
    let (d, _) = measure(&t, &c, read(0)).await;
    assert_eq!(d.hits, 1);
    let (d, _) = measure(&t, &c, read(2)).await;
    assert_eq!(d.misses, 1);
}

/// Writes `data` at `offset` of the Ditto region with a raw one-sided WRITE.
async fn raw_write(qp: &dyn QueuePair, c: &DittoClient, offset: usize, data: &[u8]) {
    let r = c.region();
    let remote = RemoteAddr { addr: r.addr + offset as u64, rkey: r.rkey };
    qp.post(&[WorkRequest::Write { remote, data }]).await.unwrap();
}

/// The slot a cached key occupies (found by reading the index like a client would).
async fn slot_of(qp: &dyn QueuePair, c: &DittoClient, k: &[u8]) -> u8 {
    let l: &DittoLayout = c.layout();
    let p = l.place(k);
    let r = c.region();
    let bytes = qp
        .post(&[WorkRequest::Read {
            remote: RemoteAddr { addr: r.addr + l.index_offset(p.bucket) as u64, rkey: r.rkey },
            len: l.index_bucket_bytes() as u32,
        }])
        .await
        .unwrap();
    let slots = scalio_bench::systems::ditto::layout::parse_index_bucket(&bytes);
    let found: Vec<u8> = scalio_bench::systems::ditto::layout::candidates(&slots, &p).map(|(s, _)| s).collect();
    assert_eq!(found.len(), 1, "the key is cached exactly once");
    found[0]
}

#[tokio::test]
async fn a_damaged_or_overwritten_object_is_a_miss_never_a_wrong_value() {
    let t = start(16, 4, false);
    let c = t.ditto().await;
    let qp = t.qp();
    let k = key(5);
    c.insert(&k, &value(5, 0, 64)).await.unwrap();
    let bucket = c.layout().place(&k).bucket;
    let object_at = c.layout().object_offset(bucket, slot_of(&*qp, &c, &k).await);

    // Garbage over the object.
    raw_write(&*qp, &c, object_at, &[0xA5; OBJECT_SIZE]).await;
    let (d, server) = measure(&t, &c, async {
        assert_eq!(c.read(&k).await.unwrap(), Some(value(5, 0, 64)));
    })
    .await;
    assert_eq!((d.object_reads, d.object_rejects, d.hits, d.misses), (1, 1, 0, 1));
    assert_eq!(server("rpc_get"), 1, "served by LEED");
    assert_eq!(d.fills, 1, "and refilled");
    assert_eq!(c.read(&k).await.unwrap(), Some(value(5, 0, 64)));
    assert_eq!(c.stats().hits, 1);

    // A consistent object of another key over it (the slot reused behind the entry's back).
    raw_write(&*qp, &c, object_at, &encode_object(&key(6), &value(6, 0, 64))).await;
    let (d, _) = measure(&t, &c, async {
        assert_eq!(c.read(&k).await.unwrap(), Some(value(5, 0, 64)));
    })
    .await;
    assert_eq!((d.object_rejects, d.misses), (1, 1));

    // The key's object with another value length than the entry announces (overwrite in progress).
    raw_write(&*qp, &c, object_at, &encode_object(&k, b"short")).await;
    let (d, _) = measure(&t, &c, async {
        assert_eq!(c.read(&k).await.unwrap(), Some(value(5, 0, 64)));
    })
    .await;
    assert_eq!((d.object_rejects, d.misses), (1, 1));

    // A READ torn by a concurrent overwrite (half old, half new object) is rejected too.
    c.read(&k).await.unwrap(); // cached again
    assert_eq!(c.stats().hits, 2);
    let region = t.server.mem_fabric().regions().clone();
    let (addr, rkey) = (c.region().addr + object_at as u64, c.region().rkey);
    let other = encode_object(&k, &value(5, 9, 64));
    let reads = std::sync::atomic::AtomicUsize::new(0);
    // The hook runs in the middle of every READ: act in the second one, the object's.
    t.server.mem_fabric().faults().set_tear_hook(Some(Arc::new(move || {
        if reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 1 {
            region.write(RemoteAddr { addr, rkey }, &other).unwrap();
        }
    })));
    let d = {
        let before = c.stats();
        let got = c.read(&k).await.unwrap();
        t.server.mem_fabric().faults().set_tear_hook(None);
        assert_eq!(got, Some(value(5, 0, 64)), "LEED's value, not a mix");
        since(&c.stats(), &before)
    };
    assert_eq!((d.object_rejects, d.misses, d.hits), (1, 1, 0));
}

#[tokio::test]
async fn large_values_are_served_but_not_cached() {
    let t = start(64, 8, false);
    let c = t.ditto().await;
    let big = value(9, 0, 200);
    c.insert(&key(9), &big).await.unwrap();
    for _ in 0..2 {
        let (d, server) = measure(&t, &c, async {
            assert_eq!(c.read(&key(9)).await.unwrap(), Some(big.clone()));
        })
        .await;
        assert_eq!((d.hits, d.misses, d.fills, d.uncacheable), (0, 1, 0, 1));
        assert_eq!(server("rpc_get"), 1);
    }
    // A cached small value replaced by a large one is not served from the cache any more.
    c.insert(&key(10), &value(10, 0, 64)).await.unwrap();
    assert_eq!(c.read(&key(10)).await.unwrap(), Some(value(10, 0, 64)));
    let big10 = value(10, 1, 100);
    let (d, _) = measure(&t, &c, async { c.update(&key(10), &big10).await.unwrap() }).await;
    assert_eq!((d.invalidations, d.write_throughs), (1, 0));
    assert_eq!(c.read(&key(10)).await.unwrap(), Some(big10));
    // And back to a small value: cached again.
    c.update(&key(10), &value(10, 2, 8)).await.unwrap();
    let (d, _) = measure(&t, &c, async {
        assert_eq!(c.read(&key(10)).await.unwrap(), Some(value(10, 2, 8)));
    })
    .await;
    assert_eq!(d.hits, 1);
}

#[tokio::test]
async fn a_server_without_the_region_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig::default().with_ssd_files(dir.path(), 1, 16 << 20);
    cfg.ssd_buckets = Some(1024);
    let server = Server::start(&cfg).unwrap();
    assert!(server.info().ditto.is_none());
    let qp: Arc<dyn QueuePair> = Arc::new(server.connect_mem());
    assert!(matches!(DittoClient::with_queue_pairs(vec![qp.clone()]).await, Err(DittoError::NoRegion)));
    // Nor is a client that is not LEED.
    let t = start(8, 8, false);
    let scalio = Client::with_queue_pairs(vec![t.qp()], Default::default()).await.unwrap();
    assert!(matches!(DittoClient::from_client(scalio, vec![t.qp()]), Err(DittoError::Config(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_each_read_their_own_writes() {
    let t = start(32, 4, false); // 128 slots for 200 keys: evictions happen
    let c = t.ditto().await;
    let mut tasks = Vec::new();
    for task in 0..8u64 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..4u8 {
                for i in (task * 25)..(task * 25 + 25) {
                    c.update(&key(i), &value(i, round, 64)).await.unwrap();
                }
                for i in (task * 25)..(task * 25 + 25) {
                    assert_eq!(c.read(&key(i)).await.unwrap(), Some(value(i, round, 64)), "key {i} round {round}");
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let s = c.stats();
    assert_eq!(s.gets, 800);
    assert_eq!(s.hits + s.misses, 800);
    assert!(s.evictions > 0, "{s:?}");
}

#[tokio::test]
async fn over_the_software_nic_a_hit_is_two_nic_reads() {
    let t = start(64, 8, true);
    let addr = t.server.local_addr().unwrap().to_string();
    let c = DittoClient::connect(&addr, DittoConfig { queue_pairs: 2 }).await.unwrap();
    c.insert(&key(1), &value(1, 0, 64)).await.unwrap();
    let (d, server) = measure(&t, &c, async {
        assert_eq!(c.read(&key(1)).await.unwrap(), Some(value(1, 0, 64)));
    })
    .await;
    assert_eq!(d.hits, 1);
    assert_eq!(server("nic_reads"), 2);
    assert_eq!(server("nic_rpcs"), 0);
    assert_eq!(server("rpc_get"), 0);
    assert_eq!(c.read(&key(2)).await.unwrap(), None);
    assert_eq!(t.stats().value("rpc_get"), 1);
}

/// More operations in flight on one queue pair than its send queue has slots, and than the
/// server grants RPCs (1 credit, 4 held behind it): hits (two READs each), misses (RPCs) and
/// write-throughs wait for room (backpressure) instead of failing with `QueueFull`, as the paper
/// scale's 16-DPU-core point (512 operations per queue pair) needs.
#[tokio::test]
async fn operations_beyond_the_send_queue_depth_wait_for_room() {
    use scalio_common::fabric::tcp::{AsyncTcpQueuePair, ConnectOptions};
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig::default().with_ssd_files(dir.path(), 1, 16 << 20);
    cfg.ssd_buckets = Some(1024);
    cfg.cache.enabled = false;
    cfg.ditto.enabled = true;
    cfg.ditto.buckets = 64;
    cfg.ditto.assoc = 8;
    cfg.listen = Some("127.0.0.1:0".into());
    cfg.target.enabled = false;
    cfg.rpc_credits = 1;
    let t = TestServer { server: Server::start(&cfg).unwrap(), _dir: dir };
    let addr = t.server.local_addr().expect("listening");
    let opts = ConnectOptions { send_queue_depth: 2, ..ConnectOptions::default() };
    let qp: Arc<dyn QueuePair> = Arc::new(AsyncTcpQueuePair::connect_with(addr, &opts).unwrap());
    let c = DittoClient::with_queue_pairs(vec![qp]).await.unwrap();
    for i in 0..8 {
        c.insert(&key(i), &value(i, 0, 64)).await.unwrap();
    }
    // Spawned, so that all 64 are in flight at once on the one queue pair: the first reads of
    // each key miss (RPC, then a fill), later ones hit; every 8th is an update.
    let ops: Vec<_> = (0..64u64)
        .map(|n| {
            let c = c.clone();
            tokio::spawn(async move {
                let i = n % 8;
                if n % 8 == 7 {
                    c.update(&key(i), &value(i, 1, 64)).await.map(|()| None)
                } else {
                    c.read(&key(i)).await
                }
            })
        })
        .collect();
    for (n, op) in ops.into_iter().enumerate() {
        let got = op.await.unwrap().unwrap_or_else(|e| panic!("operation {n}: {e}"));
        if let Some(v) = got {
            let i = n as u64 % 8;
            assert!(v == value(i, 0, 64) || v == value(i, 1, 64), "operation {n} read a value never written");
        }
    }
    let s = c.stats();
    assert!(s.hits > 0, "some reads hit the cache: {s:?}");
}
