//! Running the `esper` binary as an operator would, for the CLI tests.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

/// `esper args` in `cwd` with exactly `env` as its `ESPER_*` environment
/// (the developer's shell cannot leak in), not started yet.
pub(crate) fn esper_command(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Command {
    // A test executable carried to another machine (scripts/gpu-suite.sh)
    // is told where the carried `esper` is; otherwise cargo's.
    let program = std::env::var_os("GPU_SUITE_ESPER")
        .unwrap_or_else(|| std::ffi::OsString::from(env!("CARGO_BIN_EXE_esper")));
    let mut cmd = Command::new(program);
    cmd.current_dir(cwd).args(args);
    for (key, _) in std::env::vars() {
        if key.starts_with("ESPER_") {
            cmd.env_remove(key);
        }
    }
    cmd.envs(env.iter().copied());
    cmd
}

/// Runs [`esper_command`] to the end.
pub(crate) fn esper_in(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Output {
    esper_command(args, cwd, env).output().unwrap()
}

/// Stdout then stderr, as text.
pub(crate) fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A loopback port free when asked (the OS picks it).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `redis-server` without persistence on a free loopback port, killed on
/// drop; `cli` runs `redis-cli` against it.
pub(crate) struct Redis {
    pub(crate) port: u16,
    child: std::process::Child,
}

impl Redis {
    pub(crate) fn start() -> Self {
        Self::start_on(free_port())
    }

    /// A fresh server (empty: no persistence) on the port of `url`, after the
    /// one there was dropped (SIGKILLed).
    pub(crate) fn start_on_port_for_test(url: &str) -> Self {
        let port = url
            .trim_end_matches("/0")
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap();
        Self::start_on(port)
    }

    fn start_on(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("redis-server is needed (apt-get install -y redis-server): {e}")
            });
        let redis = Self { port, child };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while redis.cli(&["PING"]) != "PONG" {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        redis
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub(crate) fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` over plain HTTP/1.1: (status code, body).
pub(crate) fn get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}
