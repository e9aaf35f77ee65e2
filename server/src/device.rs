//! The SSD device layer: one [`Ssd`] per file or block device, with positional, durable I/O on
//! its own I/O threads, counters split by who issued each I/O, and the emulated-testbed model
//! (per-SSD IOPS limit and latency) applied to every I/O alike.
//!
//! Files are opened with `O_DIRECT` where the filesystem allows it (falling back to buffered I/O
//! with a warning) and always with `O_DSYNC`, so a write is durable when it returns. A
//! multi-part write executes its parts in order, each durable before the next starts: the store
//! relies on this to make values durable before the buckets that point to them.

use parking_lot::Mutex;
use scalio_common::aligned::AlignedBuf;
use scalio_common::block::{BlockError, BlockFuture, BlockReader};
use scalio_common::cputime::CpuGroup;
use scalio_common::fabric::completion;
use scalio_common::ssd::BLOCK_SIZE;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Who asked for an I/O: the counters keep them apart to prove where work happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Issuer {
    /// A server worker thread (writes, GC, LEED-style server reads).
    Worker = 0,
    /// The NVMe/TCP target engine, on behalf of a client (the offload path).
    Target = 1,
    /// A client's in-process block path (the embedded benchmark's offload path).
    Client = 2,
}

impl Issuer {
    pub const ALL: [Issuer; 3] = [Issuer::Worker, Issuer::Target, Issuer::Client];

    pub fn name(self) -> &'static str {
        match self {
            Issuer::Worker => "worker",
            Issuer::Target => "target",
            Issuer::Client => "client",
        }
    }
}

/// A failed device operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    #[error("cannot open {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("{path} has {bytes} bytes; an SSD must be a whole number of 512-byte blocks")]
    Size { path: String, bytes: u64 },
    #[error("{op} of {count} blocks at block {lba} is beyond the end of SSD {ssd} ({blocks} blocks)")]
    OutOfRange { ssd: u16, op: &'static str, lba: u64, count: u64, blocks: u64 },
    #[error("{op} at block {lba} of SSD {ssd} failed: {reason}")]
    Io { ssd: u16, op: &'static str, lba: u64, reason: String },
    #[error("SSD {0} is shut down")]
    Closed(u16),
}

/// Emulated-testbed model of one SSD, applied at the device layer to every I/O (worker and
/// offload alike).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DeviceModel {
    /// Most I/Os per second the SSD completes (0: unlimited).
    pub iops: u64,
    /// Added latency of each I/O.
    pub latency: Duration,
}

impl DeviceModel {
    pub fn is_active(&self) -> bool {
        self.iops > 0 || !self.latency.is_zero()
    }
}

/// Whether a server's emulated-testbed model (the SSDs' IOPS limit and latency, the workers'
/// time per I/O) is in force, switchable while the server runs: one switch shared by all of a
/// server's SSDs and workers. A benchmark suspends it for phases whose speed it does not measure
/// (a warm-up that only brings the cache to its steady state); the same I/Os still happen, at
/// the host's speed. A clone is the same switch.
#[derive(Debug, Clone, Default)]
pub struct EmulationSwitch(Arc<AtomicBool>);

impl EmulationSwitch {
    /// Suspends (`true`) or restores (`false`) the emulation. I/Os already admitted keep the
    /// completion time they were given.
    pub fn set_suspended(&self, suspended: bool) {
        self.0.store(suspended, Ordering::Relaxed);
    }

    pub fn is_suspended(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// How to open an SSD.
#[derive(Debug, Clone)]
pub struct DeviceOptions {
    /// I/O threads of this SSD: how many I/Os it executes at once.
    pub io_threads: usize,
    pub model: DeviceModel,
    /// Suspends `model` while set (shared with the server's workers).
    pub emulation: EmulationSwitch,
    /// Try O_DIRECT (falls back to buffered I/O where the filesystem refuses it).
    pub direct: bool,
}

impl Default for DeviceOptions {
    fn default() -> Self {
        DeviceOptions {
            io_threads: 4,
            model: DeviceModel::default(),
            emulation: EmulationSwitch::default(),
            direct: true,
        }
    }
}

/// I/O counters of one SSD, by issuer.
#[derive(Default, Debug)]
pub struct DeviceCounters {
    reads: [AtomicU64; 3],
    read_blocks: [AtomicU64; 3],
    writes: [AtomicU64; 3],
    write_blocks: [AtomicU64; 3],
}

impl DeviceCounters {
    pub fn reads(&self, who: Issuer) -> u64 {
        self.reads[who as usize].load(Ordering::Relaxed)
    }
    pub fn read_blocks(&self, who: Issuer) -> u64 {
        self.read_blocks[who as usize].load(Ordering::Relaxed)
    }
    pub fn writes(&self, who: Issuer) -> u64 {
        self.writes[who as usize].load(Ordering::Relaxed)
    }
    pub fn write_blocks(&self, who: Issuer) -> u64 {
        self.write_blocks[who as usize].load(Ordering::Relaxed)
    }
}

/// Called with the data of a finished asynchronous read.
pub type ReadDone = Box<dyn FnOnce(Result<AlignedBuf, DeviceError>) + Send>;
/// Called when an asynchronous write has finished (durably).
pub type WriteDone = Box<dyn FnOnce(Result<(), DeviceError>) + Send>;

enum Job {
    Read { lba: u64, count: u32, issuer: Issuer, done: ReadDone },
    Write { parts: Vec<(u64, AlignedBuf)>, issuer: Issuer, done: WriteDone },
}

/// One SSD.
pub struct Ssd {
    index: u16,
    path: PathBuf,
    file: File,
    blocks: u64,
    direct: bool,
    model: DeviceModel,
    emulation: EmulationSwitch,
    next_free: Mutex<Instant>,
    counters: DeviceCounters,
    jobs: Mutex<Option<crossbeam_channel::Sender<Job>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Ssd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ssd")
            .field("index", &self.index)
            .field("path", &self.path)
            .field("blocks", &self.blocks)
            .field("direct", &self.direct)
            .finish()
    }
}

impl Ssd {
    /// Opens SSD number `index` at `path`. A missing file is created with `create_size` bytes
    /// (and an existing smaller regular file is extended to it); a block device keeps its size.
    /// `cpu` accounts the CPU time of the I/O threads.
    pub fn open(
        index: u16,
        path: &Path,
        create_size: Option<u64>,
        opts: &DeviceOptions,
        cpu: &Arc<CpuGroup>,
    ) -> Result<Arc<Ssd>, DeviceError> {
        let (file, direct) = open_file(path, create_size.is_some(), opts.direct)?;
        let open_err =
            |e: std::io::Error| DeviceError::Open { path: path.display().to_string(), reason: e.to_string() };
        let meta = file.metadata().map_err(open_err)?;
        if let Some(size) = create_size {
            if meta.is_file() && meta.len() < size {
                file.set_len(size).map_err(open_err)?;
            }
        }
        let bytes = (&file).seek(SeekFrom::End(0)).map_err(open_err)?;
        if bytes == 0 || bytes % BLOCK_SIZE as u64 != 0 {
            return Err(DeviceError::Size { path: path.display().to_string(), bytes });
        }
        if !direct && opts.direct {
            tracing::warn!(path = %path.display(), "O_DIRECT refused by the filesystem; using buffered I/O with O_DSYNC");
        }
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        let ssd = Arc::new(Ssd {
            index,
            path: path.to_path_buf(),
            file,
            blocks: bytes / BLOCK_SIZE as u64,
            direct,
            model: opts.model,
            emulation: opts.emulation.clone(),
            next_free: Mutex::new(Instant::now()),
            counters: DeviceCounters::default(),
            jobs: Mutex::new(Some(tx)),
            threads: Mutex::new(Vec::new()),
        });
        let mut threads = ssd.threads.lock();
        for t in 0..opts.io_threads.max(1) {
            let (ssd2, rx, cpu) = (Arc::downgrade(&ssd), rx.clone(), cpu.clone());
            let h = std::thread::Builder::new()
                .name(format!("ssd{index}-io{t}"))
                .spawn(move || io_thread(ssd2, rx, cpu))
                .map_err(|e| DeviceError::Open { path: path.display().to_string(), reason: e.to_string() })?;
            threads.push(h);
        }
        drop(threads);
        Ok(ssd)
    }

    pub fn index(&self) -> u16 {
        self.index
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size in 512-byte blocks.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Whether O_DIRECT is in effect.
    pub fn direct(&self) -> bool {
        self.direct
    }

    pub fn model(&self) -> DeviceModel {
        self.model
    }

    pub fn counters(&self) -> &DeviceCounters {
        &self.counters
    }

    fn check(&self, op: &'static str, lba: u64, count: u64) -> Result<(), DeviceError> {
        match lba.checked_add(count) {
            Some(end) if end <= self.blocks && count > 0 => Ok(()),
            _ => Err(DeviceError::OutOfRange { ssd: self.index, op, lba, count, blocks: self.blocks }),
        }
    }

    /// The emulated completion time of an I/O admitted now (None: no model, or suspended).
    fn admit(&self) -> Option<Instant> {
        if !self.model.is_active() || self.emulation.is_suspended() {
            return None;
        }
        let now = Instant::now();
        let start = match 1_000_000_000u64.checked_div(self.model.iops) {
            Some(interval) => {
                let mut next = self.next_free.lock();
                let slot = (*next).max(now);
                *next = slot + Duration::from_nanos(interval);
                slot
            }
            None => now,
        };
        Some(start + self.model.latency)
    }

    fn settle(deadline: Option<Instant>) {
        if let Some(d) = deadline {
            let now = Instant::now();
            if d > now {
                std::thread::sleep(d - now);
            }
        }
    }

    /// Reads `count` blocks at `lba` (blocking the calling thread).
    pub fn read(&self, lba: u64, count: u32, issuer: Issuer) -> Result<AlignedBuf, DeviceError> {
        self.check("read", lba, u64::from(count))?;
        let deadline = self.admit();
        let mut buf = AlignedBuf::zeroed(count as usize * BLOCK_SIZE);
        self.file.read_exact_at(&mut buf, lba * BLOCK_SIZE as u64).map_err(|e| DeviceError::Io {
            ssd: self.index,
            op: "read",
            lba,
            reason: e.to_string(),
        })?;
        self.counters.reads[issuer as usize].fetch_add(1, Ordering::Relaxed);
        self.counters.read_blocks[issuer as usize].fetch_add(u64::from(count), Ordering::Relaxed);
        Self::settle(deadline);
        Ok(buf)
    }

    /// Writes whole blocks at `lba`, durably (blocking the calling thread).
    pub fn write(&self, lba: u64, data: &AlignedBuf, issuer: Issuer) -> Result<(), DeviceError> {
        if !data.len().is_multiple_of(BLOCK_SIZE) {
            return Err(DeviceError::Io {
                ssd: self.index,
                op: "write",
                lba,
                reason: format!("{} bytes is not a whole number of blocks", data.len()),
            });
        }
        let count = (data.len() / BLOCK_SIZE) as u64;
        self.check("write", lba, count)?;
        let deadline = self.admit();
        self.file.write_all_at(data, lba * BLOCK_SIZE as u64).map_err(|e| DeviceError::Io {
            ssd: self.index,
            op: "write",
            lba,
            reason: e.to_string(),
        })?;
        self.counters.writes[issuer as usize].fetch_add(1, Ordering::Relaxed);
        self.counters.write_blocks[issuer as usize].fetch_add(count, Ordering::Relaxed);
        Self::settle(deadline);
        Ok(())
    }

    fn submit(&self, job: Job) {
        let tx = self.jobs.lock().clone();
        match tx {
            Some(tx) => {
                if let Err(crossbeam_channel::SendError(job)) = tx.send(job) {
                    fail(job, self.index);
                }
            }
            None => fail(job, self.index),
        }
    }

    /// Reads on an I/O thread; `done` runs there.
    pub fn read_async(&self, lba: u64, count: u32, issuer: Issuer, done: ReadDone) {
        self.submit(Job::Read { lba, count, issuer, done });
    }

    /// Writes `parts` in order on one I/O thread, each durable before the next; `done` runs there.
    pub fn write_async(&self, parts: Vec<(u64, AlignedBuf)>, issuer: Issuer, done: WriteDone) {
        self.submit(Job::Write { parts, issuer, done });
    }

    /// Stops the I/O threads after the queued jobs.
    pub fn shutdown(&self) {
        self.jobs.lock().take();
        let threads = std::mem::take(&mut *self.threads.lock());
        for t in threads {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

fn fail(job: Job, ssd: u16) {
    match job {
        Job::Read { done, .. } => done(Err(DeviceError::Closed(ssd))),
        Job::Write { done, .. } => done(Err(DeviceError::Closed(ssd))),
    }
}

impl Drop for Ssd {
    fn drop(&mut self) {
        self.jobs.lock().take();
    }
}

fn open_file(path: &Path, create: bool, direct: bool) -> Result<(File, bool), DeviceError> {
    let open = |flags: i32| {
        OpenOptions::new().read(true).write(true).create(create).truncate(false).custom_flags(flags).open(path)
    };
    if direct {
        match open(libc::O_DIRECT | libc::O_DSYNC) {
            Ok(f) => return Ok((f, true)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(DeviceError::Open { path: path.display().to_string(), reason: e.to_string() }),
        }
    }
    open(libc::O_DSYNC)
        .map(|f| (f, false))
        .map_err(|e| DeviceError::Open { path: path.display().to_string(), reason: e.to_string() })
}

fn io_thread(ssd: std::sync::Weak<Ssd>, jobs: crossbeam_channel::Receiver<Job>, cpu: Arc<CpuGroup>) {
    // Emulated latencies are slept; a small timer slack keeps those sleeps close to the model.
    // SAFETY: PR_SET_TIMERSLACK only changes this thread's timer slack; the argument is a value.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong);
    }
    let mut meter = cpu.meter();
    for job in jobs {
        let Some(ssd) = ssd.upgrade() else { break };
        match job {
            Job::Read { lba, count, issuer, done } => done(ssd.read(lba, count, issuer)),
            Job::Write { parts, issuer, done } => {
                let r = parts.iter().try_for_each(|(lba, data)| ssd.write(*lba, data, issuer));
                done(r)
            }
        }
        meter.tick();
    }
}

/// A client block path served in-process by the server's own SSD objects: what NVMe-oF target
/// offload does (the device serves the client's read; no worker is involved). The embedded
/// benchmark uses it so that the emulated device model applies to client reads too.
pub struct LocalBlockReader {
    ssds: Vec<Arc<Ssd>>,
}

impl LocalBlockReader {
    pub fn new(ssds: Vec<Arc<Ssd>>) -> LocalBlockReader {
        LocalBlockReader { ssds }
    }
}

impl BlockReader for LocalBlockReader {
    fn read_blocks(&self, ssd: u16, lba: u64, count: u32) -> BlockFuture<'_> {
        let Some(dev) = self.ssds.get(usize::from(ssd)) else {
            return Box::pin(std::future::ready(Err(BlockError::NoSuchSsd(ssd))));
        };
        let (c, f) = completion::<Result<AlignedBuf, DeviceError>>();
        dev.read_async(lba, count, Issuer::Client, Box::new(move |r| c.complete(Ok(r))));
        let blocks = dev.blocks();
        Box::pin(async move {
            match f.await {
                Ok(Ok(buf)) => Ok(buf.to_vec()),
                Ok(Err(DeviceError::OutOfRange { .. })) => Err(BlockError::OutOfRange { ssd, lba, count, blocks }),
                Ok(Err(e)) => Err(BlockError::Io(e.to_string())),
                Err(_) => Err(BlockError::Disconnected),
            }
        })
    }

    fn kind(&self) -> &'static str {
        "local"
    }
}

/// The SSD as the NVMe/TCP target exports it: reads and writes run on the SSD's I/O threads,
/// counted as the target's, under the same device model as the workers' I/O.
impl crate::target::TargetNamespace for Ssd {
    fn blocks(&self) -> u64 {
        self.blocks
    }

    fn read(&self, lba: u64, count: u32, done: crate::target::ReadDone) {
        use crate::target::NamespaceError;
        self.read_async(
            lba,
            count,
            Issuer::Target,
            Box::new(move |r| {
                done(r.map(|b| b.to_vec()).map_err(|e| match e {
                    DeviceError::OutOfRange { lba, count, blocks, .. } => {
                        NamespaceError::OutOfRange { lba, count: count as u32, blocks }
                    }
                    other => NamespaceError::Read(other.to_string()),
                }))
            }),
        );
    }

    fn write(&self, lba: u64, data: Vec<u8>, done: crate::target::WriteDone) {
        use crate::target::NamespaceError;
        let buf = AlignedBuf::copy_padded(&data, data.len());
        self.write_async(
            vec![(lba, buf)],
            Issuer::Target,
            Box::new(move |r| {
                done(r.map_err(|e| match e {
                    DeviceError::OutOfRange { lba, count, blocks, .. } => {
                        NamespaceError::OutOfRange { lba, count: count as u32, blocks }
                    }
                    other => NamespaceError::Write(other.to_string()),
                }))
            }),
        );
    }

    fn flush(&self, done: crate::target::WriteDone) {
        // Every write is O_DSYNC: durable when it completes.
        done(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path, model: DeviceModel) -> Arc<Ssd> {
        let opts = DeviceOptions { model, ..Default::default() };
        Ssd::open(0, &dir.join("ssd0.img"), Some(1 << 20), &opts, &CpuGroup::new()).unwrap()
    }

    #[test]
    fn write_then_read_counts_by_issuer() {
        let dir = tempfile::tempdir().unwrap();
        let ssd = open(dir.path(), DeviceModel::default());
        assert_eq!(ssd.blocks(), 2048);
        let data = AlignedBuf::copy_padded(b"hello", 1024);
        ssd.write(10, &data, Issuer::Worker).unwrap();
        let back = ssd.read(10, 2, Issuer::Target).unwrap();
        assert_eq!(&back[..], &data[..]);
        assert_eq!(ssd.counters().writes(Issuer::Worker), 1);
        assert_eq!(ssd.counters().write_blocks(Issuer::Worker), 2);
        assert_eq!(ssd.counters().reads(Issuer::Target), 1);
        assert_eq!(ssd.counters().reads(Issuer::Worker), 0);
    }

    #[test]
    fn out_of_range_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let ssd = open(dir.path(), DeviceModel::default());
        assert!(matches!(ssd.read(2047, 2, Issuer::Worker), Err(DeviceError::OutOfRange { .. })));
        assert!(matches!(ssd.read(u64::MAX, 1, Issuer::Worker), Err(DeviceError::OutOfRange { .. })));
        assert!(matches!(ssd.read(0, 0, Issuer::Worker), Err(DeviceError::OutOfRange { .. })));
    }

    #[test]
    fn async_parts_execute_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let ssd = open(dir.path(), DeviceModel::default());
        let (c, f) = completion::<Result<(), DeviceError>>();
        let parts = vec![(5, AlignedBuf::copy_padded(b"first", 512)), (5, AlignedBuf::copy_padded(b"second", 512))];
        ssd.write_async(parts, Issuer::Worker, Box::new(move |r| c.complete(Ok(r))));
        f.wait().unwrap().unwrap();
        assert_eq!(&ssd.read(5, 1, Issuer::Worker).unwrap()[..6], b"second");
    }

    #[test]
    fn reopen_keeps_data_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.img");
        let cpu = CpuGroup::new();
        let ssd = Ssd::open(0, &path, Some(1 << 20), &DeviceOptions::default(), &cpu).unwrap();
        ssd.write(3, &AlignedBuf::copy_padded(b"persist", 512), Issuer::Worker).unwrap();
        ssd.shutdown();
        drop(ssd);
        let ssd = Ssd::open(0, &path, None, &DeviceOptions::default(), &cpu).unwrap();
        assert_eq!(ssd.blocks(), 2048);
        assert_eq!(&ssd.read(3, 1, Issuer::Worker).unwrap()[..7], b"persist");
    }

    #[test]
    fn a_suspended_emulation_lets_ios_through_at_host_speed() {
        let dir = tempfile::tempdir().unwrap();
        // 20 IOPS: 10 reads take at least 450 ms under the model.
        let model = DeviceModel { iops: 20, latency: Duration::from_millis(5) };
        let switch = EmulationSwitch::default();
        let opts = DeviceOptions { model, emulation: switch.clone(), ..Default::default() };
        let ssd = Ssd::open(0, &dir.path().join("ssd0.img"), Some(1 << 20), &opts, &CpuGroup::new()).unwrap();
        let reads = |n| {
            let start = Instant::now();
            (0..n).for_each(|i| drop(ssd.read(i, 1, Issuer::Worker).unwrap()));
            start.elapsed()
        };
        switch.set_suspended(true);
        let suspended = reads(10);
        switch.set_suspended(false);
        let emulated = reads(10);
        assert!(emulated >= Duration::from_millis(450), "emulated 10 reads in {emulated:?}");
        assert!(suspended < Duration::from_millis(200), "suspended 10 reads took {suspended:?}");
        assert_eq!(ssd.counters().reads(Issuer::Worker), 20, "suspended I/Os still happen and count");
    }

    #[test]
    fn missing_file_without_size_is_an_open_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = Ssd::open(0, &dir.path().join("none"), None, &DeviceOptions::default(), &CpuGroup::new()).unwrap_err();
        assert!(matches!(e, DeviceError::Open { .. }), "{e}");
    }
}
