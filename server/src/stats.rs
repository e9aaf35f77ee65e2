//! Counters by role — workers, NIC, SSD I/O threads, NVMe target — that prove where work
//! happened, and the state every server thread shares.
//!
//! STATS returns these names (all monotonic counters unless noted):
//!
//! | name | meaning |
//! |------|---------|
//! | `rpc_{hello,meta_get,get,put,update,delete,stats}` | RPCs received, by type |
//! | `rpc_bad` | malformed requests |
//! | `table_reservations`, `table_already_cached`, `table_fill_in_progress`, `table_bucket_busy` | META_GET outcomes at the cache table |
//! | `table_evictions`, `table_expired_reclaims`, `table_invalidations` | cache-table maintenance |
//! | `table_quota_refusals` | META_GETs given no reservation because their client already held `cache.reservations_per_client` unfilled ones |
//! | `table_released_on_close` | unfilled reservations ended early because their client's connection closed |
//! | `fill_windows_granted`, `fill_windows_refused` | windows granted with reservations (`cache.fill_windows`), and grants the backend refused (that reservation goes unfilled) |
//! | `fill_windows_revoked_done`, `fill_windows_revoked_rebound`, `fill_windows_revoked_closed`, `fill_windows_in_force` (gauge) | windows revoked after the fill, lease end or invalidation (the sweep), when their slot was re-bound, when their connection closed; windows in force now |
//! | `table_server_fills`, `table_server_fills_stale` | slots the server filled itself (`cache.client_fills = false`), and server fills dropped because the reservation was invalidated or taken over meanwhile |
//! | `ssd_reads_{worker,target,client}`, `ssd_read_blocks_{...}` | SSD reads by who issued them |
//! | `ssd_writes_{worker,target,client}`, `ssd_write_blocks_{...}` | SSD writes by who issued them |
//! | `store_batches`, `store_batched_writes` | write batches and the writes in them |
//! | `store_server_gets` | LEED-style reads served by workers |
//! | `gc_bucket_steps`, `gc_value_steps`, `gc_moved_chains`, `gc_moved_records` | garbage collection |
//! | `store_stale_retries`, `store_corrupt_reads`, `store_no_space` | reads retried after GC, unreadable blocks, refused writes |
//! | `rpc_overloaded`, `store_overloaded` | requests refused because a worker's inbox or a store's queue was full (`[limits]`) |
//! | `store_writes_stopped` (gauge) | SSDs whose store stopped taking writes after a device error (fail-stop) |
//! | `nic_reads`, `nic_writes`, `nic_bytes_read`, `nic_bytes_written`, `nic_rpcs` | one-sided operations and RPCs served by the software NIC |
//! | `nic_remote_errors`, `nic_protocol_errors`, `nic_connections` (gauge) | NIC errors and open connections |
//! | `nic_connections_refused` | connections refused: over `max_connections`, or without the shared secret |
//! | `cpu_worker_ns`, `cpu_nic_ns`, `cpu_io_ns`, `cpu_target_ns` | CPU time of worker, NIC, SSD I/O and NVMe target threads |
//! | `worker_virtual_ns` | emulated worker time charged for SSD I/O (emulated testbed only) |

use crate::device::{Issuer, Ssd};
use crate::store::StoreCounters;
use crate::table::CacheTable;
use parking_lot::Mutex;
use scalio_common::cputime::CpuGroup;
use scalio_common::fabric::tcp::TcpNic;
use scalio_common::rpc::{Op, ServerInfo, Stats};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Extra counters a server component (such as the NVMe target) contributes to STATS.
pub trait StatsSource: Send + Sync {
    fn append(&self, out: &mut Vec<(String, u64)>);
}

/// What every server thread shares.
pub struct ServerShared {
    pub(crate) info: ServerInfo,
    pub(crate) table: Option<Arc<CacheTable>>,
    pub(crate) ssds: Vec<Arc<Ssd>>,
    pub(crate) store_counters: Vec<Arc<StoreCounters>>,
    /// Indexed by op code (1 to 8).
    rpcs: [AtomicU64; Op::CODES],
    bad_requests: AtomicU64,
    inbox_refusals: AtomicU64,
    worker_cpu: Arc<CpuGroup>,
    pub(crate) io_cpu: Arc<CpuGroup>,
    worker_virtual_ns: AtomicU64,
    pub(crate) nic: Mutex<Option<TcpNic>>,
    pub(crate) extra: Mutex<Vec<Arc<dyn StatsSource>>>,
}

impl ServerShared {
    pub(crate) fn new(
        info: ServerInfo,
        table: Option<Arc<CacheTable>>,
        ssds: Vec<Arc<Ssd>>,
        store_counters: Vec<Arc<StoreCounters>>,
        io_cpu: Arc<CpuGroup>,
    ) -> ServerShared {
        ServerShared {
            info,
            table,
            ssds,
            store_counters,
            rpcs: Default::default(),
            bad_requests: AtomicU64::new(0),
            inbox_refusals: AtomicU64::new(0),
            worker_cpu: CpuGroup::new(),
            io_cpu,
            worker_virtual_ns: AtomicU64::new(0),
            nic: Mutex::new(None),
            extra: Mutex::new(Vec::new()),
        }
    }

    pub fn info(&self) -> &ServerInfo {
        &self.info
    }

    pub fn ssds(&self) -> &[Arc<Ssd>] {
        &self.ssds
    }

    pub(crate) fn worker_cpu(&self) -> &Arc<CpuGroup> {
        &self.worker_cpu
    }

    pub(crate) fn count_rpc(&self, op: Op) {
        self.rpcs[op as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_inbox_refusal(&self) {
        self.inbox_refusals.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_bad_request(&self) {
        self.bad_requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_worker_virtual_ns(&self, ns: u64) {
        self.worker_virtual_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// A snapshot of every counter.
    pub fn stats(&self) -> Stats {
        let mut c: Vec<(String, u64)> = Vec::with_capacity(64);
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        for op in Op::ALL {
            c.push((format!("rpc_{}", op.name()), get(&self.rpcs[op as usize])));
        }
        c.push(("rpc_bad".into(), get(&self.bad_requests)));
        if let Some(t) = &self.table {
            let tc = t.counters();
            for (n, v) in [
                ("table_reservations", &tc.reservations),
                ("table_already_cached", &tc.already_cached),
                ("table_fill_in_progress", &tc.fill_in_progress),
                ("table_bucket_busy", &tc.bucket_busy),
                ("table_evictions", &tc.evictions),
                ("table_expired_reclaims", &tc.expired_reclaims),
                ("table_invalidations", &tc.invalidations),
                ("table_quota_refusals", &tc.quota_refusals),
                ("table_released_on_close", &tc.released),
                ("table_server_fills", &tc.server_fills),
                ("table_server_fills_stale", &tc.server_fills_stale),
            ] {
                c.push((n.into(), get(v)));
            }
        }
        for who in Issuer::ALL {
            let sum = |f: &dyn Fn(&Ssd) -> u64| self.ssds.iter().map(|s| f(s)).sum::<u64>();
            c.push((format!("ssd_reads_{}", who.name()), sum(&|s| s.counters().reads(who))));
            c.push((format!("ssd_read_blocks_{}", who.name()), sum(&|s| s.counters().read_blocks(who))));
            c.push((format!("ssd_writes_{}", who.name()), sum(&|s| s.counters().writes(who))));
            c.push((format!("ssd_write_blocks_{}", who.name()), sum(&|s| s.counters().write_blocks(who))));
        }
        let store =
            |f: &dyn Fn(&StoreCounters) -> &AtomicU64| -> u64 { self.store_counters.iter().map(|s| get(f(s))).sum() };
        c.push(("store_batches".into(), store(&|s| &s.batches)));
        c.push(("store_batched_writes".into(), store(&|s| &s.batched_writes)));
        c.push(("store_server_gets".into(), store(&|s| &s.server_gets)));
        c.push(("gc_bucket_steps".into(), store(&|s| &s.gc_bucket_steps)));
        c.push(("gc_value_steps".into(), store(&|s| &s.gc_value_steps)));
        c.push(("gc_moved_chains".into(), store(&|s| &s.gc_moved_chains)));
        c.push(("gc_moved_records".into(), store(&|s| &s.gc_moved_records)));
        c.push(("store_stale_retries".into(), store(&|s| &s.stale_retries)));
        c.push(("store_corrupt_reads".into(), store(&|s| &s.corrupt_reads)));
        c.push(("store_no_space".into(), store(&|s| &s.no_space)));
        c.push(("rpc_overloaded".into(), get(&self.inbox_refusals)));
        c.push(("store_overloaded".into(), store(&|s| &s.overloaded)));
        c.push(("store_writes_stopped".into(), store(&|s| &s.writes_stopped)));
        let (nic, nic_cpu) = match &*self.nic.lock() {
            Some(n) => (n.stats(), n.cpu_ns()),
            None => Default::default(),
        };
        c.push(("nic_reads".into(), nic.reads));
        c.push(("nic_writes".into(), nic.writes));
        c.push(("nic_bytes_read".into(), nic.bytes_read));
        c.push(("nic_bytes_written".into(), nic.bytes_written));
        c.push(("nic_rpcs".into(), nic.rpcs));
        c.push(("nic_remote_errors".into(), nic.remote_access_errors));
        c.push(("nic_protocol_errors".into(), nic.protocol_errors));
        c.push(("nic_connections_refused".into(), nic.connections_refused));
        c.push(("nic_connections".into(), nic.connections_open));
        c.push(("cpu_worker_ns".into(), self.worker_cpu.total_ns()));
        c.push(("cpu_nic_ns".into(), nic_cpu));
        c.push(("cpu_io_ns".into(), self.io_cpu.total_ns()));
        c.push(("worker_virtual_ns".into(), get(&self.worker_virtual_ns)));
        let extra = self.extra.lock().clone();
        for e in extra {
            e.append(&mut c);
        }
        if !c.iter().any(|(n, _)| n == "cpu_target_ns") {
            c.push(("cpu_target_ns".into(), 0));
        }
        Stats { counters: c }
    }
}
