//! The fabric: a verbs-shaped interface between clients and the server.
//!
//! * The server registers [`MemoryRegion`]s in a [`RegionTable`] (key, bounds, rights) and
//!   gives clients their [`RegionDesc`].
//! * A client opens a [`QueuePair`] and posts chains of one-sided [`WorkRequest`]s (READ and
//!   WRITE). A chain executes in order: a later WRITE is never visible before an earlier one on
//!   the same queue pair, and a failed request stops the rest of its chain. A chain may be posted
//!   unsignaled (no completion on success; a failure is counted in
//!   [`QueuePair::async_errors`]), as verbs allows.
//! * A failed request (signaled or not) puts the queue pair into the **error state**, as on RC:
//!   nothing posted after it executes; what is pending behind it, and everything posted later,
//!   completes with [`FabricError::Flushed`]. The caller opens a new queue pair
//!   ([`FabricError::ends_queue_pair`] says when). Posts refused locally (an empty chain, a READ
//!   in an unsignaled chain, a request over [`MAX_TRANSFER`]) leave the state unchanged.
//! * The allocation-free path, as on verbs: a client registers its own memory with the queue pair
//!   ([`QueuePair::register_local`], a [`LocalKey`]), posts chains whose READs land in it and
//!   whose WRITEs take their data from it ([`WorkRequest::ReadInto`], [`WorkRequest::WriteFrom`])
//!   under a work-request id of its choosing ([`QueuePair::post_signaled`]), and polls the
//!   completion queue for [`WorkCompletion`]s ([`QueuePair::poll_cq`], with
//!   [`QueuePair::arm_cq`] to be woken). [`QueuePair::post`], which returns the READ data in a
//!   `Vec` through a [`Completion`], is a convenience that allocates per operation.
//! * A two-sided RPC ([`QueuePair::call`]) carries the KV messages to the server's
//!   [`RpcService`], request and response matched by an id, many in flight, each at most the
//!   granted [`QueuePair::max_message`]; larger requests move by [`rendezvous`] (the client
//!   WRITEs them into a staging slot the server grants, then sends a small message naming it).
//!
//! Backends: [`mem`] (in-process, with fault injection), [`tcp`] (a software NIC over TCP). The
//! [`conformance`] suite holds every backend to the same semantics.
//!
//! What is agreement and what is machinery:
//! * the interface every backend implements, and its contracts: this module (the traits and work
//!   requests), `error` (typed failures), [`region`] (registered memory and keys), [`local`] (the
//!   caller's registered memory and the completion queue's entries), [`send_queue`]
//!   (slot accounting), `secret` (admission), [`completion`](mod@completion), and the [`conformance`] suite;
//! * one module tree per backend, its runtime: [`mem`] (`mem/faults.rs`: fault injection) and
//!   [`tcp`], whose `wire` module is the software NIC's protocol (a sans-IO codec) and whose `qp`
//!   (client) and `nic` (server: event loop, per-connection sans-IO session) are its machinery.

pub mod completion;
pub mod conformance;
mod error;
pub mod local;
pub mod mem;
pub mod region;
pub mod rendezvous;
mod secret;
pub mod send_queue;
pub mod tcp;
#[cfg(feature = "rdma")]
pub mod verbs;
pub mod verbs_config;
pub use verbs_config::{parse_scoped_addr, FabricKind, VerbsConfig, VerbsConnect};

pub use completion::{completion, Completer, Completion};
pub use error::{
    CloseReason, CmError, DeviceError, Disconnect, FabricError, ProtocolError, RemoteAccessError, Unsupported,
};
pub use local::{LocalAccessError, LocalKey, LocalRegions, LocalSlice, WorkCompletion, MAX_LOCAL_REGIONS};
pub use region::{HugePageError, MemoryRegion, RegionDesc, RegionTable, Strided, HUGEPAGE};

/// Where a server registers memory for remote access: a backend's protection domain. The backend
/// mints the remote keys and enforces key, bounds and rights on every access (on hardware, the
/// NIC does); nothing above it checks them. The software backends share a [`RegionTable`].
pub trait Registrar: Send + Sync {
    /// Registers `region` with `access` rights; the descriptor tells peers how to address it.
    fn register(&self, region: Arc<MemoryRegion>, access: Access) -> Result<RegionDesc, FabricError>;
    /// Registers only the windows `pattern` of `region` with `access` rights: the descriptor
    /// addresses the whole region, but an access not inside one window fails with
    /// [`RemoteAccessError::OutOfBounds`] (and puts the queue pair into the error state). The
    /// cache table's client ranges are registered this way, WRITE-only, so that no client can
    /// write a slot's server header.
    fn register_strided(
        &self,
        region: Arc<MemoryRegion>,
        access: Access,
        pattern: Strided,
    ) -> Result<RegionDesc, FabricError>;
    /// Revokes a remote key: later accesses with it fail with [`RemoteAccessError::BadKey`].
    /// Returns whether it was registered.
    fn deregister(&self, rkey: u32) -> bool;

    /// Grants the one connection `peer` the rights `access` to the `len` bytes at `offset` of
    /// the region registered as `base` (through this registrar, with [`Access::WINDOWS`]),
    /// under a key of the window's own: an access with it from any other connection, or
    /// outside the window, is refused as a remote access error (and ends that queue pair), and
    /// so is every access after [`revoke_window`](Self::revoke_window) or after the connection
    /// closes. Addresses are the region's own (the descriptor's `addr` is byte `offset`).
    /// On verbs this is a type-2 memory window bound on the server's queue pair to `peer`;
    /// the grant is in force for every request the peer sends after it has seen anything the
    /// server sent after the grant (RC order). Backends that cannot say
    /// [`Unsupported::MemoryWindows`].
    fn grant_window(
        &self,
        _peer: PeerId,
        _base: RegionDesc,
        _offset: u64,
        _len: u64,
        _access: Access,
    ) -> Result<RegionDesc, FabricError> {
        Err(FabricError::Unsupported(Unsupported::MemoryWindows))
    }

    /// Revokes a window [`grant_window`](Self::grant_window) made for `peer`: accesses with its
    /// key that the peer sends after it has seen anything the server sent after the revocation
    /// are refused (on verbs a local invalidation, ordered on the peer's queue pair). Returns
    /// whether the window was in force.
    fn revoke_window(&self, _peer: PeerId, _rkey: u32) -> bool {
        false
    }
}
pub use secret::{BadSecretLength, Secret, MAX_SECRET};
pub use send_queue::{SendQueue, DEFAULT_SEND_QUEUE_DEPTH};

use std::sync::Arc;
use std::task::Waker;

/// Access rights of a registered region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access(u8);

impl Access {
    /// No remote access (memory only the local side uses, e.g. receive buffers).
    pub const NONE: Access = Access(0);
    pub const READ: Access = Access(1);
    pub const WRITE: Access = Access(2);
    pub const READ_WRITE: Access = Access(3);
    /// Not a right of remote peers: windows may be granted over this registration
    /// ([`Registrar::grant_window`]; on verbs `IBV_ACCESS_MW_BIND`, with local write as binding
    /// a writable window requires).
    pub const WINDOWS: Access = Access(4);

    pub fn allows(self, need: Access) -> bool {
        self.0 & need.0 == need.0
    }

    /// Both sets of rights.
    pub const fn with(self, other: Access) -> Access {
        Access(self.0 | other.0)
    }
}

/// An address in a peer's registered memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteAddr {
    pub addr: u64,
    pub rkey: u32,
}

/// Largest READ or WRITE in one work request, and largest RPC message.
pub const MAX_TRANSFER: usize = 4 << 20;

/// The largest message a server grants by default: the size of the receive buffers it posts per
/// credit. A request with a value of up to about this size goes in one message; larger ones move
/// by [`rendezvous`].
pub const DEFAULT_MAX_MESSAGE: usize = 64 << 10;

/// RPCs a queue pair holds back while its credits are in use, at most, per credit granted: they
/// go out in order as responses return credits; beyond, calls fail with
/// [`FabricError::QueueFull`]. What waits is the caller's own memory, but bounded all the same.
pub const HELD_PER_CREDIT: usize = 4;

/// One one-sided operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkRequest<'a> {
    /// Read `len` bytes at `remote` into the completion's `Vec` ([`QueuePair::post`] only: a
    /// convenience that allocates).
    Read { remote: RemoteAddr, len: u32 },
    /// Write `data` at `remote`: the bytes are taken at post time (like `IBV_SEND_INLINE`), so
    /// `data` need not outlive the call.
    Write { remote: RemoteAddr, data: &'a [u8] },
    /// Read `local.len` bytes at `remote` into the caller's registered memory.
    ReadInto { remote: RemoteAddr, local: LocalSlice },
    /// Write `local.len` bytes of the caller's registered memory at `remote`.
    WriteFrom { remote: RemoteAddr, local: LocalSlice },
}

impl WorkRequest<'_> {
    /// Bytes this request adds to the `Vec` of [`QueuePair::post`].
    pub fn read_len(&self) -> usize {
        match self {
            WorkRequest::Read { len, .. } => *len as usize,
            _ => 0,
        }
    }

    /// Bytes this request reads from the remote side, wherever they land.
    pub fn remote_read_len(&self) -> usize {
        match self {
            WorkRequest::Read { len, .. } => *len as usize,
            WorkRequest::ReadInto { local, .. } => local.len as usize,
            _ => 0,
        }
    }

    /// Bytes this request writes to the remote side.
    pub fn write_len(&self) -> usize {
        match self {
            WorkRequest::Write { data, .. } => data.len(),
            WorkRequest::WriteFrom { local, .. } => local.len as usize,
            _ => 0,
        }
    }

    pub fn remote(&self) -> RemoteAddr {
        match *self {
            WorkRequest::Read { remote, .. }
            | WorkRequest::Write { remote, .. }
            | WorkRequest::ReadInto { remote, .. }
            | WorkRequest::WriteFrom { remote, .. } => remote,
        }
    }
}

/// Checks the shape of a chain before posting it.
pub fn validate_chain(chain: &[WorkRequest<'_>], signaled: bool) -> Result<(), FabricError> {
    if chain.is_empty() {
        return Err(FabricError::EmptyChain);
    }
    for wr in chain {
        let is_read = matches!(wr, WorkRequest::Read { .. } | WorkRequest::ReadInto { .. });
        if is_read && !signaled {
            return Err(FabricError::UnsignaledRead);
        }
        let len = wr.remote_read_len().max(wr.write_len());
        if len > MAX_TRANSFER {
            return Err(FabricError::TooLarge(len));
        }
    }
    Ok(())
}

/// A client's connection to a server: one-sided operations and RPCs.
pub trait QueuePair: Send + Sync {
    /// Posts `chain`, executed in order. Resolves when the whole chain has executed, with the
    /// bytes of every READ in the chain, concatenated in chain order. Each request takes a slot
    /// of the send queue until a signaled completion covers it ([`send_queue`]); with no slot
    /// free, it resolves at once to [`FabricError::QueueFull`].
    fn post(&self, chain: &[WorkRequest<'_>]) -> Completion<Vec<u8>>;

    /// Posts a chain of WRITEs without a completion. Returns once it is queued (in order with
    /// everything posted before and after it on this queue pair); a remote failure is counted
    /// in [`async_errors`](Self::async_errors) (and puts the queue pair into the error state).
    /// Its slots come back with a later signaled completion; the backend signals selectively so
    /// that a stream of these does not need the caller's help, but a poster that outruns the
    /// peer gets [`FabricError::QueueFull`].
    fn post_unsignaled(&self, chain: &[WorkRequest<'_>]) -> Result<(), FabricError>;

    /// Sends an RPC request of at most [`max_message`](Self::max_message) bytes; resolves with
    /// the response. A larger request fails with [`FabricError::TooLarge`]:
    /// [`rendezvous::call`] moves those.
    fn call(&self, request: &[u8]) -> Completion<Vec<u8>>;

    /// The largest message [`call`](Self::call) sends in one piece: what the server granted for
    /// this connection (the size of its pre-posted receive buffers).
    fn max_message(&self) -> usize;

    /// Failures of unsignaled chains so far.
    fn async_errors(&self) -> u64;

    /// Registers `region` as this queue pair's local memory, for [`WorkRequest::ReadInto`] and
    /// [`WorkRequest::WriteFrom`]. At most [`MAX_LOCAL_REGIONS`] per queue pair.
    fn register_local(&self, region: Arc<MemoryRegion>) -> Result<LocalKey, FabricError>;

    /// Posts `chain` signaled, with no allocation: its completion goes to this queue pair's
    /// completion queue as a [`WorkCompletion`] with `wr_id` (ids are the caller's; the backend
    /// does not interpret them). Completions arrive in posting order. A refusal (returned here)
    /// sent nothing and produces no completion; once accepted, the chain produces exactly one
    /// completion, also when the queue pair fails (then with the reason, or
    /// [`FabricError::Flushed`]). Slots of the send queue as for [`post`](Self::post).
    fn post_signaled(&self, wr_id: u64, chain: &[WorkRequest<'_>]) -> Result<(), FabricError>;

    /// Moves up to `max` completions from the completion queue to `out` (appended; reuse the
    /// `Vec` and nothing is allocated). Returns how many. Never blocks.
    fn poll_cq(&self, out: &mut Vec<WorkCompletion>, max: usize) -> usize;

    /// Asks for `waker` to be woken once the completion queue holds a completion: at once if it
    /// holds one already (so poll, arm, poll again loses no wake-up). One waker at a time: the
    /// latest replaces the earlier one, as a completion queue has one notification channel.
    fn arm_cq(&self, waker: &Waker);
}

/// An RPC received by the server.
pub struct IncomingRpc {
    pub payload: Vec<u8>,
    /// The queue pair (connection) it came on.
    pub peer: PeerId,
    pub responder: Responder,
}

/// A client queue pair as the server sees it: the identity the server's per-client limits count
/// by (an admitted client is known by nothing else; the shared secret is the same for all).
/// Unique among all backends' queue pairs for the life of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerId(pub u64);

impl PeerId {
    /// A new identity, never handed out before.
    pub fn fresh() -> PeerId {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        PeerId(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }
}

/// Where an RPC's response goes: implemented by each backend's server side.
pub trait ReplySink: Send + Sync {
    /// Sends the response to request `id`.
    fn reply(&self, id: u64, payload: &[u8]);

    /// Whether the connection is gone (its replies are dropped). Set before the service is told
    /// [`peer_closed`](RpcService::peer_closed).
    fn is_closed(&self) -> bool {
        false
    }
}

/// The right (and duty) to answer one RPC. Dropping it unanswered sends an empty response, which
/// the client reports as a protocol error instead of waiting forever.
pub struct Responder {
    sink: Arc<dyn ReplySink>,
    id: u64,
    answered: bool,
}

impl Responder {
    pub fn new(sink: Arc<dyn ReplySink>, id: u64) -> Responder {
        Responder { sink, id, answered: false }
    }

    pub fn reply(mut self, payload: &[u8]) {
        self.answered = true;
        self.sink.reply(self.id, payload);
    }

    /// Whether the client that sent the RPC is gone: once this is true, the service has been or
    /// is about to be told [`peer_closed`](RpcService::peer_closed), so nothing the service
    /// hands this client from now on would be freed by that call.
    pub fn peer_gone(&self) -> bool {
        self.sink.is_closed()
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if !self.answered {
            self.sink.reply(self.id, &[]);
        }
    }
}

/// The server's handler of RPCs. `handle` runs on a NIC thread (or the caller's thread for
/// `mem`), so it must hand the work off quickly, e.g. to a worker's queue.
pub trait RpcService: Send + Sync + 'static {
    fn handle(&self, rpc: IncomingRpc);

    /// The connection of `peer` closed (the client left, failed, or was cut off): the service
    /// frees what it held for that client. Called once per peer, after every RPC of the peer
    /// was handed to [`handle`](Self::handle) and after its responders report
    /// [`peer_gone`](Responder::peer_gone); RPCs still in the service may be answered later
    /// (into nothing).
    fn peer_closed(&self, _peer: PeerId) {}
}

impl<F: Fn(IncomingRpc) + Send + Sync + 'static> RpcService for F {
    fn handle(&self, rpc: IncomingRpc) {
        self(rpc)
    }
}
