//! NVMe/TCP PDUs and commands (`scalio_common::nvme`): the stream decoder in both roles, before
//! and after connection setup, fed in pieces; and the command parsers on whatever SQE a PDU
//! carries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scalio_common::nvme::command::{Command, QueueKind};
use scalio_common::nvme::pdu::Digests;
use scalio_common::nvme::sqe::Sqe;
use scalio_common::nvme::stream::{PduDecoder, PduError, Role, RxParams};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, bytes)) = data.split_first() else { return };
    let role = if mode & 1 == 0 { Role::Host } else { Role::Controller };
    let mut dec = if mode & 2 == 0 {
        PduDecoder::new(role)
    } else {
        let digests = Digests { header: mode & 4 != 0, data: mode & 8 != 0 };
        PduDecoder::established(role, RxParams { digests, pda: (mode >> 4) & 3, ..RxParams::default() })
    };
    let cut = usize::from(mode >> 6) * 16 + 1;
    'feed: for chunk in bytes.chunks(cut) {
        dec.feed(chunk);
        loop {
            match dec.next_pdu() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(PduError::Fatal(e)) => {
                    assert!(e.header.len() <= 128, "a fatal error keeps at most 128 header bytes");
                    let _ = e.term_req(role);
                    break 'feed;
                }
                Err(PduError::MalformedTermReq { .. }) => break 'feed,
            }
        }
    }
    if bytes.len() >= 64 {
        let sqe = Sqe(bytes[..64].try_into().unwrap());
        let _ = Command::parse(&sqe, QueueKind::Admin);
        let _ = Command::parse(&sqe, QueueKind::Io);
    }
});
