//! scalio's benchmarks: the `scalio-ycsb` harness ([`harness`]) over the YCSB workload layer
//! ([`ycsb`]), the demo, and the NVMe/TCP tools (in `src/bin`).

pub mod harness;
pub mod systems;
pub mod ycsb;
