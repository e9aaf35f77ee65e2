//! `scalio-cluster-check`: a mixed workload against a cluster that checks every answer.
//!
//! Keys are split among tasks; each task is the only writer of its keys and runs one operation
//! at a time, so it knows exactly which value each of its keys must hold: every GET is checked
//! against the last acknowledged write (or absence), and at the end a second, fresh client reads
//! every key back and checks it against the last acknowledged write. Exits non-zero on any
//! mismatch or failed operation. Prints one summary line (and writes JSON with --json).

use anyhow::{bail, Context};
use clap::Parser;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use scalio_client::routing::{ClusterClient, RoutingConfig};
use scalio_client::ClientConfig;
use scalio_common::cluster::ClusterUrl;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser, Debug, Clone)]
#[command(version)]
struct Args {
    /// The cluster: etcd://HOST:PORT[/prefix].
    #[arg(long)]
    cluster: ClusterUrl,
    /// Distinct keys.
    #[arg(long, default_value_t = 2000)]
    keys: u64,
    /// Operations in all (half writes, half checked reads).
    #[arg(long, default_value_t = 20_000)]
    ops: u64,
    /// Concurrent tasks (each the only writer of its keys).
    #[arg(long, default_value_t = 16)]
    tasks: u64,
    /// Percentage of operations that are writes.
    #[arg(long, default_value_t = 50)]
    write_percent: u32,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Key prefix (runs with different prefixes do not see each other's keys).
    #[arg(long, default_value = "chk")]
    prefix: String,
    /// Write the counts as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn key(prefix: &str, i: u64) -> Vec<u8> {
    format!("{prefix}{i:012}").into_bytes()
}

fn value(i: u64, version: u64) -> Vec<u8> {
    format!("{i}:{version}:").into_bytes().into_iter().cycle().take(48).collect()
}

#[derive(Default, Debug, Clone, Copy)]
struct Counts {
    writes_acked: u64,
    gets_checked: u64,
    mismatches: u64,
    errors: u64,
}

/// One task: its keys are `task, task + tasks, ...`; `versions[j]` is the last acknowledged
/// version of its j-th key (0: never written).
async fn run_task(c: ClusterClient, a: &Args, task: u64, ops: u64) -> (Counts, Vec<(u64, u64)>) {
    let mine: Vec<u64> = (task..a.keys).step_by(a.tasks as usize).collect();
    let mut versions = vec![0u64; mine.len()];
    let mut n = Counts::default();
    let mut rng = StdRng::seed_from_u64(a.seed.wrapping_mul(1_000_003).wrapping_add(task));
    for _ in 0..ops {
        if mine.is_empty() {
            break;
        }
        let j = rng.random_range(0..mine.len());
        let i = mine[j];
        if rng.random_range(0..100) < a.write_percent {
            let v = versions[j] + 1;
            match c.put(&key(&a.prefix, i), &value(i, v)).await {
                Ok(()) => {
                    versions[j] = v;
                    n.writes_acked += 1;
                }
                Err(e) => {
                    n.errors += 1;
                    eprintln!("put {i}: {e}");
                }
            }
        } else {
            let want = (versions[j] > 0).then(|| value(i, versions[j]));
            match c.get(&key(&a.prefix, i)).await {
                Ok(got) => {
                    n.gets_checked += 1;
                    if got != want {
                        n.mismatches += 1;
                        eprintln!(
                            "get {i}: expected version {}, got {:?}",
                            versions[j],
                            got.map(|g| String::from_utf8_lossy(&g).into_owned())
                        );
                    }
                }
                Err(e) => {
                    n.errors += 1;
                    eprintln!("get {i}: {e}");
                }
            }
        }
    }
    (n, mine.into_iter().zip(versions).collect())
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    if a.tasks == 0 || a.keys == 0 {
        bail!("--tasks and --keys must be at least 1");
    }
    if a.prefix.len() + 12 > scalio_common::key::MAX_KEY_LEN {
        bail!("--prefix may have at most {} bytes", scalio_common::key::MAX_KEY_LEN - 12);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let started = Instant::now();
    let (total, finals, routing) = rt.block_on(async {
        let cfg = ClientConfig::default();
        let c = ClusterClient::connect(&a.cluster, cfg.clone(), RoutingConfig::default())
            .await
            .context("connecting to the cluster")?;
        let per_task = a.ops / a.tasks;
        let mut handles = Vec::new();
        for t in 0..a.tasks {
            let (c, a2) = (c.clone(), a.clone());
            handles.push(tokio::spawn(async move { run_task(c, &a2, t, per_task).await }));
        }
        let mut total = Counts::default();
        let mut written = Vec::new();
        for h in handles {
            let (n, v) = h.await?;
            total.writes_acked += n.writes_acked;
            total.gets_checked += n.gets_checked;
            total.mismatches += n.mismatches;
            total.errors += n.errors;
            written.extend(v);
        }
        // Read every key back through a client that has seen nothing yet.
        let fresh = ClusterClient::connect(&a.cluster, cfg, RoutingConfig::default()).await?;
        let mut finals = Counts::default();
        for (i, version) in written {
            let want = (version > 0).then(|| value(i, version));
            match fresh.get(&key(&a.prefix, i)).await {
                Ok(got) if got == want => finals.gets_checked += 1,
                Ok(got) => {
                    finals.mismatches += 1;
                    eprintln!(
                        "read-back {i}: expected version {version}, got {:?}",
                        got.map(|g| String::from_utf8_lossy(&g).into_owned())
                    );
                }
                Err(e) => {
                    finals.errors += 1;
                    eprintln!("read-back {i}: {e}");
                }
            }
        }
        let r1 = c.routing_stats();
        anyhow::Ok((total, finals, r1))
    })?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "scalio-cluster-check: {} writes acknowledged, {} GETs checked, {} keys read back and checked, {} mismatches, {} errors, {} wrong-owner retries, {:.1} s",
        total.writes_acked,
        total.gets_checked,
        finals.gets_checked,
        total.mismatches + finals.mismatches,
        total.errors + finals.errors,
        routing.wrong_owner,
        secs
    );
    if let Some(p) = &a.json {
        let j = serde_json::json!({
            "cluster": a.cluster.to_string(),
            "writes_acked": total.writes_acked,
            "gets_checked": total.gets_checked,
            "read_back": finals.gets_checked,
            "mismatches": total.mismatches + finals.mismatches,
            "errors": total.errors + finals.errors,
            "wrong_owner_retries": routing.wrong_owner,
            "seconds": secs,
        });
        std::fs::write(p, serde_json::to_vec_pretty(&j)?).with_context(|| format!("writing {}", p.display()))?;
    }
    if total.mismatches + finals.mismatches + total.errors + finals.errors > 0 {
        bail!("the cluster returned wrong values or failed operations");
    }
    Ok(())
}
