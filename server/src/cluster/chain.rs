//! Chain replication: passing a write this server has made durable to the next member of the
//! key's chain, and answering its sender only with the rest of the chain's answer.
//!
//! A write enters the chain at its head. Every member makes it durable in its store first (the
//! store invalidates the key's cache slots before it completes a write, which only matters at
//! the tail: the other members never reserve slots, since META_GET goes to the tail), then
//! forwards it — the same request, with [`flags::FORWARDED`] and the epoch of the map the
//! successor was chosen by — and relays the successor's response as its own. So the head
//! answers the client only after the tail has made the write durable and invalidated its cache,
//! and a write acknowledged to a client is on every member of the chain.
//!
//! **Order.** Each successor gets one connection, fed by one thread in the order writes
//! complete here. A store completes writes to one key in arrival order, and the writes to one
//! key come from one worker, so every member applies a key's writes in the head's order.
//!
//! **Failures.** A successor that cannot be reached (or does not answer within
//! [`FORWARD_TIMEOUT`]) may be dead: the write is refused with "wrong owner, epoch E+1" (E the
//! stamp), which sends the client to wait for the map that drops the dead member, and retry.
//! The write stays durable on the members before the break, unacknowledged: each of them is
//! told (through its [`AnswerHook`]) and holds the key in doubt until it holds the value that
//! stands ([`super::doubts`]).

use super::ownership::Next;
use super::Ownership;
use crate::stats::StatsSource;
use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use scalio_common::cluster::{Member, NodeId};
use scalio_common::fabric::tcp::{ConnectOptions, TcpQueuePair};
use scalio_common::fabric::{rendezvous, Completion, FabricError, QueuePair, Responder, Secret};
use scalio_common::rpc::{flags, Op, Request, Response, Status, WrongOwner};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest wait for a successor's answer before the chain is taken as broken.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens a connection to another member of the cluster.
pub trait PeerConnector: Send + Sync {
    fn connect(&self, member: &Member) -> Result<Arc<dyn QueuePair>, FabricError>;
}

/// Connects over the software NIC to the member's fabric address (with this server's NIC
/// secret: the members of a cluster share one), and introduces the connection as a member's
/// with the cluster's peer secret if there is one ([`super::peer_auth`]).
pub struct TcpPeers {
    pub connect: ConnectOptions,
    pub peer_secret: Option<Secret>,
}

impl PeerConnector for TcpPeers {
    fn connect(&self, member: &Member) -> Result<Arc<dyn QueuePair>, FabricError> {
        let qp = TcpQueuePair::connect_with(member.fabric.as_str(), &self.connect)?;
        if let Some(secret) = &self.peer_secret {
            super::peer_auth::introduce(&qp, secret)?;
        }
        Ok(Arc::new(qp))
    }
}

/// Told the rest of the chain's answer to a write: `Some(status)` if the tail applied it
/// (`Ok` or `NotFound`), `None` if it was refused or the chain broke (the members after this one
/// may not have it).
pub type AnswerHook = Box<dyn FnOnce(Option<Status>) + Send>;

/// A write waiting for the rest of its chain.
struct Job {
    /// The request as forwarded (FORWARDED flag, successor's epoch).
    request: Vec<u8>,
    epoch: u64,
    op: Op,
    responder: Responder,
    on_answer: Option<AnswerHook>,
}

impl Job {
    /// Relays `bytes` (the successor's answer) to the sender, telling the hook.
    fn answer(mut self, bytes: &[u8]) {
        let status = Response::decode(bytes).ok().map(|r| r.status);
        if let Some(hook) = self.on_answer.take() {
            hook(status.filter(|s| matches!(s, Status::Ok | Status::NotFound)));
        }
        self.responder.reply(bytes);
    }
}

/// The connection to one successor: a thread sends jobs in order, another waits for their
/// answers in the same order and relays them.
struct Link {
    fabric: String,
    jobs: Sender<Job>,
}

#[derive(Default)]
struct Counters {
    forwarded: AtomicU64,
    acknowledged: AtomicU64,
    broken: AtomicU64,
}

/// Forwards durable writes down their chains.
pub struct Forwarder {
    own: Arc<Ownership>,
    peers: Arc<dyn PeerConnector>,
    links: Mutex<HashMap<NodeId, Link>>,
    counters: Arc<Counters>,
}

fn respond(responder: Responder, status: Status, op: Op, body: &[u8]) {
    responder.reply(&Response::to_vec(status, op, body));
}

impl Forwarder {
    pub fn new(own: Arc<Ownership>, peers: Arc<dyn PeerConnector>) -> Arc<Forwarder> {
        Arc::new(Forwarder { own, peers, links: Mutex::new(HashMap::new()), counters: Arc::default() })
    }

    /// A write (`request`, as received, accepted by the map of epoch `accepted`) is durable here
    /// with the local answer `local`: answer it now if this server is the key's tail, or pass
    /// it on and answer with the successor's answer (or refuse it if the key's chain changed
    /// since it was accepted, see [`Ownership::next_in_chain`]).
    ///
    /// `on_answer` is told the answer that goes back (this server's own if it is the tail).
    pub fn after_durable(
        &self,
        request: &[u8],
        accepted: u64,
        local: Vec<u8>,
        op: Op,
        responder: Responder,
        on_answer: Option<AnswerHook>,
    ) {
        let Ok(req) = Request::decode(request) else {
            if let Some(hook) = on_answer {
                hook(None);
            }
            return respond(responder, Status::BadRequest, op, b"malformed request");
        };
        let next = self.own.next_in_chain(req.key, accepted, Instant::now());
        super::trace::event(self.own.me(), || {
            let to = match &next {
                Next::Forward { to, epoch } => format!("forward to {} at {epoch}", to.id),
                other => format!("{other:?}"),
            };
            format!("durable {op:?} {} -> {to}", super::trace::text(req.key))
        });
        match next {
            Next::Done => Job { request: Vec::new(), epoch: 0, op, responder, on_answer }.answer(&local),
            Next::Refuse(w) => {
                if let Some(hook) = on_answer {
                    hook(None);
                }
                respond(responder, Status::WrongOwner, op, &w.encode())
            }
            Next::Forward { to, epoch } => {
                let forwarded = Request { flags: req.flags | flags::FORWARDED, epoch: Some(epoch), ..req }.to_vec();
                self.counters.forwarded.fetch_add(1, Ordering::Relaxed);
                let job = Job { request: forwarded, epoch, op, responder, on_answer };
                if let Err(crossbeam_channel::SendError(job)) = self.link(&to).send(job) {
                    self.broken(job);
                }
            }
        }
    }

    /// The channel to `to`'s sending thread, started (or restarted for a new address) if needed.
    fn link(&self, to: &Member) -> Sender<Job> {
        let mut links = self.links.lock();
        if let Some(l) = links.get(&to.id).filter(|l| l.fabric == to.fabric) {
            return l.jobs.clone();
        }
        let (jobs, rx) = crossbeam_channel::unbounded();
        let (member, peers, counters) = (to.clone(), self.peers.clone(), self.counters.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("chain-{}", to.id))
            .spawn(move || send_loop(&member, &*peers, rx, &counters));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a chain forwarding thread");
        }
        // (If the thread did not start, sends fail and each job is answered as broken.)
        links.insert(to.id.clone(), Link { fabric: to.fabric.clone(), jobs: jobs.clone() });
        jobs
    }

    fn broken(&self, job: Job) {
        answer_broken(&self.counters, job, None);
    }

    /// Counters for STATS.
    pub fn stats_source(self: &Arc<Self>) -> Arc<dyn StatsSource> {
        Arc::new(ChainStats(self.counters.clone()))
    }
}

/// The chain is broken after this member (or its successor is behind): the write is not
/// acknowledged, and the sender is sent to the next map.
fn answer_broken(counters: &Counters, mut job: Job, error: Option<&FabricError>) {
    counters.broken.fetch_add(1, Ordering::Relaxed);
    if let Some(hook) = job.on_answer.take() {
        hook(None);
    }
    match error {
        Some(FabricError::QueueFull) => {
            respond(job.responder, Status::Unavailable, job.op, b"the replica chain's successor is saturated")
        }
        _ => respond(job.responder, Status::WrongOwner, job.op, &WrongOwner { epoch: job.epoch + 1 }.encode()),
    }
}

fn send_loop(to: &Member, peers: &dyn PeerConnector, jobs: Receiver<Job>, counters: &Arc<Counters>) {
    let (waits, waiting) = crossbeam_channel::unbounded::<(Job, Completion<Vec<u8>>)>();
    // Set by the waiter when a call failed: the connection is replaced before the next job.
    let failed = Arc::new(AtomicBool::new(false));
    let waiter = {
        let (counters, failed, to) = (counters.clone(), failed.clone(), to.id.clone());
        std::thread::Builder::new()
            .name(format!("chain-ack-{to}"))
            .spawn(move || wait_loop(waiting, &counters, &failed, &to))
    };
    let mut qp: Option<Arc<dyn QueuePair>> = None;
    for job in jobs {
        if failed.swap(false, Ordering::AcqRel) {
            qp = None;
        }
        if qp.is_none() {
            match peers.connect(to) {
                Ok(q) => qp = Some(q),
                Err(e) => {
                    tracing::debug!(to = %to.id, error = %e, "cannot reach the chain successor");
                    answer_broken(counters, job, Some(&e));
                    continue;
                }
            }
        }
        let q = qp.as_ref().expect("connected above");
        let done = if job.request.len() <= q.max_message() {
            q.call(&job.request)
        } else {
            // A large value goes by rendezvous: three steps, waited for here, which keeps the
            // successor's order of this link's writes.
            Completion::ready(rendezvous::call_blocking(&**q, &job.request, FORWARD_TIMEOUT))
        };
        if waits.send((job, done)).is_err() {
            break;
        }
    }
    drop(waits);
    if let Ok(w) = waiter {
        let _ = w.join();
    }
}

fn wait_loop(waiting: Receiver<(Job, Completion<Vec<u8>>)>, counters: &Counters, failed: &AtomicBool, to: &NodeId) {
    for (job, done) in waiting {
        let answer = done.wait_timeout(FORWARD_TIMEOUT);
        super::trace::event(&format!("(from {to})"), || {
            let key = Request::decode(&job.request).map(|r| super::trace::text(r.key)).unwrap_or_default();
            let status = answer.as_ref().map(|b| Response::decode(b).map(|r| r.status));
            format!("answer {:?} {key} at {} -> {status:?}", job.op, job.epoch)
        });
        match answer {
            Ok(bytes) if Response::decode(&bytes).is_ok() => {
                counters.acknowledged.fetch_add(1, Ordering::Relaxed);
                job.answer(&bytes);
            }
            Ok(_) => answer_broken(counters, job, None),
            Err(e) => {
                if !matches!(e, FabricError::QueueFull) {
                    failed.store(true, Ordering::Release);
                }
                answer_broken(counters, job, Some(&e))
            }
        }
    }
}

struct ChainStats(Arc<Counters>);

impl StatsSource for ChainStats {
    fn append(&self, out: &mut Vec<(String, u64)>) {
        let c = &self.0;
        out.push(("chain_forwarded".into(), c.forwarded.load(Ordering::Relaxed)));
        out.push(("chain_forward_acks".into(), c.acknowledged.load(Ordering::Relaxed)));
        out.push(("chain_forward_broken".into(), c.broken.load(Ordering::Relaxed)));
    }
}
