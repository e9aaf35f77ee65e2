//! The software NIC's wire protocol: a sans-IO codec.
//!
//! Encoders append a frame to a `Vec<u8>`; decoders take the bytes received so far and return
//! `Ok(Some((frame, consumed)))`, `Ok(None)` when more bytes are needed, or a [`WireError`] as
//! soon as the bytes cannot be the start of a valid frame (an unknown opcode is refused on its
//! first byte, an oversized length as soon as the header is complete). Decoded frames borrow
//! their payload from the input, so neither side copies WRITE data or READ data on the way
//! through the codec.
//!
//! All integers are little-endian. A connection starts with a HELLO from the client, whose body is
//! the server's shared secret when it has one (up to [`MAX_SECRET`] bytes; empty otherwise); the
//! server answers with its own HELLO, whose body is the connection's [`Grant`] (RPC credits and
//! the largest RPC message), or with an ERROR frame and closes. A server at its connection limit
//! sends the ERROR frame without waiting for the HELLO.
//!
//! Credits are the message channel's flow control, as receive buffers pre-posted on a verbs
//! queue pair would be: a client has at most `rpc_credits` RPCs without a reply at any time (each
//! RPC_REPLY gives one back), and one more is a protocol violation that closes the connection. So
//! the NIC never holds more than `rpc_credits` requests of `max_message` bytes per connection.
//!
//! | frame (direction)     | bytes    | layout                                                                                     |
//! |-----------------------|----------|--------------------------------------------------------------------------------------------|
//! | HELLO (both)          | 8 + len  | magic `"SNIC"` · version u16 · body len u16 · body (client: secret; server: grant)          |
//! | grant (HELLO body)    | 8        | RPC credits u32 · largest RPC message u32                                                  |
//! | READ (client)         | 24       | op `0x01` · flags u8 · reserved u16 · chain id u32 · rkey u32 · len u32 · addr u64         |
//! | WRITE (client)        | 24 + len | op `0x02` · flags u8 · reserved u16 · chain id u32 · rkey u32 · len u32 · addr u64 · data  |
//! | RPC (client)          | 16 + len | op `0x03` · reserved u8 · reserved u16 · len u32 · request id u64 · payload                |
//! | CHAIN_DONE (server)   | 16 + len | op `0x81` · status u8 · flags u8 · reserved u8 · chain id u32 · failed index u32 · len u32 · READ data |
//! | RPC_REPLY (server)    | 16 + len | op `0x82` · reserved u8 · reserved u16 · len u32 · request id u64 · payload                |
//! | ERROR (server)        | 8 + len  | op `0x83` · code u8 · reserved u16 · len u32 · UTF-8 message                               |
//!
//! * Work-request flags: [`WrFlags::LAST`] marks the last request of a chain (a chain is the run
//!   of READ/WRITE frames up to and including one with LAST; all carry the same chain id and the
//!   same [`WrFlags::UNSIGNALED`] bit). An unsignaled chain may not contain a READ.
//! * CHAIN_DONE answers every signaled chain, and an unsignaled chain only when it failed (then
//!   with [`WrFlags::UNSIGNALED`] set). Status 0 is success and carries the chain's READ data
//!   concatenated in chain order; any other status is a [`RemoteAccessError`] discriminant, the
//!   failed index says which request failed (the fabric's error carries it as a u16, which a
//!   chain of over 65535 requests saturates), and the data is empty.
//! * RPC_REPLY answers every RPC by its id, in any order; an empty payload means the server
//!   dropped the request.
//! * ERROR says why the server is about to close the connection.
//! * Reserved fields and unknown flag bits must be zero. Limits: WRITE and RPC payloads up to
//!   [`MAX_TRANSFER`], CHAIN_DONE data up to [`MAX_CHAIN_READ`], ERROR messages up to
//!   [`MAX_ERROR_MESSAGE`] bytes. A READ's length is not a framing limit: a READ over
//!   `MAX_TRANSFER` is a well-formed request that fails with [`RemoteAccessError::TooLarge`].

use crate::fabric::{CloseReason, RemoteAccessError, RemoteAddr, MAX_TRANSFER};

/// Handshake magic.
pub const MAGIC: [u8; 4] = *b"SNIC";
/// Version of this protocol; both sides must speak the same one. Version 2: the HELLO carries a
/// secret, and a failed work request ends the connection (the queue pair's error state). Version
/// 3: the server's HELLO grants RPC credits and a largest message.
pub const VERSION: u16 = 3;
/// Size of the server's HELLO body, the [`Grant`].
pub const GRANT_LEN: usize = 8;
/// Size of the server's HELLO.
pub const SERVER_HELLO_LEN: usize = HELLO_LEN + GRANT_LEN;
/// Size of a HELLO frame without a secret (the server's HELLO, always).
pub const HELLO_LEN: usize = 8;
/// Largest shared secret a HELLO carries.
pub use crate::fabric::MAX_SECRET;
/// Header size of READ and WRITE frames (a READ is only a header).
pub const WR_HEADER_LEN: usize = 24;
/// Header size of RPC and RPC_REPLY frames.
pub const RPC_HEADER_LEN: usize = 16;
/// Header size of a CHAIN_DONE frame.
pub const CHAIN_DONE_HEADER_LEN: usize = 16;
/// Header size of an ERROR frame.
pub const ERROR_HEADER_LEN: usize = 8;
/// Largest READ data of one chain (the sum of its READs): bounds what the NIC buffers for one
/// completion.
pub const MAX_CHAIN_READ: usize = 16 * MAX_TRANSFER;
/// Largest ERROR message.
pub const MAX_ERROR_MESSAGE: usize = 1024;

const OP_READ: u8 = 0x01;
const OP_WRITE: u8 = 0x02;
const OP_RPC: u8 = 0x03;
const OP_CHAIN_DONE: u8 = 0x81;
const OP_RPC_REPLY: u8 = 0x82;
const OP_ERROR: u8 = 0x83;

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("bad handshake magic")]
    BadMagic,
    #[error("unknown opcode {0:#04x}")]
    UnknownOpcode(u8),
    #[error("{what} of {len} bytes is over the limit of {max}")]
    TooLong { what: &'static str, len: u64, max: u64 },
    #[error("unknown flag bits {0:#04x}")]
    BadFlags(u8),
    #[error("nonzero reserved field in a {0} frame")]
    Reserved(&'static str),
    #[error("unknown completion status {0}")]
    UnknownStatus(u8),
    #[error("unknown error code {0}")]
    UnknownErrorCode(u8),
    #[error("error message is not UTF-8")]
    BadMessage,
}

/// Flags of a READ or WRITE frame (and of a CHAIN_DONE, which only uses UNSIGNALED).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WrFlags(u8);

impl WrFlags {
    /// The last request of its chain.
    pub const LAST: WrFlags = WrFlags(1);
    /// The chain has no completion on success.
    pub const UNSIGNALED: WrFlags = WrFlags(2);
    const ALL: u8 = 3;

    pub fn new(last: bool, unsignaled: bool) -> WrFlags {
        WrFlags(u8::from(last) | (u8::from(unsignaled) << 1))
    }
    pub fn is_last(self) -> bool {
        self.0 & Self::LAST.0 != 0
    }
    pub fn is_unsignaled(self) -> bool {
        self.0 & Self::UNSIGNALED.0 != 0
    }
    pub fn bits(self) -> u8 {
        self.0
    }
    fn from_bits(b: u8) -> Result<WrFlags, WireError> {
        if b & !Self::ALL != 0 {
            return Err(WireError::BadFlags(b));
        }
        Ok(WrFlags(b))
    }
}

/// The handshake frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello<'a> {
    pub version: u16,
    /// The client's: the shared secret (or nothing); the server's: the encoded [`Grant`].
    pub body: &'a [u8],
}

/// What the NIC grants one connection, in its HELLO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// RPCs the client may have without a reply at once.
    pub rpc_credits: u32,
    /// Largest RPC request payload, in bytes (at most [`MAX_TRANSFER`]).
    pub max_message: u32,
}

impl Grant {
    pub fn encode(&self) -> [u8; GRANT_LEN] {
        let mut b = [0; GRANT_LEN];
        b[..4].copy_from_slice(&self.rpc_credits.to_le_bytes());
        b[4..].copy_from_slice(&self.max_message.to_le_bytes());
        b
    }

    /// A grant from a server HELLO's body; `None` if it is not one (wrong length, no credits, or
    /// a largest message the wire cannot carry).
    pub fn decode(body: &[u8]) -> Option<Grant> {
        let b: &[u8; GRANT_LEN] = body.try_into().ok()?;
        let g = Grant { rpc_credits: u32_at(b, 0), max_message: u32_at(b, 4) };
        (g.rpc_credits > 0 && g.max_message > 0 && g.max_message as usize <= MAX_TRANSFER).then_some(g)
    }
}

/// A frame sent by a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFrame<'a> {
    Read { chain: u32, flags: WrFlags, remote: RemoteAddr, len: u32 },
    Write { chain: u32, flags: WrFlags, remote: RemoteAddr, data: &'a [u8] },
    Rpc { id: u64, payload: &'a [u8] },
}

/// The outcome of a chain, as carried by CHAIN_DONE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainStatus {
    Ok,
    /// Request `index` of the chain failed; the rest did not execute.
    Failed {
        index: u32,
        error: RemoteAccessError,
    },
}

/// A frame sent by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerFrame<'a> {
    ChainDone { chain: u32, unsignaled: bool, status: ChainStatus, data: &'a [u8] },
    RpcReply { id: u64, payload: &'a [u8] },
    Error { code: CloseReason, message: &'a str },
}

// ---- encoders -------------------------------------------------------------------------------

/// Appends a HELLO; `body` (a secret, or an encoded grant) must be at most [`MAX_SECRET`] bytes.
pub fn encode_hello(out: &mut Vec<u8>, version: u16, body: &[u8]) {
    assert!(body.len() <= MAX_SECRET, "a HELLO body of {} bytes is over the limit", body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(body.len() as u16).to_le_bytes());
    out.extend_from_slice(body);
}

fn wr_header(out: &mut Vec<u8>, op: u8, chain: u32, flags: WrFlags, remote: RemoteAddr, len: u32) {
    out.extend_from_slice(&[op, flags.0, 0, 0]);
    out.extend_from_slice(&chain.to_le_bytes());
    out.extend_from_slice(&remote.rkey.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&remote.addr.to_le_bytes());
}

pub fn encode_read(out: &mut Vec<u8>, chain: u32, flags: WrFlags, remote: RemoteAddr, len: u32) {
    wr_header(out, OP_READ, chain, flags, remote, len);
}

/// Appends a WRITE. `data` must be at most [`MAX_TRANSFER`] bytes (the caller checks).
pub fn encode_write(out: &mut Vec<u8>, chain: u32, flags: WrFlags, remote: RemoteAddr, data: &[u8]) {
    debug_assert!(data.len() <= MAX_TRANSFER);
    wr_header(out, OP_WRITE, chain, flags, remote, data.len() as u32);
    out.extend_from_slice(data);
}

/// Appends a WRITE of `len` bytes that `fill` writes into the frame (from the caller's
/// registered memory, without a copy in between). `len` must be at most [`MAX_TRANSFER`].
pub fn encode_write_with(
    out: &mut Vec<u8>,
    chain: u32,
    flags: WrFlags,
    remote: RemoteAddr,
    len: u32,
    fill: impl FnOnce(&mut [u8]),
) {
    debug_assert!(len as usize <= MAX_TRANSFER);
    wr_header(out, OP_WRITE, chain, flags, remote, len);
    let at = out.len();
    out.resize(at + len as usize, 0);
    fill(&mut out[at..]);
}

fn rpc_frame(out: &mut Vec<u8>, op: u8, id: u64, payload: &[u8]) {
    debug_assert!(payload.len() <= MAX_TRANSFER);
    out.extend_from_slice(&[op, 0, 0, 0]);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Appends an RPC request. `payload` must be at most [`MAX_TRANSFER`] bytes (the caller checks).
pub fn encode_rpc(out: &mut Vec<u8>, id: u64, payload: &[u8]) {
    rpc_frame(out, OP_RPC, id, payload);
}

/// Appends an RPC reply. `payload` must be at most [`MAX_TRANSFER`] bytes.
pub fn encode_rpc_reply(out: &mut Vec<u8>, id: u64, payload: &[u8]) {
    rpc_frame(out, OP_RPC_REPLY, id, payload);
}

/// Writes a CHAIN_DONE header into `header` (exactly [`CHAIN_DONE_HEADER_LEN`] bytes) for
/// `data_len` bytes of READ data that follow it. The NIC reserves the header when a chain
/// starts, appends READ data after it as the chain executes, and fills it in here at the end.
pub fn write_chain_done_header(header: &mut [u8], chain: u32, unsignaled: bool, status: ChainStatus, data_len: u32) {
    let (code, index) = match status {
        ChainStatus::Ok => (0, 0),
        ChainStatus::Failed { index, error } => (error as u8, index),
    };
    header[0..4].copy_from_slice(&[OP_CHAIN_DONE, code, WrFlags::new(false, unsignaled).0, 0]);
    header[4..8].copy_from_slice(&chain.to_le_bytes());
    header[8..12].copy_from_slice(&index.to_le_bytes());
    header[12..16].copy_from_slice(&data_len.to_le_bytes());
}

/// Appends a whole CHAIN_DONE frame.
pub fn encode_chain_done(out: &mut Vec<u8>, chain: u32, unsignaled: bool, status: ChainStatus, data: &[u8]) {
    debug_assert!(data.len() <= MAX_CHAIN_READ);
    let at = out.len();
    out.resize(at + CHAIN_DONE_HEADER_LEN, 0);
    write_chain_done_header(&mut out[at..], chain, unsignaled, status, data.len() as u32);
    out.extend_from_slice(data);
}

/// Appends an ERROR frame; the message is cut to [`MAX_ERROR_MESSAGE`] bytes (at a character
/// boundary).
pub fn encode_error(out: &mut Vec<u8>, code: CloseReason, message: &str) {
    let mut end = message.len().min(MAX_ERROR_MESSAGE);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let message = &message.as_bytes()[..end];
    out.extend_from_slice(&[OP_ERROR, code as u8, 0, 0]);
    out.extend_from_slice(&(message.len() as u32).to_le_bytes());
    out.extend_from_slice(message);
}

// ---- decoders -------------------------------------------------------------------------------

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn check_len(what: &'static str, len: u32, max: usize) -> Result<usize, WireError> {
    let len = len as usize;
    if len > max {
        return Err(WireError::TooLong { what, len: len as u64, max: max as u64 });
    }
    Ok(len)
}

/// A frame of `header + body` bytes, once all of them are there.
fn complete<'a, T>(buf: &'a [u8], header: usize, body: usize, make: impl FnOnce(&'a [u8]) -> T) -> Option<(T, usize)> {
    let total = header + body;
    (buf.len() >= total).then(|| (make(&buf[header..total]), total))
}

/// Decodes a HELLO. Bytes that differ from the magic are refused as soon as they arrive.
pub fn decode_hello(buf: &[u8]) -> Result<Option<(Hello<'_>, usize)>, WireError> {
    let n = buf.len().min(MAGIC.len());
    if buf[..n] != MAGIC[..n] {
        return Err(WireError::BadMagic);
    }
    if buf.len() < HELLO_LEN {
        return Ok(None);
    }
    let secret_len = usize::from(u16_at(buf, 6));
    if secret_len > MAX_SECRET {
        return Err(WireError::TooLong { what: "HELLO secret", len: secret_len as u64, max: MAX_SECRET as u64 });
    }
    let version = u16_at(buf, 4);
    Ok(complete(buf, HELLO_LEN, secret_len, |body| Hello { version, body }))
}

/// Decodes one client frame from the start of `buf`.
pub fn decode_client_frame(buf: &[u8]) -> Result<Option<(ClientFrame<'_>, usize)>, WireError> {
    let Some(&op) = buf.first() else { return Ok(None) };
    match op {
        OP_READ | OP_WRITE => {
            if buf.len() < WR_HEADER_LEN {
                return Ok(None);
            }
            let name = if op == OP_READ { "READ" } else { "WRITE" };
            let flags = WrFlags::from_bits(buf[1])?;
            if u16_at(buf, 2) != 0 {
                return Err(WireError::Reserved(name));
            }
            let chain = u32_at(buf, 4);
            let remote = RemoteAddr { rkey: u32_at(buf, 8), addr: u64_at(buf, 16) };
            let len = u32_at(buf, 12);
            if op == OP_READ {
                return Ok(Some((ClientFrame::Read { chain, flags, remote, len }, WR_HEADER_LEN)));
            }
            let body = check_len("WRITE data", len, MAX_TRANSFER)?;
            Ok(complete(buf, WR_HEADER_LEN, body, |data| ClientFrame::Write { chain, flags, remote, data }))
        }
        OP_RPC => {
            if buf.len() < RPC_HEADER_LEN {
                return Ok(None);
            }
            if buf[1] != 0 || u16_at(buf, 2) != 0 {
                return Err(WireError::Reserved("RPC"));
            }
            let body = check_len("RPC request", u32_at(buf, 4), MAX_TRANSFER)?;
            let id = u64_at(buf, 8);
            Ok(complete(buf, RPC_HEADER_LEN, body, |payload| ClientFrame::Rpc { id, payload }))
        }
        other => Err(WireError::UnknownOpcode(other)),
    }
}

/// Decodes one server frame from the start of `buf`.
pub fn decode_server_frame(buf: &[u8]) -> Result<Option<(ServerFrame<'_>, usize)>, WireError> {
    let Some(&op) = buf.first() else { return Ok(None) };
    match op {
        OP_CHAIN_DONE => {
            if buf.len() < CHAIN_DONE_HEADER_LEN {
                return Ok(None);
            }
            let flags = WrFlags::from_bits(buf[2])?;
            if flags.is_last() {
                return Err(WireError::BadFlags(buf[2]));
            }
            if buf[3] != 0 {
                return Err(WireError::Reserved("CHAIN_DONE"));
            }
            let chain = u32_at(buf, 4);
            let index = u32_at(buf, 8);
            let status = match buf[1] {
                0 if index == 0 => ChainStatus::Ok,
                0 => return Err(WireError::Reserved("CHAIN_DONE")),
                code => ChainStatus::Failed {
                    index,
                    error: RemoteAccessError::from_u8(code).ok_or(WireError::UnknownStatus(code))?,
                },
            };
            let body = check_len("CHAIN_DONE data", u32_at(buf, 12), MAX_CHAIN_READ)?;
            let unsignaled = flags.is_unsignaled();
            Ok(complete(buf, CHAIN_DONE_HEADER_LEN, body, |data| ServerFrame::ChainDone {
                chain,
                unsignaled,
                status,
                data,
            }))
        }
        OP_RPC_REPLY => {
            if buf.len() < RPC_HEADER_LEN {
                return Ok(None);
            }
            if buf[1] != 0 || u16_at(buf, 2) != 0 {
                return Err(WireError::Reserved("RPC_REPLY"));
            }
            let body = check_len("RPC reply", u32_at(buf, 4), MAX_TRANSFER)?;
            let id = u64_at(buf, 8);
            Ok(complete(buf, RPC_HEADER_LEN, body, |payload| ServerFrame::RpcReply { id, payload }))
        }
        OP_ERROR => {
            if buf.len() < ERROR_HEADER_LEN {
                return Ok(None);
            }
            let code = CloseReason::from_u8(buf[1]).ok_or(WireError::UnknownErrorCode(buf[1]))?;
            if u16_at(buf, 2) != 0 {
                return Err(WireError::Reserved("ERROR"));
            }
            let body = check_len("ERROR message", u32_at(buf, 4), MAX_ERROR_MESSAGE)?;
            match complete(buf, ERROR_HEADER_LEN, body, std::str::from_utf8) {
                None => Ok(None),
                Some((Ok(message), n)) => Ok(Some((ServerFrame::Error { code, message }, n))),
                Some((Err(_), _)) => Err(WireError::BadMessage),
            }
        }
        other => Err(WireError::UnknownOpcode(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An owned client frame, for generating test cases.
    #[derive(Debug, Clone)]
    enum OwnedClient {
        Read { chain: u32, flags: u8, rkey: u32, addr: u64, len: u32 },
        Write { chain: u32, flags: u8, rkey: u32, addr: u64, data: Vec<u8> },
        Rpc { id: u64, payload: Vec<u8> },
    }

    impl OwnedClient {
        fn encode(&self, out: &mut Vec<u8>) {
            match self {
                OwnedClient::Read { chain, flags, rkey, addr, len } => {
                    encode_read(out, *chain, WrFlags(*flags), RemoteAddr { addr: *addr, rkey: *rkey }, *len)
                }
                OwnedClient::Write { chain, flags, rkey, addr, data } => {
                    encode_write(out, *chain, WrFlags(*flags), RemoteAddr { addr: *addr, rkey: *rkey }, data)
                }
                OwnedClient::Rpc { id, payload } => encode_rpc(out, *id, payload),
            }
        }

        fn matches(&self, frame: &ClientFrame<'_>) -> bool {
            match (self, frame) {
                (
                    OwnedClient::Read { chain, flags, rkey, addr, len },
                    ClientFrame::Read { chain: c, flags: f, remote, len: l },
                ) => chain == c && *flags == f.bits() && *rkey == remote.rkey && *addr == remote.addr && len == l,
                (
                    OwnedClient::Write { chain, flags, rkey, addr, data },
                    ClientFrame::Write { chain: c, flags: f, remote, data: d },
                ) => chain == c && *flags == f.bits() && *rkey == remote.rkey && *addr == remote.addr && data == d,
                (OwnedClient::Rpc { id, payload }, ClientFrame::Rpc { id: i, payload: p }) => id == i && payload == p,
                _ => false,
            }
        }
    }

    #[derive(Debug, Clone)]
    enum OwnedServer {
        Done { chain: u32, unsignaled: bool, status: ChainStatus, data: Vec<u8> },
        Reply { id: u64, payload: Vec<u8> },
        Error { code: CloseReason, message: String },
    }

    impl OwnedServer {
        fn encode(&self, out: &mut Vec<u8>) {
            match self {
                OwnedServer::Done { chain, unsignaled, status, data } => {
                    encode_chain_done(out, *chain, *unsignaled, *status, data)
                }
                OwnedServer::Reply { id, payload } => encode_rpc_reply(out, *id, payload),
                OwnedServer::Error { code, message } => encode_error(out, *code, message),
            }
        }

        fn matches(&self, frame: &ServerFrame<'_>) -> bool {
            match (self, frame) {
                (
                    OwnedServer::Done { chain, unsignaled, status, data },
                    ServerFrame::ChainDone { chain: c, unsignaled: u, status: s, data: d },
                ) => chain == c && unsignaled == u && status == s && data == d,
                (OwnedServer::Reply { id, payload }, ServerFrame::RpcReply { id: i, payload: p }) => {
                    id == i && payload == p
                }
                (OwnedServer::Error { code, message }, ServerFrame::Error { code: c, message: m }) => {
                    code == c && message == m
                }
                _ => false,
            }
        }
    }

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(any::<u8>(), 0..300)
    }

    fn client_frame() -> impl Strategy<Value = OwnedClient> {
        prop_oneof![
            (any::<u32>(), 0u8..4, any::<u32>(), any::<u64>(), any::<u32>())
                .prop_map(|(chain, flags, rkey, addr, len)| OwnedClient::Read { chain, flags, rkey, addr, len }),
            (any::<u32>(), 0u8..4, any::<u32>(), any::<u64>(), bytes())
                .prop_map(|(chain, flags, rkey, addr, data)| OwnedClient::Write { chain, flags, rkey, addr, data }),
            (any::<u64>(), bytes()).prop_map(|(id, payload)| OwnedClient::Rpc { id, payload }),
        ]
    }

    fn access_error() -> impl Strategy<Value = RemoteAccessError> {
        (1u8..=4).prop_map(|v| RemoteAccessError::from_u8(v).unwrap())
    }

    fn server_frame() -> impl Strategy<Value = OwnedServer> {
        let code = (1u8..=7).prop_map(|v| CloseReason::from_u8(v).unwrap());
        prop_oneof![
            (any::<u32>(), any::<bool>(), bytes()).prop_map(|(chain, unsignaled, data)| OwnedServer::Done {
                chain,
                unsignaled,
                status: ChainStatus::Ok,
                data
            }),
            (any::<u32>(), any::<bool>(), any::<u32>(), access_error()).prop_map(
                |(chain, unsignaled, index, error)| {
                    OwnedServer::Done { chain, unsignaled, status: ChainStatus::Failed { index, error }, data: vec![] }
                }
            ),
            (any::<u64>(), bytes()).prop_map(|(id, payload)| OwnedServer::Reply { id, payload }),
            (code, ".{0,40}").prop_map(|(code, message)| OwnedServer::Error { code, message }),
        ]
    }

    /// Decodes `stream` fed in pieces cut at `cuts`, as a socket reader would: append each piece
    /// to a buffer and take every complete frame out of it.
    fn decode_in_pieces<F, T>(stream: &[u8], cuts: &[usize], mut decode: F) -> Vec<T>
    where
        F: FnMut(&[u8]) -> Result<Option<(T, usize)>, WireError>,
    {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
        cuts.push(stream.len());
        cuts.sort_unstable();
        let (mut buf, mut fed, mut out) = (Vec::new(), 0, Vec::new());
        for cut in cuts {
            buf.extend_from_slice(&stream[fed..cut]);
            fed = cut;
            while let Some((frame, n)) = decode(&buf).expect("valid stream") {
                out.push(frame);
                buf.drain(..n);
            }
        }
        assert!(buf.is_empty(), "bytes left over");
        out
    }

    #[test]
    fn grants_round_trip_and_nonsense_is_refused() {
        let g = Grant { rpc_credits: 256, max_message: MAX_TRANSFER as u32 };
        assert_eq!(Grant::decode(&g.encode()), Some(g));
        assert_eq!(Grant::decode(&[]), None, "a version-2 server HELLO has no grant");
        assert_eq!(Grant::decode(&Grant { rpc_credits: 0, ..g }.encode()), None);
        assert_eq!(Grant::decode(&Grant { max_message: MAX_TRANSFER as u32 + 1, ..g }.encode()), None);
    }

    proptest! {
        #[test]
        fn client_frames_round_trip(frames in prop::collection::vec(client_frame(), 1..8)) {
            let mut stream = Vec::new();
            for f in &frames {
                f.encode(&mut stream);
            }
            let mut at = 0;
            for f in &frames {
                let (got, n) = decode_client_frame(&stream[at..]).unwrap().unwrap();
                prop_assert!(f.matches(&got), "{:?} != {:?}", f, got);
                // One byte short of the frame is "need more".
                prop_assert_eq!(decode_client_frame(&stream[at..at + n - 1]), Ok(None));
                at += n;
            }
            prop_assert_eq!(at, stream.len());
        }

        #[test]
        fn server_frames_round_trip(frames in prop::collection::vec(server_frame(), 1..8)) {
            let mut stream = Vec::new();
            for f in &frames {
                f.encode(&mut stream);
            }
            let mut at = 0;
            for f in &frames {
                let (got, n) = decode_server_frame(&stream[at..]).unwrap().unwrap();
                prop_assert!(f.matches(&got), "{:?} != {:?}", f, got);
                prop_assert_eq!(decode_server_frame(&stream[at..at + n - 1]), Ok(None));
                at += n;
            }
            prop_assert_eq!(at, stream.len());
        }

        #[test]
        fn hello_round_trips(version in any::<u16>(), secret in prop::collection::vec(any::<u8>(), 0..=MAX_SECRET)) {
            let mut b = Vec::new();
            encode_hello(&mut b, version, &secret);
            prop_assert_eq!(decode_hello(&b), Ok(Some((Hello { version, body: &secret }, HELLO_LEN + secret.len()))));
            for n in 0..b.len() {
                prop_assert_eq!(decode_hello(&b[..n]), Ok(None));
            }
        }

        #[test]
        fn split_client_stream_gives_the_same_frames(
            frames in prop::collection::vec(client_frame(), 1..8),
            cuts in prop::collection::vec(any::<usize>(), 0..10),
        ) {
            let mut stream = Vec::new();
            for f in &frames {
                f.encode(&mut stream);
            }
            let got = decode_in_pieces(&stream, &cuts, |b| {
                Ok(decode_client_frame(b)?.map(|(f, n)| (format!("{f:?}"), n)))
            });
            let want: Vec<String> = {
                let mut at = 0;
                frames.iter().map(|_| {
                    let (f, n) = decode_client_frame(&stream[at..]).unwrap().unwrap();
                    at += n;
                    format!("{f:?}")
                }).collect()
            };
            prop_assert_eq!(got, want);
        }

        #[test]
        fn split_server_stream_gives_the_same_frames(
            frames in prop::collection::vec(server_frame(), 1..8),
            cuts in prop::collection::vec(any::<usize>(), 0..10),
        ) {
            let mut stream = Vec::new();
            for f in &frames {
                f.encode(&mut stream);
            }
            let got = decode_in_pieces(&stream, &cuts, |b| {
                Ok(decode_server_frame(b)?.map(|(f, n)| (format!("{f:?}"), n)))
            });
            prop_assert_eq!(got.len(), frames.len());
            let mut at = 0;
            for (f, g) in frames.iter().zip(&got) {
                let (whole, n) = decode_server_frame(&stream[at..]).unwrap().unwrap();
                prop_assert!(f.matches(&whole));
                prop_assert_eq!(g, &format!("{whole:?}"));
                at += n;
            }
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(b in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_hello(&b);
            for start in 0..b.len().min(8) {
                if let Ok(Some((_, n))) = decode_client_frame(&b[start..]) {
                    prop_assert!(n <= b.len() - start);
                }
                if let Ok(Some((_, n))) = decode_server_frame(&b[start..]) {
                    prop_assert!(n <= b.len() - start);
                }
            }
        }

        #[test]
        fn decoding_arbitrary_frames_after_a_valid_opcode_never_panics(
            op in prop::sample::select(vec![OP_READ, OP_WRITE, OP_RPC, OP_CHAIN_DONE, OP_RPC_REPLY, OP_ERROR]),
            rest in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut b = vec![op];
            b.extend(rest);
            let _ = decode_client_frame(&b);
            let _ = decode_server_frame(&b);
        }
    }

    #[test]
    fn bad_input_is_refused_early() {
        assert_eq!(decode_hello(b"GE"), Err(WireError::BadMagic));
        assert_eq!(decode_hello(b"SN"), Ok(None));
        let mut h = Vec::new();
        encode_hello(&mut h, VERSION, b"");
        h[6..8].copy_from_slice(&(MAX_SECRET as u16 + 1).to_le_bytes());
        assert!(matches!(decode_hello(&h), Err(WireError::TooLong { what: "HELLO secret", .. })));
        assert_eq!(decode_client_frame(&[0x7F]), Err(WireError::UnknownOpcode(0x7F)));
        assert_eq!(decode_server_frame(&[OP_READ]), Err(WireError::UnknownOpcode(OP_READ)));

        let mut w = Vec::new();
        encode_write(&mut w, 1, WrFlags::LAST, RemoteAddr { addr: 0, rkey: 1 }, &[]);
        w[12..16].copy_from_slice(&(MAX_TRANSFER as u32 + 1).to_le_bytes());
        // The header alone is enough to refuse an oversized WRITE.
        assert!(matches!(decode_client_frame(&w[..WR_HEADER_LEN]), Err(WireError::TooLong { .. })));

        let mut r = Vec::new();
        encode_read(&mut r, 1, WrFlags::LAST, RemoteAddr { addr: 0, rkey: 1 }, 8);
        r[1] = 0x10;
        assert_eq!(decode_client_frame(&r), Err(WireError::BadFlags(0x10)));
        r[1] = 0;
        r[2] = 1;
        assert_eq!(decode_client_frame(&r), Err(WireError::Reserved("READ")));

        let mut e = Vec::new();
        encode_error(&mut e, CloseReason::Shutdown, "bye");
        e[1] = 99;
        assert_eq!(decode_server_frame(&e), Err(WireError::UnknownErrorCode(99)));
    }

    #[test]
    fn long_error_messages_are_cut_at_a_char_boundary() {
        let msg = "é".repeat(MAX_ERROR_MESSAGE);
        let mut e = Vec::new();
        encode_error(&mut e, CloseReason::ProtocolViolation, &msg);
        let (frame, _) = decode_server_frame(&e).unwrap().unwrap();
        let ServerFrame::Error { message, .. } = frame else { panic!("{frame:?}") };
        assert_eq!(message.len(), MAX_ERROR_MESSAGE);
    }
}
