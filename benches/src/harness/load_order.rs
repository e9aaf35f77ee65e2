//! The order in which the embedded load inserts the records: grouped by the bucket they land in.
//!
//! A batch reads the chain of every bucket it writes to that already has one. Loaded in YCSB's key
//! order, almost every put after the first few in a bucket costs such a read (one 512-byte read
//! per record). Grouped by (bucket, SSD), a bucket's records arrive together, go into one batch
//! and find the bucket empty: its chain is written once and never read. The records and values
//! are the same; only the order of the inserts changes (YCSB's load order has no meaning for the
//! measured run).

use crate::ycsb::Workload;
use scalio_common::key::route;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Every record of the load range, in insertion order, handed out once each.
pub struct LoadOrder {
    keynums: Vec<u64>,
    next: AtomicUsize,
}

impl LoadOrder {
    /// The load range of `workload` sorted by the bucket, then the SSD, each key routes to on a
    /// server of `ssds` SSDs with `buckets_per_ssd` buckets each.
    pub fn by_bucket(workload: &Workload, ssds: u16, buckets_per_ssd: u32) -> LoadOrder {
        let mut keyed: Vec<(u64, u64)> = workload
            .load_range()
            .map(|k| {
                let r = route(&workload.store_key(k), ssds, buckets_per_ssd);
                ((u64::from(r.bucket) << 16) | u64::from(r.ssd), k)
            })
            .collect();
        keyed.sort_unstable();
        LoadOrder { keynums: keyed.into_iter().map(|(_, k)| k).collect(), next: AtomicUsize::new(0) }
    }

    /// The next record to insert, or None when all have been handed out.
    pub fn next(&self) -> Option<u64> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.keynums.get(i).copied()
    }

    /// Records in the order.
    pub fn len(&self) -> usize {
        self.keynums.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.keynums.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ycsb::{builtin_workload, Properties};

    #[test]
    fn every_record_once_grouped_by_bucket() {
        let mut p = Properties::parse(builtin_workload("workloadc").unwrap()).unwrap();
        p.set("recordcount", "5000");
        let w = Workload::from_properties(&p).unwrap();
        let order = LoadOrder::by_bucket(&w, 3, 200);
        assert_eq!(order.len(), 5000);
        let mut seen = Vec::new();
        while let Some(k) = order.next() {
            seen.push(k);
        }
        assert_eq!(order.next(), None);
        let routes: Vec<_> = seen.iter().map(|&k| route(&w.store_key(k), 3, 200)).collect();
        assert!(routes.windows(2).all(|p| (p[0].bucket, p[0].ssd) <= (p[1].bucket, p[1].ssd)));
        seen.sort_unstable();
        assert_eq!(seen, (0..5000).collect::<Vec<_>>());
    }
}
