//! The control plane of `esper train`: Kasmina for the host's slots (seed
//! modules through its kernel manager, from the local Urza library or the
//! shared service), Tamiyo with the configured policy,
//! and the [`TamiyoHook`] that Tolaria calls at every fence — Tamiyo decides
//! on the fence's state packet, Kasmina applies the signed command at the
//! same fence. Every decision is written to `<run dir>/decisions.jsonl`; a
//! failed step is a CRITICAL event and training goes on without a command at
//! that fence (the hook says so).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Device;
use kasmina::CommandIntake;
use kasmina::Kasmina;
use kasmina::{KernelConfig, KernelManager, ManagedSource};
use leyline::v1::adaptation_command::Payload;
use leyline::v1::{AdaptationCommand, SeedOperation, TelemetryEvent, TelemetryLevel};
use tamiyo::{Action, BlueprintCache, Controller, Decision, TamiyoService};
use tolaria::fence::{
    ControlHook, DecisionKind, DecisionRecord, FenceContext, FenceDecision, FenceDiagnostics,
    FenceError, FenceKind,
};

use crate::RunBus;
use crate::config::Resolved;
use crate::error::{Error, Result};

/// Kasmina and the hook for one run, or `None` with `controller = "off"`.
pub struct ControlPlane {
    /// Kasmina for the host's slots.
    pub kasmina: Kasmina,
    /// The fence hook.
    pub hook: TamiyoHook,
    /// The policy's name.
    pub policy: &'static str,
    /// Tamiyo's blueprint metadata cache (its counters show invalidations).
    pub catalog: Arc<BlueprintCache>,
}

/// Loads `tamiyo.script` and checks it against the host's `slots` (each
/// germination names one of them, its blueprint fits it): `esper train` calls
/// it before the run directory is written, so a bad schedule leaves nothing.
pub fn load_script(
    resolved: &Resolved,
    slots: &[kasmina::SlotSpec],
) -> Result<tamiyo::ScriptedPolicy> {
    let path = resolved.config.tamiyo.script.as_deref().ok_or_else(|| {
        Error::Config(leyline::ConfigError::at(
            "tamiyo.script",
            "controller = \"script\" needs a schedule file",
        ))
    })?;
    let script = tamiyo::ScriptedPolicy::load(path).map_err(tamiyo_error)?;
    let shapes = slots
        .iter()
        .map(|s| {
            urza::SlotShape::new(s.kind, s.feature_shape.clone()).map(|shape| (s.id.clone(), shape))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    script.check_slots(&shapes).map_err(|problem| {
        tamiyo_error(tamiyo::Error::Script {
            path: path.display().to_string(),
            problem,
        })
    })?;
    Ok(script)
}

/// Loads `tamiyo.learned.policy` (its signature checked under the policy
/// key, its schema against this build's) recording every decision to the
/// run's trajectory file: `esper train` calls it before the run directory
/// is written, so an unusable policy leaves nothing; [`build`] calls it
/// again to attach the trajectory. Under `exploration = "imitate"` it comes
/// with the heuristic as its teacher.
pub fn load_learned(resolved: &Resolved) -> Result<tamiyo::LearnedPolicy> {
    let tamiyo = &resolved.config.tamiyo;
    let policy =
        tamiyo::LearnedPolicy::load(&tamiyo.learned, tamiyo.graph.clone(), &resolved.policy_key)
            .map_err(tamiyo_error)?;
    Ok(with_teacher(resolved, policy))
}

/// `policy` with the heuristic as its teacher under `exploration =
/// "imitate"`, else as it is.
pub fn with_teacher(resolved: &Resolved, policy: tamiyo::LearnedPolicy) -> tamiyo::LearnedPolicy {
    let tamiyo = &resolved.config.tamiyo;
    match tamiyo.learned.exploration {
        // Behaviour cloning: the heuristic decides, the policy records its
        // decisions as actions.
        tamiyo::Exploration::Imitate => {
            policy.with_teacher(Box::new(tamiyo::HeuristicPolicy::new(
                tamiyo.heuristic.clone(),
                urza::select::SelectionPolicy::default(),
            )))
        }
        tamiyo::Exploration::Greedy | tamiyo::Exploration::Sample => policy,
    }
}

/// Builds the control plane for a host with `slots` on `device`.
pub fn build(
    resolved: &Resolved,
    slots: &[kasmina::SlotSpec],
    device: &Device,
    bus: &RunBus,
) -> Result<Option<ControlPlane>> {
    let config = &resolved.config;
    let policy: Option<Box<dyn tamiyo::Policy>> =
        match (&config.tamiyo.remote, config.tamiyo.controller) {
            (_, Controller::Off) => return Ok(None),
            // The service runs the policy.
            (Some(_), Controller::Heuristic | Controller::Learned | Controller::Script) => None,
            (None, Controller::Heuristic) => Some(Box::new(tamiyo::HeuristicPolicy::new(
                config.tamiyo.heuristic.clone(),
                urza::select::SelectionPolicy::default(),
            ))),
            (None, Controller::Script) => Some(Box::new(load_script(resolved, slots)?)),
            (None, Controller::Learned) => {
                let mut policy = load_learned(resolved)?;
                policy
                    .record_to(&resolved.run_dir().join(tamiyo::trajectory::FILE_NAME))
                    .map_err(tamiyo_error)?;
                Some(Box::new(policy))
            }
        };
    // One component loads seed modules: Kasmina's kernel manager (verified
    // byte cache, concurrency limit, timeout), over the local library or the
    // shared Urza service.
    let store: Arc<dyn urza::BlueprintStore> =
        Arc::from(bus.block_on(crate::urza_cmd::store(resolved))?);
    let kernels = Arc::new(KernelManager::new(
        Arc::clone(&store),
        KernelConfig {
            cache_bytes: config.urza.cache_mib << 20,
            stats_window: config.urza.stats_window,
            timeout: Duration::from_millis(config.urza.request_timeout_ms),
            ..KernelConfig::default()
        },
    ));
    let cache = Arc::new(BlueprintCache::from_store(
        Arc::clone(&store),
        bus.handle(),
        Duration::from_millis(config.tamiyo.catalog_ttl_ms),
    ));
    // Load the catalog now, so that the first fence's deadline measures the
    // decision and not the first SQLite read.
    let loaded_from = oona::EntryId {
        ms: leyline::unix_now_ms().saturating_sub(1),
        seq: u64::MAX,
    };
    cache.get(Instant::now()).map_err(tamiyo_error)?;
    // Every catalog change announced on Oona (by an `esper urza serve`
    // anywhere in the fleet) invalidates the cache ...
    let announced = Arc::clone(&cache);
    // The group is this run's own (every run must see every change: a shared
    // group would split them between runs); it starts where the cache was
    // loaded, not at the stream's beginning, and is removed when the run ends.
    let group = format!("tamiyo-catalog-{}", resolved.run_id);
    let subscription = bus.block_on(bus.oona().subscribe(
        oona::Stream::KernelReady,
        &group,
        "tamiyo",
        oona::StartFrom::After(loaded_from),
    ))?;
    bus.run_own_group(subscription, &group, move |delivery: &oona::Delivery| {
        if let leyline::codec::BusPayload::KernelCatalogUpdate(update) = &delivery.payload {
            announced.apply(update);
        }
        Ok(())
    });
    // ... and so does every change of the store this run reads: a
    // supervised task, restarted (with the cache invalidated) when the watch
    // ends — a remote Urza that restarted, a connection lost.
    let watched = Arc::clone(&cache);
    bus.supervisor()
        .supervise("urza.catalog_watch", move |token| {
            let store = Arc::clone(&store);
            let watched = Arc::clone(&watched);
            async move {
                let mut watch = store
                    .watch_catalog()
                    .await
                    .map_err(|e| format!("watching the catalog: {e}"))?;
                loop {
                    tokio::select! {
                        () = token.cancelled() => return Ok(()),
                        update = watch.next() => match update {
                            Some(Ok(update)) => watched.apply(&update),
                            Some(Err(_)) => watched.invalidate(),
                            None => {
                                watched.invalidate();
                                return Err("the catalog watch ended".to_owned());
                            }
                        },
                    }
                }
            }
        });
    let seed = config.run.seed;
    let kasmina = Kasmina::new(
        slots,
        config
            .kasmina
            .gates(u64::from(config.leyline.limits.embargo_epochs)),
        CommandIntake::new(resolved.signing_key.clone(), &config.leyline),
        Box::new(ManagedSource::new(kernels, bus.handle(), device.clone())),
        seed,
    )
    .with_device(device.location())
    .with_isolation(config.kasmina.isolation(seed))
    .with_off_switch(config.kasmina.off_switch)
    .with_slot_evidence_every(config.kasmina.slot_evidence_every_steps);
    let deadline =
        Duration::from_secs_f64(config.leyline.budgets.performance.tamiyo_step_deadline_ms / 1e3);
    let (service, policy_name) = match (policy, &config.tamiyo.remote) {
        (Some(policy), _) => {
            let name = policy.name();
            let service = TamiyoService::new(
                Arc::new(config.tamiyo.clone()),
                policy,
                Arc::clone(&cache),
                resolved.signing_key.clone(),
                &config.leyline.limits,
                deadline,
            )
            .map_err(tamiyo_error)?;
            (Decider::Local(Box::new(service)), name)
        }
        (None, Some(endpoint)) => {
            let remote = tamiyo::grpc::RemoteTamiyo::connect(
                tamiyo::grpc::RemoteTamiyoConfig {
                    endpoint: endpoint.clone(),
                    key: resolved.signing_key.clone(),
                    deadline,
                    connect_timeout: Duration::from_millis(
                        config.urza.request_timeout_ms.max(1000),
                    ),
                    state_timeout: Duration::from_secs(30),
                    run_id: resolved.run_id.clone(),
                },
                bus.handle(),
            )
            .map_err(tamiyo_error)?;
            (Decider::Remote(Box::new(remote)), "remote")
        }
        (None, None) => {
            return Err(Error::Runtime(
                "tamiyo: no policy and no remote service (a bug)".into(),
            ));
        }
    };
    let mut startup_events = Vec::new();
    // Field reports: the log of this run, reports past retention dropped.
    let wal_path = resolved.run_dir().join("field_reports.wal");
    let (mut reports, loaded) =
        tamiyo::field_reports::Wal::open(&wal_path).map_err(tamiyo_error)?;
    if !loaded.bad.is_empty() || loaded.torn_tail.is_some() {
        startup_events.push(
            leyline::telemetry::event(
                "field_report_log_damaged",
                TelemetryLevel::Warning,
                format!(
                    "{}: {} corrupt record(s) skipped{}; {} good report(s) kept",
                    wal_path.display(),
                    loaded.bad.len(),
                    if loaded.torn_tail.is_some() {
                        ", a torn tail cut"
                    } else {
                        ""
                    },
                    loaded.reports.len()
                ),
            )
            .build(),
        );
    }
    let retention_ms = u64::from(config.tamiyo.field_reports.retention_days) * 86_400_000;
    reports
        .compact(leyline::unix_now_ms().saturating_sub(retention_ms))
        .map_err(tamiyo_error)?;
    let path = resolved.run_dir().join("decisions.jsonl");
    let log = File::options()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|source| Error::RunDir {
            path: path.clone(),
            source,
        })?;
    Ok(Some(ControlPlane {
        kasmina,
        hook: TamiyoHook {
            service,
            supervisor: bus.supervisor().clone(),
            startup_events,
            log: BufWriter::new(log),
            log_path: path,
            reports,
        },
        policy: policy_name,
        catalog: cache,
    }))
}

fn tamiyo_error(e: tamiyo::Error) -> Error {
    Error::Runtime(format!("tamiyo: {e}"))
}

/// The controller a hook asks: in this process, or a session on an `esper
/// tamiyo serve` (`tamiyo.remote`), which keeps the same deadline over the
/// network.
pub enum Decider {
    /// In this process.
    Local(Box<TamiyoService>),
    /// On a remote service.
    Remote(Box<tamiyo::grpc::RemoteTamiyo>),
}

impl Decider {
    fn step(&mut self, packet: &leyline::v1::SystemStatePacket) -> tamiyo::Result<Decision> {
        match self {
            Decider::Local(s) => s.step(packet),
            Decider::Remote(r) => r.step(packet),
        }
    }

    fn take_field_reports(&mut self) -> Vec<leyline::v1::FieldReport> {
        match self {
            Decider::Local(s) => s.take_field_reports(),
            Decider::Remote(r) => r.take_field_reports(),
        }
    }

    fn export_state(&mut self) -> tamiyo::Result<tamiyo::ControllerState> {
        match self {
            Decider::Local(s) => s.export_state(),
            Decider::Remote(r) => r.export_state(),
        }
    }

    fn import_state(&mut self, state: tamiyo::ControllerState) -> tamiyo::Result<()> {
        match self {
            Decider::Local(s) => s.import_state(state),
            Decider::Remote(r) => r.import_state(state),
        }
    }

    /// Steps, commands, deadline misses and late answers so far.
    pub fn stats(&self) -> tamiyo::ServiceStats {
        match self {
            Decider::Local(s) => s.stats(),
            Decider::Remote(r) => r.stats(),
        }
    }
}

/// Tolaria's fence hook: Tamiyo decides, Kasmina applies.
pub struct TamiyoHook {
    service: Decider,
    /// A remote controller's reachability is a dependency of the system
    /// mode (degraded while it fails, operational again when it answers).
    supervisor: crate::supervisor::Supervisor,
    /// Events of setting up (a damaged field-report log) or of a checkpoint
    /// (a remote controller's state unavailable), given with the next
    /// fence's diagnostics.
    startup_events: Vec<TelemetryEvent>,
    log: BufWriter<File>,
    log_path: PathBuf,
    reports: tamiyo::field_reports::Wal,
}

impl TamiyoHook {
    /// Where the decisions are logged.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The controller's counters (steps, commands, deadline misses).
    pub fn stats(&self) -> tamiyo::ServiceStats {
        self.service.stats()
    }
}

/// `GERMINATE seed at slot (blueprint)` and the like.
fn describe(command: &AdaptationCommand) -> String {
    let Some(Payload::SeedOperation(op)) = &command.payload else {
        return "COMMAND".into();
    };
    let name = SeedOperation::try_from(op.operation)
        .unwrap_or(SeedOperation::Unspecified)
        .as_str_name()
        .trim_start_matches("SEED_OPERATION_")
        .to_owned();
    if op.blueprint_id.is_empty() {
        format!("{name} {}", command.target_seed_id)
    } else {
        format!(
            "{name} {} at {} ({})",
            command.target_seed_id, op.slot_id, op.blueprint_id
        )
    }
}

impl TamiyoHook {
    fn record(
        &mut self,
        context: &FenceContext<'_>,
        decision: &std::result::Result<Decision, tamiyo::Error>,
        out: &mut FenceDiagnostics,
    ) {
        let (kind, action, rule, evidence) = match decision {
            Ok(d) => {
                let findings = d
                    .diagnostics
                    .findings
                    .iter()
                    .map(|f| format!("{}: {}", f.rule, f.detail))
                    .collect::<Vec<_>>();
                let mut evidence = d.diagnostics.detail.clone();
                if !findings.is_empty() {
                    evidence.push_str(&format!(" | risk: {}", findings.join("; ")));
                }
                let (kind, action) = match (&d.action, &d.diagnostics.verdict) {
                    (Action::Command(c), _) => (DecisionKind::Command, describe(c)),
                    (Action::Wait { .. }, tamiyo::risk::Verdict::Veto) => {
                        (DecisionKind::Vetoed, "VETOED".to_owned())
                    }
                    (
                        Action::Wait { .. },
                        tamiyo::risk::Verdict::Allow | tamiyo::risk::Verdict::Downgrade(_),
                    ) => (DecisionKind::Wait, "WAIT".to_owned()),
                };
                (kind, action, d.diagnostics.rule.clone(), evidence)
            }
            Err(e) => (
                DecisionKind::Error,
                "ERROR".to_owned(),
                e.label().to_owned(),
                e.to_string(),
            ),
        };
        let line = serde_json::json!({
            "epoch": context.epoch,
            "global_step": context.global_step,
            "generation": context.state.generation,
            "fence": match context.kind { FenceKind::Step => "step", FenceKind::EpochEnd => "epoch_end" },
            "action": action,
            "rule": rule,
            "evidence": evidence,
            "elapsed_ms": decision.as_ref().map_or(f64::NAN, |d| d.diagnostics.elapsed.as_secs_f64() * 1e3),
        });
        // The log is evidence, not control: a failed write is reported once
        // per fence as a WARNING and training goes on.
        let written = writeln!(self.log, "{line}").and_then(|()| {
            if context.kind == FenceKind::EpochEnd {
                self.log.flush()
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            out.events.push(
                leyline::telemetry::event(
                    "decision_log_write_failed",
                    TelemetryLevel::Warning,
                    format!("{}: {e}", self.log_path.display()),
                )
                .build(),
            );
        }
        out.decisions.push(DecisionRecord {
            epoch: context.epoch,
            global_step: context.global_step,
            kind,
            action,
            rule,
            evidence,
        });
    }
}

impl ControlHook for TamiyoHook {
    fn at_fence(
        &mut self,
        context: &FenceContext<'_>,
    ) -> std::result::Result<FenceDecision, FenceError> {
        let mut out = FenceDiagnostics {
            events: std::mem::take(&mut self.startup_events),
            ..FenceDiagnostics::default()
        };
        let mut decision = self.service.step(context.state);
        // An epoch end carries the evidence growth is decided on; a step that
        // missed its deadline there is taken once more (a new step with its
        // own deadline — the late answer is never used), and both are logged.
        if context.kind == FenceKind::EpochEnd
            && matches!(decision, Err(tamiyo::Error::DeadlineExceeded { .. }))
        {
            self.record(context, &decision, &mut out);
            if let Err(e) = &decision {
                let mut event = e.event();
                event.description = format!(
                    "{} — retried once at the epoch-end fence of step {}",
                    event.description, context.global_step
                );
                out.events.push(event);
            }
            decision = self.service.step(context.state);
        }
        self.record(context, &decision, &mut out);
        if let Decider::Remote(_) = &self.service {
            let unreachable = matches!(
                &decision,
                Err(tamiyo::Error::Remote(_)
                    | tamiyo::Error::DeadlineExceeded {
                        stage: "network",
                        ..
                    })
            );
            self.supervisor.dependency("tamiyo", !unreachable);
        }
        // Decided field reports: durable first (fsync), then for Oona.
        for report in self.service.take_field_reports() {
            if let Err(e) = self.reports.append(&report) {
                out.events.push(
                    leyline::telemetry::event(
                        "field_report_not_logged",
                        TelemetryLevel::Warning,
                        format!("field report {}: {e}", report.report_id),
                    )
                    .build(),
                );
            }
            out.field_reports.push(report);
        }
        let mut commands = Vec::new();
        match decision {
            Ok(d) => {
                if let Action::Command(command) = d.action {
                    commands.push(*command);
                }
            }
            Err(e) => {
                // The caller's decision: no command at this fence, training
                // goes on; the CRITICAL event says so.
                let mut event = e.event();
                event.description = format!(
                    "{} — no command at the fence of step {}; training continues",
                    event.description, context.global_step
                );
                out.events.push(event);
            }
        }
        Ok(FenceDecision {
            commands,
            stop: None,
            diagnostics: out,
        })
    }

    fn export_state(&mut self) -> std::result::Result<Option<serde_json::Value>, FenceError> {
        let state = match (self.service.export_state(), &self.service) {
            (Ok(state), _) => state,
            // A remote service that is gone (and had never given a state to
            // fall back on) must not stop training: the checkpoint goes
            // without the controller's state, and the next fence says so.
            (Err(e), Decider::Remote(_)) => {
                self.startup_events.push(
                    leyline::telemetry::event(
                        "controller_state_unavailable",
                        TelemetryLevel::Warning,
                        format!(
                            "the checkpoint holds no controller state ({e}); a run resumed from it starts the controller afresh"
                        ),
                    )
                    .build(),
                );
                return Ok(None);
            }
            (Err(e), Decider::Local(_)) => {
                return Err(FenceError {
                    reason: format!("taking Tamiyo's state for the checkpoint: {e}"),
                    source: Some(Box::new(e)),
                });
            }
        };
        serde_json::to_value(state)
            .map(Some)
            .map_err(|e| FenceError {
                reason: format!("encoding Tamiyo's state for the checkpoint: {e}"),
                source: Some(Box::new(e)),
            })
    }

    fn import_state(&mut self, state: serde_json::Value) -> std::result::Result<(), FenceError> {
        let state: tamiyo::ControllerState =
            serde_json::from_value(state).map_err(|e| FenceError {
                reason: format!("the checkpoint's controller state is not Tamiyo's: {e}"),
                source: Some(Box::new(e)),
            })?;
        self.service.import_state(state).map_err(|e| FenceError {
            reason: format!("resuming Tamiyo from the checkpoint: {e}"),
            source: Some(Box::new(e)),
        })
    }
}
