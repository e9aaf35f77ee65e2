//! End to end: a client and an in-process server, over `mem` and over `tcp` on loopback.

mod common;

use common::{key, start};
use scalio_client::{BlockPath, ClientConfig, ClientError, ReadPath};
use scalio_common::rpc::Op;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_update_delete_over_mem() {
    let s = start(2, false, |_| {});
    let c = s.mem_client(ClientConfig::default()).await;
    assert_eq!(c.get(b"nothing").await.unwrap(), None);
    c.put(b"a", b"1").await.unwrap();
    assert_eq!(c.get(b"a").await.unwrap(), Some(b"1".to_vec()));
    assert!(c.update(b"a", b"2").await.unwrap());
    assert!(!c.update(b"zz", b"2").await.unwrap(), "update of a missing key changes nothing");
    assert_eq!(c.get(b"zz").await.unwrap(), None);
    assert_eq!(c.get(b"a").await.unwrap(), Some(b"2".to_vec()));
    assert!(c.delete(b"a").await.unwrap());
    assert!(!c.delete(b"a").await.unwrap());
    assert_eq!(c.get(b"a").await.unwrap(), None);
    // Values larger than a cache slot are stored and served from SSD.
    let big: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
    c.put(b"big", &big).await.unwrap();
    assert_eq!(c.get(b"big").await.unwrap(), Some(big.clone()));
    assert_eq!(c.get(b"big").await.unwrap(), Some(big));
    // Bad input is a typed error, not a panic.
    assert!(matches!(c.put(&[0u8; 21], b"x").await, Err(ClientError::Key(_))));
    assert!(matches!(c.get(b"").await, Err(ClientError::Key(_))));
}

/// A hit costs one READ and no RPC; a miss costs exactly one RPC (META_GET) and no SSD read by
/// the server's workers — the client reads the SSD itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hit_and_miss_costs_over_tcp() {
    let s = start(2, true, |_| {});
    let c = s.tcp_client(ClientConfig::default()).await;
    assert_eq!(c.block_path(), "nvme-tcp", "a remote server's SSDs are read over NVMe/TCP");
    for i in 0..50 {
        c.put(&key(i), format!("value-{i}").as_bytes()).await.unwrap();
    }
    for i in 0..50 {
        let (c0, worker_reads, nic_reads) = (c.stats(), s.stat("ssd_reads_worker"), s.stat("nic_reads"));
        let target_reads = s.stat("ssd_reads_target");
        let rpcs = s.stat("rpc_meta_get") + s.stat("rpc_get");
        assert_eq!(c.get(&key(i)).await.unwrap(), Some(format!("value-{i}").into_bytes()));
        let d = c.stats().since(&c0);
        assert_eq!((d.misses, d.hits), (1, 0), "first read of key {i} misses");
        assert_eq!(d.total_rpcs(), 1, "a miss is one RPC");
        assert_eq!(d.rpcs(Op::MetaGet), 1);
        assert_eq!(d.block_reads, 2, "the client read the bucket and the value itself");
        assert_eq!(s.stat("ssd_reads_worker"), worker_reads, "no worker SSD read for a miss");
        assert_eq!(s.stat("ssd_reads_target"), target_reads + 2, "the NVMe/TCP target served both reads");
        assert_eq!(s.stat("rpc_meta_get") + s.stat("rpc_get"), rpcs + 1);
        assert_eq!(s.stat("nic_reads"), nic_reads + 1, "one probe READ");
        assert_eq!(d.fills, 1);
    }
    // Fills are posted without waiting; they land before later requests on the same queue pair.
    for i in 0..50 {
        let (c0, nic_reads, rpcs) = (c.stats(), s.stat("nic_reads"), s.stat("nic_rpcs"));
        assert_eq!(c.get(&key(i)).await.unwrap(), Some(format!("value-{i}").into_bytes()));
        let d = c.stats().since(&c0);
        assert_eq!((d.hits, d.misses, d.total_rpcs(), d.probes, d.block_reads), (1, 0, 0, 1, 0), "key {i}");
        assert_eq!(s.stat("nic_reads"), nic_reads + 1, "a hit is one READ");
        assert_eq!(s.stat("nic_rpcs"), rpcs, "a hit costs the server no RPC");
    }
}

/// The design stages: 0 reads through the server (2 worker SSD reads per GET), 1 offloads the
/// read without caching, 2+ cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_paths() {
    let s = start(1, false, |_| {});
    let writer = s.mem_client(ClientConfig { batched_writes: false, ..Default::default() }).await;
    writer.put(b"k", b"v").await.unwrap();

    let stage0 = s.mem_client(ClientConfig { read_path: ReadPath::Server, ..Default::default() }).await;
    let before = s.stat("ssd_reads_worker");
    assert_eq!(stage0.get(b"k").await.unwrap(), Some(b"v".to_vec()));
    assert_eq!(s.stat("ssd_reads_worker"), before + 2, "LEED-style: bucket and value read by a worker");
    assert_eq!(stage0.stats().rpcs(Op::Get), 1);
    assert_eq!(stage0.get(b"missing").await.unwrap(), None);

    let stage1 = s.mem_client(ClientConfig { read_path: ReadPath::Offloaded, ..Default::default() }).await;
    let reservations = s.stat("table_reservations");
    for _ in 0..3 {
        assert_eq!(stage1.get(b"k").await.unwrap(), Some(b"v".to_vec()));
    }
    let d = stage1.stats();
    assert_eq!((d.rpcs(Op::MetaGet), d.block_reads, d.probes, d.hits), (3, 6, 0, 0));
    assert_eq!(s.stat("table_reservations"), reservations, "stage 1 never reserves a slot");
    assert_eq!(s.stat("ssd_reads_worker"), before + 2, "stage 1 reads cost the workers no SSD I/O");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_invalidate_cached_values() {
    let s = start(2, true, |_| {});
    let a = s.tcp_client(ClientConfig::default()).await;
    let b = s.tcp_client(ClientConfig::default()).await;
    a.put(b"key", b"one").await.unwrap();
    assert_eq!(b.get(b"key").await.unwrap(), Some(b"one".to_vec()));
    assert_eq!(b.get(b"key").await.unwrap(), Some(b"one".to_vec()));
    assert_eq!(b.stats().hits, 1);
    a.put(b"key", b"two").await.unwrap();
    assert_eq!(b.get(b"key").await.unwrap(), Some(b"two".to_vec()), "no stale hit after an acknowledged write");
    a.delete(b"key").await.unwrap();
    assert_eq!(b.get(b"key").await.unwrap(), None);
    assert!(s.stat("table_invalidations") >= 2);
}

/// Several clients on loopback, each with many operations in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_many_in_flight() {
    let s = start(3, true, |c| c.nic_threads = 2);
    let mut tasks = Vec::new();
    for t in 0..4u64 {
        let c = s.tcp_client(ClientConfig { queue_pairs: 2, ..Default::default() }).await;
        for j in 0..8u64 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..40u64 {
                    let k = key(t * 1000 + j * 100 + i);
                    c.put(&k, &k).await.unwrap();
                    assert_eq!(c.get(&k).await.unwrap(), Some(k.clone()));
                    assert_eq!(c.get(&k).await.unwrap(), Some(k));
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(s.stat("rpc_put"), 4 * 8 * 40);
    assert!(s.stat("store_batches") < 4 * 8 * 40, "writes were batched");
}

/// The `direct` block path (same host) works alongside the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_block_path_over_tcp() {
    let s = start(2, true, |_| {});
    let paths = s.server.info().ssds.iter().map(|d| d.path.clone().into()).collect();
    let c = s.tcp_client(ClientConfig { block: BlockPath::Direct(paths), ..Default::default() }).await;
    assert_eq!(c.block_path(), "direct");
    c.put(b"k", b"v").await.unwrap();
    let target_reads = s.stat("ssd_reads_target");
    assert_eq!(c.get(b"k").await.unwrap(), Some(b"v".to_vec()));
    assert_eq!(c.stats().block_reads, 2);
    assert_eq!(s.stat("ssd_reads_target"), target_reads, "read from the files, not through the target");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_off_still_serves_everything() {
    let s = start(1, false, |c| c.cache.enabled = false);
    let c = s.mem_client(ClientConfig::default()).await;
    c.put(b"x", b"y").await.unwrap();
    assert_eq!(c.get(b"x").await.unwrap(), Some(b"y".to_vec()));
    assert_eq!(c.stats().probes, 0);
}

#[test]
fn blocking_client() {
    let s = start(1, true, |_| {});
    let addr = s.server.local_addr().unwrap().to_string();
    let c = scalio_client::blocking::Client::connect(&addr, ClientConfig::default()).unwrap();
    c.put(b"k", b"v").unwrap();
    assert_eq!(c.get(b"k").unwrap(), Some(b"v".to_vec()));
    assert!(c.delete(b"k").unwrap());
    let stats = c.server_stats().unwrap();
    assert_eq!(stats.value("rpc_put"), 1);
}

/// A block path that answers with fewer bytes than asked for.
struct ShortReads;

impl scalio_common::block::BlockReader for ShortReads {
    fn read_blocks(&self, _ssd: u16, _lba: u64, count: u32) -> scalio_common::block::BlockFuture<'_> {
        Box::pin(std::future::ready(Ok(vec![0u8; count as usize * 512 - 1])))
    }
    fn kind(&self) -> &'static str {
        "short"
    }
}

/// A block device or target that returns short data is a clear error, not a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_block_reads_are_an_error() {
    let s = start(1, false, |_| {});
    let writer = s.mem_client(ClientConfig::default()).await;
    writer.put(b"k", b"v").await.unwrap();
    let block = BlockPath::Custom(std::sync::Arc::new(ShortReads));
    let c = s.mem_client(ClientConfig { read_path: ReadPath::Offloaded, block, ..Default::default() }).await;
    match c.get(b"k").await {
        Err(ClientError::Block(scalio_common::block::BlockError::Protocol(m))) => assert!(m.contains("asked for 512")),
        other => panic!("expected a block protocol error, got {other:?}"),
    }
}

/// Over the server's limits a write is refused with a typed, retryable error, and nothing of it
/// is stored; retried later, it succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_a_typed_retryable_error() {
    let s = common::start(1, false, |c| {
        c.workers = 1;
        c.limits.pending_writes = 1;
        c.write.batch = 1;
        c.write.max_inflight = 1;
        c.emulation.ssd_latency_us = 50_000;
    });
    let client = s.mem_client(ClientConfig::default()).await;
    let puts: Vec<_> = (0..16u64)
        .map(|i| {
            let c = client.clone();
            tokio::spawn(async move { (i, c.put(&key(i), b"v").await) })
        })
        .collect();
    let mut refused = Vec::new();
    for p in puts {
        let (i, r) = p.await.unwrap();
        match r {
            Ok(()) => {}
            Err(e) => {
                assert!(matches!(e, ClientError::Unavailable(_)), "key {i}: {e}");
                assert!(e.is_retryable());
                refused.push(i);
            }
        }
    }
    assert!(!refused.is_empty(), "16 concurrent writes against a queue of 1 and a 50 ms SSD");
    assert!(s.stat("store_overloaded") >= refused.len() as u64);
    for i in refused {
        assert_eq!(client.get(&key(i)).await.unwrap(), None, "a refused write stored nothing");
        client.put(&key(i), b"v").await.unwrap();
        assert_eq!(client.get(&key(i)).await.unwrap(), Some(b"v".to_vec()));
    }
}

/// A full SSD refuses writes with a typed error; what is stored keeps being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_ssd_is_a_typed_error_and_reads_go_on() {
    let s = start(1, false, |c| {
        c.ssds[0].size = Some(1 << 20);
        c.ssd_buckets = Some(64);
    });
    let client = s.mem_client(ClientConfig::default()).await;
    let value = vec![7u8; 4000];
    let mut stored = Vec::new();
    let mut full = None;
    for i in 0..400 {
        match client.put(&key(i), &value).await {
            Ok(()) => stored.push(i),
            Err(e) => {
                full = Some(e);
                break;
            }
        }
    }
    let e = full.expect("1.6 MB of values do not fit on a 1 MiB SSD");
    assert!(matches!(&e, ClientError::NoSpace(m) if m.contains("SSD 0 is full")), "{e}");
    assert!(!e.is_retryable());
    assert!(!stored.is_empty());
    for i in stored {
        assert_eq!(client.get(&key(i)).await.unwrap(), Some(value.clone()), "key {i}");
    }
}

/// A bit flipped on the SSD under a stored value: both read paths report the SSD and the block
/// and never return the bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_block_is_reported_with_its_block_never_served() {
    let s = start(1, true, |_| {});
    let client = s.tcp_client(ClientConfig::default()).await;
    let marker = b"MARKER-of-the-value-to-corrupt-";
    let mut value = marker.to_vec();
    value.resize(3000, b'v');
    client.put(b"victim", &value).await.unwrap();
    client.put(b"bystander", b"fine").await.unwrap();
    // Find the value on the SSD file and flip one bit in it.
    let path = std::path::PathBuf::from(&s.server.info().ssds[0].path);
    let mut image = std::fs::read(&path).unwrap();
    let at = image.windows(marker.len()).position(|w| w == marker).expect("the value is on the SSD");
    image[at + 10] ^= 0x01;
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&image[at..at + 512], at as u64).unwrap();
        f.sync_all().unwrap();
    }
    let marker_block = (at / 512) as u64;
    match client.get(b"victim").await {
        Err(ClientError::Inconsistent { ssd: 0, block, .. }) => {
            assert!(block <= marker_block && marker_block - block < 8, "block {block}, marker in {marker_block}")
        }
        other => panic!("expected a report of the corrupt block, got {:?}", other.map(|v| v.map(|v| v.len()))),
    }
    let server_path = s.tcp_client(ClientConfig { read_path: ReadPath::Server, ..Default::default() }).await;
    match server_path.get(b"victim").await {
        Err(ClientError::Server { status: scalio_common::rpc::Status::Io, message }) => {
            assert!(message.starts_with("SSD 0 blocks "), "{message}")
        }
        other => panic!("expected a report of the corrupt block, got {:?}", other.map(|v| v.map(|v| v.len()))),
    }
    assert_eq!(client.get(b"bystander").await.unwrap(), Some(b"fine".to_vec()));
}

/// Values over the connection's largest message (64 KiB by default) move by rendezvous: written
/// into a staging slot the server grants, then named in a small message. Up to the largest
/// value, over both fabrics, three writers at once; every value reads back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_move_by_rendezvous() {
    use scalio_common::ssd::MAX_VALUE_LEN;
    let s = start(1, true, |c| c.ssds[0].size = Some(256 << 20));
    let value = |len: usize, seed: usize| -> Vec<u8> { (0..len).map(|b| (b * 13 + seed) as u8).collect() };
    for c in [s.mem_client(ClientConfig::default()).await, s.tcp_client(ClientConfig::default()).await] {
        let delivered = s.stat("rendezvous_delivered");
        let (a, b, m) = (value(100_000, 1), value(65_536, 2), value(MAX_VALUE_LEN, 3));
        let (ra, rb, rm) = tokio::join!(c.put(b"large-a", &a), c.put(b"large-b", &b), c.put(b"large-m", &m));
        ra.expect("put a");
        rb.expect("put b");
        rm.expect("put m");
        assert_eq!(c.get(b"large-a").await.unwrap(), Some(a));
        assert_eq!(c.get(b"large-b").await.unwrap(), Some(b));
        assert_eq!(c.get(b"large-m").await.unwrap(), Some(m));
        assert!(c.update(b"large-a", &vec![5u8; 300_000]).await.unwrap());
        assert_eq!(c.get(b"large-a").await.unwrap(), Some(vec![5u8; 300_000]));
        // All four writes are over 64 KiB (the 65,536-byte value too, with its header).
        assert_eq!(s.stat("rendezvous_delivered") - delivered, 4, "the large writes went by rendezvous");
        assert_eq!(s.stat("rendezvous_slots_in_use"), 0);
        let too_large = c.put(b"huge", &vec![0u8; MAX_VALUE_LEN + 1]).await;
        assert!(matches!(too_large, Err(ClientError::ValueTooLarge(_))), "{too_large:?}");
    }
}
