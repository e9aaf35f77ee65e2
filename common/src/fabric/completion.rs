//! A one-shot completion: the fabric's answer to a posted work request or an RPC call.
//!
//! It is runtime-agnostic: await it from any async executor, or [`Completion::wait`] on it from
//! a plain thread. If the [`Completer`] is dropped without completing (the connection went
//! away), the completion resolves to [`FabricError::Disconnected`].

use super::{Disconnect, FabricError};
use parking_lot::{Condvar, Mutex};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

enum State<T> {
    Waiting(Option<Waker>),
    Done(Result<T, FabricError>),
    Taken,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

/// The receiving half.
pub struct Completion<T> {
    shared: Arc<Shared<T>>,
}

/// The sending half, held by the backend until the work is done.
pub struct Completer<T> {
    shared: Option<Arc<Shared<T>>>,
}

/// A new completion and the completer that resolves it.
pub fn completion<T>() -> (Completer<T>, Completion<T>) {
    let shared = Arc::new(Shared { state: Mutex::new(State::Waiting(None)), ready: Condvar::new() });
    (Completer { shared: Some(shared.clone()) }, Completion { shared })
}

impl<T> Completion<T> {
    /// A completion that is already resolved.
    pub fn ready(result: Result<T, FabricError>) -> Completion<T> {
        let (c, f) = completion();
        c.complete(result);
        f
    }

    /// Blocks the calling thread until the completion resolves.
    pub fn wait(self) -> Result<T, FabricError> {
        let mut st = self.shared.state.lock();
        loop {
            match std::mem::replace(&mut *st, State::Taken) {
                State::Done(r) => return r,
                State::Waiting(w) => {
                    *st = State::Waiting(w);
                    self.shared.ready.wait(&mut st);
                }
                State::Taken => panic!("completion polled after it resolved"),
            }
        }
    }

    /// Like [`wait`](Self::wait) but gives up after `timeout`.
    pub fn wait_timeout(self, timeout: Duration) -> Result<T, FabricError> {
        let deadline = std::time::Instant::now() + timeout;
        let mut st = self.shared.state.lock();
        loop {
            match std::mem::replace(&mut *st, State::Taken) {
                State::Done(r) => return r,
                State::Waiting(w) => {
                    *st = State::Waiting(w);
                    if self.shared.ready.wait_until(&mut st, deadline).timed_out() {
                        if let State::Done(_) = &*st {
                            continue;
                        }
                        return Err(FabricError::Timeout);
                    }
                }
                State::Taken => panic!("completion polled after it resolved"),
            }
        }
    }

    /// Whether it has resolved (without taking the result).
    pub fn is_done(&self) -> bool {
        matches!(&*self.shared.state.lock(), State::Done(_))
    }
}

impl<T> Future for Completion<T> {
    type Output = Result<T, FabricError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut st = self.shared.state.lock();
        match std::mem::replace(&mut *st, State::Taken) {
            State::Done(r) => Poll::Ready(r),
            State::Waiting(w) => {
                let w = match w {
                    Some(w) if w.will_wake(cx.waker()) => w,
                    _ => cx.waker().clone(),
                };
                *st = State::Waiting(Some(w));
                Poll::Pending
            }
            State::Taken => panic!("completion polled after it resolved"),
        }
    }
}

impl<T> Completer<T> {
    /// Resolves the completion.
    pub fn complete(mut self, result: Result<T, FabricError>) {
        if let Some(shared) = self.shared.take() {
            resolve(&shared, result);
        }
    }
}

fn resolve<T>(shared: &Shared<T>, result: Result<T, FabricError>) {
    let waker = {
        let mut st = shared.state.lock();
        match std::mem::replace(&mut *st, State::Done(result)) {
            State::Waiting(w) => w,
            // Already resolved: keep the first result.
            other => {
                *st = other;
                None
            }
        }
    };
    shared.ready.notify_all();
    if let Some(w) = waker {
        w.wake();
    }
}

impl<T> Drop for Completer<T> {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            resolve(&shared, Err(FabricError::Disconnected(Disconnect::Abandoned)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_gets_the_result_from_another_thread() {
        let (c, f) = completion::<u32>();
        std::thread::spawn(move || c.complete(Ok(7)));
        assert_eq!(f.wait().unwrap(), 7);
    }

    #[test]
    fn dropped_completer_means_disconnected() {
        let (c, f) = completion::<u32>();
        drop(c);
        assert_eq!(f.wait(), Err(FabricError::Disconnected(Disconnect::Abandoned)));
    }

    #[test]
    fn wait_timeout_expires() {
        let (_c, f) = completion::<u32>();
        assert_eq!(f.wait_timeout(Duration::from_millis(10)), Err(FabricError::Timeout));
    }
}
