//! The server's side of a cluster (`scalio-server --cluster etcd://...`).
//!
//! * [`ownership`]: the map this server judges requests by, and the "wrong owner, epoch N"
//!   verdict;
//! * [`chain`]: chain replication, forwarding durable writes to the next member of the chain;
//! * [`mover`]: copying the partitions a map moves to this server, and reporting them ready;
//! * [`received`]: the keys written here during a move, so that a copy never overwrites them;
//! * [`applied`]: recent writes by request id, so that a retried write is applied once;
//! * [`doubts`] and [`resolver`]: writes applied here that their chain did not complete, whose
//!   keys serve no read until they hold the value that stands;
//! * [`agent`]: registration under a kept-alive etcd lease, and keeping the map up to date:
//!   every member reconciles it with compare-and-swap, so no election is needed.

pub mod agent;
pub mod applied;
pub mod chain;
pub mod doubts;
pub mod mover;
pub mod ownership;
pub mod peer_auth;
pub mod received;
pub mod resolver;
pub mod trace;

pub use agent::{Agent, AgentConfig, AgentError, EtcdReady};
pub use chain::{AnswerHook, Forwarder, PeerConnector, TcpPeers};
pub use mover::{MoveCounters, MoveError, Mover, ReadySink, ReportError};
pub use ownership::{Next, Ownership};
pub use peer_auth::PeerAuth;
pub use resolver::Resolver;

use crate::stats::StatsSource;
use std::sync::Arc;

/// The cluster counters in STATS: the map epoch, the partitions this server is in (and the
/// tail of), and the requests it turned away.
pub struct ClusterStats(pub Arc<Ownership>);

impl StatsSource for ClusterStats {
    fn append(&self, out: &mut Vec<(String, u64)>) {
        let own = &self.0;
        let (member, tail) = own.map().map_or((0, 0), |m| m.partitions_of(own.me()));
        out.push(("cluster_epoch".into(), own.epoch()));
        out.push(("cluster_partitions".into(), member as u64));
        out.push(("cluster_partitions_tail".into(), tail as u64));
        out.push(("cluster_wrong_owner".into(), own.wrong_owner_replies()));
        out.push(("cluster_cache_slots_dropped".into(), own.cache_slots_dropped()));
        out.push(("cluster_cache_slots_fenced".into(), own.cache_slots_fenced()));
        out.push(("cluster_retried_writes".into(), own.retried_writes()));
        let d = own.doubt_counters();
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        out.push(("cluster_doubts".into(), own.doubts().lock().len() as u64));
        out.push(("cluster_doubts_raised".into(), load(&d.raised)));
        out.push(("cluster_doubts_settled_from_peer".into(), load(&d.settled_from_peer)));
        out.push(("cluster_doubts_kept".into(), load(&d.kept)));
        out.push(("cluster_doubts_forgotten".into(), load(&d.forgotten)));
        out.push(("cluster_doubt_reads_refused".into(), load(&d.reads_refused)));
        out.push(("cluster_doubt_writes_refused".into(), load(&d.writes_refused)));
    }
}
