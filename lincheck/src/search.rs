//! The Wing–Gong search for one key, with memoization of (linearized set, value).
//!
//! The history's invocations and returns are kept in a doubly linked list in time order. The
//! search walks it from the front: at an invocation it tries to linearize that operation next
//! (the model accepts its result from the current value, and the resulting (set, value) pair
//! was not explored before); if so it removes the operation's two events from the list and
//! starts again from the front. Reaching a return means an operation that has already returned
//! was not linearized, so the last choice is undone and the walk resumes after it. An empty
//! list is a linearization; undoing with nothing left to undo means there is none.
//!
//! Operations of unknown outcome return at "infinity": they may be linearized anywhere after
//! their invocation, and placing one after everything else is the same as it never happening.

use crate::history::{Call, Op, Outcome};
use crate::model::{step, ModelCall, ModelRet, State, Values, ABSENT};
use crate::report::Violation;
use crate::{Budget, CheckError};
use std::collections::HashSet;

const NIL: usize = usize::MAX;

struct Event {
    op: usize,
    is_return: bool,
    time: u64,
}

/// The events of a history as a list whose nodes can be taken out and put back (in reverse
/// order of removal).
struct EventList {
    next: Vec<usize>,
    prev: Vec<usize>,
    events: Vec<Event>,
    head: usize,
}

impl EventList {
    fn new(mut events: Vec<Event>) -> EventList {
        // Invocations before returns at equal times: such operations overlap.
        events.sort_by_key(|e| (e.time, e.is_return));
        let n = events.len();
        let head = n;
        let mut next = vec![NIL; n + 1];
        let mut prev = vec![NIL; n + 1];
        let mut last = head;
        for (i, p) in prev.iter_mut().enumerate().take(n) {
            next[last] = i;
            *p = last;
            last = i;
        }
        EventList { next, prev, events, head }
    }

    fn first(&self) -> usize {
        self.next[self.head]
    }

    fn unlink(&mut self, x: usize) {
        let (p, n) = (self.prev[x], self.next[x]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, x: usize) {
        let (p, n) = (self.prev[x], self.next[x]);
        self.next[p] = x;
        if n != NIL {
            self.prev[n] = x;
        }
    }
}

struct Bits(Vec<u64>);

impl Bits {
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// Checks one key's operations; returns the number of search steps.
pub(crate) fn check_key(key: &[u8], ops: &[&Op], budget: Budget) -> Result<u64, CheckError> {
    // A get of unknown outcome constrains nothing.
    let active: Vec<usize> =
        (0..ops.len()).filter(|&i| !(ops[i].call == Call::Get && ops[i].outcome == Outcome::Unknown)).collect();
    let mut values = Values::default();
    let lowered: Vec<(ModelCall, Option<ModelRet>)> = active.iter().map(|&i| values.lower(ops[i])).collect();
    let n = active.len();
    let mut events = Vec::with_capacity(2 * n);
    for (j, &i) in active.iter().enumerate() {
        events.push(Event { op: j, is_return: false, time: ops[i].invoked });
        events.push(Event { op: j, is_return: true, time: ops[i].returned().unwrap_or(u64::MAX) });
    }
    let mut list = EventList::new(events);
    let mut call_node = vec![0; n];
    let mut return_node = vec![0; n];
    for (x, e) in list.events.iter().enumerate() {
        if e.is_return {
            return_node[e.op] = x;
        } else {
            call_node[e.op] = x;
        }
    }

    let mut linearized = Bits(vec![0; n.div_ceil(64)]);
    let mut seen: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut stack: Vec<(usize, State)> = Vec::new(); // (operation, value before it)
    let mut longest: Vec<usize> = Vec::new();
    let mut state = ABSENT;
    let mut steps = 0u64;
    let mut x = list.first();
    while x != NIL {
        steps += 1;
        if steps > budget.steps_per_key {
            return Err(CheckError::GaveUp { key: key.to_vec(), ops: ops.len(), steps });
        }
        let e = &list.events[x];
        let op = e.op;
        if !e.is_return {
            let (call, ret) = lowered[op];
            if let Some(next) = step(state, call, ret) {
                linearized.set(op);
                if seen.insert((linearized.0.clone(), next)) {
                    stack.push((op, state));
                    if stack.len() > longest.len() {
                        longest = stack.iter().map(|&(o, _)| o).collect();
                    }
                    state = next;
                    list.unlink(call_node[op]);
                    list.unlink(return_node[op]);
                    x = list.first();
                    continue;
                }
                linearized.clear(op);
            }
            x = list.next[x];
        } else {
            // `op` has returned but is not linearized: undo the last choice.
            let Some((undone, before)) = stack.pop() else {
                let prefix: Vec<usize> = longest.iter().map(|&j| active[j]).collect();
                let mut after = ABSENT;
                for &j in &longest {
                    after = step(after, lowered[j].0, lowered[j].1).expect("the prefix was accepted");
                }
                let violation = Violation::new(key, ops, &prefix, values.bytes(after).map(<[u8]>::to_vec));
                return Err(CheckError::Violation(Box::new(violation)));
            };
            linearized.clear(undone);
            state = before;
            list.relink(return_node[undone]);
            list.relink(call_node[undone]);
            x = list.next[call_node[undone]];
        }
    }
    Ok(steps)
}
