//! `DiscreteGenerator`: picks one of a few values with given weights (YCSB's operation chooser).

use super::GeneratorError;
use crate::ycsb::rng::RandomSource;

/// Weighted choice among a few values (YCSB `DiscreteGenerator`). Weights need not sum to 1: like
/// YCSB, each is divided by their sum. The normalised weights are computed once, not per draw.
#[derive(Debug, Clone)]
pub struct DiscreteGenerator<T> {
    /// (weight / sum of weights, value), in the order given.
    choices: Vec<(f64, T)>,
}

impl<T: Copy> DiscreteGenerator<T> {
    /// A chooser over `(weight, value)` pairs. Weights must be finite and non-negative; zero
    /// weights are left out (YCSB only adds positive proportions); at least one must be positive.
    pub fn new(weighted: impl IntoIterator<Item = (f64, T)>) -> Result<DiscreteGenerator<T>, GeneratorError> {
        let mut choices: Vec<(f64, T)> = Vec::new();
        for (weight, value) in weighted {
            if !weight.is_finite() || weight < 0.0 {
                return Err(GeneratorError::NoPositiveWeight);
            }
            if weight > 0.0 {
                choices.push((weight, value));
            }
        }
        let sum: f64 = choices.iter().map(|(w, _)| w).sum();
        if choices.is_empty() || !sum.is_finite() {
            return Err(GeneratorError::NoPositiveWeight);
        }
        for (w, _) in &mut choices {
            *w /= sum;
        }
        Ok(DiscreteGenerator { choices })
    }

    /// The next value: walk the normalised weights, subtracting each from a uniform draw until it
    /// falls below one, as YCSB does.
    pub fn next<R: RandomSource>(&self, rng: &mut R) -> T {
        let mut val = rng.next_f64();
        for &(weight, value) in &self.choices {
            if val < weight {
                return value;
            }
            val -= weight;
        }
        // Only reachable through rounding in the subtractions (YCSB throws here); the last
        // value is the one whose interval the draw ran past.
        self.choices[self.choices.len() - 1].1
    }

    /// The normalised weights and their values.
    pub fn choices(&self) -> &[(f64, T)] {
        &self.choices
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ycsb::rng::SeededRng;

    #[test]
    fn weights_are_normalised_and_zeros_dropped() {
        let g = DiscreteGenerator::new([(2.0, 'a'), (0.0, 'b'), (6.0, 'c')]).unwrap();
        assert_eq!(g.choices(), &[(0.25, 'a'), (0.75, 'c')]);
        let mut rng = SeededRng::new(4);
        let n = 100_000;
        let a = (0..n).filter(|_| g.next(&mut rng) == 'a').count() as f64 / n as f64;
        // sigma = sqrt(0.25 * 0.75 / n) ≈ 0.00137
        assert!((a - 0.25).abs() < 5.0 * 0.00137, "{a}");
    }

    #[test]
    fn bad_weights_are_refused() {
        assert_eq!(DiscreteGenerator::<u8>::new([]).unwrap_err(), GeneratorError::NoPositiveWeight);
        assert!(DiscreteGenerator::new([(0.0, 1)]).is_err());
        assert!(DiscreteGenerator::new([(-1.0, 1), (2.0, 2)]).is_err());
        assert!(DiscreteGenerator::new([(f64::NAN, 1)]).is_err());
        assert!(DiscreteGenerator::new([(f64::MAX, 1), (f64::MAX, 2)]).is_err());
    }
}
