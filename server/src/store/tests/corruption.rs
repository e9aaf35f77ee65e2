//! Corrupt and torn SSD blocks are detected by their checks, reported with the SSD and blocks
//! they sit in, and never served; a zeroed superblock in front of a used store is reported,
//! not formatted over.

use super::*;
use scalio_common::ssd::FIRST_LOG_BLOCK;

/// The blocks holding `key`'s bucket chain and its value record, ((first, count), (first, count)),
/// and the record's byte offset in its first block.
fn blocks_of(d: &Driver, key: &[u8]) -> ((u64, u32), (u64, u32), usize) {
    let geo = *d.store.geometry();
    let loc = d.store.locate(key).expect("the key's bucket has a chain");
    let chain_lba = geo.bucket_block(loc.lseq);
    let bytes = d.ssd.read(chain_lba, u32::from(loc.len), Issuer::Worker).unwrap();
    let bucket = Bucket::decode(&bytes, d.store.bucket_of(key), loc.lseq, loc.len, d.store.seed).unwrap();
    let item = bucket.find(key).expect("the key is in its bucket").clone();
    let (lba, count, offset) = geo.record_blocks(item.value_pos, item.record_len());
    ((chain_lba, u32::from(loc.len)), (lba, count), offset)
}

/// Flips one bit `at` bytes into the SSD from block `lba`.
fn flip_bit(d: &Driver, lba: u64, at: usize) {
    let (lba, at) = (lba + (at / BLOCK_SIZE) as u64, at % BLOCK_SIZE);
    let mut block = d.ssd.read(lba, 1, Issuer::Worker).unwrap();
    block[at] ^= 0x10;
    d.ssd.write(lba, &block, Issuer::Worker).unwrap();
}

fn assert_corrupt(outcome: Outcome, first: u64, count: u32, what: &str) {
    match outcome {
        Outcome::Corrupt(c) => {
            assert_eq!((c.ssd, c.first, c.count), (0, first, count), "{what}: {c}");
            assert!(c.to_string().starts_with(&format!("SSD 0 blocks {first}..")), "{what}: {c}");
        }
        other => panic!("{what}: expected a corruption report, got {other:?}"),
    }
}

#[test]
fn corrupt_and_torn_blocks_are_reported_with_their_blocks_and_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = Driver::open(dir.path(), 8192, None, config(1), None);
    // Four keys in four different buckets.
    let mut keys: Vec<Vec<u8>> = Vec::new();
    for n in 0.. {
        let k = format!("corrupt-{n}").into_bytes();
        if !keys.iter().any(|o| d.store.bucket_of(o) == d.store.bucket_of(&k)) {
            keys.push(k);
        }
        if keys.len() == 4 {
            break;
        }
    }
    let small = vec![b's'; 100];
    let large = vec![b'L'; 3000];
    for (k, v) in keys.iter().zip([&small, &small, &large, &small]) {
        assert_eq!(d.put_now(k, v), Outcome::Ok);
    }
    // A bit flip in a value record.
    let (_, (lba, count), offset) = blocks_of(&d, &keys[0]);
    flip_bit(&d, lba, offset + 60);
    assert_corrupt(d.get(&keys[0]), lba, count, "a bit flip in a value");
    // A bit flip in a bucket chain.
    let ((lba, count), _, _) = blocks_of(&d, &keys[1]);
    flip_bit(&d, lba, 100);
    assert_corrupt(d.get(&keys[1]), lba, count, "a bit flip in a bucket chain");
    // A value write torn at a 512-byte boundary: its first two blocks new, the rest not.
    let (_, (lba, count), _) = blocks_of(&d, &keys[2]);
    assert!(count >= 4, "a 3000-byte record spans several blocks");
    let stale = AlignedBuf::copy_padded(&[], (count as usize - 2) * BLOCK_SIZE);
    d.ssd.write(lba + 2, &stale, Issuer::Worker).unwrap();
    assert_corrupt(d.get(&keys[2]), lba, count, "a torn value");
    // The intact key is served; the reports were counted.
    assert_eq!(d.get(&keys[3]), Outcome::Value(small));
    assert_eq!(d.store.counters().corrupt_reads.load(Ordering::Relaxed), 3);
}

#[test]
fn a_zeroed_superblock_is_reported_not_formatted_over() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = Driver::open(dir.path(), 4096, None, config(1), None);
    assert_eq!(d.put_now(b"precious", b"data"), Outcome::Ok);
    d.ssd.write(0, &AlignedBuf::copy_padded(&[], BLOCK_SIZE), Issuer::Worker).unwrap();
    d.ssd.shutdown();
    drop(d);
    let ssd = open_ssd(dir.path(), 4096);
    match recovery::open(std::slice::from_ref(&ssd), None) {
        Err(e @ recovery::StoreError::SuperblockLost { ssd: 0, data_block: FIRST_LOG_BLOCK, .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("block 0") && msg.contains("ssd0.img"), "{msg}");
        }
        Err(e) => panic!("the wrong error: {e}"),
        Ok(_) => panic!("a used SSD without its superblock was formatted over"),
    }
    // The data is still there: nothing was written.
    let block = ssd.read(FIRST_LOG_BLOCK, 1, Issuer::Worker).unwrap();
    assert!(block.iter().any(|b| *b != 0));
}
