//! Kasmina's typed configuration (`[kasmina]` in the Esper config file): the
//! gates' thresholds, the stages' minimum dwell and the isolation monitor,
//! with documented defaults. Resolved once by `esper-runtime`; the embargo
//! length is the shared `leyline.limits.embargo_epochs`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::breaker::BreakerConfig;
use crate::gates::GateConfig;
use crate::isolation::IsolationConfig;

/// All of Kasmina's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Steps of evidence the G1/G2 windows hold (default 10).
    pub window: usize,
    /// Mean seed gradient norm below which gradients "vanish" (G1; default 1e-7).
    pub min_grad_norm: f64,
    /// Largest coefficient of variation of the loss over the window (G2; default 0.5).
    pub max_loss_cv: f64,
    /// Largest accuracy drop, points, with the seed vs α = 0 (G4; default 0.5).
    pub regression_tolerance: f64,
    /// Contribution, points, a seed must exceed to fossilize (G4; default 0).
    pub min_contribution: f64,
    /// Minimum optimizer steps in TRAINING, BLENDING, SHADOWING, PROBATIONARY
    /// (default `[20, 40, 10, 10]`).
    pub min_steps: [u64; 4],
    /// Minimum epoch ends in the same four stages (default `[0, 0, 0, 1]`:
    /// a seed is judged on at least one counterfactual validation pass).
    pub min_epochs: [u64; 4],
    /// Largest step slowdown (forward + backward over the G2 window vs the
    /// host's mean before the seed germinated) a seed may cause (G2). A
    /// wall-clock rule and therefore opt-in: 0 (the default) turns it off —
    /// measured time depends on what else the machine runs, so with it on a
    /// run's path can change with load (three runs sharing two cores culled
    /// seeds `latency_over_budget` that an idle machine kept).
    pub max_slowdown: f64,
    /// Largest forward MACs per image a seed may cost, as a multiple of the
    /// host's (default 20 — `conv.residual` at expansion 4 on `cnn-impaired`
    /// costs 17×; 0 turns it off). A counted budget, the same on
    /// every machine: a GERMINATE over it is refused when applied, naming
    /// both counts.
    pub max_seed_mac_ratio: f64,
    /// Coordinates the isolation monitor samples per session (default 64).
    pub isolation_samples: usize,
    /// Largest relative error of the incubator invariant (default 1e-5).
    pub isolation_max_relative_error: f64,
    /// Smallest gradient cosine of the invariant (default 0.99999).
    pub isolation_min_cosine: f64,
    /// Every how many of a TRAINING seed's steps the isolation monitor checks
    /// the incubator invariant (default 10: its first step, then every 10th;
    /// 1 checks every step). G1 waits for at least one check.
    pub isolation_check_every_steps: u64,
    /// Violations in a row that open the isolation breaker (default 3).
    pub breaker_failures: u32,
    /// Seconds the breaker stays open before a half-open trial (default 30).
    pub breaker_open_s: u64,
    /// Half-open successes that close it (default 2).
    pub breaker_successes: u32,
    /// The off-switch control (default false): seeds germinate, train and
    /// move through their stages as usual, but their output never reaches
    /// the host (α held at 0 in every stage). Only a cohort's `off-switch`
    /// arm sets it; see `SeedSlots::set_off_switch`.
    pub off_switch: bool,
    /// Every how many optimizer steps the slots' evidence is measured
    /// (default 10): the RMS of the activation entering each slot and the L2
    /// norm of the loss gradient arriving at it (see `engine::evidence`). 0
    /// turns the measurement off; the state packet then reports none.
    pub slot_evidence_every_steps: u64,
}

impl Default for Config {
    fn default() -> Self {
        let breaker = BreakerConfig::default();
        let isolation = IsolationConfig::default();
        let gates = GateConfig::default();
        Self {
            window: gates.window,
            min_grad_norm: gates.min_grad_norm,
            max_loss_cv: gates.max_loss_cv,
            regression_tolerance: gates.regression_tolerance,
            min_contribution: gates.min_contribution,
            min_steps: gates.min_steps,
            min_epochs: gates.min_epochs,
            max_slowdown: gates.max_slowdown,
            max_seed_mac_ratio: gates.max_seed_mac_ratio,
            isolation_samples: isolation.samples,
            isolation_max_relative_error: isolation.max_relative_error,
            isolation_min_cosine: isolation.min_cosine,
            isolation_check_every_steps: isolation.check_every_steps,
            breaker_failures: breaker.failures_to_open,
            breaker_open_s: breaker.open_for.as_secs(),
            breaker_successes: breaker.successes_to_close,
            off_switch: false,
            slot_evidence_every_steps: 10,
        }
    }
}

use leyline::ConfigError;

impl Config {
    /// Checks every value, naming the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key, problem: &str| Err(ConfigError::new("kasmina", key, problem));
        if self.window == 0 {
            return bad("window", "must be at least 1");
        }
        for (key, v) in [
            ("min_grad_norm", self.min_grad_norm),
            ("max_loss_cv", self.max_loss_cv),
            ("regression_tolerance", self.regression_tolerance),
            (
                "isolation_max_relative_error",
                self.isolation_max_relative_error,
            ),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(key, "must be finite and >= 0");
            }
        }
        if !(self.max_slowdown.is_finite()
            && (self.max_slowdown == 0.0 || self.max_slowdown >= 1.0))
        {
            return bad("max_slowdown", "must be 0 (off) or finite and >= 1");
        }
        if !(self.max_seed_mac_ratio.is_finite() && self.max_seed_mac_ratio >= 0.0) {
            return bad("max_seed_mac_ratio", "must be finite and >= 0 (0 is off)");
        }
        if !self.min_contribution.is_finite() {
            return bad("min_contribution", "must be finite");
        }
        if !(self.isolation_min_cosine > 0.0 && self.isolation_min_cosine <= 1.0) {
            return bad("isolation_min_cosine", "must be in (0, 1]");
        }
        if self.isolation_samples == 0 {
            return bad("isolation_samples", "must be at least 1");
        }
        if self.isolation_check_every_steps == 0 {
            return bad("isolation_check_every_steps", "must be at least 1");
        }
        if self.breaker_failures == 0 || self.breaker_successes == 0 {
            return bad("breaker_failures", "breaker counts must be at least 1");
        }
        Ok(())
    }

    /// The gates, with the shared embargo length.
    pub fn gates(&self, embargo_epochs: u64) -> GateConfig {
        GateConfig {
            window: self.window,
            min_grad_norm: self.min_grad_norm,
            max_loss_cv: self.max_loss_cv,
            regression_tolerance: self.regression_tolerance,
            min_contribution: self.min_contribution,
            min_steps: self.min_steps,
            min_epochs: self.min_epochs,
            embargo_epochs,
            max_slowdown: self.max_slowdown,
            max_seed_mac_ratio: self.max_seed_mac_ratio,
        }
    }

    /// The isolation monitor, its sampler seeded with `seed`.
    pub fn isolation(&self, seed: u64) -> IsolationConfig {
        IsolationConfig {
            samples: self.isolation_samples,
            max_relative_error: self.isolation_max_relative_error,
            min_cosine: self.isolation_min_cosine,
            breaker: BreakerConfig {
                failures_to_open: self.breaker_failures,
                open_for: Duration::from_secs(self.breaker_open_s),
                successes_to_close: self.breaker_successes,
            },
            seed,
            check_every_steps: self.isolation_check_every_steps,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        assert_eq!(Config::default().validate(), Ok(()));
        let c = Config {
            window: 0,
            ..Config::default()
        };
        assert_eq!(
            c.validate().map_err(|e| e.path()),
            Err("kasmina.window".into())
        );
        let c = Config {
            isolation_min_cosine: 1.5,
            ..Config::default()
        };
        assert_eq!(
            c.validate().map_err(|e| e.path()),
            Err("kasmina.isolation_min_cosine".into())
        );
        let g = Config::default().gates(7);
        assert_eq!((g.embargo_epochs, g.window), (7, 10));
        // One source of defaults: the config's gates are GateConfig's own.
        let embargo = u64::from(leyline::Config::default().limits.embargo_epochs);
        assert_eq!(Config::default().gates(embargo), GateConfig::default());
    }
}
