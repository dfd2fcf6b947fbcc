//! The control plane of `esper train`: Kasmina for the host's slots (seed
//! modules through its kernel manager, from the local Urza library or the
//! shared service), Tamiyo with the configured policy,
//! and the [`TamiyoHook`] that Tolaria calls at every fence — Tamiyo decides
//! on the fence's state packet, Kasmina applies the signed command at the
//! same fence. Every decision is written to `<run dir>/decisions.jsonl`; a
//! failed step is a CRITICAL event and training goes on without a command at
//! that fence (the hook says so).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use candle_core::Device;
use kasmina::Kasmina;
use kasmina::intake::CommandIntake;
use kasmina::kernels::{KernelConfig, KernelManager, ManagedSource};
use leyline::v1::adaptation_command::Payload;
use leyline::v1::{
    AdaptationCommand, SeedOperation, SeedStage, SystemStatePacket, TelemetryEvent, TelemetryLevel,
};
use tamiyo::{Action, BlueprintCache, Controller, Decision, TamiyoService};
use tolaria::fence::{ControlHook, FenceContext, FenceKind, FenceOutcome};

use crate::RunBus;
use crate::config::Resolved;
use crate::error::{Error, Result};

/// One command, vetoed proposal or failed step, as the run summary lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct DecisionRecord {
    /// Epoch of the fence.
    pub epoch: u32,
    /// Global step of the fence.
    pub global_step: u64,
    /// What was decided: `GERMINATE seed at slot (blueprint)`, `CULL seed`,
    /// `VETOED` (the risk engine stopped the policy's proposal) or `ERROR`.
    pub action: String,
    /// The rule (or error label).
    pub rule: String,
    /// The evidence: the rule's numbers, risk findings.
    pub evidence: String,
}

/// What the hook shares with the program while training runs.
#[derive(Debug, Default)]
pub struct Shared {
    /// Telemetry events to publish (errors, vetoes).
    pub events: Vec<TelemetryEvent>,
    /// Every command, vetoed proposal and failed step.
    pub decisions: Vec<DecisionRecord>,
    /// WAIT decisions by rule.
    pub waits: BTreeMap<String, u64>,
    /// The seeds as of the last fence, for the progress display.
    pub seeds_line: String,
    /// Field reports decided and logged, waiting to be published.
    pub field_reports: Vec<leyline::v1::FieldReport>,
    /// Field reports by outcome, for the run summary.
    pub outcomes: BTreeMap<String, u64>,
}

/// The shared state, behind a lock the progress display reads every step.
pub type SharedState = Arc<Mutex<Shared>>;

/// Locks `shared`; a poisoned lock still holds whole values (each update is a
/// push or an assignment).
pub fn lock(shared: &SharedState) -> std::sync::MutexGuard<'_, Shared> {
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Kasmina and the hook for one run, or `None` with `controller = "off"`.
pub struct ControlPlane {
    /// Kasmina for the host's slots.
    pub kasmina: Kasmina,
    /// The fence hook.
    pub hook: TamiyoHook,
    /// What the hook shares.
    pub shared: SharedState,
    /// The policy's name.
    pub policy: &'static str,
    /// Tamiyo's blueprint metadata cache (its counters show invalidations).
    pub catalog: Arc<BlueprintCache>,
}

/// Builds the control plane for a host with `slots` on `device`.
pub fn build(
    resolved: &Resolved,
    slots: &[kasmina::SlotSpec],
    device: &Device,
    bus: &RunBus,
) -> Result<Option<ControlPlane>> {
    let config = &resolved.config;
    let policy: Box<dyn tamiyo::Policy> = match config.tamiyo.controller {
        Controller::Off => return Ok(None),
        Controller::Heuristic => Box::new(tamiyo::HeuristicPolicy::new(
            config.tamiyo.heuristic.clone(),
            urza::select::SelectionPolicy::default(),
        )),
        Controller::Script => {
            let path = config
                .tamiyo
                .script
                .as_deref()
                .ok_or_else(|| Error::ConfigKey {
                    key: "tamiyo.script".into(),
                    detail: "controller = \"script\" needs a schedule file".into(),
                })?;
            Box::new(tamiyo::ScriptedPolicy::load(path).map_err(tamiyo_error)?)
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
    cache.get(Instant::now()).map_err(tamiyo_error)?;
    // Every catalog change announced on Oona (by an `esper urza serve`
    // anywhere in the fleet) invalidates the cache ...
    let announced = Arc::clone(&cache);
    let subscription = bus.block_on(bus.oona().subscribe(
        oona::Stream::KernelReady,
        &format!("tamiyo-catalog-{}", resolved.run_id),
        "tamiyo",
        oona::StartFrom::Beginning,
    ))?;
    let cancel = bus.cancellation();
    bus.handle().spawn(async move {
        let handler = move |delivery: &oona::Delivery| {
            if let leyline::codec::BusPayload::KernelCatalogUpdate(update) = &delivery.payload {
                announced.apply(update);
            }
            Ok(())
        };
        subscription.run(handler, cancel).await
    });
    // ... and so does every change of the store this run reads.
    let watched = Arc::clone(&cache);
    bus.handle().spawn(async move {
        if let Ok(mut watch) = store.watch_catalog().await {
            while let Some(update) = watch.next().await {
                match update {
                    Ok(update) => watched.apply(&update),
                    Err(_) => watched.invalidate(),
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
    );
    let deadline =
        Duration::from_secs_f64(config.leyline.budgets.performance.tamiyo_step_deadline_ms / 1e3);
    let policy_name = policy.name();
    let service = TamiyoService::new(
        Arc::new(config.tamiyo.clone()),
        policy,
        Arc::clone(&cache),
        resolved.signing_key.clone(),
        &config.leyline.limits,
        deadline,
    )
    .map_err(tamiyo_error)?;
    let shared = SharedState::default();
    // Field reports: the log of this run, reports past retention dropped.
    let wal_path = resolved.run_dir().join("field_reports.wal");
    let (mut reports, loaded) =
        tamiyo::field_reports::Wal::open(&wal_path).map_err(tamiyo_error)?;
    if !loaded.bad.is_empty() || loaded.torn_tail.is_some() {
        lock(&shared).events.push(
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
            pending: Vec::new(),
            shared: Arc::clone(&shared),
            log: BufWriter::new(log),
            log_path: path,
            reports,
        },
        shared,
        policy: policy_name,
        catalog: cache,
    }))
}

fn tamiyo_error(e: tamiyo::Error) -> Error {
    Error::Runtime(format!("tamiyo: {e}"))
}

/// Tolaria's fence hook: Tamiyo decides, Kasmina applies.
pub struct TamiyoHook {
    service: TamiyoService,
    pending: Vec<AdaptationCommand>,
    shared: SharedState,
    log: BufWriter<File>,
    log_path: PathBuf,
    reports: tamiyo::field_reports::Wal,
}

impl TamiyoHook {
    /// Where the decisions are logged.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }
}

/// A compact line of every occupied slot: `r0 TRAINING α0.00`.
fn seeds_line(state: &SystemStatePacket) -> String {
    state
        .seed_states
        .iter()
        .map(|s| {
            let stage = SeedStage::try_from(s.stage).unwrap_or(SeedStage::Unknown);
            let name = stage.as_str_name().trim_start_matches("SEED_STAGE_");
            let alpha = s.alpha.as_ref().map_or(0.0, |a| a.alpha);
            format!("{} {name} α{alpha:.2}", s.slot_id)
        })
        .collect::<Vec<_>>()
        .join(", ")
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
    ) {
        let (action, rule, evidence) = match decision {
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
                let action = match (&d.action, &d.diagnostics.verdict) {
                    (Action::Command(c), _) => describe(c),
                    (Action::Wait { .. }, tamiyo::risk::Verdict::Veto) => "VETOED".to_owned(),
                    (
                        Action::Wait { .. },
                        tamiyo::risk::Verdict::Allow | tamiyo::risk::Verdict::Downgrade(_),
                    ) => "WAIT".to_owned(),
                };
                (action, d.diagnostics.rule.clone(), evidence)
            }
            Err(e) => ("ERROR".to_owned(), e.label().to_owned(), e.to_string()),
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
        let mut shared = lock(&self.shared);
        if let Err(e) = written {
            shared.events.push(
                leyline::telemetry::event(
                    "decision_log_write_failed",
                    TelemetryLevel::Warning,
                    format!("{}: {e}", self.log_path.display()),
                )
                .build(),
            );
        }
        if action == "WAIT" {
            *shared.waits.entry(rule).or_default() += 1;
        } else {
            shared.decisions.push(DecisionRecord {
                epoch: context.epoch,
                global_step: context.global_step,
                action,
                rule,
                evidence,
            });
        }
    }
}

impl ControlHook for TamiyoHook {
    fn at_fence(
        &mut self,
        context: &FenceContext<'_>,
    ) -> std::result::Result<FenceOutcome, String> {
        let mut decision = self.service.step(context.state);
        // An epoch end carries the evidence growth is decided on; a step that
        // missed its deadline there is taken once more (a new step with its
        // own deadline — the late answer is never used), and both are logged.
        if context.kind == FenceKind::EpochEnd
            && matches!(decision, Err(tamiyo::Error::DeadlineExceeded { .. }))
        {
            self.record(context, &decision);
            if let Err(e) = &decision {
                let mut event = e.event();
                event.description = format!(
                    "{} — retried once at the epoch-end fence of step {}",
                    event.description, context.global_step
                );
                lock(&self.shared).events.push(event);
            }
            decision = self.service.step(context.state);
        }
        self.record(context, &decision);
        // Decided field reports: durable first (fsync), then for Oona.
        let reports = self.service.take_field_reports();
        let mut shared = lock(&self.shared);
        for report in reports {
            let outcome = leyline::v1::FieldReportOutcome::try_from(report.outcome)
                .unwrap_or(leyline::v1::FieldReportOutcome::Unspecified)
                .as_str_name()
                .trim_start_matches("FIELD_REPORT_OUTCOME_")
                .to_owned();
            *shared.outcomes.entry(outcome).or_default() += 1;
            if let Err(e) = self.reports.append(&report) {
                shared.events.push(
                    leyline::telemetry::event(
                        "field_report_not_logged",
                        TelemetryLevel::Warning,
                        format!("field report {}: {e}", report.report_id),
                    )
                    .build(),
                );
            }
            shared.field_reports.push(report);
        }
        shared.seeds_line = seeds_line(context.state);
        match decision {
            Ok(d) => {
                if let Action::Command(command) = d.action {
                    self.pending.push(*command);
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
                shared.events.push(event);
            }
        }
        Ok(FenceOutcome::Continue)
    }

    fn commands(&mut self) -> Vec<AdaptationCommand> {
        std::mem::take(&mut self.pending)
    }
}
