//! The server side: a software NIC that serves one-sided READs and WRITEs itself and hands RPCs
//! to the server's [`RpcService`].
//!
//! [`TcpNic`] runs `threads` NIC threads, each a mio event loop over its share of the
//! connections (thread 0 also accepts, and deals connections out round-robin). A NIC thread
//! checks every READ and WRITE against the [`RegionTable`] and executes it on the registered
//! memory: the RPC service and its workers never see them. RPC requests are given to
//! [`RpcService::handle`] on the NIC thread; the response comes back later from any thread.

mod event_loop;
mod reply;
pub mod session;

use self::event_loop::{Acceptor, NicShared, NicThread, WAKE};
use self::reply::Mailbox;
use self::session::Tally;
use super::wire;
use crate::cputime::CpuGroup;
use crate::fabric::{RegionTable, RpcService, Secret};
use mio::{Interest, Poll};
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// How a [`TcpNic`] runs.
#[derive(Debug, Clone)]
pub struct NicConfig {
    /// NIC threads (event loops); connections are spread across them.
    pub threads: usize,
    /// A connection's requests wait (unread) while this many bytes of its responses are not yet
    /// taken by the client: backpressure that bounds the NIC's memory per connection.
    pub out_high_water: usize,
    /// When set, a client's HELLO must carry this secret;
    /// a connection without it is closed before it can read, write or call anything. It travels
    /// in clear: it keeps out peers that do not know it, not eavesdroppers on the network.
    pub secret: Option<Secret>,
    /// Open connections at most; more are refused with an ERROR frame.
    pub max_connections: usize,
    /// READ data of one chain at most (it is held until the chain completes); a chain that reads
    /// more fails with [`RemoteAccessError::TooLarge`](crate::fabric::RemoteAccessError).
    pub max_chain_read: usize,
    /// RPCs a connection may have without a reply at once (granted in the HELLO); one more is a
    /// protocol violation.
    pub rpc_credits: u32,
    /// Largest RPC request payload (granted in the HELLO); a larger one is a protocol violation.
    pub max_message: usize,
}

/// A [`NicConfig`] setting out of its range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NicConfigError {
    #[error("max_connections must be at least 1")]
    NoConnections,
    #[error("max_chain_read must be 1 to {max} bytes, not {got}")]
    ChainRead { got: usize, max: usize },
    #[error("rpc_credits must be 1 to {max}, not {got}")]
    Credits { got: u32, max: u32 },
    #[error("max_message must be 1 to {max} bytes, not {got}")]
    Message { got: usize, max: usize },
}

/// Most RPC credits a connection can be granted.
pub const MAX_RPC_CREDITS: u32 = 65_536;

impl Default for NicConfig {
    /// With these limits a connection holds at most about `max_chain_read + out_high_water`
    /// (8 MiB) of NIC memory, so the NIC at most 2 GiB.
    fn default() -> Self {
        NicConfig {
            threads: 1,
            out_high_water: 4 << 20,
            secret: None,
            max_connections: 256,
            max_chain_read: crate::fabric::MAX_TRANSFER,
            rpc_credits: 256,
            max_message: crate::fabric::DEFAULT_MAX_MESSAGE,
        }
    }
}

impl NicConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), NicConfigError> {
        if self.max_connections == 0 {
            return Err(NicConfigError::NoConnections);
        }
        if self.max_chain_read == 0 || self.max_chain_read > wire::MAX_CHAIN_READ {
            return Err(NicConfigError::ChainRead { got: self.max_chain_read, max: wire::MAX_CHAIN_READ });
        }
        if self.rpc_credits == 0 || self.rpc_credits > MAX_RPC_CREDITS {
            return Err(NicConfigError::Credits { got: self.rpc_credits, max: MAX_RPC_CREDITS });
        }
        if self.max_message == 0 || self.max_message > crate::fabric::MAX_TRANSFER {
            return Err(NicConfigError::Message { got: self.max_message, max: crate::fabric::MAX_TRANSFER });
        }
        Ok(())
    }

    /// What a connection is granted in the NIC's HELLO.
    pub fn grant(&self) -> wire::Grant {
        wire::Grant { rpc_credits: self.rpc_credits, max_message: self.max_message as u32 }
    }
}

/// The NIC's counters, shared by its threads.
#[derive(Default)]
pub(super) struct Counters {
    accepted: AtomicU64,
    closed: AtomicU64,
    reads: AtomicU64,
    writes: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    rpcs: AtomicU64,
    remote_errors: AtomicU64,
    protocol_errors: AtomicU64,
    refused: AtomicU64,
}

impl Counters {
    /// Adds a thread's local tally and resets it.
    fn add(&self, t: &mut Tally) {
        let add = |c: &AtomicU64, v: u64| {
            if v != 0 {
                c.fetch_add(v, Ordering::Relaxed);
            }
        };
        add(&self.reads, t.reads);
        add(&self.writes, t.writes);
        add(&self.bytes_read, t.bytes_read);
        add(&self.bytes_written, t.bytes_written);
        add(&self.rpcs, t.rpcs);
        add(&self.remote_errors, t.remote_errors);
        *t = Tally::default();
    }
}

/// A snapshot of a NIC's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NicStats {
    pub connections_accepted: u64,
    pub connections_open: u64,
    /// Connections closed for any reason (peer left, I/O error, protocol violation, shutdown).
    pub connections_closed: u64,
    /// READs served.
    pub reads: u64,
    /// WRITEs served.
    pub writes: u64,
    /// Bytes returned by READs.
    pub bytes_read: u64,
    /// Bytes stored by WRITEs.
    pub bytes_written: u64,
    /// RPC requests handed to the service.
    pub rpcs: u64,
    /// READs and WRITEs refused (bad key, bounds, rights, size).
    pub remote_access_errors: u64,
    /// Connections closed because the client violated the protocol.
    pub protocol_errors: u64,
    /// Connections refused: over the connection limit, or without the shared secret.
    pub connections_refused: u64,
}

struct ThreadHandle {
    mailbox: Arc<Mailbox>,
    join: Option<JoinHandle<()>>,
}

/// A software NIC serving registered memory and RPCs over TCP.
pub struct TcpNic {
    local_addr: SocketAddr,
    shared: Arc<NicShared>,
    threads: Vec<ThreadHandle>,
}

impl TcpNic {
    /// Listens on `addr` and starts the NIC threads.
    pub fn bind(
        addr: impl ToSocketAddrs,
        regions: Arc<RegionTable>,
        service: Arc<dyn RpcService>,
        config: NicConfig,
    ) -> io::Result<TcpNic> {
        config.validate().map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let mut listener = mio::net::TcpListener::from_std(listener);

        let n = config.threads.max(1);
        let shared =
            Arc::new(NicShared { regions, service, counters: Counters::default(), cpu: CpuGroup::new(), config });
        let mut polls = Vec::with_capacity(n);
        let mut mailboxes = Vec::with_capacity(n);
        for _ in 0..n {
            let poll = Poll::new()?;
            let waker = mio::Waker::new(poll.registry(), WAKE)?;
            mailboxes.push(Arc::new(Mailbox::new(waker)));
            polls.push(poll);
        }
        polls[0].registry().register(&mut listener, event_loop::LISTENER, Interest::READABLE)?;

        let mut nic = TcpNic { local_addr, shared: shared.clone(), threads: Vec::with_capacity(n) };
        let mut acceptor = Some(Acceptor { listener, threads: mailboxes.clone(), next: 0 });
        for (index, poll) in polls.into_iter().enumerate() {
            let thread = NicThread {
                index,
                poll,
                mailbox: mailboxes[index].clone(),
                acceptor: acceptor.take(),
                shared: shared.clone(),
            };
            // On failure, `nic` is dropped here and stops the threads already started.
            let join = std::thread::Builder::new().name(format!("softnic-{index}")).spawn(move || thread.run())?;
            nic.threads.push(ThreadHandle { mailbox: mailboxes[index].clone(), join: Some(join) });
        }
        Ok(nic)
    }

    /// The address the NIC listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> NicStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (accepted, closed) = (get(&c.accepted), get(&c.closed));
        NicStats {
            connections_accepted: accepted,
            connections_open: accepted.saturating_sub(closed),
            connections_closed: closed,
            reads: get(&c.reads),
            writes: get(&c.writes),
            bytes_read: get(&c.bytes_read),
            bytes_written: get(&c.bytes_written),
            rpcs: get(&c.rpcs),
            remote_access_errors: get(&c.remote_errors),
            protocol_errors: get(&c.protocol_errors),
            connections_refused: get(&c.refused),
        }
    }

    /// CPU time used by the NIC threads so far, in nanoseconds (up to a millisecond behind
    /// while they are busy).
    pub fn cpu_ns(&self) -> u64 {
        self.shared.cpu.total_ns()
    }

    /// Stops the NIC threads (each tells its clients with an ERROR frame and closes their
    /// connections) and waits for them. Idempotent.
    pub fn shutdown(&mut self) {
        for t in &self.threads {
            t.mailbox.stop.store(true, Ordering::Release);
            t.mailbox.force_wake();
        }
        for t in &mut self.threads {
            if let Some(join) = t.join.take() {
                if join.join().is_err() {
                    tracing::error!("a NIC thread panicked");
                }
            }
        }
    }
}

impl Drop for TcpNic {
    fn drop(&mut self) {
        self.shutdown();
    }
}
