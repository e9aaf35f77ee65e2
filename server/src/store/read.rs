//! The LEED-style server read: the bucket chain, then the value record, both read by the worker;
//! retried from the index when garbage collection reused the blocks meanwhile.

use super::*;

pub(super) struct Get<R> {
    pub(super) key: Vec<u8>,
    pub(super) bucket: u32,
    pub(super) reply: R,
    pub(super) attempts: u32,
    /// The chain the current attempt reads (the index may move on while it is read).
    pub(super) loc: Option<ChainLoc>,
    pub(super) item: Option<Item>,
    /// The blocks of the read in progress (first, count), to name them if they are corrupt.
    pub(super) reading: (u64, u32),
}

impl<R> DataStore<R> {
    /// Starts a server-side read of `key` (the LEED-style path: two dependent SSD reads).
    /// Refused at once when [`StoreConfig::max_server_gets`] are in progress.
    pub fn submit_get(&mut self, key: Vec<u8>, reply: R) {
        if self.gets.len() >= self.cfg.max_server_gets {
            self.counters.overloaded.fetch_add(1, Ordering::Relaxed);
            let refusal =
                Refusal::Overloaded { ssd: self.ssd, queue: Queue::ServerGets, limit: self.cfg.max_server_gets };
            self.done.push(Completed { reply, outcome: Outcome::Refused(refusal) });
            return;
        }
        self.counters.server_gets.fetch_add(1, Ordering::Relaxed);
        let bucket = self.bucket_of(&key);
        let id = self.next_id;
        self.next_id += 1;
        self.gets.insert(id, Get { key, bucket, reply, attempts: 0, loc: None, item: None, reading: (0, 0) });
        self.start_get(id);
    }

    pub(super) fn start_get(&mut self, id: u64) {
        let g = self.gets.get_mut(&id).expect("get exists");
        g.attempts += 1;
        g.item = None;
        g.loc = self.index.get(g.bucket);
        match g.loc {
            None => self.finish_get(id, Outcome::NotFound),
            Some(loc) => {
                g.reading = (self.geo.bucket_block(loc.lseq), u32::from(loc.len));
                self.read_chain(loc, Purpose::GetBucket { get: id })
            }
        }
    }

    pub(super) fn finish_get(&mut self, id: u64, outcome: Outcome) {
        if let Some(g) = self.gets.remove(&id) {
            self.done.push(Completed { reply: g.reply, outcome });
        }
    }

    /// A read found blocks that do not hold what the index said when the read was issued: space
    /// reused (or being rewritten) by garbage collection. Retry from the index, a bounded number
    /// of times; then it is corruption.
    pub(super) fn retry_get(&mut self, id: u64, why: LayoutError) {
        let attempts = self.gets.get(&id).map_or(u32::MAX, |g| g.attempts);
        if attempts < self.cfg.read_retries {
            self.counters.stale_retries.fetch_add(1, Ordering::Relaxed);
            self.start_get(id);
        } else {
            self.counters.corrupt_reads.fetch_add(1, Ordering::Relaxed);
            let (first, count) = self.gets.get(&id).map_or((0, 0), |g| g.reading);
            let corrupt = CorruptBlocks { ssd: self.ssd, first, count, error: why };
            tracing::error!(error = %corrupt, attempts, "blocks stay corrupt; not serving them");
            self.finish_get(id, Outcome::Corrupt(corrupt));
        }
    }

    pub(super) fn on_get_bucket(&mut self, id: u64, r: Result<AlignedBuf, DeviceError>) {
        let Some(g) = self.gets.get(&id) else { return };
        let bytes = match r {
            Ok(b) => b,
            Err(e) => return self.finish_get(id, Outcome::Io(e.to_string())),
        };
        let loc = g.loc.expect("a chain was read");
        // The chain as the index named it when the read was issued: a newer chain published since
        // is as good a linearization point as this one, so no re-check is needed.
        let decoded = Bucket::decode(&bytes, g.bucket, loc.lseq, loc.len, self.seed);
        let item = match decoded {
            Ok(content) => content.find(&g.key).cloned(),
            Err(e) => return self.retry_get(id, e),
        };
        match item {
            None => self.finish_get(id, Outcome::NotFound),
            Some(item) => {
                let (lba, count, _) = self.geo.record_blocks(item.value_pos, item.record_len());
                let g = self.gets.get_mut(&id).expect("get exists");
                g.item = Some(item);
                g.reading = (lba, count);
                let token = self.token(Purpose::GetValue { get: id });
                self.io_out.push(IoRequest::Read { token, lba, count });
            }
        }
    }

    pub(super) fn on_get_value(&mut self, id: u64, r: Result<AlignedBuf, DeviceError>) {
        let Some(g) = self.gets.get(&id) else { return };
        let item = g.item.clone().expect("item located");
        let bytes = match r {
            Ok(b) => b,
            Err(e) => return self.finish_get(id, Outcome::Io(e.to_string())),
        };
        let (_, _, offset) = self.geo.record_blocks(item.value_pos, item.record_len());
        match decode_expected_record(&bytes[offset..], self.seed, item.value_pos, &g.key, item.value_len) {
            Ok(rec) => {
                let v = rec.value.to_vec();
                self.finish_get(id, Outcome::Value(v))
            }
            Err(e) => self.retry_get(id, e),
        }
    }
}
