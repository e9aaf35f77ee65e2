//! Opt-in interoperability check against an external NVMe/TCP target (Linux nvmet-tcp, SPDK,
//! or `scalio-nvme serve` on another machine). Skipped unless configured:
//!
//! ```text
//! SCALIO_NVME_ADDR=192.168.1.2:4420 SCALIO_NVME_NQN=nqn.... \
//!   [SCALIO_NVME_DISCOVERY=192.168.1.2:8009] [SCALIO_NVME_WRITABLE=1] [SCALIO_NVME_DIGESTS=1] \
//!   cargo test -p scalio-client --test nvme_interop -- --nocapture
//! ```
//!
//! With SCALIO_NVME_WRITABLE=1 it overwrites blocks 0..64 of namespace 1.

use std::time::Duration;

use scalio_client::nvme::{discover, ConnectOptions, NvmeTcpController};

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

#[tokio::test]
async fn external_target() {
    let (Some(addr), Some(nqn)) = (env("SCALIO_NVME_ADDR"), env("SCALIO_NVME_NQN")) else {
        eprintln!("SCALIO_NVME_ADDR / SCALIO_NVME_NQN not set: skipping the external interop check");
        return;
    };
    let addr = addr.parse().expect("SCALIO_NVME_ADDR is host:port");
    let digests = env("SCALIO_NVME_DIGESTS").is_some();
    let opts = ConnectOptions {
        header_digest: digests,
        data_digest: digests,
        io_queues: 2,
        command_timeout: Duration::from_secs(30),
        ..ConnectOptions::default()
    };
    if let Some(d) = env("SCALIO_NVME_DISCOVERY") {
        let entries = discover(d.parse().expect("SCALIO_NVME_DISCOVERY is host:port"), opts.clone()).await.unwrap();
        eprintln!("discovery: {entries:#?}");
        assert!(entries.iter().any(|e| e.subnqn == nqn), "{nqn} is not in the discovery log");
    }
    let c = NvmeTcpController::connect(addr, &nqn, opts).await.unwrap();
    eprintln!("controller: {:#?}", c.identity());
    eprintln!("namespaces: {:?}", c.namespaces());
    assert_eq!(c.identity().subnqn, nqn);
    let ns = c.namespaces().first().copied().expect("an active namespace");
    let count = 64.min(ns.blocks) as u32;
    let before = c.read(ns.nsid, 0, count).await.unwrap();
    assert_eq!(before.len(), count as usize * ns.block_size as usize);
    if env("SCALIO_NVME_WRITABLE").is_some() {
        let data: Vec<u8> = (0..before.len()).map(|i| (i * 31 + 7) as u8).collect();
        c.write(ns.nsid, 0, &data).await.unwrap();
        c.flush(ns.nsid).await.unwrap();
        assert_eq!(c.read(ns.nsid, 0, count).await.unwrap(), data);
    }
    c.keep_alive().await.unwrap();
    c.disconnect().await.unwrap();
}
