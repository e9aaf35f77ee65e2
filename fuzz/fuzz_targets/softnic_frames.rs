//! The software NIC's wire protocol (`scalio_common::fabric::tcp::wire`): the HELLO and the
//! client and server frame decoders, run over a stream of frames as the NIC and the queue pair
//! do (decode one, advance by its length, until "need more" or an error).
#![no_main]

use libfuzzer_sys::fuzz_target;
use scalio_common::fabric::tcp::wire::{decode_client_frame, decode_hello, decode_server_frame};

fuzz_target!(|data: &[u8]| {
    let _ = decode_hello(data);
    let mut at = 0;
    while let Ok(Some((_, n))) = decode_client_frame(&data[at..]) {
        assert!(n > 0 && at + n <= data.len(), "a frame consumes what it decoded");
        at += n;
    }
    let mut at = 0;
    while let Ok(Some((_, n))) = decode_server_frame(&data[at..]) {
        assert!(n > 0 && at + n <= data.len());
        at += n;
    }
});
