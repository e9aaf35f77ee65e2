//! `ZipfianGenerator`, `ScrambledZipfianGenerator` and `SkewedLatestGenerator`.
//!
//! The zipfian sampler is the one of Gray et al., "Quickly Generating Billion-Record Synthetic
//! Databases" (SIGMOD 1994), as YCSB implements it. It is exact for the two most popular items and
//! an approximation for the others: at θ = 0.99 it gives rank 3 about 20% more weight than a true
//! zipfian, rank 10 about 4% more, and ranks past 100 about 1% less. YCSB workloads are defined by
//! this sampler, so we keep it rather than a better one.

use super::counter::AcknowledgedCounterGenerator;
use super::GeneratorError;
use crate::ycsb::keys::fnvhash64;
use crate::ycsb::rng::RandomSource;

/// YCSB's default zipfian constant (`ZipfianGenerator.ZIPFIAN_CONSTANT`).
pub const ZIPFIAN_CONSTANT: f64 = 0.99;
/// The number of items the scrambled zipfian draws from before it hashes them into the key range
/// (`ScrambledZipfianGenerator.ITEM_COUNT`, 10^10).
pub const SCRAMBLED_ITEM_COUNT: u64 = 10_000_000_000;
/// ζ(10^10, 0.99), precomputed by YCSB (`ScrambledZipfianGenerator.ZETAN`).
pub const SCRAMBLED_ZETAN: f64 = 26.46902820178302;
/// Up to this many items [`zeta`] sums the series term by term as YCSB does; past it, it uses
/// [`zeta_euler_maclaurin`], which takes microseconds instead of minutes and is at least as
/// accurate as the long floating-point sum.
pub const ZETA_DIRECT_MAX: u64 = 100_000_000;

/// `zetan + Σ_{i=start+1}^{n} 1/i^θ`: YCSB's `zetastatic(st, n, theta, initialsum)`, which extends
/// a zeta value computed for `start` items to `n` items.
pub fn zeta_incremental(start: u64, n: u64, theta: f64, initial: f64) -> f64 {
    let mut sum = initial;
    for i in start..n {
        sum += 1.0 / ((i + 1) as f64).powf(theta);
    }
    sum
}

/// ζ(n, θ) = Σ_{i=1}^{n} 1/i^θ: summed directly for up to [`ZETA_DIRECT_MAX`] items (as YCSB's
/// `zetastatic(n, theta)`), by Euler–Maclaurin beyond.
pub fn zeta(n: u64, theta: f64) -> f64 {
    if n <= ZETA_DIRECT_MAX {
        zeta_incremental(0, n, theta, 0.0)
    } else {
        zeta_euler_maclaurin(n, theta)
    }
}

/// ζ(n, θ) by the Euler–Maclaurin formula: the first 999 terms summed directly, the rest as the
/// integral of x^-θ plus end corrections up to the fifth derivative. With the tail starting at
/// 1000 the neglected remainder is below 1e-20, so the result is as exact as f64 allows.
pub fn zeta_euler_maclaurin(n: u64, theta: f64) -> f64 {
    const HEAD: u64 = 1000;
    if n <= HEAD {
        return zeta_incremental(0, n, theta, 0.0);
    }
    let head = zeta_incremental(0, HEAD - 1, theta, 0.0);
    let (a, b, s) = (HEAD as f64, n as f64, theta);
    let f = |x: f64| x.powf(-s);
    // ∫_a^b x^-s dx = a^(1-s) (e^((1-s) ln(b/a)) - 1) / (1-s), written with exp_m1 so that it
    // stays accurate for s near 1 (the benchmark's 0.99), and ln(b/a) at s = 1.
    let log_ratio = (b / a).ln();
    let integral = if s == 1.0 { log_ratio } else { a.powf(1.0 - s) * ((1.0 - s) * log_ratio).exp_m1() / (1.0 - s) };
    // f^(k)(x) = (-1)^k s(s+1)...(s+k-1) x^(-s-k).
    let d1 = |x: f64| -s * x.powf(-s - 1.0);
    let d3 = |x: f64| -s * (s + 1.0) * (s + 2.0) * x.powf(-s - 3.0);
    let d5 = |x: f64| -s * (s + 1.0) * (s + 2.0) * (s + 3.0) * (s + 4.0) * x.powf(-s - 5.0);
    let tail =
        integral + (f(a) + f(b)) / 2.0 + (d1(b) - d1(a)) / 12.0 - (d3(b) - d3(a)) / 720.0 + (d5(b) - d5(a)) / 30240.0;
    head + tail
}

fn check_theta(theta: f64) -> Result<(), GeneratorError> {
    if theta.is_finite() && theta >= 0.0 && theta != 1.0 {
        Ok(())
    } else {
        Err(GeneratorError::InvalidZipfianConstant(theta))
    }
}

fn item_count(min: u64, max: u64) -> Result<u64, GeneratorError> {
    if min > max {
        return Err(GeneratorError::NoItems);
    }
    (max - min).checked_add(1).ok_or(GeneratorError::RangeTooLarge)
}

/// Zipfian over `[base, base + items)`, item `base` the most popular (YCSB `ZipfianGenerator`).
///
/// Cloning is cheap: clone one generator per thread instead of recomputing zeta.
#[derive(Debug, Clone)]
pub struct ZipfianGenerator {
    /// The item count the generator was built with (YCSB's `items`).
    items: u64,
    base: u64,
    theta: f64,
    zeta2theta: f64,
    half_pow_theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
    /// The item count `zetan` was computed for.
    count_for_zeta: u64,
}

impl ZipfianGenerator {
    /// Zipfian over `[0, items)` with constant `theta`.
    pub fn new(items: u64, theta: f64) -> Result<ZipfianGenerator, GeneratorError> {
        let max = items.checked_sub(1).ok_or(GeneratorError::NoItems)?;
        ZipfianGenerator::with_range(0, max, theta)
    }

    /// Zipfian over `[min, max]` (inclusive) with constant `theta`; computes ζ(max - min + 1, θ).
    pub fn with_range(min: u64, max: u64, theta: f64) -> Result<ZipfianGenerator, GeneratorError> {
        check_theta(theta)?;
        let items = item_count(min, max)?;
        ZipfianGenerator::with_zetan(min, max, theta, zeta(items, theta))
    }

    /// Zipfian over `[min, max]` with a precomputed `zetan` = ζ(max - min + 1, θ), or any value
    /// the caller wants to use in its place (YCSB's scrambled zipfian passes ζ(10^10) for 10^10 + 1
    /// items).
    pub fn with_zetan(min: u64, max: u64, theta: f64, zetan: f64) -> Result<ZipfianGenerator, GeneratorError> {
        check_theta(theta)?;
        let items = item_count(min, max)?;
        let zeta2theta = zeta_incremental(0, 2, theta, 0.0);
        let mut generator = ZipfianGenerator {
            items,
            base: min,
            theta,
            zeta2theta,
            half_pow_theta: 0.5f64.powf(theta),
            alpha: 1.0 / (1.0 - theta),
            zetan,
            eta: 0.0,
            count_for_zeta: items,
        };
        generator.eta = generator.eta_for(zetan);
        Ok(generator)
    }

    /// Gray's η. YCSB always uses the construction-time item count here, also when it extends
    /// zeta for a larger count; we do the same.
    fn eta_for(&self, zetan: f64) -> f64 {
        (1.0 - (2.0 / self.items as f64).powf(1.0 - self.theta)) / (1.0 - self.zeta2theta / zetan)
    }

    /// The next item (YCSB `nextValue`).
    pub fn next<R: RandomSource>(&mut self, rng: &mut R) -> u64 {
        self.next_with_count(self.items, rng)
    }

    /// The next item of a zipfian over `item_count` items (YCSB `nextLong(itemcount)`). When the
    /// count grew since the last call, zeta is extended incrementally; a smaller count reuses the
    /// larger count's zeta (YCSB's default, `allowitemcountdecrease = false`).
    pub fn next_with_count<R: RandomSource>(&mut self, item_count: u64, rng: &mut R) -> u64 {
        if item_count > self.count_for_zeta {
            self.zetan = zeta_incremental(self.count_for_zeta, item_count, self.theta, self.zetan);
            self.count_for_zeta = item_count;
            self.eta = self.eta_for(self.zetan);
        }
        let u = rng.next_f64();
        let uz = u * self.zetan;
        if uz < 1.0 {
            return self.base;
        }
        if uz < 1.0 + self.half_pow_theta {
            return self.base + 1;
        }
        let offset = (item_count as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        // In exact arithmetic offset < item_count; rounding at u close to 1 could reach it.
        self.base + offset.min(item_count.saturating_sub(1))
    }

    /// The item count the generator was built for.
    pub fn items(&self) -> u64 {
        self.items
    }

    /// The zipfian constant θ.
    pub fn theta(&self) -> f64 {
        self.theta
    }

    /// Gray's α = 1 / (1 - θ).
    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    /// Gray's η for the current item count.
    pub fn eta(&self) -> f64 {
        self.eta
    }

    /// ζ(n, θ) for the current item count.
    pub fn zetan(&self) -> f64 {
        self.zetan
    }

    /// ζ(2, θ) = 1 + 2^-θ.
    pub fn zeta2theta(&self) -> f64 {
        self.zeta2theta
    }
}

/// Zipfian popularity spread over `[min, max]` by hashing (YCSB `ScrambledZipfianGenerator`): an
/// item drawn from a zipfian over 10^10 + 1 items is mapped to `min + fnvhash64(item) % count`,
/// so the popular keys are scattered rather than the lowest numbers.
#[derive(Debug, Clone)]
pub struct ScrambledZipfianGenerator {
    generator: ZipfianGenerator,
    min: u64,
    item_count: u64,
}

impl ScrambledZipfianGenerator {
    /// Over `[min, max]` with constant `theta`. At θ = 0.99 it uses YCSB's precomputed
    /// [`SCRAMBLED_ZETAN`]; for another θ, YCSB sums 10^10 terms (minutes), where we use the
    /// Euler–Maclaurin value of the same sum.
    pub fn new(min: u64, max: u64, theta: f64) -> Result<ScrambledZipfianGenerator, GeneratorError> {
        let item_count = item_count(min, max)?;
        // YCSB builds ZipfianGenerator(0, ITEM_COUNT, θ): ITEM_COUNT + 1 items.
        let generator = if theta == ZIPFIAN_CONSTANT {
            ZipfianGenerator::with_zetan(0, SCRAMBLED_ITEM_COUNT, theta, SCRAMBLED_ZETAN)?
        } else {
            ZipfianGenerator::with_range(0, SCRAMBLED_ITEM_COUNT, theta)?
        };
        Ok(ScrambledZipfianGenerator { generator, min, item_count })
    }

    /// The next value in `[min, max]`.
    pub fn next<R: RandomSource>(&mut self, rng: &mut R) -> u64 {
        let item = self.generator.next(rng);
        // Java's `fnvhash64(item) % itemcount` is negative for the one hash equal to i64::MIN;
        // unsigned_abs keeps the value in range there.
        self.min + fnvhash64(item as i64).unsigned_abs() % self.item_count
    }

    /// The underlying zipfian over 10^10 + 1 items.
    pub fn zipfian(&self) -> &ZipfianGenerator {
        &self.generator
    }
}

/// Zipfian popularity favouring the most recently inserted keys (YCSB `SkewedLatestGenerator`):
/// with `max` the highest acknowledged insert, it returns `max - z`, `z` zipfian over `max` items.
///
/// Each thread holds its own copy (the zipfian's zeta is extended as inserts are acknowledged);
/// the counter is shared.
#[derive(Debug, Clone)]
pub struct SkewedLatestGenerator {
    zipfian: ZipfianGenerator,
}

impl SkewedLatestGenerator {
    /// Over the keys acknowledged so far by `basis`, with YCSB's constant 0.99 unless told
    /// otherwise. Computes ζ over `basis.last_value()` items (YCSB's construction).
    pub fn new(basis: &AcknowledgedCounterGenerator, theta: f64) -> Result<SkewedLatestGenerator, GeneratorError> {
        // YCSB builds ZipfianGenerator(lastValue()); with a single record that is 0 items, whose
        // only draw is 0, the same as a generator over 1 item.
        let items = basis.last_value().unwrap_or(0).max(1);
        Ok(SkewedLatestGenerator { zipfian: ZipfianGenerator::new(items, theta)? })
    }

    /// The next key, or `None` while `basis` has no acknowledged value at all.
    pub fn next<R: RandomSource>(&mut self, basis: &AcknowledgedCounterGenerator, rng: &mut R) -> Option<u64> {
        let max = basis.last_value()?;
        Some(max - self.zipfian.next_with_count(max, rng))
    }

    /// The zipfian over distances from the latest key.
    pub fn zipfian(&self) -> &ZipfianGenerator {
        &self.zipfian
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ycsb::rng::SeededRng;

    #[test]
    fn theta_and_range_are_checked() {
        assert_eq!(ZipfianGenerator::new(10, 1.0).unwrap_err(), GeneratorError::InvalidZipfianConstant(1.0));
        assert!(ZipfianGenerator::new(10, -0.1).is_err());
        assert!(ZipfianGenerator::new(10, f64::NAN).is_err());
        assert_eq!(ZipfianGenerator::new(0, 0.99).unwrap_err(), GeneratorError::NoItems);
        assert_eq!(ZipfianGenerator::with_range(5, 4, 0.99).unwrap_err(), GeneratorError::NoItems);
        assert_eq!(ZipfianGenerator::with_range(0, u64::MAX, 0.99).unwrap_err(), GeneratorError::RangeTooLarge);
    }

    #[test]
    fn draws_stay_in_range() {
        let mut rng = SeededRng::new(3);
        for theta in [0.0, 0.5, 0.99, 1.01, 2.0] {
            let mut z = ZipfianGenerator::with_range(100, 109, theta).unwrap();
            for _ in 0..20_000 {
                let v = z.next(&mut rng);
                assert!((100..=109).contains(&v), "theta {theta}: {v}");
            }
        }
        let mut one = ZipfianGenerator::new(1, 0.99).unwrap();
        assert!((0..100).all(|_| one.next(&mut rng) == 0));
    }

    #[test]
    fn incremental_zeta_extends_the_sum() {
        let mut z = ZipfianGenerator::new(1000, 0.99).unwrap();
        let mut rng = SeededRng::new(9);
        z.next_with_count(1500, &mut rng);
        let direct = zeta_incremental(0, 1500, 0.99, 0.0);
        assert!((z.zetan() - direct).abs() < 1e-12 * direct);
        // A smaller count keeps the larger zeta.
        z.next_with_count(1200, &mut rng);
        assert_eq!(z.zetan(), direct);
    }

    #[test]
    fn latest_returns_only_acknowledged_keys() {
        let basis = AcknowledgedCounterGenerator::new(100);
        let mut latest = SkewedLatestGenerator::new(&basis, ZIPFIAN_CONSTANT).unwrap();
        let mut rng = SeededRng::new(5);
        let in_flight = basis.next_value();
        for _ in 0..10_000 {
            let k = latest.next(&basis, &mut rng).unwrap();
            assert!(k <= 99, "{k} is not acknowledged");
        }
        basis.acknowledge(in_flight).unwrap();
        assert!((0..10_000).any(|_| latest.next(&basis, &mut rng) == Some(100)));
    }

    #[test]
    fn latest_over_a_single_record_returns_it() {
        let basis = AcknowledgedCounterGenerator::new(1);
        let mut latest = SkewedLatestGenerator::new(&basis, ZIPFIAN_CONSTANT).unwrap();
        let mut rng = SeededRng::new(5);
        assert!((0..100).all(|_| latest.next(&basis, &mut rng) == Some(0)));
        let empty = AcknowledgedCounterGenerator::new(0);
        assert_eq!(latest.next(&empty, &mut rng), None);
    }
}
