//! Benchmarks.

pub mod systems;
pub mod ycsb;
