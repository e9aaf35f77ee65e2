//! The operations of a history and their sequential meaning.

/// What a client asked for. The sequential semantics (those of `scalio_client::Client` and the
/// server's store) are:
///
/// * `Get`: the key's value, or none;
/// * `Put(v)`: the key's value becomes `v`, whether or not it had one;
/// * `Update(v)`: if the key has a value it becomes `v` and the result is `true`; otherwise
///   nothing changes and the result is `false`;
/// * `Delete`: if the key has a value it is removed and the result is `true`; otherwise the
///   result is `false`.
///
/// An empty value is a value (distinct from none).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Call {
    Get,
    Put(Vec<u8>),
    Update(Vec<u8>),
    Delete,
}

/// What an operation returned.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Ret {
    Get(Option<Vec<u8>>),
    Put,
    /// Whether the key had a value (and so was updated).
    Update(bool),
    /// Whether the key had a value (and so was deleted).
    Delete(bool),
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// It returned `ret` at time `at`.
    Returned { at: u64, ret: Ret },
    /// Nobody knows: it timed out, failed in transport, or its client was killed. It may have
    /// taken effect at any time after its invocation, or never.
    Unknown,
}

/// One operation of a history. Times come from one clock shared by all clients; only their
/// order matters (an operation that returned at `t` precedes one invoked after `t`; equal times
/// count as overlapping).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Op {
    /// Who ran it (for the report only).
    pub client: u32,
    pub key: Vec<u8>,
    pub call: Call,
    pub invoked: u64,
    pub outcome: Outcome,
}

impl Op {
    /// When it returned, if it did.
    pub fn returned(&self) -> Option<u64> {
        match self.outcome {
            Outcome::Returned { at, .. } => Some(at),
            Outcome::Unknown => None,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), HistoryErrorKind> {
        let Outcome::Returned { at, ret } = &self.outcome else { return Ok(()) };
        if *at < self.invoked {
            return Err(HistoryErrorKind::ReturnBeforeInvocation { invoked: self.invoked, returned: *at });
        }
        let matches = matches!(
            (&self.call, ret),
            (Call::Get, Ret::Get(_))
                | (Call::Put(_), Ret::Put)
                | (Call::Update(_), Ret::Update(_))
                | (Call::Delete, Ret::Delete(_))
        );
        if !matches {
            return Err(HistoryErrorKind::ResultOfAnotherKind);
        }
        Ok(())
    }
}

/// A malformed operation in a history.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("operation {index}: {reason}")]
pub struct HistoryError {
    /// Its position in the history.
    pub index: usize,
    pub reason: HistoryErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryErrorKind {
    #[error("returned at {returned}, before it was invoked at {invoked}")]
    ReturnBeforeInvocation { invoked: u64, returned: u64 },
    #[error("its result is not of the kind of its call")]
    ResultOfAnotherKind,
}
