//! [`BlueprintStore`]: the one interface to Urza, implemented by the local
//! library ([`LocalStore`]) and by the gRPC client
//! ([`crate::grpc::RemoteStore`]), so a trainer works the same against its own
//! library or a fleet's shared service.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use leyline::v1::{ArtifactRecord, CatalogEntry, KernelCatalogUpdate};
use tokio::sync::broadcast;

use crate::artifact::Artifact;
use crate::error::{Error, Result};
use crate::library::{CatalogQuery, Library, Measured};
use crate::params::Parameters;
use crate::slot::SlotShape;

/// A boxed, sendable future (keeps the trait object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What [`BlueprintStore::ensure_artifact`] asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct EnsureRequest {
    /// The blueprint.
    pub blueprint_id: String,
    /// The slot the instance is for.
    pub slot: SlotShape,
    /// Parameters; empty means the blueprint's defaults.
    pub parameters: Parameters,
    /// Seed of the initial weights if the artifact has to be forged.
    pub init_seed: u64,
}

/// The operations every Urza store offers.
pub trait BlueprintStore: Send + Sync {
    /// Catalog entries matching `query`, ordered by id.
    fn list_blueprints(&self, query: CatalogQuery) -> BoxFuture<'_, Result<Vec<CatalogEntry>>>;
    /// One catalog entry.
    fn get_blueprint(&self, blueprint_id: String) -> BoxFuture<'_, Result<CatalogEntry>>;
    /// Artifacts of a blueprint (all when empty), newest first.
    fn list_artifacts(&self, blueprint_id: String) -> BoxFuture<'_, Result<Vec<ArtifactRecord>>>;
    /// An artifact's bytes, SHA-256 verified against its reference.
    fn fetch_artifact(&self, artifact_ref: String) -> BoxFuture<'_, Result<Artifact>>;
    /// Stores artifact bytes (validated); `true` when they were new.
    fn put_artifact(&self, bytes: Bytes) -> BoxFuture<'_, Result<(ArtifactRecord, bool)>>;
    /// The forged artifact for a blueprint, slot and parameters, forging it
    /// when the library has none.
    fn ensure_artifact(&self, request: EnsureRequest) -> BoxFuture<'_, Result<ArtifactRecord>>;
    /// Catalog changes from now on.
    fn watch_catalog(&self) -> BoxFuture<'_, Result<CatalogWatch>>;
}

/// A stream of catalog updates.
#[derive(Debug)]
pub struct CatalogWatch {
    inner: WatchInner,
}

#[derive(Debug)]
enum WatchInner {
    Local(broadcast::Receiver<KernelCatalogUpdate>),
    Remote(Box<tonic::Streaming<KernelCatalogUpdate>>),
}

impl CatalogWatch {
    pub(crate) fn local(rx: broadcast::Receiver<KernelCatalogUpdate>) -> Self {
        Self {
            inner: WatchInner::Local(rx),
        }
    }

    pub(crate) fn remote(stream: tonic::Streaming<KernelCatalogUpdate>) -> Self {
        Self {
            inner: WatchInner::Remote(Box::new(stream)),
        }
    }

    /// The next update; `None` when the store has shut down. A watcher that
    /// fell behind gets [`Error::WatchLagged`] once, then continues.
    pub async fn next(&mut self) -> Option<Result<KernelCatalogUpdate>> {
        match &mut self.inner {
            WatchInner::Local(rx) => match rx.recv().await {
                Ok(update) => Some(Ok(update)),
                Err(broadcast::error::RecvError::Closed) => None,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    Some(Err(Error::WatchLagged { missed }))
                }
            },
            WatchInner::Remote(stream) => match stream.message().await {
                Ok(Some(update)) => Some(Ok(update)),
                Ok(None) => None,
                Err(status) => Some(Err(crate::grpc::from_status(status))),
            },
        }
    }
}

/// The local library as a [`BlueprintStore`]. Each call runs on tokio's
/// blocking pool (SQLite, file reads, forging), never on an async worker.
#[derive(Debug, Clone)]
pub struct LocalStore {
    library: Arc<Library>,
}

impl LocalStore {
    /// Wraps a library.
    pub fn new(library: Arc<Library>) -> Self {
        Self { library }
    }

    /// The library.
    pub fn library(&self) -> &Arc<Library> {
        &self.library
    }

    fn blocking<T, F>(&self, work: F) -> BoxFuture<'_, Result<T>>
    where
        T: Send + 'static,
        F: FnOnce(&Library) -> Result<T> + Send + 'static,
    {
        let library = Arc::clone(&self.library);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || work(&library))
                .await
                .map_err(|e| Error::Transport(format!("library worker failed: {e}")))?
        })
    }
}

impl BlueprintStore for LocalStore {
    fn list_blueprints(&self, query: CatalogQuery) -> BoxFuture<'_, Result<Vec<CatalogEntry>>> {
        self.blocking(move |l| l.list(&query))
    }

    fn get_blueprint(&self, blueprint_id: String) -> BoxFuture<'_, Result<CatalogEntry>> {
        self.blocking(move |l| l.blueprint(&blueprint_id))
    }

    fn list_artifacts(&self, blueprint_id: String) -> BoxFuture<'_, Result<Vec<ArtifactRecord>>> {
        self.blocking(move |l| l.artifacts(&blueprint_id))
    }

    fn fetch_artifact(&self, artifact_ref: String) -> BoxFuture<'_, Result<Artifact>> {
        self.blocking(move |l| l.fetch(&artifact_ref))
    }

    fn put_artifact(&self, bytes: Bytes) -> BoxFuture<'_, Result<(ArtifactRecord, bool)>> {
        self.blocking(move |l| l.save_bytes(&bytes, Measured::default()))
    }

    fn ensure_artifact(&self, request: EnsureRequest) -> BoxFuture<'_, Result<ArtifactRecord>> {
        self.blocking(move |l| {
            l.ensure_artifact(
                &request.blueprint_id,
                &request.slot,
                &request.parameters,
                request.init_seed,
            )
        })
    }

    fn watch_catalog(&self) -> BoxFuture<'_, Result<CatalogWatch>> {
        let rx = self.library.subscribe();
        Box::pin(async move { Ok(CatalogWatch::local(rx)) })
    }
}
