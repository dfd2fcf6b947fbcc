//! The learned controller's factored action and its masked distribution
//! (issue #17): an operation, then only the heads that operation uses —
//! GERMINATE picks a free slot, a blueprint eligible for that slot, a blend
//! mode that blueprint allows and an α-ramp tempo; CULL and FOSSILIZE pick a
//! seed their lifecycle allows; WAIT picks nothing.
//!
//! A head's distribution is the softmax of its logits over its legal
//! choices only: a masked choice has probability exactly 0 (it is never
//! sampled, and asking for its log-probability is an error). An operation
//! whose heads have no legal choice is itself masked, so WAIT — always
//! legal — is the fallback. The joint log-probability of an action is the
//! sum of the log-probabilities of the heads its operation uses: what PPO's
//! ratio is computed from. Sampling draws from a seeded ChaCha stream, so a
//! policy is deterministic given its weights and seed.

use rand_core::{RngCore, SeedableRng};

use crate::error::{Error, Result};

/// What the controller can do at a fence.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Nothing now.
    Wait,
    /// A seed from a blueprint at a free slot.
    Germinate,
    /// Remove a seed.
    Cull,
    /// Keep a seed for good.
    Fossilize,
}

impl Op {
    /// Every operation, in head order.
    pub const ALL: [Op; 4] = [Op::Wait, Op::Germinate, Op::Cull, Op::Fossilize];

    /// Its position in [`Op::ALL`] (and in the op head).
    pub(crate) fn index(self) -> usize {
        match self {
            Op::Wait => 0,
            Op::Germinate => 1,
            Op::Cull => 2,
            Op::Fossilize => 3,
        }
    }
}

/// α-ramp lengths (steps) the tempo head chooses between.
pub const TEMPOS: [u32; 4] = [100, 200, 400, 800];

/// The logits of every head, as the network produced them for one graph.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Logits {
    /// One per [`Op::ALL`].
    pub op: Vec<f32>,
    /// One per slot node.
    pub slot: Vec<f32>,
    /// `[slot][blueprint]`: the blueprint head given the chosen slot.
    pub blueprint: Vec<Vec<f32>>,
    /// `[blueprint][blend mode]`: the blend head given the chosen blueprint.
    pub blend: Vec<Vec<f32>>,
    /// One per [`TEMPOS`].
    pub tempo: Vec<f32>,
    /// One per seed node: which seed CULL or FOSSILIZE acts on.
    pub seed: Vec<f32>,
}

/// Which choices are legal, in the shapes of [`Logits`].
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Mask {
    /// Operations the run allows at all (budgets, conservative mode).
    pub op: Vec<bool>,
    /// Free slots.
    pub slot: Vec<bool>,
    /// `[slot][blueprint]`: catalog eligibility for the slot's kind and shape.
    pub blueprint: Vec<Vec<bool>>,
    /// `[blueprint][blend mode]`: modes the blueprint's output allows.
    pub blend: Vec<Vec<bool>>,
    /// Tempos allowed.
    pub tempo: Vec<bool>,
    /// Seeds whose stage allows CULL.
    pub cull: Vec<bool>,
    /// Seeds whose stage allows FOSSILIZE.
    pub fossilize: Vec<bool>,
}

/// One action: the operation and the choice of each head it uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Action {
    /// The operation.
    pub op: Op,
    /// Slot index (GERMINATE).
    pub slot: Option<usize>,
    /// Blueprint index (GERMINATE).
    pub blueprint: Option<usize>,
    /// Blend-mode index (GERMINATE).
    pub blend: Option<usize>,
    /// Tempo index into [`TEMPOS`] (GERMINATE).
    pub tempo: Option<usize>,
    /// Seed index (CULL, FOSSILIZE).
    pub seed: Option<usize>,
}

impl Action {
    /// WAIT, which uses no head.
    pub fn wait() -> Self {
        Self {
            op: Op::Wait,
            slot: None,
            blueprint: None,
            blend: None,
            tempo: None,
            seed: None,
        }
    }
}

fn bad(detail: impl Into<String>) -> Error {
    Error::Action(detail.into())
}

/// Log-softmax of `logits` over the choices `legal` allows (`-inf`
/// elsewhere). Errors when the shapes differ, nothing is legal, or a legal
/// logit is not finite.
pub fn masked_log_softmax(head: &str, logits: &[f32], legal: &[bool]) -> Result<Vec<f32>> {
    if logits.len() != legal.len() {
        return Err(bad(format!(
            "{head}: {} logits but {} mask entries",
            logits.len(),
            legal.len()
        )));
    }
    let mut max = f32::NEG_INFINITY;
    for (&l, &ok) in logits.iter().zip(legal) {
        if ok {
            if !l.is_finite() {
                return Err(bad(format!("{head}: a legal logit is {l}")));
            }
            max = max.max(l);
        }
    }
    if max == f32::NEG_INFINITY {
        return Err(bad(format!("{head}: no legal choice")));
    }
    // In f64, so that a long head's normaliser does not lose the small terms.
    let sum: f64 = logits
        .iter()
        .zip(legal)
        .filter(|(_, ok)| **ok)
        .map(|(&l, _)| f64::from(l - max).exp())
        .sum();
    let log_z = f64::from(max) + sum.ln();
    Ok(logits
        .iter()
        .zip(legal)
        .map(|(&l, &ok)| {
            if ok {
                (f64::from(l) - log_z) as f32
            } else {
                f32::NEG_INFINITY
            }
        })
        .collect())
}

impl Mask {
    /// The operations actually available: those allowed whose heads each
    /// have a legal choice (GERMINATE needs a free slot with an eligible
    /// blueprint that has an allowed blend, and a tempo). WAIT always is.
    pub fn ops(&self) -> Result<[bool; 4]> {
        if self.op.len() != Op::ALL.len() {
            return Err(bad(format!("op: {} mask entries, not 4", self.op.len())));
        }
        let germinate = self.tempo.iter().any(|&t| t)
            && self.slot.iter().enumerate().any(|(s, &free)| {
                free && self.blueprint.get(s).is_some_and(|row| {
                    row.iter().enumerate().any(|(b, &ok)| {
                        ok && self
                            .blend
                            .get(b)
                            .is_some_and(|modes| modes.iter().any(|&m| m))
                    })
                })
            });
        Ok([
            true,
            self.op[1] && germinate,
            self.op[2] && self.cull.iter().any(|&c| c),
            self.op[3] && self.fossilize.iter().any(|&f| f),
        ])
    }

    /// The blueprint mask for slot `slot`, restricted to blueprints with an
    /// allowed blend (a blueprint that could not be blended is not a choice).
    pub(crate) fn blueprints_for(&self, slot: usize) -> Result<Vec<bool>> {
        let row = self
            .blueprint
            .get(slot)
            .ok_or_else(|| bad(format!("blueprint: no mask row for slot {slot}")))?;
        Ok(row
            .iter()
            .enumerate()
            .map(|(b, &ok)| ok && self.blend.get(b).is_some_and(|m| m.iter().any(|&x| x)))
            .collect())
    }

    /// Slots that are free and have a blueprint choice.
    pub(crate) fn slots(&self) -> Vec<bool> {
        (0..self.slot.len())
            .map(|s| {
                self.slot[s]
                    && self
                        .blueprints_for(s)
                        .is_ok_and(|row| row.iter().any(|&b| b))
            })
            .collect()
    }
}

/// The per-head log-probabilities an action's operation uses, in order.
fn head_log_probs(
    logits: &Logits,
    mask: &Mask,
    action: &Action,
) -> Result<Vec<(&'static str, f32)>> {
    let ops = mask.ops()?;
    let op_lp = masked_log_softmax("op", &logits.op, &ops)?;
    let mut out = vec![("op", op_lp[action.op.index()])];
    let pick = |head: &'static str, lp: &[f32], i: Option<usize>| -> Result<(&'static str, f32)> {
        let i = i.ok_or_else(|| bad(format!("{:?} needs a {head} choice", action.op)))?;
        let v = *lp
            .get(i)
            .ok_or_else(|| bad(format!("{head}: index {i} out of range")))?;
        Ok((head, v))
    };
    match action.op {
        Op::Wait => {}
        Op::Germinate => {
            let slot_lp = masked_log_softmax("slot", &logits.slot, &mask.slots())?;
            out.push(pick("slot", &slot_lp, action.slot)?);
            let s = action.slot.unwrap_or(0);
            let row = logits
                .blueprint
                .get(s)
                .ok_or_else(|| bad(format!("blueprint: no logits for slot {s}")))?;
            let bp_lp = masked_log_softmax("blueprint", row, &mask.blueprints_for(s)?)?;
            out.push(pick("blueprint", &bp_lp, action.blueprint)?);
            let b = action.blueprint.unwrap_or(0);
            let (row, legal) = logits
                .blend
                .get(b)
                .zip(mask.blend.get(b))
                .ok_or_else(|| bad(format!("blend: no row for blueprint {b}")))?;
            out.push(pick(
                "blend",
                &masked_log_softmax("blend", row, legal)?,
                action.blend,
            )?);
            let tempo_lp = masked_log_softmax("tempo", &logits.tempo, &mask.tempo)?;
            out.push(pick("tempo", &tempo_lp, action.tempo)?);
        }
        Op::Cull => {
            let lp = masked_log_softmax("seed", &logits.seed, &mask.cull)?;
            out.push(pick("seed", &lp, action.seed)?);
        }
        Op::Fossilize => {
            let lp = masked_log_softmax("seed", &logits.seed, &mask.fossilize)?;
            out.push(pick("seed", &lp, action.seed)?);
        }
    }
    if let Some((head, _)) = out.iter().find(|(_, lp)| *lp == f32::NEG_INFINITY) {
        return Err(bad(format!("the mask forbids the action's {head} choice")));
    }
    Ok(out)
}

/// The joint log-probability of `action`: the sum over the heads its
/// operation uses. An action the mask forbids is an error (probability 0).
pub fn log_prob(logits: &Logits, mask: &Mask, action: &Action) -> Result<f32> {
    Ok(head_log_probs(logits, mask, action)?
        .iter()
        .map(|(_, lp)| lp)
        .sum())
}

/// Entropy (nats) of each head `action`'s operation uses, summed: the
/// entropy bonus of PPO for this decision.
pub fn entropy(logits: &Logits, mask: &Mask, action: &Action) -> Result<f32> {
    let h = |lp: Vec<f32>| -> f32 {
        lp.iter()
            .filter(|l| l.is_finite())
            .map(|&l| -l.exp() * l)
            .sum()
    };
    let mut total = h(masked_log_softmax("op", &logits.op, &mask.ops()?)?);
    match action.op {
        Op::Wait => {}
        Op::Germinate => {
            total += h(masked_log_softmax("slot", &logits.slot, &mask.slots())?);
            let s = action.slot.unwrap_or(0);
            if let Some(row) = logits.blueprint.get(s) {
                total += h(masked_log_softmax(
                    "blueprint",
                    row,
                    &mask.blueprints_for(s)?,
                )?);
            }
            let b = action.blueprint.unwrap_or(0);
            if let (Some(row), Some(legal)) = (logits.blend.get(b), mask.blend.get(b)) {
                total += h(masked_log_softmax("blend", row, legal)?);
            }
            total += h(masked_log_softmax("tempo", &logits.tempo, &mask.tempo)?);
        }
        Op::Cull => total += h(masked_log_softmax("seed", &logits.seed, &mask.cull)?),
        Op::Fossilize => total += h(masked_log_softmax("seed", &logits.seed, &mask.fossilize)?),
    }
    Ok(total)
}

/// A deterministic stream of draws for sampling.
#[derive(Debug, Clone)]
pub struct Sampler(rand_chacha::ChaCha8Rng);

impl Sampler {
    /// The stream of `seed`.
    pub fn new(seed: u64) -> Self {
        Self(rand_chacha::ChaCha8Rng::seed_from_u64(seed))
    }

    /// Uniform in [0, 1), 53 bits.
    fn uniform(&mut self) -> f64 {
        (self.0.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A choice from a masked log-softmax (inverse CDF over legal choices).
    fn pick(&mut self, lp: &[f32]) -> usize {
        let u = self.uniform();
        let mut acc = 0.0;
        let mut last = 0;
        for (i, &l) in lp.iter().enumerate() {
            if l == f32::NEG_INFINITY {
                continue;
            }
            last = i;
            acc += f64::from(l).exp();
            if u < acc {
                return i;
            }
        }
        // Rounding left `acc` a hair under 1: the last legal choice.
        last
    }
}

/// Draws an action: the operation, then each head it uses, each from its
/// masked distribution. Returns it with its joint log-probability.
pub fn sample(logits: &Logits, mask: &Mask, rng: &mut Sampler) -> Result<(Action, f32)> {
    choose(logits, mask, &mut |lp| rng.pick(lp))
}

/// The most probable choice of each head in turn (evaluation; deterministic).
pub fn greedy(logits: &Logits, mask: &Mask) -> Result<(Action, f32)> {
    choose(logits, mask, &mut |lp| {
        lp.iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |best, (i, &l)| {
                if l > best.1 { (i, l) } else { best }
            })
            .0
    })
}

fn choose(
    logits: &Logits,
    mask: &Mask,
    pick: &mut dyn FnMut(&[f32]) -> usize,
) -> Result<(Action, f32)> {
    let op = Op::ALL[pick(&masked_log_softmax("op", &logits.op, &mask.ops()?)?)];
    let mut action = Action {
        op,
        ..Action::wait()
    };
    match op {
        Op::Wait => {}
        Op::Germinate => {
            let slot = pick(&masked_log_softmax("slot", &logits.slot, &mask.slots())?);
            let row = logits
                .blueprint
                .get(slot)
                .ok_or_else(|| bad(format!("blueprint: no logits for slot {slot}")))?;
            let bp = pick(&masked_log_softmax(
                "blueprint",
                row,
                &mask.blueprints_for(slot)?,
            )?);
            let (row, legal) = logits
                .blend
                .get(bp)
                .zip(mask.blend.get(bp))
                .ok_or_else(|| bad(format!("blend: no row for blueprint {bp}")))?;
            let blend = pick(&masked_log_softmax("blend", row, legal)?);
            let tempo = pick(&masked_log_softmax("tempo", &logits.tempo, &mask.tempo)?);
            action = Action {
                slot: Some(slot),
                blueprint: Some(bp),
                blend: Some(blend),
                tempo: Some(tempo),
                ..action
            };
        }
        Op::Cull => {
            action.seed = Some(pick(&masked_log_softmax("seed", &logits.seed, &mask.cull)?));
        }
        Op::Fossilize => {
            action.seed = Some(pick(&masked_log_softmax(
                "seed",
                &logits.seed,
                &mask.fossilize,
            )?));
        }
    }
    let lp = log_prob(logits, mask, &action)?;
    Ok((action, lp))
}

#[cfg(test)]
mod tests;
