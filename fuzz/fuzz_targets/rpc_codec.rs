//! The KV RPC codec (`scalio_common::rpc`): every decoder a server or client runs on bytes from
//! the network. A decoded request must re-encode to a message that decodes to the same request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scalio_common::rpc::{MetaGetReply, Request, Response, ServerInfo, Stats, WrongOwner};

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = Request::decode(data) {
        let mut again = Vec::new();
        r.encode(&mut again);
        assert_eq!(Request::decode(&again).expect("re-encoded request decodes"), r);
    }
    let _ = Response::decode(data);
    let _ = MetaGetReply::decode(data);
    let _ = ServerInfo::decode(data);
    let _ = Stats::decode(data);
    let _ = WrongOwner::decode(data);
});
