//! The trainer's side: [`RemoteTamiyo`], one session on an `esper tamiyo
//! serve`, asked from synchronous code (the fence) through a tokio handle.

use std::time::Duration;

use leyline::security::SigningKey;
use leyline::v1::{
    FieldReport, ImportStateRequest, OpenSessionRequest, SessionRequest, StepRequest,
    SystemStatePacket,
};
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use super::generated::tamiyo_service_client::TamiyoServiceClient;
use super::{HEADER, token, wire};
use crate::decision::Decision;
use crate::error::{Error, Result};
use crate::service::{ControllerState, ServiceStats};

/// Where and how to reach the service.
#[derive(Clone)]
pub struct RemoteTamiyoConfig {
    /// `http://host:port` of an `esper tamiyo serve`.
    pub endpoint: String,
    /// The shared secret (call tokens).
    pub key: SigningKey,
    /// The trainer's step deadline: an answer later than this is dropped.
    pub deadline: Duration,
    /// How long connecting (and opening the session) may take.
    pub connect_timeout: Duration,
    /// How long taking or restoring the controller state may take.
    pub state_timeout: Duration,
    /// The training run the session is for.
    pub run_id: String,
}

impl std::fmt::Debug for RemoteTamiyoConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteTamiyoConfig")
            .field("endpoint", &self.endpoint)
            .field("deadline", &self.deadline)
            .field("run_id", &self.run_id)
            .finish_non_exhaustive()
    }
}

/// One controller session on a remote Tamiyo.
pub struct RemoteTamiyo {
    handle: tokio::runtime::Handle,
    client: TamiyoServiceClient<Channel>,
    config: RemoteTamiyoConfig,
    session: String,
    policy: String,
    stats: ServiceStats,
    reports: Vec<FieldReport>,
    /// The last state the service gave: a checkpoint taken while the
    /// service is unreachable keeps it (at most one checkpoint old).
    last_state: Option<ControllerState>,
}

impl std::fmt::Debug for RemoteTamiyo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteTamiyo")
            .field("endpoint", &self.config.endpoint)
            .field("session", &self.session)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn remote(what: &str) -> impl FnOnce(tonic::Status) -> Error + '_ {
    move |status| {
        Error::Remote(format!(
            "{what}: {} ({:?})",
            status.message(),
            status.code()
        ))
    }
}

impl RemoteTamiyo {
    /// Connects and opens a session; `handle` runs the calls. Must not be
    /// called from inside that runtime.
    pub fn connect(config: RemoteTamiyoConfig, handle: tokio::runtime::Handle) -> Result<Self> {
        let endpoint = Endpoint::from_shared(config.endpoint.clone())
            .map_err(|e| Error::Remote(format!("endpoint {}: {e}", config.endpoint)))?
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true);
        let (client, opened) = handle.block_on(async {
            let channel = tokio::time::timeout(config.connect_timeout, endpoint.connect())
                .await
                .map_err(|_| {
                    Error::Remote(format!(
                        "connecting to {}: no answer within {:?}",
                        config.endpoint, config.connect_timeout
                    ))
                })?
                .map_err(|e| Error::Remote(format!("connecting to {}: {e}", config.endpoint)))?;
            let mut client = TamiyoServiceClient::new(channel);
            let request = authorised(
                &config.key,
                OpenSessionRequest {
                    training_run_id: config.run_id.clone(),
                },
            );
            let opened = tokio::time::timeout(config.connect_timeout, client.open_session(request))
                .await
                .map_err(|_| Error::Remote("opening a session: no answer in time".into()))?
                .map_err(remote("opening a session"))?
                .into_inner();
            Ok::<_, Error>((client, opened))
        })?;
        Ok(Self {
            handle,
            client,
            session: opened.session_id,
            policy: opened.policy,
            config,
            stats: ServiceStats::default(),
            reports: Vec::new(),
            last_state: None,
        })
    }

    /// The policy the service runs.
    pub fn policy(&self) -> &str {
        &self.policy
    }

    /// The session's id on the service.
    pub fn session(&self) -> &str {
        &self.session
    }

    /// Decides on one state packet within the trainer's deadline; a late
    /// answer is dropped with its request and counted.
    pub fn step(&mut self, packet: &SystemStatePacket) -> Result<Decision> {
        self.stats.steps += 1;
        let request = authorised(
            &self.config.key,
            StepRequest {
                session_id: self.session.clone(),
                packet: Some(packet.clone()),
            },
        );
        let mut client = self.client.clone();
        let deadline = self.config.deadline;
        let answer = self
            .handle
            .block_on(async move { tokio::time::timeout(deadline, client.step(request)).await });
        let result = match answer {
            Err(_) => {
                self.stats.deadline_misses += 1;
                self.stats.late_discarded += 1;
                Err(Error::DeadlineExceeded {
                    deadline,
                    stage: "network",
                })
            }
            Ok(Err(status)) => Err(remote("step")(status)),
            Ok(Ok(response)) => {
                let mut response = response.into_inner();
                self.reports.append(&mut response.field_reports);
                wire::decode(&response)
            }
        };
        match &result {
            Ok(d) if d.command().is_some() => self.stats.commands += 1,
            Ok(_) => {}
            Err(_) => self.stats.errors += 1,
        }
        result
    }

    /// Field reports decided on the service since the last call.
    pub fn take_field_reports(&mut self) -> Vec<FieldReport> {
        std::mem::take(&mut self.reports)
    }

    /// The session's controller state (for a checkpoint); while the
    /// service is unreachable, the last state it gave (an error only when
    /// it never gave one).
    pub fn export_state(&mut self) -> Result<ControllerState> {
        match self.fetch_state() {
            Ok(state) => {
                self.last_state = Some(state.clone());
                Ok(state)
            }
            Err(e) => match &self.last_state {
                Some(last) => {
                    let mut state = last.clone();
                    state.stats = self.stats;
                    Ok(state)
                }
                None => Err(e),
            },
        }
    }

    fn fetch_state(&mut self) -> Result<ControllerState> {
        let request = authorised(
            &self.config.key,
            SessionRequest {
                session_id: self.session.clone(),
            },
        );
        let mut client = self.client.clone();
        let within = self.config.state_timeout;
        let blob = self
            .handle
            .block_on(
                async move { tokio::time::timeout(within, client.export_state(request)).await },
            )
            .map_err(|_| Error::Remote("taking the controller state: no answer in time".into()))?
            .map_err(remote("taking the controller state"))?
            .into_inner();
        let mut state: ControllerState = serde_json::from_slice(&blob.state_json)
            .map_err(|e| Error::Remote(format!("the controller state does not decode: {e}")))?;
        // The trainer's counters are the ones a checkpoint keeps: they say
        // what the trainer saw (network misses included).
        state.stats = self.stats;
        Ok(state)
    }

    /// Restores the session's controller state (resuming a run).
    pub fn import_state(&mut self, state: ControllerState) -> Result<()> {
        let state_json = serde_json::to_vec(&state)
            .map_err(|e| Error::Remote(format!("encoding the controller state: {e}")))?;
        self.stats = state.stats;
        let request = authorised(
            &self.config.key,
            ImportStateRequest {
                session_id: self.session.clone(),
                state_json,
            },
        );
        let mut client = self.client.clone();
        let within = self.config.state_timeout;
        self.handle
            .block_on(
                async move { tokio::time::timeout(within, client.import_state(request)).await },
            )
            .map_err(|_| Error::Remote("restoring the controller state: no answer in time".into()))?
            .map_err(remote("restoring the controller state"))?;
        Ok(())
    }

    /// What the trainer saw: steps, commands, misses (network included).
    pub fn stats(&self) -> ServiceStats {
        self.stats
    }
}

impl Drop for RemoteTamiyo {
    fn drop(&mut self) {
        // Best effort: a session left open is dropped with the service.
        let request = authorised(
            &self.config.key,
            SessionRequest {
                session_id: self.session.clone(),
            },
        );
        let mut client = self.client.clone();
        self.handle.spawn(async move {
            let _ =
                tokio::time::timeout(Duration::from_secs(2), client.close_session(request)).await;
        });
    }
}

fn authorised<T>(key: &SigningKey, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = MetadataValue::try_from(token(key, leyline::unix_now_ms())) {
        request.metadata_mut().insert(HEADER, value);
    }
    request
}
