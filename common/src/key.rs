//! Keys and the hashes that place them: the cache-table key and bucket, and the SSD routing.
//!
//! A key is 1 to [`MAX_KEY_LEN`] bytes (the on-SSD item holds at most 20). Three things are
//! derived from it, each with its own hash so that they are independent:
//!
//! * the **table key** ([`TableKey`], 16 bytes) stored in a cache slot: the key itself, zero
//!   padded, when it is at most 16 bytes long; otherwise the 128-bit XXH3 hash of the key
//!   (little-endian). The slot also stores the real key length, so `"a"` and `"a\0"`, or a
//!   16-byte key and the hash of a longer one, never match each other.
//! * the **cache bucket**: `xxh64(table_key, seed 0) mod buckets`, as in Scalio.
//! * the **SSD route**: `h = xxh64(key, seed ROUTE_SEED)`; SSD `h mod ssds`, SSD bucket
//!   `(h / ssds) mod buckets_per_ssd`. Hashing the full key (not the table key) keeps SSD
//!   placement independent of the cache placement.

use xxhash_rust::xxh3::xxh3_128;
use xxhash_rust::xxh64::xxh64;

/// Longest key the store accepts (the on-SSD item has 20 key bytes).
pub const MAX_KEY_LEN: usize = 20;
/// Bytes of key kept in a cache slot.
pub const TABLE_KEY_LEN: usize = 16;
/// Seed of the SSD routing hash.
pub const ROUTE_SEED: u64 = 0x5ca1_105c_a110;

/// A key that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("empty key")]
    Empty,
    #[error("key of {0} bytes is longer than the maximum of {MAX_KEY_LEN}")]
    TooLong(usize),
}

/// Checks that `key` can be stored.
pub fn validate(key: &[u8]) -> Result<(), KeyError> {
    match key.len() {
        0 => Err(KeyError::Empty),
        n if n > MAX_KEY_LEN => Err(KeyError::TooLong(n)),
        _ => Ok(()),
    }
}

/// The 16 bytes of a key kept in a cache slot, with the key's real length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TableKey {
    pub len: u8,
    pub bytes: [u8; TABLE_KEY_LEN],
}

impl TableKey {
    /// Derives the table key. `key` must already be valid ([`validate`]).
    pub fn new(key: &[u8]) -> TableKey {
        debug_assert!(validate(key).is_ok());
        let mut bytes = [0u8; TABLE_KEY_LEN];
        if key.len() <= TABLE_KEY_LEN {
            bytes[..key.len()].copy_from_slice(key);
        } else {
            bytes = xxh3_128(key).to_le_bytes();
        }
        TableKey { len: key.len() as u8, bytes }
    }

    /// The cache bucket of this key in a table of `buckets` buckets.
    pub fn bucket(&self, buckets: u32) -> u32 {
        (xxh64(&self.bytes, 0) % u64::from(buckets.max(1))) as u32
    }
}

/// Where a key lives on flash: which SSD, and which bucket of that SSD's bucket index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Route {
    pub ssd: u16,
    pub bucket: u32,
}

/// Routes `key` to one of `ssds` SSDs, each with `buckets_per_ssd` buckets.
pub fn route(key: &[u8], ssds: u16, buckets_per_ssd: u32) -> Route {
    let h = xxh64(key, ROUTE_SEED);
    let ssds = u64::from(ssds.max(1));
    Route { ssd: (h % ssds) as u16, bucket: ((h / ssds) % u64::from(buckets_per_ssd.max(1))) as u32 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn short_keys_are_padded_and_keep_their_length() {
        let a = TableKey::new(b"a");
        let a0 = TableKey::new(b"a\0");
        assert_eq!(a.bytes, a0.bytes);
        assert_ne!(a, a0, "the length tells them apart");
    }

    #[test]
    fn long_keys_are_hashed() {
        let k = TableKey::new(b"0123456789abcdefXYZ");
        assert_eq!(k.len, 19);
        assert_eq!(k.bytes, xxh3_128(b"0123456789abcdefXYZ").to_le_bytes());
    }

    #[test]
    fn validation() {
        assert_eq!(validate(b""), Err(KeyError::Empty));
        assert_eq!(validate(&[1; 21]), Err(KeyError::TooLong(21)));
        assert!(validate(&[1; 20]).is_ok());
    }

    #[test]
    fn bucket_matches_scalio_definition() {
        let k = TableKey::new(b"0123456789abcdef");
        assert_eq!(k.bucket(280_576) as u64, xxh64(b"0123456789abcdef", 0) % 280_576);
    }

    proptest! {
        #[test]
        fn routes_are_in_range(key in proptest::collection::vec(any::<u8>(), 1..=20), ssds in 1u16..16, nb in 1u32..100_000) {
            let r = route(&key, ssds, nb);
            prop_assert!(r.ssd < ssds);
            prop_assert!(r.bucket < nb);
            prop_assert!(TableKey::new(&key).bucket(nb) < nb);
        }
    }
}
