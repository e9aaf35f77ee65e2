//! `etcd://HOST:PORT[/prefix]`: where a cluster's coordination state lives, and its key layout.
//!
//! Under the prefix (default `/scalio`):
//! * `PREFIX/members/ID`: one [`super::Member`] record per live server, attached to the
//!   server's lease (it disappears when the server stops renewing it);
//! * `PREFIX/map`: the current [`super::ClusterMap`], replaced only by compare-and-swap.

use std::fmt;
use std::str::FromStr;

pub const DEFAULT_PREFIX: &str = "/scalio";

/// A cluster address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterUrl {
    /// etcd client endpoint, `HOST:PORT`.
    pub endpoint: String,
    /// Key prefix, starting with `/` and without a trailing one.
    pub prefix: String,
}

/// A cluster address that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("a cluster address starts with etcd://")]
    Scheme,
    #[error("the etcd endpoint must be HOST:PORT")]
    Endpoint,
    #[error("the key prefix may not contain empty segments")]
    Prefix,
}

impl FromStr for ClusterUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<ClusterUrl, UrlError> {
        let rest = s.strip_prefix("etcd://").ok_or(UrlError::Scheme)?;
        let (endpoint, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let port_ok = endpoint.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if !port_ok {
            return Err(UrlError::Endpoint);
        }
        let path = path.trim_end_matches('/');
        let prefix = if path.is_empty() { DEFAULT_PREFIX.to_string() } else { path.to_string() };
        if prefix[1..].split('/').any(str::is_empty) {
            return Err(UrlError::Prefix);
        }
        Ok(ClusterUrl { endpoint: endpoint.to_string(), prefix })
    }
}

impl fmt::Display for ClusterUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "etcd://{}{}", self.endpoint, self.prefix)
    }
}

impl ClusterUrl {
    pub fn members_prefix(&self) -> Vec<u8> {
        format!("{}/members/", self.prefix).into_bytes()
    }

    pub fn member_key(&self, id: &super::NodeId) -> Vec<u8> {
        format!("{}/members/{}", self.prefix, id).into_bytes()
    }

    pub fn map_key(&self) -> Vec<u8> {
        format!("{}/map", self.prefix).into_bytes()
    }

    /// Everything the cluster keeps in etcd (members, map, ready, installed and leaving records).
    pub fn all_prefix(&self) -> Vec<u8> {
        format!("{}/", self.prefix).into_bytes()
    }

    pub fn ready_prefix(&self) -> Vec<u8> {
        format!("{}/ready/", self.prefix).into_bytes()
    }

    /// Where `id` reports the copies it completed (the value: a JSON object from partition
    /// to the `since` of the move completed).
    pub fn ready_key(&self, id: &super::NodeId) -> Vec<u8> {
        format!("{}/ready/{id}", self.prefix).into_bytes()
    }

    pub fn installed_prefix(&self) -> Vec<u8> {
        format!("{}/installed/", self.prefix).into_bytes()
    }

    /// Where `id` reports the newest map epoch it installed (the value: the epoch in decimal),
    /// so that the map lets it leave a chain only once it stopped serving the chain's reads.
    pub fn installed_key(&self, id: &super::NodeId) -> Vec<u8> {
        format!("{}/installed/{id}", self.prefix).into_bytes()
    }

    pub fn leaving_prefix(&self) -> Vec<u8> {
        format!("{}/leaving/", self.prefix).into_bytes()
    }

    /// Present while `id` is being drained (`scalio-admin drain`).
    pub fn leaving_key(&self, id: &super::NodeId) -> Vec<u8> {
        format!("{}/leaving/{id}", self.prefix).into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cluster_addresses() {
        let u: ClusterUrl = "etcd://127.0.0.1:2379".parse().unwrap();
        assert_eq!(u, ClusterUrl { endpoint: "127.0.0.1:2379".into(), prefix: "/scalio".into() });
        assert_eq!(u.map_key(), b"/scalio/map");
        assert_eq!(u.ready_key(&super::super::NodeId("s1".into())), b"/scalio/ready/s1");
        assert_eq!(u.leaving_key(&super::super::NodeId("s1".into())), b"/scalio/leaving/s1");
        let u: ClusterUrl = "etcd://localhost:2379/test/a/".parse().unwrap();
        assert_eq!(u.prefix, "/test/a");
        assert_eq!(u.member_key(&super::super::NodeId("s1".into())), b"/test/a/members/s1");
        assert_eq!(u.to_string(), "etcd://localhost:2379/test/a");
        assert_eq!("http://x:1".parse::<ClusterUrl>(), Err(UrlError::Scheme));
        assert_eq!("etcd://x".parse::<ClusterUrl>(), Err(UrlError::Endpoint));
        assert_eq!("etcd://:1".parse::<ClusterUrl>(), Err(UrlError::Endpoint));
        assert_eq!("etcd://x:99999".parse::<ClusterUrl>(), Err(UrlError::Endpoint));
        assert_eq!("etcd://x:1/a//b".parse::<ClusterUrl>(), Err(UrlError::Prefix));
    }
}
