//! GET: probe the cache with one READ; on a miss, META_GET, read the SSD blocks through the
//! block path, and fill the reserved slot.
//!
//! The rules that keep reads correct against concurrent writes, fills and garbage collection:
//! * a hit needs a visible slot whose checksum (over generation, key and value) holds, so a torn
//!   READ or a slot being re-bound is never served;
//! * the SSD blocks named by META_GET are checked against the bucket, position and key they must
//!   hold; if garbage collection reused them meanwhile, the miss starts over with a new META_GET;
//! * a fill only happens under a reservation, and only with the value read under it: a late fill
//!   after the key was written is rejected by the slot's generation;
//! * a miss without a reservation re-probes once (someone else may just have filled the slot),
//!   then reads the SSD without filling. It never reports a read it did not do.

use crate::error::ClientError;
use crate::stats::Counters;
use crate::{Inner, ReadPath};
use scalio_common::fabric::{FabricError, RemoteAddr, WorkRequest};
use scalio_common::key::{self, route, TableKey};
use scalio_common::rpc::{flags, MetaGetReply, Op, Request, Reservation, Status, TableInfo};
use scalio_common::ssd::{decode_expected_record, Bucket, LayoutError};
use scalio_common::table::{encode_fill, off, probe_bucket, Probe, INLINE_VALUE_MAX};

/// What one probe found (a hit's value is in the caller's buffer).
enum Probed {
    Hit,
    Pending,
    Miss,
}

/// Why reading the SSD blocks of a miss did not give an answer.
enum SsdRead {
    /// The blocks from `block` no longer hold what META_GET pointed at: start over.
    Stale {
        block: u64,
        error: LayoutError,
    },
    Failed(ClientError),
}

fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

impl Inner {
    pub(crate) async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        let mut value = Vec::new();
        Ok(self.get_into(key, &mut value).await?.then_some(value))
    }

    /// A GET that leaves the value in `out` (replacing its contents) and says whether there is
    /// one. A hit copies the value into `out` and allocates nothing once `out` has the capacity.
    pub(crate) async fn get_into(&self, key: &[u8], out: &mut Vec<u8>) -> Result<bool, ClientError> {
        key::validate(key)?;
        Counters::add(&self.counters.gets, 1);
        match self.get_once(key, out).await {
            // A GET changes nothing, so one whose queue pair failed under it is simply tried
            // again on the replacement.
            Err(e) if self.can_retry(&e) => self.get_once(key, out).await,
            r => r,
        }
    }

    async fn get_once(&self, key: &[u8], out: &mut Vec<u8>) -> Result<bool, ClientError> {
        let table = self.info.table.filter(|_| self.cfg.read_path == ReadPath::Cached);
        let found = match (self.cfg.read_path, table) {
            (ReadPath::Server, _) => self.get_via_server(key).await?,
            (_, None) => {
                Counters::add(&self.counters.misses, 1);
                self.miss(key, None, out).await?
            }
            (_, Some(t)) => {
                let tk = TableKey::new(key);
                for attempt in 0..=self.cfg.probe_retries {
                    match self.probe(&t, &tk, out).await? {
                        Probed::Hit => return Ok(true),
                        Probed::Miss => break,
                        Probed::Pending if attempt < self.cfg.probe_retries => {
                            Counters::add(&self.counters.pending_retries, 1);
                            yield_now().await;
                        }
                        Probed::Pending => break,
                    }
                }
                Counters::add(&self.counters.misses, 1);
                self.miss(key, Some((&t, &tk)), out).await?
            }
        };
        match found {
            Some(value) => {
                *out = value;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The LEED-style read: the server reads the SSD.
    async fn get_via_server(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        Counters::add(&self.counters.misses, 1);
        match self.rpc(Request::new(Op::Get, key, b"")).await? {
            (Status::Ok, v) => Ok(Some(v)),
            (Status::NotFound, _) => {
                Counters::add(&self.counters.absent, 1);
                Ok(None)
            }
            (status, body) => Err(ClientError::from_status(status, &body)),
        }
    }

    /// One READ of the key's cache bucket: into one of the queue pair's registered lanes if one
    /// is free (no allocation), else into a new buffer. On a hit the value is copied to `out`, and
    /// the access timestamp is updated with an unsignaled WRITE (the GET does not wait for it).
    async fn probe(&self, t: &TableInfo, tk: &TableKey, out: &mut Vec<u8>) -> Result<Probed, ClientError> {
        let g = &t.geometry;
        let bucket = tk.bucket(g.buckets);
        let base = t.addr + g.bucket_offset(bucket) as u64;
        let remote = RemoteAddr { addr: base, rkey: t.rkey };
        let len = g.bucket_bytes();
        Counters::add(&self.counters.probes, 1);
        let qp = self.qp();
        if let Some(lanes) = qp.lanes() {
            let read = lanes.read(remote, len, |bytes| self.inspect_bucket(t, &qp, base, bytes, tk, out));
            let read = crate::within(self.cfg.op_timeout, async { read.await.transpose() }).await;
            // None: every lane is in use, and this probe allocates instead.
            if let Some(probed) = read.inspect_err(|e| self.recover(&qp, e))? {
                Counters::add(&self.counters.registered_probes, 1);
                return Ok(probed);
            }
        }
        let chain = [WorkRequest::Read { remote, len: len as u32 }];
        let posted = crate::within(self.cfg.op_timeout, post_when_room(&*qp, &chain)).await;
        let bytes = posted.inspect_err(|e| self.recover(&qp, e))?;
        Ok(self.inspect_bucket(t, &qp, base, &bytes, tk, out))
    }

    /// Looks for `tk` in the bucket READ at `base`; see [`probe`](Self::probe).
    fn inspect_bucket(
        &self,
        t: &TableInfo,
        qp: &crate::QpRef,
        base: u64,
        bytes: &[u8],
        tk: &TableKey,
        out: &mut Vec<u8>,
    ) -> Probed {
        match probe_bucket(bytes, tk) {
            Probe::Hit { slot, value } => {
                Counters::add(&self.counters.hits, 1);
                // Without a fill key (the server fills) clients write nothing, not even this.
                if let Some(fill_rkey) = t.fill_rkey {
                    let ts = now_us().to_le_bytes();
                    let at = RemoteAddr {
                        addr: base + (usize::from(slot) * scalio_common::table::SLOT_SIZE + off::ACCESS_TS) as u64,
                        rkey: fill_rkey,
                    };
                    // A lost timestamp update only makes eviction less precise; failures are
                    // counted by the queue pair.
                    if let Err(e) = qp.post_unsignaled(&[WorkRequest::Write { remote: at, data: &ts }]) {
                        self.recover(qp, &e);
                    }
                }
                out.clear();
                out.extend_from_slice(value);
                Probed::Hit
            }
            Probe::Pending { .. } => Probed::Pending,
            Probe::Miss => Probed::Miss,
        }
    }

    /// The miss path: META_GET, then the SSD reads, then the fill. `cache` is None when the
    /// client does not use the cache (stage 1).
    async fn miss(
        &self,
        key: &[u8],
        cache: Option<(&TableInfo, &TableKey)>,
        out: &mut Vec<u8>,
    ) -> Result<Option<Vec<u8>>, ClientError> {
        let meta_flags = if cache.is_some() { 0 } else { flags::NO_RESERVE };
        let mut last = None;
        for _ in 0..self.cfg.miss_attempts.max(1) {
            // The fill goes on the queue pair the META_GET went on: a fill window is bound to it.
            let qp = self.qp();
            let asked = std::time::Instant::now();
            let body = self.rpc_ok_via(&qp, Request::new(Op::MetaGet, key, b"").with_flags(meta_flags)).await?;
            let meta = MetaGetReply::decode(&body)?;
            if meta.chain_len == 0 {
                Counters::add(&self.counters.absent, 1);
                return Ok(None);
            }
            if let (Some((t, tk)), None) = (cache, meta.reservation) {
                Counters::add(&self.counters.no_reservation, 1);
                // Someone else holds the key's slot: it may be filled by now.
                if let Probed::Hit = self.probe(t, tk, out).await? {
                    return Ok(Some(std::mem::take(out)));
                }
            }
            match self.read_ssd(key, &meta).await {
                Ok(value) => {
                    if let (Some((t, tk)), Some(r)) = (cache, meta.reservation) {
                        // A window is revoked once the lease has run out, and a WRITE
                        // after that would end the queue pair (and fail what else is on it):
                        // fill through one only within the first half of the lease, counted
                        // from before the reservation was made.
                        let lease = std::time::Duration::from_millis(u64::from(self.info.lease_ms));
                        if meta.window.is_some() && !lease.is_zero() && asked.elapsed() >= lease / 2 {
                            Counters::add(&self.counters.fills_late, 1);
                        } else {
                            self.fill(&qp, t, tk, r, meta.window, value.as_deref());
                        }
                    }
                    if value.is_none() {
                        Counters::add(&self.counters.absent, 1);
                    }
                    return Ok(value);
                }
                Err(SsdRead::Stale { block, error }) => {
                    Counters::add(&self.counters.stale_retries, 1);
                    last = Some((block, error));
                }
                Err(SsdRead::Failed(e)) => return Err(e),
            }
        }
        let ssd = route(key, self.info.ssds.len() as u16, 1).ssd;
        let (block, last) = last.expect("at least one attempt");
        Err(ClientError::Inconsistent { ssd, block, attempts: self.cfg.miss_attempts.max(1), last })
    }

    /// Reads the key's bucket chain and then its value record from the SSD, checking that the
    /// blocks still hold what META_GET pointed at.
    async fn read_ssd(&self, key: &[u8], meta: &MetaGetReply) -> Result<Option<Vec<u8>>, SsdRead> {
        let ssd = self.info.ssds.get(usize::from(meta.ssd)).ok_or(SsdRead::Failed(ClientError::NoSuchSsd(meta.ssd)))?;
        let geo = &ssd.geometry;
        let bucket = route(key, self.info.ssds.len() as u16, geo.buckets).bucket;
        let chain_block = geo.bucket_block(meta.lseq);
        let chain = self.read_blocks(meta.ssd, chain_block, u32::from(meta.chain_len)).await?;
        let content = Bucket::decode(&chain, bucket, meta.lseq, meta.chain_len, self.seed)
            .map_err(|error| SsdRead::Stale { block: chain_block, error })?;
        let Some(item) = content.find(key) else { return Ok(None) };
        let (lba, count, offset) = geo.record_blocks(item.value_pos, item.record_len());
        let bytes = self.read_blocks(meta.ssd, lba, count).await?;
        let record = decode_expected_record(&bytes[offset..], self.seed, item.value_pos, key, item.value_len)
            .map_err(|error| SsdRead::Stale { block: lba, error })?;
        Ok(Some(record.value.to_vec()))
    }

    async fn read_blocks(&self, ssd: u16, lba: u64, count: u32) -> Result<Vec<u8>, SsdRead> {
        Counters::add(&self.counters.block_reads, 1);
        Counters::add(&self.counters.block_read_blocks, u64::from(count));
        let bytes = self.block.read_blocks(ssd, lba, count).await.map_err(|e| SsdRead::Failed(e.into()))?;
        // Every block path goes through here: hold them all to the contract, so that a short
        // answer from a device or target is an error, not an out-of-range slice below.
        let want = count as usize * scalio_common::ssd::BLOCK_SIZE;
        if bytes.len() != want {
            let msg = format!("asked for {want} bytes of SSD {ssd} at block {lba}, got {}", bytes.len());
            return Err(SsdRead::Failed(ClientError::Block(scalio_common::block::BlockError::Protocol(msg))));
        }
        Ok(bytes)
    }

    /// Fills a reserved slot with one chain of WRITEs on `qp`, the queue pair its META_GET went
    /// on: the value (with its checksum), the access timestamp, then `integrity = 1`. Posted
    /// without waiting. The key is the reservation's fill window when the server granted one
    /// (good only on that queue pair, over only this slot's client range), else the table's
    /// fill key.
    fn fill(
        &self,
        qp: &crate::QpRef,
        t: &TableInfo,
        tk: &TableKey,
        r: Reservation,
        window: Option<u32>,
        value: Option<&[u8]>,
    ) {
        let (Some(value), Some(fill_rkey)) = (value.filter(|v| v.len() <= INLINE_VALUE_MAX), window.or(t.fill_rkey))
        else {
            // Absent, or too large for a slot (or a server that fills itself and so reserves
            // nothing for clients): the reservation simply expires.
            Counters::add(&self.counters.fills_skipped, 1);
            return;
        };
        let g = &t.geometry;
        let slot = t.addr + g.slot_offset(tk.bucket(g.buckets), r.slot) as u64;
        // Every byte of the chain is in the slot's client range, the only part the fill key
        // may write.
        let at = |o: usize| RemoteAddr { addr: slot + o as u64, rkey: fill_rkey };
        let fill = encode_fill(r.generation, tk, value);
        let ts = now_us().to_le_bytes();
        let chain = [
            WorkRequest::Write { remote: at(off::FILL), data: &fill },
            WorkRequest::Write { remote: at(off::ACCESS_TS), data: &ts },
            WorkRequest::Write { remote: at(off::INTEGRITY), data: &[1] },
        ];
        match qp.post_unsignaled(&chain) {
            Ok(()) => Counters::add(&self.counters.fills, 1),
            // The reservation expires unfilled; the next GET misses again.
            Err(e) => self.recover(qp, &e),
        }
    }
}

/// Posts `chain`, waiting while the queue pair's send queue is full (backpressure from many
/// operations in flight on one queue pair: they complete and give their slots back) instead of
/// failing the operation; the caller's operation timeout bounds the wait. Other clients of a
/// queue pair (the benchmark's LEED+Ditto) use it too.
pub async fn post_when_room(
    qp: &dyn scalio_common::fabric::QueuePair,
    chain: &[WorkRequest<'_>],
) -> Result<Vec<u8>, FabricError> {
    let mut attempt = 0u32;
    loop {
        match qp.post(chain).await {
            Err(FabricError::QueueFull) => wait_for_room(&mut attempt).await,
            done => return done,
        }
    }
}

/// Waits before posting again to a full send queue: yields (completions on the way free slots
/// within microseconds), then after many attempts sleeps a millisecond at a time.
pub(crate) async fn wait_for_room(attempt: &mut u32) {
    *attempt += 1;
    if *attempt < 64 {
        yield_now().await;
    } else {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

/// Yields once to the executor (a fill in progress usually lands within microseconds).
async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await
}
