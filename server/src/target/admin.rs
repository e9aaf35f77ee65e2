//! Admin-queue command semantics: controller properties, Identify, Get Log Page and Features.
//! Pure functions of the controller and target state; the queue session does the transport.

use std::net::SocketAddr;
use std::time::Instant;

use scalio_common::nvme::command::{cns, feature, log_page, PropertySize};
use scalio_common::nvme::discovery::{adrfam, encode_discovery_log, subtype, treq, trtype, DiscoveryEntry};
use scalio_common::nvme::fabrics::{property, Cap, Cc, Csts, DISCOVERY_NQN};
use scalio_common::nvme::identify::{
    controller_type, encode_namespace_descriptors, encode_namespace_list, nidt, IdentifyController, IdentifyNamespace,
    LbaFormat, NamespaceDescriptor, IDENTIFY_LEN,
};
use scalio_common::nvme::sqe::StatusField;
use scalio_common::nvme::status::{command_specific, generic};

use super::controller::{Controller, ControllerKind, TargetShared};

/// NVMe version the controllers report (1.4).
pub(crate) const NVME_VERSION: u32 = 0x0001_0400;
/// Asynchronous Event Request Limit, 0's based.
pub(crate) const AERL: u8 = 3;
/// Keep Alive Support granularity, in 100 ms units.
const KAS: u16 = 10;
/// Size of the admin submission queue advertised in discovery entries.
const ADMIN_QUEUE_ENTRIES: u16 = 32;

fn invalid_field() -> StatusField {
    StatusField::generic(generic::INVALID_FIELD).dnr()
}

fn invalid_namespace() -> StatusField {
    StatusField::generic(generic::INVALID_NAMESPACE_OR_FORMAT).dnr()
}

pub(crate) fn cap(shared: &TargetShared) -> Cap {
    // NVM command set, 4 KiB pages only, ready within 7.5 s (it is immediate).
    Cap { mqes: shared.settings.mqes, cqr: true, to: 15, css: 1, mpsmin: 0, mpsmax: 0 }
}

/// Property Get.
pub(crate) fn property_get(
    shared: &TargetShared,
    ctrl: &Controller,
    size: PropertySize,
    offset: u32,
) -> Result<u64, StatusField> {
    let st = ctrl.state.lock();
    match (size, offset) {
        (PropertySize::Eight, property::CAP) => Ok(cap(shared).to_u64()),
        (PropertySize::Four, property::VS) => Ok(u64::from(NVME_VERSION)),
        (PropertySize::Four, property::CC) => Ok(u64::from(st.cc.to_u32())),
        (PropertySize::Four, property::CSTS) => Ok(u64::from(st.csts.to_u32())),
        _ => Err(invalid_field()),
    }
}

/// Property Set: only CC is writable. Enabling a controller with a configuration it cannot run
/// sets CSTS.CFS instead of CSTS.RDY; clearing CC.EN resets it (its I/O queues are deleted);
/// a shutdown notification completes at once (writes are already on the namespace).
pub(crate) fn property_set(ctrl: &Controller, size: PropertySize, offset: u32, value: u64) -> Result<(), StatusField> {
    if size != PropertySize::Four || offset != property::CC {
        return Err(invalid_field());
    }
    let new = Cc::from_u32(value as u32);
    let mut st = ctrl.state.lock();
    let old = st.cc;
    if new.enable && !old.enable {
        let io = !ctrl.is_discovery();
        let valid = new.css == 0 && new.mps == 0 && new.ams == 0 && (!io || (new.iosqes == 6 && new.iocqes == 4));
        if valid {
            st.csts.ready = true;
        } else {
            st.csts.cfs = true;
        }
    } else if !new.enable && old.enable {
        st.csts = Csts::default();
        st.reset_epoch += 1;
        st.io_queues.clear();
    }
    if new.shn != 0 {
        st.csts.shst = Csts::SHST_COMPLETE;
    } else if old.shn != 0 {
        st.csts.shst = 0;
    }
    st.cc = new;
    Ok(())
}

/// Identify: the data to return, or the status that refuses the request.
pub(crate) fn identify(
    shared: &TargetShared,
    ctrl: &Controller,
    cns_value: u8,
    nsid: u32,
    csi: u8,
) -> Result<Vec<u8>, StatusField> {
    let subsystem = match ctrl.kind {
        ControllerKind::Io(i) => shared.subsystems.get(i),
        ControllerKind::Discovery => None,
    };
    match cns_value {
        cns::CONTROLLER => Ok(identify_controller(shared, ctrl).encode()),
        cns::NAMESPACE => {
            let s = subsystem.ok_or_else(invalid_field)?;
            if nsid != 1 {
                return Err(invalid_namespace());
            }
            let blocks = s.namespace.blocks();
            let id = IdentifyNamespace {
                nsze: blocks,
                ncap: blocks,
                nuse: blocks,
                nlbaf: 0,
                flbas: 0,
                // Shared namespace: several controllers (hosts) may attach to the subsystem.
                nmic: 1,
                nsattr: if s.allow_writes { 0 } else { IdentifyNamespace::NSATTR_WRITE_PROTECTED },
                nguid: s.nguid,
                lbaf: vec![LbaFormat { ms: 0, lbads: 9, rp: 0 }],
                ..IdentifyNamespace::default()
            };
            Ok(id.encode())
        }
        cns::ACTIVE_NAMESPACES => {
            if subsystem.is_none() {
                return Err(invalid_field());
            }
            if nsid >= 0xFFFF_FFFE {
                return Err(invalid_namespace());
            }
            let ids: Vec<u32> = if nsid < 1 { vec![1] } else { vec![] };
            Ok(encode_namespace_list(&ids))
        }
        cns::NAMESPACE_DESCRIPTORS => {
            let s = subsystem.ok_or_else(invalid_field)?;
            if nsid != 1 {
                return Err(invalid_namespace());
            }
            Ok(encode_namespace_descriptors(&[
                NamespaceDescriptor { nidt: nidt::NGUID, nid: s.nguid.to_vec() },
                NamespaceDescriptor { nidt: nidt::UUID, nid: s.uuid.to_vec() },
                NamespaceDescriptor { nidt: nidt::CSI, nid: vec![0] },
            ]))
        }
        // NVM command set specific structures: nothing beyond the defaults to report.
        cns::CS_CONTROLLER if subsystem.is_some() && csi == 0 => Ok(vec![0; IDENTIFY_LEN]),
        cns::CS_NAMESPACE if subsystem.is_some() && csi == 0 => {
            if nsid != 1 {
                return Err(invalid_namespace());
            }
            Ok(vec![0; IDENTIFY_LEN])
        }
        _ => Err(invalid_field()),
    }
}

pub(crate) fn identify_controller(shared: &TargetShared, ctrl: &Controller) -> IdentifyController {
    let s = &shared.settings;
    let subsystem = match ctrl.kind {
        ControllerKind::Io(i) => shared.subsystems.get(i),
        ControllerKind::Discovery => None,
    };
    let discovery = subsystem.is_none();
    IdentifyController {
        serial: subsystem.map_or_else(|| "discovery".to_string(), |s| s.serial.clone()),
        model: s.model.clone(),
        firmware: s.firmware.clone(),
        // May have several controllers (one per host association).
        cmic: if discovery { 0 } else { 0x02 },
        mdts: s.mdts,
        cntlid: ctrl.cntlid,
        ver: NVME_VERSION,
        // 128-bit host identifier (Fabrics always uses it).
        ctratt: 1,
        cntrltype: if discovery { controller_type::DISCOVERY } else { controller_type::IO },
        acl: 3,
        aerl: AERL,
        // One firmware slot, read-only.
        frmw: 0x03,
        // Extended data for Get Log Page (NUMDU, offsets).
        lpa: 0x04,
        kas: KAS,
        sqes: if discovery { 0 } else { 0x66 },
        cqes: if discovery { 0 } else { 0x44 },
        maxcmd: s.mqes.saturating_add(1),
        nn: u32::from(!discovery),
        // Volatile write cache present; Flush with the broadcast NSID supported.
        vwc: if discovery { 0 } else { 0x07 },
        // SGLs without alignment rules; SGL address may be an offset (in-capsule data).
        sgls: 0x0000_0001 | (1 << 20),
        subnqn: subsystem.map_or_else(|| DISCOVERY_NQN.to_string(), |s| s.nqn.clone()),
        ioccsz: if discovery { 0 } else { (64 + s.io_in_capsule) / 16 },
        iorcsz: if discovery { 0 } else { 1 },
        icdoff: 0,
        fcatt: 0,
        msdbd: 1,
        ..IdentifyController::default()
    }
}

/// The whole log page named by `lid`, or the status that refuses it.
fn log_page_contents(
    shared: &TargetShared,
    ctrl: &Controller,
    local: SocketAddr,
    lid: u8,
) -> Result<Vec<u8>, StatusField> {
    let invalid_log = StatusField::command_specific(command_specific::INVALID_LOG_PAGE).dnr();
    match (ctrl.kind, lid) {
        (ControllerKind::Discovery, log_page::DISCOVERY) => Ok(discovery_log(shared, local)),
        (ControllerKind::Io(_), log_page::ERROR_INFORMATION) => Ok(vec![0; 64]),
        (ControllerKind::Io(_), log_page::SMART_HEALTH) => {
            // All zeros but the composite temperature (Kelvin), which hosts show as a sensor.
            let mut b = vec![0u8; 512];
            b[1..3].copy_from_slice(&300u16.to_le_bytes());
            Ok(b)
        }
        (ControllerKind::Io(_), log_page::FIRMWARE_SLOT) => {
            let mut b = vec![0u8; 512];
            b[0] = 1; // active slot 1
            let fw = shared.settings.firmware.as_bytes();
            let n = fw.len().min(8);
            b[8..16].fill(b' ');
            b[8..8 + n].copy_from_slice(&fw[..n]);
            Ok(b)
        }
        _ => Err(invalid_log),
    }
}

/// Get Log Page: `len` bytes of the log starting at byte `offset`, zero-filled past its end.
pub(crate) fn get_log_page(
    shared: &TargetShared,
    ctrl: &Controller,
    local: SocketAddr,
    lid: u8,
    offset: u64,
    len: u32,
) -> Result<Vec<u8>, StatusField> {
    if !offset.is_multiple_of(4) {
        return Err(invalid_field());
    }
    let log = log_page_contents(shared, ctrl, local, lid)?;
    if offset > log.len() as u64 {
        return Err(invalid_field());
    }
    let mut out = vec![0u8; len as usize];
    let start = offset as usize;
    let n = (log.len() - start).min(out.len());
    out[..n].copy_from_slice(&log[start..start + n]);
    Ok(out)
}

/// The discovery log page: one entry per subsystem, all reached through the I/O listener.
pub(crate) fn discovery_log(shared: &TargetShared, local: SocketAddr) -> Vec<u8> {
    // A wildcard listener is reached at whatever address the host used to reach us.
    let ip = if shared.io_listen.ip().is_unspecified() { local.ip() } else { shared.io_listen.ip() };
    let entries: Vec<DiscoveryEntry> = shared
        .subsystems
        .iter()
        .map(|s| DiscoveryEntry {
            trtype: trtype::TCP,
            adrfam: if ip.is_ipv4() { adrfam::IPV4 } else { adrfam::IPV6 },
            subtype: subtype::NVME,
            treq: treq::SECURE_CHANNEL_NOT_REQUIRED | treq::SQ_FLOW_CONTROL_DISABLE,
            portid: 1,
            cntlid: 0xFFFF,
            asqsz: ADMIN_QUEUE_ENTRIES,
            eflags: 0,
            trsvcid: shared.io_listen.port().to_string(),
            subnqn: s.nqn.clone(),
            traddr: ip.to_string(),
            sectype: 0,
        })
        .collect();
    // The configuration is fixed for the target's life, so the generation never changes.
    encode_discovery_log(1, &entries)
}

/// Set Features: dword 0 of the completion, or the refusing status.
pub(crate) fn set_features(
    shared: &TargetShared,
    ctrl: &Controller,
    fid: u8,
    save: bool,
    cdw11: u32,
    now: Instant,
) -> Result<u32, StatusField> {
    if save {
        return Err(StatusField::command_specific(command_specific::FEATURE_NOT_SAVEABLE).dnr());
    }
    match fid {
        feature::NUMBER_OF_QUEUES => {
            if ctrl.is_discovery() {
                return Err(invalid_field());
            }
            let nsqr = cdw11 & 0xffff;
            let ncqr = cdw11 >> 16;
            if nsqr == 0xffff || ncqr == 0xffff {
                return Err(invalid_field());
            }
            let mut st = ctrl.state.lock();
            if !st.io_queues.is_empty() {
                return Err(StatusField::generic(generic::COMMAND_SEQUENCE_ERROR).dnr());
            }
            let wanted = nsqr.max(ncqr) + 1;
            let granted = wanted.min(u32::from(shared.settings.max_io_queues)) as u16;
            st.io_queues_allowed = granted;
            let v = u32::from(granted - 1);
            Ok(v | (v << 16))
        }
        feature::KEEP_ALIVE_TIMER => {
            ctrl.set_kato(cdw11, now);
            Ok(0)
        }
        feature::ASYNC_EVENT_CONFIG => {
            ctrl.state.lock().async_event_config = cdw11;
            Ok(0)
        }
        feature::VOLATILE_WRITE_CACHE if !ctrl.is_discovery() => {
            Err(StatusField::command_specific(command_specific::FEATURE_NOT_CHANGEABLE).dnr())
        }
        _ => Err(invalid_field()),
    }
}

/// Get Features: dword 0 of the completion.
pub(crate) fn get_features(ctrl: &Controller, fid: u8, sel: u8) -> Result<u32, StatusField> {
    let known = match fid {
        feature::NUMBER_OF_QUEUES | feature::VOLATILE_WRITE_CACHE => !ctrl.is_discovery(),
        feature::KEEP_ALIVE_TIMER | feature::ASYNC_EVENT_CONFIG => true,
        _ => false,
    };
    if !known || sel > 3 {
        return Err(invalid_field());
    }
    if sel == 3 {
        // Supported capabilities: changeable (bit 2), not saveable, not namespace specific.
        return Ok(if fid == feature::VOLATILE_WRITE_CACHE { 0 } else { 0x4 });
    }
    let st = ctrl.state.lock();
    Ok(match fid {
        feature::NUMBER_OF_QUEUES => {
            let v = u32::from(st.io_queues_allowed.saturating_sub(1));
            v | (v << 16)
        }
        feature::VOLATILE_WRITE_CACHE => 1,
        feature::KEEP_ALIVE_TIMER => st.kato_ms,
        _ => st.async_event_config,
    })
}
