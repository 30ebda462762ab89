//! The numbers behind a comparison, as pure functions of slices: mean and sample standard
//! deviation, Welch's unequal-variance t-test (two-sided p from `statrs`' Student-t), convergence
//! AUC (trapezoidal area under a curve over steps), relative differences, steps to reach a
//! target by linear interpolation between evaluations, and EMA smoothing for loss curves.

use statrs::distribution::{ContinuousCDF, StudentsT};

/// Arithmetic mean; NaN for an empty slice.
pub fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// Sample variance (divisor n-1); `None` with fewer than two values.
pub fn variance(xs: &[f64]) -> Option<f64> {
    if xs.len() < 2 {
        return None;
    }
    let m = mean(xs);
    Some(xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (xs.len() - 1) as f64)
}

/// Sample standard deviation (divisor n-1); `None` with fewer than two values.
pub fn std_dev(xs: &[f64]) -> Option<f64> {
    variance(xs).map(f64::sqrt)
}

/// Result of Welch's t-test of `a` against `b`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Welch {
    /// t = (mean(a) - mean(b)) / sqrt(var(a)/na + var(b)/nb).
    pub t: f64,
    /// Welch-Satterthwaite degrees of freedom.
    pub df: f64,
    /// Two-sided p-value, 2 * P(T_df > |t|).
    pub p: f64,
}

/// Welch's two-sided t-test; `None` unless both samples have at least two values.
///
/// When both samples have zero variance the statistic is undefined: equal means give
/// t = 0, p = 1; different means give t = +-inf, p = 0.
pub fn welch(a: &[f64], b: &[f64]) -> Option<Welch> {
    let (va, vb) = (variance(a)?, variance(b)?);
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let (sa, sb) = (va / na, vb / nb);
    let diff = mean(a) - mean(b);
    let se2 = sa + sb;
    if se2 <= 0.0 {
        return Some(if diff == 0.0 {
            Welch {
                t: 0.0,
                df: na + nb - 2.0,
                p: 1.0,
            }
        } else {
            Welch {
                t: diff.signum() * f64::INFINITY,
                df: na + nb - 2.0,
                p: 0.0,
            }
        });
    }
    let t = diff / se2.sqrt();
    let df = se2 * se2 / (sa * sa / (na - 1.0) + sb * sb / (nb - 1.0));
    Some(Welch {
        t,
        df,
        p: two_sided_p(t, df),
    })
}

/// Two-sided p-value of a Student-t statistic with `df` degrees of freedom.
pub fn two_sided_p(t: f64, df: f64) -> f64 {
    match StudentsT::new(0.0, 1.0, df) {
        // sf avoids the cancellation of 1 - cdf for large |t|.
        Ok(dist) => (2.0 * dist.sf(t.abs())).min(1.0),
        Err(_) => f64::NAN,
    }
}

/// Trapezoidal area under `ys` over `xs` (the paper's convergence AUC when `ys` is the
/// validation loss). Zero for fewer than two points.
pub fn auc(xs: &[f64], ys: &[f64]) -> f64 {
    xs.windows(2)
        .zip(ys.windows(2))
        .map(|(x, y)| (x[1] - x[0]) * (y[0] + y[1]) / 2.0)
        .sum()
}

/// (x - base) / base: negative means lower (better, for perplexity and loss) than the baseline.
pub fn rel_diff(x: f64, base: f64) -> f64 {
    (x - base) / base
}

/// The first step at which the curve reaches `target` (value <= target), linearly interpolated
/// between the evaluation before and the one that reaches it; `None` when never reached.
pub fn steps_to_target(steps: &[f64], values: &[f64], target: f64) -> Option<f64> {
    let i = values.iter().position(|&v| v <= target)?;
    if i == 0 {
        return Some(steps[0]);
    }
    let (s0, s1) = (steps[i - 1], steps[i]);
    let (v0, v1) = (values[i - 1], values[i]);
    // v0 > target >= v1, so v0 - v1 > 0.
    Some(s0 + (v0 - target) / (v0 - v1) * (s1 - s0))
}

/// Bias-corrected exponential moving average (as TensorBoard's smoothing): with weight `w`,
/// m_k = w m_{k-1} + (1-w) x_k, m_0 = 0, reported as m_k / (1 - w^k).
pub fn ema(xs: &[f64], w: f64) -> Vec<f64> {
    let mut m = 0.0;
    let mut wk = 1.0;
    xs.iter()
        .map(|&x| {
            m = w * m + (1.0 - w) * x;
            wk *= w;
            if wk < 1.0 {
                m / (1.0 - wk)
            } else {
                x
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * b.abs().max(1.0)
    }

    // Reference values from the textbook formulas, computed without scipy by:
    //
    //   import math
    //   def welch(a, b):
    //       na, nb = len(a), len(b); ma, mb = sum(a)/na, sum(b)/nb
    //       va = sum((x-ma)**2 for x in a)/(na-1); vb = sum((x-mb)**2 for x in b)/(nb-1)
    //       sa, sb = va/na, vb/nb
    //       t = (ma-mb)/math.sqrt(sa+sb)
    //       df = (sa+sb)**2/(sa**2/(na-1) + sb**2/(nb-1))
    //       pdf = lambda x: math.gamma((df+1)/2)/(math.sqrt(df*math.pi)*math.gamma(df/2)) \
    //                       * (1+x*x/df)**(-(df+1)/2)
    //       n = 200000; h = abs(t)/n   # Simpson's rule for P(0 < T < |t|)
    //       s = pdf(0) + pdf(abs(t)) + sum((4 if i % 2 else 2)*pdf(i*h) for i in range(1, n))
    //       return t, df, 1 - 2*s*h/3
    //
    // welch([1,2,3,4,5], [2,4,6,8,10]) = (-1.8973665961010275, 5.882352941176471, 0.10753119493...)
    // (scipy.stats.ttest_ind(a, b, equal_var=False) computes the same formulas; scipy was not
    // installed where these were computed.)
    #[test]
    fn welch_matches_reference_formulas() {
        let w = welch(&[1.0, 2.0, 3.0, 4.0, 5.0], &[2.0, 4.0, 6.0, 8.0, 10.0]).unwrap();
        assert!(close(w.t, -1.897_366_596_101_027_5, 1e-12), "t = {}", w.t);
        assert!(close(w.df, 5.882_352_941_176_471, 1e-12), "df = {}", w.df);
        assert!((w.p - 0.107_531_195).abs() < 1e-6, "p = {}", w.p);
    }

    // Same script: welch([4.10, 4.05, 4.12], [4.50, 4.55])
    //   = (-13.371435061000444, 2.311738569585794, 0.003065654493337955)
    #[test]
    fn welch_small_samples_unequal_sizes() {
        let w = welch(&[4.10, 4.05, 4.12], &[4.50, 4.55]).unwrap();
        assert!(close(w.t, REF_T2, 1e-9), "t = {}", w.t);
        assert!(close(w.df, REF_DF2, 1e-9), "df = {}", w.df);
        assert!((w.p - REF_P2).abs() < 1e-6, "p = {}", w.p);
    }
    const REF_T2: f64 = -13.371_435_061_000_444;
    const REF_DF2: f64 = 2.311_738_569_585_794;
    const REF_P2: f64 = 0.003_065_654_493_337_955;

    #[test]
    fn welch_needs_two_values_per_sample() {
        assert!(welch(&[1.0], &[1.0, 2.0]).is_none());
        assert!(welch(&[1.0, 2.0], &[]).is_none());
    }

    #[test]
    fn welch_zero_variance() {
        let same = welch(&[2.0, 2.0], &[2.0, 2.0]).unwrap();
        assert_eq!((same.t, same.p), (0.0, 1.0));
        let differ = welch(&[1.0, 1.0], &[2.0, 2.0]).unwrap();
        assert_eq!(differ.p, 0.0);
        assert!(differ.t.is_infinite() && differ.t < 0.0);
    }

    #[test]
    fn mean_and_std() {
        assert_eq!(mean(&[1.0, 2.0, 3.0, 4.0, 5.0]), 3.0);
        // var = (4+1+0+1+4)/4 = 2.5
        assert!(close(
            std_dev(&[1.0, 2.0, 3.0, 4.0, 5.0]).unwrap(),
            2.5f64.sqrt(),
            1e-15
        ));
        assert!(std_dev(&[1.0]).is_none());
        assert!(mean(&[]).is_nan());
    }

    // By hand: steps 0,100,300 with loss 3,2,1.5:
    // 100*(3+2)/2 + 200*(2+1.5)/2 = 250 + 350 = 600.
    #[test]
    fn auc_by_hand() {
        assert_eq!(auc(&[0.0, 100.0, 300.0], &[3.0, 2.0, 1.5]), 600.0);
        assert_eq!(auc(&[5.0], &[1.0]), 0.0);
    }

    #[test]
    fn relative_differences() {
        // The paper's headline: 4.047 vs 4.514 is 10.3% lower.
        assert!(close(rel_diff(4.047, 4.514), -0.103_455_914, 1e-6));
        assert_eq!(rel_diff(6.0, 4.0), 0.5);
        assert_eq!(rel_diff(4.0, 4.0), 0.0);
    }

    #[test]
    fn steps_to_target_interpolates() {
        let steps = [100.0, 200.0, 300.0];
        let ppl = [10.0, 6.0, 5.0];
        // Between 200 (6.0) and 300 (5.0): 200 + (6-5.5)/(6-5)*100 = 250.
        assert_eq!(steps_to_target(&steps, &ppl, 5.5), Some(250.0));
        // Between 100 (10) and 200 (6): 100 + (10-7)/(10-6)*100 = 175.
        assert_eq!(steps_to_target(&steps, &ppl, 7.0), Some(175.0));
        // Reached exactly at an evaluation, and already at the first one.
        assert_eq!(steps_to_target(&steps, &ppl, 5.0), Some(300.0));
        assert_eq!(steps_to_target(&steps, &ppl, 12.0), Some(100.0));
        assert_eq!(steps_to_target(&steps, &ppl, 4.9), None);
        // A curve that rises again (overfitting) counts its first crossing.
        assert_eq!(steps_to_target(&steps, &[8.0, 4.0, 9.0], 6.0), Some(150.0));
    }

    #[test]
    fn ema_is_bias_corrected() {
        let s = ema(&[2.0, 2.0, 2.0], 0.9);
        assert!(s.iter().all(|v| close(*v, 2.0, 1e-12)), "{s:?}");
        // Second value: m1 = 0.1*1, m2 = 0.9*0.1 + 0.1*3 = 0.39; /(1-0.81) = 2.0526...
        let s = ema(&[1.0, 3.0], 0.9);
        assert!(close(s[1], 0.39 / 0.19, 1e-12));
        assert_eq!(ema(&[1.0, 3.0], 0.0), vec![1.0, 3.0]);
    }
}
