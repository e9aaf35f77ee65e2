//! Which keys this server may serve: its view of the cluster map, and the verdict for each
//! request (serve it, or answer "wrong owner, epoch N").
//!
//! A server serves a key only when all of these hold:
//! * it has a map, and its etcd lease is known to be alive (a server cut off from etcd may have
//!   been replaced; it stops vouching for any map when its lease may have expired);
//! * the client did not route with a newer epoch than the server's map (the server would be
//!   judging by a map the cluster has already left);
//! * in its map it is the key's chain head (writes) or tail (reads: META_GET and server GET).
//!
//! Time is passed in, so the rules are tested without waiting.
//!
//! When a new map takes partitions away from this server's tail role, their slots in its cache
//! table are hidden (after the new map is in force, so no new reservation is made for them): a
//! client still routing by the old map could otherwise READ a value the new owner has since
//! overwritten. Partitions are computed from table keys, so every slot's partition is known.

use super::applied::Applied;
use super::doubts::Doubts;
use super::received::Received;
use crate::table::CacheTable;
use parking_lot::RwLock;
use scalio_common::cluster::{partition_of_table_key, ClusterMap, Member, NodeId, Role};
use scalio_common::rpc::{Op, WrongOwner};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// The role a request needs the server to have in the key's chain.
pub fn role_of(op: Op) -> Role {
    if op.is_write() {
        Role::Head
    } else {
        Role::Tail
    }
}

/// Where a write this server has made durable goes next (chain replication).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// This server is the key's tail: the write is complete, acknowledge it.
    Done,
    /// Forward it to `to`, stamped with `epoch` (the map `to` was chosen by).
    Forward { to: Member, epoch: u64 },
    /// This server is no longer in the key's chain (or cannot vouch for any map): the write
    /// must not be acknowledged; the sender is told the epoch to route by.
    Refuse(WrongOwner),
}

#[derive(Default)]
struct View {
    map: Option<Arc<ClusterMap>>,
    /// Per partition of `map`: the epoch since which its chain (members and order) has been
    /// what `map` says, as far as this server knows (a map that skips epochs, or a first map,
    /// counts as a change of every chain).
    chain_since: Vec<u64>,
    /// The lease is alive until then (at least); `None`: never granted, or lost.
    lease_until: Option<Instant>,
    /// The cache was hidden because the lease lapsed (see [`Ownership::fence_if_lapsed`]);
    /// cleared by a renewal.
    fenced: bool,
}

/// How long before its lease may expire a server stops taking cache reservations and hides its
/// cache (see [`Ownership::fence_if_lapsed`]): room for the fence's polling and scheduling.
pub const FENCE_MARGIN: std::time::Duration = std::time::Duration::from_millis(250);

/// This server's standing in the cluster, shared by the RPC dispatch and the etcd agent.
pub struct Ownership {
    me: NodeId,
    view: RwLock<View>,
    wrong_owner: AtomicU64,
    /// The cache table whose slots follow the partitions this server is the tail of.
    cache: std::sync::OnceLock<Arc<CacheTable>>,
    cache_dropped: AtomicU64,
    cache_fenced: AtomicU64,
    /// Keys written during moves to this server (see [`Received`]).
    received: parking_lot::Mutex<Received>,
    /// Recent writes by request id (see [`Applied`]).
    applied: parking_lot::Mutex<Applied>,
    retried_writes: AtomicU64,
    /// Keys whose last write here its chain did not complete (see [`Doubts`]).
    doubts: parking_lot::Mutex<Doubts>,
    doubt_counters: DoubtCounters,
}

/// What became of the keys in doubt (see [`super::doubts`]).
#[derive(Default)]
pub struct DoubtCounters {
    /// Doubts raised: writes applied here that their chain refused, lost or answered otherwise.
    pub raised: AtomicU64,
    /// Settled with the value read from the member whose value stands.
    pub settled_from_peer: AtomicU64,
    /// Settled with this member's own value (no member after it is left).
    pub kept: AtomicU64,
    /// Forgotten because this member left the partition's chain (or receives it again).
    pub forgotten: AtomicU64,
    /// Reads refused because their key was in doubt or unsettled here.
    pub reads_refused: AtomicU64,
    /// Writes refused because [`super::doubts::CAPACITY`] keys were in doubt here.
    pub writes_refused: AtomicU64,
}

impl Ownership {
    pub fn new(me: NodeId) -> Ownership {
        Ownership {
            me,
            view: RwLock::new(View::default()),
            wrong_owner: AtomicU64::new(0),
            cache: std::sync::OnceLock::new(),
            cache_dropped: AtomicU64::new(0),
            cache_fenced: AtomicU64::new(0),
            received: parking_lot::Mutex::new(Received::default()),
            applied: parking_lot::Mutex::new(Applied::default()),
            retried_writes: AtomicU64::new(0),
            doubts: parking_lot::Mutex::new(Doubts::default()),
            doubt_counters: DoubtCounters::default(),
        }
    }

    /// The cache table to clean when partitions move away (set once, when the server starts).
    pub fn attach_cache(&self, table: Arc<CacheTable>) {
        let _ = self.cache.set(table);
    }

    /// Cache slots hidden because their partition moved to another server.
    pub fn cache_slots_dropped(&self) -> u64 {
        self.cache_dropped.load(Ordering::Relaxed)
    }

    /// Cache slots hidden because the lease lapsed.
    pub fn cache_slots_fenced(&self) -> u64 {
        self.cache_fenced.load(Ordering::Relaxed)
    }

    /// Hides the whole cache if the lease may expire within [`FENCE_MARGIN`] of `now` (or was
    /// lost), once per lapse; returns the slots hidden. Called often (the agent polls it).
    ///
    /// A server cut off from etcd stops answering requests when its lease may have expired,
    /// since the others may then have replaced it; but cache hits are one-sided READs it never
    /// sees, so it must also hide the slots, before the others can give its partitions to a
    /// new tail whose writes would not invalidate them. While fenced, no reservation is made
    /// ([`while_serving`](Self::while_serving)).
    pub fn fence_if_lapsed(&self, now: Instant) -> u64 {
        let due = |v: &View| !v.fenced && v.map.is_some() && lapsing(v, now);
        // Polled often: look under the read lock, which the request path shares.
        if !due(&self.view.read()) {
            return 0;
        }
        {
            let mut v = self.view.write();
            if !due(&v) {
                return 0;
            }
            v.fenced = true;
        }
        let Some(table) = self.cache.get() else { return 0 };
        let n = table.invalidate_where(|_| true);
        self.cache_fenced.fetch_add(n, Ordering::Relaxed);
        tracing::warn!(slots = n, "cluster lease lapsing: cache hidden until it is renewed");
        n
    }

    pub fn me(&self) -> &NodeId {
        &self.me
    }

    /// Adopts `map` if it is newer than the one held. Returns whether it did.
    pub fn install(&self, map: Arc<ClusterMap>) -> bool {
        let old = {
            let mut v = self.view.write();
            if v.map.as_ref().is_some_and(|m| m.epoch >= map.epoch) {
                return false;
            }
            v.chain_since = chain_since(v.map.as_deref().map(|m| (m, v.chain_since.as_slice())), &map);
            v.map.replace(map.clone())
        };
        super::trace::event(&self.me, || {
            let old = old.as_deref();
            let changed: Vec<String> = (0..map.chains.len())
                .filter(|p| {
                    old.is_none_or(|o| {
                        o.chains.get(*p).map(|c| c.iter().map(|i| &o.nodes[usize::from(*i)].id).collect::<Vec<_>>())
                            != Some(map.chains[*p].iter().map(|i| &map.nodes[usize::from(*i)].id).collect())
                    })
                })
                .map(|p| {
                    let ids: Vec<String> =
                        map.chains[p].iter().map(|i| map.nodes[usize::from(*i)].id.0.clone()).collect();
                    let mv: Vec<String> = map
                        .moves_of(p as u32)
                        .iter()
                        .map(|m| {
                            format!(
                                "{}<-{}@{}",
                                map.nodes[usize::from(m.to)].id,
                                map.nodes[usize::from(m.from)].id,
                                m.since
                            )
                        })
                        .collect();
                    format!(
                        "{p}:{}{}",
                        ids.join(","),
                        if mv.is_empty() { String::new() } else { format!("[{}]", mv.join(",")) }
                    )
                })
                .collect();
            format!("install epoch {} changed {}", map.epoch, changed.join(" "))
        });
        if let (Some(old), Some(table)) = (old, self.cache.get()) {
            let lost = self.lost_tail_partitions(&old, &map);
            if lost.iter().any(|l| *l) {
                let bits = map.params.partition_bits;
                let n = table.invalidate_where(|tk| lost.get(partition_of_table_key(tk, bits) as usize) == Some(&true));
                self.cache_dropped.fetch_add(n, Ordering::Relaxed);
            }
        }
        true
    }

    /// For each partition of `new`: whether this server was its tail in `old` and is not in
    /// `new`. (Maps with different partition counts: every old tail partition counts as lost.)
    fn lost_tail_partitions(&self, old: &ClusterMap, new: &ClusterMap) -> Vec<bool> {
        let tail_of = |m: &ClusterMap, p: usize| {
            m.node_index(&self.me).is_some_and(|i| m.chains.get(p).and_then(|c| c.last()) == Some(&i))
        };
        let same_shape = old.params.partition_bits == new.params.partition_bits;
        let was_tail_anywhere = (0..old.chains.len()).any(|p| tail_of(old, p));
        (0..new.chains.len())
            .map(
                |p| {
                    if same_shape {
                        tail_of(old, p) && !tail_of(new, p)
                    } else {
                        was_tail_anywhere && !tail_of(new, p)
                    }
                },
            )
            .collect()
    }

    /// The record of keys written during moves to this server.
    pub fn received(&self) -> &parking_lot::Mutex<Received> {
        &self.received
    }

    /// A retried write was found applied here already and answered as then.
    pub fn count_retried_write(&self) {
        self.retried_writes.fetch_add(1, Ordering::Relaxed);
    }

    /// Retried writes answered without being applied again.
    pub fn retried_writes(&self) -> u64 {
        self.retried_writes.load(Ordering::Relaxed)
    }

    /// The record of recent writes by request id.
    pub fn applied(&self) -> &parking_lot::Mutex<Applied> {
        &self.applied
    }

    /// The keys in doubt here.
    pub fn doubts(&self) -> &parking_lot::Mutex<Doubts> {
        &self.doubts
    }

    /// What became of the keys in doubt.
    pub fn doubt_counters(&self) -> &DoubtCounters {
        &self.doubt_counters
    }

    /// Whether this server is `key`'s tail in the map it holds.
    pub fn is_tail(&self, key: &[u8]) -> bool {
        self.view.read().map.as_ref().is_some_and(|m| m.serves(&self.me, key, Role::Tail))
    }

    /// The epoch since which `partition` has been moving to this server, if it is.
    pub fn move_to_me(&self, partition: u32) -> Option<u64> {
        let v = self.view.read();
        v.map.as_ref()?.move_to(partition, &self.me).map(|m| m.since)
    }

    /// The partition of `key` in the map held (0 without a map).
    pub fn partition_of(&self, key: &[u8]) -> u32 {
        self.view.read().map.as_ref().map_or(0, |m| m.partition_of(key))
    }

    /// Whether this server may answer a copy's read of `key` ([`flags::COPY`] on a GET) from
    /// a member routing at `epoch`: it must be in the key's chain (a member that has the data
    /// is, until its copies are done), with a live lease, and not behind the reader.
    ///
    /// [`flags::COPY`]: scalio_common::rpc::flags::COPY
    pub fn check_copy_read(&self, key: &[u8], epoch: Option<u64>, now: Instant) -> Result<(), WrongOwner> {
        let v = self.view.read();
        let verdict = match (&v.map, v.lease_until) {
            (Some(map), Some(until)) if now < until => {
                if epoch.is_some_and(|e| e > map.epoch) || !map.in_chain(map.partition_of(key), &self.me) {
                    Err(WrongOwner { epoch: map.epoch })
                } else {
                    Ok(())
                }
            }
            _ => Err(WrongOwner { epoch: 0 }),
        };
        if verdict.is_err() {
            self.wrong_owner.fetch_add(1, Ordering::Relaxed);
        }
        verdict
    }

    /// Whether this server may list its keys to a member routing at `epoch`: only once it
    /// holds that map too (so that the writes it took under older maps are all in its store,
    /// and the scan, which waits for earlier writes, lists them).
    pub fn check_scan(&self, epoch: Option<u64>, now: Instant) -> Result<(), WrongOwner> {
        let v = self.view.read();
        match (&v.map, v.lease_until) {
            (Some(map), Some(until)) if now < until && epoch.is_none_or(|e| e <= map.epoch) => Ok(()),
            (Some(map), Some(_)) => Err(WrongOwner { epoch: map.epoch }),
            _ => Err(WrongOwner { epoch: 0 }),
        }
    }

    /// The lease is alive at least until `until`.
    pub fn lease_renewed(&self, until: Instant) {
        let mut v = self.view.write();
        v.lease_until = Some(v.lease_until.map_or(until, |u| u.max(until)));
        v.fenced = false;
    }

    /// The lease expired or could not be renewed: serve nothing until a new one is granted.
    pub fn lease_lost(&self) {
        self.view.write().lease_until = None;
    }

    pub fn map(&self) -> Option<Arc<ClusterMap>> {
        self.view.read().map.clone()
    }

    /// The epoch of the map held (0: none).
    pub fn epoch(&self) -> u64 {
        self.view.read().map.as_ref().map_or(0, |m| m.epoch)
    }

    /// Requests answered with "wrong owner" so far.
    pub fn wrong_owner_replies(&self) -> u64 {
        self.wrong_owner.load(Ordering::Relaxed)
    }

    /// Whether this server may serve `key` for `op`, asked by a client that routed with
    /// `client_epoch` (`None`: a client outside the cluster protocol, judged by ownership alone).
    pub fn check(&self, key: &[u8], op: Op, client_epoch: Option<u64>, now: Instant) -> Result<(), WrongOwner> {
        self.check_at(key, op, client_epoch, now).map(|_| ())
    }

    /// [`check`](Self::check), returning the epoch of the map the request was accepted by.
    pub fn check_at(&self, key: &[u8], op: Op, client_epoch: Option<u64>, now: Instant) -> Result<u64, WrongOwner> {
        self.verdict(&self.view.read(), key, op, client_epoch, now)
    }

    /// Runs `f` (e.g. reserving a cache slot for `key`) if this server serves `key` in `op`'s
    /// role, as [`check`](Self::check) decides, holding the view while `f` runs: a map
    /// installed meanwhile waits for `f`, so what `f` reserved is there when that map's
    /// [`install`](Self::install) hides the slots of partitions this server no longer reads for.
    /// (Checked and then reserved separately, a reservation made just after the hiding, under
    /// the old map's verdict, would let a client fill a slot that the new tail's writes never
    /// invalidate.) `f` must not call back into this `Ownership`.
    pub fn while_serving<R>(
        &self,
        key: &[u8],
        op: Op,
        client_epoch: Option<u64>,
        now: Instant,
        f: impl FnOnce() -> R,
    ) -> Result<R, WrongOwner> {
        let v = self.view.read();
        let epoch = self.verdict(&v, key, op, client_epoch, now)?;
        if v.fenced || lapsing(&v, now) {
            self.wrong_owner.fetch_add(1, Ordering::Relaxed);
            return Err(WrongOwner { epoch });
        }
        Ok(f())
    }

    fn verdict(
        &self,
        v: &View,
        key: &[u8],
        op: Op,
        client_epoch: Option<u64>,
        now: Instant,
    ) -> Result<u64, WrongOwner> {
        let verdict = match (&v.map, v.lease_until) {
            (Some(map), Some(until)) if now < until => {
                if client_epoch.is_some_and(|e| e > map.epoch) || !map.serves(&self.me, key, role_of(op)) {
                    Err(WrongOwner { epoch: map.epoch })
                } else {
                    Ok(map.epoch)
                }
            }
            _ => Err(WrongOwner { epoch: 0 }),
        };
        if verdict.is_err() {
            self.wrong_owner.fetch_add(1, Ordering::Relaxed);
        }
        verdict
    }

    /// Whether this server accepts a write forwarded down `key`'s chain, stamped with `epoch`:
    /// only at exactly its own epoch (the sender chose this server by the same map) and only
    /// as a member after the head. A stale or newer stamp, or a missing one, is refused.
    pub fn check_forwarded(&self, key: &[u8], epoch: Option<u64>, now: Instant) -> Result<(), WrongOwner> {
        self.check_forwarded_at(key, epoch, now).map(|_| ())
    }

    /// [`check_forwarded`](Self::check_forwarded), returning the epoch the write was accepted by.
    pub fn check_forwarded_at(&self, key: &[u8], epoch: Option<u64>, now: Instant) -> Result<u64, WrongOwner> {
        let v = self.view.read();
        let verdict = match (&v.map, v.lease_until) {
            (Some(map), Some(until)) if now < until => {
                let chain = map.chain(map.partition_of(key));
                let at = map.node_index(&self.me).and_then(|i| chain.iter().position(|c| *c == i));
                if epoch == Some(map.epoch) && at.is_some_and(|a| a > 0) {
                    Ok(map.epoch)
                } else {
                    Err(WrongOwner { epoch: map.epoch })
                }
            }
            _ => Err(WrongOwner { epoch: 0 }),
        };
        if verdict.is_err() {
            self.wrong_owner.fetch_add(1, Ordering::Relaxed);
        }
        verdict
    }

    /// Where a write to `key` that this server accepted by the map of epoch `accepted` and has
    /// made durable goes next, by the map it holds now (which may be newer).
    ///
    /// If the key's chain changed since `accepted`, the write is refused: the members now
    /// before this one may not have it (a member that entered at the head after it passed, so
    /// that a copy it made of the partition misses it), and a chain whose order reversed would
    /// send it back to a member waiting for its answer (a cycle that only a timeout breaks).
    /// The client retries it through the chain as it is now.
    pub fn next_in_chain(&self, key: &[u8], accepted: u64, now: Instant) -> Next {
        let v = self.view.read();
        let map = match (&v.map, v.lease_until) {
            (Some(map), Some(until)) if now < until => map,
            _ => return Next::Refuse(WrongOwner { epoch: 0 }),
        };
        let partition = map.partition_of(key);
        if v.chain_since.get(partition as usize).is_none_or(|since| *since > accepted) {
            return Next::Refuse(WrongOwner { epoch: map.epoch });
        }
        let chain = map.chain(partition);
        let at = map.node_index(&self.me).and_then(|i| chain.iter().position(|c| *c == i));
        match at {
            None => Next::Refuse(WrongOwner { epoch: map.epoch }),
            Some(a) => match chain.get(a + 1) {
                None => Next::Done,
                Some(n) => Next::Forward { to: map.nodes[usize::from(*n)].clone(), epoch: map.epoch },
            },
        }
    }
}

/// Whether the lease may expire within [`FENCE_MARGIN`] of `now` (or is not held).
fn lapsing(v: &View, now: Instant) -> bool {
    v.lease_until.is_none_or(|until| now + FENCE_MARGIN >= until)
}

/// The epoch since which each of `new`'s chains has been as it is, given the map held before
/// (with its own epochs): a chain unchanged from the map just before keeps its epoch; any other
/// chain (changed, or after a gap in the epochs or a change of partitioning) starts at `new`'s.
fn chain_since(old: Option<(&ClusterMap, &[u64])>, new: &ClusterMap) -> Vec<u64> {
    let ids = |m: &ClusterMap, p: usize| -> Vec<NodeId> {
        m.chains.get(p).map_or_else(Vec::new, |c| c.iter().map(|i| m.nodes[usize::from(*i)].id.clone()).collect())
    };
    (0..new.chains.len())
        .map(|p| match old {
            Some((o, since))
                if o.epoch + 1 == new.epoch
                    && o.params.partition_bits == new.params.partition_bits
                    && since.len() == new.chains.len()
                    && ids(o, p) == ids(new, p) =>
            {
                since[p]
            }
            _ => new.epoch,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use scalio_common::cluster::{compute, MapParams, Member};
    use std::time::Duration;

    fn member(i: usize) -> Member {
        Member {
            id: NodeId(format!("s{i}")),
            fabric: format!("127.0.0.1:{}", 7400 + i),
            target: None,
            subsystems: vec![],
            capacity_bytes: 0,
        }
    }

    fn map(n: usize, rf: u8, prev: Option<&ClusterMap>) -> Arc<ClusterMap> {
        let members: Vec<_> = (0..n).map(member).collect();
        let params = MapParams { replication: rf, ..MapParams::default() };
        Arc::new(compute(prev, &members, params).unwrap().unwrap())
    }

    /// A key whose chain in `m` has `head` first and `tail` last.
    fn key_with(m: &ClusterMap, head: &str, tail: &str) -> Vec<u8> {
        (0..10_000u32)
            .map(|i| format!("key{i}").into_bytes())
            .find(|k| m.owner(k, Role::Head).unwrap().id.0 == head && m.owner(k, Role::Tail).unwrap().id.0 == tail)
            .expect("some key has that chain")
    }

    #[test]
    fn serves_only_its_role_with_a_live_lease_and_a_current_epoch() {
        let now = Instant::now();
        let own = Ownership::new(NodeId("s0".into()));
        let m = map(3, 2, None);
        let k = key_with(&m, "s0", "s1");
        // No map, then no lease: nothing is served.
        assert_eq!(own.check(&k, Op::Put, None, now), Err(WrongOwner { epoch: 0 }));
        assert!(own.install(m.clone()));
        assert_eq!(own.check(&k, Op::Put, Some(1), now), Err(WrongOwner { epoch: 0 }));
        own.lease_renewed(now + Duration::from_secs(5));
        // Head: writes yes, reads no (the tail s1 owns the cache).
        assert_eq!(own.check(&k, Op::Put, Some(1), now), Ok(()));
        assert_eq!(own.check(&k, Op::Delete, None, now), Ok(()));
        assert_eq!(own.check(&k, Op::MetaGet, Some(1), now), Err(WrongOwner { epoch: 1 }));
        assert_eq!(own.check(&k, Op::Get, Some(1), now), Err(WrongOwner { epoch: 1 }));
        // A client that saw a newer map is not served by this older one.
        assert_eq!(own.check(&k, Op::Put, Some(2), now), Err(WrongOwner { epoch: 1 }));
        // A lease past its end, or lost, stops everything.
        assert_eq!(own.check(&k, Op::Put, Some(1), now + Duration::from_secs(6)), Err(WrongOwner { epoch: 0 }));
        own.lease_lost();
        assert_eq!(own.check(&k, Op::Put, Some(1), now), Err(WrongOwner { epoch: 0 }));
        assert_eq!(own.wrong_owner_replies(), 7);
    }

    #[test]
    fn a_partition_that_moves_away_leaves_the_cache() {
        use scalio_common::key::TableKey;
        use scalio_common::table::TableGeometry;
        let own = Ownership::new(NodeId("s0".into()));
        let table = Arc::new(CacheTable::new(TableGeometry { buckets: 64, assoc: 8 }, Duration::from_secs(60)));
        own.attach_cache(table.clone());
        let m1 = map(2, 1, None);
        own.install(m1.clone());
        // s2 joins; once its copies are done the partitions it took leave s0.
        let moving = map(3, 1, Some(&m1));
        let ready = moving.moves.iter().map(|m| ((m.partition, moving.nodes[usize::from(m.to)].id.clone()), m.since));
        let progress = scalio_common::cluster::Progress { ready: ready.collect(), ..Default::default() };
        let members: Vec<_> = (0..3).map(member).collect();
        let m2 = Arc::new(
            scalio_common::cluster::compute_with(Some(&moving), &members, moving.params, &progress).unwrap().unwrap(),
        );
        let mine = |m: &ClusterMap, k: &[u8]| m.serves(&NodeId("s0".into()), k, Role::Tail);
        let keys: Vec<Vec<u8>> = (0..100u32).map(|i| format!("key{i}").into_bytes()).filter(|k| mine(&m1, k)).collect();
        let (moved, kept): (Vec<_>, Vec<_>) = keys.into_iter().partition(|k| !mine(&m2, k));
        assert!(!moved.is_empty() && !kept.is_empty());
        for k in moved.iter().chain(&kept) {
            assert!(table.reserve(&TableKey::new(k)).is_some());
        }
        own.install(m2);
        assert_eq!(own.cache_slots_dropped(), moved.len() as u64);
        // A moved key's slot is gone (a new reservation is possible); a kept key's is still
        // reserved (a second reservation is refused while the first is pending).
        for k in &moved {
            assert!(table.reserve(&TableKey::new(k)).is_some());
        }
        for k in &kept {
            assert!(table.reserve(&TableKey::new(k)).is_none());
        }
    }

    #[test]
    fn reservations_are_made_only_while_serving_and_a_lapsing_lease_hides_the_cache() {
        use scalio_common::key::TableKey;
        use scalio_common::table::TableGeometry;
        let now = Instant::now();
        let own = Ownership::new(NodeId("s0".into()));
        let table = Arc::new(CacheTable::new(TableGeometry { buckets: 64, assoc: 8 }, Duration::from_secs(60)));
        own.attach_cache(table.clone());
        let m = map(1, 1, None);
        own.install(m.clone());
        let until = now + Duration::from_secs(5);
        own.lease_renewed(until);
        let keys: Vec<Vec<u8>> = (0..20u32).map(|i| format!("key{i}").into_bytes()).collect();
        for k in &keys {
            let r = own.while_serving(k, Op::MetaGet, Some(1), now, || table.reserve(&TableKey::new(k)));
            assert!(matches!(r, Ok(Some(_))));
        }
        // Not this server's role, or a client ahead of its map: nothing is reserved.
        let ran = std::cell::Cell::new(false);
        assert_eq!(
            own.while_serving(&keys[0], Op::MetaGet, Some(2), now, || ran.set(true)),
            Err(WrongOwner { epoch: 1 })
        );
        assert!(!ran.get());
        // Well before the lease may lapse: nothing happens.
        assert_eq!(own.fence_if_lapsed(until - FENCE_MARGIN - Duration::from_millis(1)), 0);
        assert_eq!(own.cache_slots_fenced(), 0);
        // Within the margin: every slot is hidden, once, and no reservation is made.
        let lapsing = until - FENCE_MARGIN;
        assert_eq!(own.fence_if_lapsed(lapsing), keys.len() as u64);
        assert_eq!(own.fence_if_lapsed(lapsing), 0, "hidden once per lapse");
        assert_eq!(own.cache_slots_fenced(), keys.len() as u64);
        for k in &keys {
            // Hidden: the slot can be reserved again, but not through this server.
            assert!(own.while_serving(k, Op::MetaGet, Some(1), lapsing, || ()).is_err());
        }
        assert!(own.while_serving(&keys[0], Op::MetaGet, Some(1), now, || ()).is_err(), "fenced until renewed");
        // Renewed: reservations again, and a later lapse hides again.
        own.lease_renewed(until + Duration::from_secs(5));
        let r = own.while_serving(&keys[0], Op::MetaGet, Some(1), lapsing, || table.reserve(&TableKey::new(&keys[0])));
        assert!(matches!(r, Ok(Some(_))));
        own.lease_lost();
        assert_eq!(own.fence_if_lapsed(lapsing), 1);
        assert_eq!(own.cache_slots_fenced(), keys.len() as u64 + 1);
    }

    #[test]
    fn forwarded_writes_follow_the_chain_at_exactly_one_epoch() {
        let now = Instant::now();
        let m = map(3, 3, None);
        let chain_of = |k: &[u8]| -> Vec<String> {
            m.chain(m.partition_of(k)).iter().map(|i| m.nodes[usize::from(*i)].id.0.clone()).collect()
        };
        let k = b"some key".to_vec();
        let chain = chain_of(&k);
        let own: Vec<Ownership> = chain.iter().map(|id| Ownership::new(NodeId(id.clone()))).collect();
        for o in &own {
            o.install(m.clone());
            o.lease_renewed(now + Duration::from_secs(5));
        }
        // Head → middle → tail, each stamped with the map's epoch; the tail is the end.
        for (at, o) in own.iter().enumerate() {
            let want = match chain.get(at + 1) {
                Some(next) => Next::Forward { to: m.member(&NodeId(next.clone())).unwrap().clone(), epoch: 1 },
                None => Next::Done,
            };
            assert_eq!(o.next_in_chain(&k, 1, now), want);
            // Only the members after the head take a forwarded write, and only at epoch 1.
            assert_eq!(o.check_forwarded(&k, Some(1), now).is_ok(), at > 0);
            for wrong in [None, Some(0), Some(2)] {
                assert_eq!(o.check_forwarded(&k, wrong, now), Err(WrongOwner { epoch: 1 }));
            }
        }
        // Without a live lease nothing is forwarded or taken.
        assert_eq!(own[0].next_in_chain(&k, 1, now + Duration::from_secs(6)), Next::Refuse(WrongOwner { epoch: 0 }));
        assert_eq!(own[1].check_forwarded(&k, Some(1), now + Duration::from_secs(6)), Err(WrongOwner { epoch: 0 }));
        // A server that is not in the chain refuses to pass a write on (RF 2 of 3 servers).
        let m2 = map(3, 2, None);
        let outsider = (0..3)
            .map(|i| format!("s{i}"))
            .find(|id| !m2.chain(m2.partition_of(&k)).contains(&m2.node_index(&NodeId(id.clone())).unwrap()))
            .unwrap();
        let o = Ownership::new(NodeId(outsider));
        o.install(m2);
        o.lease_renewed(now + Duration::from_secs(5));
        assert_eq!(o.next_in_chain(&k, 1, now), Next::Refuse(WrongOwner { epoch: 1 }));
    }

    /// The first key (of a few thousand) for which `f` holds.
    fn find_key(f: impl Fn(&[u8]) -> bool) -> Vec<u8> {
        (0..10_000u32).map(|i| format!("key{i}").into_bytes()).find(|k| f(k)).expect("some key qualifies")
    }

    #[test]
    fn a_write_is_refused_if_its_chain_changed_since_it_was_accepted() {
        let now = Instant::now();
        let m1 = map(3, 2, None);
        let m2 = map(4, 2, Some(&m1)); // s3 joins: the chains it enters change
        let ids = |m: &ClusterMap, k: &[u8]| -> Vec<NodeId> {
            m.chain(m.partition_of(k)).iter().map(|i| m.nodes[usize::from(*i)].id.clone()).collect()
        };
        let head1 = |k: &[u8]| ids(&m1, k)[0].clone();
        // A key whose chain s3 entered, and one whose chain stayed, with the same head at epoch 1.
        let changed = find_key(|k| head1(k).0 == "s0" && ids(&m1, k) != ids(&m2, k) && ids(&m2, k).len() > 1);
        let same = find_key(|k| head1(k).0 == "s0" && ids(&m1, k) == ids(&m2, k));
        let o = Ownership::new(NodeId("s0".into()));
        o.lease_renewed(now + Duration::from_secs(5));
        o.install(m1.clone());
        let next_of = |m: &ClusterMap, k: &[u8]| {
            let chain = ids(m, k);
            let at = chain.iter().position(|id| id.0 == "s0").unwrap();
            Next::Forward { to: m.member(&chain[at + 1]).unwrap().clone(), epoch: m.epoch }
        };
        assert_eq!(o.check_at(&changed, Op::Put, Some(1), now), Ok(1));
        assert_eq!(o.next_in_chain(&changed, 1, now), next_of(&m1, &changed));
        // Epoch 2 arrives while both writes (accepted at epoch 1) are being made durable: the
        // one whose chain changed is refused (s3, now before s0 or after it, may not have it),
        // the other goes on, stamped with epoch 2.
        o.install(m2.clone());
        assert_eq!(o.next_in_chain(&changed, 1, now), Next::Refuse(WrongOwner { epoch: 2 }));
        assert_eq!(o.next_in_chain(&same, 1, now), next_of(&m2, &same));
        assert_eq!(o.next_in_chain(&changed, 2, now), next_of(&m2, &changed), "accepted at epoch 2: fine");
        // A chain whose order reverses (the tail moved to the head) refuses what it accepted
        // before: forwarding it would send it back to the member waiting for its answer.
        let reversed = ClusterMap {
            epoch: 3,
            chains: m2.chains.iter().map(|c| c.iter().rev().copied().collect()).collect(),
            ..(*m2).clone()
        };
        o.install(Arc::new(reversed));
        assert_eq!(o.next_in_chain(&same, 2, now), Next::Refuse(WrongOwner { epoch: 3 }));
        // A map that skips an epoch counts as a change of every chain.
        let skipped = ClusterMap { epoch: 5, ..(*m2).clone() };
        o.install(Arc::new(skipped.clone()));
        assert_eq!(o.next_in_chain(&same, 3, now), Next::Refuse(WrongOwner { epoch: 5 }));
        assert_eq!(o.next_in_chain(&same, 5, now), next_of(&skipped, &same));
    }

    #[test]
    fn keeps_the_newest_map() {
        let own = Ownership::new(NodeId("s0".into()));
        let m1 = map(2, 1, None);
        let m2 = map(3, 1, Some(&m1));
        assert!(own.install(m2.clone()));
        assert!(!own.install(m1));
        assert_eq!(own.epoch(), 2);
        assert!(!own.install(m2));
    }
}
