//! What can go wrong on the fabric, as types a caller can match on.
//!
//! The shapes follow verbs: a work request fails with the remote side's reason
//! ([`RemoteAccessError`], carried in [`FabricError::Remote`]); that failure moves the queue pair
//! into the error state, so everything posted after it completes as [`FabricError::Flushed`]
//! until the caller opens a new queue pair. A connection that ends says why
//! ([`Disconnect`], and [`CloseReason`] when the server ended it on purpose).

use std::io;

/// Why the remote side refused a READ or WRITE. Encoded on the wire as its discriminant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[repr(u8)]
pub enum RemoteAccessError {
    #[error("unknown remote key")]
    BadKey = 1,
    #[error("access outside the registered region")]
    OutOfBounds = 2,
    #[error("the region does not grant this access")]
    AccessDenied = 3,
    #[error("work request too large")]
    TooLarge = 4,
    /// The remote NIC refused the access, without saying why: on verbs a bad key, an access
    /// out of bounds and missing rights all complete as `IBV_WC_REM_ACCESS_ERR`.
    #[error("the remote NIC refused the access (bad key, out of bounds or missing rights)")]
    Refused = 5,
}

impl RemoteAccessError {
    pub fn from_u8(v: u8) -> Option<RemoteAccessError> {
        use RemoteAccessError::*;
        [BadKey, OutOfBounds, AccessDenied, TooLarge, Refused].into_iter().find(|e| *e as u8 == v)
    }
}

/// Why a server ends a connection on purpose. Encoded on the wire as its discriminant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[repr(u8)]
pub enum CloseReason {
    #[error("malformed handshake")]
    BadHandshake = 1,
    #[error("unsupported protocol version")]
    UnsupportedVersion = 2,
    #[error("protocol violation")]
    ProtocolViolation = 3,
    #[error("the server is shutting down")]
    Shutdown = 4,
    /// A work request failed: the queue pair is in the error state and executes nothing more.
    #[error("the queue pair entered the error state")]
    QueuePairError = 5,
    /// The handshake did not carry the server's shared secret.
    #[error("not authenticated")]
    Unauthenticated = 6,
    /// The server is at its connection limit.
    #[error("too many connections")]
    TooManyConnections = 7,
}

impl CloseReason {
    pub fn from_u8(v: u8) -> Option<CloseReason> {
        use CloseReason::*;
        [
            BadHandshake,
            UnsupportedVersion,
            ProtocolViolation,
            Shutdown,
            QueuePairError,
            Unauthenticated,
            TooManyConnections,
        ]
        .into_iter()
        .find(|c| *c as u8 == v)
    }
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Disconnect {
    #[error("the server closed the connection")]
    PeerClosed,
    #[error("the server closed the connection: {0}")]
    ClosedByServer(CloseReason),
    #[error("the queue pair was closed")]
    Closed,
    #[error("sending failed: {0}")]
    Send(io::ErrorKind),
    #[error("receiving failed: {0}")]
    Receive(io::ErrorKind),
    /// The backend dropped the request without answering it.
    #[error("request abandoned")]
    Abandoned,
}

/// What a backend cannot do on the hardware it runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unsupported {
    /// A registration that grants only a strided pattern of windows: verbs keys cover one
    /// contiguous range (mlx5's strided keys and per-window memory windows are not used yet).
    #[error("strided registrations")]
    StridedRegistration,
    /// Granting one connection a window of a region ([`Registrar::grant_window`]): the device
    /// has no type-2 memory windows (`IBV_DEVICE_MEM_WINDOW_TYPE_2B` not in its capabilities).
    ///
    /// [`Registrar::grant_window`]: crate::fabric::Registrar::grant_window
    #[error("memory windows per connection")]
    MemoryWindows,
    /// A window over a registration that was not made with [`Access::WINDOWS`](crate::fabric::Access::WINDOWS),
    /// or that this registrar does not hold.
    #[error("a window over a registration not made for windows")]
    NotBindable,
    /// A window for a connection this backend does not know (closed, or never admitted).
    #[error("a window for an unknown connection")]
    UnknownPeer,
}

/// Why an RDMA device could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// libibverbs found no device (or is not installed, or the kernel has no RDMA support).
    #[error("no RDMA device ({0})")]
    NoDevice(io::ErrorKind),
    /// The configured device name is not among the devices found.
    #[error("the configured RDMA device is not present")]
    NotFound,
    /// The configured GID index has no usable GID on the port.
    #[error("GID index {0} is not usable on the port")]
    BadGid(u32),
    /// A verbs call failed.
    #[error("{call} failed: {kind}")]
    Verbs { call: &'static str, kind: io::ErrorKind },
}

/// Why connection setup through rdma_cm failed (the verbs backend's default handshake).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CmError {
    /// A librdmacm call failed (or librdmacm, or the kernel's `rdma_ucm`, is missing).
    #[error("{call} failed: {kind}")]
    Call { call: &'static str, kind: io::ErrorKind },
    /// The server's IP address maps to no RDMA device here (`RDMA_CM_EVENT_ADDR_ERROR`): not an
    /// address of an RDMA-capable interface or reachable through one, a loopback address, or an
    /// IPv6 link-local address without its scope (`fe80::…%eth0`).
    #[error("address resolution failed: {0}")]
    AddressResolution(io::ErrorKind),
    /// No route to the resolved address (`RDMA_CM_EVENT_ROUTE_ERROR`).
    #[error("route resolution failed: {0}")]
    RouteResolution(io::ErrorKind),
    /// The peer did not answer (`RDMA_CM_EVENT_UNREACHABLE`, or `CONNECT_ERROR`).
    #[error("the peer is unreachable: {0}")]
    Unreachable(io::ErrorKind),
    /// The peer's connection manager rejected the request without a scalio reason, e.g. no
    /// listener on that address and port. `reason` is the CM's reject reason (InfiniBand CM
    /// REJ code: 8 is "invalid service ID", no listener).
    #[error("rejected by the peer's connection manager (reason {reason})")]
    Rejected { reason: i32 },
    /// The address resolved to another device or port than the one configured.
    #[error("the address is on another RDMA device or port than the configured one")]
    OtherDevice,
    /// An event that does not belong at this step of the handshake (`RDMA_CM_EVENT_*` number).
    #[error("unexpected rdma_cm event {0}")]
    UnexpectedEvent(u32),
    /// No event within the handshake's time.
    #[error("timed out")]
    Timeout,
}

/// The peer broke the fabric protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("malformed frame from the server")]
    Malformed,
    #[error("malformed handshake from the server")]
    BadHandshake,
    #[error("the server speaks protocol version {server}, this client {client}")]
    Version { server: u16, client: u16 },
    #[error("a completion for an unknown request {0}")]
    UnknownRequest(u64),
    #[error("a success completion of an unsignaled chain")]
    UnsignaledSuccess,
    /// The server's RPC service dropped the request without answering.
    #[error("the server dropped the request")]
    Dropped,
}

/// A failed fabric operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FabricError {
    /// Work request `index` of the chain was refused; the rest of the chain was not executed
    /// and the queue pair is now in the error state.
    #[error("work request {index} of the chain failed: {error}")]
    Remote { index: u16, error: RemoteAccessError },
    /// Not executed: the queue pair is in the error state after an earlier failure. Open a new
    /// queue pair.
    #[error("flushed: the queue pair is in the error state")]
    Flushed,
    #[error("an unsignaled chain cannot contain a READ")]
    UnsignaledRead,
    /// A chain posted for the completion queue has a READ with no local memory to land in.
    #[error("a READ posted with a work-request id needs a local buffer (ReadInto)")]
    ReadWithoutBuffer,
    #[error("empty chain")]
    EmptyChain,
    #[error("work request or message of {0} bytes is too large")]
    TooLarge(usize),
    /// The send queue is full: wait for completions before posting more.
    #[error("the send queue is full")]
    QueueFull,
    #[error("connection lost: {0}")]
    Disconnected(Disconnect),
    /// The server refused the connection during the handshake.
    #[error("the server refused the connection: {0}")]
    Refused(CloseReason),
    #[error("peer violated the protocol: {0}")]
    Protocol(ProtocolError),
    #[error("I/O error: {0}")]
    Io(io::ErrorKind),
    #[error("no address to connect to")]
    NoAddress,
    #[error("the server has no RPC service")]
    NoService,
    #[error("timed out")]
    Timeout,
    /// The post's local memory was refused (nothing was sent).
    #[error("local memory: {0}")]
    LocalAccess(super::LocalAccessError),
    /// The server refused a staged (rendezvous) transfer; the queue pair is still usable.
    #[error("staging a large message: {0}")]
    Staging(super::rendezvous::StagingRefusal),
    /// The backend cannot do this (see [`Unsupported`]).
    #[error("this fabric backend does not support {0}")]
    Unsupported(Unsupported),
    /// The RDMA device could not be opened or used.
    #[error("RDMA device: {0}")]
    Device(DeviceError),
    /// Connection setup through rdma_cm failed.
    #[error("rdma_cm: {0}")]
    ConnectionManager(CmError),
    /// A backend that runs on the caller's async runtime was used outside one.
    #[error("not inside a tokio runtime (this queue pair's driver runs on the caller's runtime)")]
    NoRuntime,
}

impl From<io::Error> for FabricError {
    fn from(e: io::Error) -> Self {
        FabricError::Io(e.kind())
    }
}

impl FabricError {
    /// Whether the queue pair that returned this error can no longer be used (a new one must be
    /// opened): the error state, or a lost connection.
    pub fn ends_queue_pair(&self) -> bool {
        matches!(
            self,
            FabricError::Remote { .. }
                | FabricError::Flushed
                | FabricError::Disconnected(_)
                | FabricError::Protocol(_)
                | FabricError::Io(_)
        )
    }
}
