//! Cache-table layout: what a client reads with one READ of a bucket, and what it writes to fill.
//!
//! The table is an array of `buckets` buckets of `assoc` slots. A slot is 112 bytes, all
//! integers little-endian. It has two parts: a **server header** (bytes 0..24) that only the
//! server writes, and a **client range** (bytes 24..112) holding everything a client writes,
//! for a fill or on a hit:
//!
//! | off | size | field        | written by | meaning |
//! |-----|------|--------------|------------|---------|
//! | 0   | 1    | `visibility` | server     | 1: the slot is bound to `key` and may be served |
//! | 1   | 1    | `key_len`    | server     | real length of the key (1..=20) |
//! | 2   | 2    | reserved     | server     | 0 |
//! | 4   | 4    | `generation` | server     | bumped at every reservation of this slot |
//! | 8   | 16   | `key`        | server     | the [`TableKey`] bytes |
//! | 24  | 8    | `access_ts`  | clients    | last access, microseconds (LRU eviction) |
//! | 32  | 1    | `integrity`  | server: 0 at reservation; filler: 1, last | the fill completed |
//! | 33  | 1    | `value_len`  | filler     | 0..=64 |
//! | 34  | 6    | zero         | filler     | |
//! | 40  | 64   | `value`      | filler     | the value, zero padded |
//! | 104 | 8    | `checksum`   | filler     | [`fill_checksum`] |
//!
//! Bytes 33..112 are the *fill region*, written by the filling client in one WRITE, followed by
//! a WRITE of `access_ts` and a WRITE of `integrity = 1` on the same queue pair.
//!
//! **Who may write what.** The server registers the table for clients READ-only, and the client
//! ranges of all slots (`CLIENT_RANGE_LEN` bytes at `off::CLIENT_RANGE`, every `SLOT_SIZE`
//! bytes; [`TableGeometry::client_ranges`]) as a separate WRITE-only strided registration, so
//! the fabric refuses any client WRITE that touches a server header (README, "Threat model").
//! With `cache.client_fills = false` there is no WRITE registration at all and the server fills.
//! With `cache.fill_windows` there is no table-wide WRITE key either: each reservation comes with
//! a window over just its slot's client range, for just the connection that reserved it
//! ([`MetaGetReply::window`](crate::rpc::MetaGetReply)).
//!
//! A slot is a **hit** for key K only if `visibility == 1`, `integrity == 1`, the key and length
//! match K, and the checksum matches. The checksum covers the generation, the key and the value,
//! so a reader rejects:
//! * a torn read (the READ of a bucket is not atomic beyond 8 bytes),
//! * a slot the server is re-binding to another key while the READ is in flight,
//! * a late fill by a client whose reservation has since expired or been invalidated: its
//!   checksum was computed with an older generation, so it never becomes visible.

use crate::fabric::Strided;
use crate::key::{TableKey, TABLE_KEY_LEN};
use xxhash_rust::xxh64::xxh64;

/// Size of one slot.
pub const SLOT_SIZE: usize = 112;
/// Largest value kept inline in a slot; larger values are served from SSD only.
pub const INLINE_VALUE_MAX: usize = 64;
/// Default slots per bucket.
pub const DEFAULT_ASSOC: u8 = 8;

/// Field offsets within a slot.
pub mod off {
    pub const VISIBILITY: usize = 0;
    pub const KEY_LEN: usize = 1;
    pub const GENERATION: usize = 4;
    pub const KEY: usize = 8;
    /// Start of the client range: every byte a client writes lies in `CLIENT_RANGE..SLOT_SIZE`.
    pub const CLIENT_RANGE: usize = 24;
    pub const ACCESS_TS: usize = 24;
    pub const INTEGRITY: usize = 32;
    pub const FILL: usize = 33;
    pub const VALUE_LEN: usize = 33;
    pub const VALUE: usize = 40;
    pub const CHECKSUM: usize = 104;
}

/// Length of the fill region (value length, value, checksum).
pub const FILL_LEN: usize = SLOT_SIZE - off::FILL;
/// Length of a slot's client range (access timestamp, integrity, fill region).
pub const CLIENT_RANGE_LEN: usize = SLOT_SIZE - off::CLIENT_RANGE;

// The layout facts the consistency protocol depends on (README, "The fabric: its contracts, and
// what the protocol assumes of hardware"). A READ is not assumed atomic at any width, so what
// matters is what the checksum covers and where things sit.
const _: () = {
    // Buckets and slots stay 8-byte aligned in the registered table (which is itself word
    // aligned), so the server's own word stores never straddle two slots.
    assert!(SLOT_SIZE.is_multiple_of(8));
    // The one-byte flags and the key length are single bytes: they cannot tear.
    assert!(off::VISIBILITY < off::KEY_LEN && off::KEY_LEN < off::GENERATION);
    // The server header: visibility, key length, generation and key, all before the client
    // range, so a WRITE registration of the client ranges never reaches them. The generation
    // and key are what the checksum binds the value to.
    assert!(off::GENERATION + 4 <= off::KEY && off::KEY + TABLE_KEY_LEN == off::CLIENT_RANGE);
    // The client range is one contiguous range at the slot's end, 8-byte aligned, holding
    // everything a client writes: the access timestamp, `integrity`, and the fill region.
    assert!(off::CLIENT_RANGE.is_multiple_of(8) && off::CLIENT_RANGE + CLIENT_RANGE_LEN == SLOT_SIZE);
    assert!(off::CLIENT_RANGE <= off::ACCESS_TS && off::CLIENT_RANGE <= off::INTEGRITY);
    // The access timestamp is one aligned word outside the fill region (clients write it on hits).
    assert!(off::ACCESS_TS.is_multiple_of(8) && off::ACCESS_TS + 8 <= off::INTEGRITY);
    // `integrity` is written after the fill region, in its own WRITE, so it is outside it.
    assert!(off::INTEGRITY < off::FILL);
    // The fill region is one contiguous range at the slot's end: value length, value, checksum.
    assert!(off::FILL == off::VALUE_LEN && off::VALUE_LEN < off::VALUE);
    assert!(off::VALUE + INLINE_VALUE_MAX <= off::CHECKSUM);
    assert!(off::CHECKSUM + 8 == SLOT_SIZE && off::FILL + FILL_LEN == SLOT_SIZE);
    assert!(off::CHECKSUM.is_multiple_of(8));
};

const CHECKSUM_SEED: u64 = 0x0007_ab1e_5107;

/// Shape of a cache table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableGeometry {
    pub buckets: u32,
    pub assoc: u8,
}

impl TableGeometry {
    pub fn bucket_bytes(&self) -> usize {
        usize::from(self.assoc) * SLOT_SIZE
    }

    pub fn total_bytes(&self) -> usize {
        self.buckets as usize * self.bucket_bytes()
    }

    /// Byte offset of `bucket` from the start of the table.
    pub fn bucket_offset(&self, bucket: u32) -> usize {
        bucket as usize * self.bucket_bytes()
    }

    /// Byte offset of slot `slot` of `bucket`.
    pub fn slot_offset(&self, bucket: u32, slot: u8) -> usize {
        self.bucket_offset(bucket) + usize::from(slot) * SLOT_SIZE
    }

    pub fn slots(&self) -> u64 {
        u64::from(self.buckets) * u64::from(self.assoc)
    }

    /// The bytes clients may write: the client range of every slot, as a strided pattern over
    /// the table (slots are contiguous across buckets, so one stride covers them all).
    pub fn client_ranges(&self) -> Strided {
        Strided::new(off::CLIENT_RANGE as u64, CLIENT_RANGE_LEN as u64, SLOT_SIZE as u64)
            .expect("the client range fits in a slot")
    }
}

/// The checksum a filler stores and a reader verifies.
pub fn fill_checksum(generation: u32, key: &TableKey, value: &[u8]) -> u64 {
    let mut buf = [0u8; 4 + 1 + TABLE_KEY_LEN + 1 + INLINE_VALUE_MAX];
    buf[..4].copy_from_slice(&generation.to_le_bytes());
    buf[4] = key.len;
    buf[5..5 + TABLE_KEY_LEN].copy_from_slice(&key.bytes);
    buf[21] = value.len() as u8;
    buf[22..22 + value.len()].copy_from_slice(value);
    xxh64(&buf[..22 + value.len()], CHECKSUM_SEED)
}

/// The fill region for `value` under reservation `generation`. `value` must be at most
/// [`INLINE_VALUE_MAX`] bytes.
pub fn encode_fill(generation: u32, key: &TableKey, value: &[u8]) -> [u8; FILL_LEN] {
    assert!(value.len() <= INLINE_VALUE_MAX, "value too large to inline");
    let mut fill = [0u8; FILL_LEN];
    fill[0] = value.len() as u8;
    let v = off::VALUE - off::FILL;
    fill[v..v + value.len()].copy_from_slice(value);
    let c = off::CHECKSUM - off::FILL;
    fill[c..c + 8].copy_from_slice(&fill_checksum(generation, key, value).to_le_bytes());
    fill
}

/// A read-only view of one slot's bytes.
#[derive(Clone, Copy)]
pub struct SlotView<'a>(&'a [u8]);

impl<'a> SlotView<'a> {
    /// `bytes` must be at least [`SLOT_SIZE`] long.
    pub fn new(bytes: &'a [u8]) -> SlotView<'a> {
        SlotView(&bytes[..SLOT_SIZE])
    }
    pub fn visible(&self) -> bool {
        self.0[off::VISIBILITY] == 1
    }
    pub fn integrity(&self) -> bool {
        self.0[off::INTEGRITY] == 1
    }
    pub fn key_len(&self) -> u8 {
        self.0[off::KEY_LEN]
    }
    pub fn generation(&self) -> u32 {
        u32::from_le_bytes(self.0[off::GENERATION..off::GENERATION + 4].try_into().unwrap())
    }
    pub fn key_bytes(&self) -> &'a [u8] {
        &self.0[off::KEY..off::KEY + TABLE_KEY_LEN]
    }
    pub fn access_ts(&self) -> u64 {
        u64::from_le_bytes(self.0[off::ACCESS_TS..off::ACCESS_TS + 8].try_into().unwrap())
    }
    pub fn holds(&self, key: &TableKey) -> bool {
        self.key_len() == key.len && self.key_bytes() == key.bytes
    }
    /// The value if the fill region is complete and matches this slot's generation and key.
    pub fn verified_value(&self) -> Option<&'a [u8]> {
        let len = usize::from(self.0[off::VALUE_LEN]);
        if len > INLINE_VALUE_MAX {
            return None;
        }
        let value = &self.0[off::VALUE..off::VALUE + len];
        let stored = u64::from_le_bytes(self.0[off::CHECKSUM..off::CHECKSUM + 8].try_into().unwrap());
        let key = TableKey { len: self.key_len(), bytes: self.key_bytes().try_into().unwrap() };
        (fill_checksum(self.generation(), &key, value) == stored).then_some(value)
    }
    /// Filled: integrity set and the checksum holds.
    pub fn filled(&self) -> bool {
        self.integrity() && self.verified_value().is_some()
    }
}

/// What a client concludes from one READ of a bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe<'a> {
    /// A verified copy of the value.
    Hit { slot: u8, value: &'a [u8] },
    /// The key is bound to a slot but its value is not (or not consistently) there: a fill in
    /// progress, a torn read, or a stale fill. Re-probing may help; otherwise it is a miss.
    Pending { slot: u8 },
    /// The key is not in this bucket.
    Miss,
}

/// Scans the bytes of one bucket (as read by a client) for `key`.
pub fn probe_bucket<'a>(bucket: &'a [u8], key: &TableKey) -> Probe<'a> {
    let mut pending = None;
    for (i, chunk) in bucket.chunks_exact(SLOT_SIZE).enumerate() {
        let slot = SlotView::new(chunk);
        if !slot.visible() || !slot.holds(key) {
            continue;
        }
        if slot.integrity() {
            if let Some(value) = slot.verified_value() {
                return Probe::Hit { slot: i as u8, value };
            }
        }
        pending.get_or_insert(i as u8);
    }
    match pending {
        Some(slot) => Probe::Pending { slot },
        None => Probe::Miss,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Builds a slot as the server (reservation) and a filler would.
    fn slot(generation: u32, key: &TableKey, value: Option<&[u8]>) -> Vec<u8> {
        let mut s = vec![0u8; SLOT_SIZE];
        s[off::VISIBILITY] = 1;
        s[off::KEY_LEN] = key.len;
        s[off::GENERATION..off::GENERATION + 4].copy_from_slice(&generation.to_le_bytes());
        s[off::KEY..off::KEY + 16].copy_from_slice(&key.bytes);
        if let Some(v) = value {
            s[off::FILL..].copy_from_slice(&encode_fill(generation, key, v));
            s[off::INTEGRITY] = 1;
        }
        s
    }

    #[test]
    fn layout_is_consistent() {
        assert_eq!(FILL_LEN, 79);
        assert_eq!(CLIENT_RANGE_LEN, 88);
        assert_eq!(off::CHECKSUM + 8, SLOT_SIZE);
        assert_eq!(off::VALUE + INLINE_VALUE_MAX, off::CHECKSUM);
    }

    /// The client ranges are exactly the bytes clients write (timestamp, integrity, fill) in every
    /// slot, and never a byte of a server header.
    #[test]
    fn client_ranges_cover_what_clients_write_and_no_header() {
        let g = TableGeometry { buckets: 3, assoc: 5 };
        let w = g.client_ranges();
        for b in 0..g.buckets {
            for s in 0..g.assoc {
                let at = |o: usize| (g.slot_offset(b, s) + o) as u64;
                assert!(w.covers(at(off::FILL), FILL_LEN as u64));
                assert!(w.covers(at(off::ACCESS_TS), 8));
                assert!(w.covers(at(off::INTEGRITY), 1));
                assert!(w.covers(at(off::CLIENT_RANGE), CLIENT_RANGE_LEN as u64));
                for o in 0..off::CLIENT_RANGE {
                    assert!(!w.covers(at(o), 1), "server header byte {o} of slot {b}/{s}");
                }
            }
        }
    }

    #[test]
    fn hit_pending_miss() {
        let k = TableKey::new(b"key-1");
        let other = TableKey::new(b"key-2");
        let mut bucket = slot(3, &other, Some(b"x"));
        bucket.extend(slot(7, &k, Some(b"hello")));
        assert_eq!(probe_bucket(&bucket, &k), Probe::Hit { slot: 1, value: b"hello" });
        let pending = slot(8, &k, None);
        assert_eq!(probe_bucket(&pending, &k), Probe::Pending { slot: 0 });
        assert_eq!(probe_bucket(&pending, &TableKey::new(b"nope")), Probe::Miss);
    }

    #[test]
    fn fill_with_old_generation_is_rejected() {
        let k = TableKey::new(b"key-1");
        let mut s = slot(9, &k, None);
        s[off::FILL..].copy_from_slice(&encode_fill(8, &k, b"stale"));
        s[off::INTEGRITY] = 1;
        assert_eq!(probe_bucket(&s, &k), Probe::Pending { slot: 0 });
    }

    #[test]
    fn invisible_slot_is_never_served() {
        let k = TableKey::new(b"key-1");
        let mut s = slot(1, &k, Some(b"v"));
        s[off::VISIBILITY] = 0;
        assert_eq!(probe_bucket(&s, &k), Probe::Miss);
    }

    proptest! {
        #[test]
        fn fill_round_trip(generation: u32, key in proptest::collection::vec(any::<u8>(), 1..=20),
                           value in proptest::collection::vec(any::<u8>(), 0..=64)) {
            let k = TableKey::new(&key);
            let s = slot(generation, &k, Some(&value));
            prop_assert_eq!(probe_bucket(&s, &k), Probe::Hit { slot: 0, value: &value });
        }

        /// Any single corrupted byte of a filled slot turns a hit into pending or miss, never a
        /// wrong value.
        #[test]
        fn corruption_never_yields_a_wrong_value(value in proptest::collection::vec(any::<u8>(), 0..=64),
                                                 at in 0usize..SLOT_SIZE, flip in 1u8..=255) {
            let k = TableKey::new(b"some-key");
            let mut s = slot(42, &k, Some(&value));
            if at == off::ACCESS_TS || (off::ACCESS_TS..off::ACCESS_TS + 8).contains(&at) {
                return Ok(()); // the timestamp is not part of the value
            }
            s[at] ^= flip;
            match probe_bucket(&s, &k) {
                Probe::Hit { value: v, .. } => prop_assert_eq!(v, &value[..]),
                Probe::Pending { .. } | Probe::Miss => {}
            }
        }
    }
}
