//! The KV messages carried by the fabric's two-sided RPC: a sans-IO codec.
//!
//! Request: `op u8, flags u8, key_len u8, 0u8, value_len u32 (LE)`, then the key and the value,
//! then, if the [`flags::EPOCH`] bit is set, the cluster-map epoch the client routed with (u64 LE),
//! then, if the [`flags::REQUEST_ID`] bit is set, the write's request id (u64 LE).
//! Response: `status u8, op u8, 0u16, body_len u32 (LE)`, then a body whose form depends on the
//! op (see [`MetaGetReply`], [`ServerInfo`], [`Stats`]) or the status ([`WrongOwner`]). Decoding
//! checks every length and never panics: a malformed message is a [`CodecError`].
//!
//! Version 2 added the request epoch and [`Status::WrongOwner`] (for clusters). Version 4 added
//! the fill window's key to [`MetaGetReply`] (24 bytes instead of 20); version 5 the request id
//! (a cluster's members apply a retried write once).

use crate::key::MAX_KEY_LEN;
use crate::ssd::{Extent, SsdGeometry, MAX_VALUE_LEN};
use crate::table::TableGeometry;

/// Version of this message set; a client refuses a server that speaks another.
pub const PROTOCOL_VERSION: u32 = 5;
const HEADER: usize = 8;
/// The largest request the server accepts: a write of the longest key and the largest value,
/// with an epoch and a request id. Requests over the channel's largest message move by rendezvous
/// ([`crate::fabric::rendezvous`]), whose staging slots are this size.
pub const MAX_REQUEST_LEN: usize = HEADER + MAX_KEY_LEN + crate::ssd::MAX_VALUE_LEN + 16;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Op {
    /// Server description: cache-table region, SSDs, block targets.
    Hello = 1,
    /// Where a key lives on flash, plus maybe a cache-slot reservation. No SSD I/O.
    MetaGet = 2,
    /// Read a key through the server (the server reads the SSD): the LEED-style path.
    Get = 3,
    /// Insert or replace.
    Put = 4,
    /// Replace an existing key (NotFound if absent).
    Update = 5,
    /// Remove a key (NotFound if absent).
    Delete = 6,
    /// Server counters.
    Stats = 7,
    /// In a cluster: the keys in a range of one SSD's buckets (a [`ScanRequest`] in the value,
    /// a [`ScanReply`] back), so that a member receiving a partition can copy it.
    Scan = 8,
}

const _: () = {
    let mut i = 0;
    while i < Op::ALL.len() {
        assert!((Op::ALL[i] as usize) < Op::CODES, "Op::CODES must exceed every op code");
        i += 1;
    }
};

impl Op {
    pub const ALL: [Op; 8] = [Op::Hello, Op::MetaGet, Op::Get, Op::Put, Op::Update, Op::Delete, Op::Stats, Op::Scan];
    /// One more than the largest op code: the length of arrays indexed by op (counters).
    pub const CODES: usize = 9;

    pub fn from_u8(v: u8) -> Option<Op> {
        Op::ALL.into_iter().find(|o| *o as u8 == v)
    }

    pub fn name(self) -> &'static str {
        match self {
            Op::Hello => "hello",
            Op::MetaGet => "meta_get",
            Op::Get => "get",
            Op::Put => "put",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Stats => "stats",
            Op::Scan => "scan",
        }
    }

    pub fn is_write(self) -> bool {
        matches!(self, Op::Put | Op::Update | Op::Delete)
    }
}

/// Request flag bits.
pub mod flags {
    /// A write that must not wait for a batch (LEED-style, one write per I/O).
    pub const UNBATCHED: u8 = 1;
    /// A META_GET from a client that will not fill the cache: do not reserve a slot.
    pub const NO_RESERVE: u8 = 2;
    /// The request ends with the cluster-map epoch its sender routed it with (set by
    /// [`super::Request::encode`] from [`super::Request::epoch`]; never in `Request::flags`).
    pub const EPOCH: u8 = 4;
    /// A write passed down a replica chain by the member before this one (chain replication):
    /// it is checked against the receiver's place in the chain at exactly the carried epoch,
    /// not against the head role.
    pub const FORWARDED: u8 = 8;
    /// In a cluster, a request of a partition's copy to a member that entered its chain without
    /// the data: on a GET, a read of any member of the chain (not only the tail); on a PUT, the
    /// copy of a value that the receiver applies only if no write to the key reached it since
    /// it entered the chain; on a DELETE, the removal of a stale key under the same rule.
    pub const COPY: u8 = 16;
    /// The request ends with a request id (after the epoch, if any; set by
    /// [`super::Request::encode`] from [`super::Request::id`]; never in `Request::flags`): the
    /// same id on a retried write lets the members of a chain that applied it already answer
    /// what they answered then instead of applying it again.
    pub const REQUEST_ID: u8 = 32;
    /// On a HELLO: the value is the cluster's peer secret, and the connection is a member's
    /// (server-to-server) if it matches (see the server's `cluster::peer_auth`).
    pub const PEER: u8 = 64;
}

/// Result of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    /// The request was malformed or not allowed.
    BadRequest = 2,
    KeyTooLong = 3,
    ValueTooLarge = 4,
    /// The SSD is full even after garbage collection.
    NoSpace = 5,
    /// The SSD failed or returned corrupt data.
    Io = 6,
    /// The server is shutting down, or a bounded queue is full: nothing was done, and the
    /// same request may succeed later.
    Unavailable = 7,
    /// A device error stopped writes to the key's SSD (fail-stop) until the server restarts;
    /// nothing was done. Reads still work.
    WritesStopped = 8,
    /// In a cluster: this server does not serve the key (in the role the op needs) at its map
    /// epoch, or cannot vouch for the client's newer epoch. The body is a [`WrongOwner`].
    WrongOwner = 9,
}

impl Status {
    pub fn from_u8(v: u8) -> Option<Status> {
        use Status::*;
        [Ok, NotFound, BadRequest, KeyTooLong, ValueTooLarge, NoSpace, Io, Unavailable, WritesStopped, WrongOwner]
            .into_iter()
            .find(|s| *s as u8 == v)
    }
}

/// A message that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("message of {have} bytes is truncated, need {need}")]
    Truncated { have: usize, need: usize },
    #[error("unknown op {0}")]
    UnknownOp(u8),
    #[error("unknown status {0}")]
    UnknownStatus(u8),
    #[error("{0} trailing bytes")]
    Trailing(usize),
    #[error("key of {0} bytes exceeds the maximum")]
    KeyTooLong(usize),
    #[error("value of {0} bytes exceeds the maximum")]
    ValueTooLarge(usize),
    #[error("malformed {0}")]
    Malformed(&'static str),
}

/// A decoded request, borrowing from the message bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    pub op: Op,
    /// [`flags`] bits other than [`flags::EPOCH`] and [`flags::REQUEST_ID`].
    pub flags: u8,
    pub key: &'a [u8],
    pub value: &'a [u8],
    /// The cluster-map epoch the client routed with; `None` outside a cluster.
    pub epoch: Option<u64>,
    /// A write's id, the same on each retry of it (unique per key among a client's writes).
    pub id: Option<u64>,
}

impl<'a> Request<'a> {
    pub fn new(op: Op, key: &'a [u8], value: &'a [u8]) -> Request<'a> {
        Request { op, flags: 0, key, value, epoch: None, id: None }
    }

    pub fn with_flags(mut self, flags: u8) -> Request<'a> {
        self.flags = flags & !(flags::EPOCH | flags::REQUEST_ID);
        self
    }

    pub fn with_id(mut self, id: Option<u64>) -> Request<'a> {
        self.id = id;
        self
    }

    pub fn with_epoch(mut self, epoch: Option<u64>) -> Request<'a> {
        self.epoch = epoch;
        self
    }

    pub fn encoded_len(&self) -> usize {
        HEADER
            + self.key.len()
            + self.value.len()
            + 8 * (usize::from(self.epoch.is_some()) + usize::from(self.id.is_some()))
    }

    /// Appends the encoded request to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        debug_assert!(self.key.len() <= u8::MAX as usize);
        let f = (self.flags & !(flags::EPOCH | flags::REQUEST_ID))
            | if self.epoch.is_some() { flags::EPOCH } else { 0 }
            | if self.id.is_some() { flags::REQUEST_ID } else { 0 };
        out.extend_from_slice(&[self.op as u8, f, self.key.len() as u8, 0]);
        out.extend_from_slice(&(self.value.len() as u32).to_le_bytes());
        out.extend_from_slice(self.key);
        out.extend_from_slice(self.value);
        if let Some(e) = self.epoch {
            out.extend_from_slice(&e.to_le_bytes());
        }
        if let Some(id) = self.id {
            out.extend_from_slice(&id.to_le_bytes());
        }
    }

    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.encoded_len());
        self.encode(&mut v);
        v
    }

    pub fn decode(b: &'a [u8]) -> Result<Request<'a>, CodecError> {
        need(b, HEADER)?;
        let op = Op::from_u8(b[0]).ok_or(CodecError::UnknownOp(b[0]))?;
        let key_len = usize::from(b[2]);
        let value_len = u32::from_le_bytes(b[4..8].try_into().unwrap()) as usize;
        if key_len > MAX_KEY_LEN {
            return Err(CodecError::KeyTooLong(key_len));
        }
        if value_len > MAX_VALUE_LEN {
            return Err(CodecError::ValueTooLarge(value_len));
        }
        let body_end = HEADER + key_len + value_len;
        let has_epoch = b[1] & flags::EPOCH != 0;
        let has_id = b[1] & flags::REQUEST_ID != 0;
        let epoch_end = body_end + if has_epoch { 8 } else { 0 };
        let total = epoch_end + if has_id { 8 } else { 0 };
        need(b, total)?;
        if b.len() > total {
            return Err(CodecError::Trailing(b.len() - total));
        }
        let epoch = has_epoch.then(|| u64::from_le_bytes(b[body_end..epoch_end].try_into().unwrap()));
        let id = has_id.then(|| u64::from_le_bytes(b[epoch_end..total].try_into().unwrap()));
        Ok(Request {
            op,
            flags: b[1] & !(flags::EPOCH | flags::REQUEST_ID),
            key: &b[HEADER..HEADER + key_len],
            value: &b[HEADER + key_len..body_end],
            epoch,
            id,
        })
    }
}

/// A decoded response, borrowing from the message bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response<'a> {
    pub status: Status,
    pub op: Op,
    pub body: &'a [u8],
}

impl<'a> Response<'a> {
    /// Appends a response with `body` to `out`.
    pub fn encode(status: Status, op: Op, body: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(&[status as u8, op as u8, 0, 0]);
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(body);
    }

    pub fn to_vec(status: Status, op: Op, body: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(HEADER + body.len());
        Response::encode(status, op, body, &mut v);
        v
    }

    pub fn decode(b: &'a [u8]) -> Result<Response<'a>, CodecError> {
        need(b, HEADER)?;
        let status = Status::from_u8(b[0]).ok_or(CodecError::UnknownStatus(b[0]))?;
        let op = Op::from_u8(b[1]).ok_or(CodecError::UnknownOp(b[1]))?;
        let len = u32::from_le_bytes(b[4..8].try_into().unwrap()) as usize;
        let total = HEADER.checked_add(len).ok_or(CodecError::Malformed("length"))?;
        need(b, total)?;
        if b.len() > total {
            return Err(CodecError::Trailing(b.len() - total));
        }
        Ok(Response { status, op, body: &b[HEADER..total] })
    }
}

/// The body of a [`Status::WrongOwner`] reply: the epoch of the map the server judged by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrongOwner {
    /// 0: the server has no map yet (or has stopped vouching for the one it had).
    pub epoch: u64,
}

impl WrongOwner {
    pub const LEN: usize = 8;

    pub fn encode(&self) -> [u8; Self::LEN] {
        self.epoch.to_le_bytes()
    }

    pub fn decode(b: &[u8]) -> Result<WrongOwner, CodecError> {
        let b = exact(b, Self::LEN, "wrong-owner reply")?;
        Ok(WrongOwner { epoch: u64::from_le_bytes(b.try_into().unwrap()) })
    }
}

/// A cache slot reserved for the client that asked, to be filled with the value it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    pub slot: u8,
    pub generation: u32,
}

/// Reply to META_GET: where the key's bucket is on flash.
///
/// `ssd u16, chain_len u8, reserved u8 (0/1), slot u8, window u8 (0/1), 0u16, generation u32,
/// lseq u64, window_rkey u32` (all LE; absent fields zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaGetReply {
    pub ssd: u16,
    /// Blocks in the bucket's newest chain; 0 if the bucket was never written (the key is absent).
    pub chain_len: u8,
    /// Bucket-log position of the chain.
    pub lseq: u64,
    pub reservation: Option<Reservation>,
    /// With a reservation, when the server grants fills through windows (`cache.fill_windows`):
    /// the key of a window over the reserved slot's client range (bytes 24..112), good only on
    /// the queue pair that sent this META_GET and only until the reservation ends. The client
    /// fills through it, at the slot's own addresses. None: fill with the table's `fill_rkey`.
    pub window: Option<u32>,
}

impl MetaGetReply {
    pub const LEN: usize = 24;

    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..2].copy_from_slice(&self.ssd.to_le_bytes());
        b[2] = self.chain_len;
        if let Some(r) = self.reservation {
            b[3] = 1;
            b[4] = r.slot;
            b[8..12].copy_from_slice(&r.generation.to_le_bytes());
            if let Some(k) = self.window {
                b[5] = 1;
                b[20..24].copy_from_slice(&k.to_le_bytes());
            }
        }
        b[12..20].copy_from_slice(&self.lseq.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<MetaGetReply, CodecError> {
        if b.len() != Self::LEN {
            return Err(CodecError::Malformed("meta_get reply"));
        }
        let reservation = match b[3] {
            0 => None,
            1 => Some(Reservation { slot: b[4], generation: u32::from_le_bytes(b[8..12].try_into().unwrap()) }),
            _ => return Err(CodecError::Malformed("meta_get reservation flag")),
        };
        let window = match (b[5], reservation) {
            (0, _) => None,
            (1, Some(_)) => Some(u32::from_le_bytes(b[20..24].try_into().unwrap())),
            _ => return Err(CodecError::Malformed("meta_get window flag")),
        };
        Ok(MetaGetReply {
            ssd: u16::from_le_bytes(b[0..2].try_into().unwrap()),
            chain_len: b[2],
            lseq: u64::from_le_bytes(b[12..20].try_into().unwrap()),
            reservation,
            window,
        })
    }
}

/// Where the cache table is and how it is shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableInfo {
    /// Remote address of bucket 0.
    pub addr: u64,
    /// The key for READs of the table (for the Ditto region: READs and WRITEs).
    pub rkey: u32,
    /// The key for WRITEs into the slots' client ranges (access timestamp, integrity, fill), at
    /// the same addresses; the server header of a slot is not writable with it. None when the
    /// server fills the table itself (`cache.client_fills = false`): clients then write nothing.
    pub fill_rkey: Option<u32>,
    pub geometry: TableGeometry,
}

/// Bytes per slot of the Ditto baseline's cache region (`[ditto]` in the server configuration):
/// a 16-byte index slot plus a 104-byte out-of-line object. The server only allocates and
/// registers the region; its layout is defined (and used) by the LEED+Ditto client of the
/// benchmarks, `scalio-bench`'s `systems::ditto`.
pub const DITTO_BYTES_PER_SLOT: usize = 120;

/// One SSD of the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsdInfo {
    pub geometry: SsdGeometry,
    /// The file or device the server opened, for clients on the same host (block path `direct`).
    pub path: String,
}

/// An NVMe-oF subsystem through which clients read one SSD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockTarget {
    pub ssd: u16,
    /// Transport address, e.g. `127.0.0.1:4420`.
    pub addr: String,
    pub nqn: String,
    pub nsid: u32,
}

/// Reply to HELLO: everything a client needs to read the cache and the SSDs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    pub protocol: u32,
    pub table: Option<TableInfo>,
    /// The Ditto baseline's cache region (registered memory, used only by clients), if enabled.
    pub ditto: Option<TableInfo>,
    pub store_id: [u8; 16],
    pub ssds: Vec<SsdInfo>,
    pub targets: Vec<BlockTarget>,
    /// How long a reservation's lease runs, in milliseconds (0: not said). A client filling
    /// through a window fills only well within it: a WRITE after the window's revocation would
    /// end its queue pair.
    pub lease_ms: u32,
}

mod tag {
    pub const PROTOCOL: u16 = 1;
    pub const TABLE: u16 = 2;
    pub const STORE_ID: u16 = 3;
    pub const SSD: u16 = 4;
    pub const TARGET: u16 = 5;
    pub const DITTO: u16 = 6;
    pub const LEASE: u16 = 7;
}

/// `addr u64, rkey u32, buckets u32, assoc u8`, then `fill_rkey u32` if there is one.
fn encode_table(t: &TableInfo) -> Vec<u8> {
    let mut b = Vec::with_capacity(21);
    b.extend_from_slice(&t.addr.to_le_bytes());
    b.extend_from_slice(&t.rkey.to_le_bytes());
    b.extend_from_slice(&t.geometry.buckets.to_le_bytes());
    b.push(t.geometry.assoc);
    if let Some(k) = t.fill_rkey {
        b.extend_from_slice(&k.to_le_bytes());
    }
    b
}

fn decode_table(v: &[u8], what: &'static str) -> Result<TableInfo, CodecError> {
    let fill_rkey = match v.len() {
        17 => None,
        21 => Some(u32::from_le_bytes(v[17..21].try_into().unwrap())),
        _ => return Err(CodecError::Malformed(what)),
    };
    let v = &v[..17];
    let geometry = TableGeometry { buckets: u32::from_le_bytes(v[12..16].try_into().unwrap()), assoc: v[16] };
    if geometry.buckets == 0 || geometry.assoc == 0 {
        return Err(CodecError::Malformed("empty table geometry"));
    }
    Ok(TableInfo {
        addr: u64::from_le_bytes(v[0..8].try_into().unwrap()),
        rkey: u32::from_le_bytes(v[8..12].try_into().unwrap()),
        fill_rkey,
        geometry,
    })
}

impl ServerInfo {
    /// Encodes as tagged fields (`tag u16, len u32, bytes`); decoders skip tags they do not know,
    /// so fields can be added without breaking older clients.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Vec::new();
        field(&mut w, tag::PROTOCOL, &self.protocol.to_le_bytes());
        if let Some(t) = &self.table {
            field(&mut w, tag::TABLE, &encode_table(t));
        }
        if let Some(t) = &self.ditto {
            field(&mut w, tag::DITTO, &encode_table(t));
        }
        field(&mut w, tag::STORE_ID, &self.store_id);
        if self.lease_ms != 0 {
            field(&mut w, tag::LEASE, &self.lease_ms.to_le_bytes());
        }
        for s in &self.ssds {
            let g = &s.geometry;
            let mut b = Vec::new();
            for v in [g.total_blocks, g.bucket_log.start, g.bucket_log.blocks, g.value_log.start, g.value_log.blocks] {
                b.extend_from_slice(&v.to_le_bytes());
            }
            b.extend_from_slice(&g.buckets.to_le_bytes());
            b.extend_from_slice(s.path.as_bytes());
            field(&mut w, tag::SSD, &b);
        }
        for t in &self.targets {
            let mut b = Vec::new();
            b.extend_from_slice(&t.ssd.to_le_bytes());
            b.extend_from_slice(&t.nsid.to_le_bytes());
            put_str(&mut b, &t.addr);
            put_str(&mut b, &t.nqn);
            field(&mut w, tag::TARGET, &b);
        }
        w
    }

    pub fn decode(mut b: &[u8]) -> Result<ServerInfo, CodecError> {
        let mut info = ServerInfo {
            protocol: 0,
            table: None,
            ditto: None,
            store_id: [0; 16],
            ssds: Vec::new(),
            targets: Vec::new(),
            lease_ms: 0,
        };
        let mut seen_protocol = false;
        while !b.is_empty() {
            need(b, 6)?;
            let t = u16::from_le_bytes([b[0], b[1]]);
            let len = u32::from_le_bytes(b[2..6].try_into().unwrap()) as usize;
            let end = 6usize.checked_add(len).ok_or(CodecError::Malformed("field length"))?;
            need(b, end)?;
            let v = &b[6..end];
            b = &b[end..];
            match t {
                tag::PROTOCOL => {
                    info.protocol = u32::from_le_bytes(exact(v, 4, "protocol")?.try_into().unwrap());
                    seen_protocol = true;
                }
                tag::TABLE => info.table = Some(decode_table(v, "table")?),
                tag::DITTO => info.ditto = Some(decode_table(v, "ditto region")?),
                tag::STORE_ID => info.store_id = exact(v, 16, "store id")?.try_into().unwrap(),
                tag::LEASE => info.lease_ms = u32::from_le_bytes(exact(v, 4, "lease")?.try_into().unwrap()),
                tag::SSD => {
                    need(v, 44)?;
                    let n = |i: usize| u64::from_le_bytes(v[i * 8..i * 8 + 8].try_into().unwrap());
                    let geometry = SsdGeometry {
                        total_blocks: n(0),
                        bucket_log: Extent { start: n(1), blocks: n(2) },
                        value_log: Extent { start: n(3), blocks: n(4) },
                        buckets: u32::from_le_bytes(v[40..44].try_into().unwrap()),
                    };
                    geometry.check().map_err(|_| CodecError::Malformed("ssd geometry"))?;
                    let path = String::from_utf8(v[44..].to_vec()).map_err(|_| CodecError::Malformed("ssd path"))?;
                    info.ssds.push(SsdInfo { geometry, path });
                }
                tag::TARGET => {
                    need(v, 6)?;
                    let mut rest = &v[6..];
                    let addr = take_str(&mut rest)?;
                    let nqn = take_str(&mut rest)?;
                    info.targets.push(BlockTarget {
                        ssd: u16::from_le_bytes([v[0], v[1]]),
                        nsid: u32::from_le_bytes(v[2..6].try_into().unwrap()),
                        addr,
                        nqn,
                    });
                }
                _ => {} // a newer server's field
            }
        }
        if !seen_protocol {
            return Err(CodecError::Malformed("server info without protocol version"));
        }
        Ok(info)
    }
}

/// Named counters, in the order the server lists them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stats {
    pub counters: Vec<(String, u64)>,
}

impl Stats {
    pub fn get(&self, name: &str) -> Option<u64> {
        self.counters.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }

    /// The counter, or 0 if the server does not report it.
    pub fn value(&self, name: &str) -> u64 {
        self.get(name).unwrap_or(0)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(self.counters.len() as u32).to_le_bytes());
        for (name, v) in &self.counters {
            put_str(&mut b, name);
            b.extend_from_slice(&v.to_le_bytes());
        }
        b
    }

    pub fn decode(b: &[u8]) -> Result<Stats, CodecError> {
        need(b, 4)?;
        let n = u32::from_le_bytes(b[0..4].try_into().unwrap()) as usize;
        let mut rest = &b[4..];
        let mut counters = Vec::with_capacity(n.min(4096));
        for _ in 0..n {
            let name = take_str(&mut rest)?;
            need(rest, 8)?;
            counters.push((name, u64::from_le_bytes(rest[..8].try_into().unwrap())));
            rest = &rest[8..];
        }
        if !rest.is_empty() {
            return Err(CodecError::Trailing(rest.len()));
        }
        Ok(Stats { counters })
    }

    /// `self - earlier`, counter by counter (counters that went down, such as gauges, give 0).
    pub fn delta(&self, earlier: &Stats) -> Stats {
        Stats { counters: self.counters.iter().map(|(n, v)| (n.clone(), v.saturating_sub(earlier.value(n)))).collect() }
    }
}

/// The body of a [`Op::Scan`] request: up to `max_buckets` buckets of SSD `ssd` from `bucket`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanRequest {
    pub ssd: u16,
    pub bucket: u32,
    pub max_buckets: u32,
}

impl ScanRequest {
    pub const LEN: usize = 10;

    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[..2].copy_from_slice(&self.ssd.to_le_bytes());
        b[2..6].copy_from_slice(&self.bucket.to_le_bytes());
        b[6..].copy_from_slice(&self.max_buckets.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<ScanRequest, CodecError> {
        need(b, Self::LEN)?;
        if b.len() > Self::LEN {
            return Err(CodecError::Trailing(b.len() - Self::LEN));
        }
        Ok(ScanRequest {
            ssd: u16::from_le_bytes([b[0], b[1]]),
            bucket: u32::from_le_bytes(b[2..6].try_into().unwrap()),
            max_buckets: u32::from_le_bytes(b[6..10].try_into().unwrap()),
        })
    }
}

/// The body of a [`Op::Scan`] reply: the keys found, and where to go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanReply {
    /// The server's SSD count.
    pub ssds: u16,
    /// The first bucket not scanned (the SSD's bucket count when it is done).
    pub next: u32,
    pub done: bool,
    pub keys: Vec<Vec<u8>>,
}

impl ScanReply {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(11 + self.keys.iter().map(|k| 1 + k.len()).sum::<usize>());
        b.extend_from_slice(&self.ssds.to_le_bytes());
        b.extend_from_slice(&self.next.to_le_bytes());
        b.push(u8::from(self.done));
        b.extend_from_slice(&(self.keys.len() as u32).to_le_bytes());
        for k in &self.keys {
            debug_assert!(k.len() <= MAX_KEY_LEN);
            b.push(k.len() as u8);
            b.extend_from_slice(k);
        }
        b
    }

    pub fn decode(b: &[u8]) -> Result<ScanReply, CodecError> {
        need(b, 11)?;
        let ssds = u16::from_le_bytes([b[0], b[1]]);
        let next = u32::from_le_bytes(b[2..6].try_into().unwrap());
        let done = match b[6] {
            0 => false,
            1 => true,
            _ => return Err(CodecError::Malformed("scan reply flag")),
        };
        let count = u32::from_le_bytes(b[7..11].try_into().unwrap()) as usize;
        let mut rest = &b[11..];
        // Each key takes at least two bytes: bound the allocation by what the message holds.
        let mut keys = Vec::with_capacity(count.min(rest.len() / 2));
        for _ in 0..count {
            let (&len, tail) = rest.split_first().ok_or(CodecError::Malformed("scan reply key"))?;
            let len = usize::from(len);
            if len == 0 || len > MAX_KEY_LEN {
                return Err(CodecError::Malformed("scan reply key length"));
            }
            need(tail, len)?;
            keys.push(tail[..len].to_vec());
            rest = &tail[len..];
        }
        if !rest.is_empty() {
            return Err(CodecError::Trailing(rest.len()));
        }
        Ok(ScanReply { ssds, next, done, keys })
    }
}

fn need(b: &[u8], n: usize) -> Result<(), CodecError> {
    if b.len() < n {
        Err(CodecError::Truncated { have: b.len(), need: n })
    } else {
        Ok(())
    }
}

fn exact<'a>(v: &'a [u8], n: usize, what: &'static str) -> Result<&'a [u8], CodecError> {
    if v.len() == n {
        Ok(v)
    } else {
        Err(CodecError::Malformed(what))
    }
}

fn field(w: &mut Vec<u8>, tag: u16, v: &[u8]) {
    w.extend_from_slice(&tag.to_le_bytes());
    w.extend_from_slice(&(v.len() as u32).to_le_bytes());
    w.extend_from_slice(v);
}

fn put_str(w: &mut Vec<u8>, s: &str) {
    let s = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    w.extend_from_slice(&(s.len() as u16).to_le_bytes());
    w.extend_from_slice(s);
}

fn take_str(b: &mut &[u8]) -> Result<String, CodecError> {
    need(b, 2)?;
    let n = usize::from(u16::from_le_bytes([b[0], b[1]]));
    need(b, 2 + n)?;
    let s = String::from_utf8(b[2..2 + n].to_vec()).map_err(|_| CodecError::Malformed("string"))?;
    *b = &b[2 + n..];
    Ok(s)
}

#[cfg(test)]
mod tests {
    #[test]
    fn scan_messages_round_trip_and_reject_garbage() {
        let r = ScanRequest { ssd: 3, bucket: 77, max_buckets: 64 };
        assert_eq!(ScanRequest::decode(&r.encode()), Ok(r));
        assert!(ScanRequest::decode(&r.encode()[..9]).is_err());
        let reply = ScanReply { ssds: 2, next: 128, done: false, keys: vec![b"a".to_vec(), vec![7u8; MAX_KEY_LEN]] };
        assert_eq!(ScanReply::decode(&reply.encode()), Ok(reply.clone()));
        let mut bad = reply.encode();
        bad[6] = 2;
        assert!(ScanReply::decode(&bad).is_err());
        let mut long = reply.encode();
        long.push(0);
        assert!(ScanReply::decode(&long).is_err());
        // A count far beyond the bytes present fails without allocating for it.
        let mut huge = ScanReply { keys: vec![], ..reply }.encode();
        huge[7..11].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(ScanReply::decode(&huge).is_err());
    }

    use super::*;
    use proptest::prelude::*;

    fn arb_op() -> impl Strategy<Value = Op> {
        proptest::sample::select(Op::ALL.to_vec())
    }

    proptest! {
        #[test]
        fn request_round_trip(op in arb_op(), f: u8, key in proptest::collection::vec(any::<u8>(), 0..=20),
                              value in proptest::collection::vec(any::<u8>(), 0..300), epoch: Option<u64>,
                              id: Option<u64>) {
            let r = Request::new(op, &key, &value).with_flags(f).with_epoch(epoch).with_id(id);
            prop_assert_eq!(r.flags & (flags::EPOCH | flags::REQUEST_ID), 0);
            let bytes = r.to_vec();
            prop_assert_eq!(bytes.len(), r.encoded_len());
            prop_assert_eq!(Request::decode(&bytes).unwrap(), r);
        }

        #[test]
        fn response_round_trip(op in arb_op(), body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let bytes = Response::to_vec(Status::NotFound, op, &body);
            let r = Response::decode(&bytes).unwrap();
            prop_assert_eq!(r.body, &body[..]);
            prop_assert_eq!(r.op, op);
        }

        #[test]
        fn meta_get_round_trip(ssd: u16, chain_len: u8, lseq: u64, res: Option<(u8, u32)>, window: Option<u32>) {
            let reservation = res.map(|(slot, generation)| Reservation { slot, generation });
            // A window comes only with a reservation.
            let window = window.filter(|_| reservation.is_some());
            let m = MetaGetReply { ssd, chain_len, lseq, reservation, window };
            let bytes = m.encode();
            prop_assert_eq!(bytes.len(), 24);
            prop_assert_eq!(MetaGetReply::decode(&bytes).unwrap(), m);
        }

        #[test]
        fn meta_get_window_without_reservation_is_malformed(k: u32) {
            let mut b = MetaGetReply { ssd: 0, chain_len: 1, lseq: 0, reservation: None, window: None }.encode();
            b[5] = 1;
            b[20..24].copy_from_slice(&k.to_le_bytes());
            prop_assert_eq!(MetaGetReply::decode(&b), Err(CodecError::Malformed("meta_get window flag")));
            b[5] = 2;
            b[3] = 1;
            prop_assert!(MetaGetReply::decode(&b).is_err());
            prop_assert!(MetaGetReply::decode(&b[..20]).is_err(), "a version-3 reply is refused");
        }

        #[test]
        fn stats_round_trip(c in proptest::collection::vec(("[a-z_]{1,20}", any::<u64>()), 0..20)) {
            let s = Stats { counters: c };
            prop_assert_eq!(Stats::decode(&s.encode()).unwrap(), s);
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Request::decode(&b);
            let _ = Response::decode(&b);
            let _ = MetaGetReply::decode(&b);
            let _ = ServerInfo::decode(&b);
            let _ = Stats::decode(&b);
            let _ = WrongOwner::decode(&b);
        }

        #[test]
        fn wrong_owner_round_trip(epoch: u64) {
            prop_assert_eq!(WrongOwner::decode(&WrongOwner { epoch }.encode()).unwrap(), WrongOwner { epoch });
        }
    }

    #[test]
    fn server_info_round_trip() {
        let info = ServerInfo {
            protocol: PROTOCOL_VERSION,
            table: Some(TableInfo {
                addr: 0x1000_0000,
                rkey: 77,
                fill_rkey: Some(79),
                geometry: TableGeometry { buckets: 1024, assoc: 8 },
            }),
            ditto: Some(TableInfo {
                addr: 0x2000_0000,
                rkey: 78,
                fill_rkey: None,
                geometry: TableGeometry { buckets: 333, assoc: 5 },
            }),
            store_id: [9; 16],
            lease_ms: 100,
            ssds: vec![SsdInfo { geometry: SsdGeometry::plan(65_536, None).unwrap(), path: "/tmp/ssd0.img".into() }],
            targets: vec![BlockTarget {
                ssd: 0,
                addr: "127.0.0.1:4420".into(),
                nqn: "nqn.2026-11.io.scalio:ssd0".into(),
                nsid: 1,
            }],
        };
        assert_eq!(ServerInfo::decode(&info.encode()).unwrap(), info);
        // An unknown field is skipped.
        let mut b = info.encode();
        field(&mut b, 999, b"future");
        assert_eq!(ServerInfo::decode(&b).unwrap(), info);
        // Without the optional regions.
        let bare = ServerInfo { table: None, ditto: None, ..info };
        assert_eq!(ServerInfo::decode(&bare.encode()).unwrap(), bare);
        // A Ditto region of the wrong size or an empty geometry is refused.
        let mut bad = Vec::new();
        field(&mut bad, tag::PROTOCOL, &PROTOCOL_VERSION.to_le_bytes());
        field(&mut bad, tag::DITTO, &[0; 16]);
        assert_eq!(ServerInfo::decode(&bad), Err(CodecError::Malformed("ditto region")));
        let mut empty = Vec::new();
        field(&mut empty, tag::PROTOCOL, &PROTOCOL_VERSION.to_le_bytes());
        field(&mut empty, tag::DITTO, &[0; 17]);
        assert_eq!(ServerInfo::decode(&empty), Err(CodecError::Malformed("empty table geometry")));
    }

    #[test]
    fn the_epoch_follows_the_value_and_is_flagged() {
        let plain = Request::new(Op::Put, b"k", b"v").to_vec();
        let with = Request::new(Op::Put, b"k", b"v").with_epoch(Some(7)).to_vec();
        assert_eq!(with.len(), plain.len() + 8);
        assert_eq!(with[1], flags::EPOCH);
        assert_eq!(&with[plain.len()..], &7u64.to_le_bytes());
        // The flag without the epoch bytes is truncated; a version-1 request has no epoch.
        let mut cut = with.clone();
        cut.truncate(plain.len());
        assert!(matches!(Request::decode(&cut), Err(CodecError::Truncated { .. })));
        assert_eq!(Request::decode(&plain).unwrap().epoch, None);
        assert_eq!(WrongOwner::decode(&[0; 7]), Err(CodecError::Malformed("wrong-owner reply")));
        assert_eq!(Status::from_u8(9), Some(Status::WrongOwner));
    }

    #[test]
    fn the_request_id_follows_the_epoch_and_is_flagged() {
        let plain = Request::new(Op::Delete, b"k", b"").with_epoch(Some(7)).to_vec();
        let with = Request::new(Op::Delete, b"k", b"").with_epoch(Some(7)).with_id(Some(42)).to_vec();
        assert_eq!(with.len(), plain.len() + 8);
        assert_eq!(with[1], flags::EPOCH | flags::REQUEST_ID);
        assert_eq!(&with[plain.len() - 8..plain.len()], &7u64.to_le_bytes());
        assert_eq!(&with[plain.len()..], &42u64.to_le_bytes());
        let r = Request::decode(&with).unwrap();
        assert_eq!((r.epoch, r.id, r.flags), (Some(7), Some(42), 0));
        // Without an epoch the id follows the value.
        let no_epoch = Request::new(Op::Put, b"k", b"v").with_id(Some(3)).to_vec();
        assert_eq!(Request::decode(&no_epoch).unwrap().id, Some(3));
        assert_eq!(Request::decode(&no_epoch).unwrap().epoch, None);
        // The flag without the id's bytes is truncated.
        let mut cut = with.clone();
        cut.truncate(plain.len() + 4);
        assert!(matches!(Request::decode(&cut), Err(CodecError::Truncated { .. })));
    }

    #[test]
    fn oversized_lengths_are_rejected() {
        let mut b = Request::new(Op::Put, b"k", b"v").to_vec();
        b[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Request::decode(&b), Err(CodecError::ValueTooLarge(u32::MAX as usize)));
        let mut r = Response::to_vec(Status::Ok, Op::Get, b"x");
        r[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(Response::decode(&r), Err(CodecError::Truncated { .. })));
    }
}
