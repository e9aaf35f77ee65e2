//! `scalio-admin`: operating a cluster through its etcd records.
//!
//! * `status`: the map's epoch, members, drains and moves in progress;
//! * `drain ID [--wait SECS]`: marks server ID as leaving (`PREFIX/leaving/ID`); the
//!   reconcilers take it off the ring at once and out of each chain once its replacement has
//!   copied the data. With `--wait`, returns when it is in no chain (then it can be stopped
//!   without losing anything, whatever the replication factor);
//! * `undrain ID`: cancels a drain.

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use scalio_common::cluster::etcd::Etcd;
use scalio_common::cluster::{ClusterUrl, NodeId};
use scalio_server::cluster::agent::parse_state;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(name = "scalio-admin", about = "Operate a scalio cluster through etcd")]
struct Args {
    /// The cluster: etcd://HOST:PORT[/prefix].
    #[arg(long)]
    cluster: ClusterUrl,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the map's epoch, members, drains and moves.
    Status,
    /// Drain a server: its data moves to the others, then it leaves every chain.
    Drain {
        id: String,
        /// Wait up to this many seconds for the drain to finish.
        #[arg(long)]
        wait: Option<u64>,
    },
    /// Cancel a drain.
    Undrain { id: String },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let url = &args.cluster;
    let etcd = Etcd::new(&url.endpoint, Duration::from_secs(5));
    match args.command {
        Command::Status => {
            let st = parse_state(url, etcd.get_prefix(&url.all_prefix())?);
            let Some((map, _)) = st.map else { bail!("no cluster map at {url}") };
            println!("epoch {} replication {} partitions {}", map.epoch, map.params.replication, map.chains.len());
            for m in &map.nodes {
                let (member, tail) = map.partitions_of(&m.id);
                let leaving = if st.progress.leaving.contains(&m.id) { " leaving" } else { "" };
                println!("member {} {} partitions {member} tail_of {tail}{leaving}", m.id, m.fabric);
            }
            println!("moves {}", map.moves.len());
        }
        Command::Drain { id, wait } => {
            let id = NodeId(id);
            let st = parse_state(url, etcd.get_prefix(&url.all_prefix())?);
            let known = st.map.as_ref().is_some_and(|(m, _)| m.member(&id).is_some());
            if !known {
                bail!("{id} is not a member of the map at {url}");
            }
            etcd.put(&url.leaving_key(&id), b"", None).context("writing the leaving record")?;
            println!("draining {id}");
            if let Some(secs) = wait {
                let end = Instant::now() + Duration::from_secs(secs);
                loop {
                    let st = parse_state(url, etcd.get_prefix(&url.all_prefix())?);
                    if let Some((m, _)) = &st.map {
                        if m.partitions_of(&id) == (0, 0) {
                            println!("drained {id} at epoch {}", m.epoch);
                            break;
                        }
                    }
                    if Instant::now() >= end {
                        bail!("{id} still holds partitions after {secs} s");
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        Command::Undrain { id } => {
            etcd.delete(&url.leaving_key(&NodeId(id.clone())))?;
            println!("no longer draining {id}");
        }
    }
    Ok(())
}
