//! What a policy sees: a validated state packet plus its input coverage.
//!
//! The packet must pass Leyline's validator and carry its hardware context
//! (required); the optional signals the rules use — training loss, step time,
//! device memory, device utilization — are counted in a coverage fraction, and
//! the missing ones are named (nothing is zero-filled).

use leyline::v1::{SeedStage, SeedState, SystemStatePacket};
use leyline::validate::Validator;

use crate::error::{Error, Result};

/// The optional signals coverage counts, by name.
pub const OPTIONAL_SIGNALS: [&str; 4] = [
    "training_loss",
    "training_metrics.step_ms",
    "hardware.available_memory_gib",
    "hardware.utilization_percent",
];

/// A validated packet.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    /// The packet.
    pub packet: &'a SystemStatePacket,
    /// Fraction of [`OPTIONAL_SIGNALS`] present.
    pub coverage: f64,
    /// Bit `i` set when `OPTIONAL_SIGNALS[i]` is present.
    pub present: u8,
}

impl<'a> Observation<'a> {
    /// Checks `packet` (Leyline validation, required fields) and measures its
    /// coverage.
    pub fn new(packet: &'a SystemStatePacket, validator: &Validator) -> Result<Self> {
        let report = validator.state_packet(packet);
        if !report.passed() {
            return Err(Error::InvalidPacket {
                packet_id: packet.packet_id.clone(),
                detail: describe(&report),
            });
        }
        let Some(hardware) = &packet.hardware else {
            return Err(Error::MissingMetric {
                name: "hardware",
                packet_id: packet.packet_id.clone(),
            });
        };
        let flags = [
            packet.training_loss.is_some(),
            packet.training_metrics.contains_key("step_ms"),
            hardware.total_memory_gib > 0.0,
            hardware.utilization_percent.is_some(),
        ];
        let present = flags
            .iter()
            .enumerate()
            .fold(0u8, |acc, (i, &on)| if on { acc | (1 << i) } else { acc });
        let count = flags.iter().filter(|&&on| on).count();
        Ok(Self {
            packet,
            coverage: count as f64 / flags.len() as f64,
            present,
        })
    }

    /// Names of the optional signals this packet lacks.
    pub fn missing(&self) -> Vec<&'static str> {
        OPTIONAL_SIGNALS
            .iter()
            .enumerate()
            .filter(|(i, _)| self.present & (1 << i) == 0)
            .map(|(_, name)| *name)
            .collect()
    }

    /// Whether a validation pass just ran (epoch-end packets).
    pub fn epoch_end(&self) -> bool {
        self.packet.validation_accuracy.is_some()
    }

    /// Seeds that are part of the model or on their way into it.
    pub fn live_seeds(&self) -> impl Iterator<Item = &'a SeedState> {
        self.packet
            .seed_states
            .iter()
            .filter(|s| stage_of(s.stage).is_live())
    }
}

/// Every violation of a validation report, `field: detail; ...`.
pub(crate) fn describe(report: &leyline::validate::Report) -> String {
    report
        .violations()
        .iter()
        .map(|v| format!("{}: {}", v.field, v.detail))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The stage of a wire value (unknown values are `Unknown`).
pub(crate) fn stage_of(value: i32) -> SeedStage {
    SeedStage::try_from(value).unwrap_or(SeedStage::Unknown)
}
