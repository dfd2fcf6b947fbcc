//! The training loop: batches → host forward (through the slots) → cross-entropy →
//! backward → optimizer step, with the LR set from the global step, and a real
//! validation pass at the end of every epoch.

use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{D, DType, Device, Tensor};
use kasmina::{DormantSlots, Host};

use crate::config::{Config, DeviceKind};
use crate::data::{BatchLoader, Dataset, bundled_mnist_dir, load_mnist};
use crate::emergency::EmergencyController;
use crate::error::{Error, Result};
use crate::fence::{ControlHook, Fence, FenceContext, FenceKind, FenceOutcome, FenceStats};
use crate::governor::{Governor, Verdict};
use crate::optim::{Optimizer, ParamGroup};
use crate::profiler::Profiler;
use crate::state::{
    CheckpointStore, CheckpointWriter, Corrupt, RollbackReport, RollbackStats, Snapshot, Written,
};
use leyline::v1::{EmergencyLevel, TelemetryEvent};

/// A fault injected on purpose, to drill the safety paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The next training loss becomes NaN (through the real loss tensor).
    NanLoss,
}

/// Metrics of one validation pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Validation {
    /// Mean cross-entropy.
    pub loss: f64,
    /// Fraction classified correctly, in [0, 1].
    pub accuracy: f64,
    /// Images evaluated.
    pub samples: usize,
}

/// What one epoch did.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochReport {
    /// Epoch number, from 1.
    pub epoch: u32,
    /// Global optimizer step at the end of the epoch.
    pub global_step: u64,
    /// Mean training loss over the epoch's batches.
    pub train_loss: f64,
    /// Training accuracy over the epoch (on the fly, weights changing).
    pub train_accuracy: f64,
    /// The end-of-epoch validation pass.
    pub validation: Validation,
    /// Training throughput (forward + backward + optimizer), images per second.
    pub train_images_per_second: f64,
    /// Wall time of the epoch including validation, seconds.
    pub seconds: f64,
    /// Rollbacks during the epoch.
    pub rollbacks: usize,
    /// Checkpoint queued at the end of the epoch, if any: written off the
    /// training thread; [`Trainer::finish`] (or dropping the trainer) waits for
    /// it, and a failed write is an error at the next epoch end or at finish.
    pub checkpoint: Option<std::path::PathBuf>,
    /// Mean global L2 norm of the gradients over the epoch's steps.
    pub grad_norm: f64,
    /// Median training step latency (forward, backward, optimizer), ms.
    pub step_ms_p50: f64,
    /// 95th-percentile training step latency, ms.
    pub step_ms_p95: f64,
    /// Control fences of the epoch.
    pub fences: FenceStats,
    /// Set when the control hook asked the run to stop.
    pub stop: Option<String>,
}

/// Where an epoch is, after each optimizer step (for progress displays).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepProgress {
    /// Epoch number, from 1.
    pub epoch: u32,
    /// Batches of this epoch done (stepped or rolled back).
    pub batch: usize,
    /// Batches in the epoch.
    pub batches: usize,
    /// Global optimizer step.
    pub global_step: u64,
    /// Loss of the last stepped batch.
    pub loss: f64,
    /// Training accuracy of the epoch so far.
    pub accuracy: f64,
    /// Training images per second of the epoch so far.
    pub images_per_second: f64,
}

/// Trains one host on one dataset.
pub struct Trainer {
    config: Config,
    host: Box<dyn Host>,
    optimizer: Optimizer,
    train: Arc<Dataset>,
    validation: Arc<Dataset>,
    device: Device,
    seed: u64,
    global_step: u64,
    epoch: u32,
    known_good: Snapshot,
    rollbacks: Vec<RollbackReport>,
    consecutive_rollbacks: u32,
    pending_fault: Option<Fault>,
    checkpoints: Option<CheckpointWriter>,
    written: Vec<Written>,
    rollback_deadlines: (Duration, Duration),
    rollback_stats: RollbackStats,
    skipped_checkpoints: Vec<Corrupt>,
    resumed_from: Option<std::path::PathBuf>,
    governor: Governor,
    emergency: EmergencyController,
    events: Vec<TelemetryEvent>,
    fence: Fence,
    stop: Option<String>,
    profiler: Profiler,
}

/// The device named by the config; CUDA without the feature or a GPU is an error,
/// never a silent fallback to the CPU.
fn device(kind: DeviceKind) -> Result<Device> {
    match kind {
        DeviceKind::Cpu => Ok(Device::Cpu),
        DeviceKind::Cuda => Device::new_cuda(0).map_err(|e| Error::Config {
            key: "tolaria.device".into(),
            detail: format!("cuda requested but unavailable: {e}"),
        }),
    }
}

impl Trainer {
    /// Validates `config`, loads and splits the data, and builds the host with
    /// weights drawn from `seed`.
    pub fn new(config: Config, seed: u64) -> Result<Self> {
        config.validate("tolaria")?;
        let device = device(config.device)?;
        let dir = config.data_dir.clone().unwrap_or_else(bundled_mnist_dir);
        let (train, validation) = load_mnist(&dir)?.split(config.train_size)?;
        let host = crate::hosts::build(&config.host, seed, &device)?;
        let mut optimizer = Optimizer::new(config.optimizer.rule)?;
        optimizer.add_group(ParamGroup::new(
            "host",
            host.parameters(),
            config.optimizer.lr,
            config.optimizer.weight_decay,
        ))?;
        let mut known_good = Snapshot::capture(&host.parameters(), &optimizer, 0, 0)?;
        let (mut epoch, mut global_step) = (0, 0);
        let (mut checkpoints, mut skipped_checkpoints, mut resumed_from) = (None, Vec::new(), None);
        if let Some(dir) = &config.checkpoint.dir {
            let (store, _stale_tmp) = CheckpointStore::open(dir, config.checkpoint.keep)?;
            if config.checkpoint.resume {
                let (loaded, skipped) = store.load_latest(&device)?;
                skipped_checkpoints = skipped;
                if let Some(loaded) = loaded {
                    if loaded.manifest.host != config.host || loaded.manifest.seed != seed {
                        return Err(Error::Config {
                            key: "tolaria.checkpoint.dir".into(),
                            detail: format!(
                                "{} holds a checkpoint of host {} seed {}, this run is host {} seed {seed}",
                                loaded.path.display(),
                                loaded.manifest.host,
                                loaded.manifest.seed,
                                config.host
                            ),
                        });
                    }
                    loaded
                        .snapshot
                        .restore(&host.parameters(), &mut optimizer)?;
                    epoch = loaded.manifest.epoch;
                    global_step = loaded.manifest.global_step;
                    known_good = loaded.snapshot;
                    resumed_from = Some(loaded.path);
                }
            }
            checkpoints = Some(CheckpointWriter::spawn(store)?);
        }
        let (config_governor, config_outbox) = (config.governor.clone(), config.emergency_outbox);
        let fence_every_steps = config.fence_every_steps;
        let mut events = Vec::new();
        let profiler = Profiler::new(config.profiler.clone(), &mut events);
        Ok(Self {
            config,
            host,
            optimizer,
            train: Arc::new(train),
            validation: Arc::new(validation),
            device,
            seed,
            global_step,
            epoch,
            known_good,
            rollbacks: Vec::new(),
            consecutive_rollbacks: 0,
            pending_fault: None,
            checkpoints,
            written: Vec::new(),
            // DESIGN §7 SLAs; the runtime passes leyline's budgets.
            rollback_deadlines: (Duration::from_millis(500), Duration::from_secs(12)),
            rollback_stats: RollbackStats::default(),
            skipped_checkpoints,
            resumed_from,
            governor: Governor::new(config_governor),
            emergency: EmergencyController::new("", config_outbox),
            events,
            fence: Fence {
                hook: None,
                every_steps: fence_every_steps,
                deadline: Duration::from_millis(50),
            },
            stop: None,
            profiler,
        })
    }

    /// Names the run in emergency signals (call before training).
    pub fn with_run_id(mut self, run_id: &str) -> Self {
        let capacity = self.config.emergency_outbox;
        self.emergency = EmergencyController::new(run_id, capacity);
        self
    }

    /// Installs the control plane's hook, called at every fence with `deadline`
    /// (the runtime passes `leyline.budgets.performance.control_fence_ms`).
    pub fn with_control_hook(mut self, hook: Box<dyn ControlHook>, deadline: Duration) -> Self {
        self.fence.hook = Some(hook);
        self.fence.deadline = deadline;
        self
    }

    /// Why the control hook stopped the run, if it did.
    pub fn stop_requested(&self) -> Option<&str> {
        self.stop.as_deref()
    }

    /// The emergency controller, with its outbox of signals to deliver.
    pub fn emergency(&mut self) -> &mut EmergencyController {
        &mut self.emergency
    }

    /// Telemetry events raised since the last call (e.g. outbox overflows).
    pub fn drain_events(&mut self) -> Vec<TelemetryEvent> {
        std::mem::take(&mut self.events)
    }

    /// Arms a fault for the next step (drills and tests of the safety paths).
    pub fn inject_fault(&mut self, fault: Fault) {
        self.pending_fault = Some(fault);
    }

    /// Every rollback so far.
    pub fn rollbacks(&self) -> &[RollbackReport] {
        &self.rollbacks
    }

    /// Checkpoints that failed verification at start-up and were skipped.
    pub fn skipped_checkpoints(&self) -> &[Corrupt] {
        &self.skipped_checkpoints
    }

    /// The checkpoint this run resumed from, if any.
    pub fn resumed_from(&self) -> Option<&std::path::Path> {
        self.resumed_from.as_deref()
    }

    /// Completed epochs.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Restores the last known-good snapshot after a loss explosion, raising the
    /// emergency level; more than `max_rollbacks` in a row halt the run.
    fn rollback(&mut self, reason: String) -> Result<()> {
        self.consecutive_rollbacks += 1;
        if self.consecutive_rollbacks > self.config.max_rollbacks {
            let why = format!(
                "{} consecutive loss explosions, the last: {reason}",
                self.consecutive_rollbacks
            );
            let event = self.emergency.escalate(EmergencyLevel::Halt, &why)?;
            self.events.extend(event);
            let checkpoint = match &mut self.checkpoints {
                Some(writer) => {
                    let path =
                        writer.submit(self.known_good.clone(), &self.config.host, self.seed)?;
                    self.collect_writes(true)?;
                    Some(path)
                }
                None => None,
            };
            return Err(Error::Halted {
                reason: why,
                step: self.global_step,
                checkpoint,
            });
        }
        if self.emergency.level() < EmergencyLevel::Elevated {
            let event = self
                .emergency
                .escalate(EmergencyLevel::Elevated, &format!("rollback: {reason}"))?;
            self.events.extend(event);
        }
        let started = Instant::now();
        match self
            .known_good
            .restore(&self.host.parameters(), &mut self.optimizer)
        {
            Ok(()) => {
                let report =
                    self.rollback_report("fast", reason, self.known_good.global_step, started);
                self.rollbacks.push(report);
                self.global_step = self.known_good.global_step;
                Ok(())
            }
            // The in-RAM state could not be restored: fall back to the disk.
            Err(fast) if self.checkpoints.is_some() => self
                .full_rollback(&format!("{reason}; fast restore failed: {fast}"))
                .map(|_| ()),
            Err(fast) => Err(fast),
        }
    }

    /// Full-tier rollback: restores the newest valid checkpoint on disk
    /// (parameters, optimizer state, step and epoch) and makes it the known-good
    /// state. Errors when no checkpoint directory is configured or none is valid.
    pub fn full_rollback(&mut self, reason: &str) -> Result<RollbackReport> {
        let started = Instant::now();
        let Some(writer) = self.checkpoints.as_mut() else {
            return Err(Error::Config {
                key: "tolaria.checkpoint.dir".into(),
                detail: format!(
                    "a full rollback ({reason}) needs checkpoints, and none are configured"
                ),
            });
        };
        // The newest checkpoint may still be in the writer's hands.
        let pending = writer.flush();
        let (loaded, skipped) = writer.store().load_latest(&self.device)?;
        self.record_writes(pending)?;
        self.skipped_checkpoints.extend(skipped);
        let Some(loaded) = loaded else {
            return Err(Error::Data {
                path: self.config.checkpoint.dir.clone().unwrap_or_default(),
                detail: format!("a full rollback ({reason}) found no valid checkpoint"),
            });
        };
        loaded
            .snapshot
            .restore(&self.host.parameters(), &mut self.optimizer)?;
        self.global_step = loaded.manifest.global_step;
        self.epoch = loaded.manifest.epoch;
        self.known_good = loaded.snapshot;
        let report = self.rollback_report("full", reason.to_owned(), self.global_step, started);
        self.rollbacks.push(report.clone());
        Ok(report)
    }

    fn rollback_report(
        &mut self,
        tier: &'static str,
        reason: String,
        restored_step: u64,
        started: Instant,
    ) -> RollbackReport {
        let took = started.elapsed();
        let (deadline, counters) = match tier {
            "fast" => (
                self.rollback_deadlines.0,
                (
                    &mut self.rollback_stats.fast,
                    &mut self.rollback_stats.fast_missed,
                ),
            ),
            _ => (
                self.rollback_deadlines.1,
                (
                    &mut self.rollback_stats.full,
                    &mut self.rollback_stats.full_missed,
                ),
            ),
        };
        *counters.0 += 1;
        let tripped = (took > deadline).then(|| {
            *counters.1 += 1;
            // The moment the deadline passed, on the wall clock.
            leyline::unix_now_ms().saturating_sub((took - deadline).as_millis() as u64)
        });
        RollbackReport {
            tier,
            reason,
            at_step: self.global_step,
            restored_step,
            restore_ms: took.as_secs_f64() * 1e3,
            deadline_ms: deadline.as_secs_f64() * 1e3,
            deadline_tripped_at_ms: tripped,
        }
    }

    /// Sets the fast and full rollback deadlines (the runtime passes
    /// `leyline.budgets.performance.fast_rollback_ms` / `full_rollback_ms`).
    pub fn with_rollback_deadlines(mut self, fast: Duration, full: Duration) -> Self {
        self.rollback_deadlines = (fast, full);
        self
    }

    /// SLA compliance of the rollbacks so far.
    pub fn rollback_stats(&self) -> RollbackStats {
        self.rollback_stats
    }

    /// Checkpoints confirmed written so far.
    pub fn checkpoints_written(&self) -> &[Written] {
        &self.written
    }

    /// Closes an open profiler window and waits for every queued checkpoint
    /// write; an error if any write failed.
    pub fn finish(&mut self) -> Result<()> {
        self.profiler.close(&mut self.events);
        self.collect_writes(true)
    }

    /// Chrome trace files written by the profiler so far.
    pub fn profiler_traces(&self) -> &[std::path::PathBuf] {
        self.profiler.traces()
    }

    /// Profiler failures so far (each also a telemetry event).
    pub fn profiler_failures(&self) -> u32 {
        self.profiler.failures()
    }

    /// Gathers finished checkpoint writes (waiting for all when `wait`).
    fn collect_writes(&mut self, wait: bool) -> Result<()> {
        let outcomes = match self.checkpoints.as_mut() {
            Some(writer) if wait => writer.flush(),
            Some(writer) => writer.finished(),
            None => Vec::new(),
        };
        self.record_writes(outcomes)
    }

    fn record_writes(&mut self, outcomes: Vec<Result<Written>>) -> Result<()> {
        for outcome in outcomes {
            self.written.push(outcome?);
        }
        Ok(())
    }

    /// The host being trained.
    pub fn host(&self) -> &dyn Host {
        self.host.as_ref()
    }

    /// Optimizer steps taken so far.
    pub fn global_step(&self) -> u64 {
        self.global_step
    }

    /// The optimizer.
    pub fn optimizer(&self) -> &Optimizer {
        &self.optimizer
    }

    /// Sizes of the training and validation sets.
    pub fn dataset_sizes(&self) -> (usize, usize) {
        (self.train.len(), self.validation.len())
    }

    /// Shuffle seed of `epoch`: distinct per epoch, fixed by the run seed.
    fn epoch_seed(&self, epoch: u32) -> u64 {
        self.seed
            ^ u64::from(epoch)
                .wrapping_add(1)
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }

    /// Trains one epoch, then validates.
    pub fn run_epoch(&mut self) -> Result<EpochReport> {
        self.run_epoch_with_progress(&mut |_| {})
    }

    /// [`Trainer::run_epoch`], calling `on_step` after every batch.
    pub fn run_epoch_with_progress(
        &mut self,
        on_step: &mut dyn FnMut(&StepProgress),
    ) -> Result<EpochReport> {
        let started = Instant::now();
        let batches_in_epoch = self.train.len().div_ceil(self.config.batch_size);
        let mut batch_index = 0usize;
        self.epoch += 1;
        let mut loader = BatchLoader::new(
            self.train.clone(),
            self.config.batch_size,
            Some(self.epoch_seed(self.epoch)),
            self.config.prefetch_batches,
        )?;
        let (mut loss_sum, mut batches, mut correct, mut seen) = (0.0f64, 0usize, 0usize, 0usize);
        let (mut grad_norm_sum, mut step_ms, mut fences) =
            (0.0f64, Vec::new(), FenceStats::default());
        let mut last_loss = f64::NAN;
        let rollbacks_before = self.rollbacks.len();
        loop {
            let step_no = self.global_step + 1;
            let _trace = self.profiler.enter(step_no, &mut self.events);
            let step_span = tracing::info_span!("step", step = step_no).entered();
            let next = {
                let _data = tracing::info_span!("data").entered();
                loader.next_batch(&self.device)?
            };
            let Some(batch) = next else {
                break;
            };
            let step_started = Instant::now();
            batch_index += 1;
            self.optimizer
                .scale_lr(self.config.lr.factor(self.global_step));
            let forward = tracing::info_span!("forward").entered();
            let logits = self
                .host
                .forward_with_slots(&batch.images, &mut DormantSlots)?;
            let mut loss = candle_nn::loss::cross_entropy(&logits, &batch.labels)?;
            if let Some(Fault::NanLoss) = self.pending_fault.take() {
                loss = (loss * f64::NAN)?;
            }
            let value = loss.to_scalar::<f32>()?;
            if let Verdict::Explosion(reason) = self.governor.observe(f64::from(value)) {
                // Never step on an exploded loss: restore the known-good state and
                // carry on with the next batch.
                self.rollback(format!("{reason} at step {}", self.global_step))?;
                continue;
            }
            drop(forward);
            let grads = {
                let _backward = tracing::info_span!("backward").entered();
                loss.backward()?
            };
            {
                let _optimizer = tracing::info_span!("optimizer").entered();
                grad_norm_sum += global_grad_norm(&self.host.parameters(), &grads)?;
                self.optimizer.step(&grads)?;
            }
            step_ms.push(step_started.elapsed().as_secs_f64() * 1e3);
            self.consecutive_rollbacks = 0;
            self.global_step += 1;
            last_loss = f64::from(value);
            loss_sum += last_loss;
            batches += 1;
            correct += count_correct(&logits, &batch.labels)?;
            seen += batch.labels.dims1()?;
            on_step(&StepProgress {
                epoch: self.epoch,
                batch: batch_index,
                batches: batches_in_epoch,
                global_step: self.global_step,
                loss: last_loss,
                accuracy: correct as f64 / seen.max(1) as f64,
                images_per_second: seen as f64 / started.elapsed().as_secs_f64().max(1e-9),
            });
            drop(step_span);
            drop(_trace);
            self.profiler.exit(step_no, &mut self.events);
            if self.fence.due(self.global_step) {
                self.at_fence(FenceKind::Step, last_loss, None, &mut fences)?;
                if self.stop.is_some() {
                    break;
                }
            }
        }
        let train_seconds = started.elapsed().as_secs_f64();
        let validation = self.validate()?;
        if self.stop.is_none() {
            self.at_fence(
                FenceKind::EpochEnd,
                last_loss,
                Some(validation.accuracy),
                &mut fences,
            )?;
        }
        step_ms.sort_by(f64::total_cmp);
        let rollbacks = self.rollbacks.len() - rollbacks_before;
        if rollbacks == 0 && self.emergency.level() == EmergencyLevel::Elevated {
            // Explicit downgrade rule: a whole epoch without a rollback.
            let event = self
                .emergency
                .downgrade(EmergencyLevel::Notice, "an epoch without rollbacks")?;
            self.events.extend(event);
        }
        let mut checkpoint = None;
        if validation.loss.is_finite() {
            // A boundary that passed its health check becomes the known-good state.
            self.known_good = Snapshot::capture(
                &self.host.parameters(),
                &self.optimizer,
                self.global_step,
                self.epoch,
            )?;
            // A failed earlier write surfaces here, before the next is queued.
            self.collect_writes(false)?;
            if let Some(writer) = &mut self.checkpoints {
                checkpoint =
                    Some(writer.submit(self.known_good.clone(), &self.config.host, self.seed)?);
            }
        }
        Ok(EpochReport {
            epoch: self.epoch,
            global_step: self.global_step,
            train_loss: loss_sum / batches.max(1) as f64,
            train_accuracy: correct as f64 / seen.max(1) as f64,
            validation,
            train_images_per_second: seen as f64 / train_seconds.max(1e-9),
            seconds: started.elapsed().as_secs_f64(),
            rollbacks,
            checkpoint,
            grad_norm: grad_norm_sum / batches.max(1) as f64,
            step_ms_p50: quantile(&step_ms, 0.50),
            step_ms_p95: quantile(&step_ms, 0.95),
            fences,
            stop: self.stop.clone(),
        })
    }

    /// Calls the hook (if any), timing it against the deadline.
    fn at_fence(
        &mut self,
        kind: FenceKind,
        last_loss: f64,
        validation_accuracy: Option<f64>,
        stats: &mut FenceStats,
    ) -> Result<()> {
        stats.fences += 1;
        let Some(hook) = self.fence.hook.as_mut() else {
            return Ok(());
        };
        let started = Instant::now();
        let context = FenceContext {
            kind,
            epoch: self.epoch,
            global_step: self.global_step,
            last_loss,
            validation_accuracy,
            host: self.host.as_ref(),
            deadline: started + self.fence.deadline,
        };
        let outcome = hook
            .at_fence(&context)
            .map_err(|detail| Error::ControlHook {
                global_step: self.global_step,
                detail,
            })?;
        let took = started.elapsed();
        stats.slowest_ms = stats.slowest_ms.max(took.as_secs_f64() * 1e3);
        if took > self.fence.deadline {
            stats.deadline_misses += 1;
            self.events.push(
                leyline::telemetry::event(
                    "control_fence_deadline_missed",
                    leyline::v1::TelemetryLevel::Warning,
                    format!(
                        "control hook took {:.1} ms at step {} (deadline {} ms)",
                        took.as_secs_f64() * 1e3,
                        self.global_step,
                        self.fence.deadline.as_millis()
                    ),
                )
                .attr("global_step", self.global_step)
                .build(),
            );
        }
        if let FenceOutcome::Stop { reason } = outcome {
            self.stop = Some(reason);
        }
        Ok(())
    }

    /// Runs every configured epoch, reporting each as it ends.
    pub fn run(&mut self, mut on_epoch: impl FnMut(&EpochReport)) -> Result<Vec<EpochReport>> {
        let mut reports = Vec::new();
        while self.epoch < self.config.epochs && self.stop.is_none() {
            let report = self.run_epoch()?;
            on_epoch(&report);
            reports.push(report);
        }
        Ok(reports)
    }

    /// One pass over the validation set with the current weights.
    pub fn validate(&self) -> Result<Validation> {
        let mut loader = BatchLoader::new(
            self.validation.clone(),
            self.config.batch_size,
            None,
            self.config.prefetch_batches,
        )?;
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
        while let Some(batch) = loader.next_batch(&self.device)? {
            let logits = self
                .host
                .forward_with_slots(&batch.images, &mut DormantSlots)?
                .detach();
            let n = batch.labels.dims1()?;
            let loss =
                candle_nn::loss::cross_entropy(&logits, &batch.labels)?.to_scalar::<f32>()?;
            loss_sum += f64::from(loss) * n as f64;
            correct += count_correct(&logits, &batch.labels)?;
            seen += n;
        }
        Ok(Validation {
            loss: loss_sum / seen.max(1) as f64,
            accuracy: correct as f64 / seen.max(1) as f64,
            samples: seen,
        })
    }
}

/// Global L2 norm of every parameter's gradient, reduced on the device and read once.
fn global_grad_norm(
    params: &[kasmina::NamedParameter],
    grads: &candle_core::backprop::GradStore,
) -> Result<f64> {
    let mut total: Option<Tensor> = None;
    for p in params {
        if let Some(g) = grads.get(p.var.as_tensor()) {
            let s = g.sqr()?.sum_all()?;
            total = Some(match total {
                Some(t) => (t + s)?,
                None => s,
            });
        }
    }
    Ok(match total {
        Some(t) => f64::from(t.to_dtype(DType::F32)?.to_scalar::<f32>()?).sqrt(),
        None => 0.0,
    })
}

/// `q`-quantile of sorted values (0 when empty).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn count_correct(logits: &Tensor, labels: &Tensor) -> Result<usize> {
    let predicted = logits.argmax(D::Minus1)?;
    let hits = predicted
        .eq(labels)?
        .to_dtype(DType::U32)?
        .sum_all()?
        .to_scalar::<u32>()?;
    Ok(hits as usize)
}
