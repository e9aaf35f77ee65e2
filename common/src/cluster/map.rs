//! The cluster map: which servers exist, and which chain of them holds each partition of the key
//! space, at an epoch.
//!
//! A key belongs to partition `xxh64(table_key ‖ len, PARTITION_SEED) >> (64 - partition_bits)`
//! (the top bits, so that partitions are contiguous hash ranges, as LEED's rings are). It hashes
//! the key's 16-byte table key ([`TableKey`]) rather than the key, so that a server can tell the
//! partition of every slot of its cache table, and drop the slots of partitions it stops
//! serving. Each partition has
//! a chain of `replication` distinct servers taken from the vnode ring ([`super::ring`]): writes
//! go to the chain's head, reads (cache probes, META_GET, server GET) to its tail, which owns the
//! key's cache. With replication 1 head and tail are the same server.
//!
//! The map is computed by [`compute`], a pure function of the previous map and the live
//! members, and stored as JSON ([`ClusterMap::encode`]) with a `format` number that decoders
//! check. Every change increments the epoch.

use super::ring::Ring;
use crate::key::TableKey;
use serde::{Deserialize, Serialize};
use std::fmt;
use xxhash_rust::xxh64::xxh64;

/// Seed of the key → partition hash (independent of the cache bucket and SSD route hashes).
pub const PARTITION_SEED: u64 = 0xc1a5_7e12_0b17;
/// The codec version of [`ClusterMap`] this code writes and reads.
pub const MAP_FORMAT: u32 = 1;
/// Largest encoded map accepted (bounds the memory a malformed map can make us allocate).
pub const MAX_MAP_BYTES: usize = 16 << 20;
/// Largest partition count exponent.
pub const MAX_PARTITION_BITS: u8 = 16;
/// Longest chain (the issue's replication factors are 1 to 3).
pub const MAX_REPLICATION: u8 = 3;
/// Most virtual nodes per server.
pub const MAX_VNODES: u32 = 4096;

/// A server's name in the cluster (unique; chosen by the server, stable across restarts).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub String);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a server registers about itself: how clients reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: NodeId,
    /// Fabric (software NIC) address of its RPCs and cache table.
    pub fabric: String,
    /// NVMe/TCP target address of its SSDs, if it runs one.
    #[serde(default)]
    pub target: Option<String>,
    /// Subsystem NQNs of its SSDs, in SSD order.
    #[serde(default)]
    pub subsystems: Vec<String>,
    /// Bytes of SSD it has.
    #[serde(default)]
    pub capacity_bytes: u64,
}

impl Member {
    /// Decodes a member record, as stored under the members prefix.
    pub fn decode(b: &[u8]) -> Result<Member, MapError> {
        if b.len() > MAX_MAP_BYTES {
            return Err(MapError::TooLarge(b.len()));
        }
        let m: Member = serde_json::from_slice(b).map_err(|e| MapError::Json(e.to_string()))?;
        if m.id.0.is_empty() {
            return Err(MapError::Invalid("member with an empty id"));
        }
        Ok(m)
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a member always serializes")
    }
}

/// How maps are shaped; fixed for a cluster's life (changing it moves most data).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapParams {
    /// Servers per chain (capped by the number of servers).
    pub replication: u8,
    /// Virtual nodes per server on the ring.
    pub vnodes: u32,
    /// The key space is cut into `2^partition_bits` partitions.
    pub partition_bits: u8,
}

impl Default for MapParams {
    fn default() -> Self {
        MapParams { replication: 1, vnodes: 64, partition_bits: 10 }
    }
}

impl MapParams {
    pub fn check(&self) -> Result<(), MapError> {
        if self.replication == 0 || self.replication > MAX_REPLICATION {
            return Err(MapError::Invalid("replication must be 1 to 3"));
        }
        if self.vnodes == 0 || self.vnodes > MAX_VNODES {
            return Err(MapError::Invalid("vnodes must be 1 to 4096"));
        }
        if self.partition_bits > MAX_PARTITION_BITS {
            return Err(MapError::Invalid("partition_bits must be at most 16"));
        }
        Ok(())
    }

    pub fn partitions(&self) -> usize {
        1usize << self.partition_bits
    }
}

/// Which member of a chain a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Writes enter the chain at its head.
    Head,
    /// Reads (cache probes, META_GET, server GET) go to the tail, which owns the cache.
    Tail,
}

/// The cluster map at one epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMap {
    /// Codec version ([`MAP_FORMAT`]).
    pub format: u32,
    /// Incremented by every change; requests carry the epoch their sender routed with.
    pub epoch: u64,
    pub params: MapParams,
    /// The members, sorted by id; chains name them by index.
    pub nodes: Vec<Member>,
    /// For each partition, its chain as indices into `nodes`, head first.
    pub chains: Vec<Vec<u16>>,
}

/// A map or member record that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    #[error("encoded map of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("malformed JSON: {0}")]
    Json(String),
    #[error("map format {0} is not the supported format {MAP_FORMAT}")]
    Format(u32),
    #[error("invalid map: {0}")]
    Invalid(&'static str),
}

/// The partition of `key` (a valid key: [`crate::key::validate`]) among `2^bits` partitions.
pub fn partition_of(key: &[u8], bits: u8) -> u32 {
    partition_of_table_key(&TableKey::new(key), bits)
}

/// The partition of the key whose table key is `tk`.
pub fn partition_of_table_key(tk: &TableKey, bits: u8) -> u32 {
    if bits == 0 {
        return 0;
    }
    let mut b = [0u8; 17];
    b[..16].copy_from_slice(&tk.bytes);
    b[16] = tk.len;
    (xxh64(&b, PARTITION_SEED) >> (64 - u32::from(bits))) as u32
}

/// The ring position a partition's chain is looked up from: the start of its hash range.
fn partition_position(p: usize, bits: u8) -> u64 {
    if bits == 0 {
        0
    } else {
        (p as u64) << (64 - u32::from(bits))
    }
}

impl ClusterMap {
    pub fn partition_of(&self, key: &[u8]) -> u32 {
        partition_of(key, self.params.partition_bits)
    }

    /// The chain of a partition, head first (empty only in a map without members).
    pub fn chain(&self, partition: u32) -> &[u16] {
        self.chains.get(partition as usize).map_or(&[], |c| c.as_slice())
    }

    /// The member that serves `key` in `role`.
    pub fn owner(&self, key: &[u8], role: Role) -> Option<&Member> {
        let chain = self.chain(self.partition_of(key));
        let i = match role {
            Role::Head => chain.first(),
            Role::Tail => chain.last(),
        }?;
        self.nodes.get(usize::from(*i))
    }

    pub fn node_index(&self, id: &NodeId) -> Option<u16> {
        self.nodes.binary_search_by(|m| m.id.cmp(id)).ok().map(|i| i as u16)
    }

    pub fn member(&self, id: &NodeId) -> Option<&Member> {
        self.node_index(id).map(|i| &self.nodes[usize::from(i)])
    }

    /// Whether `id` serves `key` in `role` in this map.
    pub fn serves(&self, id: &NodeId, key: &[u8], role: Role) -> bool {
        self.owner(key, role).is_some_and(|m| &m.id == id)
    }

    /// Partitions whose chain includes `id`, and of those, the ones it is the tail of.
    pub fn partitions_of(&self, id: &NodeId) -> (usize, usize) {
        let Some(n) = self.node_index(id) else { return (0, 0) };
        let member = self.chains.iter().filter(|c| c.contains(&n)).count();
        let tail = self.chains.iter().filter(|c| c.last() == Some(&n)).count();
        (member, tail)
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a map always serializes")
    }

    /// Decodes and checks a map: format, parameters, sorted unique members, one chain per
    /// partition of distinct valid indices.
    pub fn decode(b: &[u8]) -> Result<ClusterMap, MapError> {
        if b.len() > MAX_MAP_BYTES {
            return Err(MapError::TooLarge(b.len()));
        }
        // Look at the format first, so a newer map is reported as such rather than as bad JSON.
        #[derive(Deserialize)]
        struct Head {
            format: u32,
        }
        let head: Head = serde_json::from_slice(b).map_err(|e| MapError::Json(e.to_string()))?;
        if head.format != MAP_FORMAT {
            return Err(MapError::Format(head.format));
        }
        let map: ClusterMap = serde_json::from_slice(b).map_err(|e| MapError::Json(e.to_string()))?;
        map.check()?;
        Ok(map)
    }

    fn check(&self) -> Result<(), MapError> {
        self.params.check()?;
        if self.nodes.len() > usize::from(u16::MAX) {
            return Err(MapError::Invalid("too many members"));
        }
        if self.nodes.windows(2).any(|w| w[0].id >= w[1].id) {
            return Err(MapError::Invalid("members not sorted by unique id"));
        }
        if self.chains.len() != self.params.partitions() {
            return Err(MapError::Invalid("chain count differs from the partition count"));
        }
        let want = usize::from(self.params.replication).min(self.nodes.len());
        for c in &self.chains {
            if c.len() != want {
                return Err(MapError::Invalid("chain of the wrong length"));
            }
            if c.iter().any(|i| usize::from(*i) >= self.nodes.len()) {
                return Err(MapError::Invalid("chain names a missing member"));
            }
            if (1..c.len()).any(|k| c[..k].contains(&c[k])) {
                return Err(MapError::Invalid("chain names a member twice"));
            }
        }
        Ok(())
    }
}

/// The map for `members` (any order; ids must be unique): each partition's chain from the vnode
/// ring. Returns `None` when it would equal `prev` (nothing to change) or when there are no
/// members (a cluster with nobody left keeps its last map); otherwise the new map, at
/// `prev.epoch + 1` (or 1).
pub fn compute(
    prev: Option<&ClusterMap>,
    members: &[Member],
    params: MapParams,
) -> Result<Option<ClusterMap>, MapError> {
    params.check()?;
    if members.is_empty() {
        return Ok(None);
    }
    let mut nodes = members.to_vec();
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    if nodes.windows(2).any(|w| w[0].id == w[1].id) {
        return Err(MapError::Invalid("two members with one id"));
    }
    if nodes.len() > usize::from(u16::MAX) {
        return Err(MapError::Invalid("too many members"));
    }
    let ids: Vec<NodeId> = nodes.iter().map(|m| m.id.clone()).collect();
    let ring = Ring::new(&ids, params.vnodes);
    let same_shape = prev.is_some_and(|p| p.params == params);
    let chains: Vec<Vec<u16>> = (0..params.partitions())
        .map(|p| {
            let ideal = ring.chain(partition_position(p, params.partition_bits), usize::from(params.replication));
            match prev.filter(|_| same_shape) {
                Some(prev) => order_chain(prev, p, ideal, &ids),
                None => ideal,
            }
        })
        .collect();
    if let Some(prev) = prev {
        if prev.params == params && prev.nodes == nodes && prev.chains == chains {
            return Ok(None);
        }
    }
    Ok(Some(ClusterMap { format: MAP_FORMAT, epoch: prev.map_or(0, |p| p.epoch) + 1, params, nodes, chains }))
}

/// The order of a partition's chain whose members are `ideal` (from the ring): members that
/// are new to the chain go first, then the members it had in `prev`, in their old order.
///
/// So the tail, which serves reads, is always a server that was in the chain before (and so
/// holds every acknowledged write, chain replication making each member durable before the
/// next), as long as one of them survives: when a member dies, its successor or predecessor
/// takes over its role and the server that fills the gap only receives new writes, at the head.
/// Without a rebuild (not done yet) such a newcomer lacks the partition's older data; the tail
/// never does. Survivors never reorder, so an unchanged membership gives an unchanged chain.
fn order_chain(prev: &ClusterMap, partition: usize, ideal: Vec<u16>, ids: &[NodeId]) -> Vec<u16> {
    let old: Vec<&NodeId> =
        prev.chain(partition as u32).iter().filter_map(|i| prev.nodes.get(usize::from(*i)).map(|m| &m.id)).collect();
    let was_in = |i: &u16| old.contains(&&ids[usize::from(*i)]);
    let mut chain: Vec<u16> = ideal.iter().copied().filter(|i| !was_in(i)).collect();
    let mut kept: Vec<u16> = ideal.into_iter().filter(|i| was_in(i)).collect();
    kept.sort_by_key(|i| old.iter().position(|id| **id == ids[usize::from(*i)]));
    chain.extend(kept);
    chain
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn member(i: usize) -> Member {
        Member {
            id: NodeId(format!("s{i:02}")),
            fabric: format!("127.0.0.1:{}", 7400 + i),
            target: Some(format!("127.0.0.1:{}", 4420 + i)),
            subsystems: vec![format!("nqn.test:s{i}-ssd0")],
            capacity_bytes: 1 << 30,
        }
    }

    fn members(ix: impl IntoIterator<Item = usize>) -> Vec<Member> {
        ix.into_iter().map(member).collect()
    }

    fn params(rf: u8) -> MapParams {
        MapParams { replication: rf, vnodes: 64, partition_bits: 10 }
    }

    /// Chains by member id, for comparing maps with different member lists.
    fn chains_by_id(m: &ClusterMap) -> Vec<Vec<NodeId>> {
        m.chains.iter().map(|c| c.iter().map(|i| m.nodes[usize::from(*i)].id.clone()).collect()).collect()
    }

    #[test]
    fn epochs_count_changes_and_an_unchanged_map_is_not_rewritten() {
        let m1 = compute(None, &members(0..3), params(1)).unwrap().unwrap();
        assert_eq!(m1.epoch, 1);
        assert_eq!(compute(Some(&m1), &members([2, 0, 1]), params(1)).unwrap(), None);
        let m2 = compute(Some(&m1), &members(0..4), params(1)).unwrap().unwrap();
        assert_eq!(m2.epoch, 2);
        // A member that comes back with a new address is a change too (clients must reconnect).
        let mut moved = members(0..4);
        moved[1].fabric = "127.0.0.1:9999".into();
        assert_eq!(compute(Some(&m2), &moved, params(1)).unwrap().unwrap().epoch, 3);
        assert_eq!(compute(Some(&m2), &[], params(1)).unwrap(), None);
        assert!(compute(None, &[member(1), member(1)], params(1)).is_err());
    }

    #[test]
    fn codec_round_trips_and_checks() {
        let m = compute(None, &members(0..3), params(2)).unwrap().unwrap();
        let bytes = m.encode();
        assert_eq!(ClusterMap::decode(&bytes).unwrap(), m);
        let mut newer: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        newer["format"] = 2.into();
        assert_eq!(ClusterMap::decode(&serde_json::to_vec(&newer).unwrap()), Err(MapError::Format(2)));
        let mut bad = m.clone();
        bad.chains[5] = vec![0, 0];
        assert_eq!(ClusterMap::decode(&bad.encode()), Err(MapError::Invalid("chain names a member twice")));
        let mut bad = m.clone();
        bad.chains[5] = vec![0, 7];
        assert_eq!(ClusterMap::decode(&bad.encode()), Err(MapError::Invalid("chain names a missing member")));
        let mut bad = m.clone();
        bad.chains.pop();
        assert!(ClusterMap::decode(&bad.encode()).is_err());
        let mut bad = m;
        bad.nodes.swap(0, 1);
        assert!(ClusterMap::decode(&bad.encode()).is_err());
        assert!(matches!(ClusterMap::decode(b"{\"format\":1"), Err(MapError::Json(_))));
        assert!(matches!(ClusterMap::decode(&vec![b' '; MAX_MAP_BYTES + 1]), Err(MapError::TooLarge(_))));
        let member = member(3);
        assert_eq!(Member::decode(&member.encode()).unwrap(), member);
        assert!(Member::decode(br#"{"id":"","fabric":"x"}"#).is_err());
    }

    #[test]
    fn routing_uses_head_for_writes_and_tail_for_reads() {
        let m = compute(None, &members(0..3), params(2)).unwrap().unwrap();
        for k in 0..200u32 {
            let key = format!("user{k}");
            let chain = m.chain(m.partition_of(key.as_bytes()));
            assert_eq!(chain.len(), 2);
            let head = &m.nodes[usize::from(chain[0])];
            let tail = &m.nodes[usize::from(chain[1])];
            assert_eq!(m.owner(key.as_bytes(), Role::Head), Some(head));
            assert_eq!(m.owner(key.as_bytes(), Role::Tail), Some(tail));
            assert!(m.serves(&head.id, key.as_bytes(), Role::Head));
            assert!(!m.serves(&head.id, key.as_bytes(), Role::Tail));
        }
        // RF 1: head and tail are one server.
        let m1 = compute(None, &members(0..3), params(1)).unwrap().unwrap();
        assert_eq!(m1.owner(b"k", Role::Head), m1.owner(b"k", Role::Tail));
    }

    #[test]
    fn partitions_spread_evenly_enough() {
        // 64 vnodes per server: every server's share stays within a factor of 1.5 of fair.
        for n in 2..=6 {
            let m = compute(None, &members(0..n), params(1)).unwrap().unwrap();
            let fair = m.chains.len() as f64 / n as f64;
            for node in &m.nodes {
                let (owned, _) = m.partitions_of(&node.id);
                let ratio = owned as f64 / fair;
                assert!((0.6..1.5).contains(&ratio), "{} servers: {} owns {owned} (fair {fair})", n, node.id);
            }
        }
    }

    #[test]
    fn partition_bits_zero_is_one_partition() {
        let p = MapParams { replication: 1, vnodes: 4, partition_bits: 0 };
        let m = compute(None, &members(0..2), p).unwrap().unwrap();
        assert_eq!(m.chains.len(), 1);
        assert_eq!(m.partition_of(b"anything"), 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// A join only adds the new server to chains (pushing out their last member); every
        /// other chain is untouched.
        #[test]
        fn a_join_moves_only_what_the_new_server_takes(n in 1usize..6, rf in 1u8..=3, new in 10usize..40) {
            let before = compute(None, &members(0..n), params(rf)).unwrap().unwrap();
            let after = compute(Some(&before), &members((0..n).chain([new])), params(rf)).unwrap().unwrap();
            let joined = member(new).id;
            let mut moved = 0;
            for (old, now) in chains_by_id(&before).into_iter().zip(chains_by_id(&after)) {
                if old == now {
                    continue;
                }
                moved += 1;
                prop_assert!(now.contains(&joined), "chain {old:?} -> {now:?} changed without the new server");
                // The newcomer enters at the head; the old members keep their order behind it
                // (the last one drops out), so the tail is a server that has the data.
                prop_assert_eq!(&now[0], &joined);
                prop_assert!(old.starts_with(&now[1..]), "{old:?} -> {now:?} reordered the survivors");
            }
            // On average a new server takes rf/(n+1) of the chains; allow generous variance.
            let expect = before.chains.len() as f64 * f64::from(rf).min((n + 1) as f64) / (n + 1) as f64;
            prop_assert!((moved as f64) < expect * 1.8 + 8.0, "moved {moved}, expected about {expect}");
        }

        /// A leave only changes the chains the leaving server was in: it drops out, the
        /// survivors keep their order at the tail end (the tail is a server that has the data),
        /// and the next server on the ring fills the gap at the head.
        #[test]
        fn a_leave_moves_only_what_the_leaving_server_had(n in 2usize..7, rf in 1u8..=3, gone in 0usize..7) {
            let gone = gone % n;
            let before = compute(None, &members(0..n), params(rf)).unwrap().unwrap();
            let after = compute(Some(&before), &members((0..n).filter(|i| *i != gone)), params(rf)).unwrap().unwrap();
            // The reordered chains are stable: the same members give no new map.
            prop_assert_eq!(compute(Some(&after), &members((0..n).filter(|i| *i != gone)), params(rf)).unwrap(), None);
            let left = member(gone).id;
            for (old, now) in chains_by_id(&before).into_iter().zip(chains_by_id(&after)) {
                prop_assert!(!now.contains(&left));
                if !old.contains(&left) {
                    prop_assert_eq!(old, now);
                } else {
                    let survivors: Vec<_> = old.iter().filter(|i| **i != left).cloned().collect();
                    prop_assert!(now.ends_with(&survivors), "{old:?} -> {now:?}");
                    prop_assert_eq!(now.len(), old.len().min(n - 1));
                }
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_decoders(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = ClusterMap::decode(&b);
            let _ = Member::decode(&b);
        }
    }
}
