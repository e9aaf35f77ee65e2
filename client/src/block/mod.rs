//! The client's block path: how a cache miss reads the SSD blocks itself.

pub mod direct;

use crate::error::ClientError;
use scalio_common::block::BlockReader;
use scalio_common::rpc::ServerInfo;
use std::path::PathBuf;
use std::sync::Arc;

pub use direct::DirectBlockReader;

/// Which block path a client uses for the SSD reads of a cache miss.
#[derive(Clone, Default)]
pub enum BlockPath {
    /// `direct` on the paths the server advertises (same host).
    #[default]
    Auto,
    /// Positional reads of these files or devices (SSD `i` at `paths[i]`): the server's files on
    /// the same host, or kernel NVMe-oF namespaces.
    Direct(Vec<PathBuf>),
    /// Any other implementation (e.g. the server's in-process device objects).
    Custom(Arc<dyn BlockReader>),
}

impl std::fmt::Debug for BlockPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlockPath::Auto => write!(f, "Auto"),
            BlockPath::Direct(p) => f.debug_tuple("Direct").field(p).finish(),
            BlockPath::Custom(r) => write!(f, "Custom({})", r.kind()),
        }
    }
}

/// Opens the block path for a server described by `info`.
pub(crate) fn open(
    path: &BlockPath,
    info: &ServerInfo,
    io_threads: usize,
) -> Result<Arc<dyn BlockReader>, ClientError> {
    let direct = |paths: Vec<PathBuf>| -> Result<Arc<dyn BlockReader>, ClientError> {
        if paths.len() != info.ssds.len() {
            return Err(ClientError::Config(format!(
                "{} block devices given for a server with {} SSDs",
                paths.len(),
                info.ssds.len()
            )));
        }
        Ok(Arc::new(DirectBlockReader::open(&paths, io_threads)?))
    };
    match path {
        BlockPath::Custom(r) => Ok(r.clone()),
        BlockPath::Direct(paths) => direct(paths.clone()),
        BlockPath::Auto => direct(info.ssds.iter().map(|s| PathBuf::from(&s.path)).collect()),
    }
}
