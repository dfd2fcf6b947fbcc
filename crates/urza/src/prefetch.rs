//! The prefetch worker: answers `KernelPrefetchRequest`s from the kernel
//! request stream with a `KernelArtifactReady` (artifact reference, SHA-256,
//! guard digest, forge latencies) or a `KernelArtifactError` with the reason,
//! forging the artifact when the library has none. Kasmina fetches and
//! verifies the artifact itself; the worker never sends bytes over the bus.

use leyline::codec::BusPayload;
use leyline::v1::{
    KernelArtifactError, KernelArtifactReady, KernelPrefetchRequest, MessagePriority,
};
use oona::{Bus, Delivery, Handler, HandlerResult, Oona, StartFrom, Stream};
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::slot::SlotShape;
use crate::store::{BlueprintStore, EnsureRequest};

/// Consumer group of the prefetch workers on the kernel request stream.
pub const GROUP: &str = "urza-prefetch";

/// Answers one request (the store does the work; errors become a reason).
pub async fn answer(
    store: &dyn BlueprintStore,
    request: &KernelPrefetchRequest,
) -> std::result::Result<KernelArtifactReady, KernelArtifactError> {
    let fail = |reason: String| KernelArtifactError {
        request_id: request.request_id.clone(),
        blueprint_id: request.blueprint_id.clone(),
        reason,
    };
    let slot = SlotShape::from_wire(request.slot_kind, &request.slot_shape)
        .map_err(|e| fail(e.to_string()))?;
    let record = store
        .ensure_artifact(EnsureRequest {
            blueprint_id: request.blueprint_id.clone(),
            slot,
            parameters: request.parameters.clone(),
            init_seed: request.init_seed,
        })
        .await
        .map_err(|e| fail(format!("{}: {e}", e.label())))?;
    Ok(KernelArtifactReady {
        request_id: request.request_id.clone(),
        blueprint_id: record.blueprint_id.clone(),
        artifact_ref: record.artifact_ref.clone(),
        checksum: record.artifact_ref.clone(),
        guard_digest: record.guard_digest.clone(),
        prewarm_p50_ms: record.forward_p50_ms,
        prewarm_p95_ms: record.forward_p95_ms,
    })
}

/// Serves prefetch requests on `oona` as `consumer` until `cancel` fires.
pub async fn serve<B: Bus>(
    store: &dyn BlueprintStore,
    oona: &Oona<B>,
    consumer: &str,
    cancel: CancellationToken,
) -> Result<()> {
    let subscription = oona
        .subscribe(
            Stream::KernelRequests,
            GROUP,
            consumer,
            StartFrom::Beginning,
        )
        .await
        .map_err(|e| crate::Error::Transport(format!("subscribing to kernel requests: {e}")))?;
    let handler = PrefetchHandler { store, oona };
    subscription
        .run(handler, cancel)
        .await
        .map_err(|e| crate::Error::Transport(format!("serving prefetch requests: {e}")))?;
    Ok(())
}

struct PrefetchHandler<'a, B: Bus> {
    store: &'a dyn BlueprintStore,
    oona: &'a Oona<B>,
}

impl<B: Bus> Handler for PrefetchHandler<'_, B> {
    async fn handle(&mut self, delivery: &Delivery) -> HandlerResult {
        let BusPayload::KernelPrefetchRequest(request) = &delivery.payload else {
            // Other messages on the stream are not ours to answer.
            return Ok(());
        };
        let published = match answer(self.store, request).await {
            Ok(ready) => self.oona.publish(&ready, MessagePriority::High).await,
            Err(error) => {
                metrics::counter!("urza_prefetch_errors_total").increment(1);
                self.oona.publish(&error, MessagePriority::High).await
            }
        };
        published
            .map(|_| ())
            .map_err(|e| format!("publishing the answer: {e}"))
    }
}
