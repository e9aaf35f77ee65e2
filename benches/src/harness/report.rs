//! What a run measured: the human-readable table and the JSON (field names documented in the
//! README; they are stable).

use super::driver::PhaseResult;
use super::options::Options;
use super::system::{ClientCounters, SystemKind};
use super::warmup::Warmup;
use crate::ycsb::{RequestDistribution, WorkloadSpec};
use hdrhistogram::Histogram;
use scalio_client::ClientConfig;
use scalio_common::rpc::Stats;
use scalio_server::{Server, ServerConfig};
use serde_json::{json, Map, Value};

/// The server's counters at one moment (None where the system has none).
pub struct ServerSnapshot(Option<Stats>);

impl ServerSnapshot {
    /// `fabric` is the measured clients' configuration: the counters are read over the same fabric.
    pub fn take(server: Option<&Server>, addr: &str, kind: SystemKind, fabric: &ClientConfig) -> ServerSnapshot {
        if kind == SystemKind::Memcached {
            return ServerSnapshot(None);
        }
        if let Some(s) = server {
            return ServerSnapshot(Some(s.stats()));
        }
        if let Ok(url) = addr.parse::<scalio_common::cluster::ClusterUrl>() {
            return ServerSnapshot(
                cluster_stats(&url).map_err(|e| eprintln!("warning: cannot read the servers' counters: {e}")).ok(),
            );
        }
        let config = ClientConfig {
            fabric: fabric.fabric,
            verbs: fabric.verbs.clone(),
            secret: fabric.secret.clone(),
            ..ClientConfig::default()
        };
        let stats = scalio_client::blocking::Client::connect(addr, config)
            .and_then(|c| c.server_stats())
            .map_err(|e| eprintln!("warning: cannot read the server's counters: {e}"))
            .ok();
        ServerSnapshot(stats)
    }

    /// The counters' change since `earlier` (None if either has none).
    pub fn delta(&self, earlier: &ServerSnapshot) -> Option<Stats> {
        match (&earlier.0, &self.0) {
            (Some(b), Some(a)) => Some(a.delta(b)),
            _ => None,
        }
    }
}

/// Every member's counters, added up by name (the epoch is the largest, not a sum).
fn cluster_stats(url: &scalio_common::cluster::ClusterUrl) -> Result<Stats, String> {
    use scalio_client::routing::{ClusterClient, RoutingConfig};
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let per_server = rt.block_on(async {
        let c = ClusterClient::connect(url, Default::default(), RoutingConfig::default()).await?;
        c.server_stats().await
    });
    let mut total = Stats::default();
    for (_, s) in per_server.map_err(|e| e.to_string())? {
        for (name, v) in s.counters {
            match total.counters.iter_mut().find(|(n, _)| *n == name) {
                Some((n, t)) if n == "cluster_epoch" => *t = (*t).max(v),
                Some((_, t)) => *t += v,
                None => total.counters.push((name, v)),
            }
        }
    }
    Ok(total)
}

/// The results of a run.
pub struct Report {
    pub json: Value,
    pub table: String,
    /// Operations that failed in the run phase (the binary exits non-zero if any).
    pub errors: u64,
}

fn latency(h: &Histogram<u64>) -> Value {
    let us = |ns: u64| ns as f64 / 1e3;
    json!({
        "count": h.len(),
        "avg_us": h.mean() / 1e3,
        "p50_us": us(h.value_at_quantile(0.50)),
        "p99_us": us(h.value_at_quantile(0.99)),
        "p999_us": us(h.value_at_quantile(0.999)),
        "max_us": us(h.max()),
    })
}

fn distribution(d: &RequestDistribution) -> &'static str {
    match d {
        RequestDistribution::Uniform => "uniform",
        RequestDistribution::Zipfian => "zipfian",
        RequestDistribution::Latest => "latest",
        RequestDistribution::Hotspot { .. } => "hotspot",
    }
}

fn workload_name(opts: &Options) -> String {
    match (&opts.workload, opts.property_files.last()) {
        (Some(w), _) if w.starts_with("workload") => w.clone(),
        (Some(w), _) => format!("workload{w}"),
        (None, Some(f)) => f.file_name().map_or("custom".into(), |n| n.to_string_lossy().into_owned()),
        (None, None) => "workloada".into(),
    }
}

/// The load of a run's store: done by this run, or reused from an earlier one (its directory).
pub enum LoadReport {
    Loaded(PhaseResult),
    Reused(std::path::PathBuf),
}

/// GETs served by the cache / GETs, for systems with a cache (LEED and stages 0-1: None).
pub(crate) fn phase_hit_ratio(kind: SystemKind, c: &ClientCounters) -> Option<f64> {
    let has_cache = kind.uses_scalio_cache() || kind.uses_ditto_cache();
    c.hits.filter(|_| has_cache).map(|h| if c.gets == 0 { 0.0 } else { h as f64 / c.gets as f64 })
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        opts: &Options,
        kind: SystemKind,
        spec: &WorkloadSpec,
        server_config: Option<&ServerConfig>,
        load: Option<LoadReport>,
        warmup: Option<Warmup>,
        run: PhaseResult,
        before: ServerSnapshot,
        after: ServerSnapshot,
    ) -> Report {
        let ops = run.operations.max(1) as f64;
        let secs = run.seconds.max(1e-9);
        let delta = after.delta(&before);
        let emulated = opts.ssd_iops > 0 || opts.ssd_latency_us > 0 || opts.worker_io_cost_us > 0;
        let mut latencies = Map::new();
        for (k, h) in &run.histograms.by_kind {
            latencies.insert(k.to_string(), latency(h));
        }
        if let Some(all) = run.histograms.all() {
            latencies.insert("ALL".into(), latency(&all));
        }
        let c = &run.counters;
        // Only systems with a cache have a hit ratio (LEED and stages 0-1 report null).
        let hit_ratio = phase_hit_ratio(kind, c);
        let per_op = |v: u64| v as f64 / ops;
        let (ssd_reads, ssd_writes, ssd_iops, cpu, worker_cores) = match &delta {
            Some(d) => {
                let worker_reads = d.value("ssd_reads_worker");
                // The client block path: through the target or in-process, else the clients' own
                // reads of the files (direct), which the server cannot see.
                let device_client = d.value("ssd_reads_target") + d.value("ssd_reads_client");
                let client_reads = if opts.block == "direct" { c.block_reads } else { device_client };
                let writes = d.value("ssd_writes_worker") + d.value("ssd_writes_target");
                let worker_ns = d.value("cpu_worker_ns") + d.value("worker_virtual_ns");
                (
                    json!({"worker": per_op(worker_reads), "client": per_op(client_reads)}),
                    json!(per_op(writes)),
                    json!((worker_reads + client_reads + writes) as f64 / secs),
                    json!({
                        "worker": d.value("cpu_worker_ns") as f64 / 1e3 / ops,
                        "worker_virtual": d.value("worker_virtual_ns") as f64 / 1e3 / ops,
                        "nic": d.value("cpu_nic_ns") as f64 / 1e3 / ops,
                        "target": d.value("cpu_target_ns") as f64 / 1e3 / ops,
                    }),
                    json!(worker_ns as f64 / 1e9 / secs),
                )
            }
            None => (Value::Null, Value::Null, Value::Null, Value::Null, Value::Null),
        };
        let (cache_buckets, cache_slots) = match server_config {
            Some(s) if s.cache.enabled => {
                (json!(s.cache.buckets), json!(u64::from(s.cache.buckets) * u64::from(s.cache.assoc)))
            }
            Some(s) if s.ditto.enabled => {
                (json!(s.ditto.buckets), json!(u64::from(s.ditto.buckets) * u64::from(s.ditto.assoc)))
            }
            _ => (Value::Null, Value::Null),
        };
        let json = json!({
            "schema": 1,
            "system": kind.name(),
            "stage": kind.stage(),
            "label": kind.label(),
            "emulated": emulated,
            "emulation": {
                "ssd_iops": opts.ssd_iops,
                "ssd_latency_us": opts.ssd_latency_us,
                "worker_io_cost_us": opts.worker_io_cost_us,
            },
            "workload": {
                "name": workload_name(opts),
                "recordcount": spec.record_count,
                "operationcount": spec.operation_count,
                "readproportion": spec.read_proportion,
                "updateproportion": spec.update_proportion,
                "insertproportion": spec.insert_proportion,
                "readmodifywriteproportion": spec.read_modify_write_proportion,
                "requestdistribution": distribution(&spec.request_distribution),
                "zipfianconstant": spec.zipfian_constant,
                "fieldcount": spec.field_count,
                "fieldlength": spec.field_length,
            },
            "config": {
                "threads": opts.threads,
                "outstanding": opts.outstanding,
                "server": opts.server.clone().or_else(|| opts.cluster.clone()).unwrap_or_else(|| "embedded".into()),
                "ssds": server_config.map(|s| s.ssds.len()),
                "workers": server_config.map(|s| s.workers),
                "assoc": opts.assoc,
                "cache_buckets": cache_buckets,
                "cache_slots": cache_slots,
                "cache_ratio": opts.cache_ratio,
                "batch": server_config.map(|s| s.write.batch),
                "block_path": if kind == SystemKind::Memcached { None } else { Some(opts.block.clone()) },
                "seed": opts.seed,
            },
            "load": load.as_ref().map(|l| match l {
                LoadReport::Loaded(l) => json!({
                    "records": l.operations,
                    "seconds": l.seconds,
                    "throughput": l.operations as f64 / l.seconds.max(1e-9),
                    "batch": server_config.map(|_| opts.load_batch),
                    "reused": null,
                }),
                LoadReport::Reused(dir) => json!({
                    "records": spec.record_count,
                    "seconds": 0.0,
                    "throughput": null,
                    "batch": null,
                    "reused": dir.display().to_string(),
                }),
            }),
            "warmup": warmup.as_ref().map(|w| json!({
                "operations": w.windows.iter().map(|x| x.result.operations).sum::<u64>(),
                "seconds": w.windows.iter().map(|x| x.result.seconds).sum::<f64>(),
                "emulated": w.emulated,
                "window": w.rule.window,
                "epsilon": w.rule.epsilon,
                "settled": w.settled,
                "evictions": w.windows.iter().map(|x| x.evictions).sum::<Option<u64>>(),
                "windows": w.windows.iter().map(|x| json!({
                    "operations": x.result.operations,
                    "seconds": x.result.seconds,
                    "throughput": x.result.operations as f64 / x.result.seconds.max(1e-9),
                    "cache_hit_ratio": phase_hit_ratio(kind, &x.result.counters),
                    "evictions": x.evictions,
                    "errors": x.result.errors,
                })).collect::<Vec<_>>(),
            })),
            "run": {
                "seconds": run.seconds,
                "operations": run.operations,
                "errors": run.errors,
                "not_found": run.not_found,
                "throughput": run.operations as f64 / secs,
                "latency": latencies,
                "cache_hit_ratio": hit_ratio,
                "rpcs_per_op": c.rpcs.map(per_op),
                "ssd_reads_per_op": ssd_reads,
                "ssd_writes_per_op": ssd_writes,
                "ssd_iops": ssd_iops,
                "cpu_us_per_op": cpu,
                "worker_cores": worker_cores,
                "server_counters": delta.as_ref().map(|d| {
                    d.counters.iter().map(|(n, v)| (n.clone(), json!(v))).collect::<Map<_, _>>()
                }),
                "client_counters": c.named.iter().map(|(n, v)| (n.clone(), json!(v))).collect::<Map<_, _>>(),
            },
        });
        let table = Self::render(&json, &run);
        Report { json, table, errors: run.errors }
    }

    fn render(j: &Value, run: &PhaseResult) -> String {
        use std::fmt::Write;
        let r = &j["run"];
        let mut t = String::new();
        let f = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.3}"));
        let _ = writeln!(
            t,
            "{} | {} ({} records, {} ops, {} {}) | {} threads x {} outstanding{}",
            j["label"].as_str().unwrap_or(""),
            j["workload"]["name"].as_str().unwrap_or(""),
            j["workload"]["recordcount"],
            j["workload"]["operationcount"],
            j["workload"]["requestdistribution"].as_str().unwrap_or(""),
            j["workload"]["zipfianconstant"],
            j["config"]["threads"],
            j["config"]["outstanding"],
            if j["emulated"] == json!(true) {
                format!(
                    " | EMULATED: {} IOPS/SSD, {} us/IO latency, {} us worker time/IO",
                    j["emulation"]["ssd_iops"], j["emulation"]["ssd_latency_us"], j["emulation"]["worker_io_cost_us"]
                )
            } else {
                String::new()
            }
        );
        if let Some(l) = j["load"].as_object() {
            match l["reused"].as_str() {
                Some(dir) => {
                    let _ = writeln!(t, "load: reused the store in {dir} ({} records)", l["records"]);
                }
                None => {
                    let _ =
                        writeln!(t, "load: {} records in {:.2} s", l["records"], l["seconds"].as_f64().unwrap_or(0.0));
                }
            }
        }
        if let Some(windows) = j["warmup"]["windows"].as_array() {
            let w = &j["warmup"];
            let hits: Vec<String> = windows
                .iter()
                .map(|p| p["cache_hit_ratio"].as_f64().map_or("-".into(), |h| format!("{h:.3}")))
                .collect();
            let settled = match w["settled"].as_bool() {
                Some(true) => format!("settled (two windows within {})", w["epsilon"]),
                Some(false) => "NOT settled at --warmup-ops".to_string(),
                None => "no cache".to_string(),
            };
            let _ = writeln!(
                t,
                "warm-up: {} ops in {:.1} s{}, hit ratio by window of {}: {}; {settled}; {} evictions",
                w["operations"],
                w["seconds"].as_f64().unwrap_or(0.0),
                if w["emulated"] == json!(true) { "" } else { " (emulation suspended)" },
                w["window"],
                hits.join(" "),
                w["evictions"].as_u64().map_or("-".into(), |e| e.to_string()),
            );
        }
        let _ = writeln!(
            t,
            "run: {} ops in {:.2} s = {:.0} ops/s, {} errors, {} not found",
            r["operations"],
            r["seconds"].as_f64().unwrap_or(0.0),
            r["throughput"].as_f64().unwrap_or(0.0),
            r["errors"],
            r["not_found"]
        );
        let _ = writeln!(
            t,
            "{:<18} {:>9} {:>10} {:>10} {:>10} {:>10}",
            "operation", "count", "avg us", "p50 us", "p99 us", "p99.9 us"
        );
        if let Some(lat) = r["latency"].as_object() {
            for (k, v) in lat {
                let _ = writeln!(
                    t,
                    "{:<18} {:>9} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
                    k,
                    v["count"],
                    v["avg_us"].as_f64().unwrap_or(0.0),
                    v["p50_us"].as_f64().unwrap_or(0.0),
                    v["p99_us"].as_f64().unwrap_or(0.0),
                    v["p999_us"].as_f64().unwrap_or(0.0)
                );
            }
        }
        let _ = writeln!(
            t,
            "cache hit ratio {} | RPCs/op {} | SSD reads/op worker {} client {} | SSD writes/op {} | SSD IOPS {}",
            f(&r["cache_hit_ratio"]),
            f(&r["rpcs_per_op"]),
            f(&r["ssd_reads_per_op"]["worker"]),
            f(&r["ssd_reads_per_op"]["client"]),
            f(&r["ssd_writes_per_op"]),
            f(&r["ssd_iops"])
        );
        let _ = writeln!(
            t,
            "CPU us/op: worker {} (+ emulated {}) NIC {} target {} | worker cores busy {}",
            f(&r["cpu_us_per_op"]["worker"]),
            f(&r["cpu_us_per_op"]["worker_virtual"]),
            f(&r["cpu_us_per_op"]["nic"]),
            f(&r["cpu_us_per_op"]["target"]),
            f(&r["worker_cores"])
        );
        if let Some(e) = &run.first_error {
            let _ = writeln!(t, "first error: {e}");
        }
        t
    }
}
