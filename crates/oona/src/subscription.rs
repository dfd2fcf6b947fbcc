//! The consuming side: read, verify, decode, hand to a handler, acknowledge.
//!
//! Every entry ends in exactly one place: acknowledged after its handler
//! succeeded, retried (same entry, delivery count from the backend) after a
//! failure, moved to the dead-letter stream after `max_attempts` deliveries, or
//! moved to the quarantine stream when it fails decoding or verification
//! (bad signature, replay, stale). Nothing is dropped silently.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use leyline::codec::{BusPayload, decode, decode_payload};
use leyline::security::{Verifier, signature_valid_encoded};
use leyline::telemetry::event;
use leyline::v1::{BusEnvelope, TelemetryLevel, VerificationFailure};
use tokio_util::sync::CancellationToken;

use crate::backend::{Bus, Origin, RawDelivery, ReadOptions, Record};
use crate::client::Oona;
use crate::{EntryId, Error, Result, StartFrom, Stream};

/// A verified, decoded message handed to a consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// Stream it came from.
    pub stream: Stream,
    /// Its entry id.
    pub entry: EntryId,
    /// Delivery count, 1 on first delivery.
    pub attempt: u32,
    /// The verified envelope.
    pub envelope: BusEnvelope,
    /// Its payload, decoded by message type.
    pub payload: BusPayload,
    /// Publisher's clock at publish, µs since the Unix epoch.
    pub published_us: u64,
    raw: RawDelivery,
}

/// What a handler says about one delivery.
pub type HandlerResult = std::result::Result<(), String>;

/// Handles deliveries in [`Subscription::run`]. Any `FnMut(&Delivery) ->
/// HandlerResult` is a handler.
pub trait Handler: Send {
    /// Handles one delivery; `Err(reason)` retries it (or dead-letters it after
    /// `max_attempts`).
    fn handle(&mut self, delivery: &Delivery) -> impl Future<Output = HandlerResult> + Send;
}

impl<F> Handler for F
where
    F: FnMut(&Delivery) -> HandlerResult + Send,
{
    fn handle(&mut self, delivery: &Delivery) -> impl Future<Output = HandlerResult> + Send {
        std::future::ready(self(delivery))
    }
}

/// What became of a failed delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailOutcome {
    /// It will be redelivered after the retry backoff.
    Retry,
    /// It was moved to the dead-letter stream.
    DeadLettered,
}

/// Totals of one [`Subscription::run`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunReport {
    /// Deliveries handed to the handler.
    pub handled: u64,
    /// … of which the handler failed.
    pub failed: u64,
    /// Entries moved to the dead-letter stream.
    pub dead_lettered: u64,
    /// Entries moved to the quarantine stream.
    pub quarantined: u64,
    /// Redeliveries of entries already handled (their ack had failed): acked again,
    /// not handled twice.
    pub duplicates_skipped: u64,
    /// Backend errors survived (retried after a pause).
    pub backend_errors: u64,
    /// Times the group was found missing (a restarted server without
    /// persistence, a deleted group) and created again.
    pub groups_recreated: u64,
}

/// Most entry ids remembered as verified or handled.
const MEMORY: usize = 65_536;

/// One consumer in one group on one stream.
#[derive(Debug)]
pub struct Subscription<B: Bus> {
    oona: Oona<B>,
    bus: B,
    stream: Stream,
    group: String,
    consumer: String,
    /// Where the group started; a group found missing before anything was
    /// read is created there again.
    start: StartFrom,
    /// The newest entry read: a group found missing is created again after
    /// it, so that nothing handled is handed over twice.
    last_read: Option<EntryId>,
    verifier: Verifier,
    /// Entries verified here and not yet acknowledged: their redelivery is not a replay.
    verified: BTreeSet<EntryId>,
    /// Entries handled here whose acknowledgement may have been lost.
    handled: BTreeSet<EntryId>,
    report: RunReport,
    /// Most entries one read returns (`oona.batch` unless set).
    batch: Option<usize>,
}

fn remember(set: &mut BTreeSet<EntryId>, id: EntryId) {
    set.insert(id);
    while set.len() > MEMORY {
        set.pop_first();
    }
}

impl<B: Bus> Subscription<B> {
    pub(crate) fn new(
        oona: Oona<B>,
        bus: B,
        stream: Stream,
        group: &str,
        consumer: &str,
        start: StartFrom,
    ) -> Self {
        let shared = oona.shared();
        let verifier = Verifier::new(shared.key.clone(), &shared.leyline.security);
        Self {
            bus,
            stream,
            group: group.to_owned(),
            consumer: consumer.to_owned(),
            start,
            last_read: None,
            verifier,
            verified: BTreeSet::new(),
            handled: BTreeSet::new(),
            report: RunReport::default(),
            batch: None,
            oona,
        }
    }

    /// Reads at most `count` entries at a time instead of `oona.batch` (a
    /// fleet worker takes one job at a time, so that the others stay
    /// available to other workers).
    pub fn with_batch(mut self, count: usize) -> Self {
        self.batch = Some(count.max(1));
        self
    }

    /// Keeps a delivery this consumer's for another `claim_idle_ms`: a
    /// handler that takes longer than that (a fleet run) renews its lease
    /// every fraction of it, and the entry is reclaimed by another consumer
    /// only once the renewals stop (its consumer died).
    pub async fn renew(&self, delivery: &Delivery) -> Result<()> {
        let idle = Duration::from_millis(self.oona.config().claim_idle_ms);
        self.bus
            .retry_later(
                self.stream,
                &self.group,
                &self.consumer,
                &delivery.raw,
                idle,
                idle,
            )
            .await
    }

    /// The stream read.
    pub fn stream(&self) -> Stream {
        self.stream
    }

    /// Totals so far.
    pub fn report(&self) -> RunReport {
        self.report
    }

    fn options(&self) -> ReadOptions {
        let c = self.oona.config();
        ReadOptions {
            count: self.batch.unwrap_or(c.batch as usize),
            block: Duration::from_millis(c.block_ms),
            claim_idle: Duration::from_millis(c.claim_idle_ms),
        }
    }

    /// Reads once (blocking at most `block_ms`) and returns the deliveries that
    /// passed verification; the rest are dead-lettered or quarantined here.
    /// A group found missing is created again (after the newest entry read
    /// here, or where it first started), with a WARNING event and a counter;
    /// that read returns nothing.
    pub async fn next_batch(&mut self) -> Result<Vec<Delivery>> {
        let batch = match self
            .bus
            .read(self.stream, &self.group, &self.consumer, self.options())
            .await
        {
            Err(Error::NoGroup { .. }) => {
                self.recreate_group().await?;
                return Ok(Vec::new());
            }
            other => other?,
        };
        if let Some(last) = batch.deliveries.iter().map(|d| d.entry).max() {
            self.last_read = Some(self.last_read.map_or(last, |l| l.max(last)));
        }
        if !batch.trimmed.is_empty() {
            self.oona
                .shared()
                .stats
                .trimmed(self.stream, batch.trimmed.len() as u64);
        }
        let mut out = Vec::with_capacity(batch.deliveries.len());
        for raw in batch.deliveries {
            if let Some(d) = self.admit(raw).await? {
                out.push(d);
            }
        }
        Ok(out)
    }

    async fn recreate_group(&mut self) -> Result<()> {
        let start = self.last_read.map_or(self.start, StartFrom::After);
        self.bus
            .ensure_group(self.stream, &self.group, start)
            .await?;
        // Whatever was pending went with the group.
        self.verified.clear();
        self.handled.clear();
        self.report.groups_recreated += 1;
        self.oona.shared().stats.group_recreated(self.stream);
        if let Some(emitter) = self.oona.shared().rejections.get() {
            let from = match start {
                StartFrom::Beginning => "the beginning".to_owned(),
                StartFrom::After(id) => format!("after {id}"),
            };
            emitter.emit(
                event(
                    "oona_group_recreated",
                    TelemetryLevel::Warning,
                    format!(
                        "consumer group {} on {} was missing (server restarted without \
                         persistence, or the group was deleted); created again from {from}",
                        self.group, self.stream
                    ),
                )
                .attr("stream", self.stream.name())
                .attr("group", self.group.as_str())
                .build(),
            );
        }
        Ok(())
    }

    /// Dead-letters, quarantines, skips or admits one raw delivery.
    async fn admit(&mut self, raw: RawDelivery) -> Result<Option<Delivery>> {
        let max = self.oona.max_attempts();
        if raw.attempt > max {
            let reason = format!("not handled after {max} attempts");
            self.move_to(Stream::DeadLetter, &raw, reason).await?;
            return Ok(None);
        }
        if self.handled.contains(&raw.entry) {
            // Handled here before; only the ack was lost.
            self.bus.ack(self.stream, &self.group, &[raw.entry]).await?;
            self.forget(raw.entry);
            self.report.duplicates_skipped += 1;
            return Ok(None);
        }
        let envelope: BusEnvelope = match decode(&raw.record.payload) {
            Ok(e) => e,
            Err(e) => {
                self.quarantine(&raw, "malformed_envelope", e.to_string())
                    .await?;
                return Ok(None);
            }
        };
        let verdict = if self.verified.contains(&raw.entry) {
            // A redelivery of an entry verified here: its id is burned already,
            // so only the signature is checked again.
            if signature_valid_encoded::<BusEnvelope>(&self.oona.shared().key, &raw.record.payload)
            {
                Ok(())
            } else {
                Err((
                    VerificationFailure::InvalidSignature.as_str_name(),
                    "redelivered entry no longer matches its signature".to_owned(),
                ))
            }
        } else {
            // Freshness is judged at the time the entry entered the bus (its id),
            // so that a legitimate retry much later is not called stale, while a
            // replayed old envelope — a new entry — still is.
            self.verifier
                .verify_encoded(&envelope, &raw.record.payload, raw.entry.ms)
                .map_err(|r| (r.reason.as_str_name(), r.detail))
        };
        if let Err((reason, detail)) = verdict {
            self.quarantine(&raw, reason, detail).await?;
            return Ok(None);
        }
        remember(&mut self.verified, raw.entry);
        let payload = match decode_payload(&envelope) {
            Ok(p) => p,
            Err(e) => {
                self.quarantine(&raw, "malformed_payload", e.to_string())
                    .await?;
                return Ok(None);
            }
        };
        let latency = crate::now_us().saturating_sub(raw.record.published_us);
        self.oona
            .shared()
            .stats
            .delivered(self.stream, raw.attempt, latency);
        Ok(Some(Delivery {
            stream: raw.stream,
            entry: raw.entry,
            attempt: raw.attempt,
            published_us: raw.record.published_us,
            envelope,
            payload,
            raw,
        }))
    }

    fn forget(&mut self, entry: EntryId) {
        self.verified.remove(&entry);
        self.handled.remove(&entry);
    }

    async fn move_to(&mut self, to: Stream, raw: &RawDelivery, reason: String) -> Result<()> {
        let record = Record {
            payload: raw.record.payload.clone(),
            published_us: raw.record.published_us,
            origin: Some(Origin {
                stream: self.stream,
                entry: raw.entry,
                attempts: raw.attempt,
                reason,
            }),
            extra: raw.record.extra.clone(),
        };
        self.bus
            .divert(self.stream, &self.group, raw.entry, to, record)
            .await?;
        self.forget(raw.entry);
        if to == Stream::DeadLetter {
            self.oona.shared().stats.dead_lettered(self.stream);
            self.report.dead_lettered += 1;
        }
        Ok(())
    }

    async fn quarantine(&mut self, raw: &RawDelivery, reason: &str, detail: String) -> Result<()> {
        let full = if detail.is_empty() {
            reason.to_owned()
        } else {
            format!("{reason}: {detail}")
        };
        self.move_to(Stream::Quarantine, raw, full.clone()).await?;
        self.oona.shared().stats.quarantined(self.stream, reason);
        self.report.quarantined += 1;
        if let Some(emitter) = self.oona.shared().rejections.get() {
            emitter.emit(
                event("oona_message_quarantined", TelemetryLevel::Warning, full)
                    .attr("stream", self.stream.name())
                    .attr("entry", raw.entry)
                    .attr("reason", reason)
                    .build(),
            );
        }
        Ok(())
    }

    /// Acknowledges a handled delivery.
    pub async fn ack(&mut self, delivery: &Delivery) -> Result<()> {
        remember(&mut self.handled, delivery.entry);
        self.bus
            .ack(self.stream, &self.group, &[delivery.entry])
            .await?;
        self.forget(delivery.entry);
        Ok(())
    }

    /// Reports a failed delivery: retried after the backoff, or dead-lettered
    /// when it has had `max_attempts` deliveries.
    pub async fn fail(&mut self, delivery: &Delivery, reason: &str) -> Result<FailOutcome> {
        let c = self.oona.config();
        if delivery.attempt >= self.oona.max_attempts() {
            let reason = format!("handler failed {} times; last: {reason}", delivery.attempt);
            self.move_to(Stream::DeadLetter, &delivery.raw, reason)
                .await?;
            return Ok(FailOutcome::DeadLettered);
        }
        let (backoff, idle) = (
            Duration::from_millis(c.retry_backoff_ms),
            Duration::from_millis(c.claim_idle_ms),
        );
        self.bus
            .retry_later(
                self.stream,
                &self.group,
                &self.consumer,
                &delivery.raw,
                backoff,
                idle,
            )
            .await?;
        Ok(FailOutcome::Retry)
    }

    /// Reads and handles until `cancel` fires (honoured within `block_ms` plus
    /// the handler's time, ≤ 500 ms with the default settings) or the bus is
    /// closed. Backend errors (e.g. Redis restarting) are counted and retried
    /// after a pause; nothing is acknowledged that was not handled.
    pub async fn run<H: Handler>(
        mut self,
        mut handler: H,
        cancel: CancellationToken,
    ) -> Result<RunReport> {
        let mut pause = Duration::from_millis(10);
        while !cancel.is_cancelled() {
            let batch = match self.next_batch().await {
                Ok(batch) => {
                    pause = Duration::from_millis(10);
                    batch
                }
                Err(Error::Closed) => break,
                Err(e) if e.is_transient() => {
                    self.report.backend_errors += 1;
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        () = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(Duration::from_millis(400));
                    continue;
                }
                Err(e) => return Err(e),
            };
            for delivery in batch {
                self.report.handled += 1;
                let outcome = handler.handle(&delivery).await;
                let step = match outcome {
                    Ok(()) => self.ack(&delivery).await,
                    Err(reason) => {
                        self.report.failed += 1;
                        self.fail(&delivery, &reason).await.map(|_| ())
                    }
                };
                match step {
                    Ok(()) => {}
                    Err(Error::Closed) => return Ok(self.report),
                    // The entry stays pending and comes back; `handled` keeps it
                    // from being handled twice. A missing group is created
                    // again by the next read.
                    Err(e) if e.is_transient() || matches!(e, Error::NoGroup { .. }) => {
                        self.report.backend_errors += 1;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(self.report)
    }
}
