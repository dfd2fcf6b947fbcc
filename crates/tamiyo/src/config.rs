//! Tamiyo's typed configuration (`[tamiyo]` in the Esper config file), with
//! documented defaults; resolved once by `esper-runtime` and injected, never
//! changed afterwards (the service keeps it behind an `Arc`). The step
//! deadline is the shared `leyline.budgets.performance.tamiyo_step_deadline_ms`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Which controller drives a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Controller {
    /// [`crate::HeuristicPolicy`]: plateau rule, cull on no improvement.
    Heuristic,
    /// [`crate::ScriptedPolicy`]: a fixed schedule from `tamiyo.script`.
    Script,
    /// No controller: the host never grows (a control cohort).
    Off,
    /// [`crate::LearnedPolicy`]: the GNN policy in `tamiyo.learned.policy`.
    Learned,
}

/// How the learned policy picks among its actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Exploration {
    /// The most probable choice of each head (evaluation; the default).
    #[default]
    Greedy,
    /// A draw from the masked distribution (training episodes), from the
    /// seeded stream `tamiyo.learned.sample_seed`.
    Sample,
    /// Behaviour cloning: a teacher (the heuristic) decides, and the policy
    /// records each decision as the action the network would have to take
    /// (`esper policy train --imitate`'s episodes). Needs a teacher.
    Imitate,
}

/// The `[tamiyo.learned]` section: which policy file the `learned`
/// controller runs and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LearnedConfig {
    /// The policy file (required with `controller = "learned"`).
    pub policy: Option<PathBuf>,
    /// `greedy` (default) or `sample`.
    pub exploration: Exploration,
    /// Seed of the sampling stream (default 0; `esper policy train` gives
    /// each episode its own).
    pub sample_seed: u64,
    /// Most live seeds at once: GERMINATE is masked at this many (default 2).
    pub max_live_seeds: u32,
    /// The key policy files are signed with and checked against: a hex key
    /// (at least 32 bytes) in an environment variable or a file; unset, the
    /// Leyline secret (`leyline.security.secret`) signs and verifies them.
    pub key: Option<leyline::SecretSource>,
    /// The parameters each blueprint is germinated with, over its defaults
    /// (default none: every blueprint at its defaults). The policy chooses
    /// where, when and which blueprint; this says which variant of it —
    /// e.g. `"conv.depthwise" = { kernel_size = 5 }` — and the graph prices
    /// the blueprint's cost at a slot with the same parameters.
    pub blueprint_parameters: BTreeMap<String, urza::Parameters>,
}

impl Default for LearnedConfig {
    fn default() -> Self {
        Self {
            policy: None,
            exploration: Exploration::Greedy,
            sample_seed: 0,
            max_live_seeds: 2,
            key: None,
            blueprint_parameters: BTreeMap::new(),
        }
    }
}

/// All of Tamiyo's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `heuristic` (default), `script`, `learned` or `off`.
    pub controller: Controller,
    /// The schedule file of the `script` controller (TOML, see
    /// [`crate::ScriptedPolicy`]).
    pub script: Option<PathBuf>,
    /// `http://host:port` of an `esper tamiyo serve`: with `heuristic` or
    /// `learned`, the controller runs there (with the service's own policy
    /// settings) and this trainer keeps its step deadline over the network.
    /// Unset (the default): in this process.
    pub remote: Option<String>,
    /// Milliseconds from a command's issue to its deadline (default 10 000).
    pub command_ttl_ms: u64,
    /// Milliseconds the blueprint metadata cache trusts a catalog listing
    /// (default 60 000); a `KernelCatalogUpdate` invalidates it at once.
    pub catalog_ttl_ms: u64,
    /// The heuristic policy's thresholds.
    pub heuristic: HeuristicConfig,
    /// The risk engine's rules.
    pub risk: RiskConfig,
    /// Field reports: observation window and outcome thresholds.
    pub field_reports: FieldReportConfig,
    /// The observation graph's schema (for the learned policy).
    pub graph: crate::graph::GraphSchema,
    /// Training the learned policy with PPO.
    pub ppo: crate::ppo::PpoConfig,
    /// The learned controller's policy file and exploration.
    pub learned: LearnedConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            controller: Controller::Heuristic,
            script: None,
            remote: None,
            command_ttl_ms: 10_000,
            catalog_ttl_ms: 60_000,
            heuristic: HeuristicConfig::default(),
            risk: RiskConfig::default(),
            field_reports: FieldReportConfig::default(),
            graph: crate::graph::GraphSchema::default(),
            ppo: crate::ppo::PpoConfig::default(),
            learned: LearnedConfig::default(),
        }
    }
}

/// How field-report outcomes are decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FieldReportConfig {
    /// Epoch ends after a command before its outcome is decided (default 2).
    pub window_epochs: u32,
    /// Validation-accuracy gain, points, at or above which it is SUCCESS
    /// (default 0.5).
    pub success_points: f64,
    /// Loss, points, at or beyond which it is REGRESSION (default 0.5).
    pub regression_points: f64,
    /// Days reports are kept in the log (default 30).
    pub retention_days: u32,
}

impl Default for FieldReportConfig {
    fn default() -> Self {
        Self {
            window_epochs: 2,
            success_points: 0.5,
            regression_points: 0.5,
            retention_days: 30,
        }
    }
}

/// How the heuristic picks among free slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotChoice {
    /// The one closest to the input (default).
    #[default]
    Earliest,
    /// The one whose measured loss gradient is largest (Kasmina's slot
    /// evidence, `SlotState.gradient_norm`); the earliest while any free
    /// slot has no measurement yet.
    Gradient,
}

/// One seed the heuristic may germinate: a blueprint, the parameters it is
/// built with (over the blueprint's defaults) and the validation-accuracy gain
/// the heuristic expects of it on a host short of capacity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Candidate {
    /// Blueprint id (`conv.depthwise`, …); the slot kind follows from it.
    pub blueprint: String,
    /// Builder parameters over the blueprint's defaults.
    #[serde(default)]
    pub parameters: urza::Parameters,
    /// Expected gain, validation-accuracy points, of germinating it at the
    /// best slot of a host short of capacity (a prior: see the defaults).
    pub expected_gain_points: f64,
}

impl Candidate {
    fn new(blueprint: &str, parameters: &[(&str, f64)], expected_gain_points: f64) -> Self {
        Self {
            blueprint: blueprint.into(),
            parameters: parameters
                .iter()
                .map(|(k, v)| ((*k).to_string(), *v))
                .collect(),
            expected_gain_points,
        }
    }
}

/// The heuristic policy's thresholds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeuristicConfig {
    /// E0: no germination before this epoch has ended (default 1).
    pub min_epoch: u32,
    /// P: epochs the plateau must last (default 1).
    pub plateau_epochs: u32,
    /// Relative validation-loss decrease per epoch below which learning has
    /// plateaued (default 0.3: less than 30 % better than the epoch before).
    pub plateau_min_improvement: f64,
    /// Capacity shortage: the host grows only while it gets at least this
    /// fraction of its own training images wrong over the last epoch
    /// (`1 − train_accuracy`; default 0.10). A host that fits its training
    /// data is not short of capacity, and more of it only adds cost: on
    /// run seeds 9101–9105 the `mlp` and `cnn` hosts were below 8.5 % from
    /// epoch 2 on, `cnn-impaired` above 15 % through epoch 8.
    pub min_training_error: f64,
    /// Overfitting guard: no growth while the validation loss exceeds the
    /// training loss by more than this fraction of it (default 0.25); more
    /// capacity would fit the training data tighter, not generalise better.
    pub max_generalization_gap: f64,
    /// Seeds alive in the model at once, fossilized ones included (default 2).
    pub max_seeds: u32,
    /// Largest parameter count of one seed (default 50 000).
    pub seed_parameter_budget: u64,
    /// Rent, validation-accuracy points, charged for a seed as large as the
    /// host: a seed with `p` parameters pays `p / host parameters ×` this
    /// (default 1.0).
    pub rent_points_per_host_parameters: f64,
    /// Rent, points, charged for a seed that costs each image as many
    /// forward MACs as the host — about doubling the step time: a seed with
    /// `m` MACs pays `m / host MACs ×` this (default 1.0). MACs, not measured
    /// milliseconds, so the choice is the same on a busy machine.
    pub rent_points_per_host_macs: f64,
    /// Growth stops for good once this many seeds in a row, the newest
    /// last, measured a contribution that did not cover their rent (default
    /// 2: one noisy failure — a G4 cull at −0.6 points on `cnn-impaired` —
    /// leaves room for one more try; 1 stops at the first).
    pub stop_after_unpaid_seeds: u32,
    /// K: a seed is culled when validation accuracy has not improved on its
    /// germination-time value after this many epochs (default 3).
    pub cull_after_epochs: u32,
    /// D: a seed whose counterfactual contribution is below −D points is
    /// culled at once (default 2.0).
    pub cull_drop_points: f64,
    /// The seeds the heuristic chooses among: the one with the largest
    /// expected gain less rent wins, none when no gain covers its rent.
    /// Defaults (gains are the mean lift over `controller = "off"` of one
    /// scripted germination at r0 after epoch 3 on `cnn-impaired`, run seeds
    /// 9101–9103, 2026-12-03, culled runs counted as no gain):
    /// `conv.depthwise` k = 5 (+4.8), k = 3 (+3.4), k = 7 (+4.9),
    /// `conv.grouped` (+4.2), `conv.light` at ratio 1 (+2.5), `conv.heavy`
    /// at width 1 (+2.8), `conv.residual` (+1.0; 17 × the host's MACs);
    /// `dense.low_rank` and `dense.mlp_small` at hidden ×0.25 (+1.0 each:
    /// not measured — no reference dense host is short of capacity).
    pub candidates: Vec<Candidate>,
    /// Optimizer steps of a new seed's linear α ramp (default 40).
    pub alpha_steps: u32,
    /// How a slot is picked (default `earliest`). `gradient` follows the
    /// largest measured slot gradient; on `cnn-impaired` it chose the deeper,
    /// 4× costlier slot r1 for one of three run seeds and the mean lift over
    /// `controller = "off"` fell from +6.6 to +4.7 points (the grow test's
    /// runs, 2026-12-03), so it is not the default.
    pub slot_choice: SlotChoice,
}

impl Default for HeuristicConfig {
    fn default() -> Self {
        Self {
            min_epoch: 1,
            plateau_epochs: 1,
            plateau_min_improvement: 0.3,
            min_training_error: 0.10,
            max_generalization_gap: 0.25,
            max_seeds: 2,
            seed_parameter_budget: 50_000,
            rent_points_per_host_parameters: 1.0,
            rent_points_per_host_macs: 1.0,
            stop_after_unpaid_seeds: 2,
            cull_after_epochs: 3,
            cull_drop_points: 2.0,
            candidates: vec![
                Candidate::new("conv.depthwise", &[("kernel_size", 5.0)], 4.8),
                Candidate::new("conv.depthwise", &[("kernel_size", 3.0)], 3.4),
                Candidate::new("conv.depthwise", &[("kernel_size", 7.0)], 4.9),
                Candidate::new("conv.grouped", &[("groups", 2.0)], 4.2),
                Candidate::new("conv.light", &[("bottleneck_ratio", 1.0)], 2.5),
                Candidate::new("conv.heavy", &[("width_multiplier", 1.0)], 2.8),
                Candidate::new("conv.residual", &[], 1.0),
                Candidate::new("dense.low_rank", &[], 1.0),
                Candidate::new("dense.mlp_small", &[("hidden_multiple", 0.25)], 1.0),
            ],
            alpha_steps: 40,
            slot_choice: SlotChoice::Earliest,
        }
    }
}

/// The risk engine's rules (checked in this order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RiskConfig {
    /// A training loss above this multiple of its moving average is a spike
    /// (default 3.0).
    pub loss_spike_ratio: f64,
    /// Whether the wall-clock rules judge (default false): `latency_spike`
    /// (step time) and `hook_latency` (the last fence's duration). They
    /// measure time, which depends on what else the machine runs, so with
    /// them on a run's decisions can change with load and a cohort's results
    /// with `--jobs`; off, every decision follows from counted evidence
    /// (losses, accuracies, MACs, parameters) and the run repeats by seed.
    pub wall_clock_rules: bool,
    /// Mean step time above this multiple of its moving average is a latency
    /// spike (default 3.0; judged only with `wall_clock_rules`).
    pub latency_spike_ratio: f64,
    /// Smoothing of both moving averages (default 0.2).
    pub ewma_alpha: f64,
    /// Fences a raised level may last before it is the new average rather
    /// than a spike (default 3).
    pub rebase_after_fences: u32,
    /// Longest the previous control-hook call (Tamiyo deciding, the fence
    /// around it excluded) may have taken, ms (default 18, the fence budget
    /// `leyline.budgets.performance.control_fence_ms`; judged only with
    /// `wall_clock_rules`).
    pub max_fence_ms: f64,
    /// Isolation violations tolerated across live seeds (default 0).
    pub max_isolation_violations: u64,
    /// Highest blueprint risk a germination may carry (default 0.5).
    pub max_blueprint_risk: f64,
    /// Lowest fraction of the device's memory still available for a
    /// germination to go ahead (default 0.1).
    pub min_free_memory_fraction: f64,
    /// Highest device utilization, percent (default 98).
    pub max_utilization_percent: f64,
    /// Lowest input coverage (optional signals present) a command may be
    /// decided on (default 0.5).
    pub min_coverage: f64,
    /// Fences conservative mode lasts at least (default 2).
    pub cool_down_fences: u32,
    /// Healthy fences in a row, after the cool-down, that end it (default 3).
    pub healthy_fences: u32,
}

impl Default for RiskConfig {
    fn default() -> Self {
        Self {
            loss_spike_ratio: 3.0,
            wall_clock_rules: false,
            latency_spike_ratio: 3.0,
            ewma_alpha: 0.2,
            rebase_after_fences: 3,
            max_fence_ms: 18.0,
            max_isolation_violations: 0,
            max_blueprint_risk: 0.5,
            min_free_memory_fraction: 0.1,
            max_utilization_percent: 98.0,
            min_coverage: 0.5,
            cool_down_fences: 2,
            healthy_fences: 3,
        }
    }
}

use leyline::ConfigError;

impl Config {
    /// Checks every value, naming the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, problem: &str| Err(ConfigError::new("tamiyo", key, problem));
        if self.controller == Controller::Script && self.script.is_none() {
            return bad("script", "controller = \"script\" needs a schedule file");
        }
        if let Some(remote) = &self.remote {
            if !(remote.starts_with("http://") || remote.starts_with("https://")) {
                return bad("remote", "must be an http:// or https:// address");
            }
            match self.controller {
                Controller::Heuristic | Controller::Learned => {}
                Controller::Script | Controller::Off => {
                    return bad(
                        "remote",
                        "a remote controller runs \"heuristic\" or \"learned\" (the service's policy); set controller to one of them, or unset remote",
                    );
                }
            }
        }
        if self.controller == Controller::Learned
            && self.learned.policy.is_none()
            && self.remote.is_none()
        {
            return bad(
                "learned.policy",
                "controller = \"learned\" needs a policy file",
            );
        }
        if self.learned.max_live_seeds == 0 {
            return bad("learned.max_live_seeds", "must be at least 1");
        }
        for (id, given) in &self.learned.blueprint_parameters {
            let key = format!("learned.blueprint_parameters.{id}");
            let Some(def) = urza::definition(id) else {
                return bad(&key, "unknown blueprint");
            };
            if let Err(e) = def.check_parameters(&def.with_defaults(given)) {
                return bad(&key, &e.to_string());
            }
        }
        if self.command_ttl_ms == 0 {
            return bad("command_ttl_ms", "must be at least 1");
        }
        let h = &self.heuristic;
        if !(h.plateau_min_improvement.is_finite() && h.plateau_min_improvement >= 0.0) {
            return bad(
                "heuristic.plateau_min_improvement",
                "must be finite and >= 0",
            );
        }
        if h.plateau_epochs == 0 {
            return bad("heuristic.plateau_epochs", "must be at least 1");
        }
        if h.cull_after_epochs == 0 {
            return bad("heuristic.cull_after_epochs", "must be at least 1");
        }
        if !(h.cull_drop_points.is_finite() && h.cull_drop_points >= 0.0) {
            return bad("heuristic.cull_drop_points", "must be finite and >= 0");
        }
        if h.stop_after_unpaid_seeds == 0 {
            return bad("heuristic.stop_after_unpaid_seeds", "must be at least 1");
        }
        if h.alpha_steps == 0 {
            return bad("heuristic.alpha_steps", "must be at least 1");
        }
        for (key, v) in [
            ("heuristic.min_training_error", h.min_training_error),
            ("heuristic.max_generalization_gap", h.max_generalization_gap),
            (
                "heuristic.rent_points_per_host_parameters",
                h.rent_points_per_host_parameters,
            ),
            (
                "heuristic.rent_points_per_host_macs",
                h.rent_points_per_host_macs,
            ),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(key, "must be finite and >= 0");
            }
        }
        for (i, c) in h.candidates.iter().enumerate() {
            let key = format!("heuristic.candidates[{i}]");
            if urza::definition(&c.blueprint).is_none() {
                return bad(&key, &format!("unknown blueprint {:?}", c.blueprint));
            }
            if !(c.expected_gain_points.is_finite() && c.expected_gain_points >= 0.0) {
                return bad(&key, "expected_gain_points must be finite and >= 0");
            }
        }
        if let Err(problem) = self.graph.validate() {
            return Err(ConfigError::new("tamiyo", "graph.node_types", problem));
        }
        self.ppo.validate()?;
        let f = &self.field_reports;
        if f.window_epochs == 0 {
            return bad("field_reports.window_epochs", "must be at least 1");
        }
        for (key, v) in [
            ("field_reports.success_points", f.success_points),
            ("field_reports.regression_points", f.regression_points),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(key, "must be finite and >= 0");
            }
        }
        let r = &self.risk;
        for (key, v) in [
            ("risk.loss_spike_ratio", r.loss_spike_ratio),
            ("risk.latency_spike_ratio", r.latency_spike_ratio),
        ] {
            if !(v.is_finite() && v > 1.0) {
                return bad(key, "must be finite and > 1");
            }
        }
        for (key, v) in [
            ("risk.ewma_alpha", r.ewma_alpha),
            ("risk.max_blueprint_risk", r.max_blueprint_risk),
            ("risk.min_free_memory_fraction", r.min_free_memory_fraction),
            ("risk.min_coverage", r.min_coverage),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return bad(key, "must be in [0, 1]");
            }
        }
        if !(r.max_fence_ms.is_finite() && r.max_fence_ms > 0.0) {
            return bad("risk.max_fence_ms", "must be finite and > 0");
        }
        if r.ewma_alpha == 0.0 {
            return bad("risk.ewma_alpha", "must be > 0");
        }
        if !(r.max_utilization_percent > 0.0 && r.max_utilization_percent <= 100.0) {
            return bad("risk.max_utilization_percent", "must be in (0, 100]");
        }
        Ok(())
    }
}
