//! Worker threads (the "DPU cores") and the dispatch of RPCs to them.
//!
//! The NIC hands every RPC to [`Dispatch`] on its own thread. HELLO and STATS (control plane)
//! are answered there; everything about a key goes to the worker that owns the key's SSD
//! (SSD `i` belongs to worker `i % workers`), so META_GET and the commit of writes to one SSD are
//! serialized on one thread. A worker runs the data stores of its SSDs: it answers META_GET from
//! the index and the cache table (no SSD I/O), runs writes and the LEED-style server GET
//! through the store, and submits the stores' I/O to the SSDs' I/O threads, whose completions
//! come back through its inbox.

use crate::cluster::received::CopyVerdict;
use crate::cluster::{Forwarder, Ownership};
use crate::device::{Issuer, Ssd};
use crate::fill_windows::FillWindows;
use crate::stats::ServerShared;
use crate::store::{Completed, DataStore, IoRequest, IoResult, Outcome, Refusal, WriteOp, WriteRequest};
use crate::table::CacheTable;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use scalio_common::fabric::{IncomingRpc, PeerId, Responder, RpcService};
use scalio_common::key::{self, TableKey};
use scalio_common::rpc::{
    flags, CodecError, MetaGetReply, Op, Request, Reservation, Response, ScanReply, ScanRequest, Status,
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

/// How a [`CopyWrite`] ended.
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
    Rpc { responder: Responder, op: Op, request: Option<Vec<u8>>, update: Option<UpdateMark> },
    /// Answer a scan with the keys found (`ssds`: the server's SSD count).
    Scan { responder: Responder, ssds: u16, buckets: u32 },
    /// Tell the copier how its copy write ended.
    Copy(crossbeam_channel::Sender<CopyResult>),
    /// Fill the slot reserved for the key with the value read (`cache.client_fills = false`).
    Fill { key: TableKey, reservation: Reservation },
}

/// An UPDATE of a partition moving to this server: if it finds nothing here, its key is
/// marked dirty (see [`crate::cluster::received`]).
pub(crate) struct UpdateMark {
    partition: u32,
    since: u64,
    generation: u64,
}

/// Routes RPCs from the NIC threads to the workers.
pub(crate) struct Dispatch {
    pub(crate) workers: Vec<(Sender<WorkerEvent>, Arc<InboxLoad>)>,
    pub(crate) shared: Arc<ServerShared>,
    /// In a cluster: which keys this server serves.
    pub(crate) cluster: Option<Arc<Ownership>>,
    /// The windows granted per reservation (`cache.fill_windows`).
    pub(crate) fill_windows: Option<Arc<FillWindows>>,
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
        match req.op {
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
                    finish(c, self.table.as_deref(), self.chain.as_deref(), self.cluster.as_deref());
                }
            }
            if issued > 0 && !self.io_cost.is_zero() {
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
        match op {
            Op::MetaGet => {
                let loc = self.store_of(ssd).locate(req.key);
                let key = TableKey::new(req.key);
                let mut reservation = match (&self.table, loc) {
                    (Some(t), Some(_)) if req.flags & flags::NO_RESERVE == 0 => {
                        t.reserve_for_connected(rpc.peer, &key, || rpc.responder.peer_gone())
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
                let key = req.key.to_vec();
                let reply = Reply::Rpc { responder: rpc.responder, op, request: None, update: None };
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
                if let Some(own) = &self.cluster {
                    let verdict = if req.flags & flags::FORWARDED != 0 {
                        own.check_forwarded(req.key, req.epoch, now)
                    } else {
                        own.check(req.key, op, req.epoch, now)
                    };
                    if let Err(w) = verdict {
                        return respond(rpc.responder, Status::WrongOwner, op, &w.encode());
                    }
                }
                let unbatched = req.flags & flags::UNBATCHED != 0;
                let update = self.note_write(&key, op);
                let request = self.chain.is_some().then_some(rpc.payload);
                let w = WriteRequest {
                    op: write_op,
                    key,
                    value,
                    unbatched,
                    reply: Reply::Rpc { responder: rpc.responder, op, request, update },
                };
                self.store_of(ssd).submit_write(w, now);
            }
            Op::Hello | Op::Stats | Op::Scan => respond(rpc.responder, Status::BadRequest, op, b"not a worker request"),
        }
    }

    /// A write to `key` is about to enter the store: if its partition is moving here, record
    /// it (a copy must not overwrite it). Returns the mark an UPDATE needs.
    fn note_write(&self, key: &[u8], op: Op) -> Option<UpdateMark> {
        let own = self.cluster.as_ref()?;
        let partition = own.partition_of(key);
        let since = own.move_to_me(partition)?;
        let generation = own.received().lock().on_write(partition, since, key);
        (op == Op::Update).then_some(UpdateMark { partition, since, generation })
    }

    /// Applies a copy write, unless the move ended or a newer write reached the key here.
    fn copy(&mut self, c: CopyWrite, now: Instant) {
        let Some(own) = self.cluster.as_ref() else {
            let _ = c.done.send(CopyResult::Cancelled);
            return;
        };
        if own.move_to_me(c.partition) != Some(c.since) {
            let _ = c.done.send(CopyResult::Cancelled);
            return;
        }
        if own.received().lock().on_copy(c.partition, c.since, &c.key, c.repair) == CopyVerdict::Skip {
            let _ = c.done.send(CopyResult::Skipped);
            return;
        }
        let ssd = key::route(&c.key, self.ssds.len() as u16, 1).ssd;
        if usize::from(ssd) % self.workers != self.id {
            let _ = c.done.send(CopyResult::Failed(Status::BadRequest));
            return;
        }
        let (op, value) = match c.value {
            Some(v) => (WriteOp::Put, v),
            None => (WriteOp::Delete, Vec::new()),
        };
        let w = WriteRequest { op, key: c.key, value, unbatched: false, reply: Reply::Copy(c.done) };
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

fn finish(c: Completed<Reply>, table: Option<&CacheTable>, chain: Option<&Forwarder>, own: Option<&Ownership>) {
    let (responder, op, request) = match c.reply {
        Reply::Rpc { responder, op, request, update } => {
            if let (Some(m), Some(own), Outcome::NotFound) = (update, own, &c.outcome) {
                // (The key was validated on the way in; the request is still held.)
                if let Some(req) = request.as_deref().and_then(|r| Request::decode(r).ok()) {
                    own.received().lock().on_update_not_found(m.partition, m.since, req.key, m.generation);
                }
            }
            (responder, op, request)
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
    if let (Some(chain), Some(request)) = (chain, request) {
        let local = match c.outcome {
            Outcome::Ok => Some(Status::Ok),
            Outcome::NotFound => Some(Status::NotFound),
            _ => None,
        };
        if let Some(status) = local {
            return chain.after_durable(&request, Response::to_vec(status, op, &[]), op, responder);
        }
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
