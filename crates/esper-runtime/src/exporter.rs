//! Prometheus: a `metrics` recorder (`metrics-exporter-prometheus`) for the
//! whole process and a small HTTP server on `[runtime] listen` with
//! `/metrics` (Prometheus text), `/healthz` (the process is up) and
//! `/readyz` (a run is training: 503 before it starts and after it ends).
//!
//! Every crate already counts through the `metrics` facade (`oona_*`,
//! `urza_*`, `kasmina_*`); this module installs the recorder that makes them
//! visible and records what the runtime itself sees — training progress,
//! seeds, decisions, rollbacks, emergencies, the system mode — through the
//! `record_*` functions, which cost nothing when no recorder is installed.
//!
//! Names follow Prometheus conventions: the unit in the name (`_seconds`,
//! `_ratio`, `_per_second`), `_total` for counters. The example alert rules in
//! `deploy/prometheus/esper-alerts.yml` use only names this module or the
//! crates export (a test scrapes a real run and checks).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::http::StatusCode;
use axum::routing::get;
use leyline::lifecycle::ALL_STAGES;
use leyline::v1::EmergencyLevel;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// Bucket bounds of the step-time histogram, seconds.
const STEP_BUCKETS: [f64; 12] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
];

/// Counters of rare events, registered at 0 when the exporter starts.
const EVENT_COUNTERS: &[(&str, &str)] = &[
    (
        "oona_outage_interruptions_total",
        "Times the bus backend stopped accepting publications",
    ),
    (
        "oona_outage_dropped_total",
        "Held publications dropped (buffer full; never emergency signals)",
    ),
    (
        "oona_quarantined_total",
        "Entries that failed decoding or verification",
    ),
    (
        "oona_dead_letters_total",
        "Entries dead-lettered after their handler kept failing",
    ),
    (
        "tolaria_rollbacks_total",
        "Rollbacks to the last known-good state",
    ),
    (
        "tolaria_emergencies_total",
        "Emergency signals raised by this process",
    ),
    (
        "tamiyo_deadline_misses_total",
        "Controller decisions that missed the step deadline",
    ),
    (
        "urza_integrity_failures_total",
        "Artifacts whose bytes did not match their SHA-256",
    ),
];

/// The listener and the recorder behind it.
#[derive(Debug)]
pub struct Exporter {
    addr: SocketAddr,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// Installs the process-wide recorder and serves it on `addr` from
/// `runtime`. Fails when `addr` cannot be bound or a recorder is already
/// installed.
pub fn install(addr: SocketAddr, runtime: &tokio::runtime::Handle) -> Result<Exporter> {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full("esper_step_seconds".into()), &STEP_BUCKETS)
        .map_err(|e| Error::Runtime(format!("metrics exporter: {e}")))?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)
        .map_err(|e| Error::Runtime(format!("a metrics recorder is already installed: {e}")))?;
    // Rare-event counters exist from the start at 0, so that `increase()`
    // in an alert rule sees a series before the first event.
    for (name, help) in EVENT_COUNTERS {
        metrics::describe_counter!(*name, *help);
        metrics::counter!(*name).increment(0);
    }
    let listener = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| Error::Runtime(format!("runtime.listen {addr}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Runtime(format!("runtime.listen {addr}: {e}")))?;
    let ready = Arc::new(AtomicBool::new(false));
    let shutdown = CancellationToken::new();
    let app = {
        let ready = Arc::clone(&ready);
        axum::Router::new()
            .route(
                "/metrics",
                get(move || {
                    let text = handle.render();
                    async move { text }
                }),
            )
            .route("/healthz", get(|| async { "ok\n" }))
            .route(
                "/readyz",
                get(move || {
                    let ready = ready.load(Ordering::Acquire);
                    async move {
                        if ready {
                            (StatusCode::OK, "ready\n")
                        } else {
                            (StatusCode::SERVICE_UNAVAILABLE, "not training\n")
                        }
                    }
                }),
            )
    };
    let stop = shutdown.clone();
    let task = runtime.spawn(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("esper: metrics listener failed: {e}");
                return;
            }
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
        {
            eprintln!("esper: metrics listener failed: {e}");
        }
    });
    Ok(Exporter {
        addr,
        ready,
        shutdown,
        task,
    })
}

impl Exporter {
    /// The address it serves on (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether `/readyz` says ready.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Stops serving (after `linger`, for a last scrape) and waits for the
    /// listener to close.
    pub fn finish(self, runtime: &tokio::runtime::Handle, linger: std::time::Duration) {
        self.set_ready(false);
        if !linger.is_zero() {
            std::thread::sleep(linger);
        }
        self.shutdown.cancel();
        let _ = runtime.block_on(self.task);
    }
}

/// What the process is doing, as `esper_system_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemMode {
    /// Everything answers (0).
    Operational,
    /// A dependency is down and being ridden out (the bus) (1).
    Degraded,
    /// An emergency at CONSERVATIVE or HALT was raised (2).
    Emergency,
}

/// Sets `esper_system_mode`.
pub fn record_system_mode(mode: SystemMode) {
    let value = match mode {
        SystemMode::Operational => 0.0,
        SystemMode::Degraded => 1.0,
        SystemMode::Emergency => 2.0,
    };
    metrics::gauge!("esper_system_mode").set(value);
}

/// One training step: its wall time and where training stands.
pub fn record_step(seconds: f64, global_step: u64, loss: f64, accuracy: f64, images_per_s: f64) {
    metrics::histogram!("esper_step_seconds").record(seconds);
    metrics::gauge!("esper_training_step").set(global_step as f64);
    metrics::gauge!("esper_train_loss").set(loss);
    metrics::gauge!("esper_train_accuracy_ratio").set(accuracy);
    metrics::gauge!("esper_train_images_per_second").set(images_per_s);
}

/// One epoch's end: validation, rollbacks, the controller's fences, seeds.
pub fn record_epoch(
    report: &tolaria::EpochReport,
    seeds: &[kasmina::SeedSummary],
    parameters_added: i64,
) {
    metrics::gauge!("esper_epoch").set(f64::from(report.epoch));
    metrics::gauge!("esper_validation_loss").set(report.validation.loss);
    metrics::gauge!("esper_validation_accuracy_ratio").set(report.validation.accuracy);
    metrics::counter!("tolaria_rollbacks_total").increment(report.rollbacks as u64);
    let f = &report.fences;
    metrics::counter!("tamiyo_fences_total").increment(u64::from(f.fences));
    metrics::counter!("tamiyo_deadline_misses_total").increment(u64::from(f.deadline_misses));
    metrics::gauge!("tamiyo_fence_slowest_seconds").set(f.slowest_ms / 1e3);
    if f.fences > 0 {
        metrics::gauge!("tamiyo_fence_mean_seconds").set(f.total_ms / 1e3 / f64::from(f.fences));
    }
    for stage in ALL_STAGES {
        let n = seeds.iter().filter(|s| s.stage == stage).count();
        metrics::gauge!("esper_seeds", "stage" => leyline::lifecycle::stage_label(stage))
            .set(n as f64);
    }
    for s in seeds {
        metrics::gauge!("esper_seed_alpha", "slot" => s.slot.clone()).set(s.alpha);
    }
    metrics::gauge!("esper_parameters_added").set(parameters_added as f64);
}

/// The controller's decisions, by kind, operation and rule.
pub fn record_decisions(decisions: &[tolaria::fence::DecisionRecord]) {
    for d in decisions {
        let kind = match d.kind {
            tolaria::fence::DecisionKind::Command => "command",
            tolaria::fence::DecisionKind::Vetoed => "vetoed",
            tolaria::fence::DecisionKind::Wait => "wait",
            tolaria::fence::DecisionKind::Error => "error",
        };
        let op = d
            .action
            .split_whitespace()
            .next()
            .unwrap_or("NONE")
            .to_owned();
        metrics::counter!("tamiyo_decisions_total", "kind" => kind, "op" => op, "rule" => d.rule.clone())
            .increment(1);
        if d.kind == tolaria::fence::DecisionKind::Vetoed {
            metrics::counter!("tamiyo_vetoes_total", "rule" => d.rule.clone()).increment(1);
        }
    }
}

/// An emergency signal raised by this process.
pub fn record_emergency(level: EmergencyLevel) {
    metrics::counter!("tolaria_emergencies_total", "level" => level.as_str_name()).increment(1);
}
