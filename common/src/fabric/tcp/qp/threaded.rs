//! [`TcpQueuePair`]: the [`QpCore`] driven by plain threads, for callers without an async
//! runtime.
//!
//! * Posting encodes the frames into the core under a lock. Writer combining: if no other poster
//!   is writing, this one writes the output out (lock released during the `write`) and keeps
//!   writing until the output stays empty; otherwise it only appends and returns, and the
//!   writing poster carries its frames in its next `write`. A whole chain is encoded at once, so
//!   it goes out in one `write`.
//! * One reader thread per queue pair feeds received bytes to the core and resolves the
//!   completions it reaps (outside the lock).
//! * When the core reports the queue pair dead (the error state, or a lost connection), the
//!   socket is shut down; every pending completion has been resolved with the reason, and later
//!   posts fail at once with it.
//! * A failed `write` does not end the queue pair by itself: the server usually closed the
//!   connection after saying why (a failed work request's completion), and that is still to be
//!   read. Sending stops (output is discarded, the write side shut down), and the reader ends the
//!   queue pair when it has read everything, with the server's reason if it gave one.

use super::core::QpCore;
use super::{connect_and_handshake, resolve, ConnectOptions, Waiter, KEEP_TX_CAPACITY, TX_HIGH_WATER};
use crate::fabric::tcp::buf::InBuf;
use crate::fabric::{
    completion, Completion, Disconnect, FabricError, LocalKey, MemoryRegion, QueuePair, WorkCompletion, WorkRequest,
};
use parking_lot::{Condvar, Mutex, MutexGuard};
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

struct State {
    core: QpCore<Waiter>,
    /// A poster is writing: others only append.
    writing: bool,
    /// The other output buffer, handed to the core while one is being written.
    spare: Vec<u8>,
    /// A `write` failed: nothing more is sent.
    send_failed: Option<io::ErrorKind>,
}

struct Inner {
    stream: TcpStream,
    state: Mutex<State>,
    tx_space: Condvar,
}

/// A queue pair to a software NIC, driven by a reader thread of its own.
pub struct TcpQueuePair {
    inner: Arc<Inner>,
    reader: Option<JoinHandle<()>>,
    peer: SocketAddr,
    /// What the server granted as its largest message.
    max_message: usize,
}

impl TcpQueuePair {
    /// Connects to a NIC at `addr` (waiting up to [`DEFAULT_CONNECT_TIMEOUT`](super::DEFAULT_CONNECT_TIMEOUT)).
    pub fn connect(addr: impl ToSocketAddrs) -> Result<TcpQueuePair, FabricError> {
        Self::connect_with(addr, &ConnectOptions::default())
    }

    /// Connects to a NIC at `addr`, giving up on the connection and on the handshake after
    /// `timeout` each.
    pub fn connect_timeout(addr: impl ToSocketAddrs, timeout: Duration) -> Result<TcpQueuePair, FabricError> {
        Self::connect_with(addr, &ConnectOptions { timeout, ..ConnectOptions::default() })
    }

    /// Connects to a NIC at `addr` with `opts`.
    pub fn connect_with(addr: impl ToSocketAddrs, opts: &ConnectOptions) -> Result<TcpQueuePair, FabricError> {
        let (stream, input, grant) = connect_and_handshake(addr, opts)?;
        let peer = stream.peer_addr()?;
        let read_half = stream.try_clone()?;
        let inner = Arc::new(Inner {
            stream,
            state: Mutex::new(State {
                core: QpCore::new(opts.send_queue_depth, grant),
                writing: false,
                spare: Vec::new(),
                send_failed: None,
            }),
            tx_space: Condvar::new(),
        });
        let reader_inner = inner.clone();
        let reader = std::thread::Builder::new()
            .name("softnic-qp".into())
            .spawn(move || reader_inner.read_loop(read_half, input))?;
        Ok(TcpQueuePair { inner, reader: Some(reader), peer, max_message: grant.max_message as usize })
    }

    /// The NIC's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }
}

impl Inner {
    /// Ends the queue pair with `why` (unless it already ended): resolves every pending
    /// completion and closes the socket (which also stops the reader thread).
    fn fail(&self, why: FabricError) {
        let mut reaped = Vec::new();
        let cq_wake = {
            let mut st = self.state.lock();
            st.core.fail(why, &mut reaped);
            // Under the lock, so that a poster cannot miss the wake between its check and its wait.
            self.tx_space.notify_all();
            st.core.take_cq_wake()
        };
        resolve(&mut reaped, cq_wake);
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Lets `post` encode into the core, then sees the output written (by this poster or by the
    /// one writing). A refusal comes back as the post's error, and nothing was sent. Once
    /// accepted, a post's fate is its completion's (as on verbs, where a post into a queue pair
    /// that is about to fail succeeds): a failed `write` shows there, not here.
    fn send<E>(&self, post: impl FnOnce(&mut QpCore<Waiter>) -> Result<(), E>) -> Result<(), E> {
        let mut st = self.state.lock();
        while st.writing && st.core.pending_output() >= TX_HIGH_WATER && st.core.dead().is_none() {
            self.tx_space.wait(&mut st);
        }
        post(&mut st.core)?;
        if st.writing {
            return Ok(());
        }
        if st.send_failed.is_some() {
            st.core.take_output(Vec::new());
            return Ok(());
        }
        st.writing = true;
        let written = self.write_out(&mut st);
        st.writing = false;
        if let Err(e) = written {
            // This post, and everything pending, completes when the reader has read what the
            // server sent before the connection failed.
            self.stop_sending(&mut st, e.kind());
        }
        Ok(())
    }

    /// A `write` failed: discards the output, sends nothing more, and shuts the write side down
    /// (a server that is still there then closes too, so the reader always ends).
    fn stop_sending(&self, st: &mut State, kind: io::ErrorKind) {
        st.send_failed = Some(kind);
        st.core.take_output(Vec::new());
        self.tx_space.notify_all();
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// Writes the core's output until it stays empty, with the lock released during each write.
    fn write_out(&self, st: &mut MutexGuard<'_, State>) -> io::Result<()> {
        while st.core.pending_output() > 0 {
            let spare = std::mem::take(&mut st.spare);
            let mut batch = st.core.take_output(spare);
            let r = MutexGuard::unlocked(st, || (&self.stream).write_all(&batch));
            batch.clear();
            if batch.capacity() <= KEEP_TX_CAPACITY {
                st.spare = batch;
            }
            self.tx_space.notify_all();
            r?;
        }
        Ok(())
    }

    fn read_loop(&self, mut stream: TcpStream, mut input: InBuf) {
        let mut reaped = Vec::new();
        let why = loop {
            let (dead, cq_wake) = {
                let mut st = self.state.lock();
                let consumed = st.core.receive(input.data(), &mut reaped);
                input.consume(consumed);
                // Replies returned credits, and RPCs held for them are now in the output: with
                // no poster writing, they go out from here.
                if st.send_failed.is_some() {
                    st.core.take_output(Vec::new());
                } else if st.core.pending_output() > 0 && !st.writing && st.core.dead().is_none() {
                    st.writing = true;
                    let r = self.write_out(&mut st);
                    st.writing = false;
                    if let Err(e) = r {
                        self.stop_sending(&mut st, e.kind());
                    }
                }
                (st.core.dead().cloned(), st.core.take_cq_wake())
            };
            resolve(&mut reaped, cq_wake);
            if let Some(why) = dead {
                break why;
            }
            match input.read_from(&mut stream) {
                Ok((0, _)) => break FabricError::Disconnected(Disconnect::PeerClosed),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break FabricError::Disconnected(Disconnect::Receive(e.kind())),
            }
        };
        self.fail(why);
    }
}

impl QueuePair for TcpQueuePair {
    fn post(&self, chain: &[WorkRequest<'_>]) -> Completion<Vec<u8>> {
        let (completer, done) = completion();
        if let Err((completer, e)) = self.inner.send(|core| core.post_chain(chain, completer)) {
            completer.complete(Err(e));
        }
        done
    }

    fn post_unsignaled(&self, chain: &[WorkRequest<'_>]) -> Result<(), FabricError> {
        self.inner.send(|core| core.post_unsignaled(chain))
    }

    fn call(&self, request: &[u8]) -> Completion<Vec<u8>> {
        let (completer, done) = completion();
        if let Err((completer, e)) = self.inner.send(|core| core.post_call(request, completer)) {
            completer.complete(Err(e));
        }
        done
    }

    fn max_message(&self) -> usize {
        self.max_message
    }

    fn async_errors(&self) -> u64 {
        self.inner.state.lock().core.async_errors()
    }

    fn register_local(&self, region: Arc<MemoryRegion>) -> Result<LocalKey, FabricError> {
        self.inner.state.lock().core.register_local(region)
    }

    fn post_signaled(&self, wr_id: u64, chain: &[WorkRequest<'_>]) -> Result<(), FabricError> {
        self.inner.send(|core| core.post_signaled(wr_id, chain))
    }

    fn poll_cq(&self, out: &mut Vec<WorkCompletion>, max: usize) -> usize {
        self.inner.state.lock().core.poll_cq(out, max)
    }

    fn arm_cq(&self, waker: &std::task::Waker) {
        let ready = self.inner.state.lock().core.arm_cq(waker);
        if let Some(w) = ready {
            w.wake();
        }
    }
}

impl Drop for TcpQueuePair {
    fn drop(&mut self) {
        self.inner.fail(FabricError::Disconnected(Disconnect::Closed));
        if let Some(reader) = self.reader.take() {
            if reader.thread().id() != std::thread::current().id() {
                let _ = reader.join();
            }
        }
    }
}
