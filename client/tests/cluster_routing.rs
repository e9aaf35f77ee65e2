//! Routing across a cluster with the map held in memory (no etcd): three in-process servers,
//! each checking requests against its own copy of the map, and a cluster client fed maps by
//! hand, so that client and servers can be made to disagree on purpose.

mod common;

use common::{key, TestServer};
use scalio_client::routing::{ClusterClient, Connector, MapFeed, RoutingConfig};
use scalio_client::{Client, ClientConfig, ClientError};
use scalio_common::cluster::{compute, ClusterMap, MapParams, Member, NodeId, Role};
use scalio_common::fabric::QueuePair;
use scalio_server::cluster::Ownership;
use scalio_server::Server;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Node {
    server: TestServer,
    own: Arc<Ownership>,
}

fn member(i: usize) -> Member {
    Member {
        id: NodeId(format!("s{i}")),
        fabric: format!("mem:s{i}"),
        target: None,
        subsystems: vec![],
        capacity_bytes: 16 << 20,
    }
}

/// Three servers with their ownership views (lease alive for the test's duration).
fn cluster() -> Vec<Node> {
    (0..3)
        .map(|i| {
            let own = Arc::new(Ownership::new(member(i).id));
            own.lease_renewed(Instant::now() + Duration::from_secs(3600));
            let dir = tempfile::tempdir().unwrap();
            let c = common::config(dir.path(), 2, false);
            let server = TestServer { server: Server::start_in_cluster(&c, own.clone()).unwrap(), dir };
            Node { server, own }
        })
        .collect()
}

/// Connects to the in-process servers over the mem fabric.
struct MemConnector(HashMap<NodeId, Arc<Node>>);

impl Connector for MemConnector {
    fn connect<'a>(
        &'a self,
        m: &'a Member,
        cfg: &'a ClientConfig,
    ) -> Pin<Box<dyn Future<Output = Result<Client, ClientError>> + Send + 'a>> {
        Box::pin(async move {
            let node = self.0.get(&m.id).ok_or(ClientError::Config(format!("no server {}", m.id)))?;
            let qp: Arc<dyn QueuePair> = Arc::new(node.server.server.connect_mem());
            Client::with_queue_pairs(vec![qp], cfg.clone()).await
        })
    }
}

fn map(members: impl IntoIterator<Item = usize>, prev: Option<&ClusterMap>) -> Arc<ClusterMap> {
    let ms: Vec<Member> = members.into_iter().map(member).collect();
    Arc::new(compute(prev, &ms, MapParams::default()).unwrap().unwrap())
}

fn setup() -> (Vec<Arc<Node>>, MapFeed, ClusterClient) {
    let nodes: Vec<Arc<Node>> = cluster().into_iter().map(Arc::new).collect();
    let connector = MemConnector(nodes.iter().map(|n| (n.own.me().clone(), n.clone())).collect());
    let (feed, rx) = MapFeed::new();
    let routing = RoutingConfig { max_attempts: 12, map_wait: Duration::from_secs(5) };
    let client = ClusterClient::with_maps(rx, Arc::new(connector), ClientConfig::default(), routing);
    (nodes, feed, client)
}

fn install(nodes: &[Arc<Node>], m: &Arc<ClusterMap>) {
    for n in nodes {
        n.own.install(m.clone());
    }
}

fn writes_at(n: &Node) -> u64 {
    n.server.server.stats().value("rpc_put")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_go_to_their_owner_and_read_back() {
    let (nodes, feed, client) = setup();
    let m1 = map([0, 1], None);
    install(&nodes, &m1);
    feed.publish(m1.clone());
    for i in 0..300 {
        client.put(&key(i), format!("v{i}").as_bytes()).await.unwrap();
    }
    for i in 0..300 {
        assert_eq!(client.get(&key(i)).await.unwrap(), Some(format!("v{i}").into_bytes()), "key {i}");
    }
    // Each key went to its owner only: s2 is not in the map and saw no write.
    let expect = |s: &str| (0..300).filter(|i| m1.owner(&key(*i), Role::Head).unwrap().id.0 == s).count() as u64;
    assert_eq!(writes_at(&nodes[0]), expect("s0"));
    assert_eq!(writes_at(&nodes[1]), expect("s1"));
    assert!(expect("s0") > 50 && expect("s1") > 50);
    assert_eq!(writes_at(&nodes[2]), 0);
    assert_eq!(client.routing_stats().wrong_owner, 0);
    // A server refuses a key it does not own, even to a client outside the cluster protocol.
    let k = (0..300).map(key).find(|k| m1.owner(k, Role::Head).unwrap().id.0 == "s1").unwrap();
    let direct = nodes[0].server.mem_client(ClientConfig::default()).await;
    assert_eq!(direct.put(&k, b"x").await, Err(ClientError::WrongOwner { epoch: 1 }));
    // (The cache has nothing for it, so the GET reaches the server with META_GET.)
    assert_eq!(direct.get(&k).await, Err(ClientError::WrongOwner { epoch: 1 }));
    assert!(nodes[0].server.server.stats().value("cluster_wrong_owner") >= 2);
    assert_eq!(nodes[0].server.server.stats().value("cluster_epoch"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_client_is_told_the_new_epoch_and_retries_at_the_new_owner() {
    let (nodes, feed, client) = setup();
    let m1 = map([0, 1], None);
    install(&nodes, &m1);
    feed.publish(m1.clone());
    // The servers move to epoch 2 (s2 joins); the client still routes by epoch 1.
    let m2 = map([0, 1, 2], Some(&m1));
    install(&nodes, &m2);
    let moved: Vec<u64> = (0..400).filter(|i| m2.owner(&key(*i), Role::Head).unwrap().id.0 == "s2").take(20).collect();
    assert_eq!(moved.len(), 20);
    // The feed brings epoch 2 a little later, as a watch would.
    let late = {
        let (feed, m2) = (feed.clone(), m2.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            feed.publish(m2);
        })
    };
    for i in &moved {
        client.put(&key(*i), b"after the move").await.unwrap();
    }
    late.await.unwrap();
    let r = client.routing_stats();
    assert!(r.wrong_owner >= 1, "{r:?}");
    assert!(r.map_waits >= 1, "{r:?}");
    // Every one of those writes landed on the new owner, and reads come from there.
    assert_eq!(writes_at(&nodes[2]), moved.len() as u64);
    for i in &moved {
        assert_eq!(client.get(&key(*i)).await.unwrap(), Some(b"after the move".to_vec()));
    }
    // No server served a key it does not own: the old owners refused each moved key.
    let refused: u64 = nodes[..2].iter().map(|n| n.server.server.stats().value("cluster_wrong_owner")).sum();
    assert!(refused >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_ahead_of_the_servers_waits_for_them() {
    let (nodes, feed, client) = setup();
    let m1 = map([0, 1], None);
    install(&nodes, &m1);
    let m2 = map([0, 1, 2], Some(&m1));
    // The client learns epoch 2 first; servers still hold epoch 1 and refuse to vouch for it.
    feed.publish(m2.clone());
    let k = (0..400).map(key).find(|k| m2.owner(k, Role::Head).unwrap().id.0 == "s0").unwrap();
    let late = {
        let (nodes, m2) = (nodes.clone(), m2.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            install(&nodes, &m2);
        })
    };
    client.put(&k, b"v").await.unwrap();
    late.await.unwrap();
    assert!(client.routing_stats().wrong_owner >= 1);
    assert_eq!(client.get(&k).await.unwrap(), Some(b"v".to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_gives_up_with_a_typed_error() {
    let (nodes, feed, client) = setup();
    let m1 = map([0, 1], None);
    feed.publish(m1.clone());
    // Servers never get a map: every attempt is refused with epoch 0.
    let r = client.put(&key(1), b"v").await;
    assert_eq!(r, Err(ClientError::Misrouted { attempts: 12, epoch: 1 }));
    assert_eq!(client.routing_stats().wrong_owner, 12);
    drop(nodes);
    // No map at all: a bounded wait, then an error.
    let (_, rx) = MapFeed::new();
    let lonely = ClusterClient::with_maps(
        rx,
        Arc::new(MemConnector(HashMap::new())),
        ClientConfig::default(),
        RoutingConfig { max_attempts: 2, map_wait: Duration::from_millis(50) },
    );
    assert!(matches!(lonely.get(b"k").await, Err(ClientError::NoClusterMap { epoch: 1, .. })));
}
