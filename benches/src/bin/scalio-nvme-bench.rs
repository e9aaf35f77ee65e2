//! `scalio-nvme-bench`: random reads through NVMe/TCP on loopback (scalio's initiator against
//! scalio's target exporting a file) versus `pread` of the same file, at several queue depths.
//!
//! Prints IOPS, mean/p50/p99 latency, and CPU time per I/O: of the target's threads for
//! NVMe/TCP (what the "offload engine" costs), of the reading threads for pread.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use scalio_client::nvme::{ConnectOptions, NvmeTcpController};
use scalio_common::cputime::CpuGroup;
use scalio_server::target::{FileNamespace, NvmeTarget, SubsystemConfig, TargetConfig};

#[derive(Parser)]
#[command(name = "scalio-nvme-bench", about = "Random reads: NVMe/TCP on loopback vs pread of the same file")]
struct Args {
    /// Size of the test file, MiB.
    #[arg(long, default_value_t = 256)]
    size_mb: u64,
    /// Directory for the test file.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    #[arg(long, value_delimiter = ',', default_value = "1,32,128")]
    depths: Vec<usize>,
    #[arg(long, value_delimiter = ',', default_value = "512,4096")]
    block_sizes: Vec<usize>,
    /// Target event-loop threads.
    #[arg(long, default_value_t = 1)]
    target_threads: usize,
    /// Skip the O_DIRECT pread baseline.
    #[arg(long)]
    no_direct: bool,
}

struct Row {
    what: String,
    bs: usize,
    qd: usize,
    ios: u64,
    secs: f64,
    hist: Histogram<u64>,
    cpu_ns: u64,
    cpu_label: &'static str,
}

impl Row {
    fn print(&self) {
        let iops = self.ios as f64 / self.secs;
        println!(
            "{:<22} {:>5} {:>4} {:>10.0} {:>9.1} {:>9.1} {:>9.1} {:>9.2} ({})",
            self.what,
            self.bs,
            self.qd,
            iops,
            self.hist.mean() / 1000.0,
            self.hist.value_at_quantile(0.5) as f64 / 1000.0,
            self.hist.value_at_quantile(0.99) as f64 / 1000.0,
            self.cpu_ns as f64 / self.ios.max(1) as f64 / 1000.0,
            self.cpu_label,
        );
    }
}

fn make_file(args: &Args) -> Result<tempfile::NamedTempFile> {
    let dir = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let mut f =
        tempfile::NamedTempFile::new_in(&dir).with_context(|| format!("creating a file in {}", dir.display()))?;
    let mut chunk = vec![0u8; 1 << 20];
    for i in 0..args.size_mb {
        for (j, b) in chunk.iter_mut().enumerate() {
            *b = (j as u64 ^ i) as u8;
        }
        f.write_all(&chunk)?;
    }
    f.flush()?;
    f.as_file().sync_all()?;
    Ok(f)
}

fn bench_nvme(
    rt: &tokio::runtime::Runtime,
    target: &NvmeTarget,
    nqn: &str,
    bs: usize,
    qd: usize,
    secs: f64,
    blocks: u64,
) -> Result<Row> {
    rt.block_on(async {
        let opts = ConnectOptions { io_queues: 1, queue_depth: qd.max(1) as u16, ..ConnectOptions::default() };
        let c = Arc::new(NvmeTcpController::connect(target.local_addr(), nqn, opts).await?);
        let per = (bs / 512) as u32;
        let slots = blocks / u64::from(per);
        // Warm up the connection and the file's cache.
        for i in 0..64 {
            c.read(1, (i * 7919 % slots) * u64::from(per), per).await?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let cpu0 = target.stats().cpu_ns;
        let start = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..qd {
            let c = c.clone();
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let mut rng = rand::rngs::SmallRng::seed_from_u64(w as u64 + 1);
                let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let lba = rng.random_range(0..slots) * u64::from(per);
                    let t = Instant::now();
                    let d = c.read(1, lba, per).await?;
                    let _ = hist.record(t.elapsed().as_nanos() as u64);
                    debug_assert_eq!(d.len(), bs);
                    n += 1;
                }
                Ok::<_, anyhow::Error>((n, hist))
            }));
        }
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        stop.store(true, Ordering::Relaxed);
        let mut ios = 0;
        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        for t in tasks {
            let (n, h) = t.await??;
            ios += n;
            hist.add(&h)?;
        }
        let elapsed = start.elapsed().as_secs_f64();
        let cpu = target.stats().cpu_ns - cpu0;
        match Arc::try_unwrap(c) {
            Ok(c) => c.disconnect().await?,
            Err(_) => anyhow::bail!("controller still shared"),
        }
        Ok(Row { what: "nvme-tcp loopback".into(), bs, qd, ios, secs: elapsed, hist, cpu_ns: cpu, cpu_label: "target" })
    })
}

fn bench_pread(path: &std::path::Path, direct: bool, bs: usize, qd: usize, secs: f64, size: u64) -> Result<Row> {
    let mut oo = OpenOptions::new();
    oo.read(true);
    if direct {
        oo.custom_flags(libc::O_DIRECT);
    }
    let file = Arc::new(oo.open(path)?);
    let stop = Arc::new(AtomicBool::new(false));
    let cpu = CpuGroup::new();
    let slots = size / bs as u64;
    let start = Instant::now();
    let mut threads = Vec::new();
    for w in 0..qd {
        let (file, stop, cpu) = (file.clone(), stop.clone(), cpu.clone());
        threads.push(std::thread::spawn(move || -> std::io::Result<(u64, Histogram<u64>)> {
            let mut meter = cpu.meter();
            let mut rng = rand::rngs::SmallRng::seed_from_u64(w as u64 + 100);
            // O_DIRECT wants an aligned buffer: take an aligned window of a larger one.
            let mut raw = vec![0u8; bs + 4096];
            let off = raw.as_ptr().align_offset(4096);
            let buf = &mut raw[off..off + bs];
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let at = rng.random_range(0..slots) * bs as u64;
                let t = Instant::now();
                file.read_exact_at(buf, at)?;
                let _ = hist.record(t.elapsed().as_nanos() as u64);
                n += 1;
            }
            meter.tick();
            Ok((n, hist))
        }));
    }
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    let mut ios = 0;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    for t in threads {
        let (n, h) = t.join().map_err(|_| anyhow::anyhow!("reader thread panicked"))??;
        ios += n;
        hist.add(&h)?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let what = if direct { "pread O_DIRECT" } else { "pread (page cache)" };
    Ok(Row { what: what.into(), bs, qd, ios, secs: elapsed, hist, cpu_ns: cpu.total_ns(), cpu_label: "readers" })
}

/// Whether O_DIRECT reads of `bs` bytes work on this file system.
fn direct_works(path: &std::path::Path, bs: usize) -> bool {
    let Ok(f) = OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(path) else { return false };
    let mut raw = vec![0u8; bs + 4096];
    let off = raw.as_ptr().align_offset(4096);
    f.read_exact_at(&mut raw[off..off + bs], 0).is_ok()
}

fn main() -> Result<()> {
    let args = Args::parse();
    let file = make_file(&args)?;
    let size = args.size_mb << 20;
    let nqn = "nqn.2024-01.io.scalio:bench";
    let ns = Arc::new(FileNamespace::open(file.path(), false)?);
    let mut cfg = TargetConfig::on("127.0.0.1:0".parse()?).subsystem(SubsystemConfig::new(nqn, ns));
    cfg.threads = args.target_threads;
    let target = NvmeTarget::start(cfg)?;
    // The client runs on one thread: with the target's loop that is the machine's two cores.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;

    println!(
        "file {} ({} MiB), {} s per point, {} CPU(s), target threads {}",
        file.path().display(),
        args.size_mb,
        args.seconds,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.target_threads
    );
    println!(
        "{:<22} {:>5} {:>4} {:>10} {:>9} {:>9} {:>9} {:>9}",
        "path", "bs", "qd", "IOPS", "mean us", "p50 us", "p99 us", "cpu us/IO"
    );
    for &bs in &args.block_sizes {
        let direct = !args.no_direct && direct_works(file.path(), bs);
        if !args.no_direct && !direct {
            println!("(O_DIRECT reads of {bs} bytes fail on this file system: no O_DIRECT baseline)");
        }
        for &qd in &args.depths {
            // The target reads through the page cache, like the buffered pread baseline; the
            // O_DIRECT baseline is the device itself.
            bench_nvme(&rt, &target, nqn, bs, qd, args.seconds, size / 512)?.print();
            bench_pread(file.path(), false, bs, qd, args.seconds, size)?.print();
            if direct {
                bench_pread(file.path(), true, bs, qd, args.seconds, size)?.print();
            }
        }
    }
    let s = target.stats();
    println!(
        "target totals: {} blocks read, {} commands failed, {:.2} s CPU",
        s.blocks_read,
        s.commands_failed,
        s.cpu_ns as f64 / 1e9
    );
    Ok(())
}
