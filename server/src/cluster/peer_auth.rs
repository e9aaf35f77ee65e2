//! Which connections may send the requests that only cluster members send: forwarded writes
//! ([`flags::FORWARDED`]), copy reads ([`flags::COPY`]) and key scans ([`Op::Scan`]).
//!
//! The NIC's shared secret admits clients and members alike, so it cannot tell them apart. A
//! client holding it could otherwise send a write straight to a tail as if forwarded, bypassing
//! the head (the chain's members would then hold different values for the key, and the
//! acknowledgement rule would not hold), read a key at a member that is not its tail (a copy
//! read, which may be behind the tail), or list every key of a server. With a peer secret (`peer_secret_file`), a member opens each
//! connection to another member with a HELLO that carries [`flags::PEER`] and the secret
//! ([`introduce`]); the receiver marks that connection as a member's, and refuses member
//! requests on every other one with `BadRequest` (counted in `peer_requests_refused`). The
//! mark ends with the connection.
//!
//! The peer secret must differ from the NIC's (the configuration refuses the same file), and it
//! crosses the connection as the NIC's does: it keeps clients out, not an observer of the
//! members' own network. Without a peer secret every connection may send member requests, as
//! before there was one (the README's "Server-to-server trust" says which to choose).

use crate::stats::StatsSource;
use parking_lot::Mutex;
use scalio_common::fabric::{CloseReason, FabricError, PeerId, QueuePair, Secret};
use scalio_common::rpc::{flags, Op, Request, Response, Status};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Longest wait for the answer to a member's HELLO.
pub const INTRODUCE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    rejected: AtomicU64,
    refused: AtomicU64,
}

/// The connections that proved they are members', on the receiving side.
#[derive(Debug)]
pub struct PeerAuth {
    /// `None`: no secret is asked for, and every connection may send member requests.
    secret: Option<Secret>,
    members: Mutex<HashSet<PeerId>>,
    counters: Arc<Counters>,
}

impl PeerAuth {
    pub fn new(secret: Option<Secret>) -> PeerAuth {
        PeerAuth { secret, members: Mutex::new(HashSet::new()), counters: Arc::default() }
    }

    /// A HELLO with [`flags::PEER`] on connection `peer`, presenting `presented`: whether the
    /// connection is now a member's. With no secret configured there is nothing to prove.
    pub fn hello(&self, peer: PeerId, presented: &[u8]) -> bool {
        let Some(secret) = &self.secret else { return true };
        if secret.matches(presented) {
            self.members.lock().insert(peer);
            self.counters.accepted.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            self.counters.rejected.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// Whether connection `peer` may send a member request; a refusal is counted.
    pub fn allows(&self, peer: PeerId) -> bool {
        if self.secret.is_none() || self.members.lock().contains(&peer) {
            return true;
        }
        self.counters.refused.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// Connection `peer` closed: its mark goes with it (ids are not reused, but the set must not
    /// grow with every connection a member ever opened).
    pub fn closed(&self, peer: PeerId) {
        self.members.lock().remove(&peer);
    }

    /// Counters for STATS.
    pub fn stats_source(&self) -> Arc<dyn StatsSource> {
        Arc::new(PeerAuthStats(self.counters.clone()))
    }
}

/// Whether a decoded request is one only members send.
pub fn is_member_request(req: &Request<'_>) -> bool {
    req.op == Op::Scan || req.flags & (flags::FORWARDED | flags::COPY) != 0
}

/// Tells the member behind `qp` that this connection is a member's, with the cluster's peer
/// secret. A refusal (a wrong secret) is [`FabricError::Refused`] with
/// [`CloseReason::Unauthenticated`]; the connection is then still a client's.
pub fn introduce(qp: &dyn QueuePair, secret: &Secret) -> Result<(), FabricError> {
    let hello = Request::new(Op::Hello, b"", secret.as_bytes()).with_flags(flags::PEER).to_vec();
    let answer = qp.call(&hello).wait_timeout(INTRODUCE_TIMEOUT)?;
    match Response::decode(&answer) {
        Ok(r) if r.status == Status::Ok => Ok(()),
        Ok(_) => Err(FabricError::Refused(CloseReason::Unauthenticated)),
        Err(_) => Err(FabricError::Refused(CloseReason::ProtocolViolation)),
    }
}

struct PeerAuthStats(Arc<Counters>);

impl StatsSource for PeerAuthStats {
    fn append(&self, out: &mut Vec<(String, u64)>) {
        let c = &self.0;
        out.push(("peer_hellos_accepted".into(), c.accepted.load(Ordering::Relaxed)));
        out.push(("peer_hellos_rejected".into(), c.rejected.load(Ordering::Relaxed)));
        out.push(("peer_requests_refused".into(), c.refused.load(Ordering::Relaxed)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_connections_that_presented_the_secret_may_send_member_requests() {
        let auth = PeerAuth::new(Some(Secret::new(b"members only".to_vec()).unwrap()));
        let (member, client) = (PeerId(1), PeerId(2));
        assert!(!auth.allows(member), "nothing proven yet");
        assert!(!auth.hello(client, b"members only!"));
        assert!(!auth.hello(client, b""));
        assert!(auth.hello(member, b"members only"));
        assert!(auth.allows(member));
        assert!(!auth.allows(client));
        auth.closed(member);
        assert!(!auth.allows(member), "the mark ends with the connection");
        let mut stats = Vec::new();
        auth.stats_source().append(&mut stats);
        let get = |n: &str| stats.iter().find(|(k, _)| k == n).unwrap().1;
        assert_eq!((get("peer_hellos_accepted"), get("peer_hellos_rejected"), get("peer_requests_refused")), (1, 2, 3));
        // Without a secret, every connection may.
        let open = PeerAuth::new(None);
        assert!(open.allows(client));
        assert!(open.hello(client, b"anything"));
    }

    #[test]
    fn member_requests_are_scans_forwarded_writes_and_copy_reads() {
        let put = Request::new(Op::Put, b"k", b"v");
        assert!(!is_member_request(&put));
        assert!(!is_member_request(&Request::new(Op::Get, b"k", b"")));
        assert!(is_member_request(&put.with_flags(flags::FORWARDED)));
        assert!(is_member_request(&Request::new(Op::Get, b"k", b"").with_flags(flags::COPY)));
        assert!(is_member_request(&Request::new(Op::Scan, b"", b"")));
    }
}
