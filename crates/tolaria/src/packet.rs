//! The [`SystemStatePacket`] Tolaria publishes after every epoch, built only
//! from real values: the epoch's measured metrics, the run's identity and the
//! host's slots with Kasmina's seeds (all DORMANT on a host that does not
//! grow). The same assembly feeds the control hook at every fence.

use std::collections::BTreeMap;

use leyline::v1::SystemStatePacket;

use crate::trainer::{EpochReport, Trainer};

/// The state packet for the end of `report`'s epoch (run id from the trainer,
/// experiment from [`Trainer::with_experiment`]).
pub fn state_packet(trainer: &Trainer, report: &EpochReport) -> SystemStatePacket {
    let metrics = BTreeMap::from([
        ("train_accuracy".to_owned(), report.train_accuracy),
        (
            "train_images_per_second".to_owned(),
            report.train_images_per_second,
        ),
        ("epoch_seconds".to_owned(), report.seconds),
        ("rollbacks".to_owned(), report.rollbacks as f64),
    ]);
    trainer.epoch_state(report, metrics)
}
