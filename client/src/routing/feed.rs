//! Where a cluster client's maps come from: a [`MapFeed`] publishes each newer map to the
//! client's receiver; [`EtcdMapWatcher`] feeds it from etcd (read, then watch), and tests feed it
//! by hand.

use scalio_common::cluster::etcd::{Etcd, Event};
use scalio_common::cluster::{ClusterMap, ClusterUrl};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::watch;

/// The receiving end: the newest map seen (None before the first).
pub type MapReceiver = watch::Receiver<Option<Arc<ClusterMap>>>;

/// Publishes maps, newest epoch only.
#[derive(Clone)]
pub struct MapFeed {
    tx: Arc<watch::Sender<Option<Arc<ClusterMap>>>>,
}

impl MapFeed {
    pub fn new() -> (MapFeed, MapReceiver) {
        let (tx, rx) = watch::channel(None);
        (MapFeed { tx: Arc::new(tx) }, rx)
    }

    /// Publishes `map` if it is newer than the current one; returns whether it did.
    pub fn publish(&self, map: Arc<ClusterMap>) -> bool {
        self.tx.send_if_modified(|cur| {
            if cur.as_ref().is_some_and(|c| c.epoch >= map.epoch) {
                return false;
            }
            *cur = Some(map);
            true
        })
    }

    pub fn current(&self) -> Option<Arc<ClusterMap>> {
        self.tx.borrow().clone()
    }
}

/// A thread that reads the map from etcd and watches it, publishing every new epoch.
/// Dropping it stops the thread (within one watch deadline; it is not waited for, so dropping
/// never blocks an async task).
pub struct EtcdMapWatcher {
    stop: Arc<AtomicBool>,
    _thread: JoinHandle<()>,
}

const WATCH_DEADLINE: Duration = Duration::from_secs(2);
const RETRY_PAUSE: Duration = Duration::from_millis(300);

impl EtcdMapWatcher {
    pub fn start(url: &ClusterUrl, feed: MapFeed) -> std::io::Result<EtcdMapWatcher> {
        let stop = Arc::new(AtomicBool::new(false));
        let etcd = Etcd::new(&url.endpoint, Duration::from_secs(2));
        let key = url.map_key();
        let s = stop.clone();
        let thread = std::thread::Builder::new().name("cluster-map-watch".into()).spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Err(e) = follow(&etcd, &key, &feed, &s) {
                    tracing::warn!(error = %e, "reading the cluster map from etcd failed; retrying");
                    std::thread::sleep(RETRY_PAUSE);
                }
            }
        })?;
        Ok(EtcdMapWatcher { stop, _thread: thread })
    }
}

/// One read of the map, then a watch from the revision after it until its deadline.
fn follow(
    etcd: &Etcd,
    key: &[u8],
    feed: &MapFeed,
    stop: &AtomicBool,
) -> Result<(), scalio_common::cluster::etcd::EtcdError> {
    let (kv, revision) = etcd.get(key)?;
    if let Some(kv) = kv {
        publish_encoded(feed, &kv.value);
    }
    etcd.watch(key, false, revision + 1, WATCH_DEADLINE, |m| {
        for ev in &m.events {
            if let Event::Put(kv) = ev {
                publish_encoded(feed, &kv.value);
            }
        }
        !stop.load(Ordering::Relaxed)
    })
}

fn publish_encoded(feed: &MapFeed, b: &[u8]) {
    match ClusterMap::decode(b) {
        Ok(m) => {
            let epoch = m.epoch;
            if feed.publish(Arc::new(m)) {
                tracing::debug!(epoch, "new cluster map");
            }
        }
        Err(e) => tracing::warn!(error = %e, "ignoring a cluster map that does not decode"),
    }
}

impl Drop for EtcdMapWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
