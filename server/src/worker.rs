//! Worker threads (the "DPU cores") and the dispatch of RPCs to them.
//!
//! The NIC hands every RPC to [`Dispatch`] on its own thread. HELLO and STATS (control plane)
//! are answered there; everything about a key goes to the worker that owns the key's SSD
//! (SSD `i` belongs to worker `i % workers`), so META_GET and the commit of writes to one SSD are
//! serialized on one thread. A worker runs the data stores of its SSDs: it answers META_GET from
//! the index and the cache table (no SSD I/O), runs writes and the LEED-style server GET
//! through the store, and submits the stores' I/O to the SSDs' I/O threads, whose completions
//! come back through its inbox.

use crate::cluster::doubts::{ReadState, Verdict, IN_DOUBT};
use crate::cluster::peer_auth::is_member_request;
use crate::cluster::received::{CopyVerdict, Noted, WriteKind};
use crate::cluster::{trace, AnswerHook, Forwarder, Ownership, PeerAuth};
use crate::device::{Issuer, Ssd};
use crate::fill_windows::FillWindows;
use crate::stats::ServerShared;
use crate::store::{Completed, DataStore, IoRequest, IoResult, Outcome, Refusal, WriteOp, WriteRequest};
use crate::table::CacheTable;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use scalio_common::cluster::{ClusterMap, NodeId};
use scalio_common::fabric::{IncomingRpc, PeerId, Responder, RpcService};
use scalio_common::key::{self, TableKey};
use scalio_common::rpc::{
    flags, CodecError, MetaGetReply, Op, Request, Reservation, Response, ScanReply, ScanRequest, Status, WrongOwner,
};
use scalio_common::ssd::MAX_VALUE_LEN;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a worker's inbox carries.
pub(crate) enum WorkerEvent {
    Rpc(IncomingRpc),
    Io {
        ssd: u16,
        token: u64,
        result: IoResult,
    },
    /// Store a copied value (or remove a stale key) of a partition moving to this server,
    /// unless a newer write reached the key here (see [`crate::cluster::received`]).
    Copy(CopyWrite),
    /// Store the value that stands for a key in doubt here, unless a newer write reached it
    /// (see [`crate::cluster::doubts`]).
    Settle(SettleWrite),
    /// Finish what is in flight, then exit.
    Stop,
}

/// A write of a partition's copy, applied by the worker that owns the key's SSD.
pub struct CopyWrite {
    pub key: Vec<u8>,
    /// `None`: remove the key (it is stale here).
    pub value: Option<Vec<u8>>,
    pub partition: u32,
    /// The move's `since`: the write is dropped if the partition is no longer moving here
    /// under that move.
    pub since: u64,
    /// The generation of the dirty mark this value repairs.
    pub repair: Option<u64>,
    pub done: crossbeam_channel::Sender<CopyResult>,
}

/// The value that stands for a key in doubt here (`None`: it has none), read by the resolver
/// from the member whose value stands.
pub struct SettleWrite {
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
    /// The doubt it settles (see [`crate::cluster::doubts::Doubt::seq`]).
    pub seq: u64,
    pub done: crossbeam_channel::Sender<CopyResult>,
}

/// How a [`CopyWrite`] or a [`SettleWrite`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyResult {
    /// Stored (or removed) durably.
    Applied,
    /// A newer write reached the key here first; nothing done.
    Skipped,
    /// The partition is no longer moving here under that move; nothing done.
    Cancelled,
    /// The store failed or refused it.
    Failed(Status),
}

/// What to do with the outcome of a request once its store has finished it.
pub(crate) enum Reply {
    /// Answer a client's RPC. `request`: in a cluster, a write's request as received (the chain
    /// may need it forwarded before the answer).
    /// `accepted`: the epoch of the map a write was accepted by (the chain must not have
    /// changed since when it goes on).
    /// `mark`: the record of a write to a partition moving here.
    /// `entered`: the write's place among the key's writes in flight here (see
    /// [`crate::cluster::doubts`]).
    Rpc {
        responder: Responder,
        op: Op,
        request: Option<Vec<u8>>,
        mark: Option<MoveMark>,
        accepted: u64,
        entered: Option<Entered>,
    },
    /// Answer a scan with the keys found (`ssds`: the server's SSD count).
    Scan { responder: Responder, ssds: u16, buckets: u32 },
    /// Tell the copier how its copy write ended.
    Copy(crossbeam_channel::Sender<CopyResult>),
    /// Tell the resolver how a settling value's write ended.
    Settle { key: Vec<u8>, seq: u64, done: crossbeam_channel::Sender<CopyResult> },
    /// Fill the slot reserved for the key with the value read (`cache.client_fills = false`).
    Fill { key: TableKey, reservation: Reservation },
}

/// A write to a partition moving to this server, as its record noted it (see
/// [`crate::cluster::received`]).
#[derive(Clone, Copy)]
pub(crate) struct MoveMark {
    partition: u32,
    since: u64,
    noted: Noted,
}

/// A write to a key of a partition not moving here, as the record of doubts took it in.
#[derive(Clone, Copy)]
pub(crate) struct Entered {
    seq: u64,
    /// Taken while this server was not the key's tail.
    unsettled: bool,
    /// A retry of a write applied here before, applied again while its key was in doubt: its
    /// answer here is the first attempt's.
    answer_as: Option<Status>,
}

/// Routes RPCs from the NIC threads to the workers.
pub(crate) struct Dispatch {
    pub(crate) workers: Vec<(Sender<WorkerEvent>, Arc<InboxLoad>)>,
    pub(crate) shared: Arc<ServerShared>,
    /// In a cluster: which keys this server serves.
    pub(crate) cluster: Option<Arc<Ownership>>,
    /// The windows granted per reservation (`cache.fill_windows`).
    pub(crate) fill_windows: Option<Arc<FillWindows>>,
    /// Which connections may send member requests (`peer_secret_file`).
    pub(crate) peer_auth: Arc<PeerAuth>,
}

/// The RPCs waiting in one worker's inbox, admitted against limits on their count and bytes.
/// The inbox also carries I/O completions, which are never refused (their number is bounded by
/// the store's own limits), so the limits are kept here rather than by a bounded channel.
pub(crate) struct InboxLoad {
    rpcs: AtomicUsize,
    bytes: AtomicUsize,
    max_rpcs: usize,
    max_bytes: usize,
}

impl InboxLoad {
    pub(crate) fn new(max_rpcs: usize, max_bytes: usize) -> InboxLoad {
        InboxLoad { rpcs: AtomicUsize::new(0), bytes: AtomicUsize::new(0), max_rpcs, max_bytes }
    }

    /// Admits an RPC of `len` bytes, or refuses it if the inbox is full. One RPC is always
    /// admitted into an empty inbox, whatever its size.
    fn try_admit(&self, len: usize) -> bool {
        let rpcs = self.rpcs.fetch_add(1, Ordering::AcqRel);
        let bytes = self.bytes.fetch_add(len, Ordering::AcqRel);
        if rpcs >= self.max_rpcs || (rpcs > 0 && bytes + len > self.max_bytes) {
            self.release(len);
            return false;
        }
        true
    }

    /// An admitted RPC of `len` bytes left the inbox.
    fn release(&self, len: usize) {
        self.rpcs.fetch_sub(1, Ordering::AcqRel);
        self.bytes.fetch_sub(len, Ordering::AcqRel);
    }
}

fn respond(responder: Responder, status: Status, op: Op, body: &[u8]) {
    responder.reply(&Response::to_vec(status, op, body));
}

impl RpcService for Dispatch {
    /// A client left: its unfilled reservations end now rather than when their leases run out.
    /// Its RPCs still in a worker's inbox are served and answered into nothing (their inbox
    /// places and credits come back as usual); a META_GET among them reserves nothing.
    fn peer_closed(&self, peer: PeerId) {
        if let Some(t) = &self.shared.table {
            t.release(peer);
        }
        if let Some(w) = &self.fill_windows {
            w.release(peer);
        }
        self.peer_auth.closed(peer);
    }

    fn handle(&self, rpc: IncomingRpc) {
        let req = match Request::decode(&rpc.payload) {
            Ok(r) => r,
            Err(e) => {
                self.shared.count_bad_request();
                let op = rpc.payload.get(1).and_then(|_| Op::from_u8(rpc.payload[0])).unwrap_or(Op::Hello);
                // The size limits are checked from the header, before anything is copied.
                let status = match e {
                    CodecError::ValueTooLarge(_) => Status::ValueTooLarge,
                    CodecError::KeyTooLong(_) => Status::KeyTooLong,
                    _ => Status::BadRequest,
                };
                return respond(rpc.responder, status, op, e.to_string().as_bytes());
            }
        };
        self.shared.count_rpc(req.op);
        if is_member_request(&req) && !self.peer_auth.allows(rpc.peer) {
            return respond(
                rpc.responder,
                Status::BadRequest,
                req.op,
                b"a member request on a connection that has not presented the cluster's peer secret",
            );
        }
        match req.op {
            Op::Hello if req.flags & flags::PEER != 0 && !self.peer_auth.hello(rpc.peer, req.value) => {
                respond(rpc.responder, Status::BadRequest, Op::Hello, b"not the cluster's peer secret")
            }
            Op::Hello => {
                let info = self.shared.info().encode();
                respond(rpc.responder, Status::Ok, Op::Hello, &info);
            }
            Op::Stats => {
                let stats = self.shared.stats().encode();
                respond(rpc.responder, Status::Ok, Op::Stats, &stats);
            }
            Op::Scan => {
                let scan = match ScanRequest::decode(req.value) {
                    Ok(s) if s.ssd < self.workers_ssds() => s,
                    Ok(_) => return respond(rpc.responder, Status::BadRequest, Op::Scan, b"no such SSD"),
                    Err(e) => return respond(rpc.responder, Status::BadRequest, Op::Scan, e.to_string().as_bytes()),
                };
                if let Some(own) = &self.cluster {
                    if let Err(w) = own.check_scan(req.epoch, Instant::now()) {
                        return respond(rpc.responder, Status::WrongOwner, Op::Scan, &w.encode());
                    }
                }
                self.enqueue(usize::from(scan.ssd) % self.workers.len(), rpc);
            }
            op => {
                if let Err(e) = key::validate(req.key) {
                    let status = match e {
                        key::KeyError::TooLong(_) => Status::KeyTooLong,
                        key::KeyError::Empty => Status::BadRequest,
                    };
                    return respond(rpc.responder, status, op, e.to_string().as_bytes());
                }
                if req.flags & flags::FORWARDED != 0 && !op.is_write() {
                    return respond(rpc.responder, Status::BadRequest, op, b"only writes are forwarded");
                }
                if req.flags & flags::COPY != 0 && op != Op::Get {
                    return respond(rpc.responder, Status::BadRequest, op, b"only GETs are copy reads");
                }
                if let Some(own) = &self.cluster {
                    let verdict = if req.flags & flags::FORWARDED != 0 {
                        own.check_forwarded(req.key, req.epoch, Instant::now())
                    } else if req.flags & flags::COPY != 0 {
                        own.check_copy_read(req.key, req.epoch, Instant::now())
                    } else {
                        own.check(req.key, op, req.epoch, Instant::now())
                    };
                    if let Err(w) = verdict {
                        return respond(rpc.responder, Status::WrongOwner, op, &w.encode());
                    }
                }
                let ssd = key::route(req.key, self.workers_ssds(), 1).ssd;
                self.enqueue(usize::from(ssd) % self.workers.len(), rpc);
            }
        }
    }
}

impl Dispatch {
    /// Hands `rpc` to worker `w`, or refuses it if the worker's inbox is full.
    fn enqueue(&self, w: usize, rpc: IncomingRpc) {
        let op = rpc.payload.first().and_then(|b| Op::from_u8(*b)).unwrap_or(Op::Hello);
        let (inbox, load) = &self.workers[w];
        let len = rpc.payload.len();
        if !load.try_admit(len) {
            self.shared.count_inbox_refusal();
            let msg = format!(
                "server is overloaded: the worker's inbox is at its limit ({} RPCs, {} bytes)",
                load.max_rpcs, load.max_bytes
            );
            return respond(rpc.responder, Status::Unavailable, op, msg.as_bytes());
        }
        if let Err(crossbeam_channel::SendError(WorkerEvent::Rpc(rpc))) = inbox.send(WorkerEvent::Rpc(rpc)) {
            load.release(len);
            respond(rpc.responder, Status::Unavailable, op, b"server is shutting down");
        }
    }

    fn workers_ssds(&self) -> u16 {
        self.shared.ssds().len() as u16
    }
}

/// One worker thread's state.
pub(crate) struct Worker {
    pub(crate) id: usize,
    pub(crate) workers: usize,
    pub(crate) inbox: Receiver<WorkerEvent>,
    /// The RPCs in `inbox`, released as they are taken out.
    pub(crate) load: Arc<InboxLoad>,
    pub(crate) me: Sender<WorkerEvent>,
    /// The stores of SSDs `id`, `id + workers`, ...
    pub(crate) stores: Vec<DataStore<Reply>>,
    pub(crate) ssds: Vec<Arc<Ssd>>,
    pub(crate) table: Option<Arc<CacheTable>>,
    /// The server fills the slots it reserves (`cache.client_fills = false`); clients get no
    /// reservation.
    pub(crate) server_fills: bool,
    /// Grants a window over each reserved slot to the client that reserved it.
    pub(crate) fill_windows: Option<Arc<FillWindows>>,
    pub(crate) shared: Arc<ServerShared>,
    /// Emulated worker time per SSD I/O it issues.
    pub(crate) io_cost: Duration,
    /// While suspended, `io_cost` is not charged (the server's emulation switch).
    pub(crate) emulation: crate::device::EmulationSwitch,
    /// In a cluster: passes durable writes down their replica chains.
    pub(crate) chain: Option<Arc<Forwarder>>,
    /// In a cluster: which partitions are moving here (and the keys written during moves).
    pub(crate) cluster: Option<Arc<Ownership>>,
}

impl Worker {
    fn store_of(&mut self, ssd: u16) -> &mut DataStore<Reply> {
        &mut self.stores[usize::from(ssd) / self.workers]
    }

    pub(crate) fn run(mut self) {
        // Emulated costs are slept; a small timer slack keeps those sleeps close to the model.
        // SAFETY: PR_SET_TIMERSLACK only changes this thread's timer slack.
        unsafe {
            libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong);
        }
        let mut meter = self.shared.worker_cpu().meter();
        let mut busy_until = Instant::now();
        let mut stopping = false;
        loop {
            // The emulated cost of the I/O this worker issued: it cannot serve anything else
            // until that time has passed (sleeping, so the host core stays free).
            let now = Instant::now();
            if busy_until > now {
                std::thread::sleep(busy_until - now);
            }
            let deadline = if stopping { None } else { self.stores.iter().filter_map(|s| s.next_deadline()).min() };
            let event = match deadline {
                Some(d) => match self.inbox.recv_deadline(d) {
                    Ok(e) => Some(e),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                },
                None if stopping && self.stores.iter().all(|s| s.is_idle()) => break,
                None => match self.inbox.recv() {
                    Ok(e) => Some(e),
                    Err(_) => break,
                },
            };
            let now = Instant::now();
            if let Some(WorkerEvent::Rpc(rpc)) = &event {
                self.load.release(rpc.payload.len());
            }
            match event {
                Some(WorkerEvent::Rpc(rpc)) if stopping => {
                    let op = rpc.payload.first().and_then(|b| Op::from_u8(*b)).unwrap_or(Op::Hello);
                    respond(rpc.responder, Status::Unavailable, op, b"server is shutting down");
                }
                Some(WorkerEvent::Rpc(rpc)) => self.handle(rpc, now),
                Some(WorkerEvent::Copy(c)) if stopping => {
                    let _ = c.done.send(CopyResult::Failed(Status::Unavailable));
                }
                Some(WorkerEvent::Copy(c)) => self.copy(c, now),
                Some(WorkerEvent::Settle(c)) if stopping => {
                    let _ = c.done.send(CopyResult::Failed(Status::Unavailable));
                }
                Some(WorkerEvent::Settle(c)) => self.settle(c, now),
                Some(WorkerEvent::Io { ssd, token, result }) => self.store_of(ssd).on_io(token, result, now),
                Some(WorkerEvent::Stop) => stopping = true,
                None => {}
            }
            // Flush every waiting write when stopping; otherwise start what is due.
            let poll_at = if stopping { now + Duration::from_secs(3600) } else { now };
            let mut issued = 0u32;
            for i in 0..self.stores.len() {
                self.stores[i].poll(poll_at);
                for req in self.stores[i].take_io() {
                    // Each device I/O costs the worker (a multi-part write is several I/Os).
                    issued += match &req {
                        IoRequest::Read { .. } => 1,
                        IoRequest::Write { parts, .. } => parts.len() as u32,
                    };
                    self.submit(self.stores[i].ssd(), req);
                }
                for c in self.stores[i].take_completed() {
                    finish(c, self.table.as_deref(), self.chain.as_deref(), self.cluster.as_ref());
                }
            }
            if issued > 0 && !self.io_cost.is_zero() && !self.emulation.is_suspended() {
                let charge = self.io_cost * issued;
                busy_until = busy_until.max(now) + charge;
                self.shared.add_worker_virtual_ns(charge.as_nanos() as u64);
            }
            meter.tick();
        }
    }

    fn handle(&mut self, rpc: IncomingRpc, now: Instant) {
        // The dispatcher decoded and validated this request already.
        let Ok(req) = Request::decode(&rpc.payload) else {
            return respond(rpc.responder, Status::BadRequest, Op::Hello, b"malformed request");
        };
        if req.op == Op::Scan {
            // Scans name an SSD, not a key.
            return match ScanRequest::decode(req.value) {
                Ok(scan)
                    if usize::from(scan.ssd) < self.ssds.len() && usize::from(scan.ssd) % self.workers == self.id =>
                {
                    let ssds = self.ssds.len() as u16;
                    let buckets = self.store_of(scan.ssd).buckets();
                    let reply = Reply::Scan { responder: rpc.responder, ssds, buckets };
                    self.store_of(scan.ssd).submit_scan(scan.bucket, scan.max_buckets, reply);
                }
                _ => respond(rpc.responder, Status::BadRequest, Op::Scan, b"malformed or misrouted scan"),
            };
        }
        let ssd = key::route(req.key, self.ssds.len() as u16, 1).ssd;
        if usize::from(ssd) % self.workers != self.id {
            return respond(rpc.responder, Status::BadRequest, req.op, b"misrouted request");
        }
        let op = req.op;
        if let (Some(own), Op::MetaGet | Op::Get) = (&self.cluster, op) {
            // Checked here, in the worker's order with the key's writes entering the store.
            let state = own.doubts().lock().read_state(req.key);
            if state != ReadState::Readable {
                own.doubt_counters().reads_refused.fetch_add(1, Ordering::Relaxed);
                trace::event(own.me(), || format!("{op:?} {} refused: {state:?}", trace::text(req.key)));
                // A client retries "wrong owner" at the epoch it has (after a pause). A member
                // settling its own doubt from this one is told that this one is in doubt too.
                if state == ReadState::InDoubt && req.flags & flags::COPY != 0 {
                    return respond(rpc.responder, Status::Unavailable, op, IN_DOUBT);
                }
                return respond(rpc.responder, Status::WrongOwner, op, &WrongOwner { epoch: own.epoch() }.encode());
            }
        }
        match op {
            Op::MetaGet => {
                let loc = self.store_of(ssd).locate(req.key);
                if let Some(own) = &self.cluster {
                    trace::event(own.me(), || {
                        format!("metaget {} loc={loc:?} map={}", trace::text(req.key), own.epoch())
                    });
                }
                let key = TableKey::new(req.key);
                let mut reservation = match (&self.table, loc) {
                    (Some(t), Some(_)) if req.flags & flags::NO_RESERVE == 0 => {
                        let reserve = || t.reserve_for_connected(rpc.peer, &key, || rpc.responder.peer_gone());
                        match &self.cluster {
                            // Checked again with the reservation, under the map: see
                            // `Ownership::while_serving`.
                            Some(own) => match own.while_serving(req.key, op, req.epoch, now, reserve) {
                                Ok(r) => r,
                                Err(w) => return respond(rpc.responder, Status::WrongOwner, op, &w.encode()),
                            },
                            None => reserve(),
                        }
                    }
                    _ => None,
                };
                if self.server_fills {
                    // The server reads the value (from the location just found, so no write to
                    // the key can come between: it would have invalidated the reservation first)
                    // and fills the slot; the client reads the SSD itself meanwhile.
                    if let Some(reservation) = reservation.take() {
                        self.store_of(ssd).submit_get(req.key.to_vec(), Reply::Fill { key, reservation });
                    }
                }
                // The window is bound before the reply is posted, on the queue pair the reply
                // goes out on: the client can use it once it has the reply.
                let window = match (&self.fill_windows, reservation) {
                    (Some(w), Some(r)) => w.grant(rpc.peer, key.bucket(w.buckets()), r),
                    _ => None,
                };
                let reply = MetaGetReply {
                    ssd,
                    chain_len: loc.map_or(0, |l| l.len),
                    lseq: loc.map_or(0, |l| l.lseq),
                    reservation,
                    window,
                };
                respond(rpc.responder, Status::Ok, op, &reply.encode());
            }
            Op::Get => {
                if let Some(own) = &self.cluster {
                    let copy = req.flags & flags::COPY != 0;
                    trace::event(own.me(), || format!("get {} copy={copy} map={}", trace::text(req.key), own.epoch()));
                }
                let key = req.key.to_vec();
                let reply =
                    Reply::Rpc { responder: rpc.responder, op, request: None, mark: None, accepted: 0, entered: None };
                self.store_of(ssd).submit_get(key, reply);
            }
            Op::Put | Op::Update | Op::Delete => {
                if req.value.len() > MAX_VALUE_LEN {
                    let msg = format!("value of {} bytes exceeds {MAX_VALUE_LEN}", req.value.len());
                    return respond(rpc.responder, Status::ValueTooLarge, op, msg.as_bytes());
                }
                let write_op = match op {
                    Op::Put => WriteOp::Put,
                    Op::Update => WriteOp::Update,
                    _ => WriteOp::Delete,
                };
                let (key, value) = (req.key.to_vec(), if op == Op::Delete { Vec::new() } else { req.value.to_vec() });
                // Checked again here, in the worker's order: the dispatcher's check may have been
                // made under an older map, and a scan that a member receiving a copy asked for
                // since (under the new map) must not miss a write taken after it.
                let mut accepted = 0;
                if let Some(own) = &self.cluster {
                    let verdict = if req.flags & flags::FORWARDED != 0 {
                        own.check_forwarded_at(req.key, req.epoch, now)
                    } else {
                        own.check_at(req.key, op, req.epoch, now)
                    };
                    trace::event(own.me(), || {
                        let fwd = req.flags & flags::FORWARDED != 0;
                        format!(
                            "accept {op:?} {} p={} {} fwd={fwd} stamp={:?} map={} -> {verdict:?}",
                            trace::text(req.key),
                            own.partition_of(req.key),
                            trace::text(req.value),
                            req.epoch,
                            own.epoch()
                        )
                    });
                    match verdict {
                        Ok(epoch) => accepted = epoch,
                        Err(w) => return respond(rpc.responder, Status::WrongOwner, op, &w.encode()),
                    }
                }
                // A retry of a write applied here already: answered as then, not applied again
                // (and passed on, so that the members after this one that missed it apply it).
                // Not on a member receiving the key's partition, which is never the tail: it
                // applies the retry again (the same value), so that its record of the move
                // sees the write (a repair of the key from the source, asked for when the
                // first attempt was refused, must not overwrite it). Nor when the key is in
                // doubt here (its last write here, perhaps that first attempt, was not completed
                // by the chain, and the value that settles the doubt may not have it): the retry
                // is applied again and answered as then (its chain's answer settles the doubt).
                let receiving =
                    self.cluster.as_ref().is_some_and(|own| own.move_to_me(own.partition_of(req.key)).is_some());
                if let (Some(own), true) = (&self.cluster, receiving) {
                    // The move's record decides this key's value here from now on.
                    own.doubts().lock().forget(req.key);
                }
                let mut answer_as = None;
                if let (Some(own), Some(id), false) = (&self.cluster, req.id, receiving) {
                    if let Some(Some(status)) = own.applied().lock().get(req.key, id) {
                        own.count_retried_write();
                        if own.doubts().lock().is_doubtful(req.key) {
                            trace::event(own.me(), || {
                                format!("retry {op:?} {} id={id} in doubt: again, as {status:?}", trace::text(req.key))
                            });
                            answer_as = Some(status);
                        } else {
                            trace::event(own.me(), || {
                                format!("retry {op:?} {} id={id} -> {status:?}", trace::text(req.key))
                            });
                            let local = Response::to_vec(status, op, &[]);
                            return match &self.chain {
                                Some(chain) => {
                                    chain.after_durable(&rpc.payload, accepted, local, op, rpc.responder, None)
                                }
                                None => rpc.responder.reply(&local),
                            };
                        }
                    }
                }
                let unbatched = req.flags & flags::UNBATCHED != 0;
                let mark = self.note_write(&key, op);
                let mut entered = None;
                if let (Some(own), Some(_), false) = (&self.cluster, &self.chain, receiving) {
                    // (A partition moving here keeps its own record, `mark`.)
                    let unsettled = !own.is_tail(&key);
                    match own.doubts().lock().enter(&key, unsettled) {
                        Some(seq) => entered = Some(Entered { seq, unsettled, answer_as }),
                        None => {
                            own.doubt_counters().writes_refused.fetch_add(1, Ordering::Relaxed);
                            let msg = "too many keys in doubt here: writes wait until some are settled";
                            return respond(rpc.responder, Status::Unavailable, op, msg.as_bytes());
                        }
                    }
                }
                let request = self.chain.is_some().then_some(rpc.payload);
                let w = WriteRequest {
                    op: write_op,
                    key,
                    value,
                    unbatched,
                    reply: Reply::Rpc { responder: rpc.responder, op, request, mark, accepted, entered },
                };
                self.store_of(ssd).submit_write(w, now);
            }
            Op::Hello | Op::Stats | Op::Scan => respond(rpc.responder, Status::BadRequest, op, b"not a worker request"),
        }
    }

    /// A write to `key` is about to enter the store: if its partition is moving here, record
    /// it (a copy must not overwrite it, and its local answer may be a guess).
    fn note_write(&self, key: &[u8], op: Op) -> Option<MoveMark> {
        let own = self.cluster.as_ref()?;
        let partition = own.partition_of(key);
        let since = own.move_to_me(partition)?;
        let kind = match op {
            Op::Put => WriteKind::Put,
            Op::Update => WriteKind::Update,
            _ => WriteKind::Delete,
        };
        let noted = own.received().lock().on_write(partition, since, key, kind);
        Some(MoveMark { partition, since, noted })
    }

    /// Applies a copy write, unless the move ended or a newer write reached the key here.
    fn copy(&mut self, c: CopyWrite, now: Instant) {
        let Some(own) = self.cluster.as_ref() else {
            let _ = c.done.send(CopyResult::Cancelled);
            return;
        };
        if own.move_to_me(c.partition) != Some(c.since) {
            trace::event(own.me(), || format!("copy {} since={} -> cancelled", trace::text(&c.key), c.since));
            let _ = c.done.send(CopyResult::Cancelled);
            return;
        }
        let verdict = match (&c.value, c.repair) {
            // The purge: a stale key, unless written or copied here in this move.
            (None, None) if own.received().lock().may_purge(c.partition, c.since, &c.key) => CopyVerdict::Apply,
            (None, None) => CopyVerdict::Skip,
            _ => own.received().lock().on_copy(c.partition, c.since, &c.key, c.repair),
        };
        trace::event(own.me(), || {
            let v = c.value.as_deref().map(trace::text);
            format!("copy {} {v:?} since={} repair={:?} -> {verdict:?}", trace::text(&c.key), c.since, c.repair)
        });
        if verdict == CopyVerdict::Skip {
            let _ = c.done.send(CopyResult::Skipped);
            return;
        }
        let Some(ssd) = self.ssd_of(&c.key) else {
            let _ = c.done.send(CopyResult::Failed(Status::BadRequest));
            return;
        };
        let w = whole_write(c.key, c.value, Reply::Copy(c.done));
        self.store_of(ssd).submit_write(w, now);
    }

    /// The SSD of `key`, if this worker owns it.
    fn ssd_of(&self, key: &[u8]) -> Option<u16> {
        let ssd = key::route(key, self.ssds.len() as u16, 1).ssd;
        (usize::from(ssd) % self.workers == self.id).then_some(ssd)
    }

    /// Stores the value that stands for a key in doubt, unless a newer write reached the key
    /// here (or is in flight) since the doubt was raised.
    fn settle(&mut self, c: SettleWrite, now: Instant) {
        let Some(own) = self.cluster.as_ref() else {
            let _ = c.done.send(CopyResult::Cancelled);
            return;
        };
        let Some(ssd) = self.ssd_of(&c.key) else {
            let _ = c.done.send(CopyResult::Failed(Status::BadRequest));
            return;
        };
        // Only for a partition whose chain this server is in and which is not moving here (a
        // move's record decides its keys' values then); checked in the worker's order with
        // the key's writes.
        let member = own.map().is_some_and(|m| {
            let partition = m.partition_of(&c.key);
            m.in_chain(partition, own.me()) && m.move_to(partition, own.me()).is_none()
        });
        if !member || !own.doubts().lock().begin_settling(&c.key, c.seq) {
            trace::event(own.me(), || format!("settle {} seq={} -> skipped", trace::text(&c.key), c.seq));
            let _ = c.done.send(CopyResult::Skipped);
            return;
        }
        trace::event(own.me(), || {
            let v = c.value.as_deref().map(trace::text);
            format!("settle {} {v:?} seq={}", trace::text(&c.key), c.seq)
        });
        // The write that raised the doubt may be undone here: a retry of it that comes after
        // this must be applied again, not answered from the record of request ids.
        own.applied().lock().forget_key(&c.key);
        let reply = Reply::Settle { key: c.key.clone(), seq: c.seq, done: c.done };
        let w = whole_write(c.key, c.value, reply);
        self.store_of(ssd).submit_write(w, now);
    }

    fn submit(&self, ssd: u16, req: IoRequest) {
        let dev = &self.ssds[usize::from(ssd)];
        let me = self.me.clone();
        match req {
            IoRequest::Read { token, lba, count } => dev.read_async(
                lba,
                count,
                Issuer::Worker,
                Box::new(move |r| {
                    let _ = me.send(WorkerEvent::Io { ssd, token, result: IoResult::Read(r) });
                }),
            ),
            IoRequest::Write { token, parts } => dev.write_async(
                parts,
                Issuer::Worker,
                Box::new(move |r| {
                    let _ = me.send(WorkerEvent::Io { ssd, token, result: IoResult::Write(r) });
                }),
            ),
        }
    }
}

/// A write (`request`) applied here with the local answer `local`: remembers its request id
/// with the answer (unless the answer is a guess, see [`crate::cluster::received`]), and returns
/// what to do with the chain's answer: settle a guessed answer, and tell the record of a move.
///
/// `entered`: the write's place in the record of doubts, told the chain's answer (a write
/// refused or lost further down, or answered otherwise than here, puts its key in doubt).
fn remember(
    own: &Arc<Ownership>,
    request: &[u8],
    local: Status,
    mark: Option<MoveMark>,
    entered: Option<Entered>,
) -> Option<AnswerHook> {
    // (Decoded when it was taken: it cannot fail here.)
    let req = Request::decode(request).ok()?;
    let guessed = mark.is_some_and(|m| m.noted.pending);
    if let Some(id) = req.id {
        own.applied().lock().record(req.key, id, (!guessed).then_some(local));
    }
    if mark.is_none() && !(guessed && req.id.is_some()) && entered.is_none() {
        return None;
    }
    // The map the write goes on by: where it went after this member, should it raise a doubt.
    let map = entered.and_then(|_| own.map());
    let (own, key, id) = (own.clone(), req.key.to_vec(), req.id);
    Some(Box::new(move |answer: Option<Status>| {
        if let Some(e) = entered {
            let verdict = match answer {
                Some(a) if a == local => Verdict::Agreed,
                _ => {
                    let (partition, downstream) = map.map_or((0, Vec::new()), |m| downstream_of(&m, own.me(), &key));
                    Verdict::Doubtful { partition, downstream }
                }
            };
            trace::event(own.me(), || {
                format!("answered {} seq={} -> {answer:?} {verdict:?}", trace::text(&key), e.seq)
            });
            if own.doubts().lock().answered(&key, e.seq, e.unsettled, verdict) {
                own.doubt_counters().raised.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(m) = mark {
            trace::event(own.me(), || {
                format!("answered {} gen={} -> {answer:?}", trace::text(&key), m.noted.generation)
            });
            own.received().lock().on_answered(m.partition, m.since, &key, m.noted.generation, answer.is_some());
        }
        if let (Some(id), Some(answer), true) = (id, answer, guessed) {
            own.applied().lock().resolve(&key, id, answer);
        }
    }))
}

/// A write that sets `key` whole to `value` (`None`: removes it), as a copy or a settle does.
fn whole_write(key: Vec<u8>, value: Option<Vec<u8>>, reply: Reply) -> WriteRequest<Reply> {
    let (op, value) = match value {
        Some(v) => (WriteOp::Put, v),
        None => (WriteOp::Delete, Vec::new()),
    };
    WriteRequest { op, key, value, unbatched: false, reply }
}

/// `key`'s partition in `map`, and the members after `me` in its chain, in order.
fn downstream_of(map: &ClusterMap, me: &NodeId, key: &[u8]) -> (u32, Vec<NodeId>) {
    let partition = map.partition_of(key);
    let chain = map.chain(partition);
    let after = map.node_index(me).and_then(|i| chain.iter().position(|c| *c == i)).map_or(chain.len(), |a| a + 1);
    (partition, chain[after..].iter().map(|i| map.nodes[usize::from(*i)].id.clone()).collect())
}

fn finish(c: Completed<Reply>, table: Option<&CacheTable>, chain: Option<&Forwarder>, own: Option<&Arc<Ownership>>) {
    let (responder, op, request, mark, accepted, entered) = match c.reply {
        Reply::Rpc { responder, op, request, mark, accepted, entered } => {
            if let (Some(own), true) = (own, trace::on()) {
                let key = request.as_deref().and_then(|r| Request::decode(r).ok()).map(|r| trace::text(r.key));
                let out = match &c.outcome {
                    Outcome::Value(v) => format!("Value({})", trace::text(v)),
                    o => format!("{o:?}"),
                };
                let pending = mark.map(|m| m.noted.pending);
                trace::event(own.me(), || format!("done {op:?} {key:?} -> {out} pending={pending:?}"));
            }
            (responder, op, request, mark, accepted, entered)
        }
        Reply::Scan { responder, ssds, buckets } => {
            return match c.outcome {
                Outcome::Keys { keys, next } => {
                    let reply = ScanReply { ssds, next, done: next >= buckets, keys };
                    respond(responder, Status::Ok, Op::Scan, &reply.encode())
                }
                other => respond(responder, status_of(&other), Op::Scan, b"scan failed"),
            };
        }
        Reply::Settle { key, seq, done } => {
            let stored = matches!(c.outcome, Outcome::Ok | Outcome::NotFound);
            if let Some(own) = own {
                if own.doubts().lock().settled(&key, seq, stored) {
                    own.doubt_counters().settled_from_peer.fetch_add(1, Ordering::Relaxed);
                }
            }
            let r = if stored { CopyResult::Applied } else { CopyResult::Failed(status_of(&c.outcome)) };
            let _ = done.send(r);
            return;
        }
        Reply::Copy(done) => {
            let r = match c.outcome {
                Outcome::Ok | Outcome::NotFound => CopyResult::Applied,
                other => CopyResult::Failed(status_of(&other)),
            };
            let _ = done.send(r);
            return;
        }
        Reply::Fill { key, reservation } => {
            // Anything but a value (absent, an error, refused for load): no fill; the
            // reservation's lease runs out and a later miss reserves again.
            if let (Outcome::Value(v), Some(t)) = (&c.outcome, table) {
                t.fill(&key, reservation, v);
            }
            return;
        }
    };
    // A write done here (or an update or delete that found nothing here) goes on down its
    // chain, whose answer is the client's; a local failure is answered at once.
    if let (Some(chain), Some(request)) = (chain, request.as_deref()) {
        // (A retry applied again while its key was in doubt is answered as its first attempt.)
        let local = match c.outcome {
            Outcome::Ok => Some(Status::Ok),
            Outcome::NotFound => Some(Status::NotFound),
            _ => None,
        }
        .map(|s| entered.and_then(|e| e.answer_as).unwrap_or(s));
        if let Some(status) = local {
            let hook = own.and_then(|own| remember(own, request, status, mark, entered));
            return chain.after_durable(request, accepted, Response::to_vec(status, op, &[]), op, responder, hook);
        }
    }
    // Not applied here (the store failed or refused it): nothing to be in doubt about.
    if let (Some(own), Some(e), Some(request)) = (own, entered, request.as_deref()) {
        let key = Request::decode(request).map(|r| r.key.to_vec()).unwrap_or_default();
        own.doubts().lock().abandoned(&key, e.seq, e.unsettled);
    }
    match c.outcome {
        Outcome::Ok => respond(responder, Status::Ok, op, &[]),
        Outcome::Value(v) => respond(responder, Status::Ok, op, &v),
        Outcome::NotFound => respond(responder, Status::NotFound, op, &[]),
        Outcome::NoSpace(m) => respond(responder, Status::NoSpace, op, m.as_bytes()),
        Outcome::Io(m) => respond(responder, Status::Io, op, m.as_bytes()),
        Outcome::Corrupt(c) => respond(responder, Status::Io, op, c.to_string().as_bytes()),
        Outcome::Refused(r) => {
            respond(responder, status_of(&Outcome::Refused(r.clone())), op, r.to_string().as_bytes())
        }
        Outcome::Keys { .. } => respond(responder, Status::BadRequest, op, b"a scan's answer to another request"),
    }
}

/// The status a failed store outcome is answered with.
fn status_of(o: &Outcome) -> Status {
    match o {
        Outcome::Ok | Outcome::Value(_) | Outcome::Keys { .. } => Status::Ok,
        Outcome::NotFound => Status::NotFound,
        Outcome::NoSpace(_) => Status::NoSpace,
        Outcome::Io(_) | Outcome::Corrupt(_) => Status::Io,
        Outcome::Refused(Refusal::Overloaded { .. }) => Status::Unavailable,
        Outcome::Refused(Refusal::WritesStopped { .. }) => Status::WritesStopped,
    }
}
