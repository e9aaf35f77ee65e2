//! The consistent-hash ring of virtual nodes, and the chain it gives each partition.
//!
//! Every node places `vnodes` points on a 64-bit ring, at `xxh64(id ‖ i, RING_SEED)`. A
//! partition's chain is found by walking clockwise from the partition's position and taking the
//! first `replication` distinct nodes met. Because a node's points depend only on its own id,
//! a join or a leave only changes the chains whose walk meets that node's points: a joining node
//! enters some chains (and pushes their last member out), a leaving node drops out of the chains
//! it was in (and the next distinct node moves up). Nothing else moves.

use super::map::NodeId;
use xxhash_rust::xxh64::xxh64;

/// Seed of the vnode placement hash.
pub const RING_SEED: u64 = 0x51ca_710c_4a1b;

/// A ring built from a set of nodes (given as indices into the caller's node list).
#[derive(Debug, Clone)]
pub struct Ring {
    /// (point, node index), sorted by point then index (ties are astronomically rare and
    /// resolved deterministically).
    points: Vec<(u64, u16)>,
    nodes: usize,
}

impl Ring {
    /// The ring of `ids` with `vnodes` points each.
    pub fn new(ids: &[NodeId], vnodes: u32) -> Ring {
        let mut points = Vec::with_capacity(ids.len() * vnodes as usize);
        for (n, id) in ids.iter().enumerate() {
            for i in 0..vnodes {
                points.push((vnode_point(id, i), n as u16));
            }
        }
        points.sort_unstable();
        Ring { points, nodes: ids.len() }
    }

    /// The first `replication` distinct nodes clockwise from `position` (fewer if the ring has
    /// fewer nodes). Empty for an empty ring.
    pub fn chain(&self, position: u64, replication: usize) -> Vec<u16> {
        let want = replication.min(self.nodes);
        let mut chain = Vec::with_capacity(want);
        if want == 0 || self.points.is_empty() {
            return chain;
        }
        let start = self.points.partition_point(|(p, _)| *p < position);
        for k in 0..self.points.len() {
            let (_, n) = self.points[(start + k) % self.points.len()];
            if !chain.contains(&n) {
                chain.push(n);
                if chain.len() == want {
                    break;
                }
            }
        }
        chain
    }
}

/// Where a node's `i`-th virtual node sits on the ring.
pub fn vnode_point(id: &NodeId, i: u32) -> u64 {
    let mut b = Vec::with_capacity(id.0.len() + 4);
    b.extend_from_slice(id.0.as_bytes());
    b.extend_from_slice(&i.to_le_bytes());
    xxh64(&b, RING_SEED)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<NodeId> {
        (0..n).map(|i| NodeId(format!("node-{i}"))).collect()
    }

    #[test]
    fn chains_are_distinct_nodes_of_the_requested_length() {
        let ring = Ring::new(&ids(4), 16);
        for pos in [0, 1 << 20, u64::MAX / 3, u64::MAX] {
            for rf in 1..=5 {
                let c = ring.chain(pos, rf);
                assert_eq!(c.len(), rf.min(4));
                let mut d = c.clone();
                d.sort_unstable();
                d.dedup();
                assert_eq!(d.len(), c.len(), "duplicate node in {c:?}");
            }
        }
        assert!(Ring::new(&[], 16).chain(5, 3).is_empty());
    }

    #[test]
    fn the_walk_wraps_around() {
        let ring = Ring::new(&ids(3), 4);
        let last = ring.points.last().unwrap().0;
        // A position past the last point starts again at the first one.
        if last < u64::MAX {
            assert_eq!(ring.chain(last + 1, 1), vec![ring.points[0].1]);
        }
    }
}
