//! The target's threads: a few event loops (mio), each serving many connections. Loop 0 also
//! accepts and deals connections out round-robin. Namespace completions may arrive on any
//! thread; they are queued to the owning loop and wake it.
//!
//! The loops are thin: every protocol decision is in [`QueueSession`].

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use super::controller::TargetShared;
use super::session::{Close, NsOp, NsRequest, NsResult, QueueSession};
use super::stats::TargetCounters;

const WAKER: Token = Token(0);
const FIRST_LISTENER: usize = 1;
const FIRST_CONN: u64 = 1024;
/// How often sessions check keep-alive expiry and controller liveness.
const TICK: Duration = Duration::from_millis(100);
/// How long a closing connection may take to flush its last PDUs.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Reads per connection per loop turn, so that one busy connection cannot starve the others.
const READS_PER_TURN: usize = 8;
const READ_BUF: usize = 256 * 1024;

/// A namespace completion on its way back to a loop.
struct Completion {
    conn: u64,
    token: u64,
    result: NsResult,
}

struct NewConn {
    stream: TcpStream,
    local: SocketAddr,
}

/// What other threads need to reach a loop.
#[derive(Clone)]
pub(crate) struct LoopHandle {
    pub waker: Arc<Waker>,
    new_conns: Sender<NewConn>,
}

struct Conn {
    stream: TcpStream,
    session: QueueSession,
    /// The socket may have more to read (edge-triggered readiness was not drained).
    read_pending: bool,
    peer_closed: bool,
    close_deadline: Option<Instant>,
}

pub(crate) struct EventLoop {
    index: usize,
    poll: Poll,
    handle: LoopHandle,
    new_conns: Receiver<NewConn>,
    done_tx: Sender<Completion>,
    done_rx: Receiver<Completion>,
    peers: Vec<LoopHandle>,
    listeners: Vec<TcpListener>,
    next_peer: usize,
    conns: HashMap<u64, Conn>,
    next_conn: u64,
    shared: Arc<TargetShared>,
    stop: Arc<AtomicBool>,
}

impl EventLoop {
    pub fn new(index: usize, shared: Arc<TargetShared>, stop: Arc<AtomicBool>) -> io::Result<EventLoop> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = crossbeam_channel::unbounded();
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        Ok(EventLoop {
            index,
            poll,
            handle: LoopHandle { waker, new_conns: tx },
            new_conns: rx,
            done_tx,
            done_rx,
            peers: Vec::new(),
            listeners: Vec::new(),
            next_peer: 0,
            conns: HashMap::new(),
            next_conn: FIRST_CONN,
            shared,
            stop,
        })
    }

    pub fn handle(&self) -> LoopHandle {
        self.handle.clone()
    }

    /// Makes this loop accept on `listeners` and deal connections to `peers` (itself included).
    pub fn accept_on(&mut self, listeners: Vec<std::net::TcpListener>, peers: Vec<LoopHandle>) -> io::Result<()> {
        for (i, l) in listeners.into_iter().enumerate() {
            l.set_nonblocking(true)?;
            let mut l = TcpListener::from_std(l);
            self.poll.registry().register(&mut l, Token(FIRST_LISTENER + i), Interest::READABLE)?;
            self.listeners.push(l);
        }
        self.peers = peers;
        Ok(())
    }

    pub fn run(mut self) {
        let mut meter = self.shared.cpu.meter();
        let mut events = Events::with_capacity(256);
        let mut buf = vec![0u8; READ_BUF];
        let mut next_tick = Instant::now() + TICK;
        while !self.stop.load(Ordering::Acquire) {
            let now = Instant::now();
            let busy = !self.done_rx.is_empty()
                || self.conns.values().any(|c| c.read_pending && !c.session.wants_backpressure());
            let timeout = if busy { Duration::ZERO } else { next_tick.saturating_duration_since(now) };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!("nvme target loop {}: poll failed: {e}", self.index);
                    break;
                }
            }
            if self.stop.load(Ordering::Acquire) {
                break;
            }
            for ev in events.iter() {
                match ev.token() {
                    WAKER => {}
                    Token(t) if t >= FIRST_LISTENER && t < FIRST_LISTENER + self.listeners.len() => {
                        self.accept(t - FIRST_LISTENER);
                    }
                    Token(t) => {
                        if let Some(c) = self.conns.get_mut(&(t as u64)) {
                            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                                c.read_pending = true;
                            }
                        }
                    }
                }
            }
            while let Ok(nc) = self.new_conns.try_recv() {
                self.add_conn(nc);
            }
            let now = Instant::now();
            let readable: Vec<u64> = self.conns.iter().filter(|(_, c)| c.read_pending).map(|(id, _)| *id).collect();
            for id in readable {
                self.read(id, now, &mut buf);
            }
            if now >= next_tick {
                for c in self.conns.values_mut() {
                    c.session.on_tick(now);
                }
                next_tick = now + TICK;
            }
            self.settle(now);
            meter.tick();
        }
        // Dropping the sessions ends their controllers.
        for (_, mut c) in self.conns.drain() {
            let _ = self.poll.registry().deregister(&mut c.stream);
            TargetCounters::sub(&self.shared.counters.connections_active, 1);
        }
    }

    fn accept(&mut self, listener: usize) {
        loop {
            let accepted = match self.listeners.get(listener) {
                Some(l) => l.accept(),
                None => return,
            };
            match accepted {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    let local = stream.local_addr().unwrap_or_else(|_| self.shared.io_listen);
                    TargetCounters::add(&self.shared.counters.connections_accepted, 1);
                    TargetCounters::add(&self.shared.counters.connections_active, 1);
                    let peer = self.next_peer % self.peers.len().max(1);
                    self.next_peer += 1;
                    let nc = NewConn { stream, local };
                    match self.peers.get(peer) {
                        Some(p) if peer != self.index => {
                            let waker = p.waker.clone();
                            if p.new_conns.send(nc).is_ok() {
                                let _ = waker.wake();
                            }
                        }
                        _ => self.add_conn(nc),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!("nvme target: accept failed: {e}");
                    return;
                }
            }
        }
    }

    fn add_conn(&mut self, nc: NewConn) {
        let id = self.next_conn;
        self.next_conn += 1;
        let mut stream = nc.stream;
        if let Err(e) =
            self.poll.registry().register(&mut stream, Token(id as usize), Interest::READABLE | Interest::WRITABLE)
        {
            tracing::warn!("nvme target: cannot register a connection: {e}");
            TargetCounters::sub(&self.shared.counters.connections_active, 1);
            return;
        }
        let session = QueueSession::new(self.shared.clone(), nc.local, Instant::now());
        self.conns.insert(id, Conn { stream, session, read_pending: true, peer_closed: false, close_deadline: None });
    }

    fn read(&mut self, id: u64, now: Instant, buf: &mut [u8]) {
        let Some(c) = self.conns.get_mut(&id) else { return };
        let mut rounds = 0;
        while rounds < READS_PER_TURN {
            if c.session.close_state() != Close::No || c.session.wants_backpressure() {
                return;
            }
            match c.stream.read(buf) {
                Ok(0) => {
                    c.peer_closed = true;
                    c.read_pending = false;
                    return;
                }
                Ok(n) => {
                    c.session.on_bytes(&buf[..n], now);
                    rounds += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    c.read_pending = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    c.peer_closed = true;
                    c.read_pending = false;
                    return;
                }
            }
        }
    }

    /// Starts namespace operations, routes completions, writes output and closes connections,
    /// until nothing more happens without new input.
    fn settle(&mut self, now: Instant) {
        loop {
            let mut progressed = false;
            let ids: Vec<u64> = self.conns.keys().copied().collect();
            for id in &ids {
                progressed |= self.issue(*id);
            }
            while let Ok(done) = self.done_rx.try_recv() {
                progressed = true;
                if let Some(c) = self.conns.get_mut(&done.conn) {
                    c.session.on_ns_done(done.token, done.result);
                }
            }
            for id in &ids {
                progressed |= self.write(*id);
            }
            if !progressed {
                break;
            }
        }
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            self.maybe_close(id, now);
        }
    }

    fn issue(&mut self, id: u64) -> bool {
        let Some(c) = self.conns.get_mut(&id) else { return false };
        let requests = c.session.take_requests();
        let any = !requests.is_empty();
        for r in requests {
            self.start_ns(id, r);
        }
        any
    }

    fn start_ns(&self, conn: u64, r: NsRequest) {
        let sink = CompletionSink {
            conn,
            token: r.token,
            tx: self.done_tx.clone(),
            waker: self.handle.waker.clone(),
            loop_thread: std::thread::current().id(),
        };
        match r.op {
            NsOp::Read { lba, count } => {
                r.namespace.read(lba, count, Box::new(move |res| sink.send(NsResult::Read(res))))
            }
            NsOp::Write { lba, data } => {
                r.namespace.write(lba, data, Box::new(move |res| sink.send(NsResult::Write(res))))
            }
            NsOp::Flush => r.namespace.flush(Box::new(move |res| sink.send(NsResult::Write(res)))),
        }
    }

    /// Writes what the session has to send; true if anything was written.
    fn write(&mut self, id: u64) -> bool {
        let Some(c) = self.conns.get_mut(&id) else { return false };
        let mut wrote = false;
        while !c.session.output().is_empty() && !c.peer_closed {
            match c.stream.write(c.session.output()) {
                Ok(0) => {
                    c.peer_closed = true;
                }
                Ok(n) => {
                    c.session.consume_output(n);
                    wrote = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => c.peer_closed = true,
            }
        }
        wrote
    }

    fn maybe_close(&mut self, id: u64, now: Instant) {
        let Some(c) = self.conns.get_mut(&id) else { return };
        let close = match c.session.close_state() {
            _ if c.peer_closed => true,
            Close::Now => true,
            Close::AfterFlush if c.session.output().is_empty() => true,
            Close::AfterFlush => {
                let deadline = *c.close_deadline.get_or_insert(now + CLOSE_GRACE);
                now >= deadline
            }
            Close::No => false,
        };
        if close {
            if let Some(mut c) = self.conns.remove(&id) {
                if let Some(reason) = c.session.close_reason() {
                    tracing::debug!("nvme target: closing connection {:?}: {reason}", c.session.queue());
                }
                let _ = c.stream.shutdown(Shutdown::Both);
                let _ = self.poll.registry().deregister(&mut c.stream);
                TargetCounters::sub(&self.shared.counters.connections_active, 1);
            }
        }
    }
}

/// Routes one namespace completion back to its loop. Completions on the loop's own thread (a
/// namespace that completes inline) need no wake-up: the loop drains its queue before sleeping.
struct CompletionSink {
    conn: u64,
    token: u64,
    tx: Sender<Completion>,
    waker: Arc<Waker>,
    loop_thread: ThreadId,
}

impl CompletionSink {
    fn send(self, result: NsResult) {
        if self.tx.send(Completion { conn: self.conn, token: self.token, result }).is_ok()
            && std::thread::current().id() != self.loop_thread
        {
            let _ = self.waker.wake();
        }
    }
}
