//! Cluster membership against a real etcd, at `SCALIO_ETCD` (HOST:PORT): in-process servers
//! whose agents register, reconcile the map concurrently, and leave by revoking their lease or
//! by letting it expire. Skipped (passing, with a note) when the variable is unset;
//! `scripts/ci/etcd.sh run -- cargo test -p scalio-server --test cluster_etcd` sets it.

use scalio_common::cluster::etcd::Etcd;
use scalio_common::cluster::{ClusterMap, ClusterUrl, Member, NodeId, Role};
use scalio_common::rpc::{Op, WrongOwner};
use scalio_server::cluster::{Agent, AgentConfig, Ownership};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn etcd_url(name: &str) -> Option<ClusterUrl> {
    match std::env::var("SCALIO_ETCD") {
        Ok(a) if !a.is_empty() => {
            let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
            Some(format!("etcd://{a}/test-{name}-{t}").parse().unwrap())
        }
        _ => {
            eprintln!("SCALIO_ETCD is not set: skipping the test against a real etcd");
            None
        }
    }
}

fn member(i: usize) -> Member {
    Member {
        id: NodeId(format!("s{i}")),
        fabric: format!("127.0.0.1:{}", 17400 + i),
        target: None,
        subsystems: vec![],
        capacity_bytes: 1 << 30,
    }
}

fn join(url: &ClusterUrl, i: usize, ttl_s: u64) -> (Agent, Arc<Ownership>) {
    let own = Arc::new(Ownership::new(member(i).id));
    let cfg = AgentConfig { lease_ttl: Duration::from_secs(ttl_s), ..AgentConfig::new(url.clone(), member(i)) };
    (Agent::start(cfg, own.clone()).unwrap(), own)
}

fn stored_map(url: &ClusterUrl) -> Option<ClusterMap> {
    let e = Etcd::new(&url.endpoint, Duration::from_secs(2));
    e.get(&url.map_key()).unwrap().0.map(|kv| ClusterMap::decode(&kv.value).unwrap())
}

/// Waits until every view holds a map with exactly `members`, and returns it.
fn converge(url: &ClusterUrl, views: &[&Ownership], members: &[&str], within: Duration) -> ClusterMap {
    let end = Instant::now() + within;
    loop {
        let stored = stored_map(url);
        if let Some(m) = &stored {
            let ids: Vec<&str> = m.nodes.iter().map(|n| n.id.0.as_str()).collect();
            if ids == members && views.iter().all(|v| v.epoch() == m.epoch) {
                return m.clone();
            }
        }
        assert!(Instant::now() < end, "no agreement on {members:?} within {within:?}; stored {stored:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn servers_that_join_together_agree_on_one_map_and_leave_it_cleanly() {
    let Some(url) = etcd_url("join") else { return };
    // Three agents start at once and reconcile concurrently.
    let joined: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..3)
            .map(|i| {
                s.spawn({
                    let url = url.clone();
                    move || join(&url, i, 5)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let views: Vec<&Ownership> = joined.iter().map(|(_, o)| &**o).collect();
    let m = converge(&url, &views, &["s0", "s1", "s2"], Duration::from_secs(10));
    // Every partition has one tail, and the tails split them all. (A server that joined after
    // the first map sits at the head of the chains it takes until its copy is reported ready,
    // which no mover does here: chains may be longer than the replication factor.)
    let total: usize = m.nodes.iter().map(|n| m.partitions_of(&n.id).1).sum();
    assert_eq!(total, m.chains.len());
    // Each change is one epoch: no more epochs than membership changes seen (3 joins at most).
    assert!(m.epoch <= 3, "epoch {}", m.epoch);
    // A planned leave (lease revoked) is seen at once.
    let mut joined = joined;
    let (agent, _) = joined.pop().unwrap();
    let t = Instant::now();
    agent.stop();
    let views: Vec<&Ownership> = joined.iter().map(|(_, o)| &**o).collect();
    let m2 = converge(&url, &views, &["s0", "s1"], Duration::from_secs(5));
    assert!(t.elapsed() < Duration::from_secs(4), "took {:?}", t.elapsed());
    assert_eq!(m2.epoch, m.epoch + 1);
    for (a, _) in joined {
        a.stop();
    }
}

#[test]
fn a_server_that_stops_renewing_leaves_when_its_lease_expires() {
    let Some(url) = etcd_url("expire") else { return };
    let (a0, o0) = join(&url, 0, 10);
    let (a1, o1) = join(&url, 1, 2);
    let m = converge(&url, &[&o0, &o1], &["s0", "s1"], Duration::from_secs(10));
    // A key s1 serves, and does serve while its lease is alive.
    let s1 = NodeId("s1".into());
    let k = (0..1000u32).map(|i| format!("key{i}").into_bytes()).find(|k| m.serves(&s1, k, Role::Head)).unwrap();
    assert_eq!(o1.check(&k, Op::Put, None, Instant::now()), Ok(()));
    // s1 "crashes": it stops renewing without revoking.
    let t = Instant::now();
    drop(a1);
    let m2 = converge(&url, &[&o0], &["s0"], Duration::from_secs(15));
    assert!(t.elapsed() >= Duration::from_secs(1), "left before its lease could expire");
    assert!(m2.epoch > m.epoch);
    // The crashed server's own view stops vouching for any key once its lease may have expired.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(o1.check(&k, Op::Put, None, Instant::now()), Err(WrongOwner { epoch: 0 }));
    a0.stop();
}
