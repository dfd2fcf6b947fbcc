//! Issue #21 items 6-8 on the `esper` binary: `redis-server` without
//! persistence SIGKILLed and restarted during `esper train` on the Redis
//! backend. The run finishes as if nothing happened, says when the bus went
//! down, and its summary reports the interruption; a HALT raised while Redis
//! is down reaches the restarted server; a bus that is down at start is an
//! error naming its cause once.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{self, Redis};

fn env<'a>(url: &'a str, key: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![
        ("ESPER_OONA__BACKEND__KIND", "redis"),
        ("ESPER_OONA__BACKEND__URL", url),
        ("ESPER_LEYLINE__SECURITY__SECRET__SOURCE", "env"),
        ("ESPER_LEYLINE__SECURITY__SECRET__VAR", "ESPER_SECRET"),
        ("ESPER_SECRET", key),
        ("ESPER_OONA__OUTAGE__PROBE_MS", "100"),
    ];
    env.extend_from_slice(extra);
    env
}

/// `esper train` with stdout and stderr piped; returns once `line` is on
/// stdout, with readers for the rest. The caller waits for the child it gets.
#[allow(clippy::zombie_processes)]
fn train_until(
    cwd: &std::path::Path,
    env: &[(&str, &str)],
    line: &str,
) -> (std::process::Child, BufReader<std::process::ChildStdout>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_esper"));
    cmd.current_dir(cwd).arg("train");
    for (key, _) in std::env::vars() {
        if key.starts_with("ESPER_") {
            cmd.env_remove(key);
        }
    }
    let mut child = cmd
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut next = String::new();
        if out.read_line(&mut next).unwrap_or(0) == 0 {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ended before {line:?}: {seen}");
        }
        seen.push_str(&next);
        if next.starts_with(line) {
            return (child, out);
        }
    }
}

fn finish(
    mut child: std::process::Child,
    mut out: BufReader<std::process::ChildStdout>,
) -> (std::process::ExitStatus, String, String) {
    let mut stdout = String::new();
    out.read_to_string(&mut stdout).unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (child.wait().unwrap(), stdout, stderr)
}

#[test]
fn a_redis_restart_during_training_is_survived_and_reported() {
    let cwd = tempfile::tempdir().unwrap();
    let key = "5e".repeat(32);
    let redis = Redis::start();
    let url = redis.url();
    let env = env(
        &url,
        &key,
        &[
            ("ESPER_TOLARIA__HOST", "mlp"),
            ("ESPER_TOLARIA__TRAIN_SIZE", "4096"),
            ("ESPER_TOLARIA__EPOCHS", "8"),
            ("ESPER_TAMIYO__CONTROLLER", "off"),
        ],
    );
    let (child, out) = train_until(cwd.path(), &env, "epoch   1");
    drop(redis);
    // Long enough to span epoch ends (each publishes), short of the run.
    std::thread::sleep(Duration::from_millis(1000));
    let _redis = Redis::start_on_port_for_test(&url);
    let (status, stdout, stderr) = finish(child, out);
    let all = format!("{stdout}{stderr}");
    assert!(status.success(), "{all}");
    assert!(stdout.contains("esper train: done"), "{all}");
    assert!(
        stdout.contains("the bus was interrupted 1 time(s)"),
        "{all}"
    );
    assert!(stdout.contains("0 undelivered at exit"), "{all}");
    assert!(
        stderr.contains("bus down ("),
        "told when it happened: {all}"
    );
}

#[test]
fn a_halt_raised_while_redis_is_down_reaches_the_restarted_server() {
    let cwd = tempfile::tempdir().unwrap();
    let key = "5e".repeat(32);
    let redis = Redis::start();
    let url = redis.url();
    let env = env(
        &url,
        &key,
        &[
            ("ESPER_TOLARIA__HOST", "cnn-impaired"),
            ("ESPER_TOLARIA__EPOCHS", "8"),
            ("ESPER_TOLARIA__OPTIMIZER__LR", "50"),
            ("ESPER_TAMIYO__CONTROLLER", "off"),
        ],
    );
    // Down before the first step, back only once the HALT was raised.
    let (mut child, out) = train_until(cwd.path(), &env, "esper train: writing");
    drop(redis);
    let mut errors = BufReader::new(child.stderr.take().unwrap());
    let mut stderr = String::new();
    loop {
        let mut line = String::new();
        assert!(
            errors.read_line(&mut line).unwrap() > 0,
            "no HALT: {stderr}"
        );
        stderr.push_str(&line);
        if line.contains("emergency EMERGENCY_LEVEL_HALT") {
            break;
        }
    }
    let redis = Redis::start_on_port_for_test(&url);
    let mut rest = String::new();
    errors.read_to_string(&mut rest).unwrap();
    stderr.push_str(&rest);
    let mut stdout = String::new();
    let mut out = out;
    out.read_to_string(&mut stdout).unwrap();
    let status = child.wait().unwrap();
    let all = format!("{stdout}{stderr}");
    assert!(!status.success(), "a run that cannot learn fails: {all}");
    assert!(stdout.contains("0 undelivered at exit"), "{all}");
    let stream = redis.cli(&["--raw", "XRANGE", "oona.emergency", "-", "+"]);
    let reason = stderr
        .lines()
        .find_map(|l| l.split_once("emergency EMERGENCY_LEVEL_HALT: "))
        .map(|(_, reason)| reason.to_owned())
        .unwrap();
    assert!(
        stream.contains(&reason),
        "the HALT ({reason}) is on the stream: {stream}"
    );
}

#[test]
fn a_bus_down_at_start_is_an_error_naming_its_cause_once() {
    let cwd = tempfile::tempdir().unwrap();
    let key = "5e".repeat(32);
    let redis = Redis::start();
    let url = redis.url();
    drop(redis);
    let env = env(&url, &key, &[("ESPER_TOLARIA__HOST", "mlp")]);
    let out = common::esper_in(&["train"], cwd.path(), &env);
    let t = common::text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("Connection refused"), "{t}");
    for line in t.lines() {
        assert!(
            line.matches("Connection refused").count() <= 1,
            "said once: {line}"
        );
    }
}
