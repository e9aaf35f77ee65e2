//! The software NIC over TCP: clients and the server in different processes or hosts, with the
//! semantics of the verbs-shaped fabric.
//!
//! * [`wire`]: the protocol, a sans-IO codec (frame layouts in its docs).
//! * [`nic`]: the server side, [`TcpNic`]: NIC threads that serve READ and WRITE themselves
//!   against the [`RegionTable`](crate::fabric::RegionTable) and hand RPCs to the
//!   [`RpcService`](crate::fabric::RpcService).
//! * [`qp`]: the client side: a sans-IO core and two drivers, [`TcpQueuePair`] (a reader thread
//!   per queue pair) and, with the `tokio` feature, `AsyncTcpQueuePair` (on the caller's runtime).
//!
//! On one connection, requests execute in the order they were posted; chain completions
//! therefore come back in order, RPC responses in any order.

mod buf;
pub mod nic;
pub mod qp;
pub mod wire;

pub use nic::{NicConfig, NicConfigError, NicStats, TcpNic};
#[cfg(feature = "tokio")]
pub use qp::AsyncTcpQueuePair;
pub use qp::{ConnectOptions, TcpQueuePair};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fabric::conformance::TestServer;
    use crate::fabric::{QueuePair, RegionTable, RpcService};
    use std::sync::Arc;

    fn start(service: Arc<dyn RpcService>, config: NicConfig) -> TestServer {
        let regions = Arc::new(RegionTable::new());
        let credits = config.rpc_credits;
        let nic = TcpNic::bind("127.0.0.1:0", regions.clone(), service, config).expect("bind");
        let addr = nic.local_addr();
        let connect = move || Arc::new(TcpQueuePair::connect(addr).expect("connect")) as Arc<dyn QueuePair>;
        TestServer::new(regions, credits, connect, nic)
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
            super::start(service, super::NicConfig { threads: 3, rpc_credits: 5, ..Default::default() })
        }
        crate::fabric_conformance!(make);
    }

    /// The queue pairs driven on a tokio runtime (here a runtime of one worker thread that the
    /// suite's plain threads wait on).
    #[cfg(feature = "tokio")]
    mod tokio_driver {
        use crate::fabric::conformance::TestServer;
        use crate::fabric::tcp::{AsyncTcpQueuePair, NicConfig, TcpNic};
        use crate::fabric::{QueuePair, RegionTable, RpcService};
        use std::sync::Arc;

        fn make(service: Arc<dyn RpcService>) -> TestServer {
            let regions = Arc::new(RegionTable::new());
            let config = NicConfig { rpc_credits: 16, ..NicConfig::default() };
            let credits = config.rpc_credits;
            let nic = TcpNic::bind("127.0.0.1:0", regions.clone(), service, config).expect("bind");
            let addr = nic.local_addr();
            let rt = Arc::new(
                tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_io().build().expect("runtime"),
            );
            let connect = move || {
                let _entered = rt.enter();
                Arc::new(AsyncTcpQueuePair::connect(addr).expect("connect")) as Arc<dyn QueuePair>
            };
            TestServer::new(regions, credits, connect, nic)
        }
        crate::fabric_conformance!(make);

        #[test]
        fn outside_a_runtime_it_says_so() {
            let regions = Arc::new(RegionTable::new());
            let service: Arc<dyn RpcService> = Arc::new(|_rpc: crate::fabric::IncomingRpc| {});
            let nic = TcpNic::bind("127.0.0.1:0", regions, service, NicConfig::default()).expect("bind");
            let err = AsyncTcpQueuePair::connect(nic.local_addr()).err();
            assert_eq!(err, Some(crate::fabric::FabricError::NoRuntime));
        }
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
