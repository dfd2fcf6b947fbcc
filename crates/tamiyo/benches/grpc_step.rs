//! Tamiyo's step in process vs over gRPC on loopback (`esper tamiyo serve`
//! and `tamiyo.remote`): the same heuristic service and the same packets as
//! the `step` bench (8 and 64 convolutional slots, every step on the
//! germinating path), 2 000 measured steps each, in one run. Reported:
//! p50/p99 of each and the network's share, against the 5 ms deadline a
//! trainer keeps over the network.
//!
//! Run: `cargo bench -p tamiyo --bench grpc_step` (part of `cargo xtask bench`).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use leyline::security::SigningKey;
use tamiyo::grpc::{RemoteTamiyo, RemoteTamiyoConfig, ServeConfig, SessionFactory};
use tamiyo::{BlueprintCache, Config, HeuristicConfig, HeuristicPolicy, TamiyoService};
use tokio_util::sync::CancellationToken;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "common/mod.rs"]
mod common;
use common::packet;

const KEY: [u8; 32] = [9; 32];

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
