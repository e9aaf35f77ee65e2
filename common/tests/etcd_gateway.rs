//! The etcd client against a real etcd, at `SCALIO_ETCD` (HOST:PORT). Skipped (passing, with a
//! note) when the variable is unset; `scripts/ci/etcd.sh run -- cargo test -p scalio-common
//! --test etcd_gateway` starts one and sets it.

use scalio_common::cluster::etcd::{Etcd, Event};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn etcd() -> Option<Etcd> {
    match std::env::var("SCALIO_ETCD") {
        Ok(a) if !a.is_empty() => Some(Etcd::new(&a, Duration::from_secs(5))),
        _ => {
            eprintln!("SCALIO_ETCD is not set: skipping the test against a real etcd");
            None
        }
    }
}

/// A key prefix unique to this run.
fn prefix(name: &str) -> String {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("/test-{name}-{t}/")
}

#[test]
fn reads_writes_and_compare_and_swap() {
    let Some(e) = etcd() else { return };
    let p = prefix("kv");
    let k = format!("{p}map").into_bytes();
    assert_eq!(e.get(&k).unwrap().0, None);
    // Create only if absent.
    assert!(e.compare_and_swap(&k, b"v1", 0).unwrap());
    assert!(!e.compare_and_swap(&k, b"v1-again", 0).unwrap());
    let (kv, _) = e.get(&k).unwrap();
    let kv = kv.unwrap();
    assert_eq!(kv.value, b"v1");
    // Replace only at the revision read.
    assert!(e.compare_and_swap(&k, b"v2", kv.mod_revision).unwrap());
    assert!(!e.compare_and_swap(&k, b"v3", kv.mod_revision).unwrap());
    assert_eq!(e.get(&k).unwrap().0.unwrap().value, b"v2");
    // A snapshot reads a prefix and a key at one revision.
    let members = format!("{p}members/").into_bytes();
    for i in 0..3 {
        e.put(format!("{p}members/s{i}").as_bytes(), format!("m{i}").as_bytes(), None).unwrap();
    }
    let (range, map) = e.snapshot(&members, &k).unwrap();
    assert_eq!(range.kvs.len(), 3);
    assert_eq!(range.kvs[2].value, b"m2");
    assert_eq!(map.unwrap().value, b"v2");
    assert_eq!(e.get_prefix(&members).unwrap().kvs.len(), 3);
}

#[test]
fn leases_keep_keys_alive_and_revoking_deletes_them() {
    let Some(e) = etcd() else { return };
    let p = prefix("lease");
    let k = format!("{p}members/s1").into_bytes();
    let lease = e.lease_grant(5).unwrap();
    assert!(lease.ttl_s > 0 && lease.ttl_s <= 5);
    e.put(&k, b"me", Some(lease.id)).unwrap();
    assert_eq!(e.get(&k).unwrap().0.unwrap().lease, lease.id);
    let refreshed = e.lease_keepalive(lease.id).unwrap();
    assert_eq!(refreshed.id, lease.id);
    assert!(refreshed.ttl_s > 0);
    e.lease_revoke(lease.id).unwrap();
    assert_eq!(e.get(&k).unwrap().0, None);
    // A revoked lease cannot be kept alive.
    assert_eq!(e.lease_keepalive(lease.id).unwrap().ttl_s, 0);
}

#[test]
fn watches_see_puts_and_deletes_after_the_start_revision() {
    let Some(e) = etcd() else { return };
    let p = prefix("watch");
    let k = format!("{p}members/a").into_bytes();
    let (_, rev) = e.get(&k).unwrap();
    e.put(&k, b"1", None).unwrap();
    let writer = {
        let e = e.clone();
        let k = k.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            e.put(&k, b"2", None).unwrap();
            e.lease_revoke(e.lease_grant(5).unwrap().id).unwrap();
            let lease = e.lease_grant(5).unwrap();
            e.put(&k, b"3", Some(lease.id)).unwrap();
            e.lease_revoke(lease.id).unwrap(); // deletes the key
        })
    };
    let mut seen = Vec::new();
    e.watch(format!("{p}members/").as_bytes(), true, rev + 1, Duration::from_secs(10), |m| {
        seen.extend(m.events);
        seen.len() < 4
    })
    .unwrap();
    writer.join().unwrap();
    let values: Vec<_> = seen
        .iter()
        .map(|ev| match ev {
            Event::Put(kv) => String::from_utf8(kv.value.clone()).unwrap(),
            Event::Delete(_) => "deleted".to_string(),
        })
        .collect();
    assert_eq!(values, ["1", "2", "3", "deleted"]);
    // A watch with nothing to report ends at its deadline.
    let t = std::time::Instant::now();
    e.watch(format!("{p}nothing/").as_bytes(), true, 0, Duration::from_millis(300), |m| m.events.is_empty()).unwrap();
    assert!(t.elapsed() < Duration::from_secs(5));
}
