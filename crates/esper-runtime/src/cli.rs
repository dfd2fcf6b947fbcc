//! The `esper` program's command line (clap) and the dispatch of its
//! smaller command groups; `main.rs` runs training and the rest.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Esper: morphogenetic training — a network that grows while it trains.
#[derive(Debug, Parser)]
#[command(name = "esper", version, about, long_about = None)]
pub(crate) struct Cli {
    /// Configuration file (TOML); defaults to $ESPER_CONFIG, else built-in defaults.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Resolve the configuration and run the contract self-check.
    Check,
    /// Print the resolved configuration as TOML (secrets are never printed).
    Config,
    /// Train the configured reference host while the controller
    /// (`tamiyo.controller`, heuristic by default) grows it with seeds,
    /// reporting each epoch; writes `<run.dir>/<run id>/`.
    Train {
        /// Continue run RUN_ID from its newest valid checkpoint (its directory
        /// under `run.dir` must exist).
        #[arg(long, value_name = "RUN_ID")]
        resume: Option<String>,
        /// Drive the seeds from a schedule file instead of the configured
        /// controller (sets tamiyo.controller = "script").
        #[arg(long, value_name = "SEEDS_TOML")]
        script: Option<PathBuf>,
        /// With --resume: continue even though the training settings differ
        /// from the run's recorded ones (the change is recorded).
        #[arg(long, requires = "resume")]
        allow_config_change: bool,
        /// Exit (as if killed) when standard input closes: cohort workers
        /// use it so that no run outlives its cohort process.
        #[arg(long, hide = true)]
        exit_with_stdin: bool,
    },
    /// Run a cohort (arms x run seeds, each an `esper train` run in a worker
    /// process), then print its verdict; `esper cohort verdict FILE` judges
    /// the runs already there. Exits 0 only when every claim PASSes, 1
    /// otherwise, 2 on an error.
    #[command(args_conflicts_with_subcommands = true)]
    Cohort {
        #[command(subcommand)]
        action: Option<CohortAction>,
        /// The cohort file (see cohorts/).
        file: Option<PathBuf>,
        /// Runs at a time (default: one per core).
        #[arg(long)]
        jobs: Option<usize>,
        /// Send the runs to `esper worker`s through Oona on Redis instead
        /// of running them here (see docs/OPERATIONS.md).
        #[arg(long)]
        fleet: bool,
    },
    /// Take run jobs from the fleet (Oona on Redis: `oona.backend`) and run
    /// each as `esper train`, one at a time, answering with its results;
    /// `esper cohort --fleet` and `esper policy train --fleet` submit them.
    /// The first SIGINT/SIGTERM finishes the job in progress, then exits.
    Worker {
        /// Where runs go (default: `<run.dir>/fleet`); each worker process
        /// uses `<DIR>/<host>-<pid>/`.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Stop after this many jobs.
        #[arg(long, value_name = "N")]
        max_jobs: Option<u64>,
        /// Keep each finished run's directory (with its checkpoints).
        #[arg(long)]
        keep_runs: bool,
        /// Compute threads per run (default: the job's own
        /// `tolaria.cpu_threads`).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Write an HTML report (SVG charts, verdict and run tables) for a
    /// cohort file, a run directory or a run id under `run.dir`.
    Report {
        /// A cohort file, a run directory, or a run id.
        target: PathBuf,
        /// Where to write it (default: report.html in the run directory, or
        /// in `<cohort dir>/cohorts/<name>/`).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// One run directory, read-only: config, status, epochs, seeds,
    /// decisions, field reports, and every checkpoint verified.
    Inspect {
        /// A run directory, or a run id under `run.dir`.
        run: String,
    },
    /// The run store (`<run.dir>/esper.sqlite`): import, list, show.
    Runs {
        #[command(subcommand)]
        command: RunsCommand,
    },
    /// The blueprint library: list, show, forge, verify, serve.
    Urza {
        #[command(subcommand)]
        command: UrzaCommand,
    },
    /// Learned-controller policy files: init, show, train, eval.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Tamiyo as a service: `esper tamiyo serve`.
    Tamiyo {
        #[command(subcommand)]
        command: TamiyoCommand,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum TamiyoCommand {
    /// Serve controller sessions over gRPC to trainers anywhere (they set
    /// `tamiyo.remote = "http://HOST:PORT"`), with this process's
    /// `[tamiyo]` policy (heuristic or learned). SIGINT/SIGTERM stops it.
    Serve {
        /// Address to listen on (default 127.0.0.1:50052; 0.0.0.0:PORT for
        /// other machines).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// Most sessions (trainers) at once.
        #[arg(long, default_value_t = 64)]
        max_sessions: usize,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCommand {
    /// Write an untrained policy (seeded weights), signed with the policy
    /// key (`tamiyo.learned.key`, else `leyline.security.secret`).
    Init {
        /// Where to write it (e.g. policies/start.safetensors).
        out: PathBuf,
        /// Width of every node embedding.
        #[arg(long, default_value_t = 32)]
        hidden: usize,
        /// Seed of the initial weights.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Verify a policy file (signature, schema, weights) and print its
    /// manifest.
    Show {
        /// The policy file.
        policy: PathBuf,
    },
    /// Train a policy with PPO on real growth episodes (`esper train` runs
    /// in worker processes; hosts, episodes and reward in `[tamiyo.ppo]`);
    /// writes OUT after every update. Resumable.
    Train {
        /// The policy file to write (and `<OUT>.learner.json` beside it).
        #[arg(long)]
        out: PathBuf,
        /// Updates to reach.
        #[arg(long, default_value_t = 20)]
        updates: u32,
        /// Episodes at a time (default: one per core).
        #[arg(long)]
        jobs: Option<usize>,
        /// Start from this policy instead of fresh weights.
        #[arg(long, value_name = "POLICY")]
        from: Option<PathBuf>,
        /// Width of fresh weights.
        #[arg(long, default_value_t = 32)]
        hidden: usize,
        /// Seed of fresh weights.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Continue OUT from its last finished update.
        #[arg(long, conflicts_with = "from")]
        resume: bool,
        /// Send the runs to `esper worker`s through Oona on Redis instead
        /// of running them here (see docs/OPERATIONS.md).
        #[arg(long)]
        fleet: bool,
        /// Make the first N updates behaviour cloning: in their episodes
        /// the heuristic decides and the policy learns to take its actions
        /// (a warm start for PPO, which runs the updates after).
        #[arg(long, value_name = "N", default_value_t = 0)]
        imitate: u32,
    },
    /// Run a cohort with the policy as one more arm (`learned`, greedy) and
    /// print the verdict; exits like `esper cohort`.
    Eval {
        /// The policy file.
        policy: PathBuf,
        /// The cohort file (e.g. cohorts/held-out/cnn-impaired.toml).
        #[arg(long)]
        cohort: PathBuf,
        /// The arm's name.
        #[arg(long, default_value = "learned")]
        arm: String,
        /// Runs at a time (default: one per core).
        #[arg(long)]
        jobs: Option<usize>,
        /// Send the runs to `esper worker`s through Oona on Redis instead
        /// of running them here (see docs/OPERATIONS.md).
        #[arg(long)]
        fleet: bool,
    },
}

/// `esper policy …`.
pub(crate) fn policy(
    resolved: &esper_runtime::Resolved,
    command: PolicyCommand,
    env: &std::collections::BTreeMap<String, String>,
) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    use esper_runtime::policy;
    let jobs_or_cores = |jobs: Option<usize>| {
        jobs.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
        })
    };
    let text = match command {
        PolicyCommand::Eval {
            policy: path,
            cohort,
            arm,
            jobs,
            fleet,
        } => {
            use esper_runtime::cohort::{CohortFile, command};
            // The policy is checked here first: a bad file is one error,
            // not one failed run per seed.
            policy::show(resolved, &path)?;
            let mut file = CohortFile::load(&cohort)?;
            file.add_learned_arm(
                &arm,
                &path,
                policy::key_source(resolved),
                &resolved.config.tamiyo.learned,
            )?;
            let exe = std::env::current_exe().context("locating the esper executable")?;
            let fleet = fleet
                .then(|| esper_runtime::fleet::submit::Fleet::connect(resolved))
                .transpose()?;
            let verdict = command::run_file(&file, jobs_or_cores(jobs), exe, env, fleet.as_ref())?;
            print!("{verdict}");
            return Ok(if verdict.all_pass() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        PolicyCommand::Init { out, hidden, seed } => policy::init(resolved, &out, hidden, seed)?,
        PolicyCommand::Show { policy: path } => policy::show(resolved, &path)?,
        PolicyCommand::Train {
            out,
            updates,
            jobs,
            from,
            hidden,
            seed,
            resume,
            fleet,
            imitate,
        } => {
            let options = policy::train::Options {
                out,
                start: from,
                hidden,
                init_seed: seed,
                updates,
                jobs: jobs_or_cores(jobs),
                resume,
                fleet,
                imitate,
            };
            let exe = std::env::current_exe().context("locating the esper executable")?;
            match policy::train::train(resolved, &options, exe, env)? {
                Some(_) => format!("esper policy train: wrote {}\n", options.out.display()),
                None => format!(
                    "esper policy train: {} is already at update {updates}\n",
                    options.out.display()
                ),
            }
        }
    };
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Subcommand)]
pub(crate) enum CohortAction {
    /// Import the cohort's runs and print the verdict, running nothing.
    Verdict {
        /// The cohort file.
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum RunsCommand {
    /// Import run directories (every one under DIR, default `run.dir`);
    /// re-importing a run replaces its rows.
    Import {
        /// Directory holding run directories.
        dir: Option<PathBuf>,
    },
    /// One line per run.
    List {
        /// Only this cohort's runs.
        #[arg(long)]
        cohort: Option<String>,
    },
    /// One run: figures, epochs, seeds.
    Show {
        /// Run id.
        run_id: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum UrzaCommand {
    /// List the catalog (through the remote service when `urza.remote` is set).
    List {
        /// Only this tier: safe, experimental or high_risk.
        #[arg(long)]
        tier: Option<String>,
        /// Only blueprints fitting this slot kind: dense or conv2d.
        #[arg(long)]
        slot_kind: Option<String>,
        /// Only blueprints with this tag.
        #[arg(long)]
        tag: Option<String>,
        /// Include quarantined blueprints.
        #[arg(long)]
        all: bool,
    },
    /// Show one blueprint: descriptor, parameters, stored artifacts.
    Show {
        /// Blueprint id, e.g. conv.residual.
        blueprint_id: String,
    },
    /// Build, probe and store an artifact for a slot (or print the stored one).
    Forge {
        /// Blueprint id.
        blueprint_id: String,
        /// Slot: dense:F or conv2d:CxHxW.
        #[arg(long)]
        slot: String,
        /// Blueprint parameter name=value (repeatable; defaults otherwise).
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
    },
    /// Re-hash and rebuild every artifact of the local library; exits 1 when
    /// any is corrupt or missing (they are quarantined).
    Verify,
    /// Serve the local library over gRPC, forwarding catalog changes onto Oona.
    Serve {
        /// host:port to listen on (default: urza.listen).
        #[arg(long)]
        listen: Option<String>,
    },
}

/// `esper urza …`.
pub(crate) fn urza(
    resolved: &esper_runtime::Resolved,
    command: UrzaCommand,
) -> anyhow::Result<ExitCode> {
    use esper_runtime::urza_cmd;
    match command {
        UrzaCommand::List {
            tier,
            slot_kind,
            tag,
            all,
        } => {
            let filter = urza_cmd::ListFilter {
                tier,
                slot_kind,
                tag,
                all,
            };
            print!("{}", urza_cmd::list(resolved, &filter)?);
        }
        UrzaCommand::Show { blueprint_id } => {
            print!("{}", urza_cmd::show(resolved, &blueprint_id)?)
        }
        UrzaCommand::Forge {
            blueprint_id,
            slot,
            params,
        } => print!(
            "{}",
            urza_cmd::forge(resolved, &blueprint_id, &slot, &params)?
        ),
        UrzaCommand::Verify => {
            let (report, healthy) = urza_cmd::verify(resolved)?;
            print!("{report}");
            if !healthy {
                return Ok(ExitCode::FAILURE);
            }
        }
        UrzaCommand::Serve { listen } => urza_cmd::serve(resolved, listen.as_deref())?,
    }
    Ok(ExitCode::SUCCESS)
}
