//! The software NIC over real sockets: protocol violations, clients that vanish, counters,
//! connection loss.

use parking_lot::Mutex;
use scalio_common::fabric::tcp::wire::{self, ServerFrame, WrFlags};
use scalio_common::fabric::tcp::{ConnectOptions, NicConfig, NicStats, TcpNic, TcpQueuePair};
use scalio_common::fabric::{
    Access, FabricError, IncomingRpc, MemoryRegion, QueuePair, RegionDesc, RegionTable, Responder, WorkRequest,
    MAX_TRANSFER,
};
use scalio_common::fabric::{CloseReason, Secret};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(20);

/// An echo service that counts its calls, and holds the responders instead while `hold` is set.
#[derive(Default)]
struct TestService {
    calls: AtomicU64,
    hold: AtomicBool,
    held: Mutex<Vec<Responder>>,
}

impl TestService {
    fn handle(&self, rpc: IncomingRpc) {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.hold.load(Ordering::SeqCst) {
            self.held.lock().push(rpc.responder);
        } else {
            rpc.responder.reply(&rpc.payload);
        }
    }
}

struct Server {
    nic: TcpNic,
    service: Arc<TestService>,
    desc: RegionDesc,
    region: Arc<MemoryRegion>,
}

fn server(threads: usize) -> Server {
    server_with(NicConfig { threads, ..NicConfig::default() })
}

fn server_with(config: NicConfig) -> Server {
    let regions = Arc::new(RegionTable::new());
    let region = Arc::new(MemoryRegion::new(4096));
    let desc = regions.register(region.clone(), Access::READ_WRITE);
    let service = Arc::new(TestService::default());
    let s = service.clone();
    let nic =
        TcpNic::bind("127.0.0.1:0", regions, Arc::new(move |rpc: IncomingRpc| s.handle(rpc)), config).expect("bind");
    Server { nic, service, desc, region }
}

/// Waits (up to `T`) until `cond` holds for the NIC's counters.
fn wait_stats(nic: &TcpNic, what: &str, cond: impl Fn(&NicStats) -> bool) -> NicStats {
    let deadline = Instant::now() + T;
    loop {
        let s = nic.stats();
        if cond(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {s:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A queue pair of another client works: READ, WRITE and RPC.
fn assert_serves(s: &Server) {
    let qp = TcpQueuePair::connect(s.nic.local_addr()).expect("connect");
    qp.post(&[WorkRequest::Write { remote: s.desc.at(16), data: b"still up" }]).wait_timeout(T).unwrap();
    assert_eq!(qp.post(&[WorkRequest::Read { remote: s.desc.at(16), len: 8 }]).wait_timeout(T).unwrap(), b"still up");
    assert_eq!(qp.call(b"ping").wait_timeout(T).unwrap(), b"ping");
}

fn raw_connect(s: &Server) -> TcpStream {
    let stream = TcpStream::connect(s.nic.local_addr()).unwrap();
    stream.set_read_timeout(Some(T)).unwrap();
    stream
}

fn hello() -> Vec<u8> {
    let mut b = Vec::new();
    wire::encode_hello(&mut b, wire::VERSION, &[]);
    b
}

/// The HELLO of a NIC with the default configuration (its body is the grant).
fn server_hello() -> Vec<u8> {
    let mut b = Vec::new();
    wire::encode_hello(&mut b, wire::VERSION, &NicConfig::default().grant().encode());
    b
}

/// Reads until the server closes the connection (EOF or reset); fails if it stays open.
fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted) => return all,
            Err(e) => panic!("the server did not close the connection: {e}"),
        }
    }
}

/// The ERROR frame at the end of `received` (after `skip` bytes), if the server's goodbye made
/// it before the connection closed.
fn error_code(received: &[u8], skip: usize) -> Option<CloseReason> {
    let (frame, _) = wire::decode_server_frame(received.get(skip..)?).ok()??;
    match frame {
        ServerFrame::Error { code, .. } => Some(code),
        other => panic!("expected an ERROR frame, got {other:?}"),
    }
}

/// Sends `bytes` on a raw connection and checks that the server closes it (after an ERROR frame
/// with `code`, when the frame arrives before the close), counts a protocol error, and keeps
/// serving another client.
fn violation_closes_only_that_connection(bytes: &[u8], handshaken: bool, code: CloseReason) {
    let s = server(1);
    let bystander = TcpQueuePair::connect(s.nic.local_addr()).unwrap();
    let mut raw = raw_connect(&s);
    raw.write_all(bytes).unwrap();
    let got = read_until_closed(&mut raw);
    let skip = if handshaken {
        assert_eq!(&got[..wire::SERVER_HELLO_LEN], &server_hello()[..], "the server answered the HELLO");
        wire::SERVER_HELLO_LEN
    } else {
        0
    };
    if let Some(c) = error_code(&got, skip) {
        assert_eq!(c, code);
    }
    let stats = wait_stats(&s.nic, "the protocol error", |st| st.protocol_errors == 1);
    assert_eq!(stats.connections_accepted, 2);
    assert_eq!(stats.connections_open, 1, "only the offending connection was closed");
    assert_serves(&s);
    // The bystander's queue pair, connected before, is unaffected.
    assert_eq!(bystander.call(b"ok?").wait_timeout(T).unwrap(), b"ok?");
    assert_eq!(s.service.calls.load(Ordering::SeqCst), 2);
}

#[test]
fn garbage_bytes_close_the_connection() {
    violation_closes_only_that_connection(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", false, CloseReason::BadHandshake);
}

#[test]
fn another_protocol_version_is_refused() {
    let mut b = Vec::new();
    wire::encode_hello(&mut b, wire::VERSION + 1, &[]);
    violation_closes_only_that_connection(&b, false, CloseReason::UnsupportedVersion);
}

#[test]
fn an_unknown_opcode_after_the_handshake_closes_the_connection() {
    let mut b = hello();
    b.extend_from_slice(&[0x42; 40]);
    violation_closes_only_that_connection(&b, true, CloseReason::ProtocolViolation);
}

#[test]
fn an_oversized_length_closes_the_connection() {
    let mut b = hello();
    // A WRITE header announcing more data than any request may carry; the data never comes.
    let mut w = Vec::new();
    wire::encode_write(&mut w, 1, WrFlags::LAST, scalio_common::fabric::RemoteAddr { addr: 0, rkey: 1 }, &[]);
    w[12..16].copy_from_slice(&(MAX_TRANSFER as u32 + 1).to_le_bytes());
    b.extend_from_slice(&w);
    violation_closes_only_that_connection(&b, true, CloseReason::ProtocolViolation);
}

#[test]
fn a_truncated_connection_is_a_protocol_error() {
    let s = server(1);
    let mut raw = raw_connect(&s);
    let mut b = hello();
    let mut r = Vec::new();
    wire::encode_read(&mut r, 1, WrFlags::LAST, s.desc.at(0), 8);
    b.extend_from_slice(&r[..r.len() / 2]);
    raw.write_all(&b).unwrap();
    raw.shutdown(std::net::Shutdown::Write).unwrap();
    let got = read_until_closed(&mut raw);
    assert_eq!(&got[..wire::SERVER_HELLO_LEN], &server_hello()[..]);
    let stats = wait_stats(&s.nic, "the protocol error", |st| st.protocol_errors == 1);
    assert_eq!(stats.reads, 0, "half a READ is not a READ");
    assert_serves(&s);
}

#[test]
fn a_client_leaving_with_rpcs_outstanding_does_not_hurt_the_server() {
    let s = server(2);
    s.service.hold.store(true, Ordering::SeqCst);
    let qp = TcpQueuePair::connect(s.nic.local_addr()).unwrap();
    let calls: Vec<_> = (0..10u8).map(|i| qp.call(&[i; 100])).collect();
    let deadline = Instant::now() + T;
    while s.service.held.lock().len() < 10 {
        assert!(Instant::now() < deadline, "the service never saw the calls");
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(qp);
    for c in calls {
        assert!(matches!(c.wait_timeout(T), Err(FabricError::Disconnected(_))));
    }
    wait_stats(&s.nic, "the connection to close", |st| st.connections_closed == 1);
    // The workers answer now, to a connection that is gone: a no-op.
    s.service.hold.store(false, Ordering::SeqCst);
    let held: Vec<Responder> = std::mem::take(&mut *s.service.held.lock());
    std::thread::spawn(move || {
        for r in held {
            r.reply(b"too late");
        }
    })
    .join()
    .expect("a late reply must not panic");
    assert_serves(&s);
    assert_eq!(s.nic.stats().protocol_errors, 0);
}

#[test]
fn reads_are_served_by_the_nic_alone() {
    let s = server(1);
    s.region.write(0, &[7; 64]).unwrap();
    let qp = TcpQueuePair::connect(s.nic.local_addr()).unwrap();
    let before = s.nic.stats();
    let n = 500u64;
    let pending: Vec<_> = (0..n).map(|i| qp.post(&[WorkRequest::Read { remote: s.desc.at(i % 8), len: 32 }])).collect();
    for p in pending {
        assert_eq!(p.wait_timeout(T).unwrap(), vec![7; 32]);
    }
    let after = s.nic.stats();
    assert_eq!(after.reads - before.reads, n);
    assert_eq!(after.bytes_read - before.bytes_read, n * 32);
    assert_eq!(after.rpcs, 0);
    assert_eq!(s.service.calls.load(Ordering::SeqCst), 0, "the RPC service saw none of them");

    // Refused requests are counted too, and also never reach the service.
    let bad = qp.post(&[WorkRequest::Read { remote: s.desc.at(4090), len: 32 }]).wait_timeout(T);
    assert!(matches!(bad, Err(FabricError::Remote { index: 0, .. })));
    // The refusal ended that queue pair (the RC error state); a new one carries on.
    let qp = TcpQueuePair::connect(s.nic.local_addr()).unwrap();
    qp.post(&[WorkRequest::Write { remote: s.desc.at(0), data: &[1; 10] }]).wait_timeout(T).unwrap();
    let last = s.nic.stats();
    assert_eq!(last.remote_access_errors, 1);
    assert_eq!(last.protocol_errors, 0, "a refused request is not the client breaking the protocol");
    assert_eq!((last.writes, last.bytes_written), (1, 10));
    assert_eq!(s.service.calls.load(Ordering::SeqCst), 0);
}

#[test]
fn server_shutdown_fails_pending_and_later_requests() {
    let mut s = server(1);
    s.service.hold.store(true, Ordering::SeqCst);
    let qp = TcpQueuePair::connect(s.nic.local_addr()).unwrap();
    let call = qp.call(b"never answered");
    let deadline = Instant::now() + T;
    while s.service.held.lock().is_empty() {
        assert!(Instant::now() < deadline, "the service never saw the call");
        std::thread::sleep(Duration::from_millis(1));
    }
    s.nic.shutdown();
    assert!(matches!(call.wait_timeout(T), Err(FabricError::Disconnected(_))));
    let read = qp.post(&[WorkRequest::Read { remote: s.desc.at(0), len: 8 }]).wait_timeout(T);
    assert!(matches!(read, Err(FabricError::Disconnected(_))), "{read:?}");
    assert!(matches!(qp.call(b"x").wait_timeout(T), Err(FabricError::Disconnected(_))));
    assert!(matches!(
        qp.post_unsignaled(&[WorkRequest::Write { remote: s.desc.at(0), data: b"x" }]),
        Err(FabricError::Disconnected(_))
    ));
    // A late reply after the NIC is gone is a no-op.
    for r in std::mem::take(&mut *s.service.held.lock()) {
        r.reply(b"late");
    }
}

#[test]
fn oversized_messages_are_refused_locally() {
    let s = server(1);
    let qp = TcpQueuePair::connect(s.nic.local_addr()).unwrap();
    let big = vec![0u8; MAX_TRANSFER + 1];
    assert_eq!(qp.call(&big).wait_timeout(T), Err(FabricError::TooLarge(big.len())));
    assert_eq!(
        qp.post(&[WorkRequest::Write { remote: s.desc.at(0), data: &big }]).wait_timeout(T),
        Err(FabricError::TooLarge(big.len()))
    );
    assert_eq!(s.service.calls.load(Ordering::SeqCst), 0);
    assert_serves(&s);
}

#[test]
fn connecting_to_something_that_is_not_a_nic_fails_cleanly() {
    // A server that answers with junk instead of a HELLO.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let junk = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        let _ = c.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
    });
    let r = TcpQueuePair::connect_timeout(addr, T);
    assert!(matches!(r, Err(FabricError::Protocol(_))), "{:?}", r.err());
    junk.join().unwrap();
}

#[test]
fn a_panicking_service_does_not_take_the_nic_down() {
    let regions = Arc::new(RegionTable::new());
    let service = Arc::new(|rpc: IncomingRpc| {
        if rpc.payload == b"boom" {
            panic!("service bug (expected by the test)");
        }
        rpc.responder.reply(&rpc.payload);
    });
    let nic = TcpNic::bind("127.0.0.1:0", regions, service, NicConfig::default()).unwrap();
    let qp = TcpQueuePair::connect(nic.local_addr()).unwrap();
    assert!(matches!(qp.call(b"boom").wait_timeout(T), Err(FabricError::Protocol(_))));
    assert_eq!(qp.call(b"fine").wait_timeout(T).unwrap(), b"fine");
}

#[test]
fn connections_over_the_limit_are_refused_with_a_reason() {
    let s = server_with(NicConfig { threads: 2, max_connections: 2, ..NicConfig::default() });
    let addr = s.nic.local_addr();
    let a = TcpQueuePair::connect(addr).unwrap();
    let b = TcpQueuePair::connect(addr).unwrap();
    assert_eq!(TcpQueuePair::connect(addr).err(), Some(FabricError::Refused(CloseReason::TooManyConnections)));
    assert_eq!(s.nic.stats().connections_refused, 1);
    // The admitted ones are served; once one leaves, a new connection is admitted.
    assert_eq!(a.call(b"ping").wait_timeout(T).unwrap(), b"ping");
    drop(b);
    wait_stats(&s.nic, "the closed connection", |st| st.connections_open == 1);
    let c = TcpQueuePair::connect(addr).unwrap();
    assert_eq!(c.call(b"pong").wait_timeout(T).unwrap(), b"pong");
}

#[test]
fn with_a_secret_only_clients_that_know_it_get_in() {
    let secret = b"correct horse battery staple".to_vec();
    let s = server_with(NicConfig { secret: Some(Secret::new(secret.clone()).unwrap()), ..NicConfig::default() });
    let addr = s.nic.local_addr();
    let with = |secret: Option<&[u8]>| {
        TcpQueuePair::connect_with(
            addr,
            &ConnectOptions { secret: secret.map(|s| Secret::new(s.to_vec()).unwrap()), ..Default::default() },
        )
    };
    assert_eq!(with(None).err(), Some(FabricError::Refused(CloseReason::Unauthenticated)));
    assert_eq!(with(Some(b"guess")).err(), Some(FabricError::Refused(CloseReason::Unauthenticated)));
    let qp = with(Some(&secret)).unwrap();
    qp.post(&[WorkRequest::Write { remote: s.desc.at(0), data: b"in" }]).wait_timeout(T).unwrap();
    assert_eq!(s.region.load_u8(0), b'i');
    let st = wait_stats(&s.nic, "the refusals", |st| st.connections_refused == 2);
    assert_eq!(st.protocol_errors, 0);
    assert_eq!(s.service.calls.load(Ordering::SeqCst), 0);
}

#[test]
fn nic_settings_are_checked() {
    let bad = |config: NicConfig| {
        let regions = Arc::new(RegionTable::new());
        let e = TcpNic::bind("127.0.0.1:0", regions, Arc::new(|_rpc: IncomingRpc| {}), config).err().unwrap();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
    };
    bad(NicConfig { max_connections: 0, ..NicConfig::default() });
    bad(NicConfig { max_chain_read: 0, ..NicConfig::default() });
}

#[test]
fn a_full_send_queue_refuses_posts_until_completions_free_it() {
    // A peer that completes the handshake and then answers nothing: no completion ever frees a
    // slot, so the queue's depth is exactly how much may be outstanding.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let silent = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut theirs = [0u8; wire::HELLO_LEN];
        stream.read_exact(&mut theirs).unwrap();
        stream.write_all(&server_hello()).unwrap();
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink); // until the client closes
    });
    let opts = ConnectOptions { send_queue_depth: 8, ..ConnectOptions::default() };
    let qp = TcpQueuePair::connect_with(addr, &opts).unwrap();
    let remote = scalio_common::fabric::RemoteAddr { addr: 0, rkey: 1 };
    // One unsignaled request, then signaled chains fill the other seven slots.
    qp.post_unsignaled(&[WorkRequest::Write { remote, data: b"u" }]).unwrap();
    let pending: Vec<_> = (0..7).map(|_| qp.post(&[WorkRequest::Read { remote, len: 8 }])).collect();
    assert!(pending.iter().all(|c| !c.is_done()));
    assert_eq!(qp.post(&[WorkRequest::Read { remote, len: 8 }]).wait_timeout(T), Err(FabricError::QueueFull));
    assert_eq!(qp.post_unsignaled(&[WorkRequest::Write { remote, data: b"v" }]), Err(FabricError::QueueFull));
    // Refused posts are not requests: the queue pair itself is fine, only full.
    assert!(pending.iter().all(|c| !c.is_done()));
    drop(qp);
    for c in pending {
        assert!(matches!(c.wait_timeout(T), Err(FabricError::Disconnected(_))));
    }
    silent.join().unwrap();
}

/// A client that sends more RPCs than the credits its HELLO granted is closed (and nobody else):
/// the NIC never holds more than the credits' worth of requests of one connection.
#[test]
fn rpcs_beyond_the_granted_credits_close_the_connection() {
    let s = server_with(NicConfig { rpc_credits: 4, ..NicConfig::default() });
    s.service.hold.store(true, Ordering::SeqCst);
    let mut raw = raw_connect(&s);
    let mut b = hello();
    for id in 0..5 {
        wire::encode_rpc(&mut b, id, b"x");
    }
    raw.write_all(&b).unwrap();
    let got = read_until_closed(&mut raw);
    let grant = wire::decode_hello(&got).unwrap().unwrap().0.body;
    assert_eq!(wire::Grant::decode(grant).map(|g| g.rpc_credits), Some(4));
    assert_eq!(error_code(&got, wire::SERVER_HELLO_LEN), Some(CloseReason::ProtocolViolation));
    assert_eq!(s.service.calls.load(Ordering::SeqCst), 4, "the fifth RPC never reached the service");
    s.service.hold.store(false, Ordering::SeqCst);
    s.service.held.lock().clear();
    assert_serves(&s);
}

/// A queue pair never has more RPCs at the NIC than its credits: the rest wait in the client
/// and go out as replies return credits; every call is answered.
#[test]
fn calls_beyond_the_credits_wait_in_the_client() {
    let s = server_with(NicConfig { rpc_credits: 4, ..NicConfig::default() });
    s.service.hold.store(true, Ordering::SeqCst);
    let qp = TcpQueuePair::connect(s.nic.local_addr()).unwrap();
    let calls: Vec<_> = (0..12u8).map(|i| qp.call(&[i])).collect();
    let deadline = Instant::now() + T;
    let mut answered = 0;
    while answered < 12 {
        assert!(Instant::now() < deadline, "only {answered} of 12 calls answered");
        let held: Vec<Responder> = std::mem::take(&mut *s.service.held.lock());
        assert!(held.len() <= 4, "{} RPCs at the NIC with 4 credits", held.len());
        answered += held.len();
        for r in held {
            r.reply(b"done");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    for c in calls {
        assert_eq!(c.wait_timeout(T).unwrap(), b"done");
    }
    assert_eq!(s.service.calls.load(Ordering::SeqCst), 12);
}
