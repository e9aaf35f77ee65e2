//! Bucket READs with no allocation: the GET hit path on registered memory and the completion
//! queue.
//!
//! Each queue pair gets [`ProbeLanes`]: one registered region cut into lanes of a bucket's size.
//! A probe takes a free lane, posts a `ReadInto` of the bucket into it with the lane's index as
//! the work-request id, and waits for that id to come out of the completion queue. No task of its
//! own polls the queue: whichever waiting probe is woken drains it, hands each completion to its
//! lane and wakes that lane's task. The queue's one notification waker always belongs to a probe
//! that is still waiting (a probe that finishes re-arms it with another waiting probe's waker),
//! so no completion is left unnoticed.
//!
//! A lane belongs to the backend from the post until its completion is drained, as verbs
//! requires: a probe abandoned on the way (its timeout, or its caller dropping it) leaves its lane
//! marked, and the lane is freed only when its completion arrives. With every lane in use, the
//! caller falls back to the allocating [`QueuePair::post`].

use parking_lot::Mutex;
use scalio_common::fabric::{
    Disconnect, FabricError, LocalKey, LocalSlice, MemoryRegion, QueuePair, RemoteAddr, WorkCompletion, WorkRequest,
};
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

/// Completions drained per call to the backend.
const POLL_BATCH: usize = 32;

enum Lane {
    Free,
    /// Posted; the waker of the probe waiting for it.
    Waiting(Option<Waker>),
    /// Completed, not yet seen by its probe.
    Done(Result<(), FabricError>),
    /// Completed and seen: its probe is reading the bytes.
    Reading,
    /// Posted, and its probe went away: freed when its completion is drained.
    Abandoned,
}

struct State {
    lanes: Vec<Lane>,
    free: Vec<u32>,
    /// Probes waiting for a completion.
    waiting: usize,
    /// Reused buffer for drained completions.
    polled: Vec<WorkCompletion>,
}

/// Registered lanes of one queue pair for bucket READs.
pub(crate) struct ProbeLanes {
    qp: Arc<dyn QueuePair>,
    memory: Arc<MemoryRegion>,
    lkey: LocalKey,
    lane_bytes: usize,
    state: Mutex<State>,
}

thread_local! {
    /// Where a probe copies its lane's bytes to look at them (registered memory is atomic words,
    /// not a byte slice); grows once per thread to the largest bucket.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl ProbeLanes {
    /// Registers `lanes` lanes of `lane_bytes` each with `qp`.
    pub fn new(qp: Arc<dyn QueuePair>, lanes: usize, lane_bytes: usize) -> Result<ProbeLanes, FabricError> {
        let lanes = lanes.clamp(1, u32::MAX as usize);
        let memory = Arc::new(MemoryRegion::new(lanes * lane_bytes));
        let lkey = qp.register_local(memory.clone())?;
        Ok(ProbeLanes {
            qp,
            memory,
            lkey,
            lane_bytes,
            state: Mutex::new(State {
                lanes: (0..lanes).map(|_| Lane::Free).collect(),
                free: (0..lanes as u32).rev().collect(),
                waiting: 0,
                polled: Vec::with_capacity(POLL_BATCH),
            }),
        })
    }

    /// READs `len` bytes (at most a lane) at `remote` into a lane and gives them to `inspect`.
    /// `None` if every lane is in use (the caller reads another way).
    pub async fn read<R>(
        &self,
        remote: RemoteAddr,
        len: usize,
        inspect: impl FnOnce(&[u8]) -> R,
    ) -> Option<Result<R, FabricError>> {
        debug_assert!(len <= self.lane_bytes);
        let lane = {
            let mut st = self.state.lock();
            if st.free.is_empty() {
                // Abandoned lanes come back only through their completions.
                self.drain(&mut st);
            }
            st.free.pop()?
        };
        // Held, not posted: if this probe goes away now, the lane is simply free again.
        self.state.lock().lanes[lane as usize] = Lane::Reading;
        let hold = Hold { lanes: self, lane };
        let local = LocalSlice { lkey: self.lkey, offset: lane as usize * self.lane_bytes, len: len as u32 };
        let mut attempt = 0;
        loop {
            {
                let mut st = self.state.lock();
                st.lanes[lane as usize] = Lane::Waiting(None);
                st.waiting += 1;
            }
            let posted = self.qp.post_signaled(u64::from(lane), &[WorkRequest::ReadInto { remote, local }]);
            if let Err(e) = posted {
                // Refused: nothing was posted.
                {
                    let mut st = self.state.lock();
                    st.waiting -= 1;
                    st.lanes[lane as usize] = Lane::Reading;
                }
                if e != FabricError::QueueFull {
                    return Some(Err(e));
                }
                // Many probes in flight on one queue pair: wait for slots, not fail.
                crate::read::wait_for_room(&mut attempt).await;
                continue;
            }
            break;
        }
        if let Err(e) = (Wait { hold: &hold }).await {
            return Some(Err(e));
        }
        Some(Ok(SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            scratch.resize(len, 0);
            self.memory.read(local.offset, &mut scratch).expect("a lane lies inside the lanes' memory");
            inspect(&scratch)
        })))
    }

    /// Hands every completion in the queue to its lane, waking the probes they finish.
    fn drain(&self, st: &mut State) {
        loop {
            let n = self.qp.poll_cq(&mut st.polled, POLL_BATCH);
            if n == 0 {
                return;
            }
            let State { lanes, free, waiting, polled } = st;
            for wc in polled.drain(..) {
                let Some(lane) = usize::try_from(wc.wr_id).ok().and_then(|i| lanes.get_mut(i)) else {
                    tracing::warn!(wr_id = wc.wr_id, "a completion for no lane");
                    continue;
                };
                match std::mem::replace(lane, Lane::Done(wc.result)) {
                    Lane::Waiting(w) => {
                        *waiting -= 1;
                        if let Some(w) = w {
                            w.wake();
                        }
                    }
                    Lane::Abandoned => {
                        *lane = Lane::Free;
                        free.push(wc.wr_id as u32);
                    }
                    other => {
                        tracing::warn!(wr_id = wc.wr_id, "a second completion for a lane");
                        *lane = other;
                    }
                }
            }
        }
    }

    /// Arms the completion queue with the waker of some probe still waiting, if there is one.
    fn rearm(&self, st: &State) {
        if st.waiting == 0 {
            return;
        }
        if let Some(w) = st.lanes.iter().find_map(|l| match l {
            Lane::Waiting(Some(w)) => Some(w),
            _ => None,
        }) {
            self.qp.arm_cq(w);
        }
    }
}

/// A lane taken by a probe: released when the probe is done with it, or abandoned if the probe
/// goes away while the backend still owns it.
struct Hold<'a> {
    lanes: &'a ProbeLanes,
    lane: u32,
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        let mut st = self.lanes.state.lock();
        let lane = &mut st.lanes[self.lane as usize];
        match lane {
            Lane::Waiting(_) => {
                *lane = Lane::Abandoned;
                st.waiting -= 1;
                // This probe's waker may be the armed one.
                self.lanes.rearm(&st);
            }
            Lane::Done(_) | Lane::Reading => {
                *lane = Lane::Free;
                st.free.push(self.lane);
            }
            Lane::Free | Lane::Abandoned => {}
        }
    }
}

/// Waits for the completion of a held lane.
struct Wait<'h, 'a> {
    hold: &'h Hold<'a>,
}

impl Future for Wait<'_, '_> {
    type Output = Result<(), FabricError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let lanes = self.hold.lanes;
        let i = self.hold.lane as usize;
        let mut st = lanes.state.lock();
        lanes.drain(&mut st);
        match std::mem::replace(&mut st.lanes[i], Lane::Reading) {
            Lane::Done(result) => {
                lanes.rearm(&st);
                Poll::Ready(result)
            }
            Lane::Waiting(w) => {
                let w = match w {
                    Some(w) if w.will_wake(cx.waker()) => w,
                    _ => cx.waker().clone(),
                };
                st.lanes[i] = Lane::Waiting(Some(w));
                // Wakes at once if a completion slipped in after the drain.
                lanes.qp.arm_cq(cx.waker());
                Poll::Pending
            }
            other => {
                // A held lane is waiting or done while its probe waits; anything else is a bug
                // here, reported rather than panicked on.
                st.lanes[i] = other;
                Poll::Ready(Err(FabricError::Disconnected(Disconnect::Abandoned)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scalio_common::fabric::tcp::{AsyncTcpQueuePair, NicConfig, TcpNic};
    use scalio_common::fabric::{Access, IncomingRpc, RegionDesc, RegionTable, RpcService};
    use std::time::Duration;

    /// A NIC serving one READ-only region of `len` bytes whose byte `i` is `i * 7 + 1`.
    fn nic(len: usize) -> (TcpNic, RegionDesc) {
        let regions = Arc::new(RegionTable::new());
        let region = Arc::new(MemoryRegion::new(len));
        let pattern: Vec<u8> = (0..len).map(|i| (i * 7 + 1) as u8).collect();
        region.write(0, &pattern).unwrap();
        let desc = regions.register(region, Access::READ);
        let service: Arc<dyn RpcService> = Arc::new(|_rpc: IncomingRpc| {});
        (TcpNic::bind("127.0.0.1:0", regions, service, NicConfig::default()).unwrap(), desc)
    }

    fn expected(offset: usize, len: usize) -> Vec<u8> {
        (offset..offset + len).map(|i| (i * 7 + 1) as u8).collect()
    }

    /// Many concurrent probes over four lanes: each gets its own bytes, none waits forever (the
    /// completion queue's waker is handed on as probes finish), and the ones that found every
    /// lane busy are told so.
    #[test]
    fn many_probes_share_few_lanes() {
        let (nic, desc) = nic(1 << 16);
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let qp: Arc<dyn QueuePair> = Arc::new(AsyncTcpQueuePair::connect(nic.local_addr()).unwrap());
            let lanes = Arc::new(ProbeLanes::new(qp, 4, 256).unwrap());
            let tasks: Vec<_> = (0..64)
                .map(|t| {
                    let lanes = lanes.clone();
                    tokio::spawn(async move {
                        let (mut done, mut busy) = (0, 0);
                        for n in 0..50usize {
                            let offset = (t * 977 + n * 131) % ((1 << 16) - 256);
                            let len = 1 + (t + n) % 256;
                            match lanes.read(desc.at(offset as u64), len, <[u8]>::to_vec).await {
                                Some(read) => {
                                    assert_eq!(read.unwrap(), expected(offset, len), "task {t} read {n}");
                                    done += 1;
                                }
                                None => busy += 1,
                            }
                        }
                        (done, busy)
                    })
                })
                .collect();
            let (mut done, mut busy) = (0, 0);
            for t in tasks {
                let (d, b) = tokio::time::timeout(Duration::from_secs(60), t).await.expect("a probe hung").unwrap();
                done += d;
                busy += b;
            }
            assert_eq!(done + busy, 64 * 50);
            assert!(done >= 50, "only {done} reads went through the lanes");
            let st = lanes.state.lock();
            assert_eq!(st.waiting, 0);
            assert_eq!(st.free.len(), 4, "every lane is free again");
        });
    }

    /// A probe dropped while its READ is in flight leaves its lane to the backend: the lane is
    /// not reused until the completion has arrived (a READ may still land in it), then it is.
    #[test]
    fn an_abandoned_lane_waits_for_its_completion() {
        let (nic, desc) = nic(4096);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let qp: Arc<dyn QueuePair> = Arc::new(AsyncTcpQueuePair::connect(nic.local_addr()).unwrap());
            let lanes = ProbeLanes::new(qp, 1, 64).unwrap();
            let mut cx = Context::from_waker(Waker::noop());
            {
                // Posted and polled once: on this one-thread runtime, the queue pair's driver has
                // not run, so the completion cannot have arrived.
                let mut first = std::pin::pin!(lanes.read(desc.at(0), 64, <[u8]>::to_vec));
                assert!(first.as_mut().poll(&mut cx).is_pending());
            }
            let mut second = std::pin::pin!(lanes.read(desc.at(0), 64, <[u8]>::to_vec));
            assert!(matches!(second.as_mut().poll(&mut cx), Poll::Ready(None)), "the lane is still the backend's");
            tokio::time::sleep(Duration::from_millis(50)).await;
            let third = lanes.read(desc.at(100), 64, <[u8]>::to_vec).await;
            assert_eq!(third.unwrap().unwrap(), expected(100, 64), "freed by its completion, then reused");
        });
    }
}
