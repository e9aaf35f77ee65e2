//! A queue pair in the error state (or with its connection gone) is replaced, and GETs carry on.

mod common;

use common::{key, start};
use parking_lot::Mutex;
use scalio_client::{Client, ClientConfig, ClientError, Connector};
use scalio_common::fabric::{CloseReason, FabricError, QueuePair, RemoteAccessError, RemoteAddr, Secret, WorkRequest};
use std::sync::Arc;

/// The queue pairs a connector opened, in order.
type Opened = Arc<Mutex<Vec<Arc<dyn QueuePair>>>>;

/// A connector over the server's `mem` fabric that remembers the queue pairs it opened.
fn recording_connector(t: &common::TestServer) -> (Connector, Opened) {
    let opened = Arc::new(Mutex::new(Vec::new()));
    let fabric = t.server.mem_fabric().clone();
    let record = opened.clone();
    let connector: Connector = Arc::new(move || {
        let qp: Arc<dyn QueuePair> = Arc::new(fabric.connect());
        record.lock().push(qp.clone());
        Ok(qp)
    });
    (connector, opened)
}

/// Puts `qp` into the error state with a READ no region allows.
fn poison(qp: &dyn QueuePair) {
    let bad = RemoteAddr { addr: 0, rkey: 0 };
    let r = qp.post(&[WorkRequest::Read { remote: bad, len: 8 }]).wait();
    assert_eq!(r, Err(FabricError::Remote { index: 0, error: RemoteAccessError::BadKey }));
}

#[tokio::test]
async fn a_failed_queue_pair_is_replaced_and_gets_carry_on() {
    let t = start(1, false, |_| {});
    let (connector, opened) = recording_connector(&t);
    let c = Client::with_connector(connector, ClientConfig::default()).await.unwrap();
    for i in 0..20 {
        c.put(&key(i), format!("v{i}").as_bytes()).await.unwrap();
    }
    assert_eq!(c.get(&key(3)).await.unwrap(), Some(b"v3".to_vec()));
    let first = opened.lock()[0].clone();
    poison(&*first);

    // The GET meets the error state, the queue pair is replaced, and the GET is retried on it.
    assert_eq!(c.get(&key(4)).await.unwrap(), Some(b"v4".to_vec()));
    assert_eq!(c.stats().reconnects, 1);
    assert_eq!(opened.lock().len(), 2);
    // Writes and hits work on the new queue pair, and nothing more is replaced.
    c.put(&key(4), b"new").await.unwrap();
    for _ in 0..3 {
        assert_eq!(c.get(&key(4)).await.unwrap(), Some(b"new".to_vec()));
    }
    assert_eq!(c.stats().reconnects, 1);
}

#[tokio::test]
async fn a_write_on_a_failed_queue_pair_reports_the_failure_and_the_next_one_works() {
    let t = start(1, false, |_| {});
    let (connector, opened) = recording_connector(&t);
    let c = Client::with_connector(connector, ClientConfig::default()).await.unwrap();
    c.put(&key(1), b"a").await.unwrap();
    poison(&*opened.lock()[0].clone());
    // A write is not retried behind the caller's back: whether it took effect is the caller's
    // to find out (here it did not: the queue pair executed nothing after the failure).
    assert_eq!(c.put(&key(1), b"b").await, Err(ClientError::Fabric(FabricError::Flushed)));
    c.put(&key(1), b"c").await.unwrap();
    assert_eq!(c.get(&key(1)).await.unwrap(), Some(b"c".to_vec()));
    assert_eq!(c.stats().reconnects, 1);
}

#[tokio::test]
async fn without_a_connector_a_failed_queue_pair_stays_failed() {
    let t = start(1, false, |_| {});
    let qp: Arc<dyn QueuePair> = Arc::new(t.server.connect_mem());
    let c = Client::with_queue_pairs(vec![qp.clone()], ClientConfig::default()).await.unwrap();
    c.put(&key(1), b"a").await.unwrap();
    poison(&*qp);
    assert_eq!(c.get(&key(1)).await, Err(ClientError::Fabric(FabricError::Flushed)));
    assert_eq!(c.stats().reconnects, 0);
}

#[tokio::test]
async fn over_tcp_the_server_closes_a_failed_queue_pair_and_the_client_replaces_it() {
    let t = start(1, true, |_| {});
    let addr = t.server.local_addr().unwrap();
    let opened = Opened::default();
    let record = opened.clone();
    let connector: Connector = Arc::new(move || {
        let qp: Arc<dyn QueuePair> = Arc::new(scalio_common::fabric::tcp::TcpQueuePair::connect(addr)?);
        record.lock().push(qp.clone());
        Ok(qp)
    });
    let c = Client::with_connector(connector, ClientConfig::default()).await.unwrap();
    c.put(&key(9), b"x").await.unwrap();
    assert_eq!(c.get(&key(9)).await.unwrap(), Some(b"x".to_vec()));
    poison(&*opened.lock()[0].clone());
    assert_eq!(c.get(&key(9)).await.unwrap(), Some(b"x".to_vec()));
    assert_eq!(c.stats().reconnects, 1);
    assert_eq!(t.stat("nic_protocol_errors"), 0);
    assert_eq!(t.stat("nic_remote_errors"), 1);
}

#[tokio::test]
async fn a_server_with_a_secret_admits_only_clients_that_present_it() {
    let t = start(1, true, |c| {
        let path = c.ssds[0].path.with_file_name("secret");
        std::fs::write(&path, b"s3cret\n").unwrap();
        c.secret_file = Some(path);
    });
    let addr = t.server.local_addr().unwrap().to_string();
    let refused = Client::connect(&addr, ClientConfig::default()).await.err();
    assert_eq!(refused, Some(ClientError::Fabric(FabricError::Refused(CloseReason::Unauthenticated))));
    let secret = Some(Secret::new(b"s3cret".to_vec()).unwrap());
    let c = Client::connect(&addr, ClientConfig { secret, ..ClientConfig::default() }).await.unwrap();
    c.put(&key(1), b"v").await.unwrap();
    assert_eq!(c.get(&key(1)).await.unwrap(), Some(b"v".to_vec()));
    assert_eq!(t.stat("nic_connections_refused"), 1);
}

/// More GETs in flight on one queue pair than its send queue has slots: they wait for slots
/// (backpressure) instead of failing with `QueueFull`.
#[tokio::test]
async fn gets_beyond_the_send_queue_depth_wait_for_room() {
    use scalio_common::fabric::tcp::{AsyncTcpQueuePair, ConnectOptions};
    let t = start(1, true, |_| {});
    let addr = t.server.local_addr().expect("listening");
    let connector: Connector = Arc::new(move || {
        let opts = ConnectOptions { send_queue_depth: 2, ..ConnectOptions::default() };
        Ok(Arc::new(AsyncTcpQueuePair::connect_with(addr, &opts)?) as Arc<dyn QueuePair>)
    });
    let cfg = ClientConfig { queue_pairs: 1, ..ClientConfig::default() };
    let c = Client::with_connector(connector, cfg).await.unwrap();
    c.put(&key(1), b"hot").await.unwrap();
    assert_eq!(c.get(&key(1)).await.unwrap(), Some(b"hot".to_vec()));
    // Spawned, so that all 32 are in flight at once on the one queue pair.
    let gets: Vec<_> = (0..32)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.get(&key(1)).await })
        })
        .collect();
    for g in gets {
        assert_eq!(g.await.unwrap().unwrap(), Some(b"hot".to_vec()));
    }
    assert_eq!(c.stats().reconnects, 0);
}
