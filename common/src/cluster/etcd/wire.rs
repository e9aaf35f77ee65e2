//! The JSON messages of etcd's v3 gRPC gateway (`/v3/kv/range`, `/v3/kv/txn`, `/v3/lease/*`,
//! `/v3/watch`): builders for requests and decoders for replies, with no I/O.
//!
//! The gateway speaks proto3 JSON: byte strings are base64, 64-bit integers are decimal strings,
//! and fields at their default value (0, false, empty, the first enum value) are left out, so
//! every field here defaults when absent.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

/// A reply that is not what the gateway sends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("malformed gateway JSON: {0}")]
    Json(String),
    #[error("field {0} is not valid base64")]
    Base64(&'static str),
    #[error("field {0} is not a decimal integer")]
    Integer(&'static str),
    #[error("etcd reported an error: {0}")]
    Etcd(String),
}

pub fn b64(b: &[u8]) -> String {
    B64.encode(b)
}

/// The end of the range of every key that starts with `prefix` (etcd's `range_end` convention).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // every key
}

/// A key and its value as etcd stores them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub lease: i64,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawKv {
    key: String,
    value: String,
    create_revision: Num,
    mod_revision: Num,
    lease: Num,
}

/// An int64 as the gateway writes it: a string, or (accepted too) a number; absent means 0.
/// `None` marks a value that is present but not an integer.
#[derive(Deserialize, Clone, Copy)]
#[serde(from = "NumRepr")]
struct Num(Option<i64>);

impl Default for Num {
    fn default() -> Num {
        Num(Some(0))
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumRepr {
    S(String),
    N(i64),
}

impl From<NumRepr> for Num {
    fn from(r: NumRepr) -> Num {
        match r {
            NumRepr::S(s) => Num(s.parse().ok()),
            NumRepr::N(n) => Num(Some(n)),
        }
    }
}

fn num(n: Num, what: &'static str) -> Result<i64, WireError> {
    n.0.ok_or(WireError::Integer(what))
}

fn unb64(s: &str, what: &'static str) -> Result<Vec<u8>, WireError> {
    B64.decode(s).map_err(|_| WireError::Base64(what))
}

impl RawKv {
    fn decode(self) -> Result<KeyValue, WireError> {
        Ok(KeyValue {
            key: unb64(&self.key, "kv.key")?,
            value: unb64(&self.value, "kv.value")?,
            create_revision: num(self.create_revision, "kv.create_revision")?,
            mod_revision: num(self.mod_revision, "kv.mod_revision")?,
            lease: num(self.lease, "kv.lease")?,
        })
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Header {
    revision: Num,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawRange {
    header: Header,
    kvs: Vec<RawKv>,
}

/// The keys a range read returned, at a store revision.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Range {
    pub revision: i64,
    pub kvs: Vec<KeyValue>,
}

fn parse<'a, T: Deserialize<'a>>(b: &'a [u8]) -> Result<T, WireError> {
    // The gateway reports failures as {"error": ..., "message": ..., "code": N}.
    if let Ok(Value::Object(o)) = serde_json::from_slice::<Value>(b) {
        if let Some(msg) = o.get("message").or_else(|| o.get("error")) {
            if o.contains_key("code") {
                return Err(WireError::Etcd(msg.as_str().unwrap_or_default().to_string()));
            }
        }
    }
    serde_json::from_slice(b).map_err(|e| WireError::Json(e.to_string()))
}

/// `/v3/kv/range` of one key, or of every key under a prefix.
pub fn range_request(key: &[u8], prefix: bool) -> Value {
    let mut r = json!({ "key": b64(key) });
    if prefix {
        r["range_end"] = b64(&prefix_end(key)).into();
    }
    r
}

pub fn decode_range(b: &[u8]) -> Result<Range, WireError> {
    let r: RawRange = parse(b)?;
    decode_raw_range(r)
}

fn decode_raw_range(r: RawRange) -> Result<Range, WireError> {
    Ok(Range {
        revision: num(r.header.revision, "header.revision")?,
        kvs: r.kvs.into_iter().map(RawKv::decode).collect::<Result<_, _>>()?,
    })
}

/// `/v3/kv/put`, optionally attached to a lease.
pub fn put_request(key: &[u8], value: &[u8], lease: Option<i64>) -> Value {
    let mut r = json!({ "key": b64(key), "value": b64(value) });
    if let Some(l) = lease {
        r["lease"] = l.to_string().into();
    }
    r
}

/// A `/v3/kv/deleterange` of one key.
pub fn delete_request(key: &[u8]) -> Value {
    json!({ "key": b64(key) })
}

/// A `/v3/kv/txn` that puts `value` at `key` only if the key's mod revision is still
/// `mod_revision` (0: the key does not exist), i.e. a compare-and-swap.
pub fn cas_request(key: &[u8], value: &[u8], mod_revision: i64) -> Value {
    json!({
        "compare": [{
            "key": b64(key),
            "target": "MOD",
            "result": "EQUAL",
            "mod_revision": mod_revision.to_string(),
        }],
        "success": [{ "request_put": { "key": b64(key), "value": b64(value) } }],
    })
}

/// A `/v3/kv/txn` with no comparison that reads a prefix and a key at one revision.
pub fn snapshot_request(prefix: &[u8], key: &[u8]) -> Value {
    json!({
        "success": [
            { "request_range": range_request(prefix, true) },
            { "request_range": range_request(key, false) },
        ],
    })
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawTxn {
    header: Header,
    succeeded: bool,
    responses: Vec<RawOp>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawOp {
    response_range: Option<RawRange>,
}

/// Whether a transaction's comparisons held, and the ranges it read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TxnReply {
    pub revision: i64,
    pub succeeded: bool,
    pub ranges: Vec<Range>,
}

pub fn decode_txn(b: &[u8]) -> Result<TxnReply, WireError> {
    let t: RawTxn = parse(b)?;
    let revision = num(t.header.revision, "header.revision")?;
    let ranges = t
        .responses
        .into_iter()
        .filter_map(|r| r.response_range)
        .map(|mut r| {
            // Ranges inside a transaction may leave out their header: it is the transaction's.
            if r.header.revision.0 == Some(0) {
                r.header.revision = Num(Some(revision));
            }
            decode_raw_range(r)
        })
        .collect::<Result<_, _>>()?;
    Ok(TxnReply { revision, succeeded: t.succeeded, ranges })
}

pub fn lease_grant_request(ttl_s: i64) -> Value {
    json!({ "TTL": ttl_s.to_string() })
}

pub fn lease_id_request(id: i64) -> Value {
    json!({ "ID": id.to_string() })
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawLease {
    #[serde(rename = "ID")]
    id: Num,
    #[serde(rename = "TTL")]
    ttl: Num,
    error: String,
}

/// A granted or refreshed lease: its id and remaining seconds (0 or less: it has expired).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub id: i64,
    pub ttl_s: i64,
}

pub fn decode_lease_grant(b: &[u8]) -> Result<Lease, WireError> {
    let l: RawLease = parse(b)?;
    if !l.error.is_empty() {
        return Err(WireError::Etcd(l.error));
    }
    Ok(Lease { id: num(l.id, "ID")?, ttl_s: num(l.ttl, "TTL")? })
}

/// A keep-alive reply; the gateway wraps the streamed message in `result`. A lease that has
/// expired comes back with no TTL (0).
pub fn decode_lease_keepalive(b: &[u8]) -> Result<Lease, WireError> {
    #[derive(Deserialize)]
    struct Wrapped {
        result: RawLease,
    }
    let l = match parse::<Wrapped>(b) {
        Ok(w) => w.result,
        Err(_) => parse::<RawLease>(b)?,
    };
    Ok(Lease { id: l.id.0.unwrap_or(0), ttl_s: l.ttl.0.unwrap_or(0) })
}

/// `/v3/watch` of a key, or of a prefix, from `start_revision` on.
pub fn watch_request(key: &[u8], prefix: bool, start_revision: i64) -> Value {
    let mut c = range_request(key, prefix);
    c["start_revision"] = start_revision.to_string().into();
    json!({ "create_request": c })
}

/// What changed at a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Put(KeyValue),
    Delete(KeyValue),
}

/// One message of a watch stream: the revision it brings us to and its events (none for the
/// creation acknowledgement and progress notices).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WatchMessage {
    pub revision: i64,
    pub events: Vec<Event>,
    /// The watch was cancelled by etcd (e.g. its start revision was compacted).
    pub canceled: bool,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawWatch {
    header: Header,
    events: Vec<RawEvent>,
    canceled: bool,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawEvent {
    #[serde(rename = "type")]
    kind: String,
    kv: RawKv,
}

/// Decodes one streamed watch message (`{"result": {...}}` or a gateway error).
pub fn decode_watch_message(v: Value) -> Result<WatchMessage, WireError> {
    if let Some(e) = v.get("error") {
        return Err(WireError::Etcd(e.get("message").and_then(Value::as_str).unwrap_or("watch error").to_string()));
    }
    let Some(result) = v.get("result") else {
        return Err(WireError::Json("watch message without result".into()));
    };
    let w: RawWatch = serde_json::from_value(result.clone()).map_err(|e| WireError::Json(e.to_string()))?;
    let events = w
        .events
        .into_iter()
        .map(|e| {
            let kv = e.kv.decode()?;
            Ok(if e.kind == "DELETE" { Event::Delete(kv) } else { Event::Put(kv) })
        })
        .collect::<Result<_, WireError>>()?;
    Ok(WatchMessage { revision: w.header.revision.0.unwrap_or(0), events, canceled: w.canceled })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/scalio/members/"), b"/scalio/members0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn decodes_a_range_with_defaults_left_out() {
        // As etcd 3.4's gateway writes it: int64 as strings, a zero lease left out.
        let b = br#"{"header":{"cluster_id":"1","member_id":"2","revision":"7","raft_term":"2"},
            "kvs":[{"key":"L3MvbWFw","create_revision":"5","mod_revision":"7","version":"2","value":"e30="}],"count":"1"}"#;
        let r = decode_range(b).unwrap();
        assert_eq!(r.revision, 7);
        assert_eq!(r.kvs.len(), 1);
        assert_eq!(r.kvs[0].key, b"/s/map");
        assert_eq!(r.kvs[0].value, b"{}");
        assert_eq!((r.kvs[0].create_revision, r.kvs[0].mod_revision, r.kvs[0].lease), (5, 7, 0));
        let empty = decode_range(br#"{"header":{"revision":"3"}}"#).unwrap();
        assert_eq!(empty, Range { revision: 3, kvs: vec![] });
    }

    #[test]
    fn decodes_transactions_and_failures() {
        let ok = br#"{"header":{"revision":"9"},"succeeded":true,"responses":[{"response_put":{"header":{"revision":"9"}}}]}"#;
        assert_eq!(decode_txn(ok).unwrap(), TxnReply { revision: 9, succeeded: true, ranges: vec![] });
        let failed = br#"{"header":{"revision":"9"}}"#;
        assert!(!decode_txn(failed).unwrap().succeeded);
        let snap = br#"{"header":{"revision":"12"},"succeeded":true,"responses":[
            {"response_range":{"header":{"revision":"12"},"kvs":[{"key":"YQ==","value":"Yg==","mod_revision":"4","create_revision":"4","lease":"77"}]}},
            {"response_range":{"header":{}}}]}"#;
        let t = decode_txn(snap).unwrap();
        assert_eq!(t.ranges.len(), 2);
        assert_eq!(t.ranges[0].kvs[0].lease, 77);
        assert_eq!(t.ranges[1].revision, 12);
        let err = br#"{"error":"etcdserver: requested lease not found","code":5,"message":"etcdserver: requested lease not found"}"#;
        assert_eq!(decode_txn(err), Err(WireError::Etcd("etcdserver: requested lease not found".into())));
        assert!(matches!(
            decode_range(br#"{"kvs":[{"key":"***"}],"header":{"revision":"1"}}"#),
            Err(WireError::Base64(_))
        ));
        assert!(matches!(decode_range(b"not json"), Err(WireError::Json(_))));
    }

    #[test]
    fn decodes_leases() {
        assert_eq!(
            decode_lease_grant(br#"{"header":{},"ID":"7587862071387123456","TTL":"5"}"#).unwrap(),
            Lease { id: 7587862071387123456, ttl_s: 5 }
        );
        assert_eq!(
            decode_lease_keepalive(br#"{"result":{"header":{},"ID":"12","TTL":"5"}}"#).unwrap(),
            Lease { id: 12, ttl_s: 5 }
        );
        // An expired lease: etcd leaves the TTL out.
        assert_eq!(decode_lease_keepalive(br#"{"result":{"header":{},"ID":"12"}}"#).unwrap().ttl_s, 0);
    }

    #[test]
    fn decodes_watch_messages() {
        let created: Value = serde_json::from_str(r#"{"result":{"header":{"revision":"4"},"created":true}}"#).unwrap();
        assert_eq!(
            decode_watch_message(created).unwrap(),
            WatchMessage { revision: 4, events: vec![], canceled: false }
        );
        let events: Value = serde_json::from_str(
            r#"{"result":{"header":{"revision":"6"},"events":[
                {"kv":{"key":"YQ==","value":"Yg==","mod_revision":"5","create_revision":"5"}},
                {"type":"DELETE","kv":{"key":"YQ==","mod_revision":"6"}}]}}"#,
        )
        .unwrap();
        let m = decode_watch_message(events).unwrap();
        assert_eq!(m.revision, 6);
        assert!(matches!(&m.events[0], Event::Put(kv) if kv.value == b"b"));
        assert!(matches!(&m.events[1], Event::Delete(kv) if kv.key == b"a"));
        let err: Value = serde_json::from_str(r#"{"error":{"grpc_code":1,"message":"context canceled"}}"#).unwrap();
        assert!(matches!(decode_watch_message(err), Err(WireError::Etcd(_))));
    }

    #[test]
    fn requests_use_base64_and_string_integers() {
        let r = cas_request(b"k", b"v", 0);
        assert_eq!(r["compare"][0]["mod_revision"], "0");
        assert_eq!(r["success"][0]["request_put"]["key"], "aw==");
        assert_eq!(put_request(b"k", b"v", Some(5))["lease"], "5");
        assert_eq!(watch_request(b"p/", true, 9)["create_request"]["range_end"], b64(b"p0"));
    }
}
