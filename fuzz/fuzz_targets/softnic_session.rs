//! One software-NIC connection's protocol engine (`nic::session::Session`), fed arbitrary bytes
//! after a valid HELLO, in pieces, against a small registered region: whatever the client sends,
//! the session returns a violation or consumes input, and never panics or writes out of bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scalio_common::fabric::tcp::nic::session::{Env, Session, Tally};
use scalio_common::fabric::tcp::wire;
use scalio_common::fabric::tcp::NicConfig;
use scalio_common::fabric::{Access, IncomingRpc, MemoryRegion, PeerId, RegionTable, ReplySink};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Drops replies, counting them (the session's RPC credits come back with replies).
#[derive(Default)]
struct Counting(AtomicU64);

impl ReplySink for Counting {
    fn reply(&self, _id: u64, _payload: &[u8]) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

fuzz_target!(|data: &[u8]| {
    let regions = RegionTable::new();
    let region = Arc::new(MemoryRegion::new(256));
    regions.register(region.clone(), Access::READ_WRITE);
    let config = NicConfig { max_chain_read: 4096, ..NicConfig::default() };
    let replies = Arc::new(Counting::default());
    let sink: Arc<dyn ReplySink> = replies.clone();
    let service = |rpc: IncomingRpc| rpc.responder.reply(&rpc.payload);
    let mut tally = Tally::default();
    let mut session = Session::new();
    let mut input = Vec::new();
    wire::encode_hello(&mut input, wire::VERSION, &[]);
    let split = data.first().map_or(1, |b| usize::from(*b % 16) + 1);
    let mut out = Vec::new();
    let mut consumed = 0;
    for piece in data.get(1..).unwrap_or_default().chunks(split) {
        input.extend_from_slice(piece);
        let mut env = Env {
            regions: &regions,
            config: &config,
            service: &service,
            sink: &sink,
            peer: PeerId(1),
            answered: replies.0.load(Ordering::Relaxed),
            tally: &mut tally,
        };
        match session.process(&input[consumed..], &mut out, usize::MAX, &mut env) {
            Ok(n) => consumed += n,
            Err(_) => return,
        }
        assert!(consumed <= input.len());
        // What the event loop does once it has sent everything it may: drop it, and tell the
        // session (an open signaled chain keeps its reserved completion header in `out`).
        let sent = session.flush_limit(out.len());
        out.drain(..sent);
        session.shift_output(sent);
    }
});
