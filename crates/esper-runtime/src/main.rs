//! The `esper` program.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use esper_runtime::control;

mod cli;
use cli::{Cli, CohortAction, Command, RunsCommand};

// mimalloc, with freed memory kept for the next step (esper_ops::alloc).
#[global_allocator]
static GLOBAL: esper_ops::alloc::MiMalloc = esper_ops::alloc::MiMalloc;

fn main() -> ExitCode {
    esper_ops::alloc::retain_freed_memory();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            // Each cause once: a wrapped OS error often repeats its cause.
            eprintln!("esper: error: {}", leyline::error_chain(err.as_ref()));
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // The one and only read of the environment; everything below gets typed config.
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let resolved = esper_runtime::config::load(cli.config.as_deref(), &env)
        .context("resolving configuration")?;
    match cli.command {
        Command::Config => {
            println!("# run id: {}", resolved.run_id);
            for source in &resolved.sources {
                println!("# from {source}");
            }
            print!("{}", resolved.config.to_toml()?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Train {
            resume,
            script,
            allow_config_change,
            exit_with_stdin,
        } => {
            if exit_with_stdin {
                exit_when_stdin_closes();
            }
            let mut resolved = resolved;
            let resuming = resume.is_some();
            if let Some(run_id) = resume {
                resolved.resume(&run_id).context("--resume")?;
            }
            resolved.config.tolaria.checkpoint.allow_config_change |= allow_config_change;
            if let Some(path) = script {
                resolved.config.tamiyo.controller = tamiyo::Controller::Script;
                resolved.config.tamiyo.script = Some(path);
            }
            // The whole run executes on the compute pool (esper_ops::threads).
            let pool = esper_ops::ComputePool::new(resolved.config.tolaria.cpu_threads)
                .context("starting the compute pool (tolaria.cpu_threads)")?;
            pool.run(|| train(&resolved, pool.threads(), resuming))
        }
        Command::Urza { command } => cli::urza(&resolved, command),
        Command::Tamiyo {
            command:
                cli::TamiyoCommand::Serve {
                    listen,
                    max_sessions,
                },
        } => {
            esper_runtime::tamiyo_cmd::serve(&resolved, listen.as_deref(), max_sessions)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy { command } => cli::policy(&resolved, command, &env),
        Command::Cohort {
            action,
            file,
            jobs,
            fleet,
        } => {
            use esper_runtime::cohort::command;
            let verdict = match (action, file) {
                (Some(CohortAction::Verdict { file }), _) => command::verdict(&file)?,
                (None, Some(file)) => {
                    let jobs = jobs.unwrap_or_else(|| {
                        std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
                    });
                    let exe = std::env::current_exe().context("locating the esper executable")?;
                    let fleet = fleet
                        .then(|| esper_runtime::fleet::submit::Fleet::connect(&resolved))
                        .transpose()?;
                    command::run_cohort(&file, jobs, exe, &env, fleet.as_ref())?
                }
                (None, None) => anyhow::bail!("esper cohort: give a cohort file (see cohorts/)"),
            };
            print!("{verdict}");
            Ok(if verdict.all_pass() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Worker {
            dir,
            max_jobs,
            keep_runs,
            threads,
        } => {
            esper_runtime::preflight::require(&resolved, false)?;
            let options = esper_runtime::fleet::worker::Options {
                dir: dir.unwrap_or_else(|| resolved.config.run.dir.join("fleet")),
                exe: std::env::current_exe().context("locating the esper executable")?,
                env: esper_runtime::cohort::worker_env(&env),
                max_jobs,
                keep_runs,
                cpu_threads: threads,
            };
            esper_runtime::fleet::worker::serve(&resolved, &options)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect { run } => {
            let dir = esper_runtime::inspect::locate(&run, &resolved.config.run.dir)?;
            print!("{}", esper_runtime::inspect::render(&dir)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Report { target, out } => {
            let path =
                esper_runtime::report::write(&target, &resolved.config.run.dir, out.as_deref())?;
            println!("esper report: wrote {}", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Runs { command } => {
            use esper_runtime::cohort::command;
            let root = resolved.config.run.dir.clone();
            let store = root.join("esper.sqlite");
            match command {
                RunsCommand::Import { dir } => {
                    print!(
                        "{}",
                        command::import(dir.as_deref().unwrap_or(&root), &store)?
                    )
                }
                RunsCommand::List { cohort } => {
                    print!("{}", command::list(&store, cohort.as_deref())?)
                }
                RunsCommand::Show { run_id } => match command::show(&store, &run_id)? {
                    Some(text) => print!("{text}"),
                    None => anyhow::bail!(
                        "run {run_id} is not in {} (esper runs import first)",
                        store.display()
                    ),
                },
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Check => {
            println!(
                "esper {} — contract self-check (run {})",
                env!("CARGO_PKG_VERSION"),
                resolved.run_id
            );
            let report = esper_runtime::selfcheck::run(&resolved);
            println!("{report}");
            Ok(if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// `resuming`: the user asked for `--resume` (a run that finds no valid
/// checkpoint is then an error, not a fresh start).
fn train(
    resolved: &esper_runtime::Resolved,
    threads: usize,
    resuming: bool,
) -> anyhow::Result<ExitCode> {
    let mut config = resolved.config.tolaria.clone();
    if config.checkpoint.dir.is_none() {
        config.checkpoint.dir = Some(resolved.run_dir().join("checkpoints"));
    }
    // Preconditions first: nothing (no run directory) before they hold.
    let grows = resolved.config.tamiyo.controller != tamiyo::Controller::Off;
    esper_runtime::preflight::require(resolved, grows)?;
    // One writer per run; nothing is written until the run is known to start.
    let log =
        esper_runtime::runlog::RunLog::claim(resolved).context("opening the run directory")?;
    let changed = log.changed_training_keys(resolved)?;
    if !changed.is_empty() {
        if !config.checkpoint.allow_config_change {
            anyhow::bail!(
                "run {} was recorded with other training settings: {} differ from {}; \
                 resume with --allow-config-change to accept the change, or use another run id",
                resolved.run_id,
                changed.join(", "),
                log.dir().join("config.toml").display()
            );
        }
        eprintln!(
            "esper train: warning: training settings changed since the run was recorded: {}",
            changed.join(", ")
        );
    }
    let seed = resolved.config.run.seed;
    let budgets = &resolved.config.leyline.budgets.performance;
    let trainer = match tolaria::Trainer::new(config.clone(), seed, &resolved.run_id) {
        Ok(trainer) => trainer,
        Err(e) => {
            log.abandon();
            return Err(anyhow::Error::new(e).context("setting up training"));
        }
    };
    if resolved.config.tamiyo.controller == tamiyo::Controller::Script
        && let Err(e) = control::load_script(resolved, trainer.host().slots())
    {
        log.abandon();
        return Err(anyhow::Error::new(e).context("checking the schedule"));
    }
    if resolved.config.tamiyo.controller == tamiyo::Controller::Learned
        && resolved.config.tamiyo.remote.is_none()
        && let Err(e) = control::load_learned(resolved)
    {
        log.abandon();
        return Err(anyhow::Error::new(e).context("checking the policy file"));
    }
    if resuming && trainer.resumed_from().is_none() {
        let skipped = trainer.skipped_checkpoints();
        // A run killed before its first checkpoint (none written, none
        // skipped, no epoch recorded) has lost nothing: its recorded config
        // and seed start it again exactly, so `--resume` does that, saying
        // so. Any recorded epoch or a damaged checkpoint keeps the error.
        if skipped.is_empty() && esper_runtime::runlog::read_metrics(log.dir())?.0.is_empty() {
            eprintln!(
                "esper train: run {} stopped before its first checkpoint and recorded no epoch: it starts again from the beginning",
                resolved.run_id
            );
        } else {
            let why: Vec<String> = skipped
                .iter()
                .map(|c| format!("{}: {}", c.path.display(), c.reason))
                .collect();
            anyhow::bail!(
                "--resume {}: no valid checkpoint remains in {}{}",
                resolved.run_id,
                config
                    .checkpoint
                    .dir
                    .as_deref()
                    .unwrap_or(log.dir())
                    .display(),
                if why.is_empty() {
                    " (there are none)".to_owned()
                } else {
                    format!("; skipped: {}", why.join("; "))
                }
            );
        }
    }
    let mut log = log;
    let rewound = log
        .rewind(trainer.epoch(), trainer.global_step())
        .context("rewinding the run's logs to its checkpoint")?;
    if rewound != esper_runtime::runlog::Rewound::default() {
        eprintln!(
            "esper train: dropped {} epoch line(s) and {} decision line(s) past epoch {} (step {}), the state resumed from",
            rewound.epochs,
            rewound.decisions,
            trainer.epoch(),
            trainer.global_step()
        );
    }
    let (_, damaged) = esper_runtime::runlog::read_metrics(log.dir())?;
    for (line, why) in damaged {
        eprintln!(
            "esper train: warning: {} line {line} is not an epoch record (kept): {why}",
            log.dir().join("metrics.jsonl").display()
        );
    }
    log.start(resolved).context("opening the run directory")?;
    let trainer = trainer
        .with_experiment(resolved.config.run.experiment.clone())
        .with_rollback_deadlines(
            Duration::from_secs_f64(budgets.fast_rollback_ms / 1e3),
            Duration::from_secs_f64(budgets.full_rollback_ms / 1e3),
        );
    let params: usize = trainer
        .host()
        .parameters()
        .iter()
        .map(|p| p.var.elem_count())
        .sum();
    let (train, validation) = trainer.dataset_sizes();
    println!(
        "esper train: run {} | host {} ({params} parameters, slots {}) | {train} train / {validation} validation images | {} epochs of batch {} on {:?} ({threads} threads) | seed {seed}",
        resolved.run_id,
        trainer.host().name(),
        trainer
            .host()
            .slots()
            .iter()
            .map(|s| format!("{}{:?}", s.id, s.feature_shape))
            .collect::<Vec<_>>()
            .join(" "),
        config.epochs,
        config.batch_size,
        config.device,
    );
    for corrupt in trainer.skipped_checkpoints() {
        eprintln!(
            "esper train: warning: skipped corrupt checkpoint {}: {}",
            corrupt.path.display(),
            corrupt.reason
        );
    }
    if let Some(from) = trainer.resumed_from() {
        println!(
            "esper train: resumed from {} (epoch {}, step {})",
            from.display(),
            trainer.epoch(),
            trainer.global_step()
        );
    }
    let bus = esper_runtime::RunBus::start(resolved, "tolaria").context("connecting to Oona")?;
    let exporter = match resolved.config.runtime.listen_addr()? {
        Some(addr) => {
            let exporter = esper_runtime::exporter::install(addr, &bus.handle())
                .context("starting the metrics listener")?;
            println!(
                "esper train: metrics on http://{}/metrics (and /healthz, /readyz)",
                exporter.addr()
            );
            Some(exporter)
        }
        None => None,
    };
    esper_runtime::exporter::record_system_mode(bus.supervisor().mode());
    let signals = esper_runtime::signals::StopSignals::install(
        &bus.handle(),
        "esper train",
        "stopping after the epoch in progress (its checkpoint is written); signal again to stop now (the last checkpoint stands)"
            .to_owned(),
    )?;
    // Emergency signals leave the moment they are raised.
    let trainer = trainer.with_emergency_sink(bus.emergency_sink());
    let slots = trainer.host().slots().to_vec();
    let device = trainer.device().clone();
    let plane = match control::build(resolved, &slots, &device, &bus) {
        Ok(plane) => plane,
        Err(e) => {
            // Nothing trained: a run this command created is removed.
            log.abandon();
            return Err(anyhow::Error::new(e).context("setting up the controller"));
        }
    };
    let (mut trainer, grows) = match plane {
        Some(plane) => {
            println!(
                "esper train: controller {} (decisions in {})",
                plane.policy,
                plane.hook.log_path().display()
            );
            let fence_deadline = Duration::from_secs_f64(budgets.control_fence_ms / 1e3);
            let trainer = trainer
                .with_kasmina(plane.kasmina)
                .context("attaching Kasmina")?
                .with_control_hook(Box::new(plane.hook), fence_deadline)
                .context("resuming the controller")?;
            (trainer, true)
        }
        None => {
            println!("esper train: controller off — the host does not grow");
            (trainer, false)
        }
    };
    let mut summary = esper_runtime::epoch_end::ControlSummary::default();
    let mut narrator = esper_runtime::narrate::Narrator::new();
    let say = |notes: Vec<String>| {
        for note in notes {
            eprintln!("esper train: {note}");
        }
    };
    println!("esper train: writing {}", log.dir().display());
    if let Some(exporter) = &exporter {
        exporter.set_ready(true);
    }
    while trainer.epoch() < config.epochs
        && trainer.stop_requested().is_none()
        && signals.received().is_none()
    {
        let progress = epoch_progress(trainer.epoch() + 1, config.epochs);
        let mut last_step: Option<std::time::Instant> = None;
        let r = match trainer.run_epoch_with_progress(&mut |p| {
            let now = std::time::Instant::now();
            if let Some(before) = last_step.replace(now) {
                esper_runtime::exporter::record_step(
                    (now - before).as_secs_f64(),
                    p.global_step,
                    p.loss,
                    p.accuracy,
                    p.images_per_second,
                );
            }
            progress.set_length(p.batches as u64);
            progress.set_position(p.batch as u64);
            // Events as they happen, above the bar (and in a worker's log).
            let lines = narrator.live(p.events);
            if !lines.is_empty() {
                progress.suspend(|| {
                    for line in lines {
                        eprintln!("esper train: {line}");
                    }
                });
            }
            let seeds = if p.seeds.is_empty() {
                String::new()
            } else {
                let line = p
                    .seeds
                    .iter()
                    .map(|s| {
                        let stage = leyline::lifecycle::stage_label(s.stage);
                        format!("{} {stage} α{:.2}", s.slot, s.alpha)
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                format!(" | seeds {line}")
            };
            progress.set_message(format!(
                "step {} | loss {:.4} | acc {:5.1}% | {:.0} img/s{seeds}",
                p.global_step,
                p.loss,
                100.0 * p.accuracy,
                p.images_per_second
            ));
        }) {
            Ok(r) => r,
            Err(e) => {
                progress.abandon();
                say(esper_runtime::epoch_end::flush_events(
                    &bus,
                    &mut trainer,
                    &mut summary,
                    &mut narrator,
                ));
                say(bus.outage_notes());
                close_bus(bus, resolved, exporter)?;
                return Err(e).context("training");
            }
        };
        progress.finish_and_clear();
        log.append(&esper_runtime::runlog::EpochLine::new(
            &resolved.run_id,
            &r,
            &trainer.seed_summaries(),
        ))
        .context("writing metrics.jsonl")?;
        if r.rollbacks > 0 {
            println!(
                "esper train: epoch {}: {} rollback(s) to the last known-good state",
                r.epoch, r.rollbacks
            );
        }
        println!(
            "epoch {:>3} | step {:>6} | train loss {:.4} acc {:6.2}% | validation loss {:.4} acc {:6.2}% | |g| {:.3} | step p50 {:.1} ms p95 {:.1} ms | {:>6.0} img/s | {} MMAC/img | {:.1} s",
            r.epoch,
            r.global_step,
            r.train_loss,
            100.0 * r.train_accuracy,
            r.validation.loss,
            100.0 * r.validation.accuracy,
            r.grad_norm,
            r.step_ms_p50,
            r.step_ms_p95,
            r.train_images_per_second,
            millions(r.forward_macs_per_image),
            r.seconds
        );
        for s in trainer.seed_summaries() {
            println!(
                "          {}",
                esper_runtime::epoch_end::seed_line(&s, trainer.host_forward_macs())
            );
        }
        esper_runtime::exporter::record_epoch(
            &r,
            &trainer.seed_summaries(),
            trainer.parameter_count() as i64 - params as i64,
        );
        say(esper_runtime::epoch_end::publish_epoch(
            resolved,
            &bus,
            &mut trainer,
            &r,
            &mut summary,
            &mut narrator,
        )
        .context("publishing the epoch")?);
    }
    trainer.finish().context("writing the last checkpoints")?;
    if let Some(signal) = signals.received() {
        // Not finished: no summary, so `--resume` (or the cohort) continues it.
        println!(
            "esper train: interrupted by {} after epoch {} (step {}), its checkpoint written; continue with `esper train --resume {}`",
            signal.name(),
            trainer.epoch(),
            trainer.global_step(),
            resolved.run_id
        );
        bus.finish().context("closing the bus")?;
        return Ok(ExitCode::from(signal.exit_code()));
    }
    let status = match trainer.stop_requested() {
        Some(reason) => format!("stopped: {reason}"),
        None => "completed".to_owned(),
    };
    let run_summary = log
        .finish(esper_runtime::runlog::RunSummary {
            run_id: resolved.run_id.clone(),
            host: trainer.host().name().to_owned(),
            controller: match resolved.config.tamiyo.controller {
                tamiyo::Controller::Heuristic => "heuristic",
                tamiyo::Controller::Script => "script",
                tamiyo::Controller::Off => "off",
                tamiyo::Controller::Learned => "learned",
            }
            .to_owned(),
            off_switch: resolved.config.kasmina.off_switch,
            seed,
            status,
            epochs: 0,
            global_step: 0,
            validation_accuracy: f64::NAN,
            validation_loss: f64::NAN,
            train_loss: f64::NAN,
            parameters_initial: params as u64,
            parameters_final: trainer.parameter_count(),
            seeds: trainer.seed_outcomes(),
            step_ms_p50: f64::NAN,
            train_seconds: 0.0,
            finished_ms: leyline::unix_now_ms(),
            host_layer_macs: trainer.host().layer_macs(),
            forward_macs_final: trainer.forward_macs(),
            training_flops_per_image: None,
        })
        .context("writing summary.json")?;
    for trace in trainer.profiler_traces() {
        println!("esper train: profiler trace {}", trace.display());
    }
    let sla = trainer.rollback_stats();
    if sla.fast + sla.full > 0 {
        println!(
            "esper train: rollbacks — fast {} ({} over {} ms), full {} ({} over {} ms)",
            sla.fast,
            sla.fast_missed,
            budgets.fast_rollback_ms,
            sla.full,
            sla.full_missed,
            budgets.full_rollback_ms
        );
    }
    if let Some(reason) = trainer.stop_requested() {
        println!("esper train: stopped by the control plane: {reason}");
    }
    if grows {
        print!(
            "{}",
            summary.render(&trainer.seed_outcomes(), trainer.host_forward_macs())
        );
    }
    println!(
        "esper train: done — validation accuracy {:.2}% after {} steps | parameters {} (+{}) | forward {} MMAC/image (host {}) | training {} MFLOP/image | {:.1} s training",
        100.0 * run_summary.validation_accuracy,
        run_summary.global_step,
        run_summary.parameters_final,
        run_summary.parameters_added(),
        millions(run_summary.forward_macs_final.map(|m| m as f64)),
        millions(
            run_summary
                .host_layer_macs
                .as_ref()
                .map(|l| l.iter().map(|l| l.macs as f64).sum())
        ),
        millions(run_summary.training_flops_per_image),
        run_summary.train_seconds
    );
    close_bus(bus, resolved, exporter)?;
    Ok(ExitCode::SUCCESS)
}

/// Gives held publications their last chance and prints what the bus did:
/// the end of every run, a failed one included, so that an emergency signal
/// raised while the bus was down still goes out.
fn close_bus(
    bus: esper_runtime::bus::RunBus,
    resolved: &esper_runtime::Resolved,
    exporter: Option<esper_runtime::exporter::Exporter>,
) -> anyhow::Result<()> {
    if let Some(exporter) = exporter {
        // Not ready from here on, before the announcement below: a scraper
        // that reads it may probe /readyz at once and must see 503.
        exporter.set_ready(false);
        let linger = Duration::from_secs(resolved.config.runtime.linger_s);
        if !linger.is_zero() {
            println!(
                "esper train: serving the final metrics for {} s more (runtime.linger_s)",
                linger.as_secs()
            );
        }
        exporter.finish(&bus.handle(), linger);
    }
    let summary = bus.finish().context("closing the bus")?;
    for line in summary.lines(&resolved.config.oona.backend) {
        println!("esper train: {line}");
    }
    Ok(())
}

/// `x / 10⁶` with three decimals, or "not counted" (the host does not
/// report its layers).
fn millions(x: Option<f64>) -> String {
    x.map_or("not counted".to_owned(), |v| format!("{:.3}", v / 1e6))
}

/// Ends the process when standard input reaches its end (the cohort that
/// started this worker is gone). The exit is abrupt, like a kill: checkpoints
/// and the metrics log are crash-safe, and the cohort resumes the run.
fn exit_when_stdin_closes() {
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        eprintln!("esper train: the cohort process is gone (stdin closed): exiting");
        std::process::exit(130);
    });
}

/// A progress bar for one epoch on stderr; invisible when stderr is not a
/// terminal (logs, CI), where the per-epoch lines on stdout say it all.
fn epoch_progress(epoch: u32, epochs: u32) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    let style = indicatif::ProgressStyle::with_template(
        "{prefix} [{bar:30.cyan/blue}] {pos}/{len} batches | {msg} | {elapsed}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(format!("epoch {epoch}/{epochs}"));
    bar
}
