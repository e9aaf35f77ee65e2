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

/// How a verbs client and server set up their queue pairs' connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum VerbsConnect {
    /// rdma_cm: the server listens on an rdma_cm identifier bound to its address, clients
    /// resolve address and route by IP (IPv4, or IPv6 with its scope: `[fe80::…%eth0]:port`),
    /// the handshake rides in the CM's private data, and a CM disconnect says a peer left.
    #[default]
    #[serde(rename = "rdma_cm")]
    RdmaCm,
    /// A TCP connection carries the handshake (queue pair numbers, PSNs, GIDs exchanged by
    /// hand) and stays open as the sign the client lives. For addresses rdma_cm cannot resolve
    /// (loopback, an IP network that is not the RDMA one).
    #[serde(rename = "tcp")]
    Tcp,
}

impl std::str::FromStr for VerbsConnect {
    type Err = String;
    fn from_str(s: &str) -> Result<VerbsConnect, String> {
        match s {
            "rdma_cm" => Ok(VerbsConnect::RdmaCm),
            "tcp" => Ok(VerbsConnect::Tcp),
            other => Err(format!("unknown verbs connection setup {other:?} (rdma_cm or tcp)")),
        }
    }
}

/// Which device, port and GID to use, and how to connect.
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
    /// Connection setup: rdma_cm (default) or the TCP handshake.
    pub connect: VerbsConnect,
}

impl Default for VerbsConfig {
    fn default() -> Self {
        VerbsConfig { device: None, port: 1, gid_index: None, connect: VerbsConnect::RdmaCm }
    }
}

/// Parses a socket address, with an IPv6 scope given by interface name as well as by number
/// (`[fe80::1%eth0]:7400`, which `SocketAddr`'s parser refuses): RoCE on link-local addresses
/// needs the scope to pick the interface.
pub fn parse_scoped_addr(s: &str) -> Option<std::net::SocketAddr> {
    if let Ok(a) = s.parse() {
        return Some(a);
    }
    let (host, port) = s.strip_prefix('[')?.split_once("]:")?;
    let (ip, scope) = host.split_once('%')?;
    let ip: std::net::Ipv6Addr = ip.parse().ok()?;
    let port: u16 = port.parse().ok()?;
    let name = std::ffi::CString::new(scope).ok()?;
    // SAFETY: a NUL-terminated name that lives across the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then(|| std::net::SocketAddr::V6(std::net::SocketAddrV6::new(ip, port, 0, index)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn scoped_addresses_parse_by_interface_name() {
        assert_eq!(parse_scoped_addr("10.0.2.15:7400"), Some("10.0.2.15:7400".parse().unwrap()));
        let lo = parse_scoped_addr("[fe80::1%lo]:7400").expect("lo exists everywhere");
        match lo {
            SocketAddr::V6(a) => {
                assert_eq!(a.port(), 7400);
                assert_eq!(a.ip().segments()[0], 0xfe80);
                assert_ne!(a.scope_id(), 0);
            }
            other => panic!("{other}"),
        }
        assert_eq!(parse_scoped_addr("[fe80::1%no-such-if0]:7400"), None);
        assert_eq!(parse_scoped_addr("[fe80::1%lo]"), None);
        assert_eq!(parse_scoped_addr("fe80::1%lo:7400"), None);
        assert_eq!("rdma_cm".parse(), Ok(VerbsConnect::RdmaCm));
        assert_eq!("tcp".parse(), Ok(VerbsConnect::Tcp));
        assert!("cm".parse::<VerbsConnect>().is_err());
    }
}
