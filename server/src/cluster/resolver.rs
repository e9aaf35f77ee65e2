//! The resolver thread: settles the keys in doubt on this member (see [`super::doubts`]) by
//! reading each one's value from the member whose value stands, and storing it here through
//! the worker that owns the key's SSD.
//!
//! Whose value stands, by the map held:
//! * the key's tail, if it is another member: it serves the key's reads, so its value is what
//!   clients see; every other member converges to it;
//! * if this member is the tail: the last member that was after it when it passed the doubtful
//!   write on and is still in the chain (the write was refused or lost at or before it, so it
//!   holds what the chain held without the write). A candidate that is itself in doubt takes
//!   the tail's value in turn, so it is passed over; with none left, the tail keeps its own
//!   value.
//!
//! A member that answers "not yet" (it holds an older map, or a write it took while not the
//! tail is still waiting) is asked again on a later round. Rounds run every [`ROUND`] while
//! doubts are held.

use super::doubts::{Doubt, IN_DOUBT};
use super::mover::LocalWrites;
use super::{Ownership, PeerConnector};
use crate::worker::{CopyResult, SettleWrite, WorkerEvent};
use scalio_common::cluster::{ClusterMap, Member, NodeId};
use scalio_common::fabric::{rendezvous, QueuePair};
use scalio_common::rpc::{flags, Op, Request, Response, Status};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Pause between rounds.
pub const ROUND: Duration = Duration::from_millis(5);
/// Keys settled per round at most.
const PER_ROUND: usize = 256;
/// Longest wait for a member's answer or the local write.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// The resolver thread; stops when dropped.
pub struct Resolver {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Resolver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Ctx {
    own: Arc<Ownership>,
    peers: Arc<dyn PeerConnector>,
    writes: LocalWrites,
    /// Connections to the members read from, by id (replaced if the address changes).
    links: HashMap<NodeId, (String, Arc<dyn QueuePair>)>,
}

impl Resolver {
    pub(crate) fn start(
        own: Arc<Ownership>,
        peers: Arc<dyn PeerConnector>,
        writes: LocalWrites,
    ) -> std::io::Result<Resolver> {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let mut ctx = Ctx { own, peers, writes, links: HashMap::new() };
        let thread = std::thread::Builder::new().name("cluster-resolver".into()).spawn(move || {
            while !s.load(Ordering::Relaxed) {
                std::thread::sleep(ROUND);
                round(&mut ctx);
            }
        })?;
        Ok(Resolver { stop, thread: Some(thread) })
    }
}

/// Where the value that stands for a key in doubt is: the members to read it from, in order,
/// passing over those in doubt too; and whether, all of them in doubt (or none left), this
/// member keeps its own value (only the tail does: the others wait for it).
#[derive(Debug, PartialEq, Eq)]
struct Source<'a> {
    candidates: Vec<&'a Member>,
    may_keep: bool,
}

fn source_of<'a>(map: &'a ClusterMap, me: &NodeId, key: &[u8], doubt: &Doubt) -> Source<'a> {
    let chain: Vec<&Member> = map.chain(map.partition_of(key)).iter().map(|i| &map.nodes[usize::from(*i)]).collect();
    match chain.last() {
        Some(tail) if tail.id != *me => Source { candidates: vec![tail], may_keep: false },
        _ => Source {
            candidates: doubt
                .downstream
                .iter()
                .rev()
                .filter(|id| *id != me)
                .filter_map(|id| chain.iter().find(|m| m.id == *id).copied())
                .collect(),
            may_keep: true,
        },
    }
}

/// What a member answered a copy's read of a key.
enum Read {
    Value(Option<Vec<u8>>),
    /// It holds the key in doubt too.
    InDoubt,
    /// Not now (an older map, a write waiting, unreachable): ask again later.
    Later,
}

fn read(ctx: &mut Ctx, member: &Member, key: &[u8], epoch: u64) -> Read {
    let qp = match ctx.links.get(&member.id).filter(|(fabric, _)| *fabric == member.fabric) {
        Some((_, qp)) => qp.clone(),
        None => match ctx.peers.connect(member) {
            Ok(qp) => {
                ctx.links.insert(member.id.clone(), (member.fabric.clone(), qp.clone()));
                qp
            }
            Err(e) => {
                tracing::debug!(to = %member.id, error = %e, "resolver: cannot reach a member");
                return Read::Later;
            }
        },
    };
    let req = Request::new(Op::Get, key, b"").with_flags(flags::COPY).with_epoch(Some(epoch)).to_vec();
    let bytes = match rendezvous::call_blocking(&*qp, &req, CALL_TIMEOUT) {
        Ok(b) => b,
        Err(e) => {
            tracing::debug!(to = %member.id, error = %e, "resolver: a copy read failed");
            ctx.links.remove(&member.id);
            return Read::Later;
        }
    };
    match Response::decode(&bytes) {
        Ok(r) if r.status == Status::Ok => Read::Value(Some(r.body.to_vec())),
        Ok(r) if r.status == Status::NotFound => Read::Value(None),
        Ok(r) if r.status == Status::Unavailable && r.body == IN_DOUBT => Read::InDoubt,
        _ => Read::Later,
    }
}

/// One round: forgets the doubts of partitions this member left, then settles what it can.
fn round(ctx: &mut Ctx) {
    if ctx.own.doubts().lock().is_empty() {
        return;
    }
    let Some(map) = ctx.own.map() else { return };
    let own = ctx.own.clone();
    let me = own.me();
    let counters = own.doubt_counters();
    let forgotten = own.doubts().lock().retain(|p| map.in_chain(p, me) && map.move_to(p, me).is_none());
    counters.forgotten.fetch_add(forgotten as u64, Ordering::Relaxed);
    let pending = own.doubts().lock().pending(PER_ROUND);
    for (key, doubt) in pending {
        let source = source_of(&map, me, &key, &doubt);
        let mut value = None;
        let mut later = !source.may_keep;
        for m in source.candidates {
            match read(ctx, m, &key, map.epoch) {
                Read::Value(v) => {
                    value = Some(v);
                    break;
                }
                Read::InDoubt => continue,
                Read::Later => {
                    later = true;
                    break;
                }
            }
        }
        match value {
            Some(v) => {
                let (done, rx) = crossbeam_channel::bounded(1);
                let settle = SettleWrite { key: key.clone(), value: v, seq: doubt.seq, done };
                if ctx.writes.send(&key, WorkerEvent::Settle(settle)).is_err() {
                    return;
                }
                let result = rx.recv_timeout(CALL_TIMEOUT).unwrap_or(CopyResult::Failed(Status::Unavailable));
                super::trace::event(me, || format!("settled {} -> {result:?}", super::trace::text(&key)));
            }
            // Every candidate is in doubt too (they take this tail's value), or none is left.
            None if !later && own.doubts().lock().keep(&key, doubt.seq) => {
                counters.kept.fetch_add(1, Ordering::Relaxed);
                super::trace::event(me, || format!("kept {}", super::trace::text(&key)));
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scalio_common::cluster::{compute, MapParams};

    fn member(i: usize) -> Member {
        Member {
            id: NodeId(format!("s{i}")),
            fabric: format!("mem:s{i}"),
            target: None,
            subsystems: vec![],
            capacity_bytes: 1 << 20,
        }
    }

    #[test]
    fn the_tail_stands_and_a_tail_in_doubt_asks_who_was_after_it() {
        let members: Vec<Member> = (0..3).map(member).collect();
        let params = MapParams { replication: 3, ..MapParams::default() };
        let map = compute(None, &members, params).unwrap().unwrap();
        let key = b"k";
        let chain: Vec<NodeId> =
            map.chain(map.partition_of(key)).iter().map(|i| map.nodes[usize::from(*i)].id.clone()).collect();
        let doubt = |downstream: Vec<NodeId>| Doubt { seq: 1, partition: map.partition_of(key), downstream };
        let ids = |s: Source<'_>| (s.candidates.into_iter().map(|m| m.id.clone()).collect::<Vec<_>>(), s.may_keep);
        // The head and the middle read from the tail, whatever was after them.
        for me in &chain[..2] {
            assert_eq!(ids(source_of(&map, me, key, &doubt(vec![]))), (vec![chain[2].clone()], false));
        }
        // The tail reads from the members that were after it, last first, if still in the chain.
        let gone = NodeId("s9".into());
        let d = doubt(vec![chain[0].clone(), gone, chain[1].clone()]);
        assert_eq!(ids(source_of(&map, &chain[2], key, &d)), (vec![chain[1].clone(), chain[0].clone()], true));
        // Nobody after it left: it keeps its own value.
        assert_eq!(ids(source_of(&map, &chain[2], key, &doubt(vec![]))), (vec![], true));
    }
}
