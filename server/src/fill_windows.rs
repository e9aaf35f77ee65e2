//! Fill windows (`cache.fill_windows`): instead of one registration through which any client
//! can write every slot's client range, each reservation gets a window of its own — WRITE access
//! to just the reserved slot's client range (bytes 24..112), for just the connection that sent
//! the META_GET ([`Registrar::grant_window`]; on verbs a type-2 memory window bound on the
//! server's queue pair to that client). The window's key goes back in the META_GET reply.
//!
//! A window is revoked when its reservation is over:
//! * the slot is re-bound (another reservation of it, for any key): at once, under the bucket's
//!   lock, before the new reservation's header is written ([`CacheTable::on_rebind`]);
//! * the fill landed (`integrity = 1`) or the lease ran out: by the sweep, every quarter lease
//!   ([`sweep`](FillWindows::sweep)). A slot invalidated by a write keeps its window (and is not
//!   re-bound) until its lease runs out: its filler may still be writing, and a WRITE through a
//!   revoked window ends the writer's queue pair. Clients fill only within the first half of a
//!   lease, so an honest one never writes through a revoked window;
//! * the client's connection closed ([`release`](FillWindows::release); on verbs the windows
//!   are also deallocated with the connection).
//!
//! So a client can write only the client range of a slot reserved for it, and only from the
//! grant until at most a quarter lease after its fill landed or its lease ran out; never after
//! the slot was taken by another reservation.

use crate::table::CacheTable;
use parking_lot::Mutex;
use scalio_common::fabric::{Access, PeerId, RegionDesc, Registrar};
use scalio_common::rpc::Reservation;
use scalio_common::table::{off, TableGeometry, CLIENT_RANGE_LEN};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Stripes of the slot → window map (by bucket).
const STRIPES: usize = 64;

/// The windows granted over the slots of some buckets, by (bucket, slot).
type Stripe = Mutex<HashMap<(u32, u8), Granted>>;

/// The window granted over one slot.
#[derive(Debug, Clone, Copy)]
struct Granted {
    peer: PeerId,
    rkey: u32,
    generation: u32,
}

/// Counters (STATS: `fill_windows_*`).
#[derive(Debug, Default)]
pub struct FillWindowCounters {
    pub granted: AtomicU64,
    /// Grants the backend refused (e.g. its send queue full): the reservation goes unfilled.
    pub refused: AtomicU64,
    /// Revoked because the fill landed, the lease ran out or the slot was invalidated.
    pub revoked_done: AtomicU64,
    /// Revoked because the slot was taken by another reservation.
    pub revoked_rebound: AtomicU64,
    /// Revoked because the client's connection closed.
    pub revoked_closed: AtomicU64,
}

/// The windows granted over the cache table's slots, one per reservation at most.
pub struct FillWindows {
    registrar: Arc<dyn Registrar>,
    /// The table's registration made with [`Access::WINDOWS`].
    base: RegionDesc,
    geometry: TableGeometry,
    slots: Box<[Stripe]>,
    counters: FillWindowCounters,
}

impl FillWindows {
    /// Windows over the table registered as `base` (with [`Access::WINDOWS`]) through
    /// `registrar`. Installs the re-bind hook on `table` and starts the sweep (a thread that ends
    /// with the table or these windows).
    pub fn start(registrar: Arc<dyn Registrar>, base: RegionDesc, table: &Arc<CacheTable>) -> Arc<FillWindows> {
        let geometry = table.geometry();
        let w = Arc::new(FillWindows {
            registrar,
            base,
            geometry,
            slots: (0..STRIPES).map(|_| Mutex::new(HashMap::new())).collect(),
            counters: FillWindowCounters::default(),
        });
        let hook = Arc::downgrade(&w);
        table.on_rebind(Box::new(move |bucket, slot| {
            if let Some(w) = hook.upgrade() {
                w.revoke_slot(bucket, slot);
            }
        }));
        let (weak_w, weak_t): (Weak<FillWindows>, Weak<CacheTable>) = (Arc::downgrade(&w), Arc::downgrade(table));
        let every = (table.lease() / 4).max(Duration::from_millis(1));
        let spawned = std::thread::Builder::new().name("fill-windows".into()).spawn(move || loop {
            std::thread::sleep(every);
            let (Some(w), Some(t)) = (weak_w.upgrade(), weak_t.upgrade()) else { return };
            w.sweep(&t);
        });
        if let Err(e) = spawned {
            tracing::warn!("fill windows: no sweep thread ({e}): windows end with their slot's next reservation");
        }
        w
    }

    /// Buckets of the table (where a key's slot is).
    pub fn buckets(&self) -> u32 {
        self.geometry.buckets
    }

    pub fn counters(&self) -> &FillWindowCounters {
        &self.counters
    }

    fn stripe(&self, bucket: u32) -> &Stripe {
        &self.slots[bucket as usize % self.slots.len()]
    }

    /// Grants `peer` a window over the client range of the slot `r` reserved in `bucket`.
    /// None if the backend refused (the client then cannot fill; the reservation expires).
    pub fn grant(&self, peer: PeerId, bucket: u32, r: Reservation) -> Option<u32> {
        let offset = (self.geometry.slot_offset(bucket, r.slot) + off::CLIENT_RANGE) as u64;
        match self.registrar.grant_window(peer, self.base, offset, CLIENT_RANGE_LEN as u64, Access::WRITE) {
            Ok(w) => {
                let previous = self
                    .stripe(bucket)
                    .lock()
                    .insert((bucket, r.slot), Granted { peer, rkey: w.rkey, generation: r.generation });
                // The re-bind hook revoked the slot's window before this reservation; one left
                // here would be a window over a slot its holder no longer has.
                if let Some(p) = previous {
                    self.registrar.revoke_window(p.peer, p.rkey);
                    self.counters.revoked_rebound.fetch_add(1, Ordering::Relaxed);
                }
                self.counters.granted.fetch_add(1, Ordering::Relaxed);
                Some(w.rkey)
            }
            Err(e) => {
                tracing::debug!("fill window not granted: {e}");
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// The slot is being re-bound: its window, if any, is revoked now.
    fn revoke_slot(&self, bucket: u32, slot: u8) {
        if let Some(g) = self.stripe(bucket).lock().remove(&(bucket, slot)) {
            self.registrar.revoke_window(g.peer, g.rkey);
            self.counters.revoked_rebound.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Revokes the windows whose reservation is over for its filler: filled, or its lease ran
    /// out (an invalidated slot is held until then: see [`CacheTable::on_rebind`]).
    pub fn sweep(&self, table: &CacheTable) {
        self.revoke_where(&self.counters.revoked_done, |bucket, slot, g| {
            table.reservation_ended(bucket, slot, g.generation)
        });
    }

    /// `peer`'s connection closed: its windows are revoked.
    pub fn release(&self, peer: PeerId) {
        self.revoke_where(&self.counters.revoked_closed, |_, _, g| g.peer == peer);
    }

    /// Forgets the windows `ended` picks (by bucket, slot and grant), then revokes each outside
    /// the stripe's lock and counts it in `counter`.
    fn revoke_where(&self, counter: &AtomicU64, mut ended: impl FnMut(u32, u8, &Granted) -> bool) {
        for stripe in self.slots.iter() {
            let mut gone = Vec::new();
            stripe.lock().retain(|&(bucket, slot), g| {
                let end = ended(bucket, slot, g);
                if end {
                    gone.push(*g);
                }
                !end
            });
            for g in gone {
                self.registrar.revoke_window(g.peer, g.rkey);
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Windows in force now.
    pub fn in_force(&self) -> u64 {
        self.slots.iter().map(|s| s.lock().len() as u64).sum()
    }
}
