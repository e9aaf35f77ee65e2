//! A client of a cluster: routes each key to the server that owns it in the cluster map.
//!
//! Writes go to the key's chain head, reads (cache probe, META_GET, block reads, server GET) to
//! its tail, which owns the key's cache; with replication 1 they are one server. Every request
//! carries the epoch of the map it was routed by. A server that does not own the key at that
//! epoch answers "wrong owner, epoch N":
//! * N newer than ours: we wait (bounded) for the map feed to bring epoch N, and route again;
//! * N not newer (the server is behind us, or is not vouching for any map while its etcd lease
//!   is in doubt): we back off briefly and retry, up to [`RoutingConfig::max_attempts`].
//!
//! A server that cannot be reached (fabric, or the block path to its SSDs) is retried once the
//! map has moved past the epoch we routed by (its lease expired and the map was recomputed
//! without it), within
//! [`RoutingConfig::map_wait`]; otherwise the fabric error is returned.
//!
//! Not covered by the epoch check: a cache *hit* is a one-sided READ the server never sees. A
//! client with a stale map can hit the old owner's cache until it learns the new map; moving
//! a partition must therefore invalidate the old owner's cache for it before the new owner
//! accepts writes (see the design note in the README's Cluster section).

mod feed;

pub use feed::{EtcdMapWatcher, MapFeed, MapReceiver};

use crate::{Client, ClientConfig, ClientError, ClientStats};
use parking_lot::Mutex;
use scalio_common::block::BlockError;
use scalio_common::cluster::{ClusterMap, ClusterUrl, Member, NodeId, Role};
use scalio_common::rpc::{Op, Stats};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Opens a [`Client`] to a cluster member.
pub trait Connector: Send + Sync {
    fn connect<'a>(
        &'a self,
        member: &'a Member,
        cfg: &'a ClientConfig,
    ) -> Pin<Box<dyn Future<Output = Result<Client, ClientError>> + Send + 'a>>;
}

/// Connects over the software NIC to the member's fabric address.
pub struct FabricConnector;

impl Connector for FabricConnector {
    fn connect<'a>(
        &'a self,
        member: &'a Member,
        cfg: &'a ClientConfig,
    ) -> Pin<Box<dyn Future<Output = Result<Client, ClientError>> + Send + 'a>> {
        Box::pin(Client::connect(&member.fabric, cfg.clone()))
    }
}

/// How persistent routing is.
#[derive(Debug, Clone)]
pub struct RoutingConfig {
    /// Tries of one operation (each after a "wrong owner" or a lost server).
    pub max_attempts: u32,
    /// Longest wait for a map at least as new as one a server named (or for the first map).
    pub map_wait: Duration,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        // A dead server leaves the map when its lease (5 s by default) expires.
        RoutingConfig { max_attempts: 16, map_wait: Duration::from_secs(15) }
    }
}

/// Counters of the routing layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoutingStats {
    /// "Wrong owner" replies received.
    pub wrong_owner: u64,
    /// Times an operation waited for a newer map.
    pub map_waits: u64,
    /// Operations retried after a server could not be reached.
    pub unreachable_retries: u64,
    /// Connections opened to members.
    pub connects: u64,
}

#[derive(Default)]
struct Counters {
    wrong_owner: AtomicU64,
    map_waits: AtomicU64,
    unreachable_retries: AtomicU64,
    connects: AtomicU64,
}

struct Inner {
    maps: MapReceiver,
    connector: Arc<dyn Connector>,
    cfg: ClientConfig,
    routing: RoutingConfig,
    /// One client per member, with the fabric address it was opened to.
    conns: Mutex<HashMap<NodeId, (String, Client)>>,
    counters: Counters,
    /// The next write's request id.
    next_id: AtomicU64,
    _watcher: Option<EtcdMapWatcher>,
}

/// A client of every server of a cluster. Cheap to clone.
#[derive(Clone)]
pub struct ClusterClient {
    inner: Arc<Inner>,
}

impl ClusterClient {
    /// Follows the cluster map in etcd and connects to its members over the software NIC.
    /// Returns once the first map has arrived.
    pub async fn connect(
        url: &ClusterUrl,
        cfg: ClientConfig,
        routing: RoutingConfig,
    ) -> Result<ClusterClient, ClientError> {
        let (feed, rx) = MapFeed::new();
        let watcher = EtcdMapWatcher::start(url, feed).map_err(|e| ClientError::Config(e.to_string()))?;
        let c = ClusterClient::build(rx, Arc::new(FabricConnector), cfg, routing, Some(watcher));
        c.map_at_least(1).await?;
        Ok(c)
    }

    /// A client routing by the maps `maps` receives, connecting with `connector`.
    pub fn with_maps(
        maps: MapReceiver,
        connector: Arc<dyn Connector>,
        cfg: ClientConfig,
        routing: RoutingConfig,
    ) -> ClusterClient {
        ClusterClient::build(maps, connector, cfg, routing, None)
    }

    fn build(
        maps: MapReceiver,
        connector: Arc<dyn Connector>,
        cfg: ClientConfig,
        routing: RoutingConfig,
        watcher: Option<EtcdMapWatcher>,
    ) -> ClusterClient {
        ClusterClient {
            inner: Arc::new(Inner {
                maps,
                connector,
                cfg,
                routing,
                conns: Mutex::new(HashMap::new()),
                counters: Counters::default(),
                // Ids are unique per key among this client's writes; a random start keeps two
                // clients' ids apart (a collision needs the same key and a 64-bit coincidence).
                next_id: AtomicU64::new(rand::random()),
                _watcher: watcher,
            }),
        }
    }

    /// The newest map received.
    pub fn map(&self) -> Option<Arc<ClusterMap>> {
        self.inner.maps.borrow().clone()
    }

    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        self.route(key, Role::Tail, |c| async move { c.get(key).await }).await
    }

    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), ClientError> {
        self.write(Op::Put, key, value).await.map(|_| ())
    }

    pub async fn update(&self, key: &[u8], value: &[u8]) -> Result<bool, ClientError> {
        self.write(Op::Update, key, value).await
    }

    pub async fn delete(&self, key: &[u8]) -> Result<bool, ClientError> {
        self.write(Op::Delete, key, b"").await
    }

    /// A write with one request id over all its attempts, so that members that applied an
    /// attempt the chain then refused answer the retry as they did then (see
    /// [`Client::write_with_id`]).
    async fn write(&self, op: Op, key: &[u8], value: &[u8]) -> Result<bool, ClientError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        self.route(key, Role::Head, |c| async move { c.write_with_id(op, key, value, id).await }).await
    }

    pub fn routing_stats(&self) -> RoutingStats {
        let c = &self.inner.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RoutingStats {
            wrong_owner: g(&c.wrong_owner),
            map_waits: g(&c.map_waits),
            unreachable_retries: g(&c.unreachable_retries),
            connects: g(&c.connects),
        }
    }

    /// The counters of every connection, added up.
    pub fn stats(&self) -> ClientStats {
        let conns: Vec<Client> = self.inner.conns.lock().values().map(|(_, c)| c.clone()).collect();
        conns.iter().fold(ClientStats::default(), |acc, c| acc.plus(&c.stats()))
    }

    /// Each member's counters, by member id, for the members of the current map.
    pub async fn server_stats(&self) -> Result<Vec<(NodeId, Stats)>, ClientError> {
        let map = self.map_at_least(1).await?;
        let mut out = Vec::new();
        for m in &map.nodes {
            let c = self.client_for(m).await?;
            out.push((m.id.clone(), c.server_stats().await?));
        }
        Ok(out)
    }

    /// The current map once its epoch is at least `epoch`, waiting up to `map_wait`.
    async fn map_at_least(&self, epoch: u64) -> Result<Arc<ClusterMap>, ClientError> {
        let mut rx = self.inner.maps.clone();
        let wait = self.inner.routing.map_wait;
        let found = tokio::time::timeout(wait, rx.wait_for(|m| m.as_ref().is_some_and(|m| m.epoch >= epoch))).await;
        match found {
            Ok(Ok(m)) => Ok(m.clone().expect("wait_for checked it is set")),
            _ => Err(ClientError::NoClusterMap { epoch, waited: wait }),
        }
    }

    /// The connection to `member`, opened if needed (or again if its address changed).
    async fn client_for(&self, member: &Member) -> Result<Client, ClientError> {
        if let Some((addr, c)) = self.inner.conns.lock().get(&member.id) {
            if *addr == member.fabric {
                return Ok(c.clone());
            }
        }
        let c = self.inner.connector.connect(member, &self.inner.cfg).await?;
        self.inner.counters.connects.fetch_add(1, Ordering::Relaxed);
        self.inner.conns.lock().insert(member.id.clone(), (member.fabric.clone(), c.clone()));
        Ok(c)
    }

    fn forget(&self, id: &NodeId) {
        self.inner.conns.lock().remove(id);
    }

    /// Runs `op` on the server that serves `key` in `role`, re-routing on "wrong owner" and on
    /// a lost server as described in the module documentation.
    async fn route<'k, T, F, Fut>(&self, key: &'k [u8], role: Role, op: F) -> Result<T, ClientError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, ClientError>> + 'k,
    {
        scalio_common::key::validate(key)?;
        let counters = &self.inner.counters;
        let mut min_epoch = 1;
        let mut last_epoch = 0;
        for attempt in 0..self.inner.routing.max_attempts {
            let map = self.map_at_least(min_epoch).await?;
            last_epoch = map.epoch;
            let member = map.owner(key, role).ok_or(ClientError::NoOwner { epoch: map.epoch })?;
            // Opening the connection can fail like the operation itself (a server that is gone).
            let result = match self.client_for(member).await {
                Ok(client) => {
                    client.set_cluster_epoch(map.epoch);
                    op(client).await
                }
                Err(e) => Err(e),
            };
            match result {
                Err(ClientError::WrongOwner { epoch }) => {
                    counters.wrong_owner.fetch_add(1, Ordering::Relaxed);
                    if epoch > map.epoch {
                        counters.map_waits.fetch_add(1, Ordering::Relaxed);
                        min_epoch = epoch;
                    } else {
                        // The server is behind us or not vouching for its map: give it time.
                        tokio::time::sleep(backoff(attempt)).await;
                    }
                }
                Err(e) if unreachable(&e) => {
                    // The server may be gone: wait for a map that no longer routes to it.
                    self.forget(&member.id);
                    counters.unreachable_retries.fetch_add(1, Ordering::Relaxed);
                    counters.map_waits.fetch_add(1, Ordering::Relaxed);
                    match self.map_at_least(map.epoch + 1).await {
                        Ok(_) => min_epoch = map.epoch + 1,
                        Err(_) => return Err(e),
                    }
                }
                other => return other,
            }
        }
        Err(ClientError::Misrouted { attempts: self.inner.routing.max_attempts, epoch: last_epoch })
    }
}

/// Whether `e` says the server could not be reached (over the fabric, or on the block path
/// to its SSDs): it may be dead, and a newer map may route elsewhere.
fn unreachable(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Fabric(_) | ClientError::Block(BlockError::Disconnected | BlockError::Timeout | BlockError::Io(_))
    )
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(1u64 << attempt.min(8))
}
