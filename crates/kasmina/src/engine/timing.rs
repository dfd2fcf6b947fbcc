//! Seed step time, measured: how long each seed's forward takes inside the
//! training step (its module, the incubator or blend arithmetic, and on
//! checked steps its isolation probes), timed in place by the slots, and
//! what share of the step's whole forward pass that is.
//!
//! candle runs one backward over the whole graph, so a seed's backward
//! cannot be timed apart from the host's; the forward share is the measured
//! part. A convolution's backward costs about twice its forward for host and
//! seed alike, so the forward share is also roughly the seed's share of the
//! step (the `seed_cost` bench measures the whole step, backward included).
//!
//! Per slot, an exponential moving average (weight [`NEW_STEP_WEIGHT`] on the
//! newest step) restarted whenever the seed or its stage changes — a
//! TRAINING seed's forward is not a FOSSILIZED one's. Per seed, the totals
//! over its life go into its [`SeedOutcome`] (and travel in the checkpoint
//! with it); the moving averages are wall-clock measurements of this process
//! and start afresh on a resumed run. Nothing allocates on a step unless a
//! slot's seed or stage changed.

use std::collections::BTreeMap;

use leyline::v1::SeedStage;

use super::history::SeedOutcome;
use super::step::StepTimes;
use crate::slots::SeedSlots;

/// Weight of the newest step in the moving averages.
pub(crate) const NEW_STEP_WEIGHT: f64 = 0.1;

/// A seed's measured forward cost now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SeedTime {
    /// Moving average of the seed's forward time per training step, ms.
    pub forward_ms: f64,
    /// Moving average of its share of the step's whole forward pass (0–1).
    pub forward_share: f64,
}

#[derive(Debug, Clone, PartialEq)]
struct SlotTime {
    seed: String,
    stage: SeedStage,
    time: SeedTime,
}

/// The moving averages by slot.
#[derive(Debug, Clone, Default)]
pub(crate) struct SeedTiming {
    by_slot: BTreeMap<String, SlotTime>,
}

fn ewma(old: f64, new: f64) -> f64 {
    old + NEW_STEP_WEIGHT * (new - old)
}

impl SeedTiming {
    /// Folds one training step's measured seed forward times in.
    pub(crate) fn record(
        &mut self,
        slots: &SeedSlots,
        history: &mut [SeedOutcome],
        times: StepTimes,
    ) {
        slots.forward_times(|slot_id, seed, elapsed| {
            if !seed.trains() {
                // The module did not run: nothing to measure.
                return;
            }
            let ms = elapsed.as_secs_f64() * 1e3;
            let share = if times.forward_ms > 0.0 {
                (ms / times.forward_ms).min(1.0)
            } else {
                0.0
            };
            match self.by_slot.get_mut(slot_id) {
                Some(t) if t.seed == seed.id() && t.stage == seed.stage() => {
                    t.time.forward_ms = ewma(t.time.forward_ms, ms);
                    t.time.forward_share = ewma(t.time.forward_share, share);
                }
                Some(_) | None => {
                    self.by_slot.insert(
                        slot_id.to_string(),
                        SlotTime {
                            seed: seed.id().to_string(),
                            stage: seed.stage(),
                            time: SeedTime {
                                forward_ms: ms,
                                forward_share: share,
                            },
                        },
                    );
                }
            }
            if let Some(outcome) = history.iter_mut().find(|o| o.seed == seed.id()) {
                outcome.forward_seconds += elapsed.as_secs_f64();
                outcome.model_forward_seconds += times.forward_ms / 1e3;
                outcome.timed_steps += 1;
            }
        });
    }

    /// The averages of the seed `seed_id` in `slot_id` at `stage`, once a
    /// step of it was measured.
    pub(crate) fn of(&self, slot_id: &str, seed_id: &str, stage: SeedStage) -> Option<SeedTime> {
        self.by_slot
            .get(slot_id)
            .filter(|t| t.seed == seed_id && t.stage == stage)
            .map(|t| t.time)
    }
}
