//! Errors of the NVMe/TCP initiator.

use std::time::Duration;

use scalio_common::block::BlockError;
use scalio_common::nvme::sqe::StatusField;
use scalio_common::nvme::FatalError;

/// What went wrong talking to an NVMe/TCP controller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NvmeError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("I/O error: {0}")]
    Io(String),
    #[error("{what} timed out after {after:?}")]
    Timeout { what: String, after: Duration },
    #[error("{command} failed: {status}")]
    Status { command: String, status: StatusField },
    #[error("Connect to {subnqn} rejected: {status}{detail}")]
    ConnectRejected { subnqn: String, status: StatusField, detail: String },
    #[error("the controller requires authentication, which is not supported")]
    AuthenticationRequired,
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The controller broke the protocol; an H2CTermReq was sent and the queue closed.
    #[error("fatal transport error (H2CTermReq sent): {0}")]
    Fatal(FatalError),
    /// The controller sent a C2HTermReq and closed the queue.
    #[error("the controller terminated the connection: FES {fes:#x} ({name}), FEI {fei:#x}")]
    Terminated { fes: u16, name: &'static str, fei: u32 },
    #[error("the queue is disconnected")]
    Disconnected,
    #[error("the controller did not become ready within {0:?}")]
    NotReady(Duration),
    #[error("the controller reported a fatal status (CSTS.CFS)")]
    ControllerFatal,
    #[error("data digest mismatch in the data of command {cid}")]
    DataDigest { cid: u16 },
    #[error("blocks {lba}..{end} are beyond namespace {nsid} ({blocks} blocks)", end = lba + u64::from(*count))]
    OutOfRange { nsid: u32, lba: u64, count: u32, blocks: u64 },
    #[error("the controller has no active namespace {0}")]
    NoSuchNamespace(u32),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl NvmeError {
    /// Whether the queue or connection this came from is unusable afterwards.
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, NvmeError::Io(_) | NvmeError::Fatal(_) | NvmeError::Terminated { .. } | NvmeError::Disconnected)
    }
}

impl From<NvmeError> for BlockError {
    fn from(e: NvmeError) -> BlockError {
        match e {
            NvmeError::Timeout { .. } => BlockError::Timeout,
            NvmeError::Disconnected => BlockError::Disconnected,
            NvmeError::Io(m) => BlockError::Io(m),
            NvmeError::Connect { .. } => BlockError::Io(e.to_string()),
            NvmeError::Status { status, .. } => {
                BlockError::Status((u16::from(status.sct()) << 8) | u16::from(status.sc()))
            }
            other => BlockError::Protocol(other.to_string()),
        }
    }
}
