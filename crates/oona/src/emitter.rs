//! The telemetry emitter every subsystem uses: shared attributes, batching into
//! packets, a packet budget (token bucket), and a bounded queue that never
//! blocks the caller (the training thread). CRITICAL events take a separate,
//! unbounded fast path: published at once, each in its own packet, outside the
//! budget, on the emergency stream.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use leyline::telemetry::PacketBuilder;
use leyline::v1::{MetricPoint, TelemetryEvent, TelemetryLevel, TelemetryPacket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backend::Bus;
use crate::client::{Oona, Published};
use crate::config::TelemetryConfig;

/// Publish attempts for one CRITICAL event (backoff 10 ms doubling to 500 ms).
const CRITICAL_TRIES: u32 = 25;

enum Item {
    Event(TelemetryEvent),
    Metric(MetricPoint),
}

/// Counters of one emitter.
#[derive(Debug, Default)]
struct Counters {
    queued: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_budget: AtomicU64,
    packets: AtomicU64,
    critical: AtomicU64,
    publish_failures: AtomicU64,
}

/// A copy of an emitter's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmitterStats {
    /// Items accepted into the queue.
    pub queued: u64,
    /// Items dropped because the queue was full (the caller never waits).
    pub dropped_queue_full: u64,
    /// Items dropped because the packet budget was spent.
    pub dropped_budget: u64,
    /// Batched packets handed to the bus.
    pub packets: u64,
    /// CRITICAL events published on the fast path.
    pub critical: u64,
    /// Packets the bus failed to store (backend error or shed).
    pub publish_failures: u64,
}

/// The cheap, cloneable, non-blocking sending side of an emitter.
#[derive(Debug, Clone)]
pub struct EmitterHandle {
    queue: mpsc::Sender<Item>,
    critical: mpsc::UnboundedSender<TelemetryEvent>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for Item {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Item::Event(e) => f.debug_tuple("Event").field(&e.name).finish(),
            Item::Metric(m) => f.debug_tuple("Metric").field(&m.name).finish(),
        }
    }
}

impl EmitterHandle {
    /// Queues an event without waiting. CRITICAL events take the fast path and
    /// are never dropped while the emitter runs; others are dropped (counted)
    /// when the queue is full.
    pub fn emit(&self, event: TelemetryEvent) {
        if event.level == TelemetryLevel::Critical as i32 {
            if self.critical.send(event).is_ok() {
                return;
            }
            self.counters
                .dropped_queue_full
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.push(Item::Event(event));
    }

    /// Queues a metric point without waiting (dropped, counted, when full).
    pub fn metric(&self, point: MetricPoint) {
        self.push(Item::Metric(point));
    }

    fn push(&self, item: Item) {
        match self.queue.try_send(item) {
            Ok(()) => {
                self.counters.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Full(_) | mpsc::error::TrySendError::Closed(_)) => {
                self.counters
                    .dropped_queue_full
                    .fetch_add(1, Ordering::Relaxed);
                metrics::counter!("oona_telemetry_dropped_total", "reason" => "queue_full")
                    .increment(1);
            }
        }
    }

    /// A copy of the counters.
    pub fn stats(&self) -> EmitterStats {
        let c = &self.counters;
        EmitterStats {
            queued: c.queued.load(Ordering::Relaxed),
            dropped_queue_full: c.dropped_queue_full.load(Ordering::Relaxed),
            dropped_budget: c.dropped_budget.load(Ordering::Relaxed),
            packets: c.packets.load(Ordering::Relaxed),
            critical: c.critical.load(Ordering::Relaxed),
            publish_failures: c.publish_failures.load(Ordering::Relaxed),
        }
    }
}

/// A token bucket: `rate` tokens per second up to `burst`, starting full.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: u32, burst: u32) -> Self {
        Self {
            tokens: f64::from(burst),
            rate: f64::from(rate),
            burst: f64::from(burst),
            at: Instant::now(),
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let refill = now.duration_since(self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Starts an emitter task on the current tokio runtime, publishing through
/// `oona` with `attributes` added to every event. It stops (after flushing)
/// when `cancel` fires or every handle is dropped.
pub fn spawn<B: Bus>(
    oona: Oona<B>,
    config: &TelemetryConfig,
    attributes: BTreeMap<String, String>,
    cancel: CancellationToken,
) -> (EmitterHandle, JoinHandle<EmitterStats>) {
    let (queue, rx) = mpsc::channel(config.queue as usize);
    let (critical, crx) = mpsc::unbounded_channel();
    let handle = EmitterHandle {
        queue,
        critical,
        counters: Arc::default(),
    };
    let task = Task {
        oona,
        config: config.clone(),
        attributes,
        counters: Arc::clone(&handle.counters),
        bucket: Bucket::new(config.packets_per_s, config.burst),
    };
    let stats_handle = handle.clone();
    let join = tokio::spawn(async move {
        task.run(rx, crx, cancel).await;
        stats_handle.stats()
    });
    (handle, join)
}

struct Task<B: Bus> {
    oona: Oona<B>,
    config: TelemetryConfig,
    attributes: BTreeMap<String, String>,
    counters: Arc<Counters>,
    bucket: Bucket,
}

impl<B: Bus> Task<B> {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Item>,
        mut crx: mpsc::UnboundedReceiver<TelemetryEvent>,
        cancel: CancellationToken,
    ) {
        let mut pending: Vec<Item> = Vec::new();
        let flush_every = Duration::from_millis(self.config.flush_ms);
        let mut deadline = tokio::time::Instant::now() + flush_every;
        loop {
            tokio::select! {
                biased;
                Some(event) = crx.recv() => self.critical(event).await,
                () = cancel.cancelled() => break,
                item = rx.recv() => match item {
                    Some(item) => {
                        pending.push(item);
                        if pending.len() >= self.config.batch as usize {
                            self.flush(&mut pending).await;
                            deadline = tokio::time::Instant::now() + flush_every;
                        }
                    }
                    None => break,
                },
                () = tokio::time::sleep_until(deadline) => {
                    self.flush(&mut pending).await;
                    deadline = tokio::time::Instant::now() + flush_every;
                }
            }
        }
        // Drain what is already queued: critical first, then one last flush.
        while let Ok(event) = crx.try_recv() {
            self.critical(event).await;
        }
        while let Ok(item) = rx.try_recv() {
            pending.push(item);
            if pending.len() >= self.config.batch as usize {
                self.flush(&mut pending).await;
            }
        }
        self.flush(&mut pending).await;
    }

    fn packet(&self, items: Vec<Item>) -> TelemetryPacket {
        let identity = self.oona.identity();
        let mut builder =
            PacketBuilder::new(&identity.source, &identity.run_id, leyline::unix_now_ms());
        for item in items {
            builder = match item {
                Item::Event(mut e) => {
                    for (k, v) in &self.attributes {
                        e.attributes.entry(k.clone()).or_insert_with(|| v.clone());
                    }
                    builder.event(e)
                }
                Item::Metric(m) => builder.metric_point(m),
            };
        }
        builder.build()
    }

    /// CRITICAL events are retried (the backend may be reconnecting) for about
    /// ten seconds before the failure is counted; they are never shed.
    async fn critical(&mut self, event: TelemetryEvent) {
        let packet = self.packet(vec![Item::Event(event)]);
        self.counters.critical.fetch_add(1, Ordering::Relaxed);
        let mut pause = Duration::from_millis(10);
        for _ in 0..CRITICAL_TRIES {
            match self.oona.publish(&packet, packet.priority()).await {
                // Held through an outage: sent after reconnect, never dropped.
                Ok(Published::Stored { .. } | Published::Held { .. }) => return,
                Ok(Published::Shed { .. }) | Err(_) => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
            }
        }
        self.counters
            .publish_failures
            .fetch_add(1, Ordering::Relaxed);
    }

    async fn flush(&mut self, pending: &mut Vec<Item>) {
        if pending.is_empty() {
            return;
        }
        let items = std::mem::take(pending);
        if !self.bucket.take(Instant::now()) {
            self.counters
                .dropped_budget
                .fetch_add(items.len() as u64, Ordering::Relaxed);
            metrics::counter!("oona_telemetry_dropped_total", "reason" => "budget")
                .increment(items.len() as u64);
            return;
        }
        let packet = self.packet(items);
        self.counters.packets.fetch_add(1, Ordering::Relaxed);
        self.send(packet).await;
    }

    async fn send(&self, packet: TelemetryPacket) {
        let priority = packet.priority();
        match self.oona.publish(&packet, priority).await {
            Ok(Published::Stored { .. } | Published::Held { .. }) => {}
            Ok(Published::Shed { .. }) | Err(_) => {
                self.counters
                    .publish_failures
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
