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
//! The error state lives here too: a failed work request (or anything that ends the connection)
//! reaps every pending token with an error, and every later post fails at once.

use crate::fabric::tcp::wire::{self, ChainStatus, Grant, ServerFrame, WrFlags};
use crate::fabric::{validate_chain, Disconnect, FabricError, ProtocolError, SendQueue, WorkRequest};
use slab::Slab;
use std::collections::VecDeque;

/// RPCs held back for credit at most, per granted credit: beyond, posts are refused with
/// [`FabricError::QueueFull`] (what waits here is the caller's own memory, but still bounded).
const HELD_PER_CREDIT: usize = 4;

/// The chain id of unsignaled chains that selective signaling posted signaled: their completion
/// only frees send-queue slots (no waiter has this id).
pub(super) const INTERNAL_CHAIN: u32 = u32::MAX;

/// What a pending request is, so that a completion of the wrong kind is caught.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chain,
    Rpc,
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
    waiters: Slab<(Kind, T)>,
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
enum Event {
    /// Resolve the waiter `key` (which must be of `kind`) with `result`.
    Resolve { key: u64, kind: Kind, result: Result<Vec<u8>, FabricError> },
    /// An unsignaled chain failed.
    AsyncError,
    /// An unsignaled chain that selective signaling posted signaled completed.
    InternalDone,
    /// The server ends the connection.
    Closed(FabricError),
}

/// Interprets one server frame.
fn interpret(frame: ServerFrame<'_>) -> Event {
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
                ChainStatus::Ok => Ok(data.to_vec()),
                ChainStatus::Failed { index, error } => {
                    Err(FabricError::Remote { index: u16::try_from(index).unwrap_or(u16::MAX), error })
                }
            };
            Event::Resolve { key: u64::from(chain), kind: Kind::Chain, result }
        }
        ServerFrame::RpcReply { id, payload } => {
            let result = if payload.is_empty() {
                Err(FabricError::Protocol(ProtocolError::Dropped))
            } else {
                Ok(payload.to_vec())
            };
            Event::Resolve { key: id, kind: Kind::Rpc, result }
        }
        ServerFrame::Error { code, message } => {
            tracing::debug!(%code, message, "the server closes the connection");
            Event::Closed(FabricError::Disconnected(Disconnect::ClosedByServer(code)))
        }
    }
}

/// Appends a chain's frames.
fn encode_chain(buf: &mut Vec<u8>, id: u32, unsignaled: bool, chain: &[WorkRequest<'_>]) {
    let last = chain.len() - 1;
    for (i, wr) in chain.iter().enumerate() {
        let flags = WrFlags::new(i == last, unsignaled);
        match *wr {
            WorkRequest::Read { remote, len } => wire::encode_read(buf, id, flags, remote, len),
            WorkRequest::Write { remote, data } => wire::encode_write(buf, id, flags, remote, data),
        }
    }
}

impl<T> QpCore<T> {
    pub fn new(send_queue_depth: u32, grant: Grant) -> QpCore<T> {
        QpCore {
            sq: SendQueue::new(send_queue_depth),
            signaled_ends: VecDeque::new(),
            waiters: Slab::new(),
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

    /// Posts a signaled chain; `token` comes back with its completion. On refusal the token comes
    /// back at once with the reason, and nothing was sent.
    pub fn post_chain(&mut self, chain: &[WorkRequest<'_>], token: T) -> Result<(), (T, FabricError)> {
        let checked = validate_chain(chain, true).and_then(|()| {
            let total: usize = chain.iter().map(WorkRequest::read_len).sum();
            if total > wire::MAX_CHAIN_READ {
                return Err(FabricError::TooLarge(total));
            }
            self.check_alive()
        });
        if let Err(e) = checked {
            return Err((token, e));
        }
        let posted = match self.sq.take(chain.len(), true) {
            Ok(p) => p,
            Err(e) => return Err((token, e)),
        };
        self.signaled_ends.push_back(posted.end);
        let id = self.waiters.insert((Kind::Chain, token));
        debug_assert!(id < INTERNAL_CHAIN as usize);
        encode_chain(&mut self.out, id as u32, false, chain);
        Ok(())
    }

    /// Posts a chain of WRITEs without a completion (unless selective signaling posts it signaled,
    /// to free slots; that completion reaps nothing).
    pub fn post_unsignaled(&mut self, chain: &[WorkRequest<'_>]) -> Result<(), FabricError> {
        validate_chain(chain, false)?;
        self.check_alive()?;
        let posted = self.sq.take(chain.len(), false)?;
        if posted.signaled {
            self.signaled_ends.push_back(posted.end);
            encode_chain(&mut self.out, INTERNAL_CHAIN, false, chain);
        } else {
            encode_chain(&mut self.out, 0, true, chain);
        }
        Ok(())
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
            let id = self.waiters.insert((Kind::Rpc, token));
            self.rpcs_in_flight += 1;
            wire::encode_rpc(&mut self.out, id as u64, request);
        } else if self.held.len() < self.grant.rpc_credits as usize * HELD_PER_CREDIT {
            let id = self.waiters.insert((Kind::Rpc, token));
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
        reaped.extend(self.waiters.drain().map(|(_, token)| (token, Err(why.clone()))));
    }

    /// A signaled chain completed: completions come in wire order, so it is the oldest one on the
    /// wire, and it and everything posted before it leave the send queue.
    fn retire_signaled(&mut self) {
        if let Some(end) = self.signaled_ends.pop_front() {
            self.sq.retire(end);
        }
    }

    fn apply(&mut self, event: Event, reaped: &mut Vec<Reaped<T>>) -> Result<(), FabricError> {
        match event {
            Event::Resolve { key, kind, result } => {
                let found = usize::try_from(key).ok().filter(|&k| self.waiters.get(k).is_some_and(|w| w.0 == kind));
                let Some((_, token)) = found.and_then(|k| self.waiters.try_remove(k)) else {
                    return Err(FabricError::Protocol(ProtocolError::UnknownRequest(key)));
                };
                if kind == Kind::Rpc {
                    self.return_credit();
                }
                let failed = matches!(result, Err(FabricError::Remote { .. }));
                reaped.push((token, result));
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

    const GRANT: Grant = Grant { rpc_credits: 16, max_message: MAX_TRANSFER as u32 };

    #[test]
    fn frames_become_events() {
        let done = |status, data: &'static [u8]| ServerFrame::ChainDone { chain: 5, unsignaled: false, status, data };
        assert_eq!(
            interpret(done(ChainStatus::Ok, b"ab")),
            Event::Resolve { key: 5, kind: Kind::Chain, result: Ok(b"ab".to_vec()) }
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
