//! `CounterGenerator` and `AcknowledgedCounterGenerator`: the load and insert key sequences.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A shared counter handing out consecutive values (YCSB `CounterGenerator`).
#[derive(Debug)]
pub struct CounterGenerator {
    next: AtomicU64,
}

impl CounterGenerator {
    /// A counter whose first value is `start`.
    pub fn new(start: u64) -> CounterGenerator {
        CounterGenerator { next: AtomicU64::new(start) }
    }

    /// The next value (YCSB `nextValue`, an atomic get-and-increment).
    pub fn next_value(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// The value the next call to [`next_value`](Self::next_value) will return. (YCSB's
    /// `lastValue` is this minus one, which is -1 before any value was handed out.)
    pub fn peek_next(&self) -> u64 {
        self.next.load(Ordering::Relaxed)
    }
}

/// How many inserts may be outstanding (issued, not yet acknowledged) at once: 2^20, as in YCSB.
pub const ACK_WINDOW_SIZE: u64 = 1 << 20;
const ACK_WINDOW_MASK: u64 = ACK_WINDOW_SIZE - 1;

/// An acknowledgement that the counter cannot take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    #[error(
        "too many unacknowledged inserts: keynum {keynum} maps to a window slot still pending \
         (at most {ACK_WINDOW_SIZE} inserts may be outstanding)"
    )]
    WindowFull { keynum: u64 },
    #[error("keynum {keynum} was acknowledged already")]
    AlreadyAcknowledged { keynum: u64 },
    #[error("keynum {keynum} was never issued by the insert sequence")]
    NotIssued { keynum: u64 },
}

/// The insert key sequence of the transaction phase (YCSB `AcknowledgedCounterGenerator`).
///
/// Values are handed out like a [`CounterGenerator`], but [`last_value`](Self::last_value) is the
/// highest value `v` such that every value up to `v` has been [acknowledged](Self::acknowledge),
/// i.e. whose insert has completed. Readers choose only keys up to it, so that with many threads
/// inserting, a read never targets a key whose insert is still in flight.
///
/// As in YCSB, acknowledgements land in a window of [`ACK_WINDOW_SIZE`] flags, and whoever wins a
/// try-lock moves the contiguous acknowledged prefix into the limit; an acknowledger that loses the
/// try-lock leaves its flag for the winner. Unlike YCSB, the winner looks again after it releases
/// the lock, so an acknowledgement that arrived while it was scanning is never left behind until
/// the next one (YCSB can leave the limit stale until then).
#[derive(Debug)]
pub struct AcknowledgedCounterGenerator {
    counter: CounterGenerator,
    /// One more than the limit: the first value not known to be acknowledged with all below it.
    /// Written only while `scanning` is held.
    next_unacked: AtomicU64,
    scanning: AtomicBool,
    window: Box<[AtomicBool]>,
}

impl AcknowledgedCounterGenerator {
    /// A counter whose first value is `start`, with every value below `start` taken as
    /// acknowledged (YCSB starts it at `recordcount`: the loaded records exist).
    pub fn new(start: u64) -> AcknowledgedCounterGenerator {
        AcknowledgedCounterGenerator {
            counter: CounterGenerator::new(start),
            next_unacked: AtomicU64::new(start),
            scanning: AtomicBool::new(false),
            window: (0..ACK_WINDOW_SIZE).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    /// The next value to insert.
    pub fn next_value(&self) -> u64 {
        self.counter.next_value()
    }

    /// The highest acknowledged value with all values below it acknowledged too, or `None` if
    /// none is (only when the counter started at 0 and value 0 is not acknowledged yet).
    pub fn last_value(&self) -> Option<u64> {
        self.acknowledged_below().checked_sub(1)
    }

    /// One more than [`last_value`](Self::last_value): every value below this is acknowledged.
    pub fn acknowledged_below(&self) -> u64 {
        self.next_unacked.load(Ordering::Acquire)
    }

    /// Records that the insert of `keynum` has completed (successfully or not: YCSB acknowledges
    /// in a `finally`). Each issued value must be acknowledged exactly once.
    pub fn acknowledge(&self, keynum: u64) -> Result<(), AckError> {
        if keynum >= self.counter.peek_next() {
            return Err(AckError::NotIssued { keynum });
        }
        let below = self.acknowledged_below();
        if keynum < below {
            return Err(AckError::AlreadyAcknowledged { keynum });
        }
        // A flag a whole window ahead of the limit would be read as the acknowledgement of an
        // earlier value sharing its slot (YCSB does not guard against this).
        if keynum - below >= ACK_WINDOW_SIZE {
            return Err(AckError::WindowFull { keynum });
        }
        // SeqCst on the flag, the lock and the re-check below: an acknowledger that sets its flag
        // and then fails the try-lock must be seen by the holder's look after it unlocks.
        // Within one window of the limit each slot stands for one keynum: a flag already set is
        // this keynum's earlier acknowledgement, not yet moved into the limit.
        if self.window[(keynum & ACK_WINDOW_MASK) as usize].swap(true, Ordering::SeqCst) {
            return Err(AckError::AlreadyAcknowledged { keynum });
        }
        while self.scanning.compare_exchange(false, true, Ordering::SeqCst, Ordering::Relaxed).is_ok() {
            let start = self.next_unacked.load(Ordering::Relaxed);
            let mut index = start;
            // At most one lap of the window.
            while index - start < ACK_WINDOW_SIZE {
                let slot = &self.window[(index & ACK_WINDOW_MASK) as usize];
                if !slot.load(Ordering::SeqCst) {
                    break;
                }
                slot.store(false, Ordering::SeqCst);
                index += 1;
            }
            self.next_unacked.store(index, Ordering::Release);
            self.scanning.store(false, Ordering::SeqCst);
            if !self.window[(index & ACK_WINDOW_MASK) as usize].load(Ordering::SeqCst) {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_counts_from_start() {
        let c = CounterGenerator::new(5);
        assert_eq!(c.next_value(), 5);
        assert_eq!(c.next_value(), 6);
        assert_eq!(c.peek_next(), 7);
    }

    #[test]
    fn limit_moves_only_over_a_contiguous_acknowledged_prefix() {
        let c = AcknowledgedCounterGenerator::new(10);
        assert_eq!(c.last_value(), Some(9));
        let (a, b, d) = (c.next_value(), c.next_value(), c.next_value());
        assert_eq!((a, b, d), (10, 11, 12));
        c.acknowledge(11).unwrap();
        assert_eq!(c.last_value(), Some(9), "10 is still in flight");
        c.acknowledge(12).unwrap();
        assert_eq!(c.last_value(), Some(9));
        c.acknowledge(10).unwrap();
        assert_eq!(c.last_value(), Some(12));
    }

    #[test]
    fn bad_acknowledgements_are_refused() {
        let c = AcknowledgedCounterGenerator::new(0);
        assert_eq!(c.last_value(), None);
        assert_eq!(c.acknowledge(0), Err(AckError::NotIssued { keynum: 0 }));
        let v = c.next_value();
        c.acknowledge(v).unwrap();
        assert_eq!(c.last_value(), Some(0));
        assert_eq!(c.acknowledge(v), Err(AckError::AlreadyAcknowledged { keynum: 0 }));
    }

    #[test]
    fn window_overflow_is_an_error_not_a_corruption() {
        let c = AcknowledgedCounterGenerator::new(0);
        for _ in 0..=ACK_WINDOW_SIZE + 1 {
            c.next_value();
        }
        // Hold value 0 back; 1 is acknowledged, then 1 + window reuses its slot.
        c.acknowledge(1).unwrap();
        assert_eq!(c.acknowledge(1 + ACK_WINDOW_SIZE), Err(AckError::WindowFull { keynum: 1 + ACK_WINDOW_SIZE }));
        // Acknowledging 1 again while it waits behind 0 is caught too.
        assert_eq!(c.acknowledge(1), Err(AckError::AlreadyAcknowledged { keynum: 1 }));
        c.acknowledge(0).unwrap();
        assert_eq!(c.last_value(), Some(1));
    }

    #[test]
    fn concurrent_out_of_order_acknowledgements_all_land() {
        use std::sync::Arc;
        let c = Arc::new(AcknowledgedCounterGenerator::new(1000));
        let per_thread = 20_000u64;
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let c = Arc::clone(&c);
                std::thread::spawn(move || {
                    let mut held = Vec::new();
                    for i in 0..per_thread {
                        let v = c.next_value();
                        // Acknowledge in a scrambled order: hold some back for a while.
                        if (i + t) % 3 == 0 {
                            held.push(v);
                        } else {
                            c.acknowledge(v).unwrap();
                        }
                        if held.len() > 8 {
                            for v in held.drain(..).rev() {
                                c.acknowledge(v).unwrap();
                            }
                        }
                        let limit = c.last_value().unwrap();
                        assert!(limit < c.counter.peek_next());
                    }
                    for v in held {
                        c.acknowledge(v).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(c.last_value(), Some(1000 + 4 * per_thread - 1));
    }
}
