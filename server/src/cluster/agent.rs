//! The cluster agent of one server: registers it in etcd under a lease it keeps alive, keeps
//! the cluster map in step with the live members, and hands every new map to [`Ownership`].
//!
//! **Who computes the map: every member.** After each change under the cluster prefix, each
//! server reads the members and the map in one transaction (one etcd revision), computes the
//! next map with [`compute`] (a pure function of those two), and writes it with a
//! compare-and-swap on the map's mod revision. Servers that read the same revision compute the
//! same map; one CAS wins and the others fail, re-read, and find nothing left to change. A
//! writer that read an older revision fails its CAS, so a map is never computed from stale
//! membership. No election, and no single server whose loss stalls reconfiguration.
//!
//! The map also follows the moves' progress: a receiver's copy reported complete
//! (`PREFIX/ready/ID` = `{partition: the move's since, ...}`, written by [`EtcdReady`], one
//! record per receiver rewritten after each pass, so that a pass ends in one new map) and the
//! servers being drained (`PREFIX/leaving/ID`, written by `scalio-admin drain`) are inputs of
//! [`compute_with`] like the members, read in the same range (one revision). So is the newest
//! map epoch each server has installed (`PREFIX/installed/ID`, written by this agent after
//! [`Ownership::install`] returned): a member leaves a chain only once it has installed a map
//! in which it no longer serves the chain's reads.
//!
//! The fence: a thread hides the whole cache table shortly before the lease may lapse
//! ([`Ownership::fence_if_lapsed`]), since one-sided cache hits do not pass the lease check.
//!
//! The lease: granted with `lease_ttl`, renewed every third of it. [`Ownership`] is told how long
//! the lease is surely alive (from the time a renewal was *sent*); if renewals fail for that long
//! the server stops serving, since etcd may have expired its membership and handed its keys to
//! others. An expired lease is replaced by a new one and the member record written again.

use super::Ownership;
use super::{ReadySink, ReportError};
use scalio_common::cluster::etcd::Range;
use scalio_common::cluster::etcd::{Etcd, EtcdError};
use scalio_common::cluster::{compute_with, ClusterMap, ClusterUrl, MapError, MapParams, Member, NodeId, Progress};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How a server joins a cluster.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub url: ClusterUrl,
    /// This server's record (its id must be unique in the cluster).
    pub me: Member,
    /// Shape of the map if this server creates it (an existing map's parameters are kept).
    pub params: MapParams,
    pub lease_ttl: Duration,
    /// Timeout of each etcd call.
    pub etcd_timeout: Duration,
    /// The first map is written only once this many servers have registered, so that a new
    /// cluster starts with chains in ring order. (Servers joining a map later enter their
    /// chains at the head, since they hold none of the chains' data: see
    /// `scalio_common::cluster::compute`.)
    pub initial_members: usize,
}

impl AgentConfig {
    pub fn new(url: ClusterUrl, me: Member) -> AgentConfig {
        AgentConfig {
            url,
            me,
            params: MapParams::default(),
            lease_ttl: Duration::from_secs(5),
            etcd_timeout: Duration::from_secs(2),
            initial_members: 1,
        }
    }
}

/// Why a server could not join.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error("cluster map parameters: {0}")]
    Params(#[from] MapError),
    #[error("the lease TTL must be at least 2 s")]
    LeaseTtl,
    #[error("cannot start a thread: {0}")]
    Thread(String),
    #[error("no cluster map naming this server appeared within {0:?}")]
    NoMap(Duration),
}

/// A running agent; [`Agent::stop`] leaves the cluster. Dropping it without `stop` only stops
/// renewing the lease (as a crash would): the member record goes when the lease expires.
pub struct Agent {
    etcd: Etcd,
    lease: Arc<parking_lot::Mutex<i64>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// How long a watch waits before it is renewed (bounds how long stopping takes).
const WATCH_DEADLINE: Duration = Duration::from_secs(2);
const RETRY_PAUSE: Duration = Duration::from_millis(300);

impl Agent {
    /// Registers the server and starts keeping its lease and the map. Returns once the member
    /// record is written; [`Agent::wait_for_map`] waits for a map that includes it.
    pub fn start(cfg: AgentConfig, ownership: Arc<Ownership>) -> Result<Agent, AgentError> {
        cfg.params.check()?;
        if cfg.lease_ttl < Duration::from_secs(2) {
            return Err(AgentError::LeaseTtl);
        }
        let etcd = Etcd::new(&cfg.url.endpoint, cfg.etcd_timeout);
        let id = register(&etcd, &cfg, &ownership)?;
        let lease = Arc::new(parking_lot::Mutex::new(id));
        let stop = Arc::new(AtomicBool::new(false));
        let cfg = Arc::new(cfg);
        let mut threads = Vec::new();
        {
            let (etcd, cfg, own, lease, stop) =
                (etcd.clone(), cfg.clone(), ownership.clone(), lease.clone(), stop.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("cluster-lease".into())
                    .spawn(move || keep_lease(&etcd, &cfg, &own, &lease, &stop))
                    .map_err(|e| AgentError::Thread(e.to_string()))?,
            );
        }
        {
            let (etcd, cfg, own, stop) = (etcd.clone(), cfg.clone(), ownership.clone(), stop.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("cluster-map".into())
                    .spawn(move || keep_map(&etcd, &cfg, &own, &stop))
                    .map_err(|e| AgentError::Thread(e.to_string()))?,
            );
        }
        {
            let (own, stop) = (ownership.clone(), stop.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("cluster-fence".into())
                    .spawn(move || keep_fence(&own, &stop))
                    .map_err(|e| AgentError::Thread(e.to_string()))?,
            );
        }
        tracing::info!(id = %cfg.me.id, cluster = %cfg.url, lease = id, "joined the cluster");
        Ok(Agent { etcd, lease, stop, threads })
    }

    /// Waits until `ownership` holds a map that names this server.
    pub fn wait_for_map(ownership: &Ownership, timeout: Duration) -> Result<Arc<ClusterMap>, AgentError> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(m) = ownership.map().filter(|m| m.member(ownership.me()).is_some()) {
                return Ok(m);
            }
            if Instant::now() >= end {
                return Err(AgentError::NoMap(timeout));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Leaves the cluster: revokes the lease (deleting the member record, so the others
    /// reconcile the map without waiting for it to expire) and stops the threads.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let id = *self.lease.lock();
        if let Err(e) = self.etcd.lease_revoke(id) {
            tracing::warn!(error = %e, "could not revoke the cluster lease; it will expire");
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Grants a lease and writes the member record under it. Returns the lease id.
fn register(etcd: &Etcd, cfg: &AgentConfig, own: &Ownership) -> Result<i64, EtcdError> {
    let sent = Instant::now();
    let lease = etcd.lease_grant(cfg.lease_ttl.as_secs() as i64)?;
    etcd.put(&cfg.url.member_key(&cfg.me.id), &cfg.me.encode(), Some(lease.id))?;
    own.lease_renewed(sent + Duration::from_secs(lease.ttl_s.max(0) as u64));
    Ok(lease.id)
}

fn keep_lease(etcd: &Etcd, cfg: &AgentConfig, own: &Ownership, lease: &parking_lot::Mutex<i64>, stop: &AtomicBool) {
    let period = cfg.lease_ttl / 3;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(period);
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let id = *lease.lock();
        let sent = Instant::now();
        match etcd.lease_keepalive(id) {
            Ok(l) if l.ttl_s > 0 => own.lease_renewed(sent + Duration::from_secs(l.ttl_s as u64)),
            Ok(_) => {
                // Expired: our member record is gone and the map may have moved on without us.
                tracing::warn!(lease = id, "cluster lease expired; registering again");
                own.lease_lost();
                match register(etcd, cfg, own) {
                    Ok(new) => *lease.lock() = new,
                    Err(e) => tracing::warn!(error = %e, "could not register again"),
                }
            }
            Err(e) => tracing::warn!(error = %e, "cluster lease renewal failed"),
        }
    }
}

/// How often the fence looks at the lease (well within [`super::ownership::FENCE_MARGIN`]).
const FENCE_POLL: Duration = Duration::from_millis(50);

/// Hides the cache when the lease is about to lapse (see [`Ownership::fence_if_lapsed`]).
fn keep_fence(own: &Ownership, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        own.fence_if_lapsed(Instant::now());
        std::thread::sleep(FENCE_POLL);
    }
}

fn keep_map(etcd: &Etcd, cfg: &AgentConfig, own: &Ownership, stop: &AtomicBool) {
    let mut reported = 0;
    while !stop.load(Ordering::Relaxed) {
        let revision =
            match reconcile(etcd, cfg, own).and_then(|r| report_installed(etcd, cfg, own, &mut reported).map(|()| r)) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "cluster map reconciliation failed; retrying");
                    std::thread::sleep(RETRY_PAUSE);
                    continue;
                }
            };
        // Wait for the next change to the members or the map, then reconcile again.
        let prefix = format!("{}/", cfg.url.prefix).into_bytes();
        let watched = etcd.watch(&prefix, true, revision + 1, WATCH_DEADLINE, |m| {
            m.events.is_empty() && !stop.load(Ordering::Relaxed)
        });
        if let Err(e) = watched {
            tracing::warn!(error = %e, "cluster watch failed; retrying");
            std::thread::sleep(RETRY_PAUSE);
        }
    }
}

/// Reports the epoch of the map this server holds, if newer than the one last reported.
/// [`Ownership::install`] has acted on it by then (in particular, hidden the cache slots of the
/// partitions it is no longer the tail of, and stopped serving their reads), which is what the
/// reconcilers wait for before they take this server out of a chain (see `compute_with`).
fn report_installed(etcd: &Etcd, cfg: &AgentConfig, own: &Ownership, reported: &mut u64) -> Result<(), EtcdError> {
    let epoch = own.epoch();
    if epoch > *reported {
        etcd.put(&cfg.url.installed_key(&cfg.me.id), epoch.to_string().as_bytes(), None)?;
        *reported = epoch;
    }
    Ok(())
}

/// What the cluster holds in etcd at one revision.
#[derive(Debug, Default)]
pub struct ClusterState {
    pub members: Vec<Member>,
    /// The map and its mod revision (0: none yet).
    pub map: Option<(ClusterMap, i64)>,
    /// The map record exists but cannot be decoded (e.g. a newer format): never overwrite it.
    pub unreadable_map: bool,
    pub progress: Progress,
    pub revision: i64,
}

/// Classifies the records under the cluster prefix (one range read, so one revision). Malformed
/// records are skipped with a warning.
pub fn parse_state(url: &ClusterUrl, range: Range) -> ClusterState {
    let (members_p, ready_p, leaving_p, installed_p, map_k) =
        (url.members_prefix(), url.ready_prefix(), url.leaving_prefix(), url.installed_prefix(), url.map_key());
    let mut st = ClusterState { revision: range.revision, ..ClusterState::default() };
    for kv in range.kvs {
        if kv.key == map_k {
            match ClusterMap::decode(&kv.value) {
                Ok(m) => st.map = Some((m, kv.mod_revision)),
                Err(e) => {
                    tracing::error!(error = %e, "the cluster map in etcd cannot be decoded; leaving it alone");
                    st.unreadable_map = true;
                }
            }
        } else if let Some(rest) = kv.key.strip_prefix(members_p.as_slice()) {
            match Member::decode(&kv.value) {
                Ok(m) => st.members.push(m),
                Err(e) => {
                    tracing::warn!(key = %String::from_utf8_lossy(rest), error = %e, "ignoring a malformed member record")
                }
            }
        } else if let Some(rest) = kv.key.strip_prefix(ready_p.as_slice()) {
            // ready/ID = {"PARTITION": SINCE, ...}
            let parsed = std::str::from_utf8(rest).ok().and_then(|id| {
                let m: std::collections::BTreeMap<u32, u64> = serde_json::from_slice(&kv.value).ok()?;
                Some((NodeId(id.to_string()), m))
            });
            match parsed {
                Some((id, m)) => {
                    for (p, since) in m {
                        st.progress.ready.insert((p, id.clone()), since);
                    }
                }
                None => tracing::warn!(key = %String::from_utf8_lossy(&kv.key), "ignoring a malformed ready record"),
            }
        } else if let Some(rest) = kv.key.strip_prefix(installed_p.as_slice()) {
            // installed/ID = the epoch, in decimal
            let parsed = std::str::from_utf8(rest).ok().zip(std::str::from_utf8(&kv.value).ok());
            match parsed.and_then(|(id, e)| Some((NodeId(id.to_string()), e.trim().parse::<u64>().ok()?))) {
                Some((id, epoch)) => {
                    st.progress.installed.insert(id, epoch);
                }
                None => {
                    tracing::warn!(key = %String::from_utf8_lossy(&kv.key), "ignoring a malformed installed record")
                }
            }
        } else if let Some(rest) = kv.key.strip_prefix(leaving_p.as_slice()) {
            if let Ok(id) = std::str::from_utf8(rest) {
                st.progress.leaving.insert(NodeId(id.to_string()));
            }
        }
    }
    st
}

/// Brings the map in etcd in line with the live members, the drains and the finished copies,
/// and installs the result. Returns the etcd revision the installed map was read or written at.
fn reconcile(etcd: &Etcd, cfg: &AgentConfig, own: &Ownership) -> Result<i64, EtcdError> {
    loop {
        let st = parse_state(&cfg.url, etcd.get_prefix(&cfg.url.all_prefix())?);
        if st.unreadable_map {
            return Ok(st.revision);
        }
        let (prev, mod_revision) = match st.map {
            Some((m, r)) => (Some(m), r),
            None => (None, 0),
        };
        if prev.is_none() && st.members.len() < cfg.initial_members {
            // A new cluster: wait for the others (the watch wakes us when one registers).
            return Ok(st.revision);
        }
        let params = prev.as_ref().map_or(cfg.params, |m| m.params);
        let next = match compute_with(prev.as_ref(), &st.members, params, &st.progress) {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "cannot compute a cluster map from the members");
                return Ok(st.revision);
            }
        };
        match next {
            None => {
                if let Some(m) = prev {
                    install(own, m);
                }
                return Ok(st.revision);
            }
            Some(m) => {
                if etcd.compare_and_swap(&cfg.url.map_key(), &m.encode(), mod_revision)? {
                    tracing::info!(
                        epoch = m.epoch,
                        members = m.nodes.len(),
                        moves = m.moves.len(),
                        "wrote a new cluster map"
                    );
                    install(own, m);
                }
                // Either way, read again: on success to learn the revision, on failure because
                // someone else changed the map first.
            }
        }
    }
}

/// Reports finished copies in etcd, where every server's reconciler sees them.
pub struct EtcdReady {
    etcd: Etcd,
    url: ClusterUrl,
}

impl EtcdReady {
    pub fn new(url: &ClusterUrl, timeout: Duration) -> EtcdReady {
        EtcdReady { etcd: Etcd::new(&url.endpoint, timeout), url: url.clone() }
    }
}

impl ReadySink for EtcdReady {
    fn ready(&self, to: &NodeId, done: &std::collections::BTreeMap<u32, u64>) -> Result<(), ReportError> {
        let value = serde_json::to_vec(done)?;
        Ok(self.etcd.put(&self.url.ready_key(to), &value, None)?)
    }
}

fn install(own: &Ownership, m: ClusterMap) {
    let epoch = m.epoch;
    let (member, tail) = m.partitions_of(own.me());
    if own.install(Arc::new(m)) {
        tracing::info!(epoch, partitions = member, tail_of = tail, "serving under a new cluster map");
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scalio_common::cluster::etcd::KeyValue;

    fn kv(key: &[u8], value: &[u8], mod_revision: i64) -> KeyValue {
        KeyValue { key: key.to_vec(), value: value.to_vec(), create_revision: 1, mod_revision, lease: 0 }
    }

    #[test]
    fn the_prefix_is_read_as_members_map_ready_installed_records_and_drains() {
        let url: ClusterUrl = "etcd://127.0.0.1:2379/c".parse().unwrap();
        let me = Member {
            id: NodeId("s1".into()),
            fabric: "127.0.0.1:1".into(),
            target: None,
            subsystems: vec![],
            capacity_bytes: 0,
        };
        let map =
            scalio_common::cluster::compute(None, std::slice::from_ref(&me), MapParams::default()).unwrap().unwrap();
        let range = Range {
            revision: 9,
            kvs: vec![
                kv(b"/c/members/s1", &me.encode(), 3),
                kv(b"/c/members/bad", b"{", 3),
                kv(b"/c/map", &map.encode(), 7),
                kv(b"/c/ready/s2", br#"{"4":2,"9":5}"#, 8),
                kv(b"/c/ready/s3", b"not json", 8),
                kv(b"/c/leaving/s1", b"", 8),
                kv(b"/c/installed/s1", b"7", 8),
                kv(b"/c/installed/s2", b"seven", 8),
            ],
        };
        let st = parse_state(&url, range);
        assert_eq!(st.revision, 9);
        assert_eq!(st.members, vec![me]);
        assert_eq!(st.map, Some((map, 7)));
        assert!(!st.unreadable_map);
        let s2 = NodeId("s2".into());
        assert_eq!(st.progress.ready, [((4, s2.clone()), 2), ((9, s2), 5)].into_iter().collect());
        assert_eq!(st.progress.leaving, [NodeId("s1".into())].into_iter().collect());
        assert_eq!(st.progress.installed, [(NodeId("s1".into()), 7)].into_iter().collect());
        // A map that cannot be read is flagged, never replaced.
        let st = parse_state(&url, Range { revision: 1, kvs: vec![kv(b"/c/map", br#"{"format":99}"#, 1)] });
        assert!(st.unreadable_map && st.map.is_none());
    }
}
