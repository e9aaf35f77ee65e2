//! The discovery log page (log page 70h of a discovery controller): a 1024-byte header and one
//! 1024-byte entry per subsystem port.

use super::wire::{put_str, put_u16, put_u64, str_at, u16_at, u64_at, u8_at};

/// Size of the header and of each entry.
pub const DISCOVERY_RECORD_LEN: usize = 1024;

/// Transport types (TRTYPE).
pub mod trtype {
    pub const RDMA: u8 = 1;
    pub const FC: u8 = 2;
    pub const TCP: u8 = 3;
    pub const LOOP: u8 = 254;
}

/// Address families (ADRFAM).
pub mod adrfam {
    pub const IPV4: u8 = 1;
    pub const IPV6: u8 = 2;
}

/// Subsystem types (SUBTYPE).
pub mod subtype {
    /// A referral to another discovery service.
    pub const DISCOVERY_REFERRAL: u8 = 1;
    /// An NVM subsystem.
    pub const NVME: u8 = 2;
    /// The discovery subsystem that returned the log.
    pub const CURRENT_DISCOVERY: u8 = 3;
}

/// Transport requirements (TREQ) bits.
pub mod treq {
    /// Secure channel: not required (bits 1:0 = 10b).
    pub const SECURE_CHANNEL_NOT_REQUIRED: u8 = 0x2;
    /// The controller supports disabling SQ flow control.
    pub const SQ_FLOW_CONTROL_DISABLE: u8 = 0x4;
}

/// The log page header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DiscoveryLogHeader {
    /// Generation counter: changes whenever the log does.
    pub genctr: u64,
    /// Number of records.
    pub numrec: u64,
    pub recfmt: u16,
}

impl DiscoveryLogHeader {
    pub fn encode(&self) -> [u8; DISCOVERY_RECORD_LEN] {
        let mut b = [0u8; DISCOVERY_RECORD_LEN];
        put_u64(&mut b, 0, self.genctr);
        put_u64(&mut b, 8, self.numrec);
        put_u16(&mut b, 16, self.recfmt);
        b
    }

    pub fn decode(b: &[u8]) -> DiscoveryLogHeader {
        DiscoveryLogHeader { genctr: u64_at(b, 0), numrec: u64_at(b, 8), recfmt: u16_at(b, 16) }
    }
}

/// One discovery log page entry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DiscoveryEntry {
    pub trtype: u8,
    pub adrfam: u8,
    pub subtype: u8,
    pub treq: u8,
    pub portid: u16,
    /// 0xFFFF: dynamic controller model.
    pub cntlid: u16,
    /// Largest admin submission queue size.
    pub asqsz: u16,
    pub eflags: u16,
    /// Transport service ID: the TCP port, as text.
    pub trsvcid: String,
    pub subnqn: String,
    /// Transport address: the IP address, as text.
    pub traddr: String,
    /// TCP transport specific: security type (0 none).
    pub sectype: u8,
}

impl DiscoveryEntry {
    pub fn encode(&self) -> [u8; DISCOVERY_RECORD_LEN] {
        let mut b = [0u8; DISCOVERY_RECORD_LEN];
        b[0] = self.trtype;
        b[1] = self.adrfam;
        b[2] = self.subtype;
        b[3] = self.treq;
        put_u16(&mut b, 4, self.portid);
        put_u16(&mut b, 6, self.cntlid);
        put_u16(&mut b, 8, self.asqsz);
        put_u16(&mut b, 10, self.eflags);
        put_str(&mut b, 32, 32, &self.trsvcid, 0);
        put_str(&mut b, 256, 223, &self.subnqn, 0);
        put_str(&mut b, 512, 256, &self.traddr, 0);
        b[768] = self.sectype;
        b
    }

    pub fn decode(b: &[u8]) -> DiscoveryEntry {
        DiscoveryEntry {
            trtype: u8_at(b, 0),
            adrfam: u8_at(b, 1),
            subtype: u8_at(b, 2),
            treq: u8_at(b, 3),
            portid: u16_at(b, 4),
            cntlid: u16_at(b, 6),
            asqsz: u16_at(b, 8),
            eflags: u16_at(b, 10),
            trsvcid: str_at(b, 32, 32),
            subnqn: str_at(b, 256, 256),
            traddr: str_at(b, 512, 256),
            sectype: u8_at(b, 768),
        }
    }
}

/// Encodes a whole discovery log page.
pub fn encode_discovery_log(genctr: u64, entries: &[DiscoveryEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(DISCOVERY_RECORD_LEN * (1 + entries.len()));
    let header = DiscoveryLogHeader { genctr, numrec: entries.len() as u64, recfmt: 0 };
    out.extend_from_slice(&header.encode());
    for e in entries {
        out.extend_from_slice(&e.encode());
    }
    out
}

/// Decodes a discovery log page: its header and the entries present in `b` (at most NUMREC).
pub fn decode_discovery_log(b: &[u8]) -> (DiscoveryLogHeader, Vec<DiscoveryEntry>) {
    let header = DiscoveryLogHeader::decode(b);
    let entries = b
        .get(DISCOVERY_RECORD_LEN..)
        .unwrap_or(&[])
        .chunks_exact(DISCOVERY_RECORD_LEN)
        .take(usize::try_from(header.numrec).unwrap_or(usize::MAX))
        .map(DiscoveryEntry::decode)
        .collect();
    (header, entries)
}
