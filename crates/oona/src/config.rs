//! Oona's typed configuration (`[oona]` in the Esper config file), with
//! documented defaults. Resolved once by `esper-runtime` and passed down.

use serde::{Deserialize, Serialize};

/// Which backend carries the streams.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum BackendConfig {
    /// In-process queues (the embedded default; one process only).
    InProcess,
    /// Redis Streams.
    Redis {
        /// Server URL, e.g. `redis://127.0.0.1:6379/0`.
        url: String,
    },
}

/// All of Oona's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Backend (default: in-process).
    pub backend: BackendConfig,
    /// Prefix of every stream name (default `oona`; streams are `oona.normal`, …).
    pub namespace: String,
    /// Approximate length cap of the capped streams (`XADD MAXLEN ~`, default 100 000).
    pub max_len: u64,
    /// Longest a consumer blocks waiting for new entries, ms (default 100; at most 500
    /// so that cancellation is honoured within 500 ms).
    pub block_ms: u64,
    /// Entries read per call (default 128).
    pub batch: u32,
    /// An unacknowledged entry idle this long is reclaimed and redelivered, ms (default 5 000).
    pub claim_idle_ms: u64,
    /// Delay before an entry whose handler failed is redelivered, ms (default 100).
    pub retry_backoff_ms: u64,
    /// Housekeeping trims acknowledged entries older than this, s (default 3 600).
    pub retention_s: u64,
    /// How often housekeeping runs (trim, depth sampling), s (default 60).
    pub housekeeping_s: u64,
    /// How long a sampled stream depth is reused for routing, ms (default 50).
    pub depth_refresh_ms: u64,
    /// Backpressure and conservative mode.
    pub backpressure: BackpressureConfig,
    /// The telemetry emitter.
    pub telemetry: TelemetryConfig,
    /// Riding out a backend outage.
    pub outage: OutageConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            backend: BackendConfig::InProcess,
            namespace: "oona".to_owned(),
            max_len: 100_000,
            block_ms: 100,
            batch: 128,
            claim_idle_ms: 5_000,
            retry_backoff_ms: 100,
            retention_s: 3_600,
            housekeeping_s: 60,
            depth_refresh_ms: 50,
            backpressure: BackpressureConfig::default(),
            telemetry: TelemetryConfig::default(),
            outage: OutageConfig::default(),
        }
    }
}

/// What a publish does when the backend refuses it with a transient error
/// (Redis restarting, a dropped connection): retry briefly, then hold it in
/// a bounded local buffer and send it after the backend answers again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutageConfig {
    /// Publications held at most (default 10 000; emergency signals are never
    /// dropped and may exceed it). 0 turns holding off: a refused publish is
    /// an error for the caller, after the retries.
    pub buffer: u32,
    /// Quick retries of a refused publish before it is held (default 2).
    pub retries: u32,
    /// Pause before the first quick retry, doubling after each, ms (default 25).
    pub retry_ms: u64,
    /// While publications are held, how often a publish (or the background
    /// flusher) tries the backend again, ms (default 500); the others are
    /// held without a round trip, so an outage costs the caller little time.
    pub probe_ms: u64,
    /// At the end of a run, how long held publications may still wait for
    /// the backend before the rest is reported undelivered, ms (default 5 000).
    pub exit_drain_ms: u64,
}

impl Default for OutageConfig {
    fn default() -> Self {
        Self {
            buffer: 10_000,
            retries: 2,
            retry_ms: 25,
            probe_ms: 500,
            exit_drain_ms: 5_000,
        }
    }
}

/// When the bus turns conservative. The per-stream shedding depth is the shared
/// limit `leyline.limits.max_queue_depth`, and the attempts before dead-lettering
/// are `leyline.limits.max_retries`: one value each for every subsystem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackpressureConfig {
    /// Conservative mode is entered when any stream is this deep (default 50 000).
    pub conservative_enter_depth: u64,
    /// … and left when every stream is at most this deep (default 5 000) and
    /// the mode has lasted at least `conservative_min_ms`.
    pub conservative_exit_depth: u64,
    /// Shortest time in conservative mode, ms (default 1 000).
    pub conservative_min_ms: u64,
}

impl Default for BackpressureConfig {
    fn default() -> Self {
        Self {
            conservative_enter_depth: 50_000,
            conservative_exit_depth: 5_000,
            conservative_min_ms: 1_000,
        }
    }
}

/// The telemetry emitter's batching and budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Events held before the emitter drops new ones (default 4 096).
    pub queue: u32,
    /// Most events in one packet (default 64).
    pub batch: u32,
    /// A partial batch is flushed after this long, ms (default 250).
    pub flush_ms: u64,
    /// Telemetry packets per second, sustained (default 50). CRITICAL events
    /// bypass this budget.
    pub packets_per_s: u32,
    /// Burst allowance of the packet budget (default 100).
    pub burst: u32,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            queue: 4_096,
            batch: 64,
            flush_ms: 250,
            packets_per_s: 50,
            burst: 100,
        }
    }
}

use leyline::ConfigError;

impl Config {
    /// Rejects values that would make the bus misbehave, naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |key, problem: &str| Err(ConfigError::new("oona", key, problem));
        if self.namespace.is_empty() || self.namespace.contains(char::is_whitespace) {
            return err("namespace", "must be non-empty without whitespace");
        }
        if let BackendConfig::Redis { url } = &self.backend
            && !(url.starts_with("redis://") || url.starts_with("rediss://"))
        {
            return err("backend.url", "must start with redis:// or rediss://");
        }
        if self.max_len == 0 {
            return err("max_len", "must be at least 1");
        }
        if self.block_ms == 0 || self.block_ms > 500 {
            return err("block_ms", "must be in 1..=500 (cancellation bound)");
        }
        if self.housekeeping_s == 0 {
            return err("housekeeping_s", "must be at least 1");
        }
        if self.batch == 0 {
            return err("batch", "must be at least 1");
        }
        if self.retry_backoff_ms > self.claim_idle_ms {
            return err("retry_backoff_ms", "must not exceed claim_idle_ms");
        }
        let bp = &self.backpressure;
        if bp.conservative_exit_depth >= bp.conservative_enter_depth {
            return err(
                "backpressure.conservative_exit_depth",
                "must be below conservative_enter_depth (hysteresis)",
            );
        }
        let t = &self.telemetry;
        if t.queue == 0 || t.batch == 0 || t.packets_per_s == 0 || t.burst == 0 {
            return err(
                "telemetry",
                "queue, batch, packets_per_s and burst must be at least 1",
            );
        }
        let o = &self.outage;
        if o.probe_ms == 0 {
            return err("outage.probe_ms", "must be at least 1");
        }
        if o.retries > 10 || o.retry_ms > 5_000 {
            return err(
                "outage.retries",
                "at most 10 retries of at most 5 000 ms (a publish must not stall for minutes)",
            );
        }
        Ok(())
    }

    /// The full name of `stream` under this namespace.
    pub fn stream_key(&self, stream: crate::Stream) -> String {
        format!("{}.{}", self.namespace, stream.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_name_their_key() {
        Config::default().validate().unwrap();
        let c = Config {
            block_ms: 900,
            ..Config::default()
        };
        assert_eq!(c.validate().unwrap_err().key, "block_ms");
        let mut c = Config::default();
        c.backpressure.conservative_exit_depth = c.backpressure.conservative_enter_depth;
        assert!(c.validate().unwrap_err().key.contains("exit_depth"));
        let c: Result<Config, _> = toml::from_str("backend = { kind = \"redis\", urll = \"x\" }");
        assert!(c.unwrap_err().to_string().contains("urll"));
    }
}
