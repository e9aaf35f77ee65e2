//! The client's own counters: what its operations cost, measured where they happened.

use scalio_common::rpc::Op;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default, Debug)]
pub(crate) struct Counters {
    pub gets: AtomicU64,
    pub probes: AtomicU64,
    pub registered_probes: AtomicU64,
    pub hits: AtomicU64,
    pub pending_retries: AtomicU64,
    pub misses: AtomicU64,
    pub absent: AtomicU64,
    pub fills: AtomicU64,
    pub fills_skipped: AtomicU64,
    pub fills_late: AtomicU64,
    pub no_reservation: AtomicU64,
    pub stale_retries: AtomicU64,
    pub block_reads: AtomicU64,
    pub block_read_blocks: AtomicU64,
    pub writes: AtomicU64,
    pub reconnects: AtomicU64,
    pub rpcs: [AtomicU64; Op::CODES],
}

/// A snapshot of a client's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// GET operations.
    pub gets: u64,
    /// One-sided READs of a cache bucket.
    pub probes: u64,
    /// Of those, READs into registered memory, completed through the completion queue with no
    /// allocation (the rest took the allocating path: every registered lane was in use).
    pub registered_probes: u64,
    /// GETs served by the cache.
    pub hits: u64,
    /// Re-probes because the key's slot was being filled (or read torn).
    pub pending_retries: u64,
    /// GETs that went past the cache (META_GET or server GET).
    pub misses: u64,
    /// GETs that found no such key.
    pub absent: u64,
    /// Cache fills posted (after a miss with a reservation).
    pub fills: u64,
    /// Misses with a reservation that could not fill it (value larger than a slot, or absent).
    pub fills_skipped: u64,
    /// Misses whose fill window was granted but whose SSD read ended past half the lease: not
    /// filled, since the window may be revoked before the WRITE arrives.
    pub fills_late: u64,
    /// Misses whose META_GET gave no reservation.
    pub no_reservation: u64,
    /// SSD reads retried because the blocks were reused since META_GET.
    pub stale_retries: u64,
    /// Block-path reads issued by this client (the offloaded SSD reads).
    pub block_reads: u64,
    pub block_read_blocks: u64,
    /// PUT, UPDATE and DELETE operations.
    pub writes: u64,
    /// Queue pairs replaced after they entered the error state or lost their connection.
    pub reconnects: u64,
    /// RPCs sent, by op.
    pub rpcs: [u64; Op::CODES],
}

impl ClientStats {
    pub fn rpcs(&self, op: Op) -> u64 {
        self.rpcs[op as usize]
    }

    pub fn total_rpcs(&self) -> u64 {
        self.rpcs.iter().sum()
    }

    /// `self + other`, field by field (e.g. over a cluster client's connections).
    pub fn plus(&self, other: &ClientStats) -> ClientStats {
        let mut rpcs = [0; Op::CODES];
        for (i, r) in rpcs.iter_mut().enumerate() {
            *r = self.rpcs[i] + other.rpcs[i];
        }
        ClientStats {
            gets: self.gets + other.gets,
            probes: self.probes + other.probes,
            registered_probes: self.registered_probes + other.registered_probes,
            hits: self.hits + other.hits,
            pending_retries: self.pending_retries + other.pending_retries,
            misses: self.misses + other.misses,
            absent: self.absent + other.absent,
            fills: self.fills + other.fills,
            fills_skipped: self.fills_skipped + other.fills_skipped,
            fills_late: self.fills_late + other.fills_late,
            no_reservation: self.no_reservation + other.no_reservation,
            stale_retries: self.stale_retries + other.stale_retries,
            block_reads: self.block_reads + other.block_reads,
            block_read_blocks: self.block_read_blocks + other.block_read_blocks,
            writes: self.writes + other.writes,
            reconnects: self.reconnects + other.reconnects,
            rpcs,
        }
    }

    /// `self - earlier`, field by field.
    pub fn since(&self, earlier: &ClientStats) -> ClientStats {
        let mut rpcs = [0; Op::CODES];
        for (i, r) in rpcs.iter_mut().enumerate() {
            *r = self.rpcs[i] - earlier.rpcs[i];
        }
        ClientStats {
            gets: self.gets - earlier.gets,
            probes: self.probes - earlier.probes,
            registered_probes: self.registered_probes - earlier.registered_probes,
            hits: self.hits - earlier.hits,
            pending_retries: self.pending_retries - earlier.pending_retries,
            misses: self.misses - earlier.misses,
            absent: self.absent - earlier.absent,
            fills: self.fills - earlier.fills,
            fills_skipped: self.fills_skipped - earlier.fills_skipped,
            fills_late: self.fills_late - earlier.fills_late,
            no_reservation: self.no_reservation - earlier.no_reservation,
            stale_retries: self.stale_retries - earlier.stale_retries,
            block_reads: self.block_reads - earlier.block_reads,
            block_read_blocks: self.block_read_blocks - earlier.block_read_blocks,
            writes: self.writes - earlier.writes,
            reconnects: self.reconnects - earlier.reconnects,
            rpcs,
        }
    }
}

impl Counters {
    pub fn snapshot(&self) -> ClientStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut rpcs = [0; Op::CODES];
        for (i, r) in rpcs.iter_mut().enumerate() {
            *r = g(&self.rpcs[i]);
        }
        ClientStats {
            gets: g(&self.gets),
            probes: g(&self.probes),
            registered_probes: g(&self.registered_probes),
            hits: g(&self.hits),
            pending_retries: g(&self.pending_retries),
            misses: g(&self.misses),
            absent: g(&self.absent),
            fills: g(&self.fills),
            fills_skipped: g(&self.fills_skipped),
            fills_late: g(&self.fills_late),
            no_reservation: g(&self.no_reservation),
            stale_retries: g(&self.stale_retries),
            block_reads: g(&self.block_reads),
            block_read_blocks: g(&self.block_read_blocks),
            writes: g(&self.writes),
            reconnects: g(&self.reconnects),
            rpcs,
        }
    }

    pub fn add(a: &AtomicU64, n: u64) {
        a.fetch_add(n, Ordering::Relaxed);
    }
}
