//! The PDUs of the NVMe/TCP transport binding and their encoding.
//!
//! Every PDU starts with an 8-byte common header (`type, flags, hlen, pdo, plen`), then the rest
//! of its fixed header (PSH), an optional header digest, padding up to the data offset (PDO), the
//! data, and an optional data digest. Digests are CRC32C, stored little-endian. Decoding lives in
//! [`crate::nvme::stream`], which also validates every field.

use super::sqe::{Cqe, Sqe, CQE_LEN, SQE_LEN};
use super::wire::{put_u16, put_u32};

/// PDU types.
pub mod pdu_type {
    pub const IC_REQ: u8 = 0x00;
    pub const IC_RESP: u8 = 0x01;
    pub const H2C_TERM_REQ: u8 = 0x02;
    pub const C2H_TERM_REQ: u8 = 0x03;
    pub const CAPSULE_CMD: u8 = 0x04;
    pub const CAPSULE_RESP: u8 = 0x05;
    pub const H2C_DATA: u8 = 0x06;
    pub const C2H_DATA: u8 = 0x07;
    pub const R2T: u8 = 0x09;
}

/// Common-header flag bits.
pub mod flags {
    /// A header digest follows the header.
    pub const HDGST: u8 = 1 << 0;
    /// A data digest follows the data.
    pub const DDGST: u8 = 1 << 1;
    /// H2CData/C2HData: last PDU of the transfer (of the R2T, for H2CData).
    pub const DATA_LAST: u8 = 1 << 2;
    /// C2HData: the command succeeded and no CapsuleResp follows.
    pub const DATA_SUCCESS: u8 = 1 << 3;
}

/// Length of the common header.
pub const COMMON_HEADER_LEN: usize = 8;
/// Header length of ICReq and ICResp (they are all header).
pub const IC_LEN: usize = 128;
/// Header length of a termination request.
pub const TERM_REQ_HLEN: usize = 24;
/// A termination request carries at most this much of the PDU in error.
pub const TERM_REQ_MAX_DATA: usize = 128;
/// Header length of a command capsule: common header + SQE.
pub const CAPSULE_CMD_HLEN: usize = COMMON_HEADER_LEN + SQE_LEN;
/// Header length of a response capsule: common header + CQE.
pub const CAPSULE_RESP_HLEN: usize = COMMON_HEADER_LEN + CQE_LEN;
/// Header length of H2CData, C2HData and R2T.
pub const DATA_HLEN: usize = 24;
/// Length of a digest.
pub const DIGEST_LEN: usize = 4;
/// Largest PDU data alignment (HPDA/CPDA), 0's based dwords.
pub const MAX_PDA: u8 = 31;
/// The smallest MAXH2CDATA a controller may announce.
pub const MIN_MAXH2CDATA: u32 = 4096;

/// CRC32C of `data`, the value NVMe/TCP stores (little-endian) as a digest.
pub fn digest(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// The Fatal Error Status of a termination request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Fes {
    /// A header field has a value that is not allowed; FEI is the field's byte offset.
    InvalidHeaderField = 0x01,
    /// A PDU arrived that is not allowed at this point of the exchange.
    PduSequenceError = 0x02,
    /// The header digest does not match; FEI is the received digest.
    HeaderDigestError = 0x03,
    /// Data lies outside the range of the command's transfer.
    DataTransferOutOfRange = 0x04,
    /// More data than allowed in one PDU (MAXH2CDATA, in-capsule size) or too many R2Ts.
    DataTransferLimitExceeded = 0x05,
    /// A parameter the receiver does not support; FEI is the field's byte offset.
    UnsupportedParameter = 0x06,
}

impl Fes {
    pub fn from_u16(v: u16) -> Option<Fes> {
        Some(match v {
            0x01 => Fes::InvalidHeaderField,
            0x02 => Fes::PduSequenceError,
            0x03 => Fes::HeaderDigestError,
            0x04 => Fes::DataTransferOutOfRange,
            0x05 => Fes::DataTransferLimitExceeded,
            0x06 => Fes::UnsupportedParameter,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Fes::InvalidHeaderField => "invalid PDU header field",
            Fes::PduSequenceError => "PDU sequence error",
            Fes::HeaderDigestError => "header digest error",
            Fes::DataTransferOutOfRange => "data transfer out of range",
            Fes::DataTransferLimitExceeded => "data transfer limit exceeded",
            Fes::UnsupportedParameter => "unsupported parameter",
        }
    }
}

impl std::fmt::Display for Fes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({:#04x})", self.name(), *self as u16)
    }
}

/// Digests negotiated for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Digests {
    pub header: bool,
    pub data: bool,
}

impl Digests {
    /// The `digest` byte of ICReq/ICResp.
    pub fn to_byte(self) -> u8 {
        u8::from(self.header) | (u8::from(self.data) << 1)
    }

    pub fn from_byte(b: u8) -> Digests {
        Digests { header: b & 1 != 0, data: b & 2 != 0 }
    }
}

/// Initialize Connection Request (host to controller, first PDU of a connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcReq {
    /// PDU format version, 0.
    pub pfv: u16,
    /// Host PDU data alignment, 0's based dwords.
    pub hpda: u8,
    pub digests: Digests,
    /// Outstanding R2Ts per command the host accepts, 0's based.
    pub maxr2t: u32,
}

/// Initialize Connection Response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcResp {
    pub pfv: u16,
    /// Controller PDU data alignment, 0's based dwords.
    pub cpda: u8,
    pub digests: Digests,
    /// Largest amount of data in one H2CData PDU.
    pub maxh2cdata: u32,
}

/// H2CTermReq or C2HTermReq: a fatal transport error; the sender closes the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TermReq {
    /// Raw FES (see [`Fes::from_u16`]).
    pub fes: u16,
    /// Field Error Information.
    pub fei: u32,
    /// The header of the PDU in error, at most [`TERM_REQ_MAX_DATA`] bytes.
    pub data: Vec<u8>,
}

/// A command capsule: SQE and in-capsule data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapsuleCmd {
    pub sqe: Sqe,
    pub data: Vec<u8>,
}

/// A response capsule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapsuleResp {
    pub cqe: Cqe,
}

/// Host-to-controller data, answering an R2T.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct H2CData {
    pub cccid: u16,
    pub ttag: u16,
    /// Offset of `data` in the command's data buffer.
    pub datao: u32,
    /// Last PDU of the data the R2T asked for.
    pub last: bool,
    pub data: Vec<u8>,
}

/// Controller-to-host data of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct C2HData {
    pub cccid: u16,
    pub datao: u32,
    pub last: bool,
    /// The command completed successfully; no CapsuleResp follows.
    pub success: bool,
    pub data: Vec<u8>,
}

/// Ready to Transfer: the controller asks for `r2tl` bytes at offset `r2to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct R2t {
    pub cccid: u16,
    pub ttag: u16,
    pub r2to: u32,
    pub r2tl: u32,
}

/// Any NVMe/TCP PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pdu {
    IcReq(IcReq),
    IcResp(IcResp),
    H2CTermReq(TermReq),
    C2HTermReq(TermReq),
    CapsuleCmd(CapsuleCmd),
    CapsuleResp(CapsuleResp),
    H2CData(H2CData),
    C2HData(C2HData),
    R2t(R2t),
}

impl Pdu {
    pub fn pdu_type(&self) -> u8 {
        match self {
            Pdu::IcReq(_) => pdu_type::IC_REQ,
            Pdu::IcResp(_) => pdu_type::IC_RESP,
            Pdu::H2CTermReq(_) => pdu_type::H2C_TERM_REQ,
            Pdu::C2HTermReq(_) => pdu_type::C2H_TERM_REQ,
            Pdu::CapsuleCmd(_) => pdu_type::CAPSULE_CMD,
            Pdu::CapsuleResp(_) => pdu_type::CAPSULE_RESP,
            Pdu::H2CData(_) => pdu_type::H2C_DATA,
            Pdu::C2HData(_) => pdu_type::C2H_DATA,
            Pdu::R2t(_) => pdu_type::R2T,
        }
    }

    /// Appends the encoded PDU to `out`.
    pub fn encode(&self, link: &TxParams, out: &mut Vec<u8>) {
        match self {
            Pdu::IcReq(p) => encode_ic_req(p, out),
            Pdu::IcResp(p) => encode_ic_resp(p, out),
            Pdu::H2CTermReq(t) => encode_term_req(pdu_type::H2C_TERM_REQ, t.fes, t.fei, &t.data, out),
            Pdu::C2HTermReq(t) => encode_term_req(pdu_type::C2H_TERM_REQ, t.fes, t.fei, &t.data, out),
            Pdu::CapsuleCmd(c) => encode_capsule_cmd(&c.sqe, &c.data, link, out),
            Pdu::CapsuleResp(r) => encode_capsule_resp(&r.cqe, link, out),
            Pdu::H2CData(d) => encode_h2c_data(d.cccid, d.ttag, d.datao, &d.data, d.last, link, out),
            Pdu::C2HData(d) => encode_c2h_data(d.cccid, d.datao, &d.data, d.last, d.success, link, out),
            Pdu::R2t(r) => encode_r2t(r, link, out),
        }
    }

    pub fn to_vec(&self, link: &TxParams) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(link, &mut v);
        v
    }
}

/// How PDUs are framed on the way out, as negotiated by ICReq/ICResp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TxParams {
    pub digests: Digests,
    /// Data alignment the peer asked for, 0's based dwords (the peer's HPDA or CPDA).
    pub pda: u8,
}

impl TxParams {
    fn alignment(&self) -> usize {
        (usize::from(self.pda.min(MAX_PDA)) + 1) * 4
    }
}

fn encode_ic_req(p: &IcReq, out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + IC_LEN, 0);
    let b = &mut out[start..];
    common_header(b, pdu_type::IC_REQ, 0, IC_LEN as u8, 0, IC_LEN as u32);
    put_u16(b, 8, p.pfv);
    b[10] = p.hpda;
    b[11] = p.digests.to_byte();
    put_u32(b, 12, p.maxr2t);
}

fn encode_ic_resp(p: &IcResp, out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + IC_LEN, 0);
    let b = &mut out[start..];
    common_header(b, pdu_type::IC_RESP, 0, IC_LEN as u8, 0, IC_LEN as u32);
    put_u16(b, 8, p.pfv);
    b[10] = p.cpda;
    b[11] = p.digests.to_byte();
    put_u32(b, 12, p.maxh2cdata);
}

/// Encodes a termination request. It never carries digests and its PDO is 0 even though it
/// carries the offending header as data.
pub fn encode_term_req(ty: u8, fes: u16, fei: u32, data: &[u8], out: &mut Vec<u8>) {
    let data = &data[..data.len().min(TERM_REQ_MAX_DATA)];
    let start = out.len();
    out.resize(start + TERM_REQ_HLEN, 0);
    let b = &mut out[start..];
    common_header(b, ty, 0, TERM_REQ_HLEN as u8, 0, (TERM_REQ_HLEN + data.len()) as u32);
    put_u16(b, 8, fes);
    put_u32(b, 10, fei);
    out.extend_from_slice(data);
}

/// Encodes a command capsule with optional in-capsule data.
pub fn encode_capsule_cmd(sqe: &Sqe, data: &[u8], link: &TxParams, out: &mut Vec<u8>) {
    let start = begin(out, pdu_type::CAPSULE_CMD, CAPSULE_CMD_HLEN, link, !data.is_empty(), 0);
    out[start + COMMON_HEADER_LEN..start + CAPSULE_CMD_HLEN].copy_from_slice(&sqe.0);
    finish(out, start, CAPSULE_CMD_HLEN, data, link);
}

/// Encodes a response capsule.
pub fn encode_capsule_resp(cqe: &Cqe, link: &TxParams, out: &mut Vec<u8>) {
    let start = begin(out, pdu_type::CAPSULE_RESP, CAPSULE_RESP_HLEN, link, false, 0);
    out[start + COMMON_HEADER_LEN..start + CAPSULE_RESP_HLEN].copy_from_slice(&cqe.to_bytes());
    finish(out, start, CAPSULE_RESP_HLEN, &[], link);
}

/// Encodes an H2CData PDU (`data` must not be empty).
pub fn encode_h2c_data(cccid: u16, ttag: u16, datao: u32, data: &[u8], last: bool, link: &TxParams, out: &mut Vec<u8>) {
    let extra = if last { flags::DATA_LAST } else { 0 };
    let start = begin(out, pdu_type::H2C_DATA, DATA_HLEN, link, true, extra);
    let b = &mut out[start..];
    put_u16(b, 8, cccid);
    put_u16(b, 10, ttag);
    put_u32(b, 12, datao);
    put_u32(b, 16, data.len() as u32);
    finish(out, start, DATA_HLEN, data, link);
}

/// Encodes a C2HData PDU (`data` must not be empty; `success` implies `last`).
pub fn encode_c2h_data(
    cccid: u16,
    datao: u32,
    data: &[u8],
    last: bool,
    success: bool,
    link: &TxParams,
    out: &mut Vec<u8>,
) {
    let mut extra = if last || success { flags::DATA_LAST } else { 0 };
    if success {
        extra |= flags::DATA_SUCCESS;
    }
    let start = begin(out, pdu_type::C2H_DATA, DATA_HLEN, link, true, extra);
    let b = &mut out[start..];
    put_u16(b, 8, cccid);
    put_u32(b, 12, datao);
    put_u32(b, 16, data.len() as u32);
    finish(out, start, DATA_HLEN, data, link);
}

/// Encodes an R2T.
pub fn encode_r2t(r: &R2t, link: &TxParams, out: &mut Vec<u8>) {
    let start = begin(out, pdu_type::R2T, DATA_HLEN, link, false, 0);
    let b = &mut out[start..];
    put_u16(b, 8, r.cccid);
    put_u16(b, 10, r.ttag);
    put_u32(b, 12, r.r2to);
    put_u32(b, 16, r.r2tl);
    finish(out, start, DATA_HLEN, &[], link);
}

fn common_header(b: &mut [u8], ty: u8, fl: u8, hlen: u8, pdo: u8, plen: u32) {
    b[0] = ty;
    b[1] = fl;
    b[2] = hlen;
    b[3] = pdo;
    put_u32(b, 4, plen);
}

/// Reserves the header; flags get the digest bits for this PDU. Returns the PDU's start offset.
fn begin(out: &mut Vec<u8>, ty: u8, hlen: usize, link: &TxParams, has_data: bool, extra_flags: u8) -> usize {
    let start = out.len();
    out.resize(start + hlen, 0);
    let mut fl = extra_flags;
    if link.digests.header {
        fl |= flags::HDGST;
    }
    // The data digest flag is set only on PDUs that carry data (as the Linux host does).
    if link.digests.data && has_data {
        fl |= flags::DDGST;
    }
    out[start] = ty;
    out[start + 1] = fl;
    out[start + 2] = hlen as u8;
    start
}

/// Adds header digest, padding, data and data digest, and fills in PDO and PLEN (both covered
/// by the header digest, so they are set first).
fn finish(out: &mut Vec<u8>, start: usize, hlen: usize, data: &[u8], link: &TxParams) {
    let header_end = hlen + if link.digests.header { DIGEST_LEN } else { 0 };
    let (pdo, plen) = if data.is_empty() {
        (0, header_end)
    } else {
        let align = link.alignment();
        let pdo = header_end.div_ceil(align) * align;
        (pdo, pdo + data.len() + if link.digests.data { DIGEST_LEN } else { 0 })
    };
    out[start + 3] = pdo as u8;
    put_u32(&mut out[start..], 4, plen as u32);
    if link.digests.header {
        let d = digest(&out[start..start + hlen]);
        out.extend_from_slice(&d.to_le_bytes());
    }
    if !data.is_empty() {
        out.resize(start + pdo, 0);
        out.extend_from_slice(data);
        if link.digests.data {
            out.extend_from_slice(&digest(data).to_le_bytes());
        }
    }
}
