//! The NVMe/TCP target: the software stand-in for the NIC's NVMe-oF target offload.
//!
//! Clients that miss the cache read SSD blocks through it with standard NVMe over Fabrics
//! (TCP transport), without the KV worker threads. It runs on its own threads and counts its
//! own CPU time and work ([`NvmeTarget::stats`]). Each subsystem exports one namespace (NSID 1,
//! 512-byte LBAs) backed by a [`TargetNamespace`]; the KV server plugs in its SSD layer, tests
//! and the `scalio-nvme serve` tool use [`FileNamespace`].
//!
//! Supported: ICReq/ICResp with optional header and data digests, Fabrics Connect (dynamic
//! controllers, any host NQN), Property Get/Set, Disconnect, Identify (CNS 0, 1, 2, 3, and the
//! NVM command set structures), Get Log Page (discovery log, error, SMART, firmware slot),
//! Set/Get Features (Number of Queues, Keep Alive Timer, Async Event Configuration, Volatile
//! Write Cache), Keep Alive with the timeout enforced, Asynchronous Event Request (held), Abort,
//! and Read, Write (in-capsule and R2T/H2CData) and Flush. The discovery controller
//! (`nqn.2014-08.org.nvmexpress.discovery`) answers on both the I/O and the discovery listener.

mod admin;
mod controller;
mod event_loop;
mod namespace;
mod session;
mod stats;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use scalio_common::cputime::CpuGroup;
use scalio_common::nvme::fabrics::{DEFAULT_DISCOVERY_PORT, DEFAULT_PORT, DISCOVERY_NQN, MAX_NQN_LEN};
use scalio_common::nvme::pdu::{MAX_PDA, MIN_MAXH2CDATA};
use scalio_common::nvme::Digests;

pub use namespace::{FileNamespace, MemNamespace, NamespaceError, ReadDone, TargetNamespace, WriteDone, LBA_SIZE};
pub use stats::{CommandKind, TargetStats};

use controller::{Settings, Subsystem, TargetShared};
use event_loop::EventLoop;

/// One exported subsystem: one namespace (NSID 1).
#[derive(Clone)]
pub struct SubsystemConfig {
    pub nqn: String,
    pub namespace: Arc<dyn TargetNamespace>,
    /// Accept Write commands. Off by default: the KV store owns the data on its SSDs and its
    /// writers go through the workers; hosts get "Namespace Is Write Protected".
    pub allow_writes: bool,
}

impl SubsystemConfig {
    pub fn new(nqn: impl Into<String>, namespace: Arc<dyn TargetNamespace>) -> SubsystemConfig {
        SubsystemConfig { nqn: nqn.into(), namespace, allow_writes: false }
    }

    pub fn allow_writes(mut self, allow: bool) -> SubsystemConfig {
        self.allow_writes = allow;
        self
    }
}

impl std::fmt::Debug for SubsystemConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubsystemConfig")
            .field("nqn", &self.nqn)
            .field("blocks", &self.namespace.blocks())
            .field("allow_writes", &self.allow_writes)
            .finish()
    }
}

/// How to run the target.
#[derive(Debug, Clone)]
pub struct TargetConfig {
    /// Listener for I/O (and discovery) controllers; default `0.0.0.0:4420`.
    pub listen: SocketAddr,
    /// Listener for the discovery controller; default `0.0.0.0:8009`. `None`: only on `listen`.
    pub discovery_listen: Option<SocketAddr>,
    pub subsystems: Vec<SubsystemConfig>,
    /// Event-loop threads.
    pub threads: usize,
    /// Largest submission queue (entries) a host may connect.
    pub max_queue_entries: u16,
    /// I/O queues per controller.
    pub max_io_queues: u16,
    /// Largest transfer of one command: 2^mdts 4 KiB pages (MDTS).
    pub mdts: u8,
    /// In-capsule data accepted for I/O commands (IOCCSZ = 4 + this / 16).
    pub in_capsule_data: u32,
    /// Largest data of one H2CData PDU (MAXH2CDATA); R2Ts ask for at most this much.
    pub maxh2cdata: u32,
    /// Largest data of one C2HData PDU.
    pub c2h_chunk: u32,
    /// Complete successful reads with the C2HData SUCCESS flag when the host disabled SQ flow
    /// control, instead of a response capsule.
    pub c2h_success: bool,
    /// Per-connection cap on data buffered for commands in flight.
    pub max_inflight_bytes: usize,
    /// Controller PDU data alignment (CPDA, 0's based dwords). Linux hosts need 0.
    pub cpda: u8,
    /// Digests granted when a host asks for them.
    pub allow_header_digest: bool,
    pub allow_data_digest: bool,
    /// Keep Alive Timeout for discovery controllers whose host asks for none (ms).
    pub discovery_kato_ms: u32,
    pub model: String,
}

impl Default for TargetConfig {
    fn default() -> Self {
        TargetConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)),
            discovery_listen: Some(SocketAddr::from(([0, 0, 0, 0], DEFAULT_DISCOVERY_PORT))),
            subsystems: Vec::new(),
            threads: 1,
            max_queue_entries: 1024,
            max_io_queues: 16,
            mdts: 5,
            in_capsule_data: 8192,
            maxh2cdata: 32 * 1024,
            c2h_chunk: 32 * 1024,
            c2h_success: true,
            max_inflight_bytes: 16 << 20,
            cpda: 0,
            allow_header_digest: true,
            allow_data_digest: true,
            discovery_kato_ms: 120_000,
            model: "scalio NVMe/TCP target".to_string(),
        }
    }
}

impl TargetConfig {
    /// Defaults, listening on `listen` with the discovery controller on the same address only.
    pub fn on(listen: SocketAddr) -> TargetConfig {
        TargetConfig { listen, discovery_listen: None, ..TargetConfig::default() }
    }

    pub fn subsystem(mut self, s: SubsystemConfig) -> TargetConfig {
        self.subsystems.push(s);
        self
    }
}

/// Why the target did not start.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("invalid target configuration: {0}")]
    Config(String),
    #[error("cannot start the target's threads: {0}")]
    Thread(#[source] std::io::Error),
}

/// A running NVMe/TCP target. Stops when dropped.
pub struct NvmeTarget {
    shared: Arc<TargetShared>,
    local: SocketAddr,
    discovery: Option<SocketAddr>,
    stop: Arc<AtomicBool>,
    wakers: Vec<Arc<mio::Waker>>,
    threads: Vec<JoinHandle<()>>,
}

fn validate(c: &TargetConfig) -> Result<(), TargetError> {
    let bad = |m: String| Err(TargetError::Config(m));
    if c.threads == 0 {
        return bad("at least one thread".into());
    }
    if c.max_queue_entries < 2 {
        return bad("queues need at least 2 entries".into());
    }
    if c.max_io_queues == 0 {
        return bad("at least one I/O queue".into());
    }
    if !(1..=8).contains(&c.mdts) {
        return bad(format!("MDTS {} outside 1..=8 (8 KiB to 1 MiB)", c.mdts));
    }
    if c.maxh2cdata < MIN_MAXH2CDATA || !c.maxh2cdata.is_multiple_of(4) {
        return bad(format!("MAXH2CDATA {} must be a multiple of 4 and at least 4096", c.maxh2cdata));
    }
    if c.in_capsule_data > 1 << 20 || !c.in_capsule_data.is_multiple_of(16) {
        return bad(format!("in-capsule data {} must be a multiple of 16 up to 1 MiB", c.in_capsule_data));
    }
    if c.c2h_chunk == 0 {
        return bad("C2HData chunk must not be empty".into());
    }
    if c.cpda > MAX_PDA {
        return bad(format!("CPDA {} above {MAX_PDA}", c.cpda));
    }
    let mut seen = std::collections::HashSet::new();
    for s in &c.subsystems {
        if s.nqn.is_empty() || s.nqn.len() > MAX_NQN_LEN || !s.nqn.bytes().all(|b| (0x21..0x7f).contains(&b)) {
            return bad(format!("NQN {:?} must be 1 to {MAX_NQN_LEN} printable ASCII characters", s.nqn));
        }
        if s.nqn == DISCOVERY_NQN {
            return bad("a subsystem cannot use the discovery NQN".into());
        }
        if !seen.insert(s.nqn.clone()) {
            return bad(format!("NQN {} exported twice", s.nqn));
        }
    }
    Ok(())
}

fn bind(addr: SocketAddr) -> Result<TcpListener, TargetError> {
    TcpListener::bind(addr).map_err(|source| TargetError::Bind { addr, source })
}

impl NvmeTarget {
    /// Binds the listeners and starts the event loops.
    pub fn start(config: TargetConfig) -> Result<NvmeTarget, TargetError> {
        validate(&config)?;
        let io_listener = bind(config.listen)?;
        let local = io_listener.local_addr().map_err(|source| TargetError::Bind { addr: config.listen, source })?;
        let mut listeners = vec![io_listener];
        let mut discovery = None;
        if let Some(addr) = config.discovery_listen {
            let l = bind(addr)?;
            discovery = Some(l.local_addr().map_err(|source| TargetError::Bind { addr, source })?);
            listeners.push(l);
        }
        let max_transfer = 4096u32 << config.mdts;
        let settings = Settings {
            mqes: config.max_queue_entries - 1,
            max_io_queues: config.max_io_queues,
            mdts: config.mdts,
            max_transfer,
            io_in_capsule: config.in_capsule_data,
            // Hosts may send up to 8 KiB in-capsule on the admin queue and for Fabrics commands.
            admin_in_capsule: 8192,
            maxh2cdata: config.maxh2cdata,
            c2h_chunk: config.c2h_chunk,
            c2h_success: config.c2h_success,
            max_inflight_bytes: config.max_inflight_bytes.max(max_transfer as usize),
            output_high_water: 4 << 20,
            cpda: config.cpda,
            digests_allowed: Digests { header: config.allow_header_digest, data: config.allow_data_digest },
            discovery_kato_ms: config.discovery_kato_ms,
            model: config.model.clone(),
            firmware: env!("CARGO_PKG_VERSION").chars().take(8).collect(),
        };
        let subsystems = config
            .subsystems
            .iter()
            .map(|s| Subsystem::new(s.nqn.clone(), s.namespace.clone(), s.allow_writes))
            .collect();
        let shared = Arc::new(TargetShared::new(settings, subsystems, local));
        let stop = Arc::new(AtomicBool::new(false));

        let mut loops = Vec::with_capacity(config.threads);
        for i in 0..config.threads {
            loops.push(EventLoop::new(i, shared.clone(), stop.clone()).map_err(TargetError::Thread)?);
        }
        let handles: Vec<_> = loops.iter().map(|l| l.handle()).collect();
        loops[0].accept_on(listeners, handles.clone()).map_err(TargetError::Thread)?;
        let mut threads = Vec::new();
        for (i, l) in loops.into_iter().enumerate() {
            let t = std::thread::Builder::new()
                .name(format!("nvme-target-{i}"))
                .spawn(move || l.run())
                .map_err(TargetError::Thread);
            match t {
                Ok(t) => threads.push(t),
                Err(e) => {
                    stop.store(true, Ordering::Release);
                    for h in &handles {
                        let _ = h.waker.wake();
                    }
                    return Err(e);
                }
            }
        }
        tracing::info!(
            "nvme target listening on {local} (discovery {discovery:?}), {} subsystem(s)",
            config.subsystems.len()
        );
        Ok(NvmeTarget {
            shared,
            local,
            discovery,
            stop,
            wakers: handles.into_iter().map(|h| h.waker).collect(),
            threads,
        })
    }

    /// The I/O listener's address (with the real port if 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The discovery listener's address, if it has its own.
    pub fn discovery_addr(&self) -> Option<SocketAddr> {
        self.discovery
    }

    pub fn stats(&self) -> TargetStats {
        self.shared.counters.snapshot(&self.shared.cpu)
    }

    /// The CPU-time group of the target's threads.
    pub fn cpu(&self) -> Arc<CpuGroup> {
        self.shared.cpu.clone()
    }

    /// Stops the loops and closes every connection.
    pub fn shutdown(mut self) {
        self.stop_threads();
    }

    fn stop_threads(&mut self) {
        self.stop.store(true, Ordering::Release);
        for w in &self.wakers {
            let _ = w.wake();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for NvmeTarget {
    fn drop(&mut self) {
        self.stop_threads();
    }
}
