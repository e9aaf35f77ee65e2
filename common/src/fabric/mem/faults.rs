//! The faults a [`MemFabric`](super::MemFabric) injects into every queue pair: delays, and a pause
//! or a callback in the middle of every READ (to tear it deterministically).

use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;

/// A callback run in the middle of a READ.
pub type TearHook = Arc<dyn Fn() + Send + Sync>;

/// Faults injected into every queue pair of a [`MemFabric`](super::MemFabric).
#[derive(Default)]
pub struct Faults {
    pub(super) wr_delay: Mutex<Duration>,
    pub(super) rpc_delay: Mutex<Duration>,
    pub(super) read_pause: Mutex<Duration>,
    pub(super) tear_hook: Mutex<Option<TearHook>>,
}

impl Faults {
    /// Sleep this long before executing each work request.
    pub fn set_wr_delay(&self, d: Duration) {
        *self.wr_delay.lock() = d;
    }
    /// Sleep this long before handing each RPC to the service.
    pub fn set_rpc_delay(&self, d: Duration) {
        *self.rpc_delay.lock() = d;
    }
    /// Sleep this long in the middle of every READ (half of its bytes copied).
    pub fn set_read_pause(&self, d: Duration) {
        *self.read_pause.lock() = d;
    }
    /// Run `hook` in the middle of every READ: a test can mutate the memory there to tear the
    /// READ deterministically.
    pub fn set_tear_hook(&self, hook: Option<TearHook>) {
        *self.tear_hook.lock() = hook;
    }
}
