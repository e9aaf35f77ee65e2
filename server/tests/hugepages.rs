//! `cache.hugepages = true`: the cache table lives on 2 MiB hugepages and serves hits from
//! there, or, where the pool has too few pages, the server refuses to start with the typed
//! reason. `SCALIO_REQUIRE_HUGEPAGES=1` (the CI guest reserves pages) makes the first required.

use scalio_client::{Client, ClientConfig};
use scalio_common::fabric::{HugePageError, QueuePair};
use scalio_server::{Server, ServerConfig, ServerError};
use std::sync::Arc;

fn free_hugepages() -> usize {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let line = info.lines().find(|l| l.starts_with("HugePages_Free:"));
    line.and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0)
}

#[test]
fn cache_table_on_hugepages_or_a_typed_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = ServerConfig::default().with_ssd_files(dir.path(), 1, 16 << 20);
    c.cache.buckets = 1024;
    c.cache.hugepages = true;
    c.ssd_buckets = Some(64);
    let free = free_hugepages();
    let server = match Server::start(&c) {
        Ok(s) => s,
        Err(ServerError::HugePages(e @ HugePageError::NotReserved { needed })) => {
            assert!(free < needed, "refused although {free} hugepages were free: {e}");
            assert!(std::env::var("SCALIO_REQUIRE_HUGEPAGES").as_deref() != Ok("1"), "required, but {e}");
            eprintln!("skipped the served half: {e}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let table = server.table().expect("the cache is on");
    assert!(table.region().is_on_hugepages());
    assert_eq!(table.region().addr() % scalio_common::fabric::HUGEPAGE as u64, 0);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let qp: Arc<dyn QueuePair> = Arc::new(server.connect_mem());
    let client = rt.block_on(Client::with_queue_pairs(vec![qp], ClientConfig::default())).unwrap();
    for i in 0..20u32 {
        rt.block_on(client.put(format!("huge-{i}").as_bytes(), &i.to_le_bytes().repeat(10))).unwrap();
    }
    for _ in 0..2 {
        for i in 0..20u32 {
            let got = rt.block_on(client.get(format!("huge-{i}").as_bytes())).unwrap();
            assert_eq!(got, Some(i.to_le_bytes().repeat(10)));
        }
    }
    assert!(client.stats().hits >= 1, "hits read the table on hugepages: {:?}", client.stats());
}
