//! One shared validator for commands and packets.
//!
//! Kasmina's intake, Tamiyo's output and Oona's ingress all call the same
//! [`Validator`], which returns a structured [`Report`]: pass or fail, and for each
//! problem a [`ValidationCode`], the dotted path of the field, and a detail. All
//! problems are reported, not only the first, so that a caller can log one complete
//! rejection.
//!
//! ```
//! use leyline::v1::AdaptationCommand;
//! use leyline::validate::Validator;
//!
//! let report = Validator::default().command(&AdaptationCommand::default());
//! assert!(!report.passed());
//! assert!(report.violations().iter().any(|v| v.field == "command_id"));
//! ```

mod command;
mod packets;

use crate::config::LimitsConfig;
use crate::v1::{BlendMode, ValidationCode};

/// One problem with one field.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    /// What kind of problem.
    pub code: ValidationCode,
    /// Dotted path of the field, e.g. `seed_operation.blend.channel_alpha[3]`.
    pub field: String,
    /// Human-readable detail.
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} ({})",
            self.field,
            self.detail,
            self.code.as_str_name()
        )
    }
}

/// The outcome of validating one message.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    violations: Vec<Violation>,
}

impl Report {
    /// No violation was found.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// Every violation, in the order the fields were checked.
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    /// The first violation's code, the reason to report when one is needed.
    pub fn reason(&self) -> Option<ValidationCode> {
        self.violations.first().map(|v| v.code)
    }

    /// `Ok` when passed, else the report as an error.
    pub fn into_result(self) -> Result<(), Invalid> {
        if self.passed() {
            Ok(())
        } else {
            Err(Invalid { report: self })
        }
    }

    fn push(&mut self, code: ValidationCode, field: impl Into<String>, detail: impl Into<String>) {
        self.violations.push(Violation {
            code,
            field: field.into(),
            detail: detail.into(),
        });
    }

    fn missing(&mut self, field: impl Into<String>) {
        self.push(
            ValidationCode::MissingField,
            field,
            "required field is empty",
        );
    }

    fn require_str(&mut self, value: &str, field: &str) {
        if value.trim().is_empty() {
            self.missing(field);
        }
    }

    fn require_timestamp(&mut self, value: u64, field: &str) {
        if value == 0 {
            self.push(
                ValidationCode::MissingField,
                field,
                "required timestamp is 0",
            );
        }
    }

    fn finite(&mut self, value: f64, field: impl Into<String>) -> bool {
        if value.is_finite() {
            true
        } else {
            self.push(
                ValidationCode::InvalidValue,
                field,
                format!("{value} is not finite"),
            );
            false
        }
    }

    fn unit_interval(&mut self, value: f64, field: impl Into<String>) {
        let field = field.into();
        if self.finite(value, field.clone()) && !(0.0..=1.0).contains(&value) {
            self.push(
                ValidationCode::OutOfRange,
                field,
                format!("{value} is outside [0, 1]"),
            );
        }
    }

    fn version(&mut self, version: u32) {
        if version == 0 {
            self.missing("version");
        } else if version != crate::CONTRACT_VERSION {
            self.push(
                ValidationCode::InvalidValue,
                "version",
                format!(
                    "unsupported contract version {version} (this build speaks {})",
                    crate::CONTRACT_VERSION
                ),
            );
        }
    }

    /// Reads an open (`i32`) contract enum; `Unspecified`/`Unknown` (0) counts as
    /// missing when `required`, and values outside the enum are invalid.
    fn known_enum<E: TryFrom<i32>>(
        &mut self,
        value: i32,
        field: &str,
        required: bool,
    ) -> Option<E> {
        if value == 0 && required {
            self.missing(field);
            return None;
        }
        match E::try_from(value) {
            Ok(e) => Some(e),
            Err(_) => {
                self.push(
                    ValidationCode::InvalidValue,
                    field,
                    format!("{value} is not a known {field} value"),
                );
                None
            }
        }
    }

    fn finite_map<'a>(
        &mut self,
        map: impl IntoIterator<Item = (&'a String, &'a f64)>,
        field: &str,
    ) {
        for (key, value) in map {
            if key.is_empty() {
                self.push(
                    ValidationCode::MissingField,
                    format!("{field}[]"),
                    "empty key",
                );
            }
            self.finite(*value, format!("{field}[{key}]"));
        }
    }
}

/// A failed [`Report`] as an error.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid message: {}", .report.violations.iter().map(|v| v.to_string()).collect::<Vec<_>>().join("; "))]
pub struct Invalid {
    /// The report, with at least one violation.
    pub report: Report,
}

/// Validates Leyline messages against the contract rules and the configured limits.
#[derive(Debug, Clone)]
pub struct Validator {
    max_channel_alpha: usize,
    max_mesh_layers: usize,
}

impl Default for Validator {
    fn default() -> Self {
        Self::new(&LimitsConfig::default())
    }
}

impl Validator {
    /// A validator enforcing `limits`.
    pub fn new(limits: &LimitsConfig) -> Self {
        Self {
            max_channel_alpha: limits.max_channel_alpha as usize,
            max_mesh_layers: limits.max_mesh_layers as usize,
        }
    }

    /// Checks the logits a CONFIDENCE blend gates on: with any other mode none are
    /// needed; with CONFIDENCE they must be present with shape `[N, C]`, `C >= 2`.
    pub fn confidence_logits(&self, mode: BlendMode, logits_shape: Option<&[usize]>) -> Report {
        let mut report = Report::default();
        match mode {
            BlendMode::Confidence => match logits_shape {
                None => report.push(
                    ValidationCode::MissingField,
                    "logits",
                    "CONFIDENCE blending needs the batch's per-sample logits",
                ),
                Some([_, classes]) if *classes >= 2 => {}
                Some(shape) => report.push(
                    ValidationCode::InvalidValue,
                    "logits",
                    format!("logits must be [N, C>=2], got {shape:?}"),
                ),
            },
            BlendMode::Unspecified
            | BlendMode::Convex
            | BlendMode::Residual
            | BlendMode::Channel => {}
        }
        report
    }
}

#[cfg(test)]
mod tests;
