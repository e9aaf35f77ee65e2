//! On-SSD format: superblock, bucket log blocks, value records. Both the server (which writes
//! them) and the client (which reads them on a cache miss) use these codecs.
//!
//! An SSD is an array of 512-byte blocks:
//!
//! ```text
//! block 0            superblock
//! blocks 1..8        reserved (zero)
//! [bl.start, +bl.n)  bucket log: circular, one or more 512-byte blocks per bucket version
//! [vl.start, +vl.n)  value log: circular, byte addressed, records 4-byte aligned
//! ```
//!
//! **Logical positions.** Both logs are addressed by 48-bit *logical* positions that only grow:
//! the bucket log in blocks (`lseq`), the value log in bytes (`lpos`). The physical place is the
//! logical position modulo the log's size. Every bucket block and every value record stores its
//! own logical position, so a reader holding a position from an earlier META_GET detects that the
//! garbage collector has since reused the space (the stored position differs) instead of
//! returning another key's bytes. Nothing written ever straddles the physical end of a log: the
//! writer skips to the start of the next lap.
//!
//! **Superblock** (little-endian), then zero to the end of the block:
//!
//! | off | size | field |
//! |-----|------|-------|
//! | 0   | 8    | magic `SCALIOSD` |
//! | 8   | 4    | format version (1) |
//! | 12  | 4    | block size (512) |
//! | 16  | 8    | total blocks |
//! | 24  | 4    | index of this SSD in the store |
//! | 28  | 4    | number of SSDs in the store |
//! | 32  | 4    | buckets on this SSD |
//! | 36  | 4    | reserved |
//! | 40  | 8+8  | bucket log start block, length in blocks |
//! | 56  | 8+8  | value log start block, length in blocks |
//! | 72  | 16   | store id (random at format time, the same on every SSD of a store) |
//! | 88  | 4    | CRC32C of bytes 0..88 |
//!
//! **Bucket block** (exactly 512 bytes): a 16-byte header, then 16 items of 31 bytes.
//!
//! | off | size | field |
//! |-----|------|-------|
//! | 0   | 4    | bucket id |
//! | 4   | 6    | `lseq` of the chain's first block |
//! | 10  | 1    | chain length (1..=255 blocks, written contiguously) |
//! | 11  | 1    | index of this block in the chain |
//! | 12  | 4    | CRC32C (seeded from the store id) of the block with this field zero |
//!
//! Item: `key_len u8` (0 = empty), `key [20]`, `value_len u32`, `value lpos u48`. Items fill the
//! blocks of a chain in order; empty items only at the end.
//!
//! **Value record** (4-byte aligned, zero padded):
//!
//! | off | size | field |
//! |-----|------|-------|
//! | 0   | 4    | value length |
//! | 4   | 1    | key length |
//! | 5   | 1    | magic `0xA5` |
//! | 6   | 2    | reserved (0) |
//! | 8   | 8    | `lpos` of this record |
//! | 16  | 8    | XXH64 (seeded from the store id) of bytes 0..16, the key and the value |
//! | 24  |      | key, then value |
//!
//! The key in the record lets garbage collection find the owner of a value, and lets a reader
//! confirm that the bytes belong to the key it asked for.

use crate::key::MAX_KEY_LEN;
use xxhash_rust::xxh64::xxh64;

pub const BLOCK_SIZE: usize = 512;
pub const FORMAT_VERSION: u32 = 1;
pub const MAGIC: [u8; 8] = *b"SCALIOSD";
pub const ITEMS_PER_BLOCK: usize = 16;
pub const ITEM_SIZE: usize = 31;
pub const BUCKET_HEADER: usize = 16;
pub const MAX_CHAIN: usize = 255;
/// Most items one bucket can hold.
pub const MAX_BUCKET_ITEMS: usize = MAX_CHAIN * ITEMS_PER_BLOCK;
pub const RECORD_HEADER: usize = 24;
pub const RECORD_MAGIC: u8 = 0xA5;
/// Largest value the store accepts.
pub const MAX_VALUE_LEN: usize = 1 << 20;
/// Largest logical position (48 bits).
pub const MAX_POSITION: u64 = (1 << 48) - 1;
/// First block after the superblock area.
pub const FIRST_LOG_BLOCK: u64 = 8;
/// Smallest SSD the layout accepts, in blocks.
pub const MIN_BLOCKS: u64 = 1024;

/// A malformed or mismatching on-SSD structure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("not a scalio SSD (bad magic)")]
    BadMagic,
    #[error("superblock checksum mismatch")]
    SuperblockChecksum,
    #[error("unsupported format version {0}")]
    Version(u32),
    #[error("unsupported block size {0}")]
    BlockSize(u32),
    #[error("inconsistent geometry: {0}")]
    Geometry(String),
    #[error("block checksum mismatch")]
    BlockChecksum,
    #[error("bucket block belongs to bucket {found}, expected {expected}")]
    WrongBucket { expected: u32, found: u32 },
    #[error("bucket block is from position {found}, expected {expected} (space was reused)")]
    StalePosition { expected: u64, found: u64 },
    #[error("bucket chain block {index} of {len} is malformed")]
    BadChain { index: u8, len: u8 },
    #[error("bucket item is malformed")]
    BadItem,
    #[error("bucket has {0} items, more than a chain can hold")]
    BucketFull(usize),
    #[error("value record is malformed")]
    BadRecord,
    #[error("value record is from position {found}, expected {expected} (space was reused)")]
    StaleRecord { expected: u64, found: u64 },
    #[error("value record belongs to another key")]
    RecordKeyMismatch,
    #[error("value record checksum mismatch")]
    RecordChecksum,
    #[error("buffer of {have} bytes is too short, need {need}")]
    Short { have: usize, need: usize },
}

/// A contiguous run of blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub start: u64,
    pub blocks: u64,
}

impl Extent {
    pub fn end(&self) -> u64 {
        self.start + self.blocks
    }
    pub fn bytes(&self) -> u64 {
        self.blocks * BLOCK_SIZE as u64
    }
}

/// Where the logs of one SSD are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SsdGeometry {
    pub total_blocks: u64,
    pub buckets: u32,
    pub bucket_log: Extent,
    pub value_log: Extent,
}

impl SsdGeometry {
    /// Plans the layout of an SSD of `total_blocks` blocks. `buckets` defaults to one bucket per
    /// 16 blocks; the bucket log gets four blocks per bucket (room for the newest copy of every
    /// bucket and for garbage collection), the value log the rest.
    pub fn plan(total_blocks: u64, buckets: Option<u32>) -> Result<SsdGeometry, LayoutError> {
        if total_blocks < MIN_BLOCKS {
            return Err(LayoutError::Geometry(format!(
                "{total_blocks} blocks is smaller than the minimum of {MIN_BLOCKS}"
            )));
        }
        let buckets = match buckets {
            Some(0) => return Err(LayoutError::Geometry("zero buckets".into())),
            Some(b) => b,
            None => u32::try_from((total_blocks / 16).max(16)).unwrap_or(u32::MAX),
        };
        let usable = total_blocks - FIRST_LOG_BLOCK;
        let bucket_blocks = u64::from(buckets) * 4;
        if bucket_blocks * 4 > usable * 3 {
            return Err(LayoutError::Geometry(format!(
                "{buckets} buckets need {bucket_blocks} bucket-log blocks, too many for {total_blocks} blocks"
            )));
        }
        // Keep the value log 4 KiB aligned.
        let value_start = (FIRST_LOG_BLOCK + bucket_blocks).div_ceil(8) * 8;
        let g = SsdGeometry {
            total_blocks,
            buckets,
            bucket_log: Extent { start: FIRST_LOG_BLOCK, blocks: bucket_blocks },
            value_log: Extent { start: value_start, blocks: total_blocks - value_start },
        };
        g.check()?;
        Ok(g)
    }

    /// Checks that the extents fit and do not overlap.
    pub fn check(&self) -> Result<(), LayoutError> {
        let bad = |m: &str| Err(LayoutError::Geometry(m.to_string()));
        if self.buckets == 0 {
            return bad("zero buckets");
        }
        // The geometry comes from disk or the network: every sum and product below (and in
        // `bucket_block`, `value_byte`) must fit, whatever the fields hold.
        if self.total_blocks > u64::MAX / BLOCK_SIZE as u64 {
            return bad("more blocks than 64-bit byte offsets can address");
        }
        let (Some(bucket_end), Some(value_end)) = (
            self.bucket_log.start.checked_add(self.bucket_log.blocks),
            self.value_log.start.checked_add(self.value_log.blocks),
        ) else {
            return bad("a log extends past the largest block number");
        };
        if self.bucket_log.start < FIRST_LOG_BLOCK || self.bucket_log.blocks < 8 {
            return bad("bucket log too small or overlaps the superblock");
        }
        if self.value_log.start < bucket_end || self.value_log.blocks < 8 {
            return bad("value log too small or overlaps the bucket log");
        }
        if value_end > self.total_blocks {
            return bad("value log extends past the end of the SSD");
        }
        Ok(())
    }

    /// Physical block of bucket-log position `lseq`.
    pub fn bucket_block(&self, lseq: u64) -> u64 {
        self.bucket_log.start + lseq % self.bucket_log.blocks
    }

    /// Physical byte offset of value-log position `lpos`.
    pub fn value_byte(&self, lpos: u64) -> u64 {
        self.value_log.start * BLOCK_SIZE as u64 + lpos % self.value_log.bytes()
    }

    /// The blocks to read to get the record at `lpos` of `len` bytes: (first block, count, offset
    /// of the record within the first block).
    pub fn record_blocks(&self, lpos: u64, len: usize) -> (u64, u32, usize) {
        let byte = self.value_byte(lpos);
        let first = byte / BLOCK_SIZE as u64;
        let last = (byte + len as u64).div_ceil(BLOCK_SIZE as u64);
        (first, (last - first) as u32, (byte % BLOCK_SIZE as u64) as usize)
    }
}

/// The checksum seed of a store, derived from its id.
pub fn store_seed(store_id: &[u8; 16]) -> u64 {
    xxh64(store_id, 0x5ca1_105d)
}

/// Block 0 of every SSD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub geometry: SsdGeometry,
    pub ssd_index: u32,
    pub ssd_count: u32,
    pub store_id: [u8; 16],
}

impl Superblock {
    pub fn encode(&self) -> [u8; BLOCK_SIZE] {
        let mut b = [0u8; BLOCK_SIZE];
        let g = &self.geometry;
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
        b[16..24].copy_from_slice(&g.total_blocks.to_le_bytes());
        b[24..28].copy_from_slice(&self.ssd_index.to_le_bytes());
        b[28..32].copy_from_slice(&self.ssd_count.to_le_bytes());
        b[32..36].copy_from_slice(&g.buckets.to_le_bytes());
        b[40..48].copy_from_slice(&g.bucket_log.start.to_le_bytes());
        b[48..56].copy_from_slice(&g.bucket_log.blocks.to_le_bytes());
        b[56..64].copy_from_slice(&g.value_log.start.to_le_bytes());
        b[64..72].copy_from_slice(&g.value_log.blocks.to_le_bytes());
        b[72..88].copy_from_slice(&self.store_id);
        let crc = crc32c::crc32c(&b[..88]);
        b[88..92].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Superblock, LayoutError> {
        if b.len() < BLOCK_SIZE {
            return Err(LayoutError::Short { have: b.len(), need: BLOCK_SIZE });
        }
        if b[0..8] != MAGIC {
            return Err(LayoutError::BadMagic);
        }
        if crc32c::crc32c(&b[..88]) != le32(b, 88) {
            return Err(LayoutError::SuperblockChecksum);
        }
        let version = le32(b, 8);
        if version != FORMAT_VERSION {
            return Err(LayoutError::Version(version));
        }
        let bs = le32(b, 12);
        if bs as usize != BLOCK_SIZE {
            return Err(LayoutError::BlockSize(bs));
        }
        let geometry = SsdGeometry {
            total_blocks: le64(b, 16),
            buckets: le32(b, 32),
            bucket_log: Extent { start: le64(b, 40), blocks: le64(b, 48) },
            value_log: Extent { start: le64(b, 56), blocks: le64(b, 64) },
        };
        geometry.check()?;
        Ok(Superblock {
            geometry,
            ssd_index: le32(b, 24),
            ssd_count: le32(b, 28),
            store_id: b[72..88].try_into().unwrap(),
        })
    }
}

/// One key's entry in a bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub key: Vec<u8>,
    pub value_len: u32,
    /// Logical value-log position of the value record.
    pub value_pos: u64,
}

impl Item {
    /// Length of the value record this item points to.
    pub fn record_len(&self) -> usize {
        record_len(self.key.len(), self.value_len as usize)
    }
}

/// A bucket's contents: what one version of a bucket chain holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Bucket {
    pub items: Vec<Item>,
}

impl Bucket {
    pub fn find(&self, key: &[u8]) -> Option<&Item> {
        self.items.iter().find(|i| i.key == key)
    }

    /// Blocks the chain needs (an empty bucket still takes one block: it records the deletion).
    pub fn chain_len(&self) -> usize {
        self.items.len().div_ceil(ITEMS_PER_BLOCK).max(1)
    }

    /// Inserts or replaces the item for `item.key`.
    pub fn upsert(&mut self, item: Item) -> Result<(), LayoutError> {
        if let Some(i) = self.items.iter_mut().find(|i| i.key == item.key) {
            *i = item;
            return Ok(());
        }
        if self.items.len() >= MAX_BUCKET_ITEMS {
            return Err(LayoutError::BucketFull(self.items.len() + 1));
        }
        self.items.push(item);
        Ok(())
    }

    /// Removes `key`, moving the last item into the hole. Returns whether it was there.
    pub fn remove(&mut self, key: &[u8]) -> bool {
        match self.items.iter().position(|i| i.key == key) {
            Some(p) => {
                self.items.swap_remove(p);
                true
            }
            None => false,
        }
    }

    /// Encodes the chain for bucket `id` written at bucket-log position `lseq`.
    pub fn encode(&self, id: u32, lseq: u64, seed: u64) -> Result<Vec<u8>, LayoutError> {
        let n = self.chain_len();
        if n > MAX_CHAIN {
            return Err(LayoutError::BucketFull(self.items.len()));
        }
        if lseq > MAX_POSITION {
            return Err(LayoutError::Geometry("bucket log position overflow".into()));
        }
        let mut out = vec![0u8; n * BLOCK_SIZE];
        for (idx, block) in out.chunks_exact_mut(BLOCK_SIZE).enumerate() {
            block[0..4].copy_from_slice(&id.to_le_bytes());
            block[4..10].copy_from_slice(&lseq.to_le_bytes()[..6]);
            block[10] = n as u8;
            block[11] = idx as u8;
            let items = self.items.iter().skip(idx * ITEMS_PER_BLOCK).take(ITEMS_PER_BLOCK);
            for (j, item) in items.enumerate() {
                let o = BUCKET_HEADER + j * ITEM_SIZE;
                let e = &mut block[o..o + ITEM_SIZE];
                if item.key.is_empty() || item.key.len() > MAX_KEY_LEN || item.value_pos > MAX_POSITION {
                    return Err(LayoutError::BadItem);
                }
                e[0] = item.key.len() as u8;
                e[1..1 + item.key.len()].copy_from_slice(&item.key);
                e[21..25].copy_from_slice(&item.value_len.to_le_bytes());
                e[25..31].copy_from_slice(&item.value_pos.to_le_bytes()[..6]);
            }
            let crc = block_crc(block, seed);
            block[12..16].copy_from_slice(&crc.to_le_bytes());
        }
        Ok(out)
    }

    /// Decodes a chain read from the SSD, checking every block's checksum, that it belongs to
    /// bucket `id`, and that it was written at `lseq` with `chain_len` blocks.
    pub fn decode(bytes: &[u8], id: u32, lseq: u64, chain_len: u8, seed: u64) -> Result<Bucket, LayoutError> {
        let need = usize::from(chain_len) * BLOCK_SIZE;
        if chain_len == 0 {
            return Err(LayoutError::BadChain { index: 0, len: 0 });
        }
        if bytes.len() < need {
            return Err(LayoutError::Short { have: bytes.len(), need });
        }
        let mut items = Vec::new();
        let mut ended = false;
        for (idx, block) in bytes[..need].chunks_exact(BLOCK_SIZE).enumerate() {
            let h = BlockHeader::decode(block, seed)?;
            if h.bucket != id {
                return Err(LayoutError::WrongBucket { expected: id, found: h.bucket });
            }
            if h.lseq != lseq {
                return Err(LayoutError::StalePosition { expected: lseq, found: h.lseq });
            }
            if h.chain_len != chain_len || usize::from(h.chain_index) != idx {
                return Err(LayoutError::BadChain { index: h.chain_index, len: h.chain_len });
            }
            for j in 0..ITEMS_PER_BLOCK {
                let o = BUCKET_HEADER + j * ITEM_SIZE;
                let e = &block[o..o + ITEM_SIZE];
                let klen = usize::from(e[0]);
                if klen == 0 {
                    ended = true;
                    continue;
                }
                if ended || klen > MAX_KEY_LEN {
                    return Err(LayoutError::BadItem);
                }
                let mut pos = [0u8; 8];
                pos[..6].copy_from_slice(&e[25..31]);
                items.push(Item {
                    key: e[1..1 + klen].to_vec(),
                    value_len: le32(e, 21),
                    value_pos: u64::from_le_bytes(pos),
                });
            }
        }
        Ok(Bucket { items })
    }
}

/// The header of one bucket-log block, checked against its checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockHeader {
    pub bucket: u32,
    pub lseq: u64,
    pub chain_len: u8,
    pub chain_index: u8,
}

impl BlockHeader {
    /// Decodes and verifies one bucket-log block (recovery and GC scan blocks this way).
    pub fn decode(block: &[u8], seed: u64) -> Result<BlockHeader, LayoutError> {
        if block.len() < BLOCK_SIZE {
            return Err(LayoutError::Short { have: block.len(), need: BLOCK_SIZE });
        }
        if block_crc(block, seed) != le32(block, 12) {
            return Err(LayoutError::BlockChecksum);
        }
        let mut lseq = [0u8; 8];
        lseq[..6].copy_from_slice(&block[4..10]);
        let h = BlockHeader {
            bucket: le32(block, 0),
            lseq: u64::from_le_bytes(lseq),
            chain_len: block[10],
            chain_index: block[11],
        };
        if h.chain_len == 0 || h.chain_index >= h.chain_len {
            return Err(LayoutError::BadChain { index: h.chain_index, len: h.chain_len });
        }
        Ok(h)
    }

    /// What a block that fails its checksum claims to be, read from its header unverified
    /// (None if the header is not even well-formed). A write torn at a 512-byte boundary or a
    /// bit flip elsewhere in the block leaves the header as written; recovery uses the claim to
    /// tell which bucket's chain was damaged, never to serve anything.
    pub fn claimed(block: &[u8]) -> Option<BlockHeader> {
        if block.len() < BLOCK_SIZE {
            return None;
        }
        let mut lseq = [0u8; 8];
        lseq[..6].copy_from_slice(&block[4..10]);
        let h = BlockHeader {
            bucket: le32(block, 0),
            lseq: u64::from_le_bytes(lseq),
            chain_len: block[10],
            chain_index: block[11],
        };
        (h.chain_len != 0 && h.chain_index < h.chain_len).then_some(h)
    }
}

fn block_crc(block: &[u8], seed: u64) -> u32 {
    let c = crc32c::crc32c_append(seed as u32, &block[..12]);
    let c = crc32c::crc32c_append(c, &[0; 4]);
    crc32c::crc32c_append(c, &block[16..BLOCK_SIZE])
}

/// Bytes a record of this key and value takes in the value log.
pub fn record_len(key_len: usize, value_len: usize) -> usize {
    (RECORD_HEADER + key_len + value_len).div_ceil(4) * 4
}

/// Appends the record for `key`/`value` at value-log position `lpos` to `out`.
pub fn encode_record(out: &mut Vec<u8>, seed: u64, lpos: u64, key: &[u8], value: &[u8]) {
    let start = out.len();
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&(value.len() as u32).to_le_bytes());
    h[4] = key.len() as u8;
    h[5] = RECORD_MAGIC;
    h[8..16].copy_from_slice(&lpos.to_le_bytes());
    let sum = record_checksum(seed, &h, key, value);
    out.extend_from_slice(&h);
    out.extend_from_slice(&sum.to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    out.resize(start + record_len(key.len(), value.len()), 0);
}

fn record_checksum(seed: u64, header: &[u8], key: &[u8], value: &[u8]) -> u64 {
    let mut h = xxhash_rust::xxh64::Xxh64::new(seed);
    h.update(header);
    h.update(key);
    h.update(value);
    h.digest()
}

/// A decoded value record, borrowing from the bytes read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueRecord<'a> {
    pub lpos: u64,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

impl ValueRecord<'_> {
    pub fn len(&self) -> usize {
        record_len(self.key.len(), self.value.len())
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Decodes the record at the start of `bytes` and verifies its checksum.
pub fn decode_record(bytes: &[u8], seed: u64) -> Result<ValueRecord<'_>, LayoutError> {
    if bytes.len() < RECORD_HEADER {
        return Err(LayoutError::Short { have: bytes.len(), need: RECORD_HEADER });
    }
    let value_len = le32(bytes, 0) as usize;
    let key_len = usize::from(bytes[4]);
    if bytes[5] != RECORD_MAGIC || key_len == 0 || key_len > MAX_KEY_LEN || value_len > MAX_VALUE_LEN {
        return Err(LayoutError::BadRecord);
    }
    let need = RECORD_HEADER + key_len + value_len;
    if bytes.len() < need {
        return Err(LayoutError::Short { have: bytes.len(), need });
    }
    let key = &bytes[RECORD_HEADER..RECORD_HEADER + key_len];
    let value = &bytes[RECORD_HEADER + key_len..need];
    if record_checksum(seed, &bytes[..16], key, value) != le64(bytes, 16) {
        return Err(LayoutError::RecordChecksum);
    }
    Ok(ValueRecord { lpos: le64(bytes, 8), key, value })
}

/// Decodes the record an item points to, checking that it is the one expected: written at
/// `lpos`, for `key`, with a value of `value_len` bytes.
pub fn decode_expected_record<'a>(
    bytes: &'a [u8],
    seed: u64,
    lpos: u64,
    key: &[u8],
    value_len: u32,
) -> Result<ValueRecord<'a>, LayoutError> {
    let r = decode_record(bytes, seed)?;
    if r.lpos != lpos {
        return Err(LayoutError::StaleRecord { expected: lpos, found: r.lpos });
    }
    if r.key != key || r.value.len() != value_len as usize {
        return Err(LayoutError::RecordKeyMismatch);
    }
    Ok(r)
}

fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

fn le64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEED: u64 = 0x1234;

    fn arb_key() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 1..=MAX_KEY_LEN)
    }

    fn arb_item() -> impl Strategy<Value = Item> {
        (arb_key(), any::<u32>(), 0..=MAX_POSITION).prop_map(|(key, value_len, value_pos)| Item {
            key,
            value_len,
            value_pos,
        })
    }

    #[test]
    fn item_and_header_sizes() {
        assert_eq!(BUCKET_HEADER + ITEMS_PER_BLOCK * ITEM_SIZE, BLOCK_SIZE);
    }

    #[test]
    fn plan_default_geometry() {
        let g = SsdGeometry::plan(131_072, None).unwrap();
        assert_eq!(g.buckets, 8192);
        assert_eq!(g.bucket_log.blocks, 4 * 8192);
        assert!(g.value_log.start >= g.bucket_log.end());
        assert_eq!(g.value_log.end(), 131_072);
        assert!(SsdGeometry::plan(100, None).is_err());
        assert!(SsdGeometry::plan(4096, Some(1_000_000)).is_err());
    }

    /// Found by the `rpc_codec` fuzz target (2026-12-03): a geometry whose extent sums overflow
    /// panicked in `check` (an SSD description in a HELLO, or a superblock, is untrusted input).
    #[test]
    fn geometry_with_overflowing_extents_is_refused_not_a_panic() {
        let ok = SsdGeometry::plan(131_072, None).unwrap();
        let bad = [
            SsdGeometry { bucket_log: Extent { start: u64::MAX - 3, blocks: 8 }, ..ok },
            SsdGeometry { value_log: Extent { start: u64::MAX, blocks: u64::MAX }, ..ok },
            SsdGeometry {
                total_blocks: u64::MAX,
                value_log: Extent { start: ok.value_log.start, blocks: 1 << 62 },
                ..ok
            },
        ];
        for g in bad {
            assert!(matches!(g.check(), Err(LayoutError::Geometry(_))), "{g:?}");
        }
        assert_eq!(ok.check(), Ok(()));
    }

    #[test]
    fn stale_bucket_block_is_detected() {
        let b = Bucket { items: vec![Item { key: b"k".to_vec(), value_len: 3, value_pos: 99 }] };
        let bytes = b.encode(7, 100, SEED).unwrap();
        assert_eq!(Bucket::decode(&bytes, 7, 100, 1, SEED).unwrap(), b);
        assert!(matches!(Bucket::decode(&bytes, 7, 100 + 4096, 1, SEED), Err(LayoutError::StalePosition { .. })));
        assert!(matches!(Bucket::decode(&bytes, 8, 100, 1, SEED), Err(LayoutError::WrongBucket { .. })));
        assert_eq!(Bucket::decode(&bytes, 7, 100, 1, SEED ^ 1), Err(LayoutError::BlockChecksum));
    }

    #[test]
    fn record_of_another_key_is_detected() {
        let mut buf = Vec::new();
        encode_record(&mut buf, SEED, 64, b"key-a", b"value");
        assert!(decode_expected_record(&buf, SEED, 64, b"key-a", 5).is_ok());
        assert_eq!(decode_expected_record(&buf, SEED, 64, b"key-b", 5), Err(LayoutError::RecordKeyMismatch));
        assert!(matches!(decode_expected_record(&buf, SEED, 128, b"key-a", 5), Err(LayoutError::StaleRecord { .. })));
    }

    proptest! {
        #[test]
        fn superblock_round_trip(total in MIN_BLOCKS..10_000_000u64, idx: u32, cnt: u32, id: [u8; 16]) {
            let geometry = SsdGeometry::plan(total, None).unwrap();
            let sb = Superblock { geometry, ssd_index: idx, ssd_count: cnt, store_id: id };
            prop_assert_eq!(Superblock::decode(&sb.encode()).unwrap(), sb);
        }

        #[test]
        fn superblock_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Superblock::decode(&bytes);
        }

        #[test]
        fn bucket_round_trip(items in proptest::collection::vec(arb_item(), 0..60), id: u32, lseq in 0..=MAX_POSITION) {
            let mut b = Bucket::default();
            for i in items { b.upsert(i).unwrap(); }
            let bytes = b.encode(id, lseq, SEED).unwrap();
            prop_assert_eq!(bytes.len(), b.chain_len() * BLOCK_SIZE);
            let back = Bucket::decode(&bytes, id, lseq, b.chain_len() as u8, SEED).unwrap();
            prop_assert_eq!(back, b);
        }

        #[test]
        fn bucket_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1100), len in 0u8..4) {
            let _ = Bucket::decode(&bytes, 1, 2, len, SEED);
            let _ = BlockHeader::decode(&bytes, SEED);
        }

        #[test]
        fn record_round_trip(key in arb_key(), value in proptest::collection::vec(any::<u8>(), 0..2000), lpos in 0..=MAX_POSITION) {
            let mut buf = vec![0xEE; 3];
            encode_record(&mut buf, SEED, lpos, &key, &value);
            prop_assert_eq!(buf.len() - 3, record_len(key.len(), value.len()));
            prop_assert_eq!((buf.len() - 3) % 4, 0);
            let r = decode_expected_record(&buf[3..], SEED, lpos, &key, value.len() as u32).unwrap();
            prop_assert_eq!(r.value, &value[..]);
        }

        #[test]
        fn record_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_record(&bytes, SEED);
        }

        #[test]
        fn record_blocks_cover_the_record(lpos in 0..=MAX_POSITION, len in 24usize..5000) {
            let g = SsdGeometry::plan(65_536, None).unwrap();
            let (first, count, offset) = g.record_blocks(lpos, len);
            prop_assert!(first >= g.value_log.start);
            prop_assert!(offset + len <= count as usize * BLOCK_SIZE);
        }
    }
}
