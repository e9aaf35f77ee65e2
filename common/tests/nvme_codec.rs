//! NVMe/TCP codec: round trips of every PDU and structure, streams split anywhere, arbitrary
//! bytes, and the exact FES/FEI for malformed PDUs.

use proptest::prelude::*;
use scalio_common::nvme::command::{
    AdminCommand, Command, Connect, FabricsCommand, IoCommand, PropertySize, QueueKind,
};
use scalio_common::nvme::discovery::{decode_discovery_log, encode_discovery_log, DiscoveryEntry};
use scalio_common::nvme::fabrics::{Cap, Cc, ConnectData, Csts};
use scalio_common::nvme::identify::{
    decode_namespace_descriptors, decode_namespace_list, encode_namespace_descriptors, encode_namespace_list,
    IdentifyController, IdentifyNamespace, LbaFormat, NamespaceDescriptor,
};
use scalio_common::nvme::pdu::{
    self, flags, pdu_type, C2HData, CapsuleCmd, CapsuleResp, Digests, Fes, H2CData, IcReq, IcResp, Pdu, R2t, TermReq,
    TxParams,
};
use scalio_common::nvme::sqe::{Cqe, Sgl, Sqe, StatusField};
use scalio_common::nvme::stream::{decode_established, decode_initial, PduDecoder, PduError, Role, RxParams};

fn rx(tx: &TxParams) -> RxParams {
    RxParams {
        digests: tx.digests,
        pda: tx.pda,
        max_capsule_data: 1 << 20,
        max_h2c_data: 1 << 20,
        max_c2h_data: 1 << 20,
    }
}

fn receiver(p: &Pdu) -> Role {
    if p.pdu_type() & 1 == 0 {
        Role::Controller
    } else {
        Role::Host
    }
}

fn arb_digests() -> impl Strategy<Value = Digests> {
    (any::<bool>(), any::<bool>()).prop_map(|(header, data)| Digests { header, data })
}

fn arb_tx() -> impl Strategy<Value = TxParams> {
    (arb_digests(), 0u8..=31).prop_map(|(digests, pda)| TxParams { digests, pda })
}

fn arb_sqe() -> impl Strategy<Value = Sqe> {
    prop::collection::vec(any::<u8>(), 64).prop_map(|v| {
        let mut s = Sqe::default();
        s.0.copy_from_slice(&v);
        s
    })
}

fn arb_cqe() -> impl Strategy<Value = Cqe> {
    (any::<u32>(), any::<u32>(), any::<u16>(), any::<u16>(), any::<u16>(), any::<u16>())
        .prop_map(|(dw0, dw1, sqhd, sqid, cid, st)| Cqe { dw0, dw1, sqhd, sqid, cid, status: StatusField(st) })
}

fn data(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 1..max)
}

/// Every PDU that follows initialization.
fn arb_established_pdu() -> impl Strategy<Value = Pdu> {
    prop_oneof![
        (any::<u16>(), any::<u32>(), prop::collection::vec(any::<u8>(), 0..=128))
            .prop_map(|(fes, fei, data)| Pdu::H2CTermReq(TermReq { fes, fei, data })),
        (any::<u16>(), any::<u32>(), prop::collection::vec(any::<u8>(), 0..=128))
            .prop_map(|(fes, fei, data)| Pdu::C2HTermReq(TermReq { fes, fei, data })),
        (arb_sqe(), prop::collection::vec(any::<u8>(), 0..3000))
            .prop_map(|(sqe, data)| Pdu::CapsuleCmd(CapsuleCmd { sqe, data })),
        arb_cqe().prop_map(|cqe| Pdu::CapsuleResp(CapsuleResp { cqe })),
        (any::<u16>(), any::<u16>(), any::<u32>(), any::<bool>(), data(3000))
            .prop_map(|(cccid, ttag, datao, last, data)| Pdu::H2CData(H2CData { cccid, ttag, datao, last, data })),
        (any::<u16>(), any::<u32>(), any::<bool>(), any::<bool>(), data(3000)).prop_map(
            |(cccid, datao, last, success, data)| Pdu::C2HData(C2HData {
                cccid,
                datao,
                last: last || success,
                success,
                data
            })
        ),
        (any::<u16>(), any::<u16>(), any::<u32>(), any::<u32>()).prop_map(|(cccid, ttag, r2to, r2tl)| Pdu::R2t(R2t {
            cccid,
            ttag,
            r2to,
            r2tl
        })),
    ]
}

fn arb_ic_pdu() -> impl Strategy<Value = Pdu> {
    prop_oneof![
        (0u8..=31, arb_digests(), any::<u32>()).prop_map(|(hpda, digests, maxr2t)| Pdu::IcReq(IcReq {
            pfv: 0,
            hpda,
            digests,
            maxr2t
        })),
        (0u8..=31, arb_digests(), 1024u32..=(u32::MAX / 4)).prop_map(|(cpda, digests, m)| Pdu::IcResp(IcResp {
            pfv: 0,
            cpda,
            digests,
            maxh2cdata: m * 4
        })),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_established_pdu_round_trips(p in arb_established_pdu(), tx in arb_tx()) {
        let bytes = p.to_vec(&tx);
        let (d, used) = decode_established(receiver(&p), rx(&tx), &bytes).unwrap().unwrap();
        prop_assert_eq!(used, bytes.len());
        prop_assert!(d.data_digest_ok);
        prop_assert_eq!(d.pdu, p);
    }

    #[test]
    fn initialization_pdus_round_trip(p in arb_ic_pdu()) {
        let bytes = p.to_vec(&TxParams::default());
        prop_assert_eq!(bytes.len(), 128);
        let (d, used) = decode_initial(receiver(&p), &bytes).unwrap().unwrap();
        prop_assert_eq!(used, 128);
        prop_assert_eq!(d.pdu, p);
    }

    #[test]
    fn data_lands_at_an_aligned_offset(p in arb_established_pdu(), tx in arb_tx()) {
        let bytes = p.to_vec(&tx);
        let pdo = usize::from(bytes[3]);
        if pdo != 0 {
            prop_assert_eq!(pdo % ((usize::from(tx.pda) + 1) * 4), 0);
            prop_assert!(pdo >= usize::from(bytes[2]));
        }
        prop_assert_eq!(u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize, bytes.len());
    }

    #[test]
    fn a_stream_split_anywhere_decodes_the_same(
        pdus in prop::collection::vec(arb_established_pdu(), 1..12),
        tx in arb_tx(),
        cuts in prop::collection::vec(1usize..700, 1..40),
        host in any::<bool>(),
    ) {
        // One direction of a connection only carries PDUs for one receiver.
        let role = if host { Role::Host } else { Role::Controller };
        let pdus: Vec<Pdu> = pdus.into_iter().filter(|p| receiver(p) == role).collect();
        let mut stream = Vec::new();
        for p in &pdus {
            p.encode(&tx, &mut stream);
        }
        let mut dec = PduDecoder::established(role, rx(&tx));
        let mut got = Vec::new();
        let mut off = 0;
        let mut i = 0;
        while off < stream.len() {
            let n = cuts[i % cuts.len()].min(stream.len() - off);
            i += 1;
            dec.feed(&stream[off..off + n]);
            off += n;
            while let Some(d) = dec.next_pdu().unwrap() {
                got.push(d.pdu);
            }
        }
        prop_assert_eq!(dec.buffered(), 0);
        prop_assert_eq!(got, pdus);
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..600),
        tx in arb_tx(),
        host in any::<bool>(),
        initial in any::<bool>(),
        cut in 1usize..64,
    ) {
        let role = if host { Role::Host } else { Role::Controller };
        let mut dec = if initial { PduDecoder::new(role) } else { PduDecoder::established(role, rx(&tx)) };
        for chunk in bytes.chunks(cut) {
            dec.feed(chunk);
            loop {
                match dec.next_pdu() {
                    Ok(Some(_)) => continue,
                    Ok(None) => break,
                    Err(PduError::Fatal(e)) => {
                        prop_assert!(e.header.len() <= 128);
                        let t = e.term_req(role);
                        prop_assert_eq!(t.len(), 24 + e.header.len());
                        break;
                    }
                    Err(PduError::MalformedTermReq { .. }) => break,
                }
            }
        }
    }

    #[test]
    fn arbitrary_headers_with_plausible_types_never_panic(
        ty in prop::sample::select(vec![0u8, 1, 2, 3, 4, 5, 6, 7, 9]),
        fl in any::<u8>(),
        hlen in prop::sample::select(vec![0u8, 8, 24, 72, 128, 255]),
        pdo in any::<u8>(),
        plen in 0u32..400,
        rest in prop::collection::vec(any::<u8>(), 0..400),
        tx in arb_tx(),
    ) {
        let mut b = vec![ty, fl, hlen, pdo];
        b.extend_from_slice(&plen.to_le_bytes());
        b.extend_from_slice(&rest);
        for role in [Role::Host, Role::Controller] {
            let _ = decode_established(role, rx(&tx), &b);
            let _ = decode_initial(role, &b);
        }
    }

    #[test]
    fn cqe_and_sgl_round_trip(cqe in arb_cqe(), addr in any::<u64>(), len in any::<u32>(), ty in any::<u8>()) {
        prop_assert_eq!(Cqe::from_bytes(&cqe.to_bytes()), cqe);
        let sgl = Sgl { address: addr, length: len, sgl_type: ty };
        prop_assert_eq!(Sgl::from_bytes(&sgl.to_bytes()), sgl);
    }

    #[test]
    fn commands_round_trip(cmd in arb_command()) {
        let (c, kind) = cmd;
        prop_assert_eq!(Command::parse(&c.to_sqe(), kind).unwrap(), c);
    }

    #[test]
    fn parsing_arbitrary_sqes_never_panics(sqe in arb_sqe()) {
        let _ = Command::parse(&sqe, QueueKind::Admin);
        let _ = Command::parse(&sqe, QueueKind::Io);
    }

    #[test]
    fn connect_data_round_trips(
        hostid in any::<[u8; 16]>(),
        cntlid in any::<u16>(),
        subnqn in "[a-z0-9.:-]{1,200}",
        hostnqn in "[a-z0-9.:-]{1,200}",
    ) {
        let d = ConnectData { hostid, cntlid, subnqn, hostnqn };
        prop_assert_eq!(ConnectData::decode(&d.encode()).unwrap(), d);
    }

    #[test]
    fn identify_controller_round_trips(c in arb_identify_controller()) {
        let b = c.encode();
        prop_assert_eq!(b.len(), 4096);
        prop_assert_eq!(IdentifyController::decode(&b), c);
    }

    #[test]
    fn identify_namespace_round_trips(n in arb_identify_namespace()) {
        prop_assert_eq!(IdentifyNamespace::decode(&n.encode()), n);
    }

    #[test]
    fn namespace_lists_and_descriptors_round_trip(
        mut ids in prop::collection::vec(1u32.., 0..1024),
        descs in prop::collection::vec((1u8..=4, prop::collection::vec(any::<u8>(), 1..=16)), 0..8),
    ) {
        ids.sort_unstable();
        ids.dedup();
        prop_assert_eq!(decode_namespace_list(&encode_namespace_list(&ids)), ids);
        let descs: Vec<NamespaceDescriptor> =
            descs.into_iter().map(|(nidt, nid)| NamespaceDescriptor { nidt, nid }).collect();
        prop_assert_eq!(decode_namespace_descriptors(&encode_namespace_descriptors(&descs)), descs);
    }

    #[test]
    fn discovery_log_round_trips(genctr in any::<u64>(), entries in prop::collection::vec(arb_discovery_entry(), 0..6)) {
        let log = encode_discovery_log(genctr, &entries);
        prop_assert_eq!(log.len(), 1024 * (1 + entries.len()));
        let (h, got) = decode_discovery_log(&log);
        prop_assert_eq!(h.genctr, genctr);
        prop_assert_eq!(h.numrec, entries.len() as u64);
        prop_assert_eq!(got, entries);
    }

    #[test]
    fn structures_decode_arbitrary_bytes(b in prop::collection::vec(any::<u8>(), 0..5000)) {
        let _ = IdentifyController::decode(&b);
        let n = IdentifyNamespace::decode(&b);
        let _ = n.block_size();
        let _ = decode_namespace_list(&b);
        let _ = decode_namespace_descriptors(&b);
        let _ = decode_discovery_log(&b);
        let _ = ConnectData::decode(&b);
    }

    #[test]
    fn registers_round_trip(mqes in any::<u16>(), cqr in any::<bool>(), to in any::<u8>(), css in any::<u8>(),
                            mpsmin in 0u8..16, mpsmax in 0u8..16, cc in any::<u32>(), csts in 0u32..16) {
        let cap = Cap { mqes, cqr, to, css, mpsmin, mpsmax };
        prop_assert_eq!(Cap::from_u64(cap.to_u64()), cap);
        let mask = 0x00ff_fff1; // EN, CSS, MPS, AMS, SHN, IOSQES, IOCQES
        prop_assert_eq!(Cc::from_u32(cc).to_u32(), cc & mask);
        prop_assert_eq!(Csts::from_u32(csts).to_u32(), csts & 0xf);
    }
}

fn arb_command() -> impl Strategy<Value = (Command, QueueKind)> {
    let size = prop_oneof![Just(PropertySize::Four), Just(PropertySize::Eight)];
    let size2 = prop_oneof![Just(PropertySize::Four), Just(PropertySize::Eight)];
    prop_oneof![
        (any::<u16>(), any::<u16>(), any::<u16>(), any::<u8>(), any::<u32>()).prop_map(
            |(recfmt, qid, sqsize, cattr, kato)| (
                Command::Fabrics(FabricsCommand::Connect(Connect { recfmt, qid, sqsize, cattr, kato })),
                QueueKind::Admin
            )
        ),
        (size, any::<u32>()).prop_map(|(size, offset)| (
            Command::Fabrics(FabricsCommand::PropertyGet { size, offset }),
            QueueKind::Admin
        )),
        (size2, any::<u32>(), any::<u64>()).prop_map(|(size, offset, value)| (
            Command::Fabrics(FabricsCommand::PropertySet { size, offset, value }),
            QueueKind::Admin
        )),
        any::<u16>().prop_map(|recfmt| (Command::Fabrics(FabricsCommand::Disconnect { recfmt }), QueueKind::Io)),
        (any::<u8>(), any::<u16>(), any::<u32>(), any::<u8>()).prop_map(|(cns, cntid, nsid, csi)| (
            Command::Admin(AdminCommand::Identify { cns, cntid, nsid, csi }),
            QueueKind::Admin
        )),
        (any::<u32>(), any::<u8>(), 0u8..128, any::<bool>(), any::<u32>(), any::<u64>()).prop_map(
            |(nsid, lid, lsp, rae, numd, offset)| (
                Command::Admin(AdminCommand::GetLogPage { nsid, lid, lsp, rae, numd, offset }),
                QueueKind::Admin
            )
        ),
        (any::<u8>(), any::<bool>(), any::<u32>(), any::<u32>()).prop_map(|(fid, save, nsid, cdw11)| (
            Command::Admin(AdminCommand::SetFeatures { fid, save, nsid, cdw11 }),
            QueueKind::Admin
        )),
        (any::<u8>(), 0u8..8, any::<u32>(), any::<u32>()).prop_map(|(fid, sel, nsid, cdw11)| (
            Command::Admin(AdminCommand::GetFeatures { fid, sel, nsid, cdw11 }),
            QueueKind::Admin
        )),
        Just((Command::Admin(AdminCommand::KeepAlive), QueueKind::Admin)),
        Just((Command::Admin(AdminCommand::AsyncEventRequest), QueueKind::Admin)),
        (any::<u16>(), any::<u16>())
            .prop_map(|(sqid, cid)| (Command::Admin(AdminCommand::Abort { sqid, cid }), QueueKind::Admin)),
        (any::<u32>(), any::<u64>(), any::<u16>())
            .prop_map(|(nsid, slba, nlb)| (Command::Io(IoCommand::Read { nsid, slba, nlb }), QueueKind::Io)),
        (any::<u32>(), any::<u64>(), any::<u16>())
            .prop_map(|(nsid, slba, nlb)| (Command::Io(IoCommand::Write { nsid, slba, nlb }), QueueKind::Io)),
        any::<u32>().prop_map(|nsid| (Command::Io(IoCommand::Flush { nsid }), QueueKind::Io)),
    ]
}

fn text(max: usize) -> impl Strategy<Value = String> {
    // Printable ASCII without trailing spaces: what round-trips through space-padded fields.
    prop::string::string_regex(&format!("([!-~][ -~]{{0,{}}})?[!-~]?", max.saturating_sub(2)))
        .unwrap()
        .prop_filter("fits", move |s| s.len() <= max && !s.ends_with(' '))
}

fn arb_identify_controller() -> impl Strategy<Value = IdentifyController> {
    (
        (any::<u16>(), any::<u16>(), text(20), text(40), text(8), any::<u8>(), any::<[u8; 3]>(), any::<u8>()),
        (any::<u8>(), any::<u16>(), any::<u32>(), any::<u32>(), any::<u32>(), any::<u8>(), any::<u16>(), any::<u8>()),
        (any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>(), any::<u16>(), any::<u8>(), any::<u8>()),
        (any::<u16>(), any::<u32>(), any::<u16>(), any::<u16>(), any::<u8>(), any::<u8>(), any::<u16>(), any::<u16>()),
        (any::<u32>(), "[a-z0-9.:-]{0,223}", any::<u32>(), any::<u32>(), any::<u16>(), any::<u8>(), any::<u8>()),
    )
        .prop_map(|(a, b, c, d, e)| IdentifyController {
            vid: a.0,
            ssvid: a.1,
            serial: a.2,
            model: a.3,
            firmware: a.4,
            rab: a.5,
            ieee: a.6,
            cmic: a.7,
            mdts: b.0,
            cntlid: b.1,
            ver: b.2,
            oaes: b.3,
            ctratt: b.4,
            cntrltype: b.5,
            oacs: b.6,
            acl: b.7,
            aerl: c.0,
            frmw: c.1,
            lpa: c.2,
            elpe: c.3,
            npss: c.4,
            kas: c.5,
            sqes: c.6,
            cqes: c.7,
            maxcmd: d.0,
            nn: d.1,
            oncs: d.2,
            fuses: d.3,
            fna: d.4,
            vwc: d.5,
            awun: d.6,
            awupf: d.7,
            sgls: e.0,
            subnqn: e.1,
            ioccsz: e.2,
            iorcsz: e.3,
            icdoff: e.4,
            fcatt: e.5,
            msdbd: e.6,
        })
}

fn arb_identify_namespace() -> impl Strategy<Value = IdentifyNamespace> {
    (
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>()),
        (any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>(), any::<[u8; 16]>(), any::<[u8; 8]>()),
        prop::collection::vec((any::<u16>(), any::<u8>(), 0u8..4), 1..=64),
    )
        .prop_map(|(a, b, formats)| IdentifyNamespace {
            nsze: a.0,
            ncap: a.1,
            nuse: a.2,
            nsfeat: a.3,
            nlbaf: (formats.len() - 1) as u8,
            flbas: a.4,
            mc: a.5,
            dpc: a.6,
            dps: b.0,
            nmic: b.1,
            dlfeat: b.2,
            nsattr: b.3,
            nguid: b.4,
            eui64: b.5,
            lbaf: formats.into_iter().map(|(ms, lbads, rp)| LbaFormat { ms, lbads, rp }).collect(),
        })
}

fn arb_discovery_entry() -> impl Strategy<Value = DiscoveryEntry> {
    (
        (any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>(), any::<u16>(), any::<u16>(), any::<u16>(), any::<u16>()),
        ("[0-9]{1,5}", "[a-z0-9.:-]{1,223}", "[0-9a-f.:]{1,255}", any::<u8>()),
    )
        .prop_map(|(a, b)| DiscoveryEntry {
            trtype: a.0,
            adrfam: a.1,
            subtype: a.2,
            treq: a.3,
            portid: a.4,
            cntlid: a.5,
            asqsz: a.6,
            eflags: a.7,
            trsvcid: b.0,
            subnqn: b.1,
            traddr: b.2,
            sectype: b.3,
        })
}

// ---- Malformed PDUs: the FES and FEI each one maps to ----

fn params(header: bool, data: bool) -> RxParams {
    RxParams {
        digests: Digests { header, data },
        pda: 0,
        max_capsule_data: 8192,
        max_h2c_data: 32768,
        max_c2h_data: 1 << 20,
    }
}

fn fatal_of(role: Role, p: RxParams, bytes: &[u8]) -> (Fes, u32) {
    match decode_established(role, p, bytes) {
        Err(PduError::Fatal(e)) => (e.fes, e.fei),
        other => panic!("expected a fatal error, got {other:?}"),
    }
}

fn capsule(data_len: usize, tx: TxParams) -> Vec<u8> {
    let mut sqe = Sqe::new(0x01);
    sqe.set_sgl(Sgl::in_capsule(0, data_len as u32));
    Pdu::CapsuleCmd(CapsuleCmd { sqe, data: vec![7; data_len] }).to_vec(&tx)
}

#[test]
fn unknown_or_wrong_direction_type_is_an_invalid_header_field_at_0() {
    let mut b = capsule(0, TxParams::default());
    b[0] = 0x08;
    assert_eq!(fatal_of(Role::Controller, params(false, false), &b), (Fes::InvalidHeaderField, 0));
    b[0] = pdu_type::CAPSULE_RESP; // host-bound type arriving at the controller
    assert_eq!(fatal_of(Role::Controller, params(false, false), &b), (Fes::InvalidHeaderField, 0));
    b[0] = 0xff;
    assert_eq!(fatal_of(Role::Host, params(false, false), &b), (Fes::InvalidHeaderField, 0));
}

#[test]
fn bad_hlen_pdo_and_plen_are_reported_at_their_offsets() {
    let good = capsule(100, TxParams::default());
    let mut b = good.clone();
    b[2] = 70;
    assert_eq!(fatal_of(Role::Controller, params(false, false), &b), (Fes::InvalidHeaderField, 2));
    let mut b = good.clone();
    b[3] = 40; // data offset inside the SQE
    assert_eq!(fatal_of(Role::Controller, params(false, false), &b), (Fes::InvalidHeaderField, 3));
    let mut b = good.clone();
    b[3] = 74; // not a multiple of the 8-byte alignment asked for below
    let aligned = RxParams { pda: 1, ..params(false, false) };
    assert_eq!(fatal_of(Role::Controller, aligned, &b), (Fes::InvalidHeaderField, 3));
    let mut b = good;
    b[4..8].copy_from_slice(&50u32.to_le_bytes()); // shorter than the header
    b[3] = 0;
    assert_eq!(fatal_of(Role::Controller, params(false, false), &b), (Fes::InvalidHeaderField, 4));
    // An R2T with trailing data.
    let mut r = Pdu::R2t(R2t { cccid: 1, ttag: 2, r2to: 0, r2tl: 8 }).to_vec(&TxParams::default());
    r.extend_from_slice(&[0; 4]);
    r[4..8].copy_from_slice(&28u32.to_le_bytes());
    assert_eq!(fatal_of(Role::Host, params(false, false), &r), (Fes::InvalidHeaderField, 4));
}

#[test]
fn digest_flags_must_match_the_negotiation() {
    let plain = capsule(16, TxParams::default());
    // Header digests negotiated, PDU without one.
    assert_eq!(fatal_of(Role::Controller, params(true, false), &plain), (Fes::InvalidHeaderField, 1));
    // Data digests negotiated, data without one.
    assert_eq!(fatal_of(Role::Controller, params(false, true), &plain), (Fes::InvalidHeaderField, 1));
    // A data digest that was never negotiated.
    let with = capsule(16, TxParams { digests: Digests { header: false, data: true }, pda: 0 });
    assert_eq!(fatal_of(Role::Controller, params(false, false), &with), (Fes::InvalidHeaderField, 1));
    // A capsule without data needs no data digest even when data digests are on.
    let empty = capsule(0, TxParams { digests: Digests { header: true, data: true }, pda: 0 });
    assert!(decode_established(Role::Controller, params(true, true), &empty).unwrap().is_some());
}

#[test]
fn header_digest_error_reports_the_received_digest() {
    let tx = TxParams { digests: Digests { header: true, data: false }, pda: 0 };
    let mut b = capsule(0, tx);
    b[8] ^= 0xff; // corrupt the opcode, covered by the digest
    let received = u32::from_le_bytes(b[72..76].try_into().unwrap());
    assert_eq!(fatal_of(Role::Controller, params(true, false), &b), (Fes::HeaderDigestError, received));
}

#[test]
fn data_digest_error_is_not_fatal_but_flagged() {
    let tx = TxParams { digests: Digests { header: false, data: true }, pda: 0 };
    let mut b = capsule(64, tx);
    let n = b.len();
    b[n - 10] ^= 1; // a data byte
    let (d, _) = decode_established(Role::Controller, params(false, true), &b).unwrap().unwrap();
    assert!(!d.data_digest_ok);
}

#[test]
fn oversized_data_is_a_data_transfer_limit_error_before_it_is_buffered() {
    // Only the 8-byte common header is needed to refuse a capsule claiming too much data.
    let b = capsule(8193, TxParams::default());
    assert_eq!(fatal_of(Role::Controller, params(false, false), &b[..8]), (Fes::DataTransferLimitExceeded, 0));
    let h2c = Pdu::H2CData(H2CData { cccid: 1, ttag: 1, datao: 0, last: true, data: vec![0; 32769] })
        .to_vec(&TxParams::default());
    assert_eq!(fatal_of(Role::Controller, params(false, false), &h2c[..8]), (Fes::DataTransferLimitExceeded, 0));
    // A huge PLEN on a C2HData: refused from its header alone, nothing allocated.
    let mut c2h = Pdu::C2HData(C2HData { cccid: 1, datao: 0, last: true, success: false, data: vec![1] })
        .to_vec(&TxParams::default());
    c2h[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(fatal_of(Role::Host, params(false, false), &c2h[..8]), (Fes::DataTransferOutOfRange, 0));
}

#[test]
fn datal_must_match_the_pdu() {
    let mut b = Pdu::H2CData(H2CData { cccid: 1, ttag: 1, datao: 0, last: true, data: vec![0; 64] })
        .to_vec(&TxParams::default());
    b[16..20].copy_from_slice(&63u32.to_le_bytes());
    assert_eq!(fatal_of(Role::Controller, params(false, false), &b), (Fes::InvalidHeaderField, 16));
}

#[test]
fn success_without_last_is_invalid() {
    let mut b = Pdu::C2HData(C2HData { cccid: 1, datao: 0, last: true, success: true, data: vec![0; 8] })
        .to_vec(&TxParams::default());
    b[1] &= !flags::DATA_LAST;
    assert_eq!(fatal_of(Role::Host, params(false, false), &b), (Fes::InvalidHeaderField, 1));
}

#[test]
fn initialization_order_is_enforced() {
    let icreq =
        Pdu::IcReq(IcReq { pfv: 0, hpda: 0, digests: Digests::default(), maxr2t: 0 }).to_vec(&TxParams::default());
    // A second ICReq after initialization.
    assert_eq!(fatal_of(Role::Controller, params(false, false), &icreq), (Fes::PduSequenceError, 0));
    // A command before initialization.
    match decode_initial(Role::Controller, &capsule(0, TxParams::default())) {
        Err(PduError::Fatal(e)) => assert_eq!((e.fes, e.fei), (Fes::PduSequenceError, 0)),
        other => panic!("{other:?}"),
    }
    // ICReq checks.
    let mut b = icreq.clone();
    b[8] = 1;
    match decode_initial(Role::Controller, &b) {
        Err(PduError::Fatal(e)) => assert_eq!((e.fes, e.fei), (Fes::UnsupportedParameter, 8)),
        other => panic!("{other:?}"),
    }
    let mut b = icreq.clone();
    b[10] = 32;
    match decode_initial(Role::Controller, &b) {
        Err(PduError::Fatal(e)) => assert_eq!((e.fes, e.fei), (Fes::InvalidHeaderField, 10)),
        other => panic!("{other:?}"),
    }
    let mut b = icreq;
    b[4..8].copy_from_slice(&129u32.to_le_bytes());
    match decode_initial(Role::Controller, &b) {
        Err(PduError::Fatal(e)) => assert_eq!((e.fes, e.fei), (Fes::InvalidHeaderField, 4)),
        other => panic!("{other:?}"),
    }
    // ICResp with a MAXH2CDATA below 4096.
    let resp = Pdu::IcResp(IcResp { pfv: 0, cpda: 0, digests: Digests::default(), maxh2cdata: 2048 })
        .to_vec(&TxParams::default());
    match decode_initial(Role::Host, &resp) {
        Err(PduError::Fatal(e)) => assert_eq!((e.fes, e.fei), (Fes::InvalidHeaderField, 12)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn malformed_termination_requests_close_without_reply() {
    let mut t = Pdu::H2CTermReq(TermReq { fes: 1, fei: 0, data: vec![] }).to_vec(&TxParams::default());
    t[4..8].copy_from_slice(&200u32.to_le_bytes());
    assert_eq!(
        decode_established(Role::Controller, params(false, false), &t),
        Err(PduError::MalformedTermReq { plen: 200 })
    );
}

#[test]
fn term_req_echoes_the_offending_header() {
    let mut b = capsule(0, TxParams::default());
    b[2] = 71;
    let e = match decode_established(Role::Controller, params(false, false), &b) {
        Err(PduError::Fatal(e)) => e,
        other => panic!("{other:?}"),
    };
    // The header is echoed as long as its claimed length fits the PDU.
    assert_eq!(e.header, b[..71].to_vec());
    let t = e.term_req(Role::Controller);
    assert_eq!(t[0], pdu_type::C2H_TERM_REQ);
    assert_eq!(u16::from_le_bytes([t[8], t[9]]), Fes::InvalidHeaderField as u16);
    assert_eq!(u32::from_le_bytes(t[10..14].try_into().unwrap()), 2);
    assert_eq!(&t[24..], &b[..71]);
    // A PLEN too short for the claimed HLEN: only the common header is echoed.
    b[4..8].copy_from_slice(&60u32.to_le_bytes());
    match decode_established(Role::Controller, params(false, false), &b) {
        Err(PduError::Fatal(e)) => assert_eq!(e.header, b[..8].to_vec()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_decoder_stops_after_an_error() {
    let mut dec = PduDecoder::established(Role::Controller, params(false, false));
    let mut bad = capsule(0, TxParams::default());
    bad[0] = 0x0b;
    dec.feed(&bad);
    dec.feed(&capsule(0, TxParams::default()));
    assert!(dec.next_pdu().is_err());
    assert_eq!(dec.next_pdu(), Ok(None));
}

#[test]
fn digests_are_crc32c() {
    // The CRC32C check value.
    assert_eq!(pdu::digest(b"123456789"), 0xE306_9283);
}
