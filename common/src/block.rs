//! The block path of a client's cache miss: reads of whole 512-byte blocks of an SSD, issued by
//! the client itself (positional reads of a local file or device, or NVMe-oF), never by the
//! server's workers.

use std::future::Future;
use std::pin::Pin;

/// A pending block read.
pub type BlockFuture<'a> = Pin<Box<dyn Future<Output = Result<Vec<u8>, BlockError>> + Send + 'a>>;

/// A failed block read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    #[error("no block device for SSD {0}")]
    NoSuchSsd(u16),
    #[error("read of {count} blocks at {lba} is beyond the end of SSD {ssd} ({blocks} blocks)")]
    OutOfRange { ssd: u16, lba: u64, count: u32, blocks: u64 },
    #[error("I/O error: {0}")]
    Io(String),
    #[error("the device reported status {0:#x}")]
    Status(u16),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("timed out")]
    Timeout,
    #[error("the connection to the device is closed")]
    Disconnected,
}

/// Reads blocks of the server's SSDs.
pub trait BlockReader: Send + Sync {
    /// Reads `count` blocks starting at block `lba` of SSD `ssd`; returns `count * 512` bytes.
    fn read_blocks(&self, ssd: u16, lba: u64, count: u32) -> BlockFuture<'_>;

    /// A short name for logs and reports ("direct", "nvme-tcp").
    fn kind(&self) -> &'static str;
}
