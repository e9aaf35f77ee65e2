//! The `mem` backend's message channel: RPCs handed to the service in process, with the same
//! credits as on the wire. A queue pair has at most `rpc_credits` requests at the service without
//! a response; calls beyond wait in the queue pair (at most [`HELD_PER_CREDIT`] per credit, then
//! [`FabricError::QueueFull`]) and go to the service in order as responses return credits.

use crate::fabric::{
    Completer, FabricError, IncomingRpc, PeerId, ProtocolError, ReplySink, Responder, RpcService, HELD_PER_CREDIT,
};
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

/// A call waiting for a credit.
struct Held {
    id: u64,
    request: Vec<u8>,
    service: Arc<dyn RpcService>,
}

#[derive(Default)]
struct Credits {
    /// Requests at the service without a response.
    in_flight: u32,
    held: VecDeque<Held>,
    /// A thread is handing held calls to the service: others only return credits (a service that
    /// answers at once would otherwise recurse through `reply`).
    dispatching: bool,
}

/// One queue pair's message channel: the completers of its calls, and its credits.
pub(super) struct Channel {
    /// Itself, for the responders it hands out.
    me: Weak<Channel>,
    credits: u32,
    peer: PeerId,
    pending: Mutex<HashMap<u64, Completer<Vec<u8>>>>,
    state: Mutex<Credits>,
    /// The queue pair is gone: nothing more goes to the service, responses are dropped.
    closed: AtomicBool,
}

impl Channel {
    pub fn new(credits: u32, peer: PeerId) -> Arc<Channel> {
        Arc::new_cyclic(|me| Channel {
            me: me.clone(),
            credits: credits.max(1),
            peer,
            pending: Mutex::default(),
            state: Mutex::default(),
            closed: AtomicBool::new(false),
        })
    }

    pub fn peer(&self) -> PeerId {
        self.peer
    }

    /// The queue pair is gone: calls waiting for a credit are dropped, and so are the responses
    /// still to come.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.flush(FabricError::Flushed);
    }

    /// Sends `request` as call `id`, whose response goes to `completer`; refused with
    /// [`FabricError::QueueFull`] when the credits are in use and the held calls at their bound.
    pub fn call(
        &self,
        id: u64,
        request: &[u8],
        service: Arc<dyn RpcService>,
        completer: Completer<Vec<u8>>,
    ) -> Result<(), (Completer<Vec<u8>>, FabricError)> {
        let mut st = self.state.lock();
        let now = st.in_flight < self.credits && st.held.is_empty();
        if !now && st.held.len() >= self.credits as usize * HELD_PER_CREDIT {
            return Err((completer, FabricError::QueueFull));
        }
        self.pending.lock().insert(id, completer);
        if now {
            st.in_flight += 1;
            drop(st);
            self.dispatch(id, request.to_vec(), &service);
        } else {
            st.held.push_back(Held { id, request: request.to_vec(), service });
        }
        Ok(())
    }

    fn dispatch(&self, id: u64, payload: Vec<u8>, service: &Arc<dyn RpcService>) {
        let Some(me) = self.me.upgrade() else { return };
        let responder = Responder::new(me, id);
        service.handle(IncomingRpc { payload, peer: self.peer, responder });
    }

    /// The error state: every call waiting for a response, or for a credit, fails with `why`.
    pub fn flush(&self, why: FabricError) {
        self.state.lock().held.clear();
        let flushed: Vec<_> = self.pending.lock().drain().map(|(_, c)| c).collect();
        for c in flushed {
            c.complete(Err(why.clone()));
        }
    }

    /// A response returned a credit: held calls go to the service while credits allow.
    fn return_credit(&self) {
        let mut st = self.state.lock();
        st.in_flight = st.in_flight.saturating_sub(1);
        if st.dispatching {
            return;
        }
        st.dispatching = true;
        while st.in_flight < self.credits && !self.closed.load(Ordering::Acquire) {
            let Some(next) = st.held.pop_front() else { break };
            st.in_flight += 1;
            drop(st);
            self.dispatch(next.id, next.request, &next.service);
            st = self.state.lock();
        }
        st.dispatching = false;
    }
}

impl ReplySink for Channel {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn reply(&self, id: u64, payload: &[u8]) {
        // Not under the lock of `pending`: returning the credit takes the credits' lock, which
        // `call` holds while it takes this one.
        let completer = self.pending.lock().remove(&id);
        if let Some(c) = completer {
            if payload.is_empty() {
                c.complete(Err(FabricError::Protocol(ProtocolError::Dropped)));
            } else {
                c.complete(Ok(payload.to_vec()));
            }
            self.return_credit();
        }
    }
}
