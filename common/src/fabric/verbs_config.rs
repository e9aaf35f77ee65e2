//! Which fabric a server or client uses, and the RDMA device settings of the `verbs` backend.
//! Plain data, compiled with or without the `rdma` feature, so that configurations parse the same
//! everywhere and a build without the backend refuses `verbs` with a clear reason.

/// The fabric between clients and a server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FabricKind {
    /// The software NIC over TCP.
    #[default]
    Tcp,
    /// RDMA verbs on a real device (cargo feature `rdma`).
    Verbs,
}

impl FabricKind {
    /// Whether this build can use it.
    pub fn available(self) -> bool {
        match self {
            FabricKind::Tcp => true,
            FabricKind::Verbs => cfg!(feature = "rdma"),
        }
    }
}

impl std::str::FromStr for FabricKind {
    type Err = String;
    fn from_str(s: &str) -> Result<FabricKind, String> {
        match s {
            "tcp" => Ok(FabricKind::Tcp),
            "verbs" => Ok(FabricKind::Verbs),
            other => Err(format!("unknown fabric {other:?} (tcp or verbs)")),
        }
    }
}

/// Which device, port and GID to use.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerbsConfig {
    /// Device name (`ibv_devices`), e.g. `mlx5_0` or `rxe0`; None: the first device.
    pub device: Option<String>,
    /// Port number (from 1).
    pub port: u8,
    /// GID index (`show_gids`); None: the first IPv4-mapped GID (RoCE v2 over IPv4), else the
    /// first non-zero one.
    pub gid_index: Option<u32>,
}

impl Default for VerbsConfig {
    fn default() -> Self {
        VerbsConfig { device: None, port: 1, gid_index: None }
    }
}
