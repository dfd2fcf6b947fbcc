//! What a seed would cost and what it is expected to bring, in one unit:
//! validation-accuracy points. The heuristic's germination compares every
//! (free slot, candidate) pair by expected gain less rent and takes the best
//! one that pays; the same rent is what a seed's measured contribution must
//! cover before it is fossilized and before the next seed is grown.

use leyline::v1::{BlendMode, CatalogEntry, SlotState};
use urza::select::SelectionPolicy;
use urza::{OutputForm, Parameters};

use crate::config::{Candidate, HeuristicConfig};

/// The host a seed's cost is weighed against (from the packet's
/// `host_parameters` and `host_forward_macs` training metrics).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct HostSize {
    /// Scalar parameters of the host.
    pub parameters: f64,
    /// Forward MACs per image of the host; `None` when it does not count them.
    pub macs: Option<f64>,
}

/// A seed's rent, points: its parameters and its forward MACs as fractions
/// of the host's, each times its configured price. `None` when MACs are
/// priced but the host does not count its own.
pub(crate) fn rent(
    config: &HeuristicConfig,
    host: HostSize,
    parameters: f64,
    macs: f64,
) -> Option<f64> {
    let by_parameters = if host.parameters > 0.0 {
        config.rent_points_per_host_parameters * parameters / host.parameters
    } else {
        return None;
    };
    let by_macs = if config.rent_points_per_host_macs == 0.0 {
        0.0
    } else {
        let host_macs = host.macs.filter(|m| *m > 0.0)?;
        config.rent_points_per_host_macs * macs / host_macs
    };
    Some(by_parameters + by_macs)
}

/// One costed choice: a candidate at a slot.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Priced {
    pub slot_id: String,
    pub blueprint_id: String,
    pub parameters: Parameters,
    pub blend: BlendMode,
    pub parameter_count: u64,
    pub macs: u64,
    /// The candidate's expected gain times the slot's gradient factor.
    pub gain: f64,
    pub rent: f64,
}

impl Priced {
    /// Expected gain less rent, points.
    pub(crate) fn net(&self) -> f64 {
        self.gain - self.rent
    }

    /// One line for the decision's detail.
    pub(crate) fn describe(&self, host: HostSize) -> String {
        let share = |part: f64, whole: Option<f64>| {
            whole
                .filter(|w| *w > 0.0)
                .map_or("?".to_string(), |w| format!("{:.2}", part / w))
        };
        format!(
            "{} at {}: expected {:+.2} − rent {:.2} ({} parameters = {} × host, {} MACs = {} × host) = {:+.2}",
            self.blueprint_id,
            self.slot_id,
            self.gain,
            self.rent,
            self.parameter_count,
            share(self.parameter_count as f64, Some(host.parameters)),
            self.macs,
            share(self.macs as f64, host.macs),
            self.net()
        )
    }
}

/// The blend a blueprint's output needs: a seed trains as a correction added
/// to the host activation, so one that outputs new features joins by
/// addition (RESIDUAL); one that carries its input through may replace the
/// activation (CONVEX).
pub(crate) fn blend_for(def: &urza::BlueprintDef) -> BlendMode {
    match def.output_form() {
        OutputForm::CarriesInput => BlendMode::Convex,
        OutputForm::Features => BlendMode::Residual,
    }
}

/// Prices `candidate` at `slot` (weighted by `factor`, the slot's gradient
/// relative to the best free slot's); `Err` says why it cannot go there.
#[allow(clippy::too_many_arguments)]
pub(crate) fn price(
    config: &HeuristicConfig,
    selection: &SelectionPolicy,
    catalog: &[CatalogEntry],
    host: HostSize,
    slot: &SlotState,
    spec: &urza::SlotShape,
    candidate: &Candidate,
    factor: f64,
) -> Result<Priced, String> {
    let id = &candidate.blueprint;
    let entry = catalog
        .iter()
        .find(|e| e.descriptor.as_ref().is_some_and(|d| &d.blueprint_id == id))
        .ok_or_else(|| format!("{id}: not in the catalog"))?;
    let descriptor = entry
        .descriptor
        .as_ref()
        .ok_or_else(|| format!("{id}: no descriptor"))?;
    selection
        .check(descriptor, entry.quarantined, spec.kind())
        .map_err(|why| format!("{id}: {why}"))?;
    let def = urza::definition(id).ok_or_else(|| format!("{id}: no builder"))?;
    let mut parameters = def.default_parameters();
    parameters.extend(candidate.parameters.clone());
    let at = &slot.slot_id;
    let count = def
        .parameter_count(&parameters, spec)
        .map_err(|e| format!("{id} at {at}: {e}"))?;
    if count > config.seed_parameter_budget {
        return Err(format!(
            "{id} at {at}: {count} parameters over the budget of {}",
            config.seed_parameter_budget
        ));
    }
    let macs = def
        .forward_macs(&parameters, spec)
        .map_err(|e| format!("{id} at {at}: {e}"))?;
    let rent = rent(config, host, count as f64, macs as f64)
        .ok_or_else(|| format!("{id} at {at}: the host's size is not reported"))?;
    Ok(Priced {
        slot_id: slot.slot_id.clone(),
        blueprint_id: id.clone(),
        parameters,
        blend: blend_for(def),
        parameter_count: count,
        macs,
        gain: candidate.expected_gain_points * factor,
        rent,
    })
}
