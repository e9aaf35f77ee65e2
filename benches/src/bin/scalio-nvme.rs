//! `scalio-nvme`: a small NVMe/TCP tool. Talks to any NVMe/TCP target (scalio's, Linux
//! nvmet-tcp, SPDK) and can run scalio's target over files for interop tests.
//!
//! ```text
//! scalio-nvme discover --addr 127.0.0.1:8009
//! scalio-nvme identify --addr 127.0.0.1:4420 --nqn nqn.2024-01.io.scalio:ssd0
//! scalio-nvme read     --addr ... --nqn ... --lba 0 --count 8 --hex
//! scalio-nvme write    --addr ... --nqn ... --lba 0 --pattern 0xa5 --count 8
//! scalio-nvme serve    --listen 0.0.0.0:4420 --file /tmp/ssd0.img:nqn.2024-01.io.scalio:ssd0
//! ```

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use scalio_client::nvme::{discover, ConnectOptions, NvmeTcpController};
use scalio_common::nvme::discovery::{adrfam, subtype, trtype};
use scalio_common::nvme::fabrics::{DEFAULT_DISCOVERY_PORT, DEFAULT_PORT};
use scalio_server::target::{FileNamespace, NvmeTarget, SubsystemConfig, TargetConfig};

#[derive(Parser)]
#[command(name = "scalio-nvme", about = "NVMe over Fabrics (TCP) tool: discover, identify, read, write, serve")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the discovery log page of a discovery controller.
    Discover {
        #[arg(long, default_value_t = SocketAddr::from(([127, 0, 0, 1], DEFAULT_DISCOVERY_PORT)))]
        addr: SocketAddr,
        #[command(flatten)]
        host: HostArgs,
    },
    /// Print Identify Controller and Identify Namespace data.
    Identify {
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Read logical blocks to stdout, a file, or as a hex dump.
    Read {
        #[command(flatten)]
        target: TargetArgs,
        #[arg(long, default_value_t = 0)]
        lba: u64,
        /// Logical blocks to read.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Write the data to this file instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Print a hex dump instead of raw bytes.
        #[arg(long)]
        hex: bool,
    },
    /// Write logical blocks from a file or a repeated byte.
    Write {
        #[command(flatten)]
        target: TargetArgs,
        #[arg(long, default_value_t = 0)]
        lba: u64,
        /// Data to write (its size must be a whole number of blocks).
        #[arg(long, conflicts_with = "pattern")]
        file: Option<PathBuf>,
        /// A byte to repeat (decimal or 0x-hex), `--count` blocks of it.
        #[arg(long)]
        pattern: Option<String>,
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Flush after writing.
        #[arg(long)]
        flush: bool,
    },
    /// Run scalio's NVMe/TCP target, exporting files or block devices.
    Serve {
        #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)))]
        listen: SocketAddr,
        /// Separate discovery listener (the discovery controller also answers on --listen).
        #[arg(long)]
        discovery: Option<SocketAddr>,
        /// `PATH[:NQN]`, once per subsystem (default NQN: nqn.2024-01.io.scalio:<file name>).
        #[arg(long = "file", required = true)]
        files: Vec<String>,
        /// Accept writes (otherwise namespaces are write protected).
        #[arg(long)]
        allow_writes: bool,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Print the target's counters this often (seconds, 0 = never).
        #[arg(long, default_value_t = 0)]
        stats_every: u64,
    },
}

#[derive(Args, Clone)]
struct HostArgs {
    /// Host NQN (default: a random UUID-based one).
    #[arg(long)]
    hostnqn: Option<String>,
    #[arg(long)]
    header_digest: bool,
    #[arg(long)]
    data_digest: bool,
    /// Per-command timeout, seconds.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

#[derive(Args, Clone)]
struct TargetArgs {
    #[arg(long, default_value_t = SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)))]
    addr: SocketAddr,
    /// Subsystem NQN.
    #[arg(long)]
    nqn: String,
    #[arg(long, default_value_t = 1)]
    nsid: u32,
    #[command(flatten)]
    host: HostArgs,
}

fn options(h: &HostArgs) -> ConnectOptions {
    let mut o = ConnectOptions {
        header_digest: h.header_digest,
        data_digest: h.data_digest,
        command_timeout: Duration::from_secs(h.timeout),
        ..ConnectOptions::default()
    };
    if let Some(n) = &h.hostnqn {
        o.host_nqn = n.clone();
    }
    o
}

async fn connect(t: &TargetArgs) -> Result<NvmeTcpController> {
    NvmeTcpController::connect(t.addr, &t.nqn, options(&t.host))
        .await
        .with_context(|| format!("connecting to {} at {}", t.nqn, t.addr))
}

fn parse_byte(s: &str) -> Result<u8> {
    let v = if let Some(h) = s.strip_prefix("0x") { u8::from_str_radix(h, 16) } else { s.parse() };
    v.with_context(|| format!("{s:?} is not a byte"))
}

fn hex_dump(data: &[u8], base: u64) -> String {
    let mut out = String::new();
    for (i, line) in data.chunks(16).enumerate() {
        let hex: Vec<String> = line.iter().map(|b| format!("{b:02x}")).collect();
        let text: String = line.iter().map(|&b| if (0x20..0x7f).contains(&b) { b as char } else { '.' }).collect();
        out.push_str(&format!("{:08x}  {:<47}  |{}|\n", base + (i * 16) as u64, hex.join(" "), text));
    }
    out
}

fn name_of(table: &[(u8, &'static str)], v: u8) -> String {
    table.iter().find(|(k, _)| *k == v).map_or_else(|| format!("{v}"), |(_, n)| n.to_string())
}

async fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Discover { addr, host } => {
            let entries = discover(addr, options(&host)).await.with_context(|| format!("discovery at {addr}"))?;
            println!("Discovery log: {} record(s)", entries.len());
            for (i, e) in entries.iter().enumerate() {
                println!("===== Entry {i} =====");
                println!(
                    "trtype:  {}",
                    name_of(&[(trtype::TCP, "tcp"), (trtype::RDMA, "rdma"), (trtype::FC, "fc")], e.trtype)
                );
                println!("adrfam:  {}", name_of(&[(adrfam::IPV4, "ipv4"), (adrfam::IPV6, "ipv6")], e.adrfam));
                println!(
                    "subtype: {}",
                    name_of(
                        &[
                            (subtype::NVME, "nvme subsystem"),
                            (subtype::DISCOVERY_REFERRAL, "discovery referral"),
                            (subtype::CURRENT_DISCOVERY, "current discovery subsystem")
                        ],
                        e.subtype
                    )
                );
                println!("treq:    {:#04x}", e.treq);
                println!("portid:  {}", e.portid);
                println!("trsvcid: {}", e.trsvcid);
                println!("subnqn:  {}", e.subnqn);
                println!("traddr:  {}", e.traddr);
                println!("cntlid:  {:#06x}", e.cntlid);
                println!("asqsz:   {}", e.asqsz);
            }
        }
        Cmd::Identify { target } => {
            let c = connect(&target).await?;
            let id = c.identity();
            let cap = c.cap();
            println!("subnqn:   {}", id.subnqn);
            println!("cntlid:   {}", c.cntlid());
            println!("model:    {}", id.model);
            println!("serial:   {}", id.serial);
            println!("firmware: {}", id.firmware);
            println!("version:  {}.{}.{}", c.version() >> 16, (c.version() >> 8) & 0xff, c.version() & 0xff);
            println!("type:     {}", name_of(&[(1, "I/O"), (2, "discovery"), (3, "administrative")], id.cntrltype));
            println!("mdts:     {} (max transfer {} bytes)", id.mdts, c.max_transfer());
            println!("cap:      mqes {} to {}x500ms css {:#x}", cap.mqes, cap.to, cap.css);
            println!(
                "ioccsz:   {} (in-capsule data {} bytes)  iorcsz {}  icdoff {}",
                id.ioccsz,
                id.max_in_capsule_data(),
                id.iorcsz,
                id.icdoff
            );
            println!(
                "sgls:     {:#010x}  maxcmd {}  nn {}  kas {}  vwc {:#x}  cmic {:#x}",
                id.sgls, id.maxcmd, id.nn, id.kas, id.vwc, id.cmic
            );
            println!("I/O queues: {}", c.io_queue_count());
            for n in c.namespaces() {
                let ns = c.identify_namespace(n.nsid).await?;
                println!(
                    "namespace {}: {} blocks of {} bytes ({:.1} MiB){}  nguid {}",
                    n.nsid,
                    n.blocks,
                    n.block_size,
                    (n.blocks * u64::from(n.block_size)) as f64 / (1 << 20) as f64,
                    if n.write_protected { ", write protected" } else { "" },
                    ns.nguid.iter().map(|b| format!("{b:02x}")).collect::<String>()
                );
            }
            if target.nsid != 1 && !c.namespaces().iter().any(|n| n.nsid == target.nsid) {
                println!("(namespace {} is not active)", target.nsid);
            }
            c.disconnect().await?;
        }
        Cmd::Read { target, lba, count, output, hex } => {
            let c = connect(&target).await?;
            let data = c.read(target.nsid, lba, count).await.context("read")?;
            let bs = c.namespace(target.nsid).await?.block_size;
            c.disconnect().await?;
            match (output, hex) {
                (Some(path), _) => {
                    std::fs::write(&path, &data).with_context(|| format!("writing {}", path.display()))?
                }
                (None, true) => print!("{}", hex_dump(&data, lba * u64::from(bs))),
                (None, false) => std::io::stdout().write_all(&data)?,
            }
        }
        Cmd::Write { target, lba, file, pattern, count, flush } => {
            let c = connect(&target).await?;
            let bs = c.namespace(target.nsid).await?.block_size as usize;
            let data = match (file, pattern) {
                (Some(path), _) => std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
                (None, Some(p)) => vec![parse_byte(&p)?; count as usize * bs],
                (None, None) => bail!("give --file or --pattern"),
            };
            c.write(target.nsid, lba, &data).await.context("write")?;
            if flush {
                c.flush(target.nsid).await.context("flush")?;
            }
            eprintln!("wrote {} bytes ({} blocks) at LBA {lba}", data.len(), data.len() / bs);
            c.disconnect().await?;
        }
        Cmd::Serve { listen, discovery, files, allow_writes, threads, stats_every } => {
            let mut cfg = TargetConfig { listen, discovery_listen: discovery, threads, ..TargetConfig::default() };
            for spec in &files {
                let (path, nqn) = match spec.split_once(':') {
                    Some((p, n)) => (PathBuf::from(p), n.to_string()),
                    None => {
                        let stem =
                            PathBuf::from(spec).file_stem().map_or("ns".into(), |s| s.to_string_lossy().into_owned());
                        (PathBuf::from(spec), format!("nqn.2024-01.io.scalio:{stem}"))
                    }
                };
                let ns =
                    FileNamespace::open(&path, allow_writes).with_context(|| format!("opening {}", path.display()))?;
                eprintln!(
                    "exporting {} ({} blocks) as {nqn}{}",
                    path.display(),
                    ns_blocks(&ns),
                    if allow_writes { "" } else { " (read-only)" }
                );
                cfg.subsystems.push(SubsystemConfig::new(nqn, Arc::new(ns)).allow_writes(allow_writes));
            }
            let target = NvmeTarget::start(cfg)?;
            eprintln!(
                "serving NVMe/TCP on {}{}",
                target.local_addr(),
                target.discovery_addr().map(|a| format!(", discovery on {a}")).unwrap_or_default()
            );
            loop {
                if stats_every == 0 {
                    std::thread::park();
                    continue;
                }
                std::thread::sleep(Duration::from_secs(stats_every));
                let s = target.stats();
                eprintln!(
                    "connections {} controllers {} read {} blocks written {} blocks failed {} term-reqs {} cpu {:.3}s",
                    s.connections_active,
                    s.controllers_active,
                    s.blocks_read,
                    s.blocks_written,
                    s.commands_failed,
                    s.term_reqs_sent,
                    s.cpu_ns as f64 / 1e9
                );
            }
        }
    }
    Ok(())
}

fn ns_blocks(ns: &FileNamespace) -> u64 {
    use scalio_server::target::TargetNamespace;
    ns.blocks()
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(run(cli))
}
