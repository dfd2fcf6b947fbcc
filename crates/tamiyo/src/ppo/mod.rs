//! PPO for the learned controller (issue #17): generalised advantage
//! estimation, advantage normalisation, and the clipped surrogate objective
//! with a value loss and an entropy bonus, on candle tensors so that the
//! policy and value networks get their gradients from it; [`Learner`] runs
//! whole updates of the GNN (minibatches, gradient clipping, AdamW, KL early
//! stop), and behaviour-cloning updates toward a teacher's decisions
//! ([`Learner::imitate`]). Every setting is in [`PpoConfig`] (`[tamiyo.ppo]`).

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

mod imitate;
mod update;
pub use imitate::ImitationStats;
pub use update::{Learner, Sample, UpdateStats};

/// The `[tamiyo.ppo]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PpoConfig {
    /// Discount per decision (default 0.99).
    pub gamma: f64,
    /// GAE's λ (default 0.95).
    pub lambda: f64,
    /// The ratio is clipped to [1 − clip, 1 + clip] (default 0.2).
    pub clip: f64,
    /// Weight of the value loss (default 0.5).
    pub value_coef: f64,
    /// Weight of the entropy bonus (default 0.01).
    pub entropy_coef: f64,
    /// Gradient-norm clip (default 0.5).
    pub max_grad_norm: f64,
    /// Passes over a batch of trajectories (default 4).
    pub epochs: u32,
    /// Decisions per minibatch (default 64).
    pub minibatch: u32,
    /// An update stops early once the approximate KL to the old policy
    /// passes this (default 0.02; 0 = never).
    pub target_kl: f64,
    /// Learning rate (default 3e-4).
    pub learning_rate: f64,
    /// Reference hosts the episodes of `esper policy train` run on, in turn
    /// (default `cnn-impaired`, `mlp`, `cnn`): where growth pays and where it
    /// does not, so that the policy learns both.
    pub hosts: Vec<String>,
    /// Epochs of each episode (default 6).
    pub episode_epochs: u32,
    /// Training images of each episode (default: `tolaria.train_size`).
    pub episode_train_size: Option<usize>,
    /// Episodes per update (default 8).
    pub episodes_per_update: u32,
    /// Episodes draw their run seeds from `seed_pool_start ..
    /// seed_pool_start + seed_pool_size` (default 1000, 16): seeds no test and
    /// no held-out cohort uses, so that a trained policy is judged on runs
    /// it never saw.
    pub seed_pool_start: u64,
    /// See `seed_pool_start`.
    pub seed_pool_size: u64,
    /// Reward: points of validation accuracy one host's worth of added
    /// parameters costs (default 2).
    pub param_rent_points: f64,
    /// Reward: points one host's worth of added forward MACs per image costs
    /// (default 0.5).
    pub mac_rent_points: f64,
    /// Reward: points charged to the last decision of an episode that ended
    /// early (the governor halted it; default 10).
    pub halt_penalty_points: f64,
    /// Weight of the teacher's negative log-likelihood, over the stored
    /// demonstrations of `esper policy train --imitate`, added to every PPO
    /// minibatch's loss (default 0: pure PPO). A regulariser that keeps a
    /// cloned policy near its teacher where PPO's few, noisy advantages do
    /// not say otherwise, so that one bad update cannot erase growing.
    pub imitation_coef: f64,
}

impl Default for PpoConfig {
    fn default() -> Self {
        Self {
            gamma: 0.99,
            lambda: 0.95,
            clip: 0.2,
            value_coef: 0.5,
            entropy_coef: 0.01,
            max_grad_norm: 0.5,
            epochs: 4,
            minibatch: 64,
            target_kl: 0.02,
            learning_rate: 3e-4,
            hosts: vec!["cnn-impaired".into(), "mlp".into(), "cnn".into()],
            episode_epochs: 6,
            episode_train_size: None,
            episodes_per_update: 8,
            seed_pool_start: 1000,
            seed_pool_size: 16,
            param_rent_points: 2.0,
            mac_rent_points: 0.5,
            halt_penalty_points: 10.0,
            imitation_coef: 0.0,
        }
    }
}

impl PpoConfig {
    /// Checks every value, naming the first bad key.
    pub fn validate(&self) -> std::result::Result<(), leyline::ConfigError> {
        let bad =
            |key: &str, problem: &str| Err(leyline::ConfigError::new("tamiyo.ppo", key, problem));
        let unit = |x: f64| (0.0..=1.0).contains(&x);
        if !unit(self.gamma) {
            return bad("gamma", "must be in [0, 1]");
        }
        if !unit(self.lambda) {
            return bad("lambda", "must be in [0, 1]");
        }
        if !(self.clip > 0.0 && self.clip < 1.0) {
            return bad("clip", "must be in (0, 1)");
        }
        if !(self.value_coef >= 0.0 && self.entropy_coef >= 0.0) {
            return bad("value_coef", "value_coef and entropy_coef must be ≥ 0");
        }
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm > 0.0) {
            return bad("max_grad_norm", "must be > 0");
        }
        if self.epochs == 0 || self.minibatch == 0 {
            return bad("epochs", "epochs and minibatch must be at least 1");
        }
        if !(self.target_kl.is_finite() && self.target_kl >= 0.0) {
            return bad("target_kl", "must be ≥ 0");
        }
        if !(self.learning_rate > 0.0 && self.learning_rate < 1.0) {
            return bad("learning_rate", "must be in (0, 1)");
        }
        if self.hosts.is_empty() {
            return bad("hosts", "name at least one reference host");
        }
        if self.episode_epochs == 0 || self.episodes_per_update == 0 {
            return bad(
                "episode_epochs",
                "episode_epochs and episodes_per_update must be at least 1",
            );
        }
        if self.episode_train_size == Some(0) {
            return bad("episode_train_size", "must be at least 1");
        }
        if self.seed_pool_size == 0 {
            return bad("seed_pool_size", "must be at least 1");
        }
        for (key, v) in [
            ("param_rent_points", self.param_rent_points),
            ("mac_rent_points", self.mac_rent_points),
            ("halt_penalty_points", self.halt_penalty_points),
            ("imitation_coef", self.imitation_coef),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(key, "must be finite and >= 0");
            }
        }
        Ok(())
    }
}

/// One decision of a trajectory, as GAE needs it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    /// Reward received after it.
    pub reward: f64,
    /// The value head's estimate at it.
    pub value: f64,
    /// Whether the episode ended after it (no bootstrap beyond).
    pub done: bool,
}

/// Generalised advantage estimation over one trajectory: returns
/// (advantages, returns), `returns = advantages + values`. `last_value`
/// bootstraps past the final step unless it ended the episode.
pub fn gae(steps: &[Step], last_value: f64, gamma: f64, lambda: f64) -> (Vec<f64>, Vec<f64>) {
    let mut advantages = vec![0.0; steps.len()];
    let mut next_value = last_value;
    let mut running = 0.0;
    for (i, s) in steps.iter().enumerate().rev() {
        let live = if s.done { 0.0 } else { 1.0 };
        let delta = s.reward + gamma * next_value * live - s.value;
        running = delta + gamma * lambda * live * running;
        advantages[i] = running;
        next_value = s.value;
    }
    let returns = advantages
        .iter()
        .zip(steps)
        .map(|(a, s)| a + s.value)
        .collect();
    (advantages, returns)
}

/// Advantages shifted to mean 0 and scaled to standard deviation 1 (left as
/// they are when they do not vary).
pub fn normalise(advantages: &[f64]) -> Vec<f64> {
    let n = advantages.len() as f64;
    if advantages.len() < 2 {
        return advantages.to_vec();
    }
    let mean = advantages.iter().sum::<f64>() / n;
    let var = advantages.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / n;
    let std = var.sqrt();
    if std < 1e-8 {
        return advantages.iter().map(|a| a - mean).collect();
    }
    advantages.iter().map(|a| (a - mean) / std).collect()
}

/// One minibatch, as tensors of shape `[n]` (f32).
#[derive(Debug)]
pub struct Batch<'a> {
    /// Joint log-probabilities of the taken actions under the current policy
    /// (with gradient).
    pub log_probs: &'a Tensor,
    /// … under the policy that collected them (constants).
    pub old_log_probs: &'a Tensor,
    /// Normalised advantages.
    pub advantages: &'a Tensor,
    /// The value head now (with gradient).
    pub values: &'a Tensor,
    /// GAE returns.
    pub returns: &'a Tensor,
    /// Entropy of the heads each action used, under the current policy.
    pub entropy: &'a Tensor,
}

/// What one loss evaluation measured.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LossStats {
    /// The clipped surrogate (to be minimised: its negative objective).
    pub policy: f64,
    /// Mean squared value error.
    pub value: f64,
    /// Mean entropy.
    pub entropy: f64,
    /// Approximate KL to the old policy: mean of (r − 1) − ln r, r the
    /// probability ratio new / old (≥ 0).
    pub approx_kl: f64,
    /// Share of decisions whose ratio was clipped.
    pub clip_fraction: f64,
}

fn tensor_error(e: candle_core::Error) -> Error {
    Error::Action(format!("PPO loss: {e}"))
}

/// The PPO loss to minimise: `−min(r·A, clip(r)·A) + c_v·(V − R)² − c_e·H`,
/// each averaged over the minibatch, with `r = exp(log π − log π_old)`.
pub fn loss(batch: &Batch<'_>, config: &PpoConfig) -> Result<(Tensor, LossStats)> {
    let f = |t: candle_core::Result<Tensor>| t.map_err(tensor_error);
    let ratio = f((batch.log_probs - batch.old_log_probs).and_then(|d| d.exp()))?;
    let surrogate = f(&ratio * batch.advantages)?;
    let clipped = f(ratio
        .clamp(1.0 - config.clip, 1.0 + config.clip)
        .and_then(|r| r * batch.advantages))?;
    let policy = f(surrogate
        .minimum(&clipped)
        .and_then(|m| m.mean_all())
        .and_then(|m| m.neg()))?;
    let value = f((batch.values - batch.returns)
        .and_then(|d| d.sqr())
        .and_then(|d| d.mean_all()))?;
    let entropy = f(batch.entropy.mean_all())?;
    let weighted_value = f(&value * config.value_coef)?;
    let weighted_entropy = f(&entropy * config.entropy_coef)?;
    let total = f((&policy + &weighted_value).and_then(|t| t - &weighted_entropy))?;
    let scalar = |t: &Tensor| -> Result<f64> {
        t.to_dtype(DType::F64)
            .and_then(|t| t.to_scalar::<f64>())
            .map_err(tensor_error)
    };
    // k3 = (r − 1) − ln r: unbiased and never negative (mean(old − new)
    // is unbiased too but swings below 0 on small batches, which reads as
    // nonsense in a progress line and under-triggers the KL stop).
    let log_ratio = f(batch.log_probs - batch.old_log_probs)?;
    let approx_kl = f((&ratio - 1.0)
        .and_then(|r| r - &log_ratio)
        .and_then(|d| d.mean_all()))?;
    let clip_fraction = f(ratio
        .affine(1.0, -1.0)
        .and_then(|d| d.abs())
        .and_then(|d| d.gt(config.clip))
        .and_then(|m| m.to_dtype(DType::F32))
        .and_then(|m| m.mean_all()))?;
    let stats = LossStats {
        policy: scalar(&policy)?,
        value: scalar(&value)?,
        entropy: scalar(&entropy)?,
        approx_kl: scalar(&approx_kl)?,
        clip_fraction: scalar(&clip_fraction)?,
    };
    Ok((total, stats))
}

#[cfg(test)]
mod tests;
