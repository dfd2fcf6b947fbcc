//! The process's connection to Oona: one tokio runtime (the only one — no
//! nested runtimes), one bus handle signing as this subsystem, and one
//! telemetry emitter. Synchronous code (the training loop) calls in through
//! [`RunBus`]; its publishes block only on the bus itself, its telemetry never.

use std::collections::BTreeMap;

use leyline::v1::{
    EmergencySignal, FieldReport, MessagePriority, MetricPoint, SystemStatePacket, TelemetryEvent,
    TelemetryPacket,
};
use oona::{AnyBus, EmitterHandle, EmitterStats, Identity, Oona, Published, StatsSnapshot};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Resolved;
use crate::error::{Error, Result};

/// What the bus did during a run.
#[derive(Debug, Clone)]
pub struct BusSummary {
    /// Oona's counters.
    pub stats: StatsSnapshot,
    /// The emitter's counters.
    pub emitter: EmitterStats,
}

/// A bus connection for one subsystem of this process.
#[derive(Debug)]
pub struct RunBus {
    runtime: Runtime,
    oona: Oona<AnyBus>,
    emitter: EmitterHandle,
    emitter_task: JoinHandle<EmitterStats>,
    cancel: CancellationToken,
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
        runtime.spawn({
            let oona = oona.clone();
            let cancel = cancel.clone();
            async move { oona.run_housekeeping(cancel).await }
        });
        Ok(Self {
            runtime,
            oona,
            emitter,
            emitter_task,
            cancel,
        })
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
        Box::new(move |signal: &EmergencySignal| {
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

    /// Publishes an emergency signal on the emergency stream (never shed).
    pub fn publish_signal(&self, signal: EmergencySignal) -> Result<oona::EntryId> {
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
                    Ok(Published::Stored { .. }) => {
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

    /// Flushes the emitter and reports what the bus did.
    pub fn finish(self) -> Result<BusSummary> {
        self.cancel.cancel();
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
