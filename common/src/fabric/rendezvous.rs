//! Rendezvous: how a message larger than the channel's largest message moves.
//!
//! The message channel is SEND/RECV-shaped: the server pre-posts receive buffers of a fixed size
//! (the `max_message` it grants in the handshake), so a request larger than that cannot be sent
//! as one message. Such a request moves in three steps, all on the same queue pair:
//!
//! 1. **STAGE** (a small RPC): the client asks for a staging slot of `len` bytes. The server's
//!    [`Rendezvous`] layer, in front of its RPC service, answers with a **grant**: a remote
//!    address in its staging region (registered WRITE-only, one window per slot, so a WRITE can
//!    never cross into another slot) and a ticket. With every slot taken (or this connection's
//!    share of them) it answers [`StagingRefusal::NoRoom`]: nothing is queued on the server.
//! 2. **WRITE**: the client writes the request's bytes into the slot with a one-sided WRITE.
//! 3. **STAGED** (a small RPC, posted right behind the WRITE): the ticket, the length and an
//!    xxh64 of the bytes. RC ordering makes the WRITE land before the message is delivered, so
//!    the server takes the bytes out of the slot, checks length and checksum, frees the slot, and
//!    hands the whole request to its service as if it had arrived in one message. The service's
//!    response is the response to STAGED.
//!
//! A ticket is good only for the connection that took it and only once; a slot not redeemed
//! within the lease is taken back (its ticket then fails with
//! [`StagingRefusal::UnknownTicket`]). The checksum catches a slot written by anyone else (a
//! peer with the same remote key, or a late WRITE after a lease ran out): the request is refused
//! with [`StagingRefusal::Mismatch`], never served half-replaced. On hardware, a memory window
//! bound per grant would fence the slot as well.
//!
//! The channel reserves the messages whose first byte is [`FIRST_RESERVED_TAG`] or above: the
//! KV protocol never starts a request or a response with one (its first byte is an op or a status).

use super::{
    Access, FabricError, IncomingRpc, MemoryRegion, QueuePair, RegionDesc, Registrar, RpcService, Strided, WorkRequest,
};
use crate::fabric::PeerId;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Message tags at or above this byte belong to the message channel itself.
pub const FIRST_RESERVED_TAG: u8 = 0xF0;
/// Client → server: "give me a staging slot of `len` bytes".
const TAG_STAGE: u8 = 0xF0;
/// Client → server: "the request is in the slot of this ticket".
const TAG_STAGED: u8 = 0xF1;
/// Server → client: a slot was granted.
const TAG_GRANT: u8 = 0xF2;
/// Server → client: a STAGE or STAGED was refused, with a [`StagingRefusal`].
const TAG_REFUSED: u8 = 0xF3;

const STAGE_LEN: usize = 8;
const GRANT_LEN: usize = 24;
const STAGED_LEN: usize = 24;

/// Why the server refused a staged transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[repr(u8)]
pub enum StagingRefusal {
    /// Every staging slot (or this connection's share of them) is in use: nothing was done; the
    /// same request may succeed later.
    #[error("no staging slot free")]
    NoRoom = 1,
    /// Longer than a staging slot.
    #[error("larger than a staging slot")]
    TooLarge = 2,
    /// The ticket is not one this connection holds (never granted, already redeemed, or taken
    /// back after its lease).
    #[error("unknown or expired staging ticket")]
    UnknownTicket = 3,
    /// The slot's bytes do not match the length and checksum of the STAGED message.
    #[error("the staged bytes do not match their checksum")]
    Mismatch = 4,
    /// A STAGE or STAGED message of the wrong shape, or a grant the client cannot use.
    #[error("malformed staging message")]
    Malformed = 5,
    /// The server has no staging region (it was started without one).
    #[error("the server does not stage large messages")]
    Unsupported = 6,
}

impl StagingRefusal {
    /// Whether the request never reached the server's service, so that sending it again may
    /// succeed: a slot was not free, or the transfer was spoiled on the way (an expired ticket,
    /// bytes overwritten).
    pub fn is_retryable(self) -> bool {
        matches!(self, StagingRefusal::NoRoom | StagingRefusal::UnknownTicket | StagingRefusal::Mismatch)
    }
}

impl StagingRefusal {
    fn from_u8(v: u8) -> StagingRefusal {
        use StagingRefusal::*;
        [NoRoom, TooLarge, UnknownTicket, Mismatch, Malformed, Unsupported]
            .into_iter()
            .find(|r| *r as u8 == v)
            .unwrap_or(Malformed)
    }
}

/// What the server grants for one staged transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Grant {
    rkey: u32,
    addr: u64,
    ticket: u64,
}

fn stage_message(len: usize) -> [u8; STAGE_LEN] {
    let mut m = [0u8; STAGE_LEN];
    m[0] = TAG_STAGE;
    m[4..8].copy_from_slice(&(len as u32).to_le_bytes());
    m
}

fn staged_message(ticket: u64, data: &[u8]) -> [u8; STAGED_LEN] {
    let mut m = [0u8; STAGED_LEN];
    m[0] = TAG_STAGED;
    m[4..8].copy_from_slice(&(data.len() as u32).to_le_bytes());
    m[8..16].copy_from_slice(&ticket.to_le_bytes());
    m[16..24].copy_from_slice(&checksum(data).to_le_bytes());
    m
}

fn grant_message(g: Grant) -> [u8; GRANT_LEN] {
    let mut m = [0u8; GRANT_LEN];
    m[0] = TAG_GRANT;
    m[4..8].copy_from_slice(&g.rkey.to_le_bytes());
    m[8..16].copy_from_slice(&g.addr.to_le_bytes());
    m[16..24].copy_from_slice(&g.ticket.to_le_bytes());
    m
}

fn refusal_message(why: StagingRefusal) -> [u8; 2] {
    [TAG_REFUSED, why as u8]
}

fn checksum(data: &[u8]) -> u64 {
    xxhash_rust::xxh64::xxh64(data, 0)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// The server's answer to STAGE: a grant, or why not.
fn parse_grant(reply: &[u8]) -> Result<Grant, FabricError> {
    match reply {
        [TAG_GRANT, ..] if reply.len() == GRANT_LEN => {
            Ok(Grant { rkey: u32_at(reply, 4), addr: u64_at(reply, 8), ticket: u64_at(reply, 16) })
        }
        [TAG_REFUSED, why] => Err(FabricError::Staging(StagingRefusal::from_u8(*why))),
        // A service that does not know STAGE answers it as an unknown request.
        _ => Err(FabricError::Staging(StagingRefusal::Unsupported)),
    }
}

/// The server's answer to STAGED: the service's response, or the staging layer's refusal.
fn parse_response(reply: Vec<u8>) -> Result<Vec<u8>, FabricError> {
    match reply.as_slice() {
        [TAG_REFUSED, why] => Err(FabricError::Staging(StagingRefusal::from_u8(*why))),
        _ => Ok(reply),
    }
}

/// Sends `request` on `qp` and returns the response: as one message when it fits the channel's
/// largest message, by rendezvous (STAGE, WRITE, STAGED) when it does not.
pub async fn call(qp: &dyn QueuePair, request: &[u8]) -> Result<Vec<u8>, FabricError> {
    if request.len() <= qp.max_message() {
        return qp.call(request).await;
    }
    let grant = parse_grant(&qp.call(&stage_message(request.len())).await?)?;
    let remote = super::RemoteAddr { addr: grant.addr, rkey: grant.rkey };
    let written = qp.post(&[WorkRequest::Write { remote, data: request }]);
    let response = qp.call(&staged_message(grant.ticket, request));
    written.await?;
    parse_response(response.await?)
}

/// [`call`] for a plain thread: blocks until the response arrives, or fails with
/// [`FabricError::Timeout`] after `timeout` in all.
pub fn call_blocking(qp: &dyn QueuePair, request: &[u8], timeout: Duration) -> Result<Vec<u8>, FabricError> {
    let deadline = Instant::now() + timeout;
    let left = || deadline.saturating_duration_since(Instant::now());
    if request.len() <= qp.max_message() {
        return qp.call(request).wait_timeout(left());
    }
    let grant = parse_grant(&qp.call(&stage_message(request.len())).wait_timeout(left())?)?;
    let remote = super::RemoteAddr { addr: grant.addr, rkey: grant.rkey };
    let written = qp.post(&[WorkRequest::Write { remote, data: request }]);
    let response = qp.call(&staged_message(grant.ticket, request));
    written.wait_timeout(left())?;
    parse_response(response.wait_timeout(left())?)
}

/// The server's staging area, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StagingConfig {
    /// Slots: how many staged transfers may be in progress at once, server-wide.
    pub slots: usize,
    /// Bytes of one slot: the largest request that can be staged.
    pub slot_bytes: usize,
    /// A slot not redeemed within this time is taken back.
    pub lease: Duration,
}

impl StagingConfig {
    /// A connection may hold at most this many slots at once, so that one client cannot take
    /// them all.
    pub fn per_connection(&self) -> usize {
        (self.slots / 4).max(1)
    }
}

/// One slot's state.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Free,
    /// Granted to `peer` for `len` bytes until `until`.
    Granted {
        peer: PeerId,
        generation: u32,
        len: usize,
        until: Instant,
    },
    /// Redeemed: its bytes are being copied out; not reusable until freed.
    Draining,
}

/// The slots' bookkeeping, sans-IO: fed requests and the time, it answers with slot numbers.
#[derive(Debug)]
pub struct StagingSlots {
    config: StagingConfig,
    slots: Vec<Slot>,
    /// Bumped at every grant, so that a ticket is never valid twice.
    generation: u32,
}

impl StagingSlots {
    pub fn new(config: StagingConfig) -> StagingSlots {
        StagingSlots { config, slots: vec![Slot::Free; config.slots], generation: 0 }
    }

    /// Grants `peer` a slot for `len` bytes at `now`: the slot's index and the ticket.
    pub fn grant(&mut self, peer: PeerId, len: usize, now: Instant) -> Result<(usize, u64), StagingRefusal> {
        if len > self.config.slot_bytes {
            return Err(StagingRefusal::TooLarge);
        }
        let mut held = 0;
        let mut free = None;
        for (i, slot) in self.slots.iter_mut().enumerate() {
            match *slot {
                Slot::Granted { until, .. } if until <= now => *slot = Slot::Free,
                Slot::Granted { peer: p, .. } if p == peer => held += 1,
                _ => {}
            }
            if free.is_none() && matches!(slot, Slot::Free) {
                free = Some(i);
            }
        }
        if held >= self.config.per_connection() {
            return Err(StagingRefusal::NoRoom);
        }
        let i = free.ok_or(StagingRefusal::NoRoom)?;
        self.generation = self.generation.wrapping_add(1);
        let generation = self.generation;
        self.slots[i] = Slot::Granted { peer, generation, len, until: now + self.config.lease };
        Ok((i, (u64::from(generation) << 32) | i as u64))
    }

    /// Redeems `ticket` for `len` bytes by `peer`: the slot to copy from, now draining (free it
    /// with [`free`](Self::free) once copied).
    pub fn redeem(&mut self, peer: PeerId, ticket: u64, len: usize) -> Result<usize, StagingRefusal> {
        let i = (ticket & u64::from(u32::MAX)) as usize;
        let generation = (ticket >> 32) as u32;
        match self.slots.get(i) {
            Some(Slot::Granted { peer: p, generation: g, len: l, .. })
                if *p == peer && *g == generation && *l == len =>
            {
                self.slots[i] = Slot::Draining;
                Ok(i)
            }
            _ => Err(StagingRefusal::UnknownTicket),
        }
    }

    pub fn free(&mut self, slot: usize) {
        if let Some(s) = self.slots.get_mut(slot) {
            *s = Slot::Free;
        }
    }

    /// Takes back every slot granted to `peer` and not yet redeemed (its connection closed).
    pub fn release_peer(&mut self, peer: PeerId) {
        for slot in &mut self.slots {
            if matches!(slot, Slot::Granted { peer: p, .. } if *p == peer) {
                *slot = Slot::Free;
            }
        }
    }

    /// Slots granted or draining.
    pub fn in_use(&self) -> usize {
        self.slots.iter().filter(|s| !matches!(s, Slot::Free)).count()
    }
}

/// The server's rendezvous layer: an [`RpcService`] in front of the real one that answers STAGE
/// and STAGED itself and passes everything else (and every reassembled request) through.
pub struct Rendezvous {
    inner: Arc<dyn RpcService>,
    region: Arc<MemoryRegion>,
    desc: RegionDesc,
    slot_bytes: usize,
    slots: Mutex<StagingSlots>,
    counters: RendezvousCounters,
}

/// What the rendezvous layer did, for the server's counters.
#[derive(Debug, Default)]
pub struct RendezvousCounters {
    /// Slots granted.
    pub granted: AtomicU64,
    /// Staged requests handed to the service whole.
    pub delivered: AtomicU64,
    /// STAGE or STAGED messages refused (no room, too large, unknown ticket, mismatch, malformed).
    pub refused: AtomicU64,
}

impl Rendezvous {
    /// Registers a staging region of `config.slots` slots through `registrar` (WRITE-only, one
    /// window per slot) and puts the layer in front of `inner`.
    pub fn new(
        inner: Arc<dyn RpcService>,
        registrar: &dyn Registrar,
        config: StagingConfig,
    ) -> Result<Arc<Rendezvous>, FabricError> {
        // Slots start on 8-byte boundaries (the region's word size).
        let slot_bytes = config.slot_bytes.next_multiple_of(8).max(8);
        let total = slot_bytes.checked_mul(config.slots.max(1)).ok_or(FabricError::TooLarge(usize::MAX))?;
        let region = Arc::new(MemoryRegion::new(total));
        let windows = Strided::new(0, slot_bytes as u64, slot_bytes as u64).ok_or(FabricError::TooLarge(total))?;
        let desc = registrar.register_strided(region.clone(), Access::WRITE, windows)?;
        Ok(Arc::new(Rendezvous {
            inner,
            region,
            desc,
            slot_bytes,
            slots: Mutex::new(StagingSlots::new(config)),
            counters: RendezvousCounters::default(),
        }))
    }

    pub fn counters(&self) -> &RendezvousCounters {
        &self.counters
    }

    fn refuse(&self, rpc: IncomingRpc, why: StagingRefusal) {
        self.counters.refused.fetch_add(1, Ordering::Relaxed);
        rpc.responder.reply(&refusal_message(why));
    }

    /// Slots granted or being drained now.
    pub fn slots_in_use(&self) -> usize {
        self.slots.lock().in_use()
    }

    fn stage(&self, rpc: IncomingRpc) {
        let m = rpc.payload.as_slice();
        if m.len() != STAGE_LEN {
            return self.refuse(rpc, StagingRefusal::Malformed);
        }
        let granted = self.slots.lock().grant(rpc.peer, u32_at(m, 4) as usize, Instant::now());
        match granted {
            Ok((slot, ticket)) => {
                self.counters.granted.fetch_add(1, Ordering::Relaxed);
                let addr = self.desc.addr + (slot * self.slot_bytes) as u64;
                rpc.responder.reply(&grant_message(Grant { rkey: self.desc.rkey, addr, ticket }));
            }
            Err(why) => self.refuse(rpc, why),
        }
    }

    fn staged(&self, rpc: IncomingRpc) {
        let m = rpc.payload.as_slice();
        if m.len() != STAGED_LEN {
            return self.refuse(rpc, StagingRefusal::Malformed);
        }
        let (len, ticket, sum) = (u32_at(m, 4) as usize, u64_at(m, 8), u64_at(m, 16));
        let redeemed = self.slots.lock().redeem(rpc.peer, ticket, len);
        let slot = match redeemed {
            Ok(slot) => slot,
            Err(why) => return self.refuse(rpc, why),
        };
        // `len` is the granted length, at most a slot.
        let mut payload = vec![0u8; len];
        let copied = self.region.read(slot * self.slot_bytes, &mut payload);
        self.slots.lock().free(slot);
        if copied.is_err() || checksum(&payload) != sum {
            return self.refuse(rpc, StagingRefusal::Mismatch);
        }
        self.counters.delivered.fetch_add(1, Ordering::Relaxed);
        self.inner.handle(IncomingRpc { payload, peer: rpc.peer, responder: rpc.responder });
    }
}

impl RpcService for Rendezvous {
    fn handle(&self, rpc: IncomingRpc) {
        match rpc.payload.first() {
            Some(&TAG_STAGE) => self.stage(rpc),
            Some(&TAG_STAGED) => self.staged(rpc),
            _ => self.inner.handle(rpc),
        }
    }

    /// A closed connection's slots come back at once (not after their lease), and the service
    /// behind learns of the close too.
    fn peer_closed(&self, peer: PeerId) {
        self.slots.lock().release_peer(peer);
        self.inner.peer_closed(peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> StagingConfig {
        StagingConfig { slots: 8, slot_bytes: 100, lease: Duration::from_secs(1) }
    }

    #[test]
    fn a_ticket_is_good_once_for_its_connection_and_length() {
        let mut s = StagingSlots::new(config());
        let (a, b) = (PeerId::fresh(), PeerId::fresh());
        let now = Instant::now();
        let (slot, ticket) = s.grant(a, 50, now).unwrap();
        assert_eq!(s.redeem(b, ticket, 50), Err(StagingRefusal::UnknownTicket));
        assert_eq!(s.redeem(a, ticket, 49), Err(StagingRefusal::UnknownTicket));
        assert_eq!(s.redeem(a, ticket, 50), Ok(slot));
        assert_eq!(s.redeem(a, ticket, 50), Err(StagingRefusal::UnknownTicket));
        s.free(slot);
        assert_eq!(s.in_use(), 0);
    }

    #[test]
    fn slots_are_bounded_per_connection_and_in_all() {
        let mut s = StagingSlots::new(config());
        let now = Instant::now();
        let a = PeerId::fresh();
        assert_eq!(s.grant(a, 101, now), Err(StagingRefusal::TooLarge));
        for _ in 0..config().per_connection() {
            s.grant(a, 10, now).unwrap();
        }
        assert_eq!(s.grant(a, 10, now), Err(StagingRefusal::NoRoom));
        let others: Vec<PeerId> = (0..3).map(|_| PeerId::fresh()).collect();
        for p in &others {
            for _ in 0..config().per_connection() {
                s.grant(*p, 10, now).unwrap();
            }
        }
        assert_eq!(s.in_use(), 8);
        assert_eq!(s.grant(PeerId::fresh(), 10, now), Err(StagingRefusal::NoRoom));
    }

    #[test]
    fn a_closed_connections_slots_come_back_at_once() {
        let mut s = StagingSlots::new(config());
        let now = Instant::now();
        let (a, b) = (PeerId::fresh(), PeerId::fresh());
        let (_, ta) = s.grant(a, 10, now).unwrap();
        let (_, tb) = s.grant(b, 10, now).unwrap();
        s.release_peer(a);
        assert_eq!(s.in_use(), 1);
        assert_eq!(s.redeem(a, ta, 10), Err(StagingRefusal::UnknownTicket));
        assert!(s.redeem(b, tb, 10).is_ok(), "another connection's slot is untouched");
    }

    #[test]
    fn an_unredeemed_slot_is_taken_back_after_its_lease_and_its_ticket_dies() {
        let mut s = StagingSlots::new(StagingConfig { slots: 1, ..config() });
        let now = Instant::now();
        let (a, b) = (PeerId::fresh(), PeerId::fresh());
        let (_, old) = s.grant(a, 10, now).unwrap();
        assert_eq!(s.grant(b, 10, now + Duration::from_millis(999)), Err(StagingRefusal::NoRoom));
        let (_, new) = s.grant(b, 10, now + Duration::from_secs(1)).unwrap();
        assert_ne!(old, new);
        assert_eq!(s.redeem(a, old, 10), Err(StagingRefusal::UnknownTicket));
    }

    /// Over the in-process backend: a slot overwritten between the client's WRITE and its STAGED
    /// message is refused as a mismatch (never served), another connection cannot redeem the
    /// ticket, and the queue pairs stay usable.
    #[test]
    fn a_spoiled_transfer_is_refused_and_nothing_reaches_the_service() {
        use crate::fabric::mem::MemFabric;
        use crate::fabric::{RegionTable, RemoteAddr};
        let served = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
        let s = served.clone();
        let inner: Arc<dyn RpcService> = Arc::new(move |rpc: IncomingRpc| {
            s.lock().push(rpc.payload);
            rpc.responder.reply(b"ok");
        });
        let regions = Arc::new(RegionTable::new());
        let fabric = MemFabric::new(regions.clone());
        fabric.set_max_message(64);
        let layer = Rendezvous::new(inner, &*regions, config()).unwrap();
        fabric.set_service(layer.clone());
        let (victim, attacker) = (fabric.connect(), fabric.connect());
        let request = vec![7u8; 90];
        let grant = parse_grant(&victim.call(&stage_message(request.len())).wait().unwrap()).unwrap();
        let remote = RemoteAddr { addr: grant.addr, rkey: grant.rkey };
        victim.post(&[WorkRequest::Write { remote, data: &request }]).wait().unwrap();
        // Another connection's ticket is not its own.
        let stolen = attacker.call(&staged_message(grant.ticket, &request)).wait().unwrap();
        assert_eq!(parse_response(stolen), Err(FabricError::Staging(StagingRefusal::UnknownTicket)));
        attacker.post(&[WorkRequest::Write { remote, data: &[9u8; 90] }]).wait().unwrap();
        let reply = victim.call(&staged_message(grant.ticket, &request)).wait().unwrap();
        assert_eq!(parse_response(reply), Err(FabricError::Staging(StagingRefusal::Mismatch)));
        assert!(served.lock().is_empty(), "nothing reached the service");
        assert_eq!(layer.slots_in_use(), 0);
        // A WRITE that crosses out of its slot is refused by the backend (one window per slot).
        let crossing = attacker.post(&[WorkRequest::Write { remote, data: &[0u8; 120] }]).wait();
        assert!(matches!(crossing, Err(FabricError::Remote { .. })), "{crossing:?}");
        assert_eq!(call_blocking(&victim, &request, Duration::from_secs(5)), Ok(b"ok".to_vec()));
        assert_eq!(served.lock().as_slice(), [request]);
    }

    #[test]
    fn replies_parse_back() {
        let g = Grant { rkey: 7, addr: 1 << 40, ticket: 99 };
        assert_eq!(parse_grant(&grant_message(g)), Ok(g));
        assert_eq!(
            parse_grant(&refusal_message(StagingRefusal::NoRoom)),
            Err(FabricError::Staging(StagingRefusal::NoRoom))
        );
        assert_eq!(parse_grant(b"\x02\x00"), Err(FabricError::Staging(StagingRefusal::Unsupported)));
        assert_eq!(parse_response(vec![0, 4, 0, 0]), Ok(vec![0, 4, 0, 0]));
    }
}
