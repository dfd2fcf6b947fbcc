//! `esper policy`: the learned controller's policy files — write an
//! untrained one, show one, train one with PPO on real growth episodes
//! ([`train`]).
//!
//! Policy files are signed with the policy key (`tamiyo.learned.key`, else
//! the Leyline secret); a key generated per process could never verify the
//! file in the next one, so every command here refuses to start with one.

use std::fmt::Write as _;
use std::path::Path;

use leyline::SecretSource;
use leyline::security::SigningKey;
use tamiyo::gnn::{GnnConfig, GnnModel, PolicyManifest, load_policy, save_policy};
use tamiyo::graph::Normalisers;

use crate::config::Resolved;
use crate::error::{Error, Result};

mod demos;
mod line;
pub mod reward;
pub mod train;

/// Where the policy key comes from: `tamiyo.learned.key`, else the Leyline
/// secret (what runs started for a policy must be told).
pub fn key_source(resolved: &Resolved) -> &SecretSource {
    resolved
        .config
        .tamiyo
        .learned
        .key
        .as_ref()
        .unwrap_or(&resolved.config.leyline.security.secret)
}

/// The policy key, refused when it is generated per process.
pub fn key(resolved: &Resolved) -> Result<&SigningKey> {
    if *key_source(resolved) == SecretSource::Ephemeral {
        return Err(Error::Config(leyline::ConfigError::at(
            "tamiyo.learned.key",
            "policy files are signed with a key that outlives this process: set \
             tamiyo.learned.key (or leyline.security.secret) to { source = \"env\", var = ... } \
             or { source = \"file\", path = ... }",
        )));
    }
    Ok(&resolved.policy_key)
}

fn tamiyo_error(e: tamiyo::Error) -> Error {
    Error::Runtime(format!("tamiyo: {e}"))
}

/// Writes an untrained policy (seeded Glorot weights, fresh normalisers)
/// of width `hidden` to `out`, signed; returns what to print.
pub fn init(resolved: &Resolved, out: &Path, hidden: usize, seed: u64) -> Result<String> {
    let key = key(resolved)?;
    let schema = &resolved.config.tamiyo.graph;
    let model = GnnModel::new(GnnConfig { hidden }, seed).map_err(tamiyo_error)?;
    let mut manifest = PolicyManifest::new(hidden, schema, Normalisers::new(0.05));
    manifest.provenance = format!("esper policy init --hidden {hidden} --seed {seed}");
    let saved = save_policy(out, &model, &manifest, key).map_err(tamiyo_error)?;
    Ok(format!(
        "esper policy: wrote {} (untrained, hidden {hidden}, {} weights, schema {})\n",
        out.display(),
        model
            .vars()
            .iter()
            .map(|v| v.as_tensor().elem_count())
            .sum::<usize>(),
        &saved.schema_hash[..12]
    ))
}

/// A policy file's manifest, after verifying it as a run would.
pub fn show(resolved: &Resolved, path: &Path) -> Result<String> {
    let key = key(resolved)?;
    let (model, m) = load_policy(path, key, &resolved.config.tamiyo.graph).map_err(tamiyo_error)?;
    let weights: usize = model
        .vars()
        .iter()
        .map(|v| v.as_tensor().elem_count())
        .sum();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "policy {} — signature and weights verified",
        path.display()
    );
    let _ = writeln!(out, "  format        {}", m.format);
    let _ = writeln!(
        out,
        "  architecture  {} (hidden {}, {weights} weights)",
        m.architecture, m.hidden
    );
    let _ = writeln!(out, "  graph schema  {}", m.schema_hash);
    let _ = writeln!(
        out,
        "  trained       {} update(s) on {} episode(s)",
        m.training_step, m.episodes
    );
    let _ = writeln!(out, "  created       {} (unix ms)", m.created_at_ms);
    let _ = writeln!(out, "  provenance    {}", m.provenance);
    if !m.reward.is_null() {
        let _ = writeln!(out, "  reward        {}", m.reward);
    }
    for (name, value) in &m.metrics {
        let _ = writeln!(out, "  {name:<13} {value:.4}");
    }
    let _ = writeln!(out, "  weights       sha256 {}", m.weights_sha256);
    Ok(out)
}
