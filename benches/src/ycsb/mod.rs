//! The YCSB workload layer of `scalio-ycsb`: property files, YCSB's generators, key names, values
//! and the operation stream.
//!
//! * [`properties`]: Java `.properties` files and `-p name=value` overrides;
//! * [`spec`]: the core-workload settings read from them, with YCSB's defaults;
//! * [`generator`]: ports of YCSB's generators (zipfian, scrambled zipfian, latest, hotspot, ...);
//! * [`keys`]: `fnvhash64`, `buildKeyName`, and the 16-byte store key of a name;
//! * [`value`]: deterministic, checkable record values;
//! * [`rng`]: the seeded per-thread random source;
//! * [`workload`]: [`Workload`] (shared) and [`OpStream`] (one per driver thread).
//!
//! A driver builds one [`Workload`], gives each thread `workload.thread_state(thread_id, seed)`,
//! loads with [`OpStream::next_load_key`] until it returns `None`, then runs
//! [`OpStream::next_op`] for its share of `operationcount` ([`thread_operation_count`]),
//! acknowledging each insert with [`OpStream::ack_insert`].

pub mod generator;
pub mod keys;
pub mod properties;
pub mod rng;
pub mod spec;
pub mod value;
pub mod workload;

pub use keys::{build_key_name, fnvhash64, store_key, KeyName, StoreKey};
pub use properties::{Properties, PropertiesError};
pub use rng::{RandomSource, SeededRng};
pub use spec::{InsertOrder, RequestDistribution, WorkloadError, WorkloadSpec};
pub use value::{fill_value, verify_value, ValueError};
pub use workload::{builtin_workload, thread_operation_count, Op, OpKind, OpStream, Workload, BUILTIN_WORKLOADS};
