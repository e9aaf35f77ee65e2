//! The fabric conformance suite: the semantics every backend must have, written once.
//!
//! A backend's tests call [`fabric_conformance!`](crate::fabric_conformance) with a function
//! that starts a server side with a given RPC service and returns a [`TestServer`]; the macro
//! expands to one `#[test]` per check below.

use super::{
    Access, FabricError, IncomingRpc, LocalAccessError, LocalKey, LocalSlice, MemoryRegion, QueuePair, Registrar,
    RemoteAccessError, RpcService, WorkCompletion, WorkRequest, MAX_TRANSFER,
};
use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

/// A running server side of some backend.
pub struct TestServer {
    /// The backend's registration of server memory: the suite registers and deregisters only
    /// through it, so its checks hold for any backend.
    pub registrar: Arc<dyn Registrar>,
    /// The RPC credits the backend grants each queue pair.
    pub rpc_credits: u32,
    /// Whether the backend says which check refused a remote access (key, bounds, rights), as
    /// the software NICs do, or only that it was refused ([`RemoteAccessError::Refused`], as
    /// verbs hardware does).
    pub exact_remote_errors: bool,
    /// Whether the backend refuses an access with a window's key outside the window's bounds.
    /// Soft-RoCE (Linux 6.1's `rdma_rxe`) checks only the bounds of the registration the window
    /// was bound over, as [`windows_grant_one_connection_one_range`] measured in the guest;
    /// the software NICs check the window's own.
    pub window_bounds_checked: bool,
    connect: Box<dyn Fn() -> Arc<dyn QueuePair> + Send + Sync>,
    _guard: Box<dyn Any + Send>,
}

impl TestServer {
    /// `guard` is kept alive as long as the server (e.g. the NIC threads' handle).
    pub fn new(
        registrar: Arc<dyn Registrar>,
        rpc_credits: u32,
        connect: impl Fn() -> Arc<dyn QueuePair> + Send + Sync + 'static,
        guard: impl Any + Send,
    ) -> TestServer {
        TestServer {
            registrar,
            rpc_credits,
            exact_remote_errors: true,
            window_bounds_checked: true,
            connect: Box::new(connect),
            _guard: Box::new(guard),
        }
    }

    /// A backend whose remote refusals are all [`RemoteAccessError::Refused`].
    pub fn with_coarse_remote_errors(mut self) -> TestServer {
        self.exact_remote_errors = false;
        self
    }

    /// A backend (a device) that checks a window's key, connection and revocation, but bounds
    /// only those of the registration under it (see [`window_bounds_checked`](Self::window_bounds_checked)).
    pub fn with_unchecked_window_bounds(mut self) -> TestServer {
        self.window_bounds_checked = false;
        self
    }

    /// The error this backend reports when request `index` is refused for `error`.
    pub fn remote(&self, index: u16, error: RemoteAccessError) -> FabricError {
        let error = if self.exact_remote_errors { error } else { RemoteAccessError::Refused };
        FabricError::Remote { index, error }
    }

    pub fn connect(&self) -> Arc<dyn QueuePair> {
        (self.connect)()
    }
}

/// Builds a server side for one backend with the given RPC service.
pub type MakeServer<'a> = &'a dyn Fn(Arc<dyn RpcService>) -> TestServer;

/// A service that answers every request with the request reversed, from another thread, after
/// a delay taken from the first byte (so that responses come back out of order).
pub fn reversing_service() -> Arc<dyn RpcService> {
    Arc::new(|rpc: IncomingRpc| {
        std::thread::spawn(move || {
            let delay = rpc.payload.first().copied().unwrap_or(0) % 8;
            std::thread::sleep(Duration::from_millis(u64::from(delay)));
            let mut p = rpc.payload;
            p.reverse();
            p.push(0xEE);
            rpc.responder.reply(&p);
        });
    })
}

fn setup(make: MakeServer<'_>, len: usize, access: Access) -> (TestServer, Arc<MemoryRegion>, super::RegionDesc) {
    let server = make(reversing_service());
    let region = Arc::new(MemoryRegion::new(len));
    let desc = server.registrar.register(region.clone(), access).expect("register");
    (server, region, desc)
}

fn read(qp: &dyn QueuePair, d: &super::RegionDesc, offset: u64, len: u32) -> Vec<u8> {
    qp.post(&[WorkRequest::Read { remote: d.at(offset), len }]).wait_timeout(T).expect("read")
}

fn write(qp: &dyn QueuePair, d: &super::RegionDesc, offset: u64, data: &[u8]) {
    qp.post(&[WorkRequest::Write { remote: d.at(offset), data }]).wait_timeout(T).expect("write");
}

/// WRITEs land and READs return them, at any alignment and length.
pub fn read_write_round_trip(make: MakeServer<'_>) {
    let (s, region, d) = setup(make, 4096, Access::READ_WRITE);
    let qp = s.connect();
    for (i, (off, len)) in
        [(0u64, 1usize), (1, 7), (3, 8), (8, 8), (13, 100), (4000, 96), (0, 4096)].into_iter().enumerate()
    {
        let data: Vec<u8> = (0..len).map(|j| (i * 31 + j) as u8).collect();
        write(&*qp, &d, off, &data);
        assert_eq!(read(&*qp, &d, off, len as u32), data, "at {off}+{len}");
        let mut local = vec![0; len];
        region.read(off as usize, &mut local).unwrap();
        assert_eq!(local, data, "the server's memory holds the write");
    }
    // The server's own stores are visible to READs.
    region.write(100, b"server").unwrap();
    assert_eq!(read(&*qp, &d, 100, 6), b"server");
}

/// A chain executes in order, and returns the data of its READs in order.
pub fn chain_executes_in_order(make: MakeServer<'_>) {
    let (s, _r, d) = setup(make, 256, Access::READ_WRITE);
    let qp = s.connect();
    let out = qp
        .post(&[
            WorkRequest::Write { remote: d.at(0), data: &[0xAA; 64] },
            WorkRequest::Read { remote: d.at(0), len: 4 },
            WorkRequest::Write { remote: d.at(0), data: &[0xBB; 8] },
            WorkRequest::Read { remote: d.at(0), len: 16 },
        ])
        .wait_timeout(T)
        .unwrap();
    let mut want = vec![0xAA; 4];
    want.extend([0xBB; 8]);
    want.extend([0xAA; 8]);
    assert_eq!(out, want);
}

/// Posts on one queue pair execute in the order posted, signaled or not.
pub fn posts_execute_in_order(make: MakeServer<'_>) {
    let (s, _r, d) = setup(make, 64, Access::READ_WRITE);
    let qp = s.connect();
    for i in 0..300u32 {
        qp.post_unsignaled(&[WorkRequest::Write { remote: d.at(8), data: &i.to_le_bytes() }]).unwrap();
        assert_eq!(read(&*qp, &d, 8, 4), i.to_le_bytes());
    }
    assert_eq!(qp.async_errors(), 0);
}

/// A reader never sees a later WRITE of a chain without the earlier ones: with `data` written
/// before `flag`, a READ that returns flag = i returns data >= i.
pub fn later_write_never_visible_before_earlier(make: MakeServer<'_>) {
    let (s, _r, d) = setup(make, 256, Access::READ_WRITE);
    let writer = s.connect();
    let reader = s.connect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let observer = std::thread::spawn(move || {
        let mut seen = 0u64;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            // The READ copies in increasing address order: flag (offset 0) before data (64..192).
            let b = read(&*reader, &d, 0, 192);
            let flag = u64::from_le_bytes(b[0..8].try_into().unwrap());
            for w in b[64..192].chunks_exact(8) {
                let v = u64::from_le_bytes(w.try_into().unwrap());
                assert!(v >= flag, "saw flag {flag} but data word {v}");
            }
            seen = seen.max(flag);
        }
        seen
    });
    for i in 1..=2000u64 {
        let data = [i.to_le_bytes(); 16].concat();
        writer
            .post_unsignaled(&[
                WorkRequest::Write { remote: d.at(64), data: &data },
                WorkRequest::Write { remote: d.at(0), data: &i.to_le_bytes() },
            ])
            .unwrap();
        if i % 100 == 0 {
            read(&*writer, &d, 0, 8); // let the server catch up
        }
    }
    read(&*writer, &d, 0, 8);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    observer.join().expect("observer saw a reordered write");
    assert_eq!(writer.async_errors(), 0);
}

/// Bad keys, out-of-range addresses and missing rights are typed errors; each puts its queue pair
/// into the error state, and other queue pairs are unaffected.
pub fn access_errors_are_reported(make: MakeServer<'_>) {
    let (s, _r, d) = setup(make, 128, Access::READ);
    let other = s.connect();
    let remote = |error| s.remote(0, error);
    let bad_key = super::RemoteAddr { addr: d.addr, rkey: d.rkey.wrapping_add(12345) };
    let below = super::RemoteAddr { addr: d.addr - 8, rkey: d.rkey };
    let far = super::RemoteAddr { addr: u64::MAX - 2, rkey: d.rkey };
    let cases: [(WorkRequest<'_>, RemoteAccessError); 5] = [
        (WorkRequest::Read { remote: bad_key, len: 8 }, RemoteAccessError::BadKey),
        (WorkRequest::Read { remote: d.at(121), len: 8 }, RemoteAccessError::OutOfBounds),
        (WorkRequest::Read { remote: below, len: 8 }, RemoteAccessError::OutOfBounds),
        (WorkRequest::Read { remote: far, len: 8 }, RemoteAccessError::OutOfBounds),
        (WorkRequest::Write { remote: d.at(0), data: b"nope" }, RemoteAccessError::AccessDenied),
    ];
    for (wr, error) in cases {
        let qp = s.connect();
        assert_eq!(qp.post(&[wr]).wait_timeout(T), Err(remote(error)));
        assert_eq!(
            qp.post(&[WorkRequest::Read { remote: d.at(0), len: 8 }]).wait_timeout(T),
            Err(FabricError::Flushed),
            "after {error:?} the queue pair is in the error state"
        );
    }
    assert_eq!(read(&*other, &d, 120, 8), vec![0; 8], "another queue pair is unaffected");
}

/// A strided registration grants its windows and nothing else: a WRITE inside one window lands;
/// a WRITE that touches a byte outside the windows (before, after, or across two of them) is
/// refused as out of bounds, writes nothing (not even its in-window part), and puts the queue
/// pair into the error state. The region registered READ-only beside it stays unwritable.
pub fn strided_registration_refuses_writes_outside_its_windows(make: MakeServer<'_>) {
    // Like the cache table: 4 "slots" of 32 bytes, a read-only view of everything and a
    // write-only view of bytes 8..32 of each.
    let s = make(reversing_service());
    let region = Arc::new(MemoryRegion::new(128));
    let read_view = s.registrar.register(region.clone(), Access::READ).expect("register");
    let pattern = super::Strided::new(8, 24, 32).expect("pattern");
    let write_view = s.registrar.register_strided(region.clone(), Access::WRITE, pattern).expect("register");
    let qp = s.connect();
    for slot in 0..4u64 {
        write(&*qp, &write_view, slot * 32 + 8, &[0xAA; 24]);
        write(&*qp, &write_view, slot * 32 + 20, &[0xBB; 4]);
    }
    let mut expected = vec![0u8; 128];
    for slot in 0..4 {
        expected[slot * 32 + 8..slot * 32 + 32].fill(0xAA);
        expected[slot * 32 + 20..slot * 32 + 24].fill(0xBB);
    }
    assert_eq!(read(&*qp, &read_view, 0, 128), expected);
    let refused = [
        (write_view, 0u64, 8usize), // a whole header
        (write_view, 7, 2),         // one byte of a header, one of a window
        (write_view, 30, 4),        // across the end of a window into the next header
        (write_view, 8, 56),        // two windows and the header between them
        (write_view, 96, 8),        // the last slot's header
        (write_view, 120, 16),      // past the region's end
    ];
    for (view, at, len) in refused {
        let qp = s.connect();
        let chain = [
            WorkRequest::Write { remote: view.at(8), data: &[0x11; 4] },
            WorkRequest::Write { remote: view.at(at), data: &vec![0xCC; len] },
            WorkRequest::Write { remote: view.at(40), data: &[0x22; 4] },
        ];
        assert_eq!(
            qp.post(&chain).wait_timeout(T),
            Err(s.remote(1, RemoteAccessError::OutOfBounds)),
            "{len} bytes at {at}"
        );
        assert_eq!(
            qp.post(&[WorkRequest::Write { remote: view.at(8), data: &[0x33] }]).wait_timeout(T),
            Err(FabricError::Flushed),
            "the queue pair is in the error state"
        );
        expected[8..12].fill(0x11); // the request before the refused one executed
        assert_eq!(region_bytes(&region), expected, "{len} bytes at {at} wrote nothing");
    }
    let qp = s.connect();
    assert_eq!(
        qp.post(&[WorkRequest::Write { remote: read_view.at(8), data: &[1] }]).wait_timeout(T),
        Err(s.remote(0, RemoteAccessError::AccessDenied)),
        "the read-only view grants no WRITE"
    );
    let qp = s.connect();
    assert_eq!(
        qp.post(&[WorkRequest::Read { remote: write_view.at(8), len: 8 }]).wait_timeout(T),
        Err(s.remote(0, RemoteAccessError::AccessDenied)),
        "the write-only view grants no READ"
    );
}

fn region_bytes(region: &MemoryRegion) -> Vec<u8> {
    let mut b = vec![0; region.len()];
    region.read(0, &mut b).expect("whole region");
    b
}

/// The RC error state: after a failed work request, nothing posted later on the queue pair
/// executes. Requests already posted behind it, RPCs waiting for a response, and everything
/// posted afterwards complete as flushed; a new queue pair works.
pub fn error_state_flushes_what_follows(make: MakeServer<'_>) {
    let (s, region, d) = setup(make, 128, Access::READ_WRITE);
    let qp = s.connect();
    read(&*qp, &d, 0, 8);
    let slow_rpc = qp.call(&[7, 1, 2, 3]); // the service answers after 7 ms
    let failing = qp.post(&[
        WorkRequest::Write { remote: d.at(0), data: &[1] },
        WorkRequest::Write { remote: d.at(500), data: &[1] },
    ]);
    let behind = qp.post(&[WorkRequest::Write { remote: d.at(16), data: &[2] }]);
    let unsignaled_behind = qp.post_unsignaled(&[WorkRequest::Write { remote: d.at(24), data: &[3] }]);
    assert_eq!(failing.wait_timeout(T), Err(s.remote(1, RemoteAccessError::OutOfBounds)));
    assert_eq!(behind.wait_timeout(T), Err(FabricError::Flushed));
    assert!(matches!(unsignaled_behind, Ok(()) | Err(FabricError::Flushed)), "{unsignaled_behind:?}");
    assert_eq!(slow_rpc.wait_timeout(T), Err(FabricError::Flushed), "a response to an errored queue pair is lost");
    assert_eq!(qp.post(&[WorkRequest::Read { remote: d.at(0), len: 8 }]).wait_timeout(T), Err(FabricError::Flushed));
    assert_eq!(qp.call(b"x").wait_timeout(T), Err(FabricError::Flushed));
    let later = qp.post_unsignaled(&[WorkRequest::Write { remote: d.at(32), data: &[4] }]);
    assert!(matches!(later, Ok(()) | Err(FabricError::Flushed)), "{later:?}");
    let fresh = s.connect();
    let now = read(&*fresh, &d, 0, 40);
    assert_eq!(now[0], 1, "the request before the failure executed");
    assert_eq!(&now[8..40], &[0; 32], "nothing after the failure executed");
    assert_eq!(region.load_u8(16), 0);
    assert_eq!(fresh.call(&[0, 9]).wait_timeout(T).unwrap(), vec![9, 0, 0xEE], "a new queue pair works");
}

/// A failed request stops the rest of its chain.
pub fn failed_request_stops_its_chain(make: MakeServer<'_>) {
    let (s, region, d) = setup(make, 128, Access::READ_WRITE);
    let qp = s.connect();
    let e = qp
        .post(&[
            WorkRequest::Write { remote: d.at(0), data: &[1] },
            WorkRequest::Write { remote: d.at(200), data: &[1] },
            WorkRequest::Write { remote: d.at(8), data: &[1] },
        ])
        .wait_timeout(T)
        .unwrap_err();
    assert_eq!(e, s.remote(1, RemoteAccessError::OutOfBounds));
    assert_eq!(region.load_u8(0), 1, "the request before the failure executed");
    assert_eq!(region.load_u8(8), 0, "the request after the failure did not");
}

/// An unsignaled failure is counted and puts the queue pair into the error state; malformed
/// chains are refused when posted, without changing the queue pair's state.
pub fn unsignaled_failures_are_counted(make: MakeServer<'_>) {
    let (s, _r, d) = setup(make, 64, Access::READ_WRITE);
    let qp = s.connect();
    assert_eq!(qp.post_unsignaled(&[WorkRequest::Read { remote: d.at(0), len: 8 }]), Err(FabricError::UnsignaledRead));
    assert_eq!(qp.post_unsignaled(&[]), Err(FabricError::EmptyChain));
    assert_eq!(qp.post(&[]).wait_timeout(T), Err(FabricError::EmptyChain));
    let big = (MAX_TRANSFER + 1) as u32;
    assert_eq!(
        qp.post(&[WorkRequest::Read { remote: d.at(0), len: big }]).wait_timeout(T),
        Err(FabricError::TooLarge(big as usize))
    );
    assert_eq!(read(&*qp, &d, 0, 8), vec![0; 8], "refused posts leave the queue pair usable");
    qp.post_unsignaled(&[WorkRequest::Write { remote: d.at(60), data: &[0; 8] }]).unwrap();
    // In order: the failure has been reported by the time a later READ completes (flushed).
    assert_eq!(qp.post(&[WorkRequest::Read { remote: d.at(0), len: 8 }]).wait_timeout(T), Err(FabricError::Flushed));
    assert_eq!(qp.async_errors(), 1);
}

/// Unsignaled requests far beyond the send queue's depth, with nothing signaled in between: the
/// backend signals selectively so their slots come back; a poster that outruns the peer gets
/// [`FabricError::QueueFull`] (backpressure, the queue pair stays usable), waits for a signaled
/// request, and goes on. Every request executes, in order.
pub fn unsignaled_stream_beyond_the_send_queue_depth(make: MakeServer<'_>) {
    let (s, region, d) = setup(make, 64, Access::READ_WRITE);
    let qp = s.connect();
    let n = 3 * u64::from(super::DEFAULT_SEND_QUEUE_DEPTH) + 7;
    for i in 1..=n {
        let chain = [
            WorkRequest::Write { remote: d.at(0), data: &i.to_le_bytes() },
            WorkRequest::Write { remote: d.at(8), data: &i.to_le_bytes() },
        ];
        let mut tries = 0;
        while let Err(e) = qp.post_unsignaled(&chain) {
            assert_eq!(e, FabricError::QueueFull, "unsignaled post {i}");
            tries += 1;
            assert!(tries < 1000, "the queue never drained");
            // Wait for the peer to catch up: a signaled request completes after everything before it.
            match qp.post(&[WorkRequest::Read { remote: d.at(0), len: 8 }]).wait_timeout(T) {
                Ok(_) | Err(FabricError::QueueFull) => std::thread::sleep(Duration::from_millis(1)),
                Err(e) => panic!("waiting for the queue to drain: {e}"),
            }
        }
    }
    assert_eq!(read(&*qp, &d, 0, 16), [n.to_le_bytes(), n.to_le_bytes()].concat());
    assert_eq!(region.load_u64(8), n);
    assert_eq!(qp.async_errors(), 0);
}

/// Many RPCs in flight, answered out of order, each get their own response.
pub fn rpc_responses_match_requests(make: MakeServer<'_>) {
    let s = make(reversing_service());
    let qp = s.connect();
    // No more than the queue pair may hold back while its credits are in use.
    let n = (s.rpc_credits as usize * (1 + super::HELD_PER_CREDIT)).min(200) as u32;
    let calls: Vec<_> = (0..n)
        .map(|i| {
            let req: Vec<u8> = [(i % 7) as u8].into_iter().chain(i.to_le_bytes()).collect();
            (req.clone(), qp.call(&req))
        })
        .collect();
    for (req, call) in calls {
        let mut want = req;
        want.reverse();
        want.push(0xEE);
        assert_eq!(call.wait_timeout(T).unwrap(), want);
    }
    // Messages of the largest size granted too (and responses of any size).
    let big: Vec<u8> = (0..qp.max_message() as u32).map(|i| (i % 251) as u8 & 0xF8).collect();
    let mut want = big.clone();
    want.reverse();
    want.push(0xEE);
    assert_eq!(qp.call(&big).wait_timeout(T).unwrap(), want);
}

/// The message channel's credits: a queue pair never has more RPCs at the service without a
/// response than the credits its server granted; calls beyond wait in the queue pair and go out
/// in order as responses return credits, and each gets its own response.
pub fn rpc_credits_bound_requests_in_flight(make: MakeServer<'_>) {
    let held: Arc<parking_lot::Mutex<Vec<IncomingRpc>>> = Arc::default();
    let at_service = held.clone();
    let s = make(Arc::new(move |rpc: IncomingRpc| at_service.lock().push(rpc)));
    let credits = s.rpc_credits as usize;
    let qp = s.connect();
    let n = 2 * credits + 3;
    let calls: Vec<_> = (0..n as u32).map(|i| qp.call(&i.to_le_bytes())).collect();
    let deadline = std::time::Instant::now() + T;
    // The first `credits` calls reach the service, and no more.
    while held.lock().len() < credits {
        assert!(std::time::Instant::now() < deadline, "{} of {credits} calls reached the service", held.lock().len());
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut order = Vec::new();
    while order.len() < n {
        std::thread::sleep(Duration::from_millis(10));
        let batch = std::mem::take(&mut *held.lock());
        assert!(batch.len() <= credits, "{} calls at the service with {credits} credits", batch.len());
        assert!(!batch.is_empty() || std::time::Instant::now() < deadline, "stalled after {} calls", order.len());
        for rpc in batch {
            order.push(u32::from_le_bytes(rpc.payload[..4].try_into().unwrap()));
            let mut response = rpc.payload.clone();
            response.push(0xEE);
            rpc.responder.reply(&response);
        }
    }
    assert_eq!(order, (0..n as u32).collect::<Vec<_>>(), "calls reach the service in order");
    for (i, call) in calls.into_iter().enumerate() {
        assert_eq!(call.wait_timeout(T).unwrap(), [&(i as u32).to_le_bytes()[..], &[0xEE]].concat());
    }
}

/// A request the service drops unanswered is an error, not a hang.
pub fn dropped_rpc_is_an_error(make: MakeServer<'_>) {
    let s = make(Arc::new(|rpc: IncomingRpc| drop(rpc)));
    let qp = s.connect();
    assert_eq!(qp.call(b"hello").wait_timeout(T), Err(FabricError::Protocol(super::ProtocolError::Dropped)));
}

/// A request over the granted largest message is refused by `call` before anything is sent,
/// and moves whole by rendezvous (STAGE, WRITE into the granted slot, STAGED) through the
/// server's [`Rendezvous`](super::rendezvous::Rendezvous) layer: the service sees exactly the
/// bytes sent, every slot comes back, and a request larger than a slot is refused with the queue
/// pair still usable.
pub fn large_requests_move_by_rendezvous(make: MakeServer<'_>) {
    use super::rendezvous::{self, Rendezvous, StagingConfig, StagingRefusal};
    // The service answers with the length and checksum of what it received.
    let digest = |payload: &[u8]| {
        let mut d = (payload.len() as u64).to_le_bytes().to_vec();
        d.extend_from_slice(&xxhash_rust::xxh64::xxh64(payload, 0).to_le_bytes());
        d
    };
    let inner: Arc<dyn RpcService> = Arc::new(move |rpc: IncomingRpc| {
        let d = digest(&rpc.payload);
        rpc.responder.reply(&d)
    });
    // The layer registers its staging region through the backend, which exists only once the
    // server side is up: the service reaches it through this cell.
    let front: Arc<std::sync::OnceLock<Arc<Rendezvous>>> = Arc::default();
    let f = front.clone();
    let s = make(Arc::new(move |rpc: IncomingRpc| {
        if let Some(r) = f.get() {
            r.handle(rpc)
        }
    }));
    let qp = s.connect();
    let max = qp.max_message();
    assert!(max < MAX_TRANSFER, "the backend grants a largest message below MAX_TRANSFER");
    let slot = (1 << 20) + 64;
    let config = StagingConfig { slots: 4, slot_bytes: slot, lease: Duration::from_secs(60) };
    let layer = Rendezvous::new(inner, &*s.registrar, config).expect("staging region");
    assert!(front.set(layer.clone()).is_ok());

    for len in [max / 2, max + 1, 1 << 20] {
        let request: Vec<u8> = (0..len).map(|i| (i * 31 + i / 1000) as u8).collect();
        if len > max {
            assert_eq!(qp.call(&request).wait_timeout(T), Err(FabricError::TooLarge(len)));
        }
        let reply = rendezvous::call_blocking(&*qp, &request, T).expect("rendezvous call");
        assert_eq!(reply, digest(&request), "{len} bytes arrived whole");
    }
    assert_eq!(layer.slots_in_use(), 0, "every slot came back");
    // Several connections at once, more transfers than slots in all.
    let threads: Vec<_> = (0..3u8)
        .map(|t| {
            let qp = s.connect();
            std::thread::spawn(move || {
                for i in 0..6u8 {
                    let request = vec![t ^ i; max + 1 + usize::from(i)];
                    match rendezvous::call_blocking(&*qp, &request, T) {
                        Ok(reply) => assert_eq!(reply[..8], (request.len() as u64).to_le_bytes()),
                        // With a connection's share of the slots taken, nothing is done.
                        Err(FabricError::Staging(StagingRefusal::NoRoom)) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("rendezvous thread");
    }
    assert_eq!(layer.slots_in_use(), 0);
    let too_big = vec![1u8; slot + 64];
    assert_eq!(rendezvous::call_blocking(&*qp, &too_big, T), Err(FabricError::Staging(StagingRefusal::TooLarge)));
    assert_eq!(qp.call(b"still usable").wait_timeout(T), Ok(digest(b"still usable")));
}

/// Transfers of a megabyte work both ways.
pub fn large_transfers(make: MakeServer<'_>) {
    let len = 1 << 20;
    let (s, _r, d) = setup(make, len, Access::READ_WRITE);
    let qp = s.connect();
    let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4096) as u8).collect();
    write(&*qp, &d, 0, &data);
    assert_eq!(read(&*qp, &d, 0, len as u32), data);
}

/// A deregistered key is refused.
pub fn deregistered_key_is_refused(make: MakeServer<'_>) {
    let (s, _r, d) = setup(make, 64, Access::READ_WRITE);
    let qp = s.connect();
    read(&*qp, &d, 0, 8);
    assert!(s.registrar.deregister(d.rkey));
    assert!(!s.registrar.deregister(d.rkey), "a key is revoked once");
    assert_eq!(
        qp.post(&[WorkRequest::Read { remote: d.at(0), len: 8 }]).wait_timeout(T),
        Err(s.remote(0, RemoteAccessError::BadKey))
    );
}

/// A service that grants and revokes windows for the connection that asks, as the cache
/// server does on a miss: `[1, offset u64, len u64]` grants WRITE access to that range of the
/// region in `target` and answers `[1, rkey u32]` (or `[0]` if the backend has no windows);
/// `[2, rkey u32]` revokes it and answers `[1]` if it was in force, else `[0]`. The answer goes
/// out after the grant or revocation, as the server's META_GET reply does.
fn window_service(target: Arc<std::sync::OnceLock<(Arc<dyn Registrar>, super::RegionDesc)>>) -> Arc<dyn RpcService> {
    Arc::new(move |rpc: IncomingRpc| {
        let (registrar, base) = target.get().expect("set before the first call").clone();
        let p = &rpc.payload;
        let word = |at: usize| u64::from_le_bytes(p[at..at + 8].try_into().unwrap());
        match p[0] {
            1 => match registrar.grant_window(rpc.peer, base, word(1), word(9), Access::WRITE) {
                Ok(w) => {
                    assert_eq!(w.addr, base.addr + word(1), "a window is addressed as its region");
                    let mut r = vec![1];
                    r.extend_from_slice(&w.rkey.to_le_bytes());
                    rpc.responder.reply(&r)
                }
                Err(FabricError::Unsupported(why)) => {
                    eprintln!("skipped: windows unsupported: {why}");
                    rpc.responder.reply(&[0])
                }
                Err(e) => panic!("grant_window: {e}"),
            },
            _ => {
                let rkey = u32::from_le_bytes(p[1..5].try_into().unwrap());
                let was = registrar.revoke_window(rpc.peer, rkey);
                rpc.responder.reply(&[u8::from(was)])
            }
        }
    })
}

/// Windows per connection ([`Registrar::grant_window`]), where the backend has them: a window
/// granted to one connection takes its WRITEs inside the window, and refuses (as a remote
/// access error that ends the writer's queue pair) a WRITE outside it, a WRITE with its key
/// from another connection, and a WRITE after its revocation. A backend without windows says
/// [`Unsupported`](super::Unsupported) and the check ends there.
pub fn windows_grant_one_connection_one_range(make: MakeServer<'_>) {
    let target = Arc::new(std::sync::OnceLock::new());
    let s = make(window_service(target.clone()));
    let region = Arc::new(MemoryRegion::new(4096));
    let base = match s.registrar.register(region.clone(), Access::READ.with(Access::WINDOWS)) {
        Err(FabricError::Unsupported(why)) => return eprintln!("skipped: windows unsupported: {why}"),
        r => r.expect("register for windows"),
    };
    target.set((s.registrar.clone(), base)).unwrap_or_else(|_| unreachable!());
    let grant = |qp: &dyn QueuePair, offset: u64, len: u64| -> Option<super::RegionDesc> {
        let mut p = vec![1];
        p.extend_from_slice(&offset.to_le_bytes());
        p.extend_from_slice(&len.to_le_bytes());
        let r = qp.call(&p).wait_timeout(T).expect("grant call");
        (r[0] == 1).then(|| base_window(&base, offset, len, u32::from_le_bytes(r[1..5].try_into().unwrap())))
    };
    let revoke = |qp: &dyn QueuePair, rkey: u32| -> bool {
        let mut p = vec![2];
        p.extend_from_slice(&rkey.to_le_bytes());
        qp.call(&p).wait_timeout(T).expect("revoke call") == [1]
    };
    // A slot-like window: 88 bytes at 1024 + 24.
    let (offset, len) = (1024 + 24, 88u64);
    let a = s.connect();
    let Some(win) = grant(&*a, offset, len) else { return };
    assert_ne!(win.rkey, base.rkey);
    a.post(&[w(&win, 0, &[0xA1; 88])]).wait_timeout(T).expect("a WRITE inside the window");
    a.post(&[w(&win, 80, &[0xA2; 8]), w(&win, 9, &[0xA3])]).wait_timeout(T).expect("WRITEs inside the window");
    let mut got = vec![0; 88];
    region.read(offset as usize, &mut got).unwrap();
    let mut want = vec![0xA1; 88];
    want[80..].fill(0xA2);
    want[9] = 0xA3;
    assert_eq!(got, want, "the window's WRITEs landed");
    assert_eq!(read(&*a, &base, offset, 88), want, "and READs with the region's key see them");
    // Another connection holding the key: refused, and nothing lands.
    let b = s.connect();
    assert_eq!(b.post(&[w(&win, 0, &[0xB0; 8])]).wait_timeout(T), Err(s.remote(0, RemoteAccessError::BadKey)));
    region.read(offset as usize, &mut got).unwrap();
    assert_eq!(got, want, "another connection's WRITE did not land");
    // Outside the window, from its own connection: just before it, and across its end.
    let c = s.connect();
    let cw = grant(&*c, offset, len).expect("granted before");
    assert_eq!(
        c.post(&[WorkRequest::Write { remote: base.at(offset - 1), data: &[0xC0] }, w(&cw, 0, &[1])]).wait_timeout(T),
        Err(s.remote(0, RemoteAccessError::AccessDenied)),
        "the region's own key does not write"
    );
    let d = s.connect();
    let dw = grant(&*d, offset, len).expect("granted before");
    let before_window = super::RemoteAddr { addr: dw.addr - 1, rkey: dw.rkey };
    let before = d.post(&[WorkRequest::Write { remote: before_window, data: &[0xD0; 2] }]).wait_timeout(T);
    let e = s.connect();
    let ew = grant(&*e, offset, len).expect("granted before");
    let across = e.post(&[w(&ew, 84, &[0xE0; 8])]).wait_timeout(T);
    if s.window_bounds_checked {
        assert_eq!(before, Err(s.remote(0, RemoteAccessError::OutOfBounds)), "a WRITE starting before the window");
        assert_eq!(across, Err(s.remote(0, RemoteAccessError::OutOfBounds)), "a WRITE across the window's end");
        region.read(offset as usize - 8, &mut got[..8]).unwrap();
        assert_eq!(&got[..8], &[0; 8], "nothing landed before the window");
        assert_eq!(region.load_u64(offset as usize + 88), 0, "nothing landed after it");
    } else {
        // The defect this backend is declared to have, checked, so that a device that gains
        // the check fails here (and the declaration can go).
        assert_eq!(
            (before, across),
            (Ok(Vec::new()), Ok(Vec::new())),
            "declared with unchecked window bounds, but refused a WRITE outside the window"
        );
        eprintln!("window bounds not checked by this device: WRITEs outside the window landed");
    }
    // Revoked: the same connection's next WRITE with the key is refused.
    let f = s.connect();
    let fw = grant(&*f, offset, len).expect("granted before");
    f.post(&[w(&fw, 0, &[0xF1; 8])]).wait_timeout(T).expect("in force");
    assert!(revoke(&*f, fw.rkey), "in force until revoked");
    assert!(!revoke(&*f, fw.rkey), "revoked once");
    assert_eq!(f.post(&[w(&fw, 0, &[0xF2; 8])]).wait_timeout(T), Err(s.remote(0, RemoteAccessError::BadKey)));
    assert_eq!(region.load_u64(offset as usize), u64::from_le_bytes([0xF1; 8]), "the revoked WRITE did not land");
    // A window's key is not another connection's to revoke.
    let g = s.connect();
    let gw = grant(&*g, offset, len).expect("granted before");
    assert!(!revoke(&*a, gw.rkey), "revoked only by the grantee's server side");
    g.post(&[w(&gw, 0, &[0x61; 8])]).wait_timeout(T).expect("still in force");
    // Revoked and granted again, many times on one connection (a backend may reuse what it
    // revoked): each grant has a key of its own, and works.
    let mut last = gw.rkey;
    for i in 0..20u8 {
        assert!(revoke(&*g, last));
        let again = grant(&*g, offset, len).expect("granted before");
        assert_ne!(again.rkey, last, "a new grant has a new key");
        g.post(&[w(&again, 8, &[i; 8])]).wait_timeout(T).expect("the new grant is in force");
        assert_eq!(region.load_u64(offset as usize + 8), u64::from_le_bytes([i; 8]));
        last = again.rkey;
    }
}

fn w<'a>(d: &super::RegionDesc, at: u64, data: &'a [u8]) -> WorkRequest<'a> {
    WorkRequest::Write { remote: d.at(at), data }
}

/// The descriptor of a window granted over `base` at `offset`.
fn base_window(base: &super::RegionDesc, offset: u64, len: u64, rkey: u32) -> super::RegionDesc {
    super::RegionDesc { addr: base.addr + offset, len, rkey }
}

/// Several queue pairs used from several threads at once, with many requests in flight.
pub fn many_queue_pairs_at_once(make: MakeServer<'_>) {
    let (s, region, d) = setup(make, 8 * 4096, Access::READ_WRITE);
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let qp = s.connect();
            std::thread::spawn(move || {
                let mut pending = Vec::new();
                for i in 0..500u64 {
                    let off = t * 8192 + (i % 64) * 8;
                    let v = (t << 32) | i;
                    qp.post_unsignaled(&[WorkRequest::Write { remote: d.at(off), data: &v.to_le_bytes() }]).unwrap();
                    pending.push((qp.post(&[WorkRequest::Read { remote: d.at(off), len: 8 }]), v));
                    if pending.len() > 32 {
                        let (c, v) = pending.remove(0);
                        assert_eq!(c.wait_timeout(T).unwrap(), v.to_le_bytes());
                    }
                }
                for (c, v) in pending {
                    assert_eq!(c.wait_timeout(T).unwrap(), v.to_le_bytes());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for t in 0..4u64 {
        for slot in 0..64u64 {
            let last = (0..500u64).filter(|i| i % 64 == slot).max().unwrap();
            assert_eq!(region.load_u64((t * 8192 + slot * 8) as usize), (t << 32) | last);
        }
    }
}

/// Polls `qp`'s completion queue until `n` completions have arrived (or the suite's timeout).
fn poll_until(qp: &dyn QueuePair, n: usize) -> Vec<WorkCompletion> {
    let deadline = std::time::Instant::now() + T;
    let mut got = Vec::new();
    while got.len() < n {
        let want = n - got.len();
        if qp.poll_cq(&mut got, want) == 0 {
            assert!(std::time::Instant::now() < deadline, "{} of {n} completions after {T:?}", got.len());
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    got
}

fn local(lkey: LocalKey, offset: usize, len: u32) -> LocalSlice {
    LocalSlice { lkey, offset, len }
}

/// READs land in the caller's registered memory and WRITEs take their data from it; chains posted
/// with an id complete in the completion queue with that id, in posting order.
pub fn registered_memory_and_completions_by_id(make: MakeServer<'_>) {
    let (s, region, d) = setup(make, 4096, Access::READ_WRITE);
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    region.write(0, &pattern).unwrap();
    let qp = s.connect();
    let mine = Arc::new(MemoryRegion::new(256));
    let k = qp.register_local(mine.clone()).unwrap();
    qp.post_signaled(
        7,
        &[
            WorkRequest::ReadInto { remote: d.at(100), local: local(k, 0, 50) },
            WorkRequest::ReadInto { remote: d.at(3), local: local(k, 61, 13) },
        ],
    )
    .unwrap();
    mine.write(128, b"from registered memory").unwrap();
    qp.post_signaled(8, &[WorkRequest::WriteFrom { remote: d.at(2000), local: local(k, 128, 22) }]).unwrap();
    // Unsignaled WRITEs may take registered memory too; the READ after them sees them.
    mine.write(160, &[0x5A; 9]).unwrap();
    qp.post_unsignaled(&[WorkRequest::WriteFrom { remote: d.at(3000), local: local(k, 160, 9) }]).unwrap();
    qp.post_signaled(9, &[WorkRequest::ReadInto { remote: d.at(3000), local: local(k, 200, 9) }]).unwrap();
    let got = poll_until(&*qp, 3);
    let ok = |wr_id| WorkCompletion { wr_id, result: Ok(()) };
    assert_eq!(got, vec![ok(7), ok(8), ok(9)]);
    let mut bytes = vec![0; 256];
    mine.read(0, &mut bytes).unwrap();
    assert_eq!(&bytes[..50], &pattern[100..150]);
    assert_eq!(&bytes[61..74], &pattern[3..16]);
    assert!(bytes[50..61].iter().all(|b| *b == 0), "nothing lands outside the slices");
    assert_eq!(&bytes[200..209], &[0x5A; 9]);
    assert_eq!(&region_bytes(&region)[2000..2022], b"from registered memory");
    assert_eq!(qp.poll_cq(&mut Vec::new(), 8), 0, "one completion per chain");
}

/// Local memory is checked when posting: a bad key, a slice outside its registration, a READ with
/// nowhere to land are refused at once, send nothing, and leave the queue pair usable.
pub fn local_memory_is_checked_at_post(make: MakeServer<'_>) {
    let (s, _r, d) = setup(make, 256, Access::READ_WRITE);
    let qp = s.connect();
    let k = qp.register_local(Arc::new(MemoryRegion::new(64))).unwrap();
    let read_into = |l| [WorkRequest::ReadInto { remote: d.at(0), local: l }];
    assert_eq!(
        qp.post_signaled(1, &read_into(local(LocalKey(k.0 + 1), 0, 8))),
        Err(FabricError::LocalAccess(LocalAccessError::BadKey))
    );
    assert_eq!(
        qp.post_signaled(2, &read_into(local(k, 60, 8))),
        Err(FabricError::LocalAccess(LocalAccessError::OutOfBounds))
    );
    assert_eq!(
        qp.post_unsignaled(&[WorkRequest::WriteFrom { remote: d.at(0), local: local(k, 64, 1) }]),
        Err(FabricError::LocalAccess(LocalAccessError::OutOfBounds))
    );
    assert_eq!(
        qp.post(&[WorkRequest::ReadInto { remote: d.at(0), local: local(k, 0, 65) }]).wait_timeout(T),
        Err(FabricError::LocalAccess(LocalAccessError::OutOfBounds))
    );
    assert_eq!(
        qp.post_signaled(3, &[WorkRequest::Read { remote: d.at(0), len: 8 }]),
        Err(FabricError::ReadWithoutBuffer)
    );
    qp.post_signaled(4, &read_into(local(k, 56, 8))).unwrap();
    assert_eq!(poll_until(&*qp, 1), vec![WorkCompletion { wr_id: 4, result: Ok(()) }]);
    assert_eq!(qp.poll_cq(&mut Vec::new(), 8), 0, "refused posts complete nothing");
}

/// The error state, seen through the completion queue: the failing chain completes with the
/// remote error, every chain accepted after it with `Flushed`, and later posts are refused or
/// complete flushed.
pub fn error_state_through_the_completion_queue(make: MakeServer<'_>) {
    let (s, _r, d) = setup(make, 256, Access::READ);
    let qp = s.connect();
    let k = qp.register_local(Arc::new(MemoryRegion::new(64))).unwrap();
    let bad = super::RemoteAddr { addr: d.addr, rkey: d.rkey ^ 0x55 };
    qp.post_signaled(1, &[WorkRequest::ReadInto { remote: d.at(0), local: local(k, 0, 8) }]).unwrap();
    qp.post_signaled(2, &[WorkRequest::ReadInto { remote: bad, local: local(k, 8, 8) }]).unwrap();
    let mut accepted = 2;
    for id in 3..6 {
        match qp.post_signaled(id, &[WorkRequest::ReadInto { remote: d.at(0), local: local(k, 16, 8) }]) {
            Ok(()) => accepted += 1,
            Err(e) => assert_eq!(e, FabricError::Flushed),
        }
    }
    let got = poll_until(&*qp, accepted);
    assert_eq!(got[0], WorkCompletion { wr_id: 1, result: Ok(()) });
    assert_eq!(got[1], WorkCompletion { wr_id: 2, result: Err(s.remote(0, RemoteAccessError::BadKey)) });
    for (i, c) in got[2..].iter().enumerate() {
        assert_eq!(c.wr_id, 3 + i as u64, "in posting order");
        assert_eq!(c.result, Err(FabricError::Flushed));
    }
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(qp.poll_cq(&mut Vec::new(), 8), 0);
}

/// A waker armed on the completion queue is woken by the next completion, and at once if one is
/// already there.
pub fn armed_completion_queue_wakes(make: MakeServer<'_>) {
    struct Flag(std::sync::atomic::AtomicUsize);
    impl std::task::Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let wakes = |f: &Flag| f.0.load(std::sync::atomic::Ordering::SeqCst);
    let (s, _r, d) = setup(make, 64, Access::READ_WRITE);
    let qp = s.connect();
    let k = qp.register_local(Arc::new(MemoryRegion::new(8))).unwrap();
    let flag = Arc::new(Flag(0.into()));
    let waker = std::task::Waker::from(flag.clone());
    qp.arm_cq(&waker);
    assert_eq!(wakes(&flag), 0, "nothing to report yet");
    qp.post_signaled(1, &[WorkRequest::ReadInto { remote: d.at(0), local: local(k, 0, 8) }]).unwrap();
    let deadline = std::time::Instant::now() + T;
    while wakes(&flag) == 0 {
        assert!(std::time::Instant::now() < deadline, "the armed waker was not woken");
        std::thread::sleep(Duration::from_micros(200));
    }
    // Still unpolled: arming again wakes at once.
    qp.arm_cq(&waker);
    assert_eq!(wakes(&flag), 2);
    assert_eq!(poll_until(&*qp, 1).len(), 1);
}

/// Expands to one `#[test]` per conformance check, for the backend built by `$make`
/// (a `fn(Arc<dyn RpcService>) -> TestServer`).
#[macro_export]
macro_rules! fabric_conformance {
    ($make:ident) => {
        $crate::fabric_conformance!(@tests $make;
            read_write_round_trip, chain_executes_in_order, posts_execute_in_order,
            later_write_never_visible_before_earlier, access_errors_are_reported,
            strided_registration_refuses_writes_outside_its_windows,
            error_state_flushes_what_follows, failed_request_stops_its_chain, unsignaled_failures_are_counted,
            unsignaled_stream_beyond_the_send_queue_depth, rpc_responses_match_requests, dropped_rpc_is_an_error, large_transfers,
            deregistered_key_is_refused, many_queue_pairs_at_once, registered_memory_and_completions_by_id,
            local_memory_is_checked_at_post, error_state_through_the_completion_queue,
            armed_completion_queue_wakes, rpc_credits_bound_requests_in_flight,
            large_requests_move_by_rendezvous, windows_grant_one_connection_one_range);
    };
    (@tests $make:ident; $($check:ident),*) => {
        mod conformance {
            $(
                #[test]
                fn $check() {
                    $crate::fabric::conformance::$check(&super::$make);
                }
            )*
        }
    };
}
