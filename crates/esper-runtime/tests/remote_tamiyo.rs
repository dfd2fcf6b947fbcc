//! Issue #18 item 5 (Tamiyo over gRPC) on the `esper` binary: `esper train`
//! with `tamiyo.remote` pointing at an `esper tamiyo serve` decides through
//! it; the service is killed mid-run, and the run goes on to its end with
//! every later fence's step recorded as a failure — counted, training not
//! stopped.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::common::esper_command;

const SECRET: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn esper(cwd: &Path, args: &[&str]) -> Command {
    esper_command(
        args,
        cwd,
        &[
            ("ESPER_LEYLINE__SECURITY__SECRET__SOURCE", "env"),
            ("ESPER_LEYLINE__SECURITY__SECRET__VAR", "TAMIYO_TEST_SECRET"),
            ("TAMIYO_TEST_SECRET", SECRET),
            // Loopback answers in well under a millisecond once warm; the
            // first call sets up the connection.
            (
                "ESPER_LEYLINE__BUDGETS__PERFORMANCE__TAMIYO_STEP_DEADLINE_MS",
                "2000",
            ),
        ],
    )
}

/// The service process, killed however the test ends.
struct Service(std::process::Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_killed_tamiyo_service_makes_fences_fail_counted_and_training_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::common::free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut service = Service(
        esper(dir.path(), &["tamiyo", "serve", "--listen", &listen])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(service.0.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("heuristic controller on"), "{first}");
    let remote = format!("http://{listen}");
    let runs = dir.path().join("runs");
    let mut train = esper(dir.path(), &["train"])
        .envs([
            ("ESPER_TAMIYO__REMOTE", remote.as_str()),
            ("ESPER_TOLARIA__HOST", "cnn-impaired"),
            ("ESPER_TOLARIA__EPOCHS", "6"),
            ("ESPER_TOLARIA__TRAIN_SIZE", "2048"),
            ("ESPER_RUN__RUN_ID", "remote"),
            ("ESPER_RUN__DIR", runs.to_str().unwrap()),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(train.stdout.take().unwrap());
    let mut out = String::new();
    let mut killed_after = None;
    for line in stdout.lines() {
        let line = line.unwrap();
        // Two epochs decided remotely, then the service dies.
        if killed_after.is_none() && line.starts_with("epoch   2 ") {
            service.0.kill().unwrap();
            service.0.wait().unwrap();
            killed_after = Some(Instant::now());
        }
        out.push_str(&line);
        out.push('\n');
    }
    let status = train.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut train.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{out}{err}");
    assert!(killed_after.is_some(), "{out}");
    assert!(out.contains("epoch   6 "), "{out}");
    let log = std::fs::read_to_string(runs.join("remote").join("decisions.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let epoch = |r: &serde_json::Value| r["epoch"].as_u64().unwrap();
    // Before the kill the service decided (WAITs with their rules) ...
    assert!(
        records
            .iter()
            .any(|r| epoch(r) <= 2 && r["action"] != "ERROR"),
        "{log}"
    );
    // ... after it every epoch-end fence's step failed, recorded.
    for e in 4..=6 {
        assert!(
            records
                .iter()
                .any(|r| epoch(r) == e && r["action"] == "ERROR"),
            "epoch {e}: {log}"
        );
    }
    assert!(
        records
            .iter()
            .filter(|r| epoch(r) >= 4)
            .all(|r| r["action"] == "ERROR"),
        "{log}"
    );
    assert!(err.contains("tamiyo_step_failed"), "{err}");
    let summary = std::fs::read_to_string(runs.join("remote").join("summary.json")).unwrap();
    assert!(summary.contains("\"status\": \"completed\""), "{summary}");
}
