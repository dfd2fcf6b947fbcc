//! Blueprint parameters: their declared bounds and their strict validation.
//!
//! Every declared parameter is required (no silent default inside a builder);
//! [`ParamSpec::default`] values are explicit and come from
//! [`crate::BlueprintDef::default_parameters`]. Unknown names, non-finite values,
//! values outside the inclusive bounds and fractional values of integer
//! parameters are all typed errors.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// One declared parameter of a blueprint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ParamSpec {
    /// Name, as used in commands and artifacts.
    pub name: &'static str,
    /// Inclusive lower bound.
    pub min: f64,
    /// Inclusive upper bound.
    pub max: f64,
    /// Value used when a caller asks for the defaults.
    pub default: f64,
    /// Whether only whole numbers are allowed.
    pub integer: bool,
    /// What the parameter controls.
    pub doc: &'static str,
}

/// Parameter values by name (ordered, so that encodings are deterministic).
pub type Parameters = BTreeMap<String, f64>;

/// Checks `values` against `specs` for blueprint `blueprint_id`.
pub(crate) fn validate(blueprint_id: &str, specs: &[ParamSpec], values: &Parameters) -> Result<()> {
    let invalid = |name: &str, reason: String| Error::InvalidParameter {
        blueprint_id: blueprint_id.to_string(),
        name: name.to_string(),
        reason,
    };
    for name in values.keys() {
        if !specs.iter().any(|s| s.name == name) {
            let known: Vec<&str> = specs.iter().map(|s| s.name).collect();
            return Err(invalid(
                name,
                format!("is not a parameter (known: {known:?})"),
            ));
        }
    }
    for spec in specs {
        let Some(&value) = values.get(spec.name) else {
            return Err(invalid(spec.name, "is missing".into()));
        };
        if !value.is_finite() {
            return Err(invalid(spec.name, format!("is not finite ({value})")));
        }
        if value < spec.min || value > spec.max {
            return Err(invalid(
                spec.name,
                format!("= {value} is outside [{}, {}]", spec.min, spec.max),
            ));
        }
        if spec.integer && value.fract() != 0.0 {
            return Err(invalid(
                spec.name,
                format!("= {value} must be a whole number"),
            ));
        }
    }
    Ok(())
}

/// Reads a validated parameter.
pub(crate) fn get(values: &Parameters, name: &str) -> f64 {
    // Only called after `validate`, which guarantees presence; 0 keeps this
    // total without a panic path.
    values.get(name).copied().unwrap_or(0.0)
}

/// Reads a validated integer parameter.
pub(crate) fn get_usize(values: &Parameters, name: &str) -> usize {
    get(values, name).max(0.0) as usize
}

/// `max(1, round(base · factor))`: a width derived from a multiplier.
pub(crate) fn scaled(base: usize, factor: f64) -> usize {
    ((base as f64 * factor).round() as usize).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPECS: &[ParamSpec] = &[
        ParamSpec {
            name: "rank",
            min: 1.0,
            max: 8.0,
            default: 4.0,
            integer: true,
            doc: "",
        },
        ParamSpec {
            name: "scale",
            min: 0.5,
            max: 2.0,
            default: 1.0,
            integer: false,
            doc: "",
        },
    ];

    fn values(pairs: &[(&str, f64)]) -> Parameters {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn every_rule_is_enforced() {
        assert!(validate("bp", SPECS, &values(&[("rank", 4.0), ("scale", 1.5)])).is_ok());
        assert!(validate("bp", SPECS, &values(&[("rank", 1.0), ("scale", 2.0)])).is_ok());
        for bad in [
            values(&[("rank", 4.0)]),
            values(&[("rank", 4.5), ("scale", 1.0)]),
            values(&[("rank", 9.0), ("scale", 1.0)]),
            values(&[("rank", 4.0), ("scale", f64::NAN)]),
            values(&[("rank", 4.0), ("scale", 1.0), ("extra", 1.0)]),
        ] {
            assert!(
                matches!(
                    validate("bp", SPECS, &bad),
                    Err(Error::InvalidParameter { .. })
                ),
                "{bad:?} accepted"
            );
        }
    }
}
