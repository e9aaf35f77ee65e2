//! Record values that a reader can check.
//!
//! YCSB fills `fieldcount` fields of `fieldlength` bytes with random data (or, with
//! `dataintegrity`, a string derived from the key and field name). A hash store keeps the record
//! as one value of `fieldcount × fieldlength` bytes, which we make a deterministic function of the
//! store key and a version number chosen by the writer, so that a reader holding only the key can
//! tell a correct value from a torn or misplaced one:
//!
//! * bytes `0..8`: the version, little-endian (cut short if the value is shorter);
//! * bytes `8..`: a SplitMix64 stream, each 64-bit output little-endian, the last one cut short,
//!   seeded with `k0 ^ k1.rotate_left(32) ^ version.wrapping_mul(0x9E3779B97F4A7C15)`, where `k0`
//!   and `k1` are the two little-endian halves of the 16-byte store key.
//!
//! Writers pick versions (the load phase uses 0; a driver can number updates per thread).

use super::keys::StoreKey;
use super::rng::splitmix64;

const VERSION_LEN: usize = 8;

/// A value that does not match its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("value of {len} bytes is too short to hold a version (at least {VERSION_LEN} needed)")]
    TooShort { len: usize },
    #[error("value of version {version} does not match its key from byte {offset} on")]
    Mismatch { version: u64, offset: usize },
}

fn fill_seed(key: &StoreKey, version: u64) -> u64 {
    let k0 = u64::from_le_bytes(key[..8].try_into().unwrap_or_default());
    let k1 = u64::from_le_bytes(key[8..].try_into().unwrap_or_default());
    k0 ^ k1.rotate_left(32) ^ version.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Writes the value of `key` at `version` into all of `out`.
pub fn fill_value(key: &StoreKey, version: u64, out: &mut [u8]) {
    let head = out.len().min(VERSION_LEN);
    out[..head].copy_from_slice(&version.to_le_bytes()[..head]);
    let mut state = fill_seed(key, version);
    for chunk in out[head..].chunks_mut(8) {
        let word = splitmix64(&mut state).to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
}

/// Checks that `value` is a value of `key` as [`fill_value`] writes it, and returns its version.
/// Only the bytes present are checked: the caller compares the length with the workload's.
pub fn verify_value(key: &StoreKey, value: &[u8]) -> Result<u64, ValueError> {
    if value.len() < VERSION_LEN {
        return Err(ValueError::TooShort { len: value.len() });
    }
    let version = u64::from_le_bytes(value[..VERSION_LEN].try_into().unwrap_or_default());
    let mut state = fill_seed(key, version);
    for (i, chunk) in value[VERSION_LEN..].chunks(8).enumerate() {
        let word = splitmix64(&mut state).to_le_bytes();
        if chunk != &word[..chunk.len()] {
            let offset = VERSION_LEN + i * 8 + chunk.iter().zip(word).take_while(|(a, b)| *a == b).count();
            return Err(ValueError::Mismatch { version, offset });
        }
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ycsb::keys::build_key_name;

    #[test]
    fn values_round_trip_for_every_length() {
        let key = build_key_name(7, 1, false).store_key();
        for len in 8..80 {
            let mut v = vec![0u8; len];
            fill_value(&key, 12345, &mut v);
            assert_eq!(verify_value(&key, &v), Ok(12345), "len {len}");
        }
    }

    #[test]
    fn values_depend_on_key_and_version() {
        let key = build_key_name(7, 1, false).store_key();
        let other = build_key_name(8, 1, false).store_key();
        let mut a = [0u8; 64];
        let mut b = [0u8; 64];
        fill_value(&key, 1, &mut a);
        fill_value(&key, 2, &mut b);
        assert_ne!(a[8..], b[8..]);
        assert!(matches!(verify_value(&other, &a), Err(ValueError::Mismatch { version: 1, offset: 8.. })));
    }

    #[test]
    fn corruption_is_located() {
        let key = build_key_name(1, 1, true).store_key();
        let mut v = [0u8; 64];
        fill_value(&key, 3, &mut v);
        v[40] ^= 1;
        assert_eq!(verify_value(&key, &v), Err(ValueError::Mismatch { version: 3, offset: 40 }));
        assert_eq!(verify_value(&key, &v[..5]), Err(ValueError::TooShort { len: 5 }));
    }

    #[test]
    fn short_values_hold_a_version_prefix() {
        let key = build_key_name(1, 1, true).store_key();
        let mut v = [0u8; 3];
        fill_value(&key, 0x0102_0304, &mut v);
        assert_eq!(v, [4, 3, 2]);
    }
}
