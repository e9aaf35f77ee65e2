//! The software NIC over TCP: clients and the server in different processes or hosts, with the
//! semantics of the verbs-shaped fabric.
//!
//! * [`wire`]: the protocol, a sans-IO codec (frame layouts in its docs).
//! * [`nic`]: the server side, [`TcpNic`]: NIC threads that serve READ and WRITE themselves
//!   against the [`RegionTable`](crate::fabric::RegionTable) and hand RPCs to the
//!   [`RpcService`](crate::fabric::RpcService).
//! * [`qp`]: the client side, [`TcpQueuePair`].
//!
//! On one connection, requests execute in the order they were posted; chain completions
//! therefore come back in order, RPC responses in any order.

mod buf;
pub mod nic;
pub mod qp;
pub mod wire;

pub use nic::{NicConfig, NicStats, TcpNic};
pub use qp::{ConnectOptions, TcpQueuePair};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fabric::conformance::TestServer;
    use crate::fabric::{QueuePair, RegionTable, RpcService};
    use std::sync::Arc;

    fn start(service: Arc<dyn RpcService>, config: NicConfig) -> TestServer {
        let regions = Arc::new(RegionTable::new());
        let nic = TcpNic::bind("127.0.0.1:0", regions.clone(), service, config).expect("bind");
        let addr = nic.local_addr();
        let connect = move || Arc::new(TcpQueuePair::connect(addr).expect("connect")) as Arc<dyn QueuePair>;
        TestServer::new(regions, connect, nic)
    }

    mod one_thread {
        fn make(service: std::sync::Arc<dyn crate::fabric::RpcService>) -> crate::fabric::conformance::TestServer {
            super::start(service, super::NicConfig::default())
        }
        crate::fabric_conformance!(make);
    }

    /// Connections spread over several NIC threads.
    mod three_threads {
        fn make(service: std::sync::Arc<dyn crate::fabric::RpcService>) -> crate::fabric::conformance::TestServer {
            super::start(service, super::NicConfig { threads: 3, ..Default::default() })
        }
        crate::fabric_conformance!(make);
    }

    /// Every response over the high-water mark: requests wait for the output to drain after
    /// each one, which exercises the backpressure paths.
    mod tiny_output_buffer {
        fn make(service: std::sync::Arc<dyn crate::fabric::RpcService>) -> crate::fabric::conformance::TestServer {
            super::start(service, super::NicConfig { threads: 2, out_high_water: 1, ..Default::default() })
        }
        crate::fabric_conformance!(make);
    }
}
