//! `scalio-server`: runs a scalio server until SIGINT or SIGTERM.

use anyhow::{bail, Context};
use clap::Parser;
use scalio_common::cluster::{ClusterUrl, Member, NodeId};
use scalio_common::ssd::BLOCK_SIZE;
use scalio_server::cluster::{Agent, AgentConfig, EtcdReady, Ownership};
use scalio_server::config::{parse_size, SsdConfig};
use scalio_server::{Server, ServerConfig};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The scalio JBOF/DPU server: a one-sided-readable cache table in memory, data on SSDs.
///
/// Flags override the config file. SSDs come from the file's [[ssd]] entries, from --ssd flags,
/// or from --ssd-dir with --ssds and --ssd-size (files ssd0.img, ssd1.img, ... created as needed).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// TOML configuration file.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Fabric (software NIC) address to listen on.
    #[arg(long)]
    listen: Option<String>,
    /// An SSD: PATH or PATH:SIZE (SIZE creates or extends a file, e.g. 1GiB). Repeatable.
    #[arg(long = "ssd", value_name = "PATH[:SIZE]")]
    ssd: Vec<String>,
    /// Directory for file-backed SSDs (with --ssds and --ssd-size).
    #[arg(long)]
    ssd_dir: Option<PathBuf>,
    /// Number of file-backed SSDs in --ssd-dir.
    #[arg(long, default_value_t = 1)]
    ssds: usize,
    /// Size of each file-backed SSD in --ssd-dir.
    #[arg(long, default_value = "256MiB")]
    ssd_size: String,
    /// Worker threads (the "DPU cores").
    #[arg(long)]
    workers: Option<usize>,
    /// Software NIC threads.
    #[arg(long)]
    nic_threads: Option<usize>,
    /// Fabric connections at most.
    #[arg(long)]
    max_connections: Option<usize>,
    /// A file holding the shared secret clients must present (1-64 bytes).
    #[arg(long)]
    secret_file: Option<std::path::PathBuf>,
    /// In a cluster: a file holding the secret members prove themselves to each other with
    /// (1-64 bytes, not the clients' secret); only connections that presented it may send
    /// forwarded writes, copy reads and scans.
    #[arg(long, requires = "cluster")]
    peer_secret_file: Option<std::path::PathBuf>,
    /// Cache-table buckets.
    #[arg(long)]
    cache_buckets: Option<u32>,
    /// Slots per cache bucket.
    #[arg(long)]
    assoc: Option<u8>,
    /// Turn the cache table off.
    #[arg(long)]
    no_cache: bool,
    /// The server fills the cache table itself; clients get no WRITE access to it
    /// (`cache.client_fills = false`, for clients whose code is not trusted).
    #[arg(long)]
    server_fills: bool,
    /// Writes per batch (1: no batching).
    #[arg(long)]
    batch: Option<usize>,
    /// Longest a write waits for its batch, microseconds.
    #[arg(long)]
    batch_timeout_us: Option<u64>,
    /// NVMe/TCP target address for clients' block reads (default: the fabric IP, port 4420).
    #[arg(long)]
    target: Option<String>,
    /// Do not run the NVMe/TCP target (clients then need the `direct` block path).
    #[arg(long, conflicts_with = "target")]
    no_target: bool,
    /// NVMe/TCP discovery controller address (e.g. 127.0.0.1:8009).
    #[arg(long)]
    discovery: Option<String>,
    /// Print the effective configuration as TOML-like text and exit.
    #[arg(long)]
    print_config: bool,
    /// Join a cluster coordinated by etcd: etcd://HOST:PORT[/prefix] (default prefix /scalio).
    #[arg(long, value_name = "URL")]
    cluster: Option<ClusterUrl>,
    /// This server's id in the cluster (default: its fabric listen address).
    #[arg(long, requires = "cluster")]
    node_id: Option<String>,
    /// Serve the counters in the Prometheus text format over HTTP at this address.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// Seconds the cluster lease lives without renewal (a stopped server leaves after this).
    #[arg(long, default_value_t = 5, requires = "cluster")]
    lease_ttl: u64,
    /// Replication factor (1 to 3: servers per chain) of the cluster, used when this server
    /// creates the cluster map; a cluster keeps the factor its map was created with. Chains
    /// are capped by the number of servers (one server: chains of one).
    #[arg(long, default_value_t = 2, requires = "cluster", value_parser = clap::value_parser!(u8).range(1..=3))]
    replication: u8,
    /// A new cluster's first map is written once this many servers have joined (so that its
    /// chains start in ring order); later joiners enter the chains at the head.
    #[arg(long, default_value_t = 1, requires = "cluster")]
    initial_members: usize,
}

fn build_config(args: &Args) -> anyhow::Result<ServerConfig> {
    let mut c = match &args.config {
        Some(p) => ServerConfig::from_file(p)?,
        None => ServerConfig::default(),
    };
    if let Some(l) = &args.listen {
        c.listen = Some(l.clone());
    }
    if c.listen.is_none() {
        c.listen = Some("127.0.0.1:7400".into());
    }
    for s in &args.ssd {
        let (path, size) = match s.rsplit_once(':') {
            Some((p, sz)) if !sz.is_empty() && sz.chars().next().is_some_and(|c| c.is_ascii_digit()) => {
                (p, Some(parse_size(sz)?))
            }
            _ => (s.as_str(), None),
        };
        c.ssds.push(SsdConfig { path: path.into(), size });
    }
    if let Some(dir) = &args.ssd_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        c = c.with_ssd_files(dir, args.ssds, parse_size(&args.ssd_size)?);
    }
    if let Some(w) = args.workers {
        c.workers = w;
    }
    if let Some(n) = args.nic_threads {
        c.nic_threads = n;
    }
    if let Some(n) = args.max_connections {
        c.max_connections = n;
    }
    if let Some(p) = &args.secret_file {
        c.secret_file = Some(p.clone());
    }
    if let Some(p) = &args.peer_secret_file {
        c.peer_secret_file = Some(p.clone());
    }
    if let Some(b) = args.cache_buckets {
        c.cache.buckets = b;
    }
    if let Some(a) = args.assoc {
        c.cache.assoc = a;
    }
    if args.no_cache {
        c.cache.enabled = false;
    }
    if args.server_fills {
        c.cache.client_fills = false;
    }
    if let Some(b) = args.batch {
        c.write.batch = b;
    }
    if let Some(t) = args.batch_timeout_us {
        c.write.batch_timeout_us = t;
    }
    if let Some(t) = &args.target {
        c.target.enabled = true;
        c.target.listen = Some(t.clone());
    }
    if args.no_target {
        c.target.enabled = false;
    }
    if let Some(d) = &args.discovery {
        c.target.discovery = Some(d.clone());
    }
    if c.ssds.is_empty() {
        bail!("no SSDs: give --ssd PATH[:SIZE], --ssd-dir DIR, or [[ssd]] entries in --config");
    }
    c.validate()?;
    Ok(c)
}

/// Blocks SIGINT and SIGTERM in this thread (and the threads it starts), so that `wait_for_signal`
/// can take them synchronously.
fn block_signals() -> libc::sigset_t {
    // SAFETY: the set is initialised by sigemptyset before use; pthread_sigmask only changes the
    // calling thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    let mut sig = 0;
    // SAFETY: `set` is a valid signal set and `sig` a valid out-pointer.
    unsafe { libc::sigwait(set, &mut sig) };
    sig
}

/// Registers the server in the cluster and waits for a map that includes it.
fn join_cluster(args: &Args, url: &ClusterUrl, own: &Arc<Ownership>, server: &Server) -> anyhow::Result<Agent> {
    let info = server.info();
    let me = Member {
        id: own.me().clone(),
        fabric: server.local_addr().map(|a| a.to_string()).context("a cluster member needs a fabric address")?,
        target: info.targets.first().map(|t| t.addr.clone()),
        subsystems: info.targets.iter().map(|t| t.nqn.clone()).collect(),
        capacity_bytes: info.ssds.iter().map(|s| s.geometry.total_blocks * BLOCK_SIZE as u64).sum(),
    };
    let mut cfg = AgentConfig::new(url.clone(), me);
    cfg.lease_ttl = Duration::from_secs(args.lease_ttl);
    cfg.params.replication = args.replication;
    cfg.initial_members = args.initial_members;
    let agent = Agent::start(cfg, own.clone())?;
    let map = Agent::wait_for_map(own, Duration::from_secs(30))?;
    let (partitions, _) = map.partitions_of(own.me());
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "scalio-server cluster {url} id {} epoch {} partitions {partitions}", own.me(), map.epoch);
    let _ = out.flush();
    Ok(agent)
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        // Colour only on a terminal: logs in files and pipes stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let config = build_config(&args)?;
    if args.print_config {
        println!("{config:#?}");
        return Ok(());
    }
    let signals = block_signals();
    let ownership = match &args.cluster {
        None => None,
        Some(_) => {
            let listen = config.listen.clone().unwrap_or_default();
            let id = args.node_id.clone().unwrap_or(listen);
            if id.is_empty() || id.ends_with(":0") {
                bail!("give --node-id: the listen address {id:?} is not a stable cluster id");
            }
            Some(Arc::new(Ownership::new(NodeId(id))))
        }
    };
    let server = match &ownership {
        None => Server::start(&config)?,
        Some(own) => Server::start_in_cluster(&config, own.clone())?,
    };
    {
        // Lines on stdout that scripts can wait for; a closed stdout is not an error.
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        if let Some(a) = server.local_addr() {
            let _ = writeln!(out, "scalio-server listening on {a}");
        }
        for t in &server.info().targets {
            let _ = writeln!(out, "scalio-server nvme-tcp target {} {} (SSD {})", t.addr, t.nqn, t.ssd);
        }
        let _ = out.flush();
    }
    let _metrics = match &args.metrics {
        None => None,
        Some(addr) => {
            let read = server.stats_reader();
            let own = ownership.clone();
            let source: Arc<scalio_server::metrics::MetricsSource> = Arc::new(move || {
                let cluster = own.as_ref().and_then(|o| o.map().map(|m| (m, o.me().clone())));
                (read(), cluster)
            });
            let m = scalio_server::metrics::MetricsServer::start(addr, source)
                .with_context(|| format!("metrics endpoint on {addr}"))?;
            println!("scalio-server metrics http://{}/metrics", m.local_addr());
            Some(m)
        }
    };
    let agent = match (&args.cluster, &ownership) {
        (Some(url), Some(own)) => Some(join_cluster(&args, url, own, &server)?),
        _ => None,
    };
    // Copies the partitions maps move here, and reports them ready in etcd.
    let mover = match &args.cluster {
        Some(url) => Some(server.start_mover(Arc::new(EtcdReady::new(url, Duration::from_secs(2))))?),
        None => None,
    };
    let sig = wait_for_signal(&signals);
    tracing::info!(signal = sig, "shutting down");
    drop(mover);
    if let Some(agent) = agent {
        agent.stop();
    }
    server.shutdown();
    Ok(())
}
