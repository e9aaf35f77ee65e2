//! An NVMe/TCP initiator (tokio): the client's miss path reads SSD blocks with it, from the
//! scalio target or from any NVMe/TCP target (Linux `nvmet-tcp`, SPDK `nvmf_tgt`).
//!
//! * [`NvmeTcpController`]: an association with a controller (admin queue, I/O queues, each its
//!   own TCP connection, keep-alive), with Identify, Read, Write, Flush and Disconnect;
//! * [`discover`]: the discovery log page of a discovery controller;
//! * [`NvmeTcpBlockReader`]: the [`BlockReader`](scalio_common::block::BlockReader) over it;
//! * [`host_queue`]: the sans-IO queue logic the tokio driver runs.

mod block_reader;
mod controller;
mod error;
pub mod host_queue;
mod queue;

pub use block_reader::NvmeTcpBlockReader;
pub use controller::{discover, ConnectOptions, NamespaceInfo, NvmeTcpController};
pub use error::NvmeError;
pub use host_queue::Completion;
pub use scalio_common::nvme::discovery::DiscoveryEntry;
