//! The statistics a verdict needs: mean, sample standard deviation and the
//! two-sided 95 % Student-t confidence interval of a mean, and the same for
//! the paired differences of two arms (paired by run seed). The t quantile is
//! `statrs`'s.

use std::collections::BTreeMap;

use statrs::distribution::{ContinuousCDF, StudentsT};

/// Mean, spread and 95 % t-interval of a sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    /// Sample size.
    pub n: usize,
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation (n − 1); NaN below two values.
    pub sd: f64,
    /// Lower end of the 95 % interval (NaN below two values).
    pub lo: f64,
    /// Upper end of the 95 % interval (NaN below two values).
    pub hi: f64,
}

impl Interval {
    /// Whether the interval lies entirely above `x`.
    pub fn above(&self, x: f64) -> bool {
        self.lo.is_finite() && self.lo > x
    }

    /// Whether the interval lies entirely below `x`.
    pub fn below(&self, x: f64) -> bool {
        self.hi.is_finite() && self.hi < x
    }
}

/// The two-sided 95 % quantile of Student's t with `df` degrees of freedom.
pub fn t975(df: usize) -> f64 {
    match StudentsT::new(0.0, 1.0, df as f64) {
        Ok(t) => t.inverse_cdf(0.975),
        Err(_) => f64::NAN,
    }
}

/// Mean, sample standard deviation and the 95 % t-interval of `values`.
pub fn interval(values: &[f64]) -> Interval {
    let n = values.len();
    if n == 0 {
        return Interval {
            n,
            mean: f64::NAN,
            sd: f64::NAN,
            lo: f64::NAN,
            hi: f64::NAN,
        };
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return Interval {
            n,
            mean,
            sd: f64::NAN,
            lo: f64::NAN,
            hi: f64::NAN,
        };
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let sd = var.sqrt();
    let half = t975(n - 1) * sd / (n as f64).sqrt();
    Interval {
        n,
        mean,
        sd,
        lo: mean - half,
        hi: mean + half,
    }
}

/// The interval of `a − b` over the seeds both have.
pub fn paired(a: &BTreeMap<u64, f64>, b: &BTreeMap<u64, f64>) -> Interval {
    let diffs: Vec<f64> = a
        .iter()
        .filter_map(|(seed, x)| b.get(seed).map(|y| x - y))
        .collect();
    interval(&diffs)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn t_quantiles_match_the_table() {
        // Standard two-sided 95 % table values.
        for (df, t) in [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (29, 2.045)] {
            assert!(close(t975(df), t, 5e-4), "df {df}: {}", t975(df));
        }
    }

    #[test]
    fn a_hand_computed_interval() {
        // 0.90, 0.92, 0.94, 0.96, 0.98: mean 0.94, sd = sqrt(0.001/4 ... )
        // deviations ±0.04, ±0.02, 0 → sum of squares 0.004, var 0.001,
        // sd 0.0316228; half-width 2.776445 · 0.0316228 / √5 = 0.0392641.
        let i = interval(&[0.90, 0.92, 0.94, 0.96, 0.98]);
        assert_eq!(i.n, 5);
        assert!(close(i.mean, 0.94, 1e-12));
        assert!(close(i.sd, 0.031_622_8, 1e-7));
        assert!(close(i.lo, 0.94 - 0.039_264_1, 1e-6), "{i:?}");
        assert!(close(i.hi, 0.94 + 0.039_264_1, 1e-6), "{i:?}");
        assert!(i.above(0.89) && !i.above(0.91));
        assert!(i.below(0.99) && !i.below(0.97));
    }

    #[test]
    fn differences_are_paired_by_seed() {
        let a = BTreeMap::from([(1, 0.95), (2, 0.93), (3, 0.94), (9, 0.5)]);
        let b = BTreeMap::from([(1, 0.90), (2, 0.91), (3, 0.90)]);
        // Diffs 0.05, 0.02, 0.04 (seed 9 unpaired): mean 0.036667,
        // sd 0.015275, half-width 4.302653 · 0.015275 / √3 = 0.037946.
        let d = paired(&a, &b);
        assert_eq!(d.n, 3);
        assert!(close(d.mean, 0.036_666_7, 1e-6));
        assert!(close(d.hi - d.mean, 0.037_946, 2e-6), "{d:?}");
        assert!(!d.above(0.0), "the interval reaches below zero");
    }

    #[test]
    fn too_few_values_give_no_interval() {
        let one = interval(&[0.5]);
        assert!(one.lo.is_nan() && !one.above(0.0) && !one.below(1.0));
        assert!(interval(&[]).mean.is_nan());
    }
}
