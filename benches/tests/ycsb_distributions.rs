//! Draw counts of YCSB's generators against their distributions, within statistical tolerances.
//!
//! Seeds are fixed, so the tests are deterministic; the tolerances (5 standard deviations, or a
//! chi-square 5 deviations from its mean) are what a correct generator passes with any seed.

use scalio_bench::ycsb::generator::{
    AcknowledgedCounterGenerator, HotspotIntegerGenerator, ScrambledZipfianGenerator, SkewedLatestGenerator,
    UniformLongGenerator, ZipfianGenerator, SCRAMBLED_ITEM_COUNT, SCRAMBLED_ZETAN, ZIPFIAN_CONSTANT,
};
use scalio_bench::ycsb::keys::fnvhash64;
use scalio_bench::ycsb::rng::SeededRng;

const DRAWS: u64 = 1_000_000;

/// Σ_{i=1}^{n} i^-θ, summed independently of the generator.
fn reference_zeta(n: u64, theta: f64) -> f64 {
    (1..=n).rev().map(|i| (i as f64).powf(-theta)).sum()
}

/// The ideal zipfian probability of rank `rank` (from 1).
fn ideal(rank: u64, theta: f64, zetan: f64) -> f64 {
    1.0 / ((rank as f64).powf(theta) * zetan)
}

/// The exact probability that Gray's sampler returns offset `k` (from 0), derived from its closed
/// form: the two first offsets come from the intervals [0, 1/ζ) and [1/ζ, (1 + 2^-θ)/ζ) of
/// u·ζ; past them, offset ≤ k exactly when u < (((k+1)/count)^(1-θ) - 1 + η) / η.
/// `eta_items` is the item count η was computed with (YCSB keeps the construction-time count).
fn gray_probability(k: u64, count: u64, eta_items: u64, theta: f64, zetan: f64) -> f64 {
    let zeta2 = 1.0 + 0.5f64.powf(theta);
    let eta = (1.0 - (2.0 / eta_items as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan);
    let first_two = zeta2 / zetan;
    let below = |k: u64| ((((k + 1) as f64 / count as f64).powf(1.0 - theta) - 1.0 + eta) / eta).clamp(first_two, 1.0);
    match k {
        0 => 1.0 / zetan,
        1 => 0.5f64.powf(theta) / zetan,
        _ => below(k) - below(k - 1),
    }
}

fn sigma(p: f64, n: u64) -> f64 {
    (n as f64 * p * (1.0 - p)).sqrt()
}

fn assert_count_near(count: u64, p: f64, n: u64, what: &str) {
    let expected = p * n as f64;
    let sd = sigma(p, n);
    assert!(
        (count as f64 - expected).abs() <= 5.0 * sd,
        "{what}: {count} draws, expected {expected:.0} ± {sd:.0} (5σ = {:.0})",
        5.0 * sd
    );
}

/// Pearson's chi-square of `counts` against equal probabilities, checked to lie within 5
/// standard deviations of its mean (too low is as suspicious as too high).
fn assert_uniform(counts: &[u64], what: &str) {
    let total: u64 = counts.iter().sum();
    let expected = total as f64 / counts.len() as f64;
    let chi2: f64 = counts.iter().map(|&c| (c as f64 - expected).powi(2) / expected).sum();
    let dof = (counts.len() - 1) as f64;
    let sd = (2.0 * dof).sqrt();
    assert!((chi2 - dof).abs() <= 5.0 * sd, "{what}: chi-square {chi2:.1} with {dof} degrees of freedom");
}

#[test]
fn zipfian_rank_frequencies() {
    let (n, theta) = (1000u64, 0.99);
    let zetan = reference_zeta(n, theta);
    let mut generator = ZipfianGenerator::new(n, theta).unwrap();
    let mut rng = SeededRng::new(11);
    let mut counts = vec![0u64; n as usize];
    for _ in 0..DRAWS {
        counts[generator.next(&mut rng) as usize] += 1;
    }
    // The two most popular items are exact in Gray's method.
    for rank in 1..=2 {
        assert_count_near(counts[rank as usize - 1], ideal(rank, theta, zetan), DRAWS, &format!("rank {rank}"));
    }
    for rank in 3..=10u64 {
        let count = counts[rank as usize - 1];
        // The others follow Gray's approximation exactly...
        let gray = gray_probability(rank - 1, n, n, theta, zetan);
        assert_count_near(count, gray, DRAWS, &format!("rank {rank} (Gray)"));
        // ...which is within 25% of a true zipfian (it gives rank 3 about 20% more).
        let ratio = count as f64 / (ideal(rank, theta, zetan) * DRAWS as f64);
        assert!((0.95..1.25).contains(&ratio), "rank {rank}: {ratio} of the ideal zipfian");
    }
    // The whole profile: every rank's share in Gray's distribution, as one chi-square.
    let chi2: f64 = (0..n)
        .map(|k| {
            let e = gray_probability(k, n, n, theta, zetan) * DRAWS as f64;
            (counts[k as usize] as f64 - e).powi(2) / e
        })
        .sum();
    let dof = (n - 1) as f64;
    assert!((chi2 - dof).abs() <= 5.0 * (2.0 * dof).sqrt(), "zipfian chi-square {chi2:.1}");
}

#[test]
fn zipfian_with_another_constant() {
    let (n, theta) = (100u64, 0.5);
    let zetan = reference_zeta(n, theta);
    let mut generator = ZipfianGenerator::with_range(50, 149, theta).unwrap();
    let mut rng = SeededRng::new(12);
    let mut counts = vec![0u64; n as usize];
    for _ in 0..DRAWS {
        counts[(generator.next(&mut rng) - 50) as usize] += 1;
    }
    for k in 0..10 {
        assert_count_near(counts[k as usize], gray_probability(k, n, n, theta, zetan), DRAWS, &format!("offset {k}"));
    }
}

#[test]
fn uniform_is_uniform() {
    let mut generator = UniformLongGenerator::new(1000, 1999).unwrap();
    let mut rng = SeededRng::new(13);
    let mut counts = vec![0u64; 1000];
    for _ in 0..DRAWS {
        counts[(generator.next(&mut rng) - 1000) as usize] += 1;
    }
    assert_uniform(&counts, "uniform");
}

#[test]
fn hotspot_sends_the_hot_fraction_to_the_hot_set() {
    let mut generator = HotspotIntegerGenerator::new(0, 999, 0.2, 0.8).unwrap();
    assert_eq!(generator.hot_interval(), 200);
    let mut rng = SeededRng::new(14);
    let mut counts = vec![0u64; 1000];
    for _ in 0..DRAWS {
        counts[generator.next(&mut rng) as usize] += 1;
    }
    let hot: u64 = counts[..200].iter().sum();
    assert_count_near(hot, 0.8, DRAWS, "hot set");
    assert_uniform(&counts[..200], "within the hot set");
    assert_uniform(&counts[200..], "within the cold set");
}

#[test]
fn latest_concentrates_on_the_newest_acknowledged_keys() {
    let basis = AcknowledgedCounterGenerator::new(1000);
    let mut generator = SkewedLatestGenerator::new(&basis, ZIPFIAN_CONSTANT).unwrap();
    // 100 inserts after the generator was built: it must follow them.
    for _ in 0..100 {
        let k = basis.next_value();
        basis.acknowledge(k).unwrap();
    }
    // And one still in flight, which must never be returned.
    let in_flight = basis.next_value();
    let latest = basis.last_value().unwrap();
    assert_eq!(latest, 1099);

    let mut rng = SeededRng::new(15);
    let mut counts = vec![0u64; 1101];
    for _ in 0..DRAWS {
        counts[generator.next(&basis, &mut rng).unwrap() as usize] += 1;
    }
    assert_eq!(counts[in_flight as usize], 0);
    // The zipfian over distances from the latest key covers 1099 items; YCSB keeps η of the
    // 999 items it was built with.
    let zetan = reference_zeta(latest, ZIPFIAN_CONSTANT);
    assert_count_near(counts[1099], ideal(1, ZIPFIAN_CONSTANT, zetan), DRAWS, "latest key");
    assert_count_near(counts[1098], ideal(2, ZIPFIAN_CONSTANT, zetan), DRAWS, "second latest key");
    let newest_100: u64 = counts[1000..1100].iter().sum();
    let p_newest: f64 = (0..100).map(|k| gray_probability(k, latest, 999, ZIPFIAN_CONSTANT, zetan)).sum();
    assert_count_near(newest_100, p_newest, DRAWS, "the 100 newest keys");
    assert!(p_newest > 0.6, "{p_newest}");
    let most_read = (0..counts.len()).max_by_key(|&k| counts[k]).unwrap();
    assert_eq!(most_read, 1099);
}

#[test]
fn scrambled_zipfian_spreads_its_hot_keys_and_stays_zipfian() {
    let n = 100_000u64;
    let mut generator = ScrambledZipfianGenerator::new(0, n - 1, ZIPFIAN_CONSTANT).unwrap();
    let mut rng = SeededRng::new(16);
    let mut counts = vec![0u64; n as usize];
    for _ in 0..DRAWS {
        counts[generator.next(&mut rng) as usize] += 1;
    }
    // Item i of the underlying zipfian lands on key fnvhash64(i) % n.
    let key_of = |item: u64| fnvhash64(item as i64) as u64 % n;
    let hot_keys: Vec<u64> = (0..10).map(key_of).collect();
    let mut distinct = hot_keys.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 10, "the first ten items must land on distinct keys for this check");
    assert_eq!(hot_keys[0], 6_284_781_860_667_377_211 % n);
    // The hot keys are scattered, not the lowest numbers.
    assert!(hot_keys.iter().filter(|&&k| k < 10).count() == 0, "{hot_keys:?}");

    // The most popular keys, in order, are the images of the most popular items.
    let mut by_count: Vec<u64> = (0..n).collect();
    by_count.sort_by_key(|&k| std::cmp::Reverse(counts[k as usize]));
    assert_eq!(&by_count[..8], &hot_keys[..8]);

    // Each hot key gets its item's probability, plus the share of the 10^10 other items that
    // hash onto it (about 1/n, here at most 3/n).
    let items = SCRAMBLED_ITEM_COUNT + 1;
    for (item, &key) in hot_keys.iter().enumerate() {
        let p = gray_probability(item as u64, items, items, ZIPFIAN_CONSTANT, SCRAMBLED_ZETAN);
        let count = counts[key as usize] as f64;
        let sd = sigma(p + 3.0 / n as f64, DRAWS);
        assert!(count >= p * DRAWS as f64 - 5.0 * sd, "item {item}: {count} < {p} of the draws");
        assert!(count <= (p + 3.0 / n as f64) * DRAWS as f64 + 5.0 * sd, "item {item}: {count} > {p} + 3/n");
    }
    assert_count_near(counts[hot_keys[0] as usize], 1.0 / SCRAMBLED_ZETAN + 1.0 / n as f64, DRAWS, "hottest key");

    // The rank-frequency profile still falls like rank^-θ: fit the log-log slope over ranks 3-100.
    let points: Vec<(f64, f64)> =
        (3..=100).map(|rank| ((rank as f64).ln(), (counts[by_count[rank - 1] as usize] as f64).ln())).collect();
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / points.len() as f64;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / points.len() as f64;
    let slope = points.iter().map(|(x, y)| (x - mean_x) * (y - mean_y)).sum::<f64>()
        / points.iter().map(|(x, _)| (x - mean_x).powi(2)).sum::<f64>();
    assert!((-1.15..-0.8).contains(&slope), "log-log slope {slope}");
}

#[test]
fn scrambled_zipfian_with_another_constant_is_still_skewed() {
    // θ = 0.5 makes the generator compute ζ(10^10 + 1, 0.5) itself.
    let n = 1000u64;
    let mut generator = ScrambledZipfianGenerator::new(0, n - 1, 0.5).unwrap();
    let zetan = generator.zipfian().zetan();
    let mut rng = SeededRng::new(17);
    let mut counts = vec![0u64; n as usize];
    for _ in 0..DRAWS {
        counts[generator.next(&mut rng) as usize] += 1;
    }
    // At θ = 0.5 over 10^10 items the head is light: item 0 has 1/ζ ≈ 5e-6, and the keys are
    // nearly uniform. The spread must show it: no key far above uniform.
    assert!((1.0 / zetan) < 1e-5);
    assert_uniform(&counts, "scrambled zipfian at 0.5 over 1000 keys");
}
