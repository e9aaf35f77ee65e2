//! The `verbs` backend (cargo feature `rdma`): the fabric on a real RDMA device, through
//! libibverbs ([`sideway`], which loads libibverbs at run time: a binary built with this backend
//! starts on a machine without rdma-core and reports [`DeviceError::NoDevice`]).
//!
//! * [`VerbsDevice`] (`device.rs`): the device, port and GID a process uses (configurable:
//!   [`VerbsConfig`]), its protection domain, completion queues with notification channels,
//!   RC queue pairs and registrations.
//! * [`VerbsRegistrar`] and [`VerbsNic`] (`nic.rs`): the server. Regions are registered with the
//!   rights asked for, so the NIC checks every one-sided access; the listener admits clients
//!   (secret, connection limit) in a TCP handshake (`wire.rs`) that exchanges queue pair numbers,
//!   PSNs and GIDs and grants credits, then serves each client's RPCs from a queue pair with that
//!   many receive buffers pre-posted.
//! * [`VerbsQueuePair`] (`qp.rs`): the client. Chains are posted as one work-request list (one
//!   doorbell), signaled only at the end, unsignaled chains signaled selectively; READs land in
//!   the caller's registered memory (`ReadInto`) or a staging ring (`ring.rs`); the completion
//!   queue is polled by a thread that sleeps on the queue's channel when idle.
//!
//! Differences from the software backends, all typed: a remote refusal is
//! [`RemoteAccessError::Refused`](crate::fabric::RemoteAccessError::Refused) (verbs does not
//! say whether key, bounds or rights were wrong), and strided registrations are refused
//! ([`Unsupported::StridedRegistration`](crate::fabric::Unsupported)), so a server on verbs runs
//! with server fills.

mod device;
mod nic;
mod qp;
mod queue;
mod ring;
pub mod wire;

pub use device::{VerbsDevice, MAX_INLINE};
pub use nic::{NicConfig, VerbsNic, VerbsRegistrar};
pub use qp::VerbsQueuePair;

use crate::fabric::DeviceError;

/// Which device, port and GID to use.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerbsConfig {
    /// Device name (`ibv_devices`), e.g. `mlx5_0` or `rxe0`; None: the first device.
    pub device: Option<String>,
    /// Port number (from 1).
    pub port: u8,
    /// GID index (`show_gids`); None: the first IPv4-mapped GID (RoCE v2 over IPv4), else the
    /// first non-zero one.
    pub gid_index: Option<u32>,
}

impl Default for VerbsConfig {
    fn default() -> Self {
        VerbsConfig { device: None, port: 1, gid_index: None }
    }
}

/// Why the verbs tests of this process cannot run, if they cannot: no device, as on a machine
/// without RDMA (or without rdma-core).
pub fn unavailable(config: &VerbsConfig) -> Option<DeviceError> {
    match VerbsDevice::open(config) {
        Ok(_) => None,
        Err(crate::fabric::FabricError::Device(e)) => Some(e),
        Err(_) => Some(DeviceError::NoDevice(std::io::ErrorKind::Other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fabric::conformance::TestServer;
    use crate::fabric::{QueuePair, RpcService};
    use std::sync::Arc;

    /// The device the tests use: `SCALIO_RDMA_DEVICE` (e.g. `rxe0`), else the first.
    fn config() -> VerbsConfig {
        VerbsConfig { device: std::env::var("SCALIO_RDMA_DEVICE").ok(), ..VerbsConfig::default() }
    }

    /// None (and a line saying why) when there is no device. With `SCALIO_REQUIRE_RDMA=1` a
    /// missing device fails the test instead, so that CI on a machine with one cannot skip.
    pub(super) fn device() -> Option<Arc<VerbsDevice>> {
        match VerbsDevice::open(&config()) {
            Ok(d) => Some(d),
            Err(e) => {
                assert!(std::env::var("SCALIO_REQUIRE_RDMA").as_deref() != Ok("1"), "SCALIO_REQUIRE_RDMA=1 but {e}");
                eprintln!("skipped: the verbs backend needs an RDMA device: {e}");
                None
            }
        }
    }

    fn make(service: Arc<dyn RpcService>) -> TestServer {
        let dev = device().expect("checked by the caller");
        let config = NicConfig { credits: 64, buffer_len: 16 << 10, ..NicConfig::default() };
        let nic = VerbsNic::start(dev.clone(), "127.0.0.1:0".parse().unwrap(), config, service).expect("listen");
        let addr = nic.local_addr();
        let registrar = Arc::new(VerbsRegistrar::new(dev.clone()));
        TestServer::new(
            registrar,
            64,
            move || Arc::new(VerbsQueuePair::connect(&dev, addr, None).expect("connect")) as Arc<dyn QueuePair>,
            nic,
        )
        .with_coarse_remote_errors()
    }

    /// Expands to one `#[test]` per conformance check that runs it on verbs, or says it skipped.
    macro_rules! verbs_conformance {
        ($($check:ident),* $(,)?) => {
            mod conformance {
                $(
                    #[test]
                    fn $check() {
                        if super::device().is_some() {
                            $crate::fabric::conformance::$check(&super::make);
                        }
                    }
                )*
            }
        };
    }

    // Every check of the shared suite but strided registration, which verbs refuses (below).
    verbs_conformance!(
        read_write_round_trip,
        chain_executes_in_order,
        posts_execute_in_order,
        later_write_never_visible_before_earlier,
        access_errors_are_reported,
        error_state_flushes_what_follows,
        failed_request_stops_its_chain,
        unsignaled_failures_are_counted,
        unsignaled_stream_beyond_the_send_queue_depth,
        rpc_responses_match_requests,
        dropped_rpc_is_an_error,
        large_transfers,
        deregistered_key_is_refused,
        many_queue_pairs_at_once,
        registered_memory_and_completions_by_id,
        local_memory_is_checked_at_post,
        error_state_through_the_completion_queue,
        armed_completion_queue_wakes,
        rpc_credits_bound_requests_in_flight,
    );

    #[test]
    fn strided_registration_is_refused_not_widened() {
        let Some(dev) = device() else { return };
        let r = VerbsRegistrar::new(dev);
        let region = Arc::new(crate::fabric::MemoryRegion::new(128));
        let pattern = crate::fabric::Strided::new(8, 24, 32).unwrap();
        assert_eq!(
            crate::fabric::Registrar::register_strided(&r, region, crate::fabric::Access::WRITE, pattern),
            Err(crate::fabric::FabricError::Unsupported(crate::fabric::Unsupported::StridedRegistration))
        );
    }

    #[test]
    fn without_a_device_opening_says_why() {
        // On a machine without RDMA this is the typed "no device"; with one, a bad name is.
        let missing = VerbsConfig { device: Some("no-such-device".into()), ..VerbsConfig::default() };
        match unavailable(&missing) {
            Some(DeviceError::NotFound) | Some(DeviceError::NoDevice(_)) => {}
            other => panic!("{other:?}"),
        }
    }

    /// One-sided READ latency on the device (64 bytes, queue depth 1): printed, not asserted
    /// (speed belongs in benchmarks; this records what the CI guest measures).
    #[test]
    fn read_latency_report() {
        let Some(dev) = device() else { return };
        let s = make(crate::fabric::conformance::reversing_service());
        let region = Arc::new(crate::fabric::MemoryRegion::new(4096));
        let d = s.registrar.register(region, crate::fabric::Access::READ).unwrap();
        let qp = s.connect();
        let mine = Arc::new(crate::fabric::MemoryRegion::new(64));
        let k = qp.register_local(mine).unwrap();
        let read = crate::fabric::WorkRequest::ReadInto {
            remote: d.at(0),
            local: crate::fabric::LocalSlice { lkey: k, offset: 0, len: 64 },
        };
        let mut got = Vec::new();
        let mut one = |i: u64| {
            qp.post_signaled(i, &[read]).unwrap();
            got.clear();
            while qp.poll_cq(&mut got, 1) == 0 {
                std::hint::spin_loop();
            }
            assert_eq!(got[0].result, Ok(()));
        };
        for i in 0..100 {
            one(i);
        }
        let n = 2000u64;
        let t = std::time::Instant::now();
        for i in 0..n {
            one(i);
        }
        let us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
        eprintln!("verbs READ latency on {}: {us:.1} us per 64-byte READ (queue depth 1, {n} READs)", dev.name());
    }
}
