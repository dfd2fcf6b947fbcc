//! `redis-outage`: `esper train` on the Redis Streams backend while the
//! drill kills redis-server (SIGKILL) and starts it again on the same port
//! and append-only file. Training must go on and end as the same run with no
//! outage does; the bus's own account of what it published, shed and lost is
//! printed.

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
        .args(["--appendonly", "yes", "--appendfsync", "always"])
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

pub(super) fn redis_outage(ctx: &Ctx) -> Result<Finding> {
    let dir = ctx.dir("redis-outage")?;
    let data = dir.join("redis");
    std::fs::create_dir_all(&data)?;
    let url = format!("redis://127.0.0.1:{PORT}/0");
    let key = "5e".repeat(32);
    let base = [
        ("ESPER_OONA__BACKEND__KIND", "redis"),
        ("ESPER_OONA__BACKEND__URL", url.as_str()),
        ("ESPER_LEYLINE__SECURITY__SECRET__SOURCE", "env"),
        ("ESPER_LEYLINE__SECURITY__SECRET__VAR", "ESPER_SECRET"),
        ("ESPER_SECRET", key.as_str()),
        ("ESPER_TOLARIA__HOST", "cnn-impaired"),
        ("ESPER_TOLARIA__EPOCHS", "10"),
        (
            "ESPER_LEYLINE__BUDGETS__PERFORMANCE__TAMIYO_STEP_DEADLINE_MS",
            "10000",
        ),
    ];
    let mut server = redis(&data)?;
    let calm = ctx.esper(
        &dir,
        &["train"],
        &with(&base, &[("ESPER_RUN__RUN_ID", "calm")]),
    )?;
    if !calm.status.success() {
        let _ = server.kill();
        bail!("the run without an outage failed: {}", text(&calm));
    }
    let errors = dir.join("outage.stderr");
    let mut child = ctx
        .command(
            &dir,
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
            let _ = server.kill();
            let _ = child.kill();
            return Err(e);
        }
    };
    let down = Instant::now();
    let _ = kill(server.id(), "-KILL");
    let _ = server.wait();
    std::thread::sleep(Duration::from_millis(800));
    server = redis(&data)?;
    let outage_ms = down.elapsed().as_millis();
    let mut rest = String::new();
    for line in reader.by_ref().lines() {
        rest.push_str(&line?);
        rest.push('\n');
    }
    let status = child.wait()?;
    let _ = reader.read_to_string(&mut rest);
    let _ = server.kill();
    let _ = server.wait();
    let same = records(&dir.join("runs/calm"))? == records(&dir.join("runs/outage"))?;
    let bus_line = |t: &str| {
        t.lines()
            .find(|l| l.contains("oona (redis"))
            .unwrap_or("(no bus line)")
            .split(" — ")
            .nth(1)
            .unwrap_or("?")
            .to_owned()
    };
    let (bus, calm_bus) = (bus_line(&rest), bus_line(&text(&calm)));
    let stderr = std::fs::read_to_string(&errors).unwrap_or_default();
    let unpublished =
        rest.matches("not published").count() + stderr.matches("not published").count();
    Ok(Finding::check(
        status.success() && same,
        format!(
            "redis-server killed after epoch 2, back after {outage_ms} ms: exit {}, every epoch \
             bit-identical to the run without an outage: {same}; {unpublished} publication(s) \
             reported as lost while it was down; bus: {bus} (without the outage: {calm_bus}). \
             Not drilled yet: emergency signals raised during the outage",
            status.code().unwrap_or(-1)
        ),
    ))
}
