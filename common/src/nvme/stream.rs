//! Decoding PDUs from a byte stream that arrives in arbitrary pieces.
//!
//! [`PduDecoder`] buffers what it is fed and hands out whole PDUs. It validates each PDU header
//! as soon as its 8-byte common header is in (so a peer cannot make it buffer more than the
//! negotiated limits allow), in field order so that the lowest wrong field is the one reported,
//! as the NVMe/TCP binding asks. Every malformed input becomes a [`FatalError`] carrying the
//! Fatal Error Status (FES) and Field Error Information (FEI) for the termination request the
//! receiver sends before closing the connection; nothing here panics.
//!
//! The decoder knows only framing and the initialization phase. Whether an R2T or data PDU fits
//! an outstanding command is the queue's business (it reports those errors the same way).

use super::pdu::{
    self, flags, pdu_type, C2HData, CapsuleCmd, CapsuleResp, Digests, Fes, H2CData, IcReq, IcResp, Pdu, R2t, TermReq,
    CAPSULE_CMD_HLEN, CAPSULE_RESP_HLEN, COMMON_HEADER_LEN, DATA_HLEN, DIGEST_LEN, IC_LEN, MAX_PDA, MIN_MAXH2CDATA,
    TERM_REQ_HLEN, TERM_REQ_MAX_DATA,
};
use super::sqe::{Cqe, Sqe, SQE_LEN};
use super::wire::{u16_at, u32_at};

/// The side of the connection that is receiving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The controller (target): receives ICReq, H2C PDUs and command capsules.
    Controller,
    /// The host (initiator): receives ICResp, C2H PDUs, response capsules and R2Ts.
    Host,
}

impl Role {
    /// The type of termination request this side sends.
    pub fn term_req_type(self) -> u8 {
        match self {
            Role::Controller => pdu_type::C2H_TERM_REQ,
            Role::Host => pdu_type::H2C_TERM_REQ,
        }
    }
}

/// What the receiving side accepts once the connection is initialized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxParams {
    pub digests: Digests,
    /// The data alignment this side asked for (its CPDA or HPDA), 0's based dwords.
    pub pda: u8,
    /// Controller: largest in-capsule data accepted.
    pub max_capsule_data: u32,
    /// Controller: largest H2CData payload accepted (the MAXH2CDATA it announced).
    pub max_h2c_data: u32,
    /// Host: largest C2HData payload accepted (its largest transfer).
    pub max_c2h_data: u32,
}

impl Default for RxParams {
    fn default() -> Self {
        RxParams {
            digests: Digests::default(),
            pda: 0,
            max_capsule_data: 8192,
            max_h2c_data: 128 * 1024,
            max_c2h_data: 1 << 20,
        }
    }
}

/// A fatal transport error: answer with a termination request carrying `fes` and `fei`, then
/// close the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{fes}, FEI {fei:#x}: {reason}")]
pub struct FatalError {
    pub fes: Fes,
    pub fei: u32,
    pub reason: &'static str,
    /// The start of the PDU in error (at most its header, at most 128 bytes), which the
    /// termination request echoes.
    pub header: Vec<u8>,
}

impl FatalError {
    pub fn new(fes: Fes, fei: u32, reason: &'static str, header: &[u8]) -> FatalError {
        let n = header.len().min(TERM_REQ_MAX_DATA);
        FatalError { fes, fei, reason, header: header[..n].to_vec() }
    }

    /// The termination request `role` sends for this error.
    pub fn term_req(&self, role: Role) -> Vec<u8> {
        let mut out = Vec::with_capacity(TERM_REQ_HLEN + self.header.len());
        pdu::encode_term_req(role.term_req_type(), self.fes as u16, self.fei, &self.header, &mut out);
        out
    }
}

/// Why a byte stream cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PduError {
    #[error("fatal transport error: {0}")]
    Fatal(#[from] FatalError),
    /// A termination request whose length is out of bounds: the connection is closed without a
    /// reply (a termination request is never answered with another).
    #[error("malformed termination request (PLEN {plen}); closing without reply")]
    MalformedTermReq { plen: u32 },
}

/// A decoded PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub pdu: Pdu,
    /// False when the PDU carried a data digest that does not match its data. The data is
    /// still returned: a data digest error fails the command, not the connection.
    pub data_digest_ok: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Only ICReq (controller) or ICResp (host) may arrive.
    Initial,
    Established(RxParams),
}

/// Framing facts of a PDU whose common header has been checked.
#[derive(Debug, Clone, Copy)]
struct Frame {
    ty: u8,
    flags: u8,
    hlen: usize,
    pdo: usize,
    plen: usize,
    data_len: usize,
    header_digest: bool,
    data_digest: bool,
}

/// Decodes one PDU from the start of `bytes`, for a receiver in the given state. `Ok(None)`:
/// more bytes are needed. On success also returns how many bytes the PDU took.
fn decode_one(role: Role, phase: Phase, bytes: &[u8]) -> Result<Option<(Decoded, usize)>, PduError> {
    if bytes.len() < COMMON_HEADER_LEN {
        return Ok(None);
    }
    let frame = check_header(role, phase, bytes)?;
    if bytes.len() < frame.plen {
        return Ok(None);
    }
    let b = &bytes[..frame.plen];
    if frame.header_digest {
        let received = u32_at(b, frame.hlen);
        if pdu::digest(&b[..frame.hlen]) != received {
            return Err(fatal(Fes::HeaderDigestError, received, "header digest mismatch", b, frame.hlen).into());
        }
    }
    let data = b.get(frame.pdo..frame.pdo + frame.data_len).unwrap_or(&[]);
    let mut data_digest_ok = true;
    if frame.data_digest && !data.is_empty() {
        data_digest_ok = pdu::digest(data) == u32_at(b, frame.pdo + frame.data_len);
    }
    let pdu = match frame.ty {
        pdu_type::IC_REQ => Pdu::IcReq(parse_ic_req(b)?),
        pdu_type::IC_RESP => Pdu::IcResp(parse_ic_resp(b)?),
        pdu_type::H2C_TERM_REQ | pdu_type::C2H_TERM_REQ => {
            let t = TermReq { fes: u16_at(b, 8), fei: u32_at(b, 10), data: b[TERM_REQ_HLEN..].to_vec() };
            if frame.ty == pdu_type::H2C_TERM_REQ {
                Pdu::H2CTermReq(t)
            } else {
                Pdu::C2HTermReq(t)
            }
        }
        pdu_type::CAPSULE_CMD => {
            let mut sqe = Sqe::default();
            sqe.0.copy_from_slice(&b[COMMON_HEADER_LEN..COMMON_HEADER_LEN + SQE_LEN]);
            Pdu::CapsuleCmd(CapsuleCmd { sqe, data: data.to_vec() })
        }
        pdu_type::CAPSULE_RESP => {
            Pdu::CapsuleResp(CapsuleResp { cqe: Cqe::from_bytes(&b[COMMON_HEADER_LEN..CAPSULE_RESP_HLEN]) })
        }
        pdu_type::H2C_DATA | pdu_type::C2H_DATA => {
            if u32_at(b, 16) as usize != frame.data_len {
                return Err(
                    fatal(Fes::InvalidHeaderField, 16, "DATAL does not match the PDU length", b, frame.hlen).into()
                );
            }
            let last = frame.flags & flags::DATA_LAST != 0;
            if frame.ty == pdu_type::H2C_DATA {
                Pdu::H2CData(H2CData {
                    cccid: u16_at(b, 8),
                    ttag: u16_at(b, 10),
                    datao: u32_at(b, 12),
                    last,
                    data: data.to_vec(),
                })
            } else {
                Pdu::C2HData(C2HData {
                    cccid: u16_at(b, 8),
                    datao: u32_at(b, 12),
                    last,
                    success: frame.flags & flags::DATA_SUCCESS != 0,
                    data: data.to_vec(),
                })
            }
        }
        _ => Pdu::R2t(R2t { cccid: u16_at(b, 8), ttag: u16_at(b, 10), r2to: u32_at(b, 12), r2tl: u32_at(b, 16) }),
    };
    Ok(Some((Decoded { pdu, data_digest_ok }, frame.plen)))
}

fn fatal(fes: Fes, fei: u32, reason: &'static str, bytes: &[u8], hlen: usize) -> FatalError {
    FatalError::new(fes, fei, reason, &bytes[..bytes.len().min(hlen)])
}

/// Checks the common header (and what can be known from it) before the rest of the PDU is in.
fn check_header(role: Role, phase: Phase, b: &[u8]) -> Result<Frame, PduError> {
    let ty = b[0];
    let fl = b[1];
    let hlen = usize::from(b[2]);
    let pdo = usize::from(b[3]);
    let plen32 = u32_at(b, 4);
    let plen = plen32 as usize;
    // How much of the PDU a termination request echoes: its header if that is sane.
    let echo = if hlen >= COMMON_HEADER_LEN && hlen <= plen { hlen } else { COMMON_HEADER_LEN };
    let err = |fes: Fes, fei: u32, reason: &'static str| -> PduError { fatal(fes, fei, reason, b, echo).into() };

    let known = matches!(ty, 0..=7 | pdu_type::R2T);
    let receivable = match role {
        Role::Controller => ty & 1 == 0,
        Role::Host => ty & 1 == 1,
    };
    if !known || !receivable {
        return Err(err(Fes::InvalidHeaderField, 0, "PDU type not valid here"));
    }
    let is_ic = ty == pdu_type::IC_REQ || ty == pdu_type::IC_RESP;
    let params = match phase {
        Phase::Initial if !is_ic => return Err(err(Fes::PduSequenceError, 0, "PDU before connection initialization")),
        Phase::Established(_) if is_ic => return Err(err(Fes::PduSequenceError, 0, "second initialization PDU")),
        Phase::Initial => {
            if fl != 0 {
                return Err(err(Fes::InvalidHeaderField, 1, "flags set on an initialization PDU"));
            }
            if hlen != IC_LEN {
                return Err(err(Fes::InvalidHeaderField, 2, "initialization PDU HLEN is not 128"));
            }
            if pdo != 0 {
                return Err(err(Fes::InvalidHeaderField, 3, "initialization PDU PDO is not 0"));
            }
            if plen != IC_LEN {
                return Err(err(Fes::InvalidHeaderField, 4, "initialization PDU PLEN is not 128"));
            }
            return Ok(Frame { ty, flags: fl, hlen, pdo, plen, data_len: 0, header_digest: false, data_digest: false });
        }
        Phase::Established(p) => p,
    };

    let is_term = ty == pdu_type::H2C_TERM_REQ || ty == pdu_type::C2H_TERM_REQ;
    if is_term && !(TERM_REQ_HLEN..=TERM_REQ_HLEN + TERM_REQ_MAX_DATA).contains(&plen) {
        return Err(PduError::MalformedTermReq { plen: plen32 });
    }

    let valid_flags = match ty {
        pdu_type::CAPSULE_CMD => flags::HDGST | flags::DDGST,
        pdu_type::CAPSULE_RESP | pdu_type::R2T => flags::HDGST,
        pdu_type::H2C_DATA => flags::HDGST | flags::DDGST | flags::DATA_LAST,
        pdu_type::C2H_DATA => flags::HDGST | flags::DDGST | flags::DATA_LAST | flags::DATA_SUCCESS,
        _ => 0, // termination requests never carry digests
    };
    if fl & !valid_flags != 0 {
        return Err(err(Fes::InvalidHeaderField, 1, "flag not valid for this PDU type"));
    }
    let header_digest = fl & flags::HDGST != 0;
    let mut data_digest = fl & flags::DDGST != 0;
    if !is_term && header_digest != params.digests.header {
        return Err(err(Fes::InvalidHeaderField, 1, "header digest flag does not match what was negotiated"));
    }
    if data_digest && !params.digests.data {
        return Err(err(Fes::InvalidHeaderField, 1, "data digest flag set but data digests were not negotiated"));
    }
    if ty == pdu_type::C2H_DATA && fl & flags::DATA_SUCCESS != 0 && fl & flags::DATA_LAST == 0 {
        return Err(err(Fes::InvalidHeaderField, 1, "SUCCESS without LAST_PDU"));
    }

    let expected_hlen = match ty {
        pdu_type::CAPSULE_CMD => CAPSULE_CMD_HLEN,
        pdu_type::CAPSULE_RESP => CAPSULE_RESP_HLEN,
        pdu_type::H2C_DATA | pdu_type::C2H_DATA | pdu_type::R2T => DATA_HLEN,
        _ => TERM_REQ_HLEN,
    };
    if hlen != expected_hlen {
        return Err(err(Fes::InvalidHeaderField, 2, "HLEN is wrong for this PDU type"));
    }

    let full_hlen = hlen + if header_digest { DIGEST_LEN } else { 0 };
    let carries_data = matches!(ty, pdu_type::CAPSULE_CMD | pdu_type::H2C_DATA | pdu_type::C2H_DATA);
    if !carries_data {
        if pdo != 0 {
            return Err(err(Fes::InvalidHeaderField, 3, "PDO must be 0 for this PDU type"));
        }
    } else if pdo == 0 {
        // PDO 0 says "no data"; a PLEN that leaves room for data contradicts it.
        if plen > full_hlen {
            return Err(err(Fes::InvalidHeaderField, 3, "PDO is 0 but the PDU carries data"));
        }
    } else {
        let align = (usize::from(params.pda.min(MAX_PDA)) + 1) * 4;
        if pdo < full_hlen || pdo > plen || !pdo.is_multiple_of(align) {
            return Err(err(
                Fes::InvalidHeaderField,
                3,
                "PDO is before the end of the header, past the PDU, or misaligned",
            ));
        }
    }

    if plen < full_hlen {
        return Err(err(Fes::InvalidHeaderField, 4, "PLEN is shorter than the header"));
    }
    if is_term {
        return Ok(Frame { ty, flags: fl, hlen, pdo, plen, data_len: plen - hlen, header_digest, data_digest });
    }
    let mut data_len = if plen == full_hlen { 0 } else { plen - pdo };
    if !carries_data {
        if data_len != 0 {
            return Err(err(Fes::InvalidHeaderField, 4, "PLEN leaves data in a PDU type that carries none"));
        }
    } else {
        if data_digest && data_len > 0 {
            if data_len <= DIGEST_LEN {
                return Err(err(Fes::InvalidHeaderField, 4, "PDU too short for its data digest"));
            }
            data_len -= DIGEST_LEN;
        } else if data_len == 0 {
            // A capsule without data may come with or without DDGSTF; there is no digest either way.
            data_digest = false;
        }
        if data_len > 0 && params.digests.data && !data_digest {
            return Err(err(Fes::InvalidHeaderField, 1, "data digest flag missing on a PDU with data"));
        }
        if ty != pdu_type::CAPSULE_CMD && data_len == 0 {
            return Err(err(Fes::InvalidHeaderField, 4, "data PDU without data"));
        }
        let (limit, fes, reason) = match ty {
            pdu_type::CAPSULE_CMD => {
                (params.max_capsule_data, Fes::DataTransferLimitExceeded, "in-capsule data larger than supported")
            }
            pdu_type::H2C_DATA => {
                (params.max_h2c_data, Fes::DataTransferLimitExceeded, "H2CData larger than MAXH2CDATA")
            }
            _ => (params.max_c2h_data, Fes::DataTransferOutOfRange, "C2HData larger than any transfer"),
        };
        if data_len as u64 > u64::from(limit) {
            return Err(err(fes, 0, reason));
        }
    }
    Ok(Frame { ty, flags: fl, hlen, pdo, plen, data_len, header_digest, data_digest })
}

fn parse_ic_req(b: &[u8]) -> Result<IcReq, PduError> {
    let p = IcReq { pfv: u16_at(b, 8), hpda: b[10], digests: Digests::from_byte(b[11]), maxr2t: u32_at(b, 12) };
    check_ic_common(b, p.pfv, p.hpda)?;
    Ok(p)
}

fn parse_ic_resp(b: &[u8]) -> Result<IcResp, PduError> {
    let p = IcResp { pfv: u16_at(b, 8), cpda: b[10], digests: Digests::from_byte(b[11]), maxh2cdata: u32_at(b, 12) };
    check_ic_common(b, p.pfv, p.cpda)?;
    if p.maxh2cdata < MIN_MAXH2CDATA || !p.maxh2cdata.is_multiple_of(4) {
        return Err(
            fatal(Fes::InvalidHeaderField, 12, "MAXH2CDATA below 4096 or not a dword multiple", b, IC_LEN).into()
        );
    }
    Ok(p)
}

fn check_ic_common(b: &[u8], pfv: u16, pda: u8) -> Result<(), PduError> {
    if pfv != 0 {
        return Err(fatal(Fes::UnsupportedParameter, 8, "unsupported PDU format version", b, IC_LEN).into());
    }
    if pda > MAX_PDA {
        return Err(fatal(Fes::InvalidHeaderField, 10, "PDU data alignment above 31", b, IC_LEN).into());
    }
    if b[11] & !0x3 != 0 {
        return Err(fatal(Fes::InvalidHeaderField, 11, "reserved digest bits set", b, IC_LEN).into());
    }
    Ok(())
}

/// Decodes PDUs from a byte stream fed in pieces of any size.
#[derive(Debug)]
pub struct PduDecoder {
    role: Role,
    phase: Phase,
    buf: Vec<u8>,
    pos: usize,
    failed: bool,
}

impl PduDecoder {
    /// A decoder for a new connection: only the initialization PDU may come first.
    pub fn new(role: Role) -> PduDecoder {
        PduDecoder { role, phase: Phase::Initial, buf: Vec::new(), pos: 0, failed: false }
    }

    /// A decoder for a connection whose initialization is done.
    pub fn established(role: Role, params: RxParams) -> PduDecoder {
        PduDecoder { role, phase: Phase::Established(params), buf: Vec::new(), pos: 0, failed: false }
    }

    /// Switches to the negotiated parameters once the ICReq/ICResp exchange is done.
    pub fn establish(&mut self, params: RxParams) {
        self.phase = Phase::Established(params);
    }

    pub fn is_established(&self) -> bool {
        matches!(self.phase, Phase::Established(_))
    }

    /// Bytes fed but not yet returned as PDUs.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Adds received bytes. Ignored after an error: the connection is going away.
    pub fn feed(&mut self, bytes: &[u8]) {
        if !self.failed {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// The next complete PDU, `Ok(None)` if more bytes are needed. After an error, always
    /// `Ok(None)`.
    pub fn next_pdu(&mut self) -> Result<Option<Decoded>, PduError> {
        if self.failed {
            return Ok(None);
        }
        match decode_one(self.role, self.phase, &self.buf[self.pos..]) {
            Ok(Some((decoded, used))) => {
                self.pos += used;
                if self.pos == self.buf.len() {
                    self.buf.clear();
                    self.pos = 0;
                } else if self.pos >= 64 * 1024 {
                    self.buf.drain(..self.pos);
                    self.pos = 0;
                }
                Ok(Some(decoded))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                self.failed = true;
                self.buf = Vec::new();
                self.pos = 0;
                Err(e)
            }
        }
    }
}

/// Decodes exactly one PDU from `bytes` (which must hold it entirely) for a receiver that has
/// finished initialization with `params`: a pure function for tests and tools.
pub fn decode_established(role: Role, params: RxParams, bytes: &[u8]) -> Result<Option<(Decoded, usize)>, PduError> {
    decode_one(role, Phase::Established(params), bytes)
}

/// Decodes an initialization PDU (ICReq for the controller, ICResp for the host).
pub fn decode_initial(role: Role, bytes: &[u8]) -> Result<Option<(Decoded, usize)>, PduError> {
    decode_one(role, Phase::Initial, bytes)
}
