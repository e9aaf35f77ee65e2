//! `scalio-demo`: starts a server with file-backed SSDs in a temporary directory, runs a short
//! workload against it over the software NIC on loopback, checks every value it reads, and
//! prints where the work happened.

use anyhow::{bail, Context};
use clap::Parser;
use scalio_client::{Client, ClientConfig, ClientStats};
use scalio_server::{Server, ServerConfig};
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(about = "A short demonstration of scalio on loopback")]
struct Args {
    /// Keys to write and read.
    #[arg(long, default_value_t = 5000)]
    keys: u64,
    /// File-backed SSDs.
    #[arg(long, default_value_t = 2)]
    ssds: usize,
    /// Client connections, each with 16 operations in flight.
    #[arg(long, default_value_t = 2)]
    clients: usize,
}

fn key(i: u64) -> Vec<u8> {
    format!("demo-{i:08}").into_bytes()
}

fn value(i: u64, version: u32) -> Vec<u8> {
    let mut v = format!("value {i} version {version} ").into_bytes();
    v.resize(64, b'.');
    v
}

/// Runs `f(client, i)` for every key, 16 at a time per client.
async fn for_all_keys<F, Fut>(clients: &[Client], keys: u64, f: F) -> anyhow::Result<()>
where
    F: Fn(Client, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let lanes = clients.len() as u64 * 16;
    let mut tasks = Vec::new();
    for lane in 0..lanes {
        let c = clients[(lane as usize) % clients.len()].clone();
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = lane;
            while i < keys {
                f(c.clone(), i).await?;
                i += lanes;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

fn sum(clients: &[Client]) -> ClientStats {
    let mut total = ClientStats::default();
    for c in clients {
        let s = c.stats();
        total.gets += s.gets;
        total.hits += s.hits;
        total.misses += s.misses;
        total.probes += s.probes;
        total.fills += s.fills;
        total.block_reads += s.block_reads;
        total.writes += s.writes;
        for (t, r) in total.rpcs.iter_mut().zip(s.rpcs) {
            *t += r;
        }
    }
    total
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let mut config = ServerConfig::default().with_ssd_files(dir.path(), args.ssds, 64 << 20);
    config.listen = Some("127.0.0.1:0".into());
    let server = Server::start(&config)?;
    let addr = server.local_addr().expect("listening").to_string();
    println!("server: {} file-backed SSDs of 64 MiB in {}, fabric on {addr}", args.ssds, dir.path().display());
    let mut clients = Vec::new();
    for _ in 0..args.clients.max(1) {
        clients.push(Client::connect(&addr, ClientConfig::default()).await?);
    }
    println!("clients: {} over the software NIC, block path {:?}\n", clients.len(), clients[0].block_path());

    let phases: [(&str, u32); 4] = [("put", 1), ("get (cold: misses)", 1), ("get (warm: hits)", 1), ("update", 2)];
    println!(
        "{:<22} {:>7} {:>10} {:>6} {:>6} {:>6} {:>12} {:>12}",
        "phase", "ops", "ops/s", "hits", "misses", "rpcs", "client SSD", "worker SSD"
    );
    for (name, version) in phases {
        let before = (sum(&clients), server.stats());
        let t = Instant::now();
        match name {
            "put" | "update" => {
                for_all_keys(&clients, args.keys, move |c, i| async move {
                    c.put(&key(i), &value(i, version)).await?;
                    Ok(())
                })
                .await?
            }
            _ => {
                for_all_keys(&clients, args.keys, move |c, i| async move {
                    let got = c.get(&key(i)).await?;
                    if got.as_deref() != Some(&value(i, version)[..]) {
                        bail!("key {i}: read {:?}", got.map(|v| String::from_utf8_lossy(&v).into_owned()));
                    }
                    Ok(())
                })
                .await?
            }
        }
        let secs = t.elapsed().as_secs_f64();
        let (c, s) = (sum(&clients).since(&before.0), server.stats().delta(&before.1));
        println!(
            "{:<22} {:>7} {:>10.0} {:>6} {:>6} {:>6} {:>12} {:>12}",
            name,
            args.keys,
            args.keys as f64 / secs,
            c.hits,
            c.misses,
            c.total_rpcs(),
            c.block_reads,
            s.value("ssd_reads_worker")
        );
    }
    // Reads after the update must see the new values: the writes invalidated the cache.
    for_all_keys(&clients, args.keys, |c, i| async move {
        let got = c.get(&key(i)).await?;
        if got.as_deref() != Some(&value(i, 2)[..]) {
            bail!("key {i}: stale read after update");
        }
        Ok(())
    })
    .await?;
    let s = server.stats();
    let c = sum(&clients);
    println!("\nall {} values read back correctly (including after the update)", args.keys);
    println!("cache: {} of {} GETs were hits ({} probes, {} fills)", c.hits, c.gets, c.probes, c.fills);
    println!(
        "server: {} META_GETs, {} writes in {} batches, {} invalidations",
        s.value("rpc_meta_get"),
        s.value("store_batched_writes"),
        s.value("store_batches"),
        s.value("table_invalidations")
    );
    println!(
        "SSD reads: {} by the clients' block path, {} by server workers (writes read buckets); {} SSD writes",
        c.block_reads,
        s.value("ssd_reads_worker"),
        s.value("ssd_writes_worker")
    );
    println!(
        "CPU: workers {:.1} ms, NIC {:.1} ms, SSD I/O threads {:.1} ms",
        s.value("cpu_worker_ns") as f64 / 1e6,
        s.value("cpu_nic_ns") as f64 / 1e6,
        s.value("cpu_io_ns") as f64 / 1e6
    );
    drop(clients);
    server.shutdown();
    Ok(())
}
