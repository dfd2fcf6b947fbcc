//! The blueprint catalog: thirteen explicit builders (eight convolutional, four
//! dense, one identity). Each declares its parameters and bounds, checks that it
//! fits a slot, reports its exact parameter count, and builds a candle module
//! whose output shape equals its input shape.

mod builder;
mod catalog;
mod conv;
mod dense;
mod macs;

use candle_core::{Tensor, Var};
use leyline::v1::{BlueprintDescriptor, BlueprintTier, ParameterBound, SlotKind};

pub use builder::Weights;
pub use catalog::{catalog, definition};

use crate::error::{Error, Result};
use crate::params::{self, ParamSpec, Parameters};
use crate::slot::SlotShape;
use builder::Builder;

/// Which builder a blueprint uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    /// The no-op seed, on any slot.
    Identity,
    /// A convolutional blueprint (conv slots).
    Conv(conv::ConvKind),
    /// A dense blueprint (dense slots).
    Dense(dense::DenseKind),
}

/// What a blueprint's output is relative to its input
/// ([`BlueprintDef::output_form`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputForm {
    /// The output carries the input (`x + f(x)`, a normalised or gated `x`,
    /// the identity): it can stand in for the activation.
    CarriesInput,
    /// New features only (`f(x)`): they are added to the activation.
    Features,
}

/// One blueprint of the built-in catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct BlueprintDef {
    /// Stable id (`conv.residual`, `dense.low_rank`, …).
    pub id: &'static str,
    /// Human-readable name.
    pub name: &'static str,
    /// Risk tier.
    pub tier: BlueprintTier,
    /// Risk score in `[0, 1]`.
    pub risk: f64,
    /// Whether selection needs an explicit approval.
    pub approval_required: bool,
    /// Slot kinds the builder supports.
    pub slot_kinds: &'static [SlotKind],
    /// Declared parameters (all required).
    pub params: &'static [ParamSpec],
    /// Search tags.
    pub tags: &'static [&'static str],
    /// What it computes.
    pub description: &'static str,
    pub(crate) kind: Kind,
}

impl BlueprintDef {
    /// The Leyline descriptor of this blueprint.
    pub fn descriptor(&self) -> BlueprintDescriptor {
        BlueprintDescriptor {
            blueprint_id: self.id.to_string(),
            name: self.name.to_string(),
            tier: self.tier as i32,
            allowed_parameters: self
                .params
                .iter()
                .map(|p| {
                    (
                        p.name.to_string(),
                        ParameterBound {
                            min: p.min,
                            max: p.max,
                        },
                    )
                })
                .collect(),
            risk: self.risk,
            quarantine_only: false,
            approval_required: self.approval_required,
            description: self.description.to_string(),
            slot_kinds: self.slot_kinds.iter().map(|k| *k as i32).collect(),
            tags: self.tags.iter().map(|t| t.to_string()).collect(),
        }
    }

    /// Every declared parameter at its documented default.
    pub fn default_parameters(&self) -> Parameters {
        self.params
            .iter()
            .map(|p| (p.name.to_string(), p.default))
            .collect()
    }

    /// `given` over the defaults: what a germination naming only some
    /// parameters builds (unknown names are kept, for `check` to refuse).
    pub fn with_defaults(&self, given: &Parameters) -> Parameters {
        let mut merged = self.default_parameters();
        merged.extend(given.iter().map(|(k, v)| (k.clone(), *v)));
        merged
    }

    /// Checks `params` against the declared names and bounds only (no slot):
    /// what a configuration naming a blueprint's parameters can be checked
    /// against before any slot is known.
    pub fn check_parameters(&self, params: &Parameters) -> Result<()> {
        params::validate(self.id, self.params, params)
    }

    /// Checks `params` against the declared bounds and the slot (kind, shape
    /// constraints such as divisibility or rank ≤ features).
    pub fn check(&self, params: &Parameters, slot: &SlotShape) -> Result<()> {
        params::validate(self.id, self.params, params)?;
        if !self.slot_kinds.contains(&slot.kind()) {
            return Err(Error::SlotMismatch {
                blueprint_id: self.id.to_string(),
                slot: slot.to_string(),
                reason: format!("supports {:?} slots only", self.slot_kinds),
            });
        }
        let fit = match (self.kind, slot.kind()) {
            (_, SlotKind::Unspecified) => Err("slot kind is unspecified".to_string()),
            (Kind::Identity, SlotKind::Conv2d | SlotKind::Dense) => Ok(()),
            (Kind::Conv(kind), SlotKind::Conv2d) => conv::fits(kind, params, slot.shape()),
            (Kind::Dense(kind), SlotKind::Dense) => dense::fits(kind, params, slot.shape()),
            (Kind::Conv(_), SlotKind::Dense) | (Kind::Dense(_), SlotKind::Conv2d) => {
                Err("a blueprint of the other slot kind".to_string())
            }
        };
        fit.map_err(|reason| Error::SlotMismatch {
            blueprint_id: self.id.to_string(),
            slot: slot.to_string(),
            reason,
        })
    }

    /// The exact number of scalar parameters an instance for `slot` has.
    pub fn parameter_count(&self, params: &Parameters, slot: &SlotShape) -> Result<u64> {
        self.check(params, slot)?;
        // `check` refused every combination that is not handled here.
        Ok(match self.kind {
            Kind::Identity => 0,
            Kind::Conv(kind) => conv::count(kind, params, slot.shape()),
            Kind::Dense(kind) => dense::count(kind, params, slot.shape()),
        })
    }

    /// Forward multiply-accumulates per sample of an instance for `slot`
    /// (weight layers and attention products; biases and elementwise work
    /// excluded — see the `macs` module), from the formula.
    pub fn forward_macs(&self, params: &Parameters, slot: &SlotShape) -> Result<u64> {
        self.check(params, slot)?;
        Ok(macs::formula(self.kind, params, slot.shape()))
    }

    /// What the blueprint's output is relative to its input: whether it
    /// carries the input through (a skip inside, or a rescaling of it) or is
    /// new features only. A seed learns in TRAINING as a correction added to
    /// the host activation, so a [`OutputForm::Features`] blueprint must join
    /// the host by adding (`RESIDUAL` blending): blended convexly at α = 1 it
    /// would replace the activation with features trained to be added to it.
    pub fn output_form(&self) -> OutputForm {
        use conv::ConvKind as C;
        use dense::DenseKind as D;
        match self.kind {
            Kind::Identity | Kind::Conv(C::Residual | C::ChannelNorm | C::SqueezeExcitation) => {
                OutputForm::CarriesInput
            }
            Kind::Conv(
                C::Depthwise | C::LightConv | C::HeavyConv | C::SpatialAttention | C::GroupedConv,
            )
            | Kind::Dense(D::MlpSmall | D::MlpLarge | D::LowRank | D::GatedFeedForward) => {
                OutputForm::Features
            }
        }
    }

    /// Builds an instance for `slot` with weights from `weights`.
    pub fn build(
        &self,
        params: &Parameters,
        slot: &SlotShape,
        weights: Weights<'_>,
    ) -> Result<BlueprintModule> {
        self.check(params, slot)?;
        let mut builder = Builder::new(weights, format!("{} for {slot}", self.id));
        let net = match self.kind {
            Kind::Identity => Net::Identity,
            Kind::Conv(kind) => conv::build(kind, params, slot.shape(), &mut builder)?,
            Kind::Dense(kind) => dense::build(kind, params, slot.shape(), &mut builder)?,
        };
        let vars = builder.finish()?;
        Ok(BlueprintModule {
            blueprint_id: self.id.to_string(),
            slot: slot.clone(),
            params: params.clone(),
            vars,
            net,
        })
    }
}

/// The network of one blueprint instance.
#[derive(Debug, Clone)]
pub(crate) enum Net {
    Identity,
    ChannelNorm(conv::ChannelNorm),
    /// Convolutions applied in sequence.
    Conv(Vec<builder::Conv>),
    /// Convolutions with ReLU between them.
    ConvRelu(Vec<builder::Conv>),
    Residual(conv::Residual),
    SqueezeExcitation(conv::SqueezeExcitation),
    SpatialAttention(conv::SpatialAttention),
    Mlp(dense::Mlp),
    LowRank(dense::LowRank),
    GatedFeedForward(dense::GatedFeedForward),
}

/// A built blueprint instance: its parameters (as candle variables, named) and
/// its forward pass.
#[derive(Debug, Clone)]
pub struct BlueprintModule {
    blueprint_id: String,
    slot: SlotShape,
    params: Parameters,
    vars: Vec<(String, Var)>,
    net: Net,
}

impl BlueprintModule {
    /// The blueprint this instance was built from.
    pub fn blueprint_id(&self) -> &str {
        &self.blueprint_id
    }

    /// The slot it was built for.
    pub fn slot(&self) -> &SlotShape {
        &self.slot
    }

    /// The blueprint parameters it was built with.
    pub fn parameters(&self) -> &Parameters {
        &self.params
    }

    /// Its trainable variables, in construction order, with their names.
    pub fn named_vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// The number of scalar parameters it actually holds.
    pub fn parameter_count(&self) -> u64 {
        self.vars.iter().map(|(_, v)| v.elem_count() as u64).sum()
    }

    /// Forward multiply-accumulates per sample, counted from the weights this
    /// instance holds (equal to [`BlueprintDef::forward_macs`]; tested).
    pub fn forward_macs(&self) -> u64 {
        macs::built(&self.net, self.slot.shape())
    }

    /// Applies the module to a batch shaped `[N, ...slot shape]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        if dims.len() != self.slot.shape().len() + 1 || &dims[1..] != self.slot.shape() {
            return Err(Error::Shape {
                context: format!("{} input", self.blueprint_id),
                expected: self.slot.batch_shape(dims.first().copied().unwrap_or(0)),
                actual: dims.to_vec(),
            });
        }
        let y = match &self.net {
            Net::Identity => Ok(x.clone()),
            Net::ChannelNorm(m) => m.forward(x),
            Net::Conv(convs) => convs.iter().try_fold(x.clone(), |y, conv| conv.forward(&y)),
            Net::ConvRelu(convs) => {
                let last = convs.len().saturating_sub(1);
                convs
                    .iter()
                    .enumerate()
                    .try_fold(x.clone(), |y, (i, conv)| {
                        let out = conv.forward(&y)?;
                        if i < last { out.relu() } else { Ok(out) }
                    })
            }
            Net::Residual(m) => m.forward(x),
            Net::SqueezeExcitation(m) => m.forward(x),
            Net::SpatialAttention(m) => m.forward(x),
            Net::Mlp(m) => m.forward(x),
            Net::LowRank(m) => m.forward(x),
            Net::GatedFeedForward(m) => m.forward(x),
        }
        .map_err(Error::tensor(format!("{} forward", self.blueprint_id)))?;
        if y.dims() != dims {
            return Err(Error::Shape {
                context: format!("{} output", self.blueprint_id),
                expected: dims.to_vec(),
                actual: y.dims().to_vec(),
            });
        }
        Ok(y)
    }

    /// The weights by name (for saving).
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        self.vars
            .iter()
            .map(|(name, var)| (name.clone(), var.as_tensor().clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests;
