//! The governor: decides whether a training loss is healthy or an explosion.
//!
//! A loss is an explosion when it is not finite, or — after `warmup_steps`
//! healthy steps — when it is both more than `sigma` standard deviations above the
//! exponentially weighted mean of recent healthy losses *and* more than `ratio`
//! times that mean. Requiring both keeps ordinary minibatch noise (many sigmas
//! once the loss is small and steady, but not several times the mean) from
//! triggering rollbacks. Only healthy losses update the statistics.
//!
//! A loss can also climb without ever spiking (a learning rate far too high
//! makes each step a little worse than the last, and the moving mean follows):
//! once warm, a moving mean above `divergence_ratio` times the mean of the
//! warmup losses is a divergence, judged like an explosion. The trainer keeps
//! a copy of the governor with its known-good state and restores it with the
//! weights, so a rolled-back model is judged by the statistics it had then.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The `[tolaria.governor]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GovernorConfig {
    /// Weight of the newest loss in the moving statistics (default 0.05).
    pub ewma_alpha: f64,
    /// Standard deviations above the mean that count as a spike (default 6).
    pub sigma: f64,
    /// Multiple of the mean that counts as a spike (default 3).
    pub ratio: f64,
    /// Healthy steps observed before spikes are judged (default 20).
    pub warmup_steps: u64,
    /// Moving mean, as a multiple of the warmup losses' mean, that counts as a
    /// divergence (default 10).
    pub divergence_ratio: f64,
    /// Epoch ends in a row with validation accuracy below 1.5 × chance
    /// (1 / classes) after which the run halts as not learning (default 2;
    /// 0 turns the rule off).
    pub chance_epochs: u32,
    /// Batch size `sigma` and `ratio` are set for (default 128). A mean loss
    /// over fewer images is noisier and heavy-tailed (one misclassified
    /// digit in a batch of 8 lifts it several-fold), so at a smaller batch
    /// both thresholds widen by √(reference_batch / batch_size): batch 8
    /// judges at 24 sigma and 9 × the mean. 0 turns the scaling off.
    pub reference_batch: usize,
}

impl Default for GovernorConfig {
    fn default() -> Self {
        Self {
            ewma_alpha: 0.05,
            sigma: 6.0,
            ratio: 3.0,
            warmup_steps: 20,
            divergence_ratio: 10.0,
            chance_epochs: 2,
            reference_batch: 128,
        }
    }
}

impl GovernorConfig {
    /// Checks the values; `prefix` is the section's dotted path.
    pub fn validate(&self, prefix: &str) -> Result<()> {
        let bad = |key: &str, detail: String| {
            Err(Error::Config(leyline::ConfigError::at(
                &format!("{prefix}.{key}"),
                detail,
            )))
        };
        if !(self.ewma_alpha > 0.0 && self.ewma_alpha < 1.0) {
            return bad(
                "ewma_alpha",
                format!("{} must be in (0, 1)", self.ewma_alpha),
            );
        }
        if !(self.sigma.is_finite() && self.sigma > 0.0) {
            return bad("sigma", format!("{} must be > 0", self.sigma));
        }
        if !(self.ratio.is_finite() && self.ratio > 1.0) {
            return bad("ratio", format!("{} must be > 1", self.ratio));
        }
        if !(self.divergence_ratio.is_finite() && self.divergence_ratio > 1.0) {
            return bad(
                "divergence_ratio",
                format!("{} must be > 1", self.divergence_ratio),
            );
        }
        Ok(())
    }
}

/// The governor's judgement of one loss.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Verdict {
    /// Train on.
    Healthy,
    /// Roll back; the string says why.
    Explosion(String),
}

/// Moving statistics of healthy losses.
#[derive(Debug, Clone)]
pub(crate) struct Governor {
    config: GovernorConfig,
    mean: f64,
    variance: f64,
    seen: u64,
    /// Sum of the warmup losses, then (once warm) their mean.
    warmup: f64,
    /// How much wider the spike thresholds are at this batch size (≥ 1).
    noise_scale: f64,
}

/// √(reference / batch), at least 1 (no narrowing at bigger batches).
fn noise_scale(config: &GovernorConfig, batch_size: usize) -> f64 {
    if config.reference_batch == 0 || batch_size == 0 {
        return 1.0;
    }
    (config.reference_batch as f64 / batch_size as f64)
        .sqrt()
        .max(1.0)
}

impl Governor {
    /// A governor with no history, for batches of `batch_size`.
    pub(crate) fn new(config: GovernorConfig, batch_size: usize) -> Self {
        Self {
            noise_scale: noise_scale(&config, batch_size),
            config,
            mean: 0.0,
            variance: 0.0,
            seen: 0,
            warmup: 0.0,
        }
    }

    /// Its moving statistics, for a checkpoint.
    pub(crate) fn state(&self) -> crate::checkpoints::GovernorState {
        crate::checkpoints::GovernorState {
            mean: self.mean,
            variance: self.variance,
            seen: self.seen,
            warmup: self.warmup,
        }
    }

    /// A governor with `config` continuing from a checkpoint's statistics.
    pub(crate) fn from_state(
        config: GovernorConfig,
        batch_size: usize,
        state: crate::checkpoints::GovernorState,
    ) -> Self {
        let crate::checkpoints::GovernorState {
            mean,
            variance,
            seen,
            warmup,
        } = state;
        Self {
            noise_scale: noise_scale(&config, batch_size),
            config,
            mean,
            variance,
            seen,
            warmup,
        }
    }

    /// Judges `loss`, learning from it when it is healthy.
    pub(crate) fn observe(&mut self, loss: f64) -> Verdict {
        if !loss.is_finite() {
            return Verdict::Explosion(format!("loss is {loss}"));
        }
        if self.seen >= self.config.warmup_steps {
            let std = self.variance.sqrt();
            let k = self.noise_scale;
            let over_sigma = loss > self.mean + self.config.sigma * k * std;
            let over_ratio = loss > (1.0 + (self.config.ratio - 1.0) * k) * self.mean;
            if over_sigma && over_ratio {
                return Verdict::Explosion(format!(
                    "loss {loss:.4} is {:.1} sigma above its moving mean {:.4} and {:.1}x it",
                    (loss - self.mean) / std.max(f64::MIN_POSITIVE),
                    self.mean,
                    loss / self.mean.max(f64::MIN_POSITIVE)
                ));
            }
        }
        let warm = self.seen >= self.config.warmup_steps;
        let (mean, variance) = if self.seen == 0 {
            (loss, 0.0)
        } else {
            let a = self.config.ewma_alpha;
            let delta = loss - self.mean;
            (
                self.mean + a * delta,
                (1.0 - a) * (self.variance + a * delta * delta),
            )
        };
        if warm && self.warmup > 0.0 && mean > self.config.divergence_ratio * self.warmup {
            // Not learned from: the statistics stay those of a healthy run.
            return Verdict::Explosion(format!(
                "diverged: the moving mean loss {mean:.4} is {:.1}x its warmup mean {:.4}",
                mean / self.warmup,
                self.warmup
            ));
        }
        (self.mean, self.variance) = (mean, variance);
        if !warm {
            self.warmup += loss;
        }
        self.seen += 1;
        if self.seen == self.config.warmup_steps {
            self.warmup /= self.seen as f64;
        }
        Verdict::Healthy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warmed(losses: impl IntoIterator<Item = f64>) -> Governor {
        let mut g = Governor::new(GovernorConfig::default(), 128);
        for l in losses {
            assert_eq!(g.observe(l), Verdict::Healthy);
        }
        g
    }

    #[test]
    fn non_finite_losses_are_explosions_from_the_first_step() {
        let mut g = Governor::new(GovernorConfig::default(), 128);
        assert!(matches!(g.observe(f64::NAN), Verdict::Explosion(r) if r.contains("NaN")));
        assert!(matches!(g.observe(f64::INFINITY), Verdict::Explosion(_)));
    }

    #[test]
    fn spikes_need_both_sigma_and_ratio() {
        // A noisy but steady loss around 0.1.
        let noisy = (0..200).map(|i| 0.1 + 0.02 * ((i * 7 % 11) as f64 / 11.0 - 0.5));
        let mut g = warmed(noisy);
        assert_eq!(
            g.observe(0.25),
            Verdict::Healthy,
            "2.5x the mean but noise-level sigma would be a false alarm"
        );
        assert!(matches!(g.observe(5.0), Verdict::Explosion(r) if r.contains("sigma")));
        // The explosion did not pollute the statistics.
        assert_eq!(g.observe(0.1), Verdict::Healthy);
    }

    #[test]
    fn a_falling_loss_never_trips_the_governor() {
        warmed((0..500).map(|i| 2.3 * (-(i as f64) / 100.0).exp() + 0.05));
    }

    #[test]
    fn a_loss_that_climbs_without_spiking_is_a_divergence() {
        // Warm around 2.3 (an untrained 10-class loss), then each step 4 %
        // worse than the last: never 3x the moving mean at once.
        let mut g = warmed([2.3; 20]);
        let mut loss = 2.3;
        let verdict = (0..400).find_map(|_| {
            loss *= 1.04;
            match g.observe(loss) {
                Verdict::Healthy => None,
                Verdict::Explosion(why) => Some((loss, why)),
            }
        });
        let (at, why) = verdict.expect("a tenfold climb must be caught");
        assert!(why.contains("diverged"), "{why}");
        // The moving mean lags the climb: caught soon after it passes 23.
        assert!(at > 23.0 && at < 60.0, "caught at loss {at}");
        // Judged again from the same statistics, not from the climb.
        assert_eq!(g.observe(2.3), Verdict::Healthy);
    }

    #[test]
    fn nothing_is_judged_during_warmup() {
        let mut g = warmed([0.1; 5]);
        assert_eq!(g.observe(50.0), Verdict::Healthy);
    }

    #[test]
    fn bad_config_names_its_key() {
        let c = GovernorConfig {
            ratio: 1.0,
            ..GovernorConfig::default()
        };
        assert!(
            c.validate("tolaria.governor")
                .unwrap_err()
                .to_string()
                .contains("tolaria.governor.ratio")
        );
    }

    /// Issue #21 item 9: a batch of 8 whose mean loss is 8.7 × the moving
    /// mean (one misclassified digit) is noise there, not at batch 128; an
    /// exploding loss is one at every batch size.
    #[test]
    fn the_spike_thresholds_widen_at_small_batches() {
        let steady = |batch| {
            let mut g = Governor::new(GovernorConfig::default(), batch);
            let noisy = (0..200).map(|i| 0.16 + 0.02 * ((i * 7 % 11) as f64 / 11.0 - 0.5));
            for l in noisy {
                assert_eq!(g.observe(l), Verdict::Healthy);
            }
            g
        };
        assert_eq!(steady(8).observe(1.37), Verdict::Healthy);
        assert_eq!(steady(16).observe(0.88), Verdict::Healthy);
        assert!(matches!(steady(128).observe(1.37), Verdict::Explosion(_)));
        for batch in [8, 16, 128] {
            assert!(
                matches!(steady(batch).observe(50.0), Verdict::Explosion(_)),
                "batch {batch}"
            );
        }
        // Bigger batches are not judged more strictly than the reference.
        assert_eq!(noise_scale(&GovernorConfig::default(), 512), 1.0);
        assert_eq!(noise_scale(&GovernorConfig::default(), 8), 4.0);
        let off = GovernorConfig {
            reference_batch: 0,
            ..GovernorConfig::default()
        };
        assert_eq!(noise_scale(&off, 8), 1.0);
    }
}
