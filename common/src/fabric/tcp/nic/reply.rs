//! RPC responses from worker threads to a NIC thread.
//!
//! A worker answering an RPC encodes the RPC_REPLY frame straight into its connection's reply
//! queue (so the NIC thread only moves bytes), lists the connection as ready for its NIC thread,
//! and wakes that thread — unless a wake is already pending, so a burst of replies costs one
//! wake-up system call, not one each.

use super::super::wire;
use crate::fabric::{ReplySink, MAX_TRANSFER};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// What other threads hand to one NIC thread: wake-ups, replies ready, new connections, stop.
pub(super) struct Mailbox {
    waker: mio::Waker,
    wake_pending: AtomicBool,
    /// Tokens of connections whose reply queue became non-empty.
    pub ready: Mutex<Vec<usize>>,
    /// Connections accepted by another NIC thread for this one.
    pub incoming: Mutex<Vec<mio::net::TcpStream>>,
    pub stop: AtomicBool,
}

impl Mailbox {
    pub fn new(waker: mio::Waker) -> Mailbox {
        Mailbox {
            waker,
            wake_pending: AtomicBool::new(false),
            ready: Mutex::new(Vec::new()),
            incoming: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        }
    }

    /// Wakes the NIC thread unless a wake is already on its way.
    pub fn wake(&self) {
        if !self.wake_pending.swap(true, Ordering::AcqRel) {
            self.force_wake();
        }
    }

    pub fn force_wake(&self) {
        if let Err(e) = self.waker.wake() {
            tracing::warn!("cannot wake a NIC thread: {e}");
        }
    }

    /// Called by the NIC thread when it handles its wake event, before it looks at the mailbox:
    /// anything posted after this wakes it again.
    pub fn woken(&self) {
        self.wake_pending.store(false, Ordering::Release);
    }
}

struct ReplyQueue {
    /// Encoded RPC_REPLY frames.
    bytes: Vec<u8>,
    /// Whether the connection is in its thread's ready list.
    listed: bool,
    /// The connection is gone: replies are dropped.
    closed: bool,
}

/// One connection's [`ReplySink`].
pub(super) struct ConnReplies {
    token: usize,
    mailbox: Arc<Mailbox>,
    queue: Mutex<ReplyQueue>,
    /// Replies given so far: each returns an RPC credit.
    answered: AtomicU64,
}

impl ConnReplies {
    pub fn new(token: usize, mailbox: Arc<Mailbox>) -> ConnReplies {
        ConnReplies {
            token,
            mailbox,
            queue: Mutex::new(ReplyQueue { bytes: Vec::new(), listed: false, closed: false }),
            answered: AtomicU64::new(0),
        }
    }

    /// Replies given so far.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Acquire)
    }

    /// Moves the queued replies to the end of `out`.
    pub fn take_into(&self, out: &mut Vec<u8>) {
        let mut q = self.queue.lock();
        q.listed = false;
        if q.bytes.is_empty() {
            return;
        }
        if out.is_empty() {
            std::mem::swap(out, &mut q.bytes);
        } else {
            out.extend_from_slice(&q.bytes);
            q.bytes.clear();
        }
    }

    /// The connection closed: later replies are no-ops.
    pub fn close(&self) {
        let mut q = self.queue.lock();
        q.closed = true;
        q.bytes = Vec::new();
    }
}

impl ReplySink for ConnReplies {
    fn is_closed(&self) -> bool {
        self.queue.lock().closed
    }

    fn reply(&self, id: u64, payload: &[u8]) {
        let payload = if payload.len() > MAX_TRANSFER {
            // The wire cannot carry it; an empty reply tells the client the request failed.
            tracing::warn!(len = payload.len(), "RPC response over MAX_TRANSFER dropped");
            &[]
        } else {
            payload
        };
        let mut q = self.queue.lock();
        // Before the reply can reach the client: its next RPC finds the credit returned.
        self.answered.fetch_add(1, Ordering::Release);
        if q.closed {
            return;
        }
        wire::encode_rpc_reply(&mut q.bytes, id, payload);
        let list = !std::mem::replace(&mut q.listed, true);
        drop(q);
        if list {
            self.mailbox.ready.lock().push(self.token);
            self.mailbox.wake();
        }
    }
}
