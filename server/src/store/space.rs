//! Space accounting of a circular log addressed by ever-growing logical positions.
//!
//! The live part of a log is `[head, tail)`; the physical place of position `p` is
//! `p mod size`. Nothing placed in the log straddles its physical end: [`LogSpace::place`]
//! skips to the start of the next lap instead (the skipped tail of the lap is dead space that
//! garbage collection walks over).

/// One log's head, tail and size, in its unit (blocks for the bucket log, bytes for the value log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogSpace {
    pub head: u64,
    pub tail: u64,
    pub size: u64,
}

impl LogSpace {
    pub fn new(head: u64, tail: u64, size: u64) -> LogSpace {
        debug_assert!(head <= tail && tail - head <= size);
        LogSpace { head, tail, size }
    }

    pub fn used(&self) -> u64 {
        self.tail - self.head
    }

    pub fn free(&self) -> u64 {
        self.size - self.used()
    }

    /// Where `n` units starting at or after `at` fit without straddling the physical end.
    pub fn place(&self, at: u64, n: u64) -> u64 {
        let off = at % self.size;
        if off + n > self.size {
            at + (self.size - off)
        } else {
            at
        }
    }

    /// Most units that placing `n` units at the tail can consume (the object and a skip).
    pub fn worst_case(n: u64) -> u64 {
        2 * n
    }

    /// The end of the lap that `at` is in.
    pub fn lap_end(&self, at: u64) -> u64 {
        (at / self.size + 1) * self.size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn place_skips_to_the_next_lap() {
        let s = LogSpace::new(0, 0, 100);
        assert_eq!(s.place(10, 20), 10);
        assert_eq!(s.place(90, 10), 90);
        assert_eq!(s.place(95, 10), 100);
        assert_eq!(s.place(195, 10), 200);
        assert_eq!(s.lap_end(195), 200);
        assert_eq!(s.lap_end(200), 300);
    }
}
