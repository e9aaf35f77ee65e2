//! The systems under test, behind one interface: what the driver's operations call.

use crate::systems::ditto::DittoClient;
use crate::systems::memcached::MemcachedClient;
use scalio_client::routing::ClusterClient;
use scalio_client::{BlockPath, Client, ClientConfig, ClientStats, ReadPath};
use scalio_common::rpc::Op;

/// Which system a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemKind {
    /// Scalio at a design stage: 0 = every GET through the server (LEED-style reads), 1 = + offloaded
    /// reads, 2 = + inline cache, 3 = + batched writes.
    Scalio { stage: u8 },
    /// The LEED baseline: RPC-only reads (2 worker SSD reads per GET), unbatched writes, no cache.
    Leed,
    /// LEED with a Ditto-style one-sided cache in front of it.
    Ditto,
    /// A memcached server.
    Memcached,
}

impl SystemKind {
    pub fn name(&self) -> &'static str {
        match self {
            SystemKind::Scalio { .. } => "scalio",
            SystemKind::Leed => "leed",
            SystemKind::Ditto => "ditto",
            SystemKind::Memcached => "memcached",
        }
    }

    pub fn stage(&self) -> Option<u8> {
        match self {
            SystemKind::Scalio { stage } => Some(*stage),
            _ => None,
        }
    }

    /// A short label for tables and file names.
    pub fn label(&self) -> String {
        match self {
            SystemKind::Scalio { stage } => format!("scalio-stage{stage}"),
            other => other.name().to_string(),
        }
    }

    /// Whether the server needs the Ditto cache region.
    pub fn uses_ditto_cache(&self) -> bool {
        matches!(self, SystemKind::Ditto)
    }

    /// Whether the server's Scalio cache table is used.
    pub fn uses_scalio_cache(&self) -> bool {
        matches!(self, SystemKind::Scalio { stage: 2 | 3 })
    }

    /// The client settings of this system's scalio client.
    pub fn client_config(&self, block: BlockPath) -> ClientConfig {
        let (read_path, batched_writes) = match self {
            SystemKind::Scalio { stage: 0 } | SystemKind::Leed | SystemKind::Ditto => (ReadPath::Server, false),
            SystemKind::Scalio { stage: 1 } => (ReadPath::Offloaded, false),
            SystemKind::Scalio { stage: 2 } => (ReadPath::Cached, false),
            _ => (ReadPath::Cached, true),
        };
        ClientConfig { read_path, batched_writes, block, ..ClientConfig::default() }
    }
}

/// One connection of a system under test.
#[derive(Clone)]
pub enum SystemClient {
    Scalio(Client),
    /// Scalio across a cluster's servers.
    Cluster(ClusterClient),
    Ditto(DittoClient),
    Memcached(MemcachedClient),
}

impl SystemClient {
    pub async fn read(&self, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        match self {
            SystemClient::Scalio(c) => c.get(key).await.map_err(|e| e.to_string()),
            SystemClient::Cluster(c) => c.get(key).await.map_err(|e| e.to_string()),
            SystemClient::Ditto(c) => c.read(key).await.map_err(|e| e.to_string()),
            SystemClient::Memcached(c) => c.read(key).await.map_err(|e| e.to_string()),
        }
    }

    /// YCSB's update and insert both write the whole record.
    pub async fn write(&self, key: &[u8], value: &[u8]) -> Result<(), String> {
        match self {
            SystemClient::Scalio(c) => c.put(key, value).await.map_err(|e| e.to_string()),
            SystemClient::Cluster(c) => c.put(key, value).await.map_err(|e| e.to_string()),
            SystemClient::Ditto(c) => c.update(key, value).await.map_err(|e| e.to_string()),
            SystemClient::Memcached(c) => c.update(key, value).await.map_err(|e| e.to_string()),
        }
    }

    /// This connection's counters.
    pub fn counters(&self) -> ClientCounters {
        match self {
            SystemClient::Scalio(c) => ClientCounters::from_scalio(&c.stats()),
            SystemClient::Cluster(c) => {
                let mut counters = ClientCounters::from_scalio(&c.stats());
                let r = c.routing_stats();
                counters.named.extend([
                    ("cluster_wrong_owner".to_string(), r.wrong_owner),
                    ("cluster_map_waits".to_string(), r.map_waits),
                    ("cluster_unreachable_retries".to_string(), r.unreachable_retries),
                    ("cluster_connects".to_string(), r.connects),
                ]);
                counters
            }
            SystemClient::Ditto(c) => {
                let s = c.stats();
                ClientCounters {
                    named: s.counters(),
                    gets: s.gets,
                    hits: Some(s.hits),
                    rpcs: Some(s.leed.total_rpcs() - s.leed.rpcs(Op::Hello) - s.leed.rpcs(Op::Stats)),
                    block_reads: 0,
                }
            }
            SystemClient::Memcached(c) => {
                let s = c.stats();
                // Every memcached GET is served from memory; "cache hits" do not apply.
                ClientCounters { named: s.counters(), gets: s.gets, hits: None, rpcs: None, block_reads: 0 }
            }
        }
    }
}

/// What a system's clients counted, summed over connections.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientCounters {
    /// Named counters (reported in the JSON as they are).
    pub named: Vec<(String, u64)>,
    /// GETs and the GETs served by the cache (None: the system has no notion of it).
    pub gets: u64,
    pub hits: Option<u64>,
    /// RPCs sent, excluding connection setup.
    pub rpcs: Option<u64>,
    /// Block-path reads the clients issued themselves.
    pub block_reads: u64,
}

impl ClientCounters {
    fn from_scalio(s: &ClientStats) -> ClientCounters {
        let mut named = vec![
            ("gets".to_string(), s.gets),
            ("probes".to_string(), s.probes),
            ("hits".to_string(), s.hits),
            ("misses".to_string(), s.misses),
            ("pending_retries".to_string(), s.pending_retries),
            ("absent".to_string(), s.absent),
            ("fills".to_string(), s.fills),
            ("fills_skipped".to_string(), s.fills_skipped),
            ("fills_late".to_string(), s.fills_late),
            ("no_reservation".to_string(), s.no_reservation),
            ("stale_retries".to_string(), s.stale_retries),
            ("block_reads".to_string(), s.block_reads),
            ("block_read_blocks".to_string(), s.block_read_blocks),
            ("writes".to_string(), s.writes),
            ("reconnects".to_string(), s.reconnects),
        ];
        for op in Op::ALL {
            named.push((format!("rpc_{}", op.name()), s.rpcs(op)));
        }
        ClientCounters {
            named,
            gets: s.gets,
            hits: Some(s.hits),
            rpcs: Some(s.total_rpcs() - s.rpcs(Op::Hello) - s.rpcs(Op::Stats)),
            block_reads: s.block_reads,
        }
    }

    /// Adds another connection's counters.
    pub fn add(&mut self, other: &ClientCounters) {
        for (name, v) in &other.named {
            match self.named.iter_mut().find(|(n, _)| n == name) {
                Some((_, total)) => *total += v,
                None => self.named.push((name.clone(), *v)),
            }
        }
        self.gets += other.gets;
        self.hits = match (self.hits, other.hits) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        self.rpcs = match (self.rpcs, other.rpcs) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        self.block_reads += other.block_reads;
    }
}
