//! The LEED+Ditto cache region: layout, encoding and slot choice (pure functions, no I/O).
//!
//! The server registers one zeroed region of `buckets × assoc ×`
//! [`DITTO_BYTES_PER_SLOT`] bytes and never touches it again; clients alone fill, read and evict
//! it. As in Ditto, objects are stored out of line: an index of small slots that one READ of a
//! bucket covers, and an object area with one fixed-size object per index slot.
//!
//! ```text
//! region = [ index: buckets × assoc × 16 B ][ objects: buckets × assoc × 104 B ]
//! slot i = bucket × assoc + s: index at 16·i, object at index_bytes + 104·i
//! ```
//!
//! Index slot (16 bytes, two aligned words, little-endian):
//!
//! | word | bits   | field        | meaning |
//! |------|--------|--------------|---------|
//! | 0    | 63     | `valid`      | the slot holds an object |
//! | 0    | 40..48 | `key_len`    | length of the object's key |
//! | 0    | 32..40 | `value_len`  | length of the object's value (0..=64) |
//! | 0    | 0..32  | `fingerprint`| 32 bits of a hash of the key |
//! | 1    | all    | `access_ts`  | last access, microseconds (LRU eviction) |
//!
//! Word 0 is Ditto's 8-byte atomic slot word (`{fp, kv_len, pointer}`); the pointer is implicit
//! here (slot `i` owns object `i`). A region stores each aligned word atomically, so a reader
//! sees an entry either whole or not at all.
//!
//! Object (104 bytes): `key_len u8, value_len u8, 6 zero bytes, key (20 B, zero padded), 4 zero
//! bytes, value (64 B, zero padded), checksum u64` where the checksum is `xxh64` of the first 96
//! bytes. A reader accepts an object only if its checksum holds, its key is the key asked for and
//! its value length is the one the entry announced: a torn READ, an object being overwritten, or
//! an object that now belongs to another key is a miss, never a wrong value.
//!
//! Placement: `bucket = xxh64(key, BUCKET_SEED) mod buckets`, `fingerprint = xxh64(key,
//! FINGERPRINT_SEED)` (low 32 bits). The seeds differ from the Scalio table's (seed 0 over the
//! table key), so the two caches place keys independently.

use scalio_common::key::MAX_KEY_LEN;
use scalio_common::rpc::DITTO_BYTES_PER_SLOT;
use scalio_common::table::TableGeometry;
use xxhash_rust::xxh64::xxh64;

/// Bytes of one index slot.
pub const INDEX_SLOT_SIZE: usize = 16;
/// Bytes of one object.
pub const OBJECT_SIZE: usize = 104;
/// Largest value kept in the cache; larger values are served by LEED and not cached.
pub const INLINE_VALUE_MAX: usize = 64;
/// Offset of the access timestamp in an index slot.
pub const ACCESS_TS_OFFSET: usize = 8;

const BUCKET_SEED: u64 = 0x0d17_70b0_c4e7;
const FINGERPRINT_SEED: u64 = 0x0d17_70f1_9e70;
const CHECKSUM_SEED: u64 = 0x0d17_70c4_ec50;
const VALID: u64 = 1 << 63;

/// Object field offsets.
mod obj {
    pub const KEY_LEN: usize = 0;
    pub const VALUE_LEN: usize = 1;
    pub const KEY: usize = 8;
    pub const VALUE: usize = 32;
    pub const CHECKSUM: usize = 96;
}

const _: () = assert!(INDEX_SLOT_SIZE + OBJECT_SIZE == DITTO_BYTES_PER_SLOT);
const _: () = assert!(obj::KEY + MAX_KEY_LEN <= obj::VALUE);
const _: () = assert!(obj::VALUE + INLINE_VALUE_MAX == obj::CHECKSUM);
const _: () = assert!(obj::CHECKSUM + 8 == OBJECT_SIZE);

/// Where a key goes in the region, and the fingerprint its entry carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub bucket: u32,
    pub fingerprint: u32,
    pub key_len: u8,
}

/// Byte offsets into a region of a given geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DittoLayout {
    pub geometry: TableGeometry,
}

impl DittoLayout {
    pub fn new(geometry: TableGeometry) -> DittoLayout {
        DittoLayout { geometry }
    }

    fn slot_number(&self, bucket: u32, slot: u8) -> usize {
        bucket as usize * usize::from(self.geometry.assoc) + usize::from(slot)
    }

    /// Offset of `bucket`'s index slots.
    pub fn index_offset(&self, bucket: u32) -> usize {
        self.slot_number(bucket, 0) * INDEX_SLOT_SIZE
    }

    /// Bytes of one bucket's index slots: what a probe READs.
    pub fn index_bucket_bytes(&self) -> usize {
        usize::from(self.geometry.assoc) * INDEX_SLOT_SIZE
    }

    /// Offset of the index slot `slot` of `bucket`.
    pub fn index_slot_offset(&self, bucket: u32, slot: u8) -> usize {
        self.slot_number(bucket, slot) * INDEX_SLOT_SIZE
    }

    /// Offset of the object of slot `slot` of `bucket`.
    pub fn object_offset(&self, bucket: u32, slot: u8) -> usize {
        self.geometry.slots() as usize * INDEX_SLOT_SIZE + self.slot_number(bucket, slot) * OBJECT_SIZE
    }

    /// Size of the whole region.
    pub fn region_bytes(&self) -> usize {
        self.geometry.slots() as usize * DITTO_BYTES_PER_SLOT
    }

    /// Where `key` goes. `key` must be a valid store key (1..=20 bytes).
    pub fn place(&self, key: &[u8]) -> Placement {
        debug_assert!(!key.is_empty() && key.len() <= MAX_KEY_LEN);
        Placement {
            bucket: (xxh64(key, BUCKET_SEED) % u64::from(self.geometry.buckets.max(1))) as u32,
            fingerprint: xxh64(key, FINGERPRINT_SEED) as u32,
            key_len: key.len() as u8,
        }
    }
}

/// The content of index word 0 of a valid slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub fingerprint: u32,
    pub key_len: u8,
    pub value_len: u8,
}

impl Entry {
    pub fn for_value(p: &Placement, value_len: usize) -> Entry {
        debug_assert!(value_len <= INLINE_VALUE_MAX);
        Entry { fingerprint: p.fingerprint, key_len: p.key_len, value_len: value_len as u8 }
    }

    pub fn encode(&self) -> u64 {
        VALID | u64::from(self.key_len) << 40 | u64::from(self.value_len) << 32 | u64::from(self.fingerprint)
    }

    /// `None` for an empty (invalid) slot.
    pub fn decode(word: u64) -> Option<Entry> {
        (word & VALID != 0).then_some(Entry {
            fingerprint: word as u32,
            value_len: (word >> 32) as u8,
            key_len: (word >> 40) as u8,
        })
    }

    /// Whether this entry may be `p`'s key (the object decides).
    pub fn matches(&self, p: &Placement) -> bool {
        self.fingerprint == p.fingerprint && self.key_len == p.key_len
    }
}

/// One index slot as read by a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexSlot {
    pub entry: Option<Entry>,
    pub access_ts: u64,
}

/// The 16 bytes of an index slot.
pub fn encode_index_slot(entry: Entry, access_ts: u64) -> [u8; INDEX_SLOT_SIZE] {
    let mut b = [0u8; INDEX_SLOT_SIZE];
    b[..8].copy_from_slice(&entry.encode().to_le_bytes());
    b[8..].copy_from_slice(&access_ts.to_le_bytes());
    b
}

/// Decodes the index slots of a bucket READ (any bytes: a trailing partial slot is ignored).
pub fn parse_index_bucket(bytes: &[u8]) -> Vec<IndexSlot> {
    bytes
        .chunks_exact(INDEX_SLOT_SIZE)
        .map(|s| IndexSlot {
            entry: Entry::decode(u64::from_le_bytes(s[..8].try_into().unwrap())),
            access_ts: u64::from_le_bytes(s[8..].try_into().unwrap()),
        })
        .collect()
}

/// Slots whose entry may hold `p`'s key, in slot order.
pub fn candidates<'a>(slots: &'a [IndexSlot], p: &'a Placement) -> impl Iterator<Item = (u8, Entry)> + 'a {
    slots.iter().enumerate().filter_map(|(i, s)| s.entry.filter(|e| e.matches(p)).map(|e| (i as u8, e)))
}

/// Where a client writes a key's object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotChoice {
    /// A slot that already holds (or may hold) the key: overwrite in place.
    Reuse(u8),
    /// An empty slot.
    Free(u8),
    /// No empty slot: the valid slot with the oldest access timestamp, evicting its object.
    Evict(u8),
}

impl SlotChoice {
    pub fn slot(self) -> u8 {
        match self {
            SlotChoice::Reuse(s) | SlotChoice::Free(s) | SlotChoice::Evict(s) => s,
        }
    }
}

/// Picks the slot for `p`'s object in a bucket: the key's own slot, else the first empty one,
/// else the least recently accessed. Ditto evicts the LRU of 5 sampled slots; a bucket read with
/// one READ is this design's sample, so the LRU of the bucket is the nearest equivalent. `None`
/// only for a bucket of no slots.
pub fn choose_slot(slots: &[IndexSlot], p: &Placement) -> Option<SlotChoice> {
    if let Some((s, _)) = candidates(slots, p).next() {
        return Some(SlotChoice::Reuse(s));
    }
    if let Some(s) = slots.iter().position(|s| s.entry.is_none()) {
        return Some(SlotChoice::Free(s as u8));
    }
    let oldest = slots.iter().enumerate().min_by_key(|(_, s)| s.access_ts)?;
    Some(SlotChoice::Evict(oldest.0 as u8))
}

/// The object for `key` and `value` (at most [`INLINE_VALUE_MAX`] bytes; the key at most 20).
pub fn encode_object(key: &[u8], value: &[u8]) -> [u8; OBJECT_SIZE] {
    assert!(key.len() <= MAX_KEY_LEN && value.len() <= INLINE_VALUE_MAX, "object fields too large");
    let mut o = [0u8; OBJECT_SIZE];
    o[obj::KEY_LEN] = key.len() as u8;
    o[obj::VALUE_LEN] = value.len() as u8;
    o[obj::KEY..obj::KEY + key.len()].copy_from_slice(key);
    o[obj::VALUE..obj::VALUE + value.len()].copy_from_slice(value);
    let sum = xxh64(&o[..obj::CHECKSUM], CHECKSUM_SEED);
    o[obj::CHECKSUM..].copy_from_slice(&sum.to_le_bytes());
    o
}

/// Why an object READ is not a hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectReject {
    /// Not [`OBJECT_SIZE`] bytes.
    Size,
    /// Torn, being overwritten, or garbage.
    Checksum,
    /// A consistent object of another key (the slot was reused).
    OtherKey,
    /// The key's object, but not the value length the entry announced (overwritten meanwhile).
    LengthMismatch,
}

/// The value in `bytes` if it is a consistent object of `key` with the entry's value length.
pub fn verify_object<'a>(bytes: &'a [u8], key: &[u8], entry: &Entry) -> Result<&'a [u8], ObjectReject> {
    if bytes.len() != OBJECT_SIZE {
        return Err(ObjectReject::Size);
    }
    let sum = u64::from_le_bytes(bytes[obj::CHECKSUM..].try_into().unwrap());
    if xxh64(&bytes[..obj::CHECKSUM], CHECKSUM_SEED) != sum {
        return Err(ObjectReject::Checksum);
    }
    let key_len = usize::from(bytes[obj::KEY_LEN]);
    let value_len = usize::from(bytes[obj::VALUE_LEN]);
    if key_len > MAX_KEY_LEN || value_len > INLINE_VALUE_MAX {
        // Only a forged object with a matching checksum gets here.
        return Err(ObjectReject::Checksum);
    }
    if &bytes[obj::KEY..obj::KEY + key_len] != key {
        return Err(ObjectReject::OtherKey);
    }
    if value_len != usize::from(entry.value_len) {
        return Err(ObjectReject::LengthMismatch);
    }
    Ok(&bytes[obj::VALUE..obj::VALUE + value_len])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn layout() -> DittoLayout {
        DittoLayout::new(TableGeometry { buckets: 10, assoc: 4 })
    }

    fn slot(entry: Option<Entry>, access_ts: u64) -> IndexSlot {
        IndexSlot { entry, access_ts }
    }

    #[test]
    fn offsets_do_not_overlap() {
        let l = layout();
        assert_eq!(l.index_bucket_bytes(), 64);
        assert_eq!(l.index_offset(9) + l.index_bucket_bytes(), 40 * INDEX_SLOT_SIZE, "index ends where objects begin");
        assert_eq!(l.object_offset(0, 0), 40 * INDEX_SLOT_SIZE);
        assert_eq!(l.object_offset(9, 3) + OBJECT_SIZE, l.region_bytes());
        assert_eq!(l.index_slot_offset(2, 1), (2 * 4 + 1) * 16);
        assert_eq!(l.region_bytes(), 40 * DITTO_BYTES_PER_SLOT);
    }

    #[test]
    fn placement_is_independent_of_the_scalio_table() {
        // Keys in one Scalio bucket spread over the Ditto buckets (and vice versa).
        let l = DittoLayout::new(TableGeometry { buckets: 64, assoc: 8 });
        let keys: Vec<Vec<u8>> = (0..10_000).map(|i| format!("user{i:012}").into_bytes()).collect();
        let scalio_bucket = |k: &[u8]| scalio_common::key::TableKey::new(k).bucket(64);
        let same: Vec<&Vec<u8>> = keys.iter().filter(|k| scalio_bucket(k) == 0).collect();
        let mut ditto_buckets: Vec<u32> = same.iter().map(|k| l.place(k).bucket).collect();
        ditto_buckets.sort_unstable();
        ditto_buckets.dedup();
        assert!(ditto_buckets.len() > 32, "{} distinct Ditto buckets", ditto_buckets.len());
    }

    #[test]
    fn entry_round_trip_and_empty_slot() {
        let e = Entry { fingerprint: 0xdead_beef, key_len: 16, value_len: 64 };
        assert_eq!(Entry::decode(e.encode()), Some(e));
        assert_eq!(Entry::decode(0), None);
        assert_eq!(Entry::decode(e.encode() & !VALID), None);
        let bytes = encode_index_slot(e, 12345);
        assert_eq!(parse_index_bucket(&bytes), vec![slot(Some(e), 12345)]);
    }

    #[test]
    fn object_round_trip_and_rejections() {
        let key = b"0123456789abcdef";
        let p = layout().place(key);
        let o = encode_object(key, b"hello");
        let e = Entry::for_value(&p, 5);
        assert_eq!(verify_object(&o, key, &e), Ok(&b"hello"[..]));
        assert_eq!(verify_object(&o, b"0123456789abcdeX", &e), Err(ObjectReject::OtherKey));
        assert_eq!(verify_object(&o, key, &Entry::for_value(&p, 6)), Err(ObjectReject::LengthMismatch));
        assert_eq!(verify_object(&o[..50], key, &e), Err(ObjectReject::Size));
        assert_eq!(verify_object(&[0; OBJECT_SIZE], key, &e), Err(ObjectReject::Checksum));
        let mut torn = o;
        torn[40] ^= 1;
        assert_eq!(verify_object(&torn, key, &e), Err(ObjectReject::Checksum));
        // A 20-byte key and a 64-byte value fit.
        let long = [7u8; 20];
        let v = [9u8; 64];
        let e = Entry::for_value(&layout().place(&long), 64);
        assert_eq!(verify_object(&encode_object(&long, &v), &long, &e), Ok(&v[..]));
    }

    #[test]
    fn slot_choice_reuses_then_takes_free_then_evicts_lru() {
        let p = layout().place(b"key");
        let mine = Entry::for_value(&p, 3);
        let other = Entry { fingerprint: p.fingerprint ^ 1, key_len: 3, value_len: 3 };
        let full = [slot(Some(other), 50), slot(Some(other), 20), slot(Some(other), 30)];
        assert_eq!(choose_slot(&full, &p), Some(SlotChoice::Evict(1)));
        let with_free = [slot(Some(other), 50), slot(None, 0), slot(Some(other), 1)];
        assert_eq!(choose_slot(&with_free, &p), Some(SlotChoice::Free(1)));
        let with_mine = [slot(None, 0), slot(Some(other), 1), slot(Some(mine), 99)];
        assert_eq!(choose_slot(&with_mine, &p), Some(SlotChoice::Reuse(2)));
        assert_eq!(candidates(&with_mine, &p).collect::<Vec<_>>(), vec![(2, mine)]);
        assert_eq!(choose_slot(&[], &p), None);
    }

    proptest! {
        /// Any corruption of an object (bytes flipped anywhere) gives the right value or a
        /// rejection, never another value.
        #[test]
        fn corrupted_object_never_yields_a_wrong_value(value in proptest::collection::vec(any::<u8>(), 0..=64),
                                                       flips in proptest::collection::vec((0usize..OBJECT_SIZE, 1u8..=255), 1..4)) {
            let key = b"some-16-byte-key";
            let e = Entry::for_value(&layout().place(key), value.len());
            let mut o = encode_object(key, &value);
            for (at, x) in flips {
                o[at] ^= x;
            }
            if let Ok(v) = verify_object(&o, key, &e) {
                prop_assert_eq!(v, &value[..]);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300), key in proptest::collection::vec(any::<u8>(), 1..=20)) {
            let l = layout();
            let p = l.place(&key);
            let slots = parse_index_bucket(&bytes);
            prop_assert_eq!(slots.len(), bytes.len() / INDEX_SLOT_SIZE);
            if let Some(c) = choose_slot(&slots, &p) {
                prop_assert!(usize::from(c.slot()) < slots.len());
            }
            for (_, e) in candidates(&slots, &p) {
                let _ = verify_object(&bytes[..bytes.len().min(OBJECT_SIZE)], &key, &e);
            }
            let _ = verify_object(&bytes, &key, &Entry::for_value(&p, 0));
        }
    }
}
