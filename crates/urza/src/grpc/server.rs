//! The gRPC server: a [`Library`] behind `UrzaService`.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use leyline::v1::{
    ArtifactChunk, ArtifactRecord, CatalogEntry, EnsureArtifactRequest, FetchArtifactRequest,
    GetBlueprintRequest, KernelCatalogUpdate, ListArtifactsRequest, ListArtifactsResponse,
    ListBlueprintsRequest, ListBlueprintsResponse, PutArtifactChunk, PutArtifactResponse,
    WatchCatalogRequest,
};
use tokio_stream::Stream;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::auth::{HEADER, ServiceAuth};
use super::generated::urza_service_server::{UrzaService, UrzaServiceServer};
use super::{CHUNK_BYTES, MAX_ARTIFACT_BYTES, to_status};
use crate::error::{Error, Result};
use crate::library::{CatalogQuery, Library, Measured};
use crate::slot::SlotShape;

type ChunkStream = Pin<Box<dyn Stream<Item = std::result::Result<ArtifactChunk, Status>> + Send>>;
type UpdateStream =
    Pin<Box<dyn Stream<Item = std::result::Result<KernelCatalogUpdate, Status>> + Send>>;

struct Service {
    library: Arc<Library>,
    auth: ServiceAuth,
}

impl Service {
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Library) -> Result<T> + Send + 'static,
    ) -> std::result::Result<T, Status> {
        let library = Arc::clone(&self.library);
        tokio::task::spawn_blocking(move || work(&library))
            .await
            .map_err(|e| Status::internal(format!("library worker failed: {e}")))?
            .map_err(|e| to_status(&e))
    }
}

impl Service {
    /// Refuses a call whose caller is not authenticated as `auth` wants
    /// (`write`: the call can change the catalog).
    fn allowed<T>(
        &self,
        request: &Request<T>,
        method: &'static str,
        write: bool,
    ) -> std::result::Result<(), Status> {
        let credential = request.metadata().get(HEADER).and_then(|v| v.to_str().ok());
        let now = leyline::unix_now_ms();
        let verdict = if write {
            self.auth.check(credential, now)
        } else {
            self.auth.check_read(credential, now)
        };
        verdict.map_err(|why| {
            metrics::counter!("urza_unauthenticated_total", "method" => method).increment(1);
            tracing::warn!(target: "urza", "{method} refused: {why}");
            Status::unauthenticated(format!("{method} refused: {why}"))
        })
    }
}

fn optional(value: i32) -> Option<i32> {
    (value != 0).then_some(value)
}

#[tonic::async_trait]
impl UrzaService for Service {
    async fn list_blueprints(
        &self,
        request: Request<ListBlueprintsRequest>,
    ) -> std::result::Result<Response<ListBlueprintsResponse>, Status> {
        self.allowed(&request, "ListBlueprints", false)?;
        let r = request.into_inner();
        // An unknown enum value is a bad request, not a filter that matches nothing.
        if leyline::v1::BlueprintTier::try_from(r.tier).is_err() {
            return Err(Status::invalid_argument(format!("unknown tier {}", r.tier)));
        }
        if leyline::v1::SlotKind::try_from(r.slot_kind).is_err() {
            return Err(Status::invalid_argument(format!(
                "unknown slot kind {}",
                r.slot_kind
            )));
        }
        let query = CatalogQuery {
            tier: optional(r.tier),
            slot_kind: optional(r.slot_kind),
            tag: (!r.tag.is_empty()).then_some(r.tag),
            include_quarantined: r.include_quarantined,
        };
        let entries = self.blocking(move |l| l.list(&query)).await?;
        Ok(Response::new(ListBlueprintsResponse { entries }))
    }

    async fn get_blueprint(
        &self,
        request: Request<GetBlueprintRequest>,
    ) -> std::result::Result<Response<CatalogEntry>, Status> {
        self.allowed(&request, "GetBlueprint", false)?;
        let id = request.into_inner().blueprint_id;
        Ok(Response::new(
            self.blocking(move |l| l.blueprint(&id)).await?,
        ))
    }

    async fn list_artifacts(
        &self,
        request: Request<ListArtifactsRequest>,
    ) -> std::result::Result<Response<ListArtifactsResponse>, Status> {
        self.allowed(&request, "ListArtifacts", false)?;
        let id = request.into_inner().blueprint_id;
        let artifacts = self.blocking(move |l| l.artifacts(&id)).await?;
        Ok(Response::new(ListArtifactsResponse { artifacts }))
    }

    type FetchArtifactStream = ChunkStream;

    async fn fetch_artifact(
        &self,
        request: Request<FetchArtifactRequest>,
    ) -> std::result::Result<Response<ChunkStream>, Status> {
        self.allowed(&request, "FetchArtifact", false)?;
        let reference = request.into_inner().artifact_ref;
        let artifact = self.blocking(move |l| l.fetch(&reference)).await?;
        let mut record = Some(artifact.record);
        let bytes = artifact.bytes;
        let mut chunks = Vec::with_capacity(bytes.len() / CHUNK_BYTES + 1);
        let mut offset = 0;
        loop {
            let end = (offset + CHUNK_BYTES).min(bytes.len());
            chunks.push(Ok(ArtifactChunk {
                record: record.take(),
                offset: offset as u64,
                data: bytes[offset..end].to_vec(),
            }));
            offset = end;
            if offset >= bytes.len() {
                break;
            }
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn put_artifact(
        &self,
        request: Request<Streaming<PutArtifactChunk>>,
    ) -> std::result::Result<Response<PutArtifactResponse>, Status> {
        // Who is writing, before a byte of the upload is read.
        self.allowed(&request, "PutArtifact", true)?;
        let mut stream = request.into_inner();
        let mut buffer = Vec::new();
        while let Some(chunk) = stream.message().await? {
            if chunk.offset != buffer.len() as u64 {
                return Err(to_status(&crate::error::rejected(
                    Error::MalformedArtifact {
                        reason: format!(
                            "upload chunk at offset {} but {} bytes received",
                            chunk.offset,
                            buffer.len()
                        ),
                    },
                )));
            }
            if buffer.len() + chunk.data.len() > MAX_ARTIFACT_BYTES {
                return Err(to_status(&crate::error::rejected(
                    Error::MalformedArtifact {
                        reason: format!("upload larger than {MAX_ARTIFACT_BYTES} bytes"),
                    },
                )));
            }
            buffer.extend_from_slice(&chunk.data);
        }
        let (record, created) = self
            .blocking(move |l| l.save_bytes(&buffer, Measured::default()))
            .await?;
        Ok(Response::new(PutArtifactResponse {
            record: Some(record),
            created,
        }))
    }

    async fn ensure_artifact(
        &self,
        request: Request<EnsureArtifactRequest>,
    ) -> std::result::Result<Response<ArtifactRecord>, Status> {
        self.allowed(&request, "EnsureArtifact", true)?;
        let r = request.into_inner();
        let slot = SlotShape::from_wire(r.slot_kind, &r.slot_shape).map_err(|e| to_status(&e))?;
        let record = self
            .blocking(move |l| {
                l.ensure_artifact(&r.blueprint_id, &slot, &r.parameters, r.init_seed)
            })
            .await?;
        Ok(Response::new(record))
    }

    type WatchCatalogStream = UpdateStream;

    async fn watch_catalog(
        &self,
        request: Request<WatchCatalogRequest>,
    ) -> std::result::Result<Response<UpdateStream>, Status> {
        self.allowed(&request, "WatchCatalog", false)?;
        let updates =
            tokio_stream::wrappers::BroadcastStream::new(self.library.subscribe()).map(|item| {
                item.map_err(
                    |tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(missed)| {
                        to_status(&Error::WatchLagged { missed })
                    },
                )
            });
        Ok(Response::new(Box::pin(updates)))
    }
}

/// The service, with a message on UNIMPLEMENTED: the generated server
/// answers a method it does not have with status 12 and nothing else.
#[derive(Debug, Clone)]
struct Explained<S>(S);

impl<S: tonic::server::NamedService> tonic::server::NamedService for Explained<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tonic::codegen::Service<tonic::codegen::http::Request<B>> for Explained<S>
where
    S: tonic::codegen::Service<
            tonic::codegen::http::Request<B>,
            Response = tonic::codegen::http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + tonic::server::NamedService,
    S::Future: Send + 'static,
{
    type Response = tonic::codegen::http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future =
        Pin<Box<dyn Future<Output = std::result::Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::result::Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: tonic::codegen::http::Request<B>) -> Self::Future {
        let path = request.uri().path().to_owned();
        let answer = self.0.call(request);
        Box::pin(async move {
            let mut response = answer.await?;
            let headers = response.headers_mut();
            let unimplemented = headers
                .get("grpc-status")
                .is_some_and(|v| v.as_bytes() == b"12");
            if unimplemented && !headers.contains_key("grpc-message") {
                let text = format!("{path} is not a method of {}", S::NAME);
                if let Ok(value) = tonic::codegen::http::HeaderValue::from_str(&text) {
                    headers.insert("grpc-message", value);
                }
            }
            Ok(response)
        })
    }
}

/// A running server.
#[derive(Debug)]
pub struct Served {
    /// The address it listens on (useful with port 0).
    pub addr: SocketAddr,
    /// Completes when the server has stopped.
    pub task: tokio::task::JoinHandle<Result<()>>,
}

/// Serves `library` on `addr` (port 0 picks a free port) until `shutdown` is
/// cancelled, authenticating writes by `auth`. Must run inside a tokio
/// runtime.
pub async fn serve(
    library: Arc<Library>,
    addr: SocketAddr,
    auth: ServiceAuth,
    shutdown: CancellationToken,
) -> Result<Served> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Transport(format!("binding {addr}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Transport(format!("reading the bound address: {e}")))?;
    let auth = auth.for_address(!addr.ip().is_loopback());
    if matches!(auth, ServiceAuth::Open) {
        tracing::warn!(target: "urza", %addr, "writes are NOT authenticated (urza.write_auth = false)");
    }
    let service = Explained(
        UrzaServiceServer::new(Service { library, auth })
            .max_decoding_message_size(2 * CHUNK_BYTES)
            .max_encoding_message_size(2 * CHUNK_BYTES),
    );
    // Small responses must not wait for Nagle + delayed ACK (≈40 ms per call).
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|accepted| {
        accepted.inspect(|stream| {
            if let Err(e) = stream.set_nodelay(true) {
                tracing::warn!(target: "urza", "TCP_NODELAY not set: {e}");
            }
        })
    });
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
            .await
            .map_err(|e| Error::Transport(format!("serving: {e}")))
    });
    tracing::info!(target: "urza", %addr, "urza service listening");
    Ok(Served { addr, task })
}

/// Uploads `bytes` as a stream of chunks (shared by the client).
pub(crate) fn upload_chunks(bytes: Bytes) -> impl Stream<Item = PutArtifactChunk> + Send {
    let mut chunks = Vec::with_capacity(bytes.len() / CHUNK_BYTES + 1);
    let mut offset = 0;
    while offset < bytes.len() {
        let end = (offset + CHUNK_BYTES).min(bytes.len());
        chunks.push(PutArtifactChunk {
            offset: offset as u64,
            data: bytes[offset..end].to_vec(),
        });
        offset = end;
    }
    tokio_stream::iter(chunks)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    //! Requests no Esper client would send, straight through the generated
    //! client: each is a clear INVALID_ARGUMENT, never a panic or an
    //! allocation the request asked for.
    use super::super::generated::urza_service_client::UrzaServiceClient;
    use super::*;
    use leyline::v1::SlotKind;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hostile_requests_are_invalid_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let library = Arc::new(
            Library::open(crate::library::LibraryConfig::new(dir.path()))
                .unwrap()
                .0,
        );
        let shutdown = CancellationToken::new();
        // Open: what is judged here is the request, not the caller.
        let served = serve(
            library,
            "127.0.0.1:0".parse().unwrap(),
            ServiceAuth::Open,
            shutdown.clone(),
        )
        .await
        .unwrap();
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", served.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = UrzaServiceClient::new(channel);
        for shape in [vec![u32::MAX; 3], vec![65_536, 1_024, 1_024]] {
            let status = client
                .ensure_artifact(EnsureArtifactRequest {
                    blueprint_id: "conv.residual".into(),
                    slot_kind: SlotKind::Conv2d as i32,
                    slot_shape: shape.clone(),
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_eq!(
                status.code(),
                tonic::Code::InvalidArgument,
                "{shape:?}: {status:?}"
            );
        }
        let status = client
            .list_blueprints(ListBlueprintsRequest {
                tier: 99,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("unknown tier 99"));
        let status = client
            .list_artifacts(ListArtifactsRequest {
                blueprint_id: "nope".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");

        // Bytes that are no protobuf at all: the caller's fault.
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", served.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut raw = tonic::client::Grpc::new(channel);
        raw.ready().await.unwrap();
        let status = raw
            .unary::<Vec<u8>, ListBlueprintsResponse, _>(
                Request::new(vec![0xff, 0xff, 0xff, 0xff]),
                tonic::codegen::http::uri::PathAndQuery::from_static(
                    "/esper.leyline.v1.UrzaService/ListBlueprints",
                ),
                RawCodec,
            )
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains("ListBlueprintsRequest"),
            "{status:?}"
        );

        // A method the service does not have says so.
        raw.ready().await.unwrap();
        let status = raw
            .unary::<Vec<u8>, ListBlueprintsResponse, _>(
                Request::new(Vec::new()),
                tonic::codegen::http::uri::PathAndQuery::from_static(
                    "/esper.leyline.v1.UrzaService/DeleteEverything",
                ),
                RawCodec,
            )
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
        assert!(
            status
                .message()
                .contains("DeleteEverything is not a method of esper.leyline.v1.UrzaService"),
            "{status:?}"
        );
        shutdown.cancel();
    }

    /// Sends bytes as they are; decodes responses with prost.
    #[derive(Clone, Copy)]
    struct RawCodec;
    struct RawEncoder;

    impl tonic::codec::Encoder for RawEncoder {
        type Item = Vec<u8>;
        type Error = Status;
        fn encode(
            &mut self,
            item: Vec<u8>,
            dst: &mut tonic::codec::EncodeBuf<'_>,
        ) -> std::result::Result<(), Status> {
            bytes::BufMut::put_slice(dst, &item);
            Ok(())
        }
    }

    impl tonic::codec::Codec for RawCodec {
        type Encode = Vec<u8>;
        type Decode = ListBlueprintsResponse;
        type Encoder = RawEncoder;
        type Decoder = tonic_prost::ProstDecoder<ListBlueprintsResponse>;
        fn encoder(&mut self) -> RawEncoder {
            RawEncoder
        }
        fn decoder(&mut self) -> Self::Decoder {
            tonic_prost::ProstDecoder::default()
        }
    }
}
