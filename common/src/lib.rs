//! What the scalio server and its clients agree on.
//!
//! * [`cluster`]: the cluster map (ring, chains, epochs) and its etcd coordination;
//! * [`key`]: keys, the cache-table hash and the SSD routing;
//! * [`table`]: the cache-table slot and bucket layout, probe and fill encoding;
//! * [`ssd`]: the on-SSD format (superblock, bucket log, value records);
//! * [`rpc`]: the KV messages, a sans-IO codec;
//! * [`fabric`]: the verbs-shaped fabric and its backends;
//! * [`block`]: the block-read interface of a client's miss path;
//! * [`nvme`]: NVMe over Fabrics / TCP: PDUs, commands, Identify and discovery structures;
//! * [`aligned`]: buffers aligned for O_DIRECT;
//! * [`cputime`]: per-thread CPU clocks, to prove where work happened.

pub mod aligned;
pub mod block;
pub mod cluster;
pub mod cputime;
pub mod fabric;
pub mod key;
pub mod nvme;
pub mod rpc;
pub mod ssd;
pub mod table;
