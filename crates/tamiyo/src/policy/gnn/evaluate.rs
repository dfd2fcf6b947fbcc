//! The differentiable side of the masked, factored distribution: the joint
//! log-probability, the entropy and the value of one recorded action as
//! candle tensors with the gradient path to the network's weights — what
//! PPO's loss is built from.
//!
//! It mirrors [`crate::policy::action::log_prob`] and
//! [`crate::policy::action::entropy`] head for head (the op; then, for
//! GERMINATE, the slot, the blueprint given the slot, the blend given the
//! blueprint and the tempo; for CULL/FOSSILIZE the seed), so that the value
//! PPO differentiates is the one the sampler drew from (a test holds the two
//! equal). A masked choice gets a logit of −10⁹ before the softmax: its
//! probability is exactly 0 in f32, and asking for it is an error, as in
//! the sampler.

use candle_core::{D, Device, Tensor};

use super::{GnnModel, tensor_error};
use crate::error::{Error, Result};
use crate::graph::ObservationGraph;
use crate::policy::action::{Action, Mask, Op};

/// One action's evaluation under the current weights: scalar tensors.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// Joint log-probability (sum over the heads its op uses).
    pub log_prob: Tensor,
    /// Summed entropy of those heads, nats.
    pub entropy: Tensor,
    /// The value head.
    pub value: Tensor,
}

/// Log-softmax of a 1-D head over its legal entries and the head's entropy.
fn masked(head: &str, logits: &Tensor, legal: &[bool]) -> Result<(Tensor, Tensor)> {
    let f = |r: candle_core::Result<Tensor>| r.map_err(tensor_error);
    let n = logits.dim(0).map_err(tensor_error)?;
    if n != legal.len() {
        return Err(Error::Action(format!(
            "{head}: {n} logits but {} mask entries",
            legal.len()
        )));
    }
    if !legal.iter().any(|&ok| ok) {
        return Err(Error::Action(format!("{head}: no legal choice")));
    }
    let keep: Vec<f32> = legal.iter().map(|&ok| f32::from(u8::from(ok))).collect();
    let keep = f(Tensor::from_vec(keep, n, &Device::Cpu))?;
    let penalty = f(keep.affine(1e9, -1e9))?;
    let lp = f(candle_nn::ops::log_softmax(
        &f(logits + &penalty)?,
        D::Minus1,
    ))?;
    let entropy = f(lp
        .exp()
        .and_then(|p| p * &lp)
        .and_then(|t| t * &keep)
        .and_then(|t| t.sum_all())
        .and_then(|t| t.neg()))?;
    Ok((lp, entropy))
}

/// The log-probability at `index` of a head, which must be legal.
fn pick(head: &str, lp: &Tensor, legal: &[bool], index: Option<usize>, op: Op) -> Result<Tensor> {
    let i = index.ok_or_else(|| Error::Action(format!("{op:?} needs a {head} choice")))?;
    if !legal.get(i).copied().unwrap_or(false) {
        return Err(Error::Action(format!(
            "the mask forbids the action's {head} choice {i}"
        )));
    }
    lp.get(i).map_err(tensor_error)
}

impl GnnModel {
    /// The joint log-probability, entropy and value of `action` on `graph`
    /// under `mask`, differentiable in the weights. An action the mask
    /// forbids, or whose heads the graph lacks, is an error.
    pub fn evaluate(
        &self,
        graph: &ObservationGraph,
        mask: &Mask,
        action: &Action,
    ) -> Result<Evaluation> {
        let f = |r: candle_core::Result<Tensor>| r.map_err(tensor_error);
        let heads = self.heads(graph)?;
        let ops = mask.ops()?;
        let (op_lp, op_h) = masked("op", &heads.op, &ops)?;
        let mut terms = vec![pick(
            "op",
            &op_lp,
            &ops,
            Some(action.op.index()),
            action.op,
        )?];
        let mut entropies = vec![op_h];
        let missing = |head: &str| Error::Action(format!("{head}: the graph gives no such head"));
        let mut use_head = |head: &str, logits: &Tensor, legal: &[bool], index: Option<usize>| {
            let (lp, h) = masked(head, logits, legal)?;
            terms.push(pick(head, &lp, legal, index, action.op)?);
            entropies.push(h);
            Ok::<(), Error>(())
        };
        match action.op {
            Op::Wait => {}
            Op::Germinate => {
                let slots = heads.slot.as_ref().ok_or_else(|| missing("slot"))?;
                use_head("slot", slots, &mask.slots(), action.slot)?;
                let s = action.slot.unwrap_or(0);
                let row = heads
                    .blueprint
                    .as_ref()
                    .ok_or_else(|| missing("blueprint"))
                    .and_then(|b| b.get(s).map_err(tensor_error))?;
                use_head(
                    "blueprint",
                    &row,
                    &mask.blueprints_for(s)?,
                    action.blueprint,
                )?;
                let b = action.blueprint.unwrap_or(0);
                let row = heads
                    .blend
                    .as_ref()
                    .ok_or_else(|| missing("blend"))
                    .and_then(|t| t.get(b).map_err(tensor_error))?;
                let legal = mask.blend.get(b).ok_or_else(|| {
                    Error::Action(format!("blend: no mask row for blueprint {b}"))
                })?;
                use_head("blend", &row, legal, action.blend)?;
                use_head("tempo", &heads.tempo, &mask.tempo, action.tempo)?;
            }
            Op::Cull | Op::Fossilize => {
                let seeds = heads.seed.as_ref().ok_or_else(|| missing("seed"))?;
                let legal = if action.op == Op::Cull {
                    &mask.cull
                } else {
                    &mask.fossilize
                };
                use_head("seed", seeds, legal, action.seed)?;
            }
        }
        let sum = |parts: &[Tensor]| f(Tensor::stack(parts, 0).and_then(|t| t.sum_all()));
        Ok(Evaluation {
            log_prob: sum(&terms)?,
            entropy: sum(&entropies)?,
            value: heads.value,
        })
    }
}
