//! memcached: what many deployments would use instead (`--system memcached --server HOST:PORT`).
//!
//! An async client of memcached's text protocol over tokio TCP. A YCSB read is a `get`, an
//! update or insert a `set` (flags 0, no expiry); binary keys travel as hex ([`protocol::key_text`]).
//! Each connection pipelines: requests from any number of tasks are queued to one writer task,
//! which writes whatever has accumulated in one system call, and a reader task matches replies
//! to requests in FIFO order (memcached answers a connection's requests in order). The client
//! spreads requests over its connections round robin.
//!
//! A reply that cannot be parsed desynchronizes the stream: that request fails with the
//! [`ProtocolError`], every other one in flight on the connection with
//! [`MemcachedError::Closed`], and the connection is not used again. `ERROR`, `CLIENT_ERROR`
//! and `SERVER_ERROR` fail only their own request.

pub mod protocol;

use protocol::{KeyError, ProtocolError, Reply, ReplyDecoder};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify};

/// A failed memcached operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemcachedError {
    #[error("cannot connect to memcached at {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("invalid key: {0}")]
    Key(#[from] KeyError),
    #[error("memcached SERVER_ERROR: {0}")]
    Server(String),
    #[error("memcached CLIENT_ERROR: {0}")]
    Client(String),
    #[error("memcached answered ERROR (unknown command)")]
    UnknownCommand,
    #[error("memcached did not store the value: {0}")]
    NotStored(String),
    #[error("memcached answered a {request} with {reply}")]
    UnexpectedReply { request: &'static str, reply: String },
    #[error("malformed reply from memcached: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("connection to memcached closed: {0}")]
    Closed(String),
    #[error("configuration: {0}")]
    Config(String),
}

/// A snapshot of a [`MemcachedClient`]'s counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemcachedStats {
    /// `get` requests answered.
    pub gets: u64,
    /// `get`s that found the key.
    pub hits: u64,
    /// `get`s that did not.
    pub misses: u64,
    /// `set` requests answered `STORED`.
    pub sets: u64,
    /// Requests that failed (any [`MemcachedError`]).
    pub errors: u64,
    /// Requests written to the network.
    pub requests_sent: u64,
    /// Write system calls (`requests_sent / writes` is the pipelining batch).
    pub writes: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Connections opened.
    pub connections: u64,
}

impl MemcachedStats {
    /// Every counter by name, for reports.
    pub fn counters(&self) -> Vec<(String, u64)> {
        [
            ("gets", self.gets),
            ("hits", self.hits),
            ("misses", self.misses),
            ("sets", self.sets),
            ("errors", self.errors),
            ("requests_sent", self.requests_sent),
            ("writes", self.writes),
            ("bytes_sent", self.bytes_sent),
            ("bytes_received", self.bytes_received),
            ("connections", self.connections),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_string(), v))
        .collect()
    }
}

#[derive(Default)]
struct Counters {
    gets: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    sets: AtomicU64,
    errors: AtomicU64,
    requests_sent: AtomicU64,
    writes: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    connections: AtomicU64,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

type ReplySender = oneshot::Sender<Result<Reply, MemcachedError>>;

/// A request on its way to the writer task.
struct Outgoing {
    bytes: Vec<u8>,
    reply: ReplySender,
}

/// Whether a connection is still usable, and why not; wakes the reader when the writer fails.
#[derive(Default)]
struct ConnState {
    dead: std::sync::Mutex<Option<String>>,
    stop: Notify,
}

impl ConnState {
    /// Marks the connection dead (keeping the first reason) and stops its reader.
    fn fail(&self, why: String) {
        self.dead.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(why);
        // Leaves a permit if the reader is not waiting right now.
        self.stop.notify_one();
    }

    fn dead(&self) -> Option<String> {
        self.dead.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn reason(&self) -> String {
        self.dead().unwrap_or_else(|| "the connection's tasks stopped".into())
    }
}

struct Conn {
    tx: mpsc::Sender<Outgoing>,
    state: Arc<ConnState>,
}

/// Requests queued per connection before senders wait.
const QUEUE: usize = 4096;
/// Most bytes the writer gathers into one write.
const WRITE_BATCH: usize = 256 << 10;

struct Inner {
    conns: Vec<Conn>,
    next: AtomicUsize,
    counters: Arc<Counters>,
}

/// A memcached client. Cheap to clone; use it from many tasks at once. Must be created inside
/// a tokio runtime (it spawns two tasks per connection, which end when the client is dropped).
#[derive(Clone)]
pub struct MemcachedClient {
    inner: Arc<Inner>,
}

impl MemcachedClient {
    /// Opens `connections` connections to memcached at `addr` (`HOST:PORT`).
    pub async fn connect(addr: &str, connections: usize) -> Result<MemcachedClient, MemcachedError> {
        if connections == 0 {
            return Err(MemcachedError::Config("at least one connection is needed".into()));
        }
        let counters = Arc::new(Counters::default());
        let mut conns = Vec::with_capacity(connections);
        for _ in 0..connections {
            let stream = TcpStream::connect(addr)
                .await
                .map_err(|e| MemcachedError::Connect { addr: addr.to_string(), reason: e.to_string() })?;
            let _ = stream.set_nodelay(true);
            conns.push(start_connection(stream, counters.clone()));
        }
        Ok(MemcachedClient { inner: Arc::new(Inner { conns, next: AtomicUsize::new(0), counters }) })
    }

    /// The value of `key`, or `None` if memcached does not have it.
    pub async fn read(&self, key: &[u8]) -> Result<Option<Vec<u8>>, MemcachedError> {
        let text = protocol::key_text(key)?;
        let mut req = Vec::with_capacity(text.len() + 6);
        protocol::encode_get(&text, &mut req);
        let c = &self.inner.counters;
        let result = match self.request(req).await {
            Ok(Reply::Values(items)) if items.is_empty() => {
                add(&c.misses, 1);
                Ok(None)
            }
            Ok(Reply::Values(mut items)) if items.len() == 1 && items[0].key == text => {
                add(&c.hits, 1);
                Ok(Some(items.pop().expect("one item").value))
            }
            Ok(Reply::Values(items)) => Err(MemcachedError::UnexpectedReply {
                request: "get",
                reply: format!(
                    "{} item(s) for keys {:?}",
                    items.len(),
                    items.iter().map(|i| &i.key).collect::<Vec<_>>()
                ),
            }),
            Ok(other) => Err(reply_error("get", other)),
            Err(e) => Err(e),
        };
        match &result {
            Ok(_) => add(&c.gets, 1),
            Err(_) => add(&c.errors, 1),
        }
        result
    }

    /// Stores `value` under `key` (`set`).
    pub async fn update(&self, key: &[u8], value: &[u8]) -> Result<(), MemcachedError> {
        self.set(key, value).await
    }

    /// Same as [`update`](Self::update): memcached's `set` inserts or replaces.
    pub async fn insert(&self, key: &[u8], value: &[u8]) -> Result<(), MemcachedError> {
        self.set(key, value).await
    }

    async fn set(&self, key: &[u8], value: &[u8]) -> Result<(), MemcachedError> {
        let text = protocol::key_text(key)?;
        let mut req = Vec::with_capacity(text.len() + value.len() + 32);
        protocol::encode_set(&text, 0, 0, value, &mut req);
        let result = match self.request(req).await {
            Ok(Reply::Stored) => Ok(()),
            Ok(other) => Err(reply_error("set", other)),
            Err(e) => Err(e),
        };
        let c = &self.inner.counters;
        match &result {
            Ok(()) => add(&c.sets, 1),
            Err(_) => add(&c.errors, 1),
        }
        result
    }

    /// Sends one encoded request and waits for its reply.
    async fn request(&self, bytes: Vec<u8>) -> Result<Reply, MemcachedError> {
        let n = self.inner.conns.len();
        let i = if n == 1 { 0 } else { self.inner.next.fetch_add(1, Ordering::Relaxed) % n };
        let conn = &self.inner.conns[i];
        if let Some(why) = conn.state.dead() {
            return Err(MemcachedError::Closed(why));
        }
        let (reply, rx) = oneshot::channel();
        conn.tx.send(Outgoing { bytes, reply }).await.map_err(|_| MemcachedError::Closed(conn.state.reason()))?;
        rx.await.map_err(|_| MemcachedError::Closed(conn.state.reason()))?
    }

    /// A snapshot of this client's counters.
    pub fn stats(&self) -> MemcachedStats {
        let c = &self.inner.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MemcachedStats {
            gets: g(&c.gets),
            hits: g(&c.hits),
            misses: g(&c.misses),
            sets: g(&c.sets),
            errors: g(&c.errors),
            requests_sent: g(&c.requests_sent),
            writes: g(&c.writes),
            bytes_sent: g(&c.bytes_sent),
            bytes_received: g(&c.bytes_received),
            connections: g(&c.connections),
        }
    }
}

/// The error for a reply that is not the success `request` expects.
fn reply_error(request: &'static str, reply: Reply) -> MemcachedError {
    match reply {
        Reply::Error => MemcachedError::UnknownCommand,
        Reply::ClientError(m) => MemcachedError::Client(m),
        Reply::ServerError(m) => MemcachedError::Server(m),
        r @ (Reply::NotStored | Reply::Exists | Reply::NotFound) if request == "set" => {
            MemcachedError::NotStored(r.describe())
        }
        other => MemcachedError::UnexpectedReply { request, reply: other.describe() },
    }
}

/// Starts the writer and reader tasks of one connection.
fn start_connection(stream: TcpStream, counters: Arc<Counters>) -> Conn {
    add(&counters.connections, 1);
    let (read, write) = stream.into_split();
    let (tx, rx) = mpsc::channel(QUEUE);
    // Replies owed, in request order: the writer pushes before writing, the reader pops.
    let (owed_tx, owed_rx) = mpsc::unbounded_channel();
    let state = Arc::new(ConnState::default());
    tokio::spawn(write_loop(write, rx, owed_tx, state.clone(), counters.clone()));
    tokio::spawn(read_loop(read, owed_rx, state.clone(), counters));
    Conn { tx, state }
}

/// Gathers queued requests into one buffer per write; registers each one's reply slot before
/// its bytes can reach the server.
async fn write_loop(
    mut write: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Outgoing>,
    owed: mpsc::UnboundedSender<ReplySender>,
    state: Arc<ConnState>,
    counters: Arc<Counters>,
) {
    let mut buf = Vec::new();
    while let Some(first) = rx.recv().await {
        buf.clear();
        let mut count = 0u64;
        let mut next = Some(first);
        while let Some(req) = next.take() {
            if let Some(why) = state.dead() {
                let _ = req.reply.send(Err(MemcachedError::Closed(why)));
            } else if let Err(mpsc::error::SendError(reply)) = owed.send(req.reply) {
                let _ = reply.send(Err(MemcachedError::Closed(state.reason())));
            } else {
                buf.extend_from_slice(&req.bytes);
                count += 1;
            }
            if buf.len() < WRITE_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if buf.is_empty() {
            continue;
        }
        if let Err(e) = write.write_all(&buf).await {
            state.fail(format!("write failed: {e}"));
            continue; // the reader fails what is owed; later requests fail above
        }
        add(&counters.requests_sent, count);
        add(&counters.writes, 1);
        add(&counters.bytes_sent, buf.len() as u64);
    }
    // Every client handle is gone, so no request is waiting: stop the reader too.
    state.fail("the client was dropped".into());
}

/// Decodes replies and hands each to the oldest request still owed one.
async fn read_loop(
    mut read: OwnedReadHalf,
    mut owed: mpsc::UnboundedReceiver<ReplySender>,
    state: Arc<ConnState>,
    counters: Arc<Counters>,
) {
    let mut decoder = ReplyDecoder::new();
    let mut chunk = vec![0u8; 64 << 10];
    let why = 'conn: loop {
        let n = tokio::select! {
            r = read.read(&mut chunk) => match r {
                Ok(0) => break 'conn "memcached closed the connection".to_string(),
                Ok(n) => n,
                Err(e) => break 'conn format!("read failed: {e}"),
            },
            _ = state.stop.notified() => break 'conn state.reason(),
        };
        add(&counters.bytes_received, n as u64);
        decoder.feed(&chunk[..n]);
        loop {
            match decoder.next_reply() {
                Ok(Some(reply)) => match owed.try_recv() {
                    Ok(slot) => {
                        let _ = slot.send(Ok(reply));
                    }
                    Err(_) => break 'conn format!("unsolicited reply ({})", reply.describe()),
                },
                Ok(None) => break,
                Err(e) => {
                    if let Ok(slot) = owed.try_recv() {
                        let _ = slot.send(Err(MemcachedError::Protocol(e.clone())));
                    }
                    break 'conn format!("malformed reply: {e}");
                }
            }
        }
    };
    state.fail(why);
    owed.close();
    let why = state.reason();
    while let Ok(slot) = owed.try_recv() {
        let _ = slot.send(Err(MemcachedError::Closed(why.clone())));
    }
}
