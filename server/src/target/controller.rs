//! Subsystems and controllers: what is shared by the queues (connections) of one association.
//!
//! A controller is created by a Connect on an admin queue (dynamic controller model) and lives
//! until that admin connection goes, its host stops sending Keep Alive, or the target stops.
//! Its I/O queues are other connections that name it by controller ID in their Connect.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use scalio_common::cputime::CpuGroup;
use scalio_common::nvme::fabrics::{Cc, Csts};
use scalio_common::nvme::Digests;

use super::namespace::TargetNamespace;
use super::stats::TargetCounters;

/// Controller IDs are allocated from 1 up to this (0xFFF0..0xFFFF are reserved).
const MAX_CNTLID: u16 = 0xFFEF;

/// Tunables, fixed when the target starts.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Maximum queue entries, 0's based (CAP.MQES).
    pub mqes: u16,
    pub max_io_queues: u16,
    /// MDTS in 4 KiB pages (2^mdts), and the byte limit it means.
    pub mdts: u8,
    pub max_transfer: u32,
    /// In-capsule data accepted on I/O queues for I/O commands (IOCCSZ is derived from it).
    pub io_in_capsule: u32,
    /// In-capsule data accepted for admin and Fabrics commands (at least 8 KiB).
    pub admin_in_capsule: u32,
    pub maxh2cdata: u32,
    /// Largest data of one C2HData PDU.
    pub c2h_chunk: u32,
    /// Complete successful reads with the C2HData SUCCESS flag when the host disabled SQ flow
    /// control (saves a response capsule per read).
    pub c2h_success: bool,
    /// Per-connection bound on data buffered for commands in flight.
    pub max_inflight_bytes: usize,
    /// Per-connection bound on encoded output not yet written to the socket before new data
    /// commands wait.
    pub output_high_water: usize,
    pub cpda: u8,
    /// Digests the target agrees to when a host asks for them.
    pub digests_allowed: Digests,
    /// Keep Alive Timeout applied to discovery controllers whose host asks for none.
    pub discovery_kato_ms: u32,
    pub model: String,
    pub firmware: String,
}

/// An exported NVM subsystem: one namespace (NSID 1).
pub(crate) struct Subsystem {
    pub nqn: String,
    pub namespace: Arc<dyn TargetNamespace>,
    pub allow_writes: bool,
    pub serial: String,
    /// Namespace globally unique identifier, derived from the NQN.
    pub nguid: [u8; 16],
    pub uuid: [u8; 16],
}

impl Subsystem {
    pub fn new(nqn: String, namespace: Arc<dyn TargetNamespace>, allow_writes: bool) -> Subsystem {
        let h = xxhash_rust::xxh3::xxh3_128(nqn.as_bytes()).to_le_bytes();
        let mut uuid = xxhash_rust::xxh3::xxh3_128_with_seed(nqn.as_bytes(), 0x005c_a110).to_le_bytes();
        uuid[6] = (uuid[6] & 0x0f) | 0x40; // version 4 layout
        uuid[8] = (uuid[8] & 0x3f) | 0x80; // RFC 4122 variant
        let serial = format!("{:016x}", xxhash_rust::xxh64::xxh64(nqn.as_bytes(), 0));
        Subsystem { nqn, namespace, allow_writes, serial, nguid: h, uuid }
    }
}

/// Which kind of controller an association has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ControllerKind {
    Discovery,
    /// An I/O controller of the subsystem at this index.
    Io(usize),
}

/// Mutable controller state, behind the controller's lock.
#[derive(Debug)]
pub(crate) struct ControllerState {
    pub cc: Cc,
    pub csts: Csts,
    pub kato_ms: u32,
    pub keep_alive_deadline: Option<Instant>,
    /// I/O queues granted by Set Features (Number of Queues).
    pub io_queues_allowed: u16,
    /// I/O queue IDs currently connected.
    pub io_queues: BTreeSet<u16>,
    /// Asynchronous Event Configuration feature.
    pub async_event_config: u32,
    /// Bumped by a controller reset (CC.EN 1 -> 0), which deletes the I/O queues.
    pub reset_epoch: u64,
}

pub(crate) struct Controller {
    pub cntlid: u16,
    pub kind: ControllerKind,
    pub subnqn: String,
    pub hostnqn: String,
    pub hostid: [u8; 16],
    pub state: Mutex<ControllerState>,
    dead: AtomicBool,
}

impl Controller {
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    pub fn is_discovery(&self) -> bool {
        self.kind == ControllerKind::Discovery
    }

    pub fn ready(&self) -> bool {
        self.state.lock().csts.ready
    }

    /// Restarts the Keep Alive timer (a Keep Alive command arrived, or the KATO changed).
    pub fn keep_alive(&self, now: Instant) {
        let mut st = self.state.lock();
        st.keep_alive_deadline = deadline(now, st.kato_ms);
    }

    pub fn set_kato(&self, kato_ms: u32, now: Instant) {
        let mut st = self.state.lock();
        st.kato_ms = kato_ms;
        st.keep_alive_deadline = deadline(now, kato_ms);
    }

    pub fn keep_alive_expired(&self, now: Instant) -> bool {
        self.state.lock().keep_alive_deadline.is_some_and(|d| now >= d)
    }

    pub fn reset_epoch(&self) -> u64 {
        self.state.lock().reset_epoch
    }
}

fn deadline(now: Instant, kato_ms: u32) -> Option<Instant> {
    (kato_ms > 0).then(|| now + Duration::from_millis(u64::from(kato_ms)))
}

/// What the target's threads share.
pub(crate) struct TargetShared {
    pub settings: Settings,
    pub subsystems: Vec<Subsystem>,
    /// Where the I/O controllers listen (advertised in the discovery log).
    pub io_listen: SocketAddr,
    controllers: Mutex<Registry>,
    pub counters: TargetCounters,
    pub cpu: Arc<CpuGroup>,
}

#[derive(Default)]
struct Registry {
    controllers: HashMap<u16, Arc<Controller>>,
    next_cntlid: u16,
}

/// Parameters of a new controller, from an admin queue's Connect.
pub(crate) struct NewController {
    pub kind: ControllerKind,
    pub subnqn: String,
    pub hostnqn: String,
    pub hostid: [u8; 16],
    pub kato_ms: u32,
}

impl TargetShared {
    pub fn new(settings: Settings, subsystems: Vec<Subsystem>, io_listen: SocketAddr) -> TargetShared {
        TargetShared {
            settings,
            subsystems,
            io_listen,
            controllers: Mutex::new(Registry { controllers: HashMap::new(), next_cntlid: 1 }),
            counters: TargetCounters::default(),
            cpu: CpuGroup::new(),
        }
    }

    pub fn subsystem_index(&self, nqn: &str) -> Option<usize> {
        self.subsystems.iter().position(|s| s.nqn == nqn)
    }

    /// Creates a controller with a fresh controller ID, or `None` if all IDs are in use.
    pub fn create_controller(&self, p: NewController, now: Instant) -> Option<Arc<Controller>> {
        let mut reg = self.controllers.lock();
        let mut id = reg.next_cntlid;
        for _ in 0..MAX_CNTLID {
            if id == 0 || id > MAX_CNTLID {
                id = 1;
            }
            if !reg.controllers.contains_key(&id) {
                break;
            }
            id += 1;
        }
        if reg.controllers.contains_key(&id) || id == 0 || id > MAX_CNTLID {
            return None;
        }
        reg.next_cntlid = id.wrapping_add(1);
        let ctrl = Arc::new(Controller {
            cntlid: id,
            kind: p.kind,
            subnqn: p.subnqn,
            hostnqn: p.hostnqn,
            hostid: p.hostid,
            state: Mutex::new(ControllerState {
                cc: Cc::default(),
                csts: Csts::default(),
                kato_ms: p.kato_ms,
                keep_alive_deadline: deadline(now, p.kato_ms),
                io_queues_allowed: self.settings.max_io_queues,
                io_queues: BTreeSet::new(),
                async_event_config: 0,
                reset_epoch: 0,
            }),
            dead: AtomicBool::new(false),
        });
        reg.controllers.insert(id, ctrl.clone());
        TargetCounters::add(&self.counters.controllers_created, 1);
        TargetCounters::add(&self.counters.controllers_active, 1);
        Some(ctrl)
    }

    pub fn find_controller(&self, cntlid: u16) -> Option<Arc<Controller>> {
        self.controllers.lock().controllers.get(&cntlid).cloned()
    }

    /// Ends an association: its I/O queues see the controller dead and close.
    pub fn destroy_controller(&self, ctrl: &Controller) {
        if !ctrl.dead.swap(true, Ordering::AcqRel) {
            self.controllers.lock().controllers.remove(&ctrl.cntlid);
            TargetCounters::sub(&self.counters.controllers_active, 1);
        }
    }
}
