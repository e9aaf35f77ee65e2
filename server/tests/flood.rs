//! A flood of pipelined requests cannot make the server's memory grow without bound.
//!
//! The server runs as its own process (the real `scalio-server` binary) so that its memory can be
//! measured apart from the test's: the kernel's high-water mark of its resident set (`VmHWM` in
//! `/proc/PID/status`) is the peak over its whole life, so a transient spike between two samples
//! is not missed, and it counts everything (heap, buffers, thread stacks) without instrumenting
//! the server. The SSD is emulated slow (200 ms per I/O), so requests arrive far faster than
//! they finish: without bounds every one of them waits in memory (600 pipelined 1 MiB PUTs took
//! an unbounded server from 65 MiB to 861 MiB). The flood is sent over one raw queue pair, whose
//! output buffer is bounded, so the test process itself stays small.

use scalio_common::fabric::tcp::TcpQueuePair;
use scalio_common::fabric::QueuePair;
use scalio_common::rpc::{Op, Request, Response, Status};
use std::collections::HashMap;
mod support;

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
/// Pipelined 1 MiB PUTs, then pipelined server GETs of the values stored.
const PUTS: u64 = 600;
const GETS: u64 = 600;
/// How far the server's peak resident set may rise above its idle size. The configured bounds
/// (defaults) allow, per SSD: 32 MiB waiting in the worker inbox, 32 MiB of pending writes,
/// 4 batches of 8 writes in flight (values plus their packed copy, 64 MiB) and 64 server GETs
/// holding a 1 MiB value each, about 192 MiB; the flood offers 1.2 GiB.
const MAX_GROWTH: u64 = 320 * MIB;

fn spawn_server(dir: &Path) -> (Child, String) {
    support::spawn_server(
        dir,
        // Requests in one message up to the largest (4 MiB), so that the flood reaches the inbox
        // as it is, not through the staging slots (which bound it sooner).
        "io_threads = 32\nmax_message = \"4MiB\"\n[emulation]\nssd_latency_us = 200000\n",
        &["--no-target", "--ssds", "1", "--ssd-size", "1GiB", "--workers", "1"],
        "error",
    )
}

/// A field of `/proc/PID/status` in bytes (the kernel reports kB).
fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("no {field} in status"));
    let kb: u64 = line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("a number of kB");
    kb * 1024
}

fn key(i: u64) -> Vec<u8> {
    format!("flood-{i:05}").into_bytes()
}

fn value(i: u64) -> Vec<u8> {
    let mut v = vec![(i % 251) as u8; MIB as usize];
    v[..8].copy_from_slice(&i.to_le_bytes());
    v
}

/// Sends every request at once (pipelined), then waits for every answer.
fn flood(qp: &TcpQueuePair, requests: &[Vec<u8>], deadline: Instant) -> Vec<Option<(Status, Vec<u8>)>> {
    let pending: Vec<_> = requests.iter().map(|r| qp.call(r)).collect();
    pending
        .into_iter()
        .map(|c| {
            // Completion::wait has no timeout; the queue pair's own request timeout and the
            // kill below bound it.
            if Instant::now() > deadline {
                return None;
            }
            c.wait().ok().map(|bytes| {
                let r = Response::decode(&bytes).expect("a response");
                (r.status, r.body.to_vec())
            })
        })
        .collect()
}

#[test]
fn pipelined_floods_keep_server_memory_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = spawn_server(dir.path());
    let pid = child.id();
    let qp = TcpQueuePair::connect(addr.as_str()).expect("connect");
    // Idle size, once the server has answered something.
    let hello = qp.call(&Request::new(Op::Hello, b"", b"").to_vec()).wait().expect("hello");
    assert_eq!(Response::decode(&hello).unwrap().status, Status::Ok);
    let idle = proc_status_bytes(pid, "VmRSS:");
    let deadline = Instant::now() + Duration::from_secs(120);

    let puts: Vec<Vec<u8>> = (0..PUTS).map(|i| Request::new(Op::Put, &key(i), &value(i)).to_vec()).collect();
    let started = Instant::now();
    let answers = flood(&qp, &puts, deadline);
    drop(puts);
    let mut by_status: HashMap<String, u64> = HashMap::new();
    let mut stored = Vec::new();
    for (i, a) in answers.iter().enumerate() {
        *by_status.entry(format!("{:?}", a.as_ref().map(|(s, _)| *s))).or_default() += 1;
        if let Some((Status::Ok, _)) = a {
            stored.push(i as u64);
        }
    }
    let put_peak = proc_status_bytes(pid, "VmHWM:");
    eprintln!(
        "PUT flood: {PUTS} x 1 MiB in {:.1} s, answers {by_status:?}, server RSS idle {} MiB, peak {} MiB",
        started.elapsed().as_secs_f64(),
        idle / MIB,
        put_peak / MIB
    );
    let refused = answers.iter().filter(|a| matches!(a, Some((Status::Unavailable, _)))).count() as u64;
    assert!(!stored.is_empty(), "some PUTs were accepted and stored");
    assert_eq!(stored.len() as u64 + refused, PUTS, "every PUT is either stored or refused as Unavailable");

    // Server GETs of the stored values: each one in progress holds its value.
    let gets: Vec<Vec<u8>> =
        (0..GETS).map(|n| Request::new(Op::Get, &key(stored[n as usize % stored.len()]), b"").to_vec()).collect();
    let started = Instant::now();
    let answers = flood(&qp, &gets, deadline);
    let mut got = 0;
    let mut refused = 0;
    for (n, a) in answers.iter().enumerate() {
        match a {
            Some((Status::Ok, body)) => {
                let i = stored[n % stored.len()];
                assert!(body == &value(i), "GET {n} of key {i} returned the value written");
                got += 1;
            }
            Some((Status::Unavailable, _)) => refused += 1,
            other => panic!("GET {n}: unexpected {:?}", other.as_ref().map(|(s, _)| s)),
        }
    }
    // A value over the maximum is refused from the request header with its own status.
    let oversized = vec![0u8; scalio_common::ssd::MAX_VALUE_LEN + 1];
    let reply = qp.call(&Request::new(Op::Put, b"too-big", &oversized).to_vec()).wait().expect("a reply");
    assert_eq!(Response::decode(&reply).unwrap().status, Status::ValueTooLarge);
    let peak = proc_status_bytes(pid, "VmHWM:");
    eprintln!(
        "GET flood: {GETS} in {:.1} s, {got} answered, {refused} refused, server peak RSS {} MiB",
        started.elapsed().as_secs_f64(),
        peak / MIB
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(got > 0, "some GETs were served");
    assert!(
        peak.saturating_sub(idle) < MAX_GROWTH,
        "server memory grew by {} MiB (idle {} MiB, peak {} MiB), more than {} MiB",
        peak.saturating_sub(idle) / MIB,
        idle / MIB,
        peak / MIB,
        MAX_GROWTH / MIB
    );
}
