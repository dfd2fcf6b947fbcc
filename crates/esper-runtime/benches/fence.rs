//! The control fence as a fraction of training time: `esper train`'s control
//! plane (state assembly, Tamiyo's step, Kasmina applying the command) on
//! `cnn-impaired`, with a fence every 10 steps and a heuristic that sees a
//! plateau at every epoch end (so it germinates as soon as the budget
//! allows), over 4 epochs of 2 560 images. Reported: fences, mean and
//! slowest fence, and fence time over the training loop's wall time (fences
//! included; validation and counterfactual passes not). Goal ≤ 2 %.
//!
//! Run: `cargo bench -p esper-runtime --bench fence` (part of `cargo xtask bench`).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::Duration;

use esper_runtime::{RunBus, control};

#[global_allocator]
static GLOBAL: esper_ops::alloc::MiMalloc = esper_ops::alloc::MiMalloc;

fn main() {
    // As `esper train` runs: freed memory retained, on the compute pool.
    esper_ops::alloc::retain_freed_memory();
    esper_ops::ComputePool::new(0).unwrap().run(bench);
}

fn bench() {
    let dir = tempfile::tempdir().unwrap();
    let env: BTreeMap<String, String> = [
        ("ESPER_TOLARIA__HOST", "cnn-impaired"),
        ("ESPER_TOLARIA__EPOCHS", "4"),
        ("ESPER_TOLARIA__TRAIN_SIZE", "2560"),
        ("ESPER_TOLARIA__FENCE_EVERY_STEPS", "10"),
        ("ESPER_TAMIYO__HEURISTIC__PLATEAU_MIN_IMPROVEMENT", "1.0"),
        ("ESPER_RUN__RUN_ID", "fence-bench"),
        ("ESPER_RUN__DIR", dir.path().join("runs").to_str().unwrap()),
        (
            "ESPER_URZA__ROOT",
            dir.path().join("urza").to_str().unwrap(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let resolved = esper_runtime::config::load(None, &env).unwrap();
    std::fs::create_dir_all(resolved.run_dir()).unwrap();
    let bus = RunBus::start(&resolved, "bench").unwrap();
    let trainer =
        tolaria::Trainer::new(resolved.config.tolaria.clone(), 0, &resolved.run_id).unwrap();
    let slots = trainer.host().slots().to_vec();
    let device = trainer.device().clone();
    let plane = control::build(&resolved, &slots, &device, &bus)
        .unwrap()
        .expect("the heuristic controller is on");
    let budget = resolved.config.leyline.budgets.performance.control_fence_ms;
    let mut trainer = trainer
        .with_kasmina(plane.kasmina)
        .unwrap()
        .with_control_hook(Box::new(plane.hook), Duration::from_secs_f64(budget / 1e3))
        .unwrap();
    let reports = trainer.run(|_| {}).unwrap();
    let (train, _) = trainer.dataset_sizes();
    let (mut fences, mut fence_ms, mut slowest, mut train_ms, mut misses) =
        (0u32, 0.0f64, 0.0f64, 0.0f64, 0u32);
    for r in &reports {
        fences += r.fences.fences;
        fence_ms += r.fences.total_ms;
        slowest = slowest.max(r.fences.slowest_ms);
        misses += r.fences.deadline_misses;
        train_ms += 1e3 * train as f64 / r.train_images_per_second;
    }
    let decisions: Vec<_> = trainer
        .drain_decisions()
        .into_iter()
        .filter(|d| d.kind != tolaria::fence::DecisionKind::Wait)
        .collect();
    println!(
        "control fence on cnn-impaired, {} epochs, {fences} fences ({} commands, seeds: {}):",
        reports.len(),
        decisions.len(),
        trainer
            .seed_summaries()
            .iter()
            .map(|s| format!("{} {}", s.slot, s.stage.as_str_name()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  fence mean {:.3} ms, slowest hook {slowest:.2} ms ({misses} over the {budget} ms budget); fences {fence_ms:.1} ms of {train_ms:.0} ms training = {:.2}% (goal <= 2%)",
        fence_ms / f64::from(fences.max(1)),
        100.0 * fence_ms / train_ms
    );
    for d in &decisions {
        println!(
            "  step {:>4} | {} | {} | {}",
            d.global_step, d.action, d.rule, d.evidence
        );
    }
    for e in trainer.drain_events() {
        if e.name == "command_rejected" || e.name == "seed_culled" {
            println!("  {}: {}", e.name, e.description);
        }
    }
    bus.finish().unwrap();
}
