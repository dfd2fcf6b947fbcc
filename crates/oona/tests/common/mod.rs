//! Test support: a real `redis-server` on a free loopback port, and Oona
//! handles on either backend with test-friendly timings.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use leyline::security::SigningKey;
use oona::{Bus, Config, Identity, MemoryBus, Oona, RedisBus};

/// The signing key every test handle shares.
pub fn key() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32]).unwrap()
}

pub fn identity(source: &str) -> Identity {
    Identity {
        source: source.into(),
        run_id: "run-test".into(),
    }
}

/// Oona's settings and the shared Leyline ones (security, limits).
#[derive(Debug, Clone)]
pub struct Setup {
    pub oona: Config,
    pub leyline: leyline::Config,
}

/// Short timings so that redelivery and dead-lettering happen within a test;
/// 3 attempts before dead-lettering (`leyline.limits.max_retries`).
pub fn config() -> Setup {
    let mut leyline = leyline::Config::default();
    leyline.limits.max_retries = 3;
    Setup {
        oona: Config {
            block_ms: 50,
            claim_idle_ms: 300,
            retry_backoff_ms: 30,
            depth_refresh_ms: 0,
            max_len: 200,
            ..Config::default()
        },
        leyline,
    }
}

pub fn handle<B: Bus>(bus: B, setup: &Setup) -> Oona<B> {
    Oona::new(bus, &setup.oona, &setup.leyline, key(), identity("test")).unwrap()
}

pub fn memory(setup: &Setup) -> Oona<MemoryBus> {
    handle(MemoryBus::new(setup.oona.max_len), setup)
}

/// A `redis-server` child process with append-only persistence (fsync on every
/// write), so that a killed and restarted server keeps every acknowledged write.
pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    durable: bool,
    child: Option<Child>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn binary() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("redis-server"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "redis-server not found on PATH: the Redis half of Oona's tests needs a real \
             server (Debian: apt-get install -y redis-server; .ci/run installs it)"
        )
    })
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(true)
    }

    /// Without persistence (benchmarks measure the bus, not the disk).
    pub fn start_volatile() -> Self {
        Self::start_with(false)
    }

    fn start_with(durable: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut server = Self {
            port: free_port(),
            dir,
            durable,
            child: None,
        };
        server.spawn();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new(binary())
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", if self.durable { "yes" } else { "no" }])
            .args(["--appendfsync", "always"])
            .args(["--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(client) = redis::Client::open(self.url())
                && let Ok(mut c) = client.get_connection()
                && redis::cmd("PING").query::<String>(&mut c).is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no shutdown, no final save.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub async fn bus(&self, setup: &Setup) -> RedisBus {
        RedisBus::connect(&self.url(), &setup.oona.namespace, setup.oona.max_len)
            .await
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Generates `in_process::<name>` and `redis_streams::<name>` tests that call
/// `super::<name>(oona)` with an `Oona` on each backend (a fresh redis-server
/// per test), optionally with a custom config.
#[allow(unused_macros)]
macro_rules! on_both_backends {
    ($($name:ident $(with $config:expr)?),* $(,)?) => {
        mod in_process {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    #[allow(unused_mut, unused_assignments)]
                    let mut config = crate::common::config();
                    $(config = $config;)?
                    super::$name(crate::common::memory(&config)).await;
                }
            )*
        }
        mod redis_streams {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    #[allow(unused_mut, unused_assignments)]
                    let mut config = crate::common::config();
                    $(config = $config;)?
                    let server = crate::common::RedisServer::start();
                    let bus = server.bus(&config).await;
                    super::$name(crate::common::handle(bus, &config)).await;
                }
            )*
        }
    };
}
