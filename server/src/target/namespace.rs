//! What the target exports: a namespace backend with asynchronous completion, so that a slow
//! device (or an emulated device latency) never holds up the other commands of a queue.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;

/// Size of a logical block of every exported namespace.
pub const LBA_SIZE: u32 = 512;

/// Completion of a read: `count * 512` bytes, or why not.
pub type ReadDone = Box<dyn FnOnce(Result<Vec<u8>, NamespaceError>) + Send>;
/// Completion of a write or flush.
pub type WriteDone = Box<dyn FnOnce(Result<(), NamespaceError>) + Send>;

/// A failed namespace operation; the target turns it into an NVMe status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NamespaceError {
    #[error("blocks {lba}..{end} are beyond the namespace ({blocks} blocks)", end = lba + u64::from(*count))]
    OutOfRange { lba: u64, count: u32, blocks: u64 },
    #[error("read error: {0}")]
    Read(String),
    #[error("write error: {0}")]
    Write(String),
    #[error("the namespace is read-only")]
    ReadOnly,
}

/// A block device the target exports as namespace 1 of a subsystem (512-byte LBAs). Each
/// operation completes by calling its `done` exactly once, on any thread, possibly before the
/// call returns.
pub trait TargetNamespace: Send + Sync + 'static {
    /// Capacity in 512-byte logical blocks.
    fn blocks(&self) -> u64;
    /// Reads `count` blocks starting at `lba`.
    fn read(&self, lba: u64, count: u32, done: ReadDone);
    /// Writes `data` (a whole number of blocks) starting at `lba`.
    fn write(&self, lba: u64, data: Vec<u8>, done: WriteDone);
    /// Makes completed writes durable.
    fn flush(&self, done: WriteDone);
}

fn check_range(lba: u64, count: u32, blocks: u64) -> Result<(), NamespaceError> {
    match lba.checked_add(u64::from(count)) {
        Some(end) if end <= blocks => Ok(()),
        _ => Err(NamespaceError::OutOfRange { lba, count, blocks }),
    }
}

/// A namespace backed by a regular file or a block device, using positional reads and writes
/// on the calling thread (so completions are inline).
#[derive(Debug)]
pub struct FileNamespace {
    file: File,
    path: PathBuf,
    blocks: u64,
    writable: bool,
}

impl FileNamespace {
    /// Opens `path`; its size (rounded down to whole blocks) is the namespace capacity.
    pub fn open(path: impl AsRef<Path>, writable: bool) -> std::io::Result<FileNamespace> {
        let path = path.as_ref().to_path_buf();
        let mut file = OpenOptions::new().read(true).write(writable).open(&path)?;
        // Seeking to the end works for block devices too, where metadata().len() is 0.
        let len = file.seek(SeekFrom::End(0))?;
        Ok(FileNamespace { file, path, blocks: len / u64::from(LBA_SIZE), writable })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl TargetNamespace for FileNamespace {
    fn blocks(&self) -> u64 {
        self.blocks
    }

    fn read(&self, lba: u64, count: u32, done: ReadDone) {
        if let Err(e) = check_range(lba, count, self.blocks) {
            return done(Err(e));
        }
        let mut buf = vec![0u8; count as usize * LBA_SIZE as usize];
        let r = self.file.read_exact_at(&mut buf, lba * u64::from(LBA_SIZE));
        done(r.map(|_| buf).map_err(|e| NamespaceError::Read(e.to_string())))
    }

    fn write(&self, lba: u64, data: Vec<u8>, done: WriteDone) {
        if !self.writable {
            return done(Err(NamespaceError::ReadOnly));
        }
        let count = (data.len() / LBA_SIZE as usize) as u32;
        if let Err(e) = check_range(lba, count, self.blocks) {
            return done(Err(e));
        }
        let r = self.file.write_all_at(&data, lba * u64::from(LBA_SIZE));
        done(r.map_err(|e| NamespaceError::Write(e.to_string())))
    }

    fn flush(&self, done: WriteDone) {
        if !self.writable {
            // Nothing was written through this handle.
            return done(Ok(()));
        }
        done(self.file.sync_data().map_err(|e| NamespaceError::Write(e.to_string())))
    }
}

/// A namespace in memory, for tests and demos.
#[derive(Debug, Clone)]
pub struct MemNamespace {
    data: Arc<RwLock<Vec<u8>>>,
}

impl MemNamespace {
    pub fn new(blocks: u64) -> MemNamespace {
        MemNamespace { data: Arc::new(RwLock::new(vec![0u8; (blocks * u64::from(LBA_SIZE)) as usize])) }
    }

    /// A namespace holding `bytes` (padded with zeros to whole blocks).
    pub fn with_contents(mut bytes: Vec<u8>) -> MemNamespace {
        let rem = bytes.len() % LBA_SIZE as usize;
        if rem != 0 {
            bytes.resize(bytes.len() + LBA_SIZE as usize - rem, 0);
        }
        MemNamespace { data: Arc::new(RwLock::new(bytes)) }
    }

    /// A copy of the whole contents.
    pub fn snapshot(&self) -> Vec<u8> {
        self.data.read().clone()
    }
}

impl TargetNamespace for MemNamespace {
    fn blocks(&self) -> u64 {
        (self.data.read().len() / LBA_SIZE as usize) as u64
    }

    fn read(&self, lba: u64, count: u32, done: ReadDone) {
        let data = self.data.read();
        let blocks = (data.len() / LBA_SIZE as usize) as u64;
        if let Err(e) = check_range(lba, count, blocks) {
            drop(data);
            return done(Err(e));
        }
        let start = (lba * u64::from(LBA_SIZE)) as usize;
        let out = data[start..start + count as usize * LBA_SIZE as usize].to_vec();
        drop(data);
        done(Ok(out))
    }

    fn write(&self, lba: u64, bytes: Vec<u8>, done: WriteDone) {
        let mut data = self.data.write();
        let blocks = (data.len() / LBA_SIZE as usize) as u64;
        let count = (bytes.len() / LBA_SIZE as usize) as u32;
        if let Err(e) = check_range(lba, count, blocks) {
            drop(data);
            return done(Err(e));
        }
        let start = (lba * u64::from(LBA_SIZE)) as usize;
        data[start..start + bytes.len()].copy_from_slice(&bytes);
        drop(data);
        done(Ok(()))
    }

    fn flush(&self, done: WriteDone) {
        done(Ok(()))
    }
}
