//! Issue #18 item 4: `esper train` with `[runtime] listen` serves
//! `/metrics`, `/healthz` and `/readyz`, and every metric the example alert
//! rules name is in a real run's `/metrics`.

use std::io::{BufRead, BufReader};

use crate::common::get;
use std::process::{Command, Stdio};

/// The value of an unlabelled gauge in Prometheus text.
fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

/// The metric names an alert rule's expression uses (ours: prefixed).
fn rule_metrics(rules: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for line in rules.lines() {
        let Some(expr) = line.trim().strip_prefix("expr:") else {
            continue;
        };
        let names: Vec<String> = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| {
                [
                    "esper_", "oona_", "urza_", "tamiyo_", "tolaria_", "kasmina_",
                ]
                .iter()
                .any(|p| w.starts_with(p))
            })
            .map(str::to_owned)
            .collect();
        out.push((expr.trim().to_owned(), names));
    }
    out
}

#[test]
fn a_run_serves_its_metrics_and_every_alert_rule_names_one_it_exports() {
    let cwd = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_esper"));
    cmd.current_dir(cwd.path()).arg("train");
    for (key, _) in std::env::vars() {
        if key.starts_with("ESPER_") {
            cmd.env_remove(key);
        }
    }
    let mut child = cmd
        .envs([
            ("ESPER_RUNTIME__LISTEN", "127.0.0.1:0"),
            ("ESPER_RUNTIME__LINGER_S", "3"),
            ("ESPER_TOLARIA__HOST", "mlp"),
            ("ESPER_TOLARIA__TRAIN_SIZE", "1024"),
            ("ESPER_TOLARIA__EPOCHS", "3"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut addr = None;
    let (mut ready_while_training, mut seen) = (None, String::new());
    let mut step_at_epoch_1 = None;
    let mut scraped = None;
    let mut line = String::new();
    while out.read_line(&mut line).unwrap_or(0) > 0 {
        seen.push_str(&line);
        if let Some(rest) = line.strip_prefix("esper train: metrics on http://") {
            addr = rest.split('/').next().map(str::to_owned);
        }
        if let Some(addr) = &addr {
            if line.starts_with("epoch   1") {
                ready_while_training = Some(get(addr, "/readyz").0);
                step_at_epoch_1 = gauge(&get(addr, "/metrics").1, "esper_training_step");
            }
            if line.starts_with("esper train: serving the final metrics") {
                scraped = Some((
                    get(addr, "/metrics"),
                    get(addr, "/healthz"),
                    get(addr, "/readyz"),
                ));
            }
        }
        line.clear();
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "{seen}");
    let ((metrics_status, metrics), (health, _), (ready_after, _)) =
        scraped.unwrap_or_else(|| panic!("never scraped: {seen}"));
    assert_eq!(metrics_status, 200);
    assert_eq!(health, 200);
    assert_eq!(ready_while_training, Some(200), "ready while training");
    assert_eq!(ready_after, 503, "not ready once the run ended");
    // Scraped during the run and after it: the step counter advanced.
    let (during, after) = (step_at_epoch_1, gauge(&metrics, "esper_training_step"));
    assert!(
        matches!((during, after), (Some(d), Some(a)) if d > 0.0 && a > d),
        "esper_training_step during {during:?}, after {after:?}"
    );
    for name in [
        "esper_training_step",
        "esper_step_seconds_bucket",
        "esper_validation_accuracy_ratio",
        "esper_system_mode",
        "oona_published_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
    let rules = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/prometheus/esper-alerts.yml"),
    )
    .unwrap();
    let parsed = rule_metrics(&rules);
    assert!(parsed.len() >= 10, "{parsed:?}");
    for (expr, names) in parsed {
        assert!(!names.is_empty(), "rule `{expr}` names none of our metrics");
        for name in names {
            let exported = metrics
                .lines()
                .filter(|l| !l.starts_with('#'))
                .any(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")));
            assert!(
                exported,
                "rule `{expr}` uses {name}, which the run does not export:\n{metrics}"
            );
        }
    }
}
