//! Our optimizers: AdamW and SGD with momentum, with parameter groups and visible,
//! saveable state.
//!
//! candle-nn's AdamW keeps its moments private and its SGD has no momentum
//! (docs/DESIGN.md §12), so these are written here, following PyTorch's update rules
//! exactly (see [`Optimizer::step`]). State is keyed by parameter *name*: adding or
//! removing a group (a seed's parameters) never touches another group's state, and
//! a checkpoint can restore it by name.

mod state;

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{DeviceLocation, Tensor};
use kasmina::NamedParameter;

pub use state::StateEntry;

use crate::error::{Error, Result};

/// Which update rule, with its rule-specific hyperparameters. In configuration it
/// is selected by `kind` (`"adamw"` or `"sgd"`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Rule {
    /// AdamW (decoupled weight decay), PyTorch's `torch.optim.AdamW`.
    #[serde(rename = "adamw")]
    AdamW {
        /// First-moment decay.
        beta1: f64,
        /// Second-moment decay.
        beta2: f64,
        /// Denominator epsilon.
        eps: f64,
    },
    /// SGD with momentum (L2 weight decay added to the gradient), PyTorch's
    /// `torch.optim.SGD` with dampening 0.
    Sgd {
        /// Momentum factor (0 disables the buffer).
        momentum: f64,
        /// Nesterov momentum.
        nesterov: bool,
    },
}

/// One parameter group: parameters sharing a learning rate and weight decay.
#[derive(Debug, Clone)]
pub struct ParamGroup {
    /// Group name, e.g. `host` or a seed id.
    pub name: String,
    /// The group's parameters.
    pub params: Vec<NamedParameter>,
    /// Learning rate before scheduling.
    pub base_lr: f64,
    /// Learning rate in effect (set by the LR controller).
    pub lr: f64,
    /// Weight decay.
    pub weight_decay: f64,
}

impl ParamGroup {
    /// A group whose current LR starts at `base_lr`.
    pub fn new(
        name: impl Into<String>,
        params: Vec<NamedParameter>,
        base_lr: f64,
        weight_decay: f64,
    ) -> Self {
        Self {
            name: name.into(),
            params,
            base_lr,
            lr: base_lr,
            weight_decay,
        }
    }
}

/// Per-parameter state.
#[derive(Debug, Clone, Default)]
struct ParamState {
    step: u64,
    /// AdamW first moment, or the SGD momentum buffer (as tensors: off the
    /// CPU, and after an import until the first fused step).
    first: Option<Tensor>,
    /// AdamW second moment.
    second: Option<Tensor>,
    /// AdamW moments as plain buffers, updated in place by the fused CPU
    /// pass (`esper_ops::adamw_update`); exported as tensors.
    buffers: Option<Moments>,
}

impl ParamState {
    /// The moments as buffers for the fused pass: those already kept, or
    /// the tensor moments (after an import) copied out, or zeros before the
    /// first step.
    fn moment_buffers(&mut self, param: &Tensor) -> Result<&mut Moments> {
        let moments = match self.buffers.take() {
            Some(moments) => moments,
            None => {
                let n = param.elem_count();
                let take = |t: Option<Tensor>| -> Result<Vec<f32>> {
                    Ok(match t {
                        Some(t) => t.flatten_all()?.to_vec1::<f32>()?,
                        None => vec![0.0; n],
                    })
                };
                Moments {
                    first: take(self.first.take())?,
                    second: take(self.second.take())?,
                    shape: param.shape().clone(),
                }
            }
        };
        Ok(self.buffers.insert(moments))
    }
}

/// AdamW moments of one parameter as plain `f32` buffers.
#[derive(Debug, Clone)]
struct Moments {
    first: Vec<f32>,
    second: Vec<f32>,
    shape: candle_core::Shape,
}

/// Whether the fused in-place AdamW pass applies: CPU `f32`, contiguous.
fn fused(param: &Tensor, grad: &Tensor) -> bool {
    param.device().is_cpu()
        && param.dtype() == candle_core::DType::F32
        && grad.dtype() == candle_core::DType::F32
        && param.is_contiguous()
}

/// An optimizer over named parameter groups.
#[derive(Debug)]
pub struct Optimizer {
    rule: Rule,
    groups: Vec<ParamGroup>,
    state: BTreeMap<String, ParamState>,
    /// Where every parameter and moment lives: declared with
    /// [`Optimizer::on`], or taken from the first parameter added.
    device: Option<DeviceLocation>,
}

impl Optimizer {
    /// An optimizer with no groups yet.
    pub fn new(rule: Rule) -> Result<Self> {
        let bad = |what: &str| Err(Error::Optimizer(format!("invalid {what}")));
        match rule {
            Rule::AdamW { beta1, beta2, eps } => {
                if !(0.0..1.0).contains(&beta1) || !(0.0..1.0).contains(&beta2) {
                    return bad("AdamW betas: each must be in [0, 1)");
                }
                if !(eps > 0.0 && eps.is_finite()) {
                    return bad("AdamW eps: must be > 0");
                }
            }
            Rule::Sgd { momentum, nesterov } => {
                if !(0.0..1.0).contains(&momentum) {
                    return bad("SGD momentum: must be in [0, 1)");
                }
                if nesterov && momentum == 0.0 {
                    return bad("SGD: Nesterov needs momentum > 0");
                }
            }
        }
        Ok(Self {
            rule,
            groups: Vec::new(),
            state: BTreeMap::new(),
            device: None,
        })
    }

    /// Declares the model's device: a parameter or a saved moment elsewhere
    /// is refused ([`Error::Device`]) instead of failing inside a step.
    pub fn on(mut self, device: DeviceLocation) -> Self {
        self.device = Some(device);
        self
    }

    /// Test double for a model on another device: re-declares the device
    /// after CPU parameters were added.
    #[cfg(test)]
    pub(crate) fn declare_device(&mut self, device: DeviceLocation) {
        self.device = Some(device);
    }

    /// The device every parameter and moment lives on (`None` until declared
    /// or a parameter is added).
    pub fn device(&self) -> Option<DeviceLocation> {
        self.device
    }

    /// The update rule.
    pub fn rule(&self) -> Rule {
        self.rule
    }

    /// Adds a group. Its name and its parameters' names must be new.
    pub fn add_group(&mut self, group: ParamGroup) -> Result<()> {
        if !(group.base_lr.is_finite() && group.base_lr > 0.0) {
            return Err(Error::Optimizer(format!(
                "group {} has no valid learning rate ({})",
                group.name, group.base_lr
            )));
        }
        if !(group.weight_decay.is_finite() && group.weight_decay >= 0.0) {
            return Err(Error::Optimizer(format!(
                "group {} has invalid weight decay {}",
                group.name, group.weight_decay
            )));
        }
        if self.groups.iter().any(|g| g.name == group.name) {
            return Err(Error::Optimizer(format!(
                "group {} already exists",
                group.name
            )));
        }
        let mut names = std::collections::BTreeSet::new();
        for p in &group.params {
            let owned = self
                .groups
                .iter()
                .any(|g| g.params.iter().any(|q| q.name == p.name));
            if owned || !names.insert(p.name.as_str()) {
                return Err(Error::Optimizer(format!(
                    "parameter {} is already in a group",
                    p.name
                )));
            }
        }
        let device = self
            .device
            .or_else(|| group.params.first().map(|p| p.var.device().location()));
        if let Some(device) = device {
            esper_ops::device::ensure_all_on(
                group
                    .params
                    .iter()
                    .map(|p| (p.name.as_str(), p.var.as_tensor())),
                device,
                &format!("optimizer group {}'s parameter", group.name),
            )?;
        }
        self.device = device;
        self.groups.push(group);
        Ok(())
    }

    /// Removes a group and its parameters' state; other groups are untouched.
    pub fn remove_group(&mut self, name: &str) -> Result<ParamGroup> {
        let index = self
            .groups
            .iter()
            .position(|g| g.name == name)
            .ok_or_else(|| Error::Optimizer(format!("no group named {name}")))?;
        let group = self.groups.remove(index);
        for p in &group.params {
            self.state.remove(&p.name);
        }
        Ok(group)
    }

    /// The groups, in the order added.
    pub fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// Sets every group's current LR to its base LR times `factor`.
    pub fn scale_lr(&mut self, factor: f64) {
        for g in &mut self.groups {
            g.lr = g.base_lr * factor;
        }
    }

    /// Steps taken by parameter `name` (0 if it never had a gradient).
    pub fn steps_of(&self, name: &str) -> u64 {
        self.state.get(name).map_or(0, |s| s.step)
    }

    /// One update of every parameter that has a gradient in `grads`; parameters
    /// without one (frozen, or unused by this forward) are left as they are.
    ///
    /// AdamW, per parameter `p` with gradient `g` at step `t`:
    /// `p ← p·(1 − lr·wd)`; `m ← β₁m + (1−β₁)g`; `v ← β₂v + (1−β₂)g²`;
    /// `p ← p − (lr/(1−β₁ᵗ)) · m / (√v/√(1−β₂ᵗ) + ε)`.
    ///
    /// SGD: `g ← g + wd·p`; with momentum `b ← g` at the first step, then
    /// `b ← μb + g`; `g ← b` (or `g + μb` with Nesterov); `p ← p − lr·g`.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        for group in &self.groups {
            for p in &group.params {
                let Some(g) = grads.get(&p.var) else { continue };
                // Detached: a gradient can carry the op history of the step
                // that produced it (a custom op's backward records its
                // operands), and the moments kept from step to step would
                // then chain every step's graph together — a leak of the
                // whole step's activations per step.
                let g = &g.detach();
                let state = self.state.entry(p.name.clone()).or_default();
                state.step += 1;
                let step = state.step;
                let adamw = |beta1, beta2, eps| esper_ops::AdamWStep {
                    lr: group.lr,
                    weight_decay: group.weight_decay,
                    beta1,
                    beta2,
                    eps,
                    step,
                };
                if let Rule::AdamW { beta1, beta2, eps } = self.rule
                    && fused(p.var.as_tensor(), g)
                {
                    // One in-place pass, bit for bit the composition below.
                    let moments = state.moment_buffers(p.var.as_tensor())?;
                    esper_ops::adamw_update(
                        p.var.as_tensor(),
                        g,
                        &mut moments.first,
                        &mut moments.second,
                        adamw(beta1, beta2, eps),
                    )?;
                    continue;
                }
                let param = &p.var.as_tensor().detach();
                let updated = match self.rule {
                    Rule::AdamW { beta1, beta2, eps } => {
                        let (updated, m, v) = esper_ops::adamw_composition(
                            param,
                            g,
                            state.first.as_ref(),
                            state.second.as_ref(),
                            adamw(beta1, beta2, eps),
                        )?;
                        state.first = Some(m);
                        state.second = Some(v);
                        updated
                    }
                    Rule::Sgd { momentum, nesterov } => {
                        let g = if group.weight_decay > 0.0 {
                            (g + (param * group.weight_decay)?)?
                        } else {
                            g.clone()
                        };
                        let direction = if momentum > 0.0 {
                            let buffer = match &state.first {
                                Some(b) => ((b * momentum)? + &g)?,
                                None => g.clone(),
                            };
                            let direction = if nesterov {
                                (&g + (&buffer * momentum)?)?
                            } else {
                                buffer.clone()
                            };
                            state.first = Some(buffer);
                            direction
                        } else {
                            g
                        };
                        (param - (direction * group.lr)?)?
                    }
                };
                p.var.set(&updated)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
