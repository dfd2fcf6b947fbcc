//! What the graph remembers of a run between epoch ends: the validation loss
//! at each epoch end and the seeds it has seen. A packet is a snapshot; a
//! plateau ("the loss stopped falling") and a growth history ("two seeds
//! were already tried") are not in any one packet, and the heuristic the
//! learned policy is measured against decides from both.
//!
//! Observing is idempotent per epoch: a packet replaces what an earlier one
//! of the same epoch recorded, so that a retried decision (after a missed
//! deadline) sees exactly what the first try saw.

use std::collections::BTreeSet;

use leyline::v1::SystemStatePacket;
use serde::{Deserialize, Serialize};

/// Most epoch ends kept (the features look two back).
const KEEP_EPOCHS: usize = 8;

/// Most seed ids remembered; beyond it the count saturates.
const KEEP_SEEDS: usize = 256;

/// The run's memory, kept across decisions and in checkpoints.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunMemory {
    /// (epoch, validation loss), oldest first, one per epoch.
    losses: Vec<(u32, f64)>,
    /// Seed ids seen in any packet of the run.
    seeds: BTreeSet<String>,
}

impl RunMemory {
    /// Records `packet`: its validation loss under its epoch (replacing any
    /// earlier record of that epoch or later ones — a rollback goes back in
    /// epochs) and its seeds.
    pub(crate) fn observe(&mut self, packet: &SystemStatePacket) {
        if let Some(loss) = packet.validation_loss.filter(|l| l.is_finite()) {
            let epoch = packet.current_epoch;
            self.losses.retain(|(e, _)| *e < epoch);
            self.losses.push((epoch, loss));
            if self.losses.len() > KEEP_EPOCHS {
                self.losses.remove(0);
            }
        }
        for s in &packet.seed_states {
            if self.seeds.len() >= KEEP_SEEDS {
                break;
            }
            self.seeds.insert(s.seed_id.clone());
        }
    }

    /// The relative fall of the validation loss `back` epoch ends ago
    /// (0: from the previous epoch end to the latest), `(before − after) /
    /// before`, clamped to [−1, 1]; `None` without two records.
    pub(crate) fn improvement(&self, back: usize) -> Option<f64> {
        let n = self.losses.len();
        let after = self.losses.get(n.checked_sub(1 + back)?)?.1;
        let before = self.losses.get(n.checked_sub(2 + back)?)?.1;
        (before > 0.0).then(|| ((before - after) / before).clamp(-1.0, 1.0))
    }

    /// Seeds seen this run (germinated, culled or fossilized).
    pub(crate) fn seeds_seen(&self) -> usize {
        self.seeds.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn packet(epoch: u32, loss: Option<f64>, seeds: &[&str]) -> SystemStatePacket {
        SystemStatePacket {
            current_epoch: epoch,
            validation_loss: loss,
            seed_states: seeds
                .iter()
                .map(|id| leyline::v1::SeedState {
                    seed_id: (*id).into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn improvements_look_back_over_epoch_ends() {
        let mut m = RunMemory::default();
        assert_eq!(m.improvement(0), None);
        m.observe(&packet(1, Some(2.0), &[]));
        assert_eq!(m.improvement(0), None);
        m.observe(&packet(2, Some(1.0), &[]));
        m.observe(&packet(3, Some(0.9), &[]));
        assert!((m.improvement(0).unwrap() - 0.1).abs() < 1e-12);
        assert!((m.improvement(1).unwrap() - 0.5).abs() < 1e-12);
        assert_eq!(m.improvement(2), None);
    }

    #[test]
    fn observing_an_epoch_again_replaces_it_and_a_rollback_forgets_later_ones() {
        let mut m = RunMemory::default();
        for (e, l) in [(1, 2.0), (2, 1.0), (3, 0.5)] {
            m.observe(&packet(e, Some(l), &[]));
        }
        let before = m.clone();
        m.observe(&packet(3, Some(0.5), &[]));
        assert_eq!(m, before, "a retry of the same packet changes nothing");
        m.observe(&packet(2, Some(1.5), &[]));
        assert!((m.improvement(0).unwrap() - 0.25).abs() < 1e-12);
        assert_eq!(m.improvement(1), None);
    }

    #[test]
    fn seeds_are_counted_once_and_missing_losses_are_not_records() {
        let mut m = RunMemory::default();
        m.observe(&packet(1, None, &["a"]));
        m.observe(&packet(2, Some(f64::NAN), &["a", "b"]));
        assert_eq!(m.seeds_seen(), 2);
        assert_eq!(m.improvement(0), None);
        for e in 0..20 {
            m.observe(&packet(e, Some(1.0), &[]));
        }
        assert_eq!(m.losses.len(), KEEP_EPOCHS);
    }
}
