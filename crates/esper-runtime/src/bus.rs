//! The process's connection to Oona: one tokio runtime (the only one — no
//! nested runtimes), one bus handle signing as this subsystem, and one
//! telemetry emitter. Synchronous code (the training loop) calls in through
//! [`RunBus`]; its publishes block only on the bus itself, its telemetry never.

use std::collections::BTreeMap;

use leyline::v1::{
    EmergencySignal, FieldReport, MessagePriority, MetricPoint, SystemStatePacket, TelemetryEvent,
    TelemetryLevel, TelemetryPacket,
};
use oona::{AnyBus, EmitterHandle, EmitterStats, Identity, Oona, Published, StatsSnapshot};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Resolved;
use crate::error::{Error, Result};
use crate::exporter::SystemMode;
use crate::supervisor::{Backoff, Supervisor, TaskHealth};

/// What the bus did during a run.
#[derive(Debug, Clone)]
pub struct BusSummary {
    /// Oona's counters.
    pub stats: StatsSnapshot,
    /// The emitter's counters.
    pub emitter: EmitterStats,
}

impl BusSummary {
    /// What the run summary says of the bus: what was published on which
    /// `backend`, and [`BusSummary::trouble`] when there was any.
    pub fn lines(&self, backend: &oona::config::BackendConfig) -> Vec<String> {
        let published: u64 = self.stats.published.values().sum();
        let per_stream: Vec<String> = self
            .stats
            .published
            .iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect();
        let mut lines = vec![format!(
            "oona ({}) — {published} messages published ({}), {} shed, {} telemetry events dropped",
            match backend {
                oona::config::BackendConfig::InProcess => "in-process".to_owned(),
                oona::config::BackendConfig::Redis { url } => format!("redis {url}"),
            },
            per_stream.join(", "),
            self.stats.shed_total(),
            self.emitter.dropped_queue_full + self.emitter.dropped_budget,
        )];
        if let Some(trouble) = self.trouble() {
            lines.push(format!("oona — {trouble}"));
        }
        lines
    }

    /// The line saying what the bus lost or set aside: quarantined and
    /// dead-lettered entries, and every interruption of the backend.
    pub fn trouble(&self) -> Option<String> {
        let s = &self.stats;
        let o = &s.outage;
        let mut parts = Vec::new();
        if o.interruptions > 0 {
            parts.push(format!(
                "the bus was interrupted {} time(s), {:.1} s in all ({}); {} publication(s) held, \
                 {} delivered after reconnect, {} dropped, {} undelivered at exit",
                o.interruptions,
                o.down_ms as f64 / 1e3,
                o.last_error.as_deref().unwrap_or("no cause recorded"),
                o.held,
                o.delivered_late,
                o.dropped,
                o.pending
            ));
        }
        if s.groups_recreated > 0 {
            parts.push(format!(
                "{} consumer group(s) found missing and created again",
                s.groups_recreated
            ));
        }
        if s.quarantined_total() > 0 || s.dead_lettered > 0 {
            let reasons: Vec<String> = s
                .quarantined
                .iter()
                .map(|(r, n)| format!("{n} {r}"))
                .collect();
            parts.push(format!(
                "{} entr(ies) quarantined{}, {} dead-lettered",
                s.quarantined_total(),
                if reasons.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", reasons.join(", "))
                },
                s.dead_lettered
            ));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// A bus connection for one subsystem of this process.
#[derive(Debug)]
pub struct RunBus {
    runtime: Runtime,
    oona: Oona<AnyBus>,
    emitter: EmitterHandle,
    emitter_task: JoinHandle<EmitterStats>,
    cancel: CancellationToken,
    /// The outage figures last told to the operator.
    told: std::sync::Mutex<oona::OutageStats>,
    /// Consumers whose group only this run reads: stopped, then their
    /// groups removed, at [`RunBus::finish`].
    own_groups: std::sync::Mutex<Vec<OwnGroup>>,
    /// The process's supervised tasks and its `system_mode`.
    supervisor: Supervisor,
}

#[derive(Debug)]
struct OwnGroup {
    stream: oona::Stream,
    group: String,
    consumer: JoinHandle<oona::Result<oona::RunReport>>,
}

impl RunBus {
    /// Connects the configured backend as `source` and starts the emitter.
    pub fn start(resolved: &Resolved, source: &str) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("esper-bus")
            .enable_all()
            .build()
            .map_err(|e| Error::Runtime(format!("cannot start the bus runtime: {e}")))?;
        let identity = Identity {
            source: source.to_owned(),
            run_id: resolved.run_id.clone(),
        };
        let config = &resolved.config;
        let oona = runtime.block_on(oona::connect(
            &config.oona,
            &config.leyline,
            resolved.signing_key.clone(),
            identity,
        ))?;
        let cancel = CancellationToken::new();
        let attributes = BTreeMap::from([
            ("run_id".to_owned(), resolved.run_id.clone()),
            ("experiment".to_owned(), config.run.experiment.clone()),
        ]);
        let (emitter, emitter_task) = {
            let _guard = runtime.enter();
            oona::emitter::spawn(
                oona.clone(),
                &config.oona.telemetry,
                attributes,
                cancel.clone(),
            )
        };
        oona.report_rejections_to(emitter.clone());
        let supervisor = Supervisor::new(
            runtime.handle().clone(),
            cancel.child_token(),
            Backoff::default(),
        );
        supervisor.supervise("oona.housekeeping", {
            let oona = oona.clone();
            move |token| {
                let oona = oona.clone();
                async move {
                    oona.run_housekeeping(token).await;
                    Ok(())
                }
            }
        });
        runtime.spawn(publish_modes(
            oona.clone(),
            supervisor.clone(),
            source.to_owned(),
            resolved.run_id.clone(),
            cancel.clone(),
        ));
        Ok(Self {
            runtime,
            oona,
            emitter,
            emitter_task,
            cancel,
            told: std::sync::Mutex::default(),
            own_groups: std::sync::Mutex::default(),
            supervisor,
        })
    }

    /// Runs `subscription` with `handler` on the bus runtime until the bus
    /// finishes, then deletes its group: for a group only this run reads,
    /// so that groups do not pile up on a shared server.
    pub fn run_own_group<H: oona::Handler + 'static>(
        &self,
        subscription: oona::Subscription<AnyBus>,
        group: &str,
        handler: H,
    ) {
        let stream = subscription.stream();
        let consumer = self
            .runtime
            .spawn(subscription.run(handler, self.cancel.child_token()));
        self.own_groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(OwnGroup {
                stream,
                group: group.to_owned(),
                consumer,
            });
    }

    /// Lines for the operator when the backend went down or came back since
    /// the last call (once per change, not per held publication), also sent
    /// as telemetry events (held until the bus is back).
    pub fn outage_notes(&self) -> Vec<String> {
        let now = self.oona.outage();
        let mut told = self.told.lock().unwrap_or_else(|p| p.into_inner());
        let mut notes = Vec::new();
        let cause = now.last_error.clone().unwrap_or_default();
        if now.interruptions > told.interruptions || (now.down_now && !told.down_now) {
            let line = format!(
                "bus down ({cause}): publications are held (up to {}) and sent when it \
                 answers; training continues",
                self.oona.config().outage.buffer
            );
            self.emitter.emit(
                leyline::telemetry::event("oona_bus_interrupted", TelemetryLevel::Warning, &line)
                    .build(),
            );
            notes.push(line);
        }
        if !now.down_now && (told.down_now || now.interruptions > told.interruptions) {
            let line = format!(
                "bus back: {} held publication(s) delivered, {} dropped; down {:.1} s in all",
                now.delivered_late,
                now.dropped,
                now.down_ms as f64 / 1e3
            );
            self.emitter.emit(
                leyline::telemetry::event("oona_bus_restored", TelemetryLevel::Info, &line).build(),
            );
            notes.push(line);
        }
        self.supervisor.dependency("oona", !now.down_now);
        *told = now;
        notes
    }

    /// Publishes a state packet (NORMAL priority; may be shed under backpressure,
    /// which the result says).
    pub fn publish_state(&self, packet: &SystemStatePacket) -> Result<Published> {
        Ok(self
            .runtime
            .block_on(self.oona.publish(packet, MessagePriority::Normal))?)
    }

    /// A sink for Tolaria's emergency signals: each is published on the
    /// emergency stream the moment the trainer raises it (and shown to the
    /// operator); a failure leaves it in the trainer's outbox.
    pub fn emergency_sink(&self) -> tolaria::EmergencySink {
        let oona = self.oona.clone();
        let handle = self.runtime.handle().clone();
        let supervisor = self.supervisor.clone();
        Box::new(move |signal: &EmergencySignal| {
            crate::exporter::record_emergency(signal.level());
            if signal.level() >= leyline::v1::EmergencyLevel::Conservative {
                supervisor.raise_emergency();
            }
            eprintln!(
                "esper train: emergency {}: {}",
                signal.level().as_str_name(),
                signal.reason
            );
            handle
                .block_on(oona.publish_signal(signal.clone()))
                .map(|_| ())
                .map_err(Into::into)
        })
    }

    /// Publishes an emergency signal on the emergency stream (never shed;
    /// held, never dropped, while the backend is down).
    pub fn publish_signal(&self, signal: EmergencySignal) -> Result<Published> {
        Ok(self.runtime.block_on(self.oona.publish_signal(signal))?)
    }

    /// Publishes Kasmina's per-step seed packets in one batch (LOW priority:
    /// shed first under backpressure, which the results say).
    pub fn publish_telemetry(&self, packets: &[TelemetryPacket]) -> Result<Vec<Published>> {
        if packets.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self
            .runtime
            .block_on(self.oona.publish_batch(packets, MessagePriority::Low))?)
    }

    /// Publishes field reports (NORMAL priority), each retried up to
    /// `attempts` times with doubling backoff from `backoff`; the reports
    /// that could not be published come back with the last error.
    pub fn publish_field_reports(
        &self,
        reports: Vec<FieldReport>,
        attempts: u32,
        backoff: std::time::Duration,
    ) -> Vec<(FieldReport, String)> {
        let mut failed = Vec::new();
        for report in reports {
            let mut wait = backoff;
            let mut last = String::new();
            let mut sent = false;
            for attempt in 1..=attempts.max(1) {
                match self
                    .runtime
                    .block_on(self.oona.publish(&report, MessagePriority::Normal))
                {
                    Ok(Published::Stored { .. } | Published::Held { .. }) => {
                        sent = true;
                        break;
                    }
                    Ok(Published::Shed { stream, reason }) => {
                        last = format!("shed from {stream} ({})", reason.as_str());
                    }
                    Err(e) => last = e.to_string(),
                }
                if attempt < attempts {
                    std::thread::sleep(wait);
                    wait *= 2;
                }
            }
            if !sent {
                failed.push((report, last));
            }
        }
        failed
    }

    /// A token cancelled when the bus finishes, for consumers started on it.
    pub fn cancellation(&self) -> CancellationToken {
        self.cancel.child_token()
    }

    /// A handle on the bus runtime, for components that run futures from
    /// their own threads (Tamiyo's metadata cache).
    pub fn handle(&self) -> tokio::runtime::Handle {
        self.runtime.handle().clone()
    }

    /// Queues a telemetry event (never blocks).
    pub fn emit(&self, event: TelemetryEvent) {
        self.emitter.emit(event);
    }

    /// Queues a metric point (never blocks).
    pub fn metric(&self, point: MetricPoint) {
        self.emitter.metric(point);
    }

    /// Runs `future` to completion on the bus runtime (the process's only one).
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// The bus handle.
    pub fn oona(&self) -> &Oona<AnyBus> {
        &self.oona
    }

    /// The supervisor of this process's background tasks (its
    /// `system_mode`).
    pub fn supervisor(&self) -> &Supervisor {
        &self.supervisor
    }

    /// Flushes the emitter and reports what the bus did.
    /// Publications still held (the backend is down) get
    /// `oona.outage.exit_drain_ms` to go out; what is left is counted.
    pub fn finish(self) -> Result<BusSummary> {
        let within = std::time::Duration::from_millis(self.oona.config().outage.exit_drain_ms);
        self.runtime.block_on(self.oona.drain_held(within));
        self.cancel.cancel();
        let own = std::mem::take(&mut *self.own_groups.lock().unwrap_or_else(|p| p.into_inner()));
        for g in own {
            // Stopped first (within `block_ms`), so that no read recreates it.
            let _ = self.runtime.block_on(g.consumer);
            // Best effort: a server that is down keeps it until it restarts
            // (and a volatile one loses it anyway).
            let _ = self
                .runtime
                .block_on(self.oona.remove_group(g.stream, &g.group));
        }
        let emitter = self
            .runtime
            .block_on(self.emitter_task)
            .map_err(|e| Error::Runtime(format!("telemetry emitter task failed: {e}")))?;
        Ok(BusSummary {
            stats: self.oona.stats(),
            emitter,
        })
    }
}

/// Publishes every change of the system mode on Oona: a telemetry packet
/// whose system health says the mode and, per supervised task and
/// dependency, how it is doing. A change towards trouble is HIGH priority
/// (never shed).
async fn publish_modes(
    oona: Oona<AnyBus>,
    supervisor: Supervisor,
    source: String,
    run_id: String,
    cancel: CancellationToken,
) {
    let mut modes = supervisor.watch();
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            changed = modes.changed() => if changed.is_err() { return },
        }
        let mode = *modes.borrow_and_update();
        let (status, name, priority) = match mode {
            SystemMode::Operational => (
                leyline::v1::HealthStatus::Healthy,
                "operational",
                MessagePriority::Normal,
            ),
            SystemMode::Degraded => (
                leyline::v1::HealthStatus::Degraded,
                "degraded",
                MessagePriority::High,
            ),
            SystemMode::Emergency => (
                leyline::v1::HealthStatus::Critical,
                "emergency",
                MessagePriority::High,
            ),
        };
        let mut packet =
            leyline::telemetry::PacketBuilder::new(&source, &run_id, leyline::unix_now_ms())
                .health(status, format!("system_mode {name}"))
                .build();
        if let Some(health) = packet.system_health.as_mut() {
            let (tasks, down) = supervisor.health();
            for (task, h) in tasks {
                let text = match h {
                    TaskHealth::Running => "running".to_owned(),
                    TaskHealth::Restarting {
                        failures,
                        last_error,
                    } => format!("restarting after {failures} failure(s): {last_error}"),
                    TaskHealth::Stopped => "stopped".to_owned(),
                };
                health.indicators.insert(task, text);
            }
            for dependency in down {
                health.indicators.insert(dependency, "down".to_owned());
            }
            health
                .indicators
                .insert("system_mode".to_owned(), name.to_owned());
        }
        // A bus that is down holds it and sends it after reconnecting.
        let _ = oona.publish(&packet, priority).await;
    }
}
