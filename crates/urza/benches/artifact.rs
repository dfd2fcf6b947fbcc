//! Artifact fetch latency for a ~1 MB artifact, each path as a ratio of the
//! in-memory cache hit measured in the same run:
//!
//! * cache: `Library::fetch` of an artifact held in the byte-bounded cache
//!   (goal p95 ≤ 0.2 ms);
//! * disk: `Library::fetch` with a cache too small to hold it, so every call
//!   looks the row up in SQLite, reads the file and re-hashes it with SHA-256
//!   (goal p95 ≤ 10 ms). The file is in the OS page cache after the first read:
//!   this is "cold for Urza", not a cold disk;
//! * store: the same cache hit through `LocalStore` (tokio blocking pool);
//! * grpc: `RemoteStore::fetch_artifact` over loopback against `grpc::serve`
//!   (streamed in 64 KiB chunks, re-hashed by the client).
//!
//! Run: `cargo bench -p urza --bench artifact` (part of `cargo xtask bench`).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Instant;

use hdrhistogram::Histogram;
use tokio_util::sync::CancellationToken;
use urza::grpc::{RemoteStore, RemoteStoreConfig, serve};
use urza::{BlueprintStore, Library, LibraryConfig, LocalStore, Parameters, SlotShape};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Summary {
    name: &'static str,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
}

fn summarize(name: &'static str, h: &Histogram<u64>) -> Summary {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1e6;
    Summary {
        name,
        p50_ms: ms(0.50),
        p95_ms: ms(0.95),
        p99_ms: ms(0.99),
    }
}

fn measure(name: &'static str, runs: usize, mut f: impl FnMut()) -> Summary {
    for _ in 0..runs / 10 + 1 {
        f();
    }
    let mut h = Histogram::<u64>::new(3).unwrap();
    for _ in 0..runs {
        let t = Instant::now();
        f();
        h.record(t.elapsed().as_nanos() as u64).unwrap();
    }
    summarize(name, &h)
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let (library, _) = Library::open(LibraryConfig::new(dir.path())).unwrap();
    let library = Arc::new(library);
    let mut params = Parameters::new();
    params.insert("hidden_multiple".into(), 2.0);
    let record = library
        .ensure_artifact(
            "dense.mlp_small",
            &SlotShape::dense(256).unwrap(),
            &params,
            1,
        )
        .unwrap();
    println!(
        "artifact: dense.mlp_small on dense[256], {} parameters, {} bytes",
        record.parameter_count, record.size_bytes
    );
    let reference = record.artifact_ref.clone();

    let cache = measure("cache", 20_000, || {
        std::hint::black_box(library.fetch(&reference).unwrap());
    });

    // A second library on the same directory whose cache cannot hold the artifact.
    let mut uncached = LibraryConfig::new(dir.path());
    uncached.cache_bytes = 1024;
    let (disk_library, _) = Library::open(uncached).unwrap();
    let disk = measure("disk + sha256", 500, || {
        std::hint::black_box(disk_library.fetch(&reference).unwrap());
    });
    assert_eq!(disk_library.cache_stats().hits, 0);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let local = LocalStore::new(Arc::clone(&library));
    let store = measure("LocalStore (cache)", 5_000, || {
        runtime.block_on(async {
            std::hint::black_box(local.fetch_artifact(reference.clone()).await.unwrap());
        });
    });

    let shutdown = CancellationToken::new();
    let served = runtime
        .block_on(serve(
            Arc::clone(&library),
            "127.0.0.1:0".parse().unwrap(),
            // The bench reads only.
            urza::grpc::ServiceAuth::Open,
            shutdown.clone(),
        ))
        .unwrap();
    let remote = runtime
        .block_on(RemoteStore::connect(&RemoteStoreConfig::new(format!(
            "http://{}",
            served.addr
        ))))
        .unwrap();
    let grpc = measure("gRPC loopback", 500, || {
        runtime.block_on(async {
            std::hint::black_box(remote.fetch_artifact(reference.clone()).await.unwrap());
        });
    });
    shutdown.cancel();

    println!(
        "{:<22} {:>10} {:>10} {:>10} {:>14}",
        "path", "p50 ms", "p95 ms", "p99 ms", "p50 / cache"
    );
    for s in [&cache, &store, &disk, &grpc] {
        println!(
            "{:<22} {:>10.4} {:>10.4} {:>10.4} {:>13.1}x",
            s.name,
            s.p50_ms,
            s.p95_ms,
            s.p99_ms,
            s.p50_ms / cache.p50_ms
        );
    }
    println!(
        "goals: cache p95 {:.4} ms (<= 0.2: {}), disk p95 {:.3} ms (<= 10: {})",
        cache.p95_ms,
        if cache.p95_ms <= 0.2 { "met" } else { "MISSED" },
        disk.p95_ms,
        if disk.p95_ms <= 10.0 { "met" } else { "MISSED" },
    );
}
