//! The client side: a [`QueuePair`] over one TCP connection to a [`TcpNic`](super::TcpNic).
//!
//! * Posting encodes the frames into a shared output buffer under a lock. Writer combining: if
//!   no other poster is writing, this one writes the buffer out (lock released during the
//!   `write`) and keeps writing until the buffer stays empty; otherwise it only appends and
//!   returns, and the writing poster carries its frames in its next `write`. A whole chain is
//!   appended at once, so it goes out in one `write`.
//! * One reader thread per queue pair decodes the server's frames and resolves the completions,
//!   kept in a slab keyed by request id (the id on the wire).
//! * When a work request fails, the queue pair enters the error state (as on RC): the failing
//!   chain completes with [`FabricError::Remote`], everything pending and everything posted later
//!   with [`FabricError::Flushed`]; the server executes nothing after the failure and closes the
//!   connection. When the connection is lost, every pending completion resolves to
//!   [`FabricError::Disconnected`] and later posts fail at once with it.
//!
//! It needs no async runtime: completions can be awaited from any executor or waited on.

use super::buf::{InBuf, Slab};
use super::wire::{self, ChainStatus, ServerFrame, WrFlags};
use crate::fabric::{
    completion, validate_chain, Completer, Completion, Disconnect, FabricError, ProtocolError, QueuePair, Secret,
    SendQueue, WorkRequest, DEFAULT_SEND_QUEUE_DEPTH, MAX_TRANSFER,
};
use parking_lot::{Condvar, Mutex, MutexGuard};
use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Connect (and handshake) timeout of [`TcpQueuePair::connect`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The chain id of unsignaled chains that selective signaling posted signaled: their completion
/// only frees send-queue slots (no waiter has this id).
const INTERNAL_CHAIN: u32 = u32::MAX;
/// Posters wait while this many bytes are queued behind a `write` in progress.
const TX_HIGH_WATER: usize = 16 << 20;
/// A spare output buffer that grew past this is given back.
const KEEP_TX_CAPACITY: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chain,
    Rpc,
}

struct Waiter {
    kind: Kind,
    completer: Completer<Vec<u8>>,
}

struct Pending {
    waiters: Slab<Waiter>,
    /// Why the connection is gone, once it is.
    dead: Option<FabricError>,
}

struct Tx {
    /// The send queue's slots, taken here, where frames get their place on the wire, so that
    /// sequence numbers follow wire order.
    sq: SendQueue,
    /// Where each signaled chain on the wire ends, in wire order: their completions come back in
    /// that order and retire the slots up to there.
    signaled_ends: VecDeque<u64>,
    /// Frames waiting for a `write`.
    buf: Vec<u8>,
    /// The other buffer, swapped in while `buf` is being written.
    spare: Vec<u8>,
    /// A poster is writing: others only append.
    writing: bool,
}

struct Inner {
    stream: TcpStream,
    tx: Mutex<Tx>,
    tx_space: Condvar,
    pending: Mutex<Pending>,
    dead: AtomicBool,
    async_errors: AtomicU64,
}

/// A queue pair to a software NIC.
pub struct TcpQueuePair {
    inner: Arc<Inner>,
    reader: Option<JoinHandle<()>>,
    peer: SocketAddr,
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

/// Interprets one server frame (sans-IO: the reader thread only applies the result).
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

fn timeout_or_io(e: io::Error) -> FabricError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => FabricError::Timeout,
        _ => FabricError::Io(e.kind()),
    }
}

/// Exchanges HELLOs. Returns the bytes received after the server's HELLO.
fn handshake(stream: &mut TcpStream, opts: &ConnectOptions) -> Result<InBuf, FabricError> {
    stream.set_read_timeout(Some(opts.timeout))?;
    let mut hello = Vec::with_capacity(wire::HELLO_LEN + wire::MAX_SECRET);
    wire::encode_hello(&mut hello, wire::VERSION, opts.secret.as_ref().map_or(&[], Secret::as_bytes));
    stream.write_all(&hello).map_err(timeout_or_io)?;
    let mut input = InBuf::new();
    loop {
        match wire::decode_hello(input.data()) {
            Ok(Some((h, n))) if h.version == wire::VERSION => {
                input.consume(n);
                break;
            }
            Ok(Some((h, _))) => {
                return Err(FabricError::Protocol(ProtocolError::Version { server: h.version, client: wire::VERSION }))
            }
            Ok(None) => {}
            // Not a HELLO: perhaps the server's ERROR frame saying why it refuses us.
            Err(e) => match wire::decode_server_frame(input.data()) {
                Ok(Some((ServerFrame::Error { code, message }, _))) => {
                    tracing::debug!(%code, message, "the server refused the handshake");
                    return Err(FabricError::Refused(code));
                }
                Ok(None) => {}
                _ => {
                    tracing::debug!(error = %e, "bad HELLO from the server");
                    return Err(FabricError::Protocol(ProtocolError::BadHandshake));
                }
            },
        }
        match input.read_from(stream) {
            Ok((0, _)) => return Err(FabricError::Disconnected(Disconnect::PeerClosed)),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(timeout_or_io(e)),
        }
    }
    stream.set_read_timeout(None)?;
    Ok(input)
}

/// How [`TcpQueuePair::connect_with`] connects.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Gives up on the connection, and then on the handshake, after this long each.
    pub timeout: Duration,
    /// The NIC's shared secret, if it has one.
    pub secret: Option<Secret>,
    /// Slots of the queue pair's send queue (work requests posted and not yet known complete).
    pub send_queue_depth: u32,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions { timeout: DEFAULT_CONNECT_TIMEOUT, secret: None, send_queue_depth: DEFAULT_SEND_QUEUE_DEPTH }
    }
}

impl TcpQueuePair {
    /// Connects to a NIC at `addr` (waiting up to [`DEFAULT_CONNECT_TIMEOUT`]).
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
        let mut last = FabricError::NoAddress;
        for a in addr.to_socket_addrs()? {
            match TcpStream::connect_timeout(&a, opts.timeout) {
                Ok(stream) => return Self::start(stream, opts),
                Err(e) => last = timeout_or_io(e),
            }
        }
        Err(last)
    }

    fn start(mut stream: TcpStream, opts: &ConnectOptions) -> Result<TcpQueuePair, FabricError> {
        stream.set_nodelay(true)?;
        let peer = stream.peer_addr()?;
        let input = handshake(&mut stream, opts)?;
        let read_half = stream.try_clone()?;
        let inner = Arc::new(Inner {
            stream,
            tx: Mutex::new(Tx {
                sq: SendQueue::new(opts.send_queue_depth),
                signaled_ends: VecDeque::new(),
                buf: Vec::new(),
                spare: Vec::new(),
                writing: false,
            }),
            tx_space: Condvar::new(),
            pending: Mutex::new(Pending { waiters: Slab::default(), dead: None }),
            dead: AtomicBool::new(false),
            async_errors: AtomicU64::new(0),
        });
        let reader_inner = inner.clone();
        let reader = std::thread::Builder::new()
            .name("softnic-qp".into())
            .spawn(move || reader_inner.read_loop(read_half, input))?;
        Ok(TcpQueuePair { inner, reader: Some(reader), peer })
    }

    /// The NIC's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }
}

impl Inner {
    fn death(&self) -> FabricError {
        self.pending.lock().dead.clone().unwrap_or(FabricError::Disconnected(Disconnect::PeerClosed))
    }

    /// Marks the connection dead with `why`, resolves every pending completion with it, and
    /// closes the socket (which also stops the reader thread).
    fn fail(&self, why: FabricError) {
        let waiters: Vec<Waiter> = {
            let mut p = self.pending.lock();
            if p.dead.is_none() {
                p.dead = Some(why);
            }
            self.dead.store(true, Ordering::Release);
            p.waiters.drain().collect()
        };
        let why = self.death();
        for w in waiters {
            w.completer.complete(Err(why.clone()));
        }
        // Under the lock, so that a poster cannot miss the wake between its check and its wait.
        let tx = self.tx.lock();
        self.tx_space.notify_all();
        drop(tx);
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// A pending completion and its request id.
    fn register(&self, kind: Kind) -> Result<(u64, Completion<Vec<u8>>), FabricError> {
        let (completer, completion) = completion();
        let mut p = self.pending.lock();
        if let Some(e) = &p.dead {
            return Err(e.clone());
        }
        let key = p.waiters.insert(Waiter { kind, completer });
        debug_assert!(key < INTERNAL_CHAIN as usize);
        Ok((key as u64, completion))
    }

    /// Forgets a waiter whose request was never sent.
    fn unregister(&self, key: u64) {
        if let Ok(k) = usize::try_from(key) {
            self.pending.lock().waiters.remove(k);
        }
    }

    /// Appends frames with `encode` and sees them written (by this poster or by the one writing).
    /// `slots`: the chain's work requests and whether it is signaled, for the send queue; the
    /// encoder is told whether to post it signaled (selective signaling may turn an unsignaled
    /// chain signaled). Fails with [`FabricError::QueueFull`] when the send queue is full.
    fn send(&self, slots: Option<(usize, bool)>, encode: impl FnOnce(&mut Vec<u8>, bool)) -> Result<(), FabricError> {
        let mut tx = self.tx.lock();
        while tx.writing && tx.buf.len() >= TX_HIGH_WATER && !self.dead.load(Ordering::Acquire) {
            self.tx_space.wait(&mut tx);
        }
        if self.dead.load(Ordering::Acquire) {
            drop(tx);
            return Err(self.death());
        }
        let signaled = match slots {
            Some((n, signaled)) => {
                let posted = tx.sq.take(n, signaled)?;
                if posted.signaled {
                    tx.signaled_ends.push_back(posted.end);
                }
                posted.signaled
            }
            None => false,
        };
        encode(&mut tx.buf, signaled);
        if tx.writing {
            return Ok(());
        }
        tx.writing = true;
        let result = self.write_out(&mut tx);
        tx.writing = false;
        drop(tx);
        result.map_err(|e| {
            self.fail(FabricError::Disconnected(Disconnect::Send(e.kind())));
            self.death()
        })
    }

    /// Writes the output buffer until it stays empty, with the lock released during each write.
    fn write_out(&self, tx: &mut MutexGuard<'_, Tx>) -> io::Result<()> {
        while !tx.buf.is_empty() {
            let mut batch = std::mem::take(&mut tx.spare);
            std::mem::swap(&mut batch, &mut tx.buf);
            let r = MutexGuard::unlocked(tx, || (&self.stream).write_all(&batch));
            batch.clear();
            if batch.capacity() <= KEEP_TX_CAPACITY {
                tx.spare = batch;
            }
            self.tx_space.notify_all();
            if let Err(e) = r {
                tx.buf.clear();
                return Err(e);
            }
        }
        Ok(())
    }

    fn read_loop(&self, mut stream: TcpStream, mut input: InBuf) {
        let why = loop {
            let mut consumed = 0;
            let stop = loop {
                match wire::decode_server_frame(&input.data()[consumed..]) {
                    Ok(Some((frame, n))) => {
                        consumed += n;
                        if let ServerFrame::ChainDone { unsignaled: false, .. } = frame {
                            self.retire_signaled();
                        }
                        if let Err(e) = self.apply(interpret(frame)) {
                            break Some(e);
                        }
                    }
                    Ok(None) => break None,
                    Err(e) => {
                        tracing::warn!(error = %e, "bad frame from the server");
                        break Some(FabricError::Protocol(ProtocolError::Malformed));
                    }
                }
            };
            input.consume(consumed);
            if let Some(why) = stop {
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

    /// A signaled chain completed: completions come in wire order, so it is the oldest one on the
    /// wire, and it and everything posted before it leave the send queue.
    fn retire_signaled(&self) {
        let mut tx = self.tx.lock();
        if let Some(end) = tx.signaled_ends.pop_front() {
            tx.sq.retire(end);
        }
    }

    fn apply(&self, event: Event) -> Result<(), FabricError> {
        match event {
            Event::Resolve { key, kind, result } => {
                let waiter = {
                    let mut p = self.pending.lock();
                    match usize::try_from(key).ok().and_then(|k| p.waiters.get_mut(k).map(|w| (k, w.kind))) {
                        Some((k, found)) if found == kind => p.waiters.remove(k),
                        _ => None,
                    }
                };
                let Some(waiter) = waiter else {
                    return Err(FabricError::Protocol(ProtocolError::UnknownRequest(key)));
                };
                let failed = matches!(result, Err(FabricError::Remote { .. }));
                waiter.completer.complete(result);
                if failed {
                    // The error state: everything still pending is flushed, and so is anything
                    // posted from now on (the server executes nothing more on this connection).
                    return Err(FabricError::Flushed);
                }
                Ok(())
            }
            Event::InternalDone => Ok(()),
            Event::AsyncError => {
                self.async_errors.fetch_add(1, Ordering::Relaxed);
                Err(FabricError::Flushed)
            }
            Event::Closed(why) => Err(why),
        }
    }
}

impl QueuePair for TcpQueuePair {
    fn post(&self, chain: &[WorkRequest<'_>]) -> Completion<Vec<u8>> {
        if let Err(e) = validate_chain(chain, true) {
            return Completion::ready(Err(e));
        }
        let total: usize = chain.iter().map(WorkRequest::read_len).sum();
        if total > wire::MAX_CHAIN_READ {
            return Completion::ready(Err(FabricError::TooLarge(total)));
        }
        let (id, completion) = match self.inner.register(Kind::Chain) {
            Ok(r) => r,
            Err(e) => return Completion::ready(Err(e)),
        };
        // On failure the connection is dead and `fail` has resolved the completion.
        let slots = Some((chain.len(), true));
        match self.inner.send(slots, |buf, _| encode_chain(buf, id as u32, false, chain)) {
            Err(FabricError::QueueFull) => {
                self.inner.unregister(id);
                Completion::ready(Err(FabricError::QueueFull))
            }
            // Any other failure: the connection is dead and `fail` has resolved the completion.
            _ => completion,
        }
    }

    fn post_unsignaled(&self, chain: &[WorkRequest<'_>]) -> Result<(), FabricError> {
        validate_chain(chain, false)?;
        self.inner.send(Some((chain.len(), false)), |buf, signaled| {
            if signaled {
                encode_chain(buf, INTERNAL_CHAIN, false, chain)
            } else {
                encode_chain(buf, 0, true, chain)
            }
        })
    }

    fn call(&self, request: &[u8]) -> Completion<Vec<u8>> {
        if request.len() > MAX_TRANSFER {
            return Completion::ready(Err(FabricError::TooLarge(request.len())));
        }
        let (id, completion) = match self.inner.register(Kind::Rpc) {
            Ok(r) => r,
            Err(e) => return Completion::ready(Err(e)),
        };
        let _ = self.inner.send(None, |buf, _| wire::encode_rpc(buf, id, request));
        completion
    }

    fn async_errors(&self) -> u64 {
        self.inner.async_errors.load(Ordering::Relaxed)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fabric::RemoteAccessError;

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
            interpret(ServerFrame::Error { code: crate::fabric::CloseReason::Shutdown, message: "bye" }),
            Event::Closed(FabricError::Disconnected(Disconnect::ClosedByServer(crate::fabric::CloseReason::Shutdown)))
        ));
    }

    #[test]
    fn chains_are_framed_with_one_id_and_a_last_flag() {
        let remote = crate::fabric::RemoteAddr { addr: 64, rkey: 3 };
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
}
