//! `scalio-ycsb --store-dir`: the first run loads a store and keeps it, a second run with the same
//! key starts on it through recovery (no load) and reads every record's value back; a different
//! record count gets a store of its own.

use clap::Parser;
use scalio_bench::harness::{self, options::Options};

fn run(store_dir: &std::path::Path, records: u64, workload: &str) -> serde_json::Value {
    let opts = Options::try_parse_from([
        "scalio-ycsb",
        "--workload",
        workload,
        "-p",
        &format!("recordcount={records}"),
        "-p",
        "operationcount=3000",
        "--ssds",
        "2",
        "--threads",
        "1",
        "--outstanding",
        "32",
        "--warmup-ops",
        "2000",
        "--warmup-window",
        "500",
        "--store-dir",
        store_dir.to_str().unwrap(),
    ])
    .unwrap();
    let report = harness::run(&opts).unwrap();
    assert_eq!(report.errors, 0, "{}", report.table);
    report.json
}

#[test]
fn a_loaded_store_is_kept_and_reused_through_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let first = run(dir.path(), 3000, "a");
    assert_eq!(first["load"]["records"], 3000);
    assert!(first["load"]["reused"].is_null());
    let stores: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(stores.len(), 1);

    // Workload C reads only: every read must find the value the load (or run A's updates) wrote.
    let second = run(dir.path(), 3000, "c");
    let reused = second["load"]["reused"].as_str().expect("the second run reuses the store");
    assert!(reused.starts_with(dir.path().to_str().unwrap()));
    assert_eq!(second["run"]["not_found"], 0);
    assert_eq!(second["run"]["errors"], 0);
    // The warm-up in windows of 500, until two agree within ε or the 2,000 operations are run.
    let warmup = &second["warmup"];
    let windows = warmup["windows"].as_array().unwrap();
    assert!((2..=4).contains(&windows.len()), "{warmup}");
    assert!(windows.iter().all(|w| w["cache_hit_ratio"].as_f64().is_some() && w["evictions"].as_u64().is_some()));
    let hits: Vec<f64> = windows.iter().map(|w| w["cache_hit_ratio"].as_f64().unwrap()).collect();
    let settled = warmup["settled"].as_bool().expect("a cached system settles or not");
    let eps = warmup["epsilon"].as_f64().unwrap();
    assert_eq!(settled, (hits[hits.len() - 1] - hits[hits.len() - 2]).abs() < eps, "{warmup}");
    assert!(settled || windows.len() == 4, "only a settled warm-up stops before the cap: {warmup}");
    // And it stops at the first settled pair.
    assert!(hits[..hits.len() - 1].windows(2).all(|p| (p[1] - p[0]).abs() >= eps), "{warmup}");
    assert_eq!(warmup["emulated"], false, "the embedded server suspends the emulation for the warm-up");

    // Another record count is another store.
    let third = run(dir.path(), 2000, "c");
    assert!(third["load"]["reused"].is_null());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}
