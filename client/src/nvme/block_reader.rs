//! The miss path's block reader over NVMe/TCP: one controller per SSD target (as the server
//! advertises them), connected on first use or up front, reconnected after a loss.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use scalio_common::block::{BlockError, BlockFuture, BlockReader};
use scalio_common::rpc::BlockTarget;

use super::controller::{ConnectOptions, NvmeTcpController};

/// Size of the blocks a [`BlockReader`] reads.
const BLOCK: u64 = 512;

struct Slot {
    target: BlockTarget,
    controller: tokio::sync::Mutex<Option<Arc<NvmeTcpController>>>,
}

/// Reads 512-byte blocks of the server's SSDs through their NVMe/TCP targets.
pub struct NvmeTcpBlockReader {
    slots: HashMap<u16, Slot>,
    options: ConnectOptions,
}

impl NvmeTcpBlockReader {
    /// A reader for these targets (one per SSD); connections are made on first use.
    pub fn new(targets: Vec<BlockTarget>, options: ConnectOptions) -> NvmeTcpBlockReader {
        let slots = targets
            .into_iter()
            .map(|t| (t.ssd, Slot { target: t, controller: tokio::sync::Mutex::new(None) }))
            .collect();
        NvmeTcpBlockReader { slots, options }
    }

    /// Connects to every target now.
    pub async fn connect_all(&self) -> Result<(), BlockError> {
        let mut ssds: Vec<u16> = self.slots.keys().copied().collect();
        ssds.sort_unstable();
        for ssd in ssds {
            self.controller(ssd).await?;
        }
        Ok(())
    }

    /// The controller of SSD `ssd`, connecting (again) if there is none or it died.
    pub async fn controller(&self, ssd: u16) -> Result<Arc<NvmeTcpController>, BlockError> {
        let slot = self.slots.get(&ssd).ok_or(BlockError::NoSuchSsd(ssd))?;
        let mut guard = slot.controller.lock().await;
        if let Some(c) = guard.as_ref() {
            if c.is_alive() {
                return Ok(c.clone());
            }
        }
        *guard = None;
        let addr = resolve(&slot.target.addr).await?;
        let c = Arc::new(NvmeTcpController::connect(addr, &slot.target.nqn, self.options.clone()).await?);
        *guard = Some(c.clone());
        Ok(c)
    }

    async fn read(&self, ssd: u16, lba: u64, count: u32) -> Result<Vec<u8>, BlockError> {
        let slot = self.slots.get(&ssd).ok_or(BlockError::NoSuchSsd(ssd))?;
        let nsid = slot.target.nsid;
        let ctrl = self.controller(ssd).await?;
        let ns = ctrl.namespace(nsid).await?;
        let bs = u64::from(ns.block_size);
        if bs % BLOCK != 0 {
            return Err(BlockError::Protocol(format!("namespace block size {bs} is not a multiple of 512")));
        }
        let blocks = ns.blocks * (bs / BLOCK);
        match lba.checked_add(u64::from(count)) {
            Some(end) if end <= blocks => {}
            _ => return Err(BlockError::OutOfRange { ssd, lba, count, blocks }),
        }
        if count == 0 {
            return Ok(Vec::new());
        }
        // 512-byte blocks inside the device's (maybe larger) logical blocks.
        let start = lba * BLOCK;
        let len = u64::from(count) * BLOCK;
        let first = start / bs;
        let last = (start + len - 1) / bs;
        let data = match ctrl.read(nsid, first, (last - first + 1) as u32).await {
            Ok(d) => d,
            Err(e) => {
                if e.is_connection_lost() {
                    // Next read reconnects.
                    let mut guard = slot.controller.lock().await;
                    if guard.as_ref().is_some_and(|c| Arc::ptr_eq(c, &ctrl)) {
                        *guard = None;
                    }
                }
                return Err(e.into());
            }
        };
        let skip = (start - first * bs) as usize;
        data.get(skip..skip + len as usize).map(<[u8]>::to_vec).ok_or_else(|| BlockError::Protocol("short read".into()))
    }
}

async fn resolve(addr: &str) -> Result<SocketAddr, BlockError> {
    let mut addrs =
        tokio::net::lookup_host(addr).await.map_err(|e| BlockError::Io(format!("cannot resolve {addr}: {e}")))?;
    addrs.next().ok_or_else(|| BlockError::Io(format!("{addr} resolves to no address")))
}

impl BlockReader for NvmeTcpBlockReader {
    fn read_blocks(&self, ssd: u16, lba: u64, count: u32) -> BlockFuture<'_> {
        Box::pin(self.read(ssd, lba, count))
    }

    fn kind(&self) -> &'static str {
        "nvme-tcp"
    }
}
