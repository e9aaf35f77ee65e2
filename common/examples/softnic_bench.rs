//! Measures the software NIC on loopback: READ latency and throughput, RPC round trip, and the
//! NIC's CPU time per READ.
//!
//! `cargo run --release -p scalio-common --example softnic_bench [-- SECONDS_PER_RUN]`

use scalio_common::fabric::tcp::{NicConfig, TcpNic, TcpQueuePair};
use scalio_common::fabric::{
    Access, Completion, IncomingRpc, MemoryRegion, QueuePair, RegionDesc, RegionTable, WorkRequest,
};
use std::collections::VecDeque;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

const READ_LEN: u32 = 896;
const REGION_LEN: usize = 16 << 20;
const SLOTS: u64 = (REGION_LEN / READ_LEN as usize) as u64;

fn main() {
    let secs: f64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(2.0);
    let run = Duration::from_secs_f64(secs);

    let regions = Arc::new(RegionTable::new());
    let region = Arc::new(MemoryRegion::new(REGION_LEN));
    let desc = regions.register(region, Access::READ_WRITE);
    // The echo service hands requests to a worker thread, as the server's does.
    let (to_worker, from_nic) = mpsc::channel::<IncomingRpc>();
    let worker = std::thread::spawn(move || {
        for rpc in from_nic {
            rpc.responder.reply(&rpc.payload);
        }
    });
    let to_worker = std::sync::Mutex::new(to_worker);
    let service = Arc::new(move |rpc: IncomingRpc| {
        let _ = to_worker.lock().expect("worker queue").send(rpc);
    });
    let nic = TcpNic::bind("127.0.0.1:0", regions, service, NicConfig::default()).expect("bind");
    let addr = nic.local_addr();
    println!("softnic on {addr}, 1 NIC thread, {READ_LEN}-byte READs, {secs} s per run");

    // READ round trip, 1 in flight.
    let qp = TcpQueuePair::connect(addr).expect("connect");
    let mut rng = Lcg(1);
    let mut lat = Vec::new();
    let start = Instant::now();
    while start.elapsed() < run {
        let t = Instant::now();
        qp.post(&[read_at(&desc, rng.slot())]).wait().expect("read");
        lat.push(t.elapsed().as_nanos() as u64);
    }
    print_latency("READ round trip, 1 in flight", &mut lat);

    // RPC echo round trip, 1 in flight.
    let msg = [0x5Au8; 64];
    let mut lat = Vec::new();
    let start = Instant::now();
    while start.elapsed() < run {
        let t = Instant::now();
        qp.call(&msg).wait().expect("rpc");
        lat.push(t.elapsed().as_nanos() as u64);
    }
    print_latency("RPC echo (64 B) round trip, 1 in flight", &mut lat);

    // READ throughput, 64 in flight per thread.
    let qp = Arc::new(qp);
    for (threads, shared_qp) in [(1, true), (4, true), (4, false)] {
        let before = nic.stats();
        let cpu_before = nic.cpu_ns();
        let t0 = Instant::now();
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let qp: Arc<TcpQueuePair> =
                    if shared_qp { qp.clone() } else { Arc::new(TcpQueuePair::connect(addr).expect("connect")) };
                std::thread::spawn(move || pipelined_reads(&*qp, &desc, 64, run, i as u64 + 2))
            })
            .collect();
        let done: u64 = handles.into_iter().map(|h| h.join().expect("reader thread")).sum();
        let elapsed = t0.elapsed().as_secs_f64();
        // Let the NIC thread's CPU meter catch up (it ticks at least every millisecond).
        std::thread::sleep(Duration::from_millis(20));
        let served = nic.stats().reads - before.reads;
        let cpu = nic.cpu_ns() - cpu_before;
        assert_eq!(served, done, "every READ was served by the NIC");
        let how = if shared_qp { "one shared queue pair" } else { "a queue pair each" };
        println!(
            "READ throughput, 64 in flight per thread, {threads} thread(s), {how}: {:.0} READs/s ({:.1} MB/s), \
             NIC CPU {:.0} ns/READ ({:.0}% of a core)",
            done as f64 / elapsed,
            done as f64 * f64::from(READ_LEN) / elapsed / 1e6,
            cpu as f64 / served as f64,
            cpu as f64 / 1e9 / elapsed * 100.0,
        );
    }
    drop(qp);
    drop(nic);
    worker.join().expect("worker");
}

fn read_at(desc: &RegionDesc, slot: u64) -> WorkRequest<'static> {
    WorkRequest::Read { remote: desc.at(slot * u64::from(READ_LEN)), len: READ_LEN }
}

/// Keeps `depth` READs in flight for `run`; returns how many completed.
fn pipelined_reads(qp: &dyn QueuePair, desc: &RegionDesc, depth: usize, run: Duration, seed: u64) -> u64 {
    let mut rng = Lcg(seed);
    let mut in_flight: VecDeque<Completion<Vec<u8>>> = VecDeque::with_capacity(depth);
    let start = Instant::now();
    let mut done = 0;
    while start.elapsed() < run {
        while in_flight.len() < depth {
            in_flight.push_back(qp.post(&[read_at(desc, rng.slot())]));
        }
        let data = in_flight.pop_front().expect("in flight").wait().expect("read");
        assert_eq!(data.len(), READ_LEN as usize);
        done += 1;
    }
    for c in in_flight {
        c.wait().expect("read");
        done += 1;
    }
    done
}

fn print_latency(what: &str, ns: &mut [u64]) {
    ns.sort_unstable();
    let pct = |p: f64| ns[((ns.len() as f64 * p) as usize).min(ns.len() - 1)] as f64 / 1000.0;
    let mean = ns.iter().sum::<u64>() as f64 / ns.len() as f64 / 1000.0;
    println!("{what}: mean {mean:.1} us, p50 {:.1} us, p99 {:.1} us ({} samples)", pct(0.50), pct(0.99), ns.len());
}

/// A small deterministic generator for READ offsets.
struct Lcg(u64);

impl Lcg {
    fn slot(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % SLOTS
    }
}
