//! The initiator against the target on loopback, across every command: connect, Identify,
//! discovery, reads of a file's pattern, writes (in-capsule and through R2T), write protection,
//! flush, 128 commands in flight on one queue, several I/O queues, keep-alive expiry,
//! disconnect, digests, SQ flow control, and the block reader.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use scalio_client::nvme::{discover, ConnectOptions, NvmeError, NvmeTcpBlockReader, NvmeTcpController};
use scalio_common::block::{BlockError, BlockReader};
use scalio_common::nvme::command::{cns, feature, log_page, AdminCommand, IoCommand};
use scalio_common::nvme::discovery::{adrfam, subtype, trtype};
use scalio_common::nvme::fabrics::{property, Cap, DISCOVERY_NQN};
use scalio_common::nvme::identify::{controller_type, decode_namespace_descriptors, nidt};
use scalio_common::nvme::sqe::Sgl;
use scalio_common::nvme::status::{command_specific, generic, sct};
use scalio_common::rpc::BlockTarget;
use scalio_server::target::{
    CommandKind, FileNamespace, MemNamespace, NvmeTarget, ReadDone, SubsystemConfig, TargetConfig, TargetNamespace,
    WriteDone,
};

const RO: &str = "nqn.2024-01.io.scalio:ssd0";
const RW: &str = "nqn.2024-01.io.scalio:ssd1";
const BLOCKS: u64 = 4096; // 2 MiB

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| ((i * 7 + i / 512) as u8).wrapping_add(seed)).collect()
}

fn file_with(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    f.flush().unwrap();
    f
}

struct Setup {
    target: NvmeTarget,
    ro_file: tempfile::NamedTempFile,
    rw_file: tempfile::NamedTempFile,
}

fn setup_with(tune: impl FnOnce(&mut TargetConfig)) -> Setup {
    let ro_file = file_with(&pattern(BLOCKS as usize * 512, 1));
    let rw_file = file_with(&pattern(BLOCKS as usize * 512, 2));
    let ro = Arc::new(FileNamespace::open(ro_file.path(), false).unwrap());
    let rw = Arc::new(FileNamespace::open(rw_file.path(), true).unwrap());
    let mut cfg = TargetConfig::on("127.0.0.1:0".parse().unwrap())
        .subsystem(SubsystemConfig::new(RO, ro))
        .subsystem(SubsystemConfig::new(RW, rw).allow_writes(true));
    cfg.discovery_listen = Some("127.0.0.1:0".parse().unwrap());
    tune(&mut cfg);
    Setup { target: NvmeTarget::start(cfg).unwrap(), ro_file, rw_file }
}

fn setup() -> Setup {
    setup_with(|_| {})
}

fn opts() -> ConnectOptions {
    ConnectOptions { command_timeout: Duration::from_secs(10), ..ConnectOptions::default() }
}

async fn connect(t: &NvmeTarget, nqn: &str) -> NvmeTcpController {
    NvmeTcpController::connect(t.local_addr(), nqn, opts()).await.unwrap()
}

/// Waits (bounded) until `cond` holds.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn connect_and_identify_decode_the_fields() {
    let s = setup();
    let c = connect(&s.target, RO).await;
    let id = c.identity();
    assert_eq!(id.cntrltype, controller_type::IO);
    assert_eq!(id.subnqn, RO);
    assert_eq!(id.cntlid, c.cntlid());
    assert_ne!(c.cntlid(), 0);
    assert_eq!(id.ver, 0x0001_0400);
    assert_eq!(c.version(), 0x0001_0400);
    assert_eq!(id.mdts, 5);
    assert_eq!(c.max_transfer(), 128 * 1024);
    assert_eq!(id.ioccsz, (8192 + 64) / 16);
    assert_eq!(id.iorcsz, 1);
    assert_eq!(id.icdoff, 0);
    assert_eq!(id.sgls & 0x3, 1, "SGLs supported");
    assert_eq!(id.sqes, 0x66);
    assert_eq!(id.cqes, 0x44);
    assert_eq!(id.nn, 1);
    assert_eq!(id.maxcmd, 1024);
    assert!(id.model.starts_with("scalio"));
    assert_eq!(id.serial.len(), 16);
    let cap = c.cap();
    assert_eq!(cap.mqes, 1023);
    assert_eq!(cap.css & 1, 1, "NVM command set");
    assert_eq!(Cap::from_u64(c.property_get(property::CAP).await.unwrap()), cap);

    // A fresh Identify matches the one read at connect time.
    assert_eq!(&c.identify_controller().await.unwrap(), id);
    assert_eq!(c.active_namespaces().await.unwrap(), vec![1]);
    let ns = c.identify_namespace(1).await.unwrap();
    assert_eq!(ns.nsze, BLOCKS);
    assert_eq!(ns.ncap, BLOCKS);
    assert_eq!(ns.block_size(), Some(512));
    assert_eq!(ns.nsattr & 1, 1, "read-only subsystem reports write protection");
    assert_ne!(ns.nguid, [0; 16]);
    let info = c.namespaces();
    assert_eq!(info.len(), 1);
    assert_eq!((info[0].nsid, info[0].blocks, info[0].block_size, info[0].write_protected), (1, BLOCKS, 512, true));

    // Namespace identification descriptors (what a Linux host asks for at NVMe 1.3+).
    let sqe = AdminCommand::Identify { cns: cns::NAMESPACE_DESCRIPTORS, cntid: 0, nsid: 1, csi: 0 }.to_sqe();
    let d = c.submit_raw(Some(0), sqe, None, 4096).await.unwrap();
    let descs = decode_namespace_descriptors(&d.data);
    assert!(descs.iter().any(|x| x.nidt == nidt::NGUID && x.nid == ns.nguid.to_vec()));
    assert!(descs.iter().any(|x| x.nidt == nidt::UUID && x.nid.len() == 16));

    // The other subsystem is a different namespace.
    let c2 = connect(&s.target, RW).await;
    let ns2 = c2.identify_namespace(1).await.unwrap();
    assert_eq!(ns2.nsattr & 1, 0);
    assert_ne!(ns2.nguid, ns.nguid);
    assert_ne!(c2.cntlid(), c.cntlid());
    assert_eq!(c.get_features(feature::NUMBER_OF_QUEUES).await.unwrap(), 0);
}

#[tokio::test]
async fn discovery_lists_every_subsystem_on_both_listeners() {
    let s = setup();
    for addr in [s.target.discovery_addr().unwrap(), s.target.local_addr()] {
        let entries = discover(addr, opts()).await.unwrap();
        assert_eq!(entries.len(), 2);
        let mut nqns: Vec<_> = entries.iter().map(|e| e.subnqn.as_str()).collect();
        nqns.sort_unstable();
        assert_eq!(nqns, vec![RO, RW]);
        for e in &entries {
            assert_eq!(e.trtype, trtype::TCP);
            assert_eq!(e.adrfam, adrfam::IPV4);
            assert_eq!(e.subtype, subtype::NVME);
            assert_eq!(e.traddr, "127.0.0.1");
            assert_eq!(e.trsvcid, s.target.local_addr().port().to_string());
            assert_eq!(e.cntlid, 0xFFFF);
        }
    }
    // The discovery controller identifies as one and refuses I/O queues.
    let d = NvmeTcpController::connect(s.target.local_addr(), DISCOVERY_NQN, opts()).await.unwrap();
    assert_eq!(d.identity().cntrltype, controller_type::DISCOVERY);
    assert_eq!(d.io_queue_count(), 0);
    // Log page offsets: the second entry alone.
    let e2 = d.get_log_page(log_page::DISCOVERY, 0, 2048, 1024).await.unwrap();
    assert!(String::from_utf8_lossy(&e2[256..256 + RW.len().max(RO.len())]).starts_with("nqn.2024-01.io.scalio:ssd"));
    d.disconnect().await.unwrap();
}

#[tokio::test]
async fn reads_return_the_backing_file_byte_for_byte() {
    // Small C2HData PDUs: a 128 KiB read arrives in 32 pieces; a 1 MiB read is 8 commands.
    let s = setup_with(|c| c.c2h_chunk = 4096);
    let file = std::fs::read(s.ro_file.path()).unwrap();
    let c = connect(&s.target, RO).await;
    for (lba, count) in [(0u64, 1u32), (1, 1), (7, 9), (100, 256), (BLOCKS - 1, 1), (1000, 2048)] {
        let got = c.read(1, lba, count).await.unwrap();
        let at = lba as usize * 512;
        assert_eq!(got.len(), count as usize * 512);
        assert!(got == file[at..at + got.len()], "blocks {lba}+{count} differ");
    }
    // Beyond the end: refused before anything is sent...
    assert!(matches!(c.read(1, BLOCKS - 1, 2).await, Err(NvmeError::OutOfRange { .. })));
    // ...and by the target when sent anyway.
    let mut sqe = IoCommand::Read { nsid: 1, slba: BLOCKS, nlb: 0 }.to_sqe();
    sqe.set_sgl(Sgl::transport(512));
    let r = c.submit_raw(None, sqe, None, 512).await.unwrap();
    assert_eq!(r.cqe.status.code(), (sct::GENERIC, generic::LBA_OUT_OF_RANGE));
    assert!(r.cqe.status.do_not_retry());
    // A namespace that does not exist.
    let sqe = IoCommand::Read { nsid: 2, slba: 0, nlb: 0 }.to_sqe();
    let r = c.submit_raw(None, sqe, None, 512).await.unwrap();
    assert_eq!(r.cqe.status.code(), (sct::GENERIC, generic::INVALID_NAMESPACE_OR_FORMAT));
    let st = s.target.stats();
    assert!(st.blocks_read >= 1 + 1 + 9 + 256 + 1 + 2048);
    assert!(st.commands_of(CommandKind::Read) >= 6 + 7);
}

#[tokio::test]
async fn writes_in_capsule_and_through_r2t_land_in_the_file() {
    let s = setup();
    let c = connect(&s.target, RW).await;
    let small = pattern(4096, 9); // in-capsule (at most 8 KiB)
    let large = pattern(100 * 1024, 11); // R2Ts of at most MAXH2CDATA (32 KiB)
    let huge = pattern(600 * 1024, 13); // several commands, each with R2Ts
    c.write(1, 10, &small).await.unwrap();
    c.write(1, 100, &large).await.unwrap();
    c.write(1, 1000, &huge).await.unwrap();
    assert_eq!(c.read(1, 10, 8).await.unwrap(), small);
    assert_eq!(c.read(1, 100, 200).await.unwrap(), large);
    assert_eq!(c.read(1, 1000, 1200).await.unwrap(), huge);
    c.flush(1).await.unwrap();
    c.flush(0xFFFF_FFFF).await.unwrap();
    let file = std::fs::read(s.rw_file.path()).unwrap();
    assert_eq!(&file[10 * 512..10 * 512 + small.len()], &small[..]);
    assert_eq!(&file[100 * 512..100 * 512 + large.len()], &large[..]);
    assert_eq!(&file[1000 * 512..1000 * 512 + huge.len()], &huge[..]);
    // Untouched blocks are unchanged.
    assert_eq!(&file[0..10 * 512], &pattern(BLOCKS as usize * 512, 2)[0..10 * 512]);
    let st = s.target.stats();
    assert_eq!(st.blocks_written, 8 + 200 + 1200);
    assert_eq!(st.commands_of(CommandKind::Flush), 2);
}

#[tokio::test]
async fn writes_to_a_read_only_subsystem_are_write_protected() {
    let s = setup();
    let before = std::fs::read(s.ro_file.path()).unwrap();
    let c = connect(&s.target, RO).await;
    for data in [vec![1u8; 512], vec![2u8; 64 * 1024]] {
        match c.write(1, 0, &data).await {
            Err(NvmeError::Status { status, .. }) => {
                assert_eq!(status.code(), (sct::GENERIC, generic::NAMESPACE_WRITE_PROTECTED));
                assert!(status.do_not_retry());
            }
            other => panic!("expected a write-protected status, got {other:?}"),
        }
    }
    // Flush is fine, reads still work, and the file is untouched.
    c.flush(1).await.unwrap();
    assert_eq!(c.read(1, 0, 1).await.unwrap(), before[..512].to_vec());
    assert_eq!(std::fs::read(s.ro_file.path()).unwrap(), before);
    assert_eq!(s.target.stats().blocks_written, 0);
}

/// A namespace that holds reads until `gate` of them are pending, then completes them all, in
/// reverse order, from another thread: proof that commands really overlap.
struct GatedNamespace {
    inner: MemNamespace,
    gate: usize,
    pending: Mutex<Vec<(u64, u32, ReadDone)>>,
    most_pending: AtomicUsize,
}

impl TargetNamespace for GatedNamespace {
    fn blocks(&self) -> u64 {
        self.inner.blocks()
    }

    fn read(&self, lba: u64, count: u32, done: ReadDone) {
        let mut p = self.pending.lock();
        p.push((lba, count, done));
        self.most_pending.fetch_max(p.len(), Ordering::SeqCst);
        if p.len() == self.gate {
            let batch: Vec<_> = p.drain(..).rev().collect();
            let inner = self.inner.clone();
            std::thread::spawn(move || {
                for (lba, count, done) in batch {
                    inner.read(lba, count, done);
                }
            });
        }
    }

    fn write(&self, lba: u64, data: Vec<u8>, done: WriteDone) {
        self.inner.write(lba, data, done)
    }

    fn flush(&self, done: WriteDone) {
        self.inner.flush(done)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_queue_carries_128_commands_in_flight() {
    let contents = pattern(1 << 20, 5);
    let ns = Arc::new(GatedNamespace {
        inner: MemNamespace::with_contents(contents.clone()),
        gate: 128,
        pending: Mutex::new(Vec::new()),
        most_pending: AtomicUsize::new(0),
    });
    let cfg = TargetConfig::on("127.0.0.1:0".parse().unwrap()).subsystem(SubsystemConfig::new(RO, ns.clone()));
    let t = NvmeTarget::start(cfg).unwrap();
    let o = ConnectOptions { io_queues: 1, queue_depth: 128, ..opts() };
    let c = Arc::new(NvmeTcpController::connect(t.local_addr(), RO, o).await.unwrap());
    assert_eq!(c.io_queue_count(), 1);
    let mut tasks = Vec::new();
    for i in 0..128u64 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move { (i, c.read(1, i * 8, 8).await) }));
    }
    for t in tasks {
        let (i, r) = t.await.unwrap();
        let at = i as usize * 4096;
        assert_eq!(r.unwrap(), contents[at..at + 4096].to_vec(), "read {i}");
    }
    // All 128 were at the namespace at the same time, and completed out of order.
    assert_eq!(ns.most_pending.load(Ordering::SeqCst), 128);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_io_queues_each_with_its_own_connection() {
    let s = setup_with(|c| c.threads = 2);
    let file = std::fs::read(s.ro_file.path()).unwrap();
    let o = ConnectOptions { io_queues: 4, ..opts() };
    let c = Arc::new(NvmeTcpController::connect(s.target.local_addr(), RO, o).await.unwrap());
    assert_eq!(c.io_queue_count(), 4);
    assert_eq!(c.get_features(feature::NUMBER_OF_QUEUES).await.unwrap(), 3 | (3 << 16));
    assert_eq!(s.target.stats().connections_active, 5);
    let mut tasks = Vec::new();
    for i in 0..64u64 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move { (i, c.read(1, i * 16, 16).await) }));
    }
    for t in tasks {
        let (i, r) = t.await.unwrap();
        let at = i as usize * 16 * 512;
        assert!(r.unwrap() == file[at..at + 16 * 512], "read {i}");
    }
    // The controller grants no more queues than configured.
    let o = ConnectOptions { io_queues: 64, ..opts() };
    let many = NvmeTcpController::connect(s.target.local_addr(), RO, o).await.unwrap();
    assert_eq!(many.io_queue_count(), 16);
}

#[tokio::test]
async fn a_silent_host_loses_its_controller_when_keep_alive_expires() {
    let s = setup();
    let silent = ConnectOptions { keep_alive_timeout: Some(Duration::from_secs(1)), send_keep_alive: false, ..opts() };
    let c = NvmeTcpController::connect(s.target.local_addr(), RO, silent).await.unwrap();
    let chatty = ConnectOptions { keep_alive_timeout: Some(Duration::from_secs(1)), ..opts() };
    let alive = NvmeTcpController::connect(s.target.local_addr(), RO, chatty).await.unwrap();
    eventually("the silent controller is torn down", || !c.is_alive()).await;
    assert_eq!(s.target.stats().keep_alive_expired, 1);
    assert!(matches!(c.read(1, 0, 1).await, Err(NvmeError::Disconnected)));
    // The host that keeps sending Keep Alive keeps its controller well past its KATO.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(alive.is_alive());
    alive.read(1, 0, 1).await.unwrap();
    assert_eq!(s.target.stats().keep_alive_expired, 1);
}

#[tokio::test]
async fn disconnect_ends_the_association() {
    let s = setup();
    let o = ConnectOptions { io_queues: 2, ..opts() };
    let c = NvmeTcpController::connect(s.target.local_addr(), RW, o).await.unwrap();
    assert_eq!(s.target.stats().controllers_active, 1);
    c.disconnect().await.unwrap();
    let t = &s.target;
    eventually("the controller is gone", || t.stats().controllers_active == 0).await;
    eventually("the connections are closed", || t.stats().connections_active == 0).await;
    assert_eq!(t.stats().commands_of(CommandKind::Disconnect), 2);
}

#[tokio::test]
async fn connect_errors_name_the_problem() {
    let s = setup();
    match NvmeTcpController::connect(s.target.local_addr(), "nqn.2024-01.io.scalio:nope", opts()).await {
        Err(NvmeError::ConnectRejected { status, detail, .. }) => {
            assert_eq!(status.code(), (sct::COMMAND_SPECIFIC, command_specific::CONNECT_INVALID_PARAMETERS));
            assert!(detail.contains("subsystem NQN"), "{detail}");
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("connected to a subsystem that does not exist"),
    }
    let closed: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    assert!(matches!(NvmeTcpController::connect(closed, RO, opts()).await, Err(NvmeError::Connect { .. })));
}

#[tokio::test]
async fn header_and_data_digests_work_end_to_end() {
    let s = setup();
    let o = ConnectOptions { header_digest: true, data_digest: true, ..opts() };
    let c = NvmeTcpController::connect(s.target.local_addr(), RW, o).await.unwrap();
    let data = pattern(80 * 1024, 3);
    c.write(1, 50, &data).await.unwrap();
    c.write(1, 5, &data[..2048]).await.unwrap();
    assert_eq!(c.read(1, 50, 160).await.unwrap(), data);
    assert_eq!(c.read(1, 5, 4).await.unwrap(), data[..2048].to_vec());
}

#[tokio::test]
async fn sq_flow_control_reports_the_submission_queue_head() {
    let s = setup();
    let o = ConnectOptions { disable_sq_flow_control: false, queue_depth: 4, ..opts() };
    let c = NvmeTcpController::connect(s.target.local_addr(), RO, o).await.unwrap();
    let file = std::fs::read(s.ro_file.path()).unwrap();
    // SQ of 5 entries: the Connect took entry 0, so heads run 2, 3, 4, 0, 1, ...
    let mut heads = Vec::new();
    for i in 0..6u64 {
        let mut sqe = IoCommand::Read { nsid: 1, slba: i, nlb: 0 }.to_sqe();
        sqe.set_sgl(Sgl::transport(512));
        let r = c.submit_raw(None, sqe, None, 512).await.unwrap();
        assert!(r.cqe.status.is_success());
        assert!(r.data == file[i as usize * 512..(i as usize + 1) * 512]);
        heads.push(r.cqe.sqhd);
    }
    assert_eq!(heads, vec![2, 3, 4, 0, 1, 2]);
}

#[tokio::test]
async fn unsupported_admin_commands_get_proper_statuses() {
    let s = setup();
    let c = connect(&s.target, RO).await;
    let mut sqe = scalio_common::nvme::sqe::Sqe::new(0x10); // Firmware Commit: not supported
    sqe.set_sgl(Sgl::transport(0));
    let r = c.submit_raw(Some(0), sqe, None, 0).await.unwrap();
    assert_eq!(r.cqe.status.code(), (sct::GENERIC, generic::INVALID_OPCODE));
    let r = c
        .submit_raw(Some(0), AdminCommand::Identify { cns: 0x1f, cntid: 0, nsid: 0, csi: 0 }.to_sqe(), None, 4096)
        .await
        .unwrap();
    assert_eq!(r.cqe.status.code(), (sct::GENERIC, generic::INVALID_FIELD));
    let r = c.get_log_page(0x70, 0, 0, 1024).await;
    assert!(
        matches!(r, Err(NvmeError::Status { status, .. }) if status.code() == (sct::COMMAND_SPECIFIC, command_specific::INVALID_LOG_PAGE))
    );
    let smart = c.get_log_page(log_page::SMART_HEALTH, 0xFFFF_FFFF, 0, 512).await.unwrap();
    assert_eq!(u16::from_le_bytes([smart[1], smart[2]]), 300, "composite temperature, Kelvin");
    c.keep_alive().await.unwrap();
    assert_eq!(s.target.stats().commands_of(CommandKind::Unsupported), 1);
}

#[tokio::test]
async fn the_block_reader_reads_512_byte_blocks_of_each_ssd() {
    let s = setup();
    let addr = s.target.local_addr().to_string();
    let targets = vec![
        BlockTarget { ssd: 0, addr: addr.clone(), nqn: RO.into(), nsid: 1 },
        BlockTarget { ssd: 1, addr, nqn: RW.into(), nsid: 1 },
    ];
    let reader = NvmeTcpBlockReader::new(targets, opts());
    assert_eq!(reader.kind(), "nvme-tcp");
    let f0 = std::fs::read(s.ro_file.path()).unwrap();
    let f1 = std::fs::read(s.rw_file.path()).unwrap();
    assert!(reader.read_blocks(0, 3, 5).await.unwrap() == f0[3 * 512..8 * 512]);
    assert!(reader.read_blocks(1, 0, 1).await.unwrap() == f1[..512]);
    assert!(reader.read_blocks(1, BLOCKS - 4, 4).await.unwrap() == f1[(BLOCKS as usize - 4) * 512..]);
    assert_eq!(
        reader.read_blocks(0, BLOCKS, 1).await,
        Err(BlockError::OutOfRange { ssd: 0, lba: BLOCKS, count: 1, blocks: BLOCKS })
    );
    assert_eq!(reader.read_blocks(7, 0, 1).await, Err(BlockError::NoSuchSsd(7)));
    assert_eq!(s.target.stats().controllers_active, 2);
}

#[tokio::test]
async fn the_block_reader_reconnects_after_losing_its_controller() {
    let s = setup();
    let target = BlockTarget { ssd: 0, addr: s.target.local_addr().to_string(), nqn: RO.into(), nsid: 1 };
    let o = ConnectOptions { keep_alive_timeout: Some(Duration::from_secs(1)), send_keep_alive: false, ..opts() };
    let reader = NvmeTcpBlockReader::new(vec![target], o);
    reader.connect_all().await.unwrap();
    let first = reader.controller(0).await.unwrap();
    let t = &s.target;
    eventually("the silent controller expires", || t.stats().keep_alive_expired == 1).await;
    eventually("the host notices", || !first.is_alive()).await;
    let f0 = std::fs::read(s.ro_file.path()).unwrap();
    assert!(reader.read_blocks(0, 9, 2).await.unwrap() == f0[9 * 512..11 * 512]);
    assert_ne!(reader.controller(0).await.unwrap().cntlid(), first.cntlid());
}
