//! Shared setup of the client's end-to-end tests.
#![allow(dead_code)]

use scalio_client::{Client, ClientConfig};
use scalio_common::fabric::QueuePair;
use scalio_server::{Server, ServerConfig};
use std::sync::Arc;

/// A server on file-backed SSDs in a temporary directory.
pub struct TestServer {
    pub server: Server,
    pub dir: tempfile::TempDir,
}

pub fn config(dir: &std::path::Path, ssds: usize, listen: bool) -> ServerConfig {
    let mut c = ServerConfig::default().with_ssd_files(dir, ssds, 16 << 20);
    c.cache.buckets = 1024;
    c.ssd_buckets = Some(1024);
    c.workers = 2;
    c.io_threads = 2;
    if listen {
        c.listen = Some("127.0.0.1:0".into());
    }
    c
}

/// A server set up for stress: 512 KiB SSDs with 16 buckets (garbage collection keeps moving
/// data), a one-bucket two-slot cache (constant eviction) with 2 ms leases (reservations expire
/// under slow fillers), small batches with a short timeout.
pub fn stress(c: &mut ServerConfig) {
    for d in &mut c.ssds {
        d.size = Some(512 << 10);
    }
    c.ssd_buckets = Some(16);
    c.cache.buckets = 1;
    c.cache.assoc = 2;
    c.cache.lease_ms = 2;
    c.write.batch = 4;
    c.write.batch_timeout_us = 200;
}

pub fn start(ssds: usize, listen: bool, tweak: impl FnOnce(&mut ServerConfig)) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), ssds, listen);
    tweak(&mut c);
    TestServer { server: Server::start(&c).unwrap(), dir }
}

impl TestServer {
    /// An in-process client (the `mem` fabric).
    pub async fn mem_client(&self, cfg: ClientConfig) -> Client {
        let qp: Arc<dyn QueuePair> = Arc::new(self.server.connect_mem());
        Client::with_queue_pairs(vec![qp], cfg).await.unwrap()
    }

    /// A client over the software NIC on loopback.
    pub async fn tcp_client(&self, cfg: ClientConfig) -> Client {
        let addr = self.server.local_addr().expect("listening").to_string();
        Client::connect(&addr, cfg).await.unwrap()
    }

    pub fn stat(&self, name: &str) -> u64 {
        self.server.stats().get(name).unwrap_or_else(|| panic!("no counter {name}"))
    }
}

pub fn key(i: u64) -> Vec<u8> {
    format!("k{i:010}").into_bytes()
}
