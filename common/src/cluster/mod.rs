//! Many servers: the cluster map the servers and clients agree on, and how it is kept in etcd.
//!
//! * [`map`]: partitions of the key space → replica chains, at an epoch; computing the next map
//!   when servers join or leave; its versioned JSON codec;
//! * [`ring`]: the consistent-hash ring of virtual nodes the chains come from;
//! * [`url`]: `etcd://HOST:PORT[/prefix]` and the keys under the prefix;
//! * [`etcd`]: a small client of etcd's v3 JSON gateway (reads, compare-and-swap, leases,
//!   watches).

pub mod etcd;
pub mod map;
pub mod ring;
pub mod url;

pub use map::{
    compute, compute_with, partition_of, partition_of_table_key, ClusterMap, MapError, MapParams, Member, Move, NodeId,
    Progress, Role,
};
pub use url::ClusterUrl;
