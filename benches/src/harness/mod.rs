//! The `scalio-ycsb` harness: an embedded (or remote) server, a load phase and a measured run
//! phase of a YCSB workload against one of the systems, and the report.

pub mod driver;
pub mod load_order;
pub mod options;
pub mod report;
pub mod system;
pub mod warmup;

use crate::ycsb::{builtin_workload, Properties, Workload};
use driver::{run_phase, Connector, Phase, Progress};
use options::Options;
use report::{LoadReport, Report, ServerSnapshot};
use scalio_client::{BlockPath, ClientConfig};
use scalio_common::cluster::ClusterUrl;
use scalio_server::config::parse_size;
use scalio_server::device::LocalBlockReader;
use scalio_server::{Server, ServerConfig};
use std::sync::Arc;
use system::SystemKind;

/// A run that cannot start or failed.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Workload(#[from] crate::ycsb::WorkloadError),
    #[error(transparent)]
    Properties(#[from] crate::ycsb::PropertiesError),
    #[error("server: {0}")]
    Server(#[from] scalio_server::ServerError),
    #[error("{phase} phase: {error}")]
    Phase { phase: &'static str, error: String },
}

/// Reads the workload properties: a shipped workload and/or property files, then overrides.
pub fn properties(opts: &Options) -> Result<Properties, HarnessError> {
    let mut p = Properties::new();
    let default = (opts.workload.is_none() && opts.property_files.is_empty()).then(|| "a".to_string());
    if let Some(w) = opts.workload.as_ref().or(default.as_ref()) {
        let name = if w.starts_with("workload") { w.clone() } else { format!("workload{w}") };
        let text = builtin_workload(&name)
            .ok_or_else(|| HarnessError::Usage(format!("no shipped workload {w:?} (use a, b, c, d, e or f)")))?;
        p.extend_from(&Properties::parse(text)?);
    }
    for f in &opts.property_files {
        p.extend_from(&Properties::load_file(f)?);
    }

    for o in &opts.properties {
        p.apply_override(o)?;
    }
    Ok(p)
}

fn system_kind(opts: &Options) -> Result<SystemKind, HarnessError> {
    Ok(match opts.system.as_str() {
        "scalio" if opts.stage <= 3 => SystemKind::Scalio { stage: opts.stage },
        "scalio" => return Err(HarnessError::Usage(format!("stage {} does not exist (0..=3)", opts.stage))),
        "leed" => SystemKind::Leed,
        "ditto" => SystemKind::Ditto,
        "memcached" => SystemKind::Memcached,
        other => return Err(HarnessError::Usage(format!("unknown system {other:?} (scalio, leed, ditto, memcached)"))),
    })
}

/// The embedded server's configuration for this run.
pub fn embedded_config(
    opts: &Options,
    workload: &Workload,
    kind: SystemKind,
    dir: &std::path::Path,
) -> Result<ServerConfig, HarnessError> {
    let spec = workload.spec();
    let ssds = opts.ssds.max(1);
    let inserts = (spec.operation_count as f64 * spec.insert_proportion).ceil() as u64;
    let per_ssd = (spec.record_count + inserts).div_ceil(ssds as u64).max(1);
    let record = scalio_common::ssd::record_len(16, workload.value_len()) as u64;
    // Room for the values three times over (for garbage collection) and half-full buckets.
    let size = match &opts.ssd_size {
        Some(s) => parse_size(s).map_err(|e| HarnessError::Usage(e.to_string()))?,
        None => (per_ssd * (3 * record + 256)).max(16 << 20).div_ceil(1 << 20) << 20,
    };
    let mut c = ServerConfig::default().with_ssd_files(dir, ssds, size);
    c.listen = Some("127.0.0.1:0".into());
    c.workers = opts.workers;
    c.ssd_buckets = Some((per_ssd / 8).clamp(64, u64::from(u32::MAX)) as u32);
    // Both caches get the same number of slots, as in the paper.
    let buckets = match opts.cache_buckets {
        Some(b) => b,
        None => ((spec.record_count as f64 * opts.cache_ratio) / f64::from(opts.assoc)).ceil().max(1.0) as u32,
    };
    c.cache.enabled = kind.uses_scalio_cache();
    c.cache.assoc = opts.assoc;
    c.cache.buckets = buckets;
    c.ditto.enabled = kind.uses_ditto_cache();
    c.ditto.assoc = opts.assoc;
    c.ditto.buckets = buckets;
    c.write.batch = opts.batch;
    // The driver never has more than threads x outstanding requests in flight, and under skew
    // they may all wait on one SSD: admit them all, so that no measurement is shaped by the
    // server refusing requests over its [limits].
    let driver_in_flight = opts.threads.saturating_mul(opts.outstanding);
    c.limits.inbox_rpcs = c.limits.inbox_rpcs.max(driver_in_flight);
    c.limits.pending_writes = c.limits.pending_writes.max(driver_in_flight);
    c.limits.server_gets = c.limits.server_gets.max(driver_in_flight);
    // Each driver thread is one connection with up to `outstanding` misses between META_GET and
    // fill. A reservation quota below that refuses the excess reservations, which would make the
    // measured cache admit keys at a fraction of its miss rate: a shape of the quota (a guard
    // against clients that reserve and never fill), not of the cache's policy. LEED+Ditto has no
    // such quota.
    let per_connection = u32::try_from(opts.outstanding).unwrap_or(u32::MAX);
    c.cache.reservations_per_client = c.cache.reservations_per_client.max(per_connection);
    c.target.enabled = opts.block == "nvme-tcp";
    c.emulation.ssd_iops = opts.ssd_iops;
    c.emulation.ssd_latency_us = opts.ssd_latency_us;
    c.emulation.worker_io_cost_us = opts.worker_io_cost_us;
    if opts.ssd_iops > 0 {
        // Enough I/O threads per SSD that the IOPS limit, not the threads, bounds it.
        let in_flight = (opts.ssd_iops as f64 * (opts.ssd_latency_us as f64 + 200.0) / 1e6).ceil() as usize;
        c.io_threads = in_flight.clamp(4, 64);
    }
    c.validate().map_err(|e| HarnessError::Usage(e.to_string()))?;
    Ok(c)
}

/// Runs the whole benchmark and returns its report.
pub fn run(opts: &Options) -> Result<Report, HarnessError> {
    let props = properties(opts)?;
    let workload = Workload::from_properties(&props)?;
    let kind = system_kind(opts)?;
    if opts.threads == 0 || opts.outstanding == 0 {
        return Err(HarnessError::Usage("--threads and --outstanding must be at least 1".into()));
    }
    let cluster = match &opts.cluster {
        None => None,
        Some(_) if kind.stage().is_none() => {
            return Err(HarnessError::Usage("--cluster drives scalio servers only (--system scalio)".into()))
        }
        Some(u) => Some(u.parse::<ClusterUrl>().map_err(|e| HarnessError::Usage(format!("--cluster {u}: {e}")))?),
    };
    if kind == SystemKind::Memcached && opts.server.is_none() {
        return Err(HarnessError::Usage("--system memcached needs --server HOST:PORT".into()));
    }
    if !["local", "nvme-tcp", "direct"].contains(&opts.block.as_str()) {
        return Err(HarnessError::Usage(format!("unknown block path {:?} (local, nvme-tcp, direct)", opts.block)));
    }
    let temporary = tempfile::tempdir().map_err(|e| HarnessError::Usage(format!("temporary directory: {e}")))?;
    let mut load_outcome = LoadOutcome::NotRun;
    let remote = opts.server.clone().or_else(|| cluster.as_ref().map(|u| u.to_string()));
    let (server, addr, server_config) = match &remote {
        Some(a) => (None, a.clone(), None),
        None => {
            let mut cfg = embedded_config(opts, &workload, kind, temporary.path())?;
            let store = match &opts.store_dir {
                Some(root) => StoreKey::of(&workload, &cfg, opts.seed).dir(root),
                None => temporary.path().to_path_buf(),
            };
            std::fs::create_dir_all(&store)
                .map_err(|e| HarnessError::Usage(format!("store directory {}: {e}", store.display())))?;
            let size = cfg.ssds.first().and_then(|s| s.size).unwrap_or(0);
            let ssds = cfg.ssds.len();
            cfg = cfg.with_ssd_files(&store, ssds, size);
            if !opts.no_load {
                load_outcome = if opts.store_dir.is_some() && store_is_loaded(&store) {
                    LoadOutcome::Reused(store.clone())
                } else {
                    LoadOutcome::Loaded(load_embedded(opts, &workload, &cfg, &store)?)
                };
            }
            // The measured server recovers the stores the load left (or a previous run kept).
            let server = Server::start(&cfg)?;
            let addr = server.local_addr().expect("listening").to_string();
            (Some(server), addr, Some(cfg))
        }
    };
    let block = match (&server, opts.block.as_str()) {
        (Some(s), "local") => BlockPath::Custom(Arc::new(LocalBlockReader::new(s.ssds().to_vec()))),
        (_, "direct") => BlockPath::Auto,
        (_, _) => BlockPath::NvmeTcp,
    };
    let block = if remote.is_some() && opts.block == "local" { BlockPath::Auto } else { block };
    // The server's SSDs as this machine sees them (e.g. kernel NVMe-oF namespaces).
    let block = if opts.block_devices.is_empty() { block } else { BlockPath::Direct(opts.block_devices.clone()) };
    if opts.fabric != scalio_common::fabric::FabricKind::Tcp && remote.is_none() {
        return Err(HarnessError::Usage("--fabric verbs is for a running server (--server)".into()));
    }
    let on_fabric = |c: ClientConfig| ClientConfig {
        fabric: opts.fabric,
        verbs: scalio_common::fabric::VerbsConfig {
            device: opts.rdma_device.clone(),
            port: opts.rdma_port,
            gid_index: opts.rdma_gid,
            connect: opts.rdma_connect,
        },
        ..c
    };
    let measured_config =
        on_fabric(ClientConfig { registered_probes: opts.registered_probes, ..kind.client_config(block.clone()) });
    let snapshot_config = measured_config.clone();
    let connector = match (kind, &cluster) {
        (_, Some(url)) => Connector::Cluster { url: url.clone(), config: measured_config },
        _ => match kind {
            SystemKind::Ditto => Connector::Ditto { addr: addr.clone() },
            SystemKind::Memcached => Connector::Memcached { addr: addr.clone() },
            _ => Connector::Scalio { addr: addr.clone(), config: measured_config },
        },
    };
    // The load phase writes batched, whatever the system (as the artifact loads with stage 3).
    let loader = match kind {
        SystemKind::Memcached => connector.clone(),
        _ if cluster.is_some() => Connector::Cluster {
            url: cluster.clone().expect("checked"),
            config: on_fabric(SystemKind::Scalio { stage: 3 }.client_config(block)),
        },
        _ => Connector::Scalio {
            addr: addr.clone(),
            config: on_fabric(SystemKind::Scalio { stage: 3 }.client_config(block)),
        },
    };
    let spec = workload.spec().clone();
    // One phase, with its progress line; `seed_offset` gives each phase its own operation stream.
    let measure = |name: &'static str, phase: Phase, connector: &Connector, seed_offset: u64| {
        let total = match phase {
            Phase::Load => workload.load_range().end - workload.load_range().start,
            Phase::Run { operations } => operations,
        };
        let guard = Progress::start(name, total);
        let seed = opts.seed.wrapping_add(seed_offset);
        run_phase(phase, connector, &workload, opts.threads, opts.outstanding, seed, &guard, None)
            .map_err(|error| HarnessError::Phase { phase: name, error })
    };
    let load = match load_outcome {
        LoadOutcome::Loaded(r) => Some(LoadReport::Loaded(r)),
        LoadOutcome::Reused(dir) => Some(LoadReport::Reused(dir)),
        // A remote server loads through the system's own path, as before.
        LoadOutcome::NotRun if remote.is_some() && !opts.no_load => {
            let r = measure("load", Phase::Load, &loader, 0)?;
            check_load(&r)?;
            Some(LoadReport::Loaded(r))
        }
        LoadOutcome::NotRun => None,
    };
    let warmup = match opts.warmup_ops {
        0 => None,
        cap => {
            let slots = server_config.as_ref().and_then(cache_slots);
            let rule = warmup::SettleRule::for_cache(slots, opts.warmup_window);
            // The warm-up's speed is not measured: the embedded server runs it with its emulated
            // testbed suspended (the same operations, hence the same key sequence for the cache's
            // policy), and restores it for the measured run, whatever happens.
            let suspended = server.as_ref().filter(|_| !opts.warmup_emulated).map(SuspendedEmulation::new);
            let mut windows = Vec::new();
            let mut hit_ratios = Vec::new();
            let mut done = 0;
            let mut settled = false;
            while !settled {
                let operations = rule.next_window(done, cap);
                if operations == 0 {
                    break;
                }
                let before = ServerSnapshot::take(server.as_ref(), &addr, kind, &snapshot_config);
                // Each window its own operation stream (seed offsets 1, 11, 21, ...; the run is 2).
                let seed_offset = 1 + 10 * windows.len() as u64;
                let result = measure("warmup", Phase::Run { operations }, &connector, seed_offset)?;
                let after = ServerSnapshot::take(server.as_ref(), &addr, kind, &snapshot_config);
                let delta = after.delta(&before);
                let evictions = warmup::evictions(kind, delta.as_ref(), &result);
                done += result.operations.max(1);
                if let Some(h) = report::phase_hit_ratio(kind, &result.counters) {
                    hit_ratios.push((result.operations, h));
                    settled = rule.settled(&hit_ratios);
                }
                windows.push(warmup::Window { result, evictions });
            }
            drop(suspended);
            let has_hit_ratio = !hit_ratios.is_empty();
            Some(warmup::Warmup {
                rule,
                windows,
                settled: has_hit_ratio.then_some(settled),
                emulated: server.is_none() || opts.warmup_emulated,
            })
        }
    };
    let before = ServerSnapshot::take(server.as_ref(), &addr, kind, &snapshot_config);
    let result = measure("run", Phase::Run { operations: spec.operation_count }, &connector, 2)?;
    let after = ServerSnapshot::take(server.as_ref(), &addr, kind, &snapshot_config);
    let report = Report::new(opts, kind, &spec, server_config.as_ref(), load, warmup, result, before, after);
    if let Some(s) = server {
        s.shutdown();
    }
    Ok(report)
}

/// The cache slots of an embedded server's configuration (None without a cache).
fn cache_slots(c: &ServerConfig) -> Option<u64> {
    let slots = |buckets: u32, assoc: u8| u64::from(buckets) * u64::from(assoc);
    if c.cache.enabled {
        Some(slots(c.cache.buckets, c.cache.assoc))
    } else if c.ditto.enabled {
        Some(slots(c.ditto.buckets, c.ditto.assoc))
    } else {
        None
    }
}

/// The embedded server's emulated testbed, suspended until this is dropped.
struct SuspendedEmulation<'a>(&'a Server);

impl<'a> SuspendedEmulation<'a> {
    fn new(server: &'a Server) -> Self {
        server.emulation().set_suspended(true);
        SuspendedEmulation(server)
    }
}

impl Drop for SuspendedEmulation<'_> {
    fn drop(&mut self) {
        self.0.emulation().set_suspended(false);
    }
}

/// The file that marks a store as fully loaded (written after the load server shut down cleanly).
const LOADED_MARK: &str = "loaded";

/// What the embedded server's load did.
enum LoadOutcome {
    NotRun,
    Loaded(driver::PhaseResult),
    Reused(std::path::PathBuf),
}

/// What identifies a loaded store: the same records with the same values on the same geometry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreKey {
    pub records: u64,
    pub value_len: usize,
    pub ssds: usize,
    pub seed: u64,
    pub ssd_size: u64,
    pub ssd_buckets: u32,
}

impl StoreKey {
    /// The key of the store `cfg` opens for `workload`. The load writes version 0 of every value,
    /// which does not depend on the seed; the seed is part of the key so that runs asking for
    /// independent stores get them.
    pub fn of(workload: &Workload, cfg: &ServerConfig, seed: u64) -> StoreKey {
        StoreKey {
            records: workload.spec().record_count,
            value_len: workload.value_len(),
            ssds: cfg.ssds.len(),
            seed,
            ssd_size: cfg.ssds.first().and_then(|s| s.size).unwrap_or(0),
            ssd_buckets: cfg.ssd_buckets.unwrap_or(0),
        }
    }

    /// The store's directory under `root`.
    pub fn dir(&self, root: &std::path::Path) -> std::path::PathBuf {
        root.join(format!(
            "r{}-v{}-ssd{}-s{}-size{}-b{}",
            self.records, self.value_len, self.ssds, self.seed, self.ssd_size, self.ssd_buckets
        ))
    }
}

fn store_is_loaded(dir: &std::path::Path) -> bool {
    dir.join(LOADED_MARK).is_file()
}

fn check_load(r: &driver::PhaseResult) -> Result<(), HarnessError> {
    if r.errors > 0 {
        return Err(HarnessError::Phase {
            phase: "load",
            error: format!("{} inserts failed, first: {}", r.errors, r.first_error.clone().unwrap_or_default()),
        });
    }
    Ok(())
}

/// The load server: the measured server's SSDs and geometry, but `--load-batch` writes per batch,
/// no emulation (the load is not measured) and no cache.
pub fn load_config(opts: &Options, measured: &ServerConfig) -> ServerConfig {
    let mut c = measured.clone();
    c.write.batch = opts.load_batch.clamp(1, 1024);
    c.emulation = Default::default();
    c.io_threads = ServerConfig::default().io_threads;
    c.cache.enabled = false;
    c.ditto.enabled = false;
    c
}

/// Loads every record into the stores in `dir` through a load server, shuts it down, and marks
/// the stores loaded. An interrupted load leaves no mark, so the next run loads again (into the
/// recovered stores: every record is written again).
fn load_embedded(
    opts: &Options,
    workload: &Workload,
    measured: &ServerConfig,
    dir: &std::path::Path,
) -> Result<driver::PhaseResult, HarnessError> {
    let cfg = load_config(opts, measured);
    let server = Server::start(&cfg)?;
    let addr = server.local_addr().expect("listening").to_string();
    let block = BlockPath::Custom(Arc::new(LocalBlockReader::new(server.ssds().to_vec())));
    let loader = Connector::Scalio { addr, config: SystemKind::Scalio { stage: 3 }.client_config(block) };
    let total = workload.load_range().end - workload.load_range().start;
    let ssds = u16::try_from(cfg.ssds.len()).unwrap_or(u16::MAX);
    // The geometry the server opened (a recovered store keeps the buckets it was formatted with).
    let buckets_per_ssd = server.info().ssds.first().map_or(1, |s| s.geometry.buckets);
    let order = Arc::new(load_order::LoadOrder::by_bucket(workload, ssds, buckets_per_ssd));
    let guard = Progress::start("load", total);
    let r = run_phase(Phase::Load, &loader, workload, opts.threads, opts.outstanding, opts.seed, &guard, Some(order))
        .map_err(|error| HarnessError::Phase { phase: "load", error });
    server.shutdown();
    let r = r?;
    check_load(&r)?;
    std::fs::write(dir.join(LOADED_MARK), format!("{} records\n", r.operations))
        .map_err(|e| HarnessError::Usage(format!("marking {} loaded: {e}", dir.display())))?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn embedded(args: &[&str]) -> ServerConfig {
        let opts = Options::parse_from(std::iter::once("scalio-ycsb").chain(args.iter().copied()));
        let workload = Workload::from_properties(&properties(&opts).unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        embedded_config(&opts, &workload, system_kind(&opts).unwrap(), dir.path()).unwrap()
    }

    #[test]
    fn the_reservation_quota_admits_every_miss_a_driver_connection_can_have_in_flight() {
        let deep = embedded(&["--workload", "c", "-p", "recordcount=1000", "--outstanding", "256"]);
        assert_eq!(deep.cache.reservations_per_client, 256);
        // A shallow driver keeps the server's default (which is larger).
        let shallow = embedded(&["--workload", "c", "-p", "recordcount=1000", "--outstanding", "4"]);
        assert_eq!(shallow.cache.reservations_per_client, ServerConfig::default().cache.reservations_per_client);
    }
}
