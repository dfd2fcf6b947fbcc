//! The typed `[leyline]` section of `esper.toml`.
//!
//! Every field has a documented default (the numbers of docs/DESIGN.md §10), unknown keys
//! are rejected by serde, and [`Config::validate`] rejects out-of-range values
//! naming the full dotted key.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::v1::{MemoryBudgets, PerformanceBudgets, SystemLimits};

/// Leyline's configuration: message security, shared limits and budgets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Signing secret, replay ledger and freshness windows.
    pub security: SecurityConfig,
    /// Hard limits shared by every subsystem.
    pub limits: LimitsConfig,
    /// Latency and memory budgets.
    pub budgets: BudgetsConfig,
}

/// Where the HMAC secret comes from. Signing is mandatory; there is no unsigned mode.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case", deny_unknown_fields)]
pub enum SecretSource {
    /// A random key generated at start-up, valid for one process only: right for
    /// the embedded single-process run, wrong for anything that crosses processes.
    #[default]
    Ephemeral,
    /// A hex key (at least 32 bytes) in the named environment variable, read once
    /// at start-up.
    Env {
        /// Variable name, e.g. `ESPER_SECRET`.
        var: String,
    },
    /// A hex key (at least 32 bytes) in a file, read once at start-up.
    File {
        /// Path of the file.
        path: PathBuf,
    },
}

/// Message security settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// Where the signing secret comes from (default: ephemeral).
    pub secret: SecretSource,
    /// How long a seen message id is remembered, seconds (default 300).
    pub nonce_ttl_s: u32,
    /// Most ids remembered at once (default 10 000).
    pub nonce_capacity: u32,
    /// Oldest accepted message, seconds after issue (default 60).
    pub freshness_window_s: u32,
    /// Furthest accepted issue time in the future, seconds (default 5).
    pub future_skew_s: u32,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            secret: SecretSource::Ephemeral,
            nonce_ttl_s: 300,
            nonce_capacity: 10_000,
            freshness_window_s: 60,
            future_skew_s: 5,
        }
    }
}

/// Limits shared by every subsystem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Most seeds germinated in one epoch (default 100).
    pub max_seeds_per_epoch: u32,
    /// Deepest a bounded queue may grow (default 10 000).
    pub max_queue_depth: u32,
    /// Attempts before a message is dead-lettered (default 3).
    pub max_retries: u32,
    /// Epochs a culled slot stays embargoed (default 5).
    pub embargo_epochs: u32,
    /// Longest CHANNEL blend alpha vector (default 64).
    pub max_channel_alpha: u32,
    /// Most mesh layers a seed command may name (default 128).
    pub max_mesh_layers: u32,
    /// Most telemetry events queued per seed (default 64).
    pub max_pending_events_per_seed: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_seeds_per_epoch: 100,
            max_queue_depth: 10_000,
            max_retries: 3,
            embargo_epochs: 5,
            max_channel_alpha: 64,
            max_mesh_layers: 128,
            max_pending_events_per_seed: 64,
        }
    }
}

/// Latency and memory budgets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetsConfig {
    /// Latency budgets.
    pub performance: PerformanceBudgetsConfig,
    /// Memory budgets.
    pub memory: MemoryBudgetsConfig,
}

/// Latency budgets in milliseconds (docs/DESIGN.md §10).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PerformanceBudgetsConfig {
    /// Whole control fence: state + Tamiyo + apply + checks (default 18).
    pub control_fence_ms: f64,
    /// Assembling the state packet (default 3.5).
    pub state_assembly_ms: f64,
    /// Tamiyo's share of the fence (default 12).
    pub tamiyo_inference_ms: f64,
    /// Applying a command (default 1.5).
    pub command_apply_ms: f64,
    /// Health checks at the fence (default 1).
    pub fence_checks_ms: f64,
    /// Tamiyo step deadline, p99 on CPU (default 5).
    pub tamiyo_step_deadline_ms: f64,
    /// Kernel load from cache, p95 (default 0.2).
    pub kernel_load_cached_p95_ms: f64,
    /// Kernel load cold, p95 (default 10).
    pub kernel_load_cold_p95_ms: f64,
    /// Fast (in-RAM) rollback (default 500).
    pub fast_rollback_ms: f64,
    /// Full (checkpoint) rollback (default 12 000).
    pub full_rollback_ms: f64,
    /// Emergency signal end to end (default 100).
    pub emergency_signal_ms: f64,
    /// Oona publish p99 (default 5).
    pub oona_publish_p99_ms: f64,
    /// Oona delivery p99 (default 25).
    pub oona_delivery_p99_ms: f64,
    /// Command verification: HMAC + nonce + freshness (default 0.5).
    pub command_verification_ms: f64,
    /// One isolation check (default 8).
    pub isolation_check_ms: f64,
    /// One isolation hook (default 0.1).
    pub isolation_hook_ms: f64,
    /// Allowed training-step slowdown from dormant slots, fraction (default 0.01).
    pub dormant_overhead_fraction: f64,
}

impl Default for PerformanceBudgetsConfig {
    fn default() -> Self {
        Self {
            control_fence_ms: 18.0,
            state_assembly_ms: 3.5,
            tamiyo_inference_ms: 12.0,
            command_apply_ms: 1.5,
            fence_checks_ms: 1.0,
            tamiyo_step_deadline_ms: 5.0,
            kernel_load_cached_p95_ms: 0.2,
            kernel_load_cold_p95_ms: 10.0,
            fast_rollback_ms: 500.0,
            full_rollback_ms: 12_000.0,
            emergency_signal_ms: 100.0,
            oona_publish_p99_ms: 5.0,
            oona_delivery_p99_ms: 25.0,
            command_verification_ms: 0.5,
            isolation_check_ms: 8.0,
            isolation_hook_ms: 0.1,
            dormant_overhead_fraction: 0.01,
        }
    }
}

/// Memory budgets in GiB.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryBudgetsConfig {
    /// Distillation teacher (default 7).
    pub teacher_gib: f64,
    /// In-RAM known-good snapshots for fast rollback (default 1).
    pub fast_rollback_cache_gib: f64,
}

impl Default for MemoryBudgetsConfig {
    fn default() -> Self {
        Self {
            teacher_gib: 7.0,
            fast_rollback_cache_gib: 1.0,
        }
    }
}

fn out_of_range(key: String, detail: impl Into<String>) -> Error {
    Error::Config(crate::ConfigError::at(&key, detail))
}

fn positive(prefix: &str, name: &str, value: f64) -> Result<()> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(out_of_range(
            format!("{prefix}.{name}"),
            format!("{value} must be a finite number > 0"),
        ))
    }
}

fn at_least_one(prefix: &str, name: &str, value: u32) -> Result<()> {
    if value >= 1 {
        Ok(())
    } else {
        Err(out_of_range(
            format!("{prefix}.{name}"),
            "must be at least 1",
        ))
    }
}

impl Config {
    /// Checks every value; `prefix` is the section's dotted path (`"leyline"`).
    pub fn validate(&self, prefix: &str) -> Result<()> {
        let sec = &self.security;
        let p = format!("{prefix}.security");
        match &sec.secret {
            SecretSource::Ephemeral => {}
            SecretSource::Env { var } if var.trim().is_empty() => {
                return Err(out_of_range(
                    format!("{p}.secret.var"),
                    "must name an environment variable",
                ));
            }
            SecretSource::File { path } if path.as_os_str().is_empty() => {
                return Err(out_of_range(format!("{p}.secret.path"), "must name a file"));
            }
            SecretSource::Env { .. } | SecretSource::File { .. } => {}
        }
        at_least_one(&p, "nonce_ttl_s", sec.nonce_ttl_s)?;
        at_least_one(&p, "nonce_capacity", sec.nonce_capacity)?;
        at_least_one(&p, "freshness_window_s", sec.freshness_window_s)?;
        if sec.nonce_ttl_s < sec.freshness_window_s.saturating_add(sec.future_skew_s) {
            return Err(out_of_range(
                format!("{p}.nonce_ttl_s"),
                format!(
                    "{} s is shorter than freshness_window_s + future_skew_s = {} s: replays of fresh messages would pass",
                    sec.nonce_ttl_s,
                    sec.freshness_window_s.saturating_add(sec.future_skew_s)
                ),
            ));
        }

        let l = &self.limits;
        let p = format!("{prefix}.limits");
        for (name, value) in [
            ("max_seeds_per_epoch", l.max_seeds_per_epoch),
            ("max_queue_depth", l.max_queue_depth),
            ("max_retries", l.max_retries),
            ("max_channel_alpha", l.max_channel_alpha),
            ("max_mesh_layers", l.max_mesh_layers),
            ("max_pending_events_per_seed", l.max_pending_events_per_seed),
        ] {
            at_least_one(&p, name, value)?;
        }

        let b = &self.budgets.performance;
        let p = format!("{prefix}.budgets.performance");
        for (name, value) in [
            ("control_fence_ms", b.control_fence_ms),
            ("state_assembly_ms", b.state_assembly_ms),
            ("tamiyo_inference_ms", b.tamiyo_inference_ms),
            ("command_apply_ms", b.command_apply_ms),
            ("fence_checks_ms", b.fence_checks_ms),
            ("tamiyo_step_deadline_ms", b.tamiyo_step_deadline_ms),
            ("kernel_load_cached_p95_ms", b.kernel_load_cached_p95_ms),
            ("kernel_load_cold_p95_ms", b.kernel_load_cold_p95_ms),
            ("fast_rollback_ms", b.fast_rollback_ms),
            ("full_rollback_ms", b.full_rollback_ms),
            ("emergency_signal_ms", b.emergency_signal_ms),
            ("oona_publish_p99_ms", b.oona_publish_p99_ms),
            ("oona_delivery_p99_ms", b.oona_delivery_p99_ms),
            ("command_verification_ms", b.command_verification_ms),
            ("isolation_check_ms", b.isolation_check_ms),
            ("isolation_hook_ms", b.isolation_hook_ms),
            ("dormant_overhead_fraction", b.dormant_overhead_fraction),
        ] {
            positive(&p, name, value)?;
        }
        if b.dormant_overhead_fraction >= 1.0 {
            return Err(out_of_range(
                format!("{p}.dormant_overhead_fraction"),
                "must be below 1 (it is a fraction)",
            ));
        }
        let parts =
            b.state_assembly_ms + b.tamiyo_inference_ms + b.command_apply_ms + b.fence_checks_ms;
        if parts > b.control_fence_ms + 1e-9 {
            return Err(out_of_range(
                format!("{p}.control_fence_ms"),
                format!(
                    "{} ms is less than the sum of its parts ({parts} ms)",
                    b.control_fence_ms
                ),
            ));
        }

        let m = &self.budgets.memory;
        let p = format!("{prefix}.budgets.memory");
        positive(&p, "teacher_gib", m.teacher_gib)?;
        positive(&p, "fast_rollback_cache_gib", m.fast_rollback_cache_gib)?;
        Ok(())
    }

    /// The limits as the Leyline message other services receive.
    pub fn system_limits(&self) -> SystemLimits {
        let (l, s) = (&self.limits, &self.security);
        SystemLimits {
            max_seeds_per_epoch: l.max_seeds_per_epoch,
            max_queue_depth: l.max_queue_depth,
            max_retries: l.max_retries,
            nonce_ttl_s: s.nonce_ttl_s,
            nonce_capacity: s.nonce_capacity,
            freshness_window_s: s.freshness_window_s,
            future_skew_s: s.future_skew_s,
            embargo_epochs: l.embargo_epochs,
            max_channel_alpha: l.max_channel_alpha,
            max_mesh_layers: l.max_mesh_layers,
            max_pending_events_per_seed: l.max_pending_events_per_seed,
        }
    }

    /// The latency budgets as the Leyline message.
    pub fn performance_budgets(&self) -> PerformanceBudgets {
        let b = &self.budgets.performance;
        PerformanceBudgets {
            control_fence_ms: b.control_fence_ms,
            state_assembly_ms: b.state_assembly_ms,
            tamiyo_inference_ms: b.tamiyo_inference_ms,
            command_apply_ms: b.command_apply_ms,
            fence_checks_ms: b.fence_checks_ms,
            tamiyo_step_deadline_ms: b.tamiyo_step_deadline_ms,
            kernel_load_cached_p95_ms: b.kernel_load_cached_p95_ms,
            kernel_load_cold_p95_ms: b.kernel_load_cold_p95_ms,
            fast_rollback_ms: b.fast_rollback_ms,
            full_rollback_ms: b.full_rollback_ms,
            emergency_signal_ms: b.emergency_signal_ms,
            oona_publish_p99_ms: b.oona_publish_p99_ms,
            oona_delivery_p99_ms: b.oona_delivery_p99_ms,
            command_verification_ms: b.command_verification_ms,
            isolation_check_ms: b.isolation_check_ms,
            isolation_hook_ms: b.isolation_hook_ms,
            dormant_overhead_fraction: b.dormant_overhead_fraction,
        }
    }

    /// The memory budgets as the Leyline message.
    pub fn memory_budgets(&self) -> MemoryBudgets {
        MemoryBudgets {
            teacher_gib: self.budgets.memory.teacher_gib,
            fast_rollback_cache_gib: self.budgets.memory.fast_rollback_cache_gib,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_design_numbers() {
        let c = Config::default();
        c.validate("leyline").unwrap();
        let limits = c.system_limits();
        assert_eq!((limits.nonce_ttl_s, limits.nonce_capacity), (300, 10_000));
        assert_eq!((limits.freshness_window_s, limits.future_skew_s), (60, 5));
        assert_eq!(c.performance_budgets().command_verification_ms, 0.5);
    }

    #[test]
    fn out_of_range_values_name_their_key() {
        let mut c = Config::default();
        c.security.nonce_ttl_s = 30;
        let err = c.validate("leyline").unwrap_err().to_string();
        assert!(err.contains("leyline.security.nonce_ttl_s"), "{err}");

        let mut c = Config::default();
        c.budgets.performance.isolation_hook_ms = f64::NAN;
        let err = c.validate("leyline").unwrap_err().to_string();
        assert!(
            err.contains("leyline.budgets.performance.isolation_hook_ms"),
            "{err}"
        );

        let mut c = Config::default();
        c.security.secret = SecretSource::Env { var: " ".into() };
        assert!(
            c.validate("leyline")
                .unwrap_err()
                .to_string()
                .contains("leyline.security.secret.var")
        );
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = toml::from_str::<Config>("[security]\nnonce_ttl = 5\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("nonce_ttl"), "{err}");
        let err = toml::from_str::<Config>(
            "[security.secret]\nsource = \"env\"\nvar = \"X\"\nextra = 1\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("extra"), "{err}");
        let parsed: Config =
            toml::from_str("[security.secret]\nsource = \"file\"\npath = \"/k\"\n").unwrap();
        assert_eq!(
            parsed.security.secret,
            SecretSource::File { path: "/k".into() }
        );
    }
}
