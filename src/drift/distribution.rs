//! Comparing two distributions over the same bins: the Population Stability Index and the
//! Jensen–Shannon distance, and the thresholds a false-alarm budget gives them.
//!
//! # Statistics
//!
//! For reference shares `q_i` and recent shares `p_i` (counts smoothed by half a count per
//! bin, so an empty bin is finite):
//! - PSI `= Σ (p_i - q_i) ln(p_i / q_i)` (the symmetrized Kullback–Leibler divergence);
//! - JS distance `= sqrt(JSD / ln 2)`, `JSD = ½ KL(p‖m) + ½ KL(q‖m)`, `m = (p + q)/2`:
//!   bounded in `[0, 1]`, defined when one side has a bin the other lacks.
//!
//! # Thresholds
//!
//! If both samples come from one distribution (`n` recent, `r` reference items, `k` bins),
//! `PSI ≈ (1/n + 1/r) χ²_{k-1}` and `JSD ≈ PSI / 8` (second-order expansions of both
//! around `p = q`). The threshold for a false-alarm probability `α` per evaluation is
//! therefore `(1/n + 1/r) χ²_{k-1}(1-α)` for PSI, and its JS-distance equivalent; with
//! an evaluation every `s` items, a budget of one false alarm per `N` items gives
//! `α = s / N`. A large window makes that threshold tiny, and a shift that is real but
//! harmless then alerts too: the configured minimum effect (`min_psi`, `min_js`) is the
//! floor, and the threshold in force is the larger of the two.

use super::stats::chi_square_quantile;

/// Half a count added to every bin before taking shares.
const SMOOTHING: f64 = 0.5;

fn shares(counts: &[f64]) -> impl Iterator<Item = f64> + '_ {
    let total: f64 = counts.iter().sum::<f64>() + SMOOTHING * counts.len() as f64;
    counts.iter().map(move |c| (c + SMOOTHING) / total)
}

/// The PSI of `recent` against `reference` (counts over the same bins).
pub fn psi(recent: &[f64], reference: &[f64]) -> f64 {
    shares(recent)
        .zip(shares(reference))
        .map(|(p, q)| (p - q) * (p / q).ln())
        .sum()
}

/// The Jensen–Shannon distance (base 2, in `[0, 1]`) between `recent` and `reference`.
pub fn js_distance(recent: &[f64], reference: &[f64]) -> f64 {
    let kl = |a: f64, m: f64| if a > 0.0 { a * (a / m).ln() } else { 0.0 };
    let jsd: f64 = shares(recent)
        .zip(shares(reference))
        .map(|(p, q)| {
            let m = 0.5 * (p + q);
            0.5 * kl(p, m) + 0.5 * kl(q, m)
        })
        .sum();
    (jsd.max(0.0) / std::f64::consts::LN_2).sqrt()
}

/// The PSI that samples of `n` and `r` items over `bins` bins of one distribution exceed
/// with probability `alpha`.
pub fn psi_noise_threshold(n: f64, r: f64, bins: usize, alpha: f64) -> f64 {
    let df = bins.saturating_sub(1).max(1) as f64;
    (1.0 / n.max(1.0) + 1.0 / r.max(1.0)) * chi_square_quantile(df, alpha)
}

/// The JS distance matching [`psi_noise_threshold`] (`JSD ≈ PSI / 8`).
pub fn js_noise_threshold(n: f64, r: f64, bins: usize, alpha: f64) -> f64 {
    (psi_noise_threshold(n, r, bins, alpha) / 8.0 / std::f64::consts::LN_2).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_distributions_score_zero() {
        let a = [100.0, 200.0, 700.0];
        assert!(psi(&a, &a).abs() < 1e-12);
        assert!(js_distance(&a, &a) < 1e-6);
    }

    #[test]
    fn psi_of_a_known_shift() {
        // The generator's device mix shift: 35/45/20 % -> 20/30/50 %.
        let before = [35_000.0, 45_000.0, 20_000.0];
        let after = [20_000.0, 30_000.0, 50_000.0];
        let exact = (0.2 - 0.35) * (0.2f64 / 0.35).ln()
            + (0.3 - 0.45) * (0.3f64 / 0.45).ln()
            + (0.5 - 0.2) * (0.5f64 / 0.2).ln();
        assert!((psi(&after, &before) - exact).abs() < 1e-4, "{exact}");
        assert!((exact - 0.4196).abs() < 1e-3);
    }

    #[test]
    fn js_distance_is_one_for_disjoint_and_symmetric() {
        let a = [1e9, 0.0];
        let b = [0.0, 1e9];
        assert!((js_distance(&a, &b) - 1.0).abs() < 1e-4);
        let c = [3.0, 5.0, 9.0];
        let d = [6.0, 2.0, 9.0];
        assert!((js_distance(&c, &d) - js_distance(&d, &c)).abs() < 1e-12);
        // JS divergence of (0.5, 0.5) vs (1, 0) is 1 - ½·H(¾, ¼) bits = 0.3113.
        let jsd = js_distance(&[1e9, 1e9], &[1e9, 0.0]).powi(2);
        assert!((jsd - 0.3113).abs() < 1e-3, "{jsd}");
    }

    #[test]
    fn noise_thresholds_bound_sampling_noise() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(5);
        let (n, r, bins) = (2000usize, 4000usize, 10);
        let threshold = psi_noise_threshold(n as f64, r as f64, bins, 0.01);
        let mut over = 0;
        for _ in 0..500 {
            let mut a = vec![0.0; bins];
            let mut b = vec![0.0; bins];
            for _ in 0..n {
                a[rng.random_range(0..bins)] += 1.0;
            }
            for _ in 0..r {
                b[rng.random_range(0..bins)] += 1.0;
            }
            over += usize::from(psi(&a, &b) > threshold);
        }
        // 1 % expected: 5 of 500; allow sampling noise.
        assert!(over <= 15, "{over} of 500 over the 1 % threshold");
        assert!(over >= 1, "the approximation is not that loose: {over}");
    }
}
