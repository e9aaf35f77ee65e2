//! The on-SSD structures (`scalio_common::ssd`): what recovery and every read decode from blocks
//! that may be torn, stale or corrupt. The first 17 bytes pick the expected bucket, position and
//! chain length; the rest is the block content.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scalio_common::ssd::{decode_expected_record, decode_record, BlockHeader, Bucket, Superblock};

const SEED: u64 = 0x5ca1_10;

fuzz_target!(|data: &[u8]| {
    let _ = Superblock::decode(data);
    let _ = decode_record(data, SEED);
    if data.len() < 17 {
        return;
    }
    let (head, rest) = data.split_at(17);
    let id = u32::from_le_bytes(head[0..4].try_into().unwrap());
    let lseq = u64::from_le_bytes(head[4..12].try_into().unwrap());
    let value_len = u32::from_le_bytes(head[12..16].try_into().unwrap());
    let chain_len = head[16] % 8;
    let _ = BlockHeader::decode(rest, SEED);
    let _ = BlockHeader::claimed(rest);
    let _ = Bucket::decode(rest, id, lseq, chain_len, SEED);
    let _ = decode_expected_record(rest, SEED, lseq, &head[..usize::from(head[16] % 17)], value_len);
});
