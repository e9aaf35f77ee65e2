//! Writes this member applied that its chain did not complete, and how the member settles
//! them: the keys *in doubt* here.
//!
//! A write enters the chain at its head and each member makes it durable before passing it
//! on. When a member further down refuses it (its map moved on) or cannot be reached, the
//! write stays applied on the members before that point, unacknowledged. Left alone, such a
//! *partial* write breaks linearizability once maps reorder chains: a member that has it may
//! become the tail (the write is read), and a later map may move the tail to a member that
//! lacks it (the write is read no more). The same holds for a member whose answer to an
//! UPDATE or DELETE differs from the tail's (their values had diverged).
//!
//! So a member that applied a write and got no answer from the rest of its chain, or another
//! answer than its own, holds the key in doubt:
//! * it serves no read of the key (META_GET, GET, a copy's read: "wrong owner" at its current
//!   epoch, which a client retries) until the doubt is settled; nor does it while a write it
//!   took when it was not the key's tail is still waiting for the chain's answer (the map may
//!   have made it the tail since);
//! * the resolver ([`super::resolver`]) settles the doubt by reading the key's value from the
//!   member whose value stands — the key's current tail; or, if this member is the tail, the
//!   last live member of the current chain that was after it when it passed the write on —
//!   and storing it here, unless a newer write reached the key meanwhile. A tail with no such
//!   member keeps its own value (everything after it in the old chain is gone, and the
//!   members before it in the new chain take its value).
//!
//! A later write to the key whose chain answer agrees with this member's own settles the doubt
//! too: the key then holds here what it holds at the tail.
//!
//! Doubts live in memory (a member restarted before its lease expires resumes its place without
//! them: README, "Not done yet"). Their number is bounded ([`CAPACITY`]); a member with that
//! many keys in doubt takes no new writes to other keys until the resolver has settled some.

use scalio_common::cluster::NodeId;
use std::collections::HashMap;

/// The body of the answer to a copy's read of a key in doubt (status `Unavailable`).
pub const IN_DOUBT: &[u8] = b"the key is in doubt here";

/// Keys in doubt one member holds at most before it refuses new writes.
pub const CAPACITY: usize = 1 << 16;

/// A key in doubt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doubt {
    /// The sequence number (here) of the write that raised it.
    pub seq: u64,
    pub partition: u32,
    /// The members after this one in the key's chain when the write was passed on, in chain
    /// order.
    pub downstream: Vec<NodeId>,
}

/// How the chain answered a write applied here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The tail's answer is this member's own: the key holds here what it holds at the tail.
    Agreed,
    /// Refused or lost further down, or answered otherwise than here.
    Doubtful { partition: u32, downstream: Vec<NodeId> },
}

/// Whether a key may be read here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadState {
    Readable,
    /// In doubt: its value here waits to be settled by the resolver.
    InDoubt,
    /// A write taken while this member was not the key's tail waits for its chain's answer.
    Unsettled,
}

/// The writes to one key in the store here, not yet answered.
#[derive(Debug, Default)]
struct InFlight {
    count: u32,
    /// Of which taken while this member was not the key's tail.
    unsettled: u32,
    /// The highest sequence number answered so far.
    answered: u64,
}

/// The keys in doubt here, and the writes in flight to them.
#[derive(Debug)]
pub struct Doubts {
    doubtful: HashMap<Vec<u8>, Doubt>,
    in_flight: HashMap<Vec<u8>, InFlight>,
    next_seq: u64,
    capacity: usize,
}

impl Default for Doubts {
    fn default() -> Doubts {
        Doubts::with_capacity(CAPACITY)
    }
}

impl Doubts {
    pub fn with_capacity(capacity: usize) -> Doubts {
        Doubts { doubtful: HashMap::new(), in_flight: HashMap::new(), next_seq: 0, capacity: capacity.max(1) }
    }

    /// A write to `key` is about to enter the store here (`unsettled`: this member was not the
    /// key's tail when it took it). Returns its sequence number, or `None` if the member holds
    /// [`CAPACITY`] keys in doubt already (the write must be refused).
    pub fn enter(&mut self, key: &[u8], unsettled: bool) -> Option<u64> {
        if self.doubtful.len() >= self.capacity && !self.doubtful.contains_key(key) {
            return None;
        }
        self.next_seq += 1;
        let e = self.in_flight.entry(key.to_vec()).or_default();
        e.count += 1;
        e.unsettled += u32::from(unsettled);
        Some(self.next_seq)
    }

    /// The write `seq` to `key` (entered with `unsettled`) was answered by its chain.
    /// Returns whether it raised a doubt.
    pub fn answered(&mut self, key: &[u8], seq: u64, unsettled: bool, verdict: Verdict) -> bool {
        // A later write to the key answered first (its chain changed in between): that answer
        // decides the key's state here.
        let superseded = self.leave(key, Some(seq), unsettled);
        match verdict {
            Verdict::Agreed => {
                if self.doubtful.get(key).is_some_and(|d| d.seq < seq) {
                    self.doubtful.remove(key);
                }
                false
            }
            Verdict::Doubtful { partition, downstream } => {
                if superseded || self.doubtful.get(key).is_some_and(|d| d.seq > seq) {
                    return false;
                }
                self.doubtful.insert(key.to_vec(), Doubt { seq, partition, downstream });
                true
            }
        }
    }

    /// The write `seq` to `key` was not applied here (the store failed or refused it).
    pub fn abandoned(&mut self, key: &[u8], seq: u64, unsettled: bool) {
        self.leave(key, Some(seq), unsettled);
    }

    /// A write left the store's flight (`seq`: the write's, `None` for a settling value, which
    /// no chain answers); returns whether a later write was answered first.
    fn leave(&mut self, key: &[u8], seq: Option<u64>, unsettled: bool) -> bool {
        let Some(e) = self.in_flight.get_mut(key) else { return false };
        let superseded = seq.is_some_and(|s| e.answered > s);
        e.answered = e.answered.max(seq.unwrap_or(0));
        e.count = e.count.saturating_sub(1);
        e.unsettled = e.unsettled.saturating_sub(u32::from(unsettled));
        if e.count == 0 {
            self.in_flight.remove(key);
        }
        superseded
    }

    /// Whether this member may serve reads of `key`: not in doubt, and no write it took while
    /// not the tail is waiting for its chain.
    pub fn readable(&self, key: &[u8]) -> bool {
        self.read_state(key) == ReadState::Readable
    }

    /// [`readable`](Self::readable), saying why not.
    pub fn read_state(&self, key: &[u8]) -> ReadState {
        if self.doubtful.contains_key(key) {
            ReadState::InDoubt
        } else if self.in_flight.get(key).is_some_and(|e| e.unsettled > 0) {
            ReadState::Unsettled
        } else {
            ReadState::Readable
        }
    }

    /// Whether `key` is in doubt here.
    pub fn is_doubtful(&self, key: &[u8]) -> bool {
        self.doubtful.contains_key(key)
    }

    /// Forgets the doubt of `key` (its partition is moving here again: the move's record
    /// decides its value).
    pub fn forget(&mut self, key: &[u8]) {
        self.doubtful.remove(key);
    }

    /// Up to `max` keys in doubt, to settle.
    pub fn pending(&self, max: usize) -> Vec<(Vec<u8>, Doubt)> {
        self.doubtful.iter().take(max).map(|(k, d)| (k.clone(), d.clone())).collect()
    }

    /// Starts storing a settled value of `key` for the doubt `seq`: only if that doubt still
    /// stands and no write to the key is in flight here (a newer write decides then). The
    /// value's write counts as in flight (unsettled) until [`Doubts::settled`].
    pub fn begin_settling(&mut self, key: &[u8], seq: u64) -> bool {
        if self.doubtful.get(key).is_none_or(|d| d.seq != seq) || self.in_flight.contains_key(key) {
            return false;
        }
        let e = self.in_flight.entry(key.to_vec()).or_default();
        e.count += 1;
        e.unsettled += 1;
        true
    }

    /// The value begun by [`Doubts::begin_settling`] is stored (`stored`), or failed to be.
    /// Returns whether the doubt is settled.
    pub fn settled(&mut self, key: &[u8], seq: u64, stored: bool) -> bool {
        self.leave(key, None, true);
        if stored && self.doubtful.get(key).is_some_and(|d| d.seq == seq) {
            self.doubtful.remove(key);
            return true;
        }
        false
    }

    /// Settles the doubt `seq` of `key` with the value this member holds (nothing to copy).
    pub fn keep(&mut self, key: &[u8], seq: u64) -> bool {
        if self.doubtful.get(key).is_none_or(|d| d.seq != seq) || self.in_flight.contains_key(key) {
            return false;
        }
        self.doubtful.remove(key);
        true
    }

    /// Forgets the doubts of the partitions for which `keep` is false (this member left their
    /// chains, or is receiving them again: a copy then decides their values).
    pub fn retain(&mut self, mut keep: impl FnMut(u32) -> bool) -> usize {
        let before = self.doubtful.len();
        self.doubtful.retain(|_, d| keep(d.partition));
        before - self.doubtful.len()
    }

    /// Keys in doubt.
    pub fn len(&self) -> usize {
        self.doubtful.len()
    }

    pub fn is_empty(&self) -> bool {
        self.doubtful.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doubtful(p: u32, to: &[&str]) -> Verdict {
        Verdict::Doubtful { partition: p, downstream: to.iter().map(|s| NodeId(s.to_string())).collect() }
    }

    #[test]
    fn a_refused_write_puts_its_key_in_doubt_until_it_is_settled() {
        let mut d = Doubts::default();
        let s = d.enter(b"k", false).unwrap();
        assert!(d.readable(b"k"), "a write taken as the tail does not stop reads");
        assert!(d.answered(b"k", s, false, doubtful(3, &["b"])));
        assert!(!d.readable(b"k"));
        assert!(d.readable(b"other"));
        let (key, doubt) = d.pending(8).pop().unwrap();
        assert_eq!((key.as_slice(), doubt.seq, doubt.partition), (&b"k"[..], s, 3));
        assert_eq!(doubt.downstream, [NodeId("b".into())]);
        // Settling it: the value's write is in flight, and reads wait for it.
        assert!(d.begin_settling(b"k", s));
        assert!(!d.begin_settling(b"k", s), "one at a time");
        assert!(d.settled(b"k", s, true));
        assert!(d.readable(b"k") && d.is_empty());
    }

    #[test]
    fn a_write_taken_while_not_the_tail_stops_reads_until_its_chain_answers() {
        let mut d = Doubts::default();
        let s = d.enter(b"k", true).unwrap();
        assert!(!d.readable(b"k"));
        assert!(!d.answered(b"k", s, true, Verdict::Agreed));
        assert!(d.readable(b"k"));
    }

    #[test]
    fn a_newer_write_decides_and_an_older_answer_changes_nothing() {
        let mut d = Doubts::default();
        let s1 = d.enter(b"k", false).unwrap();
        let s2 = d.enter(b"k", false).unwrap();
        assert!(d.answered(b"k", s1, false, doubtful(1, &["b"])));
        // The doubt cannot be settled from another member while s2 is in flight here.
        assert!(!d.begin_settling(b"k", s1));
        assert!(!d.keep(b"k", s1));
        // s2 completes with the tail's answer: the key holds the tail's value.
        assert!(!d.answered(b"k", s2, false, Verdict::Agreed));
        assert!(d.readable(b"k"));
        // Answers out of order (the key's chain changed between two writes): the later write,
        // answered first, decides; the earlier one's refusal raises nothing.
        let s3 = d.enter(b"k", false).unwrap();
        let s4 = d.enter(b"k", false).unwrap();
        assert!(!d.answered(b"k", s4, false, Verdict::Agreed));
        assert!(!d.answered(b"k", s3, false, doubtful(1, &["b"])));
        assert!(d.readable(b"k"));
        // A doubt raised by a later write is not settled by an earlier one's agreement.
        let s5 = d.enter(b"k", false).unwrap();
        let s6 = d.enter(b"k", false).unwrap();
        assert!(d.answered(b"k", s6, false, doubtful(1, &["b"])));
        assert!(!d.answered(b"k", s5, false, Verdict::Agreed));
        assert!(!d.readable(b"k"));
        // A settling whose doubt was replaced meanwhile settles nothing.
        let s7 = d.enter(b"k", false).unwrap();
        assert!(d.answered(b"k", s7, false, doubtful(1, &["c"])));
        assert!(!d.begin_settling(b"k", s6));
        assert!(d.begin_settling(b"k", s7));
        assert!(!d.settled(b"k", s6, true));
        assert!(!d.readable(b"k"), "s7's doubt stands");
        assert!(!d.settled(b"k", s7, false), "a value that failed to be stored settles nothing");
        assert!(d.keep(b"k", s7));
        assert!(d.readable(b"k"));
    }

    #[test]
    fn doubts_are_bounded_and_forgotten_with_their_partitions() {
        let mut d = Doubts::with_capacity(2);
        for (k, p) in [(&b"a"[..], 1), (b"b", 2)] {
            let s = d.enter(k, false).unwrap();
            d.answered(k, s, false, doubtful(p, &["x"]));
        }
        assert_eq!(d.enter(b"c", false), None, "full: new keys' writes are refused");
        assert!(d.enter(b"a", false).is_some(), "a key in doubt may still be written (that may settle it)");
        assert_eq!(d.retain(|p| p != 1), 1);
        assert_eq!(d.len(), 1);
        assert!(d.enter(b"c", false).is_some());
    }
}
