//! Send-queue accounting, as on verbs: a queue pair has a fixed number of slots; every posted work
//! request takes one, and a slot is given back only when a *signaled* completion reports that
//! request, or a later one, done. Unsignaled requests therefore hold their slots until some later
//! signaled request completes, and a queue that is full refuses posts ([`FabricError::QueueFull`]):
//! backpressure, never unbounded buffering.
//!
//! So that callers of [`QueuePair::post_unsignaled`](super::QueuePair::post_unsignaled) need not
//! count, backends practise *selective signaling*: once a quarter of the queue is held by
//! unsignaled requests, the next unsignaled chain is posted signaled, and its completion (which nobody waits
//! for) frees the slots. Sans-IO: the backend calls [`take`](SendQueue::take) when posting and
//! [`retire`](SendQueue::retire) when a signaled completion arrives.

use super::FabricError;

/// Default slots of a send queue (a common verbs `max_send_wr`).
pub const DEFAULT_SEND_QUEUE_DEPTH: u32 = 1024;

/// How a chain that took slots must be posted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Posted {
    /// Sequence number of the chain's last request: its signaled completion retires up to here.
    pub end: u64,
    /// Whether the chain must be posted signaled (asked for, or selective signaling).
    pub signaled: bool,
}

/// The slots of one send queue.
#[derive(Debug, Clone)]
pub struct SendQueue {
    depth: u64,
    /// Requests posted so far (the sequence number of the last one).
    posted: u64,
    /// Every request up to this sequence number is known complete.
    retired: u64,
    /// Sequence number of the last request posted signaled.
    last_signaled: u64,
}

impl SendQueue {
    pub fn new(depth: u32) -> SendQueue {
        SendQueue { depth: u64::from(depth.max(2)), posted: 0, retired: 0, last_signaled: 0 }
    }

    pub fn depth(&self) -> u64 {
        self.depth
    }

    /// Requests posted and not yet known complete.
    pub fn outstanding(&self) -> u64 {
        self.posted - self.retired
    }

    /// Takes slots for a chain of `n` requests, posted `signaled` or not. An unsignaled chain is
    /// turned signaled when unsignaled requests would otherwise hold a quarter of the queue (so
    /// that even with one such completion still on its way, the queue does not fill).
    pub fn take(&mut self, n: usize, signaled: bool) -> Result<Posted, FabricError> {
        let n = n as u64;
        if n > self.depth {
            return Err(FabricError::TooLarge(n as usize));
        }
        if self.outstanding() + n > self.depth {
            return Err(FabricError::QueueFull);
        }
        self.posted += n;
        let unsignaled_run = self.posted - self.last_signaled.max(self.retired);
        let signaled = signaled || unsignaled_run >= self.depth / 4;
        if signaled {
            self.last_signaled = self.posted;
        }
        Ok(Posted { end: self.posted, signaled })
    }

    /// A signaled chain ending at sequence number `end` completed (successfully or not): it and
    /// every request before it leave the queue.
    pub fn retire(&mut self, end: u64) {
        self.retired = self.retired.max(end.min(self.posted));
    }

    /// Everything posted is known complete (e.g. executed synchronously).
    pub fn retire_all(&mut self) {
        self.retired = self.posted;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsignaled_requests_hold_slots_until_a_signaled_completion() {
        let mut q = SendQueue::new(8);
        // One unsignaled request: nothing frees it.
        assert!(!q.take(1, false).unwrap().signaled);
        assert_eq!(q.outstanding(), 1);
        // The second reaches a quarter of the queue: selective signaling posts it signaled.
        let p = q.take(1, false).unwrap();
        assert_eq!(p, Posted { end: 2, signaled: true });
        // Signaled requests fill the rest; the queue is then full.
        let a = q.take(3, true).unwrap();
        let b = q.take(3, true).unwrap();
        assert_eq!(q.take(1, true), Err(FabricError::QueueFull));
        assert_eq!(q.take(1, false), Err(FabricError::QueueFull));
        // Completions retire in order: the later one frees everything before it too.
        q.retire(a.end);
        assert_eq!(q.outstanding(), 3);
        q.retire(p.end); // a stale, earlier completion frees nothing more
        assert_eq!(q.outstanding(), 3);
        q.retire(b.end);
        assert_eq!(q.outstanding(), 0);
        assert_eq!(q.take(9, true), Err(FabricError::TooLarge(9)));
    }

    #[test]
    fn selective_signaling_keeps_an_unsignaled_stream_flowing() {
        let mut q = SendQueue::new(16);
        let mut signaled = Vec::new();
        for _ in 0..1000 {
            let p = q.take(3, false).expect("never full when completions come back");
            if p.signaled {
                signaled.push(p.end);
            }
            // The NIC completes the signaled chains some time later.
            if signaled.len() > 1 {
                q.retire(signaled.remove(0));
            }
        }
        assert!(q.outstanding() <= q.depth());
        assert!(signaled.len() <= 2);
    }
}
