//! The warm-up: unmeasured operations that bring the cache to its steady state before the
//! measured run. It runs in windows and stops when the hit ratio has settled (see
//! [`SettleRule`]) or at `--warmup-ops`, whichever comes first; every window's hit ratio and
//! evictions are reported, so a reader can see it settle (or not).

use super::driver::PhaseResult;
use super::system::SystemKind;

/// Two consecutive windows whose hit ratios differ by less than this count as settled.
///
/// Why 0.005: before a cache has filled, its hit ratio is the key stream's re-reference rate,
/// which keeps rising; at 20M records and θ 0.99 it rose by 0.07, 0.03 and 0.02 over the 2nd, 3rd
/// and 4th million operations, and YCSB's zipfian adds about the same per doubling of the
/// operations, i.e. still ~0.01 per million at 5M. A cache that stopped at such a slope would
/// still be filling. 0.005 per window is well above a window's noise (a window has at least
/// [`MIN_WINDOW`] GETs, so its hit ratio's binomial σ is at most 0.0011 and a difference's at
/// most 0.0016: ε is 3σ), and below the slope of a cache that is still filling.
pub const SETTLE_EPSILON: f64 = 0.005;

/// The smallest window, in operations: enough GETs that a window's hit ratio varies by noise
/// far less than [`SETTLE_EPSILON`] (see there).
pub const MIN_WINDOW: u64 = 200_000;

/// The window when the cache's size is unknown (a remote server, a system without a cache).
pub const DEFAULT_WINDOW: u64 = 1_000_000;

/// When a warm-up has settled: after `window` operations at a time, the last two windows' hit
/// ratios differ by less than `epsilon`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SettleRule {
    pub window: u64,
    pub epsilon: f64,
}

impl SettleRule {
    /// The rule for a cache of `slots` slots (None: unknown). A window is half the slots: a
    /// cache's content turns over on the scale of its slots (filling it takes at least that many
    /// misses), so a shorter window would compare two moments of the same turnover; at least
    /// [`MIN_WINDOW`] for the noise. `window` overrides it (`--warmup-window`).
    pub fn for_cache(slots: Option<u64>, window: Option<u64>) -> SettleRule {
        let window = window.unwrap_or_else(|| slots.map_or(DEFAULT_WINDOW, |s| (s / 2).max(MIN_WINDOW))).max(1);
        SettleRule { window, epsilon: SETTLE_EPSILON }
    }

    /// Whether the windows so far, `(operations, hit ratio)` in order, show a settled cache: the
    /// last two are whole windows and their hit ratios differ by less than epsilon. One window
    /// alone has nothing to compare with; a shorter window (the rest of the cap) never settles
    /// it: a still-rising hit ratio rises less over fewer operations.
    pub fn settled(&self, windows: &[(u64, f64)]) -> bool {
        match windows {
            [.., (n0, before), (n1, last)] => {
                *n0 == self.window && *n1 == self.window && (last - before).abs() < self.epsilon
            }
            _ => false,
        }
    }

    /// The size of the next window with `done` operations run of at most `cap`.
    pub fn next_window(&self, done: u64, cap: u64) -> u64 {
        self.window.min(cap.saturating_sub(done))
    }
}

/// One window of the warm-up.
pub struct Window {
    pub result: PhaseResult,
    /// The cache's evictions during the window (None: the system does not count them).
    pub evictions: Option<u64>,
}

/// What the warm-up did.
pub struct Warmup {
    pub rule: SettleRule,
    pub windows: Vec<Window>,
    /// Whether the hit ratio settled before the cap (None: the system has no cache to settle).
    pub settled: Option<bool>,
    /// Whether the emulated testbed was in force during the warm-up (the embedded server suspends
    /// it unless `--warmup-emulated`; a running server's cannot be).
    pub emulated: bool,
}

/// The evictions of the system's cache during a phase: Scalio's server counter
/// `table_evictions`, LEED+Ditto's clients' `evictions` (None for systems without either).
pub fn evictions(kind: SystemKind, server_delta: Option<&scalio_common::rpc::Stats>, r: &PhaseResult) -> Option<u64> {
    if kind.uses_scalio_cache() {
        server_delta.map(|d| d.value("table_evictions"))
    } else if kind.uses_ditto_cache() {
        r.counters.named.iter().find(|(n, _)| n == "evictions").map(|(_, v)| *v)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> SettleRule {
        SettleRule { window: 1000, epsilon: 0.005 }
    }

    /// Whole windows with these hit ratios.
    fn whole(hit_ratios: &[f64]) -> Vec<(u64, f64)> {
        hit_ratios.iter().map(|h| (1000, *h)).collect()
    }

    #[test]
    fn a_still_rising_hit_ratio_has_not_settled() {
        // The 20M-record, θ 0.99 warm-up by million operations (README, "Paper scale").
        assert!(!rule().settled(&whole(&[0.44, 0.51, 0.54, 0.56])));
        assert!(!rule().settled(&whole(&[0.56, 0.5651])));
        assert!(!rule().settled(&whole(&[0.56, 0.5549])), "a fall by ε is not settled either");
    }

    #[test]
    fn two_windows_within_epsilon_have_settled() {
        assert!(rule().settled(&whole(&[0.44, 0.51, 0.60, 0.6049])));
        assert!(rule().settled(&whole(&[0.61, 0.6051])));
        // Only the last two count: an earlier flat pair does not settle a later rise.
        assert!(!rule().settled(&whole(&[0.30, 0.30, 0.40])));
    }

    #[test]
    fn a_shorter_last_window_does_not_settle() {
        // The rest of the cap: a rise of 0.006 per window is 0.003 over half a window.
        assert!(!rule().settled(&[(1000, 0.568), (1000, 0.574), (500, 0.577)]));
        assert!(!rule().settled(&[(500, 0.5), (1000, 0.5)]));
        assert!(rule().settled(&[(1000, 0.574), (1000, 0.577)]));
    }

    #[test]
    fn one_window_or_none_cannot_settle() {
        assert!(!rule().settled(&[]));
        assert!(!rule().settled(&whole(&[0.5])));
    }

    #[test]
    fn the_window_is_half_the_cache_at_least_the_minimum() {
        assert_eq!(SettleRule::for_cache(Some(2_244_608), None).window, 1_122_304);
        assert_eq!(SettleRule::for_cache(Some(1_120), None).window, MIN_WINDOW);
        assert_eq!(SettleRule::for_cache(None, None).window, DEFAULT_WINDOW);
        assert_eq!(SettleRule::for_cache(Some(2_244_608), Some(5000)).window, 5000);
        assert_eq!(SettleRule::for_cache(None, Some(0)).window, 1, "a zero window would never end");
    }

    #[test]
    fn windows_stop_at_the_cap() {
        let r = rule();
        assert_eq!(r.next_window(0, 2500), 1000);
        assert_eq!(r.next_window(2000, 2500), 500);
        assert_eq!(r.next_window(2500, 2500), 0);
    }
}
