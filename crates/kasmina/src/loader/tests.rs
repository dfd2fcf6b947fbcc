#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::AtomicUsize;

use leyline::codec::BusPayload;
use leyline::security::SigningKey;
use oona::{Identity, MemoryBus, Oona, StartFrom, Stream};
use urza::store::{BoxFuture, CatalogWatch};
use urza::{Artifact, CatalogQuery, Library, LibraryConfig, LocalStore};

use super::*;

/// A store that counts requests, can slow down and can corrupt what it serves.
struct TestStore {
    inner: LocalStore,
    ensures: AtomicUsize,
    active: AtomicUsize,
    max_active: AtomicUsize,
    delay: Duration,
    corrupt: bool,
}

impl TestStore {
    fn new(dir: &std::path::Path, delay: Duration, corrupt: bool) -> Arc<Self> {
        let library = Arc::new(Library::open(LibraryConfig::new(dir)).unwrap().0);
        Arc::new(Self {
            inner: LocalStore::new(library),
            ensures: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            max_active: AtomicUsize::new(0),
            delay,
            corrupt,
        })
    }
}

impl BlueprintStore for TestStore {
    fn list_blueprints(
        &self,
        q: CatalogQuery,
    ) -> BoxFuture<'_, urza::Result<Vec<leyline::v1::CatalogEntry>>> {
        self.inner.list_blueprints(q)
    }
    fn get_blueprint(&self, id: String) -> BoxFuture<'_, urza::Result<leyline::v1::CatalogEntry>> {
        self.inner.get_blueprint(id)
    }
    fn list_artifacts(&self, id: String) -> BoxFuture<'_, urza::Result<Vec<ArtifactRecord>>> {
        self.inner.list_artifacts(id)
    }
    fn fetch_artifact(&self, r: String) -> BoxFuture<'_, urza::Result<Artifact>> {
        Box::pin(async move {
            let mut artifact = self.inner.fetch_artifact(r).await?;
            if self.corrupt {
                let mut bytes = artifact.bytes.to_vec();
                let last = bytes.len() - 1;
                bytes[last] ^= 1;
                artifact.bytes = Bytes::from(bytes);
            }
            Ok(artifact)
        })
    }
    fn put_artifact(&self, b: Bytes) -> BoxFuture<'_, urza::Result<(ArtifactRecord, bool)>> {
        self.inner.put_artifact(b)
    }
    fn ensure_artifact(&self, r: EnsureRequest) -> BoxFuture<'_, urza::Result<ArtifactRecord>> {
        Box::pin(async move {
            self.ensures.fetch_add(1, Ordering::SeqCst);
            let now = self.active.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_active.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            let result = self.inner.ensure_artifact(r).await;
            self.active.fetch_sub(1, Ordering::SeqCst);
            result
        })
    }
    fn watch_catalog(&self) -> BoxFuture<'_, urza::Result<CatalogWatch>> {
        self.inner.watch_catalog()
    }
}

fn request(blueprint: &str) -> KernelRequest {
    KernelRequest {
        blueprint_id: blueprint.into(),
        slot: SlotShape::conv2d(4, 6, 6).unwrap(),
        parameters: Parameters::new(),
        init_seed: 3,
    }
}

fn config(concurrency: usize, timeout_ms: u64) -> KernelConfig {
    KernelConfig {
        concurrency,
        timeout: Duration::from_millis(timeout_ms),
        ..KernelConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_loads_of_the_same_kernel_build_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::new(dir.path(), Duration::from_millis(50), false);
    let manager = Arc::new(KernelManager::new(store.clone(), config(4, 10_000)));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let manager = Arc::clone(&manager);
        tasks.push(tokio::spawn(async move {
            manager
                .load(&request("conv.residual"), &CancellationToken::new())
                .await
        }));
    }
    let mut refs = Vec::new();
    for t in tasks {
        refs.push(t.await.unwrap().unwrap().record.artifact_ref);
    }
    refs.dedup();
    assert_eq!(refs.len(), 1);
    assert_eq!(store.ensures.load(Ordering::SeqCst), 1, "built once");
    let stats = manager.stats();
    assert_eq!((stats.store_loads, stats.shared), (1, 7));
    // Later loads come from the cache; the module instantiates.
    let again = manager
        .load(&request("conv.residual"), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(store.ensures.load(Ordering::SeqCst), 1);
    assert!(again.instantiate(&Device::Cpu).unwrap().parameter_count() > 0);
    assert!(manager.stats().cache.hits >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_bytes_fail_verification_with_no_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::new(dir.path(), Duration::ZERO, true);
    let manager = KernelManager::new(store.clone(), config(2, 10_000));
    for _ in 0..2 {
        let err = manager
            .load(&request("conv.light"), &CancellationToken::new())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("verification failed"), "{err}");
    }
    let stats = manager.stats();
    assert_eq!((stats.failures, stats.verification_failures), (2, 2));
    assert_eq!(stats.cache.entries, 0, "nothing unverified is cached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_time_out_and_honour_cancellation() {
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::new(dir.path(), Duration::from_secs(5), false);
    let manager = Arc::new(KernelManager::new(store.clone(), config(2, 100)));
    let started = Instant::now();
    let err = manager
        .load(&request("conv.light"), &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("timed out"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    let manager = Arc::new(KernelManager::new(store, config(2, 60_000)));
    let cancel = CancellationToken::new();
    let task = {
        let (manager, cancel) = (Arc::clone(&manager), cancel.clone());
        tokio::spawn(async move { manager.load(&request("conv.grouped"), &cancel).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    cancel.cancel();
    let err = task.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("cancelled"), "{err}");
    assert!(started.elapsed() < Duration::from_millis(500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_concurrency_limit_holds() {
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::new(dir.path(), Duration::from_millis(100), false);
    let manager = Arc::new(KernelManager::new(store.clone(), config(1, 10_000)));
    let mut tasks = Vec::new();
    for id in ["conv.light", "conv.residual", "conv.depthwise"] {
        let manager = Arc::clone(&manager);
        tasks.push(tokio::spawn(async move {
            manager.load(&request(id), &CancellationToken::new()).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(store.max_active.load(Ordering::SeqCst), 1);
    assert_eq!(store.ensures.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_over_oona_readies_the_kernel_before_it_is_needed() {
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::new(dir.path(), Duration::ZERO, false);
    let oona = Arc::new(
        Oona::new(
            MemoryBus::new(10_000),
            &oona::Config::default(),
            &leyline::Config::default(),
            SigningKey::from_bytes(&[5u8; 32]).unwrap(),
            Identity {
                source: "test".into(),
                run_id: "run".into(),
            },
        )
        .unwrap(),
    );
    let cancel = CancellationToken::new();
    let worker = {
        let (store, oona, cancel) = (store.clone(), Arc::clone(&oona), cancel.clone());
        tokio::spawn(
            async move { urza::prefetch::serve(store.as_ref(), &oona, "w1", cancel).await },
        )
    };
    let mut ready = oona
        .subscribe(Stream::KernelReady, "kasmina", "k1", StartFrom::Beginning)
        .await
        .unwrap();
    let mut errors = oona
        .subscribe(Stream::KernelErrors, "kasmina", "k1", StartFrom::Beginning)
        .await
        .unwrap();
    let manager = KernelManager::new(store.clone(), config(2, 10_000));
    let wanted = request("conv.squeeze_excitation");
    manager
        .prefetch(&oona, "req-1", "run", &wanted)
        .await
        .unwrap();
    manager
        .prefetch(&oona, "req-2", "run", &request("conv.nope"))
        .await
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut got_ready, mut got_error) = (None, None);
    while (got_ready.is_none() || got_error.is_none()) && Instant::now() < deadline {
        for d in ready.next_batch().await.unwrap() {
            if let BusPayload::KernelPrefetchReady(r) = &d.payload {
                got_ready = Some(r.clone());
            }
            ready.ack(&d).await.unwrap();
        }
        for d in errors.next_batch().await.unwrap() {
            if let BusPayload::KernelPrefetchError(e) = &d.payload {
                got_error = Some(e.clone());
            }
            errors.ack(&d).await.unwrap();
        }
    }
    let announced = got_ready.expect("a Ready answer");
    assert_eq!(announced.request_id, "req-1");
    let loaded = manager.handle_ready(&wanted, &announced).await.unwrap();
    assert_eq!(loaded.record.artifact_ref, announced.artifact_ref);
    let error = got_error.expect("an Error answer");
    assert!(
        error.reason.contains("unknown_blueprint"),
        "{}",
        error.reason
    );
    assert!(matches!(manager.handle_error(&error), Error::Kernel(_)));

    // The prefetched kernel is served from the cache.
    let before = store.ensures.load(Ordering::SeqCst);
    manager
        .load(&wanted, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(store.ensures.load(Ordering::SeqCst), before);

    // A Ready whose digest lies is refused.
    let mut forged = announced.clone();
    forged.guard_digest = "0".repeat(64);
    assert!(manager.handle_ready(&wanted, &forged).await.is_err());
    cancel.cancel();
    worker.await.unwrap().unwrap();
}
