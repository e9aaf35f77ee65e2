//! The tokio driver of one queue: a TCP connection, a reader task feeding the [`HostQueue`], a
//! writer task sending what it produces, and callers waiting on one-shot channels.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use scalio_common::nvme::pdu::{Digests, Pdu, TxParams, IC_LEN};
use scalio_common::nvme::sqe::Sqe;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use super::error::NvmeError;
use super::host_queue::{ic_request, negotiate, Completion, Finished, HostQueue};

type Responder = (oneshot::Sender<Result<Completion, NvmeError>>, OwnedSemaphorePermit);

enum Outgoing {
    Bytes(Vec<u8>),
    /// Send these bytes (a termination request), then close.
    Last(Vec<u8>),
}

/// How to open a queue.
#[derive(Debug, Clone)]
pub(crate) struct QueueSetup {
    pub qid: u16,
    /// Commands in flight at most.
    pub depth: u16,
    pub digests: Digests,
    pub connect_timeout: Duration,
    /// Largest data one command reads (bounds what a C2HData PDU may carry).
    pub max_transfer: u32,
}

pub(crate) struct Queue {
    qid: u16,
    state: Arc<Mutex<HostQueue<Responder>>>,
    writer: mpsc::UnboundedSender<Outgoing>,
    permits: Arc<Semaphore>,
    alive: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

fn io_err(e: std::io::Error) -> NvmeError {
    NvmeError::Io(e.to_string())
}

impl Queue {
    /// Opens the TCP connection and runs ICReq/ICResp. The Fabrics Connect is the caller's.
    pub async fn open(addr: SocketAddr, setup: &QueueSetup) -> Result<Queue, NvmeError> {
        let connect = async {
            let mut stream = TcpStream::connect(addr).await.map_err(io_err)?;
            stream.set_nodelay(true).map_err(io_err)?;
            let req = ic_request(setup.digests, 0);
            stream.write_all(&Pdu::IcReq(req).to_vec(&TxParams::default())).await.map_err(io_err)?;
            let mut resp = [0u8; IC_LEN];
            stream.read_exact(&mut resp).await.map_err(io_err)?;
            let negotiated = match negotiate(&req, &resp, setup.max_transfer) {
                Ok(n) => n,
                Err(e) => {
                    if let NvmeError::Fatal(f) = &e {
                        let _ = stream.write_all(&f.term_req(scalio_common::nvme::Role::Host)).await;
                    }
                    return Err(e);
                }
            };
            Ok::<_, NvmeError>((stream, negotiated))
        };
        let (stream, negotiated) =
            tokio::time::timeout(setup.connect_timeout, connect).await.map_err(|_| NvmeError::Timeout {
                what: format!("connecting queue {} to {addr}", setup.qid),
                after: setup.connect_timeout,
            })??;
        let state = Arc::new(Mutex::new(HostQueue::new(setup.qid, negotiated)));
        let (read, write) = stream.into_split();
        let (tx, rx) = mpsc::unbounded_channel();
        let alive = Arc::new(AtomicBool::new(true));
        let reader = tokio::spawn(read_loop(read, state.clone(), tx.clone(), alive.clone()));
        let writer = tokio::spawn(write_loop(write, rx, state.clone(), alive.clone()));
        Ok(Queue {
            qid: setup.qid,
            state,
            writer: tx,
            permits: Arc::new(Semaphore::new(usize::from(setup.depth.max(1)))),
            alive,
            tasks: vec![reader, writer],
        })
    }

    pub fn qid(&self) -> u16 {
        self.qid
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    pub fn set_io_in_capsule(&self, bytes: u32) {
        self.state.lock().set_io_in_capsule(bytes);
    }

    pub fn set_sq_flow_control(&self, enabled: bool) {
        self.state.lock().set_sq_flow_control(enabled);
    }

    /// Sends a command and waits for its completion (or `timeout`).
    pub async fn submit(
        &self,
        name: &str,
        sqe: Sqe,
        data_out: Option<Arc<[u8]>>,
        data_in: u32,
        timeout: Duration,
    ) -> Result<Completion, NvmeError> {
        if !self.is_alive() {
            return Err(NvmeError::Disconnected);
        }
        let waiting = async {
            let permit = self.permits.clone().acquire_owned().await.map_err(|_| NvmeError::Disconnected)?;
            let (tx, rx) = oneshot::channel();
            let mut out = Vec::new();
            let cid = self.state.lock().submit(sqe, data_out, data_in, (tx, permit), &mut out).map_err(|(_, e)| e)?;
            self.writer.send(Outgoing::Bytes(out)).map_err(|_| NvmeError::Disconnected)?;
            Ok::<_, NvmeError>((cid, rx))
        };
        let (cid, rx) = match tokio::time::timeout(timeout, waiting).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(NvmeError::Timeout { what: format!("{name} waiting for a queue slot"), after: timeout })
            }
        };
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(NvmeError::Disconnected),
            Err(_) => {
                // Keep the CID reserved until the controller answers; stop waiting for it.
                self.state.lock().abandon(cid);
                Err(NvmeError::Timeout { what: format!("{name} (queue {}, command {cid})", self.qid), after: timeout })
            }
        }
    }

    /// Closes the connection; waiting commands fail with `Disconnected`.
    pub fn close(&self) {
        self.alive.store(false, Ordering::Release);
        for t in &self.tasks {
            t.abort();
        }
        let failed = self.state.lock().fail_all(&NvmeError::Disconnected);
        finish(failed);
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        self.close();
    }
}

fn finish(done: Vec<Finished<Responder>>) {
    for ((tx, _permit), result) in done {
        let _ = tx.send(result);
    }
}

async fn read_loop(
    mut read: OwnedReadHalf,
    state: Arc<Mutex<HostQueue<Responder>>>,
    writer: mpsc::UnboundedSender<Outgoing>,
    alive: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 256 * 1024];
    let mut done = Vec::new();
    loop {
        let n = match read.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(_) => break,
        };
        let mut out = Vec::new();
        let result = state.lock().receive(&buf[..n], &mut out, &mut done);
        if !out.is_empty() {
            let _ = writer.send(Outgoing::Bytes(out));
        }
        finish(std::mem::take(&mut done));
        if let Err(f) = result {
            tracing::warn!("nvme queue closed: {}", f.error);
            alive.store(false, Ordering::Release);
            if let Some(t) = f.term_req {
                let _ = writer.send(Outgoing::Last(t));
            }
            return;
        }
    }
    alive.store(false, Ordering::Release);
    let failed = state.lock().fail_all(&NvmeError::Disconnected);
    finish(failed);
}

async fn write_loop(
    mut write: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    state: Arc<Mutex<HostQueue<Responder>>>,
    alive: Arc<AtomicBool>,
) {
    let mut batch = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut last = false;
        let mut push = |m: Outgoing, batch: &mut Vec<u8>| match m {
            Outgoing::Bytes(b) => batch.extend_from_slice(&b),
            Outgoing::Last(b) => {
                batch.extend_from_slice(&b);
                last = true;
            }
        };
        push(first, &mut batch);
        // Coalesce what is already queued into one write.
        while batch.len() < 256 * 1024 {
            match rx.try_recv() {
                Ok(m) => push(m, &mut batch),
                Err(_) => break,
            }
        }
        if write.write_all(&batch).await.is_err() {
            break;
        }
        batch.clear();
        if last {
            let _ = write.shutdown().await;
            break;
        }
    }
    alive.store(false, Ordering::Release);
    let failed = state.lock().fail_all(&NvmeError::Disconnected);
    finish(failed);
}
