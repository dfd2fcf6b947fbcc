//! Catalog changes onto Oona: every [`KernelCatalogUpdate`] the library
//! announces is published (HIGH priority: never shed) on the kernel stream, so
//! that Kasmina's kernel cache and Tamiyo's metadata cache invalidate.

use std::time::Duration;

use leyline::v1::{KernelCatalogUpdate, MessagePriority};
use oona::{Bus, Oona};
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::store::CatalogWatch;

/// What the forwarder did before it stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForwardReport {
    /// Updates published.
    pub published: u64,
    /// Updates given up after the retries (each logged and counted).
    pub failed: u64,
    /// Updates the watcher missed because it fell behind.
    pub missed: u64,
}

/// Attempts per update before it is counted as failed.
const ATTEMPTS: u32 = 3;

/// Publishes every update from `watch` on `oona` until `cancel` fires or the
/// store shuts down. A failed publish is retried with backoff (100, 200 ms);
/// a missed update (watcher lagging) is counted and logged — subscribers then
/// see a gap, which is why the updates are only cache *invalidations*.
pub async fn forward_catalog_updates<B: Bus>(
    mut watch: CatalogWatch,
    oona: &Oona<B>,
    cancel: CancellationToken,
) -> ForwardReport {
    let mut report = ForwardReport::default();
    loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => return report,
            next = watch.next() => next,
        };
        match next {
            None => return report,
            Some(Err(Error::WatchLagged { missed })) => {
                report.missed += missed;
                metrics::counter!("urza_catalog_updates_missed_total").increment(missed);
                tracing::warn!(target: "urza", missed, "catalog forwarder fell behind");
            }
            Some(Err(e)) => {
                tracing::warn!(target: "urza", "catalog watch failed: {e}");
                return report;
            }
            Some(Ok(update)) => {
                if publish(oona, &update, &cancel).await {
                    report.published += 1;
                } else {
                    report.failed += 1;
                    metrics::counter!("urza_catalog_publish_failures_total").increment(1);
                }
            }
        }
    }
}

async fn publish<B: Bus>(
    oona: &Oona<B>,
    update: &KernelCatalogUpdate,
    cancel: &CancellationToken,
) -> bool {
    let mut backoff = Duration::from_millis(100);
    for attempt in 1..=ATTEMPTS {
        match oona.publish(update, MessagePriority::High).await {
            Ok(_) => return true,
            Err(e) => {
                tracing::warn!(
                    target: "urza",
                    attempt,
                    blueprint = %update.blueprint_id,
                    "publishing a catalog update failed: {e}"
                );
                if attempt == ATTEMPTS {
                    break;
                }
                tokio::select! {
                    _ = cancel.cancelled() => return false,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff *= 2;
            }
        }
    }
    false
}
