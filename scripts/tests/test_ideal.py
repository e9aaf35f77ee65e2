"""The ideal-hit-ratio model against brute force: every rank of a small sampler hashed and counted."""

import struct
import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from figures import ideal  # noqa: E402
from figures.ideal import GraySampler, IdealError, ideal_hit_ratio  # noqa: E402


def brute_fnvhash64(rank: int) -> int:
    """YCSB's fnvhash64 written from its definition (FNV-1a over the long's bytes, then Java's abs),
    independently of the model's bit-twiddling version; returned as Rust's unsigned_abs."""
    h = 0xCBF29CE484222325
    for byte in struct.pack("<q", rank):
        h = ((h ^ byte) * 0x100000001B3) % (1 << 64)
    signed = struct.unpack("<q", struct.pack("<Q", h))[0]
    return abs(signed)


def brute_hit_ratio(sampler: GraySampler, records: int, slots: int, keyspace: int) -> float:
    """Hash every rank, keep the keys below `records` (the others are drawn again), renormalise,
    and sum the `slots` largest key probabilities."""
    masses = [0.0] * records
    previous = 0.0
    for rank in range(sampler.items):
        c = sampler.cdf(rank + 1)
        key = brute_fnvhash64(rank) % keyspace
        if key < records:
            masses[key] += c - previous
        previous = c
    masses.sort(reverse=True)
    return sum(masses[:slots]) / sum(masses)


def has_numpy() -> bool:
    try:
        import numpy  # noqa: F401
    except ImportError:
        return False
    return True


class Hash(unittest.TestCase):
    def test_fnvhash64_matches_the_rust_constants(self):
        # benches/tests/ycsb_constants.rs: the first key names YCSB loads are user<fnvhash64(k)>.
        self.assertEqual(ideal.fnvhash64_unsigned_abs(0), 6_284_781_860_667_377_211)
        self.assertEqual(ideal.fnvhash64_unsigned_abs(1), 8_517_097_267_634_966_620)
        self.assertEqual(ideal.fnvhash64_unsigned_abs(42), 55_488_592_825_689_361)
        for r in range(0, 100_000, 997):
            self.assertEqual(ideal.fnvhash64_unsigned_abs(r), brute_fnvhash64(r))


class Sampler(unittest.TestCase):
    def test_euler_maclaurin_agrees_with_the_direct_sum(self):
        for theta in (0.5, 0.99, 1.01):
            direct = ideal.zeta_direct(200_000, theta)
            self.assertAlmostEqual(ideal.zeta_euler_maclaurin(200_000, theta) / direct, 1.0, places=12)

    def test_rank_probabilities_are_those_of_the_generator_code(self):
        """The interval probabilities equal the share of a fine grid of u that `draw` (the Rust
        code line by line) sends to each rank: an interval of length L holds L*G +- 1 midpoints."""
        grid = 200_000
        for theta in (0.5, 0.99, 1.01, 1.5):
            sampler = GraySampler.scrambled(theta, items=300)
            counts = [0] * sampler.items
            for i in range(grid):
                counts[sampler.draw((i + 0.5) / grid)] += 1
            pmf = sampler.pmf(sampler.items)
            self.assertAlmostEqual(sum(pmf), 1.0, places=12)
            for rank, (p, n) in enumerate(zip(pmf, counts)):
                self.assertLessEqual(abs(p - n / grid), 1.0 / grid, f"θ {theta} rank {rank}: {p} vs {n / grid}")

    def test_scrambled_uses_ycsb_zeta_at_099(self):
        self.assertEqual(GraySampler.scrambled(0.99).zetan, ideal.SCRAMBLED_ZETAN)
        self.assertEqual(GraySampler.scrambled(0.99).items, 10**10 + 1)
        with self.assertRaises(IdealError):
            GraySampler.scrambled(1.0)


class HitRatio(unittest.TestCase):
    CASES = [  # (items, records, slots, theta)
        (100_000, 2_000, 224, 0.99),
        (100_000, 2_000, 600, 0.5),
        (20_000, 2_000, 100, 1.01),
    ]

    def test_exact_mode_equals_brute_force(self):
        for items, records, slots, theta in self.CASES:
            sampler = GraySampler.scrambled(theta, items=items)
            expected = brute_hit_ratio(sampler, records, slots, records + 1)
            got = ideal_hit_ratio(records, theta, slots, head=items, items=items, use_numpy=False)
            self.assertTrue(got.exact)
            self.assertEqual(got.error_bound, 0.0)
            self.assertAlmostEqual(got.hit_ratio, expected, places=12, msg=(items, records, slots, theta))
            if has_numpy():
                fast = ideal_hit_ratio(records, theta, slots, head=items, items=items, use_numpy=True)
                self.assertAlmostEqual(fast.hit_ratio, expected, places=10)

    def test_a_larger_key_space_is_conditioned_on_the_records(self):
        items, records, slots, theta = 20_000, 1_000, 112, 0.99
        sampler = GraySampler.scrambled(theta, items=items)
        expected = brute_hit_ratio(sampler, records, slots, 1_500)
        got = ideal_hit_ratio(records, theta, slots, keyspace=1_500, head=items, items=items, use_numpy=False)
        self.assertAlmostEqual(got.hit_ratio, expected, places=12)

    def test_the_spread_tail_stays_within_its_bound(self):
        """Hash only the first tenth of the ranks: the estimate is off by no more than its bound,
        and the bound is small enough to mean something."""
        for items, records, slots, theta in self.CASES:
            exact = ideal_hit_ratio(records, theta, slots, head=items, items=items, use_numpy=False).hit_ratio
            est = ideal_hit_ratio(records, theta, slots, head=items // 10, items=items, use_numpy=False)
            self.assertFalse(est.exact)
            self.assertLess(est.error_bound, 0.05, (items, records, slots, theta))
            self.assertLessEqual(abs(est.hit_ratio - exact), est.error_bound, (items, records, slots, theta, exact, est))

    def test_more_slots_or_more_skew_hit_more(self):
        kw = dict(head=20_000, items=20_000, use_numpy=False)
        small = ideal_hit_ratio(1_000, 0.99, 50, **kw).hit_ratio
        large = ideal_hit_ratio(1_000, 0.99, 200, **kw).hit_ratio
        flat = ideal_hit_ratio(1_000, 0.5, 200, **kw).hit_ratio
        self.assertLess(small, large)
        self.assertLess(flat, large)
        self.assertEqual(ideal_hit_ratio(1_000, 0.99, 1_000, **kw).hit_ratio, 1.0)

    def test_bad_parameters_are_refused(self):
        with self.assertRaises(IdealError):
            ideal_hit_ratio(0, 0.99, 10)
        with self.assertRaises(IdealError):
            ideal_hit_ratio(100, 0.99, 10, keyspace=50)
        with self.assertRaises(IdealError):
            ideal_hit_ratio(100, 0.99, 10, head=10**7, use_numpy=False)


if __name__ == "__main__":
    unittest.main()
