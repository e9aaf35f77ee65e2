//! What the verbs backend puts on the wire besides the NIC's own packets: the connection
//! handshake and the header of an RPC message (the first bytes of its first SEND). Sans-IO
//! codecs, all integers little-endian.
//!
//! Through rdma_cm (the default), the CM exchanges queue pair numbers, PSNs and GIDs itself; the
//! client's connect request carries a [`CmRequest`] as private data (magic, version, SHA-256 of
//! the shared secret: a request has room for 56 bytes, not for a 64-byte secret), and the server
//! answers with a [`ServerHello`] as the private data of its accept (the grant; the endpoint is
//! zero) or of its reject (the [`CloseReason`]).
//!
//! Over the TCP handshake (`verbs.connect = "tcp"`, before the queue pairs go to RTS):
//! Handshake, client → server ([`ClientHello`], fixed size): magic, version, the shared secret
//! (length and 64 bytes, zero-padded), and the client queue pair's number, first PSN, GID and LID.
//! Server → client ([`ServerHello`]): magic, version, a status (0 = accepted, else a
//! [`CloseReason`]), the server queue pair's number, PSN, GID and LID, and the grant: RPC credits
//! (receive buffers the server pre-posted for this connection), the receive buffer size, and the
//! largest message.
//!
//! An RPC message travels as SENDs of at most the receive buffer size, posted back to back (so
//! they arrive back to back on RC); the first begins with a [`MessageHeader`].

use crate::fabric::{CloseReason, MAX_SECRET};

pub const MAGIC: [u8; 4] = *b"SCVB";
pub const VERSION: u16 = 1;
pub const CLIENT_HELLO_LEN: usize = 4 + 2 + 1 + MAX_SECRET + 4 + 4 + 16 + 2;
pub const SERVER_HELLO_LEN: usize = 4 + 2 + 1 + 4 + 4 + 16 + 2 + 4 + 4 + 4;
pub const HEADER_LEN: usize = 24;
pub const CM_REQUEST_LEN: usize = 4 + 2 + SECRET_DIGEST_LEN;
/// Bytes of the secret's digest in a [`CmRequest`] (SHA-256).
pub const SECRET_DIGEST_LEN: usize = 32;
// What the CM carries: the request in a connect, the hello in an accept and in a reject.
const _: () = assert!(CM_REQUEST_LEN <= super::cm::MAX_CONNECT_DATA);
const _: () = assert!(SERVER_HELLO_LEN <= super::cm::MAX_REJECT_DATA);

/// SHA-256 of a shared secret: what an rdma_cm connect request presents instead of the secret.
/// Anyone who can read the request can replay it, as anyone who can read the TCP handshake can
/// replay the secret: both paths rely on the fabric being private (README, "Threat model").
pub fn secret_digest(secret: &[u8]) -> [u8; SECRET_DIGEST_LEN] {
    use sha2::Digest;
    sha2::Sha256::digest(secret).into()
}

/// The private data of an rdma_cm connect request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CmRequest {
    /// [`secret_digest`] of the client's secret; None when it has none (all zero on the wire).
    pub secret_digest: Option<[u8; SECRET_DIGEST_LEN]>,
}

impl CmRequest {
    pub fn encode(&self) -> [u8; CM_REQUEST_LEN] {
        let mut b = [0u8; CM_REQUEST_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&VERSION.to_le_bytes());
        if let Some(d) = &self.secret_digest {
            b[6..].copy_from_slice(d);
        }
        b
    }

    /// Decodes the start of a request's private data (the CM pads it with zeros to its size).
    pub fn decode(b: &[u8]) -> Result<CmRequest, HandshakeError> {
        let b: &[u8; CM_REQUEST_LEN] = b.get(..CM_REQUEST_LEN).ok_or(HandshakeError::Malformed)?.try_into().unwrap();
        check_preamble(b)?;
        let d: [u8; SECRET_DIGEST_LEN] = b[6..].try_into().unwrap();
        Ok(CmRequest { secret_digest: (d != [0; SECRET_DIGEST_LEN]).then_some(d) })
    }
}

/// Where a queue pair is: enough for the peer to move its own to RTR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub qpn: u32,
    pub psn: u32,
    pub gid: [u8; 16],
    pub lid: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    pub secret: Vec<u8>,
    pub endpoint: Endpoint,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Receive buffers pre-posted for this connection: fragments the client may have unanswered.
    pub credits: u32,
    /// Bytes of each receive buffer: the largest SEND.
    pub buffer_len: u32,
    /// Largest RPC message (header included).
    pub max_message: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerHello {
    Accepted { endpoint: Endpoint, grant: Grant },
    Refused(CloseReason),
}

/// A handshake that does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("not a scalio verbs handshake")]
    BadMagic,
    #[error("protocol version {0}")]
    Version(u16),
    #[error("malformed handshake")]
    Malformed,
}

fn put_endpoint(out: &mut Vec<u8>, e: &Endpoint) {
    out.extend(e.qpn.to_le_bytes());
    out.extend(e.psn.to_le_bytes());
    out.extend(e.gid);
    out.extend(e.lid.to_le_bytes());
}

fn get_endpoint(b: &[u8]) -> Endpoint {
    Endpoint {
        qpn: u32::from_le_bytes(b[0..4].try_into().unwrap()),
        psn: u32::from_le_bytes(b[4..8].try_into().unwrap()),
        gid: b[8..24].try_into().unwrap(),
        lid: u16::from_le_bytes(b[24..26].try_into().unwrap()),
    }
}

fn check_preamble(b: &[u8]) -> Result<(), HandshakeError> {
    if b[0..4] != MAGIC {
        return Err(HandshakeError::BadMagic);
    }
    let v = u16::from_le_bytes([b[4], b[5]]);
    if v != VERSION {
        return Err(HandshakeError::Version(v));
    }
    Ok(())
}

impl ClientHello {
    pub fn encode(&self) -> [u8; CLIENT_HELLO_LEN] {
        let mut out = Vec::with_capacity(CLIENT_HELLO_LEN);
        out.extend(MAGIC);
        out.extend(VERSION.to_le_bytes());
        let n = self.secret.len().min(MAX_SECRET);
        out.push(n as u8);
        let mut secret = [0u8; MAX_SECRET];
        secret[..n].copy_from_slice(&self.secret[..n]);
        out.extend(secret);
        put_endpoint(&mut out, &self.endpoint);
        out.try_into().expect("fixed size")
    }

    pub fn decode(b: &[u8; CLIENT_HELLO_LEN]) -> Result<ClientHello, HandshakeError> {
        check_preamble(b)?;
        let n = b[6] as usize;
        if n > MAX_SECRET {
            return Err(HandshakeError::Malformed);
        }
        let secret = b[7..7 + n].to_vec();
        Ok(ClientHello { secret, endpoint: get_endpoint(&b[7 + MAX_SECRET..]) })
    }
}

impl ServerHello {
    pub fn encode(&self) -> [u8; SERVER_HELLO_LEN] {
        let mut out = Vec::with_capacity(SERVER_HELLO_LEN);
        out.extend(MAGIC);
        out.extend(VERSION.to_le_bytes());
        let (status, endpoint, grant) = match self {
            ServerHello::Accepted { endpoint, grant } => (0, *endpoint, *grant),
            ServerHello::Refused(r) => (
                *r as u8,
                Endpoint { qpn: 0, psn: 0, gid: [0; 16], lid: 0 },
                Grant { credits: 0, buffer_len: 0, max_message: 0 },
            ),
        };
        out.push(status);
        put_endpoint(&mut out, &endpoint);
        out.extend(grant.credits.to_le_bytes());
        out.extend(grant.buffer_len.to_le_bytes());
        out.extend(grant.max_message.to_le_bytes());
        out.try_into().expect("fixed size")
    }

    /// Decodes the start of `b` (rdma_cm pads private data with zeros to its fixed size).
    pub fn decode(b: &[u8]) -> Result<ServerHello, HandshakeError> {
        let b: &[u8; SERVER_HELLO_LEN] =
            b.get(..SERVER_HELLO_LEN).ok_or(HandshakeError::Malformed)?.try_into().unwrap();
        check_preamble(b)?;
        if b[6] != 0 {
            return CloseReason::from_u8(b[6]).map(ServerHello::Refused).ok_or(HandshakeError::Malformed);
        }
        let endpoint = get_endpoint(&b[7..33]);
        let u = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        let grant = Grant { credits: u(33), buffer_len: u(37), max_message: u(41) };
        if grant.credits == 0 || (grant.buffer_len as usize) < HEADER_LEN || grant.max_message < grant.buffer_len {
            return Err(HandshakeError::Malformed);
        }
        Ok(ServerHello::Accepted { endpoint, grant })
    }
}

/// Whether a message is a request or a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum MessageKind {
    Request = 1,
    Response = 2,
}

/// The first bytes of an RPC message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageHeader {
    pub kind: MessageKind,
    /// Matches a response to its request.
    pub id: u64,
    /// Payload bytes after the header (over all fragments).
    pub len: u32,
    /// In a response: receive buffers (credits) the server re-posted for the request.
    pub credits: u32,
}

impl MessageHeader {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0] = self.kind as u8;
        b[8..16].copy_from_slice(&self.id.to_le_bytes());
        b[16..20].copy_from_slice(&self.len.to_le_bytes());
        b[20..24].copy_from_slice(&self.credits.to_le_bytes());
        b
    }

    /// None for bytes that are not a header.
    pub fn decode(b: &[u8]) -> Option<MessageHeader> {
        let b: &[u8; HEADER_LEN] = b.get(..HEADER_LEN)?.try_into().ok()?;
        let kind = match b[0] {
            1 => MessageKind::Request,
            2 => MessageKind::Response,
            _ => return None,
        };
        if b[1..8] != [0; 7] {
            return None;
        }
        Some(MessageHeader {
            kind,
            id: u64::from_le_bytes(b[8..16].try_into().unwrap()),
            len: u32::from_le_bytes(b[16..20].try_into().unwrap()),
            credits: u32::from_le_bytes(b[20..24].try_into().unwrap()),
        })
    }
}

/// SENDs a message of `payload` bytes takes with receive buffers of `buffer_len` bytes.
pub fn fragments(payload: usize, buffer_len: usize) -> usize {
    (HEADER_LEN + payload).div_ceil(buffer_len)
}

/// Reassembles one queue pair's incoming messages from its SENDs (which arrive back to back).
#[derive(Debug, Default)]
pub struct Reassembly {
    current: Option<(MessageHeader, Vec<u8>, u32)>,
}

/// The peer sent bytes that are not a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed message from the peer")]
pub struct Malformed;

impl Reassembly {
    /// Takes one received SEND; returns the message it completes, with the SENDs it took.
    pub fn push(
        &mut self,
        fragment: &[u8],
        max_message: usize,
    ) -> Result<Option<(MessageHeader, Vec<u8>, u32)>, Malformed> {
        let (header, mut body, frags) = match self.current.take() {
            Some((h, mut body, n)) => {
                if body.len() + fragment.len() > h.len as usize {
                    return Err(Malformed);
                }
                body.extend_from_slice(fragment);
                (h, body, n + 1)
            }
            None => {
                let h = MessageHeader::decode(fragment).ok_or(Malformed)?;
                if h.len as usize + HEADER_LEN > max_message || fragment.len() - HEADER_LEN > h.len as usize {
                    return Err(Malformed);
                }
                let mut body = Vec::with_capacity(h.len as usize);
                body.extend_from_slice(&fragment[HEADER_LEN..]);
                (h, body, 1)
            }
        };
        if body.len() == header.len as usize {
            Ok(Some((header, std::mem::take(&mut body), frags)))
        } else {
            self.current = Some((header, body, frags));
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshakes_round_trip() {
        let e = Endpoint { qpn: 0x11_2233, psn: 0xAB_CDEF, gid: [7; 16], lid: 9 };
        let c = ClientHello { secret: b"s3cret".to_vec(), endpoint: e };
        assert_eq!(ClientHello::decode(&c.encode()), Ok(c.clone()));
        let g = Grant { credits: 64, buffer_len: 16384, max_message: 1 << 20 };
        let s = ServerHello::Accepted { endpoint: e, grant: g };
        assert_eq!(ServerHello::decode(&s.encode()), Ok(s));
        let r = ServerHello::Refused(CloseReason::Unauthenticated);
        assert_eq!(ServerHello::decode(&r.encode()), Ok(r));
        let mut bad = s.encode();
        bad[0] = b'X';
        assert_eq!(ServerHello::decode(&bad), Err(HandshakeError::BadMagic));
        let mut zero_credits = s.encode();
        zero_credits[33..37].fill(0);
        assert_eq!(ServerHello::decode(&zero_credits), Err(HandshakeError::Malformed));
        let mut long_secret = c.encode();
        long_secret[6] = 200;
        assert_eq!(ClientHello::decode(&long_secret), Err(HandshakeError::Malformed));
        // rdma_cm private data comes zero-padded to the CM's size; shorter is malformed.
        let mut padded = s.encode().to_vec();
        padded.resize(196, 0);
        assert_eq!(ServerHello::decode(&padded), Ok(s));
        assert_eq!(ServerHello::decode(&padded[..SERVER_HELLO_LEN - 1]), Err(HandshakeError::Malformed));
    }

    #[test]
    fn rdma_cm_requests_fit_and_round_trip() {
        let with = CmRequest { secret_digest: Some(secret_digest(b"s3cret")) };
        let mut padded = with.encode().to_vec();
        padded.resize(56, 0);
        assert_eq!(CmRequest::decode(&padded), Ok(with));
        assert_ne!(secret_digest(b"s3cret"), secret_digest(b"s3creT"));
        let without = CmRequest { secret_digest: None };
        assert_eq!(CmRequest::decode(&without.encode()), Ok(without));
        let mut bad = with.encode();
        bad[4] = 9;
        assert_eq!(CmRequest::decode(&bad), Err(HandshakeError::Version(9)));
        assert_eq!(CmRequest::decode(&[0; 56]), Err(HandshakeError::BadMagic));
        assert_eq!(CmRequest::decode(&with.encode()[..10]), Err(HandshakeError::Malformed));
    }

    proptest::proptest! {
        /// Whatever a peer's private data holds, decoding it is a value or a typed error.
        #[test]
        fn private_data_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = CmRequest::decode(&bytes);
            let _ = ServerHello::decode(&bytes);
        }
    }

    #[test]
    fn messages_reassemble_from_fragments() {
        let payload: Vec<u8> = (0..100u32).map(|i| i as u8).collect();
        let h = MessageHeader { kind: MessageKind::Request, id: 42, len: 100, credits: 0 };
        let mut bytes = h.encode().to_vec();
        bytes.extend(&payload);
        assert_eq!(fragments(100, 32), 4);
        let mut r = Reassembly::default();
        let chunks: Vec<_> = bytes.chunks(32).collect();
        for c in &chunks[..3] {
            assert_eq!(r.push(c, 1000), Ok(None));
        }
        assert_eq!(r.push(chunks[3], 1000), Ok(Some((h, payload, 4))));
        // An empty message is one SEND of just the header.
        let empty = MessageHeader { kind: MessageKind::Response, id: 1, len: 0, credits: 3 };
        assert_eq!(r.push(&empty.encode(), 1000), Ok(Some((empty, vec![], 1))));
        // Garbage, a message over the limit, and a fragment longer than announced are refused.
        assert_eq!(r.push(&[9; 24], 1000), Err(Malformed));
        assert_eq!(r.push(&h.encode(), 64), Err(Malformed));
        let short = MessageHeader { len: 2, ..h };
        assert_eq!(r.push(&[&short.encode()[..], &[1, 2, 3]].concat(), 1000), Err(Malformed));
    }
}
