//! What a learned controller's decisions earned: rewards measured against
//! the same host trained on the same run seed with no controller.
//!
//! A run is deterministic by its seed, so the learned run and its baseline
//! are the same run until the first germination; their difference at an
//! epoch end is what the decisions so far caused. The *standing* of the run
//! at epoch `e` is
//!
//! ```text
//! standing(e) = 100 · (acc(e) − acc_baseline(e))                  points of validation accuracy
//!             − param_rent · (live seed parameters at e) / (host parameters)
//!             − mac_rent   · (forward MACs at e − the baseline's) / (the baseline's)
//! ```
//!
//! and the decision taken at the end of epoch `e_i` earns
//! `standing(e_{i+1}) − standing(e_i)` (the last one: up to the run's final
//! epoch). The rents count at the final epoch only (before it, the standing
//! is the accuracy term alone): what is priced is what the run ends with.
//! Measured (policy `esper-v1`, docs/LEARNED.md): with the rent charged at
//! every epoch, culling a seed earned its rent back at once while the
//! accuracy it would have brought came epochs later, and PPO learned to
//! germinate cheap seeds and cull them two epochs on, before they paid.
//! The rewards of an episode sum to its final standing either way: the
//! accuracy it gained over not growing, less the rent on what it ended with
//! — the claim the cohort verdict judges, priced.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::runlog::EpochLine;

/// The rent on growth (the `[tamiyo.ppo]` reward weights).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rent {
    /// Points of accuracy one host's worth of added parameters costs.
    pub param_points: f64,
    /// Points one host's worth of added forward MACs per image costs.
    pub mac_points: f64,
}

/// Why an episode cannot be scored.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RewardError {
    /// The learned run or its baseline lacks an epoch a decision needs.
    #[error("epoch {epoch} is missing from the {which} run's metrics")]
    MissingEpoch {
        /// The epoch.
        epoch: u32,
        /// `learned` or `baseline`.
        which: &'static str,
    },
    /// A seed in the metrics has no parameter count in the summary.
    #[error("seed {0} is in the metrics but not in the run summary")]
    UnknownSeed(String),
    /// Rent was asked for, but the host's size is 0.
    #[error("the host's parameter count is 0")]
    NoHost,
}

/// One run, as the reward reads it.
#[derive(Debug, Clone, Copy)]
pub struct RunRecord<'a> {
    /// Its epoch lines.
    pub epochs: &'a [EpochLine],
    /// Parameters of each seed it germinated (from its summary).
    pub seed_parameters: &'a BTreeMap<String, u64>,
}

fn line<'a>(
    epochs: &'a [EpochLine],
    epoch: u32,
    which: &'static str,
) -> Result<&'a EpochLine, RewardError> {
    epochs
        .iter()
        .rev()
        .find(|l| l.epoch == epoch)
        .ok_or(RewardError::MissingEpoch { epoch, which })
}

/// `standing(epoch)` (see the module docs); `rent` is charged when given.
pub fn standing(
    learned: RunRecord<'_>,
    baseline: &[EpochLine],
    host_parameters: u64,
    rent: Option<Rent>,
    epoch: u32,
) -> Result<f64, RewardError> {
    let l = line(learned.epochs, epoch, "learned")?;
    let b = line(baseline, epoch, "baseline")?;
    let gain = 100.0 * (l.validation_accuracy - b.validation_accuracy);
    let Some(rent) = rent else {
        return Ok(gain);
    };
    // Only the rent is relative to the host's size.
    if host_parameters == 0 {
        return Err(RewardError::NoHost);
    }
    let mut live = 0u64;
    // A seed costs parameters while it runs in the model (its forward MACs
    // are counted from TRAINING to FOSSILIZED, 0 elsewhere).
    for s in l.seeds.iter().filter(|s| s.forward_macs > 0) {
        live += learned
            .seed_parameters
            .get(&s.seed)
            .copied()
            .ok_or_else(|| RewardError::UnknownSeed(s.seed.clone()))?;
    }
    let mac_rise = match (l.forward_macs_per_image, b.forward_macs_per_image) {
        (Some(lm), Some(bm)) if bm > 0.0 => ((lm - bm) / bm).max(0.0),
        _ => 0.0,
    };
    Ok(
        gain - rent.param_points * live as f64 / host_parameters as f64
            - rent.mac_points * mac_rise,
    )
}

/// The reward of each decision, taken at the ends of `decision_epochs`
/// (ascending), in a run whose last epoch is `final_epoch`; `None` charges
/// no rent (a run that ended early has no summary to price its seeds from).
pub fn rewards(
    decision_epochs: &[u32],
    final_epoch: u32,
    learned: RunRecord<'_>,
    baseline: &[EpochLine],
    host_parameters: u64,
    rent: Option<Rent>,
) -> Result<Vec<f64>, RewardError> {
    let at = |e: u32| {
        let charged = rent.filter(|_| e == final_epoch);
        standing(learned, baseline, host_parameters, charged, e)
    };
    let mut out = Vec::with_capacity(decision_epochs.len());
    for (i, &e) in decision_epochs.iter().enumerate() {
        let next = decision_epochs.get(i + 1).copied().unwrap_or(final_epoch);
        out.push(if next > e { at(next)? - at(e)? } else { 0.0 });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::runlog::EpochSeed;

    fn epoch(e: u32, acc: f64, macs: f64, seeds: &[(&str, u64)]) -> EpochLine {
        let mut l: EpochLine =
            serde_json::from_str(&crate::runlog::epoch_line_json(e, acc)).unwrap();
        l.forward_macs_per_image = Some(macs);
        l.seeds = seeds
            .iter()
            .map(|(id, macs)| EpochSeed {
                seed: (*id).into(),
                slot: "r0".into(),
                blueprint: "b".into(),
                stage: "SEED_STAGE_BLENDING".into(),
                alpha: 0.5,
                forward_macs: *macs,
                forward_ms: None,
                forward_share: None,
            })
            .collect();
        l
    }

    #[test]
    fn rewards_telescope_to_the_final_gain_less_the_rent() {
        let baseline: Vec<_> = (1..=4)
            .map(|e| epoch(e, 0.80 + 0.01 * f64::from(e), 1000.0, &[]))
            .collect();
        // Germinated at the end of epoch 1; live (100 MACs) from epoch 2;
        // culled before epoch 4 (0 MACs: no rent there).
        let learned = vec![
            epoch(1, 0.81, 1000.0, &[]),
            epoch(2, 0.84, 1100.0, &[("s", 100)]),
            epoch(3, 0.86, 1100.0, &[("s", 100)]),
            epoch(4, 0.85, 1000.0, &[("s", 0)]),
        ];
        let params = BTreeMap::from([("s".to_string(), 500u64)]);
        let run = RunRecord {
            epochs: &learned,
            seed_parameters: &params,
        };
        let rent = Rent {
            param_points: 2.0,
            mac_points: 1.0,
        };
        let host = 1000;
        // The full standing: e1 0; e2 100·0.02 − 2·0.5 − 1·0.1 = 0.9;
        // e3 100·0.03 − 1.1 = 1.9; e4 100·0.01 − 0 = 1.0.
        let full = |e| standing(run, &baseline, host, Some(rent), e).unwrap();
        for (e, want) in [(1, 0.0), (2, 0.9), (3, 1.9), (4, 1.0)] {
            assert!((full(e) - want).abs() < 1e-9, "epoch {e}: {}", full(e));
        }
        // Rewards: the accuracy term until the final epoch, which is charged
        // its rent: 2 − 0, 3 − 2, 1.0 − 3, and 0 for the last decision.
        let r = rewards(&[1, 2, 3, 4], 4, run, &baseline, host, Some(rent)).unwrap();
        let expected = [2.0, 1.0, -2.0, 0.0];
        for (got, want) in r.iter().zip(expected) {
            assert!((got - want).abs() < 1e-9, "{r:?}");
        }
        assert!((r.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        // Decisions at every other epoch: the same total.
        let r = rewards(&[1, 3], 4, run, &baseline, host, Some(rent)).unwrap();
        assert!(
            (r[0] - 3.0).abs() < 1e-9 && (r[1] + 2.0).abs() < 1e-9,
            "{r:?}"
        );
        // A seed still live at the end is charged there.
        let kept = vec![
            epoch(1, 0.81, 1000.0, &[]),
            epoch(2, 0.84, 1100.0, &[("s", 100)]),
        ];
        let kept_run = RunRecord {
            epochs: &kept,
            seed_parameters: &params,
        };
        let r = rewards(&[1], 2, kept_run, &baseline, host, Some(rent)).unwrap();
        assert!((r[0] - 0.9).abs() < 1e-9, "{r:?}");
        // Without rent (a run that ended early): the accuracy term alone,
        // and no seed needs pricing.
        let unpriced = RunRecord {
            epochs: &kept,
            seed_parameters: &BTreeMap::new(),
        };
        let r = rewards(&[1], 2, unpriced, &baseline, host, None).unwrap();
        assert!((r[0] - 2.0).abs() < 1e-9, "{r:?}");
        assert!(rewards(&[1], 2, unpriced, &baseline, host, Some(rent)).is_err());
        // A missing baseline epoch is an error, not a zero.
        assert_eq!(
            rewards(&[1, 2], 4, run, &baseline[..2], host, Some(rent)).unwrap_err(),
            RewardError::MissingEpoch {
                epoch: 4,
                which: "baseline"
            }
        );
    }
}
