//! `UniformLongGenerator` and `HotspotIntegerGenerator`.

use super::GeneratorError;
use crate::ycsb::rng::RandomSource;

/// A uniform draw in `[0, interval)` the way YCSB makes one: `Math.abs(nextLong()) % interval`.
/// Java's `Math.abs` of a random long is uniform on `[0, 2^63)` except that it maps `i64::MIN` to
/// itself (a negative result once in 2^64 draws); dropping the low bit gives the same distribution
/// without that case.
fn below<R: RandomSource>(rng: &mut R, interval: u64) -> u64 {
    (rng.next_u64() >> 1) % interval
}

/// Uniform over `[lb, ub]` (YCSB `UniformLongGenerator`).
#[derive(Debug, Clone)]
pub struct UniformLongGenerator {
    lb: u64,
    interval: u64,
}

impl UniformLongGenerator {
    /// Uniform over `[lb, ub]`, both included.
    pub fn new(lb: u64, ub: u64) -> Result<UniformLongGenerator, GeneratorError> {
        if lb > ub {
            return Err(GeneratorError::NoItems);
        }
        let interval = (ub - lb).checked_add(1).ok_or(GeneratorError::RangeTooLarge)?;
        Ok(UniformLongGenerator { lb, interval })
    }

    /// The next value.
    pub fn next<R: RandomSource>(&mut self, rng: &mut R) -> u64 {
        self.lb + below(rng, self.interval)
    }
}

/// A hot set and a cold set (YCSB `HotspotIntegerGenerator`): the first
/// `⌊(ub - lb + 1) · hot_data_fraction⌋` values of `[lb, ub]` are hot and get `hot_opn_fraction` of
/// the draws, uniformly; the rest get the others, uniformly.
#[derive(Debug, Clone)]
pub struct HotspotIntegerGenerator {
    lower: u64,
    hot_interval: u64,
    cold_interval: u64,
    hot_opn_fraction: f64,
}

impl HotspotIntegerGenerator {
    /// YCSB swaps bounds given in the wrong order (we do too), and replaces a fraction outside
    /// `[0, 1]` by 0 with a warning (we refuse it).
    pub fn new(
        lb: u64,
        ub: u64,
        hot_data_fraction: f64,
        hot_opn_fraction: f64,
    ) -> Result<HotspotIntegerGenerator, GeneratorError> {
        for (what, value) in [("hot data fraction", hot_data_fraction), ("hot operation fraction", hot_opn_fraction)] {
            if !(0.0..=1.0).contains(&value) {
                return Err(GeneratorError::FractionOutOfRange { what, value });
            }
        }
        let (lower, upper) = if lb <= ub { (lb, ub) } else { (ub, lb) };
        let interval = (upper - lower).checked_add(1).ok_or(GeneratorError::RangeTooLarge)?;
        let hot_interval = ((interval as f64 * hot_data_fraction) as u64).min(interval);
        Ok(HotspotIntegerGenerator { lower, hot_interval, cold_interval: interval - hot_interval, hot_opn_fraction })
    }

    /// The number of hot values (the first ones of the range).
    pub fn hot_interval(&self) -> u64 {
        self.hot_interval
    }

    /// The next value. If the chosen set is empty (a data fraction of 0 or 1, or a tiny range)
    /// the draw goes to the other set, where YCSB would divide by zero.
    pub fn next<R: RandomSource>(&mut self, rng: &mut R) -> u64 {
        let want_hot = rng.next_f64() < self.hot_opn_fraction;
        if (want_hot && self.hot_interval > 0) || self.cold_interval == 0 {
            self.lower + below(rng, self.hot_interval)
        } else {
            self.lower + self.hot_interval + below(rng, self.cold_interval)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ycsb::rng::SeededRng;

    #[test]
    fn uniform_stays_in_range_and_reaches_both_ends() {
        let mut g = UniformLongGenerator::new(10, 14).unwrap();
        let mut rng = SeededRng::new(1);
        let mut seen = [false; 5];
        for _ in 0..1000 {
            let v = g.next(&mut rng);
            assert!((10..=14).contains(&v));
            seen[(v - 10) as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(UniformLongGenerator::new(3, 2).unwrap_err(), GeneratorError::NoItems);
        assert_eq!(UniformLongGenerator::new(0, u64::MAX).unwrap_err(), GeneratorError::RangeTooLarge);
    }

    #[test]
    fn hotspot_degenerate_sets_do_not_divide_by_zero() {
        let mut rng = SeededRng::new(2);
        let mut all_cold = HotspotIntegerGenerator::new(0, 99, 0.0, 0.8).unwrap();
        assert_eq!(all_cold.hot_interval(), 0);
        assert!((0..1000).all(|_| all_cold.next(&mut rng) < 100));
        let mut all_hot = HotspotIntegerGenerator::new(0, 99, 1.0, 0.2).unwrap();
        assert!((0..1000).all(|_| all_hot.next(&mut rng) < 100));
        let mut swapped = HotspotIntegerGenerator::new(99, 0, 0.2, 0.8).unwrap();
        assert_eq!(swapped.hot_interval(), 20);
        assert!((0..1000).all(|_| swapped.next(&mut rng) < 100));
    }

    #[test]
    fn hotspot_fractions_are_checked() {
        assert!(matches!(
            HotspotIntegerGenerator::new(0, 9, 1.5, 0.5),
            Err(GeneratorError::FractionOutOfRange { what: "hot data fraction", .. })
        ));
        assert!(matches!(
            HotspotIntegerGenerator::new(0, 9, 0.5, -0.1),
            Err(GeneratorError::FractionOutOfRange { what: "hot operation fraction", .. })
        ));
    }
}
