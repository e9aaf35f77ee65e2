//! The client side of the software NIC: queue pairs over one TCP connection each.
//!
//! * [`core`]: the protocol state, sans-IO (posts and received bytes in; bytes to send and
//!   completions out): send-queue slots, pending requests, the error state.
//! * [`threaded`]: [`TcpQueuePair`], a driver with a reader thread per queue pair; needs no async
//!   runtime, completions can be waited on from plain threads.
//! * `tokio` (feature `tokio`): [`AsyncTcpQueuePair`], a driver that runs on the caller's tokio
//!   runtime: completions are reaped on the runtime's own threads (no reader thread, no wake-up
//!   across threads), and the frames posted during one turn of the runtime leave in one `write`.
//!
//! Both connect the same way (`connect_with` and [`ConnectOptions`]) and behave the same way; the
//! conformance suite runs on each.

mod core;
pub mod threaded;
#[cfg(feature = "tokio")]
pub mod tokio;

#[cfg(feature = "tokio")]
pub use self::tokio::AsyncTcpQueuePair;
pub use threaded::TcpQueuePair;

use self::core::Reaped;
use super::buf::InBuf;
use super::wire::{self, ServerFrame};
use crate::fabric::{Completer, Disconnect, FabricError, ProtocolError, Secret, DEFAULT_SEND_QUEUE_DEPTH};
use std::io::{self, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Connect (and handshake) timeout of `connect`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Posters wait (threaded) or are refused with [`FabricError::QueueFull`] (tokio) while this many
/// bytes are queued behind a `write` in progress.
const TX_HIGH_WATER: usize = 16 << 20;
/// A spare output buffer that grew past this is given back.
const KEEP_TX_CAPACITY: usize = 1 << 20;

/// What both drivers keep in the core for each pending request: the completer its caller awaits.
type Waiter = Completer<Vec<u8>>;

/// Resolves reaped completions, and wakes the completion queue's armed waker if the core had one
/// to wake (never under a driver's lock: a completion wakes its waiter).
fn resolve(reaped: &mut Vec<Reaped<Waiter>>, cq_wake: Option<std::task::Waker>) {
    for (completer, result) in reaped.drain(..) {
        completer.complete(result);
    }
    if let Some(w) = cq_wake {
        w.wake();
    }
}

/// How a queue pair connects (`connect_with` of either driver).
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

fn timeout_or_io(e: io::Error) -> FabricError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => FabricError::Timeout,
        _ => FabricError::Io(e.kind()),
    }
}

/// Opens a TCP connection to `addr` (each address in turn) and exchanges HELLOs. Returns the
/// connected stream, in blocking mode with no timeouts, the bytes received after the server's
/// HELLO, and what the server granted.
fn connect_and_handshake(
    addr: impl ToSocketAddrs,
    opts: &ConnectOptions,
) -> Result<(TcpStream, InBuf, wire::Grant), FabricError> {
    let mut last = FabricError::NoAddress;
    for a in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&a, opts.timeout) {
            Ok(mut stream) => {
                stream.set_nodelay(true)?;
                let (input, grant) = handshake(&mut stream, opts)?;
                return Ok((stream, input, grant));
            }
            Err(e) => last = timeout_or_io(e),
        }
    }
    Err(last)
}

/// Exchanges HELLOs. Returns the bytes received after the server's HELLO, and its grant.
fn handshake(stream: &mut TcpStream, opts: &ConnectOptions) -> Result<(InBuf, wire::Grant), FabricError> {
    stream.set_read_timeout(Some(opts.timeout))?;
    let mut hello = Vec::with_capacity(wire::HELLO_LEN + wire::MAX_SECRET);
    wire::encode_hello(&mut hello, wire::VERSION, opts.secret.as_ref().map_or(&[], Secret::as_bytes));
    stream.write_all(&hello).map_err(timeout_or_io)?;
    let mut input = InBuf::new();
    loop {
        match wire::decode_hello(input.data()) {
            Ok(Some((h, n))) if h.version == wire::VERSION => {
                let Some(grant) = wire::Grant::decode(h.body) else {
                    tracing::debug!(len = h.body.len(), "the server's HELLO carries no valid grant");
                    return Err(FabricError::Protocol(ProtocolError::BadHandshake));
                };
                input.consume(n);
                stream.set_read_timeout(None)?;
                return Ok((input, grant));
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
}
