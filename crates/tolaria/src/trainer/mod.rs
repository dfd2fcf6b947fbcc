//! The training loop: batches → host forward (through the slots) → cross-entropy →
//! backward → optimizer step, with the LR set from the global step, and a real
//! validation pass at the end of every epoch.

use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Device;
use kasmina::{DormantSlots, Host};

use crate::checkpoints::{
    CheckpointStore, CheckpointWriter, Corrupt, ResumeState, RollbackReport, RollbackStats,
    Snapshot, Written,
};
use crate::config::{Config, DeviceKind};
use crate::data::{BatchLoader, Dataset, bundled_mnist_dir, load_mnist};
use crate::emergency::EmergencyController;
use crate::error::{Error, Result};
use crate::fence::{ControlHook, DecisionRecord, Fence, FenceKind, FenceStats};
use crate::governor::{Governor, Verdict};
use crate::optim::{Optimizer, ParamGroup};
use crate::profiler::Profiler;
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
    /// Training images stepped on (rolled-back batches not counted).
    pub train_images: usize,
    /// Mean forward MACs per training image over the epoch: the host's and
    /// those of the seeds live at each step. `None` when the host does not
    /// count its layers.
    pub forward_macs_per_image: Option<f64>,
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
#[derive(Debug, Clone, PartialEq)]
pub struct StepProgress<'a> {
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
    /// The seeds as of the last fence.
    pub seeds: &'a [kasmina::SeedSummary],
    /// Every event queued since the last [`Trainer::drain_events`] (seed
    /// transitions and gate evaluations among them), in the order they
    /// happened: a display can show the new ones as they come.
    pub events: &'a [TelemetryEvent],
}

/// What the next fence's state packet reports of the steps since the last.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct SinceFence {
    loss_sum: f64,
    steps: u64,
    step_ms_sum: f64,
}

/// Delivers one emergency signal (e.g. publishes it on Oona's emergency
/// stream); an error leaves it, and the ones after it, in the outbox.
pub type EmergencySink = Box<
    dyn FnMut(
            &leyline::v1::EmergencySignal,
        ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>
        + Send,
>;

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
    health: recovery::Health,
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
    config_sha256: String,
    seeds: Option<seeds::SeedControl>,
    teacher: Option<distill::Teacher>,
    run_id: String,
    experiment: String,
    /// Fences reached so far: the controller generation each state packet opens.
    generation: u64,
    /// Loss sum, steps and step milliseconds since the last fence.
    since_fence: SinceFence,
    /// How long the last hook call took, ms (reported in the next packet).
    last_hook_ms: Option<f64>,
    /// Seeds of the checkpoint this run resumed from, until Kasmina takes them.
    resumed_seeds: Option<seeds::ResumedSeeds>,
    /// The control hook's state of the checkpoint this run resumed from,
    /// until the hook is installed.
    resumed_controller: Option<serde_json::Value>,
    /// Where emergency signals go the moment they are raised (the runtime's
    /// bus); without one they wait in the outbox for the caller.
    emergency_sink: Option<EmergencySink>,
    /// Their optimizer state, imported once their groups exist.
    pending_seed_optimizer: std::collections::BTreeMap<String, crate::optim::StateEntry>,
    /// The control hook's decisions, until drained.
    decisions: Vec<DecisionRecord>,
    /// The control hook's field reports, until drained.
    field_reports: Vec<leyline::v1::FieldReport>,
    /// The seeds as of the last fence (progress displays).
    fence_seeds: Vec<kasmina::SeedSummary>,
}

/// The device named by the config; CUDA without the feature or a GPU is an error,
/// never a silent fallback to the CPU.
/// The device `kind` names; CUDA that cannot be opened (no GPU, no driver,
/// a build without the `cuda` feature) is an error naming `tolaria.device`.
pub fn open_device(kind: DeviceKind) -> Result<Device> {
    device(kind)
}

fn device(kind: DeviceKind) -> Result<Device> {
    match kind {
        DeviceKind::Cpu => Ok(Device::Cpu),
        DeviceKind::Cuda => Device::new_cuda(0).map_err(|e| {
            // The driver's answer, without the backtrace candle attaches
            // under RUST_BACKTRACE: an operator's message, not a crash.
            let e = match e {
                candle_core::Error::WithBacktrace { inner, .. } => *inner,
                other => other,
            };
            Error::Config(leyline::ConfigError::at(
                "tolaria.device",
                format!("cuda requested but unavailable: {e}"),
            ))
        }),
    }
}

mod control;
mod distill;
mod helpers;
mod recovery;
mod seeds;
mod state;
mod validation;

use helpers::{checkpoint_meta, count_correct, global_grad_norm, quantile, training_config_sha256};

impl Trainer {
    /// Validates `config`, loads and splits the data, and builds the host with
    /// weights drawn from `seed`. `run_id` names the run in every emergency
    /// signal; it is required (no run goes unnamed).
    pub fn new(config: Config, seed: u64, run_id: &str) -> Result<Self> {
        config.validate("tolaria")?;
        if run_id.trim().is_empty() {
            return Err(Error::Config(leyline::ConfigError::at(
                "run.run_id",
                "a trainer needs a run id",
            )));
        }
        let device = device(config.device)?;
        let dir = config.data_dir.clone().unwrap_or_else(bundled_mnist_dir);
        let data = load_mnist(&dir)?;
        let images = data.len();
        let (train, validation) = data.split(config.train_size).map_err(|_| Error::Data {
            path: dir.clone(),
            detail: format!(
                "tolaria.train_size = {} but the data holds {images} images; it must be in \
                 1..{images} (the rest is the validation set)",
                config.train_size
            ),
        })?;
        let host = crate::hosts::build_with_ops(&config.host, seed, &device, config.ops)?;
        let mut optimizer = Optimizer::new(config.optimizer.rule)?.on(device.location());
        optimizer.add_group(ParamGroup::new(
            "host",
            host.parameters(),
            config.optimizer.lr,
            config.optimizer.weight_decay,
        ))?;
        let mut known_good = Snapshot::capture(&host.parameters(), &optimizer, 0, 0)?;
        let config_sha256 = training_config_sha256(&config)?;
        let mut resume_events = Vec::new();
        let (mut epoch, mut global_step) = (0, 0);
        let (mut checkpoints, mut skipped_checkpoints, mut resumed_from) = (None, Vec::new(), None);
        let mut resumed_seeds = None;
        let mut resumed = None;
        if let Some(dir) = &config.checkpoint.dir {
            let (store, _stale_tmp) = CheckpointStore::open(dir, config.checkpoint.keep)?;
            if config.checkpoint.resume {
                let (loaded, skipped) = store.load_latest(&device)?;
                skipped_checkpoints = skipped;
                if let Some(loaded) = loaded {
                    if loaded.manifest.host != config.host || loaded.manifest.seed != seed {
                        return Err(Error::Config(leyline::ConfigError::at(
                            "tolaria.checkpoint.dir",
                            format!(
                                "{} holds a checkpoint of host {} seed {}, this run is host {} seed {seed}",
                                loaded.path.display(),
                                loaded.manifest.host,
                                loaded.manifest.seed,
                                config.host
                            ),
                        )));
                    }
                    if let Some(theirs) = &loaded.manifest.config_sha256
                        && *theirs != config_sha256
                    {
                        if !config.checkpoint.allow_config_change {
                            return Err(Error::Config(leyline::ConfigError::at(
                                "tolaria.checkpoint.allow_config_change",
                                format!(
                                    "{} was written under a different training configuration; \
                                     set it to resume anyway",
                                    loaded.path.display()
                                ),
                            )));
                        }
                        resume_events.push(
                            leyline::telemetry::event(
                                "checkpoint_config_changed",
                                leyline::v1::TelemetryLevel::Warning,
                                format!(
                                    "resuming {} under a different training configuration",
                                    loaded.path.display()
                                ),
                            )
                            .build(),
                        );
                    }
                    loaded
                        .snapshot
                        .restore(&host.parameters(), &mut optimizer)?;
                    resumed_seeds =
                        seeds::ResumedSeeds::from_snapshot(&loaded.snapshot, &loaded.path);
                    epoch = loaded.manifest.epoch;
                    global_step = loaded.manifest.global_step;
                    if loaded.manifest.resume.is_none() {
                        resume_events.push(
                            leyline::telemetry::event(
                                "checkpoint_without_resume_state",
                                leyline::v1::TelemetryLevel::Warning,
                                format!(
                                    "{} predates the resume state: the controller and the \
                                     governor start afresh, so the run may not continue exactly",
                                    loaded.path.display()
                                ),
                            )
                            .build(),
                        );
                    }
                    resumed.clone_from(&loaded.manifest.resume);
                    known_good = loaded.snapshot;
                    resumed_from = Some(loaded.path);
                }
            }
            checkpoints = Some(CheckpointWriter::spawn(store)?);
        }
        let (config_governor, config_outbox) = (config.governor.clone(), config.emergency_outbox);
        let fence_every_steps = config.fence_every_steps;
        let mut events = resume_events;
        let profiler = Profiler::new(config.profiler.clone(), &mut events);
        let batch = config.batch_size;
        let mut health = recovery::Health::new(&config_governor, batch);
        let mut governor = Governor::new(config_governor.clone(), batch);
        let (mut generation, mut last_hook_ms, mut resumed_controller) = (0, None, None);
        if let Some(state) = resumed {
            let state: ResumeState = state;
            governor = Governor::from_state(config_governor, batch, state.governor);
            health.restore(&state, governor.clone());
            generation = state.generation;
            last_hook_ms = state.last_hook_ms;
            resumed_controller = state.controller;
        }
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
            health,
            pending_fault: None,
            checkpoints,
            written: Vec::new(),
            // the rollback budgets of docs/DESIGN.md §10; the runtime passes leyline's budgets.
            rollback_deadlines: (Duration::from_millis(500), Duration::from_secs(12)),
            rollback_stats: RollbackStats::default(),
            skipped_checkpoints,
            resumed_from,
            governor,
            emergency: EmergencyController::new(run_id, config_outbox),
            events,
            fence: Fence {
                hook: None,
                every_steps: fence_every_steps,
                deadline: Duration::from_millis(50),
            },
            stop: None,
            profiler,
            config_sha256,
            seeds: None,
            teacher: None,
            run_id: run_id.to_owned(),
            experiment: "default".to_owned(),
            generation,
            since_fence: SinceFence::default(),
            decisions: Vec::new(),
            field_reports: Vec::new(),
            fence_seeds: Vec::new(),
            last_hook_ms,
            resumed_seeds,
            resumed_controller,
            emergency_sink: None,
            pending_seed_optimizer: std::collections::BTreeMap::new(),
        })
    }

    /// Installs the control plane's hook, called at every fence with `deadline`
    /// (the runtime passes `leyline.budgets.performance.control_fence_ms`).
    /// A resumed run gives the hook the state its checkpoint holds; a hook
    /// that cannot take it is an error (the run would not continue exactly).
    pub fn with_control_hook(
        mut self,
        mut hook: Box<dyn ControlHook>,
        deadline: Duration,
    ) -> Result<Self> {
        if let Some(state) = self.resumed_controller.take() {
            hook.import_state(state)
                .map_err(|source| Error::ControlHook {
                    global_step: self.global_step,
                    source,
                })?;
        }
        self.fence.hook = Some(hook);
        self.fence.deadline = deadline;
        Ok(self)
    }

    /// Why the control hook stopped the run, if it did.
    pub fn stop_requested(&self) -> Option<&str> {
        self.stop.as_deref()
    }

    /// Delivers emergency signals through `sink` as soon as they are raised
    /// (checked after every step and at every fence), instead of leaving them
    /// in the outbox until the caller drains it.
    pub fn with_emergency_sink(mut self, sink: EmergencySink) -> Self {
        self.emergency_sink = Some(sink);
        self
    }

    /// Sends what the outbox holds through the sink, if there is one.
    fn flush_emergencies(&mut self) {
        if let Some(sink) = self.emergency_sink.as_mut()
            && !self.emergency.outbox().is_empty()
        {
            self.emergency.outbox().drain(|s| sink(s));
        }
    }

    /// The emergency controller, with its outbox of signals to deliver.
    pub fn emergency(&mut self) -> &mut EmergencyController {
        &mut self.emergency
    }

    /// Telemetry events raised since the last call (e.g. outbox overflows).
    pub fn drain_events(&mut self) -> Vec<TelemetryEvent> {
        std::mem::take(&mut self.events)
    }

    /// The control hook's decisions since the last drain.
    pub fn drain_decisions(&mut self) -> Vec<DecisionRecord> {
        std::mem::take(&mut self.decisions)
    }

    /// The control hook's field reports since the last drain, to publish.
    pub fn drain_field_reports(&mut self) -> Vec<leyline::v1::FieldReport> {
        std::mem::take(&mut self.field_reports)
    }

    /// Arms a fault for the next step (drills and tests of the safety paths;
    /// feature `testing`).
    #[cfg(feature = "testing")]
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

    /// The host being trained.
    pub fn host(&self) -> &dyn Host {
        self.host.as_ref()
    }

    /// Optimizer steps taken so far.
    pub fn global_step(&self) -> u64 {
        self.global_step
    }

    /// The device the host trains on.
    pub fn device(&self) -> &Device {
        &self.device
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
        self.unclaimed_seeds();
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
        let (mut last_loss, mut classes) = (f64::NAN, 0usize);
        let rollbacks_before = self.rollbacks.len();
        let host_macs = self.host_forward_macs();
        let mut macs_sum = 0u128;
        loop {
            // A signal raised by the last step (a rollback's escalation
            // included) leaves before the next one starts.
            self.flush_emergencies();
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
            self.health.attempts += 1;
            self.optimizer
                .scale_lr(self.config.lr.factor(self.global_step));
            {
                let _seeds = tracing::info_span!("seeds_before_step").entered();
                self.seeds_before_step()?;
            }
            let forward = tracing::info_span!("forward").entered();
            let forward_started = Instant::now();
            let logits = match self.seeds.as_mut() {
                Some(control) => self
                    .host
                    .forward_with_slots(&batch.images, control.kasmina.runner())?,
                None => self
                    .host
                    .forward_with_slots(&batch.images, &mut DormantSlots)?,
            };
            classes = logits.dim(1)?;
            // The loss is made where the model is: a host or seed that left
            // its output elsewhere is named here, not deep in the backward.
            esper_ops::device::ensure_on(&logits, self.device.location(), || {
                format!("host {}'s logits", self.host.name())
            })?;
            let mut loss = self.config.ops.cross_entropy(&logits, &batch.labels)?;
            if let Some(kd) = self.distillation_loss(&batch.images, &logits)? {
                loss = (loss + kd)?;
            }
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
            let forward_ms = forward_started.elapsed().as_secs_f64() * 1e3;
            drop(forward);
            let images = batch.labels.dims1()?;
            macs_sum += u128::from(self.count_forward(images as u64)) * images as u128;
            let grads = {
                let _backward = tracing::info_span!("backward").entered();
                loss.backward()?
            };
            let times = kasmina::StepTimes {
                forward_ms,
                forward_backward_ms: step_started.elapsed().as_secs_f64() * 1e3,
            };
            {
                let _seeds = tracing::info_span!("seeds_after_backward").entered();
                self.seeds_after_backward(&grads, f64::from(value), times)?;
            }
            let host_grad_norm = {
                let _optimizer = tracing::info_span!("optimizer").entered();
                let norm = global_grad_norm(&self.host.parameters(), &grads)?;
                grad_norm_sum += norm;
                self.optimizer.step(&grads)?;
                norm
            };
            step_ms.push(step_started.elapsed().as_secs_f64() * 1e3);
            self.global_step += 1;
            {
                let _seeds = tracing::info_span!("seeds_after_step").entered();
                self.seeds_after_step(host_grad_norm)?;
            }
            last_loss = f64::from(value);
            loss_sum += last_loss;
            self.since_fence.loss_sum += last_loss;
            self.since_fence.steps += 1;
            self.since_fence.step_ms_sum += step_ms.last().copied().unwrap_or(0.0);
            batches += 1;
            correct += count_correct(&logits, &batch.labels)?;
            seen += images;
            on_step(&StepProgress {
                epoch: self.epoch,
                batch: batch_index,
                batches: batches_in_epoch,
                global_step: self.global_step,
                loss: last_loss,
                accuracy: correct as f64 / seen.max(1) as f64,
                images_per_second: seen as f64 / started.elapsed().as_secs_f64().max(1e-9),
                seeds: &self.fence_seeds,
                events: &self.events,
            });
            self.flush_emergencies();
            drop(step_span);
            drop(_trace);
            self.profiler.exit(step_no, &mut self.events);
            // On the epoch's last batch the epoch-end fence follows at the
            // same step: one fence, with the validation evidence, not two.
            if self.fence.due(self.global_step) && batch_index < batches_in_epoch {
                self.at_fence(FenceKind::Step, last_loss, None, None, &mut fences)?;
                if self.stop.is_some() {
                    break;
                }
            }
        }
        let train_seconds = started.elapsed().as_secs_f64();
        let validation = self.validate()?;
        self.seeds_epoch_end(validation.accuracy)?;
        if self.stop.is_none() {
            let train_accuracy = correct as f64 / seen.max(1) as f64;
            self.at_fence(
                FenceKind::EpochEnd,
                last_loss,
                Some(&validation),
                (seen > 0).then_some(train_accuracy),
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
        self.judge_learning(validation.accuracy, classes)?;
        let mut checkpoint = None;
        if validation.loss.is_finite() {
            // A boundary that passed its health check becomes the known-good state.
            self.known_good = Snapshot::capture(
                &self.model_parameters(),
                &self.optimizer,
                self.global_step,
                self.epoch,
            )?
            .with_kasmina(self.seeds.as_ref().map(|c| c.kasmina.export_state()))
            .with_resume(self.resume_state()?);
            self.health.known_good_governor = self.governor.clone();
            // A failed earlier write surfaces here, before the next is queued.
            self.collect_writes(false)?;
            if let Some(writer) = &mut self.checkpoints {
                let meta = checkpoint_meta(
                    &self.config,
                    self.seed,
                    &self.config_sha256,
                    self.known_good.global_step,
                );
                checkpoint = Some(writer.submit(self.known_good.clone(), meta)?);
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
            train_images: seen,
            forward_macs_per_image: host_macs
                .map(|host| host as f64 + macs_sum as f64 / seen.max(1) as f64),
            step_ms_p50: quantile(&step_ms, 0.50),
            step_ms_p95: quantile(&step_ms, 0.95),
            fences,
            stop: self.stop.clone(),
        })
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
}
