//! Cost of signing and verifying an adaptation command (budget: < 0.5 ms for
//! verification, docs/DESIGN.md §10). Run with `cargo bench -p leyline --bench security`.

// A benchmark that cannot set itself up should abort loudly, hence `expect`.
#![allow(missing_docs, clippy::expect_used)]

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use hmac::{Hmac, Mac};
use leyline::SecurityConfig;
use leyline::security::{SigningKey, Verifier, sign, signing_bytes};
use leyline::v1::adaptation_command::Payload;
use leyline::v1::{
    AdaptationCommand, BlendConfig, BlendMode, CommandSeedOperation, CommandType, SeedOperation,
};
use std::hint::black_box;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A realistic GERMINATE command: parameters, mesh layers and a blend config.
fn command(id: u64, now: u64) -> AdaptationCommand {
    AdaptationCommand {
        version: leyline::CONTRACT_VERSION,
        command_id: format!("bench-{id}"),
        command_type: CommandType::Seed as i32,
        target_seed_id: "seed-r0-1".into(),
        issued_at_ms: now,
        deadline_at_ms: now + 5_000,
        issued_by: "tamiyo".into(),
        training_run_id: "bench-run".into(),
        generation: 7,
        payload: Some(Payload::SeedOperation(CommandSeedOperation {
            operation: SeedOperation::Germinate as i32,
            blueprint_id: "conv-residual".into(),
            parameters: (0..8).map(|i| (format!("p{i}"), f64::from(i))).collect(),
            slot_id: "r0".into(),
            mesh_layers: (0..16).map(|i| format!("layer{i}")).collect(),
            blend: Some(BlendConfig {
                mode: BlendMode::Convex as i32,
                ..Default::default()
            }),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn bench(c: &mut Criterion) {
    let key = SigningKey::generate().expect("os random source");
    let now = leyline::unix_now_ms();
    let config = SecurityConfig::default();

    // Baseline: one bare HMAC-SHA256 over the same bytes a signature covers. The
    // ratio sign_and_verify / baseline is what our canonicalisation, the freshness
    // checks and the nonce ledger cost on top of the two HMACs they must compute.
    c.bench_function("baseline_bare_hmac_sha256", |b| {
        let bytes = signing_bytes(&command(0, now));
        let mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&[7u8; 32]).expect("any key length");
        b.iter(|| {
            let mut m = mac.clone();
            m.update(black_box(&bytes));
            black_box(m.finalize().into_bytes())
        })
    });

    c.bench_function("sign_command", |b| {
        let template = command(0, now);
        b.iter_batched(
            || template.clone(),
            |mut cmd| {
                sign(&key, &mut cmd);
                cmd
            },
            BatchSize::SmallInput,
        )
    });

    // Every iteration verifies a distinct, freshly signed command, so each one runs
    // the whole path: HMAC, id, freshness and a nonce burn into a growing ledger
    // (capped at its configured 10 000 entries, so evictions happen too).
    c.bench_function("sign_and_verify_command", |b| {
        let mut verifier = Verifier::new(key.clone(), &config);
        let mut id = 0u64;
        b.iter_batched(
            || {
                id += 1;
                command(id, now)
            },
            |mut cmd| {
                sign(&key, &mut cmd);
                verifier
                    .verify(black_box(&cmd), now)
                    .expect("fresh command verifies");
            },
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
