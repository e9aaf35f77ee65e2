//! The machinery both ends of a verbs connection share: the send side of an RC queue pair (its
//! slot accounting, its staging ring, and the posting of SENDs that carry a message) and the
//! receive side (pre-posted buffers of one registered region), and the naming of work requests.

use super::device::{Cq, MAX_INLINE};
use super::ring::Ring;
use super::wire::{MessageHeader, HEADER_LEN};
use crate::fabric::{Disconnect, FabricError, MemoryRegion, RemoteAccessError, SendQueue};
use sideway::ibverbs::memory_region::MemoryRegion as Mr;
use sideway::ibverbs::queue_pair::{
    BasicQueuePair, PostSendGuard as _, QueuePair as _, SetInlineData as _, SetScatterGatherEntry as _,
    WorkRequestFlags,
};
use std::io;
use std::sync::Arc;

/// A receive's work-request id has this bit; a send's is `sequence << 16 | index in its chain`.
pub const RECV_BIT: u64 = 1 << 63;

/// A send's work-request id: the chain's sequence number on the send queue and the request's
/// index in the chain.
pub fn send_wr_id(seq: u64, index: usize) -> u64 {
    debug_assert!(seq < 1 << 47 && index < 1 << 16);
    (seq << 16) | index as u64
}

/// The inverse of [`send_wr_id`].
pub fn split_send_wr_id(wr_id: u64) -> (u64, u16) {
    (wr_id >> 16, wr_id as u16)
}

/// `ibv_wc_status` values this backend tells apart.
pub mod status {
    pub const SUCCESS: u32 = 0;
    pub const LOC_LEN_ERR: u32 = 1;
    pub const LOC_PROT_ERR: u32 = 4;
    pub const WR_FLUSH_ERR: u32 = 5;
    pub const REM_INV_REQ_ERR: u32 = 9;
    pub const REM_ACCESS_ERR: u32 = 10;
    pub const REM_OP_ERR: u32 = 11;
    pub const RETRY_EXC_ERR: u32 = 12;
    pub const RNR_RETRY_EXC_ERR: u32 = 13;
}

/// What a failed completion of request `index` of its chain means, as the fabric's other
/// backends say it: the remote side's refusal is [`FabricError::Remote`] (verbs does not say
/// whether the key, the bounds or the rights were wrong: [`RemoteAccessError::Refused`]), a
/// request flushed by the error state is [`FabricError::Flushed`], a peer that stopped answering
/// is a lost connection.
pub fn completion_error(status: u32, index: u16) -> FabricError {
    match status {
        status::WR_FLUSH_ERR => FabricError::Flushed,
        status::REM_ACCESS_ERR | status::REM_OP_ERR => FabricError::Remote { index, error: RemoteAccessError::Refused },
        status::REM_INV_REQ_ERR => FabricError::Remote { index, error: RemoteAccessError::TooLarge },
        status::RETRY_EXC_ERR | status::RNR_RETRY_EXC_ERR => FabricError::Disconnected(Disconnect::PeerClosed),
        status::LOC_LEN_ERR | status::LOC_PROT_ERR => FabricError::Io(io::ErrorKind::InvalidInput),
        _ => FabricError::Io(io::ErrorKind::Other),
    }
}

pub fn post_error(e: sideway::ibverbs::queue_pair::PostSendError) -> FabricError {
    use sideway::ibverbs::queue_pair::PostSendError as E;
    match e {
        E::NotEnoughResources(_) => FabricError::QueueFull,
        E::InvalidWorkRequest(_) => FabricError::Io(io::ErrorKind::InvalidInput),
        #[allow(unreachable_patterns)]
        _ => FabricError::Io(io::ErrorKind::Other),
    }
}

/// The send side of one queue pair: what has been posted and not yet retired.
pub struct SendSide {
    pub qp: BasicQueuePair,
    pub sq: SendQueue,
    pub ring: Ring,
    pub staging: Arc<MemoryRegion>,
    pub staging_mr: Arc<Mr>,
    /// Ring bytes held by unsignaled chains since the last signaled one: past a quarter of the
    /// ring, the next chain is signaled so that its completion gives the space back.
    pub unsignaled_bytes: u64,
}

/// Where a posted chain ends: retiring it frees the send queue up to `seq` and the ring up to
/// `ring_end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PostedAt {
    pub seq: u64,
    pub ring_end: u64,
    pub signaled: bool,
}

impl SendSide {
    /// Takes ring space for `need` bytes and send-queue slots for `n` requests, atomically: on
    /// failure neither is taken. Returns the ring offset and how the chain must be posted.
    pub fn reserve(&mut self, need: usize, n: usize, signaled: bool) -> Result<(usize, PostedAt), FabricError> {
        if need > self.ring.capacity() {
            return Err(FabricError::TooLarge(need));
        }
        let mut ring = self.ring.clone();
        let offset = ring.alloc(need).ok_or(FabricError::QueueFull)?;
        let force = self.unsignaled_bytes + need as u64 > self.ring.capacity() as u64 / 4;
        let posted = self.sq.take(n, signaled || force)?;
        self.ring = ring;
        if posted.signaled {
            self.unsignaled_bytes = 0;
        } else {
            self.unsignaled_bytes += need as u64;
        }
        Ok((offset, PostedAt { seq: posted.end, ring_end: self.ring.head(), signaled: posted.signaled }))
    }

    /// A signaled completion covered everything up to `at`.
    pub fn retire(&mut self, at: PostedAt) {
        self.sq.retire(at.seq);
        self.ring.release(at.ring_end);
    }

    /// Posts one message (header and payload) as SENDs of at most `buffer_len` bytes, in one
    /// doorbell, the last one signaled. `Ok(None)`: no room now (send queue or ring), try again
    /// after completions.
    pub fn post_message(
        &mut self,
        header: MessageHeader,
        payload: &[u8],
        buffer_len: usize,
    ) -> Result<Option<PostedAt>, FabricError> {
        let total = HEADER_LEN + payload.len();
        let frags = total.div_ceil(buffer_len);
        let inline = total <= MAX_INLINE;
        let (offset, at) = match self.reserve(if inline { 0 } else { total }, frags, true) {
            Ok(r) => r,
            Err(FabricError::QueueFull) => return Ok(None),
            Err(e) => return Err(e),
        };
        let lkey = self.staging_mr.lkey();
        let base = self.staging.addr() + offset as u64;
        let mut guard = self.qp.start_post_send();
        if inline {
            let mut bytes = header.encode().to_vec();
            bytes.extend_from_slice(payload);
            guard
                .construct_wr(send_wr_id(at.seq, 0), WorkRequestFlags::Signaled)
                .setup_send()
                .setup_inline_data(&bytes);
        } else {
            self.staging.write(offset, &header.encode()).expect("reserved");
            self.staging.write(offset + HEADER_LEN, payload).expect("reserved");
            for k in 0..frags {
                let start = k * buffer_len;
                let len = buffer_len.min(total - start);
                let flags = if k + 1 == frags { WorkRequestFlags::Signaled } else { WorkRequestFlags::none() };
                let wr = guard.construct_wr(send_wr_id(at.seq, k), flags).setup_send();
                // SAFETY: the SGE addresses `len` bytes of the staging ring at `offset + start`,
                // inside the space `reserve` handed out; the ring is registered (`lkey`) and keeps
                // that space until this chain's signaled completion retires it.
                unsafe { wr.setup_sge(lkey, base + start as u64, len as u32) };
            }
        }
        guard.post().map_err(post_error)?;
        Ok(Some(at))
    }
}

/// Pre-posted receive buffers: `count` slices of `buffer_len` bytes of one registered region.
pub struct RecvSide {
    pub region: Arc<MemoryRegion>,
    pub mr: Arc<Mr>,
    pub buffer_len: usize,
    pub count: usize,
}

impl RecvSide {
    pub fn new(dev: &super::VerbsDevice, count: usize, buffer_len: usize) -> Result<RecvSide, FabricError> {
        let region = Arc::new(MemoryRegion::new(count * buffer_len));
        let mr = dev.register(&region, crate::fabric::Access::NONE, true)?;
        Ok(RecvSide { region, mr, buffer_len, count })
    }

    /// Posts buffers `indices` (one doorbell).
    pub fn post(&self, qp: &mut BasicQueuePair, indices: impl Iterator<Item = usize>) -> Result<(), FabricError> {
        let mut guard = qp.start_post_recv();
        for i in indices {
            debug_assert!(i < self.count);
            let wr = guard.construct_wr(RECV_BIT | i as u64);
            // SAFETY: buffer `i` is `buffer_len` bytes inside the registered receive region, which
            // lives as long as this RecvSide (and so the queue pair it is posted to); a buffer is
            // posted again only after its completion has been polled and its bytes copied out.
            unsafe {
                wr.setup_sge(self.mr.lkey(), self.region.addr() + (i * self.buffer_len) as u64, self.buffer_len as u32)
            };
        }
        guard.post().map_err(|_| FabricError::Io(io::ErrorKind::Other))
    }

    /// The `len` bytes that arrived in buffer `i`.
    pub fn take(&self, i: usize, len: usize) -> Vec<u8> {
        let mut out = vec![0; len.min(self.buffer_len)];
        self.region.read(i * self.buffer_len, &mut out).expect("inside the region");
        out
    }
}

/// One polled completion, copied out of the provider's queue.
#[derive(Debug, Clone, Copy)]
pub struct Wc {
    pub wr_id: u64,
    pub status: u32,
    pub byte_len: u32,
}

/// Polls `cq` into `out` (appended); returns how many.
pub fn poll(cq: &Cq, out: &mut Vec<Wc>) -> usize {
    let before = out.len();
    if let Ok(poller) = cq.cq.start_poll() {
        for wc in poller {
            out.push(Wc { wr_id: wc.wr_id(), status: wc.status(), byte_len: wc.byte_len() });
        }
    }
    out.len() - before
}

/// The loop of a thread that owns a completion queue: poll, spin a little while work keeps
/// coming (a completion is usually microseconds behind its post), then arm the channel and
/// sleep until it signals. `handle` gets each batch; the loop ends when `stop` says so (it is
/// asked at least every 50 ms).
pub fn run_poller(cq: &Cq, mut stop: impl FnMut() -> bool, mut handle: impl FnMut(&[Wc])) {
    const SPINS: u32 = 200;
    let mut batch = Vec::with_capacity(64);
    let mut idle = 0u32;
    while !stop() {
        batch.clear();
        if poll(cq, &mut batch) > 0 {
            handle(&batch);
            idle = 0;
            continue;
        }
        if idle < SPINS {
            idle += 1;
            std::thread::yield_now();
            continue;
        }
        if cq.arm() && poll(cq, &mut batch) > 0 {
            handle(&batch);
            idle = 0;
            continue;
        }
        cq.block(std::time::Duration::from_millis(50));
        idle = SPINS / 2;
    }
}
