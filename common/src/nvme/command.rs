//! Typed commands: Fabrics (Connect, Property Get/Set, Disconnect), admin (Identify, Get Log
//! Page, Set/Get Features, Keep Alive, Asynchronous Event Request, Abort) and NVM I/O (Read,
//! Write, Flush), built into and parsed from SQEs.
//!
//! Parsing is a pure function of the SQE and the kind of queue it arrived on (admin and I/O
//! opcodes overlap); what it cannot accept it reports as the NVMe status the controller returns.

use super::sqe::{Sqe, StatusField};
use super::status::generic;
use super::wire::u16_at;

/// Opcodes.
pub mod opcode {
    /// Fabrics commands (the command type is in byte 4).
    pub const FABRICS: u8 = 0x7F;
    // Admin.
    pub const GET_LOG_PAGE: u8 = 0x02;
    pub const IDENTIFY: u8 = 0x06;
    pub const ABORT: u8 = 0x08;
    pub const SET_FEATURES: u8 = 0x09;
    pub const GET_FEATURES: u8 = 0x0A;
    pub const ASYNC_EVENT_REQUEST: u8 = 0x0C;
    pub const KEEP_ALIVE: u8 = 0x18;
    // NVM I/O.
    pub const FLUSH: u8 = 0x00;
    pub const WRITE: u8 = 0x01;
    pub const READ: u8 = 0x02;
}

/// Fabrics command types.
pub mod fctype {
    pub const PROPERTY_SET: u8 = 0x00;
    pub const CONNECT: u8 = 0x01;
    pub const PROPERTY_GET: u8 = 0x04;
    pub const AUTHENTICATION_SEND: u8 = 0x05;
    pub const AUTHENTICATION_RECEIVE: u8 = 0x06;
    pub const DISCONNECT: u8 = 0x08;
}

/// Identify CNS values.
pub mod cns {
    pub const NAMESPACE: u8 = 0x00;
    pub const CONTROLLER: u8 = 0x01;
    pub const ACTIVE_NAMESPACES: u8 = 0x02;
    pub const NAMESPACE_DESCRIPTORS: u8 = 0x03;
    /// I/O command set specific Identify Namespace.
    pub const CS_NAMESPACE: u8 = 0x05;
    /// I/O command set specific Identify Controller.
    pub const CS_CONTROLLER: u8 = 0x06;
}

/// Feature identifiers.
pub mod feature {
    pub const VOLATILE_WRITE_CACHE: u8 = 0x06;
    pub const NUMBER_OF_QUEUES: u8 = 0x07;
    pub const ASYNC_EVENT_CONFIG: u8 = 0x0B;
    pub const KEEP_ALIVE_TIMER: u8 = 0x0F;
}

/// Log page identifiers.
pub mod log_page {
    pub const ERROR_INFORMATION: u8 = 0x01;
    pub const SMART_HEALTH: u8 = 0x02;
    pub const FIRMWARE_SLOT: u8 = 0x03;
    pub const DISCOVERY: u8 = 0x70;
}

/// Direction of a command's data, from bits 1:0 of its opcode (of its fctype for Fabrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataDirection {
    None,
    HostToController,
    ControllerToHost,
    Bidirectional,
}

impl DataDirection {
    pub fn of(sqe: &Sqe) -> DataDirection {
        let code = if sqe.opcode() == opcode::FABRICS { sqe.fctype() } else { sqe.opcode() };
        match code & 0x3 {
            0 => DataDirection::None,
            1 => DataDirection::HostToController,
            2 => DataDirection::ControllerToHost,
            _ => DataDirection::Bidirectional,
        }
    }
}

/// Connect command fields (SQE bytes 40..52).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connect {
    /// Record format, 0.
    pub recfmt: u16,
    pub qid: u16,
    /// Submission queue size, 0's based.
    pub sqsize: u16,
    /// Connect attributes; bit 2 disables SQ flow control.
    pub cattr: u8,
    /// Keep Alive Timeout in milliseconds (admin queue only).
    pub kato: u32,
}

impl Connect {
    /// CATTR bit: disable SQ flow control (the controller then reports SQHD 0xFFFF).
    pub const DISABLE_SQ_FLOW_CONTROL: u8 = 1 << 2;
    /// Byte offsets, for Connect Invalid Parameters (IPO).
    pub const OFFSET_RECFMT: u16 = 40;
    pub const OFFSET_QID: u16 = 42;
    pub const OFFSET_SQSIZE: u16 = 44;
    pub const OFFSET_CATTR: u16 = 46;
    pub const OFFSET_KATO: u16 = 48;
}

/// Property size of Property Get/Set (ATTRIB bits 2:0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropertySize {
    Four,
    Eight,
}

/// A Fabrics command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FabricsCommand {
    Connect(Connect),
    PropertyGet { size: PropertySize, offset: u32 },
    PropertySet { size: PropertySize, offset: u32, value: u64 },
    Disconnect { recfmt: u16 },
}

/// An admin command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminCommand {
    Identify {
        cns: u8,
        /// Controller ID (CDW10 31:16).
        cntid: u16,
        nsid: u32,
        /// Command set identifier (CDW11 31:24).
        csi: u8,
    },
    GetLogPage {
        nsid: u32,
        lid: u8,
        /// Log specific field (CDW10 14:8).
        lsp: u8,
        /// Retain asynchronous event.
        rae: bool,
        /// Number of dwords to transfer, 0's based (NUMDU:NUMDL).
        numd: u32,
        /// Byte offset into the log page (LPOU:LPOL).
        offset: u64,
    },
    SetFeatures {
        fid: u8,
        save: bool,
        nsid: u32,
        cdw11: u32,
    },
    GetFeatures {
        fid: u8,
        /// Select: 0 current, 1 default, 2 saved, 3 supported capabilities.
        sel: u8,
        nsid: u32,
        cdw11: u32,
    },
    KeepAlive,
    AsyncEventRequest,
    Abort {
        sqid: u16,
        cid: u16,
    },
}

/// An NVM I/O command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoCommand {
    Read { nsid: u32, slba: u64, nlb: u16 },
    Write { nsid: u32, slba: u64, nlb: u16 },
    Flush { nsid: u32 },
}

impl IoCommand {
    /// Number of logical blocks (1's based) of a Read or Write, 0 for Flush.
    pub fn blocks(&self) -> u32 {
        match self {
            IoCommand::Read { nlb, .. } | IoCommand::Write { nlb, .. } => u32::from(*nlb) + 1,
            IoCommand::Flush { .. } => 0,
        }
    }
}

/// Any command this implementation knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Fabrics(FabricsCommand),
    Admin(AdminCommand),
    Io(IoCommand),
}

/// The queue a command arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueKind {
    Admin,
    Io,
}

/// Why a command cannot be parsed: the status to complete it with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{status}")]
pub struct CommandError {
    pub status: StatusField,
}

impl CommandError {
    fn invalid_opcode() -> CommandError {
        CommandError { status: StatusField::generic(generic::INVALID_OPCODE).dnr() }
    }

    fn invalid_field() -> CommandError {
        CommandError { status: StatusField::generic(generic::INVALID_FIELD).dnr() }
    }
}

impl Command {
    /// Parses an SQE received on a queue of the given kind.
    pub fn parse(sqe: &Sqe, queue: QueueKind) -> Result<Command, CommandError> {
        if sqe.opcode() == opcode::FABRICS {
            return FabricsCommand::parse(sqe).map(Command::Fabrics);
        }
        match queue {
            QueueKind::Admin => AdminCommand::parse(sqe).map(Command::Admin),
            QueueKind::Io => IoCommand::parse(sqe).map(Command::Io),
        }
    }

    /// Builds the SQE (CID and data pointer are the queue's to fill in).
    pub fn to_sqe(&self) -> Sqe {
        match self {
            Command::Fabrics(c) => c.to_sqe(),
            Command::Admin(c) => c.to_sqe(),
            Command::Io(c) => c.to_sqe(),
        }
    }
}

fn property_size(attrib: u8) -> Result<PropertySize, CommandError> {
    match attrib & 0x7 {
        0 => Ok(PropertySize::Four),
        1 => Ok(PropertySize::Eight),
        _ => Err(CommandError::invalid_field()),
    }
}

impl FabricsCommand {
    pub fn parse(sqe: &Sqe) -> Result<FabricsCommand, CommandError> {
        let b = &sqe.0;
        Ok(match sqe.fctype() {
            fctype::CONNECT => FabricsCommand::Connect(Connect {
                recfmt: u16_at(b, 40),
                qid: u16_at(b, 42),
                sqsize: u16_at(b, 44),
                cattr: b[46],
                kato: sqe.cdw(12),
            }),
            fctype::PROPERTY_GET => FabricsCommand::PropertyGet { size: property_size(b[40])?, offset: sqe.cdw(11) },
            fctype::PROPERTY_SET => FabricsCommand::PropertySet {
                size: property_size(b[40])?,
                offset: sqe.cdw(11),
                value: u64::from(sqe.cdw(12)) | (u64::from(sqe.cdw(13)) << 32),
            },
            fctype::DISCONNECT => FabricsCommand::Disconnect { recfmt: u16_at(b, 40) },
            _ => return Err(CommandError::invalid_opcode()),
        })
    }

    pub fn to_sqe(&self) -> Sqe {
        let mut s = Sqe::new(opcode::FABRICS);
        match *self {
            FabricsCommand::Connect(c) => {
                s.0[4] = fctype::CONNECT;
                s.0[40..42].copy_from_slice(&c.recfmt.to_le_bytes());
                s.0[42..44].copy_from_slice(&c.qid.to_le_bytes());
                s.0[44..46].copy_from_slice(&c.sqsize.to_le_bytes());
                s.0[46] = c.cattr;
                s.set_cdw(12, c.kato);
            }
            FabricsCommand::PropertyGet { size, offset } => {
                s.0[4] = fctype::PROPERTY_GET;
                s.0[40] = u8::from(size == PropertySize::Eight);
                s.set_cdw(11, offset);
            }
            FabricsCommand::PropertySet { size, offset, value } => {
                s.0[4] = fctype::PROPERTY_SET;
                s.0[40] = u8::from(size == PropertySize::Eight);
                s.set_cdw(11, offset);
                s.set_cdw(12, value as u32);
                s.set_cdw(13, (value >> 32) as u32);
            }
            FabricsCommand::Disconnect { recfmt } => {
                s.0[4] = fctype::DISCONNECT;
                s.0[40..42].copy_from_slice(&recfmt.to_le_bytes());
            }
        }
        s
    }
}

impl AdminCommand {
    pub fn parse(sqe: &Sqe) -> Result<AdminCommand, CommandError> {
        let c10 = sqe.cdw(10);
        let c11 = sqe.cdw(11);
        Ok(match sqe.opcode() {
            opcode::IDENTIFY => AdminCommand::Identify {
                cns: c10 as u8,
                cntid: (c10 >> 16) as u16,
                nsid: sqe.nsid(),
                csi: (c11 >> 24) as u8,
            },
            opcode::GET_LOG_PAGE => AdminCommand::GetLogPage {
                nsid: sqe.nsid(),
                lid: c10 as u8,
                lsp: ((c10 >> 8) & 0x7f) as u8,
                rae: c10 & (1 << 15) != 0,
                numd: (c10 >> 16) | ((c11 & 0xffff) << 16),
                offset: u64::from(sqe.cdw(12)) | (u64::from(sqe.cdw(13)) << 32),
            },
            opcode::SET_FEATURES => {
                AdminCommand::SetFeatures { fid: c10 as u8, save: c10 & (1 << 31) != 0, nsid: sqe.nsid(), cdw11: c11 }
            }
            opcode::GET_FEATURES => AdminCommand::GetFeatures {
                fid: c10 as u8,
                sel: ((c10 >> 8) & 0x7) as u8,
                nsid: sqe.nsid(),
                cdw11: c11,
            },
            opcode::KEEP_ALIVE => AdminCommand::KeepAlive,
            opcode::ASYNC_EVENT_REQUEST => AdminCommand::AsyncEventRequest,
            opcode::ABORT => AdminCommand::Abort { sqid: c10 as u16, cid: (c10 >> 16) as u16 },
            _ => return Err(CommandError::invalid_opcode()),
        })
    }

    pub fn to_sqe(&self) -> Sqe {
        match *self {
            AdminCommand::Identify { cns, cntid, nsid, csi } => {
                let mut s = Sqe::new(opcode::IDENTIFY);
                s.set_nsid(nsid);
                s.set_cdw(10, u32::from(cns) | (u32::from(cntid) << 16));
                s.set_cdw(11, u32::from(csi) << 24);
                s
            }
            AdminCommand::GetLogPage { nsid, lid, lsp, rae, numd, offset } => {
                let mut s = Sqe::new(opcode::GET_LOG_PAGE);
                s.set_nsid(nsid);
                s.set_cdw(
                    10,
                    u32::from(lid) | (u32::from(lsp & 0x7f) << 8) | (u32::from(rae) << 15) | ((numd & 0xffff) << 16),
                );
                s.set_cdw(11, numd >> 16);
                s.set_cdw(12, offset as u32);
                s.set_cdw(13, (offset >> 32) as u32);
                s
            }
            AdminCommand::SetFeatures { fid, save, nsid, cdw11 } => {
                let mut s = Sqe::new(opcode::SET_FEATURES);
                s.set_nsid(nsid);
                s.set_cdw(10, u32::from(fid) | (u32::from(save) << 31));
                s.set_cdw(11, cdw11);
                s
            }
            AdminCommand::GetFeatures { fid, sel, nsid, cdw11 } => {
                let mut s = Sqe::new(opcode::GET_FEATURES);
                s.set_nsid(nsid);
                s.set_cdw(10, u32::from(fid) | (u32::from(sel & 0x7) << 8));
                s.set_cdw(11, cdw11);
                s
            }
            AdminCommand::KeepAlive => Sqe::new(opcode::KEEP_ALIVE),
            AdminCommand::AsyncEventRequest => Sqe::new(opcode::ASYNC_EVENT_REQUEST),
            AdminCommand::Abort { sqid, cid } => {
                let mut s = Sqe::new(opcode::ABORT);
                s.set_cdw(10, u32::from(sqid) | (u32::from(cid) << 16));
                s
            }
        }
    }
}

impl IoCommand {
    pub fn parse(sqe: &Sqe) -> Result<IoCommand, CommandError> {
        let slba = u64::from(sqe.cdw(10)) | (u64::from(sqe.cdw(11)) << 32);
        let nlb = sqe.cdw(12) as u16;
        Ok(match sqe.opcode() {
            opcode::READ => IoCommand::Read { nsid: sqe.nsid(), slba, nlb },
            opcode::WRITE => IoCommand::Write { nsid: sqe.nsid(), slba, nlb },
            opcode::FLUSH => IoCommand::Flush { nsid: sqe.nsid() },
            _ => return Err(CommandError::invalid_opcode()),
        })
    }

    pub fn to_sqe(&self) -> Sqe {
        match *self {
            IoCommand::Read { nsid, slba, nlb } | IoCommand::Write { nsid, slba, nlb } => {
                let op = if matches!(self, IoCommand::Read { .. }) { opcode::READ } else { opcode::WRITE };
                let mut s = Sqe::new(op);
                s.set_nsid(nsid);
                s.set_cdw(10, slba as u32);
                s.set_cdw(11, (slba >> 32) as u32);
                s.set_cdw(12, u32::from(nlb));
                s
            }
            IoCommand::Flush { nsid } => {
                let mut s = Sqe::new(opcode::FLUSH);
                s.set_nsid(nsid);
                s
            }
        }
    }
}
