//! A GET that hits the cache allocates nothing on the client: the bucket is READ into registered
//! memory and its completion is found by work-request id. Counted by a global allocator that
//! counts the allocations of the test's own thread, which runs the client and its queue pair's
//! driver (a current-thread runtime); the server runs on threads of its own.

mod common;

use scalio_client::ClientConfig;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counter is a
// const-initialized thread-local `Cell`, which needs no allocation to touch.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: the caller's contract for `alloc` is passed on as it is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through `alloc` or `realloc` above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: as for `dealloc`, and the caller's contract for `realloc` is passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

const KEYS: u64 = 64;
const MEASURED: u64 = 2_000;

/// Loads keys, makes them hits, and counts this thread's allocations over `MEASURED` hits.
/// Returns the allocations and the client's counters over the measured GETs.
fn allocations_per_hits(registered_probes: usize) -> (u64, scalio_client::ClientStats) {
    let s = common::start(1, true, |_| {});
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let cfg = ClientConfig { registered_probes, ..ClientConfig::default() };
        let c = s.tcp_client(cfg).await;
        for i in 0..KEYS {
            c.put(&common::key(i), &[i as u8; 48]).await.unwrap();
        }
        let mut value = Vec::with_capacity(64);
        // The first GET of each key misses and fills its slot; the next ones hit, and grow
        // whatever buffers the path keeps (queues, scratch space) to their working size.
        for round in 0..4 {
            for i in 0..KEYS {
                assert!(c.get_into(&common::key(i), &mut value).await.unwrap(), "round {round} key {i}");
            }
        }
        let keys: Vec<Vec<u8>> = (0..KEYS).map(common::key).collect();
        let before = c.stats();
        let start = allocations();
        for n in 0..MEASURED {
            let i = n % KEYS;
            let found = c.get_into(&keys[i as usize], &mut value).await.unwrap();
            assert!(found && value == [i as u8; 48], "key {i}");
        }
        let used = allocations() - start;
        (used, c.stats().since(&before))
    })
}

#[test]
fn a_cache_hit_allocates_nothing_on_the_client() {
    let (allocations, stats) = allocations_per_hits(scalio_client::DEFAULT_REGISTERED_PROBES);
    assert_eq!(stats.hits, MEASURED, "every measured GET hit: {stats:?}");
    assert_eq!(stats.registered_probes, MEASURED, "every probe READ into registered memory: {stats:?}");
    assert_eq!(allocations, 0, "{allocations} allocations over {MEASURED} cache hits");
}

/// The control: the same hits through the allocating path do allocate, so the count above is
/// not zero for want of counting.
#[test]
fn the_allocating_path_is_seen_allocating() {
    let (allocations, stats) = allocations_per_hits(0);
    assert_eq!(stats.hits, MEASURED);
    assert_eq!(stats.registered_probes, 0);
    assert!(allocations >= MEASURED, "only {allocations} allocations over {MEASURED} allocating hits");
}
