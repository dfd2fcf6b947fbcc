//! The service side: sessions of [`TamiyoService`], one per trainer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use leyline::security::SigningKey;
use leyline::v1::{
    CloseSessionResponse, ControllerStateBlob, ImportStateRequest, ImportStateResponse,
    OpenSessionRequest, OpenSessionResponse, SessionRequest, StepRequest, StepResponse,
};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::generated::tamiyo_service_server::{TamiyoService as Rpc, TamiyoServiceServer};
use super::{HEADER, check_token, wire};
use crate::error::{Error, Result};
use crate::service::{ControllerState, TamiyoService};

/// Builds the controller of a new session (for training run `run_id`).
pub type SessionFactory = Arc<dyn Fn(&str) -> Result<TamiyoService> + Send + Sync>;

/// How the service runs.
#[derive(Clone)]
pub struct ServeConfig {
    /// The shared secret: call tokens are checked with it.
    pub key: SigningKey,
    /// How old a call token may be, ms.
    pub window_ms: u64,
    /// How far ahead of this clock a token may be, ms.
    pub skew_ms: u64,
    /// Most sessions open at once.
    pub max_sessions: usize,
    /// The policy's name (reported to clients).
    pub policy: &'static str,
    /// The service's own step deadline, ms (reported to clients).
    pub step_deadline_ms: f64,
}

impl std::fmt::Debug for ServeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeConfig")
            .field("window_ms", &self.window_ms)
            .field("max_sessions", &self.max_sessions)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// A running service.
#[derive(Debug)]
pub struct Served {
    /// The address it listens on (useful with port 0).
    pub addr: SocketAddr,
    /// Completes when the server has stopped.
    pub task: tokio::task::JoinHandle<Result<()>>,
}

type Session = Arc<Mutex<TamiyoService>>;

struct Service {
    config: ServeConfig,
    factory: SessionFactory,
    sessions: Mutex<HashMap<String, Session>>,
    next: AtomicU64,
}

impl Service {
    fn authorise<T>(&self, request: &Request<T>) -> std::result::Result<(), Status> {
        let credential = request.metadata().get(HEADER).and_then(|v| v.to_str().ok());
        check_token(
            &self.config.key,
            credential,
            leyline::unix_now_ms(),
            self.config.window_ms,
            self.config.skew_ms,
        )
        .map_err(|why| {
            metrics::counter!("tamiyo_grpc_rejected_total").increment(1);
            Status::unauthenticated(why)
        })
    }

    fn session(&self, id: &str) -> std::result::Result<Session, Status> {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no session {id:?} (opened, then closed or lost with a restart?)"
                ))
            })
    }
}

fn blocking_failed(e: tokio::task::JoinError) -> Status {
    Status::internal(format!("the controller's thread failed: {e}"))
}

#[tonic::async_trait]
impl Rpc for Arc<Service> {
    async fn open_session(
        &self,
        request: Request<OpenSessionRequest>,
    ) -> std::result::Result<Response<OpenSessionResponse>, Status> {
        self.authorise(&request)?;
        let run_id = request.into_inner().training_run_id;
        if self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
            >= self.config.max_sessions
        {
            return Err(Status::resource_exhausted(format!(
                "{} sessions are open, the most this service takes",
                self.config.max_sessions
            )));
        }
        let factory = Arc::clone(&self.factory);
        let name = run_id.clone();
        let service = tokio::task::spawn_blocking(move || factory(&name))
            .await
            .map_err(blocking_failed)?
            .map_err(|e| Status::failed_precondition(format!("starting a controller: {e}")))?;
        let id = format!("{run_id}#{}", self.next.fetch_add(1, Ordering::Relaxed));
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), Arc::new(Mutex::new(service)));
        metrics::gauge!("tamiyo_grpc_sessions").increment(1.0);
        Ok(Response::new(OpenSessionResponse {
            session_id: id,
            policy: self.config.policy.to_owned(),
            step_deadline_ms: self.config.step_deadline_ms,
        }))
    }

    async fn step(
        &self,
        request: Request<StepRequest>,
    ) -> std::result::Result<Response<StepResponse>, Status> {
        self.authorise(&request)?;
        let request = request.into_inner();
        let packet = request
            .packet
            .ok_or_else(|| Status::invalid_argument("a step request without a state packet"))?;
        let session = self.session(&request.session_id)?;
        let response = tokio::task::spawn_blocking(move || {
            let mut service = session.lock().unwrap_or_else(|p| p.into_inner());
            let mut response = match service.step(&packet) {
                Ok(decision) => wire::encode(&decision),
                Err(e) => wire::encode_error(&e),
            };
            response.field_reports = service.take_field_reports();
            response
        })
        .await
        .map_err(blocking_failed)?;
        metrics::counter!("tamiyo_grpc_steps_total").increment(1);
        Ok(Response::new(response))
    }

    async fn export_state(
        &self,
        request: Request<SessionRequest>,
    ) -> std::result::Result<Response<ControllerStateBlob>, Status> {
        self.authorise(&request)?;
        let session = self.session(&request.into_inner().session_id)?;
        let state = tokio::task::spawn_blocking(move || {
            session
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .export_state()
        })
        .await
        .map_err(blocking_failed)?
        .map_err(|e| Status::internal(e.to_string()))?;
        let state_json = serde_json::to_vec(&state).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(ControllerStateBlob { state_json }))
    }

    async fn import_state(
        &self,
        request: Request<ImportStateRequest>,
    ) -> std::result::Result<Response<ImportStateResponse>, Status> {
        self.authorise(&request)?;
        let request = request.into_inner();
        let state: ControllerState = serde_json::from_slice(&request.state_json)
            .map_err(|e| Status::invalid_argument(format!("the controller state: {e}")))?;
        let session = self.session(&request.session_id)?;
        tokio::task::spawn_blocking(move || {
            session
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .import_state(state)
        })
        .await
        .map_err(blocking_failed)?
        .map_err(|e| Status::failed_precondition(e.to_string()))?;
        Ok(Response::new(ImportStateResponse {}))
    }

    async fn close_session(
        &self,
        request: Request<SessionRequest>,
    ) -> std::result::Result<Response<CloseSessionResponse>, Status> {
        self.authorise(&request)?;
        let id = request.into_inner().session_id;
        let closed = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id)
            .is_some();
        if closed {
            metrics::gauge!("tamiyo_grpc_sessions").decrement(1.0);
        }
        Ok(Response::new(CloseSessionResponse { closed }))
    }
}

/// Serves sessions made by `factory` on `addr` (port 0 picks one) until
/// `shutdown` is cancelled. Must run inside a tokio runtime.
pub async fn serve(
    factory: SessionFactory,
    addr: SocketAddr,
    config: ServeConfig,
    shutdown: CancellationToken,
) -> Result<Served> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Remote(format!("binding {addr}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Remote(format!("reading the bound address: {e}")))?;
    let service = TamiyoServiceServer::new(Arc::new(Service {
        config,
        factory,
        sessions: Mutex::default(),
        next: AtomicU64::new(1),
    }));
    // A fence waits for the answer: no Nagle + delayed-ACK stall (≈40 ms).
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|accepted| {
        accepted.inspect(|stream| {
            let _ = stream.set_nodelay(true);
        })
    });
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
            .await
            .map_err(|e| Error::Remote(format!("serving: {e}")))
    });
    Ok(Served { addr, task })
}
