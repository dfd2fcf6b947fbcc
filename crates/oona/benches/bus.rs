//! Oona throughput and latency, each against a baseline measured in the same run.
//!
//! * In-process: backend throughput (publish → read → ack of pre-signed
//!   entries, one producer and one consumer), the same through the full client
//!   path (sign, route, verify, decode), and publish-to-delivery latency at a
//!   paced 10 000 msg/s. Goal: ≥ 1M msg/s for the backend.
//! * Redis Streams (a `redis-server` started by the bench on a free port): Oona
//!   publish throughput as a ratio of raw `XADD`s of the same size with the same
//!   number in flight on one connection (goal ≥ 50 %), `redis-benchmark -t xadd`
//!   for reference when installed, and delivery latency at a paced 10 000 msg/s
//!   (goal p99 ≤ 25 ms).
//!
//! Run: `cargo bench -p oona --bench bus` (part of `cargo xtask bench`).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use leyline::v1::{MessagePriority, SystemStatePacket};
use oona::backend::{ReadOptions, Record};
use oona::{Bus, Config, Delivery, MemoryBus, Oona, StartFrom, Stream};
use tokio_util::sync::CancellationToken;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn packet(i: u64) -> SystemStatePacket {
    SystemStatePacket {
        global_step: i,
        current_epoch: 3,
        training_run_id: "run-bench".into(),
        source_subsystem: "tolaria".into(),
        validation_accuracy: Some(0.97),
        ..Default::default()
    }
}

fn bench_config() -> common::Setup {
    let mut setup = common::config();
    setup.oona = Config {
        max_len: 10_000_000,
        block_ms: 20,
        batch: 1024,
        ..Config::default()
    };
    // Measure the bus, not backpressure: nothing is shed.
    setup.leyline.limits.max_queue_depth = u32::MAX;
    setup.oona.backpressure.conservative_enter_depth = u64::MAX;
    setup.oona.backpressure.conservative_exit_depth = 0;
    setup
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// One producer, one consumer, batch reads and batch acks, on the raw backend.
async fn memory_backend_throughput(n: u64, batch: usize) -> f64 {
    let bus = MemoryBus::new(u64::MAX);
    bus.ensure_group(Stream::Normal, "g", StartFrom::Beginning)
        .await
        .unwrap();
    // A real signed envelope, encoded once: this measures the backend alone.
    let record = signed_record().await;
    let consumer = {
        let bus = bus.clone();
        tokio::spawn(async move {
            let options = ReadOptions {
                count: 1024,
                block: Duration::from_millis(20),
                claim_idle: Duration::from_secs(60),
            };
            let mut got = 0;
            let mut ids = Vec::with_capacity(1024);
            while got < n {
                let batch = bus.read(Stream::Normal, "g", "c", options).await.unwrap();
                ids.clear();
                ids.extend(batch.deliveries.iter().map(|d| d.entry));
                got += ids.len() as u64;
                bus.ack(Stream::Normal, "g", &ids).await.unwrap();
            }
        })
    };
    let start = Instant::now();
    if batch == 1 {
        for _ in 0..n {
            bus.publish(Stream::Normal, record.clone()).await.unwrap();
        }
    } else {
        for _ in 0..n / batch as u64 {
            bus.publish_many(Stream::Normal, vec![record.clone(); batch])
                .await
                .unwrap();
        }
    }
    consumer.await.unwrap();
    n as f64 / start.elapsed().as_secs_f64()
}

/// The full client path: sign + route + publish, read + verify + decode + ack.
async fn client_throughput<B: Bus>(oona: Oona<B>, n: u64, in_flight: u64) -> f64 {
    let sub = oona
        .subscribe(Stream::Normal, "g", "c", StartFrom::Beginning)
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let count = Arc::new(Mutex::new(0u64));
    let seen = Arc::clone(&count);
    let consumer = tokio::spawn(sub.run(
        move |_: &Delivery| {
            *seen.lock().unwrap() += 1;
            Ok(())
        },
        cancel.clone(),
    ));
    let start = Instant::now();
    publish_concurrently(&oona, n, in_flight).await;
    while *count.lock().unwrap() < n {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    cancel.cancel();
    consumer.await.unwrap().unwrap();
    rate
}

async fn publish_concurrently<B: Bus>(oona: &Oona<B>, n: u64, in_flight: u64) {
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..in_flight {
        let oona = oona.clone();
        tasks.spawn(async move {
            let mut i = t;
            while i < n {
                oona.publish(&packet(i), MessagePriority::Normal)
                    .await
                    .unwrap();
                i += in_flight;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
}

/// Publish rate of Oona alone (no consumer), `in_flight` publishers.
async fn publish_rate<B: Bus>(oona: &Oona<B>, n: u64, in_flight: u64) -> f64 {
    let start = Instant::now();
    publish_concurrently(oona, n, in_flight).await;
    n as f64 / start.elapsed().as_secs_f64()
}

/// Raw XADDs of an envelope-sized payload, `in_flight` at a time on one
/// multiplexed connection: what Redis and the client library can do.
async fn raw_xadd_rate(url: &str, n: u64, in_flight: u64, payload: Bytes) -> f64 {
    let client = redis::Client::open(url).unwrap();
    let conn = client.get_multiplexed_async_connection().await.unwrap();
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..in_flight {
        let mut conn = conn.clone();
        let payload = payload.clone();
        tasks.spawn(async move {
            let mut i = t;
            while i < n {
                let _: String = redis::cmd("XADD")
                    .arg("raw.baseline")
                    .arg("*")
                    .arg("e")
                    .arg(payload.as_ref())
                    .arg("p")
                    .arg(now_us())
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                i += in_flight;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Raw pipelines of `batch` XADDs, `tasks` pipelines in flight.
async fn raw_pipelined_rate(url: &str, n: u64, tasks: u64, batch: u64, payload: Bytes) -> f64 {
    let client = redis::Client::open(url).unwrap();
    let conn = client.get_multiplexed_async_connection().await.unwrap();
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..tasks {
        let mut conn = conn.clone();
        let payload = payload.clone();
        set.spawn(async move {
            for _ in 0..n / tasks / batch {
                let mut pipe = redis::pipe();
                for _ in 0..batch {
                    pipe.cmd("XADD")
                        .arg("raw.pipelined")
                        .arg("*")
                        .arg("e")
                        .arg(payload.as_ref())
                        .arg("p")
                        .arg(now_us());
                }
                let _: Vec<String> = pipe.query_async(&mut conn).await.unwrap();
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    (n / tasks / batch * tasks * batch) as f64 / start.elapsed().as_secs_f64()
}

/// Oona `publish_batch` of `batch` messages, `tasks` batches in flight.
async fn batch_publish_rate<B: Bus>(oona: &Oona<B>, n: u64, tasks: u64, batch: u64) -> f64 {
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..tasks {
        let oona = oona.clone();
        set.spawn(async move {
            let messages: Vec<SystemStatePacket> = (0..batch).map(packet).collect();
            for _ in 0..n / tasks / batch {
                oona.publish_batch(&messages, MessagePriority::Normal)
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    (n / tasks / batch * tasks * batch) as f64 / start.elapsed().as_secs_f64()
}

/// `redis-benchmark` (C client, 50 connections, pipeline 16) running
/// `XADD key * e <payload>` with a payload as long as ours, if installed.
fn redis_benchmark(port: u16, n: u64, payload_len: usize) -> Option<f64> {
    let payload = "x".repeat(payload_len);
    let out = std::process::Command::new("redis-benchmark")
        .args([
            "-p",
            &port.to_string(),
            "-n",
            &n.to_string(),
            "-c",
            "50",
            "-P",
            "16",
        ])
        .args(["--csv", "XADD", "rb.baseline", "*", "e", &payload])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // CSV: a header, then "<command>","<requests per second>",...
    text.lines()
        .nth(1)
        .and_then(|l| l.split("\",\"").nth(1))
        .and_then(|v| v.trim_matches('"').parse().ok())
}

/// Publish-to-handler latency at a paced `rate` msg/s for `seconds`.
async fn paced_latency<B: Bus>(oona: Oona<B>, rate: u64, seconds: u64) -> (u64, u64, u64, u64) {
    let sub = oona
        .subscribe(Stream::Normal, "lat", "c", StartFrom::Beginning)
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let lat = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&lat);
    let consumer = tokio::spawn(sub.run(
        move |d: &Delivery| {
            seen.lock()
                .unwrap()
                .push(now_us().saturating_sub(d.published_us));
            Ok(())
        },
        cancel.clone(),
    ));
    let per_tick = rate / 1000;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let total = rate * seconds;
    let mut sent = 0;
    while sent < total {
        tick.tick().await;
        for _ in 0..per_tick {
            oona.publish(&packet(sent), MessagePriority::Normal)
                .await
                .unwrap();
            sent += 1;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while (lat.lock().unwrap().len() as u64) < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cancel.cancel();
    consumer.await.unwrap().unwrap();
    let mut l = lat.lock().unwrap().clone();
    assert_eq!(l.len() as u64, total, "every paced message delivered");
    l.sort_unstable();
    (
        percentile(&l, 0.50),
        percentile(&l, 0.95),
        percentile(&l, 0.99),
        l.len() as u64,
    )
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        println!("oona bus bench (release, mimalloc, tokio 2 workers)");
        let n = 1_000_000;
        // Untimed warm-up: the first million entries pay for the allocator
        // growing the process's heap (page faults), not for the bus.
        memory_backend_throughput(n, 1).await;
        for batch in [1, 64] {
            let backend = memory_backend_throughput(n, batch).await;
            println!(
                "in-process backend, publish batch {batch:>2}  {backend:>10.0} msg/s  ({n} msgs → read → ack; goal ≥ 1 000 000: {})",
                if backend >= 1e6 { "met" } else { "NOT met" }
            );
        }
        let full = client_throughput(common::memory(&bench_config()), 200_000, 1).await;
        println!(
            "in-process client    sign→…→verify→ack  {full:>10.0} msg/s  (200000 msgs, incl. HMAC sign + verify)"
        );
        let (p50, p95, p99, count) = paced_latency(common::memory(&bench_config()), 10_000, 2).await;
        println!(
            "in-process latency @10k msg/s: p50 {p50} µs, p95 {p95} µs, p99 {p99} µs ({count} msgs)"
        );

        let server = common::RedisServer::start_volatile();
        let url = server.url();
        let config = bench_config();
        let oona = common::handle(server.bus(&config).await, &config);
        let payload = signed_record().await.payload;
        let in_flight = 64;
        let n = 100_000;
        let raw = raw_xadd_rate(&url, n, in_flight, payload.clone()).await;
        let ours = publish_rate(&oona, n, in_flight).await;
        println!(
            "redis raw XADD ({in_flight} in flight)         {raw:>10.0} msg/s  (baseline, same run)"
        );
        println!(
            "redis Oona publish ({in_flight} in flight)     {ours:>10.0} msg/s  ratio {:.2} (goal ≥ 0.50: {})",
            ours / raw,
            if ours / raw >= 0.5 { "met" } else { "NOT met" }
        );
        let (tasks, batch) = (4, 64);
        let raw_pipe = raw_pipelined_rate(&url, 256_000, tasks, batch, payload.clone()).await;
        let ours_batch = batch_publish_rate(&oona, 256_000, tasks, batch).await;
        println!(
            "redis raw pipelined XADD ({tasks}×{batch})       {raw_pipe:>10.0} msg/s  (baseline, same run)"
        );
        println!(
            "redis Oona publish_batch ({tasks}×{batch})       {ours_batch:>10.0} msg/s  ratio {:.2} (goal ≥ 0.50: {})",
            ours_batch / raw_pipe,
            if ours_batch / raw_pipe >= 0.5 { "met" } else { "NOT met" }
        );
        match redis_benchmark(server.port, 200_000, payload.len()) {
            Some(rb) => println!(
                "redis-benchmark XADD (-c 50 -P 16)     {rb:>10.0} msg/s  (C client; Oona publish_batch / it = {:.2})",
                ours_batch / rb
            ),
            None => println!("redis-benchmark not installed: C-client reference skipped"),
        }
        // A namespace of its own: the throughput run left 100 000 entries behind.
        let mut consumer_cfg = bench_config();
        consumer_cfg.oona.namespace = "latency".into();
        let fresh = common::handle(server.bus(&consumer_cfg).await, &consumer_cfg);
        let (p50, p95, p99, count) = paced_latency(fresh, 10_000, 3).await;
        println!(
            "redis latency @10k msg/s: p50 {p50} µs, p95 {p95} µs, p99 {p99} µs ({count} msgs; goal p99 ≤ 25 000 µs: {})",
            if p99 <= 25_000 { "met" } else { "NOT met" }
        );
    });
}

/// One signed envelope as Oona stores it.
async fn signed_record() -> Record {
    let sink = MemoryBus::new(8);
    let o = common::handle(sink.clone(), &bench_config());
    o.publish(&packet(1), MessagePriority::Normal)
        .await
        .unwrap();
    sink.range(Stream::Normal, None, 1)
        .await
        .unwrap()
        .remove(0)
        .1
}
