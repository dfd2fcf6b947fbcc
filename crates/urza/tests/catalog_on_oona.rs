//! Every catalog change reaches Oona as a KernelCatalogUpdate.

use std::sync::Arc;
use std::time::Duration;

use leyline::codec::BusPayload;
use leyline::security::SigningKey;
use leyline::v1::CatalogChange;
use oona::{Identity, MemoryBus, Oona, StartFrom, Stream};
use tokio_util::sync::CancellationToken;
use urza::notify::forward_catalog_updates;
use urza::{BlueprintStore, EnsureRequest, Library, LibraryConfig, LocalStore, SlotShape};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_changes_are_published_on_the_kernel_stream() {
    let dir = tempfile::tempdir().unwrap();
    let library = Arc::new(Library::open(LibraryConfig::new(dir.path())).unwrap().0);
    let store = LocalStore::new(Arc::clone(&library));
    let oona = Arc::new(
        Oona::new(
            MemoryBus::new(10_000),
            &oona::Config::default(),
            &leyline::Config::default(),
            SigningKey::from_bytes(&[3u8; 32]).unwrap(),
            Identity {
                source: "urza".into(),
                run_id: "test".into(),
            },
        )
        .unwrap(),
    );
    let mut consumer = oona
        .subscribe(Stream::KernelReady, "kasmina", "c1", StartFrom::Beginning)
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let watch = store.watch_catalog().await.unwrap();
    let forwarder = {
        let oona = Arc::clone(&oona);
        let cancel = cancel.clone();
        tokio::spawn(async move { forward_catalog_updates(watch, &oona, cancel).await })
    };

    let record = store
        .ensure_artifact(EnsureRequest {
            blueprint_id: "conv.squeeze_excitation".into(),
            slot: SlotShape::conv2d(8, 4, 4).unwrap(),
            parameters: Default::default(),
            init_seed: 1,
        })
        .await
        .unwrap();
    library
        .quarantine_blueprint("conv.heavy", "operator")
        .unwrap();

    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while seen.len() < 2 && tokio::time::Instant::now() < deadline {
        for delivery in consumer.next_batch().await.unwrap() {
            if let BusPayload::KernelCatalogUpdate(update) = &delivery.payload {
                seen.push(update.clone());
            }
            consumer.ack(&delivery).await.unwrap();
        }
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].artifact_ref, record.artifact_ref);
    assert_eq!(seen[0].guard_digest, record.guard_digest);
    assert_eq!(seen[1].blueprint_id, "conv.heavy");
    assert_eq!(seen[1].change, CatalogChange::Quarantined as i32);

    cancel.cancel();
    let report = forwarder.await.unwrap();
    assert_eq!((report.published, report.failed, report.missed), (2, 0, 0));
}
