//! The in-process backend: queue pairs that execute work requests directly on the registered
//! memory, with fault injection for tests.
//!
//! Work requests run on the posting thread, in order, before `post` returns. A READ copies word
//! by word like a NIC, so a concurrent WRITE can tear it; [`Faults`] widens or forces that window
//! (a pause or a callback in the middle of every READ) and delays operations.

mod channel;
mod faults;

pub use faults::{Faults, TearHook};

use super::{
    completion, validate_chain, Completion, FabricError, LocalKey, LocalRegions, MemoryRegion, PeerId, QueuePair,
    RegionTable, RpcService, WorkCompletion, WorkRequest,
};
use channel::Channel;
use parking_lot::{Mutex, RwLock};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Waker;

/// An in-process "network": the server's regions and RPC service, and the faults to inject.
pub struct MemFabric {
    regions: Arc<RegionTable>,
    service: RwLock<Option<Arc<dyn RpcService>>>,
    faults: Faults,
    /// RPCs each queue pair opened from now on may have at the service without a response.
    rpc_credits: AtomicU32,
    /// The largest message of queue pairs opened from now on.
    max_message: AtomicUsize,
}

/// Default of [`MemFabric::set_rpc_credits`], as the software NIC's default grant.
pub const DEFAULT_RPC_CREDITS: u32 = 256;

impl MemFabric {
    pub fn new(regions: Arc<RegionTable>) -> Arc<MemFabric> {
        Arc::new(MemFabric {
            regions,
            service: RwLock::new(None),
            faults: Faults::default(),
            rpc_credits: AtomicU32::new(DEFAULT_RPC_CREDITS),
            max_message: AtomicUsize::new(super::DEFAULT_MAX_MESSAGE),
        })
    }

    /// The largest message of queue pairs opened from now on (1 to [`MAX_TRANSFER`](super::MAX_TRANSFER)
    /// bytes; larger requests go by [`rendezvous`](super::rendezvous), as on the other backends).
    pub fn set_max_message(&self, bytes: usize) {
        self.max_message.store(bytes.clamp(1, super::MAX_TRANSFER), Ordering::Relaxed);
    }

    /// The credits of queue pairs opened from now on (at least 1).
    pub fn set_rpc_credits(&self, credits: u32) {
        self.rpc_credits.store(credits.max(1), Ordering::Relaxed);
    }

    pub fn rpc_credits(&self) -> u32 {
        self.rpc_credits.load(Ordering::Relaxed)
    }

    pub fn regions(&self) -> &Arc<RegionTable> {
        &self.regions
    }

    pub fn set_service(&self, service: Arc<dyn RpcService>) {
        *self.service.write() = Some(service);
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Opens a queue pair.
    pub fn connect(self: &Arc<Self>) -> MemQueuePair {
        MemQueuePair {
            fabric: self.clone(),
            channel: Channel::new(self.rpc_credits(), PeerId::fresh()),
            max_message: self.max_message.load(Ordering::Relaxed),
            next_id: AtomicU64::new(1),
            async_errors: AtomicU64::new(0),
            errored: AtomicBool::new(false),
            locals: RwLock::new(LocalRegions::default()),
            cq: Mutex::new(CompletionQueue::default()),
        }
    }
}

/// A queue pair of the in-process backend.
pub struct MemQueuePair {
    fabric: Arc<MemFabric>,
    channel: Arc<Channel>,
    max_message: usize,
    next_id: AtomicU64,
    async_errors: AtomicU64,
    /// A work request failed: the queue pair is in the error state and executes nothing more.
    errored: AtomicBool,
    /// The caller's registered memory.
    locals: RwLock<LocalRegions>,
    cq: Mutex<CompletionQueue>,
}

/// Completions of chains posted with an id, and the waker armed for them.
#[derive(Default)]
struct CompletionQueue {
    done: VecDeque<WorkCompletion>,
    armed: Option<Waker>,
}

impl MemQueuePair {
    /// Runs `chain` unless the queue pair is in the error state; a failure puts it there and
    /// flushes the RPCs still waiting for a response.
    fn execute(&self, chain: &[WorkRequest<'_>]) -> Result<Vec<u8>, FabricError> {
        if self.errored.load(Ordering::Acquire) {
            return Err(FabricError::Flushed);
        }
        let r = self.execute_chain(chain);
        if r.is_err() {
            self.errored.store(true, Ordering::Release);
            self.channel.flush(FabricError::Flushed);
        }
        r
    }

    /// Checks a chain's shape and local slices: a refusal here leaves the queue pair's state as
    /// it is.
    fn check(&self, chain: &[WorkRequest<'_>], signaled: bool) -> Result<(), FabricError> {
        validate_chain(chain, signaled)?;
        let locals = self.locals.read();
        for wr in chain {
            if let WorkRequest::ReadInto { local, .. } | WorkRequest::WriteFrom { local, .. } = wr {
                locals.resolve(local)?;
            }
        }
        Ok(())
    }

    /// Serves one READ, with the injected faults: a pause, or the tear hook, half-way through.
    fn read_remote(&self, remote: super::RemoteAddr, out: &mut [u8]) -> Result<(), super::RemoteAccessError> {
        let f = &self.fabric.faults;
        let peer = Some(self.channel.peer());
        let (region, offset) = self.fabric.regions.resolve_for(peer, remote, out.len(), super::Access::READ)?;
        let pause = *f.read_pause.lock();
        let hook = f.tear_hook.lock().clone();
        let mut mid = || {
            if !pause.is_zero() {
                std::thread::sleep(pause);
            }
            if let Some(h) = &hook {
                h();
            }
        };
        let half = out.len() / 2;
        region.read_with(offset, out, half, &mut mid)
    }

    fn execute_chain(&self, chain: &[WorkRequest<'_>]) -> Result<Vec<u8>, FabricError> {
        let f = &self.fabric.faults;
        let total: usize = chain.iter().map(|w| w.read_len()).sum();
        let mut out = vec![0u8; total];
        let mut at = 0;
        let locals = self.locals.read();
        for (index, wr) in chain.iter().enumerate() {
            let delay = *f.wr_delay.lock();
            if !delay.is_zero() {
                std::thread::sleep(delay);
            }
            let fail = |error| FabricError::Remote { index: index as u16, error };
            match *wr {
                WorkRequest::Read { remote, len } => {
                    let len = len as usize;
                    self.read_remote(remote, &mut out[at..at + len]).map_err(fail)?;
                    at += len;
                }
                WorkRequest::Write { remote, data } => {
                    self.fabric.regions.write_for(Some(self.channel.peer()), remote, data).map_err(fail)?;
                }
                WorkRequest::ReadInto { remote, local } => {
                    let mut data = vec![0; local.len as usize];
                    self.read_remote(remote, &mut data).map_err(fail)?;
                    let (region, offset) = locals.resolve(&local)?;
                    region.write(offset, &data).expect("checked above");
                }
                WorkRequest::WriteFrom { remote, local } => {
                    let (region, offset) = locals.resolve(&local)?;
                    let mut data = vec![0; local.len as usize];
                    region.read(offset, &mut data).expect("checked above");
                    self.fabric.regions.write_for(Some(self.channel.peer()), remote, &data).map_err(fail)?;
                }
            }
        }
        Ok(out)
    }
}

/// Closing a queue pair is dropping it: the service is told its peer left, as the NIC tells it
/// when a connection closes.
impl Drop for MemQueuePair {
    fn drop(&mut self) {
        self.channel.close();
        if let Some(service) = self.fabric.service.read().clone() {
            service.peer_closed(self.channel.peer());
        }
    }
}

impl QueuePair for MemQueuePair {
    fn post(&self, chain: &[WorkRequest<'_>]) -> Completion<Vec<u8>> {
        Completion::ready(self.check(chain, true).and_then(|()| self.execute(chain)))
    }

    fn post_unsignaled(&self, chain: &[WorkRequest<'_>]) -> Result<(), FabricError> {
        self.check(chain, false)?;
        match self.execute(chain) {
            Ok(_) => {}
            Err(FabricError::Flushed) => return Err(FabricError::Flushed),
            Err(_) => {
                self.async_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    fn call(&self, request: &[u8]) -> Completion<Vec<u8>> {
        if request.len() > self.max_message {
            return Completion::ready(Err(FabricError::TooLarge(request.len())));
        }
        if self.errored.load(Ordering::Acquire) {
            return Completion::ready(Err(FabricError::Flushed));
        }
        let Some(service) = self.fabric.service.read().clone() else {
            return Completion::ready(Err(FabricError::NoService));
        };
        let delay = *self.fabric.faults.rpc_delay.lock();
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (c, f) = completion();
        if let Err((c, e)) = self.channel.call(id, request, service, c) {
            c.complete(Err(e));
        }
        f
    }

    fn max_message(&self) -> usize {
        self.max_message
    }

    fn async_errors(&self) -> u64 {
        self.async_errors.load(Ordering::Relaxed)
    }

    fn register_local(&self, region: Arc<MemoryRegion>) -> Result<LocalKey, FabricError> {
        self.locals.write().register(region)
    }

    fn post_signaled(&self, wr_id: u64, chain: &[WorkRequest<'_>]) -> Result<(), FabricError> {
        if chain.iter().any(|wr| matches!(wr, WorkRequest::Read { .. })) {
            return Err(FabricError::ReadWithoutBuffer);
        }
        self.check(chain, true)?;
        if self.errored.load(Ordering::Acquire) {
            return Err(FabricError::Flushed);
        }
        let result = self.execute(chain).map(drop);
        let armed = {
            let mut cq = self.cq.lock();
            cq.done.push_back(WorkCompletion { wr_id, result });
            cq.armed.take()
        };
        if let Some(w) = armed {
            w.wake();
        }
        Ok(())
    }

    fn poll_cq(&self, out: &mut Vec<WorkCompletion>, max: usize) -> usize {
        let mut cq = self.cq.lock();
        let n = max.min(cq.done.len());
        out.extend(cq.done.drain(..n));
        n
    }

    fn arm_cq(&self, waker: &Waker) {
        let mut cq = self.cq.lock();
        if cq.done.is_empty() {
            cq.armed = Some(waker.clone());
        } else {
            drop(cq);
            waker.wake_by_ref();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fabric::conformance::TestServer;

    fn make(service: Arc<dyn RpcService>) -> TestServer {
        let fabric = MemFabric::new(Arc::new(RegionTable::new()));
        fabric.set_service(service);
        let registrar = fabric.regions().clone();
        fabric.set_rpc_credits(8);
        TestServer::new(registrar, 8, move || Arc::new(fabric.connect()) as Arc<dyn QueuePair>, ())
    }

    crate::fabric_conformance!(make);

    #[test]
    fn tear_hook_tears_a_read() {
        use crate::fabric::{Access, MemoryRegion};
        let fabric = MemFabric::new(Arc::new(RegionTable::new()));
        let region = Arc::new(MemoryRegion::new(64));
        let d = fabric.regions().register(region.clone(), Access::READ_WRITE);
        region.write(0, &[1; 64]).unwrap();
        let r2 = region.clone();
        fabric.faults().set_tear_hook(Some(Arc::new(move || r2.write(0, &[2; 64]).unwrap())));
        let qp = fabric.connect();
        let got = qp.post(&[WorkRequest::Read { remote: d.at(0), len: 64 }]).wait().unwrap();
        assert_eq!(&got[..32], &[1; 32], "first half read before the concurrent write");
        assert_eq!(&got[32..], &[2; 32], "second half read after it");
    }
}
