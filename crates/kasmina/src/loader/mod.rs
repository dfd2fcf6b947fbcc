//! The kernel load manager: the one component that loads blueprint modules
//! for Kasmina, through any [`urza::BlueprintStore`].
//!
//! * Loads of the same (blueprint, slot, parameters) share one in-flight
//!   request: concurrent callers build it once.
//! * A semaphore bounds concurrent store requests; each load has a timeout and
//!   honours a cancellation token.
//! * Every artifact is verified before it is cached: its bytes must hash to its
//!   reference and its header's guard digest must equal the catalog's (and,
//!   for a prefetch answer, the Ready message's). A failure is an error — there
//!   is no fallback kernel.
//! * Verified bytes sit in a byte-bounded LRU (windowed and lifetime stats).
//! * Prefetch over Oona: [`KernelManager::prefetch`] publishes a
//!   `KernelPrefetchRequest`; Urza's worker answers Ready or Error;
//!   [`KernelManager::handle_ready`] fetches and verifies ahead of use.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use candle_core::Device;
use leyline::v1::{
    ArtifactRecord, KernelArtifactError, KernelArtifactReady, KernelPrefetchRequest,
    MessagePriority,
};
use tokio::sync::{OnceCell, Semaphore};
use tokio_util::sync::CancellationToken;
use urza::library::ArtifactCache;
use urza::{BlueprintModule, BlueprintStore, EnsureRequest, Parameters, SlotShape};

use crate::error::{Error, Result};

/// Manager settings.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelConfig {
    /// Byte budget of the verified-artifact cache.
    pub cache_bytes: u64,
    /// Lookups the windowed hit rate covers.
    pub stats_window: usize,
    /// Store requests in flight at once.
    pub concurrency: usize,
    /// Longest a load may take.
    pub timeout: Duration,
}

impl Default for KernelConfig {
    /// 64 MiB, 1 024 lookups, 4 at once, 30 s.
    fn default() -> Self {
        Self {
            cache_bytes: 64 << 20,
            stats_window: 1024,
            concurrency: 4,
            timeout: Duration::from_secs(30),
        }
    }
}

/// What a load asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelRequest {
    /// Blueprint id.
    pub blueprint_id: String,
    /// The slot.
    pub slot: SlotShape,
    /// Parameters (empty: the blueprint's defaults).
    pub parameters: Parameters,
    /// Seed of the initial weights if the artifact must be forged.
    pub init_seed: u64,
}

impl KernelRequest {
    fn key(&self) -> String {
        format!(
            "{}|{}|{}",
            self.blueprint_id,
            self.slot,
            serde_json::to_string(&self.parameters).unwrap_or_default()
        )
    }
}

/// A verified artifact, ready to instantiate.
#[derive(Debug, Clone)]
pub struct LoadedKernel {
    /// Its catalog record.
    pub record: ArtifactRecord,
    /// Its verified bytes.
    pub bytes: Bytes,
}

impl LoadedKernel {
    /// Builds the module on `device`.
    pub fn instantiate(&self, device: &Device) -> Result<BlueprintModule> {
        Ok(urza::artifact::instantiate(&self.bytes, device)?.1)
    }
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct KernelStats {
    /// Store round trips (ensure + fetch) started.
    pub store_loads: u64,
    /// Loads answered by a shared in-flight request or the cache.
    pub shared: u64,
    /// Loads that failed (timeout, cancelled, store error, verification).
    pub failures: u64,
    /// Verification failures among them.
    pub verification_failures: u64,
    /// Prefetch answers received (ready and error).
    pub prefetch_answers: u64,
    /// Cache statistics.
    pub cache: urza::library::CacheStats,
}

type Shared = Arc<OnceCell<std::result::Result<LoadedKernel, String>>>;

/// The manager.
pub struct KernelManager {
    store: Arc<dyn BlueprintStore>,
    config: KernelConfig,
    cache: Mutex<ArtifactCache>,
    records: Mutex<HashMap<String, ArtifactRecord>>,
    inflight: Mutex<HashMap<String, Shared>>,
    permits: Semaphore,
    store_loads: AtomicU64,
    shared: AtomicU64,
    failures: AtomicU64,
    verification_failures: AtomicU64,
    prefetch_answers: AtomicU64,
}

impl std::fmt::Debug for KernelManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelManager")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Checks bytes against a record (and an expected guard digest).
fn verify(
    record: &ArtifactRecord,
    bytes: &[u8],
    expected_digest: Option<&str>,
) -> std::result::Result<(), String> {
    let actual = urza::artifact::sha256_hex(bytes);
    if actual != record.artifact_ref {
        return Err(format!(
            "checksum {actual} is not the artifact's {}",
            record.artifact_ref
        ));
    }
    let header = urza::artifact::read_header(bytes).map_err(|e| e.to_string())?;
    if header.guard_digest != record.guard_digest {
        return Err(format!(
            "guard digest {} is not the catalog's {}",
            header.guard_digest, record.guard_digest
        ));
    }
    if let Some(expected) = expected_digest
        && expected != header.guard_digest
    {
        return Err(format!(
            "guard digest {} is not the announced {expected}",
            header.guard_digest
        ));
    }
    Ok(())
}

impl KernelManager {
    /// A manager over `store`.
    pub fn new(store: Arc<dyn BlueprintStore>, config: KernelConfig) -> Self {
        Self {
            cache: Mutex::new(ArtifactCache::new(config.cache_bytes, config.stats_window)),
            permits: Semaphore::new(config.concurrency.max(1)),
            store,
            config,
            records: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            store_loads: AtomicU64::new(0),
            shared: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            verification_failures: AtomicU64::new(0),
            prefetch_answers: AtomicU64::new(0),
        }
    }

    /// Counters and cache statistics.
    pub fn stats(&self) -> KernelStats {
        KernelStats {
            store_loads: self.store_loads.load(Ordering::Relaxed),
            shared: self.shared.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            verification_failures: self.verification_failures.load(Ordering::Relaxed),
            prefetch_answers: self.prefetch_answers.load(Ordering::Relaxed),
            cache: lock(&self.cache).stats(),
        }
    }

    fn cached(&self, key: &str) -> Option<LoadedKernel> {
        let record = lock(&self.records).get(key).cloned()?;
        let bytes = lock(&self.cache).get(&record.artifact_ref)?;
        Some(LoadedKernel { record, bytes })
    }

    fn fail(&self, reason: String) -> Error {
        self.failures.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("kasmina_kernel_load_failures_total").increment(1);
        tracing::warn!(target: "kasmina", "kernel load failed: {reason}");
        Error::Kernel(reason)
    }

    /// Loads a kernel: cache, or the shared in-flight load, or a new store
    /// round trip (bounded, timed, cancellable, verified).
    pub async fn load(
        &self,
        request: &KernelRequest,
        cancel: &CancellationToken,
    ) -> Result<LoadedKernel> {
        let key = request.key();
        if let Some(hit) = self.cached(&key) {
            self.shared.fetch_add(1, Ordering::Relaxed);
            return Ok(hit);
        }
        let cell: Shared = lock(&self.inflight).entry(key.clone()).or_default().clone();
        let mut first = false;
        let wait = cell.get_or_init(|| {
            first = true;
            self.load_from_store(request, None)
        });
        let result = tokio::select! {
            _ = cancel.cancelled() => Err("cancelled".to_string()),
            r = tokio::time::timeout(self.config.timeout, wait) => match r {
                Ok(r) => r.clone(),
                Err(_) => Err(format!("timed out after {:?}", self.config.timeout)),
            },
        };
        if !first {
            self.shared.fetch_add(1, Ordering::Relaxed);
        }
        // The in-flight entry is done (or abandoned by this caller): later
        // loads go to the cache, or retry a failure from scratch.
        if cell.initialized() || first {
            lock(&self.inflight).remove(&key);
        }
        result.map_err(|reason| self.fail(format!("{}: {reason}", request.blueprint_id)))
    }

    async fn load_from_store(
        &self,
        request: &KernelRequest,
        announced: Option<(&str, &str)>,
    ) -> std::result::Result<LoadedKernel, String> {
        let _permit = self.permits.acquire().await.map_err(|e| e.to_string())?;
        self.store_loads.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let record = match announced {
            Some((artifact_ref, _)) => {
                self.store
                    .fetch_artifact(artifact_ref.to_string())
                    .await
                    .map_err(|e| e.to_string())?
                    .record
            }
            None => self
                .store
                .ensure_artifact(EnsureRequest {
                    blueprint_id: request.blueprint_id.clone(),
                    slot: request.slot.clone(),
                    parameters: request.parameters.clone(),
                    init_seed: request.init_seed,
                })
                .await
                .map_err(|e| e.to_string())?,
        };
        let artifact = self
            .store
            .fetch_artifact(record.artifact_ref.clone())
            .await
            .map_err(|e| e.to_string())?;
        if let Err(reason) = verify(&record, &artifact.bytes, announced.map(|(_, d)| d)) {
            self.verification_failures.fetch_add(1, Ordering::Relaxed);
            return Err(format!("verification failed: {reason}"));
        }
        metrics::histogram!("kasmina_kernel_load_ms").record(started.elapsed().as_secs_f64() * 1e3);
        lock(&self.cache).insert(record.artifact_ref.clone(), artifact.bytes.clone());
        lock(&self.records).insert(request.key(), record.clone());
        Ok(LoadedKernel {
            record,
            bytes: artifact.bytes,
        })
    }

    /// Publishes a prefetch request for `request` on `oona` (id `request_id`).
    pub async fn prefetch<B: oona::Bus>(
        &self,
        oona: &oona::Oona<B>,
        request_id: &str,
        run_id: &str,
        request: &KernelRequest,
    ) -> Result<()> {
        let message = KernelPrefetchRequest {
            request_id: request_id.to_string(),
            blueprint_id: request.blueprint_id.clone(),
            training_run_id: run_id.to_string(),
            issued_at_ms: crate::engine::now_ms(),
            slot_shape: request.slot.wire_shape(),
            slot_kind: request.slot.kind() as i32,
            parameters: request.parameters.clone(),
            init_seed: request.init_seed,
        };
        oona.publish(&message, MessagePriority::High)
            .await
            .map_err(|e| self.fail(format!("publishing prefetch {request_id}: {e}")))?;
        Ok(())
    }

    /// Takes a Ready answer: fetches the announced artifact and verifies its
    /// checksum and guard digest against the message before caching it under
    /// `request`'s key.
    pub async fn handle_ready(
        &self,
        request: &KernelRequest,
        ready: &KernelArtifactReady,
    ) -> Result<LoadedKernel> {
        self.prefetch_answers.fetch_add(1, Ordering::Relaxed);
        if ready.checksum != ready.artifact_ref {
            return Err(self.fail(format!(
                "prefetch {}: checksum {} does not name artifact {}",
                ready.request_id, ready.checksum, ready.artifact_ref
            )));
        }
        self.load_from_store(request, Some((&ready.artifact_ref, &ready.guard_digest)))
            .await
            .map_err(|reason| self.fail(format!("prefetch {}: {reason}", ready.request_id)))
    }

    /// Takes an Error answer: the load failed; nothing is cached and nothing
    /// replaces it.
    pub fn handle_error(&self, error: &KernelArtifactError) -> Error {
        self.prefetch_answers.fetch_add(1, Ordering::Relaxed);
        self.fail(format!(
            "prefetch {} of {}: {}",
            error.request_id, error.blueprint_id, error.reason
        ))
    }
}

/// A [`crate::KernelSource`] over a manager, for Kasmina's synchronous fence:
/// each load blocks the training thread on the manager's runtime.
#[derive(Debug, Clone)]
pub struct ManagedSource {
    manager: Arc<KernelManager>,
    runtime: tokio::runtime::Handle,
    device: Device,
}

impl ManagedSource {
    /// Loads through `manager` on `runtime`, instantiating on `device`.
    pub fn new(
        manager: Arc<KernelManager>,
        runtime: tokio::runtime::Handle,
        device: Device,
    ) -> Self {
        Self {
            manager,
            runtime,
            device,
        }
    }
}

impl crate::KernelSource for ManagedSource {
    fn load(
        &mut self,
        blueprint_id: &str,
        params: &Parameters,
        slot: &SlotShape,
        init_seed: u64,
    ) -> urza::Result<(String, BlueprintModule)> {
        let request = KernelRequest {
            blueprint_id: blueprint_id.to_string(),
            slot: slot.clone(),
            parameters: params.clone(),
            init_seed,
        };
        let loaded = self
            .runtime
            .block_on(self.manager.load(&request, &CancellationToken::new()))
            .map_err(|e| urza::Error::Transport(e.to_string()))?;
        let module =
            urza::artifact::instantiate_with_init(&loaded.bytes, &self.device, init_seed)?.1;
        Ok((loaded.record.artifact_ref, module))
    }
}

#[cfg(test)]
mod tests;
