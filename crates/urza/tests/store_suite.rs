//! One test suite, two stores: the local library and the gRPC client talking
//! to a server started in the test on a free port must behave the same.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use candle_core::Device;
use leyline::security::SigningKey;
use leyline::v1::{ArtifactProvenance, BlueprintTier, CatalogChange, SlotKind};
use tokio_util::sync::CancellationToken;
use urza::grpc::{RemoteStore, RemoteStoreConfig, ServiceAuth, serve};
use urza::{
    BlueprintStore, CatalogQuery, EnsureRequest, Error, Library, LibraryConfig, LocalStore,
    Parameters, SlotShape, artifact, catalog,
};

fn conv_slot() -> SlotShape {
    SlotShape::conv2d(4, 6, 6).unwrap()
}

fn ensure(id: &str, slot: SlotShape) -> EnsureRequest {
    EnsureRequest {
        blueprint_id: id.into(),
        slot,
        parameters: Parameters::new(),
        init_seed: 11,
    }
}

/// Refused as a bad request naming `key`: `InvalidSlot` locally,
/// INVALID_ARGUMENT from the service.
fn bad_request<T>(result: &Result<T, Error>, key: &str) -> bool {
    match result {
        Err(e @ Error::InvalidSlot { .. }) => e.to_string().contains(key),
        Err(Error::Remote { code, message, .. }) => {
            *code == tonic::Code::InvalidArgument && message.contains(key)
        }
        _ => false,
    }
}

/// The suite: `library` is the library behind `store` (for on-disk damage).
async fn suite(store: &dyn BlueprintStore, library: &Library) {
    // Catalog queries.
    let all = store
        .list_blueprints(CatalogQuery::default())
        .await
        .unwrap();
    assert_eq!(all.len(), catalog().len());
    let safe_conv = store
        .list_blueprints(CatalogQuery {
            tier: Some(BlueprintTier::Safe as i32),
            slot_kind: Some(SlotKind::Conv2d as i32),
            ..CatalogQuery::default()
        })
        .await
        .unwrap();
    assert!(!safe_conv.is_empty());
    for e in &safe_conv {
        let d = e.descriptor.as_ref().unwrap();
        assert_eq!(d.tier, BlueprintTier::Safe as i32);
        assert!(d.slot_kinds.contains(&(SlotKind::Conv2d as i32)));
    }
    let entry = store.get_blueprint("conv.residual".into()).await.unwrap();
    assert_eq!(entry.descriptor.unwrap().name, "Residual block");
    assert!(matches!(
        store.get_blueprint("nope".into()).await,
        Err(Error::UnknownBlueprint { blueprint_id }) if blueprint_id == "nope"
    ));

    // Issue #21 items 4 and 5: an unknown blueprint has no artifact list
    // (NOT_FOUND, as GetBlueprint says); a huge slot or module is refused
    // before anything is allocated; one parameter given keeps the other
    // defaults.
    assert!(matches!(
        store.list_artifacts("nope".into()).await,
        Err(Error::UnknownBlueprint { blueprint_id }) if blueprint_id == "nope"
    ));
    let huge = SlotShape::conv2d(65_536, 1_024, 1_024).unwrap();
    let refused = store.ensure_artifact(ensure("conv.residual", huge)).await;
    assert!(bad_request(&refused, "max_slot_elements"), "{refused:?}");
    let wide = SlotShape::conv2d(2_048, 2, 2).unwrap();
    let refused = store.ensure_artifact(ensure("conv.heavy", wide)).await;
    assert!(bad_request(&refused, "max_forge_parameters"), "{refused:?}");

    // Forge on demand, once.
    let mut watch = store.watch_catalog().await.unwrap();
    let record = store
        .ensure_artifact(ensure("conv.residual", conv_slot()))
        .await
        .unwrap();
    let again = store
        .ensure_artifact(ensure("conv.residual", conv_slot()))
        .await
        .unwrap();
    assert_eq!(record.artifact_ref, again.artifact_ref);
    let update = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(update.artifact_ref, record.artifact_ref);
    assert_eq!(update.change, CatalogChange::Updated as i32);

    // Fetch: verified bytes that rebuild the module.
    let fetched = store
        .fetch_artifact(record.artifact_ref.clone())
        .await
        .unwrap();
    assert_eq!(artifact::sha256_hex(&fetched.bytes), record.artifact_ref);
    assert_eq!(fetched.record.artifact_ref, record.artifact_ref);
    let module = fetched.instantiate(&Device::Cpu).unwrap();
    assert_eq!(module.parameter_count(), record.parameter_count);
    assert!(matches!(
        store.fetch_artifact("00".repeat(32)).await,
        Err(Error::UnknownArtifact { .. })
    ));

    // Upload trained weights; uploading them again creates nothing.
    for (_, var) in module.named_vars() {
        var.set(&(var.as_tensor() * 0.25).unwrap()).unwrap();
    }
    let trained = artifact::encode(
        &module,
        Some(&ArtifactProvenance {
            training_run_id: "suite".into(),
            slot_id: "s0".into(),
            contribution: 1.0,
            parent_artifact_ref: record.artifact_ref.clone(),
        }),
    )
    .unwrap();
    let (stored, created) = store
        .put_artifact(Bytes::from(trained.clone()))
        .await
        .unwrap();
    assert!(created);
    assert_eq!(stored.provenance.as_ref().unwrap().training_run_id, "suite");
    let (_, created_again) = store.put_artifact(Bytes::from(trained)).await.unwrap();
    assert!(!created_again);
    let bad = store
        .put_artifact(Bytes::from_static(b"not an artifact"))
        .await;
    assert_eq!(bad.unwrap_err().label(), "malformed_artifact");
    assert_eq!(
        store
            .list_artifacts("conv.residual".into())
            .await
            .unwrap()
            .len(),
        2
    );

    // Invalid requests keep their kind across the wire.
    let mut bad_params = ensure("conv.residual", conv_slot());
    bad_params.parameters.insert("depth".into(), 99.0);
    bad_params.parameters.insert("expansion".into(), 1.0);
    assert_eq!(
        store.ensure_artifact(bad_params).await.unwrap_err().label(),
        "invalid_parameter"
    );
    assert_eq!(
        store
            .ensure_artifact(ensure("dense.mlp_small", conv_slot()))
            .await
            .unwrap_err()
            .label(),
        "slot_mismatch"
    );

    // A large (≈1 MB) artifact streams in many chunks.
    let big = store
        .ensure_artifact(ensure("dense.mlp_large", SlotShape::dense(256).unwrap()))
        .await
        .unwrap();
    assert!(big.size_bytes > 1 << 20, "{}", big.size_bytes);
    let fetched = store
        .fetch_artifact(big.artifact_ref.clone())
        .await
        .unwrap();
    assert_eq!(fetched.bytes.len() as u64, big.size_bytes);

    // A byte flipped on disk is caught on load and quarantines the artifact.
    let victim = store
        .ensure_artifact(ensure("conv.depthwise", conv_slot()))
        .await
        .unwrap();
    let path = library.artifact_path(&victim.artifact_ref);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 0x04;
    std::fs::write(&path, bytes).unwrap();
    assert!(matches!(
        store.fetch_artifact(victim.artifact_ref.clone()).await,
        Err(Error::Integrity { .. })
    ));
    assert!(matches!(
        store.fetch_artifact(victim.artifact_ref.clone()).await,
        Err(Error::Quarantined { .. })
    ));
    // One parameter given: the others keep their defaults (issue #21 item 5).
    let mut one = ensure("dense.low_rank", SlotShape::dense(16).unwrap());
    one.parameters = Parameters::from([("rank".to_owned(), 4.0)]);
    let record = store.ensure_artifact(one).await.unwrap();
    assert_eq!(record.blueprint_id, "dense.low_rank");
}

fn library(dir: &std::path::Path) -> Arc<Library> {
    Arc::new(Library::open(LibraryConfig::new(dir)).unwrap().0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_library_passes_the_store_suite() {
    let dir = tempfile::tempdir().unwrap();
    let library = library(dir.path());
    let store = LocalStore::new(Arc::clone(&library));
    suite(&store, &library).await;
}

fn key(byte: u8) -> SigningKey {
    SigningKey::from_bytes(&[byte; 32]).unwrap()
}

async fn served(library: &Arc<Library>, shutdown: &CancellationToken) -> urza::grpc::Served {
    let auth = ServiceAuth::with_key(key(1), &leyline::SecurityConfig::default());
    serve(
        Arc::clone(library),
        "127.0.0.1:0".parse().unwrap(),
        auth,
        shutdown.clone(),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_client_passes_the_store_suite() {
    let dir = tempfile::tempdir().unwrap();
    let library = library(dir.path());
    let shutdown = CancellationToken::new();
    let served = served(&library, &shutdown).await;
    let config = RemoteStoreConfig::new(format!("http://{}", served.addr)).with_auth_key(key(1));
    let store = RemoteStore::connect(&config).await.unwrap();
    suite(&store, &library).await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), served.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// Issue #21 item 3: an upload or an on-demand forge without a token, or
/// with one made with another secret, is UNAUTHENTICATED and changes
/// nothing; reads stay open on loopback and need a token beyond it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_without_the_shared_secret_are_unauthenticated() {
    let dir = tempfile::tempdir().unwrap();
    let library = library(dir.path());
    let shutdown = CancellationToken::new();
    let served = served(&library, &shutdown).await;
    let endpoint = format!("http://{}", served.addr);
    // A genuine artifact, forged locally, that the service does not hold.
    let bytes = {
        let scratch = tempfile::tempdir().unwrap();
        let other = self::library(scratch.path());
        let record = other
            .ensure_artifact("conv.residual", &conv_slot(), &Parameters::new(), 3)
            .unwrap();
        other.fetch(&record.artifact_ref).unwrap().bytes
    };
    for config in [
        RemoteStoreConfig::new(endpoint.clone()),
        RemoteStoreConfig::new(endpoint.clone()).with_auth_key(key(2)),
    ] {
        let store = RemoteStore::connect(&config).await.unwrap();
        let refused = store.put_artifact(bytes.clone()).await;
        assert!(
            matches!(
                &refused,
                Err(Error::Remote {
                    code: tonic::Code::Unauthenticated,
                    ..
                })
            ),
            "{refused:?}"
        );
        let forge = store
            .ensure_artifact(ensure("conv.light", conv_slot()))
            .await;
        assert!(unauthenticated(&forge), "{forge:?}");
        // Reads need no token.
        assert!(
            !store
                .list_blueprints(CatalogQuery::default())
                .await
                .unwrap()
                .is_empty()
        );
    }
    assert!(
        library.artifacts("").unwrap().is_empty(),
        "nothing was stored"
    );
    let store = RemoteStore::connect(&RemoteStoreConfig::new(endpoint).with_auth_key(key(1)))
        .await
        .unwrap();
    let (_, created) = store.put_artifact(bytes).await.unwrap();
    assert!(created);
    shutdown.cancel();

    // Listening beyond loopback, reads need a token too.
    let shutdown = CancellationToken::new();
    let auth = ServiceAuth::with_key(key(1), &leyline::SecurityConfig::default());
    let wide = serve(
        Arc::clone(&library),
        "0.0.0.0:0".parse().unwrap(),
        auth,
        shutdown.clone(),
    )
    .await
    .unwrap();
    let endpoint = format!("http://127.0.0.1:{}", wide.addr.port());
    let anonymous = RemoteStore::connect(&RemoteStoreConfig::new(endpoint.clone()))
        .await
        .unwrap();
    let read = anonymous.list_blueprints(CatalogQuery::default()).await;
    assert!(unauthenticated(&read), "{read:?}");
    let member = RemoteStore::connect(&RemoteStoreConfig::new(endpoint).with_auth_key(key(1)))
        .await
        .unwrap();
    let entries = member
        .list_blueprints(CatalogQuery::default())
        .await
        .unwrap();
    assert!(!entries.is_empty());
    shutdown.cancel();
}

fn unauthenticated<T>(result: &Result<T, Error>) -> bool {
    matches!(
        result,
        Err(Error::Remote {
            code: tonic::Code::Unauthenticated,
            ..
        })
    )
}

#[tokio::test]
async fn an_unreachable_service_is_a_transport_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = RemoteStore::connect(&RemoteStoreConfig::new(format!("http://127.0.0.1:{port}")))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Transport(_)), "{err}");
}
