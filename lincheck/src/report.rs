//! A violation, printed as the key's history in time order.

use crate::history::{Call, Op, Outcome, Ret};
use std::fmt;

/// A key whose operations have no linearization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub key: Vec<u8>,
    /// The key's operations, by invocation time.
    pub ops: Vec<Op>,
    /// The longest sequence of them (indices into `ops`) the search could linearize.
    pub longest_prefix: Vec<usize>,
    /// The key's value after that sequence.
    pub value_after_prefix: Option<Vec<u8>>,
}

impl Violation {
    pub(crate) fn new(key: &[u8], ops: &[&Op], prefix: &[usize], value_after_prefix: Option<Vec<u8>>) -> Violation {
        let mut order: Vec<usize> = (0..ops.len()).collect();
        order.sort_by_key(|&i| (ops[i].invoked, ops[i].returned().unwrap_or(u64::MAX)));
        let mut position = vec![0; ops.len()];
        for (p, &i) in order.iter().enumerate() {
            position[i] = p;
        }
        Violation {
            key: key.to_vec(),
            ops: order.iter().map(|&i| ops[i].clone()).collect(),
            longest_prefix: prefix.iter().map(|&i| position[i]).collect(),
            value_after_prefix,
        }
    }
}

/// A value for humans: short printable values quoted, others cut, with their length.
pub(crate) fn abbrev(v: &[u8]) -> String {
    const SHOWN: usize = 20;
    let text: String = v.iter().take(SHOWN).flat_map(|&b| std::ascii::escape_default(b)).map(char::from).collect();
    if v.len() <= SHOWN {
        format!("\"{text}\"")
    } else {
        format!("\"{text}…\"({} B)", v.len())
    }
}

fn value(v: &Option<Vec<u8>>) -> String {
    v.as_deref().map_or_else(|| "none".to_string(), abbrev)
}

fn call(c: &Call) -> String {
    match c {
        Call::Get => "get".into(),
        Call::Put(v) => format!("put {}", abbrev(v)),
        Call::Update(v) => format!("update {}", abbrev(v)),
        Call::Delete => "delete".into(),
    }
}

fn result(o: &Outcome) -> String {
    match o {
        Outcome::Unknown => "unknown".into(),
        Outcome::Returned { ret: Ret::Get(v), .. } => value(v),
        Outcome::Returned { ret: Ret::Put, .. } => "ok".into(),
        Outcome::Returned { ret: Ret::Update(b), .. } => if *b { "updated" } else { "not found" }.into(),
        Outcome::Returned { ret: Ret::Delete(b), .. } => if *b { "deleted" } else { "not found" }.into(),
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unknown = self.ops.iter().filter(|o| o.outcome == Outcome::Unknown).count();
        writeln!(
            f,
            "key {} is not linearizable ({} operations, {unknown} of unknown outcome)",
            abbrev(&self.key),
            self.ops.len()
        )?;
        let t0 = self.ops.iter().map(|o| o.invoked).min().unwrap_or(0);
        let mut lin = vec![None; self.ops.len()];
        for (n, &i) in self.longest_prefix.iter().enumerate() {
            lin[i] = Some(n + 1);
        }
        writeln!(f, "operations by invocation; times relative to the first; `lin` = place in the longest linearizable prefix found")?;
        writeln!(
            f,
            "{:>5} {:>6} {:>10} {:>10}  {:<40} {:<34} {:>5}",
            "#", "client", "invoked", "returned", "call", "result", "lin"
        )?;
        for (i, o) in self.ops.iter().enumerate() {
            let returned = o.returned().map_or_else(|| "-".to_string(), |t| (t - t0).to_string());
            let lin = lin[i].map_or_else(|| "-".to_string(), |n| n.to_string());
            writeln!(
                f,
                "{i:>5} {:>6} {:>10} {:>10}  {:<40} {:<34} {lin:>5}",
                o.client,
                o.invoked - t0,
                returned,
                call(&o.call),
                result(&o.outcome)
            )?;
        }
        write!(
            f,
            "after the prefix ({} of {} operations) the value is {}, and no remaining operation can come next",
            self.longest_prefix.len(),
            self.ops.len(),
            value(&self.value_after_prefix)
        )
    }
}
