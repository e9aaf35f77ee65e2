//! `scalio-cluster-check`: a mixed workload against a cluster that checks every answer.
//!
//! Keys are split among writer tasks; each is the only writer of its keys and runs one
//! operation at a time, with a new version in every value, so it knows which value each of its
//! keys may hold: the last acknowledged version, or a later one whose write failed (a failed
//! write may or may not have taken effect). Every GET of a writer is checked against that;
//! reader tasks (`--readers`) GET random keys concurrently with the writers. At the end a fresh
//! client reads every key back: no acknowledged write may be missing. Every operation is also
//! recorded with its invocation and return, and the whole history goes through the
//! linearizability checker (`scalio_lincheck`). Exits non-zero on any mismatch, a history that
//! is not linearizable, or more failed operations than `--max-errors`. Prints one summary line
//! (and writes JSON with --json), including the map epochs seen at the start and the end (a
//! server killed during the run shows as a newer epoch at the end).

use anyhow::{bail, Context};
use clap::Parser;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use scalio_client::routing::{ClusterClient, RoutingConfig};
use scalio_client::{ClientConfig, ClientError};
use scalio_common::cluster::ClusterUrl;
use scalio_lincheck::{Call, Recorder, Ret};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug, Clone)]
#[command(version)]
struct Args {
    /// The cluster: etcd://HOST:PORT[/prefix].
    #[arg(long)]
    cluster: ClusterUrl,
    /// Distinct keys.
    #[arg(long, default_value_t = 2000)]
    keys: u64,
    /// Operations of the writer tasks in all (writes and checked reads).
    #[arg(long, default_value_t = 20_000)]
    ops: u64,
    /// Run the writer tasks for at least this many seconds (and at least --ops operations).
    #[arg(long, default_value_t = 0.0)]
    seconds: f64,
    /// Concurrent writer tasks (each the only writer of its keys).
    #[arg(long, default_value_t = 16)]
    tasks: u64,
    /// Concurrent reader tasks (GETs of any key, checked by the linearizability checker).
    #[arg(long, default_value_t = 0)]
    readers: u64,
    /// Write every key once before the mixed workload.
    #[arg(long)]
    load: bool,
    /// Percentage of a writer's operations that are writes.
    #[arg(long, default_value_t = 50)]
    write_percent: u32,
    /// Failed operations tolerated (each is recorded as of unknown outcome).
    #[arg(long, default_value_t = 0)]
    max_errors: u64,
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

/// What a writer knows of one of its keys.
#[derive(Debug, Clone, Copy, Default)]
struct KeyState {
    /// Last acknowledged version (0: never written).
    acked: u64,
    /// Last version written, acknowledged or not.
    attempted: u64,
}

impl KeyState {
    /// Whether `got` is a value the key may hold: the acknowledged version or a later one
    /// whose write failed (or, before any acknowledged write, nothing).
    fn allows(&self, i: u64, got: &Option<Vec<u8>>) -> bool {
        match got {
            None => self.acked == 0,
            Some(v) => (self.acked.max(1)..=self.attempted).any(|ver| *v == value(i, ver)),
        }
    }
}

#[derive(Default, Debug, Clone, Copy)]
struct Counts {
    writes_acked: u64,
    gets_checked: u64,
    reader_gets: u64,
    mismatches: u64,
    errors: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.writes_acked += o.writes_acked;
        self.gets_checked += o.gets_checked;
        self.reader_gets += o.reader_gets;
        self.mismatches += o.mismatches;
        self.errors += o.errors;
    }
}

/// Runs `call` on `key` through `c`, recorded in `rec` as operation of client `id` (a failed
/// one as of unknown outcome).
async fn recorded(rec: &Arc<Recorder>, c: &ClusterClient, id: u32, key: &[u8], call: Call) -> Result<Ret, ClientError> {
    let op = rec.invoke(id, key, call.clone());
    let r = match &call {
        Call::Get => c.get(key).await.map(Ret::Get),
        Call::Put(v) => c.put(key, v).await.map(|()| Ret::Put),
        Call::Update(v) => c.update(key, v).await.map(Ret::Update),
        Call::Delete => c.delete(key).await.map(Ret::Delete),
    };
    match &r {
        Ok(ret) => op.returned(ret.clone()),
        Err(_) => op.unknown(),
    }
    r
}

/// Writes version `attempted + 1` of key `i`.
async fn put(rec: &Arc<Recorder>, c: &ClusterClient, a: &Args, id: u32, i: u64, st: &mut KeyState, n: &mut Counts) {
    let v = st.attempted + 1;
    st.attempted = v;
    match recorded(rec, c, id, &key(&a.prefix, i), Call::Put(value(i, v))).await {
        Ok(_) => {
            st.acked = v;
            n.writes_acked += 1;
        }
        Err(e) => {
            n.errors += 1;
            eprintln!("put {i} version {v}: {e}");
        }
    }
}

/// One writer: its keys are `task, task + tasks, ...`.
async fn run_writer(
    rec: Arc<Recorder>,
    c: ClusterClient,
    a: Args,
    task: u64,
    ops: u64,
    until: Instant,
) -> (Counts, Vec<(u64, KeyState)>) {
    let id = task as u32;
    let mine: Vec<u64> = (task..a.keys).step_by(a.tasks as usize).collect();
    let mut states = vec![KeyState::default(); mine.len()];
    let mut n = Counts::default();
    let mut rng = StdRng::seed_from_u64(a.seed.wrapping_mul(1_000_003).wrapping_add(task));
    if a.load {
        for (j, i) in mine.iter().enumerate() {
            put(&rec, &c, &a, id, *i, &mut states[j], &mut n).await;
        }
    }
    let mut done = 0;
    while !mine.is_empty() && (done < ops || Instant::now() < until) {
        done += 1;
        let j = rng.random_range(0..mine.len());
        let i = mine[j];
        if rng.random_range(0..100) < a.write_percent {
            put(&rec, &c, &a, id, i, &mut states[j], &mut n).await;
        } else {
            match recorded(&rec, &c, id, &key(&a.prefix, i), Call::Get).await {
                Ok(Ret::Get(got)) => {
                    n.gets_checked += 1;
                    if !states[j].allows(i, &got) {
                        n.mismatches += 1;
                        eprintln!(
                            "get {i}: expected version {:?}, got {:?}",
                            states[j],
                            got.map(|g| String::from_utf8_lossy(&g).into_owned())
                        );
                    }
                }
                Ok(_) => unreachable!("a GET returns a value"),
                Err(e) => {
                    n.errors += 1;
                    eprintln!("get {i}: {e}");
                }
            }
        }
    }
    (n, mine.into_iter().zip(states).collect())
}

/// One reader: GETs of random keys until the writers are done.
async fn run_reader(rec: Arc<Recorder>, c: ClusterClient, a: Args, id: u32, stop: Arc<AtomicBool>) -> Counts {
    let mut n = Counts::default();
    let mut rng = StdRng::seed_from_u64(a.seed.wrapping_mul(7_000_003).wrapping_add(u64::from(id)));
    while !stop.load(Ordering::Relaxed) {
        let i = rng.random_range(0..a.keys);
        match recorded(&rec, &c, id, &key(&a.prefix, i), Call::Get).await {
            Ok(_) => n.reader_gets += 1,
            Err(e) => {
                n.errors += 1;
                eprintln!("reader get {i}: {e}");
            }
        }
    }
    n
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
    let rec = Recorder::new();
    let (total, finals, routing, epochs) = rt.block_on(async {
        let cfg = ClientConfig::default();
        let c = ClusterClient::connect(&a.cluster, cfg.clone(), RoutingConfig::default())
            .await
            .context("connecting to the cluster")?;
        let epoch_start = c.map().map_or(0, |m| m.epoch);
        let per_task = a.ops / a.tasks;
        let until = Instant::now() + Duration::from_secs_f64(a.seconds.max(0.0));
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..a.readers)
            .map(|r| {
                let (rec, c, a2, stop) = (rec.clone(), c.clone(), a.clone(), stop.clone());
                tokio::spawn(run_reader(rec, c, a2, (a.tasks + r) as u32, stop))
            })
            .collect();
        let writers: Vec<_> = (0..a.tasks)
            .map(|t| tokio::spawn(run_writer(rec.clone(), c.clone(), a.clone(), t, per_task, until)))
            .collect();
        let mut total = Counts::default();
        let mut written = Vec::new();
        for h in writers {
            let (n, v) = h.await?;
            total.add(&n);
            written.extend(v);
        }
        stop.store(true, Ordering::Relaxed);
        for h in readers {
            total.add(&h.await?);
        }
        // Read every key back through a client that has seen nothing yet.
        let fresh = ClusterClient::connect(&a.cluster, cfg, RoutingConfig::default()).await?;
        let back_id = (a.tasks + a.readers) as u32;
        let mut finals = Counts::default();
        for (i, st) in written {
            match recorded(&rec, &fresh, back_id, &key(&a.prefix, i), Call::Get).await {
                Ok(Ret::Get(got)) if st.allows(i, &got) => finals.gets_checked += 1,
                Ok(got) => {
                    finals.mismatches += 1;
                    eprintln!("read-back {i}: expected {st:?}, got {got:?}");
                }
                Err(e) => {
                    finals.errors += 1;
                    eprintln!("read-back {i}: {e}");
                }
            }
        }
        let epoch_end = fresh.map().map_or(0, |m| m.epoch);
        anyhow::Ok((total, finals, c.routing_stats(), (epoch_start, epoch_end)))
    })?;
    let secs = started.elapsed().as_secs_f64();
    let history = rec.history();
    let checked = scalio_lincheck::check(&history);
    let mismatches = total.mismatches + finals.mismatches;
    let errors = total.errors + finals.errors;
    println!(
        "scalio-cluster-check: {} writes acknowledged, {} GETs checked, {} reader GETs, {} keys read back and checked, {} mismatches, {} errors, {} wrong-owner retries, epochs {}..{}, history of {} operations {}, {:.1} s",
        total.writes_acked,
        total.gets_checked,
        total.reader_gets,
        finals.gets_checked,
        mismatches,
        errors,
        routing.wrong_owner,
        epochs.0,
        epochs.1,
        history.len(),
        if checked.is_ok() { "linearizable" } else { "NOT shown linearizable" },
        secs
    );
    if let Some(p) = &a.json {
        let j = serde_json::json!({
            "cluster": a.cluster.to_string(),
            "writes_acked": total.writes_acked,
            "gets_checked": total.gets_checked,
            "reader_gets": total.reader_gets,
            "read_back": finals.gets_checked,
            "mismatches": mismatches,
            "errors": errors,
            "wrong_owner_retries": routing.wrong_owner,
            "unreachable_retries": routing.unreachable_retries,
            "epoch_start": epochs.0,
            "epoch_end": epochs.1,
            "history_ops": history.len(),
            "linearizable": checked.is_ok(),
            "seconds": secs,
        });
        std::fs::write(p, serde_json::to_vec_pretty(&j)?).with_context(|| format!("writing {}", p.display()))?;
    }
    if let Err(e) = checked {
        bail!("the history is not shown linearizable: {e}");
    }
    if mismatches > 0 || errors > a.max_errors {
        bail!(
            "the cluster returned wrong values ({mismatches}) or failed operations ({errors}, {} tolerated)",
            a.max_errors
        );
    }
    Ok(())
}
