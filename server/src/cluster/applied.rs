//! The writes this member applied recently, by request id, with the answer they got here: a
//! client that retries a write (after a broken chain or a change of map refused it, when some
//! members may have applied it already) sends it with the same id, and a member that applied it
//! answers what it answered then instead of applying it again. So a retried DELETE whose first
//! try removed the key on some members is still answered "deleted", and a retried UPDATE lands
//! once.
//!
//! The answer remembered is this member's own (the key's state here is the partition's), except
//! on a member receiving a copy whose answer was a guess (see [`super::received`]): there it is
//! the chain's answer once it comes back, and unknown until then (an unknown answer does not
//! deduplicate: the retry is applied again, as without ids).
//!
//! Memory is bounded: the last [`PER_KEY`] ids of a key, and [`REMEMBERED`] writes in all, the
//! oldest forgotten first. Retries come within the client's routing attempts (seconds), so only
//! recent writes matter.

use scalio_common::rpc::Status;
use std::collections::{HashMap, VecDeque};

/// Ids remembered per key (a key's writers retry their own writes, which come in order).
pub const PER_KEY: usize = 4;
/// Writes remembered per server.
pub const REMEMBERED: usize = 1 << 17;

/// Recently applied writes: key → (request id, answer here; `None` while unknown).
#[derive(Debug)]
pub struct Applied {
    by_key: HashMap<Vec<u8>, VecDeque<(u64, Option<Status>)>>,
    order: VecDeque<(Vec<u8>, u64)>,
    capacity: usize,
}

impl Default for Applied {
    fn default() -> Applied {
        Applied::with_capacity(REMEMBERED)
    }
}

impl Applied {
    pub fn with_capacity(capacity: usize) -> Applied {
        Applied { by_key: HashMap::new(), order: VecDeque::new(), capacity: capacity.max(1) }
    }

    /// The answer this member gave the write `id` to `key`: `Some(Some(status))` if it applied
    /// it and knows its answer, `Some(None)` if it applied it without knowing the answer, `None`
    /// if it has no record of it.
    pub fn get(&self, key: &[u8], id: u64) -> Option<Option<Status>> {
        self.by_key.get(key)?.iter().find(|(i, _)| *i == id).map(|(_, s)| *s)
    }

    /// The write `id` to `key` was applied here with `answer` (`None`: not known yet).
    pub fn record(&mut self, key: &[u8], id: u64, answer: Option<Status>) {
        let ids = self.by_key.entry(key.to_vec()).or_default();
        if let Some(e) = ids.iter_mut().find(|(i, _)| *i == id) {
            e.1 = answer.or(e.1);
            return;
        }
        ids.push_back((id, answer));
        if ids.len() > PER_KEY {
            ids.pop_front();
        }
        self.order.push_back((key.to_vec(), id));
        while self.order.len() > self.capacity {
            let Some((k, old)) = self.order.pop_front() else { break };
            if let Some(ids) = self.by_key.get_mut(&k) {
                ids.retain(|(i, _)| *i != old);
                if ids.is_empty() {
                    self.by_key.remove(&k);
                }
            }
        }
    }

    /// The chain's answer to the write `id` to `key`, whose answer here was unknown.
    pub fn resolve(&mut self, key: &[u8], id: u64, answer: Status) {
        if let Some(e) = self.by_key.get_mut(key).and_then(|ids| ids.iter_mut().find(|(i, _)| *i == id)) {
            e.1.get_or_insert(answer);
        }
    }

    /// Forgets the writes to `key` (its value here was replaced by another member's: the writes
    /// recorded may no longer be in it).
    pub fn forget_key(&mut self, key: &[u8]) {
        if self.by_key.remove(key).is_some() {
            self.order.retain(|(k, _)| k != key);
        }
    }

    /// Writes remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_is_remembered_with_its_answer_and_forgotten_oldest_first() {
        let mut a = Applied::with_capacity(3);
        a.record(b"k", 1, Some(Status::Ok));
        a.record(b"k", 2, None);
        assert_eq!(a.get(b"k", 1), Some(Some(Status::Ok)));
        assert_eq!(a.get(b"k", 2), Some(None));
        assert_eq!(a.get(b"k", 3), None);
        assert_eq!(a.get(b"other", 1), None);
        // The chain's answer fills an unknown one, never replaces a known one.
        a.resolve(b"k", 2, Status::NotFound);
        a.resolve(b"k", 1, Status::NotFound);
        assert_eq!(a.get(b"k", 2), Some(Some(Status::NotFound)));
        assert_eq!(a.get(b"k", 1), Some(Some(Status::Ok)));
        // Recording the same write again (a retry applied again) keeps one entry.
        a.record(b"k", 2, None);
        assert_eq!(a.len(), 2);
        assert_eq!(a.get(b"k", 2), Some(Some(Status::NotFound)));
        // Over capacity, the oldest write goes.
        a.record(b"j", 7, Some(Status::Ok));
        a.record(b"j", 8, Some(Status::Ok));
        assert_eq!(a.len(), 3);
        assert_eq!(a.get(b"k", 1), None);
        assert_eq!(a.get(b"k", 2), Some(Some(Status::NotFound)));
        // At most PER_KEY ids per key.
        let mut b = Applied::with_capacity(100);
        for id in 0..(PER_KEY as u64 + 2) {
            b.record(b"k", id, Some(Status::Ok));
        }
        assert_eq!(b.get(b"k", 0), None);
        assert_eq!(b.get(b"k", PER_KEY as u64 + 1), Some(Some(Status::Ok)));
    }
}
