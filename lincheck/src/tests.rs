//! Hand-made histories with known answers, and a randomized cross-check of the search against
//! a brute-force checker that tries every order of every subset of the unknown operations.

use super::*;
use proptest::prelude::*;
use std::collections::HashMap;

fn v(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn op(client: u32, key: &str, call: Call, invoked: u64, returned: u64, ret: Ret) -> Op {
    Op { client, key: v(key), call, invoked, outcome: Outcome::Returned { at: returned, ret } }
}

fn lost(client: u32, key: &str, call: Call, invoked: u64) -> Op {
    Op { client, key: v(key), call, invoked, outcome: Outcome::Unknown }
}

fn put(key: &str, val: &str, t: (u64, u64)) -> Op {
    op(1, key, Call::Put(v(val)), t.0, t.1, Ret::Put)
}

fn get(key: &str, val: Option<&str>, t: (u64, u64)) -> Op {
    op(2, key, Call::Get, t.0, t.1, Ret::Get(val.map(v)))
}

fn violation(h: &[Op]) -> Violation {
    match check(h) {
        Err(CheckError::Violation(v)) => *v,
        other => panic!("expected a violation, got {other:?}"),
    }
}

#[test]
fn sequential_histories_follow_the_store_semantics() {
    let h = [
        get("k", None, (0, 1)),
        op(1, "k", Call::Update(v("a")), 2, 3, Ret::Update(false)),
        op(1, "k", Call::Delete, 4, 5, Ret::Delete(false)),
        get("k", None, (6, 7)),
        put("k", "a", (8, 9)),
        op(1, "k", Call::Update(v("b")), 10, 11, Ret::Update(true)),
        get("k", Some("b"), (12, 13)),
        op(1, "k", Call::Delete, 14, 15, Ret::Delete(true)),
        get("k", None, (16, 17)),
        put("k", "", (18, 19)),
        get("k", Some(""), (20, 21)),
    ];
    let s = check(&h).unwrap();
    assert_eq!((s.keys, s.ops, s.unknown), (1, 11, 0));
}

#[test]
fn wrong_results_of_update_and_delete_are_violations() {
    // An update of an absent key that claims success.
    violation(&[op(1, "k", Call::Update(v("a")), 0, 1, Ret::Update(true))]);
    // An update that reports not found, yet its value shows up.
    violation(&[op(1, "k", Call::Update(v("a")), 0, 1, Ret::Update(false)), get("k", Some("a"), (2, 3))]);
    // A delete of a present key that reports not found.
    violation(&[put("k", "a", (0, 1)), op(1, "k", Call::Delete, 2, 3, Ret::Delete(false))]);
    // An empty value is not the absence of one.
    violation(&[put("k", "", (0, 1)), get("k", None, (2, 3))]);
}

#[test]
fn overlapping_operations_may_take_effect_in_either_order() {
    // A get overlapping a put may see the old or the new value.
    for seen in ["a", "b"] {
        check(&[put("k", "a", (0, 1)), put("k", "b", (2, 6)), get("k", Some(seen), (3, 5))]).unwrap();
    }
    // Equal times overlap: a get invoked at the instant a put returns may miss it.
    check(&[put("k", "a", (0, 5)), get("k", None, (5, 6))]).unwrap();
}

#[test]
fn a_stale_read_is_a_violation() {
    let v = violation(&[put("k", "a", (0, 1)), put("k", "b", (2, 3)), get("k", Some("a"), (4, 5))]);
    assert_eq!(v.key, b"k");
    assert_eq!(v.longest_prefix, vec![0, 1]);
    assert_eq!(v.value_after_prefix, Some(b"b".to_vec()));
}

#[test]
fn a_value_never_written_is_a_violation() {
    violation(&[put("k", "a", (0, 1)), get("k", Some("z"), (2, 3))]);
}

#[test]
fn new_then_old_across_two_reads_is_a_violation() {
    // Each read alone overlaps the write, but the second began after the first saw the new
    // value, so it may not see the old one.
    violation(&[
        put("k", "a", (0, 1)),
        put("k", "b", (2, 20)),
        get("k", Some("b"), (3, 5)),
        get("k", Some("a"), (6, 8)),
    ]);
}

#[test]
fn an_unknown_write_may_take_effect_late_or_never() {
    let base = [put("k", "a", (0, 1)), lost(3, "k", Call::Put(v("b")), 5)];
    // Late: well after its client gave up.
    let mut h = base.to_vec();
    h.extend([get("k", Some("a"), (10, 11)), get("k", Some("b"), (20, 21))]);
    check(&h).unwrap();
    // Never.
    let mut h = base.to_vec();
    h.extend([get("k", Some("a"), (10, 11)), get("k", Some("a"), (20, 21))]);
    check(&h).unwrap();
    // But once seen, it stays.
    let mut h = base.to_vec();
    h.extend([get("k", Some("b"), (10, 11)), get("k", Some("a"), (20, 21))]);
    violation(&h);
    // And never before its invocation.
    violation(&[put("k", "a", (0, 1)), get("k", Some("b"), (2, 3)), lost(3, "k", Call::Put(v("b")), 5)]);
}

#[test]
fn unknown_updates_and_deletes_follow_the_state_they_land_on() {
    // An unknown update of an absent key changes nothing, whenever it lands.
    violation(&[lost(3, "k", Call::Update(v("u")), 0), get("k", Some("u"), (5, 6))]);
    // Landing after a put, it replaces the put's value.
    check(&[lost(3, "k", Call::Update(v("u")), 0), put("k", "a", (1, 2)), get("k", Some("u"), (5, 6))]).unwrap();
    // An unknown delete may remove a value; an unknown get constrains nothing.
    check(&[put("k", "a", (0, 1)), lost(3, "k", Call::Delete, 2), lost(4, "k", Call::Get, 2), get("k", None, (5, 6))])
        .unwrap();
}

#[test]
fn keys_are_checked_separately_and_the_bad_one_is_named() {
    let h = [
        put("x", "1", (0, 10)),
        put("y", "1", (0, 1)),
        get("x", Some("1"), (2, 3)),
        put("y", "2", (2, 3)),
        get("y", Some("1"), (4, 5)),
        get("x", Some("1"), (4, 5)),
    ];
    let v = violation(&h);
    assert_eq!(v.key, b"y");
    assert_eq!(v.ops.len(), 3);
}

#[test]
fn the_report_is_readable() {
    let long = "L".repeat(100);
    let h = [
        put("key-7", &long, (100, 110)),
        put("key-7", "b\n", (120, 130)),
        lost(9, "key-7", Call::Delete, 121),
        get("key-7", Some(&long), (140, 150)),
    ];
    let text = CheckError::Violation(Box::new(violation(&h))).to_string();
    assert!(text.starts_with("key \"key-7\" is not linearizable (4 operations, 1 of unknown outcome)"), "{text}");
    assert!(text.contains(&format!("put \"{}…\"(100 B)", "L".repeat(20))), "values are cut: {text}");
    assert!(text.contains("put \"b\\n\""), "bytes are escaped: {text}");
    assert!(text.contains("unknown"), "{text}");
    // Times are relative to the first invocation, in invocation order.
    let rows: Vec<&str> = text.lines().skip(3).take(4).collect();
    assert!(rows[0].contains("   0         10  put"), "{}", rows[0]);
    assert!(rows[2].contains("delete"), "{}", rows[2]);
    assert!(text.ends_with("no remaining operation can come next"), "{text}");
}

#[test]
fn malformed_histories_are_refused() {
    let e = check(&[put("k", "a", (5, 4))]).unwrap_err();
    assert!(matches!(e, CheckError::Malformed(HistoryError { index: 0, .. })), "{e}");
    let bad = op(1, "k", Call::Get, 0, 1, Ret::Put);
    assert!(matches!(check(&[bad]), Err(CheckError::Malformed(_))));
}

#[test]
fn the_budget_bounds_the_search() {
    // Forty overlapping puts of distinct values, then a get of a value nobody wrote: every
    // order has to be refuted, which the memoization makes 2^40 sets.
    let mut h: Vec<Op> = (0..40).map(|i| put("k", &i.to_string(), (0, 100))).collect();
    h.push(get("k", Some("none of them"), (200, 201)));
    let e = check_with(&h, Budget { steps_per_key: 10_000 }).unwrap_err();
    assert!(matches!(e, CheckError::GaveUp { steps: 10_001, .. }), "{e}");
}

#[test]
fn many_overlapping_writes_check_quickly() {
    // Readers that only ever see written values, over many concurrent writers: memoization
    // keeps this polynomial.
    let mut h = Vec::new();
    for round in 0..200u64 {
        let t = round * 10;
        for w in 0..8u64 {
            h.push(op(w as u32, "k", Call::Put(v(&format!("{round}-{w}"))), t, t + 9, Ret::Put));
        }
        h.push(get("k", Some(&format!("{round}-3")), (t + 9, t + 9)));
    }
    let s = check(&h).unwrap();
    assert_eq!(s.ops, 1800);
}

#[test]
fn the_recorder_orders_events_and_keeps_abandoned_operations() {
    let r = Recorder::new();
    let a = r.invoke(1, b"k", Call::Put(v("a")));
    let g = r.invoke(2, b"k", Call::Get);
    a.returned(Ret::Put);
    drop(g); // a client killed mid-operation
    r.invoke(3, b"k", Call::Delete).unknown();
    let h = r.history();
    assert_eq!(h.len(), 3);
    assert_eq!(h[0].outcome, Outcome::Returned { at: 2, ret: Ret::Put });
    assert_eq!((h[1].invoked, &h[1].outcome), (1, &Outcome::Unknown));
    assert_eq!(h[2].outcome, Outcome::Unknown);
    check(&h).unwrap();
}

// ----- brute force -----

/// What `op` returns applied to `store`, which it changes.
fn apply(store: &mut HashMap<Vec<u8>, Vec<u8>>, op: &Op) -> Ret {
    match &op.call {
        Call::Get => Ret::Get(store.get(&op.key).cloned()),
        Call::Put(v) => {
            store.insert(op.key.clone(), v.clone());
            Ret::Put
        }
        Call::Update(v) => match store.get_mut(&op.key) {
            Some(old) => {
                *old = v.clone();
                Ret::Update(true)
            }
            None => Ret::Update(false),
        },
        Call::Delete => Ret::Delete(store.remove(&op.key).is_some()),
    }
}

/// Whether `order` respects real time and the store's semantics.
fn legal(order: &[&Op]) -> bool {
    for (i, a) in order.iter().enumerate() {
        if order[i + 1..].iter().any(|b| b.returned().is_some_and(|r| r < a.invoked)) {
            return false;
        }
    }
    let mut store = HashMap::new();
    order.iter().all(|o| {
        let got = apply(&mut store, o);
        match &o.outcome {
            Outcome::Returned { ret, .. } => *ret == got,
            Outcome::Unknown => true,
        }
    })
}

fn some_permutation_is_legal<'a>(rest: &mut Vec<&'a Op>, order: &mut Vec<&'a Op>) -> bool {
    if rest.is_empty() {
        return legal(order);
    }
    for i in 0..rest.len() {
        let o = rest.remove(i);
        order.push(o);
        let ok = some_permutation_is_legal(rest, order);
        order.pop();
        rest.insert(i, o);
        if ok {
            return true;
        }
    }
    false
}

/// Every subset of the unknown operations, in every order, over all keys at once.
fn brute_force(h: &[Op]) -> bool {
    let known: Vec<&Op> = h.iter().filter(|o| o.returned().is_some()).collect();
    let unknown: Vec<&Op> = h.iter().filter(|o| o.returned().is_none()).collect();
    (0..1u32 << unknown.len()).any(|mask| {
        let mut rest = known.clone();
        rest.extend(unknown.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, o)| *o));
        some_permutation_is_legal(&mut rest, &mut Vec::new())
    })
}

/// Raw material of a small random history: per operation (key, kind, value, invocation,
/// duration, where in its interval it takes effect, whether its outcome is lost), and an
/// optional corruption (which operation, which replacement result).
type Raw = (Vec<(u8, u8, u8, u64, u64, u8, bool)>, Option<(usize, u8)>);

fn raw_history() -> impl Strategy<Value = Raw> {
    let op = (0..2u8, 0..4u8, 0..3u8, 0..12u64, 0..8u64, 0..=100u8, prop::bool::weighted(0.2));
    (prop::collection::vec(op, 1..=6), prop::option::weighted(0.5, (0..6usize, 0..4u8)))
}

/// A history produced by a real sequential execution (each operation takes effect at a point
/// in its interval; a lost one possibly never), optionally with one result falsified.
fn build(raw: &Raw) -> Vec<Op> {
    let (spec, corrupt) = raw;
    let key = |k: u8| vec![b'x' + k];
    let val = |x: u8| vec![b'a' + x];
    let mut ops: Vec<Op> = spec
        .iter()
        .enumerate()
        .map(|(i, &(k, kind, x, start, _, _, _))| Op {
            client: i as u32,
            key: key(k),
            call: match kind {
                0 => Call::Get,
                1 => Call::Put(val(x)),
                2 => Call::Update(val(x)),
                _ => Call::Delete,
            },
            invoked: start,
            outcome: Outcome::Unknown,
        })
        .collect();
    // Effect points (lost operations whose point is past 80% never take effect).
    let mut effects: Vec<(u64, usize)> = spec
        .iter()
        .enumerate()
        .filter(|(_, s)| !(s.6 && s.5 > 80))
        .map(|(i, &(_, _, _, start, len, at, _))| (start * 100 + len * u64::from(at), i))
        .collect();
    effects.sort();
    let mut store = HashMap::new();
    for (_, i) in effects {
        let ret = apply(&mut store, &ops[i]);
        let (_, _, _, start, len, _, lost) = spec[i];
        if !lost {
            ops[i].outcome = Outcome::Returned { at: start + len, ret };
        }
    }
    if let Some((i, alt)) = *corrupt {
        let i = i % ops.len();
        if let Outcome::Returned { ret, .. } = &mut ops[i].outcome {
            *ret = match ret {
                Ret::Get(_) => Ret::Get((alt < 3).then(|| val(alt))),
                Ret::Put => Ret::Put,
                Ret::Update(b) => Ret::Update(!*b),
                Ret::Delete(b) => Ret::Delete(!*b),
            };
        }
    }
    ops
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn the_search_agrees_with_brute_force(raw in raw_history()) {
        let h = build(&raw);
        let search = match check(&h) {
            Ok(_) => true,
            Err(CheckError::Violation(_)) => false,
            Err(e) => panic!("{e}"),
        };
        prop_assert_eq!(search, brute_force(&h), "history: {:#?}", h);
    }
}

#[test]
fn the_random_histories_include_both_verdicts() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = raw_history();
    let (mut yes, mut no) = (0, 0);
    for _ in 0..600 {
        let h = build(&strategy.new_tree(&mut runner).unwrap().current());
        if check(&h).is_ok() {
            yes += 1;
        } else {
            no += 1;
        }
    }
    eprintln!("linearizable {yes}, not {no}");
    assert!(yes > 100 && no > 100, "linearizable {yes}, not {no}");
}
