//! Issue #18 item 5: the fleet on one machine against a real `redis-server`.
//! Three `esper worker` processes take a 6-run cohort submitted with
//! `esper cohort --fleet`; one worker is SIGKILLed in the middle of a job.
//! Its job is reclaimed by another worker once its lease lapses, and every
//! run completes exactly once in the cohort's results.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{Redis, esper_command};

const SECRET: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn esper(cwd: &Path, url: &str, args: &[&str]) -> Command {
    esper_command(
        args,
        cwd,
        &[
            ("ESPER_OONA__BACKEND__KIND", "redis"),
            ("ESPER_OONA__BACKEND__URL", url),
            ("ESPER_LEYLINE__SECURITY__SECRET__SOURCE", "env"),
            // Not an ESPER_ name: a cohort's runs get no ESPER_ variables
            // besides overrides, which they do not get either.
            ("ESPER_LEYLINE__SECURITY__SECRET__VAR", "FLEET_TEST_SECRET"),
            ("FLEET_TEST_SECRET", SECRET),
            // A dead worker's job is reclaimed after 2 s without a renewal.
            ("ESPER_OONA__CLAIM_IDLE_MS", "2000"),
        ],
    )
}

fn worker(dir: &Path, url: &str, n: usize) -> Child {
    let log = std::fs::File::create(dir.join(format!("worker{n}.log"))).unwrap();
    esper(dir, url, &["worker", "--dir", "w", "--threads", "1"])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn three_workers_finish_a_six_run_cohort_once_each_though_one_is_killed() {
    let redis = Redis::start();
    let url = redis.url();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"fleet\"\nseeds = [1, 2, 3]\ndir = \"{}\"\n[config.tolaria]\nhost = \"mlp\"\nepochs = 2\ntrain_size = 4096\n[[arm]]\nkind = \"static-small\"\n[[arm]]\nkind = \"heuristic\"\n",
            dir.path().join("runs").display()
        ),
    )
    .unwrap();
    let mut workers: Vec<Child> = (0..3).map(|n| worker(dir.path(), &url, n)).collect();
    let out = dir.path().join("cohort.log");
    let log = std::fs::File::create(&out).unwrap();
    let mut cohort = esper(
        dir.path(),
        &url,
        &["cohort", file.to_str().unwrap(), "--fleet"],
    )
    .stdout(log.try_clone().unwrap())
    .stderr(log)
    .stdin(Stdio::null())
    .spawn()
    .unwrap();
    // Kill the first worker seen in the middle of a job.
    let deadline = Instant::now() + Duration::from_secs(120);
    let (victim, job) = 'found: loop {
        assert!(Instant::now() < deadline, "no worker started a job");
        for n in 0..3 {
            let log = read(&dir.path().join(format!("worker{n}.log")));
            if let Some(line) = log.lines().rev().find(|l| l.contains(" (attempt 1/")) {
                let job = line
                    .split(": job ")
                    .nth(1)
                    .unwrap()
                    .split(' ')
                    .next()
                    .unwrap();
                if !log.contains(&format!("job {job} done")) {
                    break 'found (n, job.to_owned());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    workers[victim].kill().unwrap();
    workers[victim].wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        if let Some(status) = cohort.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the cohort did not finish: {}",
            read(&out)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let t = read(&out);
    // Two arms make no verdict (exit 2, naming the missing arm) — the runs
    // are what is checked here.
    assert_eq!(status.code(), Some(2), "{t}");
    assert!(t.contains("has no static-big arm"), "{t}");
    assert!(t.contains("6 run(s) now, 0 skipped, 0 failed"), "{t}");
    for arm in ["static-small", "heuristic"] {
        for seed in 1..=3 {
            let id = format!("fleet-{arm}-s{seed}");
            assert_eq!(t.matches(&format!("] {id} done: ")).count(), 1, "{id}: {t}");
            let summary: serde_json::Value = serde_json::from_str(&read(
                &dir.path().join("runs").join(&id).join("summary.json"),
            ))
            .unwrap();
            assert_eq!(summary["run_id"], id.as_str());
            assert!(
                dir.path()
                    .join("runs")
                    .join(&id)
                    .join("metrics.jsonl")
                    .is_file()
            );
            assert!(
                dir.path()
                    .join("runs")
                    .join(&id)
                    .join("cohort.json")
                    .is_file()
            );
        }
    }
    // The killed worker's job went to another worker, as its second delivery.
    let survivors: String = (0..3)
        .filter(|&n| n != victim)
        .map(|n| read(&dir.path().join(format!("worker{n}.log"))))
        .collect();
    assert!(
        survivors.contains(&format!("job {job} (attempt 2/")),
        "{job} not reclaimed: {survivors}"
    );
    // SIGTERM: the survivors, idle, stop cleanly.
    for (n, w) in workers.iter_mut().enumerate() {
        if n == victim {
            continue;
        }
        let pid = w.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let status = w.wait().unwrap();
        let log = read(&dir.path().join(format!("worker{n}.log")));
        assert!(status.success(), "{log}");
        assert!(log.contains("stopped by SIGTERM"), "{log}");
    }
    // Every group the submitter made is gone; the workers' group stays.
    let groups = redis.cli(&["XINFO", "GROUPS", "oona.job_results"]);
    assert!(!groups.contains("fleet.fleet"), "{groups}");
}

/// `esper policy train --fleet`: an update's episodes and baselines run on
/// two workers; the policy snapshot travels with the jobs, the trajectories
/// come back, and the update is scored and written as a local one would be.
#[test]
fn policy_training_runs_its_episodes_on_the_fleet() {
    let redis = Redis::start();
    let url = redis.url();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("policy.key"), "ab".repeat(32)).unwrap();
    std::fs::write(
        d.join("esper.toml"),
        "[tamiyo.learned]\nkey = { source = \"file\", path = \"policy.key\" }\n\
         [tamiyo.ppo]\nhosts = [\"cnn-impaired\"]\nepisode_epochs = 2\n\
         episode_train_size = 1024\nepisodes_per_update = 2\nseed_pool_size = 2\n",
    )
    .unwrap();
    let mut workers: Vec<Child> = (0..2).map(|n| worker(d, &url, n)).collect();
    let out = esper(
        d,
        &url,
        &[
            "--config",
            "esper.toml",
            "policy",
            "train",
            "--out",
            "p.safetensors",
            "--hidden",
            "8",
            "--updates",
            "1",
            "--fleet",
        ],
    )
    .env(
        "ESPER_LEYLINE__BUDGETS__PERFORMANCE__TAMIYO_STEP_DEADLINE_MS",
        "10000",
    )
    .output()
    .unwrap();
    let t = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for w in &mut workers {
        let _ = Command::new("kill")
            .args(["-TERM", &w.id().to_string()])
            .status();
        let _ = w.wait();
    }
    let logs: String = (0..2)
        .map(|n| read(&d.join(format!("worker{n}.log"))))
        .collect();
    assert!(out.status.success(), "{t}\n{logs}");
    assert!(t.contains("update 1/1 | 2 episode(s)"), "{t}");
    let home = d.join("runs/policy-train/p/runs");
    for run in [
        "p-cnn-impaired-baseline-s1000",
        "p-cnn-impaired-baseline-s1001",
        "p-cnn-impaired-u0-s1000",
        "p-cnn-impaired-u0-s1001",
    ] {
        assert!(home.join(run).join("summary.json").exists(), "{run}: {t}");
        if run.contains("-u0-") {
            assert!(home.join(run).join("trajectory.wal").exists(), "{run}");
        }
    }
    // Both workers took part, or one took all four: either way each run
    // ran once.
    assert_eq!(logs.matches(" done in ").count(), 4, "{logs}");
    assert!(d.join("p.safetensors").exists());
}
