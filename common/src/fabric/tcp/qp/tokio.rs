//! [`AsyncTcpQueuePair`]: the [`QpCore`] driven on the caller's tokio runtime.
//!
//! One driver task per queue pair, spawned on the runtime that connects it, owns the socket's
//! I/O. Posting only encodes into the core and, if the driver has not been told yet, wakes it:
//! the "doorbell". The driver writes everything posted since its last turn in one `write` (on a
//! busy client, the posts of many tasks share one syscall) and reads and decodes whatever has
//! arrived, resolving completions on the runtime's own thread. A task awaiting a completion is
//! therefore woken without any cross-thread hand-off on a current-thread runtime, which is what
//! the software NIC lacked against a memcached client (a reader thread per queue pair, and a
//! futex wake per completion).
//!
//! Backpressure: the send queue's depth bounds the work requests in flight, as on every backend;
//! and while more than the high-water mark of output waits for the socket, posts are refused with
//! [`FabricError::QueueFull`] (an async post cannot block the thread).
//!
//! If the runtime shuts down while the queue pair lives, the driver's drop resolves every pending
//! completion ([`Disconnect::Abandoned`]) and later posts fail at once.
//!
//! A failed `write` stops sending but not reading: the server usually closed the connection after
//! saying why (a failed work request's completion), and the queue pair ends when the driver has
//! read that, with the server's reason.

use super::core::{QpCore, Reaped};
use super::{connect_and_handshake, resolve, ConnectOptions, Waiter, KEEP_TX_CAPACITY, TX_HIGH_WATER};
use crate::fabric::tcp::buf::InBuf;
use crate::fabric::{
    completion, Completion, Disconnect, FabricError, LocalKey, MemoryRegion, QueuePair, WorkCompletion, WorkRequest,
};
use parking_lot::Mutex;
use std::future::Future;
use std::io;
use std::net::{Shutdown, SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use tokio::net::TcpStream;

/// Work the driver does per turn before it yields to the runtime's other tasks.
const TURNS_PER_POLL: usize = 32;

struct State {
    core: QpCore<Waiter>,
    /// The driver's waker, once it has been polled.
    driver: Option<Waker>,
    /// The driver has been told about output since it last took the core's output.
    doorbell_rung: bool,
    /// The handle was dropped: the driver ends the connection.
    closed: bool,
}

struct Shared {
    stream: TcpStream,
    state: Mutex<State>,
}

/// A queue pair to a software NIC, driven by a task on the tokio runtime that connected it.
pub struct AsyncTcpQueuePair {
    shared: Arc<Shared>,
    peer: SocketAddr,
    /// What the server granted as its largest message.
    max_message: usize,
}

impl AsyncTcpQueuePair {
    /// Connects to a NIC at `addr` with `opts`, and starts the queue pair's driver on the current
    /// tokio runtime (the runtime must have I/O enabled). The connection and handshake block the
    /// calling thread, up to `opts.timeout` each. Outside a runtime: [`FabricError::NoRuntime`].
    pub fn connect_with(addr: impl ToSocketAddrs, opts: &ConnectOptions) -> Result<AsyncTcpQueuePair, FabricError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| FabricError::NoRuntime)?;
        let (stream, input, grant) = connect_and_handshake(addr, opts)?;
        let peer = stream.peer_addr()?;
        stream.set_nonblocking(true)?;
        let stream = {
            let _entered = runtime.enter();
            TcpStream::from_std(stream)?
        };
        let shared = Arc::new(Shared {
            stream,
            state: Mutex::new(State {
                core: QpCore::new(opts.send_queue_depth, grant),
                driver: None,
                doorbell_rung: false,
                closed: false,
            }),
        });
        let driver = Driver {
            shared: shared.clone(),
            input,
            out: Vec::new(),
            written: 0,
            reaped: Vec::new(),
            send_failed: false,
        };
        runtime.spawn(driver);
        Ok(AsyncTcpQueuePair { shared, peer, max_message: grant.max_message as usize })
    }

    /// Connects to a NIC at `addr` with default options (see [`connect_with`](Self::connect_with)).
    pub fn connect(addr: impl ToSocketAddrs) -> Result<AsyncTcpQueuePair, FabricError> {
        Self::connect_with(addr, &ConnectOptions::default())
    }

    /// The NIC's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Lets `post` encode into the core and rings the doorbell. A refusal comes back as the
    /// post's error, and nothing was sent.
    fn send<T>(
        &self,
        token: T,
        post: impl FnOnce(&mut QpCore<Waiter>, T) -> Result<(), (T, FabricError)>,
    ) -> Result<(), (T, FabricError)> {
        let waker = {
            let mut st = self.shared.state.lock();
            if st.core.pending_output() >= TX_HIGH_WATER {
                return Err((token, FabricError::QueueFull));
            }
            post(&mut st.core, token)?;
            if st.doorbell_rung {
                None
            } else {
                st.doorbell_rung = true;
                st.driver.clone()
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }
}

impl QueuePair for AsyncTcpQueuePair {
    fn post(&self, chain: &[WorkRequest<'_>]) -> Completion<Vec<u8>> {
        let (completer, done) = completion();
        if let Err((completer, e)) = self.send(completer, |core, c| core.post_chain(chain, c)) {
            completer.complete(Err(e));
        }
        done
    }

    fn post_unsignaled(&self, chain: &[WorkRequest<'_>]) -> Result<(), FabricError> {
        self.send((), |core, ()| core.post_unsignaled(chain).map_err(|e| ((), e))).map_err(|((), e)| e)
    }

    fn call(&self, request: &[u8]) -> Completion<Vec<u8>> {
        let (completer, done) = completion();
        if let Err((completer, e)) = self.send(completer, |core, c| core.post_call(request, c)) {
            completer.complete(Err(e));
        }
        done
    }

    fn max_message(&self) -> usize {
        self.max_message
    }

    fn async_errors(&self) -> u64 {
        self.shared.state.lock().core.async_errors()
    }

    fn register_local(&self, region: Arc<MemoryRegion>) -> Result<LocalKey, FabricError> {
        self.shared.state.lock().core.register_local(region)
    }

    fn post_signaled(&self, wr_id: u64, chain: &[WorkRequest<'_>]) -> Result<(), FabricError> {
        self.send((), |core, ()| core.post_signaled(wr_id, chain).map_err(|e| ((), e))).map_err(|((), e)| e)
    }

    fn poll_cq(&self, out: &mut Vec<WorkCompletion>, max: usize) -> usize {
        self.shared.state.lock().core.poll_cq(out, max)
    }

    fn arm_cq(&self, waker: &Waker) {
        let ready = self.shared.state.lock().core.arm_cq(waker);
        if let Some(w) = ready {
            w.wake();
        }
    }
}

impl Drop for AsyncTcpQueuePair {
    /// Closes the connection at once (not when the driver next runs: the runtime may be blocked
    /// by the very thread dropping this), then lets the driver resolve what is pending and end.
    fn drop(&mut self) {
        let waker = {
            let mut st = self.shared.state.lock();
            st.closed = true;
            st.driver.take()
        };
        let _ = socket2::SockRef::from(&self.shared.stream).shutdown(Shutdown::Both);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The task that moves a queue pair's bytes.
struct Driver {
    shared: Arc<Shared>,
    input: InBuf,
    /// Output taken from the core, written up to `written`.
    out: Vec<u8>,
    written: usize,
    reaped: Vec<Reaped<Waiter>>,
    /// A `write` failed: output is discarded from now on.
    send_failed: bool,
}

/// What one step of the driver did.
enum Step {
    Progress,
    Idle,
    /// The queue pair is dead: the driver ends.
    Done,
}

impl Driver {
    /// Ends the queue pair with `why` (the core keeps the first reason), resolves everything
    /// pending and shuts the socket down.
    fn fail(&mut self, why: FabricError) {
        let cq_wake = {
            let mut st = self.shared.state.lock();
            st.core.fail(why, &mut self.reaped);
            st.core.take_cq_wake()
        };
        resolve(&mut self.reaped, cq_wake);
        let _ = socket2::SockRef::from(&self.shared.stream).shutdown(Shutdown::Both);
    }

    /// A `write` failed: nothing more is sent, and the write side is shut down (a server that is
    /// still there then closes too, so reading always ends).
    fn stop_sending(&mut self) {
        self.send_failed = true;
        self.out.clear();
        self.written = 0;
        let _ = socket2::SockRef::from(&self.shared.stream).shutdown(Shutdown::Write);
    }

    /// Writes what the core has for the socket, as far as the socket takes it.
    fn write_step(&mut self, cx: &mut Context<'_>) -> Step {
        if self.written == self.out.len() {
            let mut st = self.shared.state.lock();
            st.doorbell_rung = false;
            if self.send_failed {
                st.core.take_output(Vec::new());
                return Step::Idle;
            }
            if st.core.pending_output() == 0 {
                return Step::Idle;
            }
            let mut spare = std::mem::take(&mut self.out);
            if spare.capacity() > KEEP_TX_CAPACITY {
                spare = Vec::new();
            }
            self.out = st.core.take_output(spare);
            self.written = 0;
        }
        match self.shared.stream.poll_write_ready(cx) {
            Poll::Pending => Step::Idle,
            Poll::Ready(Err(_)) => {
                self.stop_sending();
                Step::Progress
            }
            Poll::Ready(Ok(())) => match self.shared.stream.try_write(&self.out[self.written..]) {
                Ok(n) => {
                    self.written += n;
                    Step::Progress
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Step::Progress,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => Step::Progress,
                Err(_) => {
                    self.stop_sending();
                    Step::Progress
                }
            },
        }
    }

    /// Reads what has arrived and feeds it to the core.
    fn read_step(&mut self, cx: &mut Context<'_>) -> Step {
        match self.shared.stream.poll_read_ready(cx) {
            Poll::Pending => Step::Idle,
            Poll::Ready(Err(e)) => {
                self.fail(FabricError::Disconnected(Disconnect::Receive(e.kind())));
                Step::Done
            }
            Poll::Ready(Ok(())) => {
                let stream = &self.shared.stream;
                match self.input.read_with(|buf| stream.try_read(buf)) {
                    Ok(0) => {
                        self.fail(FabricError::Disconnected(Disconnect::PeerClosed));
                        Step::Done
                    }
                    Ok(_) => {
                        let (dead, cq_wake) = {
                            let mut st = self.shared.state.lock();
                            let consumed = st.core.receive(self.input.data(), &mut self.reaped);
                            self.input.consume(consumed);
                            (st.core.dead().is_some(), st.core.take_cq_wake())
                        };
                        resolve(&mut self.reaped, cq_wake);
                        if dead {
                            let _ = socket2::SockRef::from(&self.shared.stream).shutdown(Shutdown::Both);
                            return Step::Done;
                        }
                        Step::Progress
                    }
                    Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {
                        Step::Progress
                    }
                    Err(e) => {
                        self.fail(FabricError::Disconnected(Disconnect::Receive(e.kind())));
                        Step::Done
                    }
                }
            }
        }
    }
}

impl Future for Driver {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        {
            let mut st = this.shared.state.lock();
            if st.closed {
                drop(st);
                this.fail(FabricError::Disconnected(Disconnect::Closed));
                return Poll::Ready(());
            }
            if !st.driver.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                st.driver = Some(cx.waker().clone());
            }
        }
        for _ in 0..TURNS_PER_POLL {
            let wrote = this.write_step(cx);
            let read = this.read_step(cx);
            match (wrote, read) {
                (Step::Done, _) | (_, Step::Done) => return Poll::Ready(()),
                (Step::Idle, Step::Idle) => return Poll::Pending,
                _ => {}
            }
        }
        // Busy: let the runtime's other tasks (the ones awaiting these completions) run first.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Ended normally, this finds nothing pending; dropped by a runtime shutting down, it
        // resolves what is pending and makes later posts fail instead of waiting forever.
        let cq_wake = {
            let mut st = self.shared.state.lock();
            st.core.fail(FabricError::Disconnected(Disconnect::Abandoned), &mut self.reaped);
            st.core.take_cq_wake()
        };
        resolve(&mut self.reaped, cq_wake);
    }
}
