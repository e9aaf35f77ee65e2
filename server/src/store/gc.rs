//! Garbage collection of both logs: when to collect, scanning the oldest blocks, re-appending
//! what is still live and publishing its new location.

use super::*;

pub(super) struct GcRecord {
    pub(super) lpos: u64,
    pub(super) key: Vec<u8>,
    pub(super) value: Vec<u8>,
    pub(super) bucket: u32,
}

pub(super) enum Gc {
    BucketScan { start: u64, blocks: u64 },
    ValueScan { start: u64, base: u64, blocks: u64 },
    ValueBuckets { new_head: u64, records: Vec<GcRecord>, contents: HashMap<u32, Bucket>, awaiting: usize },
    Write { new_head: u64, value_log: bool, publish: Vec<(u32, ChainLoc)> },
}

impl<R> DataStore<R> {
    /// Whether log `s` (with `live` units live) should be collected. Starting needs less free
    /// space and more garbage than continuing, so that a burst does not stop and start again at
    /// once; relocating live data makes a little garbage itself (padding), so a log whose garbage
    /// is only that is left alone.
    pub(super) fn log_needs_gc(
        &self,
        s: &LogSpace,
        live: u64,
        need: u64,
        reserved: u64,
        unit: u64,
        starting: bool,
    ) -> bool {
        let dead = s.used().saturating_sub(live);
        if dead == 0 {
            return false;
        }
        if need > 0 && need + reserved > s.free() {
            return true; // a waiting batch needs the room
        }
        let (free_frac, dead_frac) = if starting { (self.cfg.gc_low, 0.05) } else { (self.cfg.gc_high, 0.025) };
        let chunk = u64::from(self.cfg.gc_chunk_blocks) * unit;
        (s.free() as f64) < free_frac * s.size as f64 && dead >= chunk && dead as f64 >= dead_frac * s.size as f64
    }

    /// (value log, bucket log) need collecting.
    pub(super) fn gc_targets(&self, starting: bool) -> (bool, bool) {
        let v =
            self.log_needs_gc(&self.vl, self.live_bytes, self.gc_need.0, self.reserved.0, BLOCK_SIZE as u64, starting);
        let b = self.log_needs_gc(&self.bl, self.live_blocks, self.gc_need.1, self.reserved.1, 1, starting);
        (v, b)
    }

    pub(super) fn check_space(&mut self) {
        let (v, b) = self.gc_targets(true);
        if v || b {
            self.gc_wanted = true;
            self.gc_steps = 0;
        }
    }

    pub(super) fn start_gc_step(&mut self) {
        let ratio = |s: &LogSpace| s.free() as f64 / s.size as f64;
        let chunk = u64::from(self.cfg.gc_chunk_blocks);
        let (want_v, want_b) = self.gc_targets(false);
        if want_v && (!want_b || ratio(&self.vl) <= ratio(&self.bl)) {
            self.start_value_scan(chunk);
        } else if want_b {
            self.start_bucket_scan(chunk);
        } else {
            self.gc_wanted = false;
            self.gc_need = (0, 0);
        }
    }

    pub(super) fn start_bucket_scan(&mut self, chunk: u64) {
        let start = self.bl.head;
        let end = self.bl.tail.min(self.bl.lap_end(start));
        let blocks = chunk.min(end - start);
        if blocks == 0 {
            self.gc_wanted = false;
            return;
        }
        self.counters.gc_bucket_steps.fetch_add(1, Ordering::Relaxed);
        let token = self.token(Purpose::Gc);
        self.io_out.push(IoRequest::Read { token, lba: self.geo.bucket_block(start), count: blocks as u32 });
        self.gc = Some(Gc::BucketScan { start, blocks });
    }

    pub(super) fn start_value_scan(&mut self, chunk: u64) {
        let start = self.vl.head;
        let base = start - start % BLOCK_SIZE as u64;
        let end = self.vl.tail.min(self.vl.lap_end(start));
        let blocks = chunk.min((end - base).div_ceil(BLOCK_SIZE as u64));
        if end <= start || blocks == 0 {
            self.gc_wanted = false;
            return;
        }
        self.scan_value(start, base, blocks);
    }

    pub(super) fn scan_value(&mut self, start: u64, base: u64, blocks: u64) {
        self.counters.gc_value_steps.fetch_add(1, Ordering::Relaxed);
        let token = self.token(Purpose::Gc);
        let lba = self.geo.value_log.start + (base % self.vl.size) / BLOCK_SIZE as u64;
        self.io_out.push(IoRequest::Read { token, lba, count: blocks as u32 });
        self.gc = Some(Gc::ValueScan { start, base, blocks });
    }

    pub(super) fn gc_failed(&mut self, e: impl std::fmt::Display) {
        tracing::error!(ssd = self.ssd, error = %e, "garbage collection step failed");
        self.gc = None;
        self.gc_wanted = false;
        self.gc_need = (0, 0);
        // Until a batch changes things, a write that does not fit is refused rather than
        // waiting for a collection that cannot happen.
        self.gc_futile = true;
    }

    pub(super) fn on_gc_io(&mut self, r: IoResult) {
        match (self.gc.take(), r) {
            (Some(Gc::BucketScan { start, blocks }), IoResult::Read(Ok(bytes))) => {
                self.on_bucket_scan(start, blocks, &bytes)
            }
            (Some(Gc::ValueScan { start, base, blocks }), IoResult::Read(Ok(bytes))) => {
                self.on_value_scan(start, base, blocks, &bytes)
            }
            (Some(Gc::Write { new_head, value_log, publish }), IoResult::Write(Ok(()))) => {
                for (b, loc) in publish {
                    self.index.set(b, loc);
                }
                if value_log {
                    self.vl.head = new_head;
                } else {
                    self.bl.head = new_head;
                }
                self.after_gc_step();
            }
            (_, IoResult::Read(Err(e))) => self.gc_failed(e),
            (_, IoResult::Write(Err(e))) => {
                // Relocated chains may be durable and newer than the ones the index names: fail
                // stop, like a failed batch.
                self.gc_failed(&e);
                self.stop_writes(&e);
            }
            (_, _) => self.gc_failed("unexpected GC I/O result"),
        }
    }

    pub(super) fn after_gc_step(&mut self) {
        self.gc = None;
        self.gc_steps += 1;
        let (v, b) = self.gc_targets(false);
        // Two passes over both logs without reaching the goal: the garbage is not where it can
        // be reclaimed (or is only relocation padding). Give up until writes change things.
        let limit = 2 * (self.vl.size / BLOCK_SIZE as u64 + self.bl.size) / u64::from(self.cfg.gc_chunk_blocks).max(1);
        if !(v || b) || self.gc_steps > limit {
            if v || b {
                tracing::warn!(ssd = self.ssd, steps = self.gc_steps, "garbage collection is not making room");
                self.gc_futile = true;
            }
            self.gc_wanted = false;
            self.gc_need = (0, 0);
            self.gc_steps = 0;
        }
    }

    /// Re-appends the live chains found among `blocks` blocks from `start`.
    pub(super) fn on_bucket_scan(&mut self, start: u64, blocks: u64, bytes: &[u8]) {
        let mut p = start;
        let end = start + blocks;
        let mut moved: Vec<(u32, Bucket, u64)> = Vec::new();
        let mut relocated_end = self.bl.tail;
        while p < end {
            let at = ((p - start) as usize) * BLOCK_SIZE;
            let live = match BlockHeader::decode(&bytes[at..at + BLOCK_SIZE], self.seed) {
                Ok(h) if h.chain_index == 0 && h.lseq == p => {
                    let loc = ChainLoc { lseq: p, len: h.chain_len };
                    (self.index.get(h.bucket) == Some(loc)).then_some((h.bucket, loc))
                }
                _ => None,
            };
            let Some((bucket, loc)) = live else {
                p += 1;
                continue;
            };
            let len = u64::from(loc.len);
            if p + len > end {
                if p == start {
                    // A chain longer than the chunk: read it whole.
                    let token = self.token(Purpose::Gc);
                    self.io_out.push(IoRequest::Read { token, lba: self.geo.bucket_block(p), count: loc.len.into() });
                    self.gc = Some(Gc::BucketScan { start: p, blocks: len });
                    return;
                }
                break;
            }
            // Relocate only as much as fits in the free space; the rest waits for the next step.
            let placed = self.bl.place(relocated_end, len) + len;
            if placed - self.bl.tail > self.bl.free() {
                break;
            }
            match Bucket::decode(&bytes[at..at + len as usize * BLOCK_SIZE], bucket, p, loc.len, self.seed) {
                Ok(content) => {
                    relocated_end = placed;
                    moved.push((bucket, content, len))
                }
                Err(e) => {
                    // The index points here, so this is the only copy: keep it and stop.
                    return self.gc_failed(format!("live chain of bucket {bucket} is unreadable: {e}"));
                }
            }
            p += len;
        }
        let new_head = p;
        if new_head == start {
            return self.gc_failed("no room to relocate the oldest live chain");
        }
        if moved.is_empty() {
            self.bl.head = new_head;
            return self.after_gc_step();
        }
        let mut chains = Vec::new();
        let mut publish = Vec::new();
        for (bucket, content, len) in moved {
            let lseq = self.bl.place(self.bl.tail, len);
            let encoded = content.encode(bucket, lseq, self.seed).expect("re-encoding a decoded chain");
            self.bl.tail = lseq + len;
            publish.push((bucket, ChainLoc { lseq, len: len as u8 }));
            chains.push((lseq, encoded));
        }
        self.counters.gc_moved_chains.fetch_add(publish.len() as u64, Ordering::Relaxed);
        let parts = self.chain_parts(chains);
        let token = self.token(Purpose::Gc);
        self.io_out.push(IoRequest::Write { token, parts });
        self.gc = Some(Gc::Write { new_head, value_log: false, publish });
    }

    /// Parses the records among the blocks read from `base`, from position `start`.
    pub(super) fn on_value_scan(&mut self, start: u64, base: u64, blocks: u64, bytes: &[u8]) {
        let limit = (base + blocks * BLOCK_SIZE as u64).min(self.vl.tail).min(self.vl.lap_end(start));
        let block = BLOCK_SIZE as u64;
        let mut p = start;
        let mut records = Vec::new();
        while p < limit {
            let rel = (p - base) as usize;
            match decode_record(&bytes[rel..], self.seed) {
                Ok(r) if r.lpos == p => {
                    let len = r.len() as u64;
                    records.push(GcRecord {
                        lpos: p,
                        key: r.key.to_vec(),
                        value: r.value.to_vec(),
                        bucket: self.bucket_of(r.key),
                    });
                    p += len;
                }
                Err(LayoutError::Short { need, .. }) => {
                    if p + need as u64 > self.vl.tail.min(self.vl.lap_end(start)) {
                        // Would extend past the log's data: padding or garbage, not a record.
                        p = (p / block + 1) * block;
                        continue;
                    }
                    if p == start && records.is_empty() {
                        // A record longer than the chunk: read enough blocks for it.
                        let blocks = (rel as u64 + need as u64).div_ceil(block);
                        return self.scan_value(start, base, blocks);
                    }
                    break;
                }
                // Padding after a batch, a skipped lap end, or a stale record: next block.
                _ => p = (p / block + 1) * block,
            }
        }
        let new_head = p.min(limit);
        if records.is_empty() {
            self.vl.head = new_head.max(self.vl.head);
            return self.after_gc_step();
        }
        let mut contents = HashMap::new();
        let mut awaiting = 0;
        let buckets: HashSet<u32> = records.iter().map(|r| r.bucket).collect();
        for b in buckets {
            if let Some(loc) = self.index.get(b) {
                awaiting += 1;
                self.read_chain(loc, Purpose::GcBucket { bucket: b });
            } else {
                contents.insert(b, Bucket::default());
            }
        }
        self.gc = Some(Gc::ValueBuckets { new_head, records, contents, awaiting });
        if awaiting == 0 {
            self.relocate_values();
        }
    }

    pub(super) fn on_gc_bucket(&mut self, bucket: u32, r: Result<AlignedBuf, DeviceError>) {
        let Some(Gc::ValueBuckets { contents, awaiting, .. }) = &mut self.gc else {
            return;
        };
        let loc = self.index.get(bucket).expect("GC runs alone: the index is stable");
        match r
            .map_err(|e| e.to_string())
            .and_then(|bytes| Bucket::decode(&bytes, bucket, loc.lseq, loc.len, self.seed).map_err(|e| e.to_string()))
        {
            Ok(c) => {
                contents.insert(bucket, c);
                *awaiting -= 1;
                if *awaiting == 0 {
                    self.relocate_values();
                }
            }
            Err(e) => self.gc_failed(format!("bucket {bucket}: {e}")),
        }
    }

    /// Re-appends the live records of a scanned value-log range and rewrites their buckets.
    pub(super) fn relocate_values(&mut self) {
        let Some(Gc::ValueBuckets { new_head, records, mut contents, .. }) = self.gc.take() else {
            return;
        };
        let is_live = |r: &GcRecord| {
            contents
                .get(&r.bucket)
                .and_then(|c| c.find(&r.key))
                .is_some_and(|it| it.value_pos == r.lpos && it.value_len as usize == r.value.len())
        };
        // Relocate the live records in order, as many as fit in the free space of both logs; the
        // head advances to the first record left behind.
        let mut live: Vec<&GcRecord> = Vec::new();
        let mut new_head = new_head;
        let (mut total, mut buckets) = (0u64, HashSet::new());
        for r in &records {
            if !is_live(r) {
                continue;
            }
            let t = total + record_len(r.key.len(), r.value.len()) as u64;
            let padded = round_block(t);
            let mut b = buckets.clone();
            b.insert(r.bucket);
            let chain_blocks: u64 = b.iter().map(|x| contents[x].chain_len() as u64).sum();
            let v_end = self.vl.place(self.vl.tail, padded) + padded;
            if v_end - self.vl.tail > self.vl.free() || LogSpace::worst_case(chain_blocks) > self.bl.free() {
                new_head = r.lpos;
                break;
            }
            total = t;
            buckets = b;
            live.push(r);
        }
        if live.is_empty() && new_head == self.vl.head {
            return self.gc_failed("no room to relocate the oldest live value");
        }
        if live.is_empty() {
            self.vl.head = new_head;
            return self.after_gc_step();
        }
        let padded = round_block(total);
        let base = self.vl.place(self.vl.tail, padded);
        let mut buf = Vec::with_capacity(padded as usize);
        let mut changed = Vec::new();
        for r in &live {
            let lpos = base + buf.len() as u64;
            encode_record(&mut buf, self.seed, lpos, &r.key, &r.value);
            let content = contents.get_mut(&r.bucket).expect("bucket read");
            let item = Item { key: r.key.clone(), value_len: r.value.len() as u32, value_pos: lpos };
            content.upsert(item).expect("replacing an existing item");
            if !changed.contains(&r.bucket) {
                changed.push(r.bucket);
            }
        }
        self.vl.tail = base + padded;
        let mut parts = vec![(
            self.geo.value_log.start + (base % self.vl.size) / BLOCK_SIZE as u64,
            AlignedBuf::copy_padded(&buf, padded as usize),
        )];
        let mut chains = Vec::new();
        let mut publish = Vec::new();
        for b in changed {
            let content = &contents[&b];
            let len = content.chain_len() as u64;
            let lseq = self.bl.place(self.bl.tail, len);
            let encoded = content.encode(b, lseq, self.seed).expect("re-encoding a decoded chain");
            self.bl.tail = lseq + len;
            publish.push((b, ChainLoc { lseq, len: len as u8 }));
            chains.push((lseq, encoded));
        }
        self.counters.gc_moved_records.fetch_add(live.len() as u64, Ordering::Relaxed);
        parts.extend(self.chain_parts(chains));
        let token = self.token(Purpose::Gc);
        self.io_out.push(IoRequest::Write { token, parts });
        self.gc = Some(Gc::Write { new_head, value_log: true, publish });
    }
}
