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
//! The map is computed by [`compute_with`], a pure function of the previous map, the live
//! members and the [`Progress`] of data moves, and stored as JSON ([`ClusterMap::encode`]) with
//! a `format` number that decoders check. Every change increments the epoch.
//!
//! **Moves.** A server that enters a partition's chain without its data (a join, a
//! replacement for a dead member, the target of a drain) does so in two epochs. In the first
//! it is put at the chain's head with a [`Move`] `{to, from, since}` (`from`: the chain's tail,
//! which has every acknowledged write); the members that had the data stay behind it, so reads
//! are served as before while the newcomer receives every new write and, in the background, a
//! copy of the partition from `from`. When the copy is complete it reports itself ready (in
//! etcd) and the next map drops the move: the chain becomes the ring's chain, in which the
//! newcomer may hold any position, including the tail, and members that the ring no longer
//! names leave it.

use super::ring::Ring;
use crate::key::TableKey;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use xxhash_rust::xxh64::xxh64;

/// Seed of the key → partition hash (independent of the cache bucket and SSD route hashes).
pub const PARTITION_SEED: u64 = 0xc1a5_7e12_0b17;
/// The codec version of [`ClusterMap`] this code writes (format 2 added `moves`; format 1
/// maps, which have none, are still read).
pub const MAP_FORMAT: u32 = 2;
/// The oldest codec version still read.
pub const MAP_FORMAT_MIN: u32 = 1;
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

/// A partition being copied to a member that entered its chain without the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Move {
    pub partition: u32,
    /// The receiver (index into `nodes`), in the chain ahead of the members that have the data.
    pub to: u16,
    /// The source (index into `nodes`): the chain's tail.
    pub from: u16,
    /// The epoch at which `to` entered the chain (and began to receive every write); a ready
    /// record counts for this move only if it names the same epoch.
    pub since: u64,
}

/// What the reconciler knows besides the live members: planned departures and finished copies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// Members being drained: they leave the ring at once, and each chain once their data has
    /// been copied to the member that replaces them.
    pub leaving: BTreeSet<NodeId>,
    /// Copies reported complete: (partition, receiver) → the `since` of the move it completed.
    pub ready: HashMap<(u32, NodeId), u64>,
    /// The newest map epoch each member reports having installed (and acted on: a member that
    /// installs a map in which it is no longer a partition's tail hides that partition's cache
    /// slots and refuses its reads first). A member leaves a chain only once it has installed a
    /// map of that chain in which it is not the tail: see [`compute_with`].
    pub installed: HashMap<NodeId, u64>,
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
    /// Copies in progress, sorted by (partition, to); absent in format 1.
    #[serde(default)]
    pub moves: Vec<Move>,
}

/// A map or member record that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    #[error("encoded map of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("malformed JSON: {0}")]
    Json(String),
    #[error("map format {0} is not a supported format ({MAP_FORMAT_MIN} to {MAP_FORMAT})")]
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

    /// The copies in progress into `partition`'s chain.
    pub fn moves_of(&self, partition: u32) -> &[Move] {
        let a = self.moves.partition_point(|m| m.partition < partition);
        let b = self.moves.partition_point(|m| m.partition <= partition);
        &self.moves[a..b]
    }

    /// The move of `partition` to `id`, if `id` is receiving a copy of it.
    pub fn move_to(&self, partition: u32, id: &NodeId) -> Option<&Move> {
        let n = self.node_index(id)?;
        self.moves_of(partition).iter().find(|m| m.to == n)
    }

    /// Whether `id` is in `partition`'s chain.
    pub fn in_chain(&self, partition: u32, id: &NodeId) -> bool {
        self.node_index(id).is_some_and(|n| self.chain(partition).contains(&n))
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
        if !(MAP_FORMAT_MIN..=MAP_FORMAT).contains(&head.format) {
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
        if self.moves.windows(2).any(|w| (w[0].partition, w[0].to) >= (w[1].partition, w[1].to)) {
            return Err(MapError::Invalid("moves not sorted by unique (partition, to)"));
        }
        for (p, c) in self.chains.iter().enumerate() {
            let moves = self.moves_of(p as u32);
            // A chain is the ring's (`replication` servers, fewer if there are not so many)
            // plus, while copies run, the receivers ahead of members that have the data, and
            // former members waiting to report that they stopped serving its reads (see
            // `compute_with`): not empty, and (checked below) no member twice.
            if c.is_empty() != self.nodes.is_empty() {
                return Err(MapError::Invalid("chain of the wrong length"));
            }
            if c.iter().any(|i| usize::from(*i) >= self.nodes.len()) {
                return Err(MapError::Invalid("chain names a missing member"));
            }
            if (1..c.len()).any(|k| c[..k].contains(&c[k])) {
                return Err(MapError::Invalid("chain names a member twice"));
            }
            for m in moves {
                if !c.contains(&m.to) || c.last() != Some(&m.from) || m.to == m.from || m.since > self.epoch {
                    return Err(MapError::Invalid("a move must run from the chain's tail to another member"));
                }
            }
        }
        if self.moves.last().is_some_and(|m| m.partition as usize >= self.chains.len()) {
            return Err(MapError::Invalid("move of a missing partition"));
        }
        Ok(())
    }
}

/// [`compute_with`] without drains or finished copies.
pub fn compute(
    prev: Option<&ClusterMap>,
    members: &[Member],
    params: MapParams,
) -> Result<Option<ClusterMap>, MapError> {
    compute_with(prev, members, params, &Progress::default())
}

/// The map for `members` (any order; ids must be unique): each partition's chain from the vnode
/// ring of the members that are not leaving, reached through moves (see the module
/// documentation). Returns `None` when it would equal `prev` (nothing to change) or when there
/// are no members (a cluster with nobody left keeps its last map); otherwise the new map, at
/// `prev.epoch + 1` (or 1).
///
/// For each partition, from `prev`'s chain:
/// * the *holders* are its live members that have the data: all but the receivers of moves
///   not yet reported ready;
/// * the *ideal* chain is the ring's; the *needed* are its members that are not holders;
/// * nothing needed: the chain is the ideal one (nothing to copy);
/// * otherwise the chain is the needed (new ones first) ahead of the holders (those the ring
///   keeps, the tail, and enough others to keep `replication` copies): a move `tail → each
///   needed`. Such a chain has at most twice `replication` members.
/// * no holder left (every replica lost): the ideal chain, nothing to copy from.
///
/// Then **no live member leaves a chain while it may still serve the chain's reads**: a live
/// holder of `prev`'s chain that the rules above drop stays in the chain, at its head, if it
/// is `prev`'s tail or has not reported installing `prev` ([`Progress::installed`]); it leaves
/// in a later map. A tail's reads include one-sided cache READs that it never sees, so only the
/// member itself can stop them (by hiding the partition's slots when it installs a map in
/// which it is not the tail); until it has, a write acknowledged by a new tail that it never
/// saw would leave a stale value readable there by clients still routing by an older map.
/// While it stays in the chain every write passes through it (and invalidates the key's slot
/// there), and once it has installed a map in which it is not the tail it refuses the
/// partition's reads. Dead members leave at once: they serve nothing.
pub fn compute_with(
    prev: Option<&ClusterMap>,
    members: &[Member],
    params: MapParams,
    progress: &Progress,
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
    // The ring of the members that stay (all of them if every one is leaving).
    let mut staying: Vec<u16> =
        (0..ids.len() as u16).filter(|i| !progress.leaving.contains(&ids[usize::from(*i)])).collect();
    if staying.is_empty() {
        staying = (0..ids.len() as u16).collect();
    }
    let staying_ids: Vec<NodeId> = staying.iter().map(|i| ids[usize::from(*i)].clone()).collect();
    let ring = Ring::new(&staying_ids, params.vnodes);
    let epoch = prev.map_or(0, |p| p.epoch) + 1;
    let same_shape = prev.filter(|p| p.params == params);
    let mut chains = Vec::with_capacity(params.partitions());
    let mut moves = Vec::new();
    for p in 0..params.partitions() {
        let ideal: Vec<u16> = ring
            .chain(partition_position(p, params.partition_bits), usize::from(params.replication))
            .into_iter()
            .map(|r| staying[usize::from(r)])
            .collect();
        match same_shape {
            None => chains.push(ideal),
            Some(prev) => {
                let (chain, m) =
                    next_chain(prev, p as u32, ideal, &ids, progress, epoch, usize::from(params.replication));
                chains.push(chain);
                moves.extend(m);
            }
        }
    }
    moves.sort();
    if let Some(prev) = prev {
        if prev.params == params && prev.nodes == nodes && prev.chains == chains && prev.moves == moves {
            return Ok(None);
        }
    }
    Ok(Some(ClusterMap { format: MAP_FORMAT, epoch, params, nodes, chains, moves }))
}

/// One partition's chain and moves in the next map (see [`compute_with`]). `ideal` and the
/// result index `ids`, the next map's members.
fn next_chain(
    prev: &ClusterMap,
    partition: u32,
    ideal: Vec<u16>,
    ids: &[NodeId],
    progress: &Progress,
    epoch: u64,
    replication: usize,
) -> (Vec<u16>, Vec<Move>) {
    let index = |id: &NodeId| ids.binary_search(id).ok().map(|i| i as u16);
    let prev_id = |i: u16| &prev.nodes[usize::from(i)].id;
    let prev_moves = prev.moves_of(partition);
    // The receivers still copying, with the epoch they entered the chain at.
    let receiving: HashMap<&NodeId, u64> = prev_moves
        .iter()
        .filter(|m| progress.ready.get(&(partition, prev_id(m.to).clone())) != Some(&m.since))
        .map(|m| (prev_id(m.to), m.since))
        .collect();
    // Live members of the old chain, in its order: holders have the data, the others do not.
    let live: Vec<(u16, &NodeId)> =
        prev.chain(partition).iter().filter_map(|i| index(prev_id(*i)).map(|n| (n, prev_id(*i)))).collect();
    let holders: Vec<u16> = live.iter().filter(|(_, id)| !receiving.contains_key(id)).map(|(n, _)| *n).collect();
    let Some(&tail) = holders.last() else {
        // Every replica is gone: nothing to copy from.
        return (ideal, Vec::new());
    };
    let needed: Vec<u16> = ideal.iter().copied().filter(|i| !holders.contains(i)).collect();
    let (mut chain, moves) = if needed.is_empty() {
        // Every member the ring names has the data: the ring's chain, in the ring's order (so
        // that tails, which serve reads, spread over the servers as the ring spreads them).
        (ideal, Vec::new())
    } else {
        // Newcomers first, then receivers that continue copying (in the old order), then the
        // holders: those the ring keeps, the tail, and as many of the others (nearest the tail
        // first) as keep `replication` copies of the data in the chain until the copies are
        // done.
        let continuing: Vec<u16> = live.iter().map(|(n, _)| *n).filter(|n| needed.contains(n)).collect();
        let mut chain: Vec<u16> = needed.iter().copied().filter(|n| !continuing.contains(n)).collect();
        chain.extend(&continuing);
        let mut kept = Vec::new();
        for &h in holders.iter().rev() {
            if ideal.contains(&h) || kept.len() < replication {
                kept.push(h);
            }
        }
        chain.extend(kept.into_iter().rev());
        let moves = needed
            .iter()
            .map(|&to| {
                let since = receiving.get(&ids[usize::from(to)]).copied().filter(|_| continuing.contains(&to));
                Move { partition, to, from: tail, since: since.unwrap_or(epoch) }
            })
            .collect();
        (chain, moves)
    };
    // Holders dropped before they are known to have stopped serving reads stay, at the head
    // (see [`compute_with`]). Receivers never served the partition's reads since they entered.
    let prev_tail = prev.chain(partition).last().map(|i| prev_id(*i));
    let released = |id: &NodeId| Some(id) != prev_tail && progress.installed.get(id).is_some_and(|e| *e >= prev.epoch);
    let staying: Vec<u16> = live
        .iter()
        .filter(|(n, id)| holders.contains(n) && !chain.contains(n) && !released(id))
        .map(|(n, _)| *n)
        .collect();
    chain.splice(0..0, staying);
    (chain, moves)
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
        newer["format"] = 3.into();
        assert_eq!(ClusterMap::decode(&serde_json::to_vec(&newer).unwrap()), Err(MapError::Format(3)));
        // Format 1 (no moves) is still read.
        let mut old: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        old["format"] = 1.into();
        old.as_object_mut().unwrap().remove("moves");
        assert_eq!(ClusterMap::decode(&serde_json::to_vec(&old).unwrap()).unwrap().moves, vec![]);
        let mut bad = m.clone();
        bad.chains[5] = vec![0, 0];
        assert_eq!(ClusterMap::decode(&bad.encode()), Err(MapError::Invalid("chain names a member twice")));
        let mut bad = m.clone();
        bad.chains[5] = vec![];
        assert_eq!(ClusterMap::decode(&bad.encode()), Err(MapError::Invalid("chain of the wrong length")));
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

    /// Every move of `m` reported complete.
    fn all_ready(m: &ClusterMap) -> Progress {
        let ready =
            m.moves.iter().map(|mv| ((mv.partition, m.nodes[usize::from(mv.to)].id.clone()), mv.since)).collect();
        Progress { ready, ..Progress::default() }
    }

    #[test]
    fn codec_checks_moves() {
        let m1 = compute(None, &members(0..3), params(2)).unwrap().unwrap();
        let m2 = compute(Some(&m1), &members(0..2), params(2)).unwrap().unwrap();
        assert!(!m2.moves.is_empty());
        assert_eq!(ClusterMap::decode(&m2.encode()).unwrap(), m2);
        let mut bad = m2.clone();
        bad.moves[0].from = bad.moves[0].to;
        assert!(ClusterMap::decode(&bad.encode()).is_err());
        let mut bad = m2.clone();
        bad.moves.swap(0, 1);
        assert!(ClusterMap::decode(&bad.encode()).is_err());
        let mut bad = m2.clone();
        bad.moves[0].since = 99;
        assert!(ClusterMap::decode(&bad.encode()).is_err());
        let mut bad = m2;
        bad.moves[0].partition = 5000;
        assert!(ClusterMap::decode(&bad.encode()).is_err());
    }

    #[test]
    fn a_lost_replica_is_rebuilt_in_two_epochs() {
        let m1 = compute(None, &members(0..3), params(2)).unwrap().unwrap();
        assert!(m1.moves.is_empty());
        // s02 dies: each of its chains gets a newcomer at the head, copying from the survivor.
        let m2 = compute(Some(&m1), &members(0..2), params(2)).unwrap().unwrap();
        let gone = m1.node_index(&NodeId("s02".into())).unwrap();
        let affected: Vec<usize> = (0..m1.chains.len()).filter(|p| m1.chains[*p].contains(&gone)).collect();
        assert_eq!(m2.moves.len(), affected.len());
        for &p in &affected {
            let c = chains_by_id(&m2)[p].clone();
            let mv = m2.moves_of(p as u32);
            assert_eq!(mv.len(), 1);
            assert_eq!(mv[0].since, 2);
            assert_eq!(m2.chains[p][0], mv[0].to, "the receiver is the head");
            assert_eq!(*m2.chains[p].last().unwrap(), mv[0].from, "the source is the tail");
            assert!(chains_by_id(&m1)[p].contains(c.last().unwrap()), "the tail had the data");
        }
        // Nothing changes until the copies are reported ready; a ready record of another move
        // (another epoch) does not count.
        assert_eq!(compute(Some(&m2), &members(0..2), params(2)).unwrap(), None);
        let mut stale = all_ready(&m2);
        stale.ready.values_mut().for_each(|since| *since = 1);
        assert_eq!(compute_with(Some(&m2), &members(0..2), params(2), &stale).unwrap(), None);
        // Ready: the moves end, every chain is the ring's, of two members.
        let m3 = compute_with(Some(&m2), &members(0..2), params(2), &all_ready(&m2)).unwrap().unwrap();
        assert!(m3.moves.is_empty());
        assert!(m3.chains.iter().all(|c| c.len() == 2));
        assert_eq!(compute(Some(&m3), &members(0..2), params(2)).unwrap(), None);
    }

    #[test]
    fn rf1_join_keeps_the_old_owner_as_tail_until_the_copy_is_done() {
        let m1 = compute(None, &members(0..2), params(1)).unwrap().unwrap();
        let m2 = compute(Some(&m1), &members(0..3), params(1)).unwrap().unwrap();
        let new = m2.node_index(&NodeId("s02".into())).unwrap();
        let taken: Vec<usize> = (0..m2.chains.len()).filter(|p| m2.chains[*p].contains(&new)).collect();
        assert!(!taken.is_empty());
        for &p in &taken {
            // [newcomer, old owner]: writes reach both, reads the old owner.
            assert_eq!(m2.chains[p].len(), 2);
            assert_eq!(m2.chains[p][0], new);
            assert_eq!(chains_by_id(&m2)[p][1], chains_by_id(&m1)[p][0]);
        }
        let m3 = compute_with(Some(&m2), &members(0..3), params(1), &all_ready(&m2)).unwrap().unwrap();
        for &p in &taken {
            // The newcomer is the tail; the old owner stays at the head (every write passes
            // it) until it reports having installed this map, in which it is not the tail.
            assert_eq!(m3.chains[p].len(), 2);
            assert_eq!(chains_by_id(&m3)[p][0], chains_by_id(&m1)[p][0]);
            assert_eq!(m3.chains[p][1], new);
        }
        assert_eq!(compute_with(Some(&m3), &members(0..3), params(1), &all_ready(&m2)).unwrap(), None);
        // A report of an older map does not release it.
        let mut installed = installed_by_all(&m3, &members(0..3));
        installed.installed.values_mut().for_each(|e| *e -= 1);
        assert_eq!(compute_with(Some(&m3), &members(0..3), params(1), &installed).unwrap(), None);
        let m4 = compute_with(Some(&m3), &members(0..3), params(1), &installed_by_all(&m3, &members(0..3)))
            .unwrap()
            .unwrap();
        for &p in &taken {
            assert_eq!(m4.chains[p], vec![new]);
        }
        assert_eq!(m4.chains, compute(None, &members(0..3), params(1)).unwrap().unwrap().chains);
    }

    #[test]
    fn a_drained_server_leaves_every_chain_once_its_data_is_copied() {
        let m1 = compute(None, &members(0..3), params(2)).unwrap().unwrap();
        let leaving = Progress { leaving: [NodeId("s01".into())].into(), ..Progress::default() };
        let m2 = compute_with(Some(&m1), &members(0..3), params(2), &leaving).unwrap().unwrap();
        let s1 = m2.node_index(&NodeId("s01".into())).unwrap();
        // It stays while its replacements copy; it is never a receiver.
        assert!(m2.moves.iter().all(|m| m.to != s1));
        assert!(m2.chains.iter().any(|c| c.contains(&s1)));
        let mut done = all_ready(&m2);
        done.leaving = leaving.leaving.clone();
        let m3 = compute_with(Some(&m2), &members(0..3), params(2), &done).unwrap().unwrap();
        // Copied: it is no chain's tail, and stays at the head of the chains it was in until it
        // reports having installed that map.
        for (c2, c3) in m2.chains.iter().zip(&m3.chains) {
            if c2.contains(&s1) {
                assert_eq!(c3[0], s1);
                assert_eq!(c3.len(), 3);
            } else {
                assert_eq!(c2, c3);
            }
        }
        assert_eq!(m3.partitions_of(&NodeId("s01".into())).1, 0);
        done.installed = installed_by_all(&m3, &members(0..3)).installed;
        let m4 = compute_with(Some(&m3), &members(0..3), params(2), &done).unwrap().unwrap();
        assert!(m4.chains.iter().all(|c| !c.contains(&s1) && c.len() == 2));
        assert_eq!(m4.partitions_of(&NodeId("s01".into())), (0, 0));
    }

    /// Every one of `live` reports having installed `m`.
    fn installed_by_all(m: &ClusterMap, live: &[Member]) -> Progress {
        Progress { installed: live.iter().map(|l| (l.id.clone(), m.epoch)).collect(), ..Progress::default() }
    }

    #[test]
    fn a_source_that_dies_is_replaced_and_a_receiver_that_dies_is_forgotten() {
        let m1 = compute(None, &members(0..3), params(2)).unwrap().unwrap();
        let m2 = compute(Some(&m1), &members(0..4), params(2)).unwrap().unwrap();
        let mv = *m2.moves.iter().find(|m| m2.chains[m.partition as usize].len() == 3).unwrap();
        let p = mv.partition as usize;
        let from = m2.nodes[usize::from(mv.from)].id.clone();
        let to = m2.nodes[usize::from(mv.to)].id.clone();
        // The source dies: the receiver keeps its `since` and copies from the new tail.
        let rest: Vec<Member> = members(0..4).into_iter().filter(|m| m.id != from).collect();
        let m3 = compute(Some(&m2), &rest, params(2)).unwrap().unwrap();
        let mv3 = m3.move_to(p as u32, &to).unwrap();
        assert_eq!(mv3.since, mv.since);
        assert_ne!(m3.nodes[usize::from(mv3.from)].id, from);
        assert_eq!(m3.chains[p].last(), Some(&mv3.from));
        // The receiver dies instead: its move is dropped, the chain is served as before.
        let rest: Vec<Member> = members(0..4).into_iter().filter(|m| m.id != to).collect();
        let m4 = compute(Some(&m2), &rest, params(2)).unwrap().unwrap();
        assert!(m4.moves_of(p as u32).is_empty());
        assert_eq!(chains_by_id(&m4)[p], chains_by_id(&m1)[p]);
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


        /// Through any sequence of joins, deaths, drains and finished copies, every chain's tail
        /// (which serves reads) and every move's source has all of the partition's data, as
        /// long as some member that has it is alive; and a live member that has the data
        /// leaves a chain only when it was not its tail and has reported installing the map
        /// that said so (members report installs promptly in some steps, late in others).
        #[test]
        fn the_tail_always_has_the_data(
            steps in proptest::collection::vec((0u8..4, 0usize..8, any::<bool>()), 1..24),
            rf in 1u8..=3,
        ) {
            let mut live: BTreeSet<usize> = (0..3).collect();
            let mut leaving: BTreeSet<NodeId> = BTreeSet::new();
            let mut m = compute(None, &members(live.clone()), params(rf)).unwrap().unwrap();
            let mut installed: HashMap<NodeId, u64> = HashMap::new();
            // Per partition: the members that have its data.
            let mut has: Vec<BTreeSet<NodeId>> = chains_by_id(&m).into_iter().map(|c| c.into_iter().collect()).collect();
            for (what, who, prompt) in steps {
                if prompt {
                    installed.extend(live.iter().map(|i| (member(*i).id, m.epoch)));
                }
                let mut progress = Progress { leaving: leaving.clone(), installed: installed.clone(), ..Progress::default() };
                match what {
                    0 => { live.insert(who); }
                    1 if live.len() > 1 => { live.remove(&who); }
                    2 => { leaving.insert(member(who).id); progress.leaving = leaving.clone(); }
                    _ => {
                        progress.ready = all_ready(&m).ready;
                        for mv in &m.moves {
                            has[mv.partition as usize].insert(m.nodes[usize::from(mv.to)].id.clone());
                        }
                    }
                }
                let alive: BTreeSet<NodeId> = live.iter().map(|i| member(*i).id).collect();
                has.iter_mut().for_each(|h| h.retain(|id| alive.contains(id)));
                if let Some(next) = compute_with(Some(&m), &members(live.clone()), params(rf), &progress).unwrap() {
                    prop_assert_eq!(next.epoch, m.epoch + 1);
                    for (p, (before, after)) in chains_by_id(&m).iter().zip(chains_by_id(&next)).enumerate() {
                        // (Receivers of a move never served the partition's reads since they entered.)
                        let receiver = |id: &NodeId| m.move_to(p as u32, id).is_some();
                        for gone in before.iter().filter(|id| alive.contains(*id) && !after.contains(*id) && !receiver(id)) {
                            prop_assert!(before.last() != Some(gone), "partition {} lost its live tail {}", p, gone);
                            prop_assert!(
                                installed.get(gone).is_some_and(|e| *e >= m.epoch),
                                "{} left partition {} before installing epoch {}", gone, p, m.epoch
                            );
                        }
                    }
                    m = next;
                }
                for (p, c) in chains_by_id(&m).iter().enumerate() {
                    // A member that left the chain no longer receives its writes.
                    has[p].retain(|id| c.contains(id));
                    if has[p].is_empty() {
                        // Every replica lost: the ring's chain starts afresh.
                        has[p] = c.iter().cloned().collect();
                        continue;
                    }
                    prop_assert!(has[p].contains(c.last().unwrap()), "partition {} tail {:?} lacks the data", p, c.last());
                    for mv in m.moves_of(p as u32) {
                        prop_assert!(has[p].contains(&m.nodes[usize::from(mv.from)].id));
                        prop_assert!(!has[p].contains(&m.nodes[usize::from(mv.to)].id));
                    }
                    let distinct: BTreeSet<&NodeId> = c.iter().collect();
                    prop_assert_eq!(distinct.len(), c.len());
                    // Up to `replication` receivers and as many holders, and (with prompt
                    // reports) at most one former tail waiting to report.
                    if prompt {
                        prop_assert!(c.len() <= 2 * usize::from(rf) + 1, "partition {} chain {:?}", p, c);
                    }
                }
                prop_assert_eq!(ClusterMap::decode(&m.encode()), Ok(m.clone()));
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_decoders(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = ClusterMap::decode(&b);
            let _ = Member::decode(&b);
        }
    }
}
