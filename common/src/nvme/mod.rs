//! NVMe over Fabrics, TCP transport: a sans-IO codec shared by the target (server) and the
//! initiator (client).
//!
//! * [`pdu`]: the PDUs of the TCP binding and their encoding (digests, PDO, padding);
//! * [`stream`]: a stream decoder that validates every PDU and maps malformed input to the
//!   Fatal Error Status and Field Error Information of a termination request;
//! * [`sqe`]: the 64-byte submission and 16-byte completion queue entries, SGLs, status;
//! * [`command`]: typed Fabrics, admin and NVM I/O commands;
//! * [`fabrics`]: Connect data, Connect response, controller properties (CAP, VS, CC, CSTS);
//! * [`identify`]: Identify controller, namespace, active namespace list, descriptors;
//! * [`discovery`]: the discovery log page;
//! * [`status`]: status code types and codes.
//!
//! Scalio proper uses NVMe-oF over RDMA with the NIC's target offload; this TCP binding is the
//! software-reproducible stand-in that real hosts and targets (Linux, SPDK) also speak.

pub mod command;
pub mod discovery;
pub mod fabrics;
pub mod identify;
pub mod pdu;
pub mod sqe;
pub mod status;
pub mod stream;
mod wire;

pub use command::{AdminCommand, Command, CommandError, Connect, FabricsCommand, IoCommand, QueueKind};
pub use pdu::{Digests, Fes, Pdu, TxParams};
pub use sqe::{Cqe, Sgl, Sqe, StatusField};
pub use stream::{Decoded, FatalError, PduDecoder, PduError, Role, RxParams};
