//! YCSB's constants and hashes, checked against independent computations and published values.

use scalio_bench::ycsb::generator::{
    zeta, zeta_euler_maclaurin, zeta_incremental, ScrambledZipfianGenerator, ZipfianGenerator, SCRAMBLED_ITEM_COUNT,
    SCRAMBLED_ZETAN, ZIPFIAN_CONSTANT,
};
use scalio_bench::ycsb::keys::{build_key_name, fnv1a64, fnvhash64, store_key};

/// Σ_{i=1}^{n} i^-θ summed from the smallest term up with Kahan compensation: a different
/// order and method from the generator's running sum.
fn reference_zeta(n: u64, theta: f64) -> f64 {
    let (mut sum, mut compensation) = (0.0f64, 0.0f64);
    for i in (1..=n).rev() {
        let y = (i as f64).powf(-theta) - compensation;
        let t = sum + y;
        compensation = (t - sum) - y;
        sum = t;
    }
    sum
}

fn assert_rel_close(actual: f64, expected: f64, tolerance: f64, what: &str) {
    let rel = ((actual - expected) / expected).abs();
    assert!(rel <= tolerance, "{what}: {actual} vs {expected} (relative error {rel:e} > {tolerance:e})");
}

#[test]
fn zeta_matches_an_independent_sum() {
    for (n, theta) in [(1_000_000, 0.99), (1_000_000, 0.5), (100_000, 1.01), (1_000, 0.0)] {
        let expected = reference_zeta(n, theta);
        assert_rel_close(zeta(n, theta), expected, 1e-9, &format!("zeta({n}, {theta})"));
        assert_rel_close(zeta_euler_maclaurin(n, theta), expected, 1e-12, &format!("euler-maclaurin({n}, {theta})"));
    }
    // Extending a zeta incrementally gives the sum over the larger count.
    let part = zeta_incremental(0, 400_000, 0.99, 0.0);
    assert_rel_close(
        zeta_incremental(400_000, 1_000_000, 0.99, part),
        reference_zeta(1_000_000, 0.99),
        1e-9,
        "incremental",
    );
}

#[test]
fn ycsb_precomputed_zetan_is_zeta_of_ten_billion() {
    // The constant is YCSB's, digit for digit.
    assert_eq!(SCRAMBLED_ZETAN, 26.46902820178302);
    assert_eq!(SCRAMBLED_ITEM_COUNT, 10_000_000_000);
    // Summing 10^10 terms takes minutes; Euler-Maclaurin (checked against direct sums above)
    // reproduces YCSB's value.
    assert_rel_close(zeta_euler_maclaurin(SCRAMBLED_ITEM_COUNT, 0.99), SCRAMBLED_ZETAN, 1e-10, "zeta(1e10, 0.99)");
    // And the scrambled generator uses it at θ = 0.99, over 10^10 + 1 items as YCSB does.
    let g = ScrambledZipfianGenerator::new(0, 999, ZIPFIAN_CONSTANT).unwrap();
    assert_eq!(g.zipfian().zetan(), SCRAMBLED_ZETAN);
    assert_eq!(g.zipfian().items(), SCRAMBLED_ITEM_COUNT + 1);
    // Another θ computes its own zeta over the same items, quickly.
    let g = ScrambledZipfianGenerator::new(0, 999, 0.5).unwrap();
    let direct_estimate = 2.0 * (1e10f64).sqrt(); // ζ(n, 0.5) ≈ 2√n + ζ(0.5) for large n
    assert_rel_close(g.zipfian().zetan(), direct_estimate - 1.4603545088095868, 1e-9, "zeta(1e10+1, 0.5)");
}

#[test]
fn zipfian_constants_for_known_inputs() {
    // Values computed independently (Python, same formulas as Gray et al. / YCSB).
    let cases = [
        // items, θ, ζ(n), ζ(2), α, η
        (1_000u64, 0.99, 7.728953217284729, 1.5034777750283594, 99.99999999999991, 0.07480608670689805),
        (1_000_000, 0.99, 15.391849746037371, 1.5034777750283594, 99.99999999999991, 0.1362913333941101),
        (1_000, 0.5, 61.80100876524318, 1.7071067811865475, 2.0, 0.9824155477100374),
    ];
    for (items, theta, zetan, zeta2, alpha, eta) in cases {
        let g = ZipfianGenerator::new(items, theta).unwrap();
        assert_rel_close(g.zetan(), zetan, 1e-12, "zetan");
        assert_rel_close(g.zeta2theta(), zeta2, 1e-15, "zeta2theta");
        assert_rel_close(g.alpha(), alpha, 1e-15, "alpha");
        assert_rel_close(g.eta(), eta, 1e-10, "eta");
        assert_eq!(g.theta(), theta);
    }
}

#[test]
fn fnv1a64_published_vectors() {
    // From the FNV reference test suite (Noll): FNV-1a 64-bit.
    assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
}

/// YCSB's `Utils.fnvhash64` as the Java reads: mask the low byte, shift right, eight times.
fn java_fnvhash64(mut val: i64) -> i64 {
    let mut hash: i64 = 0xCBF2_9CE4_8422_2325u64 as i64;
    for _ in 0..8 {
        let octet = val & 0xff;
        val >>= 8;
        hash ^= octet;
        hash = hash.wrapping_mul(1_099_511_628_211);
    }
    hash.wrapping_abs()
}

#[test]
fn fnvhash64_of_longs() {
    for v in [0i64, 1, 2, 42, 1000, 19_999_999, -1, i64::MAX, i64::MIN, 0x0102_0304_0506_0708] {
        assert_eq!(fnvhash64(v), java_fnvhash64(v), "fnvhash64({v})");
        assert!(fnvhash64(v) >= 0 || fnvhash64(v) == i64::MIN);
    }
    assert_eq!(fnvhash64(0), 6_284_781_860_667_377_211);
}

#[test]
fn build_key_name_like_ycsb() {
    // "user6284781860667377211" is the first key YCSB's load phase inserts (keynum 0, hashed).
    assert_eq!(build_key_name(0, 1, false).as_str(), "user6284781860667377211");
    assert_eq!(build_key_name(1, 1, false).as_str(), "user8517097267634966620");
    assert_eq!(build_key_name(42, 1, false).as_str(), "user55488592825689361");
    assert_eq!(build_key_name(42, 20, false).as_str(), "user00055488592825689361");
    assert_eq!(build_key_name(42, 1, true).as_str(), "user42");
    assert_eq!(build_key_name(42, 10, true).as_str(), "user0000000042");
    for k in [0u64, 7, 123_456, 19_999_999] {
        let name = build_key_name(k, 1, false);
        assert_eq!(name.as_str(), format!("user{}", java_fnvhash64(k as i64)));
        assert_eq!(name.store_key(), store_key(name.as_str().as_bytes()));
        assert_eq!(name.store_key().len(), 16);
    }
}
