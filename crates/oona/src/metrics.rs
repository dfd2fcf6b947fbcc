//! Oona's counters and latency histograms. Every figure is kept here (for
//! [`Stats::snapshot`], tests and benches) and also exported through the
//! `metrics` crate facade (`oona_*` names, labelled by stream and reason), so
//! any recorder the application installs sees them.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;

use crate::Stream;
use crate::routing::ShedReason;

const STREAMS: usize = Stream::ALL.len();

/// Latency percentiles, microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Percentiles {
    /// Samples recorded.
    pub count: u64,
    /// Median.
    pub p50_us: u64,
    /// 95th percentile.
    pub p95_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Largest sample.
    pub max_us: u64,
}

/// A copy of every counter at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatsSnapshot {
    /// Messages stored, per stream.
    pub published: BTreeMap<Stream, u64>,
    /// Messages shed by backpressure, per (stream, reason).
    pub shed: BTreeMap<(Stream, &'static str), u64>,
    /// Publish calls that failed in the backend.
    pub publish_errors: u64,
    /// Deliveries handed to consumers.
    pub delivered: u64,
    /// Deliveries that were redeliveries (attempt > 1).
    pub retries: u64,
    /// Entries moved to the dead-letter stream.
    pub dead_lettered: u64,
    /// Entries moved to the quarantine stream, per reason.
    pub quarantined: BTreeMap<String, u64>,
    /// Pending entries lost to the length cap before they were handled.
    pub trimmed: u64,
    /// Last sampled depth per stream.
    pub depth: BTreeMap<Stream, u64>,
    /// Publish call latency.
    pub publish_latency: Percentiles,
    /// Publish-to-delivery latency (publisher's clock to consumer's clock).
    pub delivery_latency: Percentiles,
    /// Times conservative mode was entered.
    pub conservative_entries: u64,
    /// Backend interruptions and the publications held through them.
    pub outage: crate::OutageStats,
    /// Consumer groups found missing (a restarted server without
    /// persistence) and created again.
    pub groups_recreated: u64,
}

impl StatsSnapshot {
    /// All quarantined entries, whatever the reason.
    pub fn quarantined_total(&self) -> u64 {
        self.quarantined.values().sum()
    }

    /// All shed messages, whatever the stream or reason.
    pub fn shed_total(&self) -> u64 {
        self.shed.values().sum()
    }
}

/// Shared counters of one `Oona` handle and its subscriptions.
#[derive(Debug)]
pub(crate) struct Stats {
    published: [AtomicU64; STREAMS],
    shed: [[AtomicU64; 2]; STREAMS],
    publish_errors: AtomicU64,
    delivered: AtomicU64,
    retries: AtomicU64,
    dead_lettered: AtomicU64,
    trimmed: AtomicU64,
    groups_recreated: AtomicU64,
    depth: [AtomicU64; STREAMS],
    quarantined: Mutex<BTreeMap<String, u64>>,
    publish_latency: Mutex<Histogram<u64>>,
    delivery_latency: Mutex<Histogram<u64>>,
}

// 1 µs .. 1 h at 3 significant digits. `new_with_bounds` fails only for
// invalid constant bounds, which these are not (a unit test builds one).
#[allow(clippy::expect_used)]
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant histogram bounds are valid")
}

fn percentiles(h: &Mutex<Histogram<u64>>) -> Percentiles {
    let h = h.lock().unwrap_or_else(|p| p.into_inner());
    Percentiles {
        count: h.len(),
        p50_us: h.value_at_quantile(0.50),
        p95_us: h.value_at_quantile(0.95),
        p99_us: h.value_at_quantile(0.99),
        max_us: h.max(),
    }
}

fn shed_index(reason: ShedReason) -> usize {
    match reason {
        ShedReason::DepthPressure => 0,
        ShedReason::Conservative => 1,
    }
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            published: Default::default(),
            shed: Default::default(),
            publish_errors: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            trimmed: AtomicU64::new(0),
            groups_recreated: AtomicU64::new(0),
            depth: Default::default(),
            quarantined: Mutex::new(BTreeMap::new()),
            publish_latency: Mutex::new(histogram()),
            delivery_latency: Mutex::new(histogram()),
        }
    }
}

impl Stats {
    pub(crate) fn published(&self, stream: Stream, latency_us: u64) {
        self.published[stream.index()].fetch_add(1, Ordering::Relaxed);
        record(&self.publish_latency, latency_us);
        metrics::counter!("oona_published_total", "stream" => stream.name()).increment(1);
        metrics::histogram!("oona_publish_latency_us", "stream" => stream.name())
            .record(latency_us as f64);
    }

    pub(crate) fn shed(&self, stream: Stream, reason: ShedReason) {
        self.shed[stream.index()][shed_index(reason)].fetch_add(1, Ordering::Relaxed);
        metrics::counter!("oona_dropped_total", "stream" => stream.name(), "reason" => reason.as_str())
            .increment(1);
    }

    pub(crate) fn publish_error(&self, stream: Stream) {
        self.publish_errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("oona_publish_errors_total", "stream" => stream.name()).increment(1);
    }

    pub(crate) fn delivered(&self, stream: Stream, attempt: u32, latency_us: u64) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        if attempt > 1 {
            self.retries.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("oona_retries_total", "stream" => stream.name()).increment(1);
        }
        record(&self.delivery_latency, latency_us);
        metrics::histogram!("oona_delivery_latency_us", "stream" => stream.name())
            .record(latency_us as f64);
    }

    pub(crate) fn dead_lettered(&self, stream: Stream) {
        self.dead_lettered.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("oona_dead_letters_total", "stream" => stream.name()).increment(1);
    }

    pub(crate) fn quarantined(&self, stream: Stream, reason: &str) {
        *self
            .quarantined
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(reason.to_owned())
            .or_default() += 1;
        metrics::counter!("oona_quarantined_total", "stream" => stream.name(), "reason" => reason.to_owned())
            .increment(1);
    }

    pub(crate) fn trimmed(&self, stream: Stream, n: u64) {
        self.trimmed.fetch_add(n, Ordering::Relaxed);
        metrics::counter!("oona_dropped_total", "stream" => stream.name(), "reason" => "trimmed")
            .increment(n);
    }

    pub(crate) fn group_recreated(&self, stream: Stream) {
        self.groups_recreated.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("oona_groups_recreated_total", "stream" => stream.name()).increment(1);
    }

    pub(crate) fn depth(&self, stream: Stream, depth: u64) {
        self.depth[stream.index()].store(depth, Ordering::Relaxed);
        metrics::gauge!("oona_depth", "stream" => stream.name()).set(depth as f64);
    }

    /// A copy of every counter.
    pub(crate) fn snapshot(&self, conservative_entries: u64) -> StatsSnapshot {
        let mut s = StatsSnapshot {
            publish_errors: self.publish_errors.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            trimmed: self.trimmed.load(Ordering::Relaxed),
            groups_recreated: self.groups_recreated.load(Ordering::Relaxed),
            quarantined: self
                .quarantined
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            publish_latency: percentiles(&self.publish_latency),
            delivery_latency: percentiles(&self.delivery_latency),
            conservative_entries,
            ..StatsSnapshot::default()
        };
        for stream in Stream::ALL {
            let i = stream.index();
            let n = self.published[i].load(Ordering::Relaxed);
            if n > 0 {
                s.published.insert(stream, n);
            }
            s.depth
                .insert(stream, self.depth[i].load(Ordering::Relaxed));
            for reason in [ShedReason::DepthPressure, ShedReason::Conservative] {
                let n = self.shed[i][shed_index(reason)].load(Ordering::Relaxed);
                if n > 0 {
                    s.shed.insert((stream, reason.as_str()), n);
                }
            }
        }
        s
    }
}

fn record(h: &Mutex<Histogram<u64>>, value_us: u64) {
    let mut h = h.lock().unwrap_or_else(|p| p.into_inner());
    h.saturating_record(value_us.max(1));
}
