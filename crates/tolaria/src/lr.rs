//! The learning-rate controller, keyed on the global optimizer step.
//!
//! The LR of every group is `base_lr × factor(step)`, where `factor` is the
//! product of an optional linear warmup and the schedule:
//!
//! - warmup over `warmup_steps`: from `warmup_start_factor` to 1, linearly;
//! - `constant`: 1;
//! - `step { step_size, gamma }`: `gamma^(step / step_size)`;
//! - `cosine { t_max, min_factor, after }`: counted from the end of the warmup,
//!   `min + (1 − min)(1 + cos(π s / t_max)) / 2`; after `t_max` it either stays at
//!   `min_factor` (`after = "floor"`) or restarts the cosine (`after = "restart"`).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What a cosine schedule does after `t_max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AfterTMax {
    /// Stay at the minimum.
    Floor,
    /// Start a new cosine period.
    Restart,
}

/// The schedule after warmup. `policy` selects it; unknown policies are config
/// errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    /// Factor 1.
    Constant,
    /// Multiply by `gamma` every `step_size` steps.
    Step {
        /// Steps between decays.
        step_size: u64,
        /// Decay factor.
        gamma: f64,
    },
    /// Cosine annealing to `min_factor` over `t_max` steps.
    Cosine {
        /// Length of one period, in steps.
        t_max: u64,
        /// Factor at the bottom of the period.
        min_factor: f64,
        /// Behaviour after `t_max`.
        after: AfterTMax,
    },
}

/// The `[tolaria.lr]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LrConfig {
    /// The schedule (default `{ policy = "constant" }`).
    pub schedule: Schedule,
    /// Steps of linear warmup (default 0: none).
    pub warmup_steps: u64,
    /// Factor at step 0 of the warmup (default 0.1).
    pub warmup_start_factor: f64,
}

impl Default for LrConfig {
    fn default() -> Self {
        Self {
            schedule: Schedule::Constant,
            warmup_steps: 0,
            warmup_start_factor: 0.1,
        }
    }
}

impl LrConfig {
    /// Checks the values; `prefix` is the section's dotted path.
    pub fn validate(&self, prefix: &str) -> Result<()> {
        let bad = |key: &str, detail: String| {
            Err(Error::Config(leyline::ConfigError::at(
                &format!("{prefix}.{key}"),
                detail,
            )))
        };
        if !(self.warmup_start_factor > 0.0 && self.warmup_start_factor <= 1.0) {
            return bad(
                "warmup_start_factor",
                format!("{} must be in (0, 1]", self.warmup_start_factor),
            );
        }
        match &self.schedule {
            Schedule::Constant => Ok(()),
            Schedule::Step { step_size, gamma } => {
                if *step_size == 0 {
                    bad("schedule.step_size", "must be at least 1".into())
                } else if !(*gamma > 0.0 && *gamma <= 1.0) {
                    bad("schedule.gamma", format!("{gamma} must be in (0, 1]"))
                } else {
                    Ok(())
                }
            }
            Schedule::Cosine {
                t_max, min_factor, ..
            } => {
                if *t_max == 0 {
                    bad("schedule.t_max", "must be at least 1".into())
                } else if !(0.0..=1.0).contains(min_factor) {
                    bad(
                        "schedule.min_factor",
                        format!("{min_factor} must be in [0, 1]"),
                    )
                } else {
                    Ok(())
                }
            }
        }
    }

    /// The LR factor at global optimizer `step` (0-based).
    pub fn factor(&self, step: u64) -> f64 {
        let warmup = if step < self.warmup_steps {
            self.warmup_start_factor
                + (1.0 - self.warmup_start_factor) * step as f64 / self.warmup_steps as f64
        } else {
            1.0
        };
        let s = step.saturating_sub(self.warmup_steps);
        let schedule = match &self.schedule {
            Schedule::Constant => 1.0,
            Schedule::Step { step_size, gamma } => gamma.powf((s / (*step_size).max(1)) as f64),
            Schedule::Cosine {
                t_max,
                min_factor,
                after,
            } => {
                let t_max = (*t_max).max(1);
                let phase = match after {
                    AfterTMax::Floor if s >= t_max => return warmup * min_factor,
                    AfterTMax::Floor => s,
                    AfterTMax::Restart => s % t_max,
                };
                min_factor
                    + (1.0 - min_factor)
                        * (1.0 + (std::f64::consts::PI * phase as f64 / t_max as f64).cos())
                        / 2.0
            }
        };
        warmup * schedule
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cosine(after: AfterTMax) -> LrConfig {
        LrConfig {
            schedule: Schedule::Cosine {
                t_max: 100,
                min_factor: 0.1,
                after,
            },
            ..LrConfig::default()
        }
    }

    #[test]
    fn documented_points() {
        assert_eq!(LrConfig::default().factor(12345), 1.0);
        let step = LrConfig {
            schedule: Schedule::Step {
                step_size: 10,
                gamma: 0.5,
            },
            ..LrConfig::default()
        };
        assert_eq!(
            (step.factor(9), step.factor(10), step.factor(25)),
            (1.0, 0.5, 0.25)
        );
        let c = cosine(AfterTMax::Floor);
        assert!((c.factor(0) - 1.0).abs() < 1e-12);
        assert!((c.factor(50) - 0.55).abs() < 1e-12);
        assert!((c.factor(100) - 0.1).abs() < 1e-12);
        assert!((c.factor(10_000) - 0.1).abs() < 1e-12, "floor after t_max");
        let r = cosine(AfterTMax::Restart);
        assert!(
            (r.factor(150) - r.factor(50)).abs() < 1e-12,
            "restart after t_max"
        );
        let w = LrConfig {
            warmup_steps: 10,
            warmup_start_factor: 0.1,
            ..cosine(AfterTMax::Floor)
        };
        assert!((w.factor(0) - 0.1).abs() < 1e-12);
        assert!((w.factor(5) - 0.55).abs() < 1e-12);
        assert!(
            (w.factor(10) - 1.0).abs() < 1e-12,
            "cosine starts after the warmup"
        );
    }

    #[test]
    fn unknown_policies_and_bad_values_are_config_errors() {
        let err = toml::from_str::<LrConfig>("[schedule]\npolicy = \"exponential\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("exponential"), "{err}");
        let err = toml::from_str::<LrConfig>("[schedule]\npolicy = \"step\"\nstep_size = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("gamma"), "{err}");
        let c = LrConfig {
            schedule: Schedule::Cosine {
                t_max: 0,
                min_factor: 0.0,
                after: AfterTMax::Floor,
            },
            ..LrConfig::default()
        };
        assert!(
            c.validate("tolaria.lr")
                .unwrap_err()
                .to_string()
                .contains("tolaria.lr.schedule.t_max")
        );
        let w = LrConfig {
            warmup_start_factor: 0.0,
            ..LrConfig::default()
        };
        assert!(w.validate("tolaria.lr").is_err());
    }

    proptest! {
        #[test]
        fn factors_are_positive_bounded_and_warmup_is_monotone(
            t_max in 1u64..500, min in 0.0f64..1.0, warm in 0u64..100, start in 0.01f64..1.0, step in 0u64..5_000, restart: bool,
        ) {
            let after = if restart { AfterTMax::Restart } else { AfterTMax::Floor };
            let c = LrConfig { schedule: Schedule::Cosine { t_max, min_factor: min, after }, warmup_steps: warm, warmup_start_factor: start };
            let f = c.factor(step);
            prop_assert!((0.0..=1.0 + 1e-12).contains(&f), "{f}");
            prop_assert!(f + 1e-12 >= start.min(1.0) * min, "{f}");
            if step + 1 < warm {
                prop_assert!(c.factor(step + 1) >= f, "warmup must not decrease");
            }
            if !restart && step >= warm + t_max {
                prop_assert!((f - min).abs() < 1e-12);
            }
            if step >= warm && step + 1 < warm + t_max {
                prop_assert!(c.factor(step + 1) <= f + 1e-12, "cosine must not increase within a period");
            }
        }

        #[test]
        fn step_schedule_is_monotone(step_size in 1u64..100, gamma in 0.01f64..1.0, step in 0u64..10_000) {
            let c = LrConfig { schedule: Schedule::Step { step_size, gamma }, ..LrConfig::default() };
            prop_assert!(c.factor(step + 1) <= c.factor(step));
        }
    }
}
