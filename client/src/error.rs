//! What can go wrong in a client operation.

use scalio_common::block::BlockError;
use scalio_common::fabric::FabricError;
use scalio_common::key::KeyError;
use scalio_common::rpc::{CodecError, Status};
use scalio_common::ssd::LayoutError;

/// A failed client operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("invalid key: {0}")]
    Key(#[from] KeyError),
    #[error("value of {0} bytes exceeds the maximum of {max}", max = scalio_common::ssd::MAX_VALUE_LEN)]
    ValueTooLarge(usize),
    #[error("fabric: {0}")]
    Fabric(#[from] FabricError),
    #[error("malformed reply from the server: {0}")]
    Codec(#[from] CodecError),
    #[error("the server answered a {asked} request with a {got} reply")]
    WrongReply { asked: &'static str, got: &'static str },
    #[error("the server refused the request ({status:?}): {message}")]
    Server { status: Status, message: String },
    /// The server is overloaded (a bounded queue is full) or shutting down; nothing was done.
    /// Retrying later may succeed.
    #[error("the server is unavailable (retry later): {0}")]
    Unavailable(String),
    /// A device error stopped writes to the key's SSD until the server restarts (fail-stop);
    /// nothing was done. Reads still work.
    #[error("the server stopped taking writes to this key's SSD: {0}")]
    WritesStopped(String),
    /// The key's SSD is full even after garbage collection; nothing was written. Reads work.
    #[error("the key's SSD is full: {0}")]
    NoSpace(String),
    #[error("block path: {0}")]
    Block(#[from] BlockError),
    /// The blocks failed their checks on every attempt (space reused faster than the reads,
    /// or corruption); their contents were not returned.
    #[error("the blocks read from SSD {ssd} at block {block} stayed inconsistent after {attempts} attempts: {last}")]
    Inconsistent { ssd: u16, block: u64, attempts: u32, last: LayoutError },
    #[error("the server speaks protocol version {server}, this client version {client}")]
    ProtocolVersion { server: u32, client: u32 },
    #[error("the server named SSD {0}, which it did not describe")]
    NoSuchSsd(u16),
    #[error("configuration: {0}")]
    Config(String),
    #[error("the server does not serve this key at cluster-map epoch {epoch}")]
    WrongOwner { epoch: u64 },
    #[error("no cluster map (at epoch {epoch} or newer) arrived within {waited:?}")]
    NoClusterMap { epoch: u64, waited: std::time::Duration },
    #[error("the cluster map at epoch {epoch} has no server for this key")]
    NoOwner { epoch: u64 },
    #[error("gave up routing after {attempts} attempts (last map epoch {epoch})")]
    Misrouted { attempts: u32, epoch: u64 },
}

impl ClientError {
    /// The error for a reply with a status that is not a success of the request.
    pub(crate) fn from_status(status: Status, body: &[u8]) -> ClientError {
        let message = String::from_utf8_lossy(body).into_owned();
        match status {
            Status::Unavailable => ClientError::Unavailable(message),
            Status::WritesStopped => ClientError::WritesStopped(message),
            Status::NoSpace => ClientError::NoSpace(message),
            status => ClientError::Server { status, message },
        }
    }

    /// Whether the server refused the request without doing anything, so that sending it again
    /// later, unchanged, may succeed (a lost connection or a timeout is not: the request may
    /// have taken effect).
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Unavailable(_) => true,
            ClientError::Fabric(FabricError::Staging(why)) => why.is_retryable(),
            _ => false,
        }
    }
}
