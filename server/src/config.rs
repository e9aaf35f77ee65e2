//! Server configuration: a TOML file and/or command-line flags, validated before anything starts.
//!
//! ```toml
//! listen = "127.0.0.1:7400"      # the fabric (software NIC) address; omit for in-process use
//! workers = 2                    # worker threads, the "DPU cores"
//! nic_threads = 1
//! max_connections = 256          # fabric connections at most; more are refused
//! rpc_credits = 256              # RPCs one connection may have unanswered (granted in the handshake)
//! max_message = "64KiB"          # largest request sent as one message; larger ones go by rendezvous
//! staging_slots = 16             # rendezvous transfers in progress at once (each slot ~1 MiB)
//! # secret_file = "/etc/scalio/secret"  # clients must present this shared secret (1-64 bytes)
//! # peer_secret_file = "/etc/scalio/peer-secret"  # cluster members prove themselves with it
//! io_threads = 4                 # per SSD
//! direct_io = true               # O_DIRECT where the filesystem allows it
//! # ssd_buckets = 65536          # buckets per SSD for a new store (default: one per 16 blocks)
//!
//! [[ssd]]
//! path = "/var/lib/scalio/ssd0.img"
//! size = "1GiB"                  # create or extend a file to this size; omit for a device
//!
//! [cache]
//! enabled = true
//! buckets = 65536
//! assoc = 8
//! lease_ms = 100
//! client_fills = true            # false: the server fills slots; clients cannot write the table
//! reservations_per_client = 64   # unfilled reservations one connection may hold at once
//! hugepages = false              # the table on 2 MiB hugepages (reserve them: vm.nr_hugepages)
//! # fill_windows = true          # a window per reservation (default: on with fabric = "verbs")
//!
//! [ditto]                        # the LEED+Ditto baseline's cache region (benchmarks only)
//! enabled = false
//! buckets = 65536
//! assoc = 8
//!
//! [write]
//! batch = 8
//! batch_timeout_us = 1000
//!
//! [limits]                       # every place a request waits is bounded; over a limit the
//! inbox_rpcs = 1024              # request is refused with Unavailable (clients may retry):
//! inbox_bytes = "32MiB"          #   RPCs (and their bytes) queued for one worker
//! pending_writes = 256           #   writes waiting for a batch, per SSD
//! pending_write_bytes = "32MiB"  #   their key and value bytes, per SSD
//! server_gets = 64               #   server (LEED-style) reads in progress, per SSD
//!
//! [target]                       # the NVMe/TCP target (the offload path)
//! enabled = true
//! listen = "127.0.0.1:4420"      # default: the fabric address's IP, port 4420
//! discovery = "127.0.0.1:8009"
//! nqn_prefix = "nqn.2026-11.io.scalio:ssd"
//! allow_writes = false
//!
//! # fabric = "verbs"             # RDMA verbs instead of the software NIC (cargo feature rdma);
//! # [verbs]                      # `listen` then is an address of the RDMA device's interface
//! # device = "mlx5_0"            # default: the first device
//! # port = 1
//! # gid_index = 3                # default: the first IPv4-mapped GID
//! # connect = "rdma_cm"          # or "tcp": a TCP handshake on `listen` (loopback works there)
//! # credits = 64                 # receive buffers pre-posted per connection (the RPC credits)
//! # buffer_bytes = 16384         # bytes per receive buffer
//! # trusted_fills = false        # see README, "Real RDMA": client fills on verbs
//!
//! [emulation]                    # emulated-testbed knobs (0 = off)
//! ssd_iops = 0
//! ssd_latency_us = 0
//! worker_io_cost_us = 0
//! ```

use scalio_common::fabric::tcp::nic::MAX_RPC_CREDITS;
use scalio_common::fabric::MAX_TRANSFER;

/// The smallest `max_message`: every request but a write's value fits in it.
pub const MIN_MAX_MESSAGE: u64 = 256;
use serde::Deserialize;
use std::path::PathBuf;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}: {reason}")]
    Parse { path: String, reason: String },
    #[error("invalid size {0:?} (use bytes or a number with K, M, G, KiB, MiB, GiB)")]
    Size(String),
    #[error("{0}")]
    Invalid(String),
}

/// Everything the server needs to start.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Fabric address (the software NIC over TCP). `None`: in-process clients only.
    pub listen: Option<String>,
    /// Worker threads (the "DPU cores"); SSD `i` belongs to worker `i % workers`.
    pub workers: usize,
    pub nic_threads: usize,
    /// Fabric connections at most; more are refused with a reason.
    pub max_connections: usize,
    /// RPCs one fabric connection may have without a reply, granted in its handshake (the
    /// message channel's credits); a client that sends more is disconnected.
    pub rpc_credits: u32,
    /// The largest request a client sends as one message (granted in its handshake: the size
    /// of the receive buffers the server posts for it). Larger requests, up to the largest
    /// value, move by rendezvous through a staging slot.
    #[serde(deserialize_with = "size")]
    pub max_message: u64,
    /// Staging slots for rendezvous transfers, server-wide (each holds the largest request,
    /// about 1 MiB; one connection may hold a quarter of them).
    pub staging_slots: usize,
    /// A file holding the shared secret clients must present (1 to 64 bytes, a trailing newline
    /// ignored). `None`: no secret is asked for.
    pub secret_file: Option<PathBuf>,
    /// In a cluster: a file holding the secret (1 to 64 bytes, a trailing newline ignored) with
    /// which members prove to each other that a connection is a member's; only such connections
    /// may send forwarded writes, copy reads and scans (`cluster::peer_auth`). It must differ from
    /// `secret_file`'s, which clients hold. `None`: any connection may send them.
    pub peer_secret_file: Option<PathBuf>,
    /// I/O threads per SSD (how many I/Os one SSD executes at once).
    pub io_threads: usize,
    pub direct_io: bool,
    /// Buckets per SSD for a new store.
    pub ssd_buckets: Option<u32>,
    #[serde(rename = "ssd")]
    pub ssds: Vec<SsdConfig>,
    pub cache: CacheConfig,
    pub ditto: DittoConfig,
    pub write: WriteConfig,
    pub limits: LimitsConfig,
    pub target: TargetConfig,
    pub emulation: EmulationConfig,
    /// The fabric clients reach this server over: `tcp` (the software NIC) or `verbs` (RDMA).
    pub fabric: scalio_common::fabric::FabricKind,
    pub verbs: VerbsServerConfig,
    /// Test-only: a deliberately broken protocol variant (feature `seeded-bugs`; not settable
    /// from TOML).
    #[cfg(feature = "seeded-bugs")]
    #[serde(skip)]
    pub seeded_bug: Option<SeededBug>,
}

/// Test-only (feature `seeded-bugs`, never in a build that serves data): protocol bugs a test
/// can switch on, to show that the linearizability checker catches what they break.
#[cfg(feature = "seeded-bugs")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeededBug {
    /// Writes are acknowledged before their keys' cache slots are invalidated: the
    /// invalidations are deferred to the SSD's next completed batch, so a GET issued after the
    /// acknowledgement can still hit the old value.
    AckBeforeInvalidate,
    /// Reservations keep the slot's generation instead of bumping it, so the generation check
    /// on a fill cannot reject a late fill of a value read before a write.
    FillWithoutGenerationCheck,
}

/// One SSD.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SsdConfig {
    pub path: PathBuf,
    /// Size to create (or extend) a file to, e.g. "1GiB". Omit for an existing file or device.
    #[serde(default, deserialize_with = "size_opt")]
    pub size: Option<u64>,
}

/// The `verbs` fabric's settings (`[verbs]`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct VerbsServerConfig {
    /// Device name (`ibv_devices`); None: the first device.
    pub device: Option<String>,
    pub port: u8,
    /// GID index; None: the first IPv4-mapped GID, else the first non-zero one.
    pub gid_index: Option<u32>,
    /// Connection setup: `"rdma_cm"` (default; `listen` is then an address of the device's
    /// interface, or the wildcard) or `"tcp"` (a TCP handshake on `listen`).
    pub connect: scalio_common::fabric::VerbsConnect,
    /// Receive buffers pre-posted per connection: a client's RPC credits (in buffers).
    pub credits: u32,
    /// Bytes of each receive buffer (the largest SEND; a message takes several).
    pub buffer_bytes: u32,
    /// Let clients fill the cache table on verbs, which has no strided keys: the table is then
    /// registered writable as a whole for fills, so any admitted client can write any byte of it.
    /// Only for trusted clients (README, "Threat model"); off, a verbs server needs
    /// `cache.client_fills = false`.
    pub trusted_fills: bool,
}

impl Default for VerbsServerConfig {
    fn default() -> Self {
        VerbsServerConfig {
            device: None,
            port: 1,
            gid_index: None,
            connect: scalio_common::fabric::VerbsConnect::RdmaCm,
            credits: 64,
            buffer_bytes: 16 << 10,
            trusted_fills: false,
        }
    }
}

impl VerbsServerConfig {
    pub fn device_config(&self) -> scalio_common::fabric::VerbsConfig {
        scalio_common::fabric::VerbsConfig {
            device: self.device.clone(),
            port: self.port,
            gid_index: self.gid_index,
            connect: self.connect,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    pub enabled: bool,
    pub buckets: u32,
    pub assoc: u8,
    /// How long a reservation waits for its fill before the slot can be reserved again.
    pub lease_ms: u64,
    /// Clients fill the slots reserved for them (the design's one-sided fill). With false the
    /// server reads the value of a miss and fills the slot itself, and the table is registered
    /// for clients READ-only: no client can write it at all (README, "Threat model").
    pub client_fills: bool,
    /// Reservations one client connection may hold unfilled (lease not expired) at once; a
    /// META_GET beyond it gets no reservation (`reservations_refused_quota`), so one client cannot
    /// keep the cache empty for everyone. Holders of many reservations at a time are clients with
    /// many misses in flight: the default leaves room for 64.
    pub reservations_per_client: u32,
    /// Put the cache table (and the LEED+Ditto baseline's region) on 2 MiB hugepages, so that a
    /// NIC translates a large table with few entries. The pages must be reserved beforehand
    /// (`/proc/sys/vm/nr_hugepages`); the server refuses to start when they are not.
    pub hugepages: bool,
    /// Client fills through a window per reservation: WRITE access to just the reserved slot's
    /// client range, for just the connection that reserved it, revoked when the reservation ends
    /// (on verbs a type-2 memory window; README, "Threat model"). No table-wide fill key is
    /// handed out then, so hits write no access timestamps (eviction goes by fill time).
    /// Unset: on with `fabric = "verbs"` (unless `verbs.trusted_fills`), off on the software NICs.
    pub fill_windows: Option<bool>,
}

impl CacheConfig {
    /// Whether client fills go through a window per reservation on `fabric`.
    pub fn fill_windows_on(&self, fabric: scalio_common::fabric::FabricKind, trusted_fills: bool) -> bool {
        let default = fabric == scalio_common::fabric::FabricKind::Verbs && !trusted_fills;
        self.enabled && self.client_fills && self.fill_windows.unwrap_or(default)
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            buckets: 65_536,
            assoc: scalio_common::table::DEFAULT_ASSOC,
            lease_ms: 100,
            client_fills: true,
            reservations_per_client: 64,
            hugepages: false,
            fill_windows: None,
        }
    }
}

/// The registered memory of the LEED+Ditto baseline's cache: `buckets × assoc` slots of
/// [`DITTO_BYTES_PER_SLOT`](scalio_common::rpc::DITTO_BYTES_PER_SLOT) bytes, zeroed, advertised in
/// HELLO. The server never touches it after registering it: the baseline's clients fill, read and
/// evict it themselves, as in Ditto.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DittoConfig {
    pub enabled: bool,
    pub buckets: u32,
    pub assoc: u8,
}

impl Default for DittoConfig {
    fn default() -> Self {
        DittoConfig { enabled: false, buckets: 65_536, assoc: scalio_common::table::DEFAULT_ASSOC }
    }
}

impl DittoConfig {
    /// Size of the region.
    pub fn region_bytes(&self) -> u64 {
        u64::from(self.buckets) * u64::from(self.assoc) * scalio_common::rpc::DITTO_BYTES_PER_SLOT as u64
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WriteConfig {
    /// Writes per batch; 1 turns batching off.
    pub batch: usize,
    pub batch_timeout_us: u64,
    /// Batches (on disjoint buckets) in flight per SSD.
    pub max_inflight: usize,
}

impl Default for WriteConfig {
    fn default() -> Self {
        WriteConfig { batch: 8, batch_timeout_us: 1000, max_inflight: 4 }
    }
}

/// Bounds on every place a request waits in the server, so that a flood of pipelined requests
/// is refused (`Status::Unavailable`, which clients report as retryable) instead of growing the
/// server's memory without bound. With the defaults, one SSD's requests hold at most about
/// 32 MiB in its worker's inbox, 32 MiB of pending writes, the batches in flight
/// (`write.max_inflight × write.batch` values, twice: the requests and the packed write) and
/// `server_gets` values of up to 1 MiB.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// RPCs queued for one worker thread.
    pub inbox_rpcs: usize,
    /// Bytes of the RPCs queued for one worker thread (one RPC is always admitted into an
    /// empty inbox).
    #[serde(deserialize_with = "size")]
    pub inbox_bytes: u64,
    /// Writes waiting for a batch, per SSD.
    pub pending_writes: usize,
    /// Key and value bytes of the writes waiting for a batch, per SSD.
    #[serde(deserialize_with = "size")]
    pub pending_write_bytes: u64,
    /// Server (LEED-style) reads in progress, per SSD.
    pub server_gets: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            inbox_rpcs: 1024,
            inbox_bytes: 32 << 20,
            pending_writes: 256,
            pending_write_bytes: 32 << 20,
            server_gets: 64,
        }
    }
}

/// The NVMe/TCP target that serves clients' block reads (the offload path).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TargetConfig {
    /// Run the target when the server listens on a fabric address.
    pub enabled: bool,
    /// I/O (and discovery) address. Default: the fabric address's IP, port 4420 (port 0, i.e.
    /// any free port, when the fabric port is 0).
    pub listen: Option<String>,
    /// A separate discovery-controller address (e.g. port 8009).
    pub discovery: Option<String>,
    /// Subsystem `i` is named `{nqn_prefix}{i}`.
    pub nqn_prefix: String,
    /// Allow NVMe writes to the SSDs (off: only the workers write the store's logs).
    pub allow_writes: bool,
}

impl Default for TargetConfig {
    fn default() -> Self {
        TargetConfig {
            enabled: true,
            listen: None,
            discovery: None,
            nqn_prefix: "nqn.2026-11.io.scalio:ssd".into(),
            allow_writes: false,
        }
    }
}

/// Emulated-testbed knobs: let a small machine show the shapes that scarce DPU cores and many
/// SSDs produce. Results measured with any of these set are emulated and are labelled so.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct EmulationConfig {
    /// Most I/Os per second per SSD (0: unlimited).
    pub ssd_iops: u64,
    /// Added latency per SSD I/O, microseconds.
    pub ssd_latency_us: u64,
    /// Worker time charged per SSD I/O a worker issues, microseconds (virtual: the worker is
    /// unavailable for that long, without spinning a host core).
    pub worker_io_cost_us: u64,
}

impl TargetConfig {
    /// Where the target listens, given the fabric address: None if the target is off.
    pub fn resolve_listen(&self, fabric: Option<std::net::SocketAddr>) -> Option<String> {
        if !self.enabled {
            return None;
        }
        if let Some(l) = &self.listen {
            return Some(l.clone());
        }
        let f = fabric?;
        let port = if f.port() == 0 { 0 } else { 4420 };
        Some(std::net::SocketAddr::new(f.ip(), port).to_string())
    }
}

impl EmulationConfig {
    pub fn is_active(&self) -> bool {
        self.ssd_iops > 0 || self.ssd_latency_us > 0 || self.worker_io_cost_us > 0
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: None,
            workers: 2,
            nic_threads: 1,
            max_connections: 256,
            rpc_credits: 256,
            max_message: scalio_common::fabric::DEFAULT_MAX_MESSAGE as u64,
            staging_slots: 16,
            secret_file: None,
            peer_secret_file: None,
            io_threads: 4,
            direct_io: true,
            ssd_buckets: None,
            ssds: Vec::new(),
            cache: CacheConfig::default(),
            ditto: DittoConfig::default(),
            write: WriteConfig::default(),
            limits: LimitsConfig::default(),
            target: TargetConfig::default(),
            emulation: EmulationConfig::default(),
            fabric: scalio_common::fabric::FabricKind::Tcp,
            verbs: VerbsServerConfig::default(),
            #[cfg(feature = "seeded-bugs")]
            seeded_bug: None,
        }
    }
}

impl ServerConfig {
    /// Reads a TOML file.
    pub fn from_file(path: &std::path::Path) -> Result<ServerConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Read { path: path.display().to_string(), reason: e.to_string() })?;
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { reason, .. } => ConfigError::Parse { path: path.display().to_string(), reason },
            other => other,
        })
    }

    pub fn from_toml(text: &str) -> Result<ServerConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse { path: "<config>".into(), reason: e.to_string() })
    }

    /// `n` file-backed SSDs of `size` bytes in `dir` (named `ssd0.img`, `ssd1.img`, ...).
    pub fn with_ssd_files(mut self, dir: &std::path::Path, n: usize, size: u64) -> ServerConfig {
        self.ssds = (0..n).map(|i| SsdConfig { path: dir.join(format!("ssd{i}.img")), size: Some(size) }).collect();
        self
    }

    /// Checks everything that can be checked before opening anything.
    /// The shared secret from `secret_file`, if one is configured.
    pub fn secret(&self) -> Result<Option<scalio_common::fabric::Secret>, ConfigError> {
        read_secret(self.secret_file.as_deref())
    }

    /// The cluster's peer secret from `peer_secret_file`, if one is configured.
    pub fn peer_secret(&self) -> Result<Option<scalio_common::fabric::Secret>, ConfigError> {
        read_secret(self.peer_secret_file.as_deref())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.ssds.is_empty() {
            return bad("no SSDs configured (add [[ssd]] entries or --ssd flags)".into());
        }
        if self.ssds.len() > usize::from(u16::MAX) {
            return bad(format!("{} SSDs is too many", self.ssds.len()));
        }
        for (i, s) in self.ssds.iter().enumerate() {
            if let Some(size) = s.size {
                if size % 512 != 0 || size < scalio_common::ssd::MIN_BLOCKS * 512 {
                    return bad(format!(
                        "SSD {i} size {size} must be a multiple of 512 and at least {} bytes",
                        scalio_common::ssd::MIN_BLOCKS * 512
                    ));
                }
            }
            if self.ssds[..i].iter().any(|o| o.path == s.path) {
                return bad(format!("SSD path {} is listed twice", s.path.display()));
            }
        }
        if self.workers == 0 || self.workers > 1024 {
            return bad(format!("workers must be between 1 and 1024, not {}", self.workers));
        }
        if self.nic_threads == 0 || self.nic_threads > 256 {
            return bad(format!("nic_threads must be between 1 and 256, not {}", self.nic_threads));
        }
        if self.max_connections == 0 || self.max_connections > 65536 {
            return bad(format!("max_connections must be between 1 and 65536, not {}", self.max_connections));
        }
        if self.rpc_credits == 0 || self.rpc_credits > MAX_RPC_CREDITS {
            return bad(format!("rpc_credits must be between 1 and {MAX_RPC_CREDITS}, not {}", self.rpc_credits));
        }
        if self.max_message < MIN_MAX_MESSAGE || self.max_message > MAX_TRANSFER as u64 {
            return bad(format!(
                "max_message must be between {MIN_MAX_MESSAGE} and {MAX_TRANSFER} bytes, not {}",
                self.max_message
            ));
        }
        if self.staging_slots == 0 || self.staging_slots > 1024 {
            return bad(format!("staging_slots must be between 1 and 1024, not {}", self.staging_slots));
        }
        let secret = self.secret()?;
        if let Some(peer) = self.peer_secret()? {
            if secret.as_ref() == Some(&peer) {
                return bad("peer_secret_file holds the clients' secret (secret_file): members would not be told apart from clients".into());
            }
        }
        if self.fabric == scalio_common::fabric::FabricKind::Verbs {
            if !self.fabric.available() {
                return bad("fabric = \"verbs\" needs a build with RDMA support (cargo feature rdma)".into());
            }
            let Some(listen) = &self.listen else {
                return bad("fabric = \"verbs\" needs `listen` (the address clients connect to)".into());
            };
            let loopback = scalio_common::fabric::parse_scoped_addr(listen).is_some_and(|a| a.ip().is_loopback())
                || listen.starts_with("localhost:");
            if loopback && self.verbs.connect == scalio_common::fabric::VerbsConnect::RdmaCm {
                return bad(format!(
                    "verbs.connect = \"rdma_cm\" cannot listen on the loopback address {listen}: use an address of \
the RDMA device's interface, or verbs.connect = \"tcp\""
                ));
            }
            if self.cache.enabled
                && self.cache.client_fills
                && !self.verbs.trusted_fills
                && self.cache.fill_windows == Some(false)
            {
                return bad("fabric = \"verbs\" cannot limit client fills to the slots' client ranges without fill \
windows (no strided keys): leave cache.fill_windows on, set cache.client_fills = false (server fills), or \
verbs.trusted_fills = true for trusted clients"
                    .into());
            }
            if self.verbs.trusted_fills && self.cache.fill_windows == Some(true) {
                return bad("verbs.trusted_fills and cache.fill_windows exclude each other: choose one".into());
            }
            let v = &self.verbs;
            if v.credits == 0 || v.credits > 4096 || v.buffer_bytes < 256 || v.buffer_bytes > 1 << 20 {
                return bad(format!(
                    "verbs.credits must be 1..=4096 and verbs.buffer_bytes 256..=1048576, not {} and {}",
                    v.credits, v.buffer_bytes
                ));
            }
        }
        if self.io_threads == 0 || self.io_threads > 1024 {
            return bad(format!("io_threads must be between 1 and 1024, not {}", self.io_threads));
        }
        if self.cache.reservations_per_client == 0 {
            return bad("cache.reservations_per_client must be at least 1 (nothing could ever be cached)".into());
        }
        if self.cache.buckets == 0 {
            return bad("cache.buckets must be at least 1".into());
        }
        if self.cache.assoc == 0 || self.cache.assoc > 64 {
            return bad(format!("cache.assoc must be between 1 and 64, not {}", self.cache.assoc));
        }
        let table_bytes = u64::from(self.cache.buckets) * u64::from(self.cache.assoc) * 112;
        if table_bytes > 64 << 30 {
            return bad(format!("a cache of {table_bytes} bytes is larger than 64 GiB"));
        }
        if self.ditto.buckets == 0 {
            return bad("ditto.buckets must be at least 1".into());
        }
        if self.ditto.assoc == 0 || self.ditto.assoc > 64 {
            return bad(format!("ditto.assoc must be between 1 and 64, not {}", self.ditto.assoc));
        }
        if self.ditto.region_bytes() > 64 << 30 {
            return bad(format!("a Ditto cache of {} bytes is larger than 64 GiB", self.ditto.region_bytes()));
        }
        if self.write.batch == 0 || self.write.batch > 1024 {
            return bad(format!("write.batch must be between 1 and 1024, not {}", self.write.batch));
        }
        if self.write.max_inflight == 0 {
            return bad("write.max_inflight must be at least 1".into());
        }
        let l = &self.limits;
        for (name, v) in [
            ("limits.inbox_rpcs", l.inbox_rpcs as u64),
            ("limits.inbox_bytes", l.inbox_bytes),
            ("limits.pending_writes", l.pending_writes as u64),
            ("limits.pending_write_bytes", l.pending_write_bytes),
            ("limits.server_gets", l.server_gets as u64),
        ] {
            if v == 0 {
                return bad(format!("{name} must be at least 1"));
            }
        }
        if let Some(b) = self.ssd_buckets {
            if b == 0 {
                return bad("ssd_buckets must be at least 1".into());
            }
        }
        if let Some(l) = &self.listen {
            check_addr("listen", l)?;
        }
        if self.target.enabled {
            if let Some(l) = &self.target.listen {
                check_addr("target.listen", l)?;
            }
            if let Some(d) = &self.target.discovery {
                check_addr("target.discovery", d)?;
            }
            if self.target.nqn_prefix.is_empty() || self.target.nqn_prefix.len() > 200 {
                return bad("target.nqn_prefix must be 1 to 200 characters".into());
            }
        }
        Ok(())
    }
}

fn check_addr(what: &str, addr: &str) -> Result<(), ConfigError> {
    use std::net::ToSocketAddrs;
    match addr.to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(_)) => Ok(()),
        _ => Err(ConfigError::Invalid(format!("{what} = {addr:?} is not a host:port address"))),
    }
}

/// Parses a size: bytes, or a number with a suffix K/M/G/T (powers of 1000) or KiB/MiB/GiB/TiB.
pub fn parse_size(s: &str) -> Result<u64, ConfigError> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| ConfigError::Size(s.to_string()))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return Err(ConfigError::Size(s.to_string())),
    };
    n.checked_mul(mult).ok_or_else(|| ConfigError::Size(s.to_string()))
}

fn size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    size_opt(d)?.ok_or_else(|| serde::de::Error::custom("a size is required"))
}

fn size_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Option::<Size>::deserialize(d)? {
        None => Ok(None),
        Some(Size::Bytes(b)) => Ok(Some(b)),
        Some(Size::Text(t)) => parse_size(&t).map(Some).map_err(serde::de::Error::custom),
    }
}

/// The secret in the file at `path`, if there is a path.
fn read_secret(path: Option<&std::path::Path>) -> Result<Option<scalio_common::fabric::Secret>, ConfigError> {
    let Some(path) = path else { return Ok(None) };
    scalio_common::fabric::Secret::from_file(path)
        .map(Some)
        .map_err(|e| ConfigError::Read { path: path.display().to_string(), reason: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1 GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("2G").unwrap(), 2_000_000_000);
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        assert!(parse_size("99999999999TiB").is_err());
    }

    #[test]
    fn toml_round_trip_and_defaults() {
        let c = ServerConfig::from_toml(
            r#"
            listen = "127.0.0.1:7400"
            workers = 4
            [[ssd]]
            path = "/tmp/a.img"
            size = "64MiB"
            [[ssd]]
            path = "/dev/nvme0n1"
            [cache]
            assoc = 16
            client_fills = false
            [ditto]
            enabled = true
            buckets = 100
            [write]
            batch = 1
            [limits]
            inbox_bytes = "8MiB"
            server_gets = 16
            "#,
        )
        .unwrap();
        assert!(c.ditto.enabled);
        assert_eq!((c.ditto.buckets, c.ditto.assoc), (100, 8));
        assert!(!ServerConfig::default().ditto.enabled, "the Ditto region is off by default");
        assert_eq!(c.workers, 4);
        assert_eq!(c.ssds[0].size, Some(64 << 20));
        assert_eq!(c.ssds[1].size, None);
        assert_eq!(c.cache.assoc, 16);
        assert_eq!(c.cache.buckets, 65_536, "unset fields keep defaults");
        assert!(!c.cache.client_fills);
        assert_eq!(c.cache.reservations_per_client, 64);
        assert!(ServerConfig::default().cache.client_fills, "clients fill by default");
        assert_eq!(c.write.batch, 1);
        assert_eq!((c.limits.inbox_bytes, c.limits.server_gets), (8 << 20, 16));
        assert_eq!(c.limits.pending_writes, LimitsConfig::default().pending_writes);
        c.validate().unwrap();
    }

    #[test]
    fn the_peer_secret_must_not_be_the_clients_secret() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let mut c = ServerConfig::default().with_ssd_files(dir.path(), 1, 16 << 20);
        c.secret_file = Some(write("clients", "open sesame\n"));
        c.peer_secret_file = Some(write("same", "open sesame"));
        assert!(c.validate().unwrap_err().to_string().contains("peer_secret_file"));
        c.peer_secret_file = Some(write("members", "members only\n"));
        c.validate().unwrap();
        assert_eq!(c.peer_secret().unwrap().unwrap().as_bytes(), b"members only");
        c.peer_secret_file = Some(write("empty", "\n"));
        assert!(matches!(c.validate(), Err(ConfigError::Read { .. })));
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        assert!(matches!(ServerConfig::from_toml("wrokers = 3"), Err(ConfigError::Parse { .. })));
        assert!(ServerConfig::from_toml("[[ssd]]\npath = \"x\"\nsize = \"lots\"").is_err());
        let base = ServerConfig::default().with_ssd_files(std::path::Path::new("/tmp"), 1, 1 << 20);
        base.validate().unwrap();
        let mut c = base.clone();
        c.workers = 0;
        assert!(c.validate().unwrap_err().to_string().contains("workers"));
        let mut c = base.clone();
        c.cache.assoc = 0;
        assert!(c.validate().is_err());
        let mut c = base.clone();
        c.cache.reservations_per_client = 0;
        assert!(c.validate().unwrap_err().to_string().contains("reservations_per_client"));
        let mut c = base.clone();
        c.ditto.assoc = 65;
        assert!(c.validate().unwrap_err().to_string().contains("ditto.assoc"));
        let mut c = base.clone();
        c.ditto.buckets = 0;
        assert!(c.validate().unwrap_err().to_string().contains("ditto.buckets"));
        let mut c = base.clone();
        c.ditto.buckets = u32::MAX;
        assert!(c.validate().unwrap_err().to_string().contains("larger than 64 GiB"));
        assert!(ServerConfig::from_toml("[ditto]\nsize = 3").is_err());
        let mut c = base.clone();
        c.limits.pending_writes = 0;
        assert!(c.validate().unwrap_err().to_string().contains("limits.pending_writes"));
        let mut c = base.clone();
        c.ssds[0].size = Some(1000);
        assert!(c.validate().unwrap_err().to_string().contains("multiple of 512"));
        let mut c = base.clone();
        c.listen = Some("nowhere".into());
        assert!(c.validate().is_err());
        let mut c = base;
        c.ssds.clear();
        assert!(c.validate().unwrap_err().to_string().contains("no SSDs"));
    }

    #[test]
    fn verbs_fabric_settings_are_checked() {
        use scalio_common::fabric::FabricKind;
        let c = ServerConfig::from_toml(
            "listen = \"127.0.0.1:7400\"\nfabric = \"verbs\"\n[verbs]\ndevice = \"rxe0\"\ngid_index = 1\ncredits = 32\n",
        )
        .unwrap();
        assert_eq!(c.fabric, FabricKind::Verbs);
        assert_eq!(c.verbs.device_config().device.as_deref(), Some("rxe0"));
        assert_eq!((c.verbs.gid_index, c.verbs.credits, c.verbs.port), (Some(1), 32, 1));
        assert!(ServerConfig::from_toml("fabric = \"infiniband\"").is_err());
        assert!(ServerConfig::from_toml("[verbs]\ngid = 3").is_err());
        use scalio_common::fabric::VerbsConnect;
        assert_eq!(c.verbs.connect, VerbsConnect::RdmaCm, "rdma_cm by default");
        let tcp = ServerConfig::from_toml("[verbs]\nconnect = \"tcp\"").unwrap();
        assert_eq!(tcp.verbs.device_config().connect, VerbsConnect::Tcp);
        assert!(ServerConfig::from_toml("[verbs]\nconnect = \"ud\"").is_err());
        let mut base = ServerConfig::default().with_ssd_files(std::path::Path::new("/tmp"), 1, 1 << 20);
        base.fabric = FabricKind::Verbs;
        base.listen = Some("10.0.2.15:7400".into());
        let err = |c: &ServerConfig| c.validate().unwrap_err().to_string();
        if !FabricKind::Verbs.available() {
            assert!(err(&base).contains("RDMA support"), "{}", err(&base));
            return;
        }
        // By default client fills on verbs go through a window per reservation.
        base.validate().unwrap();
        assert!(base.cache.fill_windows_on(FabricKind::Verbs, false));
        assert!(!base.cache.fill_windows_on(FabricKind::Tcp, false), "off on the software NICs");
        assert!(!base.cache.fill_windows_on(FabricKind::Verbs, true), "off with trusted fills");
        // Without windows, client fills need strided keys, which verbs lacks: refused unless the
        // clients are trusted.
        let mut c = base.clone();
        c.cache.fill_windows = Some(false);
        assert!(err(&c).contains("client_fills"), "{}", err(&c));
        c.verbs.trusted_fills = true;
        c.validate().unwrap();
        c.cache.fill_windows = Some(true);
        assert!(err(&c).contains("exclude each other"), "{}", err(&c));
        let mut c = base.clone();
        c.cache.client_fills = false;
        c.validate().unwrap();
        let mut c = base.clone();
        c.verbs.trusted_fills = true;
        c.validate().unwrap();
        // rdma_cm cannot use loopback; the TCP handshake can.
        c.listen = Some("127.0.0.1:7400".into());
        assert!(err(&c).contains("loopback"), "{}", err(&c));
        c.verbs.connect = VerbsConnect::Tcp;
        c.validate().unwrap();
        c.verbs.credits = 0;
        assert!(err(&c).contains("verbs.credits"));
        let mut c = base;
        c.cache.client_fills = false;
        c.listen = None;
        assert!(err(&c).contains("listen"));
    }
}
