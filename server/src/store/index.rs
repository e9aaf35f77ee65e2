//! The bucket-meta index: the only per-key-group state the server keeps in DRAM.
//!
//! One 8-byte entry per SSD bucket: whether the bucket was ever written, the bucket-log position
//! of its newest chain (48 bits) and the chain's length in blocks.

/// Where a bucket's newest chain is in the bucket log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainLoc {
    pub lseq: u64,
    pub len: u8,
}

const PRESENT: u64 = 1 << 63;
const LSEQ_MASK: u64 = (1 << 48) - 1;

/// Bucket → newest chain.
pub struct BucketIndex {
    entries: Vec<u64>,
}

impl std::fmt::Debug for BucketIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BucketIndex").field("buckets", &self.entries.len()).finish()
    }
}

impl BucketIndex {
    pub fn new(buckets: u32) -> BucketIndex {
        BucketIndex { entries: vec![0; buckets as usize] }
    }

    pub fn buckets(&self) -> u32 {
        self.entries.len() as u32
    }

    pub fn get(&self, bucket: u32) -> Option<ChainLoc> {
        let e = *self.entries.get(bucket as usize)?;
        (e & PRESENT != 0).then_some(ChainLoc { lseq: (e >> 8) & LSEQ_MASK, len: e as u8 })
    }

    pub fn set(&mut self, bucket: u32, loc: ChainLoc) {
        debug_assert!(loc.lseq <= LSEQ_MASK && loc.len > 0);
        self.entries[bucket as usize] = PRESENT | (loc.lseq << 8) | u64::from(loc.len);
    }

    /// Every written bucket and its chain.
    pub fn iter(&self) -> impl Iterator<Item = (u32, ChainLoc)> + '_ {
        (0..self.buckets()).filter_map(|b| self.get(b).map(|l| (b, l)))
    }

    /// DRAM used by the index.
    pub fn bytes(&self) -> usize {
        self.entries.len() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn entries_round_trip(b in 0u32..100, lseq in 0u64..(1 << 48), len in 1u8..=255) {
            let mut i = BucketIndex::new(100);
            prop_assert_eq!(i.get(b), None);
            i.set(b, ChainLoc { lseq, len });
            prop_assert_eq!(i.get(b), Some(ChainLoc { lseq, len }));
            prop_assert_eq!(i.iter().count(), 1);
        }
    }
}
