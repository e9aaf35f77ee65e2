//! Identify data structures (4096 bytes each): controller (CNS 01h), namespace (CNS 00h),
//! active namespace ID list (CNS 02h) and namespace identification descriptors (CNS 03h).
//!
//! Only the fields this implementation uses are typed; every other byte encodes as zero.

use super::wire::{put_bytes, put_str, put_u16, put_u32, put_u64, str_at, u16_at, u32_at, u64_at, u8_at};

/// Size of every Identify data structure.
pub const IDENTIFY_LEN: usize = 4096;

/// Controller types (CNTRLTYPE).
pub mod controller_type {
    pub const IO: u8 = 1;
    pub const DISCOVERY: u8 = 2;
    pub const ADMIN: u8 = 3;
}

/// Identify Controller data structure (the fields used here).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IdentifyController {
    pub vid: u16,
    pub ssvid: u16,
    /// Serial number (20 ASCII characters, space padded on the wire).
    pub serial: String,
    /// Model number (40).
    pub model: String,
    /// Firmware revision (8).
    pub firmware: String,
    pub rab: u8,
    pub ieee: [u8; 3],
    /// Multi-path I/O and namespace sharing capabilities.
    pub cmic: u8,
    /// Maximum data transfer size, 2^n minimum pages; 0 = no limit.
    pub mdts: u8,
    pub cntlid: u16,
    pub ver: u32,
    pub oaes: u32,
    pub ctratt: u32,
    pub cntrltype: u8,
    pub oacs: u16,
    pub acl: u8,
    pub aerl: u8,
    pub frmw: u8,
    pub lpa: u8,
    pub elpe: u8,
    pub npss: u8,
    /// Keep alive support: granularity in 100 ms units, 0 = not supported.
    pub kas: u16,
    /// SQ and CQ entry sizes: bits 3:0 required, 7:4 maximum (2^n bytes).
    pub sqes: u8,
    pub cqes: u8,
    /// Maximum outstanding commands per queue (Fabrics).
    pub maxcmd: u16,
    /// Number of namespaces (largest NSID).
    pub nn: u32,
    pub oncs: u16,
    pub fuses: u16,
    pub fna: u8,
    /// Volatile write cache: bit 0 present, bits 2:1 flush with broadcast NSID behavior.
    pub vwc: u8,
    pub awun: u16,
    pub awupf: u16,
    /// SGL support.
    pub sgls: u32,
    pub subnqn: String,
    /// I/O queue command capsule supported size, in 16-byte units (SQE + in-capsule data).
    pub ioccsz: u32,
    /// I/O queue response capsule supported size, in 16-byte units.
    pub iorcsz: u32,
    /// In-capsule data offset, in 16-byte units.
    pub icdoff: u16,
    /// Fabrics controller attributes.
    pub fcatt: u8,
    /// Maximum SGL data block descriptors.
    pub msdbd: u8,
}

impl IdentifyController {
    /// Largest transfer in bytes, given the controller's minimum page size (CAP.MPSMIN).
    /// `None` when MDTS is 0 (no limit).
    pub fn max_transfer(&self, mpsmin: u8) -> Option<u64> {
        if self.mdts == 0 {
            return None;
        }
        let shift = u32::from(self.mdts) + 12 + u32::from(mpsmin);
        1u64.checked_shl(shift)
    }

    /// Largest in-capsule data on I/O queues, in bytes.
    pub fn max_in_capsule_data(&self) -> u32 {
        self.ioccsz.saturating_sub(4).saturating_mul(16)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; IDENTIFY_LEN];
        put_u16(&mut b, 0, self.vid);
        put_u16(&mut b, 2, self.ssvid);
        put_str(&mut b, 4, 20, &self.serial, b' ');
        put_str(&mut b, 24, 40, &self.model, b' ');
        put_str(&mut b, 64, 8, &self.firmware, b' ');
        b[72] = self.rab;
        put_bytes(&mut b, 73, &self.ieee);
        b[76] = self.cmic;
        b[77] = self.mdts;
        put_u16(&mut b, 78, self.cntlid);
        put_u32(&mut b, 80, self.ver);
        put_u32(&mut b, 92, self.oaes);
        put_u32(&mut b, 96, self.ctratt);
        b[111] = self.cntrltype;
        put_u16(&mut b, 256, self.oacs);
        b[258] = self.acl;
        b[259] = self.aerl;
        b[260] = self.frmw;
        b[261] = self.lpa;
        b[262] = self.elpe;
        b[263] = self.npss;
        put_u16(&mut b, 320, self.kas);
        b[512] = self.sqes;
        b[513] = self.cqes;
        put_u16(&mut b, 514, self.maxcmd);
        put_u32(&mut b, 516, self.nn);
        put_u16(&mut b, 520, self.oncs);
        put_u16(&mut b, 522, self.fuses);
        b[524] = self.fna;
        b[525] = self.vwc;
        put_u16(&mut b, 526, self.awun);
        put_u16(&mut b, 528, self.awupf);
        put_u32(&mut b, 536, self.sgls);
        put_str(&mut b, 768, 223, &self.subnqn, 0);
        put_u32(&mut b, 1792, self.ioccsz);
        put_u32(&mut b, 1796, self.iorcsz);
        put_u16(&mut b, 1800, self.icdoff);
        b[1802] = self.fcatt;
        b[1803] = self.msdbd;
        b
    }

    /// Decodes the data structure; short input reads as zeros past its end.
    pub fn decode(b: &[u8]) -> IdentifyController {
        IdentifyController {
            vid: u16_at(b, 0),
            ssvid: u16_at(b, 2),
            serial: str_at(b, 4, 20),
            model: str_at(b, 24, 40),
            firmware: str_at(b, 64, 8),
            rab: u8_at(b, 72),
            ieee: [u8_at(b, 73), u8_at(b, 74), u8_at(b, 75)],
            cmic: u8_at(b, 76),
            mdts: u8_at(b, 77),
            cntlid: u16_at(b, 78),
            ver: u32_at(b, 80),
            oaes: u32_at(b, 92),
            ctratt: u32_at(b, 96),
            cntrltype: u8_at(b, 111),
            oacs: u16_at(b, 256),
            acl: u8_at(b, 258),
            aerl: u8_at(b, 259),
            frmw: u8_at(b, 260),
            lpa: u8_at(b, 261),
            elpe: u8_at(b, 262),
            npss: u8_at(b, 263),
            kas: u16_at(b, 320),
            sqes: u8_at(b, 512),
            cqes: u8_at(b, 513),
            maxcmd: u16_at(b, 514),
            nn: u32_at(b, 516),
            oncs: u16_at(b, 520),
            fuses: u16_at(b, 522),
            fna: u8_at(b, 524),
            vwc: u8_at(b, 525),
            awun: u16_at(b, 526),
            awupf: u16_at(b, 528),
            sgls: u32_at(b, 536),
            subnqn: str_at(b, 768, 256),
            ioccsz: u32_at(b, 1792),
            iorcsz: u32_at(b, 1796),
            icdoff: u16_at(b, 1800),
            fcatt: u8_at(b, 1802),
            msdbd: u8_at(b, 1803),
        }
    }
}

/// An LBA format descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LbaFormat {
    /// Metadata bytes per LBA.
    pub ms: u16,
    /// LBA data size, 2^n bytes.
    pub lbads: u8,
    /// Relative performance.
    pub rp: u8,
}

/// Identify Namespace data structure (the fields used here).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IdentifyNamespace {
    /// Namespace size, capacity and utilization, in logical blocks.
    pub nsze: u64,
    pub ncap: u64,
    pub nuse: u64,
    pub nsfeat: u8,
    /// Number of LBA formats, 0's based.
    pub nlbaf: u8,
    /// Formatted LBA size: bits 3:0 index the format in use.
    pub flbas: u8,
    pub mc: u8,
    pub dpc: u8,
    pub dps: u8,
    /// Multi-path I/O and sharing: bit 0 may be attached to several controllers.
    pub nmic: u8,
    pub dlfeat: u8,
    /// Namespace attributes: bit 0 write protected.
    pub nsattr: u8,
    pub nguid: [u8; 16],
    pub eui64: [u8; 8],
    /// LBA formats (up to 64).
    pub lbaf: Vec<LbaFormat>,
}

impl IdentifyNamespace {
    /// NSATTR bit: the namespace is write protected.
    pub const NSATTR_WRITE_PROTECTED: u8 = 1;

    /// Size of a logical block in bytes under the format in use, if the format exists and is
    /// sane (2^9 to 2^24).
    pub fn block_size(&self) -> Option<u32> {
        let f = self.lbaf.get(usize::from(self.flbas & 0xf))?;
        (9..=24).contains(&f.lbads).then(|| 1u32 << f.lbads)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; IDENTIFY_LEN];
        put_u64(&mut b, 0, self.nsze);
        put_u64(&mut b, 8, self.ncap);
        put_u64(&mut b, 16, self.nuse);
        b[24] = self.nsfeat;
        b[25] = self.nlbaf;
        b[26] = self.flbas;
        b[27] = self.mc;
        b[28] = self.dpc;
        b[29] = self.dps;
        b[30] = self.nmic;
        b[33] = self.dlfeat;
        b[99] = self.nsattr;
        put_bytes(&mut b, 104, &self.nguid);
        put_bytes(&mut b, 120, &self.eui64);
        for (i, f) in self.lbaf.iter().take(64).enumerate() {
            let off = 128 + i * 4;
            put_u16(&mut b, off, f.ms);
            b[off + 2] = f.lbads;
            b[off + 3] = f.rp & 0x3;
        }
        b
    }

    /// Decodes the data structure; the LBA format list has NLBAF + 1 entries.
    pub fn decode(b: &[u8]) -> IdentifyNamespace {
        let nlbaf = u8_at(b, 25);
        let formats = (usize::from(nlbaf) + 1).min(64);
        let lbaf = (0..formats)
            .map(|i| {
                let off = 128 + i * 4;
                LbaFormat { ms: u16_at(b, off), lbads: u8_at(b, off + 2), rp: u8_at(b, off + 3) & 0x3 }
            })
            .collect();
        let mut nguid = [0u8; 16];
        let mut eui64 = [0u8; 8];
        if let Some(s) = b.get(104..120) {
            nguid.copy_from_slice(s);
        }
        if let Some(s) = b.get(120..128) {
            eui64.copy_from_slice(s);
        }
        IdentifyNamespace {
            nsze: u64_at(b, 0),
            ncap: u64_at(b, 8),
            nuse: u64_at(b, 16),
            nsfeat: u8_at(b, 24),
            nlbaf,
            flbas: u8_at(b, 26),
            mc: u8_at(b, 27),
            dpc: u8_at(b, 28),
            dps: u8_at(b, 29),
            nmic: u8_at(b, 30),
            dlfeat: u8_at(b, 33),
            nsattr: u8_at(b, 99),
            nguid,
            eui64,
            lbaf,
        }
    }
}

/// Encodes an active namespace ID list: ascending NSIDs, zero-terminated, at most 1024.
pub fn encode_namespace_list(nsids: &[u32]) -> Vec<u8> {
    let mut b = vec![0u8; IDENTIFY_LEN];
    for (i, id) in nsids.iter().take(IDENTIFY_LEN / 4).enumerate() {
        put_u32(&mut b, i * 4, *id);
    }
    b
}

/// Decodes an active namespace ID list (stops at the first zero).
pub fn decode_namespace_list(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).take_while(|&id| id != 0).collect()
}

/// Namespace identification descriptor types.
pub mod nidt {
    pub const EUI64: u8 = 1;
    pub const NGUID: u8 = 2;
    pub const UUID: u8 = 3;
    pub const CSI: u8 = 4;
}

/// One namespace identification descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceDescriptor {
    pub nidt: u8,
    pub nid: Vec<u8>,
}

/// Encodes a namespace identification descriptor list (CNS 03h).
pub fn encode_namespace_descriptors(descs: &[NamespaceDescriptor]) -> Vec<u8> {
    let mut b = vec![0u8; IDENTIFY_LEN];
    let mut off = 0;
    for d in descs {
        let len = d.nid.len().min(255);
        if off + 4 + len > IDENTIFY_LEN {
            break;
        }
        b[off] = d.nidt;
        b[off + 1] = len as u8;
        b[off + 4..off + 4 + len].copy_from_slice(&d.nid[..len]);
        off += 4 + len;
    }
    b
}

/// Decodes a namespace identification descriptor list (stops at a zero length or the end).
pub fn decode_namespace_descriptors(b: &[u8]) -> Vec<NamespaceDescriptor> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 4 <= b.len() {
        let nidt = b[off];
        let len = usize::from(b[off + 1]);
        if len == 0 || off + 4 + len > b.len() {
            break;
        }
        out.push(NamespaceDescriptor { nidt, nid: b[off + 4..off + 4 + len].to_vec() });
        off += 4 + len;
    }
    out
}
