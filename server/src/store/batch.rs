//! Write batching: choosing the writes of a batch, reading their buckets, packing values and
//! chains into one durable write, then invalidating, publishing and acknowledging in that order.

use super::*;

pub(super) struct Pending<R> {
    pub(super) req: WriteRequest<R>,
    pub(super) bucket: u32,
    pub(super) arrived: Instant,
    /// Submission order of writes (a scan waits for the writes submitted before it).
    pub(super) seq: u64,
}

pub(super) struct Batch<R> {
    pub(super) writes: Vec<(WriteRequest<R>, u32)>,
    /// The smallest submission sequence number of its writes.
    pub(super) min_seq: u64,
    pub(super) buckets: Vec<u32>,
    pub(super) contents: HashMap<u32, Bucket>,
    pub(super) failed: HashMap<u32, String>,
    pub(super) awaiting: usize,
    pub(super) estimate: (u64, u64),
    pub(super) outcomes: Vec<Outcome>,
    pub(super) publish: Vec<(u32, ChainLoc)>,
    pub(super) live_blocks_delta: i64,
    pub(super) live_bytes_delta: i64,
}

impl<R> DataStore<R> {
    /// Selects and starts one batch if one is ready. Returns whether it started one.
    pub(super) fn start_batch(&mut self, now: Instant) -> bool {
        // Writes whose bucket is free, in arrival order (a locked bucket's later writes wait too,
        // which keeps per-key order).
        let mut chosen = Vec::new();
        let mut first_unbatched = None;
        for (i, p) in self.pending.iter().enumerate() {
            if self.locked.contains(&p.bucket) {
                continue;
            }
            if p.req.unbatched {
                first_unbatched.get_or_insert(i);
            }
            chosen.push(i);
            if chosen.len() >= self.cfg.batch.max(1) {
                break;
            }
        }
        let Some(&oldest) = chosen.first() else { return false };
        let take: Vec<usize> = if let Some(u) = first_unbatched {
            vec![u]
        } else if chosen.len() >= self.cfg.batch.max(1) || self.pending[oldest].arrived + self.cfg.batch_timeout <= now
        {
            chosen
        } else {
            return false;
        };
        let estimate = self.estimate(&take);
        if !self.fits(estimate) {
            if !self.batches.is_empty() {
                return false; // in-flight batches still hold reservations: wait for them
            }
            if !self.gc_futile && self.could_fit(estimate) {
                // Garbage collection can make room: run it before this batch.
                self.gc_need = estimate;
                self.gc_wanted = true;
                self.gc_steps = 0;
                return false;
            }
            // Even a fully compacted SSD could not hold it: refuse the oldest write.
            let p = self.take_pending(take[0]);
            self.counters.no_space.fetch_add(1, Ordering::Relaxed);
            let msg = format!("SSD {} is full ({} live value bytes)", self.ssd, self.live_bytes);
            self.done.push(Completed { reply: p.req.reply, outcome: Outcome::NoSpace(msg) });
            return true;
        }
        let mut writes = Vec::with_capacity(take.len());
        let mut min_seq = u64::MAX;
        for (n, i) in take.into_iter().enumerate() {
            let p = self.take_pending(i - n);
            min_seq = min_seq.min(p.seq);
            writes.push((p.req, p.bucket));
        }
        self.reserved.0 += estimate.0;
        self.reserved.1 += estimate.1;
        let id = self.next_id;
        self.next_id += 1;
        let mut buckets = Vec::new();
        for (_, b) in &writes {
            if self.locked.insert(*b) {
                buckets.push(*b);
            }
        }
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        self.counters.batched_writes.fetch_add(writes.len() as u64, Ordering::Relaxed);
        let mut batch = Batch {
            writes,
            min_seq,
            buckets: buckets.clone(),
            contents: HashMap::new(),
            failed: HashMap::new(),
            awaiting: 0,
            estimate,
            outcomes: Vec::new(),
            publish: Vec::new(),
            live_blocks_delta: 0,
            live_bytes_delta: 0,
        };
        for b in buckets {
            match self.index.get(b) {
                Some(loc) => {
                    batch.awaiting += 1;
                    self.read_chain(loc, Purpose::BatchBucket { batch: id, bucket: b });
                }
                None => {
                    batch.contents.insert(b, Bucket::default());
                }
            }
        }
        let ready = batch.awaiting == 0;
        self.batches.insert(id, batch);
        if ready {
            self.build_batch(id);
        }
        true
    }

    /// Worst-case space of the writes at `take`: (value-log bytes, bucket-log blocks).
    pub(super) fn estimate(&self, take: &[usize]) -> (u64, u64) {
        let mut bytes = 0;
        let mut buckets: HashMap<u32, u64> = HashMap::new();
        for &i in take {
            let p = &self.pending[i];
            bytes += record_len(p.req.key.len(), p.req.value.len()) as u64;
            *buckets.entry(p.bucket).or_insert(0) += 1;
        }
        let chains: Vec<u64> =
            buckets.iter().map(|(b, n)| self.index.get(*b).map_or(0, |l| u64::from(l.len)) + n.div_ceil(16)).collect();
        // The values go out as one run, which may skip up to its own size at the end of the log;
        // chains are placed one by one, so at most the longest is skipped.
        let blocks = chains.iter().sum::<u64>() + chains.iter().max().copied().unwrap_or(0);
        (LogSpace::worst_case(round_block(bytes)), blocks)
    }

    pub(super) fn fits(&self, (bytes, blocks): (u64, u64)) -> bool {
        bytes + self.reserved.0 <= self.vl.free() && blocks + self.reserved.1 <= self.bl.free()
    }

    /// Whether `estimate` would fit once all dead space is collected (with a margin that keeps
    /// garbage collection able to relocate live data).
    pub(super) fn could_fit(&self, (bytes, blocks): (u64, u64)) -> bool {
        let room = |live: u64, need: u64, s: &LogSpace| (live + need) as f64 <= GC_FULL * s.size as f64;
        room(self.live_bytes, bytes, &self.vl) && room(self.live_blocks, blocks, &self.bl)
    }

    /// Applies a batch whose buckets have all been read, and issues its write.
    pub(super) fn build_batch(&mut self, id: u64) {
        let mut batch = self.batches.remove(&id).expect("batch exists");
        // Pass 1: outcomes, and how much value space they need.
        let mut exists: HashMap<Vec<u8>, bool> = HashMap::new();
        let mut value_bytes = 0u64;
        for (w, b) in &batch.writes {
            let outcome = if let Some(e) = batch.failed.get(b) {
                Outcome::Io(e.clone())
            } else {
                let present = exists
                    .entry(w.key.clone())
                    .or_insert_with(|| batch.contents.get(b).is_some_and(|c| c.find(&w.key).is_some()));
                let (outcome, writes_record) = match (w.op, *present) {
                    (WriteOp::Put, _) | (WriteOp::Update, true) => (Outcome::Ok, true),
                    (WriteOp::Delete, true) => (Outcome::Ok, false),
                    (WriteOp::Update | WriteOp::Delete, false) => (Outcome::NotFound, false),
                };
                if outcome == Outcome::Ok {
                    *present = w.op != WriteOp::Delete;
                }
                if writes_record {
                    value_bytes += record_len(w.key.len(), w.value.len()) as u64;
                }
                outcome
            };
            batch.outcomes.push(outcome);
        }
        // Pass 2: apply, packing the values into one run of blocks.
        let padded = round_block(value_bytes);
        let base = self.vl.place(self.vl.tail, padded);
        let mut records = Vec::with_capacity(padded as usize);
        let mut changed: Vec<u32> = Vec::new();
        for (i, (w, b)) in batch.writes.iter().enumerate() {
            if batch.outcomes[i] != Outcome::Ok {
                continue;
            }
            let content = batch.contents.get_mut(b).expect("read bucket");
            let old = content.find(&w.key).map_or(0, |it| it.record_len() as i64);
            if w.op == WriteOp::Delete {
                content.remove(&w.key);
                batch.live_bytes_delta -= old;
            } else {
                let lpos = base + records.len() as u64;
                encode_record(&mut records, self.seed, lpos, &w.key, &w.value);
                let item = Item { key: w.key.clone(), value_len: w.value.len() as u32, value_pos: lpos };
                let new = item.record_len() as i64;
                if let Err(e) = content.upsert(item) {
                    batch.outcomes[i] = Outcome::NoSpace(format!("SSD {}: {e}", self.ssd));
                    continue;
                }
                batch.live_bytes_delta += new - old;
            }
            if !changed.contains(b) {
                changed.push(*b);
            }
        }
        let mut parts = Vec::new();
        if value_bytes > 0 {
            let lba = self.geo.value_log.start + (base % self.vl.size) / BLOCK_SIZE as u64;
            parts.push((lba, AlignedBuf::copy_padded(&records, padded as usize)));
            self.vl.tail = base + padded;
        }
        // The changed chains, appended to the bucket log.
        let mut chains: Vec<(u64, Vec<u8>)> = Vec::new();
        for b in changed {
            let content = &batch.contents[&b];
            let len = content.chain_len() as u64;
            let lseq = self.bl.place(self.bl.tail, len);
            match content.encode(b, lseq, self.seed) {
                Ok(bytes) => {
                    self.bl.tail = lseq + len;
                    let old = self.index.get(b).map_or(0, |l| i64::from(l.len));
                    batch.live_blocks_delta += len as i64 - old;
                    batch.publish.push((b, ChainLoc { lseq, len: len as u8 }));
                    chains.push((lseq, bytes));
                }
                Err(e) => {
                    for (i, (_, wb)) in batch.writes.iter().enumerate() {
                        if *wb == b && batch.outcomes[i] == Outcome::Ok {
                            batch.outcomes[i] = Outcome::NoSpace(format!("SSD {}: {e}", self.ssd));
                        }
                    }
                }
            }
        }
        parts.extend(self.chain_parts(chains));
        self.reserved.0 -= batch.estimate.0;
        self.reserved.1 -= batch.estimate.1;
        if parts.is_empty() {
            self.batches.insert(id, batch);
            self.finish_batch(id, Ok(()));
            return;
        }
        let token = self.token(Purpose::BatchWrite { batch: id });
        self.io_out.push(IoRequest::Write { token, parts });
        self.batches.insert(id, batch);
    }

    /// Groups chains placed at consecutive positions into write parts.
    pub(super) fn chain_parts(&self, chains: Vec<(u64, Vec<u8>)>) -> Vec<(u64, AlignedBuf)> {
        let mut parts = Vec::new();
        let mut run: Option<(u64, u64, Vec<u8>)> = None; // (first lseq, next lseq, bytes)
        for (lseq, bytes) in chains {
            let blocks = (bytes.len() / BLOCK_SIZE) as u64;
            match &mut run {
                // Contiguous, and not across the physical end of the log.
                Some((_, next, buf)) if *next == lseq && lseq % self.bl.size != 0 => {
                    buf.extend_from_slice(&bytes);
                    *next += blocks;
                }
                _ => {
                    if let Some((first, _, buf)) = run.take() {
                        parts.push((self.geo.bucket_block(first), AlignedBuf::copy_padded(&buf, buf.len())));
                    }
                    run = Some((lseq, lseq + blocks, bytes));
                }
            }
        }
        if let Some((first, _, buf)) = run {
            parts.push((self.geo.bucket_block(first), AlignedBuf::copy_padded(&buf, buf.len())));
        }
        parts
    }

    pub(super) fn finish_batch(&mut self, id: u64, result: Result<(), DeviceError>) {
        let batch = self.batches.remove(&id).expect("batch exists");
        match result {
            Ok(()) => {
                // Invalidate every written key before publishing any new location.
                if let Some(t) = &self.table {
                    #[cfg(feature = "seeded-bugs")]
                    for k in self.deferred_invalidations.drain(..) {
                        t.invalidate(&k);
                    }
                    for (i, (w, _)) in batch.writes.iter().enumerate() {
                        if batch.outcomes[i] == Outcome::Ok {
                            #[cfg(feature = "seeded-bugs")]
                            if self.cfg.ack_before_invalidate {
                                self.deferred_invalidations.push(TableKey::new(&w.key));
                                continue;
                            }
                            t.invalidate(&TableKey::new(&w.key));
                        }
                    }
                }
                for (b, loc) in &batch.publish {
                    self.index.set(*b, *loc);
                }
                self.live_blocks = (self.live_blocks as i64 + batch.live_blocks_delta) as u64;
                self.live_bytes = (self.live_bytes as i64 + batch.live_bytes_delta) as u64;
                for ((w, _), outcome) in batch.writes.into_iter().zip(batch.outcomes) {
                    self.done.push(Completed { reply: w.reply, outcome });
                }
            }
            Err(e) => {
                // Parts of this batch may be durable: its writes are reported failed (their
                // outcome is unknown until recovery), and the store fails stop.
                tracing::error!(ssd = self.ssd, error = %e, "batch write failed");
                for (w, _) in batch.writes {
                    self.done.push(Completed { reply: w.reply, outcome: Outcome::Io(e.to_string()) });
                }
                self.stop_writes(&e);
            }
        }
        for b in &batch.buckets {
            self.locked.remove(b);
        }
        self.gc_futile = false; // this batch may have turned live data into garbage
        self.check_space();
    }

    /// A bucket chain a batch asked for has been read (or failed to be).
    pub(super) fn on_batch_bucket(&mut self, batch: u64, bucket: u32, r: Result<AlignedBuf, DeviceError>) {
        let loc = self.index.get(bucket).expect("locked bucket stays in the index");
        let b = self.batches.get_mut(&batch).expect("batch exists");
        match r
            .map_err(|e| e.to_string())
            .and_then(|bytes| Bucket::decode(&bytes, bucket, loc.lseq, loc.len, self.seed).map_err(|e| e.to_string()))
        {
            Ok(content) => {
                b.contents.insert(bucket, content);
            }
            Err(e) => {
                self.counters.corrupt_reads.fetch_add(1, Ordering::Relaxed);
                tracing::error!(ssd = self.ssd, bucket, error = %e, "cannot read bucket for a write");
                b.failed.insert(bucket, format!("SSD {} bucket {bucket}: {e}", self.ssd));
            }
        }
        b.awaiting -= 1;
        if b.awaiting == 0 {
            self.build_batch(batch);
        }
    }
}
