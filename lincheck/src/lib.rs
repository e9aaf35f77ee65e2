//! A linearizability checker for key-value histories, for tests.
//!
//! A history is a list of [`Op`]s: a get, put, update or delete of one key, when it was invoked,
//! and what it returned and when — or that its outcome is unknown (it timed out, failed with a
//! transport error, or its client was killed), in which case it may have taken effect at any
//! time after its invocation, or never. [`check`] decides whether some total order of the
//! operations respects real time (an operation that returned before another was invoked comes
//! first) and the sequential semantics of the store ([`Call`] documents them).
//!
//! Linearizability is local (Herlihy and Wing), so each key is checked on its own. Each key's
//! search is the Wing–Gong algorithm with the memoization of Lowe and Porcupine: a state is the
//! set of operations already linearized plus the key's value, and a state seen before is not
//! explored again. A violation comes back as a [`Violation`] whose `Display` is the key's
//! history in time order with the longest linearizable prefix the search found.
//!
//! [`Recorder`] records histories from concurrent clients with a shared logical clock.
//!
//! This crate is test support: nothing in the server or client depends on it.

mod history;
mod model;
mod recorder;
mod report;
mod search;

pub use history::{Call, HistoryError, HistoryErrorKind, Op, Outcome, Ret};
pub use recorder::{InFlight, Recorder};
pub use report::Violation;

use std::collections::BTreeMap;

/// How much work [`check_with`] may do per key before giving up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Search steps (one step tries or undoes one operation).
    pub steps_per_key: u64,
}

impl Default for Budget {
    fn default() -> Self {
        Budget { steps_per_key: 50_000_000 }
    }
}

/// What a successful check covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    pub keys: usize,
    pub ops: usize,
    /// Operations whose outcome was unknown.
    pub unknown: usize,
    /// Search steps, over all keys.
    pub steps: u64,
}

/// Why a history did not check out.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The history is not linearizable.
    #[error("{0}")]
    Violation(Box<Violation>),
    /// The history is malformed (a return before its invocation, a result of the wrong kind).
    #[error("malformed history: {0}")]
    Malformed(HistoryError),
    /// The search for one key exceeded its budget: nothing is known either way.
    #[error("gave up on key {} ({ops} operations) after {steps} search steps", report::abbrev(key))]
    GaveUp { key: Vec<u8>, ops: usize, steps: u64 },
}

/// Checks `history` with the default [`Budget`].
pub fn check(history: &[Op]) -> Result<Summary, CheckError> {
    check_with(history, Budget::default())
}

/// Checks `history`: each key's operations are checked on their own, keys in byte order, and
/// the first violation found is returned. Every key starts without a value.
pub fn check_with(history: &[Op], budget: Budget) -> Result<Summary, CheckError> {
    let mut by_key: BTreeMap<&[u8], Vec<&Op>> = BTreeMap::new();
    for (i, op) in history.iter().enumerate() {
        op.validate().map_err(|reason| CheckError::Malformed(HistoryError { index: i, reason }))?;
        by_key.entry(&op.key).or_default().push(op);
    }
    let mut summary = Summary { keys: by_key.len(), ..Summary::default() };
    for (key, ops) in by_key {
        summary.ops += ops.len();
        summary.unknown += ops.iter().filter(|o| o.outcome == Outcome::Unknown).count();
        let steps = search::check_key(key, &ops, budget)?;
        summary.steps += steps;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests;
