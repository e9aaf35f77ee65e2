//! The client side's protocol state, sans-IO: what a queue pair is, apart from how its socket is
//! driven.
//!
//! [`QpCore`] is fed posts and received bytes and hands back bytes to send and completions. Each
//! posted request carries a caller's token (the driver's completer); a completion gives the token
//! back with the request's result. Posting encodes the frames at once, so the order of the output
//! is the order of the posts, which is what RC ordering needs; send-queue slots are taken there,
//! and retired when signaled completions come back (in wire order). The drivers in
//! [`threaded`](super::threaded) and, with the `tokio` feature, `tokio` only move bytes and
//! resolve tokens.
//!
//! Chains posted with an id instead of a token ([`post_signaled`](QpCore::post_signaled)) complete
//! into the core's completion queue ([`WorkCompletion`]s, polled by the caller), and their READs
//! land in the caller's registered local memory: nothing is allocated for them.
//!
//! The error state lives here too: a failed work request (or anything that ends the connection)
//! reaps every pending token with an error, and every later post fails at once.

use crate::fabric::tcp::wire::{self, ChainStatus, Grant, ServerFrame, WrFlags};
use crate::fabric::{
    validate_chain, Disconnect, FabricError, LocalKey, LocalRegions, LocalSlice, MemoryRegion, ProtocolError,
    SendQueue, WorkCompletion, WorkRequest, HELD_PER_CREDIT,
};
use slab::Slab;
use std::collections::VecDeque;
use std::sync::Arc;
use std::task::Waker;

/// The chain id of unsignaled chains that selective signaling posted signaled: their completion
/// only frees send-queue slots (no waiter has this id).
pub(super) const INTERNAL_CHAIN: u32 = u32::MAX;

/// What kind of frame completes a pending request, so that a completion of the wrong kind is
/// caught.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chain,
    Rpc,
}

/// Where the data of one READ of a pending chain goes.
#[derive(Debug, Clone, Copy)]
enum Landing {
    /// `len` bytes into the `Vec` the chain's token resolves with.
    Caller(u32),
    /// Into the caller's registered memory.
    Local(LocalSlice),
}

/// A pending chain's READs: `count` entries of the core's landing queue from sequence number
/// `first` (chains complete in wire order, so their landings are consumed in order too).
#[derive(Debug, Clone, Copy)]
struct Landings {
    first: u64,
    count: u32,
}

/// A request waiting for its completion.
enum Pending<T> {
    /// A chain whose token resolves with the data of its plain READs.
    Chain(T, Landings),
    /// A chain posted with an id: it completes into the completion queue.
    Signaled(u64, Landings),
    /// An RPC whose token resolves with the response.
    Rpc(T),
}

impl<T> Pending<T> {
    fn kind(&self) -> Kind {
        match self {
            Pending::Chain(..) | Pending::Signaled(..) => Kind::Chain,
            Pending::Rpc(_) => Kind::Rpc,
        }
    }
}

/// A finished request: its token and its result (the READ data of a chain, concatenated in chain
/// order, or an RPC's response).
pub(crate) type Reaped<T> = (T, Result<Vec<u8>, FabricError>);

/// One queue pair's state: send queue, pending requests, frames not yet sent, the error state.
pub(crate) struct QpCore<T> {
    sq: SendQueue,
    /// Where each signaled chain on the wire ends, in wire order: their completions come back in
    /// that order and retire the slots up to there.
    signaled_ends: VecDeque<u64>,
    /// Pending requests by request id (the id on the wire).
    waiters: Slab<Pending<T>>,
    /// Where the READs of pending chains land, in wire order; `landed` is the sequence number of
    /// the front entry.
    landings: VecDeque<Landing>,
    landed: u64,
    /// The caller's registered memory.
    locals: LocalRegions,
    /// Completions of chains posted with an id, not yet polled: at most one per send-queue slot.
    cq: VecDeque<WorkCompletion>,
    /// Woken once the completion queue holds a completion.
    cq_waker: Option<Waker>,
    /// Encoded frames not yet handed to the driver.
    out: Vec<u8>,
    /// Why the queue pair can no longer be used, once it cannot.
    dead: Option<FabricError>,
    async_errors: u64,
    /// What the server granted in its HELLO.
    grant: Grant,
    /// RPCs sent and not yet answered: at most `grant.rpc_credits`.
    rpcs_in_flight: u32,
    /// RPCs waiting for a credit (id and request), sent in order as replies return credits.
    held: VecDeque<(usize, Vec<u8>)>,
}

/// What a server frame means to the client.
#[derive(Debug, PartialEq, Eq)]
enum Event<'a> {
    /// Resolve the waiter `key` (which must be of `kind`) with `result`: the data of a chain's
    /// READs, or an RPC's response.
    Resolve { key: u64, kind: Kind, result: Result<&'a [u8], FabricError> },
    /// An unsignaled chain failed.
    AsyncError,
    /// An unsignaled chain that selective signaling posted signaled completed.
    InternalDone,
    /// The server ends the connection.
    Closed(FabricError),
}

/// Interprets one server frame.
fn interpret(frame: ServerFrame<'_>) -> Event<'_> {
    match frame {
        ServerFrame::ChainDone { unsignaled: true, status: ChainStatus::Failed { .. }, .. } => Event::AsyncError,
        ServerFrame::ChainDone { unsignaled: true, status: ChainStatus::Ok, .. } => {
            Event::Closed(FabricError::Protocol(ProtocolError::UnsignaledSuccess))
        }
        ServerFrame::ChainDone { chain: INTERNAL_CHAIN, unsignaled: false, status, .. } => match status {
            ChainStatus::Ok => Event::InternalDone,
            ChainStatus::Failed { .. } => Event::AsyncError,
        },
        ServerFrame::ChainDone { chain, unsignaled: false, status, data } => {
            let result = match status {
                ChainStatus::Ok => Ok(data),
                ChainStatus::Failed { index, error } => {
                    Err(FabricError::Remote { index: u16::try_from(index).unwrap_or(u16::MAX), error })
                }
            };
            Event::Resolve { key: u64::from(chain), kind: Kind::Chain, result }
        }
        ServerFrame::RpcReply { id, payload } => {
            let result =
                if payload.is_empty() { Err(FabricError::Protocol(ProtocolError::Dropped)) } else { Ok(payload) };
            Event::Resolve { key: id, kind: Kind::Rpc, result }
        }
        ServerFrame::Error { code, message } => {
            tracing::debug!(%code, message, "the server closes the connection");
            Event::Closed(FabricError::Disconnected(Disconnect::ClosedByServer(code)))
        }
    }
}

/// Appends a chain's frames. The local slices of its WRITEs must have been checked (`WriteFrom`
/// data is copied from the caller's memory now, as a NIC would fetch it when it executes).
fn encode_chain(buf: &mut Vec<u8>, id: u32, unsignaled: bool, chain: &[WorkRequest<'_>], locals: &LocalRegions) {
    let last = chain.len() - 1;
    for (i, wr) in chain.iter().enumerate() {
        let flags = WrFlags::new(i == last, unsignaled);
        match *wr {
            WorkRequest::Read { remote, len } => wire::encode_read(buf, id, flags, remote, len),
            WorkRequest::ReadInto { remote, local } => wire::encode_read(buf, id, flags, remote, local.len),
            WorkRequest::Write { remote, data } => wire::encode_write(buf, id, flags, remote, data),
            WorkRequest::WriteFrom { remote, local } => {
                let (region, offset) = locals.resolve(&local).expect("local slices are checked before encoding");
                wire::encode_write_with(buf, id, flags, remote, local.len, |out| {
                    region.read(offset, out).expect("inside the registration")
                });
            }
        }
    }
}

impl<T> QpCore<T> {
    pub fn new(send_queue_depth: u32, grant: Grant) -> QpCore<T> {
        QpCore {
            sq: SendQueue::new(send_queue_depth),
            signaled_ends: VecDeque::new(),
            waiters: Slab::new(),
            landings: VecDeque::new(),
            landed: 0,
            locals: LocalRegions::default(),
            cq: VecDeque::new(),
            cq_waker: None,
            out: Vec::new(),
            dead: None,
            async_errors: 0,
            grant,
            rpcs_in_flight: 0,
            held: VecDeque::new(),
        }
    }

    /// Why the queue pair can no longer be used, if it cannot.
    pub fn dead(&self) -> Option<&FabricError> {
        self.dead.as_ref()
    }

    /// Failures of unsignaled chains so far.
    pub fn async_errors(&self) -> u64 {
        self.async_errors
    }

    /// Bytes encoded and not yet taken by [`take_output`](Self::take_output).
    pub fn pending_output(&self) -> usize {
        self.out.len()
    }

    /// Hands the encoded frames to the driver, in exchange for an empty buffer to encode into next
    /// (so that two buffers alternate and neither is reallocated).
    pub fn take_output(&mut self, mut empty: Vec<u8>) -> Vec<u8> {
        empty.clear();
        std::mem::replace(&mut self.out, empty)
    }

    /// Refuses with the reason the queue pair can no longer be used, if it cannot.
    fn check_alive(&self) -> Result<(), FabricError> {
        match &self.dead {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Registers the caller's memory for `ReadInto` and `WriteFrom`.
    pub fn register_local(&mut self, region: Arc<MemoryRegion>) -> Result<LocalKey, FabricError> {
        self.locals.register(region)
    }

    /// Checks a chain before it takes slots: its shape, its total READ size, its local slices,
    /// and that the queue pair is alive.
    fn check_chain(&self, chain: &[WorkRequest<'_>], signaled: bool) -> Result<(), FabricError> {
        validate_chain(chain, signaled)?;
        let total: usize = chain.iter().map(WorkRequest::remote_read_len).sum();
        if total > wire::MAX_CHAIN_READ {
            return Err(FabricError::TooLarge(total));
        }
        for wr in chain {
            if let WorkRequest::ReadInto { local, .. } | WorkRequest::WriteFrom { local, .. } = wr {
                self.locals.resolve(local)?;
            }
        }
        self.check_alive()
    }

    /// Takes send-queue slots for a signaled chain and queues where its READs land.
    fn take_signaled(&mut self, chain: &[WorkRequest<'_>]) -> Result<Landings, FabricError> {
        let posted = self.sq.take(chain.len(), true)?;
        self.signaled_ends.push_back(posted.end);
        let first = self.landed + self.landings.len() as u64;
        let mut count = 0;
        for wr in chain {
            let landing = match *wr {
                WorkRequest::Read { len, .. } => Landing::Caller(len),
                WorkRequest::ReadInto { local, .. } => Landing::Local(local),
                _ => continue,
            };
            self.landings.push_back(landing);
            count += 1;
        }
        Ok(Landings { first, count })
    }

    /// Posts a signaled chain; `token` comes back with its completion. On refusal the token comes
    /// back at once with the reason, and nothing was sent.
    pub fn post_chain(&mut self, chain: &[WorkRequest<'_>], token: T) -> Result<(), (T, FabricError)> {
        let landings = match self.check_chain(chain, true).and_then(|()| self.take_signaled(chain)) {
            Ok(l) => l,
            Err(e) => return Err((token, e)),
        };
        let id = self.waiters.insert(Pending::Chain(token, landings));
        debug_assert!(id < INTERNAL_CHAIN as usize);
        encode_chain(&mut self.out, id as u32, false, chain, &self.locals);
        Ok(())
    }

    /// Posts a signaled chain whose completion goes to the completion queue with `wr_id`. Its
    /// READs must land in local memory (`ReadInto`): a plain `Read` has nowhere to go.
    pub fn post_signaled(&mut self, wr_id: u64, chain: &[WorkRequest<'_>]) -> Result<(), FabricError> {
        if chain.iter().any(|wr| matches!(wr, WorkRequest::Read { .. })) {
            return Err(FabricError::ReadWithoutBuffer);
        }
        self.check_chain(chain, true)?;
        let landings = self.take_signaled(chain)?;
        let id = self.waiters.insert(Pending::Signaled(wr_id, landings));
        debug_assert!(id < INTERNAL_CHAIN as usize);
        encode_chain(&mut self.out, id as u32, false, chain, &self.locals);
        Ok(())
    }

    /// Posts a chain of WRITEs without a completion (unless selective signaling posts it signaled,
    /// to free slots; that completion reaps nothing).
    pub fn post_unsignaled(&mut self, chain: &[WorkRequest<'_>]) -> Result<(), FabricError> {
        self.check_chain(chain, false)?;
        let posted = self.sq.take(chain.len(), false)?;
        if posted.signaled {
            self.signaled_ends.push_back(posted.end);
            encode_chain(&mut self.out, INTERNAL_CHAIN, false, chain, &self.locals);
        } else {
            encode_chain(&mut self.out, 0, true, chain, &self.locals);
        }
        Ok(())
    }

    /// Moves up to `max` completions of the completion queue to `out`.
    pub fn poll_cq(&mut self, out: &mut Vec<WorkCompletion>, max: usize) -> usize {
        let n = max.min(self.cq.len());
        out.extend(self.cq.drain(..n));
        n
    }

    /// Arms the completion queue's notification: returns `waker` back if the queue already holds
    /// a completion (the caller wakes it, outside any lock), else keeps it for
    /// [`take_cq_wake`](Self::take_cq_wake).
    pub fn arm_cq(&mut self, waker: &Waker) -> Option<Waker> {
        if self.cq.is_empty() {
            match &mut self.cq_waker {
                Some(w) if w.will_wake(waker) => {}
                slot => *slot = Some(waker.clone()),
            }
            None
        } else {
            self.cq_waker = None;
            Some(waker.clone())
        }
    }

    /// The armed waker, if the completion queue now holds a completion (the driver wakes it after
    /// `receive` or `fail`, outside its lock).
    pub fn take_cq_wake(&mut self) -> Option<Waker> {
        if self.cq.is_empty() {
            None
        } else {
            self.cq_waker.take()
        }
    }

    /// Sends an RPC request; `token` comes back with the response. With every credit in use the
    /// request waits here (a copy of it) and goes out, in order, when a reply returns one.
    pub fn post_call(&mut self, request: &[u8], token: T) -> Result<(), (T, FabricError)> {
        if request.len() > self.grant.max_message as usize {
            return Err((token, FabricError::TooLarge(request.len())));
        }
        if let Err(e) = self.check_alive() {
            return Err((token, e));
        }
        if self.rpcs_in_flight < self.grant.rpc_credits && self.held.is_empty() {
            let id = self.waiters.insert(Pending::Rpc(token));
            self.rpcs_in_flight += 1;
            wire::encode_rpc(&mut self.out, id as u64, request);
        } else if self.held.len() < self.grant.rpc_credits as usize * HELD_PER_CREDIT {
            let id = self.waiters.insert(Pending::Rpc(token));
            self.held.push_back((id, request.to_vec()));
        } else {
            return Err((token, FabricError::QueueFull));
        }
        Ok(())
    }

    /// RPCs sent and not yet answered, and RPCs waiting for a credit.
    #[cfg(test)]
    pub fn rpcs_pending(&self) -> (u32, usize) {
        (self.rpcs_in_flight, self.held.len())
    }

    /// A reply returned a credit: the oldest held request goes out.
    fn return_credit(&mut self) {
        self.rpcs_in_flight = self.rpcs_in_flight.saturating_sub(1);
        if let Some((id, request)) = self.held.pop_front() {
            self.rpcs_in_flight += 1;
            wire::encode_rpc(&mut self.out, id as u64, &request);
        }
    }

    /// Takes in received bytes: decodes every whole frame, pushes the requests they finish onto
    /// `reaped`, and returns how many bytes it consumed (a partial frame stays for the next
    /// call). Anything that ends the queue pair (a failed work request, a malformed frame, the
    /// server's ERROR) reaps every pending request with an error and marks the queue pair dead;
    /// the driver then closes the connection.
    pub fn receive(&mut self, input: &[u8], reaped: &mut Vec<Reaped<T>>) -> usize {
        let mut consumed = 0;
        while self.dead.is_none() {
            match wire::decode_server_frame(&input[consumed..]) {
                Ok(Some((frame, n))) => {
                    consumed += n;
                    if let ServerFrame::ChainDone { unsignaled: false, .. } = frame {
                        self.retire_signaled();
                    }
                    if let Err(why) = self.apply(interpret(frame), reaped) {
                        self.fail(why, reaped);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "bad frame from the server");
                    self.fail(FabricError::Protocol(ProtocolError::Malformed), reaped);
                }
            }
        }
        consumed
    }

    /// The queue pair can no longer be used (the first reason given is kept): every pending
    /// request is reaped with that reason.
    pub fn fail(&mut self, why: FabricError, reaped: &mut Vec<Reaped<T>>) {
        let why = self.dead.get_or_insert(why).clone();
        self.held.clear();
        self.landed += self.landings.len() as u64;
        self.landings.clear();
        // In posting order (request ids are reused, so the slab's order is not the posts').
        let mut flushed: Vec<_> = self.waiters.drain().collect();
        flushed.sort_by_key(|p| match p {
            Pending::Chain(_, l) | Pending::Signaled(_, l) => l.first,
            Pending::Rpc(_) => 0,
        });
        for pending in flushed {
            match pending {
                Pending::Chain(token, _) | Pending::Rpc(token) => reaped.push((token, Err(why.clone()))),
                Pending::Signaled(wr_id, _) => self.cq.push_back(WorkCompletion { wr_id, result: Err(why.clone()) }),
            }
        }
    }

    /// Takes the landings of a completed chain off the queue, and places its READ data: into
    /// local memory, and (the plain READs' part) into the returned `Vec` if it has any. A
    /// completion out of wire order, or whose data does not add up, is a protocol error.
    fn land(&mut self, landings: Landings, data: &[u8]) -> Result<Option<Vec<u8>>, FabricError> {
        let malformed = FabricError::Protocol(ProtocolError::Malformed);
        if landings.count == 0 {
            return if data.is_empty() { Ok(None) } else { Err(malformed) };
        }
        if landings.first != self.landed || self.landings.len() < landings.count as usize {
            return Err(malformed);
        }
        let these = self.landings.range(..landings.count as usize);
        let total: usize = these
            .clone()
            .map(|l| match l {
                Landing::Caller(len) => *len as usize,
                Landing::Local(s) => s.len as usize,
            })
            .sum();
        if total != data.len() {
            return Err(malformed);
        }
        let mut caller: Option<Vec<u8>> = None;
        let mut at = 0;
        for landing in these {
            match *landing {
                Landing::Caller(len) => {
                    let len = len as usize;
                    caller.get_or_insert_with(Vec::new).extend_from_slice(&data[at..at + len]);
                    at += len;
                }
                Landing::Local(slice) => {
                    let len = slice.len as usize;
                    let (region, offset) = self.locals.resolve(&slice)?;
                    region.write(offset, &data[at..at + len]).map_err(|_| malformed.clone())?;
                    at += len;
                }
            }
        }
        self.landings.drain(..landings.count as usize);
        self.landed += u64::from(landings.count);
        Ok(caller)
    }

    /// A signaled chain completed: completions come in wire order, so it is the oldest one on the
    /// wire, and it and everything posted before it leave the send queue.
    fn retire_signaled(&mut self) {
        if let Some(end) = self.signaled_ends.pop_front() {
            self.sq.retire(end);
        }
    }

    /// A chain's result with its data placed as [`land`](Self::land) does.
    fn place(
        &mut self,
        landings: Landings,
        result: Result<&[u8], FabricError>,
    ) -> Result<Option<Vec<u8>>, FabricError> {
        match result {
            Ok(data) => self.land(landings, data),
            // A failed chain puts the queue pair into the error state, which drops every landing.
            Err(e) => Err(e),
        }
    }

    fn apply(&mut self, event: Event<'_>, reaped: &mut Vec<Reaped<T>>) -> Result<(), FabricError> {
        match event {
            Event::Resolve { key, kind, result } => {
                let found =
                    usize::try_from(key).ok().filter(|&k| self.waiters.get(k).is_some_and(|w| w.kind() == kind));
                let Some(pending) = found.and_then(|k| self.waiters.try_remove(k)) else {
                    return Err(FabricError::Protocol(ProtocolError::UnknownRequest(key)));
                };
                let failed = matches!(result, Err(FabricError::Remote { .. }));
                match pending {
                    Pending::Rpc(token) => {
                        self.return_credit();
                        reaped.push((token, result.map(<[u8]>::to_vec)));
                    }
                    Pending::Chain(token, landings) => {
                        let landed = self.place(landings, result);
                        let bad = matches!(landed, Err(FabricError::Protocol(_)));
                        reaped.push((token, landed.map(Option::unwrap_or_default)));
                        if bad {
                            return Err(FabricError::Protocol(ProtocolError::Malformed));
                        }
                    }
                    Pending::Signaled(wr_id, landings) => {
                        let landed = self.place(landings, result);
                        let bad = matches!(landed, Err(FabricError::Protocol(_)));
                        self.cq.push_back(WorkCompletion { wr_id, result: landed.map(drop) });
                        if bad {
                            return Err(FabricError::Protocol(ProtocolError::Malformed));
                        }
                    }
                }
                if failed {
                    // The error state: everything still pending is flushed, and so is anything
                    // posted from now on (the server executes nothing more on this connection).
                    return Err(FabricError::Flushed);
                }
                Ok(())
            }
            Event::InternalDone => Ok(()),
            Event::AsyncError => {
                self.async_errors += 1;
                Err(FabricError::Flushed)
            }
            Event::Closed(why) => Err(why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fabric::{CloseReason, RemoteAccessError, RemoteAddr, MAX_TRANSFER};
    use std::sync::Arc;

    const GRANT: Grant = Grant { rpc_credits: 16, max_message: MAX_TRANSFER as u32 };

    #[test]
    fn frames_become_events() {
        let done = |status, data: &'static [u8]| ServerFrame::ChainDone { chain: 5, unsignaled: false, status, data };
        assert_eq!(
            interpret(done(ChainStatus::Ok, b"ab")),
            Event::Resolve { key: 5, kind: Kind::Chain, result: Ok(&b"ab"[..]) }
        );
        assert_eq!(
            interpret(done(ChainStatus::Failed { index: 70_000, error: RemoteAccessError::BadKey }, b"")),
            Event::Resolve {
                key: 5,
                kind: Kind::Chain,
                result: Err(FabricError::Remote { index: u16::MAX, error: RemoteAccessError::BadKey })
            }
        );
        let unsignaled = ServerFrame::ChainDone {
            chain: 0,
            unsignaled: true,
            status: ChainStatus::Failed { index: 0, error: RemoteAccessError::OutOfBounds },
            data: &[],
        };
        assert_eq!(interpret(unsignaled), Event::AsyncError);
        assert!(matches!(
            interpret(ServerFrame::RpcReply { id: 9, payload: &[] }),
            Event::Resolve { key: 9, kind: Kind::Rpc, result: Err(FabricError::Protocol(ProtocolError::Dropped)) }
        ));
        assert!(matches!(
            interpret(ServerFrame::Error { code: CloseReason::Shutdown, message: "bye" }),
            Event::Closed(FabricError::Disconnected(Disconnect::ClosedByServer(CloseReason::Shutdown)))
        ));
    }

    #[test]
    fn chains_are_framed_with_one_id_and_a_last_flag() {
        let remote = RemoteAddr { addr: 64, rkey: 3 };
        let mut buf = Vec::new();
        encode_chain(
            &mut buf,
            11,
            false,
            &[WorkRequest::Write { remote, data: b"x" }, WorkRequest::Read { remote, len: 4 }],
            &LocalRegions::default(),
        );
        let (first, n) = wire::decode_client_frame(&buf).unwrap().unwrap();
        let (second, m) = wire::decode_client_frame(&buf[n..]).unwrap().unwrap();
        assert_eq!(n + m, buf.len());
        assert_eq!(
            first,
            wire::ClientFrame::Write { chain: 11, flags: WrFlags::new(false, false), remote, data: b"x" }
        );
        assert_eq!(second, wire::ClientFrame::Read { chain: 11, flags: WrFlags::new(true, false), remote, len: 4 });
    }

    /// The chain id the core put on the wire for the first frame of its output.
    fn first_chain_id(out: &[u8]) -> u32 {
        match wire::decode_client_frame(out).unwrap().unwrap().0 {
            wire::ClientFrame::Read { chain, .. } | wire::ClientFrame::Write { chain, .. } => chain,
            other => panic!("not a work request: {other:?}"),
        }
    }

    #[test]
    fn a_completion_reaps_its_token_and_frees_the_slots() {
        let remote = RemoteAddr { addr: 0, rkey: 1 };
        let mut core = QpCore::new(4, GRANT);
        core.post_chain(&[WorkRequest::Read { remote, len: 2 }, WorkRequest::Read { remote, len: 1 }], "a").unwrap();
        core.post_chain(&[WorkRequest::Read { remote, len: 1 }], "b").unwrap();
        // Three of four slots are taken: a chain of two does not fit.
        let refused = core.post_chain(&[WorkRequest::Read { remote, len: 1 }; 2], "c");
        assert_eq!(refused, Err(("c", FabricError::QueueFull)));
        let out = core.take_output(Vec::new());
        let id = first_chain_id(&out);

        let mut input = Vec::new();
        wire::encode_chain_done(&mut input, id, false, ChainStatus::Ok, b"xyz");
        let mut reaped = Vec::new();
        // Half a frame is left for later.
        assert_eq!(core.receive(&input[..input.len() - 1], &mut reaped), 0);
        assert!(reaped.is_empty());
        assert_eq!(core.receive(&input, &mut reaped), input.len());
        assert_eq!(reaped, vec![("a", Ok(b"xyz".to_vec()))]);
        // The first chain's two slots came back.
        core.post_chain(&[WorkRequest::Read { remote, len: 1 }; 2], "c").unwrap();
    }

    #[test]
    fn a_failed_request_reaps_everything_and_refuses_later_posts() {
        let remote = RemoteAddr { addr: 0, rkey: 1 };
        let mut core = QpCore::new(16, GRANT);
        core.post_chain(&[WorkRequest::Read { remote, len: 2 }], 1).unwrap();
        core.post_call(b"req", 2).unwrap();
        core.post_chain(&[WorkRequest::Read { remote, len: 2 }], 3).unwrap();
        let id = first_chain_id(&core.take_output(Vec::new()));
        let mut input = Vec::new();
        let failed = ChainStatus::Failed { index: 0, error: RemoteAccessError::OutOfBounds };
        wire::encode_chain_done(&mut input, id, false, failed, b"");
        let mut reaped = Vec::new();
        core.receive(&input, &mut reaped);
        reaped.sort_by_key(|r| r.0);
        assert_eq!(
            reaped,
            vec![
                (1, Err(FabricError::Remote { index: 0, error: RemoteAccessError::OutOfBounds })),
                (2, Err(FabricError::Flushed)),
                (3, Err(FabricError::Flushed)),
            ]
        );
        assert_eq!(core.dead(), Some(&FabricError::Flushed));
        assert_eq!(core.post_call(b"late", 4), Err((4, FabricError::Flushed)));
        assert_eq!(core.post_unsignaled(&[WorkRequest::Write { remote, data: b"x" }]), Err(FabricError::Flushed));
    }

    #[test]
    fn a_completion_for_nobody_is_a_protocol_error() {
        let mut core: QpCore<u8> = QpCore::new(16, GRANT);
        core.post_call(b"req", 7).unwrap();
        let mut input = Vec::new();
        wire::encode_rpc_reply(&mut input, 42, b"who?");
        let mut reaped = Vec::new();
        core.receive(&input, &mut reaped);
        assert_eq!(reaped, vec![(7, Err(FabricError::Protocol(ProtocolError::UnknownRequest(42))))]);
    }

    #[test]
    fn reads_land_in_local_memory_and_bad_landings_end_the_queue_pair() {
        let remote = RemoteAddr { addr: 0, rkey: 1 };
        let mut core: QpCore<u8> = QpCore::new(16, GRANT);
        let mine = Arc::new(MemoryRegion::new(16));
        let k = core.register_local(mine.clone()).unwrap();
        let slice = |offset, len| LocalSlice { lkey: k, offset, len };
        core.post_signaled(
            40,
            &[
                WorkRequest::ReadInto { remote, local: slice(0, 2) },
                WorkRequest::ReadInto { remote, local: slice(8, 3) },
            ],
        )
        .unwrap();
        core.post_signaled(41, &[WorkRequest::ReadInto { remote, local: slice(4, 2) }]).unwrap();
        let id = first_chain_id(&core.take_output(Vec::new()));
        let mut input = Vec::new();
        wire::encode_chain_done(&mut input, id, false, ChainStatus::Ok, b"abcde");
        let mut reaped = Vec::new();
        core.receive(&input, &mut reaped);
        let mut cq = Vec::new();
        assert_eq!(core.poll_cq(&mut cq, 8), 1);
        assert_eq!(cq, vec![WorkCompletion { wr_id: 40, result: Ok(()) }]);
        let mut bytes = [0; 16];
        mine.read(0, &mut bytes).unwrap();
        assert_eq!(&bytes, b"ab\0\0\0\0\0\0cde\0\0\0\0\0");
        // The next chain's data is one byte short: a protocol error, and nothing lands.
        input.clear();
        wire::encode_chain_done(&mut input, id + 1, false, ChainStatus::Ok, b"x");
        core.receive(&input, &mut reaped);
        cq.clear();
        core.poll_cq(&mut cq, 8);
        assert_eq!(
            cq,
            vec![WorkCompletion { wr_id: 41, result: Err(FabricError::Protocol(ProtocolError::Malformed)) }]
        );
        assert_eq!(core.dead(), Some(&FabricError::Protocol(ProtocolError::Malformed)));
        assert_eq!(mine.load_u8(4), 0);
        assert!(reaped.is_empty(), "no token was pending");
    }

    /// The ids of the RPC frames in `out`, in order.
    fn rpc_ids(out: &[u8]) -> Vec<u64> {
        let mut ids = Vec::new();
        let mut at = 0;
        while let Some((frame, n)) = wire::decode_client_frame(&out[at..]).unwrap() {
            if let wire::ClientFrame::Rpc { id, .. } = frame {
                ids.push(id);
            }
            at += n;
        }
        ids
    }

    #[test]
    fn rpcs_beyond_the_credits_wait_for_replies_and_then_go_in_order() {
        let grant = Grant { rpc_credits: 2, max_message: 8 };
        let mut core = QpCore::new(16, grant);
        assert_eq!(core.post_call(&[0; 9], 0), Err((0, FabricError::TooLarge(9))), "over the largest message");
        for token in 1..=5 {
            core.post_call(&[token], token).unwrap();
        }
        assert_eq!(core.rpcs_pending(), (2, 3));
        let sent = rpc_ids(&core.take_output(Vec::new()));
        assert_eq!(sent.len(), 2, "only as many as the credits go out");
        // Held requests are bounded too (HELD_PER_CREDIT per credit).
        for token in 6..=10 {
            core.post_call(&[token], token).unwrap();
        }
        assert_eq!(core.post_call(&[11], 11), Err((11, FabricError::QueueFull)));

        let mut input = Vec::new();
        wire::encode_rpc_reply(&mut input, sent[0], b"r1");
        let mut reaped = Vec::new();
        core.receive(&input, &mut reaped);
        assert_eq!(reaped, vec![(1, Ok(b"r1".to_vec()))]);
        // The reply returned a credit: the oldest held request (token 3) went out.
        let next = core.take_output(Vec::new());
        let (frame, _) = wire::decode_client_frame(&next).unwrap().unwrap();
        assert!(matches!(frame, wire::ClientFrame::Rpc { payload: [3], .. }), "{frame:?}");
        assert_eq!(core.rpcs_pending(), (2, 7));

        // A lost connection reaps the held requests too.
        core.fail(FabricError::Disconnected(Disconnect::PeerClosed), &mut reaped);
        assert_eq!(reaped.len(), 1 + 2 + 7);
        assert_eq!(core.rpcs_pending(), (2, 0));
    }
}
