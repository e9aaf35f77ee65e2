//! The client's block path: how a cache miss reads the SSD blocks itself.

pub mod direct;

use crate::error::ClientError;
use crate::nvme::{ConnectOptions, NvmeTcpBlockReader};
use scalio_common::block::BlockReader;
use scalio_common::rpc::ServerInfo;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

pub use direct::DirectBlockReader;

/// Which block path a client uses for the SSD reads of a cache miss.
#[derive(Clone, Default)]
pub enum BlockPath {
    /// NVMe/TCP to the subsystems the server advertises, if it runs a target (a remote server);
    /// otherwise `direct` on the paths it advertises (same host).
    #[default]
    Auto,
    /// NVMe/TCP to the subsystems the server advertises (an error if it advertises none).
    NvmeTcp,
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
            BlockPath::NvmeTcp => write!(f, "NvmeTcp"),
            BlockPath::Direct(p) => f.debug_tuple("Direct").field(p).finish(),
            BlockPath::Custom(r) => write!(f, "Custom({})", r.kind()),
        }
    }
}

/// Opens the block path for a server described by `info`, reached at `peer` (used for targets
/// that listen on an unspecified address such as 0.0.0.0).
pub(crate) fn open(
    path: &BlockPath,
    info: &ServerInfo,
    peer: Option<IpAddr>,
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
    let nvme = || -> Result<Arc<dyn BlockReader>, ClientError> {
        let mut targets = info.targets.clone();
        targets.sort_by_key(|t| t.ssd);
        if targets.len() != info.ssds.len() || targets.iter().enumerate().any(|(i, t)| usize::from(t.ssd) != i) {
            return Err(ClientError::Config(format!(
                "the server advertises NVMe/TCP subsystems for {} of its {} SSDs",
                targets.len(),
                info.ssds.len()
            )));
        }
        for t in &mut targets {
            if let (Ok(a), Some(peer)) = (t.addr.parse::<SocketAddr>(), peer) {
                if a.ip().is_unspecified() {
                    t.addr = SocketAddr::new(peer, a.port()).to_string();
                }
            }
        }
        Ok(Arc::new(NvmeTcpBlockReader::new(targets, ConnectOptions::default())))
    };
    match path {
        BlockPath::Custom(r) => Ok(r.clone()),
        BlockPath::Direct(paths) => direct(paths.clone()),
        BlockPath::NvmeTcp => nvme(),
        BlockPath::Auto if !info.targets.is_empty() => nvme(),
        BlockPath::Auto => direct(info.ssds.iter().map(|s| PathBuf::from(&s.path)).collect()),
    }
}
