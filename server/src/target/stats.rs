//! The target's own counters, kept apart from the KV workers' so that a run shows how much of
//! the miss path the "offload engine" served and at what CPU cost.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use scalio_common::cputime::CpuGroup;

/// Kinds of commands counted separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandKind {
    Connect,
    PropertyGet,
    PropertySet,
    Disconnect,
    Identify,
    GetLogPage,
    SetFeatures,
    GetFeatures,
    KeepAlive,
    AsyncEventRequest,
    Abort,
    Read,
    Write,
    Flush,
    /// Anything refused with Invalid Opcode.
    Unsupported,
}

impl CommandKind {
    pub const ALL: [CommandKind; 15] = [
        CommandKind::Connect,
        CommandKind::PropertyGet,
        CommandKind::PropertySet,
        CommandKind::Disconnect,
        CommandKind::Identify,
        CommandKind::GetLogPage,
        CommandKind::SetFeatures,
        CommandKind::GetFeatures,
        CommandKind::KeepAlive,
        CommandKind::AsyncEventRequest,
        CommandKind::Abort,
        CommandKind::Read,
        CommandKind::Write,
        CommandKind::Flush,
        CommandKind::Unsupported,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CommandKind::Connect => "connect",
            CommandKind::PropertyGet => "property_get",
            CommandKind::PropertySet => "property_set",
            CommandKind::Disconnect => "disconnect",
            CommandKind::Identify => "identify",
            CommandKind::GetLogPage => "get_log_page",
            CommandKind::SetFeatures => "set_features",
            CommandKind::GetFeatures => "get_features",
            CommandKind::KeepAlive => "keep_alive",
            CommandKind::AsyncEventRequest => "async_event_request",
            CommandKind::Abort => "abort",
            CommandKind::Read => "read",
            CommandKind::Write => "write",
            CommandKind::Flush => "flush",
            CommandKind::Unsupported => "unsupported",
        }
    }
}

/// Live counters, shared by the target's threads.
#[derive(Debug, Default)]
pub(crate) struct TargetCounters {
    pub connections_accepted: AtomicU64,
    pub connections_active: AtomicU64,
    pub controllers_created: AtomicU64,
    pub controllers_active: AtomicU64,
    commands: [AtomicU64; CommandKind::ALL.len()],
    pub commands_failed: AtomicU64,
    pub blocks_read: AtomicU64,
    pub blocks_written: AtomicU64,
    pub bytes_to_host: AtomicU64,
    pub bytes_from_host: AtomicU64,
    pub term_reqs_sent: AtomicU64,
    pub term_reqs_received: AtomicU64,
    pub keep_alive_expired: AtomicU64,
}

impl TargetCounters {
    pub fn command(&self, kind: CommandKind) {
        let i = CommandKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        self.commands[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self, cpu: &Arc<CpuGroup>) -> TargetStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TargetStats {
            connections_accepted: get(&self.connections_accepted),
            connections_active: get(&self.connections_active),
            controllers_created: get(&self.controllers_created),
            controllers_active: get(&self.controllers_active),
            commands: CommandKind::ALL.iter().zip(&self.commands).map(|(k, c)| (*k, get(c))).collect(),
            commands_failed: get(&self.commands_failed),
            blocks_read: get(&self.blocks_read),
            blocks_written: get(&self.blocks_written),
            bytes_to_host: get(&self.bytes_to_host),
            bytes_from_host: get(&self.bytes_from_host),
            term_reqs_sent: get(&self.term_reqs_sent),
            term_reqs_received: get(&self.term_reqs_received),
            keep_alive_expired: get(&self.keep_alive_expired),
            cpu_ns: cpu.total_ns(),
        }
    }
}

/// A snapshot of the target's counters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TargetStats {
    pub connections_accepted: u64,
    pub connections_active: u64,
    pub controllers_created: u64,
    pub controllers_active: u64,
    /// Commands received, by kind.
    pub commands: Vec<(CommandKind, u64)>,
    /// Commands completed with an error status.
    pub commands_failed: u64,
    /// 512-byte blocks read from and written to namespaces.
    pub blocks_read: u64,
    pub blocks_written: u64,
    /// Data bytes sent in C2HData PDUs and received in-capsule or in H2CData PDUs.
    pub bytes_to_host: u64,
    pub bytes_from_host: u64,
    /// C2HTermReqs sent (fatal transport errors found in a host's PDUs) and H2CTermReqs received.
    pub term_reqs_sent: u64,
    pub term_reqs_received: u64,
    /// Controllers torn down because their host stopped sending Keep Alive.
    pub keep_alive_expired: u64,
    /// CPU time of the target's threads.
    pub cpu_ns: u64,
}

impl TargetStats {
    /// Commands of one kind.
    pub fn commands_of(&self, kind: CommandKind) -> u64 {
        self.commands.iter().find(|(k, _)| *k == kind).map_or(0, |(_, n)| *n)
    }

    /// Named counters (`target.*`), in the form the server's STATS reply carries.
    pub fn counters(&self) -> Vec<(String, u64)> {
        let mut v = vec![
            ("target.connections_accepted".to_string(), self.connections_accepted),
            ("target.connections_active".to_string(), self.connections_active),
            ("target.controllers_created".to_string(), self.controllers_created),
            ("target.controllers_active".to_string(), self.controllers_active),
            ("target.commands_failed".to_string(), self.commands_failed),
            ("target.blocks_read".to_string(), self.blocks_read),
            ("target.blocks_written".to_string(), self.blocks_written),
            ("target.bytes_to_host".to_string(), self.bytes_to_host),
            ("target.bytes_from_host".to_string(), self.bytes_from_host),
            ("target.term_reqs_sent".to_string(), self.term_reqs_sent),
            ("target.term_reqs_received".to_string(), self.term_reqs_received),
            ("target.keep_alive_expired".to_string(), self.keep_alive_expired),
            ("target.cpu_ns".to_string(), self.cpu_ns),
        ];
        v.extend(self.commands.iter().map(|(k, n)| (format!("target.cmd.{}", k.name()), *n)));
        v
    }
}
