//! The gRPC client: [`RemoteStore`] implements [`BlueprintStore`] against an
//! `esper urza serve` process.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use leyline::v1::{
    ArtifactRecord, CatalogEntry, EnsureArtifactRequest, FetchArtifactRequest, GetBlueprintRequest,
    ListArtifactsRequest, ListBlueprintsRequest, WatchCatalogRequest,
};
use tonic::transport::{Channel, Endpoint};

use super::generated::urza_service_client::UrzaServiceClient;
use super::server::upload_chunks;
use super::{CHUNK_BYTES, MAX_ARTIFACT_BYTES, from_status};
use crate::artifact::{Artifact, sha256_hex};
use crate::error::{Error, Result, rejected};
use crate::library::CatalogQuery;
use crate::store::{BlueprintStore, BoxFuture, CatalogWatch, EnsureRequest};

/// Client settings.
#[derive(Debug, Clone)]
pub struct RemoteStoreConfig {
    /// `http://host:port` of the service.
    pub endpoint: String,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Per-request deadline (forging on demand can take a while).
    pub request_timeout: Duration,
    /// The shared secret call tokens are made with; without it the service
    /// refuses this client's writes (PutArtifact, EnsureArtifact) — and its
    /// reads when it listens beyond loopback — with UNAUTHENTICATED, unless
    /// it runs open.
    pub auth_key: Option<leyline::security::SigningKey>,
}

impl RemoteStoreConfig {
    /// Defaults: 2 s to connect, 30 s per request.
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(30),
            auth_key: None,
        }
    }

    /// The same, making call tokens with `key`.
    pub fn with_auth_key(mut self, key: leyline::security::SigningKey) -> Self {
        self.auth_key = Some(key);
        self
    }
}

/// A [`BlueprintStore`] served by a remote Urza.
#[derive(Debug, Clone)]
pub struct RemoteStore {
    client: UrzaServiceClient<Channel>,
    auth_key: Option<leyline::security::SigningKey>,
}

impl RemoteStore {
    /// Connects to the service (fails fast when it is unreachable).
    pub async fn connect(config: &RemoteStoreConfig) -> Result<Self> {
        let endpoint = Endpoint::from_shared(config.endpoint.clone())
            .map_err(|e| Error::Transport(format!("endpoint `{}`: {e}", config.endpoint)))?
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true)
            .timeout(config.request_timeout);
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| Error::Transport(format!("connecting to {}: {e}", config.endpoint)))?;
        let client = UrzaServiceClient::new(channel)
            .max_decoding_message_size(2 * CHUNK_BYTES)
            .max_encoding_message_size(2 * CHUNK_BYTES);
        Ok(Self {
            client,
            auth_key: config.auth_key.clone(),
        })
    }

    fn client(&self) -> UrzaServiceClient<Channel> {
        self.client.clone()
    }

    /// `message` as a request, with a fresh token when this client has the key.
    fn request<T>(&self, message: T) -> Result<tonic::Request<T>> {
        let mut request = tonic::Request::new(message);
        if let Some(key) = &self.auth_key {
            let token = super::auth::token(key, leyline::unix_now_ms());
            let value = tonic::metadata::MetadataValue::try_from(token.as_str())
                .map_err(|e| Error::Transport(format!("call token is not a header value: {e}")))?;
            request.metadata_mut().insert(super::auth::HEADER, value);
        }
        Ok(request)
    }
}

impl BlueprintStore for RemoteStore {
    fn list_blueprints(&self, query: CatalogQuery) -> BoxFuture<'_, Result<Vec<CatalogEntry>>> {
        let mut client = self.client();
        let request = self.request(ListBlueprintsRequest {
            tier: query.tier.unwrap_or(0),
            slot_kind: query.slot_kind.unwrap_or(0),
            tag: query.tag.unwrap_or_default(),
            include_quarantined: query.include_quarantined,
        });
        Box::pin(async move {
            let request = request?;
            Ok(client
                .list_blueprints(request)
                .await
                .map_err(from_status)?
                .into_inner()
                .entries)
        })
    }

    fn get_blueprint(&self, blueprint_id: String) -> BoxFuture<'_, Result<CatalogEntry>> {
        let mut client = self.client();
        let request = self.request(GetBlueprintRequest { blueprint_id });
        Box::pin(async move {
            Ok(client
                .get_blueprint(request?)
                .await
                .map_err(from_status)?
                .into_inner())
        })
    }

    fn list_artifacts(&self, blueprint_id: String) -> BoxFuture<'_, Result<Vec<ArtifactRecord>>> {
        let mut client = self.client();
        let request = self.request(ListArtifactsRequest { blueprint_id });
        Box::pin(async move {
            Ok(client
                .list_artifacts(request?)
                .await
                .map_err(from_status)?
                .into_inner()
                .artifacts)
        })
    }

    fn fetch_artifact(&self, artifact_ref: String) -> BoxFuture<'_, Result<Artifact>> {
        let mut client = self.client();
        let request = self.request(FetchArtifactRequest {
            artifact_ref: artifact_ref.clone(),
        });
        Box::pin(async move {
            let mut stream = client
                .fetch_artifact(request?)
                .await
                .map_err(from_status)?
                .into_inner();
            let mut record = None;
            let mut buffer = BytesMut::new();
            while let Some(chunk) = stream.message().await.map_err(from_status)? {
                if record.is_none() {
                    record = chunk.record;
                }
                if chunk.offset != buffer.len() as u64
                    || buffer.len() + chunk.data.len() > MAX_ARTIFACT_BYTES
                {
                    return Err(rejected(Error::MalformedArtifact {
                        reason: format!(
                            "chunk at offset {} after {} bytes",
                            chunk.offset,
                            buffer.len()
                        ),
                    }));
                }
                buffer.extend_from_slice(&chunk.data);
            }
            let record = record.ok_or_else(|| {
                rejected(Error::MalformedArtifact {
                    reason: "the stream carried no artifact record".into(),
                })
            })?;
            // The transport is not trusted: the bytes must hash to the reference.
            let actual = sha256_hex(&buffer);
            if actual != artifact_ref || record.artifact_ref != artifact_ref {
                metrics::counter!("urza_integrity_failures_total").increment(1);
                return Err(rejected(Error::Integrity {
                    artifact_ref,
                    actual,
                }));
            }
            Ok(Artifact {
                record,
                bytes: buffer.freeze(),
            })
        })
    }

    fn put_artifact(&self, bytes: Bytes) -> BoxFuture<'_, Result<(ArtifactRecord, bool)>> {
        let mut client = self.client();
        let request = self.request(upload_chunks(bytes));
        Box::pin(async move {
            let request = request?;
            let response = client
                .put_artifact(request)
                .await
                .map_err(from_status)?
                .into_inner();
            let record = response.record.ok_or_else(|| Error::Remote {
                code: tonic::Code::Internal,
                label: "remote",
                message: "PutArtifact answered without a record".into(),
            })?;
            Ok((record, response.created))
        })
    }

    fn ensure_artifact(&self, request: EnsureRequest) -> BoxFuture<'_, Result<ArtifactRecord>> {
        let mut client = self.client();
        let wire = self.request(EnsureArtifactRequest {
            blueprint_id: request.blueprint_id,
            slot_kind: request.slot.kind() as i32,
            slot_shape: request.slot.wire_shape(),
            parameters: request.parameters,
            init_seed: request.init_seed,
        });
        Box::pin(async move {
            Ok(client
                .ensure_artifact(wire?)
                .await
                .map_err(from_status)?
                .into_inner())
        })
    }

    fn watch_catalog(&self) -> BoxFuture<'_, Result<CatalogWatch>> {
        let mut client = self.client();
        let request = self.request(WatchCatalogRequest {});
        Box::pin(async move {
            let stream = client
                .watch_catalog(request?)
                .await
                .map_err(from_status)?
                .into_inner();
            Ok(CatalogWatch::remote(stream))
        })
    }
}
