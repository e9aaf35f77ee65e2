//! The `verbs` backend (cargo feature `rdma`): the fabric on a real RDMA device, through
//! libibverbs ([`sideway`], which loads libibverbs at run time: a binary built with this backend
//! starts on a machine without rdma-core and reports [`DeviceError::NoDevice`]).
//!
//! * [`VerbsDevice`] (`device.rs`): the device, port and GID a process uses (configurable:
//!   [`VerbsConfig`]), its protection domain, completion queues with notification channels,
//!   RC queue pairs and registrations.
//! * [`VerbsRegistrar`] and [`VerbsNic`] (`nic.rs`): the server. Regions are registered with the
//!   rights asked for, so the NIC checks every one-sided access; the listener admits clients
//!   (secret, connection limit) in a handshake (`wire.rs`) through rdma_cm (`cm.rs`: private
//!   data on connect, accept and reject; the CM exchanges queue pair numbers, PSNs and GIDs) or
//!   over TCP, grants credits, then serves each client's RPCs from a queue pair with that many
//!   receive buffers pre-posted.
//! * [`VerbsQueuePair`] (`qp.rs`): the client. Chains are posted as one work-request list (one
//!   doorbell), signaled only at the end, unsignaled chains signaled selectively; READs land in
//!   the caller's registered memory (`ReadInto`) or a staging ring (`ring.rs`); the completion
//!   queue is polled by a thread that sleeps on the queue's channel when idle.
//!
//! Differences from the software backends, all typed: a remote refusal is
//! [`RemoteAccessError::Refused`](crate::fabric::RemoteAccessError::Refused) (verbs does not
//! say whether key, bounds or rights were wrong), and strided registrations are refused
//! ([`Unsupported::StridedRegistration`](crate::fabric::Unsupported)): a server on verbs grants
//! client fills a type-2 memory window per reservation instead (`window.rs`), or fills itself.

mod cm;
mod device;
mod nic;
mod qp;
mod queue;
mod ring;
mod window;
pub mod wire;

pub use device::{VerbsDevice, MAX_INLINE};
pub use nic::{NicConfig, VerbsNic, VerbsRegistrar, WindowPeers};
pub use qp::VerbsQueuePair;

pub use crate::fabric::verbs_config::VerbsConfig;
use crate::fabric::DeviceError;

/// Why the verbs tests of this process cannot run, if they cannot: no device, as on a machine
/// without RDMA (or without rdma-core).
pub fn unavailable(config: &VerbsConfig) -> Option<DeviceError> {
    match VerbsDevice::open(config) {
        Ok(_) => None,
        Err(crate::fabric::FabricError::Device(e)) => Some(e),
        Err(_) => Some(DeviceError::NoDevice(std::io::ErrorKind::Other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fabric::conformance::TestServer;
    use crate::fabric::{
        CloseReason, CmError, FabricError, IncomingRpc, PeerId, QueuePair, RpcService, Secret, VerbsConnect,
    };
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// The device the tests use: `SCALIO_RDMA_DEVICE` (e.g. `rxe0`), else the first; GID index
    /// `SCALIO_RDMA_GID`, else the default choice; connection setup `SCALIO_RDMA_CONNECT`
    /// (`rdma_cm`, the default, or `tcp`: the whole suite runs on either).
    fn config() -> VerbsConfig {
        VerbsConfig {
            device: std::env::var("SCALIO_RDMA_DEVICE").ok(),
            gid_index: std::env::var("SCALIO_RDMA_GID").ok().and_then(|g| g.parse().ok()),
            connect: std::env::var("SCALIO_RDMA_CONNECT").ok().and_then(|c| c.parse().ok()).unwrap_or_default(),
            ..VerbsConfig::default()
        }
    }

    /// None (and a line saying why) when there is no device. With `SCALIO_REQUIRE_RDMA=1` a
    /// missing device fails the test instead, so that CI on a machine with one cannot skip.
    pub(super) fn device() -> Option<Arc<VerbsDevice>> {
        device_with(&config())
    }

    fn device_with(config: &VerbsConfig) -> Option<Arc<VerbsDevice>> {
        match VerbsDevice::open(config) {
            Ok(d) => Some(d),
            Err(e) => {
                assert!(std::env::var("SCALIO_REQUIRE_RDMA").as_deref() != Ok("1"), "SCALIO_REQUIRE_RDMA=1 but {e}");
                eprintln!("skipped: the verbs backend needs an RDMA device: {e}");
                None
            }
        }
    }

    /// Where a test server on `dev` listens: the device's own address for rdma_cm (which cannot
    /// use loopback), loopback for the TCP handshake. Any free port.
    fn listen_addr(dev: &VerbsDevice) -> std::net::SocketAddr {
        match dev.connect_method() {
            VerbsConnect::RdmaCm => dev.ip_addr().expect("the device's GID has an IP address"),
            VerbsConnect::Tcp => "127.0.0.1:0".parse().unwrap(),
        }
    }

    fn make(service: Arc<dyn RpcService>) -> TestServer {
        let dev = device().expect("checked by the caller");
        let registrar = Arc::new(VerbsRegistrar::new(dev.clone()));
        // The listener lists its connections where the registrar binds windows.
        let config =
            NicConfig { credits: 64, buffer_len: 16 << 10, peers: Some(registrar.peers()), ..NicConfig::default() };
        let nic = VerbsNic::start(dev.clone(), listen_addr(&dev), config, service).expect("listen");
        let addr = nic.local_addr();
        let soft_roce = dev.name().starts_with("rxe");
        let s = TestServer::new(
            registrar,
            64,
            move || Arc::new(VerbsQueuePair::connect(&dev, addr, None).expect("connect")) as Arc<dyn QueuePair>,
            nic,
        )
        .with_coarse_remote_errors();
        // Soft-RoCE checks a window's key, queue pair and revocation, but bounds only against
        // the registration under it (measured in the guest: README, "Real RDMA").
        if soft_roce {
            s.with_unchecked_window_bounds()
        } else {
            s
        }
    }

    /// Expands to one `#[test]` per conformance check that runs it on verbs, or says it skipped.
    macro_rules! verbs_conformance {
        ($($check:ident),* $(,)?) => {
            mod conformance {
                $(
                    #[test]
                    fn $check() {
                        if super::device().is_some() {
                            $crate::fabric::conformance::$check(&super::make);
                        }
                    }
                )*
            }
        };
    }

    // Every check of the shared suite but strided registration, which verbs refuses (below).
    verbs_conformance!(
        read_write_round_trip,
        chain_executes_in_order,
        posts_execute_in_order,
        later_write_never_visible_before_earlier,
        access_errors_are_reported,
        error_state_flushes_what_follows,
        failed_request_stops_its_chain,
        unsignaled_failures_are_counted,
        unsignaled_stream_beyond_the_send_queue_depth,
        rpc_responses_match_requests,
        dropped_rpc_is_an_error,
        large_transfers,
        deregistered_key_is_refused,
        many_queue_pairs_at_once,
        registered_memory_and_completions_by_id,
        local_memory_is_checked_at_post,
        error_state_through_the_completion_queue,
        armed_completion_queue_wakes,
        rpc_credits_bound_requests_in_flight,
        windows_grant_one_connection_one_range,
    );

    /// What the device says of memory windows (`ibv_query_device`), printed for the record; on
    /// a device with type-2 windows the registrar must offer them.
    #[test]
    fn memory_window_capability() {
        let Some(dev) = device() else { return };
        let r = VerbsRegistrar::new(dev.clone());
        eprintln!(
            "{}: IBV_DEVICE_MEM_WINDOW_TYPE_2B {}",
            dev.name(),
            if r.has_windows() { "present" } else { "absent" }
        );
        assert_eq!(r.has_windows(), dev.has_type2_windows());
        if std::env::var("SCALIO_REQUIRE_MW").as_deref() == Ok("1") {
            assert!(r.has_windows(), "SCALIO_REQUIRE_MW=1 but {} has no type-2 windows", dev.name());
        }
    }

    /// The rendezvous check: verbs refuses strided keys, so the layer registers its staging
    /// region whole (see `Rendezvous::new`), as the verbs server gets it.
    #[test]
    fn large_requests_move_by_rendezvous() {
        if device().is_some() {
            crate::fabric::conformance::large_requests_move_by_rendezvous(&make);
        }
    }

    #[test]
    fn strided_registration_is_refused_not_widened() {
        let Some(dev) = device() else { return };
        let r = VerbsRegistrar::new(dev);
        let region = Arc::new(crate::fabric::MemoryRegion::new(128));
        let pattern = crate::fabric::Strided::new(8, 24, 32).unwrap();
        assert_eq!(
            crate::fabric::Registrar::register_strided(&r, region, crate::fabric::Access::WRITE, pattern),
            Err(crate::fabric::FabricError::Unsupported(crate::fabric::Unsupported::StridedRegistration))
        );
    }

    /// The server's cache table on verbs with trusted fills: one region registered twice, a
    /// READ key and a WRITE key; WRITEs with one land where READs with the other see them.
    #[test]
    fn one_region_with_a_read_key_and_a_write_key() {
        use crate::fabric::{Access, LocalSlice, MemoryRegion, WorkRequest};
        let Some(_) = device() else { return };
        let s = make(crate::fabric::conformance::reversing_service());
        let region = Arc::new(MemoryRegion::new(256 * 8 * 112));
        let read = s.registrar.register(region.clone(), Access::READ).unwrap();
        let write = s.registrar.register(region.clone(), Access::WRITE).unwrap();
        let qp = s.connect();
        let mine = Arc::new(MemoryRegion::new(896));
        let k = qp.register_local(mine.clone()).unwrap();
        qp.post_unsignaled(&[WorkRequest::Write { remote: write.at(896 * 3 + 24), data: &[7; 8] }]).unwrap();
        qp.post(&[WorkRequest::Write { remote: write.at(896 * 5 + 40), data: &[9; 100] }]).wait().unwrap();
        let local = LocalSlice { lkey: k, offset: 0, len: 896 };
        qp.post_signaled(1, &[WorkRequest::ReadInto { remote: read.at(896 * 3), local }]).unwrap();
        let mut got = Vec::new();
        while qp.poll_cq(&mut got, 1) == 0 {
            std::thread::yield_now();
        }
        assert_eq!(got[0].result, Ok(()));
        assert_eq!(mine.load_u64(24), u64::from_le_bytes([7; 8]));
        let back = qp.post(&[WorkRequest::Read { remote: read.at(896 * 5 + 40), len: 100 }]).wait().unwrap();
        assert_eq!(back, vec![9; 100]);
    }

    /// An echo service that records which peers the NIC reported closed, and counts calls.
    #[derive(Default)]
    struct Closes(parking_lot::Mutex<Vec<PeerId>>, std::sync::atomic::AtomicUsize);

    impl RpcService for Closes {
        fn handle(&self, rpc: IncomingRpc) {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut p = rpc.payload;
            p.reverse();
            rpc.responder.reply(&p);
        }
        fn peer_closed(&self, peer: PeerId) {
            self.0.lock().push(peer);
        }
    }

    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let t = Instant::now();
        while !done() {
            assert!(t.elapsed() < Duration::from_secs(20), "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A client that leaves (its queue pair dropped: rdma_cm disconnects) is closed at the
    /// server: `peer_closed` is called and the connection no longer counts; the same over the
    /// TCP handshake (its TCP connection closing). A server that stops disconnects its clients,
    /// which then fail as disconnected rather than hang.
    #[test]
    fn departed_clients_are_closed_at_the_server() {
        for method in [VerbsConnect::RdmaCm, VerbsConnect::Tcp] {
            let Some(dev) = device_with(&VerbsConfig { connect: method, ..config() }) else { return };
            let closes = Arc::new(Closes::default());
            let nic = VerbsNic::start(dev.clone(), listen_addr(&dev), NicConfig::default(), closes.clone()).unwrap();
            let a = VerbsQueuePair::connect(&dev, nic.local_addr(), None).unwrap();
            let b = VerbsQueuePair::connect(&dev, nic.local_addr(), None).unwrap();
            assert_eq!(a.call(&[1, 2, 3]).wait(), Ok(vec![3, 2, 1]), "{method:?}");
            assert_eq!(b.call(&[4, 5]).wait(), Ok(vec![5, 4]), "{method:?}");
            assert_eq!(nic.connections(), 2);
            drop(a);
            wait_until("the server saw the client leave", || closes.0.lock().len() == 1);
            wait_until("one connection is left", || nic.connections() == 1);
            assert_eq!(b.call(&[6]).wait(), Ok(vec![6]), "the other client is served still ({method:?})");
            if method == VerbsConnect::RdmaCm {
                // The server going away is a disconnect for its clients.
                drop(nic);
                wait_until(
                    "the client saw the server leave",
                    || matches!(b.call(&[7]).wait(), Err(e) if e.ends_queue_pair()),
                );
            }
        }
    }

    /// A client process killed with SIGKILL says nothing, but the kernel destroys its rdma_cm
    /// identifiers, which disconnects them: the server calls `peer_closed` for it.
    #[test]
    fn a_killed_client_process_is_closed_at_the_server() {
        let Some(dev) = device() else { return };
        let closes = Arc::new(Closes::default());
        let nic = VerbsNic::start(dev.clone(), listen_addr(&dev), NicConfig::default(), closes.clone()).unwrap();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "fabric::verbs::tests::client_process_for_the_kill_test", "--ignored"])
            .env("SCALIO_KILL_TEST_SERVER", nic.local_addr().to_string())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        wait_until("the child process called", || closes.1.load(std::sync::atomic::Ordering::Relaxed) == 1);
        assert_eq!(nic.connections(), 1);
        assert!(closes.0.lock().is_empty());
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        wait_until("the server saw the killed client leave", || closes.0.lock().len() == 1);
        wait_until("no connection is left", || nic.connections() == 0);
    }

    /// The killed process of [`a_killed_client_process_is_closed_at_the_server`].
    #[test]
    #[ignore = "the child process of a_killed_client_process_is_closed_at_the_server"]
    fn client_process_for_the_kill_test() {
        let Ok(addr) = std::env::var("SCALIO_KILL_TEST_SERVER") else { return };
        let dev = device().expect("the parent found one");
        let qp = VerbsQueuePair::connect(&dev, addr.parse().unwrap(), None).unwrap();
        assert_eq!(qp.call(&[1, 2]).wait(), Ok(vec![2, 1]));
        std::thread::sleep(Duration::from_secs(300)); // until killed
    }

    /// Refusals say why, as typed errors: a missing or wrong secret, the connection limit, a
    /// port nobody listens on, an address rdma_cm cannot use.
    #[test]
    fn rdma_cm_refusals_are_typed() {
        let Some(dev) = device_with(&VerbsConfig { connect: VerbsConnect::RdmaCm, ..config() }) else { return };
        // 64 bytes, the most a secret may have: more than a connect request's private data.
        let secret = Secret::new([b'k'; crate::fabric::MAX_SECRET].to_vec()).unwrap();
        let config = NicConfig { max_connections: 1, secret: Some(secret.clone()), ..NicConfig::default() };
        let nic = VerbsNic::start(dev.clone(), listen_addr(&dev), config, Arc::new(Closes::default())).unwrap();
        let addr = nic.local_addr();
        let refused = |r: Result<VerbsQueuePair, FabricError>| r.err().expect("refused");
        assert_eq!(
            refused(VerbsQueuePair::connect(&dev, addr, None)),
            FabricError::Refused(CloseReason::Unauthenticated)
        );
        let wrong = Secret::new(b"another secret".to_vec()).unwrap();
        assert_eq!(
            refused(VerbsQueuePair::connect(&dev, addr, Some(&wrong))),
            FabricError::Refused(CloseReason::Unauthenticated)
        );
        let first = VerbsQueuePair::connect(&dev, addr, Some(&secret)).expect("the right secret is admitted");
        assert_eq!(first.call(&[1, 2]).wait(), Ok(vec![2, 1]));
        assert_eq!(
            refused(VerbsQueuePair::connect(&dev, addr, Some(&secret))),
            FabricError::Refused(CloseReason::TooManyConnections)
        );
        drop(first);
        wait_until("the slot is free again", || nic.connections() == 0);
        drop(VerbsQueuePair::connect(&dev, addr, Some(&secret)).expect("admitted once the first left"));
        // Nobody listens there: the peer's CM rejects without a scalio reason.
        let mut nobody = addr;
        nobody.set_port(if addr.port() == 65535 { 1 } else { addr.port() + 1 });
        match refused(VerbsQueuePair::connect(&dev, nobody, None)) {
            FabricError::ConnectionManager(CmError::Rejected { .. } | CmError::Unreachable(_)) => {}
            other => panic!("connect to a port nobody listens on: {other:?}"),
        }
        // rdma_cm cannot connect over loopback (the TCP handshake can).
        match refused(VerbsQueuePair::connect(&dev, "127.0.0.1:7".parse().unwrap(), None)) {
            FabricError::ConnectionManager(_) => {}
            other => panic!("connect to loopback: {other:?}"),
        }
    }

    /// RoCE over an IPv6 link-local address: the listener and the client use the scoped address
    /// (`fe80::…%eth0`) of the device's link-local GID (`SCALIO_RDMA_LINK_LOCAL_GID`, default
    /// index 0, which Soft-RoCE gives the interface's link-local address).
    #[test]
    fn rdma_cm_over_ipv6_link_local() {
        let gid = std::env::var("SCALIO_RDMA_LINK_LOCAL_GID").ok().and_then(|g| g.parse().ok()).unwrap_or(0);
        let link_local = VerbsConfig { gid_index: Some(gid), connect: VerbsConnect::RdmaCm, ..config() };
        let Some(dev) = device_with(&link_local) else { return };
        let Some(std::net::SocketAddr::V6(listen)) = dev.ip_addr().filter(|a| a.is_ipv6()) else {
            eprintln!("skipped: GID {gid} of {} is not an IPv6 address", dev.name());
            return;
        };
        assert_eq!(listen.ip().segments()[0] & 0xffc0, 0xfe80, "GID {gid} is link-local");
        assert_ne!(listen.scope_id(), 0, "a link-local address needs its interface as scope");
        let registrar = VerbsRegistrar::new(dev.clone());
        let nic =
            VerbsNic::start(dev.clone(), listen.into(), NicConfig::default(), Arc::new(Closes::default())).unwrap();
        let addr = nic.local_addr();
        assert!(matches!(addr, std::net::SocketAddr::V6(a) if a.scope_id() == listen.scope_id()), "{addr}");
        let region = Arc::new(crate::fabric::MemoryRegion::new(4096));
        region.write(100, b"link-local").unwrap();
        let d = crate::fabric::Registrar::register(&registrar, region, crate::fabric::Access::READ).unwrap();
        let qp = VerbsQueuePair::connect(&dev, addr, None).expect("connect over fe80::%scope");
        assert_eq!(qp.call(&[1, 2, 3]).wait(), Ok(vec![3, 2, 1]));
        let read = crate::fabric::WorkRequest::Read { remote: d.at(100), len: 10 };
        assert_eq!(qp.post(&[read]).wait(), Ok(b"link-local".to_vec()));
        // Without its scope, the address is ambiguous: resolution fails, typed.
        let unscoped = std::net::SocketAddr::V6(std::net::SocketAddrV6::new(*listen.ip(), addr.port(), 0, 0));
        match VerbsQueuePair::connect(&dev, unscoped, None) {
            Err(FabricError::ConnectionManager(_)) => {}
            Err(other) => panic!("unscoped link-local: {other:?}"),
            Ok(_) => eprintln!("note: an unscoped link-local address resolved here (one interface only)"),
        }
    }

    /// A region on 2 MiB hugepages registers on the device like any other and serves READs
    /// and WRITEs (what `cache.hugepages` gives the cache table). Needs reserved hugepages: the
    /// CI guest reserves them and sets `SCALIO_REQUIRE_HUGEPAGES=1`.
    #[test]
    fn hugepage_region_registers_and_serves() {
        use crate::fabric::{Access, HugePageError, MemoryRegion, WorkRequest, HUGEPAGE};
        let Some(_) = device() else { return };
        let region = match MemoryRegion::on_hugepages(2 * HUGEPAGE) {
            Ok(r) => Arc::new(r),
            Err(e @ HugePageError::NotReserved { .. }) => {
                assert!(std::env::var("SCALIO_REQUIRE_HUGEPAGES").as_deref() != Ok("1"), "required, but {e}");
                eprintln!("skipped: {e}");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        let s = make(crate::fabric::conformance::reversing_service());
        let read = s.registrar.register(region.clone(), Access::READ).unwrap();
        let write = s.registrar.register(region.clone(), Access::WRITE).unwrap();
        region.write(HUGEPAGE - 3, b"straddles two hugepages").unwrap();
        let qp = s.connect();
        let got = qp.post(&[WorkRequest::Read { remote: read.at(HUGEPAGE as u64 - 3), len: 23 }]).wait();
        assert_eq!(got, Ok(b"straddles two hugepages".to_vec()));
        qp.post(&[WorkRequest::Write { remote: write.at(2 * HUGEPAGE as u64 - 100), data: &[0xAB; 100] }])
            .wait()
            .unwrap();
        let mut back = [0u8; 100];
        region.read(2 * HUGEPAGE - 100, &mut back).unwrap();
        assert_eq!(back, [0xAB; 100]);
    }

    /// Without RDMA (librdmacm missing, or no rdma_ucm in the kernel) rdma_cm refuses typed, as
    /// device opening does; with it, a channel opens.
    #[test]
    fn rdma_cm_without_a_device_says_why() {
        match (VerbsDevice::open(&config()), cm::Channel::new()) {
            (Ok(_), channel) => assert!(channel.is_ok(), "a device but no rdma_cm: {:?}", channel.err()),
            (Err(_), Err(FabricError::ConnectionManager(CmError::Call { call, .. }))) => {
                assert_eq!(call, "rdma_create_event_channel")
            }
            (Err(_), Err(other)) => panic!("{other:?}"),
            // librdmacm may open its channel before it looks for devices.
            (Err(_), Ok(_)) => {}
        }
    }

    /// The cost of a window per miss, printed, not asserted (speed belongs in benchmarks; this
    /// records what the CI guest measures): a miss-like sequence — an RPC whose handler grants a
    /// window over 88 bytes (as META_GET does for a reserved slot), the client's fill WRITE
    /// through it, an RPC whose handler revokes it — against the same sequence with no window
    /// (the fill through a key of the whole region), alternating, in one run. Also the server's
    /// own time in `grant_window` and `revoke_window` (posting the bind and the invalidation).
    #[test]
    fn window_cost_report() {
        use crate::fabric::{Access, IncomingRpc, MemoryRegion, Registrar, WorkRequest};
        use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
        use std::sync::OnceLock;
        const T: std::time::Duration = std::time::Duration::from_secs(20);
        let Some(dev) = device() else { return };
        if !VerbsRegistrar::new(dev.clone()).has_windows() {
            return eprintln!("skipped: {} has no type-2 memory windows", dev.name());
        }
        type Target = OnceLock<(Arc<dyn Registrar>, crate::fabric::RegionDesc)>;
        let target: Arc<Target> = Arc::new(OnceLock::new());
        let server_ns = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
        let (t, ns) = (target.clone(), server_ns.clone());
        let service = Arc::new(move |rpc: IncomingRpc| {
            let (registrar, base) = t.get().expect("set").clone();
            let started = std::time::Instant::now();
            let reply = match rpc.payload[0] {
                // Grant a window over a slot's client range.
                1 => {
                    let w = registrar.grant_window(rpc.peer, base, 896 * 3 + 24, 88, Access::WRITE).expect("grant");
                    ns.0.fetch_add(started.elapsed().as_nanos() as u64, Relaxed);
                    w.rkey.to_le_bytes().to_vec()
                }
                2 => {
                    let rkey = u32::from_le_bytes(rpc.payload[1..5].try_into().unwrap());
                    assert!(registrar.revoke_window(rpc.peer, rkey));
                    ns.1.fetch_add(started.elapsed().as_nanos() as u64, Relaxed);
                    vec![1]
                }
                _ => vec![0],
            };
            rpc.responder.reply(&reply);
        }) as Arc<dyn RpcService>;
        let s = make(service);
        let region = Arc::new(MemoryRegion::new(896 * 8));
        let base = s.registrar.register(region.clone(), Access::READ.with(Access::WINDOWS)).unwrap();
        let whole = s.registrar.register(region, Access::WRITE).unwrap();
        target.set((s.registrar.clone(), base)).unwrap_or_else(|_| unreachable!());
        let qp = s.connect();
        let fill = [7u8; 79];
        let with_window = || {
            let key = u32::from_le_bytes(qp.call(&[1]).wait_timeout(T).unwrap().try_into().unwrap());
            let at = crate::fabric::RemoteAddr { addr: base.addr + 896 * 3 + 33, rkey: key };
            qp.post(&[WorkRequest::Write { remote: at, data: &fill }]).wait_timeout(T).unwrap();
            let mut revoke = vec![2];
            revoke.extend_from_slice(&key.to_le_bytes());
            assert_eq!(qp.call(&revoke).wait_timeout(T).unwrap(), vec![1]);
        };
        let without = || {
            qp.call(&[0]).wait_timeout(T).unwrap();
            qp.post(&[WorkRequest::Write { remote: whole.at(896 * 3 + 33), data: &fill }]).wait_timeout(T).unwrap();
            qp.call(&[0]).wait_timeout(T).unwrap();
        };
        for _ in 0..10 {
            with_window();
            without();
        }
        server_ns.0.store(0, Relaxed);
        server_ns.1.store(0, Relaxed);
        let n = 100u32;
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..n {
            let t = std::time::Instant::now();
            with_window();
            a.push(t.elapsed().as_secs_f64() * 1e6);
            let t = std::time::Instant::now();
            without();
            b.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let stat = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            (v.iter().sum::<f64>() / v.len() as f64, v[v.len() / 2])
        };
        let ((ma, pa), (mb, pb)) = (stat(&mut a), stat(&mut b));
        let per = |x: &AtomicU64| x.load(Relaxed) as f64 / 1e3 / f64::from(n);
        eprintln!(
            "verbs window cost on {} ({n} miss-like sequences each, alternating): with a window {ma:.0} us mean, \
             {pa:.0} us median; without {mb:.0} us mean, {pb:.0} us median; server time in grant_window {:.1} us, \
             revoke_window {:.1} us per miss",
            dev.name(),
            per(&server_ns.0),
            per(&server_ns.1)
        );
    }

    #[test]
    fn without_a_device_opening_says_why() {
        // On a machine without RDMA this is the typed "no device"; with one, a bad name is.
        let missing = VerbsConfig { device: Some("no-such-device".into()), ..VerbsConfig::default() };
        match unavailable(&missing) {
            Some(DeviceError::NotFound) | Some(DeviceError::NoDevice(_)) => {}
            other => panic!("{other:?}"),
        }
    }

    /// One-sided READ latency on the device (64 bytes, queue depth 1): printed, not asserted
    /// (speed belongs in benchmarks; this records what the CI guest measures).
    #[test]
    fn read_latency_report() {
        let Some(dev) = device() else { return };
        let s = make(crate::fabric::conformance::reversing_service());
        let region = Arc::new(crate::fabric::MemoryRegion::new(4096));
        let d = s.registrar.register(region, crate::fabric::Access::READ).unwrap();
        let qp = s.connect();
        let mine = Arc::new(crate::fabric::MemoryRegion::new(64));
        let k = qp.register_local(mine).unwrap();
        let read = crate::fabric::WorkRequest::ReadInto {
            remote: d.at(0),
            local: crate::fabric::LocalSlice { lkey: k, offset: 0, len: 64 },
        };
        // Busy-polling the completion queue, as ib_read_lat does (yielding: a software device
        // works in kernel threads that need the CPU).
        let mut got = Vec::new();
        let mut one = |i: u64| {
            qp.post_signaled(i, &[read]).unwrap();
            got.clear();
            while qp.poll_cq(&mut got, 1) == 0 {
                std::thread::yield_now();
            }
            assert_eq!(got[0].result, Ok(()));
        };
        for i in 0..100 {
            one(i);
        }
        let n = 2000u64;
        let t = std::time::Instant::now();
        for i in 0..n {
            one(i);
        }
        let us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
        eprintln!("verbs READ latency on {}: {us:.1} us per 64-byte READ (queue depth 1, {n} READs)", dev.name());
        // An RPC waits for its response (the poller thread's and the server's wake-ups included).
        let t = std::time::Instant::now();
        let calls = 200u64;
        for i in 0..calls {
            assert_eq!(qp.call(&[0, i as u8]).wait().unwrap(), vec![i as u8, 0, 0xEE]);
        }
        let us = t.elapsed().as_secs_f64() * 1e6 / calls as f64;
        eprintln!("verbs RPC round trip on {}: {us:.1} us per call (queue depth 1, {calls} calls)", dev.name());
    }
}
