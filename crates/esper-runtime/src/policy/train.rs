//! `esper policy train`: PPO on real growth episodes.
//!
//! Each update runs `tamiyo.ppo.episodes_per_update` episodes — ordinary
//! `esper train` runs with the learned controller sampling from a snapshot
//! of the current policy — in worker processes through the cohort runner,
//! hosts taken in turn from `tamiyo.ppo.hosts` and run seeds from the seed
//! pool. Every (host, seed) also has a baseline run with no controller (run
//! once, then reused): the reward of each decision is the change in the
//! episode's standing against it ([`super::reward`]). The trajectories the
//! episodes recorded give the graphs, masks, actions and log-probabilities;
//! GAE turns rewards and values into advantages; [`tamiyo::ppo::Learner`]
//! updates the weights. After every update the policy file is written
//! (signed) with the update's figures in its manifest, and the learner's
//! progress in `<policy>.learner.json`, so `--resume` continues after the
//! last finished update (the optimizer's moments start afresh).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tamiyo::gnn::{GnnConfig, GnnModel, PolicyManifest, load_policy, save_policy};
use tamiyo::ppo::{Learner, PpoConfig, Sample, Step, gae};

use super::reward::{Rent, RunRecord, rewards};
use crate::cohort::runner::{self, Executor, Workers};
use crate::cohort::{CohortFile, PlannedRun};
use crate::config::Resolved;
use crate::error::{Error, Result};
use crate::runlog::{RunSummary, read_metrics};

pub use super::line::{UpdateLine, describe};

/// What `esper policy train` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// The policy file written after every update.
    pub out: PathBuf,
    /// The policy to start from (default: fresh weights).
    pub start: Option<PathBuf>,
    /// Width of fresh weights.
    pub hidden: usize,
    /// Seed of fresh weights.
    pub init_seed: u64,
    /// Updates to reach (counting those of a resumed run).
    pub updates: u32,
    /// Episodes at a time.
    pub jobs: usize,
    /// Continue from `out` and its learner state.
    pub resume: bool,
    /// Run the episodes on the fleet (`esper worker`s) instead of here.
    pub fleet: bool,
    /// Updates (from the first) that are behaviour cloning: the heuristic
    /// decides in their episodes and the policy learns its actions.
    pub imitate: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LearnerState {
    /// Updates finished.
    updates: u32,
    /// Episodes trained on.
    episodes: u64,
    /// One line per update.
    history: Vec<UpdateLine>,
}

fn state_path(out: &Path) -> PathBuf {
    out.with_extension("learner.json")
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::RunDir {
        path: path.to_path_buf(),
        source,
    }
}

fn tamiyo_error(e: tamiyo::Error) -> Error {
    Error::Runtime(format!("tamiyo: {e}"))
}

pub(super) fn fail(what: impl Into<String>) -> Error {
    Error::Runtime(what.into())
}

/// Where this policy's episodes live: `<run.dir>/policy-train/<stem>/`.
fn home(resolved: &Resolved, out: &Path) -> PathBuf {
    let stem = out
        .file_stem()
        .map_or_else(|| "policy".into(), |s| s.to_string_lossy().into_owned());
    let dir = resolved.config.run.dir.join("policy-train").join(stem);
    // Absolute: the episodes' cohort files live in a folder of their own,
    // and paths in them are read relative to it.
    std::path::absolute(&dir).unwrap_or(dir)
}

/// One episode to run: a host and a run seed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Episode {
    pub(super) host: String,
    pub(super) seed: u64,
}

/// The episodes of update `update` (from 0): hosts in turn, each host's
/// seeds walking its pool.
pub(super) fn episodes(ppo: &PpoConfig, update: u32) -> Vec<Episode> {
    let per = u64::from(ppo.episodes_per_update);
    let hosts = ppo.hosts.len() as u64;
    (0..per)
        .map(|k| {
            let n = u64::from(update) * per + k;
            Episode {
                host: ppo.hosts[(n % hosts) as usize].clone(),
                seed: ppo.seed_pool_start + (n / hosts) % ppo.seed_pool_size,
            }
        })
        .collect()
}

/// Writes the cohort file of one host's episodes of update `update` and
/// loads it.
pub(super) fn cohort(
    resolved: &Resolved,
    home: &Path,
    host: &str,
    seeds: &[u64],
    update: u32,
    snapshot: &Path,
    imitate: bool,
) -> Result<CohortFile> {
    let ppo = &resolved.config.tamiyo.ppo;
    let stem = home
        .file_name()
        .map_or_else(|| "policy".into(), |s| s.to_string_lossy().into_owned());
    let mut tolaria = toml::Table::new();
    tolaria.insert("host".into(), host.into());
    tolaria.insert("epochs".into(), i64::from(ppo.episode_epochs).into());
    if let Some(n) = ppo.episode_train_size {
        tolaria.insert("train_size".into(), (n as i64).into());
    }
    let mut config = toml::Table::new();
    config.insert("tolaria".into(), tolaria.into());
    let mut baseline = toml::Table::new();
    baseline.insert("kind".into(), "static-small".into());
    baseline.insert("name".into(), "baseline".into());
    let mut file = toml::Table::new();
    file.insert("name".into(), format!("{stem}-{host}").into());
    file.insert(
        "seeds".into(),
        toml::Value::Array(seeds.iter().map(|&s| (s as i64).into()).collect()),
    );
    file.insert("dir".into(), home.join("runs").display().to_string().into());
    file.insert("config".into(), config.into());
    file.insert("arm".into(), toml::Value::Array(vec![baseline.into()]));
    let dir = home.join("cohorts");
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let path = dir.join(format!("{stem}-{host}-u{update}.toml"));
    let text = toml::to_string(&file).map_err(|e| fail(format!("episode cohort: {e}")))?;
    std::fs::write(&path, text).map_err(io(&path))?;
    let mut file = CohortFile::load(&path).map_err(|e| fail(e.to_string()))?;
    // The episodes check the snapshot's signature with the key it was
    // signed with, and sample from this update's stream (or, imitating,
    // record the heuristic's decisions).
    let episode = file
        .add_learned_arm(
            &format!("u{update}"),
            snapshot,
            super::key_source(resolved),
            &resolved.config.tamiyo.learned,
        )
        .map_err(|e| fail(e.to_string()))?;
    let mut sampling = toml::Table::new();
    let exploration = if imitate { "imitate" } else { "sample" };
    sampling.insert("exploration".into(), exploration.into());
    sampling.insert("sample_seed".into(), i64::from(update).into());
    let mut tamiyo = toml::Table::new();
    tamiyo.insert("learned".into(), sampling.into());
    let mut overrides = toml::Table::new();
    overrides.insert("tamiyo".into(), tamiyo.into());
    crate::cohort::merge(&mut episode.config, overrides);
    Ok(file)
}

/// One finished episode, scored.
pub(super) struct Scored {
    run_id: String,
    host: String,
    pub(super) samples: Vec<Sample>,
    episode_return: f64,
    gain: f64,
    parameters_added: u64,
    germinations: usize,
}

/// Reads an episode's trajectory and metrics and its baseline's, and turns
/// them into samples with GAE advantages.
///
/// An episode that ended early (`halted`: the run failed after deciding —
/// the governor halts a run its seeds made diverge) is scored up to its last
/// epoch without rent (it has no summary to price seeds from), and its last
/// decision is charged `tamiyo.ppo.halt_penalty_points`: leaving it out
/// would never charge the policy for what ended it.
pub(super) fn score(
    episode: &PlannedRun,
    baseline: &PlannedRun,
    host: &str,
    ppo: &PpoConfig,
    halted: bool,
) -> Result<Scored> {
    let trajectory = tamiyo::trajectory::read(&episode.dir.join(tamiyo::trajectory::FILE_NAME))
        .map_err(tamiyo_error)?;
    if !trajectory.bad.is_empty() || trajectory.torn_tail.is_some() {
        return Err(fail(format!(
            "{}: the trajectory is damaged ({} bad record(s){})",
            episode.run_id,
            trajectory.bad.len(),
            if trajectory.torn_tail.is_some() {
                ", a torn tail"
            } else {
                ""
            }
        )));
    }
    // One decision per epoch end: the last record of each epoch wins (a
    // resumed episode repeats the epochs after its checkpoint).
    let mut by_epoch = BTreeMap::new();
    for r in trajectory.records {
        by_epoch.insert(r.epoch, r);
    }
    let records: Vec<_> = by_epoch.into_values().collect();
    if records.is_empty() {
        return Err(fail(format!("{}: no decision recorded", episode.run_id)));
    }
    let (learned_epochs, _) = read_metrics(&episode.dir)?;
    let (baseline_epochs, _) = read_metrics(&baseline.dir)?;
    let summary = match (RunSummary::read(&episode.dir)?, halted) {
        (Some(summary), false) => Some(summary),
        (None, true) => None,
        (None, false) => return Err(fail(format!("{}: no summary", episode.run_id))),
        (Some(_), true) => {
            return Err(fail(format!(
                "{}: failed, yet it has a summary",
                episode.run_id
            )));
        }
    };
    let seed_parameters: BTreeMap<String, u64> = summary
        .iter()
        .flat_map(|s| &s.seeds)
        .map(|s| (s.seed.clone(), s.parameters))
        .collect();
    let final_epoch = learned_epochs.iter().map(|l| l.epoch).max().unwrap_or(0);
    let rent = summary.as_ref().map(|_| Rent {
        param_points: ppo.param_rent_points,
        mac_points: ppo.mac_rent_points,
    });
    // Decisions after the last epoch logged (none, unless the log lost
    // lines) cannot be scored.
    let records: Vec<_> = records
        .into_iter()
        .filter(|r| r.epoch <= final_epoch)
        .collect();
    if records.is_empty() {
        return Err(fail(format!(
            "{}: no decision before its last logged epoch",
            episode.run_id
        )));
    }
    let host_parameters = summary.as_ref().map_or(0, |s| s.parameters_initial);
    let epochs: Vec<u32> = records.iter().map(|r| r.epoch).collect();
    let run = RunRecord {
        epochs: &learned_epochs,
        seed_parameters: &seed_parameters,
    };
    let mut rewards = rewards(
        &epochs,
        final_epoch,
        run,
        &baseline_epochs,
        host_parameters,
        rent,
    )
    .map_err(|e| fail(format!("{}: {e}", episode.run_id)))?;
    if halted && let Some(last) = rewards.last_mut() {
        *last -= ppo.halt_penalty_points;
    }
    let steps: Vec<Step> = records
        .iter()
        .zip(&rewards)
        .enumerate()
        .map(|(i, (r, &reward))| Step {
            reward,
            value: f64::from(r.value),
            done: i + 1 == records.len(),
        })
        .collect();
    let (advantages, targets) = gae(&steps, 0.0, ppo.gamma, ppo.lambda);
    let germinations = records
        .iter()
        .filter(|r| r.action.op == tamiyo::action_space::Op::Germinate)
        .count();
    let at_final = |epochs: &[crate::runlog::EpochLine]| {
        epochs
            .iter()
            .rev()
            .find(|l| l.epoch == final_epoch)
            .map_or(f64::NAN, |l| l.validation_accuracy)
    };
    let gain = 100.0 * (at_final(&learned_epochs) - at_final(&baseline_epochs));
    let samples = records
        .into_iter()
        .zip(advantages.into_iter().zip(targets))
        .map(|(r, (advantage, target))| Sample {
            graph: r.graph,
            mask: r.mask,
            action: r.action,
            old_log_prob: r.log_prob,
            advantage,
            target,
        })
        .collect();
    Ok(Scored {
        run_id: episode.run_id.clone(),
        host: host.to_owned(),
        samples,
        episode_return: rewards.iter().sum(),
        gain,
        parameters_added: summary.as_ref().map_or(0, RunSummary::parameters_added),
        germinations,
    })
}

/// The starting point: a resumed learner, a given policy, or fresh weights.
fn start(
    resolved: &Resolved,
    options: &Options,
    key: &leyline::security::SigningKey,
) -> Result<(GnnModel, PolicyManifest, LearnerState)> {
    let schema = &resolved.config.tamiyo.graph;
    if options.resume {
        let path = state_path(&options.out);
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let state: LearnerState =
            serde_json::from_str(&text).map_err(|e| fail(format!("{}: {e}", path.display())))?;
        let (model, manifest) = load_policy(&options.out, key, schema).map_err(tamiyo_error)?;
        if manifest.training_step != u64::from(state.updates) {
            return Err(fail(format!(
                "{} is at update {} but {} says {}: they are not one training run",
                options.out.display(),
                manifest.training_step,
                path.display(),
                state.updates
            )));
        }
        return Ok((model, manifest, state));
    }
    if state_path(&options.out).exists() {
        return Err(fail(format!(
            "{} exists: continue it with --resume, or train to another --out",
            state_path(&options.out).display()
        )));
    }
    let (model, mut manifest) = match &options.start {
        Some(path) => load_policy(path, key, schema).map_err(tamiyo_error)?,
        None => {
            let model = GnnModel::new(
                GnnConfig {
                    hidden: options.hidden,
                },
                options.init_seed,
            )
            .map_err(tamiyo_error)?;
            let manifest = PolicyManifest::new(
                options.hidden,
                schema,
                tamiyo::graph::Normalisers::new(0.05),
            );
            (model, manifest)
        }
    };
    manifest.training_step = 0;
    manifest.episodes = 0;
    if let Some(path) = &options.start {
        // Where the weights came from, for the provenance line.
        manifest.provenance = format!("from {}: {}", path.display(), manifest.provenance);
    }
    Ok((model, manifest, LearnerState::default()))
}

/// Runs the training; prints a line per update and returns the last.
pub fn train(
    resolved: &Resolved,
    options: &Options,
    exe: PathBuf,
    env: &BTreeMap<String, String>,
) -> Result<Option<UpdateLine>> {
    let key = super::key(resolved)?.clone();
    let ppo = resolved.config.tamiyo.ppo.clone();
    let (model, mut manifest, mut state) = start(resolved, options, &key)?;
    let home = home(resolved, &options.out);
    let snapshots = home.join("snapshots");
    std::fs::create_dir_all(&snapshots).map_err(io(&snapshots))?;
    // "from FILE: …" when the weights came from another policy (kept across
    // --resume, without the training line that follows it).
    let origin = manifest
        .provenance
        .split("; then esper policy train")
        .next()
        .unwrap_or_default()
        .to_owned();
    let mut learner = Learner::new(model, ppo.clone()).map_err(tamiyo_error)?;
    manifest.reward = serde_json::json!({
        "baseline": "the same host and run seed with no controller",
        "param_rent_points": ppo.param_rent_points,
        "mac_rent_points": ppo.mac_rent_points,
        "hosts": ppo.hosts,
        "episode_epochs": ppo.episode_epochs,
    });
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let jobs = options.jobs.max(1);
    let threads = (cores / jobs).max(1);
    let workers = Workers {
        exe,
        jobs,
        env: crate::cohort::worker_env(env),
    };
    let fleet = options
        .fleet
        .then(|| crate::fleet::submit::Fleet::connect(resolved))
        .transpose()
        .map_err(|e| fail(e.to_string()))?;
    println!(
        "esper policy train: {} -> update {} ({} episode(s) per update on {}, {} epochs each, {jobs} at a time); episodes in {}",
        options.out.display(),
        options.updates,
        ppo.episodes_per_update,
        ppo.hosts.join(", "),
        ppo.episode_epochs,
        home.display()
    );
    // The teacher's decisions of every imitation update so far: imitation
    // updates learn from all of them, PPO updates are regularised by them
    // (`tamiyo.ppo.imitation_coef`). On --resume they are read back from
    // the earlier updates' episodes.
    let mut demos = super::demos::stored(
        resolved,
        &home,
        options.imitate.min(state.updates),
        threads,
        env,
    )?;
    if !demos.is_empty() {
        println!(
            "  {} demonstration(s) of the teacher read back from the first {} update(s)",
            demos.len(),
            options.imitate.min(state.updates)
        );
    }
    let mut last = None;
    while state.updates < options.updates {
        let update = state.updates;
        let imitating = update < options.imitate;
        let started = Instant::now();
        let snapshot = snapshots.join(format!("u{update}.safetensors"));
        manifest.provenance = format!("esper policy train, update {update} snapshot");
        save_policy(&snapshot, learner.model(), &manifest, &key).map_err(tamiyo_error)?;
        let mut by_host: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for e in episodes(&ppo, update) {
            by_host.entry(e.host).or_default().push(e.seed);
        }
        let mut scored = Vec::new();
        let (mut failed, mut halts) = (0, 0);
        let bar = indicatif::ProgressBar::new(u64::from(ppo.episodes_per_update));
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} [{bar:30.cyan/blue}] {pos}/{len} runs | {elapsed} | {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(format!("update {}/{}", update + 1, options.updates));
        for (host, seeds) in &by_host {
            let file = cohort(resolved, &home, host, seeds, update, &snapshot, imitating)?;
            let plan = file.plan(threads, env).map_err(|e| fail(e.to_string()))?;
            // Episodes and the baselines not run yet.
            let todo = plan.iter().filter(|r| !runner::is_finished(r)).count();
            bar.inc_length(todo.saturating_sub(seeds.len()) as u64);
            let executor = match &fleet {
                Some(fleet) => Executor::Fleet(fleet),
                None => Executor::Local(&workers),
            };
            runner::run(&file, &plan, executor, |f, _, _| {
                bar.inc(1);
                match &f.outcome {
                    Ok(s) => bar.set_message(format!(
                        "{} {:.2}% (+{} params)",
                        f.run.run_id,
                        100.0 * s.validation_accuracy,
                        s.parameters_added()
                    )),
                    Err(why) => {
                        bar.suspend(|| println!("  episode {} FAILED: {why}", f.run.run_id));
                    }
                }
            })
            .map_err(|e| fail(e.to_string()))?;
            for &seed in seeds {
                let find = |arm: &str| plan.iter().find(|r| r.arm == arm && r.seed == seed);
                let (Some(episode), Some(baseline)) =
                    (find(&format!("u{update}")), find("baseline"))
                else {
                    failed += 1;
                    continue;
                };
                // A failed episode that left its exit record and decided
                // something is scored as ended early (see `score`).
                let halted =
                    !runner::is_finished(episode) && episode.dir.join(crate::store::EXIT).exists();
                if !(runner::is_finished(episode) || halted) || !runner::is_finished(baseline) {
                    failed += 1;
                    continue;
                }
                match score(episode, baseline, host, &ppo, halted) {
                    Ok(s) => {
                        if halted {
                            halts += 1;
                        }
                        scored.push(s);
                    }
                    Err(e) => {
                        println!("  episode {} left out: {e}", episode.run_id);
                        failed += 1;
                    }
                }
            }
        }
        bar.finish_and_clear();
        if scored.is_empty() {
            return Err(fail(format!(
                "update {}: every episode failed (see the logs under {})",
                update + 1,
                home.display()
            )));
        }
        let samples: Vec<Sample> = scored.iter().flat_map(|s| s.samples.clone()).collect();
        let (stats, imitation) = if imitating {
            demos.extend(samples.iter().cloned());
            let i = learner
                .imitate(&demos, u64::from(update))
                .map_err(tamiyo_error)?;
            let mut stats = tamiyo::ppo::UpdateStats::default();
            stats.last.value = i.value;
            (stats, Some(i))
        } else {
            let stats = learner
                .update(&samples, &demos, u64::from(update))
                .map_err(tamiyo_error)?;
            (stats, None)
        };
        let n = scored.len() as f64;
        let mean = |f: &dyn Fn(&Scored) -> f64| scored.iter().map(f).sum::<f64>() / n;
        let mut return_by_host: BTreeMap<String, (f64, f64)> = BTreeMap::new();
        for s in &scored {
            let e = return_by_host.entry(s.host.clone()).or_default();
            e.0 += s.episode_return;
            e.1 += 1.0;
        }
        let line = UpdateLine {
            update: update + 1,
            episodes: scored.len(),
            failed,
            halted: halts,
            decisions: samples.len(),
            mean_return: mean(&|s| s.episode_return),
            mean_gain: mean(&|s| s.gain),
            mean_parameters_added: mean(&|s| s.parameters_added as f64),
            germinate_share: scored.iter().map(|s| s.germinations).sum::<usize>() as f64
                / samples.len().max(1) as f64,
            return_by_host: return_by_host
                .into_iter()
                .map(|(h, (sum, count))| (h, sum / count))
                .collect(),
            episode_returns: scored
                .iter()
                .map(|s| (s.run_id.clone(), s.episode_return))
                .collect(),
            approx_kl: stats.last.approx_kl,
            entropy: stats.last.entropy,
            value_loss: stats.last.value,
            seconds: started.elapsed().as_secs_f64(),
            imitation_nll: imitation.map(|i| i.nll).or(stats.imitation_nll),
            imitation_agreement: imitation.map(|i| i.agreement),
        };
        state.updates += 1;
        state.episodes += scored.len() as u64;
        manifest.training_step = u64::from(state.updates);
        manifest.episodes = state.episodes;
        manifest.provenance = format!(
            "{}esper policy train: {} update(s){}, {} episode(s) on {} (seed pool {}..{})",
            if origin.starts_with("from ") {
                format!("{origin}; then ")
            } else {
                String::new()
            },
            state.updates,
            match options.imitate.min(state.updates) {
                0 => String::new(),
                n => format!(" (the first {n} behaviour cloning of the heuristic)"),
            },
            state.episodes,
            ppo.hosts.join(", "),
            ppo.seed_pool_start,
            ppo.seed_pool_start + ppo.seed_pool_size
        );
        manifest.metrics = BTreeMap::from([
            ("mean_return".to_string(), line.mean_return),
            ("mean_gain_points".to_string(), line.mean_gain),
            (
                "mean_parameters_added".to_string(),
                line.mean_parameters_added,
            ),
            ("germinate_share".to_string(), line.germinate_share),
        ]);
        // What the update optimised: the teacher's likelihood, or PPO's
        // objective (an imitation update has no KL or entropy to report).
        match (line.imitation_nll, line.imitation_agreement) {
            (Some(nll), Some(agreement)) => {
                manifest.metrics.insert("imitation_nll".into(), nll);
                manifest
                    .metrics
                    .insert("imitation_agreement".into(), agreement);
            }
            (nll, None) => {
                manifest.metrics.insert("approx_kl".into(), line.approx_kl);
                manifest.metrics.insert("entropy".into(), line.entropy);
                if let Some(nll) = nll {
                    manifest.metrics.insert("imitation_nll".into(), nll);
                }
            }
            (None, Some(_)) => {}
        }
        save_policy(&options.out, learner.model(), &manifest, &key).map_err(tamiyo_error)?;
        state.history.push(line.clone());
        let path = state_path(&options.out);
        let text = serde_json::to_string_pretty(&state)
            .map_err(|e| fail(format!("learner state: {e}")))?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        println!("{}", describe(&line, options.updates));
        last = Some(line);
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn episodes_take_hosts_in_turn_and_walk_each_hosts_seed_pool() {
        let ppo = PpoConfig {
            hosts: vec!["a".into(), "b".into()],
            episodes_per_update: 3,
            seed_pool_start: 100,
            seed_pool_size: 2,
            ..PpoConfig::default()
        };
        let seen: Vec<(String, u64)> = (0..3)
            .flat_map(|u| episodes(&ppo, u))
            .map(|e| (e.host, e.seed))
            .collect();
        let expected: Vec<(String, u64)> = [
            ("a", 100),
            ("b", 100),
            ("a", 101),
            ("b", 101),
            ("a", 100),
            ("b", 100),
            ("a", 101),
            ("b", 101),
            ("a", 100),
        ]
        .iter()
        .map(|(h, s)| ((*h).to_string(), *s))
        .collect();
        assert_eq!(seen, expected);
    }
}

#[cfg(test)]
mod halted {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::cohort::ArmKind;

    fn run(dir: &Path, id: &str, accuracies: &[f64]) -> PlannedRun {
        let path = dir.join(id);
        std::fs::create_dir_all(&path).unwrap();
        let text: Vec<String> = accuracies
            .iter()
            .enumerate()
            .map(|(i, &a)| crate::runlog::epoch_line_json(i as u32 + 1, a))
            .collect();
        std::fs::write(path.join("metrics.jsonl"), text.join("\n") + "\n").unwrap();
        PlannedRun {
            run_id: id.into(),
            arm: id.into(),
            kind: ArmKind::StaticSmall,
            seed: 1,
            config: path.join("config.toml"),
            dir: path,
            plan: String::new(),
        }
    }

    /// A run the governor halted after two decisions: scored up to its last
    /// epoch without rent, its last decision charged the halt penalty.
    #[test]
    fn a_halted_episode_is_scored_with_the_penalty_not_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let baseline = run(dir.path(), "baseline", &[0.50, 0.60, 0.70]);
        let episode = run(dir.path(), "episode", &[0.50, 0.63]);
        std::fs::write(episode.dir.join(crate::store::EXIT), "{}").unwrap();
        let mut packet = leyline::v1::SystemStatePacket {
            hardware: Some(leyline::v1::HardwareContext::default()),
            training_metrics: BTreeMap::from([("learning_rate".to_string(), 0.1)]),
            ..leyline::v1::SystemStatePacket::default()
        };
        let writer =
            tamiyo::trajectory::TrajectoryWriter::create(&episode.dir.join("trajectory.wal"))
                .unwrap();
        let mut builder =
            tamiyo::graph::GraphBuilder::new(tamiyo::graph::GraphSchema::default()).unwrap();
        for epoch in [1, 2] {
            packet.current_epoch = epoch;
            let graph = builder.build(&packet, &[]).unwrap();
            writer
                .record(tamiyo::trajectory::DecisionRecord {
                    run_id: "episode".into(),
                    epoch,
                    global_step: u64::from(epoch) * 10,
                    generation: 1,
                    validation_accuracy: None,
                    mask: tamiyo::gnn::mask_for(&graph, &packet, 2),
                    graph,
                    action: tamiyo::action_space::Action::wait(),
                    log_prob: -0.1,
                    value: 0.0,
                    policy_step: 0,
                })
                .unwrap();
        }
        writer.finish().unwrap();
        let ppo = PpoConfig::default();
        // Not halted, it has no summary: an error (left out), as before.
        assert!(score(&episode, &baseline, "h", &ppo, false).is_err());
        let s = score(&episode, &baseline, "h", &ppo, true).unwrap();
        // Standing: e1 0, e2 +3 points; the last decision gets −10.
        assert_eq!(s.samples.len(), 2);
        assert!((s.episode_return - (3.0 - ppo.halt_penalty_points)).abs() < 1e-9);
        assert!((s.gain - 3.0).abs() < 1e-9);
        assert_eq!(s.parameters_added, 0);
    }
}
