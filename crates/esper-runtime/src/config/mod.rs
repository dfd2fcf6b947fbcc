//! Configuration: one `esper.toml` plus `ESPER_*` overrides, resolved once.
//!
//! Resolution order, later wins:
//! 1. the documented defaults of every section;
//! 2. the file given by `--config` (or `ESPER_CONFIG`), if any;
//! 3. environment overrides `ESPER_<SECTION>__<KEY>[__<KEY>...]`, e.g.
//!    `ESPER_RUN__SEED=7` or `ESPER_LEYLINE__SECURITY__NONCE_TTL_S=600`. Values are
//!    read as TOML scalars (`7`, `true`, `0.5`); anything that is not one is a
//!    string (quote a number to force a string: `'"123"'`).
//!
//! Every other `ESPER_*` variable is an error, except `ESPER_CONFIG` and the
//! variable the secret is read from, so that a misspelt override is never silently
//! ignored. Unknown keys and out-of-range values are rejected naming the full key
//! and, when it came from the environment, the variable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use leyline::SecretSource;
use leyline::security::SigningKey;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, SecretProblem};

/// Environment variable naming the config file when `--config` is not given.
pub const CONFIG_ENV: &str = "ESPER_CONFIG";
const ENV_PREFIX: &str = "ESPER_";
const ENV_SEPARATOR: &str = "__";

/// The whole configuration: one section per crate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EsperConfig {
    /// Identity and seed of the run.
    pub run: RunConfig,
    /// Contracts: message security, limits, budgets.
    pub leyline: leyline::Config,
    /// Training: host, data, optimizer, learning-rate schedule.
    pub tolaria: tolaria::Config,
    /// The message bus: backend, streams, delivery, backpressure, telemetry.
    pub oona: oona::Config,
    /// The blueprint library: where it lives, its cache, its service.
    pub urza: urza::Config,
    /// Seed execution: gates, dwell, isolation.
    pub kasmina: kasmina::Config,
    /// The controller: which one, its thresholds, its risk rules.
    pub tamiyo: tamiyo::Config,
    /// The process itself: where it serves its metrics and health.
    pub runtime: RuntimeConfig,
}

/// The `[runtime]` section.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// `host:port` where long commands serve `/metrics` (Prometheus text),
    /// `/healthz` and `/readyz`; unset (the default): no listener.
    pub listen: Option<String>,
    /// After a run ends, how long the listener keeps serving, s (default 0),
    /// so that the next scrape still sees the final values of a short run.
    pub linger_s: u64,
}

impl RuntimeConfig {
    /// The listen address, when set.
    pub fn listen_addr(&self) -> Result<Option<std::net::SocketAddr>> {
        self.listen
            .as_deref()
            .map(|text| {
                text.parse().map_err(|e| {
                    Error::Config(leyline::ConfigError::at(
                        "runtime.listen",
                        format!("{text:?} is not host:port ({e})"),
                    ))
                })
            })
            .transpose()
    }
}

/// Identity and seed of the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Run id used in every message and file name; generated (UUID v4) when unset.
    /// Letters, digits, `.`, `_` and `-` only.
    pub run_id: Option<String>,
    /// Experiment name reported with every packet (default `"default"`).
    pub experiment: String,
    /// Seed of every random number generator of the run (default 0).
    pub seed: u64,
    /// Root of run directories: each run writes `<dir>/<run id>/` (its metrics
    /// log, resolved config and, unless `tolaria.checkpoint.dir` says otherwise,
    /// its checkpoints). Default `runs`.
    pub dir: PathBuf,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            run_id: None,
            experiment: "default".into(),
            seed: 0,
            dir: PathBuf::from("runs"),
        }
    }
}

impl RunConfig {
    fn validate(&self) -> Result<()> {
        if let Some(id) = &self.run_id {
            let ok = !id.is_empty()
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !ok {
                return Err(Error::Config(leyline::ConfigError::at(
                    "run.run_id",
                    format!(
                        "{id:?} must be non-empty and use only letters, digits, '.', '_' and '-'"
                    ),
                )));
            }
        }
        if self.dir.as_os_str().is_empty() {
            return Err(Error::Config(leyline::ConfigError::at(
                "run.dir",
                "must not be empty",
            )));
        }
        if self.experiment.trim().is_empty() {
            return Err(Error::Config(leyline::ConfigError::at(
                "run.experiment",
                "must not be empty",
            )));
        }
        Ok(())
    }
}

impl EsperConfig {
    /// Checks every section, naming the key of the first bad value.
    pub fn validate(&self) -> Result<()> {
        self.run.validate()?;
        self.leyline.validate("leyline").map_err(|e| match e {
            leyline::Error::Config(e) => Error::Config(e),
            other => Error::Leyline(other),
        })?;
        self.tolaria.validate("tolaria").map_err(|e| match e {
            tolaria::Error::Config(e) => Error::Config(e),
            other => Error::Tolaria(other),
        })?;
        self.oona.validate()?;
        self.urza.validate()?;
        self.runtime.listen_addr()?;
        if self.runtime.linger_s > 3_600 {
            return Err(Error::Config(leyline::ConfigError::at(
                "runtime.linger_s",
                "at most 3600",
            )));
        }
        self.kasmina.validate()?;
        self.tamiyo.validate()?;
        // A key generated per process cannot verify messages from another one.
        if let (oona::config::BackendConfig::Redis { .. }, SecretSource::Ephemeral) =
            (&self.oona.backend, &self.leyline.security.secret)
        {
            return Err(Error::Config(leyline::ConfigError::at(
                "leyline.security.secret",
                "an ephemeral secret cannot be shared between processes; with the redis \
                         backend use { source = \"env\", var = ... } or { source = \"file\", path = ... }",
            )));
        }
        // A policy file is signed in one process and checked in another.
        if self.tamiyo.controller == tamiyo::Controller::Learned {
            match (&self.tamiyo.learned.key, &self.leyline.security.secret) {
                (Some(SecretSource::Ephemeral), _) | (None, SecretSource::Ephemeral) => {
                    return Err(Error::Config(leyline::ConfigError::at(
                        "tamiyo.learned.key",
                        "a policy file's signature is checked against a key shared between \
                         processes: set tamiyo.learned.key (or leyline.security.secret) to \
                         { source = \"env\", var = ... } or { source = \"file\", path = ... }",
                    )));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The configuration as TOML (secrets are never part of it: only where they
    /// come from).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).map_err(|e| {
            Error::Config(leyline::ConfigError::at("<root>", "cannot render as TOML").caused_by(e))
        })
    }
}

/// The configuration after resolution, with what it resolved to.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The validated configuration.
    pub config: EsperConfig,
    /// The run id (configured or generated).
    pub run_id: String,
    /// The signing key every subsystem of this process signs and verifies with.
    pub signing_key: SigningKey,
    /// The key learned-policy files are signed with and checked against
    /// (`tamiyo.learned.key`, else the signing key).
    pub policy_key: SigningKey,
    /// Where values came from: the file, then each override applied.
    pub sources: Vec<String>,
}

impl Resolved {
    /// This run's directory, `<run.dir>/<run id>`.
    pub fn run_dir(&self) -> PathBuf {
        self.config.run.dir.join(&self.run_id)
    }

    /// Makes this the continuation of run `run_id`: its id, its directory, and
    /// resuming from its newest valid checkpoint. The run directory must exist.
    pub fn resume(&mut self, run_id: &str) -> Result<()> {
        let mut run = self.config.run.clone();
        run.run_id = Some(run_id.to_owned());
        run.validate()?;
        let dir = run.dir.join(run_id);
        if !dir.is_dir() {
            return Err(Error::Config(leyline::ConfigError::at(
                "run.run_id",
                format!("cannot resume {run_id:?}: {} does not exist", dir.display()),
            )));
        }
        self.config.run = run;
        self.run_id = run_id.to_owned();
        self.config.tolaria.checkpoint.resume = true;
        Ok(())
    }
}

/// Resolves the configuration from an optional file and the environment.
///
/// `env` is the process environment, passed in so that it is read exactly once (by
/// `main`) and so that tests do not depend on the real one.
pub fn load(path: Option<&Path>, env: &BTreeMap<String, String>) -> Result<Resolved> {
    let mut sources = Vec::new();
    let file = path
        .map(Path::to_path_buf)
        .or_else(|| env.get(CONFIG_ENV).map(PathBuf::from));
    let mut table = match &file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| Error::ReadConfig {
                path: path.clone(),
                source,
            })?;
            sources.push(format!("file {}", path.display()));
            toml::from_str::<toml::Table>(&text).map_err(|source| Error::ParseConfig {
                path: path.clone(),
                source,
            })?
        }
        None => toml::Table::new(),
    };

    // Overrides: ESPER_A__B=v sets a.b. Plain ESPER_X variables are checked below.
    let mut from_env: BTreeMap<String, String> = BTreeMap::new();
    let mut plain = Vec::new();
    for (var, value) in env.range(ENV_PREFIX.to_string()..) {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            break;
        };
        if var == CONFIG_ENV {
            continue;
        }
        if !rest.contains(ENV_SEPARATOR) {
            plain.push(var.clone());
            continue;
        }
        let path: Vec<String> = rest
            .split(ENV_SEPARATOR)
            .map(str::to_ascii_lowercase)
            .collect();
        if path.iter().any(String::is_empty) {
            return Err(Error::Env {
                var: var.clone(),
                detail: "empty key segment (write ESPER_SECTION__KEY)".into(),
            });
        }
        set_path(&mut table, &path, parse_scalar(value)).map_err(|detail| Error::Env {
            var: var.clone(),
            detail,
        })?;
        from_env.insert(path.join("."), var.clone());
        sources.push(format!("env {var}"));
    }

    let config: EsperConfig =
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let key = full_key(&e.path().to_string(), &e.inner().to_string());
            let origin = origin_of(&key, &from_env);
            Error::Config(leyline::ConfigError::at(
                &key,
                format!("{}{origin}", e.inner()),
            ))
        })?;
    config.validate().map_err(|e| match e {
        Error::Config(mut e) => {
            e.problem.push_str(&origin_of(&e.path(), &from_env));
            Error::Config(e)
        }
        other => other,
    })?;

    let var_of = |source: &SecretSource| match source {
        SecretSource::Env { var } => Some(var.clone()),
        SecretSource::Ephemeral | SecretSource::File { .. } => None,
    };
    let secret_vars: Vec<String> = [
        var_of(&config.leyline.security.secret),
        config.tamiyo.learned.key.as_ref().and_then(var_of),
    ]
    .into_iter()
    .flatten()
    .collect();
    if let Some(var) = plain.iter().find(|v| !secret_vars.contains(v)) {
        return Err(Error::Env {
            var: var.clone(),
            detail: format!(
                "not a known variable; overrides are written {ENV_PREFIX}<SECTION>{ENV_SEPARATOR}<KEY> (e.g. ESPER_RUN__SEED), and {CONFIG_ENV} names the config file"
            ),
        });
    }

    let signing_key = resolve_secret(&config.leyline.security.secret, env)?;
    let policy_key = match &config.tamiyo.learned.key {
        Some(source) => resolve_secret(source, env)?,
        None => signing_key.clone(),
    };
    let run_id = config.run.run_id.clone().unwrap_or_else(leyline::new_id);
    Ok(Resolved {
        config,
        run_id,
        signing_key,
        policy_key,
        sources,
    })
}

fn resolve_secret(source: &SecretSource, env: &BTreeMap<String, String>) -> Result<SigningKey> {
    let fail = |desc: String, cause: SecretProblem| Error::Secret {
        source_desc: desc,
        cause,
    };
    match source {
        SecretSource::Ephemeral => {
            SigningKey::generate().map_err(|e| fail("ephemeral".into(), SecretProblem::Key(e)))
        }
        SecretSource::Env { var } => {
            let desc = format!("environment variable {var}");
            let text = env
                .get(var)
                .ok_or_else(|| fail(desc.clone(), SecretProblem::NotSet))?;
            SigningKey::from_hex(text).map_err(|e| fail(desc, SecretProblem::Key(e)))
        }
        SecretSource::File { path } => {
            let desc = format!("file {}", path.display());
            let text = std::fs::read_to_string(path)
                .map_err(|e| fail(desc.clone(), SecretProblem::Read(e)))?;
            SigningKey::from_hex(&text).map_err(|e| fail(desc, SecretProblem::Key(e)))
        }
    }
}

/// A TOML scalar if `text` is one, else the text as a string.
fn parse_scalar(text: &str) -> toml::Value {
    format!("v = {text}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_string()))
}

fn set_path(
    table: &mut toml::Table,
    path: &[String],
    value: toml::Value,
) -> std::result::Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        return Err("empty key".into());
    };
    let mut current = table;
    for (depth, segment) in parents.iter().enumerate() {
        let entry = current
            .entry(segment.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{}` is a value, not a section", path[..=depth].join(".")))?;
    }
    current.insert(last.clone(), value);
    Ok(())
}

/// The full dotted key of a deserialisation error. Depending on the deserializer,
/// serde reports an unknown field at its own path or at its parent's; name the
/// field itself either way.
fn full_key(path: &str, message: &str) -> String {
    let unknown = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next());
    match (path, unknown) {
        (".", Some(field)) | ("", Some(field)) => field.to_string(),
        (parent, Some(field)) if parent.rsplit('.').next() == Some(field) => parent.to_string(),
        (parent, Some(field)) => format!("{parent}.{field}"),
        (".", None) | ("", None) => "<root>".to_string(),
        (parent, None) => parent.to_string(),
    }
}

fn origin_of(key: &str, from_env: &BTreeMap<String, String>) -> String {
    from_env
        .iter()
        .find(|(path, _)| {
            // The key itself, a key inside it, or (a misspelt section) the
            // section the variable's path runs through.
            key == path.as_str()
                || key.starts_with(&format!("{path}."))
                || path.starts_with(&format!("{key}."))
        })
        .map(|(_, var)| format!(" (set by {var})"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
