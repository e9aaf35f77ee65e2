//! The session without sockets: deterministic checks of what is hard to provoke over TCP
//! (memory budget, keep-alive expiry on a synthetic clock, the AER limit).

use super::*;
use crate::target::controller::Settings;
use crate::target::namespace::MemNamespace;
use scalio_common::nvme::command::PropertySize;
use scalio_common::nvme::fabrics::{property, Cc};
use scalio_common::nvme::pdu::CapsuleResp;

const NQN: &str = "nqn.test:session";

fn settings() -> Settings {
    Settings {
        mqes: 1023,
        max_io_queues: 4,
        mdts: 5,
        max_transfer: 128 * 1024,
        io_in_capsule: 8192,
        admin_in_capsule: 8192,
        maxh2cdata: 32 * 1024,
        c2h_chunk: 32 * 1024,
        c2h_success: false,
        max_inflight_bytes: 128 * 1024,
        output_high_water: 4 << 20,
        cpda: 0,
        digests_allowed: Digests::default(),
        discovery_kato_ms: 120_000,
        model: "test".into(),
        firmware: "0".into(),
    }
}

fn shared() -> Arc<TargetShared> {
    let ns: Arc<dyn TargetNamespace> = Arc::new(MemNamespace::new(4096));
    let sub = crate::target::controller::Subsystem::new(NQN.into(), ns, true);
    Arc::new(TargetShared::new(settings(), vec![sub], "127.0.0.1:4420".parse().unwrap()))
}

struct Host {
    dec: PduDecoder,
    cid: u16,
}

impl Host {
    fn new(s: &mut QueueSession, now: Instant) -> Host {
        let req = IcReq { pfv: 0, hpda: 0, digests: Digests::default(), maxr2t: 0 };
        s.on_bytes(&Pdu::IcReq(req).to_vec(&TxParams::default()), now);
        let n = s.output().len();
        assert_eq!(n, 128);
        s.consume_output(n);
        let rx = RxParams { max_c2h_data: 1 << 20, ..RxParams::default() };
        Host { dec: PduDecoder::established(Role::Host, rx), cid: 0 }
    }

    fn send(&mut self, s: &mut QueueSession, mut sqe: Sqe, data: &[u8], data_in: u32, now: Instant) -> u16 {
        self.cid += 1;
        sqe.set_cid(self.cid);
        sqe.set_sgl(if data.is_empty() { Sgl::transport(data_in) } else { Sgl::in_capsule(0, data.len() as u32) });
        let mut b = Vec::new();
        pdu::encode_capsule_cmd(&sqe, data, &TxParams::default(), &mut b);
        s.on_bytes(&b, now);
        self.cid
    }

    fn responses(&mut self, s: &mut QueueSession) -> Vec<Cqe> {
        let out = s.output().to_vec();
        s.consume_output(out.len());
        self.dec.feed(&out);
        let mut v = Vec::new();
        while let Some(d) = self.dec.next_pdu().unwrap() {
            if let Pdu::CapsuleResp(CapsuleResp { cqe }) = d.pdu {
                v.push(cqe);
            }
        }
        v
    }
}

fn connect_data(cntlid: u16) -> Vec<u8> {
    ConnectData { hostid: [7; 16], cntlid, subnqn: NQN.into(), hostnqn: "nqn.test:h".into() }.encode().to_vec()
}

/// An enabled admin queue with the given KATO; returns its controller ID.
fn admin(s: &mut QueueSession, h: &mut Host, kato: u32, now: Instant) -> u16 {
    let c = FabricsCommand::Connect(Connect { recfmt: 0, qid: 0, sqsize: 31, cattr: 4, kato });
    h.send(s, c.to_sqe(), &connect_data(0xFFFF), 0, now);
    let cntlid = h.responses(s)[0].dw0 as u16;
    let en = FabricsCommand::PropertySet {
        size: PropertySize::Four,
        offset: property::CC,
        value: Cc::enabled_nvm().to_u32().into(),
    };
    h.send(s, en.to_sqe(), &[], 0, now);
    assert!(h.responses(s)[0].status.is_success());
    cntlid
}

#[test]
fn keep_alive_expiry_follows_the_kato_on_the_session_clock() {
    let sh = shared();
    let t0 = Instant::now();
    let mut s = QueueSession::new(sh.clone(), "127.0.0.1:4420".parse().unwrap(), t0);
    let mut h = Host::new(&mut s, t0);
    admin(&mut s, &mut h, 1000, t0);
    s.on_tick(t0 + Duration::from_millis(900));
    assert_eq!(s.close_state(), Close::No);
    // A Keep Alive restarts the timer.
    h.send(&mut s, AdminCommand::KeepAlive.to_sqe(), &[], 0, t0 + Duration::from_millis(900));
    assert!(h.responses(&mut s)[0].status.is_success());
    s.on_tick(t0 + Duration::from_millis(1800));
    assert_eq!(s.close_state(), Close::No);
    s.on_tick(t0 + Duration::from_millis(1901));
    assert_eq!(s.close_state(), Close::Now);
    assert_eq!(sh.counters.keep_alive_expired.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn reads_wait_for_the_memory_budget() {
    let sh = shared();
    let now = Instant::now();
    let mut a = QueueSession::new(sh.clone(), "127.0.0.1:4420".parse().unwrap(), now);
    let mut ha = Host::new(&mut a, now);
    let cntlid = admin(&mut a, &mut ha, 0, now);
    let mut s = QueueSession::new(sh, "127.0.0.1:4420".parse().unwrap(), now);
    let mut h = Host::new(&mut s, now);
    let c = FabricsCommand::Connect(Connect { recfmt: 0, qid: 1, sqsize: 127, cattr: 4, kato: 0 });
    h.send(&mut s, c.to_sqe(), &connect_data(cntlid), 0, now);
    assert!(h.responses(&mut s)[0].status.is_success());
    // Eight 64 KiB reads against a 128 KiB budget: two at a time reach the namespace.
    for i in 0..8u64 {
        h.send(&mut s, IoCommand::Read { nsid: 1, slba: i * 128, nlb: 127 }.to_sqe(), &[], 65536, now);
    }
    let mut issued = s.take_requests();
    assert_eq!(issued.len(), 2);
    let mut total = 2;
    while let Some(r) = issued.pop() {
        s.on_ns_done(r.token, NsResult::Read(Ok(vec![0; 65536])));
        let next = s.take_requests();
        assert!(next.len() <= 1);
        total += next.len();
        issued.extend(next);
        let out = s.output().len();
        s.consume_output(out);
    }
    assert_eq!(total, 8);
}

#[test]
fn asynchronous_event_requests_are_held_up_to_the_limit() {
    let sh = shared();
    let now = Instant::now();
    let mut s = QueueSession::new(sh, "127.0.0.1:4420".parse().unwrap(), now);
    let mut h = Host::new(&mut s, now);
    admin(&mut s, &mut h, 0, now);
    for _ in 0..=admin::AERL {
        h.send(&mut s, AdminCommand::AsyncEventRequest.to_sqe(), &[], 0, now);
    }
    assert!(h.responses(&mut s).is_empty(), "held, not answered");
    h.send(&mut s, AdminCommand::AsyncEventRequest.to_sqe(), &[], 0, now);
    let r = h.responses(&mut s);
    assert_eq!(r[0].status.code(), (1, command_specific::ASYNC_EVENT_REQUEST_LIMIT_EXCEEDED));
}

#[test]
fn admin_commands_wait_for_the_controller_to_be_enabled() {
    let sh = shared();
    let now = Instant::now();
    let mut s = QueueSession::new(sh, "127.0.0.1:4420".parse().unwrap(), now);
    let mut h = Host::new(&mut s, now);
    // Before Connect.
    h.send(&mut s, AdminCommand::KeepAlive.to_sqe(), &[], 0, now);
    assert_eq!(h.responses(&mut s)[0].status.code(), (0, generic::COMMAND_SEQUENCE_ERROR));
    let c = FabricsCommand::Connect(Connect { recfmt: 0, qid: 0, sqsize: 31, cattr: 4, kato: 0 });
    h.send(&mut s, c.to_sqe(), &connect_data(0xFFFF), 0, now);
    assert!(h.responses(&mut s)[0].status.is_success());
    // Connected, not enabled.
    let id = AdminCommand::Identify { cns: 1, cntid: 0, nsid: 0, csi: 0 };
    h.send(&mut s, id.to_sqe(), &[], 4096, now);
    assert_eq!(h.responses(&mut s)[0].status.code(), (0, generic::COMMAND_SEQUENCE_ERROR));
    // A second Connect on the same queue.
    h.send(&mut s, c.to_sqe(), &connect_data(0xFFFF), 0, now);
    assert_eq!(h.responses(&mut s)[0].status.code(), (0, generic::COMMAND_SEQUENCE_ERROR));
}
