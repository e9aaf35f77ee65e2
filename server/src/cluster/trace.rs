//! A trace of what the cluster code did with each key (map installs, writes accepted and
//! refused, chain forwarding and its answers, copy writes, repairs), for finding the cause of a
//! failing history: `SCALIO_CLUSTER_TRACE=1` prints one line per event to stderr. Off, it costs
//! one relaxed load per event.

use std::sync::OnceLock;
use std::time::Instant;

fn start() -> Option<Instant> {
    static ON: OnceLock<Option<Instant>> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("SCALIO_CLUSTER_TRACE").map(|_| Instant::now()))
}

/// Whether events are traced.
pub fn on() -> bool {
    start().is_some()
}

/// Prints the event `what` (built only when tracing) of server `me`.
pub fn event(me: &impl std::fmt::Display, what: impl FnOnce() -> String) {
    if let Some(t0) = start() {
        eprintln!("TRACE {:>9.3} {me} {}", t0.elapsed().as_secs_f64() * 1e3, what());
    }
}

/// A key or value as text, for the trace.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
