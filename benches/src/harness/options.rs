//! The command line of `scalio-ycsb`.

use clap::Parser;
use std::path::PathBuf;

/// YCSB-compatible benchmark of scalio and its baselines.
///
/// Without --server it starts an embedded server with file-backed SSDs in a temporary directory
/// and drives it over the software NIC on loopback.
#[derive(Parser, Debug, Clone)]
#[command(name = "scalio-ycsb", version)]
pub struct Options {
    /// YCSB property file (repeatable; later files override earlier ones).
    #[arg(short = 'P', value_name = "FILE")]
    pub property_files: Vec<PathBuf>,
    /// A shipped workload: a, b, c, d, e or f (benches/workloads/workloadX). Default: a, unless
    /// property files are given.
    #[arg(long, short = 'w')]
    pub workload: Option<String>,
    /// Override a property: -p name=value (repeatable).
    #[arg(short = 'p', value_name = "NAME=VALUE")]
    pub properties: Vec<String>,
    /// scalio, leed, ditto or memcached.
    #[arg(long, default_value = "scalio")]
    pub system: String,
    /// Scalio design stage: 0 LEED-style reads, 1 + offloaded reads, 2 + inline cache, 3 + batched writes.
    #[arg(long, default_value_t = 3)]
    pub stage: u8,
    /// Driver threads, each with its own connection.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Operations in flight per thread.
    #[arg(long, default_value_t = 16)]
    pub outstanding: usize,
    /// A running server (scalio fabric address, or memcached HOST:PORT); default: embedded.
    #[arg(long)]
    pub server: Option<String>,
    /// A running cluster, etcd://HOST:PORT[/prefix] (scalio only): keys are routed by its map.
    #[arg(long, conflicts_with = "server")]
    pub cluster: Option<String>,
    /// Scalio clients of a running server (--server): the fabric, tcp (the software NIC) or verbs
    /// (RDMA; a build with feature rdma, and a server with fabric = "verbs").
    #[arg(long, default_value = "tcp")]
    pub fabric: scalio_common::fabric::FabricKind,
    /// --fabric verbs: the RDMA device (default: the first).
    #[arg(long)]
    pub rdma_device: Option<String>,
    /// --fabric verbs: the device's port.
    #[arg(long, default_value_t = 1)]
    pub rdma_port: u8,
    /// --fabric verbs: the GID index (default: the first IPv4-mapped GID).
    #[arg(long)]
    pub rdma_gid: Option<u32>,
    /// --fabric verbs: connection setup, rdma_cm (--server is then an address on the RDMA
    /// network, e.g. 10.0.2.15:7400 or [fe80::…%eth0]:7400) or tcp (the server's verbs.connect).
    #[arg(long, default_value = "rdma_cm")]
    pub rdma_connect: scalio_common::fabric::VerbsConnect,
    /// Scalio clients of a running server: the miss path reads SSD i from the i-th of these
    /// comma-separated files or block devices (the `direct` path, O_DIRECT), e.g. the server's SSDs
    /// attached with the kernel NVMe-oF host: --block-devices /dev/nvme0n1,/dev/nvme1n1.
    #[arg(long, value_delimiter = ',', requires = "server")]
    pub block_devices: Vec<std::path::PathBuf>,
    /// Embedded server: SSDs.
    #[arg(long, default_value_t = 1)]
    pub ssds: usize,
    /// Embedded server: size of each SSD file (default: enough for the records).
    #[arg(long)]
    pub ssd_size: Option<String>,
    /// Embedded server: worker threads (the "DPU cores").
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Embedded server: slots per cache bucket.
    #[arg(long, default_value_t = 8)]
    pub assoc: u8,
    /// Embedded server: cache slots per record (the paper's 2,244,608 slots for 20M records).
    #[arg(long, default_value_t = 0.112)]
    pub cache_ratio: f64,
    /// Embedded server: cache buckets (overrides --cache-ratio).
    #[arg(long)]
    pub cache_buckets: Option<u32>,
    /// Scalio clients: cache probes in flight per queue pair that READ into registered memory
    /// with no allocation (0: every probe allocates its buffer, the path before registered lanes).
    #[arg(long, default_value_t = scalio_client::DEFAULT_REGISTERED_PROBES)]
    pub registered_probes: usize,
    /// Embedded server: writes per batch (stage 3).
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Embedded server: the clients' miss path: local (the server's SSD objects, in-process: target
    /// offload without server CPU), nvme-tcp (our NVMe/TCP target on loopback), direct (the files).
    #[arg(long, default_value = "local")]
    pub block: String,
    /// Emulated testbed: I/Os per second per SSD (0: unlimited).
    #[arg(long, default_value_t = 0)]
    pub ssd_iops: u64,
    /// Emulated testbed: added latency per SSD I/O, microseconds.
    #[arg(long, default_value_t = 0)]
    pub ssd_latency_us: u64,
    /// Emulated testbed: worker time charged per SSD I/O it issues, microseconds.
    #[arg(long, default_value_t = 0)]
    pub worker_io_cost_us: u64,
    /// Random seed of the operation streams.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Skip the load phase (e.g. against an already loaded server).
    #[arg(long)]
    pub no_load: bool,
    /// At most this many operations run (and not measured) before the measured run, in windows;
    /// the warm-up stops early once two consecutive windows' cache hit ratios differ by less than
    /// 0.005 (settled). Every window's hit ratio and evictions are reported.
    #[arg(long, default_value_t = 0)]
    pub warmup_ops: u64,
    /// Operations per warm-up window (default: half the cache's slots, at least 200,000).
    #[arg(long)]
    pub warmup_window: Option<u64>,
    /// Embedded server: keep the emulated testbed during the warm-up. By default the warm-up runs
    /// with it suspended (its speed is not measured; the cache sees the same operations); the
    /// measured run is always emulated.
    #[arg(long)]
    pub warmup_emulated: bool,
    /// Embedded server: writes per batch while loading. The load runs on a server of its own
    /// (this batch, no emulation, no cache), shut down before the measured server recovers the
    /// SSDs; larger batches put more records in each durable device write. The records are
    /// inserted grouped by bucket (see `load_order`), so that a bucket's chain is written once.
    #[arg(long, default_value_t = 256)]
    pub load_batch: usize,
    /// Embedded server: keep loaded stores under this directory, one per (records, value size,
    /// SSDs, seed, SSD geometry), and start later runs with the same key on it through recovery
    /// instead of loading again. Runs change the store they reuse (updates, inserts).
    #[arg(long)]
    pub store_dir: Option<PathBuf>,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}
