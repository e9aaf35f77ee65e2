//! Benchmarks.

pub mod ycsb;
