//! NVMe over Fabrics pieces beyond the SQE: the 1024-byte Connect data, the Connect response,
//! and the controller properties read and written by Property Get/Set (CAP, VS, CC, CSTS).

use super::wire::{put_str, put_u16, strict_str_at, u16_at};

/// NQN of the discovery subsystem.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";
/// IANA port of NVMe/TCP I/O controllers.
pub const DEFAULT_PORT: u16 = 4420;
/// IANA port of NVMe/TCP discovery controllers.
pub const DEFAULT_DISCOVERY_PORT: u16 = 8009;
/// Size of an NQN field (the text is at most 223 bytes and NUL-terminated).
pub const NQN_FIELD_LEN: usize = 256;
/// Longest NQN.
pub const MAX_NQN_LEN: usize = 223;
/// Controller ID asking the subsystem to allocate one (dynamic controller model).
pub const DYNAMIC_CNTLID: u16 = 0xFFFF;
/// Length of the Connect command's data.
pub const CONNECT_DATA_LEN: usize = 1024;

/// The data of a Connect command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectData {
    pub hostid: [u8; 16],
    pub cntlid: u16,
    pub subnqn: String,
    pub hostnqn: String,
}

/// A Connect data field that is not acceptable: its byte offset, for IPO.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid Connect data field at byte {offset}")]
pub struct ConnectDataError {
    pub offset: u16,
}

impl ConnectData {
    pub const OFFSET_HOSTID: u16 = 0;
    pub const OFFSET_CNTLID: u16 = 16;
    pub const OFFSET_SUBNQN: u16 = 256;
    pub const OFFSET_HOSTNQN: u16 = 512;

    pub fn encode(&self) -> [u8; CONNECT_DATA_LEN] {
        let mut b = [0u8; CONNECT_DATA_LEN];
        b[..16].copy_from_slice(&self.hostid);
        put_u16(&mut b, 16, self.cntlid);
        put_str(&mut b, 256, MAX_NQN_LEN, &self.subnqn, 0);
        put_str(&mut b, 512, MAX_NQN_LEN, &self.hostnqn, 0);
        b
    }

    /// Decodes Connect data. The NQNs must be NUL-terminated printable ASCII; otherwise the
    /// error names the field, for the Connect Invalid Parameters status.
    pub fn decode(b: &[u8]) -> Result<ConnectData, ConnectDataError> {
        if b.len() < CONNECT_DATA_LEN {
            return Err(ConnectDataError { offset: 0 });
        }
        let mut hostid = [0u8; 16];
        hostid.copy_from_slice(&b[..16]);
        let subnqn = strict_str_at(b, 256, NQN_FIELD_LEN)
            .filter(|s| !s.is_empty())
            .ok_or(ConnectDataError { offset: Self::OFFSET_SUBNQN })?;
        let hostnqn = strict_str_at(b, 512, NQN_FIELD_LEN)
            .filter(|s| !s.is_empty())
            .ok_or(ConnectDataError { offset: Self::OFFSET_HOSTNQN })?;
        Ok(ConnectData { hostid, cntlid: u16_at(b, 16), subnqn, hostnqn })
    }
}

/// Dword 0 of a Connect Invalid Parameters completion: the offset of the bad parameter (IPO)
/// and whether it is in the SQE (IATTR 0) or in the Connect data (IATTR 1).
pub fn invalid_parameter_info(in_data: bool, offset: u16) -> u32 {
    (u32::from(in_data) << 16) | u32::from(offset)
}

/// Controller property offsets.
pub mod property {
    /// Controller Capabilities, 8 bytes.
    pub const CAP: u32 = 0x00;
    /// Version, 4 bytes.
    pub const VS: u32 = 0x08;
    /// Controller Configuration, 4 bytes.
    pub const CC: u32 = 0x14;
    /// Controller Status, 4 bytes.
    pub const CSTS: u32 = 0x1C;
    /// NVM Subsystem Reset, 4 bytes.
    pub const NSSR: u32 = 0x20;
}

/// Controller Capabilities (CAP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cap {
    /// Maximum queue entries supported, 0's based.
    pub mqes: u16,
    /// Contiguous queues required.
    pub cqr: bool,
    /// Worst-case time to become ready, in 500 ms units.
    pub to: u8,
    /// Command sets supported (bit 0: NVM).
    pub css: u8,
    /// Smallest and largest memory page size, 2^(12 + n).
    pub mpsmin: u8,
    pub mpsmax: u8,
}

impl Cap {
    pub fn to_u64(self) -> u64 {
        u64::from(self.mqes)
            | (u64::from(self.cqr) << 16)
            | (u64::from(self.to) << 24)
            | (u64::from(self.css) << 37)
            | (u64::from(self.mpsmin & 0xf) << 48)
            | (u64::from(self.mpsmax & 0xf) << 52)
    }

    pub fn from_u64(v: u64) -> Cap {
        Cap {
            mqes: v as u16,
            cqr: v & (1 << 16) != 0,
            to: (v >> 24) as u8,
            css: (v >> 37) as u8,
            mpsmin: ((v >> 48) & 0xf) as u8,
            mpsmax: ((v >> 52) & 0xf) as u8,
        }
    }
}

/// Version property value: major, minor, tertiary.
pub fn version(major: u16, minor: u8, tertiary: u8) -> u32 {
    (u32::from(major) << 16) | (u32::from(minor) << 8) | u32::from(tertiary)
}

/// Controller Configuration (CC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cc {
    pub enable: bool,
    /// I/O command set selected (0: NVM).
    pub css: u8,
    /// Memory page size, 2^(12 + mps).
    pub mps: u8,
    /// Arbitration mechanism.
    pub ams: u8,
    /// Shutdown notification: 0 none, 1 normal, 2 abrupt.
    pub shn: u8,
    /// I/O submission/completion queue entry sizes, 2^n bytes (6 and 4).
    pub iosqes: u8,
    pub iocqes: u8,
}

impl Cc {
    /// What a host writes to enable an NVM controller: EN, NVM command set, 4 KiB pages,
    /// 64-byte SQEs and 16-byte CQEs.
    pub fn enabled_nvm() -> Cc {
        Cc { enable: true, css: 0, mps: 0, ams: 0, shn: 0, iosqes: 6, iocqes: 4 }
    }

    pub fn to_u32(self) -> u32 {
        u32::from(self.enable)
            | (u32::from(self.css & 0x7) << 4)
            | (u32::from(self.mps & 0xf) << 7)
            | (u32::from(self.ams & 0x7) << 11)
            | (u32::from(self.shn & 0x3) << 14)
            | (u32::from(self.iosqes & 0xf) << 16)
            | (u32::from(self.iocqes & 0xf) << 20)
    }

    pub fn from_u32(v: u32) -> Cc {
        Cc {
            enable: v & 1 != 0,
            css: ((v >> 4) & 0x7) as u8,
            mps: ((v >> 7) & 0xf) as u8,
            ams: ((v >> 11) & 0x7) as u8,
            shn: ((v >> 14) & 0x3) as u8,
            iosqes: ((v >> 16) & 0xf) as u8,
            iocqes: ((v >> 20) & 0xf) as u8,
        }
    }
}

/// Controller Status (CSTS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Csts {
    pub ready: bool,
    /// Controller fatal status.
    pub cfs: bool,
    /// Shutdown status: 0 normal operation, 1 occurring, 2 complete.
    pub shst: u8,
}

impl Csts {
    pub const SHST_COMPLETE: u8 = 2;

    pub fn to_u32(self) -> u32 {
        u32::from(self.ready) | (u32::from(self.cfs) << 1) | (u32::from(self.shst & 0x3) << 2)
    }

    pub fn from_u32(v: u32) -> Csts {
        Csts { ready: v & 1 != 0, cfs: v & 2 != 0, shst: ((v >> 2) & 0x3) as u8 }
    }
}

/// Connect response dword 0: the controller ID (bits 15:0) and whether authentication is
/// required (bits 31:16; this implementation never requires it).
pub fn connect_response_cntlid(dw0: u32) -> u16 {
    dw0 as u16
}

/// The AUTHREQ bits of a Connect response.
pub fn connect_response_authreq(dw0: u32) -> u16 {
    (dw0 >> 16) as u16
}
