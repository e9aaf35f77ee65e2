//! The scalio server: the JBOF/DPU side.
//!
//! * [`device`]: the SSDs (files or block devices), I/O threads, counters by issuer, the
//!   emulated-testbed device model;
//! * [`table`]: the cache table's owner (reserve, lease, invalidate, evict);
//! * [`store`]: one data store per SSD (bucket log, value log, index, batching, GC, recovery);
//! * [`worker`]: worker threads (the "DPU cores") and the dispatch of RPCs to them;
//! * [`stats`]: counters by role;
//! * [`target`]: the NVMe/TCP target engine (the offload path), on its own threads;
//! * [`config`]: the TOML configuration;
//! * [`metrics`]: the counters in the Prometheus text format over HTTP (`--metrics`);
//! * [`cluster`]: membership in a cluster through etcd, and the key-ownership check;
//! * [`server`]: the assembled [`Server`].

#[cfg(all(feature = "seeded-bugs", not(debug_assertions)))]
compile_error!("the `seeded-bugs` feature deliberately breaks the protocol; it is for debug test builds only");

pub mod cluster;
pub mod config;
pub mod device;
pub mod fill_windows;
pub mod metrics;
pub mod server;
pub mod stats;
pub mod store;
pub mod table;
pub mod target;
mod worker;

#[cfg(feature = "seeded-bugs")]
pub use config::SeededBug;
pub use config::ServerConfig;
pub use server::{Server, ServerError};
