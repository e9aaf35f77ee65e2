//! The staging ring of a queue pair: registered bytes that carry what a work request needs in
//! registered memory but the caller did not register (the data of a `Write { data }` too large
//! to post inline, the landing place of a `Read` whose bytes go back in a `Vec`, the fragments
//! of an RPC message).
//!
//! Work requests on one send queue complete in posting order, so the ring hands out space at its
//! head in posting order and takes it back at its tail in the same order: a chain's space is
//! free once a signaled completion covers the chain. Sans-IO: offsets only; the bytes are a
//! registered [`MemoryRegion`](crate::fabric::MemoryRegion) owned by the queue pair.

/// Space handed out in posting order and taken back in the same order.
#[derive(Debug, Clone)]
pub struct Ring {
    capacity: u64,
    /// Bytes handed out so far (a position that only grows; the offset is `head % capacity`).
    head: u64,
    /// Every byte before this position is free again.
    tail: u64,
}

impl Ring {
    pub fn new(capacity: usize) -> Ring {
        Ring { capacity: capacity as u64, head: 0, tail: 0 }
    }

    pub fn capacity(&self) -> usize {
        self.capacity as usize
    }

    /// Bytes in use (including what was skipped at a wrap).
    #[cfg(test)]
    pub fn used(&self) -> u64 {
        self.head - self.tail
    }

    /// The position up to which everything handed out so far lies: what a chain posted now
    /// releases when it completes.
    pub fn head(&self) -> u64 {
        self.head
    }

    /// `len` contiguous bytes: their offset in the buffer, or None when the ring lacks the space
    /// now (a request never fits if `len` exceeds the capacity). Zero bytes take nothing.
    pub fn alloc(&mut self, len: usize) -> Option<usize> {
        let len = len as u64;
        if len == 0 {
            return Some((self.head % self.capacity.max(1)) as usize);
        }
        if len > self.capacity {
            return None;
        }
        if self.head == self.tail {
            // Empty: start over at offset 0, so that any request up to the capacity fits.
            self.head = self.head.div_ceil(self.capacity) * self.capacity;
            self.tail = self.head;
        }
        let at = self.head % self.capacity;
        // Contiguous: skip the rest of the buffer when the request does not fit before its end.
        let start = if at + len > self.capacity { self.head + (self.capacity - at) } else { self.head };
        if start + len - self.tail > self.capacity {
            return None;
        }
        self.head = start + len;
        Some((start % self.capacity) as usize)
    }

    /// Everything handed out before position `upto` (a value [`head`](Self::head) returned) is
    /// free again.
    pub fn release(&mut self, upto: u64) {
        self.tail = self.tail.max(upto.min(self.head));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn space_comes_back_in_order_and_wraps_contiguously() {
        let mut r = Ring::new(100);
        assert_eq!(r.alloc(40), Some(0));
        let a = r.head();
        assert_eq!(r.alloc(40), Some(40));
        let b = r.head();
        assert_eq!(r.alloc(30), None, "only 20 bytes left");
        r.release(a);
        // 30 bytes do not fit in the 20 at the end: the request starts over at 0.
        assert_eq!(r.alloc(30), Some(0));
        assert_eq!(r.used(), 20 + 30 + 40);
        assert_eq!(r.alloc(20), None, "the tail is still at 40");
        r.release(b);
        // The 20 bytes skipped at the wrap count as used until the request after them is free.
        assert_eq!(r.alloc(70), None);
        assert_eq!(r.alloc(50), Some(30));
        assert_eq!(r.alloc(101), None);
        assert!(r.alloc(0).is_some(), "zero bytes always fit");
    }

    #[test]
    fn a_model_check_of_contiguous_non_overlapping_space() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut r = Ring::new(1000);
        let mut live: std::collections::VecDeque<(usize, usize, u64)> = Default::default();
        for _ in 0..10_000 {
            if rng.random_bool(0.55) {
                let len = rng.random_range(1..300);
                if let Some(at) = r.alloc(len) {
                    assert!(at + len <= 1000);
                    for &(o, l, _) in &live {
                        assert!(at + len <= o || o + l <= at, "{at}+{len} overlaps {o}+{l}");
                    }
                    live.push_back((at, len, r.head()));
                } else {
                    assert!(!live.is_empty() || len > 1000, "an empty ring refused {len}");
                }
            } else if let Some((_, _, end)) = live.pop_front() {
                r.release(end);
            }
        }
    }
}
