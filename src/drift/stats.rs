//! The few distribution functions the detectors' thresholds need: normal and chi-square
//! quantiles and a Poisson lower-tail bound.

/// The standard normal quantile `Φ⁻¹(p)` for `p` in `(0, 1)`, by Acklam's rational
/// approximation (relative error below 1.2e-9), which is far finer than any threshold here.
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let p = p.clamp(1e-300, 1.0 - 1e-16);
    let tail = |q: f64| {
        let q = (-2.0 * q.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.024_25 {
        tail(p)
    } else if p > 1.0 - 0.024_25 {
        -tail(1.0 - p)
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// The `1 - alpha` quantile of the chi-square distribution with `k` degrees of freedom, by
/// the Wilson–Hilferty cube approximation (a few percent at worst for small `k` and tiny
/// `alpha`, which moves a threshold far less than the choice of `alpha` does).
pub fn chi_square_quantile(k: f64, alpha: f64) -> f64 {
    let k = k.max(1.0);
    let z = normal_quantile(1.0 - alpha);
    let h = 2.0 / (9.0 * k);
    (k * (1.0 - h + z * h.sqrt()).powi(3)).max(0.0)
}

/// Chernoff's bound on `P(X <= d)` for `X ~ Poisson(lambda)` and `d < lambda`:
/// `exp(-lambda + d + d ln(lambda / d))`; 1 when `d >= lambda`.
pub fn poisson_lower_tail_bound(d: f64, lambda: f64) -> f64 {
    if d >= lambda {
        return 1.0;
    }
    if d <= 0.0 {
        return (-lambda).exp();
    }
    (-lambda + d + d * (lambda / d).ln()).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_quantiles_match_tables() {
        assert!((normal_quantile(0.975) - 1.959_964).abs() < 1e-6);
        assert!((normal_quantile(0.5)).abs() < 1e-9);
        assert!((normal_quantile(1e-6) + 4.753_424).abs() < 1e-5);
    }

    #[test]
    fn chi_square_quantiles_are_close_to_tables() {
        // chi2(9) at 0.99 is 21.666, chi2(19) at 0.999 is 43.820.
        assert!((chi_square_quantile(9.0, 0.01) - 21.666).abs() < 0.2);
        assert!((chi_square_quantile(19.0, 0.001) - 43.820).abs() < 0.4);
    }

    #[test]
    fn poisson_bound_is_small_far_below_the_mean() {
        assert!(poisson_lower_tail_bound(10.0, 100.0) < 1e-20);
        assert_eq!(poisson_lower_tail_bound(100.0, 100.0), 1.0);
        assert!(poisson_lower_tail_bound(90.0, 100.0) > 0.1);
    }
}
