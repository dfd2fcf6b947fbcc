//! Cohorts: does growth pay? A cohort is a set of arms × run seeds on one
//! dataset and budget; every run is an ordinary `esper train` run in its own
//! run directory, with its resolved configuration recorded there.
//!
//! * [`CohortFile`]: the cohort's TOML file — a name, the run seeds, the
//!   configuration every arm shares (`[config]`, sections as in `esper.toml`)
//!   and the arms (`[[arm]]`, each of an [`ArmKind`] with its own overrides).
//! * [`CohortFile::plan`]: one [`PlannedRun`] per arm × seed, its
//!   configuration file written and checked before anything runs.
//! * [`runner`]: runs the plan in parallel worker processes, skips finished
//!   runs and resumes interrupted ones.
//! * [`verdict`]: the fail-closed verdict over the run store's rows.
//!
//! An arm that lacks what its kind needs (`static-big` a host,
//! `fixed-schedule` a script, `learned` a policy file) is an error when the
//! file is loaded; a learned arm's policy file is checked (signature,
//! schema) by each run before it starts.

pub mod command;
mod efficiency;
pub mod runner;
pub mod stats;
pub mod verdict;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// What can go wrong with a cohort.
#[derive(Debug, thiserror::Error)]
pub enum CohortError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a cohort.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: toml::de::Error,
    },
    /// The cohort is well-formed TOML but unusable.
    #[error("cohort {cohort}: {problem}")]
    Invalid {
        /// The cohort's name.
        cohort: String,
        /// What is wrong.
        problem: String,
    },
    /// A run's configuration does not resolve (an unknown key, a bad value).
    #[error("cohort {cohort}: run {run_id}: {source}")]
    Config {
        /// The cohort's name.
        cohort: String,
        /// The run.
        run_id: String,
        /// The configuration error.
        #[source]
        source: Box<crate::Error>,
    },
    /// A run directory holds a run of another plan: its configuration or
    /// its policy's weights differ from what this plan gives the run, so
    /// its result is not this arm's (and resuming it would mix the two).
    #[error(
        "cohort {cohort}: run {run_id} in {dir} ran under another configuration or policy \
         than this plan gives it (a changed config, a retrained policy file, an arm \
         renamed onto another's name?): its result would not be this arm's. Remove \
         that directory to run it again, or give the arm another name"
    )]
    Stale {
        /// The cohort's name.
        cohort: String,
        /// The run.
        run_id: String,
        /// Its directory.
        dir: PathBuf,
    },
    /// The fleet could not take or return the runs.
    #[error(transparent)]
    Fleet(Box<crate::fleet::FleetError>),
}

/// Result with [`CohortError`].
pub type Result<T> = std::result::Result<T, CohortError>;

/// The kind of an arm: what it changes in the shared configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArmKind {
    /// The host as it is, controller off.
    StaticSmall,
    /// A bigger reference host (the arm's `host`), controller off.
    StaticBig,
    /// The heuristic controller with every seed's output held at the host's
    /// (`kasmina.off_switch`): seeds and their optimizer groups, no
    /// contribution.
    OffSwitch,
    /// A scripted germination (the arm's `script`, a `tamiyo` schedule).
    FixedSchedule,
    /// Tamiyo's heuristic controller.
    Heuristic,
    /// A learned policy (the arm's `policy` file).
    Learned,
}

impl ArmKind {
    /// The name used in cohort files.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StaticSmall => "static-small",
            Self::StaticBig => "static-big",
            Self::OffSwitch => "off-switch",
            Self::FixedSchedule => "fixed-schedule",
            Self::Heuristic => "heuristic",
            Self::Learned => "learned",
        }
    }

    /// Whether the arm grows its host (the arms whose gain the verdict judges).
    pub fn grows(self) -> bool {
        match self {
            Self::Heuristic | Self::Learned => true,
            Self::StaticSmall | Self::StaticBig | Self::OffSwitch | Self::FixedSchedule => false,
        }
    }
}

/// One `[[arm]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arm {
    /// Its name (default: the kind's).
    #[serde(default)]
    pub name: Option<String>,
    /// What it is.
    pub kind: ArmKind,
    /// `static-big`: the reference host to train instead.
    #[serde(default)]
    pub host: Option<String>,
    /// `fixed-schedule`: the schedule file (relative to the cohort file).
    #[serde(default)]
    pub script: Option<PathBuf>,
    /// `learned`: the policy file.
    #[serde(default)]
    pub policy: Option<PathBuf>,
    /// Configuration overrides for this arm only (sections as in `esper.toml`).
    #[serde(default)]
    pub config: toml::Table,
}

impl Arm {
    /// The arm's name.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(self.kind.as_str())
    }
}

/// A cohort file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CohortFile {
    /// The cohort's name (run ids are `<name>-<arm>-s<seed>`).
    pub name: String,
    /// The run seeds; every arm runs every one (paired comparisons).
    pub seeds: Vec<u64>,
    /// Where the run directories and the run store go (default `runs`,
    /// relative to the working directory).
    #[serde(default = "default_dir")]
    pub dir: PathBuf,
    /// Configuration every arm shares (sections as in `esper.toml`).
    #[serde(default)]
    pub config: toml::Table,
    /// The arms.
    #[serde(rename = "arm")]
    pub arms: Vec<Arm>,
    /// The file's directory (scripts are relative to it).
    #[serde(skip)]
    pub base: PathBuf,
}

fn default_dir() -> PathBuf {
    PathBuf::from("runs")
}

/// One run of the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedRun {
    /// Run id: `<cohort>-<arm>-s<seed>`.
    pub run_id: String,
    /// The arm's name.
    pub arm: String,
    /// The arm's kind.
    pub kind: ArmKind,
    /// The run seed.
    pub seed: u64,
    /// The run's configuration file.
    pub config: PathBuf,
    /// The run's directory.
    pub dir: PathBuf,
    /// What the run is, as a digest ([`plan_digest`]): its resolved
    /// configuration and, for a learned arm, its policy's weights.
    pub plan: String,
}

/// `cohort.json` in a run directory: which cohort and arm the run belongs to.
#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Membership {
    /// The cohort's name.
    pub cohort: String,
    /// The arm's name.
    pub arm: String,
    /// The arm's kind (`static-small`, …).
    pub kind: String,
    /// The run seed.
    pub seed: u64,
    /// The plan's digest of the run ([`PlannedRun::plan`]); absent in runs
    /// made before it was recorded, which are taken as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
}

/// The file a run directory names its cohort in.
pub const MEMBERSHIP: &str = "cohort.json";

impl CohortFile {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| CohortError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut file: Self = toml::from_str(&text).map_err(|source| CohortError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        file.base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        file.check()?;
        Ok(file)
    }

    fn invalid(&self, problem: impl Into<String>) -> CohortError {
        CohortError::Invalid {
            cohort: self.name.clone(),
            problem: problem.into(),
        }
    }

    fn check(&self) -> Result<()> {
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if !name_ok(&self.name) {
            return Err(self.invalid("name must be letters, digits, '-' or '_'"));
        }
        if self.seeds.is_empty() {
            return Err(self.invalid("seeds is empty"));
        }
        let mut seen = std::collections::BTreeSet::new();
        for seed in &self.seeds {
            if !seen.insert(seed) {
                return Err(self.invalid(format!("seed {seed} is listed twice")));
            }
        }
        if self.arms.is_empty() {
            return Err(self.invalid("no [[arm]]"));
        }
        let mut names = std::collections::BTreeSet::new();
        for arm in &self.arms {
            let name = arm.name();
            if !name_ok(name) {
                return Err(self.invalid(format!(
                    "arm {name:?}: names are letters, digits, '-' or '_'"
                )));
            }
            if !names.insert(name) {
                return Err(self.invalid(format!("arm {name} is listed twice")));
            }
            let needs = |what: bool, key: &str| {
                if what {
                    Ok(())
                } else {
                    Err(self.invalid(format!("arm {name} ({}) needs `{key}`", arm.kind.as_str())))
                }
            };
            match arm.kind {
                ArmKind::StaticBig => needs(arm.host.is_some(), "host")?,
                ArmKind::FixedSchedule => needs(arm.script.is_some(), "script")?,
                ArmKind::Learned => needs(arm.policy.is_some(), "policy")?,
                ArmKind::StaticSmall | ArmKind::OffSwitch | ArmKind::Heuristic => {}
            }
        }
        Ok(())
    }

    /// Adds a `learned` arm named `name` running `policy` (greedy), its
    /// runs checking the file with the key from `key`, as if the file listed
    /// it (`esper policy eval`; `esper policy train` adds its overrides to
    /// the arm returned). The arm's runs take the invoking configuration's
    /// `[tamiyo.learned]` settings that shape what the policy may do
    /// (`max_live_seeds`, `blueprint_parameters`); the policy file,
    /// exploration and sampling seed are the arm's own. An arm of that name
    /// already there is an error.
    pub fn add_learned_arm(
        &mut self,
        name: &str,
        policy: &Path,
        key: &leyline::SecretSource,
        invoking: &tamiyo::LearnedConfig,
    ) -> Result<&mut Arm> {
        if self.arms.iter().any(|a| a.name() == name) {
            return Err(self.invalid(format!("arm {name} is listed twice")));
        }
        let key = toml::Value::try_from(key)
            .map_err(|e| self.invalid(format!("the policy key cannot be written: {e}")))?;
        let mut learned = toml::Table::new();
        learned.insert("key".into(), key);
        // How many seeds may live at once and which variant of a blueprint
        // is germinated are part of what the policy decides under: its runs
        // decide under what the invoking configuration says.
        learned.insert(
            "max_live_seeds".into(),
            i64::from(invoking.max_live_seeds).into(),
        );
        if !invoking.blueprint_parameters.is_empty() {
            let given = toml::Value::try_from(&invoking.blueprint_parameters).map_err(|e| {
                self.invalid(format!("the blueprint parameters cannot be written: {e}"))
            })?;
            learned.insert("blueprint_parameters".into(), given);
        }
        let mut tamiyo = toml::Table::new();
        tamiyo.insert("learned".into(), learned.into());
        let mut config = toml::Table::new();
        config.insert("tamiyo".into(), tamiyo.into());
        self.arms.push(Arm {
            name: Some(name.to_owned()),
            kind: ArmKind::Learned,
            host: None,
            script: None,
            // Relative to where the command runs, not to the cohort file.
            policy: Some(std::path::absolute(policy).unwrap_or_else(|_| policy.to_path_buf())),
            config,
        });
        let added = self.arms.len() - 1;
        Ok(&mut self.arms[added])
    }

    /// The directory this cohort keeps its generated configurations and
    /// worker logs in: `<dir>/cohorts/<name>/`.
    pub fn home(&self) -> PathBuf {
        self.dir.join("cohorts").join(&self.name)
    }

    /// The run store's path: `<dir>/esper.sqlite`.
    pub fn store_path(&self) -> PathBuf {
        self.dir.join("esper.sqlite")
    }

    /// The arm named `name`.
    pub fn arm(&self, name: &str) -> Option<&Arm> {
        self.arms.iter().find(|a| a.name() == name)
    }

    /// The configuration of one run, as TOML: the shared `[config]`, then
    /// what the arm's kind sets, then the arm's own overrides, then the run's
    /// id, seed and directory (later wins, tables merged key by key).
    pub fn run_config(&self, arm: &Arm, seed: u64, cpu_threads: usize) -> toml::Table {
        let mut config = self.config.clone();
        let mut kind = toml::Table::new();
        let set = |t: &mut toml::Table, section: &str, key: &str, value: toml::Value| {
            let entry = t
                .entry(section.to_owned())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(table) = entry {
                table.insert(key.to_owned(), value);
            }
        };
        let text = |s: &str| toml::Value::String(s.to_owned());
        match arm.kind {
            ArmKind::StaticSmall => set(&mut kind, "tamiyo", "controller", text("off")),
            ArmKind::StaticBig => {
                set(&mut kind, "tamiyo", "controller", text("off"));
                if let Some(host) = &arm.host {
                    set(&mut kind, "tolaria", "host", text(host));
                }
            }
            ArmKind::OffSwitch => {
                set(&mut kind, "tamiyo", "controller", text("heuristic"));
                set(
                    &mut kind,
                    "kasmina",
                    "off_switch",
                    toml::Value::Boolean(true),
                );
            }
            ArmKind::FixedSchedule => {
                set(&mut kind, "tamiyo", "controller", text("script"));
                if let Some(script) = &arm.script {
                    let path = self.base.join(script);
                    set(
                        &mut kind,
                        "tamiyo",
                        "script",
                        text(&path.display().to_string()),
                    );
                }
            }
            ArmKind::Heuristic => set(&mut kind, "tamiyo", "controller", text("heuristic")),
            ArmKind::Learned => {
                set(&mut kind, "tamiyo", "controller", text("learned"));
                if let Some(policy) = &arm.policy {
                    let path = self.base.join(policy);
                    let mut learned = toml::Table::new();
                    learned.insert("policy".into(), text(&path.display().to_string()));
                    set(&mut kind, "tamiyo", "learned", toml::Value::Table(learned));
                }
            }
        }
        merge(&mut config, kind);
        merge(&mut config, arm.config.clone());
        let threads_set = config
            .get("tolaria")
            .and_then(|t| t.get("cpu_threads"))
            .is_some();
        if !threads_set {
            set(
                &mut config,
                "tolaria",
                "cpu_threads",
                toml::Value::Integer(cpu_threads as i64),
            );
        }
        let run_id = self.run_id(arm.name(), seed);
        set(&mut config, "run", "run_id", text(&run_id));
        set(
            &mut config,
            "run",
            "seed",
            toml::Value::Integer(seed as i64),
        );
        set(
            &mut config,
            "run",
            "dir",
            text(&self.dir.display().to_string()),
        );
        config
    }

    /// `<cohort>-<arm>-s<seed>`.
    pub fn run_id(&self, arm: &str, seed: u64) -> String {
        format!("{}-{arm}-s{seed}", self.name)
    }

    /// Writes every run's configuration under [`CohortFile::home`] and checks
    /// that each resolves (unknown keys and bad values are errors here,
    /// before any run starts); returns the runs, arm by arm.
    pub fn plan(
        &self,
        cpu_threads: usize,
        env: &BTreeMap<String, String>,
    ) -> Result<Vec<PlannedRun>> {
        let configs = self.home().join("configs");
        std::fs::create_dir_all(&configs).map_err(|source| CohortError::Io {
            path: configs.clone(),
            source,
        })?;
        let mut runs = Vec::new();
        for arm in &self.arms {
            for &seed in &self.seeds {
                let run_id = self.run_id(arm.name(), seed);
                let table = self.run_config(arm, seed, cpu_threads);
                let path = configs.join(format!("{run_id}.toml"));
                let text = format!(
                    "# run {run_id} of cohort {} (arm {}, {}), generated by `esper cohort`\n{}",
                    self.name,
                    arm.name(),
                    arm.kind.as_str(),
                    toml::to_string(&table).map_err(|e| self.invalid(format!(
                        "run {run_id}: its configuration cannot be written as TOML: {e}"
                    )))?
                );
                std::fs::write(&path, text).map_err(|source| CohortError::Io {
                    path: path.clone(),
                    source,
                })?;
                // Resolved as the worker will resolve it (with the
                // environment a worker gets: no ESPER_* overrides).
                let config_error = |e| CohortError::Config {
                    cohort: self.name.clone(),
                    run_id: run_id.clone(),
                    source: Box::new(e),
                };
                let resolved =
                    crate::config::load(Some(&path), &worker_env(env)).map_err(config_error)?;
                let plan = plan_digest(&resolved.config).map_err(config_error)?;
                let dir = self.dir.join(&run_id);
                if stale(&dir, &plan) {
                    return Err(CohortError::Stale {
                        cohort: self.name.clone(),
                        run_id,
                        dir,
                    });
                }
                runs.push(PlannedRun {
                    dir,
                    run_id,
                    arm: arm.name().to_owned(),
                    kind: arm.kind,
                    seed,
                    config: path,
                    plan,
                });
            }
        }
        Ok(runs)
    }
}

/// A run's identity as a digest: its resolved configuration without
/// `tolaria.cpu_threads` (how many threads a worker gets depends on
/// `--jobs`, not on what the run is) and, under the learned controller, the
/// weights digest its policy file states — so that a retrained policy at
/// the same path is another run.
pub fn plan_digest(
    config: &crate::config::EsperConfig,
) -> std::result::Result<String, crate::Error> {
    let mut value = serde_json::to_value(config)
        .map_err(|e| crate::Error::Runtime(format!("encoding the run's configuration: {e}")))?;
    if let Some(tolaria) = value.get_mut("tolaria").and_then(|t| t.as_object_mut()) {
        tolaria.remove("cpu_threads");
    }
    let mut text = value.to_string();
    if let (tamiyo::Controller::Learned, Some(policy)) =
        (config.tamiyo.controller, &config.tamiyo.learned.policy)
    {
        let weights = tamiyo::gnn::stated_weights_digest(policy)
            .map_err(|e| crate::Error::Runtime(format!("tamiyo.learned.policy: {e}")))?;
        text.push_str("\npolicy weights ");
        text.push_str(&weights);
    }
    Ok(urza::artifact::sha256_hex(text.as_bytes()))
}

/// Whether `dir` holds a run recorded under a plan other than `plan` (a run
/// recorded without one, or no run, is not stale).
fn stale(dir: &Path, plan: &str) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join(MEMBERSHIP)) else {
        return false;
    };
    match serde_json::from_str::<Membership>(&text) {
        Ok(m) => m.plan.as_deref().is_some_and(|p| p != plan),
        // Unreadable: the run directory's own checks say so when it runs.
        Err(_) => false,
    }
}

/// The environment a worker process gets: the cohort's, without
/// `ESPER_CONFIG` and without `ESPER_<SECTION>__<KEY>` overrides, so that a
/// cohort's runs depend on its file alone (a secret read from an `ESPER_*`
/// variable that is not an override still passes).
pub fn worker_env(env: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    env.iter()
        .filter(|(k, _)| {
            k.as_str() != "ESPER_CONFIG" && !(k.starts_with("ESPER_") && k.contains("__"))
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Merges `over` into `base`: tables key by key, anything else replaced.
pub fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests;
