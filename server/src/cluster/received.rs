//! What a member receiving a partition's copy must know so that the copy never overwrites a
//! newer write, and so that its own answers to writes can be trusted: the keys whose value here
//! is known to be the partition's (*exact*) since it entered the chain.
//!
//! A receiver is at the head of the chain (ahead of every member that has the data), so every
//! write to the partition reaches it first, after it entered the chain. A key is exact here
//! once a PUT or a DELETE set it whole, once a copy of it was applied (every later write passes
//! here first), or once it was repaired. A copied value for an exact key is older than (or
//! equal to) what it has, and is dropped.
//!
//! An UPDATE or a DELETE of a key that is not exact here finds what this server happens to
//! hold (nothing, if the key was not copied yet; a stale value from an earlier time in the
//! chain, before the purge): its local answer is not the partition's, and an UPDATE leaves the
//! value unknown. Such a write is *pending* until the chain's answer (the tail's) comes back
//! through this server; then an UPDATE's key is *dirty*, and once the copy pass is over the
//! receiver reads it again from the source — which by then has applied the update — and applies
//! that value only if no write reached the key meanwhile (its generation is unchanged). A write
//! refused further down the chain (never answered) also leaves its key dirty: the source never
//! applied it, so the receiver takes the source's value back. A pass reports ready only when no
//! key is pending or dirty, so every key of the partition then holds here what it holds at the
//! source.
//!
//! The record of a partition is kept while the partition is moving to this server with the
//! same `since` (the epoch it entered the chain), and forgotten otherwise.

use std::collections::HashMap;

/// The state of one key since the receiver entered the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark {
    /// Incremented by every write to the key here.
    generation: u64,
    /// The value here is the partition's (see the module documentation).
    exact: bool,
    /// A write whose local answer is not trusted awaits the chain's answer.
    pending: bool,
    /// To be read again from the source.
    dirty: bool,
}

/// The kind of a write, as the record of a move sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    Put,
    Update,
    Delete,
}

/// A write to a key of a partition moving here, as recorded before it enters the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Noted {
    pub generation: u64,
    /// Its local answer is not the partition's: wait for the chain's (see
    /// [`Received::on_answered`]).
    pub pending: bool,
}

/// Keys written or copied during moves to this server, per partition.
#[derive(Debug, Default)]
pub struct Received {
    parts: HashMap<u32, (u64, HashMap<Vec<u8>, Mark>)>,
    generation: u64,
}

/// What to do with a copied value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyVerdict {
    /// The key is not exact here (or the value repairs it): store it.
    Apply,
    /// The key is exact here: drop the copy.
    Skip,
}

impl Received {
    /// The record of the move of `partition` that began at `since`: a newer move replaces an
    /// older one's record; a call about an older move than the one recorded (a write's answer
    /// that comes back after the map moved on) gets `None` and must change nothing.
    fn part(&mut self, partition: u32, since: u64) -> Option<&mut HashMap<Vec<u8>, Mark>> {
        let e = self.parts.entry(partition).or_insert_with(|| (since, HashMap::new()));
        if e.0 < since {
            *e = (since, HashMap::new());
        }
        (e.0 == since).then_some(&mut e.1)
    }

    /// A write to `key` (of `partition`, moving here since `since`) is about to be submitted
    /// to the store.
    pub fn on_write(&mut self, partition: u32, since: u64, key: &[u8], kind: WriteKind) -> Noted {
        self.generation += 1;
        let generation = self.generation;
        let Some(part) = self.part(partition, since) else { return Noted { generation, pending: false } };
        let was_exact = part.get(key).is_some_and(|m| m.exact);
        let (exact, pending) = match kind {
            WriteKind::Put => (true, false),
            // The value is set whole, whatever the answer.
            WriteKind::Delete => (true, !was_exact),
            WriteKind::Update => (was_exact, !was_exact),
        };
        part.insert(key.to_vec(), Mark { generation, exact, pending, dirty: false });
        Noted { generation, pending }
    }

    /// The chain answered the pending write of generation `generation` (`answered`: false if it
    /// was refused or the chain broke, so the rest of the chain never applied it): an UPDATE's
    /// key, or a refused write's, is read again from the source. Nothing changes if a later
    /// write has set the key since.
    pub fn on_answered(&mut self, partition: u32, since: u64, key: &[u8], generation: u64, answered: bool) {
        let Some((s, keys)) = self.parts.get_mut(&partition) else { return };
        if *s != since {
            return;
        }
        if let Some(m) = keys.get_mut(key).filter(|m| m.generation == generation) {
            m.pending = false;
            if !answered {
                m.exact = false;
            }
            m.dirty = !m.exact;
        }
    }

    /// Whether a copied value of `key` may be stored. `repair`: the generation of the dirty
    /// mark the value was read to repair; it is applied only if the mark is unchanged. An
    /// applied value makes the key exact.
    pub fn on_copy(&mut self, partition: u32, since: u64, key: &[u8], repair: Option<u64>) -> CopyVerdict {
        self.generation += 1;
        let generation = self.generation;
        let Some(part) = self.part(partition, since) else { return CopyVerdict::Skip };
        match (part.get_mut(key), repair) {
            (None, None) => {
                part.insert(key.to_vec(), Mark { generation, exact: true, pending: false, dirty: false });
                CopyVerdict::Apply
            }
            (Some(m), None) if !m.exact => CopyVerdict::Apply,
            (Some(m), Some(g)) if m.dirty && !m.pending && m.generation == g => {
                *m = Mark { exact: true, dirty: false, ..*m };
                CopyVerdict::Apply
            }
            _ => CopyVerdict::Skip,
        }
    }

    /// Whether the purge may remove `key` (a stale key from an earlier time in the chain):
    /// only if nothing was written or copied to it in this move.
    pub fn may_purge(&mut self, partition: u32, since: u64, key: &[u8]) -> bool {
        self.part(partition, since).is_some_and(|part| !part.contains_key(key))
    }

    /// The dirty keys of `partition` with their generations.
    pub fn dirty(&self, partition: u32, since: u64) -> Vec<(Vec<u8>, u64)> {
        match self.parts.get(&partition) {
            Some((s, keys)) if *s == since => {
                keys.iter().filter(|(_, m)| m.dirty).map(|(k, m)| (k.clone(), m.generation)).collect()
            }
            _ => Vec::new(),
        }
    }

    /// How many writes of `partition` wait for the chain's answer.
    pub fn pending(&self, partition: u32, since: u64) -> usize {
        match self.parts.get(&partition) {
            Some((s, keys)) if *s == since => keys.values().filter(|m| m.pending).count(),
            _ => 0,
        }
    }

    /// Forgets the partitions for which `keep(partition, since)` is false (moves that ended).
    pub fn retain(&mut self, mut keep: impl FnMut(u32, u64) -> bool) {
        self.parts.retain(|p, (since, _)| keep(*p, *since));
    }

    /// Keys remembered, over all partitions.
    pub fn keys(&self) -> usize {
        self.parts.values().map(|(_, k)| k.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use WriteKind::{Delete, Put, Update};

    #[test]
    fn a_copy_never_overwrites_a_newer_write() {
        let mut r = Received::default();
        r.on_write(1, 5, b"a", Put);
        assert_eq!(r.on_copy(1, 5, b"a", None), CopyVerdict::Skip);
        // A copied key is exact: a second copy (a pass run again) is dropped, and so is the purge.
        assert_eq!(r.on_copy(1, 5, b"c", None), CopyVerdict::Apply);
        assert_eq!(r.on_copy(1, 5, b"c", None), CopyVerdict::Skip);
        assert!(!r.may_purge(1, 5, b"c"));
        assert!(r.may_purge(1, 5, b"stale"));
        assert!(r.may_purge(1, 5, b"stale"), "the purge marks nothing: a later copy of the key is applied");
        assert_eq!(r.on_copy(1, 5, b"stale", None), CopyVerdict::Apply);
        // Another partition, and the same partition in a later move, start afresh.
        assert_eq!(r.on_copy(2, 5, b"a", None), CopyVerdict::Apply);
        r.on_write(1, 7, b"b", Put);
        assert_eq!(r.on_copy(1, 7, b"a", None), CopyVerdict::Apply);
        // A late call about the older move changes nothing of the newer one's record.
        let n = r.on_write(1, 5, b"b", Update);
        r.on_answered(1, 5, b"b", n.generation, true);
        assert_eq!(r.on_copy(1, 5, b"b", None), CopyVerdict::Skip);
        assert_eq!(r.on_copy(1, 7, b"b", None), CopyVerdict::Skip, "b's mark of move 7 survives");
        assert!(r.dirty(1, 7).is_empty());
        assert_eq!(r.keys(), 3);
    }

    #[test]
    fn an_update_of_a_key_not_exact_here_is_repaired_only_after_the_chain_answered() {
        let mut r = Received::default();
        let n = r.on_write(1, 5, b"k", Update);
        assert!(n.pending, "nothing was copied or written to k here: its local answer is a guess");
        // Until the tail answers, the source may not have applied the update yet: a repair read
        // now could fetch the value from before it. Nothing is dirty, and a repair is refused.
        assert_eq!(r.pending(1, 5), 1);
        assert!(r.dirty(1, 5).is_empty());
        assert_eq!(r.on_copy(1, 5, b"k", Some(n.generation)), CopyVerdict::Skip);
        // Copies of the key are applied meanwhile (the repair will follow).
        assert_eq!(r.on_copy(1, 5, b"k", None), CopyVerdict::Apply);
        r.on_answered(1, 5, b"k", n.generation, true);
        assert_eq!(r.pending(1, 5), 0);
        assert_eq!(r.dirty(1, 5), vec![(b"k".to_vec(), n.generation)]);
        // A stale repair (an older generation) is not applied; the right one is, once.
        assert_eq!(r.on_copy(1, 5, b"k", Some(n.generation - 1)), CopyVerdict::Skip);
        assert_eq!(r.on_copy(1, 5, b"k", Some(n.generation)), CopyVerdict::Apply);
        assert!(r.dirty(1, 5).is_empty());
        assert_eq!(r.on_copy(1, 5, b"k", None), CopyVerdict::Skip);
        // An update of an exact key is exact: its local answer is the partition's.
        assert!(!r.on_write(1, 5, b"k", Update).pending);
        // A write after a pending update makes the key exact again, and the earlier update's
        // answer does not dirty it.
        let g1 = r.on_write(1, 5, b"j", Update);
        let g2 = r.on_write(1, 5, b"j", Put);
        r.on_answered(1, 5, b"j", g1.generation, true);
        assert!(r.dirty(1, 5).is_empty());
        assert!(!g2.pending);
        r.retain(|_, _| false);
        assert_eq!(r.keys(), 0);
    }

    #[test]
    fn a_delete_is_exact_but_its_answer_is_trusted_only_for_a_key_known_here() {
        let mut r = Received::default();
        assert_eq!(r.on_copy(1, 5, b"copied", None), CopyVerdict::Apply);
        assert!(!r.on_write(1, 5, b"copied", Delete).pending, "the copy made the key known here");
        let n = r.on_write(1, 5, b"unknown", Delete);
        assert!(n.pending, "not copied yet: whether it existed is the tail's answer");
        assert_eq!(r.on_copy(1, 5, b"unknown", None), CopyVerdict::Skip, "deleted whole: a copy is older");
        r.on_answered(1, 5, b"unknown", n.generation, true);
        assert!(r.dirty(1, 5).is_empty(), "nothing to repair");
    }

    #[test]
    fn a_write_refused_further_down_the_chain_is_taken_back_from_the_source() {
        let mut r = Received::default();
        // A DELETE applied here whose answer never came (the chain broke after this member,
        // or a member after it refused it): the source still has the key; read it again.
        let n = r.on_write(1, 5, b"k", Delete);
        r.on_answered(1, 5, b"k", n.generation, false);
        assert_eq!(r.dirty(1, 5), vec![(b"k".to_vec(), n.generation)]);
        assert_eq!(r.on_copy(1, 5, b"k", None), CopyVerdict::Apply);
        assert_eq!(r.on_copy(1, 5, b"k", Some(n.generation)), CopyVerdict::Apply);
        assert!(r.dirty(1, 5).is_empty());
    }
}
