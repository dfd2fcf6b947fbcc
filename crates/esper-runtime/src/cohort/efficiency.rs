//! Claim 6: a learned arm beats the heuristic on accuracy per parameter
//! added — the measure issue #17 sets for the learned controller, which may
//! win by growing cheaper seeds for nearly the same gain.
//!
//! An arm's efficiency over a set of run seeds is `Σ (acc − acc_small) /
//! Σ added`, in points per thousand parameters: a ratio of sums, since a
//! seed where an arm grew nothing has no ratio of its own. Its uncertainty
//! is a paired percentile bootstrap over the seeds all three arms completed
//! ([`RESAMPLES`] resamples from a fixed stream, so the verdict is the same
//! every time it is computed). A resample where either arm added nothing
//! has no efficiency; when more than [`MAX_UNDEFINED`] of them are such, the
//! claim is INCONCLUSIVE and says so (an arm that grows on one seed in five
//! cannot be ranked by what it gains per parameter).

use super::verdict::{ArmStats, Claim, Outcome};

/// Bootstrap resamples.
pub(super) const RESAMPLES: usize = 4000;

/// Largest share of resamples allowed without an efficiency.
pub(super) const MAX_UNDEFINED: f64 = 0.1;

/// SplitMix64: the bootstrap's fixed stream.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Points per thousand parameters added over `seeds` (indices into the
/// rows), `None` when the arm added nothing there.
fn efficiency(rows: &[(f64, f64)], seeds: impl Iterator<Item = usize>) -> Option<f64> {
    let (mut gain, mut added) = (0.0, 0.0);
    for i in seeds {
        gain += rows[i].0;
        added += rows[i].1;
    }
    (added > 0.0).then(|| 100.0 * gain / (added / 1000.0))
}

/// Per seed both arms and `small` completed: (gain over small, added).
fn paired(arm: &ArmStats, small: &ArmStats, seeds: &[u64]) -> Vec<(f64, f64)> {
    seeds
        .iter()
        .map(|s| {
            (
                arm.by_seed[s] - small.by_seed[s],
                arm.added_by_seed.get(s).copied().unwrap_or(0.0),
            )
        })
        .collect()
}

/// Claim 6 for learned arm `l` against heuristic `h`; `ready` is why the
/// arms cannot support a PASS, if they cannot.
pub(super) fn claim(l: &ArmStats, h: &ArmStats, small: &ArmStats, ready: Option<String>) -> Claim {
    let claim = format!("{} beats {} on accuracy per parameter added", l.arm, h.arm);
    let seeds: Vec<u64> = l
        .by_seed
        .keys()
        .filter(|s| h.by_seed.contains_key(s) && small.by_seed.contains_key(s))
        .copied()
        .collect();
    let (lr, hr) = (paired(l, small, &seeds), paired(h, small, &seeds));
    let all = || 0..seeds.len();
    let (Some(le), Some(he)) = (efficiency(&lr, all()), efficiency(&hr, all())) else {
        let none: Vec<&str> = [(l, &lr), (h, &hr)]
            .iter()
            .filter(|(_, r)| r.iter().all(|(_, a)| *a <= 0.0))
            .map(|(a, _)| a.arm.as_str())
            .collect();
        return Claim {
            claim,
            outcome: Outcome::Inconclusive,
            reason: format!(
                "{} added no parameters on the {} paired seed(s): no accuracy per parameter",
                none.join(" and "),
                seeds.len()
            ),
        };
    };
    let mut state = 0x005e_ed0f_e5e4_u64;
    let (mut diffs, mut undefined) = (Vec::with_capacity(RESAMPLES), 0usize);
    for _ in 0..RESAMPLES {
        let pick: Vec<usize> = (0..seeds.len())
            .map(|_| (next(&mut state) % seeds.len() as u64) as usize)
            .collect();
        match (
            efficiency(&lr, pick.iter().copied()),
            efficiency(&hr, pick.iter().copied()),
        ) {
            (Some(a), Some(b)) => diffs.push(a - b),
            _ => undefined += 1,
        }
    }
    let figures = format!(
        "{:.2} vs {:.2} points per 1k parameters added ({:.0} vs {:.0} added on average)",
        le, he, l.added, h.added
    );
    let undefined_share = undefined as f64 / RESAMPLES as f64;
    if undefined_share > MAX_UNDEFINED {
        return Claim {
            claim,
            outcome: Outcome::Inconclusive,
            reason: format!(
                "{figures}; {:.0} % of bootstrap resamples have an arm that added nothing (limit {:.0} %)",
                100.0 * undefined_share,
                100.0 * MAX_UNDEFINED
            ),
        };
    }
    diffs.sort_by(f64::total_cmp);
    let at = |q: f64| diffs[((q * (diffs.len() - 1) as f64).round() as usize).min(diffs.len() - 1)];
    let (lo, hi) = (at(0.025), at(0.975));
    let interval = format!("difference 95 % bootstrap CI [{lo:+.2}, {hi:+.2}]");
    let (outcome, reason) = match ready {
        Some(why) => (
            Outcome::Inconclusive,
            format!("{figures}; {interval}; {why}"),
        ),
        None if lo > 0.0 => (Outcome::Pass, format!("{figures}; {interval} above 0")),
        None if hi < 0.0 => (Outcome::Fail, format!("{figures}; {interval} below 0")),
        None => (
            Outcome::Inconclusive,
            format!("{figures}; {interval} includes 0"),
        ),
    };
    Claim {
        claim,
        outcome,
        reason,
    }
}
