//! The 64-byte submission queue entry, its SGL descriptor, and the 16-byte completion queue
//! entry with its status field.

use super::status;
use super::wire::{put_u16, put_u32, put_u64, u16_at, u32_at, u64_at};

/// Length of a submission queue entry.
pub const SQE_LEN: usize = 64;
/// Length of a completion queue entry.
pub const CQE_LEN: usize = 16;

/// Byte offset of the data pointer (SGL1) in an SQE.
pub const SQE_DPTR_OFFSET: usize = 24;

/// SQE flags: PSDT = 01b, data described by SGLs (the only form NVMe over Fabrics allows).
pub const SQE_FLAGS_SGL: u8 = 0x40;

/// A submission queue entry, kept as its wire bytes with typed accessors.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Sqe(pub [u8; SQE_LEN]);

impl Default for Sqe {
    fn default() -> Self {
        Sqe([0; SQE_LEN])
    }
}

impl std::fmt::Debug for Sqe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sqe")
            .field("opcode", &format_args!("{:#04x}", self.opcode()))
            .field("flags", &format_args!("{:#04x}", self.flags()))
            .field("cid", &self.cid())
            .field("nsid", &self.nsid())
            .field("sgl", &self.sgl())
            .field("cdw10..15", &[self.cdw(10), self.cdw(11), self.cdw(12), self.cdw(13), self.cdw(14), self.cdw(15)])
            .finish()
    }
}

impl Sqe {
    /// A zeroed SQE with `opcode` and SGL data pointers selected.
    pub fn new(opcode: u8) -> Sqe {
        let mut s = Sqe::default();
        s.0[0] = opcode;
        s.0[1] = SQE_FLAGS_SGL;
        s
    }

    pub fn opcode(&self) -> u8 {
        self.0[0]
    }

    pub fn flags(&self) -> u8 {
        self.0[1]
    }

    /// Fused operation bits (1:0 of the flags byte).
    pub fn fuse(&self) -> u8 {
        self.0[1] & 0x3
    }

    /// PRP or SGL for data transfer (bits 7:6 of the flags byte).
    pub fn psdt(&self) -> u8 {
        self.0[1] >> 6
    }

    pub fn cid(&self) -> u16 {
        u16_at(&self.0, 2)
    }

    pub fn set_cid(&mut self, cid: u16) {
        put_u16(&mut self.0, 2, cid);
    }

    pub fn nsid(&self) -> u32 {
        u32_at(&self.0, 4)
    }

    pub fn set_nsid(&mut self, nsid: u32) {
        put_u32(&mut self.0, 4, nsid);
    }

    /// Fabrics command type (byte 4 of a Fabrics command, where other commands keep NSID).
    pub fn fctype(&self) -> u8 {
        self.0[4]
    }

    /// Command dword `n` (0..=15).
    pub fn cdw(&self, n: usize) -> u32 {
        u32_at(&self.0, n * 4)
    }

    pub fn set_cdw(&mut self, n: usize, v: u32) {
        put_u32(&mut self.0, n * 4, v);
    }

    pub fn sgl(&self) -> Sgl {
        Sgl::from_bytes(&self.0[SQE_DPTR_OFFSET..SQE_DPTR_OFFSET + 16])
    }

    pub fn set_sgl(&mut self, sgl: Sgl) {
        self.0[SQE_DPTR_OFFSET..SQE_DPTR_OFFSET + 16].copy_from_slice(&sgl.to_bytes());
    }
}

/// An SGL descriptor (16 bytes). NVMe/TCP uses two forms: in-capsule data (Data Block, Offset
/// subtype, address = offset into the in-capsule data) and data moved by C2HData/R2T (Transport
/// SGL Data Block, transport-specific subtype, address 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sgl {
    pub address: u64,
    pub length: u32,
    /// Descriptor type (bits 7:4) and subtype (bits 3:0), byte 15.
    pub sgl_type: u8,
}

impl Sgl {
    /// Data Block descriptor, Offset subtype: in-capsule data.
    pub const IN_CAPSULE: u8 = 0x01;
    /// Transport SGL Data Block, transport-specific subtype: data moved by C2HData or R2T/H2CData.
    pub const TRANSPORT: u8 = 0x5A;

    pub fn in_capsule(offset: u64, length: u32) -> Sgl {
        Sgl { address: offset, length, sgl_type: Sgl::IN_CAPSULE }
    }

    pub fn transport(length: u32) -> Sgl {
        Sgl { address: 0, length, sgl_type: Sgl::TRANSPORT }
    }

    pub fn from_bytes(b: &[u8]) -> Sgl {
        Sgl { address: u64_at(b, 0), length: u32_at(b, 8), sgl_type: b.get(15).copied().unwrap_or(0) }
    }

    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        put_u64(&mut b, 0, self.address);
        put_u32(&mut b, 8, self.length);
        b[15] = self.sgl_type;
        b
    }
}

/// The status field of a CQE (bytes 14..16): phase tag in bit 0, status code (SC) in 8:1, status
/// code type (SCT) in 11:9, command retry delay (CRD) in 13:12, More in 14, Do Not Retry in 15.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct StatusField(pub u16);

impl StatusField {
    pub const SUCCESS: StatusField = StatusField(0);

    /// A status with the given type and code.
    pub fn new(sct: u8, sc: u8) -> StatusField {
        StatusField((u16::from(sct & 0x7) << 9) | (u16::from(sc) << 1))
    }

    /// A generic (SCT 0) status.
    pub fn generic(sc: u8) -> StatusField {
        StatusField::new(status::sct::GENERIC, sc)
    }

    /// A command-specific (SCT 1) status.
    pub fn command_specific(sc: u8) -> StatusField {
        StatusField::new(status::sct::COMMAND_SPECIFIC, sc)
    }

    /// The same status with Do Not Retry set.
    pub fn dnr(self) -> StatusField {
        StatusField(self.0 | 0x8000)
    }

    pub fn sc(self) -> u8 {
        (self.0 >> 1) as u8
    }

    pub fn sct(self) -> u8 {
        ((self.0 >> 9) & 0x7) as u8
    }

    pub fn crd(self) -> u8 {
        ((self.0 >> 12) & 0x3) as u8
    }

    pub fn more(self) -> bool {
        self.0 & 0x4000 != 0
    }

    pub fn do_not_retry(self) -> bool {
        self.0 & 0x8000 != 0
    }

    pub fn is_success(self) -> bool {
        self.sct() == 0 && self.sc() == 0
    }

    /// SCT and SC without phase, CRD, More and DNR: what to compare against expected codes.
    pub fn code(self) -> (u8, u8) {
        (self.sct(), self.sc())
    }
}

impl std::fmt::Debug for StatusField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

impl std::fmt::Display for StatusField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SCT {:#x} SC {:#04x} ({})", self.sct(), self.sc(), status::name(self.sct(), self.sc()))?;
        if self.do_not_retry() {
            write!(f, ", DNR")?;
        }
        Ok(())
    }
}

/// A completion queue entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cqe {
    /// Command-specific dword 0 (e.g. Connect's controller ID, Property Get's low half).
    pub dw0: u32,
    pub dw1: u32,
    /// Submission queue head; 0xFFFF when SQ flow control is disabled.
    pub sqhd: u16,
    pub sqid: u16,
    pub cid: u16,
    pub status: StatusField,
}

impl Cqe {
    pub fn to_bytes(&self) -> [u8; CQE_LEN] {
        let mut b = [0u8; CQE_LEN];
        put_u32(&mut b, 0, self.dw0);
        put_u32(&mut b, 4, self.dw1);
        put_u16(&mut b, 8, self.sqhd);
        put_u16(&mut b, 10, self.sqid);
        put_u16(&mut b, 12, self.cid);
        put_u16(&mut b, 14, self.status.0);
        b
    }

    pub fn from_bytes(b: &[u8]) -> Cqe {
        Cqe {
            dw0: u32_at(b, 0),
            dw1: u32_at(b, 4),
            sqhd: u16_at(b, 8),
            sqid: u16_at(b, 10),
            cid: u16_at(b, 12),
            status: StatusField(u16_at(b, 14)),
        }
    }

    /// Dwords 0 and 1 as one 64-bit value (Property Get of an 8-byte property).
    pub fn result64(&self) -> u64 {
        u64::from(self.dw0) | (u64::from(self.dw1) << 32)
    }
}
