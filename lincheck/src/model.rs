//! The sequential model of one key, on interned values so that a search state is small.

use crate::history::{Call, Op, Outcome, Ret};
use std::collections::HashMap;

/// The key's value: `ABSENT`, or `1 + ` an index into the key's distinct values.
pub(crate) type State = u32;
pub(crate) const ABSENT: State = 0;

/// An operation in the model's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ModelCall {
    Get,
    Put(State),
    Update(State),
    Delete,
}

/// A result in the model's terms; `None` where the outcome is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ModelRet {
    Get(State),
    Put,
    Update(bool),
    Delete(bool),
}

/// Distinct values of one key, numbered from 1.
#[derive(Default)]
pub(crate) struct Values<'a> {
    ids: HashMap<&'a [u8], State>,
    pub(crate) by_id: Vec<&'a [u8]>,
}

impl<'a> Values<'a> {
    fn intern(&mut self, v: &'a [u8]) -> State {
        if let Some(&id) = self.ids.get(v) {
            return id;
        }
        self.by_id.push(v);
        let id = self.by_id.len() as State;
        self.ids.insert(v, id);
        id
    }

    /// The bytes of a state (`None` when absent).
    pub(crate) fn bytes(&self, s: State) -> Option<&'a [u8]> {
        (s != ABSENT).then(|| self.by_id[s as usize - 1])
    }

    /// An operation in the model's terms.
    pub(crate) fn lower(&mut self, op: &'a Op) -> (ModelCall, Option<ModelRet>) {
        let call = match &op.call {
            Call::Get => ModelCall::Get,
            Call::Put(v) => ModelCall::Put(self.intern(v)),
            Call::Update(v) => ModelCall::Update(self.intern(v)),
            Call::Delete => ModelCall::Delete,
        };
        let ret = match &op.outcome {
            Outcome::Unknown => None,
            Outcome::Returned { ret, .. } => Some(match ret {
                Ret::Get(None) => ModelRet::Get(ABSENT),
                Ret::Get(Some(v)) => ModelRet::Get(self.intern(v)),
                Ret::Put => ModelRet::Put,
                Ret::Update(b) => ModelRet::Update(*b),
                Ret::Delete(b) => ModelRet::Delete(*b),
            }),
        };
        (call, ret)
    }
}

/// Applies `call` to `state`; returns the next state if `ret` (when known) is what the call
/// returns from `state`, `None` if it is not.
pub(crate) fn step(state: State, call: ModelCall, ret: Option<ModelRet>) -> Option<State> {
    let present = state != ABSENT;
    let (next, expected) = match call {
        ModelCall::Get => (state, ModelRet::Get(state)),
        ModelCall::Put(v) => (v, ModelRet::Put),
        ModelCall::Update(v) => (if present { v } else { state }, ModelRet::Update(present)),
        ModelCall::Delete => (ABSENT, ModelRet::Delete(present)),
    };
    match ret {
        Some(r) if r != expected => None,
        _ => Some(next),
    }
}
