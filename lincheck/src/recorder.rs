//! Recording a history from concurrent clients.

use crate::history::{Call, Op, Outcome, Ret};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Collects operations from many threads or tasks. Times come from one logical clock: each
/// invocation and return takes a distinct, increasing tick, so an operation that returned before
/// another was invoked (in real time) has a smaller return time than the other's invocation.
#[derive(Debug, Default)]
pub struct Recorder {
    clock: AtomicU64,
    ops: Mutex<Vec<Op>>,
}

impl Recorder {
    pub fn new() -> Arc<Recorder> {
        Arc::new(Recorder::default())
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst)
    }

    /// Records the invocation of `call` on `key` by `client`; finish it with
    /// [`InFlight::returned`]. Dropped unfinished (a cancelled future, a panicking client), it
    /// is recorded with an unknown outcome.
    pub fn invoke(self: &Arc<Self>, client: u32, key: &[u8], call: Call) -> InFlight {
        let invoked = self.tick();
        InFlight {
            recorder: self.clone(),
            op: Some(Op { client, key: key.to_vec(), call, invoked, outcome: Outcome::Unknown }),
        }
    }

    /// The operations recorded so far (finished or abandoned).
    pub fn history(&self) -> Vec<Op> {
        self.ops.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn push(&self, op: Op) {
        self.ops.lock().unwrap_or_else(PoisonError::into_inner).push(op);
    }
}

/// An operation invoked and not yet finished.
#[derive(Debug)]
pub struct InFlight {
    recorder: Arc<Recorder>,
    op: Option<Op>,
}

impl InFlight {
    /// It returned `ret` (now).
    pub fn returned(mut self, ret: Ret) {
        if let Some(mut op) = self.op.take() {
            op.outcome = Outcome::Returned { at: self.recorder.tick(), ret };
            self.recorder.push(op);
        }
    }

    /// Its outcome is unknown (a timeout or transport error): it may or may not take effect.
    pub fn unknown(mut self) {
        if let Some(op) = self.op.take() {
            self.recorder.push(op);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(op) = self.op.take() {
            self.recorder.push(op);
        }
    }
}
