//! [`TamiyoService`]: the step API. One call per control fence:
//!
//! 1. **observe** (caller's thread): Leyline validation, required inputs,
//!    coverage;
//! 2. **decide** (the persistent policy worker): blueprint metadata from the
//!    cache, then the policy, with a cooperative cancellation flag;
//! 3. **judge** (caller): the risk engine vetoes, downgrades or allows;
//! 4. **issue** (caller): the command is built, validated and signed.
//!
//! The step has a deadline: the caller waits for the worker at most until
//! then; past it the flag is set, the step returns `DeadlineExceeded`, and the
//! worker's late answer is discarded when it arrives (counted), never applied.
//! The deadline is checked again before a command leaves.

use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use leyline::security::{SigningKey, sign};
use leyline::v1::adaptation_command::Payload;
use leyline::v1::{
    AdaptationCommand, AlphaSchedule, AlphaScheduleKind, BlendConfig, BlueprintTier, CatalogEntry,
    CommandSeedOperation, CommandType, DecisionContext, SeedOperation, SystemStatePacket,
};
use leyline::validate::Validator;

use crate::catalog::BlueprintCache;
use crate::config::Config;
use crate::decision::{Action, Decision, Diagnostics};
use crate::error::{Error, Result};
use crate::field_reports::OutcomeTracker;
use crate::field_reports::outcome::TrackerState;
use crate::observation::Observation;
use crate::policy::{Cancel, Policy, Proposal, Proposed};
use crate::risk::{RiskEngine, RiskState, Verdict};

/// Counters of the service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServiceStats {
    /// Steps taken.
    pub steps: u64,
    /// Commands issued.
    pub commands: u64,
    /// Steps that missed their deadline.
    pub deadline_misses: u64,
    /// Late worker answers thrown away.
    pub late_discarded: u64,
    /// Steps that failed (any error).
    pub errors: u64,
}

/// Everything the controller decides from besides the packet and its
/// configuration — the policy's memory, the risk engine's averages and
/// hysteresis, the open field reports, the counters — as a checkpoint holds
/// it, so that a resumed run decides exactly as the uninterrupted one.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerState {
    /// The policy that wrote it.
    pub policy: String,
    /// Its state ([`Policy::export_state`]).
    pub policy_state: serde_json::Value,
    /// The risk engine's.
    pub risk: RiskState,
    /// The field-report tracker's.
    pub field_reports: TrackerState,
    /// The counters.
    pub stats: ServiceStats,
}

/// How long taking or restoring the state waits for the policy worker (it
/// may still be finishing an abandoned decision).
const STATE_TIMEOUT: Duration = Duration::from_secs(30);

/// What the worker is asked to do.
enum Job {
    /// Decide on a packet.
    Decide(Box<Request>),
    /// A proposal became a command.
    Issued(Proposal),
    /// Export the policy's state.
    Export(Sender<Result<serde_json::Value>>),
    /// Import the policy's state.
    Import(serde_json::Value, Sender<Result<()>>),
}

struct Request {
    id: u64,
    packet: SystemStatePacket,
    coverage: f64,
    present: u8,
    cancel: Cancel,
}

type Reply = (u64, Result<(Proposed, Arc<Vec<CatalogEntry>>)>);

/// The controller behind the step API.
pub struct TamiyoService {
    config: Arc<Config>,
    deadline: Duration,
    key: SigningKey,
    validator: Validator,
    risk: RiskEngine,
    policy_name: &'static str,
    requests: Option<Sender<Job>>,
    replies: Receiver<Reply>,
    worker: Option<JoinHandle<()>>,
    next_id: u64,
    stats: ServiceStats,
    issued_by: String,
    reports: OutcomeTracker,
}

impl std::fmt::Debug for TamiyoService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TamiyoService")
            .field("policy", &self.policy_name)
            .field("deadline", &self.deadline)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl TamiyoService {
    /// A service running `policy` on a worker thread, reading blueprint
    /// metadata from `catalog`, signing with `key`; each step must finish
    /// within `deadline` (the runtime passes
    /// `leyline.budgets.performance.tamiyo_step_deadline_ms`).
    pub fn new(
        config: Arc<Config>,
        policy: Box<dyn Policy>,
        catalog: Arc<BlueprintCache>,
        key: SigningKey,
        limits: &leyline::LimitsConfig,
        deadline: Duration,
    ) -> Result<Self> {
        let policy_name = policy.name();
        let (request_tx, request_rx) = mpsc::channel::<Job>();
        let (reply_tx, reply_rx) = mpsc::channel::<Reply>();
        let worker = std::thread::Builder::new()
            .name(format!("tamiyo-{policy_name}"))
            .spawn(move || worker(policy, catalog, request_rx, reply_tx))
            .map_err(|e| Error::WorkerGone(format!("cannot start: {e}")))?;
        Ok(Self {
            risk: RiskEngine::new(config.risk.clone()),
            reports: OutcomeTracker::new(config.field_reports.clone(), policy_name),
            config,
            deadline,
            key,
            validator: Validator::new(limits),
            policy_name,
            requests: Some(request_tx),
            replies: reply_rx,
            worker: Some(worker),
            next_id: 0,
            stats: ServiceStats::default(),
            issued_by: format!("tamiyo/{policy_name}"),
        })
    }

    /// The counters.
    pub fn stats(&self) -> ServiceStats {
        self.stats
    }

    /// Field reports whose outcome was decided since the last call (for the
    /// caller to log durably and publish).
    pub fn take_field_reports(&mut self) -> Vec<leyline::v1::FieldReport> {
        self.reports.take_closed()
    }

    /// Field reports still inside their observation window.
    pub fn open_field_reports(&self) -> usize {
        self.reports.open_reports()
    }

    /// Whether the risk engine is in conservative mode.
    pub fn conservative(&self) -> bool {
        self.risk.conservative()
    }

    fn ask_worker<T>(&self, job: impl FnOnce(Sender<Result<T>>) -> Job, what: &str) -> Result<T> {
        let (tx, rx) = mpsc::channel();
        self.requests
            .as_ref()
            .ok_or_else(|| Error::WorkerGone("shut down".into()))?
            .send(job(tx))
            .map_err(|_| Error::WorkerGone("its request channel is closed".into()))?;
        match rx.recv_timeout(STATE_TIMEOUT) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => Err(Error::State(format!(
                "the policy worker did not {what} within {} s",
                STATE_TIMEOUT.as_secs()
            ))),
            Err(RecvTimeoutError::Disconnected) => Err(Error::WorkerGone("it exited".into())),
        }
    }

    /// The controller's state, for a checkpoint (waits for the policy
    /// worker to finish what it is doing).
    pub fn export_state(&self) -> Result<ControllerState> {
        let policy_state = self.ask_worker(Job::Export, "export its state")?;
        Ok(ControllerState {
            policy: self.policy_name.to_owned(),
            policy_state,
            risk: self.risk.state(),
            field_reports: self.reports.state(),
            stats: self.stats,
        })
    }

    /// Continues from a checkpoint's state. An error when it is another
    /// policy's or does not fit this one (another schedule); the policy is
    /// then unchanged, and so is the rest.
    pub fn import_state(&mut self, state: ControllerState) -> Result<()> {
        if state.policy != self.policy_name {
            return Err(Error::State(format!(
                "the checkpoint's controller ran the {} policy, this run runs {}",
                state.policy, self.policy_name
            )));
        }
        // Check the tracker's part before the worker changes anything.
        let mut reports = self.reports.clone();
        reports.restore(state.field_reports)?;
        let policy_state = state.policy_state;
        self.ask_worker(|tx| Job::Import(policy_state, tx), "import its state")?;
        self.reports = reports;
        self.risk.restore(state.risk);
        self.stats = state.stats;
        Ok(())
    }

    /// Decides on one state packet: WAIT or a signed command, or a typed error
    /// (the caller decides what to do; [`Error::event`] reports it).
    pub fn step(&mut self, packet: &SystemStatePacket) -> Result<Decision> {
        self.stats.steps += 1;
        let result = self.step_inner(packet);
        match &result {
            Ok(d) if d.command().is_some() => self.stats.commands += 1,
            Ok(_) => {}
            Err(e) => {
                self.stats.errors += 1;
                if matches!(e, Error::DeadlineExceeded { .. }) {
                    self.stats.deadline_misses += 1;
                }
            }
        }
        result
    }

    fn step_inner(&mut self, packet: &SystemStatePacket) -> Result<Decision> {
        let started = Instant::now();
        let deadline = started + self.deadline;
        let observation = Observation::new(packet, &self.validator)?;
        self.reports.observe(packet);
        // Answers to earlier, abandoned steps are stale.
        while self.replies.try_recv().is_ok() {
            self.stats.late_discarded += 1;
        }
        self.next_id += 1;
        let id = self.next_id;
        let cancel = Cancel::new();
        let request = Request {
            id,
            packet: packet.clone(),
            coverage: observation.coverage,
            present: observation.present,
            cancel: cancel.clone(),
        };
        self.requests
            .as_ref()
            .ok_or_else(|| Error::WorkerGone("shut down".into()))?
            .send(Job::Decide(Box::new(request)))
            .map_err(|_| Error::WorkerGone("its request channel is closed".into()))?;
        let (proposed, catalog) = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.replies.recv_timeout(left) {
                Ok((reply_id, result)) if reply_id == id => break result?,
                Ok(_) => self.stats.late_discarded += 1,
                Err(RecvTimeoutError::Timeout) => {
                    cancel.cancel();
                    return Err(Error::DeadlineExceeded {
                        deadline: self.deadline,
                        stage: "policy",
                    });
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(Error::WorkerGone("it exited".into()));
                }
            }
        };
        let assessment = self
            .risk
            .assess(&observation, proposed.proposal.clone(), &catalog);
        let reason_vetoed = || {
            assessment
                .findings
                .iter()
                .map(|f| format!("{}: {}", f.rule, f.detail))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let action = match (&assessment.verdict, &assessment.proposal) {
            (_, Proposal::Wait { reason }) => Action::Wait {
                reason: reason.clone(),
            },
            (Verdict::Veto, _) => Action::Wait {
                reason: format!("vetoed by the risk engine: {}", reason_vetoed()),
            },
            (Verdict::Allow | Verdict::Downgrade(_), proposal) => {
                let command = self.command(
                    packet,
                    proposal,
                    &proposed,
                    &assessment.findings,
                    &catalog,
                    observation.coverage,
                )?;
                Action::Command(Box::new(command))
            }
        };
        if Instant::now() > deadline {
            return Err(Error::DeadlineExceeded {
                deadline: self.deadline,
                stage: "risk and signing",
            });
        }
        // Only a command that leaves gets a field report, and only then is
        // the policy told its proposal went out.
        if let Action::Command(command) = &action {
            self.reports.track(command);
            if let Some(requests) = &self.requests {
                requests
                    .send(Job::Issued(assessment.proposal.clone()))
                    .map_err(|_| Error::WorkerGone("its request channel is closed".into()))?;
            }
        }
        Ok(Decision {
            action,
            diagnostics: Diagnostics {
                policy: self.policy_name,
                rule: proposed.rule.to_string(),
                detail: proposed.detail,
                verdict: assessment.verdict,
                findings: assessment.findings,
                conservative: assessment.conservative,
                coverage: observation.coverage,
                missing: observation.missing(),
                generation: packet.generation,
                global_step: packet.global_step,
                elapsed: started.elapsed(),
            },
        })
    }

    /// Builds, validates and signs the command for `proposal`.
    fn command(
        &self,
        packet: &SystemStatePacket,
        proposal: &Proposal,
        proposed: &Proposed,
        findings: &[crate::risk::Finding],
        catalog: &[CatalogEntry],
        coverage: f64,
    ) -> Result<AdaptationCommand> {
        // CULL and FOSSILIZE name a seed of the packet; its slot and
        // blueprint complete the command.
        let seed_of = |seed_id: &str| {
            packet
                .seed_states
                .iter()
                .find(|s| s.seed_id == seed_id)
                .map(|s| (s.slot_id.clone(), s.blueprint_id.clone()))
                .ok_or_else(|| Error::InvalidCommand {
                    command_id: String::new(),
                    detail: format!("seed {seed_id} is not in the state packet"),
                })
        };
        let (seed_id, op) = match proposal {
            Proposal::Wait { .. } => {
                return Err(Error::InvalidCommand {
                    command_id: String::new(),
                    detail: "WAIT is not a command".into(),
                });
            }
            Proposal::Germinate {
                slot_id,
                blueprint_id,
                parameters,
                seed_id,
                alpha_steps,
                blend,
            } => (
                seed_id.clone(),
                CommandSeedOperation {
                    operation: SeedOperation::Germinate as i32,
                    blueprint_id: blueprint_id.clone(),
                    parameters: parameters.clone(),
                    slot_id: slot_id.clone(),
                    mesh_layers: vec![slot_id.clone()],
                    blend: Some(BlendConfig {
                        mode: *blend as i32,
                        ..BlendConfig::default()
                    }),
                    alpha_schedule: Some(AlphaSchedule {
                        kind: AlphaScheduleKind::Linear as i32,
                        steps: *alpha_steps,
                        temperature: 0.0,
                    }),
                    ..CommandSeedOperation::default()
                },
            ),
            Proposal::Cull { seed_id } => {
                let (slot, blueprint_id) = seed_of(seed_id)?;
                (
                    seed_id.clone(),
                    CommandSeedOperation {
                        operation: SeedOperation::Cull as i32,
                        blueprint_id,
                        slot_id: slot,
                        ..CommandSeedOperation::default()
                    },
                )
            }
            Proposal::Fossilize { seed_id } => {
                let (slot, blueprint_id) = seed_of(seed_id)?;
                (
                    seed_id.clone(),
                    CommandSeedOperation {
                        operation: SeedOperation::Fossilize as i32,
                        blueprint_id,
                        slot_id: slot.clone(),
                        mesh_layers: vec![slot],
                        ..CommandSeedOperation::default()
                    },
                )
            }
        };
        let descriptor = catalog
            .iter()
            .filter_map(|e| e.descriptor.as_ref())
            .find(|d| d.blueprint_id == op.blueprint_id);
        let now = leyline::unix_now_ms();
        let mut command = AdaptationCommand {
            version: leyline::CONTRACT_VERSION,
            command_id: leyline::new_id(),
            command_type: CommandType::Seed as i32,
            target_seed_id: seed_id,
            issued_at_ms: now,
            deadline_at_ms: now + self.config.command_ttl_ms,
            issued_by: self.issued_by.clone(),
            training_run_id: packet.training_run_id.clone(),
            apply_at_step: 0,
            generation: packet.generation,
            payload: Some(Payload::SeedOperation(op)),
            context: Some(DecisionContext {
                feature_coverage: coverage,
                decided_by: proposed.rule.to_string(),
                risk_reason: findings
                    .iter()
                    .map(|f| f.rule)
                    .collect::<Vec<_>>()
                    .join(","),
                blueprint_tier: descriptor.map_or(BlueprintTier::Unspecified as i32, |d| d.tier),
                blueprint_risk: descriptor.map_or(0.0, |d| d.risk),
                tamiyo_policy_version: self.policy_name.to_string(),
            }),
            signature: Vec::new(),
        };
        let report = self.validator.command(&command);
        if !report.passed() {
            return Err(Error::InvalidCommand {
                command_id: command.command_id,
                detail: crate::observation::describe(&report),
            });
        }
        sign(&self.key, &mut command);
        Ok(command)
    }
}

impl Drop for TamiyoService {
    fn drop(&mut self) {
        // Closing the channel ends the worker's loop.
        self.requests.take();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// The persistent worker: one request at a time, cancelled ones skipped.
fn worker(
    mut policy: Box<dyn Policy>,
    catalog: Arc<BlueprintCache>,
    requests: Receiver<Job>,
    replies: Sender<Reply>,
) {
    while let Ok(job) = requests.recv() {
        match job {
            Job::Decide(request) => {
                let result = decide(policy.as_mut(), &catalog, &request);
                if replies.send((request.id, result)).is_err() {
                    return;
                }
            }
            Job::Issued(proposal) => policy.issued(&proposal),
            // A caller that gave up waiting has gone; nothing to tell it.
            Job::Export(reply) => {
                let _ = reply.send(policy.export_state());
            }
            Job::Import(state, reply) => {
                let _ = reply.send(policy.import_state(state));
            }
        }
    }
}

fn decide(
    policy: &mut dyn Policy,
    catalog: &BlueprintCache,
    request: &Request,
) -> Result<(Proposed, Arc<Vec<CatalogEntry>>)> {
    request.cancel.check("catalog lookup")?;
    let entries = catalog.get(Instant::now())?;
    request.cancel.check("policy")?;
    let observation = Observation {
        packet: &request.packet,
        coverage: request.coverage,
        present: request.present,
    };
    let proposed = policy.decide(&observation, &entries, &request.cancel)?;
    Ok((proposed, entries))
}
