//! Listing the keys of a range of buckets (for copying a partition to another cluster member):
//! the chains the index names are read and decoded, like a server GET's first read, and
//! retried from the index when garbage collection reused their blocks meanwhile.
//!
//! A scan starts only once every write submitted before it has finished (completed or failed),
//! so it lists every key whose write was acknowledged before the scan was asked for. It sees
//! each bucket as of its read: a key written later may not be listed, which is why a member
//! receiving a copy also receives every new write (see `server::cluster`).

use super::*;

/// Most buckets one scan reads (its reads are all in flight at once).
pub const MAX_SCAN_BUCKETS: u32 = 256;

pub(super) struct Scan<R> {
    reply: R,
    keys: Vec<Vec<u8>>,
    /// Chain reads not yet answered.
    outstanding: usize,
    /// The first bucket after the range.
    next: u32,
    /// Attempts per bucket (a stale chain is read again from the index).
    attempts: HashMap<u32, u32>,
    failed: Option<Outcome>,
}

impl<R> DataStore<R> {
    /// Lists the keys of buckets `from..from + max_buckets` (at most [`MAX_SCAN_BUCKETS`]),
    /// once the writes submitted before it have finished. Completes with [`Outcome::Keys`];
    /// refused at once when [`StoreConfig::max_server_gets`] reads and scans are in progress.
    pub fn submit_scan(&mut self, from: u32, max_buckets: u32, reply: R) {
        if self.gets.len() + self.scans.len() + self.deferred_scans.len() >= self.cfg.max_server_gets {
            self.counters.overloaded.fetch_add(1, Ordering::Relaxed);
            let refusal =
                Refusal::Overloaded { ssd: self.ssd, queue: Queue::ServerGets, limit: self.cfg.max_server_gets };
            self.done.push(Completed { reply, outcome: Outcome::Refused(refusal) });
            return;
        }
        self.deferred_scans.push_back((self.write_seq, from, max_buckets, reply));
        self.start_deferred_scans();
    }

    /// The submission number of the oldest write not finished, if any.
    fn oldest_unfinished_write(&self) -> Option<u64> {
        let pending = self.pending.iter().map(|p| p.seq).min();
        let batches = self.batches.values().map(|b| b.min_seq).min();
        pending.into_iter().chain(batches).min()
    }

    /// Starts the deferred scans whose earlier writes have all finished.
    pub(super) fn start_deferred_scans(&mut self) {
        while let Some(&(barrier, ..)) = self.deferred_scans.front() {
            if self.oldest_unfinished_write().is_some_and(|w| w < barrier) {
                return;
            }
            let (_, from, max_buckets, reply) = self.deferred_scans.pop_front().expect("front exists");
            self.start_scan(from, max_buckets, reply);
        }
    }

    fn start_scan(&mut self, from: u32, max_buckets: u32, reply: R) {
        let buckets = self.index.buckets();
        let from = from.min(buckets);
        let next = from.saturating_add(max_buckets.clamp(1, MAX_SCAN_BUCKETS)).min(buckets);
        let id = self.next_id;
        self.next_id += 1;
        let present: Vec<(u32, ChainLoc)> = (from..next).filter_map(|b| self.index.get(b).map(|l| (b, l))).collect();
        let scan =
            Scan { reply, keys: Vec::new(), outstanding: present.len(), next, attempts: HashMap::new(), failed: None };
        self.scans.insert(id, scan);
        for (bucket, loc) in present {
            self.read_chain(loc, Purpose::ScanBucket { scan: id, bucket, loc });
        }
        self.finish_scan_if_done(id);
    }

    pub(super) fn on_scan_bucket(&mut self, id: u64, bucket: u32, loc: ChainLoc, r: Result<AlignedBuf, DeviceError>) {
        let seed = self.seed;
        let retries = self.cfg.read_retries;
        let Some(scan) = self.scans.get_mut(&id) else { return };
        scan.outstanding -= 1;
        match r {
            Err(e) => scan.failed = Some(Outcome::Io(e.to_string())),
            Ok(bytes) => match Bucket::decode(&bytes, bucket, loc.lseq, loc.len, seed) {
                Ok(content) => scan.keys.extend(content.items.into_iter().map(|i| i.key)),
                Err(e) => {
                    // Reused by garbage collection since the index named it: read the chain the
                    // index names now (a bounded number of times; then it is corruption).
                    let attempts = scan.attempts.entry(bucket).or_insert(1);
                    *attempts += 1;
                    if *attempts > retries {
                        self.counters.corrupt_reads.fetch_add(1, Ordering::Relaxed);
                        let (first, count) = (self.geo.bucket_block(loc.lseq), u32::from(loc.len));
                        scan.failed = Some(Outcome::Corrupt(CorruptBlocks { ssd: self.ssd, first, count, error: e }));
                    } else if let Some(now) = self.index.get(bucket) {
                        self.counters.stale_retries.fetch_add(1, Ordering::Relaxed);
                        scan.outstanding += 1;
                        self.read_chain(now, Purpose::ScanBucket { scan: id, bucket, loc: now });
                    }
                }
            },
        }
        self.finish_scan_if_done(id);
    }

    fn finish_scan_if_done(&mut self, id: u64) {
        if self.scans.get(&id).is_some_and(|s| s.outstanding == 0) {
            let s = self.scans.remove(&id).expect("scan exists");
            let outcome = s.failed.unwrap_or(Outcome::Keys { keys: s.keys, next: s.next });
            self.done.push(Completed { reply: s.reply, outcome });
        }
    }
}
