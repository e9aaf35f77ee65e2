//! Opening a store: formatting blank SSDs, or rebuilding the in-memory state of formatted ones
//! from what is on them, after a clean shutdown or a crash alike.
//!
//! Nothing but the logs is persisted. Recovery scans each SSD's bucket log once, in physical
//! order, and keeps for every bucket its newest *complete* chain: every block of the chain has a
//! valid checksum and names the same bucket, position and length, and sits where its position
//! says. A chain torn by a crash is incomplete and ignored, so the previous version — which is
//! never overwritten before the new one is durable — stays in force. Values are written (and
//! durable) before the buckets that point to them, so every complete chain's values exist.
//!
//! **Torn or corrupt?** A crash tears writes only between blocks: a block write is atomic (a
//! logical block is NVMe's smallest power-fail atomic unit; the emulated SSDs write whole blocks
//! to the page cache). So a crash leaves a chain incomplete — some of its blocks missing, holding
//! what was there before — but never leaves a block that fails its checksum where the chain put
//! it. A block that does fail it, whose header (read unverified, [`BlockHeader::claimed`]) puts
//! it in place as part of a chain of some bucket newer than the bucket's newest complete chain,
//! is therefore corruption of the chain that was the bucket's newest: it was written whole, and
//! its write may have been acknowledged. Falling back to the bucket's previous chain would serve
//! data older than acknowledged, so the store refuses to open ([`StoreError::CorruptChain`],
//! naming the SSD, the block and the bucket). Damage to a chain older than the bucket's newest
//! complete one touches only dead data and is reported as a warning.
//!
//! The logs' heads are the oldest live positions; the tails are past every position that any
//! valid block or recovered item mentions, so that nothing written later reuses a position an
//! older block on the SSD still claims.

use super::index::{BucketIndex, ChainLoc};
use super::space::LogSpace;
use super::Recovered;
use crate::device::{DeviceError, Issuer, Ssd};
use scalio_common::ssd::{
    store_seed, BlockHeader, Bucket, LayoutError, SsdGeometry, Superblock, BLOCK_SIZE, FIRST_LOG_BLOCK,
};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Blocks read at a time while scanning.
const SCAN_BLOCKS: u64 = 2048;

/// Why a store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("SSD {ssd} ({path}) holds data that is not a scalio store; refusing to format it")]
    NotScalio { ssd: u16, path: String },
    #[error("SSD {ssd}: {error}")]
    Layout { ssd: u16, error: LayoutError },
    #[error("the SSDs do not form one store: {0}")]
    Mismatch(String),
    #[error("SSD {ssd} is corrupt: {reason}")]
    Corrupt { ssd: u16, reason: String },
    #[error(
        "SSD {ssd} ({path}): block 0, the superblock, is zeroed but block {data_block} holds data; \
         refusing to format over it"
    )]
    SuperblockLost { ssd: u16, path: String, data_block: u64 },
    /// The newest chain of a bucket fails its checksum (see the module's docs): the bucket's
    /// data on this SSD is damaged, and the store does not open rather than serve an older chain.
    #[error(
        "SSD {ssd} ({path}): block {block} of bucket {bucket}'s newest chain (log position {lseq}) \
         fails its checksum: corruption (a crash never leaves such a block); refusing to open \
         rather than serve the bucket's older chain"
    )]
    CorruptChain { ssd: u16, path: String, block: u64, bucket: u32, lseq: u64 },
}

/// The store found (or made) on a set of SSDs.
#[derive(Debug)]
pub struct OpenedStore {
    pub store_id: [u8; 16],
    /// Checksum seed of every block and record of this store.
    pub seed: u64,
    /// Per SSD: its geometry and the state recovered from it.
    pub ssds: Vec<(SsdGeometry, Recovered)>,
    /// Whether the SSDs were blank and have just been formatted.
    pub formatted: bool,
}

enum Found {
    Blank,
    Formatted(Superblock),
    Foreign,
}

/// Blocks after the superblock that must be zero for an SSD without one to count as blank. The
/// first write of a store puts a bucket chain at the start of the bucket log, and nothing ever
/// zeroes it again, so a used store always has data there.
const BLANK_CHECK_BLOCKS: u64 = 64;

fn inspect(ssd: &Ssd) -> Result<Found, StoreError> {
    let block = ssd.read(0, 1, Issuer::Worker)?;
    if block.iter().all(|b| *b == 0) {
        // A zeroed superblock in front of a used store (a failed or torn superblock write,
        // corruption) must not be mistaken for a blank SSD and formatted over.
        let n = BLANK_CHECK_BLOCKS.min(ssd.blocks().saturating_sub(FIRST_LOG_BLOCK));
        if n > 0 {
            let after = ssd.read(FIRST_LOG_BLOCK, n as u32, Issuer::Worker)?;
            if let Some(i) = after.iter().position(|b| *b != 0) {
                return Err(StoreError::SuperblockLost {
                    ssd: ssd.index(),
                    path: ssd.path().display().to_string(),
                    data_block: FIRST_LOG_BLOCK + (i / BLOCK_SIZE) as u64,
                });
            }
        }
        return Ok(Found::Blank);
    }
    match Superblock::decode(&block) {
        Ok(sb) => Ok(Found::Formatted(sb)),
        Err(LayoutError::BadMagic) => Ok(Found::Foreign),
        Err(error) => Err(StoreError::Layout { ssd: ssd.index(), error }),
    }
}

/// Opens the store on `ssds` (in order): formats them if all are blank, recovers them if all
/// belong to the same store, refuses anything else. `buckets` sets the buckets per SSD of a new
/// store (default: one per 16 blocks); an existing store keeps its own.
pub fn open(ssds: &[Arc<Ssd>], buckets: Option<u32>) -> Result<OpenedStore, StoreError> {
    if ssds.is_empty() {
        return Err(StoreError::Mismatch("no SSDs".into()));
    }
    let found: Vec<Found> = ssds.iter().map(|s| inspect(s)).collect::<Result<_, _>>()?;
    if let Some(i) = found.iter().position(|f| matches!(f, Found::Foreign)) {
        return Err(StoreError::NotScalio { ssd: ssds[i].index(), path: ssds[i].path().display().to_string() });
    }
    if found.iter().all(|f| matches!(f, Found::Blank)) {
        return format(ssds, buckets);
    }
    let sbs: Vec<Superblock> = found
        .into_iter()
        .enumerate()
        .map(|(i, f)| match f {
            Found::Formatted(sb) => Ok(sb),
            _ => Err(StoreError::Mismatch(format!("SSD {i} is blank but others are formatted"))),
        })
        .collect::<Result<_, _>>()?;
    let store_id = sbs[0].store_id;
    for (i, sb) in sbs.iter().enumerate() {
        if sb.store_id != store_id {
            return Err(StoreError::Mismatch(format!("SSD {i} belongs to another store")));
        }
        if sb.ssd_count as usize != ssds.len() || sb.ssd_index as usize != i {
            return Err(StoreError::Mismatch(format!(
                "SSD {i} was SSD {} of {}; now given as {i} of {}",
                sb.ssd_index,
                sb.ssd_count,
                ssds.len()
            )));
        }
        if sb.geometry.total_blocks > ssds[i].blocks() {
            return Err(StoreError::Mismatch(format!(
                "SSD {i} was formatted with {} blocks but has {}",
                sb.geometry.total_blocks,
                ssds[i].blocks()
            )));
        }
        if let Some(b) = buckets {
            if b != sb.geometry.buckets {
                tracing::warn!(
                    ssd = i,
                    configured = b,
                    stored = sb.geometry.buckets,
                    "keeping the stored bucket count"
                );
            }
        }
    }
    let seed = store_seed(&store_id);
    let recovered = ssds
        .iter()
        .zip(&sbs)
        .map(|(ssd, sb)| recover(ssd, &sb.geometry, seed).map(|r| (sb.geometry, r)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(OpenedStore { store_id, seed, ssds: recovered, formatted: false })
}

fn format(ssds: &[Arc<Ssd>], buckets: Option<u32>) -> Result<OpenedStore, StoreError> {
    let store_id: [u8; 16] = rand::random();
    let mut out = Vec::new();
    for (i, ssd) in ssds.iter().enumerate() {
        let geometry =
            SsdGeometry::plan(ssd.blocks(), buckets).map_err(|error| StoreError::Layout { ssd: i as u16, error })?;
        let sb = Superblock { geometry, ssd_index: i as u32, ssd_count: ssds.len() as u32, store_id };
        let block = scalio_common::aligned::AlignedBuf::copy_padded(&sb.encode(), BLOCK_SIZE);
        ssd.write(0, &block, Issuer::Worker)?;
        out.push((geometry, Recovered::empty(&geometry)));
    }
    tracing::info!(ssds = ssds.len(), "formatted a new store");
    Ok(OpenedStore { store_id, seed: store_seed(&store_id), ssds: out, formatted: true })
}

/// A chain being assembled during the scan.
struct Assembling {
    bucket: u32,
    lseq: u64,
    len: u8,
    bytes: Vec<u8>,
}

/// What recovery keeps of a bucket's newest chain.
#[derive(Clone, Copy)]
struct Newest {
    loc: ChainLoc,
    value_bytes: u64,
    min_pos: u64,
}

/// Rebuilds one SSD's index and log positions by scanning its bucket log.
pub fn recover(ssd: &Ssd, geo: &SsdGeometry, seed: u64) -> Result<Recovered, StoreError> {
    let size = geo.bucket_log.blocks;
    let mut newest: Vec<Option<Newest>> = vec![None; geo.buckets as usize];
    let mut max_seen = 0u64; // past every position a valid block claims
    let mut value_end = 0u64; // past every value any complete chain points to
    let mut chain: Option<Assembling> = None;
    // Chains with a block that fails its checksum, by (bucket, position): their first such block.
    let mut damaged: BTreeMap<(u32, u64), u64> = BTreeMap::new();
    let mut q = 0;
    while q < size {
        let n = SCAN_BLOCKS.min(size - q);
        let bytes = ssd.read(geo.bucket_log.start + q, n as u32, Issuer::Worker)?;
        for (i, block) in bytes.chunks_exact(BLOCK_SIZE).enumerate() {
            let phys = q + i as u64;
            let in_place =
                |h: &BlockHeader| (h.lseq + u64::from(h.chain_index)) % size == phys && h.bucket < geo.buckets;
            let h = match BlockHeader::decode(block, seed) {
                Ok(h) if in_place(&h) => h,
                Ok(_) => {
                    chain = None;
                    continue;
                }
                Err(_) => {
                    if let Some(h) = BlockHeader::claimed(block).filter(in_place) {
                        damaged.entry((h.bucket, h.lseq)).or_insert(geo.bucket_log.start + phys);
                    }
                    chain = None;
                    continue;
                }
            };
            max_seen = max_seen.max(h.lseq + u64::from(h.chain_len));
            if h.chain_index == 0 {
                chain = Some(Assembling { bucket: h.bucket, lseq: h.lseq, len: h.chain_len, bytes: Vec::new() });
            }
            let Some(c) = chain.as_mut() else { continue };
            if c.bucket != h.bucket
                || c.lseq != h.lseq
                || c.len != h.chain_len
                || c.bytes.len() != usize::from(h.chain_index) * BLOCK_SIZE
            {
                chain = None;
                continue;
            }
            c.bytes.extend_from_slice(block);
            if c.bytes.len() < usize::from(c.len) * BLOCK_SIZE {
                continue;
            }
            let c = chain.take().expect("assembling");
            let Ok(content) = Bucket::decode(&c.bytes, c.bucket, c.lseq, c.len, seed) else { continue };
            for it in &content.items {
                value_end = value_end.max(it.value_pos + it.record_len() as u64);
            }
            let slot = &mut newest[c.bucket as usize];
            if slot.is_none_or(|n| c.lseq > n.loc.lseq) {
                *slot = Some(Newest {
                    loc: ChainLoc { lseq: c.lseq, len: c.len },
                    value_bytes: content.items.iter().map(|it| it.record_len() as u64).sum(),
                    min_pos: content.items.iter().map(|it| it.value_pos).min().unwrap_or(u64::MAX),
                });
            }
        }
        q += n;
    }
    check_damaged(ssd, geo, &newest, &damaged, max_seen)?;
    let mut index = BucketIndex::new(geo.buckets);
    let (mut live_blocks, mut live_bytes) = (0, 0);
    let (mut bl_head, mut vl_head) = (u64::MAX, u64::MAX);
    for (b, n) in newest.iter().enumerate() {
        if let Some(n) = n {
            index.set(b as u32, n.loc);
            live_blocks += u64::from(n.loc.len);
            live_bytes += n.value_bytes;
            bl_head = bl_head.min(n.loc.lseq);
            vl_head = vl_head.min(n.min_pos);
        }
    }
    let block = BLOCK_SIZE as u64;
    let bl_tail = max_seen;
    let vl_tail = value_end.div_ceil(block) * block;
    let bl_head = bl_head.min(bl_tail);
    let vl_head = vl_head.min(vl_tail);
    let corrupt = |reason: String| StoreError::Corrupt { ssd: ssd.index(), reason };
    if bl_tail - bl_head > size {
        return Err(corrupt(format!("bucket log spans {} blocks, more than its {size}", bl_tail - bl_head)));
    }
    if vl_tail - vl_head > geo.value_log.bytes() {
        return Err(corrupt(format!(
            "value log spans {} bytes, more than its {}",
            vl_tail - vl_head,
            geo.value_log.bytes()
        )));
    }
    tracing::info!(ssd = ssd.index(), buckets = index.iter().count(), live_blocks, live_bytes, "recovered SSD");
    Ok(Recovered {
        index,
        bucket_log: LogSpace::new(bl_head, bl_tail, size),
        value_log: LogSpace::new(vl_head, vl_tail, geo.value_log.bytes()),
        live_blocks,
        live_bytes,
    })
}

/// Refuses a damaged chain newer than its bucket's newest complete one (see the module's docs).
/// Claims from before the current lap of the log (`max_seen - size`) are old data the log has
/// since wrapped over, and are ignored.
fn check_damaged(
    ssd: &Ssd,
    geo: &SsdGeometry,
    newest: &[Option<Newest>],
    damaged: &BTreeMap<(u32, u64), u64>,
    max_seen: u64,
) -> Result<(), StoreError> {
    let lap_start = max_seen.saturating_sub(geo.bucket_log.blocks);
    for (&(bucket, lseq), &block) in damaged {
        if lseq < lap_start {
            continue;
        }
        if newest[bucket as usize].is_some_and(|n| n.loc.lseq > lseq) {
            tracing::warn!(ssd = ssd.index(), block, bucket, lseq, "a damaged block in a dead bucket chain");
            continue;
        }
        return Err(StoreError::CorruptChain {
            ssd: ssd.index(),
            path: ssd.path().display().to_string(),
            block,
            bucket,
            lseq,
        });
    }
    Ok(())
}
