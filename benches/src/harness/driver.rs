//! The driver: threads, each with its own connection and a current-thread runtime running
//! `outstanding` operations at once, drawing operations from the YCSB workload and timing them.

use super::load_order::LoadOrder;
use super::system::{ClientCounters, SystemClient};
use crate::systems::ditto::{DittoClient, DittoConfig};
use crate::systems::memcached::MemcachedClient;
use crate::ycsb::{thread_operation_count, verify_value, Op, OpKind, OpStream, Workload};
use hdrhistogram::Histogram;
use scalio_client::{Client, ClientConfig};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a driver thread opens its connection to the system under test.
#[derive(Clone)]
pub enum Connector {
    Scalio { addr: String, config: ClientConfig },
    Ditto { addr: String },
    Memcached { addr: String },
}

impl Connector {
    async fn connect(&self) -> Result<SystemClient, String> {
        match self {
            Connector::Scalio { addr, config } => {
                Client::connect(addr, config.clone()).await.map(SystemClient::Scalio).map_err(|e| e.to_string())
            }
            Connector::Ditto { addr } => DittoClient::connect(addr, DittoConfig::default())
                .await
                .map(SystemClient::Ditto)
                .map_err(|e| e.to_string()),
            Connector::Memcached { addr } => {
                MemcachedClient::connect(addr, 1).await.map(SystemClient::Memcached).map_err(|e| e.to_string())
            }
        }
    }
}

/// The operation names YCSB reports.
pub fn kind_name(kind: OpKind) -> &'static str {
    match kind {
        OpKind::Read => "READ",
        OpKind::Update => "UPDATE",
        OpKind::Insert => "INSERT",
        OpKind::ReadModifyWrite => "READ-MODIFY-WRITE",
    }
}

/// Latency histograms (nanoseconds) by operation name.
#[derive(Default)]
pub struct Histograms {
    pub by_kind: BTreeMap<&'static str, Histogram<u64>>,
}

impl Histograms {
    fn record(&mut self, kind: &'static str, ns: u64) {
        self.by_kind
            .entry(kind)
            .or_insert_with(|| Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("histogram bounds"))
            .saturating_record(ns.max(1));
    }

    fn merge(&mut self, other: Histograms) {
        for (k, h) in other.by_kind {
            match self.by_kind.get_mut(k) {
                Some(mine) => mine.add(&h).expect("same bounds"),
                None => {
                    self.by_kind.insert(k, h);
                }
            }
        }
    }

    /// All operations together.
    pub fn all(&self) -> Option<Histogram<u64>> {
        let mut it = self.by_kind.values();
        let mut total = it.next()?.clone();
        for h in it {
            total.add(h).expect("same bounds");
        }
        Some(total)
    }
}

/// What one phase measured.
pub struct PhaseResult {
    pub seconds: f64,
    pub operations: u64,
    /// Operations that failed (including reads that returned a value that was never written).
    pub errors: u64,
    /// Reads of a key that had no value.
    pub not_found: u64,
    pub first_error: Option<String>,
    pub histograms: Histograms,
    pub counters: ClientCounters,
}

/// Which phase to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Insert every record of the load range.
    Load,
    /// `operations` operations drawn from the workload.
    Run { operations: u64 },
}

/// Operations done so far, for the progress line.
pub struct Progress {
    done: AtomicU64,
    stop: AtomicBool,
}

impl Progress {
    /// Shows a progress line on stderr (only if it is a terminal) until the returned guard drops.
    pub fn start(label: &'static str, total: u64) -> ProgressGuard {
        let p = Arc::new(Progress { done: AtomicU64::new(0), stop: AtomicBool::new(false) });
        // SAFETY: isatty only inspects the file descriptor.
        let tty = unsafe { libc::isatty(2) } == 1;
        let thread = tty.then(|| {
            let p = p.clone();
            std::thread::spawn(move || {
                let t0 = Instant::now();
                while !p.stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(200));
                    let done = p.done.load(Ordering::Relaxed);
                    let rate = done as f64 / t0.elapsed().as_secs_f64().max(1e-9);
                    let pct = if total > 0 { 100.0 * done as f64 / total as f64 } else { 0.0 };
                    eprint!("\r[{label}] {done}/{total} ops ({pct:.0}%), {:.1} kops/s   ", rate / 1e3);
                }
                eprint!("\r{:70}\r", "");
            })
        });
        ProgressGuard { progress: p, thread }
    }
}

pub struct ProgressGuard {
    progress: Arc<Progress>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ProgressGuard {
    fn drop(&mut self) {
        self.progress.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Per-thread state shared by the thread's tasks.
struct ThreadState {
    stream: RefCell<OpStream>,
    /// The load's order of records, shared by the threads (None: YCSB's).
    order: Option<Arc<LoadOrder>>,
    remaining: Cell<u64>,
    next_version: Cell<u64>,
    histograms: RefCell<Histograms>,
    errors: Cell<u64>,
    not_found: Cell<u64>,
    first_error: RefCell<Option<String>>,
}

impl ThreadState {
    fn fail(&self, e: String) {
        self.errors.set(self.errors.get() + 1);
        self.first_error.borrow_mut().get_or_insert(e);
    }
}

/// Runs one phase with `threads` threads of `outstanding` operations each.
///
/// A load with an `order` inserts the records in that order instead of YCSB's.
#[allow(clippy::too_many_arguments)]
pub fn run_phase(
    phase: Phase,
    connector: &Connector,
    workload: &Workload,
    threads: usize,
    outstanding: usize,
    seed: u64,
    progress: &ProgressGuard,
    order: Option<Arc<LoadOrder>>,
) -> Result<PhaseResult, String> {
    let start_line = Arc::new(std::sync::Barrier::new(threads + 1));
    let mut handles = Vec::new();
    for t in 0..threads {
        let (connector, workload, start_line) = (connector.clone(), workload.clone(), start_line.clone());
        let (progress, order) = (progress.progress.clone(), order.clone());
        let seed = seed ^ (t as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        handles.push(
            std::thread::Builder::new()
                .name(format!("ycsb-{t}"))
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| e.to_string())?;
                    let local = tokio::task::LocalSet::new();
                    local.block_on(&rt, async move {
                        let client = connector.connect().await;
                        start_line.wait();
                        let client = client?;
                        let ops = match phase {
                            Phase::Load => u64::MAX,
                            Phase::Run { operations } => thread_operation_count(operations, t as u64, threads as u64),
                        };
                        let state = Rc::new(ThreadState {
                            stream: RefCell::new(workload.thread_state(t as u64, seed)),
                            order,
                            remaining: Cell::new(ops),
                            next_version: Cell::new(((t as u64) + 1) << 40),
                            histograms: RefCell::new(Histograms::default()),
                            errors: Cell::new(0),
                            not_found: Cell::new(0),
                            first_error: RefCell::new(None),
                        });
                        let tasks: Vec<_> = (0..outstanding.max(1))
                            .map(|_| {
                                let (state, client, progress) = (state.clone(), client.clone(), progress.clone());
                                tokio::task::spawn_local(lane(phase, state, client, progress))
                            })
                            .collect();
                        for task in tasks {
                            task.await.map_err(|e| e.to_string())?;
                        }
                        let state = Rc::try_unwrap(state).map_err(|_| "a lane outlived its thread".to_string())?;
                        Ok::<_, String>((
                            state.histograms.into_inner(),
                            state.errors.get(),
                            state.not_found.get(),
                            state.first_error.into_inner(),
                            client.counters(),
                        ))
                    })
                })
                .map_err(|e| e.to_string())?,
        );
    }
    start_line.wait();
    let t0 = Instant::now();
    let mut result = PhaseResult {
        seconds: 0.0,
        operations: 0,
        errors: 0,
        not_found: 0,
        first_error: None,
        histograms: Histograms::default(),
        counters: ClientCounters::default(),
    };
    let mut failure = None;
    for h in handles {
        match h.join().map_err(|_| "a driver thread panicked".to_string()).and_then(|r| r) {
            Ok((hist, errors, not_found, first, counters)) => {
                result.histograms.merge(hist);
                result.errors += errors;
                result.not_found += not_found;
                if result.first_error.is_none() {
                    result.first_error = first;
                }
                result.counters.add(&counters);
            }
            Err(e) => failure = Some(e),
        }
    }
    result.seconds = t0.elapsed().as_secs_f64();
    if let Some(e) = failure {
        return Err(e);
    }
    result.operations = result.histograms.by_kind.values().map(|h| h.len()).sum();
    Ok(result)
}

/// One operation in flight, over and over.
async fn lane(phase: Phase, state: Rc<ThreadState>, client: SystemClient, progress: Arc<Progress>) {
    let workload = state.stream.borrow().workload().clone();
    let mut value = vec![0u8; workload.value_len()];
    loop {
        let op = match phase {
            Phase::Load => {
                let next = match &state.order {
                    Some(order) => {
                        order.next().map(|keynum| Op { kind: OpKind::Insert, keynum, key: workload.store_key(keynum) })
                    }
                    None => state.stream.borrow_mut().next_load_key(),
                };
                match next {
                    Some(op) => op,
                    None => return,
                }
            }
            Phase::Run { .. } => {
                if state.remaining.get() == 0 {
                    return;
                }
                state.remaining.set(state.remaining.get() - 1);
                state.stream.borrow_mut().next_op()
            }
        };
        let version = if phase == Phase::Load {
            0
        } else {
            let v = state.next_version.get();
            state.next_version.set(v + 1);
            v
        };
        let kind = if phase == Phase::Load { OpKind::Insert } else { op.kind };
        let start = Instant::now();
        let outcome = match kind {
            OpKind::Read => read(&client, &op.key, &state).await,
            OpKind::Update | OpKind::Insert => {
                workload.fill_value(op.keynum, version, &mut value);
                client.write(&op.key, &value).await
            }
            OpKind::ReadModifyWrite => match read(&client, &op.key, &state).await {
                Ok(()) => {
                    workload.fill_value(op.keynum, version, &mut value);
                    client.write(&op.key, &value).await
                }
                Err(e) => Err(e),
            },
        };
        let ns = start.elapsed().as_nanos() as u64;
        if kind == OpKind::Insert && phase != Phase::Load {
            if let Err(e) = state.stream.borrow().ack_insert(op.keynum) {
                state.fail(format!("acknowledging insert {}: {e}", op.keynum));
            }
        }
        match outcome {
            Ok(()) => state.histograms.borrow_mut().record(kind_name(kind), ns),
            Err(e) => state.fail(e),
        }
        progress.done.fetch_add(1, Ordering::Relaxed);
    }
}

/// A read, checking that the value is one the workload wrote for this key.
async fn read(client: &SystemClient, key: &[u8; 16], state: &ThreadState) -> Result<(), String> {
    match client.read(key).await? {
        Some(v) => verify_value(key, &v).map(|_| ()).map_err(|e| format!("read a wrong value: {e}")),
        None => {
            state.not_found.set(state.not_found.get() + 1);
            Ok(())
        }
    }
}
