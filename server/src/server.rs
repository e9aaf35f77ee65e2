//! Putting the server together: SSDs, store recovery, the cache table and its registration,
//! worker threads, and the fabric endpoints.

use crate::cluster::mover::LocalWrites;
use crate::cluster::{Forwarder, Mover, Ownership, PeerAuth, PeerConnector, ReadySink, Resolver, TcpPeers};
use crate::config::{ConfigError, ServerConfig};
use crate::device::{DeviceError, DeviceModel, DeviceOptions, EmulationSwitch, Ssd};
use crate::fill_windows::FillWindows;
use crate::stats::{ServerShared, StatsSource};
use crate::store::recovery::{self, StoreError};
use crate::store::{DataStore, StoreConfig};
use crate::table::CacheTable;
use crate::target::{NvmeTarget, SubsystemConfig, TargetConfig as NvmeConfig, TargetError};
use crate::worker::{Dispatch, InboxLoad, Worker, WorkerEvent};
use scalio_common::cputime::CpuGroup;
use scalio_common::fabric::mem::{MemFabric, MemQueuePair};
use scalio_common::fabric::rendezvous::{Rendezvous, StagingConfig};
use scalio_common::fabric::tcp::{ConnectOptions, NicConfig, TcpNic};
use scalio_common::fabric::{
    Access, FabricError, FabricKind, MemoryRegion, QueuePair, RegionTable, Registrar, RpcService,
};
use scalio_common::rpc::{ServerInfo, SsdInfo, Stats, TableInfo, PROTOCOL_VERSION};
use scalio_common::table::TableGeometry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How long a client may take between being granted a staging slot and naming it in its STAGED
/// message before the slot is taken back: far more than writing 1 MiB takes, short enough that
/// a client that died mid-transfer does not hold a slot for long.
const STAGING_LEASE: Duration = Duration::from_secs(5);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: String, reason: String },
    #[error("cannot start a thread: {0}")]
    Thread(String),
    #[error("NVMe/TCP target: {0}")]
    Target(#[from] TargetError),
    #[error("cannot register memory with the fabric: {0}")]
    Register(FabricError),
    /// `cache.hugepages` and the pool has too few (or the kernel none).
    #[error("cache.hugepages: {0}")]
    HugePages(scalio_common::fabric::HugePageError),
    #[error("introducing the mover's own connection as a member's: {0}")]
    PeerIntroduction(#[source] scalio_common::fabric::FabricError),
    #[error("this server is not a cluster member")]
    NotInCluster,
}

/// The NVMe/TCP target's counters in STATS.
struct TargetStatsSource(Arc<NvmeTarget>);

impl StatsSource for TargetStatsSource {
    fn append(&self, out: &mut Vec<(String, u64)>) {
        let s = self.0.stats();
        out.push(("cpu_target_ns".into(), s.cpu_ns));
        out.extend(s.counters());
    }
}

/// The rendezvous layer's counters: large requests staged, delivered, refused.
struct RendezvousStats(Arc<Rendezvous>);

impl StatsSource for RendezvousStats {
    fn append(&self, out: &mut Vec<(String, u64)>) {
        let c = self.0.counters();
        out.push(("rendezvous_granted".into(), c.granted.load(std::sync::atomic::Ordering::Relaxed)));
        out.push(("rendezvous_delivered".into(), c.delivered.load(std::sync::atomic::Ordering::Relaxed)));
        out.push(("rendezvous_refused".into(), c.refused.load(std::sync::atomic::Ordering::Relaxed)));
        out.push(("rendezvous_slots_in_use".into(), self.0.slots_in_use() as u64));
    }
}

/// Starts the target exporting every SSD as namespace 1 of its own subsystem.
fn start_target(
    config: &ServerConfig,
    listen: &str,
    ssds: &[Arc<Ssd>],
) -> Result<(Arc<NvmeTarget>, Vec<scalio_common::rpc::BlockTarget>), ServerError> {
    let addr = resolve(listen)?;
    let mut cfg = NvmeConfig::on(addr);
    if let Some(d) = &config.target.discovery {
        cfg.discovery_listen = Some(resolve(d)?);
    }
    let nqn = |i: usize| format!("{}{i}", config.target.nqn_prefix);
    for (i, ssd) in ssds.iter().enumerate() {
        let ns: Arc<dyn crate::target::TargetNamespace> = ssd.clone();
        cfg = cfg.subsystem(SubsystemConfig::new(nqn(i), ns).allow_writes(config.target.allow_writes));
    }
    let target = NvmeTarget::start(cfg)?;
    let local = target.local_addr();
    let targets = (0..ssds.len())
        .map(|i| scalio_common::rpc::BlockTarget { ssd: i as u16, addr: local.to_string(), nqn: nqn(i), nsid: 1 })
        .collect();
    Ok((Arc::new(target), targets))
}

fn resolve(addr: &str) -> Result<SocketAddr, ServerError> {
    use std::net::ToSocketAddrs;
    // An IPv6 link-local address with its interface (`[fe80::…%eth0]:7400`), as rdma_cm needs it.
    if let Some(a) = scalio_common::fabric::parse_scoped_addr(addr) {
        return Ok(a);
    }
    addr.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| ServerError::Listen { addr: addr.to_string(), reason: "not a host:port address".into() })
}

/// A running server.
pub struct Server {
    shared: Arc<ServerShared>,
    mem: Arc<MemFabric>,
    workers: Vec<(crossbeam_channel::Sender<WorkerEvent>, Option<JoinHandle<()>>)>,
    local_addr: Option<SocketAddr>,
    target: Option<Arc<NvmeTarget>>,
    config: ServerConfig,
    /// The RDMA listener when the fabric is verbs: held, never read (dropping the server closes it).
    _verbs_nic: parking_lot::Mutex<Option<Box<dyn std::any::Any + Send>>>,
    /// In a cluster: its standing, and how it reaches the other members.
    cluster: Option<(Arc<Ownership>, Arc<dyn PeerConnector>)>,
    /// In a cluster: settles the keys in doubt here (see [`crate::cluster::doubts`]).
    resolver: Option<Resolver>,
    /// Suspends the emulated-testbed model of the SSDs and workers while set.
    emulation: EmulationSwitch,
}

/// The verbs device and its protection domain's registrar, when the fabric is verbs.
#[cfg(feature = "rdma")]
struct VerbsSide {
    device: Arc<scalio_common::fabric::verbs::VerbsDevice>,
    registrar: Arc<scalio_common::fabric::verbs::VerbsRegistrar>,
}
#[cfg(not(feature = "rdma"))]
enum VerbsSide {}

fn open_verbs(config: &ServerConfig) -> Result<Option<VerbsSide>, ServerError> {
    if config.fabric != FabricKind::Verbs {
        return Ok(None);
    }
    #[cfg(feature = "rdma")]
    {
        use scalio_common::fabric::verbs::{VerbsDevice, VerbsRegistrar};
        let device = VerbsDevice::open(&config.verbs.device_config()).map_err(ServerError::Register)?;
        let registrar = Arc::new(VerbsRegistrar::new(device.clone()));
        Ok(Some(VerbsSide { device, registrar }))
    }
    #[cfg(not(feature = "rdma"))]
    Err(ServerError::Config(ConfigError::Invalid("fabric = \"verbs\" needs a build with RDMA support".into())))
}

impl Server {
    /// Opens (formatting or recovering) the SSDs and starts serving.
    pub fn start(config: &ServerConfig) -> Result<Server, ServerError> {
        Server::start_with(config, None)
    }

    /// Starts a cluster member: every request about a key is first checked against `ownership`
    /// (answered "wrong owner" if this server does not serve the key at its map's epoch), and
    /// writes are forwarded down their replica chains over the software NIC.
    pub fn start_in_cluster(config: &ServerConfig, ownership: Arc<Ownership>) -> Result<Server, ServerError> {
        let opts = ConnectOptions { secret: config.secret()?, ..ConnectOptions::default() };
        let peers = TcpPeers { connect: opts, peer_secret: config.peer_secret()? };
        Server::start_in_cluster_with(config, ownership, Arc::new(peers))
    }

    /// [`Server::start_in_cluster`], reaching the other members through `peers`.
    pub fn start_in_cluster_with(
        config: &ServerConfig,
        ownership: Arc<Ownership>,
        peers: Arc<dyn PeerConnector>,
    ) -> Result<Server, ServerError> {
        let chain = Forwarder::new(ownership.clone(), peers.clone());
        let mut server = Server::start_with(config, Some((ownership.clone(), chain)))?;
        let resolver = Resolver::start(ownership.clone(), peers.clone(), server.local_writes())
            .map_err(|e| ServerError::Thread(e.to_string()))?;
        server.resolver = Some(resolver);
        server.cluster = Some((ownership, peers));
        Ok(server)
    }

    /// Starts copying into this cluster member the partitions its maps move to it, reporting
    /// each one to `sink` when its copy is complete (see [`crate::cluster::mover`]). Its
    /// counters join STATS.
    pub fn start_mover(&self, sink: Arc<dyn ReadySink>) -> Result<Mover, ServerError> {
        let (own, peers) = self.cluster.clone().ok_or(ServerError::NotInCluster)?;
        let writes = self.local_writes();
        let local = self.mem.connect();
        // The mover scans this server's own keys through it: a member's connection.
        if let Some(secret) = self.config.peer_secret()? {
            crate::cluster::peer_auth::introduce(&local, &secret).map_err(ServerError::PeerIntroduction)?;
        }
        let local: Arc<dyn QueuePair> = Arc::new(local);
        let mover = Mover::start(own, peers, local, writes, sink).map_err(|e| ServerError::Thread(e.to_string()))?;
        self.shared.extra.lock().push(mover.stats_source());
        Ok(mover)
    }

    /// Hands writes to the workers that own their keys' SSDs.
    fn local_writes(&self) -> LocalWrites {
        LocalWrites {
            workers: self.workers.iter().map(|(tx, _)| tx.clone()).collect(),
            ssds: self.shared.ssds().len() as u16,
        }
    }

    fn start_with(
        config: &ServerConfig,
        cluster: Option<(Arc<Ownership>, Arc<Forwarder>)>,
    ) -> Result<Server, ServerError> {
        config.validate()?;
        let io_cpu = CpuGroup::new();
        let e = &config.emulation;
        let emulation = EmulationSwitch::default();
        let opts = DeviceOptions {
            io_threads: config.io_threads,
            model: DeviceModel { iops: e.ssd_iops, latency: Duration::from_micros(e.ssd_latency_us) },
            emulation: emulation.clone(),
            direct: config.direct_io,
        };
        let ssds = config
            .ssds
            .iter()
            .enumerate()
            .map(|(i, s)| Ssd::open(i as u16, &s.path, s.size, &opts, &io_cpu))
            .collect::<Result<Vec<_>, _>>()?;
        let opened = match recovery::open(&ssds, config.ssd_buckets) {
            Ok(o) => o,
            Err(e) => {
                ssds.iter().for_each(|s| s.shutdown());
                return Err(e.into());
            }
        };
        let table = config.cache.enabled.then(|| {
            let geometry = TableGeometry { buckets: config.cache.buckets, assoc: config.cache.assoc };
            let lease = Duration::from_millis(config.cache.lease_ms);
            let table = match config.cache.hugepages {
                true => CacheTable::on_hugepages(geometry, lease)?,
                false => CacheTable::new(geometry, lease),
            };
            #[allow(unused_mut)] // mutated only by a seeded bug
            let mut table = table.with_reservation_quota(config.cache.reservations_per_client);
            #[cfg(feature = "seeded-bugs")]
            if config.seeded_bug == Some(crate::config::SeededBug::FillWithoutGenerationCheck) {
                table.seed_bug_keep_generation();
            }
            Ok(Arc::new(table))
        });
        let table = match table.transpose() {
            Ok(t) => t,
            Err(e) => {
                ssds.iter().for_each(|s| s.shutdown());
                return Err(ServerError::HugePages(e));
            }
        };
        // The target serves clients' block reads straight from the SSDs, on its own threads.
        let fabric_addr = config.listen.as_deref().map(resolve).transpose()?;
        let (target, targets) = match config.target.resolve_listen(fabric_addr) {
            Some(listen) => {
                let (t, targets) = start_target(config, &listen, &ssds)?;
                (Some(t), targets)
            }
            None => (None, Vec::new()),
        };
        // The software backends' protection domain: both serve the regions registered here. On
        // verbs, the device's protection domain instead (the NIC then checks every access).
        let regions = Arc::new(RegionTable::new());
        let verbs = open_verbs(config)?;
        let registrar: &dyn Registrar = match &verbs {
            #[cfg(feature = "rdma")]
            Some(v) => &*v.registrar,
            _ => &*regions,
        };
        let registrar_arc: Arc<dyn Registrar> = match &verbs {
            #[cfg(feature = "rdma")]
            Some(v) => v.registrar.clone(),
            _ => regions.clone(),
        };
        let verbs_fabric = config.fabric == FabricKind::Verbs;
        let whole_table_fills = verbs_fabric && config.verbs.trusted_fills;
        let fill_windows = config.cache.fill_windows_on(config.fabric, config.verbs.trusted_fills);
        #[cfg(feature = "rdma")]
        if let (Some(v), true) = (&verbs, fill_windows) {
            if !v.registrar.has_windows() {
                // Say so at start, not at the first miss.
                return Err(ServerError::Register(FabricError::Unsupported(
                    scalio_common::fabric::Unsupported::MemoryWindows,
                )));
            }
        }
        // Clients read the whole table, and write (when they fill) only the slots' client ranges:
        // a WRITE that touches a server header is refused by the fabric (README, "Threat model").
        // With fill windows, only the client range of a slot reserved for them, through a window
        // granted per reservation.
        let mut table_read = None;
        let table_info = table
            .as_ref()
            .map(|t| {
                let access = if fill_windows { Access::READ.with(Access::WINDOWS) } else { Access::READ };
                let read = registrar.register(t.region().clone(), access)?;
                table_read = Some(read);
                let fill_rkey = match config.cache.client_fills {
                    // A window per reservation instead of a key for every slot.
                    true if fill_windows => None,
                    // Trusted clients on verbs (no strided keys): the whole table, writable.
                    true if whole_table_fills => Some(registrar.register(t.region().clone(), Access::WRITE)?.rkey),
                    true => {
                        let ranges = t.geometry().client_ranges();
                        Some(registrar.register_strided(t.region().clone(), Access::WRITE, ranges)?.rkey)
                    }
                    false => None,
                };
                Ok::<_, FabricError>(TableInfo { addr: read.addr, rkey: read.rkey, fill_rkey, geometry: t.geometry() })
            })
            .transpose()
            .map_err(ServerError::Register)?;
        let windows = match (&table, table_read, fill_windows) {
            (Some(t), Some(read), true) => Some(FillWindows::start(registrar_arc.clone(), read, t)),
            _ => None,
        };
        // The LEED+Ditto baseline's cache: zeroed memory that only its clients read and write.
        let ditto_info = config
            .ditto
            .enabled
            .then(|| {
                let d = &config.ditto;
                let region = match config.cache.hugepages {
                    true => MemoryRegion::on_hugepages(d.region_bytes() as usize).map_err(ServerError::HugePages)?,
                    false => MemoryRegion::new(d.region_bytes() as usize),
                };
                let region = Arc::new(region);
                let desc = registrar.register(region, Access::READ_WRITE).map_err(ServerError::Register)?;
                Ok::<_, ServerError>(TableInfo {
                    addr: desc.addr,
                    rkey: desc.rkey,
                    fill_rkey: None,
                    geometry: TableGeometry { buckets: d.buckets, assoc: d.assoc },
                })
            })
            .transpose()?;
        let info = ServerInfo {
            protocol: PROTOCOL_VERSION,
            lease_ms: u32::try_from(config.cache.lease_ms).unwrap_or(u32::MAX),
            table: table_info,
            ditto: ditto_info,
            store_id: opened.store_id,
            ssds: ssds
                .iter()
                .zip(&opened.ssds)
                .map(|(s, (g, _))| SsdInfo {
                    geometry: *g,
                    path: std::fs::canonicalize(s.path()).unwrap_or(s.path().to_path_buf()).display().to_string(),
                })
                .collect(),
            targets,
        };
        let store_cfg = StoreConfig {
            batch: config.write.batch,
            batch_timeout: Duration::from_micros(config.write.batch_timeout_us),
            max_inflight: config.write.max_inflight,
            max_pending_writes: config.limits.pending_writes,
            max_pending_bytes: usize::try_from(config.limits.pending_write_bytes).unwrap_or(usize::MAX),
            max_server_gets: config.limits.server_gets,
            #[cfg(feature = "seeded-bugs")]
            ack_before_invalidate: config.seeded_bug == Some(crate::config::SeededBug::AckBeforeInvalidate),
            ..StoreConfig::default()
        };
        let n = ssds.len() as u16;
        let mut stores: Vec<Vec<DataStore<_>>> = (0..config.workers).map(|_| Vec::new()).collect();
        let mut counters = Vec::new();
        for (i, (geo, state)) in opened.ssds.into_iter().enumerate() {
            let s = DataStore::new(i as u16, n, geo, opened.seed, state, store_cfg.clone(), table.clone());
            counters.push(s.counters().clone());
            stores[i % config.workers].push(s);
        }
        let shared = Arc::new(ServerShared::new(info, table.clone(), ssds.clone(), counters, io_cpu));
        let mut senders = Vec::new();
        let mut workers = Vec::new();
        for (id, stores) in stores.into_iter().enumerate() {
            // Unbounded as a channel (I/O completions must never be refused), but the RPCs in it
            // are admitted against the limits by `InboxLoad`.
            let (tx, rx) = crossbeam_channel::unbounded();
            let load = Arc::new(InboxLoad::new(
                config.limits.inbox_rpcs,
                usize::try_from(config.limits.inbox_bytes).unwrap_or(usize::MAX),
            ));
            let w = Worker {
                id,
                workers: config.workers,
                inbox: rx,
                load: load.clone(),
                me: tx.clone(),
                stores,
                ssds: ssds.clone(),
                table: table.clone(),
                server_fills: !config.cache.client_fills,
                fill_windows: windows.clone(),
                shared: shared.clone(),
                io_cost: Duration::from_micros(config.emulation.worker_io_cost_us),
                emulation: emulation.clone(),
                chain: cluster.as_ref().map(|(_, chain)| chain.clone()),
                cluster: cluster.as_ref().map(|(own, _)| own.clone()),
            };
            let h = std::thread::Builder::new()
                .name(format!("worker-{id}"))
                .spawn(move || w.run())
                .map_err(|e| ServerError::Thread(e.to_string()))?;
            senders.push((tx.clone(), load));
            workers.push((tx, Some(h)));
        }
        if let Some((own, chain)) = &cluster {
            shared.extra.lock().push(Arc::new(crate::cluster::ClusterStats(own.clone())));
            shared.extra.lock().push(chain.stats_source());
            if let Some(t) = &table {
                own.attach_cache(t.clone());
            }
        }
        if let Some(w) = &windows {
            shared.extra.lock().push(Arc::new(FillWindowStats(w.clone())));
        }
        let peer_auth = Arc::new(PeerAuth::new(config.peer_secret()?));
        shared.extra.lock().push(peer_auth.stats_source());
        let dispatch = Arc::new(Dispatch {
            workers: senders,
            shared: shared.clone(),
            cluster: cluster.map(|(o, _)| o),
            fill_windows: windows,
            peer_auth,
        });
        // Requests over the largest message arrive by rendezvous: this layer stages them and
        // hands the dispatcher whole requests, on every backend.
        let staging = StagingConfig {
            slots: config.staging_slots,
            slot_bytes: scalio_common::rpc::MAX_REQUEST_LEN,
            lease: STAGING_LEASE,
        };
        // Verbs has no strided keys: there the layer registers the staging region whole, its
        // slots then guarded by the STAGED checksum alone (README, "Real RDMA").
        let rendezvous = Rendezvous::new(dispatch.clone(), registrar, staging).map_err(ServerError::Register)?;
        shared.extra.lock().push(Arc::new(RendezvousStats(rendezvous.clone())));
        let service: Arc<dyn RpcService> = rendezvous;
        let mem = MemFabric::new(regions.clone());
        mem.set_rpc_credits(config.rpc_credits);
        mem.set_max_message(config.max_message as usize);
        mem.set_service(service.clone());
        if let Some(t) = &target {
            shared.extra.lock().push(Arc::new(TargetStatsSource(t.clone())));
        }
        let mut server = Server {
            shared: shared.clone(),
            mem,
            workers,
            local_addr: None,
            target,
            config: config.clone(),
            _verbs_nic: parking_lot::Mutex::new(None),
            cluster: None,
            resolver: None,
            emulation,
        };
        #[cfg(feature = "rdma")]
        if let (Some(v), Some(addr)) = (verbs, &config.listen) {
            let nic_cfg = scalio_common::fabric::verbs::NicConfig {
                credits: config.verbs.credits,
                buffer_len: config.verbs.buffer_bytes,
                max_connections: config.max_connections,
                secret: config.secret().map_err(ServerError::Config)?,
                // Where fill windows are bound: the registrar's directory of connections.
                peers: Some(v.registrar.peers()),
            };
            let nic = scalio_common::fabric::verbs::VerbsNic::start(v.device.clone(), resolve(addr)?, nic_cfg, service)
                .map_err(|e| ServerError::Listen { addr: addr.clone(), reason: e.to_string() })?;
            server.local_addr = Some(nic.local_addr());
            // The registrar holds the registrations: dropping it would revoke every key.
            *server._verbs_nic.lock() = Some(Box::new((nic, v.registrar)));
            return Ok(server.started(&table, n, opened.formatted));
        }
        if let Some(addr) = &config.listen {
            let nic_cfg = NicConfig {
                threads: config.nic_threads,
                max_connections: config.max_connections,
                rpc_credits: config.rpc_credits,
                max_message: config.max_message as usize,
                secret: config.secret().map_err(ServerError::Config)?,
                ..NicConfig::default()
            };
            let nic = TcpNic::bind(addr.as_str(), regions, service, nic_cfg)
                .map_err(|e| ServerError::Listen { addr: addr.clone(), reason: e.to_string() })?;
            server.local_addr = Some(nic.local_addr());
            *shared.nic.lock() = Some(nic);
        }
        Ok(server.started(&table, n, opened.formatted))
    }

    fn started(self, table: &Option<Arc<CacheTable>>, ssds: u16, formatted: bool) -> Server {
        tracing::info!(
            ssds,
            workers = self.config.workers,
            fabric = ?self.config.fabric,
            cache_slots = table.as_ref().map_or(0, |t| t.geometry().slots()),
            formatted,
            listen = ?self.local_addr,
            "server started"
        );
        self
    }

    /// The fabric address clients connect to, if listening.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// An in-process queue pair (the `mem` fabric).
    pub fn connect_mem(&self) -> MemQueuePair {
        self.mem.connect()
    }

    /// The in-process fabric, e.g. to inject faults.
    pub fn mem_fabric(&self) -> &Arc<MemFabric> {
        &self.mem
    }

    pub fn info(&self) -> &ServerInfo {
        self.shared.info()
    }

    pub fn ssds(&self) -> &[Arc<Ssd>] {
        self.shared.ssds()
    }

    pub fn table(&self) -> Option<&Arc<CacheTable>> {
        self.shared.table.as_ref()
    }

    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// The switch of this server's emulated-testbed model (`[emulation]`): suspending it lets a
    /// phase that is not measured run at the host's speed with the same I/Os.
    pub fn emulation(&self) -> &EmulationSwitch {
        &self.emulation
    }

    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// A handle that reads the counters from any thread (e.g. the metrics endpoint).
    pub fn stats_reader(&self) -> impl Fn() -> Stats + Send + Sync + 'static {
        let shared = self.shared.clone();
        move || shared.stats()
    }

    /// Adds counters (e.g. the NVMe target's) to STATS.
    pub fn add_stats_source(&self, source: Arc<dyn StatsSource>) {
        self.shared.extra.lock().push(source);
    }

    /// Stops serving: closes the fabric, lets the workers finish the writes they hold (every
    /// acknowledged write is already durable), and closes the SSDs.
    pub fn shutdown(mut self) {
        self.stop();
    }

    /// The NVMe/TCP target, if running.
    pub fn target(&self) -> Option<&Arc<NvmeTarget>> {
        self.target.as_ref()
    }

    fn stop(&mut self) {
        // (Before the workers stop: it hands them writes.)
        self.resolver = None;
        let nic = self.shared.nic.lock().take();
        if let Some(mut nic) = nic {
            nic.shutdown();
        }
        self.shared.extra.lock().clear();
        if let Some(t) = self.target.take() {
            match Arc::try_unwrap(t) {
                Ok(t) => t.shutdown(),
                Err(t) => drop(t), // stops when the last reference goes
            }
        }
        for (tx, _) in &self.workers {
            let _ = tx.send(WorkerEvent::Stop);
        }
        for (_, h) in &mut self.workers {
            if let Some(h) = h.take() {
                if h.join().is_err() {
                    tracing::error!("a worker thread panicked");
                }
            }
        }
        for s in self.shared.ssds() {
            s.shutdown();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// STATS of the fill windows (`cache.fill_windows`).
struct FillWindowStats(Arc<FillWindows>);

impl crate::stats::StatsSource for FillWindowStats {
    fn append(&self, out: &mut Vec<(String, u64)>) {
        let c = self.0.counters();
        let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        out.push(("fill_windows_granted".into(), get(&c.granted)));
        out.push(("fill_windows_refused".into(), get(&c.refused)));
        out.push(("fill_windows_revoked_done".into(), get(&c.revoked_done)));
        out.push(("fill_windows_revoked_rebound".into(), get(&c.revoked_rebound)));
        out.push(("fill_windows_revoked_closed".into(), get(&c.revoked_closed)));
        out.push(("fill_windows_in_force".into(), self.0.in_force()));
    }
}
