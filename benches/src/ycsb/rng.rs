//! The random source of the generators.
//!
//! YCSB draws from Java's `ThreadLocalRandom`, whose stream we cannot (and need not) reproduce. What
//! matters for a benchmark is that each driver thread has its own fast generator, and that a run can
//! be repeated: [`SeededRng::for_thread`] derives a thread's generator from a run seed and the thread
//! id. The generator is xoshiro256++ (Blackman and Vigna), seeded through SplitMix64 as its authors
//! recommend; both are written out here so that the stream never changes under us with a crate
//! upgrade.

/// What the generators need from a random source: uniform 64-bit words.
pub trait RandomSource {
    /// A uniformly distributed 64-bit word.
    fn next_u64(&mut self) -> u64;

    /// A uniformly distributed double in `[0, 1)` with 53 random bits, built the way Java's
    /// `Random.nextDouble` builds it.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// One step of SplitMix64: advances `state` and returns the next output.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seeded xoshiro256++ generator; one per driver thread.
#[derive(Debug, Clone)]
pub struct SeededRng {
    state: [u64; 4],
}

impl SeededRng {
    /// A generator whose whole stream is determined by `seed`.
    pub fn new(seed: u64) -> SeededRng {
        let mut sm = seed;
        let state = [splitmix64(&mut sm), splitmix64(&mut sm), splitmix64(&mut sm), splitmix64(&mut sm)];
        // SplitMix64 is a bijection of its counter, so four consecutive outputs are never all zero
        // (the one state xoshiro cannot leave).
        SeededRng { state }
    }

    /// The generator of driver thread `thread_id` in a run seeded with `run_seed`. The thread id is
    /// mixed before it is combined with the seed, so that neighbouring threads (and neighbouring
    /// seeds) start far apart in SplitMix64's sequence.
    pub fn for_thread(run_seed: u64, thread_id: u64) -> SeededRng {
        let mut mix = thread_id ^ 0x5CA1_10C0_FFEE_D00D;
        SeededRng::new(run_seed ^ splitmix64(&mut mix))
    }
}

impl RandomSource for SeededRng {
    fn next_u64(&mut self) -> u64 {
        let s = &mut self.state;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_reference_outputs() {
        // Outputs of the reference C implementation (Vigna, splitmix64.c) from state 0.
        let mut state = 0u64;
        assert_eq!(splitmix64(&mut state), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix64(&mut state), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(splitmix64(&mut state), 0x06C4_5D18_8009_454F);
    }

    #[test]
    fn xoshiro256plusplus_matches_reference_outputs() {
        // The reference xoshiro256plusplus.c with state {1, 2, 3, 4}.
        let mut rng = SeededRng { state: [1, 2, 3, 4] };
        let expected = [41943041u64, 58720359, 3588806011781223, 3591011842654386];
        for e in expected {
            assert_eq!(rng.next_u64(), e);
        }
    }

    #[test]
    fn same_seed_same_stream_and_threads_differ() {
        let a: Vec<u64> = (0..8)
            .map({
                let mut r = SeededRng::for_thread(7, 3);
                move |_| r.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..8)
            .map({
                let mut r = SeededRng::for_thread(7, 3);
                move |_| r.next_u64()
            })
            .collect();
        let c: Vec<u64> = (0..8)
            .map({
                let mut r = SeededRng::for_thread(7, 4);
                move |_| r.next_u64()
            })
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn next_f64_is_in_unit_interval() {
        let mut rng = SeededRng::new(1);
        for _ in 0..100_000 {
            let u = rng.next_f64();
            assert!((0.0..1.0).contains(&u));
        }
        struct Max;
        impl RandomSource for Max {
            fn next_u64(&mut self) -> u64 {
                u64::MAX
            }
        }
        assert!(Max.next_f64() < 1.0);
    }
}
