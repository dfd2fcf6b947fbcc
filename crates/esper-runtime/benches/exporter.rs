//! The Prometheus exporter's cost on a training step: `cnn` epochs of
//! 2 560 images, each step reporting through `exporter::record_step` as
//! `esper train` does — first with no recorder installed (the facade's
//! no-op), then with the exporter installed and serving
//! but not scraped, then scraped over HTTP every 100 ms (150× Prometheus'
//! default rate): one warm-up epoch, then 6 measured epochs each (a
//! recorder cannot be uninstalled, so the phases cannot alternate, and
//! drift between phases shows as overhead). Then the direct cost: 200 000
//! `record_step` calls into the installed recorder, µs per call, over the
//! plain step time. Goal: ≤ 1.02 (the direct ratio; the phase ratios are
//! the end-to-end check, drift included).
//!
//! Run: `cargo bench -p esper-runtime --bench exporter` (part of `cargo xtask bench`).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: esper_ops::alloc::MiMalloc = esper_ops::alloc::MiMalloc;

fn main() {
    esper_ops::alloc::retain_freed_memory();
    esper_ops::ComputePool::new(0).unwrap().run(bench);
}

/// One epoch; returns (steps, seconds spent in them).
fn epoch(trainer: &mut tolaria::Trainer) -> (u64, f64) {
    let mut last: Option<Instant> = None;
    let (mut steps, mut seconds) = (0u64, 0.0f64);
    trainer
        .run_epoch_with_progress(&mut |p| {
            let now = Instant::now();
            if let Some(before) = last.replace(now) {
                let dt = (now - before).as_secs_f64();
                esper_runtime::exporter::record_step(
                    dt,
                    p.global_step,
                    p.loss,
                    p.accuracy,
                    p.images_per_second,
                );
                steps += 1;
                seconds += dt;
            }
        })
        .unwrap();
    (steps, seconds)
}

fn bench() {
    let dir = tempfile::tempdir().unwrap();
    let env: BTreeMap<String, String> = [
        ("ESPER_TOLARIA__HOST", "cnn"),
        ("ESPER_TOLARIA__EPOCHS", "19"),
        ("ESPER_TOLARIA__TRAIN_SIZE", "2560"),
        ("ESPER_RUN__RUN_ID", "exporter-bench"),
        ("ESPER_RUN__DIR", dir.path().join("runs").to_str().unwrap()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let resolved = esper_runtime::config::load(None, &env).unwrap();
    let mut trainer =
        tolaria::Trainer::new(resolved.config.tolaria.clone(), 0, &resolved.run_id).unwrap();
    // Warm-up (allocator, caches).
    epoch(&mut trainer);
    let mut plain = Vec::new();
    for _ in 0..6 {
        plain.push(epoch(&mut trainer));
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let exporter =
        esper_runtime::exporter::install("127.0.0.1:0".parse().unwrap(), runtime.handle()).unwrap();
    let addr = exporter.addr();
    let mut unscraped = Vec::new();
    for _ in 0..6 {
        unscraped.push(epoch(&mut trainer));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let scrapes = Arc::new(AtomicU64::new(0));
    let scraper = {
        let (stop, scrapes) = (Arc::clone(&stop), Arc::clone(&scrapes));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
                    .unwrap();
                let mut body = String::new();
                s.read_to_string(&mut body).unwrap();
                assert!(body.starts_with("HTTP/1.0 200"), "{body}");
                if body.contains("esper_step_seconds") {
                    scrapes.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let mut exported = Vec::new();
    for _ in 0..6 {
        exported.push(epoch(&mut trainer));
    }
    stop.store(true, Ordering::Relaxed);
    scraper.join().unwrap();
    let mean = |v: &[(u64, f64)]| {
        let (n, s) = v.iter().fold((0u64, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
        1e3 * s / n as f64
    };
    let (a, u, b) = (mean(&plain), mean(&unscraped), mean(&exported));
    println!("exporter overhead on the cnn training step (2 560 images/epoch, 6 epochs each):");
    println!("  no recorder: {a:.3} ms/step");
    println!(
        "  exporter installed, not scraped: {u:.3} ms/step (ratio {:.3})",
        u / a
    );
    println!(
        "  exporter installed, scraped every 100 ms ({} scrapes with the step histogram): {b:.3} ms/step",
        scrapes.load(Ordering::Relaxed)
    );
    println!("  ratio {:.3} (phases in sequence: drift included)", b / a);
    let calls = 200_000u32;
    let started = Instant::now();
    for i in 0..calls {
        esper_runtime::exporter::record_step(0.013, u64::from(i), 0.5, 0.9, 200_000.0);
    }
    let per_call_us = 1e6 * started.elapsed().as_secs_f64() / f64::from(calls);
    println!(
        "  record_step into the recorder: {per_call_us:.3} µs/call; direct ratio {:.5} (goal <= 1.02)",
        (a + per_call_us / 1e3) / a
    );
}
