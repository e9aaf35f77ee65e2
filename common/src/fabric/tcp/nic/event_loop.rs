//! A NIC thread: a mio event loop that moves bytes between its connections' sockets and their
//! [`Session`]s.
//!
//! Per connection and wake-up: one `read` into the receive buffer, every complete request in it
//! executed (responses appended to one output buffer), queued RPC responses appended, then one
//! `write`. Repeated while the read filled its buffer (more may be waiting), up to a budget, so
//! that one busy connection does not starve the others.

use super::reply::{ConnReplies, Mailbox};
use super::session::{Env, Session, Tally, Violation};
use super::{Counters, NicConfig};
use crate::cputime::CpuGroup;
use crate::fabric::tcp::buf::InBuf;
use crate::fabric::tcp::wire;
use crate::fabric::{CloseReason, PeerId, RegionTable, ReplySink, RpcService};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use std::io::{self, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(super) const WAKE: Token = Token(usize::MAX);
pub(super) const LISTENER: Token = Token(usize::MAX - 1);

/// Read-process-write rounds for one connection before the others get their turn.
const ROUNDS_PER_TURN: usize = 16;
/// An output buffer that grew past this is given back once it is empty again.
const KEEP_OUT_CAPACITY: usize = 1 << 20;
/// Sent bytes at the front of an output buffer are dropped once there are this many.
const COMPACT_AFTER: usize = 64 * 1024;
/// How often the CPU meter reads the thread's CPU clock (a system call) while busy.
const CPU_TICK: Duration = Duration::from_millis(1);

/// What all NIC threads share.
pub(super) struct NicShared {
    pub regions: Arc<RegionTable>,
    pub service: Arc<dyn RpcService>,
    pub counters: Counters,
    pub cpu: Arc<CpuGroup>,
    pub config: NicConfig,
}

/// The listener and where accepted connections go.
pub(super) struct Acceptor {
    pub listener: TcpListener,
    /// Every NIC thread's mailbox, this one's included, in thread order.
    pub threads: Vec<Arc<Mailbox>>,
    pub next: usize,
}

pub(super) struct NicThread {
    pub index: usize,
    pub poll: Poll,
    pub mailbox: Arc<Mailbox>,
    pub acceptor: Option<Acceptor>,
    pub shared: Arc<NicShared>,
}

/// Why a connection is closed.
enum Close {
    /// The peer closed it.
    Eof,
    Io(io::Error),
    Violation(Violation),
}

struct Conn {
    stream: TcpStream,
    session: Session,
    input: InBuf,
    out: Vec<u8>,
    /// Bytes of `out` already written.
    sent: usize,
    replies: Arc<ConnReplies>,
    sink: Arc<dyn ReplySink>,
    /// Who this connection is to the RPC service.
    peer: PeerId,
    /// The peer closed its side (or the socket failed): read on until EOF or the error, which
    /// no further readiness event would announce.
    peer_closed: bool,
    /// Requests wait for the client to take its responses (a writable event resumes them).
    backlogged: bool,
}

/// What a turn of a connection ended with.
enum Turn {
    /// Nothing more to do until the socket is ready again.
    Idle,
    /// Its budget ran out with work left: come back without waiting for an event.
    MoreWork,
    Close(Close),
}

impl NicThread {
    pub fn run(mut self) {
        let mut conns: Slab<Conn> = Slab::default();
        let mut events = Events::with_capacity(256);
        let mut tally = Tally::default();
        let mut meter = self.shared.cpu.meter();
        let mut last_tick = Instant::now();
        let mut cpu_untallied = false;
        let mut ready = Vec::new();
        let mut more_work: Vec<usize> = Vec::new();
        let mut again: Vec<usize> = Vec::new();
        loop {
            // Block only when no connection has work left and the CPU meter is up to date.
            let timeout = if !more_work.is_empty() {
                Some(Duration::ZERO)
            } else if cpu_untallied {
                Some(CPU_TICK)
            } else {
                None
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!("NIC thread {} cannot poll: {e}", self.index);
                    break;
                }
            }
            let mut turns = std::mem::take(&mut again);
            turns.append(&mut more_work);
            for event in events.iter() {
                match event.token() {
                    WAKE => {
                        self.mailbox.woken();
                        if self.mailbox.stop.load(Ordering::Acquire) {
                            break;
                        }
                        for stream in self.mailbox.incoming.lock().drain(..) {
                            self.add_conn(&mut conns, stream);
                        }
                        std::mem::swap(&mut ready, &mut *self.mailbox.ready.lock());
                    }
                    LISTENER => self.accept(&mut conns),
                    Token(k) => {
                        if event.is_read_closed() || event.is_error() {
                            if let Some(conn) = conns.get_mut(k) {
                                conn.peer_closed = true;
                            }
                        }
                        turns.push(k)
                    }
                }
            }
            if self.mailbox.stop.load(Ordering::Acquire) {
                break;
            }
            // Connections with RPC responses queued by workers: nothing to read, only to send.
            for k in ready.drain(..) {
                let Some(conn) = conns.get_mut(k) else { continue };
                if conn.backlogged {
                    turns.push(k); // a full turn, which also resumes its waiting requests
                } else if let Err(e) = conn.send_replies() {
                    self.close(&mut conns, k, Close::Io(e));
                }
            }
            for k in turns.drain(..) {
                let Some(conn) = conns.get_mut(k) else { continue };
                match conn.turn(&self.shared, &mut tally) {
                    Turn::Idle => {}
                    Turn::MoreWork => more_work.push(k),
                    Turn::Close(why) => self.close(&mut conns, k, why),
                }
            }
            again = turns; // keep the allocation
            more_work.sort_unstable();
            more_work.dedup();

            self.shared.counters.add(&mut tally);
            // Reading the CPU clock is a system call: once per CPU_TICK while busy, and when idle.
            let idle = events.is_empty() && more_work.is_empty();
            if idle || last_tick.elapsed() >= CPU_TICK {
                meter.tick();
                last_tick = Instant::now();
                cpu_untallied = false;
            } else {
                cpu_untallied = true;
            }
        }
        // Shutting down: tell every client why, best effort.
        for k in conns.iter().map(|(k, _)| k).collect::<Vec<_>>() {
            if let Some(conn) = conns.get_mut(k) {
                conn.session.shutdown(&mut conn.out);
                let _ = conn.flush();
            }
            self.close(&mut conns, k, Close::Eof);
        }
    }

    fn accept(&mut self, conns: &mut Slab<Conn>) {
        let Some(acceptor) = &mut self.acceptor else { return };
        loop {
            let stream = match acceptor.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted) => continue,
                Err(e) => {
                    // Out of descriptors or memory: leave the rest in the backlog until the next
                    // connection attempt wakes the listener again.
                    tracing::warn!("NIC cannot accept: {e}");
                    return;
                }
            };
            let counters = &self.shared.counters;
            let open =
                counters.accepted.load(Ordering::Relaxed).saturating_sub(counters.closed.load(Ordering::Relaxed));
            if open >= self.shared.config.max_connections as u64 {
                // Counted first, so that a client that sees the refusal also sees it counted.
                counters.refused.fetch_add(1, Ordering::Relaxed);
                refuse(stream, CloseReason::TooManyConnections);
                continue;
            }
            if let Err(e) = stream.set_nodelay(true) {
                tracing::warn!("cannot set TCP_NODELAY: {e}");
            }
            self.shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
            let target = acceptor.next % acceptor.threads.len();
            acceptor.next = acceptor.next.wrapping_add(1);
            if target == self.index {
                Self::register(&self.poll, &self.mailbox, &self.shared, conns, stream);
            } else {
                acceptor.threads[target].incoming.lock().push(stream);
                acceptor.threads[target].wake();
            }
        }
    }

    fn add_conn(&self, conns: &mut Slab<Conn>, stream: TcpStream) {
        Self::register(&self.poll, &self.mailbox, &self.shared, conns, stream);
    }

    fn register(
        poll: &Poll,
        mailbox: &Arc<Mailbox>,
        shared: &NicShared,
        conns: &mut Slab<Conn>,
        mut stream: TcpStream,
    ) {
        let token = conns.vacant_key();
        if let Err(e) = poll.registry().register(&mut stream, Token(token), Interest::READABLE | Interest::WRITABLE) {
            tracing::warn!("cannot register a connection: {e}");
            shared.counters.closed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let replies = Arc::new(ConnReplies::new(token, mailbox.clone()));
        let sink: Arc<dyn ReplySink> = replies.clone();
        let conn = Conn {
            stream,
            session: Session::new(),
            input: InBuf::new(),
            out: Vec::new(),
            sent: 0,
            replies,
            sink,
            peer: PeerId::fresh(),
            peer_closed: false,
            backlogged: false,
        };
        let key = conns.insert(conn);
        debug_assert_eq!(key, token);
    }

    fn close(&self, conns: &mut Slab<Conn>, k: usize, why: Close) {
        let Some(mut conn) = conns.try_remove(k) else { return };
        conn.replies.close();
        // After `close`, so that a worker that sees the peer alive records its holdings before
        // the service frees them (see `RpcService::peer_closed`).
        self.shared.service.peer_closed(conn.peer);
        let _ = self.poll.registry().deregister(&mut conn.stream);
        let counters = &self.shared.counters;
        counters.closed.fetch_add(1, Ordering::Relaxed);
        match why {
            Close::Eof => {}
            Close::Io(e) => tracing::debug!("NIC connection closed: {e}"),
            Close::Violation(v) => {
                if v.is_protocol_error() {
                    counters.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::info!("NIC closes a connection: {v}");
                } else if v == Violation::Unauthenticated {
                    counters.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::info!("NIC closes a connection: {v}");
                } else {
                    tracing::debug!("NIC closes a connection: {v}");
                }
                // The ERROR frame went out with the last flush; end the stream after it.
                let _ = conn.stream.shutdown(std::net::Shutdown::Write);
            }
        }
    }
}

/// Tells a connection the NIC will not serve why (best effort: one non-blocking write of a small
/// frame into a fresh socket's empty buffer) and closes it.
fn refuse(mut stream: TcpStream, why: CloseReason) {
    let mut frame = Vec::new();
    wire::encode_error(&mut frame, why, &why.to_string());
    let _ = stream.write(&frame);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    tracing::info!("NIC refuses a connection: {why}");
}

impl Conn {
    /// Output that may be written now but is not yet.
    fn unsent(&self) -> usize {
        self.session.flush_limit(self.out.len()) - self.sent
    }

    fn turn(&mut self, shared: &NicShared, tally: &mut Tally) -> Turn {
        let high_water = shared.config.out_high_water;
        for _ in 0..ROUNDS_PER_TURN {
            // One read, unless the client is not taking its responses.
            let mut eof = false;
            let mut read_full = false;
            let read_skipped = self.unsent() >= high_water;
            if !read_skipped {
                match self.input.read_from(&mut self.stream) {
                    Ok((0, _)) => eof = true,
                    // A read that did not fill the buffer drained the socket: edge-triggered
                    // readiness announces any byte that arrives after it, but not an EOF that
                    // was already there.
                    Ok((_, full)) => read_full = full || self.peer_closed,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => read_full = true,
                    Err(e) => return Turn::Close(Close::Io(e)),
                }
            }

            // Everything it returned.
            let mut env = Env {
                regions: &shared.regions,
                config: &shared.config,
                service: &*shared.service,
                sink: &self.sink,
                peer: self.peer,
                answered: self.replies.answered(),
                tally: &mut *tally,
            };
            let out_limit = self.sent + high_water;
            match self.session.process(self.input.data(), &mut self.out, out_limit, &mut env) {
                Ok(n) => self.input.consume(n),
                Err(v) => {
                    shared.counters.add(tally);
                    let _ = self.flush();
                    return Turn::Close(Close::Violation(v));
                }
            }
            let stalled = self.unsent() >= high_water;
            if !self.session.in_chain() {
                self.replies.take_into(&mut self.out);
            }

            // Counters first, so that a client that sees its response also sees them counted.
            shared.counters.add(tally);
            let drained = match self.flush() {
                Ok(drained) => drained,
                Err(e) => return Turn::Close(Close::Io(e)),
            };
            if eof {
                return Turn::Close(match self.session.finish(self.input.data().len()) {
                    Ok(()) => Close::Eof,
                    Err(v) => Close::Violation(v),
                });
            }
            self.backlogged = (stalled || read_skipped) && !drained;
            if !(read_full || (drained && (stalled || read_skipped))) {
                return Turn::Idle;
            }
        }
        Turn::MoreWork
    }

    /// Sends the queued RPC responses (unless they must wait for the open chain to complete).
    fn send_replies(&mut self) -> io::Result<()> {
        if !self.session.in_chain() {
            self.replies.take_into(&mut self.out);
            self.flush()?;
        }
        Ok(())
    }

    /// Writes what may be written; returns whether all of it went.
    fn flush(&mut self) -> io::Result<bool> {
        let end = self.session.flush_limit(self.out.len());
        let mut drained = true;
        while self.sent < end {
            match self.stream.write(&self.out[self.sent..end]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    drained = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.sent == self.out.len() {
            self.sent = 0;
            self.out.clear();
            if self.out.capacity() > KEEP_OUT_CAPACITY {
                self.out = Vec::new();
            }
        } else if self.sent >= COMPACT_AFTER && self.sent * 2 >= self.out.len() {
            self.out.drain(..self.sent);
            self.session.shift_output(self.sent);
            self.sent = 0;
        }
        Ok(drained)
    }
}
