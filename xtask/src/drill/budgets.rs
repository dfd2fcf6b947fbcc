//! Drills that hold the runtime to its time budgets: a policy past Tamiyo's
//! step deadline, emergency signals under a telemetry flood, and rollback
//! times at 10M parameters (DESIGN §10).

use super::{Ctx, Finding, text, with};
use anyhow::{Context, Result, bail};
use std::path::Path;

/// (decisions, of which missed the deadline, commands) of a run's log.
fn decision_counts(run: &Path) -> Result<(usize, usize, usize)> {
    let path = run.join("decisions.jsonl");
    let log = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    let (mut all, mut missed, mut commands) = (0, 0, 0);
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let d: serde_json::Value = serde_json::from_str(line)?;
        all += 1;
        if d["rule"] == "deadline_exceeded" {
            missed += 1;
        }
        let action = d["action"].as_str().unwrap_or("");
        if !matches!(action, "WAIT" | "VETOED" | "ERROR") {
            commands += 1;
        }
    }
    Ok((all, missed, commands))
}

/// Seeds a run's summary lists.
fn seeds_in_summary(run: &Path) -> Result<usize> {
    let path = run.join("summary.json");
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?,
    )?;
    Ok(summary["seeds"].as_array().map_or(0, Vec::len))
}

/// Tamiyo's step deadline at 1 µs, which no decision meets: every fence's
/// step times out (an epoch end's is retried once), each is logged and
/// counted, no command leaves, no seed grows — against the same run at the
/// default deadline, which grows.
pub(super) fn tamiyo_timeout(ctx: &Ctx) -> Result<Finding> {
    let dir = ctx.dir("tamiyo-timeout")?;
    let base = [
        ("ESPER_TOLARIA__HOST", "cnn-impaired"),
        ("ESPER_TOLARIA__EPOCHS", "4"),
    ];
    let control = ctx.esper(
        &dir,
        &["train"],
        &with(&base, &[("ESPER_RUN__RUN_ID", "control")]),
    )?;
    if !control.status.success() {
        bail!("the control run failed: {}", text(&control));
    }
    let late = ctx.esper(
        &dir,
        &["train"],
        &with(
            &base,
            &[
                ("ESPER_RUN__RUN_ID", "late"),
                (
                    "ESPER_LEYLINE__BUDGETS__PERFORMANCE__TAMIYO_STEP_DEADLINE_MS",
                    "0.001",
                ),
            ],
        ),
    )?;
    let (c_all, _, c_commands) = decision_counts(&dir.join("runs/control"))?;
    let c_seeds = seeds_in_summary(&dir.join("runs/control"))?;
    let (all, missed, commands) = decision_counts(&dir.join("runs/late"))?;
    let seeds = seeds_in_summary(&dir.join("runs/late"))?;
    let reported = text(&late).matches("deadline").count();
    Ok(Finding::check(
        late.status.success()
            && all > 0
            && missed == all
            && commands == 0
            && seeds == 0
            && reported > 0
            && c_commands > 0
            && c_seeds > 0,
        format!(
            "deadline 1 µs: {missed} of {all} decisions missed it (each logged; {reported} \
             report line(s) on the console), {commands} command(s), {seeds} seed(s), exit {}; \
             the same run at the default deadline: {c_commands} command(s) in {c_all} decisions, \
             {c_seeds} seed(s)",
            late.status.code().unwrap_or(-1)
        ),
    ))
}

/// The Oona flood test in a release build, each backend alone, with the
/// budget itself (p99 < 100 ms) as the bar rather than the CI test's 1 s.
pub(super) fn emergency_flood(ctx: &Ctx) -> Result<Finding> {
    let mut figures = Vec::new();
    let mut passed = true;
    for backend in ["in_process", "redis_streams"] {
        let filter = format!("{backend}::emergency_signals_cut_through_a_telemetry_flood");
        let out =
            std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .current_dir(&ctx.root)
                .args([
                    "test",
                    "--release",
                    "-q",
                    "-p",
                    "oona",
                    "--test",
                    "flood",
                    "--",
                    "--exact",
                    &filter,
                    "--nocapture",
                ])
                .output()
                .context("running the flood test")?;
        let t = text(&out);
        let line = t
            .lines()
            .find(|l| l.starts_with("emergency latency under flood:"))
            .with_context(|| {
                format!("{backend}: no latency line (is redis-server installed?): {t}")
            })?;
        let us = |key: &str| -> Result<u64> {
            line.split(key)
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
                .and_then(|s| s.parse().ok())
                .with_context(|| format!("{backend}: cannot read {key:?} in {line:?}"))
        };
        let (p50, p99) = (us("p50 ")?, us("p99 ")?);
        let ok = out.status.success() && p99 < 100_000;
        passed &= ok;
        figures.push(format!(
            "{backend}: 200 signals behind 10 000 telemetry messages, p50 {:.2} ms, p99 {:.2} ms{}",
            p50 as f64 / 1e3,
            p99 as f64 / 1e3,
            if ok {
                ""
            } else {
                " (over 100 ms, or the test failed)"
            }
        ));
    }
    Ok(Finding::check(passed, figures.join("; ")))
}

/// Fast and full rollback of 10M parameters with AdamW moments, timed by
/// tolaria's ignored `rollback_sla` test in a release build.
pub(super) fn rollback_sla(ctx: &Ctx) -> Result<Finding> {
    let out = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&ctx.root)
        .args([
            "test",
            "--release",
            "-q",
            "-p",
            "tolaria",
            "--test",
            "rollback_sla",
            "--",
            "--ignored",
            "--nocapture",
        ])
        .output()
        .context("running the rollback test")?;
    let t = text(&out);
    let line = t
        .lines()
        .find(|l| l.starts_with("rollback-sla:"))
        .with_context(|| format!("no figures printed: {t}"))?;
    Ok(Finding::check(
        out.status.success(),
        line.trim_start_matches("rollback-sla:").trim().to_owned(),
    ))
}
