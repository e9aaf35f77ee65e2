//! CPU time of threads: counters that prove which threads did the work (workers, NIC threads,
//! the NVMe target), measured rather than estimated.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// CPU time the calling thread has used so far, in nanoseconds.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID needs no other setup.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU time used by a group of threads (all NIC threads, all workers, ...). Each thread reports
/// its own progress with [`CpuMeter::tick`] from its loop, and once more when the meter is dropped.
#[derive(Default, Debug)]
pub struct CpuGroup {
    ns: AtomicU64,
}

impl CpuGroup {
    pub fn new() -> Arc<CpuGroup> {
        Arc::new(CpuGroup::default())
    }

    /// Total CPU nanoseconds reported by the group's threads.
    pub fn total_ns(&self) -> u64 {
        self.ns.load(Ordering::Relaxed)
    }

    /// A meter for the calling thread.
    pub fn meter(self: &Arc<Self>) -> CpuMeter {
        CpuMeter { group: self.clone(), last: thread_cpu_ns() }
    }
}

/// One thread's share of a [`CpuGroup`].
pub struct CpuMeter {
    group: Arc<CpuGroup>,
    last: u64,
}

impl CpuMeter {
    /// Adds the CPU time used since the last tick to the group. Call it from the owning thread.
    pub fn tick(&mut self) {
        let now = thread_cpu_ns();
        self.group.ns.fetch_add(now.saturating_sub(self.last), Ordering::Relaxed);
        self.last = now;
    }
}

impl Drop for CpuMeter {
    fn drop(&mut self) {
        self.tick();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_thread_reports_cpu_time() {
        let g = CpuGroup::new();
        let g2 = g.clone();
        std::thread::spawn(move || {
            let mut m = g2.meter();
            let mut x = 0u64;
            while thread_cpu_ns() < 5_000_000 {
                x = x.wrapping_mul(31).wrapping_add(1);
                std::hint::black_box(x);
            }
            m.tick();
        })
        .join()
        .unwrap();
        assert!(g.total_ns() >= 1_000_000, "{}", g.total_ns());
    }
}
