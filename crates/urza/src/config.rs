//! Urza's typed configuration (`[urza]` in the Esper config file), with
//! documented defaults. Resolved once by `esper-runtime` and passed down.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::grpc::RemoteStoreConfig;
use crate::library::LibraryConfig;

/// All of Urza's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory of the local library (`catalog.sqlite`, `artifacts/`, `tmp/`);
    /// default `urza`.
    pub root: PathBuf,
    /// In-memory artifact cache budget, MiB (default 64).
    pub cache_mib: u64,
    /// Lookups the windowed cache hit rate covers (default 1 024).
    pub stats_window: usize,
    /// Batch size of the forge's probe input (default 8).
    pub forge_batch: usize,
    /// Timed forward passes of the forge probe (default 10).
    pub forge_runs: usize,
    /// Address `esper urza serve` listens on (default `127.0.0.1:50551`).
    pub listen: String,
    /// Endpoint of a shared Urza service (`http://host:port`); when set,
    /// trainers and `esper urza list|show` use it instead of the local library.
    /// Default: unset.
    pub remote: Option<String>,
    /// Connect timeout to the remote service, ms (default 2 000).
    pub connect_timeout_ms: u64,
    /// Per-request deadline on the remote service, ms (default 30 000; forging
    /// on demand takes a while).
    pub request_timeout_ms: u64,
    /// Most elements (C·H·W or F) a slot asked for from outside may have
    /// (default 4 194 304); larger requests are refused before anything is
    /// allocated.
    pub max_slot_elements: u64,
    /// Most parameters a forged module may have (default 32 000 000, 128 MB of
    /// f32 weights); counted from the blueprint's formula before forging.
    pub max_forge_parameters: u64,
    /// Whether `esper urza serve` requires a token made with the shared
    /// Leyline secret on the calls that change the catalog (PutArtifact,
    /// EnsureArtifact) and, when it listens beyond loopback, on reads too
    /// (default true; false lets anyone who reaches the port use and change
    /// the library, and says so at start).
    pub write_auth: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            root: PathBuf::from("urza"),
            cache_mib: 64,
            stats_window: 1024,
            forge_batch: 8,
            forge_runs: 10,
            listen: "127.0.0.1:50551".into(),
            remote: None,
            connect_timeout_ms: 2_000,
            request_timeout_ms: 30_000,
            max_slot_elements: 1 << 22,
            max_forge_parameters: 32_000_000,
            write_auth: true,
        }
    }
}

use leyline::ConfigError;

impl Config {
    /// Checks every value, naming the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key, problem: &str| ConfigError::new("urza", key, problem);
        if self.root.as_os_str().is_empty() {
            return Err(bad("root", "must not be empty"));
        }
        if self.cache_mib == 0 {
            return Err(bad("cache_mib", "must be at least 1"));
        }
        if self.stats_window == 0 {
            return Err(bad("stats_window", "must be at least 1"));
        }
        if !(1..=1024).contains(&self.forge_batch) {
            return Err(bad("forge_batch", "must be in 1..=1024"));
        }
        if !(1..=1000).contains(&self.forge_runs) {
            return Err(bad("forge_runs", "must be in 1..=1000"));
        }
        if self.max_slot_elements == 0 || self.max_forge_parameters == 0 {
            return Err(bad(
                "max_slot_elements",
                "max_slot_elements and max_forge_parameters must be at least 1",
            ));
        }
        self.listen_addr()?;
        if let Some(remote) = &self.remote
            && !(remote.starts_with("http://") || remote.starts_with("https://"))
        {
            return Err(bad("remote", "must be an http:// or https:// endpoint"));
        }
        if self.connect_timeout_ms == 0 || self.request_timeout_ms == 0 {
            return Err(bad(
                if self.connect_timeout_ms == 0 {
                    "connect_timeout_ms"
                } else {
                    "request_timeout_ms"
                },
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// The parsed listen address.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen.parse().map_err(|e| {
            ConfigError::new(
                "urza",
                "listen",
                format!("{:?} is not host:port", self.listen),
            )
            .caused_by(e)
        })
    }

    /// Settings of the local library.
    pub fn library(&self) -> LibraryConfig {
        LibraryConfig {
            root: self.root.clone(),
            cache_bytes: self.cache_mib << 20,
            stats_window: self.stats_window,
            forge_batch: self.forge_batch,
            forge_runs: self.forge_runs,
            max_slot_elements: self.max_slot_elements,
            max_forge_parameters: self.max_forge_parameters,
        }
    }

    /// Settings of the gRPC client, when a remote service is configured.
    pub fn remote_store(&self) -> Option<RemoteStoreConfig> {
        self.remote.as_ref().map(|endpoint| RemoteStoreConfig {
            endpoint: endpoint.clone(),
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            auth_key: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_name_their_key() {
        assert_eq!(Config::default().validate(), Ok(()));
        let bad = |c: Config| c.validate().unwrap_err().key;
        assert_eq!(
            bad(Config {
                cache_mib: 0,
                ..Config::default()
            }),
            "cache_mib"
        );
        assert_eq!(
            bad(Config {
                listen: "nowhere".into(),
                ..Config::default()
            }),
            "listen"
        );
        assert_eq!(
            bad(Config {
                remote: Some("tcp://x".into()),
                ..Config::default()
            }),
            "remote"
        );
        assert_eq!(Config::default().library().cache_bytes, 64 << 20);
    }
}
