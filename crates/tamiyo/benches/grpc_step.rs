//! Tamiyo's step in process vs over gRPC on loopback (`esper tamiyo serve`
//! and `tamiyo.remote`): the same heuristic service and the same packets as
//! the `step` bench (8 and 64 convolutional slots, every step on the
//! germinating path), 2 000 measured steps each, in one run. Reported:
//! p50/p99 of each and the network's share, against the 5 ms deadline a
//! trainer keeps over the network.
//!
//! Run: `cargo bench -p tamiyo --bench grpc_step` (part of `cargo xtask bench`).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use leyline::security::SigningKey;
use leyline::v1::{
    AlphaState, HardwareContext, SeedStage, SeedState, SlotKind, SlotState, SystemStatePacket,
};
use tamiyo::grpc::{RemoteTamiyo, RemoteTamiyoConfig, ServeConfig, SessionFactory};
use tamiyo::{BlueprintCache, Config, HeuristicConfig, HeuristicPolicy, TamiyoService};
use tokio_util::sync::CancellationToken;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const KEY: [u8; 32] = [9; 32];

fn packet(slots: usize, seeds: usize, epoch: u32) -> SystemStatePacket {
    let mut p = SystemStatePacket {
        version: leyline::CONTRACT_VERSION,
        current_epoch: epoch,
        // Validation loss falls 10 % per epoch: a plateau under the default 30 %.
        validation_loss: Some(0.9f64.powi(epoch as i32)),
        validation_accuracy: Some(0.8),
        training_loss: Some(0.5),
        timestamp_ms: leyline::unix_now_ms(),
        global_step: u64::from(epoch) * 100,
        packet_id: leyline::new_id(),
        source_subsystem: "bench".into(),
        training_run_id: "bench".into(),
        experiment_name: "bench".into(),
        hardware: Some(HardwareContext {
            device_type: "cpu".into(),
            device_id: "0".into(),
            total_memory_gib: 16.0,
            available_memory_gib: 8.0,
            ..HardwareContext::default()
        }),
        training_metrics: BTreeMap::from([
            ("step_ms".to_string(), 20.0),
            ("learning_rate".to_string(), 1e-3),
            // Train accuracy no better than validation: capacity-bound, so a
            // plateau is a reason to grow (the heuristic's germinating path).
            ("train_accuracy".to_string(), 0.8),
            // What a seed's rent is weighed against (cost-aware growth).
            ("host_parameters".to_string(), 100_000.0),
            ("host_forward_macs".to_string(), 5_000_000.0),
        ]),
        seed_states: Vec::new(),
        slots: (0..slots)
            .map(|i| SlotState {
                slot_id: format!("s{i}"),
                kind: SlotKind::Conv2d as i32,
                feature_shape: vec![8, 7, 7],
                stage: SeedStage::Dormant as i32,
                seed_id: String::new(),
                layer_depth: i as u32,
                activation_norm: None,
                gradient_norm: None,
            })
            .collect(),
        generation: u64::from(epoch),
    };
    for i in 0..seeds {
        p.slots[i].stage = SeedStage::Blending as i32;
        p.slots[i].seed_id = format!("seed{i}");
        p.seed_states.push(SeedState {
            seed_id: format!("seed{i}"),
            slot_id: format!("s{i}"),
            stage: SeedStage::Blending as i32,
            blueprint_id: "conv.residual".into(),
            risk_score: 0.25,
            alpha: Some(AlphaState::default()),
            blend_allowed: true,
            metrics: BTreeMap::from([("isolation_violations".to_string(), 0.0)]),
            // Measured and paying its way: the heuristic may grow another
            // (a seed without a measured contribution makes it wait).
            contribution: Some(5.0),
            ..SeedState::default()
        });
    }
    p
}

fn service() -> TamiyoService {
    let catalog: Vec<_> = urza::catalog()
        .iter()
        .map(|d| leyline::v1::CatalogEntry {
            descriptor: Some(d.descriptor()),
            ..Default::default()
        })
        .collect();
    let config = Config::default();
    TamiyoService::new(
        Arc::new(config.clone()),
        Box::new(HeuristicPolicy::new(
            HeuristicConfig {
                max_seeds: 10_000,
                ..config.heuristic
            },
            urza::select::SelectionPolicy::default(),
        )),
        Arc::new(BlueprintCache::new(
            Box::new(move || Ok(catalog.clone())),
            Duration::from_secs(3600),
        )),
        SigningKey::from_bytes(&KEY).unwrap(),
        &leyline::LimitsConfig::default(),
        Duration::from_millis(500),
    )
    .unwrap()
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let shutdown = CancellationToken::new();
    let factory: SessionFactory = Arc::new(|_run: &str| Ok(service()));
    let served = runtime
        .block_on(tamiyo::grpc::serve(
            factory,
            "127.0.0.1:0".parse().unwrap(),
            ServeConfig {
                key: SigningKey::from_bytes(&KEY).unwrap(),
                window_ms: 60_000,
                skew_ms: 5_000,
                max_sessions: 8,
                policy: "heuristic",
                step_deadline_ms: 500.0,
            },
            shutdown.clone(),
        ))
        .unwrap();
    println!(
        "tamiyo step in process vs over gRPC on loopback (heuristic, germinating path), 2 000 steps each:"
    );
    for (slots, seeds) in [(8usize, 2usize), (64, 16)] {
        let packets: Vec<_> = (1..=2_200).map(|e| packet(slots, seeds, e)).collect();
        let mut local = service();
        let mut remote = RemoteTamiyo::connect(
            RemoteTamiyoConfig {
                endpoint: format!("http://{}", served.addr),
                key: SigningKey::from_bytes(&KEY).unwrap(),
                deadline: Duration::from_secs(1),
                connect_timeout: Duration::from_secs(2),
                state_timeout: Duration::from_secs(5),
                run_id: "bench".into(),
            },
            runtime.handle().clone(),
        )
        .unwrap();
        let (mut h_local, mut h_remote) = (
            Histogram::<u64>::new(3).unwrap(),
            Histogram::<u64>::new(3).unwrap(),
        );
        let mut commands = 0;
        // Interleaved, so that drift hits both alike.
        for (i, p) in packets.iter().enumerate() {
            let t = Instant::now();
            let a = local.step(p).unwrap();
            let local_ns = t.elapsed().as_nanos() as u64;
            let t = Instant::now();
            let b = remote.step(p).unwrap();
            let remote_ns = t.elapsed().as_nanos() as u64;
            if i >= 200 {
                h_local.record(local_ns).unwrap();
                h_remote.record(remote_ns).unwrap();
                commands += usize::from(a.command().is_some() && b.command().is_some());
            }
        }
        assert_eq!(commands, 2_000, "both must take the germinating path");
        let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1e6;
        println!(
            "  {slots:>2} slots, {seeds:>2} seeds: in process p50 {:.3} ms p99 {:.3} ms | gRPC loopback p50 {:.3} ms p99 {:.3} ms ({:.1}% of the 5 ms deadline) | network adds p50 {:.3} ms",
            ms(&h_local, 0.5),
            ms(&h_local, 0.99),
            ms(&h_remote, 0.5),
            ms(&h_remote, 0.99),
            100.0 * ms(&h_remote, 0.99) / 5.0,
            ms(&h_remote, 0.5) - ms(&h_local, 0.5)
        );
    }
    shutdown.cancel();
}
