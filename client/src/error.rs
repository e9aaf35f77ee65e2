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
    #[error("block path: {0}")]
    Block(#[from] BlockError),
    #[error("the blocks read from SSD {ssd} stayed inconsistent after {attempts} attempts: {last}")]
    Inconsistent { ssd: u16, attempts: u32, last: LayoutError },
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
