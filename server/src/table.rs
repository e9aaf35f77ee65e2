//! The owner of the cache table: the server-side half of the consistency protocol.
//!
//! Clients read buckets with one-sided READs and fill reserved slots with one-sided WRITEs
//! (`scalio_common::table` has the layout and the reader's rules). The server only ever:
//! * **reserves** a slot for a key on META_GET (integrity 0, new generation, key, visibility 1),
//!   evicting the filled slot with the oldest access timestamp when the bucket is full;
//! * **invalidates** a key (visibility 0) before any write to it is published and acknowledged.
//!
//! Fixes to the published artifact's hazards:
//! * every mutation of a bucket holds that bucket's lock (striped), so two keys never get one
//!   slot even when different workers touch the same bucket;
//! * a reservation carries a lease: once it expires, the slot can be reserved again (a client
//!   that crashed after reserving leaks nothing);
//! * each reservation bumps the slot's generation, and the filler's checksum covers it: a late
//!   fill under an expired or invalidated reservation never becomes visible, even if the slot has
//!   been rebound to another key since;
//! * stores are release-ordered (see `MemoryRegion`), and readers verify the checksum, so a READ
//!   racing a reservation or an eviction is detected instead of returning mixed bytes.
//!
//! Against clients that misbehave (README, "Threat model"):
//! * a client may hold at most `quota` reservations that are still unfilled under a live lease
//!   ([`reserve_for`](CacheTable::reserve_for)); beyond that its META_GETs get no reservation, so
//!   one client cannot keep the cache empty for everyone by reserving and never filling;
//! * with `cache.client_fills = false`, the server fills slots itself
//!   ([`fill`](CacheTable::fill)) and clients get no WRITE access to the table at all.

use parking_lot::Mutex;
use scalio_common::fabric::{MemoryRegion, PeerId};
use scalio_common::key::TableKey;
use scalio_common::rpc::Reservation;
use scalio_common::table::{encode_fill, off, SlotView, TableGeometry, INLINE_VALUE_MAX, SLOT_SIZE};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const LOCK_STRIPES: usize = 4096;
/// Stripes of the per-client reservation records (by peer id).
const HOLDER_STRIPES: usize = 64;
/// A stripe with more holders than this drops those whose every lease has run out.
const HOLDERS_BEFORE_SWEEP: usize = 16;

/// Counters of the table's server-side protocol.
#[derive(Debug, Default)]
pub struct TableCounters {
    pub reservations: AtomicU64,
    /// META_GETs that found the key already cached (filled), so nothing was reserved.
    pub already_cached: AtomicU64,
    /// META_GETs that found a fill of the key in progress (unexpired lease).
    pub fill_in_progress: AtomicU64,
    /// META_GETs that found every slot of the bucket reserved under a live lease.
    pub bucket_busy: AtomicU64,
    pub evictions: AtomicU64,
    /// Reservations reclaimed after their lease expired (or whose fill was stale).
    pub expired_reclaims: AtomicU64,
    pub invalidations: AtomicU64,
    /// META_GETs refused a reservation because their client held its quota of unfilled ones.
    pub quota_refusals: AtomicU64,
    /// Unfilled reservations ended early because their client's connection closed.
    pub released: AtomicU64,
    /// Slots the server filled itself (`cache.client_fills = false`).
    pub server_fills: AtomicU64,
    /// Server fills dropped: the reservation had been invalidated or taken over meanwhile.
    pub server_fills_stale: AtomicU64,
}

/// One stripe of the quota's records: each client's reservations that may still be unfilled.
type Holders = HashMap<PeerId, Vec<Held>>;

/// A reservation handed to a client, as the quota remembers it.
#[derive(Debug, Clone, Copy)]
struct Held {
    bucket: u32,
    slot: u8,
    generation: u32,
    deadline: u64,
}

/// The cache table in server memory.
pub struct CacheTable {
    region: Arc<MemoryRegion>,
    geometry: TableGeometry,
    locks: Box<[Mutex<()>]>,
    /// Lease deadline of each slot's current reservation, in ns since `epoch` (0: none).
    leases: Box<[AtomicU64]>,
    epoch: Instant,
    lease: Duration,
    counters: TableCounters,
    /// Unfilled reservations one client may hold.
    quota: usize,
    /// The reservations each client took and may not have filled yet, striped by peer.
    holders: Box<[Mutex<Holders>]>,
    /// Told of every slot about to be re-bound, under its bucket's lock (fill windows revoke
    /// the slot's window there).
    rebind_hook: std::sync::OnceLock<RebindHook>,
    /// An invalidated slot keeps its reservation's lease, and is not re-bound before it runs
    /// out: its holder may still have a fill on the way through a window, which the re-bind
    /// would revoke under it (ending its queue pair).
    hold_invalidated: std::sync::atomic::AtomicBool,
    /// Test-only seeded bug (see `SeededBug::FillWithoutGenerationCheck`).
    #[cfg(feature = "seeded-bugs")]
    keep_generation: bool,
}

/// See [`CacheTable::on_rebind`].
pub type RebindHook = Box<dyn Fn(u32, u8) + Send + Sync>;

/// What the server found for a key in its bucket.
enum Found {
    Filled,
    Pending { slot: u8, expired: bool },
    Absent,
}

impl CacheTable {
    /// A table of `geometry`, every slot free, with reservations leased for `lease`.
    pub fn new(geometry: TableGeometry, lease: Duration) -> CacheTable {
        Self::in_region(geometry, lease, MemoryRegion::new(geometry.total_bytes()))
    }

    /// The same, on 2 MiB hugepages (`cache.hugepages`): the pool must have the pages.
    pub fn on_hugepages(
        geometry: TableGeometry,
        lease: Duration,
    ) -> Result<CacheTable, scalio_common::fabric::HugePageError> {
        Ok(Self::in_region(geometry, lease, MemoryRegion::on_hugepages(geometry.total_bytes())?))
    }

    /// A table in `region` (zeroed, `geometry.total_bytes()` long).
    fn in_region(geometry: TableGeometry, lease: Duration, region: MemoryRegion) -> CacheTable {
        debug_assert_eq!(region.len(), geometry.total_bytes());
        let slots = geometry.slots() as usize;
        CacheTable {
            region: Arc::new(region),
            geometry,
            locks: (0..LOCK_STRIPES.min(geometry.buckets as usize).max(1)).map(|_| Mutex::new(())).collect(),
            leases: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            epoch: Instant::now(),
            lease,
            counters: TableCounters::default(),
            quota: usize::MAX,
            holders: (0..HOLDER_STRIPES).map(|_| Mutex::default()).collect(),
            rebind_hook: std::sync::OnceLock::new(),
            hold_invalidated: std::sync::atomic::AtomicBool::new(false),
            #[cfg(feature = "seeded-bugs")]
            keep_generation: false,
        }
    }

    /// Limits each client to `quota` unfilled reservations at a time ([`reserve_for`](Self::reserve_for)).
    pub fn with_reservation_quota(mut self, quota: u32) -> CacheTable {
        self.quota = quota as usize;
        self
    }

    /// Test-only seeded bug: reservations keep the slot's generation.
    #[cfg(feature = "seeded-bugs")]
    pub fn seed_bug_keep_generation(&mut self) {
        self.keep_generation = true;
    }

    /// The memory to register with the fabric.
    pub fn region(&self) -> &Arc<MemoryRegion> {
        &self.region
    }

    pub fn geometry(&self) -> TableGeometry {
        self.geometry
    }

    pub fn counters(&self) -> &TableCounters {
        &self.counters
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64 + 1
    }

    fn slot_bytes(&self, bucket: u32, slot: u8) -> [u8; SLOT_SIZE] {
        let mut b = [0u8; SLOT_SIZE];
        self.region.read(self.geometry.slot_offset(bucket, slot), &mut b).expect("slot in table");
        b
    }

    fn lease_index(&self, bucket: u32, slot: u8) -> usize {
        bucket as usize * usize::from(self.geometry.assoc) + usize::from(slot)
    }

    fn find(&self, bucket: u32, key: &TableKey, now: u64) -> Found {
        for s in 0..self.geometry.assoc {
            let bytes = self.slot_bytes(bucket, s);
            let v = SlotView::new(&bytes);
            if v.visible() && v.holds(key) {
                if v.filled() {
                    return Found::Filled;
                }
                let deadline = self.leases[self.lease_index(bucket, s)].load(Ordering::Relaxed);
                return Found::Pending { slot: s, expired: deadline <= now };
            }
        }
        Found::Absent
    }

    /// Picks a slot for a new reservation: a free slot, else a reservation whose lease expired,
    /// else the filled slot with the oldest access timestamp.
    fn victim(&self, bucket: u32, now: u64) -> Option<(u8, bool)> {
        let mut oldest: Option<(u64, u8)> = None;
        let mut expired = None;
        for s in 0..self.geometry.assoc {
            let bytes = self.slot_bytes(bucket, s);
            let v = SlotView::new(&bytes);
            if !v.visible() {
                let lease = self.leases[self.lease_index(bucket, s)].load(Ordering::Relaxed);
                if self.hold_invalidated.load(Ordering::Relaxed) && lease > now {
                    continue; // invalidated, its filler may still be writing: taken after the lease
                }
                return Some((s, false));
            }
            if v.filled() {
                if oldest.is_none_or(|(ts, _)| v.access_ts() < ts) {
                    oldest = Some((v.access_ts(), s));
                }
            } else if self.leases[self.lease_index(bucket, s)].load(Ordering::Relaxed) <= now {
                expired.get_or_insert(s);
            }
        }
        if let Some(s) = expired {
            self.counters.expired_reclaims.fetch_add(1, Ordering::Relaxed);
            return Some((s, false));
        }
        oldest.map(|(_, s)| (s, true))
    }

    /// Calls `hook(bucket, slot)` whenever a slot is about to be bound to a new reservation,
    /// under the bucket's lock, before its header changes. Set once (later calls are ignored).
    /// From then on an invalidated slot keeps its lease and is not re-bound before it runs out.
    pub fn on_rebind(&self, hook: RebindHook) {
        let _ = self.rebind_hook.set(hook);
        self.hold_invalidated.store(true, Ordering::Relaxed);
    }

    /// Whether the reservation of `slot` in `bucket` under `generation` is over for its filler:
    /// the slot was re-bound, the fill landed, or the lease ran out (an invalidated slot's
    /// reservation is not over before its lease: its filler may still be writing).
    pub fn reservation_ended(&self, bucket: u32, slot: u8, generation: u32) -> bool {
        let bytes = self.slot_bytes(bucket, slot);
        let v = SlotView::new(&bytes);
        if v.generation() != generation || (v.visible() && v.filled()) {
            return true;
        }
        self.leases[self.lease_index(bucket, slot)].load(Ordering::Relaxed) <= self.now_ns()
    }

    /// How long a reservation's lease runs.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Binds `slot` to `key` under a new generation and lease.
    fn bind(&self, bucket: u32, slot: u8, key: &TableKey, now: u64) -> Reservation {
        if let Some(hook) = self.rebind_hook.get() {
            hook(bucket, slot);
        }
        let base = self.geometry.slot_offset(bucket, slot);
        let bytes = self.slot_bytes(bucket, slot);
        let generation = SlotView::new(&bytes).generation().wrapping_add(1);
        #[cfg(feature = "seeded-bugs")]
        let generation = if self.keep_generation { generation.wrapping_sub(1) } else { generation };
        // Hide the slot first, then rewrite it, then show it: a reader that sees the old
        // visibility with the new key or generation fails the checksum.
        self.region.store_u8(base + off::VISIBILITY, 0);
        self.region.store_u8(base + off::INTEGRITY, 0);
        let mut header = [0u8; off::ACCESS_TS - off::KEY_LEN];
        header[0] = key.len;
        header[off::GENERATION - off::KEY_LEN..off::KEY - off::KEY_LEN].copy_from_slice(&generation.to_le_bytes());
        header[off::KEY - off::KEY_LEN..].copy_from_slice(&key.bytes);
        self.region.write(base + off::KEY_LEN, &header).expect("slot in table");
        self.region.store_u8(base + off::VISIBILITY, 1);
        self.leases[self.lease_index(bucket, slot)].store(now + self.lease.as_nanos() as u64, Ordering::Relaxed);
        self.counters.reservations.fetch_add(1, Ordering::Relaxed);
        Reservation { slot, generation }
    }

    /// META_GET's part for client `holder`: like [`reserve`](Self::reserve), but none if `holder`
    /// already holds its quota of reservations that are unfilled under a live lease.
    pub fn reserve_for(&self, holder: PeerId, key: &TableKey) -> Option<Reservation> {
        self.reserve_for_connected(holder, key, || false)
    }

    /// [`reserve_for`](Self::reserve_for) a client that may have left: none if `gone()` says it
    /// has. `gone` is asked under the lock [`release`](Self::release) takes, so if the client's
    /// connection is marked closed before `release` is called for it, no reservation escapes the
    /// release: either it is recorded before the release (which frees it) or `gone()` is true.
    pub fn reserve_for_connected(
        &self,
        holder: PeerId,
        key: &TableKey,
        gone: impl FnOnce() -> bool,
    ) -> Option<Reservation> {
        let mut holders = self.holders[holder.0 as usize % self.holders.len()].lock();
        if gone() {
            return None;
        }
        let now = self.now_ns();
        if holders.len() > HOLDERS_BEFORE_SWEEP {
            // Clients that went away: their reservations have all expired by now.
            holders.retain(|_, held| held.iter().any(|h| h.deadline > now));
        }
        let held = holders.entry(holder).or_default();
        held.retain(|h| self.outstanding(h, now));
        let reservation = if held.len() >= self.quota {
            self.counters.quota_refusals.fetch_add(1, Ordering::Relaxed);
            None
        } else {
            self.reserve(key).inspect(|r| {
                let bucket = key.bucket(self.geometry.buckets);
                let deadline = now + self.lease.as_nanos() as u64;
                held.push(Held { bucket, slot: r.slot, generation: r.generation, deadline });
            })
        };
        if held.is_empty() {
            holders.remove(&holder);
        }
        reservation
    }

    /// The client `holder` left: its reservations that are still unfilled end now, as if their
    /// leases had run out (the next META_GET of the key, or any other key of the bucket, may take
    /// the slot; a fill that still arrived would fail the generation check like any late fill),
    /// and its quota record is dropped. Returns how many reservations it ended.
    pub fn release(&self, holder: PeerId) -> u64 {
        let held = self.holders[holder.0 as usize % self.holders.len()].lock().remove(&holder);
        let now = self.now_ns();
        let mut released = 0;
        for h in held.into_iter().flatten() {
            let _guard = self.locks[h.bucket as usize % self.locks.len()].lock();
            if self.outstanding(&h, now) {
                self.leases[self.lease_index(h.bucket, h.slot)].store(0, Ordering::Relaxed);
                released += 1;
            }
        }
        self.counters.released.fetch_add(released, Ordering::Relaxed);
        released
    }

    /// Whether a reservation still counts against its holder: its lease runs and the slot is
    /// still bound under it, unfilled.
    fn outstanding(&self, h: &Held, now: u64) -> bool {
        if h.deadline <= now {
            return false;
        }
        let bytes = self.slot_bytes(h.bucket, h.slot);
        let v = SlotView::new(&bytes);
        v.visible() && v.generation() == h.generation && !v.filled()
    }

    /// The server's own fill (`cache.client_fills = false`): writes `value` into the slot reserved
    /// for `key` as `r` if that reservation is still current (visible, same key and generation,
    /// not yet filled). Under the bucket's lock, so an invalidation of `key` comes either before
    /// (the fill is dropped) or after (it hides the fill). Returns whether it filled.
    pub fn fill(&self, key: &TableKey, r: Reservation, value: &[u8]) -> bool {
        if value.len() > INLINE_VALUE_MAX {
            return false;
        }
        let bucket = key.bucket(self.geometry.buckets);
        let _guard = self.locks[bucket as usize % self.locks.len()].lock();
        let bytes = self.slot_bytes(bucket, r.slot);
        let v = SlotView::new(&bytes);
        if !(v.visible() && v.holds(key) && v.generation() == r.generation && !v.integrity()) {
            self.counters.server_fills_stale.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let base = self.geometry.slot_offset(bucket, r.slot);
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        // The order of a client's fill chain: value and checksum, timestamp, then integrity.
        self.region.write(base + off::FILL, &encode_fill(r.generation, key, value)).expect("slot in table");
        self.region.write(base + off::ACCESS_TS, &ts.to_le_bytes()).expect("slot in table");
        self.region.store_u8(base + off::INTEGRITY, 1);
        self.counters.server_fills.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// META_GET's part: reserves a slot for `key` unless it is already cached or being filled.
    /// No quota applies (see [`reserve_for`](Self::reserve_for)).
    pub fn reserve(&self, key: &TableKey) -> Option<Reservation> {
        let bucket = key.bucket(self.geometry.buckets);
        let _guard = self.locks[bucket as usize % self.locks.len()].lock();
        let now = self.now_ns();
        match self.find(bucket, key, now) {
            Found::Filled => {
                self.counters.already_cached.fetch_add(1, Ordering::Relaxed);
                None
            }
            Found::Pending { expired: false, .. } => {
                self.counters.fill_in_progress.fetch_add(1, Ordering::Relaxed);
                None
            }
            Found::Pending { slot, expired: true } => {
                self.counters.expired_reclaims.fetch_add(1, Ordering::Relaxed);
                Some(self.bind(bucket, slot, key, now))
            }
            Found::Absent => match self.victim(bucket, now) {
                Some((slot, evicting)) => {
                    if evicting {
                        self.counters.evictions.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(self.bind(bucket, slot, key, now))
                }
                None => {
                    self.counters.bucket_busy.fetch_add(1, Ordering::Relaxed);
                    None
                }
            },
        }
    }

    /// Hides `key`'s slot, if any, so no reader can be served its old value. Called before a
    /// write to `key` is published and acknowledged. Returns whether a slot was hidden.
    pub fn invalidate(&self, key: &TableKey) -> bool {
        let bucket = key.bucket(self.geometry.buckets);
        let _guard = self.locks[bucket as usize % self.locks.len()].lock();
        for s in 0..self.geometry.assoc {
            let bytes = self.slot_bytes(bucket, s);
            let v = SlotView::new(&bytes);
            if v.visible() && v.holds(key) {
                self.region.store_u8(self.geometry.slot_offset(bucket, s) + off::VISIBILITY, 0);
                if !self.hold_invalidated.load(Ordering::Relaxed) {
                    self.leases[self.lease_index(bucket, s)].store(0, Ordering::Relaxed);
                }
                self.counters.invalidations.fetch_add(1, Ordering::Relaxed);
                return true;
            }
        }
        false
    }

    /// Hides every visible slot (filled or reserved) whose key `drop` selects, e.g. the keys of
    /// partitions this server no longer serves. A scan of the whole table, bucket by bucket
    /// under the bucket's lock. Returns how many slots it hid.
    pub fn invalidate_where(&self, drop: impl Fn(&TableKey) -> bool) -> u64 {
        let mut n = 0;
        for b in 0..self.geometry.buckets {
            let _guard = self.locks[b as usize % self.locks.len()].lock();
            for s in 0..self.geometry.assoc {
                let bytes = self.slot_bytes(b, s);
                let v = SlotView::new(&bytes);
                if !v.visible() {
                    continue;
                }
                let mut key = TableKey { len: v.key_len(), bytes: [0; 16] };
                key.bytes.copy_from_slice(&v.key_bytes()[..16]);
                if drop(&key) {
                    self.region.store_u8(self.geometry.slot_offset(b, s) + off::VISIBILITY, 0);
                    self.leases[self.lease_index(b, s)].store(0, Ordering::Relaxed);
                    self.counters.invalidations.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                }
            }
        }
        n
    }

    /// Slots currently visible and filled (a scan; for statistics and tests).
    pub fn filled_slots(&self) -> u64 {
        let mut n = 0;
        for b in 0..self.geometry.buckets {
            for s in 0..self.geometry.assoc {
                let bytes = self.slot_bytes(b, s);
                let v = SlotView::new(&bytes);
                if v.visible() && v.filled() {
                    n += 1;
                }
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scalio_common::table::{encode_fill, probe_bucket, Probe};

    fn table(buckets: u32, assoc: u8, lease: Duration) -> CacheTable {
        CacheTable::new(TableGeometry { buckets, assoc }, lease)
    }

    /// What a client's fill chain does.
    fn fill(t: &CacheTable, key: &TableKey, r: Reservation, value: &[u8], ts: u64) {
        let base = t.geometry.slot_offset(key.bucket(t.geometry.buckets), r.slot);
        t.region.write(base + off::FILL, &encode_fill(r.generation, key, value)).unwrap();
        t.region.write(base + off::ACCESS_TS, &ts.to_le_bytes()).unwrap();
        t.region.store_u8(base + off::INTEGRITY, 1);
    }

    /// What a client's probe sees.
    fn probe(t: &CacheTable, key: &TableKey) -> Option<Vec<u8>> {
        let b = key.bucket(t.geometry.buckets);
        let mut bytes = vec![0; t.geometry.bucket_bytes()];
        t.region.read(t.geometry.bucket_offset(b), &mut bytes).unwrap();
        match probe_bucket(&bytes, key) {
            Probe::Hit { value, .. } => Some(value.to_vec()),
            _ => None,
        }
    }

    #[test]
    fn reserve_fill_hit_invalidate() {
        let t = table(16, 4, Duration::from_secs(60));
        let k = TableKey::new(b"alpha");
        let r = t.reserve(&k).expect("free slot");
        assert_eq!(probe(&t, &k), None, "reserved but not filled");
        assert!(t.reserve(&k).is_none(), "a fill is in progress");
        fill(&t, &k, r, b"one", 1);
        assert_eq!(probe(&t, &k), Some(b"one".to_vec()));
        assert!(t.reserve(&k).is_none(), "already cached");
        assert!(t.invalidate(&k));
        assert_eq!(probe(&t, &k), None);
        assert!(!t.invalidate(&k));
    }

    #[test]
    fn a_client_at_its_quota_gets_no_reservation_until_it_fills_or_its_leases_expire() {
        let t = table(64, 8, Duration::from_millis(50)).with_reservation_quota(2);
        let (hog, other) = (PeerId(1), PeerId(2));
        let k = |i: u32| TableKey::new(format!("key{i}").as_bytes());
        let r0 = t.reserve_for(hog, &k(0)).expect("free slot");
        t.reserve_for(hog, &k(1)).expect("free slot");
        assert!(t.reserve_for(hog, &k(2)).is_none(), "two unfilled reservations are the quota");
        assert_eq!(t.counters().quota_refusals.load(Ordering::Relaxed), 1);
        assert!(t.reserve_for(other, &k(3)).is_some(), "another client is not affected");
        fill(&t, &k(0), r0, b"v", 1);
        assert!(t.reserve_for(hog, &k(2)).is_some(), "a fill gives its place back");
        assert!(t.reserve_for(hog, &k(4)).is_none());
        std::thread::sleep(Duration::from_millis(60));
        assert!(t.reserve_for(hog, &k(4)).is_some(), "expired leases give their places back");
        assert_eq!(t.counters().quota_refusals.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn an_invalidated_reservation_no_longer_counts_against_the_quota() {
        let t = table(64, 8, Duration::from_secs(60)).with_reservation_quota(1);
        let (a, b) = (TableKey::new(b"a"), TableKey::new(b"b"));
        t.reserve_for(PeerId(7), &a).unwrap();
        assert!(t.reserve_for(PeerId(7), &b).is_none());
        t.invalidate(&a); // a write to a: the reservation can never be filled
        assert!(t.reserve_for(PeerId(7), &b).is_some());
    }

    #[test]
    fn server_fill_lands_only_under_a_current_reservation() {
        let t = table(16, 4, Duration::from_secs(60));
        let k = TableKey::new(b"alpha");
        let r1 = t.reserve(&k).unwrap();
        assert!(t.fill(&k, r1, b"one"));
        assert_eq!(probe(&t, &k), Some(b"one".to_vec()));
        assert!(!t.fill(&k, r1, b"two"), "filled already");
        assert!(t.invalidate(&k));
        assert!(!t.fill(&k, r1, b"two"), "invalidated");
        let r2 = t.reserve(&k).unwrap();
        assert!(!t.fill(&k, r1, b"stale"), "an older generation");
        assert!(!t.fill(&TableKey::new(b"beta"), r2, b"x"), "another key");
        assert!(!t.fill(&k, r2, &[0; 65]), "too large to inline");
        assert_eq!(probe(&t, &k), None);
        assert!(t.fill(&k, r2, b"three"));
        assert_eq!(probe(&t, &k), Some(b"three".to_vec()));
        assert_eq!(t.counters().server_fills.load(Ordering::Relaxed), 2);
        assert_eq!(t.counters().server_fills_stale.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn late_fill_after_invalidation_never_shows() {
        let t = table(1, 2, Duration::from_secs(60));
        let k = TableKey::new(b"k");
        let r1 = t.reserve(&k).unwrap();
        t.invalidate(&k); // a write to k
        let r2 = t.reserve(&k).unwrap(); // a later reader reserves again, maybe the same slot
        fill(&t, &k, r1, b"stale", 1); // the first reader's fill arrives late
        if r1.slot == r2.slot {
            assert_eq!(probe(&t, &k), None, "stale fill rejected by generation");
        } else {
            assert_eq!(probe(&t, &k), None, "stale fill landed in an invisible slot");
        }
        fill(&t, &k, r2, b"fresh", 2);
        assert_eq!(probe(&t, &k), Some(b"fresh".to_vec()));
    }

    #[test]
    fn late_fill_into_a_slot_rebound_to_another_key_is_rejected() {
        let t = table(1, 1, Duration::from_millis(0));
        let a = TableKey::new(b"a");
        let b = TableKey::new(b"b");
        let ra = t.reserve(&a).unwrap();
        // The lease is zero: the slot can be taken by b at once.
        let rb = t.reserve(&b).unwrap();
        assert_eq!(ra.slot, rb.slot);
        fill(&t, &b, rb, b"B", 1);
        fill(&t, &a, ra, b"A", 1); // a's late fill overwrites the value bytes
        assert_eq!(probe(&t, &a), None);
        assert_eq!(probe(&t, &b), None, "b's slot is now inconsistent, never wrong");
    }

    #[test]
    fn expired_lease_is_reclaimed() {
        let t = table(1, 1, Duration::from_millis(1));
        let a = TableKey::new(b"a");
        assert!(t.reserve(&a).is_some());
        std::thread::sleep(Duration::from_millis(3));
        let b = TableKey::new(b"b");
        assert!(t.reserve(&b).is_some(), "the crashed client's reservation expired");
        assert_eq!(t.counters().expired_reclaims.load(Ordering::Relaxed), 1);
    }

    /// With a re-bind hook (fill windows), an invalidated reservation's slot is not re-bound
    /// before its lease runs out (its filler may still write through its window), and the hook
    /// hears of every re-bind, under the bucket's lock, before the header changes.
    #[test]
    fn with_a_rebind_hook_an_invalidated_slot_waits_for_its_lease() {
        let t = Arc::new(table(1, 1, Duration::from_millis(40)));
        let heard = Arc::new(Mutex::new(Vec::new()));
        let (h, weak) = (heard.clone(), Arc::downgrade(&t));
        t.on_rebind(Box::new(move |bucket, slot| {
            let t = weak.upgrade().unwrap();
            let g = SlotView::new(&t.slot_bytes(bucket, slot)).generation();
            h.lock().push((bucket, slot, g));
        }));
        let a = TableKey::new(b"a");
        let r = t.reserve(&a).unwrap();
        assert_eq!(*heard.lock(), vec![(0, 0, 0)], "told before the header changed");
        assert!(!t.reservation_ended(0, r.slot, r.generation));
        assert!(t.invalidate(&a));
        assert!(!t.reservation_ended(0, r.slot, r.generation), "invalidated, but its filler may still write");
        assert!(t.reserve(&a).is_none(), "not re-bound under a running lease");
        std::thread::sleep(Duration::from_millis(50));
        assert!(t.reservation_ended(0, r.slot, r.generation), "the lease ran out");
        let r2 = t.reserve(&a).expect("re-bound after the lease");
        assert_eq!(heard.lock().len(), 2);
        assert!(t.reservation_ended(0, r.slot, r.generation), "re-bound: another generation");
        fill(&t, &a, r2, b"v", 1);
        assert!(t.reservation_ended(0, r2.slot, r2.generation), "filled");
    }

    #[test]
    fn busy_bucket_refuses_reservation() {
        let t = table(1, 2, Duration::from_secs(60));
        assert!(t.reserve(&TableKey::new(b"a")).is_some());
        assert!(t.reserve(&TableKey::new(b"b")).is_some());
        assert!(t.reserve(&TableKey::new(b"c")).is_none());
        assert_eq!(t.counters().bucket_busy.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn eviction_takes_the_oldest_filled_slot() {
        let t = table(1, 3, Duration::from_secs(60));
        let keys: Vec<_> = [b"a", b"b", b"c"].iter().map(|k| TableKey::new(*k)).collect();
        for (i, k) in keys.iter().enumerate() {
            let r = t.reserve(k).unwrap();
            fill(&t, k, r, b"v", [30, 10, 20][i]);
        }
        let d = TableKey::new(b"d");
        let r = t.reserve(&d).unwrap();
        fill(&t, &d, r, b"v", 40);
        assert_eq!(probe(&t, &keys[1]), None, "b had the oldest timestamp");
        assert!(probe(&t, &keys[0]).is_some() && probe(&t, &keys[2]).is_some());
        assert_eq!(t.counters().evictions.load(Ordering::Relaxed), 1);
        assert_eq!(t.filled_slots(), 3);
    }

    /// Many threads reserving keys of one bucket: no two keys ever hold the same slot.
    #[test]
    fn concurrent_reservations_never_share_a_slot() {
        let t = Arc::new(table(1, 8, Duration::from_secs(60)));
        let got: Vec<_> = (0..8)
            .map(|i| {
                let t = t.clone();
                std::thread::spawn(move || {
                    let k = TableKey::new(format!("key{i}").as_bytes());
                    (k, t.reserve(&k))
                })
            })
            .map(|h| h.join().unwrap())
            .collect();
        let mut slots: Vec<u8> = got.iter().filter_map(|(_, r)| r.map(|r| r.slot)).collect();
        assert_eq!(slots.len(), 8, "8 slots, 8 keys");
        slots.sort();
        slots.dedup();
        assert_eq!(slots.len(), 8, "no slot given twice");
    }
}
