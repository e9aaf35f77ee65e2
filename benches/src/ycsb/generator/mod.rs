//! Ports of YCSB's number generators (`site.ycsb.generator`).
//!
//! Each generator draws from a caller-supplied [`RandomSource`](super::rng::RandomSource) instead of
//! Java's `ThreadLocalRandom`, so a driver thread owns its generators and its random stream. State
//! that all threads share (the insert counters) is atomic; state that YCSB shares only to avoid
//! recomputing it (a zipfian's zeta) is computed once and cloned into each thread.

mod counter;
mod discrete;
mod uniform;
mod zipfian;

pub use counter::{AckError, AcknowledgedCounterGenerator, CounterGenerator, ACK_WINDOW_SIZE};
pub use discrete::DiscreteGenerator;
pub use uniform::{HotspotIntegerGenerator, UniformLongGenerator};
pub use zipfian::{
    zeta, zeta_euler_maclaurin, zeta_incremental, ScrambledZipfianGenerator, SkewedLatestGenerator, ZipfianGenerator,
    SCRAMBLED_ITEM_COUNT, SCRAMBLED_ZETAN, ZETA_DIRECT_MAX, ZIPFIAN_CONSTANT,
};

/// A generator that cannot be built from the given parameters.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GeneratorError {
    #[error("zipfian constant {0} is invalid: it must be finite, at least 0, and not 1")]
    InvalidZipfianConstant(f64),
    #[error("the range has no items (its lower bound is above its upper bound)")]
    NoItems,
    #[error("the range has 2^64 items, one more than a u64 counts")]
    RangeTooLarge,
    #[error("{what} {value} is outside [0, 1]")]
    FractionOutOfRange { what: &'static str, value: f64 },
    #[error("a discrete distribution needs at least one positive finite weight")]
    NoPositiveWeight,
}
