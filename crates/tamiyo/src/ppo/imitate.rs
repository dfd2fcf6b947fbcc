//! Behaviour cloning: an update that moves the policy toward a teacher's
//! recorded decisions (`exploration = "imitate"` episodes) instead of
//! toward higher advantage — the warm start `esper policy train --imitate`
//! gives PPO, so that its first episodes already grow where the heuristic
//! would rather than at random.
//!
//! The loss is the teacher action's negative joint log-probability under
//! the masked factored heads (cross-entropy on each head the action uses),
//! plus `value_coef` × the value head's squared error against the samples'
//! returns, so the value head is trained too. Minibatches, gradient clipping
//! and AdamW as in [`Learner::update`].

use candle_core::{DType, Device, Tensor};
use candle_nn::Optimizer;
use rand_core::SeedableRng;

use super::update::{Learner, Sample, shuffle, tensor_error};
use crate::error::{Error, Result};
use crate::policy::action;

/// What one imitation update did.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ImitationStats {
    /// Passes over the samples.
    pub epochs: u32,
    /// Minibatches stepped.
    pub minibatches: u32,
    /// Mean negative log-probability of the teacher's actions in the last
    /// pass (nats; 0 would be certainty).
    pub nll: f64,
    /// Mean squared value error in the last pass.
    pub value: f64,
    /// After the update, the share of samples whose most probable action
    /// (greedy over the masked heads) is exactly the teacher's.
    pub agreement: f64,
}

impl Learner {
    /// One behaviour-cloning update on `samples` (their advantages are
    /// ignored; their targets train the value head); `shuffle_seed` orders
    /// the minibatches.
    pub fn imitate(&mut self, samples: &[Sample], shuffle_seed: u64) -> Result<ImitationStats> {
        if samples.is_empty() {
            return Err(Error::Action("imitation update: no samples".into()));
        }
        let f = |r: candle_core::Result<Tensor>| r.map_err(tensor_error);
        let scalar = |t: &Tensor| -> Result<f64> {
            t.to_dtype(DType::F64)
                .and_then(|t| t.to_scalar::<f64>())
                .map_err(tensor_error)
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(shuffle_seed);
        let mut order: Vec<usize> = (0..samples.len()).collect();
        let mut stats = ImitationStats::default();
        let size = self.config().minibatch as usize;
        let value_coef = self.config().value_coef;
        for _ in 0..self.config().epochs {
            shuffle(&mut order, &mut rng);
            let (mut nll_sum, mut value_sum, mut batches) = (0.0, 0.0, 0u32);
            for chunk in order.chunks(size) {
                let (mut lps, mut vs, mut targets) = (Vec::new(), Vec::new(), Vec::new());
                for &i in chunk {
                    let s = &samples[i];
                    let e = self.model().evaluate(&s.graph, &s.mask, &s.action)?;
                    lps.push(e.log_prob);
                    vs.push(e.value);
                    targets.push(s.target as f32);
                }
                let nll = f(Tensor::stack(&lps, 0)
                    .and_then(|t| t.mean_all())
                    .and_then(|t| t.neg()))?;
                let targets = f(Tensor::new(targets.as_slice(), &Device::Cpu))?;
                let value = f(Tensor::stack(&vs, 0)
                    .and_then(|v| v - &targets)
                    .and_then(|d| d.sqr())
                    .and_then(|d| d.mean_all()))?;
                let total = f((&value * value_coef).and_then(|v| &nll + v))?;
                let mut grads = total.backward().map_err(tensor_error)?;
                self.clip(&mut grads)?;
                self.optimizer_mut().step(&grads).map_err(tensor_error)?;
                nll_sum += scalar(&nll)?;
                value_sum += scalar(&value)?;
                batches += 1;
                stats.minibatches += 1;
            }
            stats.epochs += 1;
            stats.nll = nll_sum / f64::from(batches.max(1));
            stats.value = value_sum / f64::from(batches.max(1));
        }
        let mut agree = 0usize;
        for s in samples {
            let out = self.model().forward(&s.graph)?;
            let (greedy, _) = action::greedy(&out.logits, &s.mask)?;
            agree += usize::from(greedy == s.action);
        }
        stats.agreement = agree as f64 / samples.len() as f64;
        Ok(stats)
    }
}
