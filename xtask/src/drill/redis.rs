//! `redis-outage`: `esper train` on the Redis Streams backend while the
//! drill kills redis-server (SIGKILL) and starts it again on the same port
//! with no persistence, so that the restarted server has lost every stream
//! and consumer group. Two runs:
//!
//! 1. a healthy run, killed after epoch 2 and back 0.8 s later: it must go on
//!    and end bit-identical to the same run without an outage, and its
//!    summary must report the interruption;
//! 2. a run that cannot learn (lr 50: HALT after two epochs at chance), with
//!    the server killed before its first step and started again only after
//!    the run raised its emergency signals: every signal it raised must be on
//!    the restarted server's emergency stream when it has exited.

use super::{Ctx, Finding, kill, records, text, wait_for_line, with};
use anyhow::{Context, Result, bail};
use std::io::{BufRead, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PORT: &str = "6391";

fn redis(dir: &Path) -> Result<Child> {
    let child = Command::new("redis-server")
        .args(["--port", PORT, "--bind", "127.0.0.1", "--save", ""])
        .args(["--appendonly", "no"])
        .args(["--protected-mode", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting redis-server (apt-get install -y redis-server)")?;
    // Ready when it answers.
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(format!("127.0.0.1:{PORT}")).is_err() {
        if Instant::now() > deadline {
            bail!("redis-server did not listen on {PORT}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child)
}

fn base_env<'a>(url: &'a str, key: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("ESPER_OONA__BACKEND__KIND", "redis"),
        ("ESPER_OONA__BACKEND__URL", url),
        ("ESPER_LEYLINE__SECURITY__SECRET__SOURCE", "env"),
        ("ESPER_LEYLINE__SECURITY__SECRET__VAR", "ESPER_SECRET"),
        ("ESPER_SECRET", key),
        ("ESPER_TOLARIA__HOST", "cnn-impaired"),
        (
            "ESPER_LEYLINE__BUDGETS__PERFORMANCE__TAMIYO_STEP_DEADLINE_MS",
            "10000",
        ),
    ]
}

/// The part of the bus lines after " — ": what was published, and the
/// interruption line when there was one.
fn bus_lines(t: &str) -> String {
    let lines: Vec<&str> = t
        .lines()
        .filter(|l| l.starts_with("esper train: oona"))
        .filter_map(|l| l.split(" — ").nth(1))
        .collect();
    if lines.is_empty() {
        "(no bus line)".to_owned()
    } else {
        lines.join(" | ")
    }
}

pub(super) fn redis_outage(ctx: &Ctx) -> Result<Finding> {
    let dir = ctx.dir("redis-outage")?;
    let data = dir.join("redis");
    std::fs::create_dir_all(&data)?;
    let url = format!("redis://127.0.0.1:{PORT}/0");
    let key = "5e".repeat(32);
    let base = base_env(&url, &key);
    let mut server = redis(&data)?;
    let healthy = healthy_run(ctx, &dir, &base, &data, &mut server);
    let _ = server.kill();
    let _ = server.wait();
    let (healthy_ok, healthy_figures) = healthy?;
    let (signals_ok, signal_figures) = halt_run(ctx, &dir, &base, &data)?;
    Ok(Finding::check(
        healthy_ok && signals_ok,
        format!("{healthy_figures}. {signal_figures}"),
    ))
}

/// Phase 1: a healthy run survives the outage unchanged and reports it.
fn healthy_run(
    ctx: &Ctx,
    dir: &Path,
    base: &[(&str, &str)],
    data: &Path,
    server: &mut Child,
) -> Result<(bool, String)> {
    let base = with(base, &[("ESPER_TOLARIA__EPOCHS", "10")]);
    let calm = ctx.esper(
        dir,
        &["train"],
        &with(&base, &[("ESPER_RUN__RUN_ID", "calm")]),
    )?;
    if !calm.status.success() {
        bail!("the run without an outage failed: {}", text(&calm));
    }
    let errors = dir.join("outage.stderr");
    let mut child = ctx
        .command(
            dir,
            &["train"],
            &with(&base, &[("ESPER_RUN__RUN_ID", "outage")]),
        )
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&errors)?)
        .spawn()
        .context("starting esper train")?;
    let mut reader = match wait_for_line(&mut child, "epoch   2") {
        Ok(reader) => reader,
        Err(e) => {
            let _ = child.kill();
            return Err(e);
        }
    };
    let down = Instant::now();
    let _ = kill(server.id(), "-KILL");
    let _ = server.wait();
    std::thread::sleep(Duration::from_millis(800));
    *server = redis(data)?;
    let outage_ms = down.elapsed().as_millis();
    let mut rest = String::new();
    for line in reader.by_ref().lines() {
        rest.push_str(&line?);
        rest.push('\n');
    }
    let status = child.wait()?;
    let _ = reader.read_to_string(&mut rest);
    let same = records(&dir.join("runs/calm"))? == records(&dir.join("runs/outage"))?;
    let stderr = std::fs::read_to_string(&errors).unwrap_or_default();
    let reported = rest.contains("the bus was interrupted") && rest.contains("0 undelivered");
    let told = stderr.contains("bus down (") && stderr.contains("bus back:");
    Ok((
        status.success() && same && reported && told,
        format!(
            "healthy run, redis-server killed after epoch 2 and back (empty) after {outage_ms} ms: \
             exit {}, every epoch bit-identical to the run without an outage: {same}, outage \
             told as it happened: {told}, in the summary: {reported}; bus: {}",
            status.code().unwrap_or(-1),
            bus_lines(&rest)
        ),
    ))
}

/// Phase 2: emergency signals raised while the server is down arrive after
/// it is back.
fn halt_run(ctx: &Ctx, dir: &Path, base: &[(&str, &str)], data: &Path) -> Result<(bool, String)> {
    let mut server = redis(data)?;
    let errors = dir.join("halt.stderr");
    let env = with(
        base,
        &[
            ("ESPER_RUN__RUN_ID", "halt"),
            ("ESPER_TOLARIA__EPOCHS", "8"),
            ("ESPER_TOLARIA__OPTIMIZER__LR", "50"),
            ("ESPER_TAMIYO__CONTROLLER", "off"),
        ],
    );
    let mut child = ctx
        .command(dir, &["train"], &env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting esper train")?;
    // Training starts right after this line: the server goes before any step.
    let mut reader = match wait_for_line(&mut child, "esper train: writing") {
        Ok(reader) => reader,
        Err(e) => {
            let _ = child.kill();
            let _ = server.kill();
            return Err(e);
        }
    };
    let _ = kill(server.id(), "-KILL");
    let _ = server.wait();
    let down = Instant::now();
    // Back only once the run has raised its HALT (it then waits up to
    // `oona.outage.exit_drain_ms` for the bus).
    let stderr = child.stderr.take().context("no stderr")?;
    let mut seen = String::new();
    let mut lines = std::io::BufReader::new(stderr).lines();
    for line in lines.by_ref() {
        let line = line?;
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("emergency EMERGENCY_LEVEL_HALT")
            || down.elapsed() > Duration::from_secs(120)
        {
            break;
        }
    }
    let down_ms = down.elapsed().as_millis();
    let restarted = redis(data);
    for line in lines {
        seen.push_str(&line?);
        seen.push('\n');
    }
    let mut out = String::new();
    let _ = reader.read_to_string(&mut out);
    let status = child.wait()?;
    std::fs::write(&errors, &seen)?;
    let mut server = restarted?;
    let stream = Command::new("redis-cli")
        .args(["-p", PORT, "--raw", "XRANGE", "oona.emergency", "-", "+"])
        .output()
        .context("running redis-cli");
    let _ = server.kill();
    let _ = server.wait();
    let stream = String::from_utf8_lossy(&stream?.stdout).into_owned();
    // Each signal as the operator saw it: "emergency LEVEL: reason".
    let raised: Vec<&str> = seen
        .lines()
        .filter_map(|l| l.split_once("esper train: emergency "))
        .filter_map(|(_, rest)| rest.split_once(": ").map(|(_, reason)| reason))
        .collect();
    let mut distinct = raised.clone();
    distinct.sort_unstable();
    distinct.dedup();
    let delivered = distinct.iter().filter(|r| stream.contains(**r)).count();
    let halted = !status.success() && seen.contains("EMERGENCY_LEVEL_HALT");
    let reported = out.contains("the bus was interrupted") && out.contains("0 undelivered");
    Ok((
        halted && !distinct.is_empty() && delivered == distinct.len() && reported,
        format!(
            "HALT run (lr 50), redis-server down from its first step for {down_ms} ms: exit {}, \
             {} distinct emergency signal(s) raised during the outage, {delivered} found on the \
             restarted server's emergency stream; summary reports the outage: {reported}; bus: {}",
            status.code().unwrap_or(-1),
            distinct.len(),
            bus_lines(&out)
        ),
    ))
}
