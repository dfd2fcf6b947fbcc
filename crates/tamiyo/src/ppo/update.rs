//! A PPO update of the GNN policy: recorded decisions (graph, mask, action,
//! the log-probability they were taken with) with their advantages and
//! returns, re-evaluated under the current weights in shuffled minibatches
//! for `epochs` passes; each minibatch's loss ([`super::loss`]) is
//! back-propagated, the gradient clipped to `max_grad_norm` (global L2) and
//! applied by AdamW. A pass whose mean approximate KL exceeds 1.5 ×
//! `target_kl` ends the update early (the policy moved enough).

use candle_core::{Device, Tensor};
use candle_nn::Optimizer;
use rand_core::{RngCore, SeedableRng};

use super::{Batch, LossStats, PpoConfig, loss, normalise};
use crate::error::{Error, Result};
use crate::graph::ObservationGraph;
use crate::policy::action::{Action, Mask};
use crate::policy::gnn::GnnModel;

/// One recorded decision, ready for an update.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The graph the policy read.
    pub graph: ObservationGraph,
    /// The legal actions.
    pub mask: Mask,
    /// The action taken.
    pub action: Action,
    /// Its log-probability under the policy that took it.
    pub old_log_prob: f32,
    /// GAE advantage (normalised over the update's samples here).
    pub advantage: f64,
    /// The value target (GAE return).
    pub target: f64,
}

/// What one update did.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct UpdateStats {
    /// Passes over the samples (fewer than configured when KL stopped it).
    pub epochs: u32,
    /// Minibatches stepped.
    pub minibatches: u32,
    /// Whether the KL bound ended it early.
    pub stopped_early: bool,
    /// Loss terms of the last pass (means over its minibatches).
    pub last: LossStats,
    /// Global gradient L2 norm before clipping, mean over minibatches.
    pub grad_norm: f64,
    /// Mean negative log-likelihood of the demonstrations in the last pass
    /// (nats), when `imitation_coef` and demonstrations regularised it.
    pub imitation_nll: Option<f64>,
}

pub(super) fn tensor_error(e: candle_core::Error) -> Error {
    Error::Action(format!("PPO update: {e}"))
}

/// Fisher–Yates over `order` with the seeded stream: one pass's minibatch
/// order.
pub(super) fn shuffle(order: &mut [usize], rng: &mut rand_chacha::ChaCha8Rng) {
    for i in (1..order.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
}

/// The GNN's weights and their optimizer.
pub struct Learner {
    model: GnnModel,
    optimizer: candle_nn::AdamW,
    config: PpoConfig,
}

impl std::fmt::Debug for Learner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Learner")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Learner {
    /// A learner for `model` (its weights are updated in place).
    pub fn new(model: GnnModel, config: PpoConfig) -> Result<Self> {
        config
            .validate()
            .map_err(|e| Error::Action(format!("PPO config: {e}")))?;
        let optimizer = candle_nn::AdamW::new(
            model.vars(),
            candle_nn::ParamsAdamW {
                lr: config.learning_rate,
                weight_decay: 0.0,
                ..candle_nn::ParamsAdamW::default()
            },
        )
        .map_err(tensor_error)?;
        Ok(Self {
            model,
            optimizer,
            config,
        })
    }

    /// The model being trained.
    pub fn model(&self) -> &GnnModel {
        &self.model
    }

    /// The hyperparameters it was made with.
    pub(super) fn config(&self) -> &PpoConfig {
        &self.config
    }

    pub(super) fn optimizer_mut(&mut self) -> &mut candle_nn::AdamW {
        &mut self.optimizer
    }

    /// One PPO update on `samples`; `shuffle_seed` orders the minibatches.
    ///
    /// With `imitation_coef` > 0 and `demos` (a teacher's recorded
    /// decisions), each minibatch also takes the next `minibatch` of them in
    /// a shuffled, cycling order and adds `imitation_coef` × their mean
    /// negative log-likelihood to its loss.
    pub fn update(
        &mut self,
        samples: &[Sample],
        demos: &[Sample],
        shuffle_seed: u64,
    ) -> Result<UpdateStats> {
        if samples.is_empty() {
            return Err(Error::Action("PPO update: no samples".into()));
        }
        let advantages = normalise(&samples.iter().map(|s| s.advantage).collect::<Vec<_>>());
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(shuffle_seed);
        let mut order: Vec<usize> = (0..samples.len()).collect();
        let mut stats = UpdateStats::default();
        let mut grad_norms = Vec::new();
        let size = self.config.minibatch as usize;
        let coef = self.config.imitation_coef;
        let regularised = coef > 0.0 && !demos.is_empty();
        let mut demo_order: Vec<usize> = (0..demos.len()).collect();
        let mut demo_at = demos.len();
        for _ in 0..self.config.epochs {
            shuffle(&mut order, &mut rng);
            let mut pass = Vec::new();
            let mut nlls = Vec::new();
            for chunk in order.chunks(size) {
                let (mut total, loss_stats) = self.minibatch_loss(samples, &advantages, chunk)?;
                if regularised {
                    let mut picked = Vec::with_capacity(size);
                    while picked.len() < size.min(demos.len()) {
                        if demo_at == demos.len() {
                            shuffle(&mut demo_order, &mut rng);
                            demo_at = 0;
                        }
                        picked.push(&demos[demo_order[demo_at]]);
                        demo_at += 1;
                    }
                    let nll = self.nll(&picked)?;
                    nlls.push(nll.to_scalar::<f32>().map_err(tensor_error)?);
                    total = (nll * coef).and_then(|r| total + r).map_err(tensor_error)?;
                }
                let mut grads = total.backward().map_err(tensor_error)?;
                grad_norms.push(self.clip(&mut grads)?);
                self.optimizer.step(&grads).map_err(tensor_error)?;
                pass.push(loss_stats);
                stats.minibatches += 1;
            }
            stats.epochs += 1;
            if regularised {
                stats.imitation_nll = Some(
                    nlls.iter().map(|&x| f64::from(x)).sum::<f64>() / nlls.len().max(1) as f64,
                );
            }
            let n = pass.len().max(1) as f64;
            let mean = |f: fn(&LossStats) -> f64| pass.iter().map(f).sum::<f64>() / n;
            stats.last = LossStats {
                policy: mean(|s| s.policy),
                value: mean(|s| s.value),
                entropy: mean(|s| s.entropy),
                approx_kl: mean(|s| s.approx_kl),
                clip_fraction: mean(|s| s.clip_fraction),
            };
            if self.config.target_kl > 0.0 && stats.last.approx_kl > 1.5 * self.config.target_kl {
                stats.stopped_early = true;
                break;
            }
        }
        stats.grad_norm = grad_norms.iter().sum::<f64>() / grad_norms.len().max(1) as f64;
        Ok(stats)
    }

    /// The mean negative log-probability of `demos`' actions (a scalar
    /// tensor on the graph, to back-propagate).
    pub(super) fn nll(&self, demos: &[&Sample]) -> Result<Tensor> {
        let mut lps = Vec::with_capacity(demos.len());
        for s in demos {
            lps.push(self.model.evaluate(&s.graph, &s.mask, &s.action)?.log_prob);
        }
        Tensor::stack(&lps, 0)
            .and_then(|t| t.mean_all())
            .and_then(|t| t.neg())
            .map_err(tensor_error)
    }

    fn minibatch_loss(
        &self,
        samples: &[Sample],
        advantages: &[f64],
        chunk: &[usize],
    ) -> Result<(Tensor, LossStats)> {
        let f = |r: candle_core::Result<Tensor>| r.map_err(tensor_error);
        let (mut lps, mut hs, mut vs) = (Vec::new(), Vec::new(), Vec::new());
        let (mut old, mut adv, mut ret) = (Vec::new(), Vec::new(), Vec::new());
        for &i in chunk {
            let s = &samples[i];
            let e = self.model.evaluate(&s.graph, &s.mask, &s.action)?;
            lps.push(e.log_prob);
            hs.push(e.entropy);
            vs.push(e.value);
            old.push(s.old_log_prob);
            adv.push(advantages[i] as f32);
            ret.push(s.target as f32);
        }
        let stack = |parts: &[Tensor]| f(Tensor::stack(parts, 0));
        let constant = |v: &[f32]| f(Tensor::new(v, &Device::Cpu));
        let (log_probs, entropy, values) = (stack(&lps)?, stack(&hs)?, stack(&vs)?);
        let (old, adv, ret) = (constant(&old)?, constant(&adv)?, constant(&ret)?);
        loss(
            &Batch {
                log_probs: &log_probs,
                old_log_probs: &old,
                advantages: &adv,
                values: &values,
                returns: &ret,
                entropy: &entropy,
            },
            &self.config,
        )
    }

    /// Scales every gradient so that their global L2 norm is at most
    /// `max_grad_norm`; returns the norm before.
    pub(super) fn clip(&self, grads: &mut candle_core::backprop::GradStore) -> Result<f64> {
        let vars = self.model.vars();
        let mut squared = 0f64;
        for v in &vars {
            if let Some(g) = grads.get(v.as_tensor()) {
                let s = g
                    .sqr()
                    .and_then(|s| s.sum_all())
                    .and_then(|s| s.to_scalar::<f32>())
                    .map_err(tensor_error)?;
                squared += f64::from(s);
            }
        }
        let norm = squared.sqrt();
        if !norm.is_finite() {
            return Err(Error::Action(format!("PPO update: gradient norm {norm}")));
        }
        if norm > self.config.max_grad_norm {
            let scale = self.config.max_grad_norm / norm;
            for v in &vars {
                if let Some(g) = grads.remove(v.as_tensor()) {
                    grads.insert(v.as_tensor(), (g * scale).map_err(tensor_error)?);
                }
            }
        }
        Ok(norm)
    }
}
