//! The validation pass, with the seeds as they are or held at α = 0 (the
//! counterfactuals Kasmina's gates and the field reports measure against).

use kasmina::DormantSlots;

use super::Trainer;
use super::Validation;
use super::helpers::count_correct;
use crate::data::BatchLoader;
use crate::error::Result;

impl Trainer {
    /// One pass over the validation set with the current weights (and seeds).
    pub fn validate(&self) -> Result<Validation> {
        self.validate_with(false)
    }

    /// A validation pass; `counterfactual` forces every seed's α to 0 (the
    /// host as it would be without its seeds).
    pub fn validate_with(&self, counterfactual: bool) -> Result<Validation> {
        self.validate_slots(|s| s.set_counterfactual(counterfactual))
    }

    /// A validation pass with the seed in `slot_id` at α = 0 and every other
    /// seed as it is: that seed's own counterfactual.
    pub fn validate_without(&self, slot_id: &str) -> Result<Validation> {
        self.validate_slots(|s| s.set_counterfactual_slot(Some(slot_id)))
    }

    fn validate_slots(&self, mode: impl FnOnce(&mut kasmina::SeedSlots)) -> Result<Validation> {
        // Validation runs on a copy of the slots (shared weights, no probes), so
        // that it needs no mutable access to the trainer.
        let mut slots = self.seeds.as_ref().map(|c| {
            let mut s = c.kasmina.slots().clone();
            s.set_isolation_probes(false);
            mode(&mut s);
            s
        });
        let mut loader = BatchLoader::new(
            self.validation.clone(),
            self.config.batch_size,
            None,
            self.config.prefetch_batches,
        )?;
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
        while let Some(batch) = loader.next_batch(&self.device)? {
            let logits = match slots.as_mut() {
                Some(slots) => self.host.forward_with_slots(&batch.images, slots)?,
                None => self
                    .host
                    .forward_with_slots(&batch.images, &mut DormantSlots)?,
            }
            .detach();
            let n = batch.labels.dims1()?;
            let loss = self
                .config
                .ops
                .cross_entropy(&logits, &batch.labels)?
                .to_scalar::<f32>()?;
            loss_sum += f64::from(loss) * n as f64;
            correct += count_correct(&logits, &batch.labels)?;
            seen += n;
        }
        Ok(Validation {
            loss: loss_sum / seen.max(1) as f64,
            accuracy: correct as f64 / seen.max(1) as f64,
            samples: seen,
        })
    }
}
