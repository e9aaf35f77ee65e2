//! Routing across a cluster with the map held in memory (no etcd): three in-process servers,
//! each checking requests against its own copy of the map, and a cluster client fed maps by
//! hand, so that client and servers can be made to disagree on purpose. The servers forward
//! writes down their replica chains to each other over the mem fabric.

mod common;

use common::{key, TestServer};
use scalio_client::routing::{ClusterClient, Connector, MapFeed, RoutingConfig};
use scalio_client::{Client, ClientConfig, ClientError};
use scalio_common::cluster::{compute, compute_with, ClusterMap, MapParams, Member, NodeId, Progress, Role};
use scalio_common::fabric::mem::{MemFabric, MemQueuePair};
use scalio_common::fabric::{
    Completion, Disconnect, FabricError, LocalKey, MemoryRegion, QueuePair, Secret, WorkCompletion, WorkRequest,
};
use scalio_common::rpc::{flags, Op, Request, Response, ScanRequest, Status, WrongOwner};
use scalio_server::cluster::{peer_auth, Mover, Ownership, PeerConnector, ReadySink, ReportError};
use scalio_server::{Server, ServerConfig};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Node {
    server: TestServer,
    own: Arc<Ownership>,
    /// Copies partitions moved to it (in the tests of moves).
    mover: Mutex<Option<Mover>>,
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

/// Lets the in-process servers reach each other over the mem fabric (chain forwarding). A
/// server marked dead is unreachable to its peers, as a killed one would be: its connections
/// fail, and new ones cannot be opened.
#[derive(Default)]
struct MemPeers {
    fabrics: Mutex<HashMap<NodeId, Arc<MemFabric>>>,
    dead: Arc<Mutex<HashSet<NodeId>>>,
    /// The cluster's peer secret, presented on every connection to a member if set.
    secret: Option<Secret>,
}

impl MemPeers {
    fn kill(&self, id: &NodeId) {
        self.dead.lock().unwrap().insert(id.clone());
    }
}

impl PeerConnector for MemPeers {
    fn connect(&self, m: &Member) -> Result<Arc<dyn QueuePair>, FabricError> {
        if self.dead.lock().unwrap().contains(&m.id) {
            return Err(FabricError::Disconnected(Disconnect::PeerClosed));
        }
        let fabric = self.fabrics.lock().unwrap().get(&m.id).cloned().ok_or(FabricError::NoAddress)?;
        let qp = Severable { qp: fabric.connect(), to: m.id.clone(), dead: self.dead.clone() };
        if let Some(secret) = &self.secret {
            peer_auth::introduce(&qp, secret)?;
        }
        Ok(Arc::new(qp))
    }
}

/// A peer connection that fails once its server is marked dead.
struct Severable {
    qp: MemQueuePair,
    to: NodeId,
    dead: Arc<Mutex<HashSet<NodeId>>>,
}

impl Severable {
    fn alive(&self) -> Result<(), FabricError> {
        match self.dead.lock().unwrap().contains(&self.to) {
            true => Err(FabricError::Disconnected(Disconnect::PeerClosed)),
            false => Ok(()),
        }
    }
}

impl QueuePair for Severable {
    fn post(&self, chain: &[WorkRequest<'_>]) -> Completion<Vec<u8>> {
        match self.alive() {
            Ok(()) => self.qp.post(chain),
            Err(e) => Completion::ready(Err(e)),
        }
    }

    fn post_unsignaled(&self, chain: &[WorkRequest<'_>]) -> Result<(), FabricError> {
        self.alive()?;
        self.qp.post_unsignaled(chain)
    }

    fn call(&self, request: &[u8]) -> Completion<Vec<u8>> {
        match self.alive() {
            Ok(()) => self.qp.call(request),
            Err(e) => Completion::ready(Err(e)),
        }
    }

    fn max_message(&self) -> usize {
        self.qp.max_message()
    }

    fn async_errors(&self) -> u64 {
        self.qp.async_errors()
    }

    fn register_local(&self, region: Arc<MemoryRegion>) -> Result<LocalKey, FabricError> {
        self.qp.register_local(region)
    }

    fn post_signaled(&self, wr_id: u64, chain: &[WorkRequest<'_>]) -> Result<(), FabricError> {
        self.alive()?;
        self.qp.post_signaled(wr_id, chain)
    }

    fn poll_cq(&self, out: &mut Vec<WorkCompletion>, max: usize) -> usize {
        self.qp.poll_cq(out, max)
    }

    fn arm_cq(&self, waker: &std::task::Waker) {
        self.qp.arm_cq(waker)
    }
}

/// Three servers with their ownership views (lease alive for the test's duration), reaching
/// each other through `peers`.
fn cluster(peers: &Arc<MemPeers>) -> Vec<Node> {
    cluster_of(peers, 3)
}

fn cluster_of(peers: &Arc<MemPeers>, n: usize) -> Vec<Node> {
    cluster_configured(peers, n, |_| {})
}

fn cluster_configured(peers: &Arc<MemPeers>, n: usize, tweak: impl Fn(&mut ServerConfig)) -> Vec<Node> {
    (0..n)
        .map(|i| {
            let own = Arc::new(Ownership::new(member(i).id));
            own.lease_renewed(Instant::now() + Duration::from_secs(3600));
            let dir = tempfile::tempdir().unwrap();
            let mut c = common::config(dir.path(), 2, false);
            tweak(&mut c);
            let server = Server::start_in_cluster_with(&c, own.clone(), peers.clone()).unwrap();
            peers.fabrics.lock().unwrap().insert(member(i).id, server.mem_fabric().clone());
            Node { server: TestServer { server, dir }, own, mover: Mutex::new(None) }
        })
        .collect()
}

/// Connects to the in-process servers over the mem fabric (a server marked dead in the
/// optional set cannot be reached, as a killed one).
struct MemConnector(HashMap<NodeId, Arc<Node>>, Option<Arc<Mutex<HashSet<NodeId>>>>);

impl Connector for MemConnector {
    fn connect<'a>(
        &'a self,
        m: &'a Member,
        cfg: &'a ClientConfig,
    ) -> Pin<Box<dyn Future<Output = Result<Client, ClientError>> + Send + 'a>> {
        Box::pin(async move {
            let node = self.0.get(&m.id).ok_or(ClientError::Config(format!("no server {}", m.id)))?;
            let qp: Arc<dyn QueuePair> = match &self.1 {
                None => Arc::new(node.server.server.connect_mem()),
                Some(dead) => {
                    let sev = Severable { qp: node.server.server.connect_mem(), to: m.id.clone(), dead: dead.clone() };
                    sev.alive().map_err(ClientError::Fabric)?;
                    Arc::new(sev)
                }
            };
            Client::with_queue_pairs(vec![qp], cfg.clone()).await
        })
    }
}

fn map(members: impl IntoIterator<Item = usize>, prev: Option<&ClusterMap>) -> Arc<ClusterMap> {
    map_rf(members, prev, 1)
}

fn map_rf(members: impl IntoIterator<Item = usize>, prev: Option<&ClusterMap>, rf: u8) -> Arc<ClusterMap> {
    let ms: Vec<Member> = members.into_iter().map(member).collect();
    let params = MapParams { replication: rf, ..MapParams::default() };
    Arc::new(compute(prev, &ms, params).unwrap().unwrap())
}

fn setup() -> (Vec<Arc<Node>>, MapFeed, ClusterClient) {
    setup_with_peers().1
}

#[allow(clippy::type_complexity)]
fn setup_with_peers() -> (Arc<MemPeers>, (Vec<Arc<Node>>, MapFeed, ClusterClient)) {
    let peers = Arc::new(MemPeers::default());
    let nodes: Vec<Arc<Node>> = cluster(&peers).into_iter().map(Arc::new).collect();
    let connector = MemConnector(nodes.iter().map(|n| (n.own.me().clone(), n.clone())).collect(), None);
    let (feed, rx) = MapFeed::new();
    let routing = RoutingConfig { max_attempts: 12, map_wait: Duration::from_secs(5) };
    let client = ClusterClient::with_maps(rx, Arc::new(connector), ClientConfig::default(), routing);
    (peers, (nodes, feed, client))
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
        Arc::new(MemConnector(HashMap::new(), None)),
        ClientConfig::default(),
        RoutingConfig { max_attempts: 2, map_wait: Duration::from_millis(50) },
    );
    assert!(matches!(lonely.get(b"k").await, Err(ClientError::NoClusterMap { epoch: 1, .. })));
}

fn stat(n: &Node, name: &str) -> u64 {
    n.server.server.stats().value(name)
}

/// The same chains with `tail` moved to the end of each (a map made by hand, at `epoch`).
fn with_tail(m: &ClusterMap, tail: usize, epoch: u64) -> Arc<ClusterMap> {
    let t = m.node_index(&member(tail).id).unwrap();
    let chains = m
        .chains
        .iter()
        .map(|c| {
            let mut c: Vec<u16> = c.iter().copied().filter(|i| *i != t).collect();
            c.push(t);
            c
        })
        .collect();
    Arc::new(ClusterMap { epoch, chains, ..m.clone() })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rf3_writes_reach_every_member_and_reads_come_from_the_tail() {
    let (nodes, feed, client) = setup();
    let m1 = map_rf([0, 1, 2], None, 3);
    install(&nodes, &m1);
    feed.publish(m1.clone());
    let n = 240u64;
    for i in 0..n {
        client.put(&key(i), format!("v{i}").as_bytes()).await.unwrap();
    }
    // Updates, and deletes of every fifth key (the tail's answer is the client's).
    for i in 0..n {
        assert!(client.update(&key(i), format!("u{i}").as_bytes()).await.unwrap());
    }
    for i in (0..n).step_by(5) {
        assert!(client.delete(&key(i)).await.unwrap());
        assert!(!client.delete(&key(i)).await.unwrap());
    }
    let want = |i: u64| (!i.is_multiple_of(5)).then(|| format!("u{i}").into_bytes());
    // Every write went through every member of its chain: each server ran every put.
    for node in &nodes {
        assert_eq!(stat(node, "rpc_put"), n, "{}", node.own.me());
        assert_eq!(stat(node, "rpc_update"), n);
    }
    // The heads and middles forwarded; only the tails answered without forwarding.
    let forwarded: u64 = nodes.iter().map(|x| stat(x, "chain_forwarded")).sum();
    let writes = 2 * n + 2 * (n / 5);
    assert_eq!(forwarded, 2 * writes, "two hops per write in a chain of three");
    assert_eq!(nodes.iter().map(|x| stat(x, "chain_forward_broken")).sum::<u64>(), 0);
    // Reads come from the tail: the META_GETs of a key land on its tail only, and only tails
    // reserve cache slots.
    for i in 0..n {
        assert_eq!(client.get(&key(i)).await.unwrap(), want(i), "key {i}");
    }
    for node in &nodes {
        let tail_keys = (0..n).filter(|i| m1.serves(node.own.me(), &key(*i), Role::Tail)).count() as u64;
        assert_eq!(stat(node, "rpc_meta_get") + stat(node, "rpc_get"), tail_keys, "{}", node.own.me());
        assert!(stat(node, "table_reservations") <= tail_keys);
    }
    // The data is in every member's store: make each server in turn the tail of every chain,
    // and read everything back from it.
    for (turn, tail) in (0..3).enumerate() {
        let m = with_tail(&m1, tail, 2 + turn as u64);
        install(&nodes, &m);
        feed.publish(m.clone());
        let before = stat(&nodes[tail], "rpc_meta_get") + stat(&nodes[tail], "rpc_get");
        for i in 0..n {
            assert_eq!(client.get(&key(i)).await.unwrap(), want(i), "key {i} with s{tail} as the tail");
        }
        // (The client's own cache slots at the old tails were hidden by the new map.)
        assert!(stat(&nodes[tail], "rpc_meta_get") + stat(&nodes[tail], "rpc_get") > before);
    }
}

/// A client holding the NIC's secret (every client here) must not be able to pose as a member:
/// write to a tail as if forwarded (bypassing the head), apply a copy, or list the keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_peer_secret_only_members_may_forward_copy_or_scan() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("peer-secret");
    std::fs::write(&path, "members only\n").unwrap();
    let secret = Secret::new(b"members only".to_vec()).unwrap();
    let peers = Arc::new(MemPeers { secret: Some(secret.clone()), ..MemPeers::default() });
    let nodes: Vec<Arc<Node>> =
        cluster_configured(&peers, 3, |c| c.peer_secret_file = Some(path.clone())).into_iter().map(Arc::new).collect();
    let connector = MemConnector(nodes.iter().map(|n| (n.own.me().clone(), n.clone())).collect(), None);
    let (feed, rx) = MapFeed::new();
    let client = ClusterClient::with_maps(rx, Arc::new(connector), ClientConfig::default(), RoutingConfig::default());
    let m = map_rf([0, 1, 2], None, 2);
    install(&nodes, &m);
    feed.publish(m.clone());
    // The members introduce their connections to each other: writes go down the chains.
    for i in 0..40 {
        client.put(&key(i), b"through the head").await.unwrap();
    }
    let k = key(7);
    let tail = nodes.iter().position(|n| m.owner(&k, Role::Tail).unwrap().id == *n.own.me()).unwrap();
    assert!(stat(&nodes[m.chain(m.partition_of(&k))[0] as usize], "chain_forwarded") > 0);
    let accepted: u64 = nodes.iter().map(|n| stat(n, "peer_hellos_accepted")).sum();
    assert!(accepted >= 2, "each head introduced its link to its successor ({accepted})");
    // A client's connection to the tail.
    let qp = nodes[tail].server.server.connect_mem();
    let send = |req: Request<'_>| {
        let bytes = qp.call(&req.to_vec()).wait().unwrap();
        let r = Response::decode(&bytes).unwrap();
        (r.status, r.body.to_vec())
    };
    let forged = Request::new(Op::Put, &k, b"forged").with_flags(flags::FORWARDED).with_epoch(Some(m.epoch));
    let copy = Request::new(Op::Put, &k, b"copied").with_flags(flags::COPY).with_epoch(Some(m.epoch));
    let copy_read = Request::new(Op::Get, &k, b"").with_flags(flags::COPY).with_epoch(Some(m.epoch));
    let scan_body = ScanRequest { ssd: 0, bucket: 0, max_buckets: 1024 }.encode();
    let scan = Request::new(Op::Scan, b"", &scan_body).with_epoch(Some(m.epoch));
    for req in [forged, copy, copy_read, scan] {
        assert_eq!(send(req).0, Status::BadRequest, "{req:?} on a client's connection");
    }
    // A wrong secret does not make it a member's.
    let hello = |secret: &[u8]| Request::new(Op::Hello, b"", secret).with_flags(flags::PEER).to_vec();
    let answer = Response::decode(&qp.call(&hello(b"members only!")).wait().unwrap()).unwrap().status;
    assert_eq!(answer, Status::BadRequest);
    assert_eq!(send(forged).0, Status::BadRequest);
    assert_eq!(stat(&nodes[tail], "peer_requests_refused"), 5);
    assert_eq!(stat(&nodes[tail], "peer_hellos_rejected"), 1);
    // Nothing was applied: the tail still has the value written through the head.
    assert_eq!(client.get(&k).await.unwrap(), Some(b"through the head".to_vec()));
    // The same connection with the secret: a member's (the scan is answered, the forwarded
    // write checked against the chain as any member's would be).
    assert_eq!(Response::decode(&qp.call(&hello(b"members only")).wait().unwrap()).unwrap().status, Status::Ok);
    assert_eq!(send(scan).0, Status::Ok);
    assert_eq!(send(forged).0, Status::Ok);
    assert_eq!(stat(&nodes[tail], "peer_requests_refused"), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_write_at_a_wrong_epoch_is_refused() {
    let (nodes, _feed, _client) = setup();
    let m1 = map_rf([0, 1, 2], None, 2);
    install(&nodes, &m1);
    let k = (0..400)
        .map(key)
        .find(|k| m1.owner(k, Role::Head).unwrap().id.0 == "s0" && m1.owner(k, Role::Tail).unwrap().id.0 == "s1")
        .unwrap();
    let send = |node: usize, op: Op, epoch: Option<u64>| {
        let req = Request::new(op, &k, b"forwarded").with_flags(flags::FORWARDED).with_epoch(epoch).to_vec();
        let bytes = nodes[node].server.server.connect_mem().call(&req).wait().unwrap();
        let r = Response::decode(&bytes).unwrap();
        (r.status, if r.status == Status::WrongOwner { WrongOwner::decode(r.body).ok() } else { None })
    };
    let refused = (Status::WrongOwner, Some(WrongOwner { epoch: 1 }));
    // The tail refuses a stale, a newer, or a missing epoch.
    assert_eq!(send(1, Op::Put, Some(0)), refused);
    assert_eq!(send(1, Op::Put, Some(2)), refused);
    assert_eq!(send(1, Op::Put, None), refused);
    // The head is not a successor of anyone in the chain; s2 is not in it.
    assert_eq!(send(0, Op::Put, Some(1)), refused);
    assert_eq!(send(2, Op::Put, Some(1)), refused);
    // Only writes are forwarded.
    assert_eq!(send(1, Op::Get, Some(1)).0, Status::BadRequest);
    assert_eq!(stat(&nodes[1], "rpc_put"), 3, "the refused puts were counted");
    assert_eq!(stat(&nodes[1], "cluster_wrong_owner"), 3);
    // At the right epoch the tail takes it (and, being the tail, answers at once).
    assert_eq!(send(1, Op::Put, Some(1)), (Status::Ok, None));
    assert_eq!(stat(&nodes[1], "chain_forwarded"), 0);
    let direct = nodes[1].server.mem_client(ClientConfig::default()).await;
    direct.set_cluster_epoch(1);
    assert_eq!(direct.get(&k).await.unwrap(), Some(b"forwarded".to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_member_dies_its_chains_are_served_by_the_survivor() {
    let (peers, (nodes, feed, client)) = setup_with_peers();
    let m1 = map_rf([0, 1, 2], None, 2);
    install(&nodes, &m1);
    feed.publish(m1.clone());
    let n = 300u64;
    for i in 0..n {
        client.put(&key(i), format!("v{i}").as_bytes()).await.unwrap();
    }
    // s2 dies: its peers can no longer reach it. A write whose chain goes through it is not
    // acknowledged; the head sends the client to the next epoch.
    peers.kill(&member(2).id);
    let through_s2 = (0..n)
        .find(|i| m1.serves(&member(0).id, &key(*i), Role::Head) && m1.serves(&member(2).id, &key(*i), Role::Tail))
        .unwrap();
    let direct = nodes[0].server.mem_client(ClientConfig::default()).await;
    direct.set_cluster_epoch(1);
    assert_eq!(direct.put(&key(through_s2), b"lost").await, Err(scalio_client::ClientError::WrongOwner { epoch: 2 }));
    assert!(stat(&nodes[0], "chain_forward_broken") >= 1);
    // Its lease expires and the map is recomputed without it: in each of its chains the
    // survivor keeps (or takes) the tail, and every acknowledged write is read back from it.
    let m2 = map_rf([0, 1], Some(&m1), 2);
    for i in 0..n {
        let chain = m1.chain(m1.partition_of(&key(i)));
        let survivor = chain.iter().map(|x| &m1.nodes[usize::from(*x)].id).rfind(|id| id.0 != "s2").unwrap();
        assert!(m2.serves(survivor, &key(i), Role::Tail), "key {i}: chain {chain:?}");
    }
    install(&nodes[..2], &m2);
    feed.publish(m2.clone());
    let s2_requests = stat(&nodes[2], "rpc_meta_get") + stat(&nodes[2], "rpc_put");
    for i in 0..n {
        // The write that was refused is durable on s0, now the tail: an unacknowledged write
        // may take effect (whole), as after a timeout.
        let want = if i == through_s2 { b"lost".to_vec() } else { format!("v{i}").into_bytes() };
        assert_eq!(client.get(&key(i)).await.unwrap(), Some(want), "key {i}");
    }
    // New writes go through the new chains (two members each) and read back.
    for i in 0..n {
        client.put(&key(i), format!("w{i}").as_bytes()).await.unwrap();
        assert_eq!(client.get(&key(i)).await.unwrap(), Some(format!("w{i}").into_bytes()));
    }
    let before: u64 = (0..n)
        .map(|i| {
            m1.chain(m1.partition_of(&key(i))).iter().filter(|x| m1.nodes[usize::from(**x)].id.0 != "s2").count() as u64
        })
        .sum();
    assert_eq!(stat(&nodes[0], "rpc_put") + stat(&nodes[1], "rpc_put"), before + 1 + 2 * n);
    assert_eq!(stat(&nodes[2], "rpc_meta_get") + stat(&nodes[2], "rpc_put"), s2_requests, "nothing reached s2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_write_is_applied_once() {
    let (peers, (nodes, _feed, _client)) = setup_with_peers();
    let m1 = map_rf([0, 1, 2], None, 2);
    install(&nodes, &m1);
    let k = (0..400)
        .map(key)
        .find(|k| m1.serves(&member(0).id, k, Role::Head) && m1.serves(&member(2).id, k, Role::Tail))
        .unwrap();
    let s0 = nodes[0].server.mem_client(ClientConfig::default()).await;
    s0.set_cluster_epoch(1);
    s0.put(&k, b"v").await.unwrap();
    // s2 dies: a DELETE (request id 7) is applied on s0, and refused (the chain is broken).
    peers.kill(&member(2).id);
    assert_eq!(s0.write_with_id(Op::Delete, &k, b"", 7).await, Err(ClientError::WrongOwner { epoch: 2 }));
    // The next map: s1 enters at the head (with a move; no mover runs here), s0 is the tail.
    let m2 = map_rf([0, 1], Some(&m1), 2);
    assert!(m2.serves(&member(1).id, &k, Role::Head) && m2.serves(&member(0).id, &k, Role::Tail));
    install(&nodes[..2], &m2);
    // The client retries with the same id: s1 applies it and passes it on; s0, which applied it
    // already, answers as it did then — the key existed — instead of "not found".
    let s1 = nodes[1].server.mem_client(ClientConfig::default()).await;
    s1.set_cluster_epoch(2);
    assert_eq!(s1.write_with_id(Op::Delete, &k, b"", 7).await, Ok(true), "the retried delete deleted the key");
    assert_eq!(stat(&nodes[0], "cluster_retried_writes"), 1);
    assert_eq!(stat(&nodes[1], "cluster_retried_writes"), 0);
    // A new write (another id) is applied: the key is gone.
    assert_eq!(s1.write_with_id(Op::Delete, &k, b"", 8).await, Ok(false));
    // Without an id, nothing is deduplicated.
    s1.put(&k, b"w").await.unwrap();
    assert!(s1.delete(&k).await.unwrap());
    assert!(!s1.delete(&k).await.unwrap());
    assert_eq!(stat(&nodes[0], "cluster_retried_writes"), 1);
}

/// A write refused partway down its chain stays applied on the members before the refusal.
/// Here the tail of [h, m, t] has moved on to the next map, which makes m the tail ([h, t, m]),
/// when a write passes h and m: t refuses it. Without more, m would then serve the write, and a
/// later map giving the tail back to t would lose it again: read, then not. Instead h and m
/// hold the key in doubt (they got no answer from the chain), serve no read of it, and settle
/// it with the value that stands: m, the new tail, reads t's (t was after it), and h reads m's.
/// So the key reads as before the refused write, on every member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_refused_partway_down_its_chain_is_settled_not_read_then_lost() {
    let (nodes, feed, client) = setup();
    let m1 = map_rf([0, 1, 2], None, 3);
    install(&nodes, &m1);
    feed.publish(m1.clone());
    let k = key(11);
    client.put(&k, b"old").await.unwrap();
    let c1: Vec<usize> = m1.chain(m1.partition_of(&k)).iter().map(|i| usize::from(*i)).collect();
    let (h, m, t) = (c1[0], c1[1], c1[2]);
    let m2 = with_tail(&m1, m, 2);
    assert_eq!(m2.chain(m2.partition_of(&k)), [h as u16, t as u16, m as u16]);
    // t installs epoch 2 first; h takes a write at epoch 1 and m passes it on: t refuses it.
    install(&nodes[t..=t], &m2);
    let at_h = nodes[h].server.mem_client(ClientConfig::default()).await;
    at_h.set_cluster_epoch(1);
    assert_eq!(at_h.put(&k, b"refused").await, Err(ClientError::WrongOwner { epoch: 2 }));
    assert_eq!(stat(&nodes[h], "cluster_doubts_raised"), 1);
    assert_eq!(stat(&nodes[m], "cluster_doubts_raised"), 1);
    assert_eq!(stat(&nodes[t], "cluster_doubts_raised"), 0);
    // Epoch 2 everywhere: m is the tail. The refused write is never read there.
    install(&nodes, &m2);
    feed.publish(m2.clone());
    assert_eq!(client.get(&k).await.unwrap(), Some(b"old".to_vec()));
    let settled = |i: usize| stat(&nodes[i], "cluster_doubts_settled_from_peer");
    let deadline = Instant::now() + Duration::from_secs(10);
    while (settled(h) < 1 || settled(m) < 1) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!((settled(h), settled(m)), (1, 1), "both settled from a peer");
    assert_eq!(stat(&nodes[h], "cluster_doubts") + stat(&nodes[m], "cluster_doubts"), 0);
    // Every member holds the value that stands: make each the tail in turn and read.
    for (turn, tail) in [t, h, m].into_iter().enumerate() {
        let mt = with_tail(&m2, tail, 3 + turn as u64);
        install(&nodes, &mt);
        feed.publish(mt.clone());
        assert_eq!(client.get(&k).await.unwrap(), Some(b"old".to_vec()), "s{tail} as the tail");
    }
    // The key takes new writes through the chain as usual.
    client.put(&k, b"new").await.unwrap();
    assert_eq!(client.get(&k).await.unwrap(), Some(b"new".to_vec()));
}

/// A tail in doubt with no member after it left keeps its own value, and the members before it
/// take it: the write refused because its successor died is then read everywhere, as an
/// unacknowledged write may be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_in_doubt_with_nobody_after_it_keeps_its_value() {
    let (peers, (nodes, feed, client)) = setup_with_peers();
    let m1 = map_rf([0, 1, 2], None, 3);
    install(&nodes, &m1);
    feed.publish(m1.clone());
    let k = (0..400).map(key).find(|k| m1.serves(&member(2).id, k, Role::Tail)).unwrap();
    client.put(&k, b"old").await.unwrap();
    let c1: Vec<usize> = m1.chain(m1.partition_of(&k)).iter().map(|i| usize::from(*i)).collect();
    let (h, m) = (c1[0], c1[1]);
    peers.kill(&member(2).id);
    let at_h = nodes[h].server.mem_client(ClientConfig::default()).await;
    at_h.set_cluster_epoch(1);
    assert_eq!(at_h.put(&k, b"unacknowledged").await, Err(ClientError::WrongOwner { epoch: 2 }));
    // s2's lease expires: the chain is h and m, in the ring's order. Whichever is the tail,
    // nobody that was after it is left: it keeps its value, and the other takes it.
    let m2 = map_rf([0, 1], Some(&m1), 3);
    let c2: Vec<usize> = m2.chain(m2.partition_of(&k)).iter().map(|i| usize::from(*i)).collect();
    assert!(c2 == [h, m] || c2 == [m, h], "{c2:?}");
    let (other, tail) = (c2[0], c2[1]);
    install(&nodes[..2], &m2);
    feed.publish(m2.clone());
    assert_eq!(client.get(&k).await.unwrap(), Some(b"unacknowledged".to_vec()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while stat(&nodes[h], "cluster_doubts") + stat(&nodes[m], "cluster_doubts") > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(stat(&nodes[tail], "cluster_doubts_kept"), 1);
    assert_eq!(stat(&nodes[other], "cluster_doubts_settled_from_peer"), 1);
    let swapped = with_tail(&m2, other, 3);
    install(&nodes[..2], &swapped);
    feed.publish(swapped);
    assert_eq!(client.get(&k).await.unwrap(), Some(b"unacknowledged".to_vec()), "the other took the tail's value");
}

/// The epoch that ends a move makes the newcomer the tail. The old tail, whose cache clients
/// routing by an older map may still READ without it seeing, stays in the chain (at its head,
/// so every write passes through it and invalidates its slot) until it reports having
/// installed that map, which hides its slots; only then may it leave. So while it lags, no
/// write can be acknowledged anywhere, and once it has installed the map, a stale client gets
/// no hit there. (Without that rule the newcomer alone would be the chain: the first write
/// below would be acknowledged while the old tail still served the old value from its cache.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_former_tail_stays_in_the_chain_until_it_has_hidden_its_cache() {
    let (nodes, feed, client) = setup();
    let m1 = map([0, 1], None);
    install(&nodes, &m1);
    feed.publish(m1.clone());
    // s2 joins and takes a key from s0: chain [s2, s0] while it copies.
    let m2 = map([0, 1, 2], Some(&m1));
    let k = (0..2000)
        .map(key)
        .find(|k| {
            let c = m2.chain(m2.partition_of(k));
            c.len() == 2 && m2.nodes[usize::from(c[0])].id.0 == "s2" && m2.nodes[usize::from(c[1])].id.0 == "s0"
        })
        .expect("some key moves from s0 to s2");
    let p = m2.partition_of(&k);
    client.put(&k, b"old").await.unwrap();
    install(&nodes, &m2);
    feed.publish(m2.clone());
    // A client routing by epoch 2 reads the key from s0's cache: a miss fills the slot, then hits.
    let stale = nodes[0].server.mem_client(ClientConfig::default()).await;
    stale.set_cluster_epoch(2);
    assert_eq!(stale.get(&k).await.unwrap(), Some(b"old".to_vec()));
    let meta_gets = stat(&nodes[0], "rpc_meta_get");
    assert_eq!(stale.get(&k).await.unwrap(), Some(b"old".to_vec()));
    assert_eq!(stat(&nodes[0], "rpc_meta_get"), meta_gets, "the second read was a cache hit");
    // s2's copy is done (by hand: no mover here). Every server reports epoch 2.
    let members: Vec<Member> = (0..3).map(member).collect();
    let mut progress = Progress {
        ready: m2.moves.iter().map(|mv| ((mv.partition, m2.nodes[usize::from(mv.to)].id.clone()), mv.since)).collect(),
        installed: (0..3).map(|i| (member(i).id, 2)).collect(),
        ..Progress::default()
    };
    let m3 = Arc::new(compute_with(Some(&m2), &members, m2.params, &progress).unwrap().unwrap());
    let ids = |c: &[u16]| -> Vec<String> { c.iter().map(|i| m3.nodes[usize::from(*i)].id.0.clone()).collect() };
    assert_eq!(ids(m3.chain(p)), ["s0", "s2"], "s0, the tail at epoch 2, stays at the head");
    // s1 and s2 install epoch 3; s0 lags. No write to the key can be acknowledged: s2 is not
    // the head, and s0 is behind a client routing by epoch 3.
    install(&nodes[1..], &m3);
    let fresh = |i: usize| {
        let n = nodes[i].clone();
        async move {
            let c = n.server.mem_client(ClientConfig::default()).await;
            c.set_cluster_epoch(3);
            c
        }
    };
    assert_eq!(fresh(2).await.put(&k, b"new").await, Err(ClientError::WrongOwner { epoch: 3 }));
    assert_eq!(fresh(0).await.put(&k, b"new").await, Err(ClientError::WrongOwner { epoch: 2 }));
    assert_eq!(stale.get(&k).await.unwrap(), Some(b"old".to_vec()), "nothing newer was acknowledged");
    // s0 installs epoch 3: it hides its slots, and the write goes through it to s2.
    install(&nodes[..1], &m3);
    fresh(0).await.put(&k, b"new").await.unwrap();
    assert_eq!(stale.get(&k).await, Err(ClientError::WrongOwner { epoch: 3 }), "no stale hit at the former tail");
    assert!(stat(&nodes[0], "cluster_cache_slots_dropped") >= 1);
    // s0 leaves the chain once it reports epoch 3, not before.
    assert_eq!(compute_with(Some(&m3), &members, m3.params, &progress).unwrap(), None);
    progress.installed.insert(member(0).id, 3);
    let m4 = compute_with(Some(&m3), &members, m3.params, &progress).unwrap().unwrap();
    assert_eq!(m4.chain(p).iter().map(|i| m4.nodes[usize::from(*i)].id.0.clone()).collect::<Vec<_>>(), ["s2"]);
    install(&nodes, &Arc::new(m4.clone()));
    feed.publish(Arc::new(m4));
    assert_eq!(client.get(&k).await.unwrap(), Some(b"new".to_vec()));
}

/// The ready records and the reconciler of the etcd agents, held in memory.
#[derive(Default)]
struct MemSink(Mutex<HashMap<(u32, NodeId), u64>>);

impl ReadySink for MemSink {
    fn ready(&self, to: &NodeId, done: &std::collections::BTreeMap<u32, u64>) -> Result<(), ReportError> {
        let mut ready = self.0.lock().unwrap();
        ready.retain(|(_, id), _| id != to);
        ready.extend(done.iter().map(|(p, since)| ((*p, to.clone()), *since)));
        Ok(())
    }
}

/// Who is alive and who is leaving, as the reconciler sees it.
#[derive(Default)]
struct Membership {
    live: Vec<usize>,
    leaving: std::collections::BTreeSet<NodeId>,
}

/// What every server does with etcd, in one loop: recompute the map from the live members,
/// the drains and the ready records, install it on the live servers (those that lose a tail
/// role first, as their cache slots must be hidden before a new tail serves), then publish it
/// to clients.
fn reconcile_once(
    nodes: &[Arc<Node>],
    cur: &Arc<ClusterMap>,
    who: &Membership,
    sink: &MemSink,
    feed: &MapFeed,
) -> Option<Arc<ClusterMap>> {
    let members: Vec<Member> = who.live.iter().map(|i| member(*i)).collect();
    // Each live server has installed the map it holds (installing is synchronous here).
    let installed = who.live.iter().map(|i| (member(*i).id, nodes[*i].own.epoch())).collect();
    let progress = Progress { leaving: who.leaving.clone(), ready: sink.0.lock().unwrap().clone(), installed };
    let next = Arc::new(compute_with(Some(cur), &members, cur.params, &progress).unwrap()?);
    let loses_tail = |i: usize| {
        let id = member(i).id;
        (0..cur.chains.len() as u32).any(|p| {
            let tail = |m: &ClusterMap| m.chain(p).last().map(|t| m.nodes[usize::from(*t)].id.clone());
            tail(cur) == Some(id.clone()) && tail(&next) != Some(id.clone())
        })
    };
    let mut order = who.live.clone();
    order.sort_by_key(|i| !loses_tail(*i));
    for i in order {
        nodes[i].own.install(next.clone());
    }
    feed.publish(next.clone());
    Some(next)
}

/// A checked mixed workload on keys `0..keys`: writer `t` alone writes keys `t, t + W, ...`
/// (PUT, UPDATE, DELETE of unique values, and checked GETs), readers GET any key; everything
/// goes into `rec` for the linearizability checker.
async fn writer(
    c: ClusterClient,
    rec: Arc<scalio_lincheck::Recorder>,
    t: u64,
    writers: u64,
    keys: u64,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (u64, u64) {
    use scalio_lincheck::{Call, Ret};
    use std::sync::atomic::Ordering;
    let (mut acked, mut failed) = (0u64, 0u64);
    let mut version = 0u64;
    let mut rng = t.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while !stop.load(Ordering::Relaxed) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let i = t + writers * (rng % (keys / writers));
        let k = key(i);
        version += 1;
        let v = format!("w{t}-{i}-{version}").into_bytes();
        let call = match rng % 20 {
            0..=10 => Call::Put(v.clone()),
            11..=14 => Call::Update(v.clone()),
            15..=16 => Call::Delete,
            _ => Call::Get,
        };
        let op = rec.invoke(t as u32, &k, call.clone());
        let r = match &call {
            Call::Put(v) => c.put(&k, v).await.map(|()| Ret::Put),
            Call::Update(v) => c.update(&k, v).await.map(Ret::Update),
            Call::Delete => c.delete(&k).await.map(Ret::Delete),
            Call::Get => c.get(&k).await.map(Ret::Get),
        };
        match r {
            Ok(ret) => {
                acked += u64::from(!matches!(call, Call::Get));
                op.returned(ret)
            }
            Err(e) => {
                failed += 1;
                eprintln!("writer {t}: {call:?} of key {i}: {e}");
                op.unknown()
            }
        }
    }
    (acked, failed)
}

async fn reader(
    c: ClusterClient,
    rec: Arc<scalio_lincheck::Recorder>,
    id: u32,
    keys: u64,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (u64, u64) {
    use scalio_lincheck::{Call, Ret};
    use std::sync::atomic::Ordering;
    let (mut ok, mut failed) = (0, 0);
    let mut i = u64::from(id) * 7919;
    while !stop.load(Ordering::Relaxed) {
        i = (i * 31 + 17) % keys;
        let op = rec.invoke(id, &key(i), Call::Get);
        match c.get(&key(i)).await {
            Ok(v) => {
                ok += 1;
                op.returned(Ret::Get(v))
            }
            Err(e) => {
                failed += 1;
                eprintln!("reader {id}: GET {i}: {e}");
                op.unknown()
            }
        }
        // Cache hits are far faster than writes: pace the readers so that the history stays
        // small enough to check quickly.
        tokio::time::sleep(Duration::from_micros(300)).await;
    }
    (ok, failed)
}

/// Runs a checked workload across `steps` (each a change of membership, waited for until the
/// map has no move left), then reads every key back and checks the whole history.
async fn moves_under_load(rf: u8, steps: &[&str]) {
    let peers = Arc::new(MemPeers::default());
    let nodes: Vec<Arc<Node>> = cluster_of(&peers, 4).into_iter().map(Arc::new).collect();
    let sink = Arc::new(MemSink::default());
    for n in &nodes {
        *n.mover.lock().unwrap() = Some(n.server.server.start_mover(sink.clone()).unwrap());
    }
    let connector =
        MemConnector(nodes.iter().map(|n| (n.own.me().clone(), n.clone())).collect(), Some(peers.dead.clone()));
    let (feed, rx) = MapFeed::new();
    let routing = RoutingConfig { max_attempts: 40, map_wait: Duration::from_secs(10) };
    let client = ClusterClient::with_maps(rx, Arc::new(connector), ClientConfig::default(), routing);
    let mut who = Membership { live: vec![0, 1, 2], ..Membership::default() };
    if rf == 1 {
        who.live = vec![0, 1];
    }
    let mut cur = map_rf(who.live.clone(), None, rf);
    install(&nodes, &cur);
    feed.publish(cur.clone());
    let keys = 240u64;
    let rec = scalio_lincheck::Recorder::new();
    // Every key starts with a value, so that moves have data to copy.
    for i in 0..keys {
        let op = rec.invoke(99, &key(i), scalio_lincheck::Call::Put(format!("init-{i}").into_bytes()));
        client.put(&key(i), format!("init-{i}").as_bytes()).await.unwrap();
        op.returned(scalio_lincheck::Ret::Put);
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> =
        (0..4u64).map(|t| tokio::spawn(writer(client.clone(), rec.clone(), t, 4, keys, stop.clone()))).collect();
    let readers: Vec<_> =
        (0..2u32).map(|r| tokio::spawn(reader(client.clone(), rec.clone(), 100 + r, keys, stop.clone()))).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut epochs = vec![cur.epoch];
    for step in steps {
        let (what, who_) = step.split_once(' ').unwrap();
        let i: usize = who_.parse().unwrap();
        match what {
            "kill" => {
                peers.kill(&member(i).id);
                nodes[i].own.lease_lost();
                who.live.retain(|x| *x != i);
            }
            "add" => who.live.push(i),
            "drain" => {
                who.leaving.insert(member(i).id);
            }
            _ => unreachable!(),
        }
        // Reconcile until the change has gone through its copies.
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let changed = reconcile_once(&nodes, &cur, &who, &sink, &feed);
            if let Some(next) = &changed {
                cur = next.clone();
                epochs.push(cur.epoch);
            }
            let member_ids: Vec<NodeId> = who.live.iter().map(|i| member(*i).id).collect();
            // (A map after the copies may still follow: former tails leave once installed.)
            let settled = changed.is_none()
                && cur.moves.is_empty()
                && cur.nodes.iter().map(|m| &m.id).eq(member_ids.iter().collect::<std::collections::BTreeSet<_>>());
            if settled {
                break;
            }
            if Instant::now() >= end {
                for n in &nodes {
                    let st: Vec<_> = n
                        .server
                        .server
                        .stats()
                        .counters
                        .into_iter()
                        .filter(|(k, _)| k.starts_with("move_") && !k.contains('/'))
                        .collect();
                    let err = n.mover.lock().unwrap().as_ref().and_then(|m| m.counters().last_error.lock().clone());
                    eprintln!("{}: {st:?} {err:?}", n.own.me());
                }
                panic!("{step}: moves never finished: {:?}", cur.moves.len());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if what == "drain" {
            // Drained: in no chain; now it can be stopped.
            assert_eq!(cur.partitions_of(&member(i).id), (0, 0));
            peers.kill(&member(i).id);
            nodes[i].own.lease_lost();
            who.live.retain(|x| *x != i);
            who.leaving.remove(&member(i).id);
            if let Some(next) = reconcile_once(&nodes, &cur, &who, &sink, &feed) {
                cur = next;
                epochs.push(cur.epoch);
            }
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut acked, mut failed, mut reads) = (0, 0, 0);
    for w in writers {
        let (a, f) = w.await.unwrap();
        acked += a;
        failed += f;
    }
    for r in readers {
        let (o, f) = r.await.unwrap();
        reads += o;
        failed += f;
    }
    // Every key read back (recorded: the checker holds each to its last acknowledged write).
    for i in 0..keys {
        let op = rec.invoke(200, &key(i), scalio_lincheck::Call::Get);
        let v = client.get(&key(i)).await.unwrap();
        op.returned(scalio_lincheck::Ret::Get(v));
    }
    let history = rec.history();
    let summary = scalio_lincheck::check(&history).unwrap_or_else(|e| panic!("rf {rf} {steps:?}: {e}"));
    let copied: u64 = nodes.iter().map(|n| stat(n, "move_keys_copied")).sum();
    let bytes: u64 = nodes.iter().map(|n| stat(n, "move_bytes_copied")).sum();
    let ready: u64 = nodes.iter().map(|n| stat(n, "move_partitions_ready")).sum();
    let skipped: u64 = nodes.iter().map(|n| stat(n, "move_copies_skipped")).sum();
    let repaired: u64 = nodes.iter().map(|n| stat(n, "move_keys_repaired")).sum();
    eprintln!(
        "rf {rf} {steps:?}: epochs {epochs:?}, {acked} writes acknowledged, {failed} failed, {reads} reader GETs, \
         {} ops checked, {copied} keys ({bytes} bytes) copied, {skipped} copies skipped, {repaired} repaired, \
         {ready} partitions ready",
        summary.ops
    );
    assert!(acked > 100, "the workload ran through the moves: {acked}");
    assert!(copied > 0 && bytes > 0 && ready > 0, "data moved: {copied} keys, {ready} partitions");
    assert!(failed * 20 <= acked + reads, "too many failed operations: {failed}");
    drop(client);
    for n in &nodes {
        n.mover.lock().unwrap().take();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rf2_a_lost_replica_is_rebuilt_and_a_server_added_and_drained_under_load() {
    moves_under_load(2, &["kill 2", "add 3", "drain 0"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rf1_added_and_drained_servers_take_their_data_with_them() {
    moves_under_load(1, &["add 2", "add 3", "drain 1"]).await;
}
