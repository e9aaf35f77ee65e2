//! The `direct` block path: positional reads of the SSD files or block devices themselves — the
//! same files on the server's host, or a kernel NVMe-oF namespace (`/dev/nvmeXnY`, which is how
//! a client uses NVMe-oF over RDMA with hardware target offload).
//!
//! Reads run on a small pool of I/O threads (O_DIRECT where the filesystem allows it) and
//! complete through the fabric's runtime-agnostic completion, so any executor can await them.

use parking_lot::Mutex;
use scalio_common::aligned::AlignedBuf;
use scalio_common::block::{BlockError, BlockFuture, BlockReader};
use scalio_common::fabric::{completion, Completer};
use scalio_common::ssd::BLOCK_SIZE;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

struct Device {
    file: File,
    blocks: u64,
}

type Job = (u16, u64, u32, Completer<Result<Vec<u8>, BlockError>>);

/// Reads SSD blocks straight from files or block devices.
pub struct DirectBlockReader {
    devices: Arc<Vec<Device>>,
    jobs: Mutex<Option<crossbeam_channel::Sender<Job>>>,
}

fn open(path: &Path, direct: bool) -> std::io::Result<File> {
    if direct {
        match OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(path) {
            Ok(f) => return Ok(f),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(e),
        }
    }
    OpenOptions::new().read(true).open(path)
}

impl DirectBlockReader {
    /// Opens SSD `i` at `paths[i]`, read-only, with `threads` I/O threads.
    pub fn open(paths: &[PathBuf], threads: usize) -> Result<DirectBlockReader, BlockError> {
        let mut devices = Vec::with_capacity(paths.len());
        for p in paths {
            let mut file = open(p, true).map_err(|e| BlockError::Io(format!("cannot open {}: {e}", p.display())))?;
            let bytes = file.seek(SeekFrom::End(0)).map_err(|e| BlockError::Io(format!("{}: {e}", p.display())))?;
            devices.push(Device { file, blocks: bytes / BLOCK_SIZE as u64 });
        }
        let devices = Arc::new(devices);
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        for t in 0..threads.max(1) {
            let (devices, rx) = (devices.clone(), rx.clone());
            std::thread::Builder::new()
                .name(format!("direct-io-{t}"))
                .spawn(move || {
                    for (ssd, lba, count, done) in rx {
                        done.complete(Ok(read(&devices, ssd, lba, count)));
                    }
                })
                .map_err(|e| BlockError::Io(format!("cannot start an I/O thread: {e}")))?;
        }
        Ok(DirectBlockReader { devices, jobs: Mutex::new(Some(tx)) })
    }

    /// Number of SSDs.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }
}

fn read(devices: &[Device], ssd: u16, lba: u64, count: u32) -> Result<Vec<u8>, BlockError> {
    let dev = devices.get(usize::from(ssd)).ok_or(BlockError::NoSuchSsd(ssd))?;
    match lba.checked_add(u64::from(count)) {
        Some(end) if end <= dev.blocks && count > 0 => {}
        _ => return Err(BlockError::OutOfRange { ssd, lba, count, blocks: dev.blocks }),
    }
    let mut buf = AlignedBuf::zeroed(count as usize * BLOCK_SIZE);
    dev.file.read_exact_at(&mut buf, lba * BLOCK_SIZE as u64).map_err(|e| BlockError::Io(e.to_string()))?;
    Ok(buf.to_vec())
}

impl BlockReader for DirectBlockReader {
    fn read_blocks(&self, ssd: u16, lba: u64, count: u32) -> BlockFuture<'_> {
        let (c, f) = completion();
        match &*self.jobs.lock() {
            Some(tx) => {
                if tx.send((ssd, lba, count, c)).is_err() {
                    return Box::pin(std::future::ready(Err(BlockError::Disconnected)));
                }
            }
            None => return Box::pin(std::future::ready(Err(BlockError::Disconnected))),
        }
        Box::pin(async move { f.await.unwrap_or(Err(BlockError::Disconnected)) })
    }

    fn kind(&self) -> &'static str {
        "direct"
    }
}

impl Drop for DirectBlockReader {
    fn drop(&mut self) {
        // Closing the queue ends the I/O threads once they finish what is queued.
        self.jobs.lock().take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_blocks_and_checks_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.img");
        let mut f = File::create(&path).unwrap();
        let data: Vec<u8> = (0..4096u32).map(|i| (i / 512) as u8).collect();
        f.write_all(&data).unwrap();
        drop(f);
        let r = DirectBlockReader::open(&[path], 2).unwrap();
        let got = futures_lite_block_on(r.read_blocks(0, 3, 2)).unwrap();
        assert_eq!(got, data[1536..2560]);
        assert!(matches!(futures_lite_block_on(r.read_blocks(0, 7, 2)), Err(BlockError::OutOfRange { .. })));
        assert!(matches!(futures_lite_block_on(r.read_blocks(1, 0, 1)), Err(BlockError::NoSuchSsd(1))));
    }

    fn futures_lite_block_on(f: BlockFuture<'_>) -> Result<Vec<u8>, BlockError> {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    }
}
