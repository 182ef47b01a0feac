//! Logistic-regression maths shared by the optimizers and the metrics: the sigmoid link,
//! the log loss, and binary entropies.
//!
//! Everything here is total: any input, NaN included, gives a finite answer, because these
//! functions sit on the hot path of a long-running process fed by untrusted data.

/// Largest |logit| the sigmoid looks at. Beyond ±35 the probability is 1 or 0 to within
/// 1e-15, so clamping changes nothing numerically and keeps `exp` from overflowing.
pub const MAX_LOGIT: f32 = 35.0;

/// Smallest probability the log loss is evaluated at; `1 - MIN_PROBABILITY` is the largest.
/// Caps the loss of one confidently wrong prediction at `-ln(1e-7)` ≈ 16.1 nats.
pub const MIN_PROBABILITY: f64 = 1e-7;

/// The largest `f32` below 1. `1 / (1 + e^-35)` rounds to exactly 1.0 in `f32`, so the
/// sigmoid clamps its result here to keep predictions in the open interval `(0, 1)`.
const BELOW_ONE: f32 = 1.0 - f32::EPSILON / 2.0;

/// The logistic function `1 / (1 + e^-logit)`, with the logit clamped to ±[`MAX_LOGIT`].
///
/// Always finite and strictly inside `(0, 1)`; a NaN logit gives 0.5.
#[inline]
pub fn sigmoid(logit: f32) -> f32 {
    let l = if logit.is_nan() {
        0.0
    } else {
        logit.clamp(-MAX_LOGIT, MAX_LOGIT)
    };
    (1.0 / (1.0 + (-l).exp())).min(BELOW_ONE)
}

/// Log loss (cross-entropy, in nats) of predicting `p` for a `positive` or negative
/// label, with `p` clamped to `[MIN_PROBABILITY, 1 - MIN_PROBABILITY]`; NaN counts as 0.5.
#[inline]
pub fn logloss(p: f64, positive: bool) -> f64 {
    let p = clamp_probability(p);
    if positive { -p.ln() } else { -(1.0 - p).ln() }
}

/// Expected log loss of predicting `p` when the true click probability is `q`:
/// `-q ln p - (1 - q) ln(1 - p)`. Both are clamped as in [`logloss`].
#[inline]
pub fn cross_entropy(q: f64, p: f64) -> f64 {
    let p = clamp_probability(p);
    let q = q.clamp(0.0, 1.0);
    let q = if q.is_nan() { 0.5 } else { q };
    -(q * p.ln() + (1.0 - q) * (1.0 - p).ln())
}

/// Binary entropy `H(q) = -q ln q - (1 - q) ln(1 - q)` in nats: the log loss of always
/// predicting the base rate `q`, and the denominator of normalized entropy. `H(0) = H(1) = 0`.
#[inline]
pub fn entropy(q: f64) -> f64 {
    if q.is_nan() || q <= 0.0 || q >= 1.0 {
        return 0.0;
    }
    -(q * q.ln() + (1.0 - q) * (1.0 - q).ln())
}

/// `p` clamped to `[MIN_PROBABILITY, 1 - MIN_PROBABILITY]`; NaN becomes 0.5.
#[inline]
pub fn clamp_probability(p: f64) -> f64 {
    if p.is_nan() {
        0.5
    } else {
        p.clamp(MIN_PROBABILITY, 1.0 - MIN_PROBABILITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigmoid_is_in_open_unit_interval() {
        for l in [
            f32::NEG_INFINITY,
            -1e30,
            -35.0,
            -10.0,
            0.0,
            10.0,
            20.0,
            35.0,
            1e30,
            f32::INFINITY,
            f32::NAN,
        ] {
            let p = sigmoid(l);
            assert!(p > 0.0 && p < 1.0, "sigmoid({l}) = {p}");
        }
        assert_eq!(sigmoid(0.0), 0.5);
        assert_eq!(sigmoid(f32::NAN), 0.5);
        assert!((sigmoid(2.0) - 0.880_797).abs() < 1e-6);
    }

    #[test]
    fn losses() {
        assert!((logloss(0.5, true) - std::f64::consts::LN_2).abs() < 1e-12);
        assert!((logloss(0.5, false) - std::f64::consts::LN_2).abs() < 1e-12);
        assert!((logloss(0.0, true) - 1e7f64.ln()).abs() < 1e-6);
        assert!(logloss(1.0, true) < 1e-6);
        assert!(logloss(f64::NAN, true).is_finite());
        assert!((entropy(0.5) - std::f64::consts::LN_2).abs() < 1e-12);
        assert_eq!(entropy(0.0), 0.0);
        assert_eq!(entropy(1.0), 0.0);
        // Predicting the base rate has expected loss H(q).
        assert!((cross_entropy(0.04, 0.04) - entropy(0.04)).abs() < 1e-12);
        assert!(cross_entropy(0.04, 0.1) > entropy(0.04));
    }
}
