//! A small blocking client of etcd's v3 API through its JSON gateway (HTTP/1.1 on the client
//! port): the range reads, compare-and-swap transactions, leases and watches the cluster uses.
//!
//! Why the gateway and not gRPC: the `etcd-client` crate generates its gRPC code with
//! `protoc` at build time (a system package) and brings tonic, prost and hyper; the gateway needs
//! only an HTTP client (`ureq`, without TLS) and the JSON codec in [`wire`], which is tested
//! without an etcd. The gateway is part of every etcd 3.4+ server.

pub mod wire;

use std::io::Read;
use std::time::Duration;
pub use wire::{Event, KeyValue, Lease, Range, TxnReply, WatchMessage, WireError};

/// Largest reply body read (a map is at most [`super::map::MAX_MAP_BYTES`], base64 encoded).
const MAX_REPLY_BYTES: u64 = 64 << 20;

/// A failed etcd call.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd at {endpoint}: {source}")]
    Transport {
        endpoint: String,
        #[source]
        source: Box<ureq::Error>,
    },
    #[error("etcd at {endpoint} answered HTTP {status}")]
    Status { endpoint: String, status: u16 },
    #[error(transparent)]
    Wire(#[from] WireError),
}

/// A client of one etcd endpoint (`HOST:PORT`).
#[derive(Clone)]
pub struct Etcd {
    endpoint: String,
    agent: ureq::Agent,
    /// No overall limit: a watch runs until its deadline or an event.
    watch_agent: ureq::Agent,
}

impl Etcd {
    /// A client whose unary calls give up after `timeout`.
    pub fn new(endpoint: &str, timeout: Duration) -> Etcd {
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder().timeout_global(Some(timeout)).http_status_as_error(false).build(),
        );
        let watch_agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .timeout_connect(Some(timeout))
                .timeout_recv_response(Some(timeout))
                .http_status_as_error(false)
                .build(),
        );
        Etcd { endpoint: endpoint.to_string(), agent, watch_agent }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}/v3/{path}", self.endpoint)
    }

    fn transport(&self, e: ureq::Error) -> EtcdError {
        EtcdError::Transport { endpoint: self.endpoint.clone(), source: Box::new(e) }
    }

    fn post(&self, path: &str, body: &serde_json::Value) -> Result<Vec<u8>, EtcdError> {
        let resp = self
            .agent
            .post(self.url(path))
            .header("content-type", "application/json")
            .send(body.to_string().as_bytes())
            .map_err(|e| self.transport(e))?;
        let status = resp.status().as_u16();
        let mut body = Vec::new();
        resp.into_body()
            .into_with_config()
            .limit(MAX_REPLY_BYTES)
            .reader()
            .read_to_end(&mut body)
            .map_err(|e| self.transport(ureq::Error::Io(e)))?;
        // Errors come as JSON with a non-200 status; let the codec name them if it can.
        if status != 200 {
            return match wire::decode_range(&body) {
                Err(WireError::Etcd(m)) => Err(WireError::Etcd(m).into()),
                _ => Err(EtcdError::Status { endpoint: self.endpoint.clone(), status }),
            };
        }
        Ok(body)
    }

    /// The value of `key`, if set, and the store revision of the read.
    pub fn get(&self, key: &[u8]) -> Result<(Option<KeyValue>, i64), EtcdError> {
        let r = wire::decode_range(&self.post("kv/range", &wire::range_request(key, false))?)?;
        Ok((r.kvs.into_iter().next(), r.revision))
    }

    /// Every key under `prefix`.
    pub fn get_prefix(&self, prefix: &[u8]) -> Result<Range, EtcdError> {
        Ok(wire::decode_range(&self.post("kv/range", &wire::range_request(prefix, true))?)?)
    }

    /// Every key under `prefix` and the key `key`, read at one revision.
    pub fn snapshot(&self, prefix: &[u8], key: &[u8]) -> Result<(Range, Option<KeyValue>), EtcdError> {
        let t = wire::decode_txn(&self.post("kv/txn", &wire::snapshot_request(prefix, key))?)?;
        let mut ranges = t.ranges.into_iter();
        match (ranges.next(), ranges.next()) {
            (Some(members), Some(single)) => Ok((members, single.kvs.into_iter().next())),
            _ => Err(WireError::Json("snapshot transaction without its two ranges".into()).into()),
        }
    }

    pub fn put(&self, key: &[u8], value: &[u8], lease: Option<i64>) -> Result<(), EtcdError> {
        self.post("kv/put", &wire::put_request(key, value, lease)).map(|_| ())
    }

    /// Deletes `key` (nothing happens if it is absent).
    pub fn delete(&self, key: &[u8]) -> Result<(), EtcdError> {
        self.post("kv/deleterange", &wire::delete_request(key)).map(|_| ())
    }

    /// Puts `value` at `key` if the key's mod revision is `mod_revision` (0: absent). Returns
    /// whether it did.
    pub fn compare_and_swap(&self, key: &[u8], value: &[u8], mod_revision: i64) -> Result<bool, EtcdError> {
        Ok(wire::decode_txn(&self.post("kv/txn", &wire::cas_request(key, value, mod_revision))?)?.succeeded)
    }

    pub fn lease_grant(&self, ttl_s: i64) -> Result<Lease, EtcdError> {
        Ok(wire::decode_lease_grant(&self.post("lease/grant", &wire::lease_grant_request(ttl_s))?)?)
    }

    /// Refreshes a lease; a TTL of 0 means it had already expired.
    pub fn lease_keepalive(&self, id: i64) -> Result<Lease, EtcdError> {
        Ok(wire::decode_lease_keepalive(&self.post("lease/keepalive", &wire::lease_id_request(id))?)?)
    }

    /// Ends a lease now, deleting the keys attached to it.
    pub fn lease_revoke(&self, id: i64) -> Result<(), EtcdError> {
        self.post("lease/revoke", &wire::lease_id_request(id)).map(|_| ())
    }

    /// Watches `key` (or every key under it, with `prefix`) from `start_revision`, calling
    /// `on_message` for each message until it returns false, the stream ends, or `deadline`
    /// passes (the caller then watches again from where it got to).
    pub fn watch(
        &self,
        key: &[u8],
        prefix: bool,
        start_revision: i64,
        deadline: Duration,
        mut on_message: impl FnMut(WatchMessage) -> bool,
    ) -> Result<(), EtcdError> {
        let resp = self
            .watch_agent
            .post(self.url("watch"))
            .config()
            .timeout_global(Some(deadline))
            .build()
            .header("content-type", "application/json")
            .send(wire::watch_request(key, prefix, start_revision).to_string().as_bytes())
            .map_err(|e| self.transport(e))?;
        if resp.status().as_u16() != 200 {
            return Err(EtcdError::Status { endpoint: self.endpoint.clone(), status: resp.status().as_u16() });
        }
        let reader = resp.into_body().into_with_config().limit(MAX_REPLY_BYTES).reader();
        for value in serde_json::Deserializer::from_reader(reader).into_iter::<serde_json::Value>() {
            let value = match value {
                Ok(v) => v,
                // The deadline (or etcd) closed the stream: the caller resumes.
                Err(e) if e.is_io() || e.is_eof() => return Ok(()),
                Err(e) => return Err(WireError::Json(e.to_string()).into()),
            };
            let msg = wire::decode_watch_message(value)?;
            let canceled = msg.canceled;
            if !on_message(msg) || canceled {
                return Ok(());
            }
        }
        Ok(())
    }
}
