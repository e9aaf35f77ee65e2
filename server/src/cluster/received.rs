//! What a member receiving a partition's copy must know so that the copy never overwrites a
//! newer write: the keys written here since it entered the chain.
//!
//! A receiver is at the head of the chain (ahead of every member that has the data), so every
//! write to the partition reaches it first, after it entered the chain. A key it saw a write
//! for is *exact* here: a PUT or DELETE sets it whole, and an UPDATE that found the key here
//! replaces its value whole. A copied value for an exact key is older than (or equal to) what
//! it has, and is dropped. The one write that leaves a key unknown is an UPDATE that found
//! nothing here (the key may exist at the source, not yet copied; the tail's answer decides):
//! the key is *dirty*, copies of it are applied, and once the copy pass is over the receiver
//! reads it again from the source and applies that value only if no write reached the key
//! meanwhile (its generation is unchanged). So when a receiver reports its copy ready, every
//! key of the partition holds here what it holds at the source.
//!
//! The record of a partition is kept while the partition is moving to this server with the
//! same `since` (the epoch it entered the chain), and forgotten otherwise.

use std::collections::HashMap;

/// The state of one key written since the receiver entered the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark {
    /// Incremented by every write to the key here.
    generation: u64,
    dirty: bool,
}

/// Keys written during moves to this server, per partition.
#[derive(Debug, Default)]
pub struct Received {
    parts: HashMap<u32, (u64, HashMap<Vec<u8>, Mark>)>,
    generation: u64,
}

/// What to do with a copied value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyVerdict {
    /// Nothing written here since the move began (or only an update that found nothing):
    /// store it.
    Apply,
    /// A newer write reached this key here: drop the copy.
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
    /// to the store. Returns its generation.
    pub fn on_write(&mut self, partition: u32, since: u64, key: &[u8]) -> u64 {
        self.generation += 1;
        let generation = self.generation;
        if let Some(part) = self.part(partition, since) {
            part.insert(key.to_vec(), Mark { generation, dirty: false });
        }
        generation
    }

    /// The UPDATE of generation `generation` found nothing here: the key is unknown until
    /// repaired (unless a later write has set it since).
    pub fn on_update_not_found(&mut self, partition: u32, since: u64, key: &[u8], generation: u64) {
        if let Some(m) = self.part(partition, since).and_then(|p| p.get_mut(key)) {
            if m.generation == generation {
                m.dirty = true;
            }
        }
    }

    /// Whether a copied value of `key` may be stored. `repair`: the generation of the dirty
    /// mark the value was read to repair; it is applied only if the mark is unchanged, and then
    /// clears it.
    pub fn on_copy(&mut self, partition: u32, since: u64, key: &[u8], repair: Option<u64>) -> CopyVerdict {
        let Some(part) = self.part(partition, since) else { return CopyVerdict::Skip };
        match (part.get_mut(key), repair) {
            (None, None) => CopyVerdict::Apply,
            (Some(m), None) if m.dirty => CopyVerdict::Apply,
            (Some(m), Some(g)) if m.dirty && m.generation == g => {
                m.dirty = false;
                CopyVerdict::Apply
            }
            _ => CopyVerdict::Skip,
        }
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

    #[test]
    fn a_copy_never_overwrites_a_newer_write() {
        let mut r = Received::default();
        assert_eq!(r.on_copy(1, 5, b"a", None), CopyVerdict::Apply);
        r.on_write(1, 5, b"a");
        assert_eq!(r.on_copy(1, 5, b"a", None), CopyVerdict::Skip);
        // Another partition, and the same partition in a later move, start afresh.
        assert_eq!(r.on_copy(2, 5, b"a", None), CopyVerdict::Apply);
        r.on_write(1, 7, b"b");
        assert_eq!(r.on_copy(1, 7, b"a", None), CopyVerdict::Apply);
        // A late call about the older move changes nothing of the newer one's record.
        let g = r.on_write(1, 5, b"b");
        r.on_update_not_found(1, 5, b"b", g);
        assert_eq!(r.on_copy(1, 5, b"b", None), CopyVerdict::Skip);
        assert_eq!(r.on_copy(1, 7, b"b", None), CopyVerdict::Skip, "b's mark of move 7 survives");
        assert!(r.dirty(1, 7).is_empty());
        assert_eq!(r.keys(), 1);
    }

    #[test]
    fn an_update_that_found_nothing_is_repaired_once() {
        let mut r = Received::default();
        let g = r.on_write(1, 5, b"k");
        r.on_update_not_found(1, 5, b"k", g);
        assert_eq!(r.dirty(1, 5), vec![(b"k".to_vec(), g)]);
        // Copies of a dirty key are applied; a stale repair (an older generation) is not.
        assert_eq!(r.on_copy(1, 5, b"k", None), CopyVerdict::Apply);
        assert_eq!(r.on_copy(1, 5, b"k", Some(g - 1)), CopyVerdict::Skip);
        assert_eq!(r.on_copy(1, 5, b"k", Some(g)), CopyVerdict::Apply);
        assert!(r.dirty(1, 5).is_empty());
        assert_eq!(r.on_copy(1, 5, b"k", None), CopyVerdict::Skip);
        // A write after the update makes the key exact again, and its mark is not dirtied by
        // the earlier update's answer.
        let g1 = r.on_write(1, 5, b"j");
        let g2 = r.on_write(1, 5, b"j");
        r.on_update_not_found(1, 5, b"j", g1);
        assert!(r.dirty(1, 5).is_empty());
        r.on_update_not_found(1, 5, b"j", g2);
        assert_eq!(r.dirty(1, 5).len(), 1);
        r.retain(|_, _| false);
        assert_eq!(r.keys(), 0);
    }
}
