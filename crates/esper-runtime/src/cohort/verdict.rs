//! The fail-closed verdict: per arm, the mean and 95 % t-interval of the
//! final validation accuracy with its spread, parameters and time; paired
//! differences (by run seed) of every grown arm against the controls; and a
//! verdict per claim that is PASS only when every arm the claim involves has
//! at least [`MIN_SEEDS`] completed runs and none failed, and the interval
//! excludes the claim's threshold in the claimed direction. Everything else
//! is INCONCLUSIVE or FAIL, with the reason.
//!
//! The claims, for each grown arm G:
//! 1. G beats `static-small`: the interval of G − small lies above 0.
//! 2. G is within 1 point of `static-big` at ≤ 50 % of its extra parameters:
//!    G's mean parameters added are at most half of big's extra parameters
//!    over small, and the interval of G − big lies above −1 point.
//! 3. G beats `fixed-schedule`: the interval of G − fixed lies above 0.
//!
//! For each `learned` arm L, when the cohort has a `heuristic` arm H:
//! 5. L is no worse than H by more than [`NO_WORSE_MARGIN`]: the interval of
//!    L − H lies above −½ point (FAIL when it lies below).
//! 6. L beats H on accuracy per parameter added: points gained over
//!    `static-small` per thousand parameters added, a paired bootstrap
//!    interval of the difference above 0 (`cohort/efficiency.rs`).
//!
//! And once: 4. `off-switch` shows no gain — the interval of off − small lies
//! below [`NO_GAIN_MARGIN`] (whatever it gains is under half a point; a
//! significant gain is a FAIL: the extra optimizer groups, not the seeds,
//! would be what helps).

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use super::stats::{self, Interval};
use super::{ArmKind, CohortFile};
use crate::store::{COMPLETED, RunRow};

/// Completed seeds every arm of a claim needs before it can PASS.
pub const MIN_SEEDS: usize = 5;

/// Accuracy (fraction) within which the off-switch counts as no gain.
pub const NO_GAIN_MARGIN: f64 = 0.005;

/// How close to `static-big` (fraction of accuracy) a grown arm must come.
pub const BIG_MARGIN: f64 = 0.01;

/// How much worse (fraction of accuracy) than the heuristic a learned arm
/// may be.
pub const NO_WORSE_MARGIN: f64 = 0.005;

/// Share of `static-big`'s extra parameters a grown arm may add.
pub const PARAMETER_SHARE: f64 = 0.5;

/// A verdict that cannot be computed.
#[derive(Debug, thiserror::Error)]
pub enum VerdictError {
    /// The cohort lacks an arm the claims need.
    #[error("cohort {cohort} has no {kind} arm; the verdict needs one")]
    MissingArm {
        /// The cohort.
        cohort: String,
        /// The arm kind it lacks.
        kind: &'static str,
    },
}

/// One claim's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The evidence supports the claim.
    Pass,
    /// The evidence contradicts it.
    Fail,
    /// Not enough evidence either way (or a run failed).
    Inconclusive,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pass => "PASS",
            Self::Fail => "FAIL",
            Self::Inconclusive => "INCONCLUSIVE",
        })
    }
}

/// One arm's figures over its completed runs.
#[derive(Debug, Clone, PartialEq)]
pub struct ArmStats {
    /// The arm.
    pub arm: String,
    /// Its kind.
    pub kind: ArmKind,
    /// Final validation accuracy.
    pub accuracy: Interval,
    /// Lowest and highest final accuracy.
    pub range: (f64, f64),
    /// Mean final parameters.
    pub parameters: f64,
    /// Mean parameters added by growth.
    pub added: f64,
    /// Mean training seconds.
    pub seconds: f64,
    /// Mean of the runs' median step time, ms.
    pub step_ms: f64,
    /// Mean forward MACs per image of the final models (NaN when a run's
    /// host does not count them).
    pub forward_macs: f64,
    /// Mean training FLOPs per image over the runs (NaN likewise).
    pub training_flops: f64,
    /// Runs that did not complete: (run id, status); planned runs the store
    /// does not have are listed as `missing`.
    pub not_completed: Vec<(String, String)>,
    /// Final accuracy by run seed.
    pub by_seed: BTreeMap<u64, f64>,
    /// Parameters added by growth, by run seed.
    pub added_by_seed: BTreeMap<u64, f64>,
}

/// A paired comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    /// Minuend arm.
    pub a: String,
    /// Subtrahend arm.
    pub b: String,
    /// The interval of a − b over the seeds both completed.
    pub diff: Interval,
}

/// One claim.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    /// What is claimed.
    pub claim: String,
    /// The outcome.
    pub outcome: Outcome,
    /// Why.
    pub reason: String,
}

/// The cohort's verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The cohort.
    pub cohort: String,
    /// Per arm, in the file's order.
    pub arms: Vec<ArmStats>,
    /// Paired differences.
    pub differences: Vec<Difference>,
    /// Claims.
    pub claims: Vec<Claim>,
}

impl Verdict {
    /// Whether every claim passed.
    pub fn all_pass(&self) -> bool {
        !self.claims.is_empty() && self.claims.iter().all(|c| c.outcome == Outcome::Pass)
    }
}

fn arm_stats(file: &CohortFile, rows: &[RunRow], arm: &super::Arm) -> ArmStats {
    let mine: Vec<&RunRow> = rows
        .iter()
        .filter(|r| r.arm.as_deref() == Some(arm.name()))
        .collect();
    let mut not_completed = Vec::new();
    let (mut by_seed, mut added_by_seed) = (BTreeMap::new(), BTreeMap::new());
    let (mut params, mut added, mut seconds, mut step) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut macs, mut flops) = (Vec::new(), Vec::new());
    for &seed in &file.seeds {
        let run_id = file.run_id(arm.name(), seed);
        match mine.iter().find(|r| r.run_id == run_id) {
            None => not_completed.push((run_id, "missing".to_owned())),
            Some(r) if r.status != COMPLETED || r.validation_accuracy.is_none() => {
                not_completed.push((run_id, r.status.clone()));
            }
            Some(r) => {
                by_seed.insert(seed, r.validation_accuracy.unwrap_or(f64::NAN));
                params.push(r.parameters_final.unwrap_or(0) as f64);
                added.push(r.parameters_added().unwrap_or(0) as f64);
                added_by_seed.insert(seed, r.parameters_added().unwrap_or(0) as f64);
                seconds.push(r.train_seconds);
                step.push(r.step_ms_p50.unwrap_or(f64::NAN));
                macs.push(r.forward_macs_final.map_or(f64::NAN, |m| m as f64));
                flops.push(r.training_flops_per_image.unwrap_or(f64::NAN));
            }
        }
    }
    let values: Vec<f64> = by_seed.values().copied().collect();
    let mean = |v: &[f64]| {
        if v.is_empty() {
            f64::NAN
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    ArmStats {
        arm: arm.name().to_owned(),
        kind: arm.kind,
        accuracy: stats::interval(&values),
        range: (
            values.iter().copied().fold(f64::INFINITY, f64::min),
            values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        ),
        parameters: mean(&params),
        added: mean(&added),
        seconds: mean(&seconds),
        step_ms: mean(&step),
        forward_macs: mean(&macs),
        training_flops: mean(&flops),
        not_completed,
        by_seed,
        added_by_seed,
    }
}

/// Why `arms` cannot support a PASS, if they cannot.
fn unready(arms: &[&ArmStats]) -> Option<String> {
    let mut reasons = Vec::new();
    for a in arms {
        if let Some((run, status)) = a.not_completed.first() {
            reasons.push(format!(
                "{}: {} run(s) not completed (e.g. {run}: {status})",
                a.arm,
                a.not_completed.len()
            ));
        } else if a.accuracy.n < MIN_SEEDS {
            reasons.push(format!(
                "{}: {} completed seed(s), {MIN_SEEDS} needed",
                a.arm, a.accuracy.n
            ));
        }
    }
    (!reasons.is_empty()).then(|| reasons.join("; "))
}

fn points(x: f64) -> String {
    format!("{:+.2}", 100.0 * x)
}

fn ci(i: &Interval) -> String {
    format!("[{}, {}]", points(i.lo), points(i.hi))
}

/// Where an interval must lie relative to a threshold.
#[derive(Debug, Clone, Copy)]
enum Side {
    Above,
    Below,
}

impl Side {
    fn holds(self, d: &Interval, threshold: f64) -> bool {
        match self {
            Self::Above => d.above(threshold),
            Self::Below => d.below(threshold),
        }
    }

    fn word(self) -> &'static str {
        match self {
            Self::Above => "above",
            Self::Below => "below",
        }
    }
}

/// "difference +x points, 95 % CI [lo, hi] <relation> <threshold>".
fn describe(d: &Interval, relation: &str, threshold: f64) -> String {
    format!(
        "difference {} points, 95 % CI {} {relation} {}",
        points(d.mean),
        ci(d),
        points(threshold)
    )
}

/// Judges `d` (a − b): PASS when `pass` holds of it, FAIL when `fail` does,
/// INCONCLUSIVE otherwise or when the arms are not ready; each with the
/// relation to its threshold as the reason.
fn decide(
    claim: String,
    ready: Option<String>,
    d: &Interval,
    pass: (Side, f64),
    fail: (Side, f64),
) -> Claim {
    let (outcome, reason) = if let Some(why) = ready {
        (Outcome::Inconclusive, why)
    } else if pass.0.holds(d, pass.1) {
        (Outcome::Pass, describe(d, pass.0.word(), pass.1))
    } else if fail.0.holds(d, fail.1) {
        (Outcome::Fail, describe(d, fail.0.word(), fail.1))
    } else {
        (Outcome::Inconclusive, describe(d, "reaches", pass.1))
    };
    Claim {
        claim,
        outcome,
        reason,
    }
}

/// Judges "a − b lies above `threshold`" (PASS), "below it" (FAIL).
fn above(claim: String, ready: Option<String>, d: &Interval, threshold: f64) -> Claim {
    decide(
        claim,
        ready,
        d,
        (Side::Above, threshold),
        (Side::Below, threshold),
    )
}

/// The verdict on `rows` (the store's runs of this cohort).
pub fn judge(file: &CohortFile, rows: &[RunRow]) -> Result<Verdict, VerdictError> {
    let arms: Vec<ArmStats> = file.arms.iter().map(|a| arm_stats(file, rows, a)).collect();
    let of_kind = |kind: ArmKind| -> Result<&ArmStats, VerdictError> {
        arms.iter()
            .find(|a| a.kind == kind)
            .ok_or(VerdictError::MissingArm {
                cohort: file.name.clone(),
                kind: kind.as_str(),
            })
    };
    let small = of_kind(ArmKind::StaticSmall)?;
    let big = of_kind(ArmKind::StaticBig)?;
    let off = of_kind(ArmKind::OffSwitch)?;
    let fixed = of_kind(ArmKind::FixedSchedule)?;
    let grown: Vec<&ArmStats> = arms.iter().filter(|a| a.kind.grows()).collect();
    if grown.is_empty() {
        return Err(VerdictError::MissingArm {
            cohort: file.name.clone(),
            kind: ArmKind::Heuristic.as_str(),
        });
    }
    let mut differences = Vec::new();
    let mut claims = Vec::new();
    // Each comparison is recorded once, with the claim it serves.
    let mut diff = |a: &ArmStats, b: &ArmStats| {
        let d = stats::paired(&a.by_seed, &b.by_seed);
        differences.push(Difference {
            a: a.arm.clone(),
            b: b.arm.clone(),
            diff: d,
        });
        d
    };
    let beats = |g: &ArmStats, other: &ArmStats, d: &Interval| {
        above(
            format!("{} beats {}", g.arm, other.arm),
            unready(&[g, other]),
            d,
            0.0,
        )
    };
    for g in &grown {
        claims.push(beats(g, small, &diff(g, small)));
        let d = diff(g, big);
        let extra = big.parameters - small.parameters;
        let budget = PARAMETER_SHARE * extra;
        let claim = format!(
            "{} within {:.0} point of {} at <= {:.0} % of its extra parameters",
            g.arm,
            100.0 * BIG_MARGIN,
            big.arm,
            100.0 * PARAMETER_SHARE
        );
        claims.push(match unready(&[g, big, small]) {
            None if g.added > budget => Claim {
                claim,
                outcome: Outcome::Fail,
                reason: format!(
                    "adds {:.0} parameters, over the budget {:.0} (half of {}'s {:.0} extra)",
                    g.added, budget, big.arm, extra
                ),
            },
            None => {
                let mut c = above(claim, None, &d, -BIG_MARGIN);
                let _ = write!(c.reason, "; adds {:.0} of a {:.0} budget", g.added, budget);
                c
            }
            not_ready => above(claim, not_ready, &d, -BIG_MARGIN),
        });
        claims.push(beats(g, fixed, &diff(g, fixed)));
    }
    let heuristic = arms.iter().find(|a| a.kind == ArmKind::Heuristic);
    for l in arms.iter().filter(|a| a.kind == ArmKind::Learned) {
        if let Some(h) = heuristic {
            let d = diff(l, h);
            claims.push(above(
                format!(
                    "{} no worse than {} by more than {:.1} point",
                    l.arm,
                    h.arm,
                    100.0 * NO_WORSE_MARGIN
                ),
                unready(&[l, h]),
                &d,
                -NO_WORSE_MARGIN,
            ));
            claims.push(super::efficiency::claim(
                l,
                h,
                small,
                unready(&[l, h, small]),
            ));
        }
    }
    let d = diff(off, small);
    // No gain: PASS below the margin; a significant gain (above 0) FAILs.
    claims.push(decide(
        format!("{} shows no gain over {}", off.arm, small.arm),
        unready(&[off, small]),
        &d,
        (Side::Below, NO_GAIN_MARGIN),
        (Side::Above, 0.0),
    ));
    Ok(Verdict {
        cohort: file.name.clone(),
        arms,
        differences,
        claims,
    })
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "cohort {}: final validation accuracy (%), 95 % t-interval",
            self.cohort
        )?;
        writeln!(
            f,
            "{:<16} {:>4} {:>7} {:>17} {:>7} {:>7} {:>9} {:>8} {:>7} {:>8} {:>8} {:>8}",
            "arm",
            "n",
            "mean",
            "95% CI",
            "min",
            "max",
            "params",
            "added",
            "MMAC",
            "MFLOP/t",
            "step ms",
            "train s"
        )?;
        for a in &self.arms {
            let i = &a.accuracy;
            writeln!(
                f,
                "{:<16} {:>4} {:>7.2} {:>17} {:>7.2} {:>7.2} {:>9.0} {:>8.0} {:>7.3} {:>8.2} {:>8.2} {:>8.1}",
                a.arm,
                format!("{}/{}", i.n, i.n + a.not_completed.len()),
                100.0 * i.mean,
                format!("[{:.2}, {:.2}]", 100.0 * i.lo, 100.0 * i.hi),
                100.0 * a.range.0,
                100.0 * a.range.1,
                a.parameters,
                a.added,
                a.forward_macs / 1e6,
                a.training_flops / 1e6,
                a.step_ms,
                a.seconds
            )?;
        }
        writeln!(
            f,
            "MMAC: forward multiply-accumulates per image of the final model, millions; MFLOP/t: training FLOPs per image over the run (6 x its mean forward MACs), millions"
        )?;
        writeln!(f, "paired differences (points, by run seed)")?;
        for d in &self.differences {
            writeln!(
                f,
                "  {:<32} {:>3} pairs  {:>7}  95% CI {}",
                format!("{} - {}", d.a, d.b),
                d.diff.n,
                points(d.diff.mean),
                ci(&d.diff)
            )?;
        }
        writeln!(f, "claims")?;
        for c in &self.claims {
            writeln!(
                f,
                "  {:<12} {}: {}",
                c.outcome.to_string(),
                c.claim,
                c.reason
            )?;
        }
        let verdict = if self.all_pass() { "PASS" } else { "NOT PASS" };
        writeln!(f, "verdict: {verdict} (every claim must PASS)")
    }
}
