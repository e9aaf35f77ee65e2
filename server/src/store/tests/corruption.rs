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

/// The chain block of `key` now.
fn chain_block(d: &Driver, key: &[u8]) -> u64 {
    blocks_of(d, key).0 .0
}

/// Reopens the store on the SSD file in `dir`, as a restart after a crash does.
fn reopen(d: Driver, dir: &Path, blocks: u64) -> (Arc<Ssd>, Result<recovery::OpenedStore, recovery::StoreError>) {
    d.ssd.shutdown();
    drop(d);
    let ssd = open_ssd(dir, blocks);
    let r = recovery::open(std::slice::from_ref(&ssd), None);
    (ssd, r)
}

/// A bit flip in the newest chain of a bucket, found by recovery. A crash cannot have left it (it
/// tears writes between blocks, never inside one), so it is corruption of a chain that may have
/// been acknowledged: recovery refuses to open the store and names the SSD, block and bucket.
/// Before, recovery took it for a torn write, fell back to the bucket's previous chain and
/// served `v1` in place of the acknowledged `v2`.
#[test]
fn a_bit_flip_in_a_newest_chain_found_by_recovery_is_corruption_not_a_torn_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = Driver::open(dir.path(), 4096, None, config(1), None);
    assert_eq!(d.put_now(b"account", b"v1"), Outcome::Ok);
    assert_eq!(d.put_now(b"account", b"v2"), Outcome::Ok);
    let newest = chain_block(&d, b"account");
    let bucket = d.store.bucket_of(b"account");
    flip_bit(&d, newest, 100);
    let (ssd, opened) = reopen(d, dir.path(), 4096);
    match opened {
        Err(e @ recovery::StoreError::CorruptChain { ssd: 0, .. }) => {
            let recovery::StoreError::CorruptChain { block, bucket: b, .. } = &e else { unreachable!() };
            assert_eq!((*block, *b), (newest, bucket), "{e}");
            let msg = e.to_string();
            assert!(msg.contains(&format!("block {newest}")) && msg.contains("ssd0.img"), "{msg}");
        }
        Err(e) => panic!("the wrong error: {e}"),
        Ok(opened) => {
            let (geo, state) = opened.ssds.into_iter().next().unwrap();
            let mut d = Driver {
                ssd,
                store: DataStore::new(0, 1, geo, opened.seed, state, config(1), None),
                done: HashMap::new(),
                next: 1,
                crash_after_blocks: None,
                crashed: false,
                fault: None,
            };
            panic!("the store opened over a damaged acknowledged chain; GET returns {:?}", d.get(b"account"));
        }
    }
}

/// Damage to a chain the bucket has since replaced touches dead data only: the store opens and
/// serves the newest value.
#[test]
fn a_bit_flip_in_a_dead_chain_is_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = Driver::open(dir.path(), 4096, None, config(1), None);
    assert_eq!(d.put_now(b"account", b"v1"), Outcome::Ok);
    let dead = chain_block(&d, b"account");
    assert_eq!(d.put_now(b"account", b"v2"), Outcome::Ok);
    flip_bit(&d, dead, 100);
    let mut d = d.restart(dir.path(), 4096, config(1));
    assert_eq!(d.get(b"account"), Outcome::Value(b"v2".to_vec()));
}
