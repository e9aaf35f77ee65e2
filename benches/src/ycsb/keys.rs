//! YCSB key names and the store keys derived from them.
//!
//! YCSB names record `keynum` `"user" + n`, where `n` is `fnvhash64(keynum)` for
//! `insertorder=hashed` (the default) or `keynum` itself for `insertorder=ordered`, left-padded with
//! zeros to `zeropadding` digits (`CoreWorkload.buildKeyName`). Such names are up to 24 bytes long,
//! and the store takes keys of at most 20, so the store key of a record is the 128-bit XXH3 hash of
//! its name, as 16 little-endian bytes ([`store_key`]). Scalio did the same with CityHash128; any
//! good 128-bit hash keeps the 20M-record key space collision-free in practice (a collision among
//! 2^25 random 128-bit values has probability about 2^-79).

use xxhash_rust::xxh3::xxh3_128;

/// FNV-1a 64-bit offset basis (`Utils.FNV_OFFSET_BASIS_64`).
pub const FNV_OFFSET_BASIS_64: u64 = 0xCBF2_9CE4_8422_2325;
/// FNV 64-bit prime (`Utils.FNV_PRIME_64`).
pub const FNV_PRIME_64: u64 = 1_099_511_628_211;

/// The largest `zeropadding` accepted, so that a key name fits a fixed buffer.
pub const MAX_ZERO_PADDING: usize = 64;
/// The fixed prefix of every YCSB key name.
pub const KEY_PREFIX: &str = "user";
/// Bytes of a store key.
pub const STORE_KEY_LEN: usize = 16;

/// The key the store sees for one record: see [`store_key`].
pub type StoreKey = [u8; STORE_KEY_LEN];

/// The longest decimal rendering of a Java `long` (`-9223372036854775808`) or of a `u64`.
const MAX_DIGITS: usize = 20;
const KEY_NAME_CAPACITY: usize =
    KEY_PREFIX.len() + if MAX_ZERO_PADDING > MAX_DIGITS { MAX_ZERO_PADDING } else { MAX_DIGITS };

/// FNV-1a 64 of a byte string.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET_BASIS_64, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(FNV_PRIME_64))
}

/// YCSB's `Utils.fnvhash64`: FNV-1a 64 over the eight bytes of `val`, least significant first, then
/// Java's `Math.abs`. Like Java, the absolute value of `i64::MIN` is `i64::MIN` (so the result is
/// negative for the one input hashing there).
pub fn fnvhash64(val: i64) -> i64 {
    (fnv1a64(&val.to_le_bytes()) as i64).wrapping_abs()
}

/// A YCSB key name, held inline so that building one does not allocate.
#[derive(Clone, Copy)]
pub struct KeyName {
    buf: [u8; KEY_NAME_CAPACITY],
    len: u8,
}

impl KeyName {
    /// The name's bytes (ASCII).
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits, '-' and the prefix are ever written.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }

    /// The store key of this name.
    pub fn store_key(&self) -> StoreKey {
        store_key(self.as_bytes())
    }
}

impl std::fmt::Display for KeyName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for KeyName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyName({:?})", self.as_str())
    }
}

impl PartialEq for KeyName {
    fn eq(&self, other: &KeyName) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for KeyName {}

/// YCSB's `CoreWorkload.buildKeyName(keynum, zeropadding, orderedinserts)`.
///
/// `zero_padding` larger than [`MAX_ZERO_PADDING`] is clamped to it (the workload rejects such
/// values when it parses them).
pub fn build_key_name(keynum: u64, zero_padding: usize, ordered: bool) -> KeyName {
    // Java works on a signed long: a keynum past i64::MAX would be negative there. Keynums come
    // from counters starting at small values, so this only fixes the meaning of the cast.
    let value = if ordered { keynum as i64 } else { fnvhash64(keynum as i64) };
    let mut digits = [0u8; MAX_DIGITS];
    let mut start = MAX_DIGITS;
    let mut magnitude = value.unsigned_abs();
    loop {
        start -= 1;
        digits[start] = b'0' + (magnitude % 10) as u8;
        magnitude /= 10;
        if magnitude == 0 {
            break;
        }
    }
    if value < 0 {
        start -= 1;
        digits[start] = b'-';
    }
    let rendered = &digits[start..];

    let mut name = KeyName { buf: [0; KEY_NAME_CAPACITY], len: 0 };
    let mut at = KEY_PREFIX.len();
    name.buf[..at].copy_from_slice(KEY_PREFIX.as_bytes());
    // Java pads with zeros before the whole rendering, the sign included.
    let fill = zero_padding.min(MAX_ZERO_PADDING).saturating_sub(rendered.len());
    name.buf[at..at + fill].fill(b'0');
    at += fill;
    name.buf[at..at + rendered.len()].copy_from_slice(rendered);
    at += rendered.len();
    name.len = at as u8;
    name
}

/// The 16-byte store key of a key name: `xxh3_128(name)` as little-endian bytes.
pub fn store_key(name: &[u8]) -> StoreKey {
    xxh3_128(name).to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordered_names_are_padded_like_java() {
        assert_eq!(build_key_name(42, 1, true).as_str(), "user42");
        assert_eq!(build_key_name(42, 5, true).as_str(), "user00042");
        assert_eq!(build_key_name(0, 0, true).as_str(), "user0");
        assert_eq!(build_key_name(12345, 3, true).as_str(), "user12345");
    }

    #[test]
    fn padding_is_clamped_to_the_buffer() {
        let name = build_key_name(7, 1000, true);
        assert_eq!(name.as_bytes().len(), KEY_PREFIX.len() + MAX_ZERO_PADDING);
        assert!(name.as_str().ends_with("07"));
    }

    #[test]
    fn store_key_is_xxh3_128_little_endian() {
        let name = build_key_name(1, 1, false);
        let expected = xxh3_128(name.as_bytes()).to_le_bytes();
        assert_eq!(name.store_key(), expected);
        assert_ne!(build_key_name(1, 1, false).store_key(), build_key_name(2, 1, false).store_key());
    }
}
