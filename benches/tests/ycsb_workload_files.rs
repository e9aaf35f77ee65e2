//! The shipped workload files, property overrides, and the operation mix they produce.

use std::path::PathBuf;

use scalio_bench::ycsb::{
    builtin_workload, OpKind, Properties, RequestDistribution, Workload, WorkloadError, WorkloadSpec, BUILTIN_WORKLOADS,
};

fn workload_file(letter: &str) -> Properties {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("workloads").join(format!("workload{letter}"));
    Properties::load_file(path).unwrap()
}

struct Expected {
    read: f64,
    update: f64,
    insert: f64,
    rmw: f64,
    distribution: RequestDistribution,
}

fn expected(letter: &str) -> Expected {
    let z = RequestDistribution::Zipfian;
    let e = |read, update, insert, rmw, distribution| Expected { read, update, insert, rmw, distribution };
    match letter {
        "a" => e(0.5, 0.5, 0.0, 0.0, z),
        "b" => e(0.95, 0.05, 0.0, 0.0, z),
        "c" => e(1.0, 0.0, 0.0, 0.0, z),
        "d" => e(0.95, 0.0, 0.05, 0.0, RequestDistribution::Latest),
        "f" => e(0.5, 0.0, 0.0, 0.5, z),
        _ => unreachable!(),
    }
}

#[test]
fn shipped_files_parse_with_the_papers_settings() {
    for letter in ["a", "b", "c", "d", "f"] {
        let properties = workload_file(letter);
        // The embedded copy is the file.
        assert_eq!(Properties::parse(builtin_workload(letter).unwrap()).unwrap(), properties);
        let spec = WorkloadSpec::from_properties(&properties).unwrap();
        let want = expected(letter);
        assert_eq!(
            (spec.read_proportion, spec.update_proportion, spec.insert_proportion, spec.read_modify_write_proportion),
            (want.read, want.update, want.insert, want.rmw),
            "workload {letter}"
        );
        assert_eq!(spec.request_distribution, want.distribution, "workload {letter}");
        assert_eq!(spec.zipfian_constant, 0.99);
        assert_eq!((spec.field_count, spec.field_length, spec.value_len()), (1, 64, 64));
        assert_eq!((spec.record_count, spec.operation_count), (100_000, 100_000));
        // Properties YCSB files carry and we ignore are kept.
        assert_eq!(properties.get("workload"), Some("site.ycsb.workloads.CoreWorkload"));
    }
    assert_eq!(BUILTIN_WORKLOADS.len(), 6);
}

#[test]
fn workload_e_is_refused_with_a_clear_error() {
    let err = Workload::from_properties(&workload_file("e")).unwrap_err();
    assert_eq!(err, WorkloadError::ScanUnsupported(0.95));
    let message = err.to_string();
    assert!(message.contains("scans") && message.contains("not supported"), "{message}");
}

#[test]
fn overrides_win_over_the_file() {
    let mut properties = workload_file("a");
    for assignment in ["recordcount=5000", "zipfianconstant=0.5", "requestdistribution=uniform", "fieldlength=100"] {
        properties.apply_override(assignment).unwrap();
    }
    let spec = WorkloadSpec::from_properties(&properties).unwrap();
    assert_eq!(spec.record_count, 5000);
    assert_eq!(spec.insert_count, 5000);
    assert_eq!(spec.zipfian_constant, 0.5);
    assert_eq!(spec.request_distribution, RequestDistribution::Uniform);
    assert_eq!(spec.value_len(), 100);
    // An override can also turn E into a runnable workload.
    let mut e = workload_file("e");
    e.apply_override("scanproportion=0").unwrap();
    let spec = WorkloadSpec::from_properties(&e).unwrap();
    assert_eq!(spec.insert_proportion, 0.05);
}

/// Whether an error is the one a case expects.
type ErrorCheck = fn(&WorkloadError) -> bool;

#[test]
fn bad_overrides_give_errors_naming_the_property() {
    let cases: [(&str, ErrorCheck); 4] = [
        ("readproportion=abc", |e| matches!(e, WorkloadError::InvalidNumber { name: "readproportion", .. })),
        (
            "updateproportion=1.01",
            |e| matches!(e, WorkloadError::ProportionOutOfRange { name: "updateproportion", value } if *value == 1.01),
        ),
        ("requestdistribution=zipf", |e| matches!(e, WorkloadError::UnknownDistribution(d) if d == "zipf")),
        ("operationcount=10.5", |e| matches!(e, WorkloadError::InvalidNumber { name: "operationcount", .. })),
    ];
    for (assignment, is_expected) in cases {
        let mut properties = workload_file("b");
        properties.apply_override(assignment).unwrap();
        let err = Workload::from_properties(&properties).unwrap_err();
        assert!(is_expected(&err), "{assignment}: {err:?}");
        let name = assignment.split('=').next().unwrap();
        assert!(err.to_string().contains(name), "{assignment}: {err}");
    }
}

#[test]
fn ycsbs_own_workload_d_parses_unchanged() {
    // The property lines of YCSB's own workloadd, with its comment style.
    let text = "# Yahoo! Cloud System Benchmark\n# Workload D: Read latest workload\n#\n\n\
                recordcount=1000\noperationcount=1000\nworkload=site.ycsb.workloads.CoreWorkload\n\n\
                readallfields=true\n\nreadproportion=0.95\nupdateproportion=0\nscanproportion=0\n\
                insertproportion=0.05\n\nrequestdistribution=latest\n\n";
    let spec = WorkloadSpec::from_properties(&Properties::parse(text).unwrap()).unwrap();
    assert_eq!(spec.record_count, 1000);
    assert_eq!(spec.request_distribution, RequestDistribution::Latest);
    // YCSB's defaults fill the rest.
    assert_eq!((spec.field_count, spec.field_length), (10, 100));
}

/// Runs `ops` operations of a shipped workload on one thread, acknowledging inserts at once, and
/// returns the count of each kind plus the number of requests to keys inserted during the run.
fn run(letter: &str, ops: u64) -> ([u64; 4], u64) {
    let mut properties = workload_file(letter);
    properties.apply_override("recordcount=10000").unwrap();
    properties.apply_override(&format!("operationcount={ops}")).unwrap();
    let workload = Workload::from_properties(&properties).unwrap();
    let mut stream = workload.thread_state(0, 2024);
    let mut kinds = [0u64; 4];
    let mut to_new_keys = 0;
    for _ in 0..ops {
        let op = stream.next_op();
        assert_eq!(op.key, workload.store_key(op.keynum));
        let slot = match op.kind {
            OpKind::Read => 0,
            OpKind::Update => 1,
            OpKind::Insert => 2,
            OpKind::ReadModifyWrite => 3,
        };
        kinds[slot] += 1;
        if op.kind == OpKind::Insert {
            stream.ack_insert(op.keynum).unwrap();
        } else {
            assert!(op.keynum < workload.acknowledged_below());
            to_new_keys += u64::from(op.keynum >= 10_000);
        }
    }
    (kinds, to_new_keys)
}

#[test]
fn operation_mix_follows_the_proportions() {
    let ops = 200_000u64;
    for letter in ["a", "b", "c", "d", "f"] {
        let (kinds, _) = run(letter, ops);
        let want = expected(letter);
        for (count, p) in kinds.iter().zip([want.read, want.update, want.insert, want.rmw]) {
            let sd = (ops as f64 * p * (1.0 - p)).sqrt();
            assert!((*count as f64 - p * ops as f64).abs() <= 5.0 * sd, "workload {letter}: {kinds:?}");
        }
    }
}

#[test]
fn workload_d_reads_favour_the_new_inserts() {
    let ops = 200_000u64;
    let (kinds, to_new_keys) = run("d", ops);
    let inserted = kinds[2];
    // Under a uniform choice, reads would go to new keys at most inserted / (10000 + inserted)
    // of the time (about 50% at the end, a third on average); under `latest` it is far more
    // (about 86% with these settings).
    let uniform_share = inserted as f64 / (10_000 + inserted) as f64;
    let share = to_new_keys as f64 / kinds[0] as f64;
    assert!(share > 0.75 && share > uniform_share + 0.2, "share {share}, uniform {uniform_share}");
}
