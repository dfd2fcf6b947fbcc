//! The publishing side of Oona: sign every envelope, route it, apply
//! backpressure, count everything. [`Oona`] is cheap to clone; clones share
//! the backend, the key, the mode and the counters.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use leyline::Config as LeylineConfig;
use leyline::security::{SigningKey, sign};
use leyline::v1::{
    AdaptationCommand, BusEnvelope, BusMessageType, EmergencySignal, FieldReport,
    KernelArtifactError, KernelArtifactReady, KernelCatalogUpdate, KernelPrefetchRequest,
    MessagePriority, PolicyUpdate, RunJob, RunResult, SystemStatePacket, TelemetryPacket,
};
use prost::Message;

use crate::backend::{AnyBus, Bus, MemoryBus, Record, RedisBus, StreamDepth};
use crate::config::{BackendConfig, Config};
use crate::emitter::EmitterHandle;
use crate::metrics::{Stats, StatsSnapshot};
use crate::outage::{HELD_SINCE_ATTRIBUTE, Held, Outage, OutageStats};
use crate::routing::{ModeTracker, Route, ShedReason, route};
use crate::subscription::Subscription;
use crate::{EntryId, Error, Result, StartFrom, Stream};

/// A Leyline message that travels on the bus, and its [`BusMessageType`].
pub trait BusMessage: Message {
    /// The envelope type for this message.
    const TYPE: BusMessageType;
}

macro_rules! bus_message {
    ($($ty:ty => $variant:ident),* $(,)?) => {
        $(impl BusMessage for $ty { const TYPE: BusMessageType = BusMessageType::$variant; })*
    };
}

bus_message! {
    SystemStatePacket => SystemState,
    AdaptationCommand => AdaptationCommand,
    FieldReport => FieldReport,
    TelemetryPacket => Telemetry,
    PolicyUpdate => PolicyUpdate,
    KernelPrefetchRequest => KernelPrefetchRequest,
    KernelArtifactReady => KernelPrefetchReady,
    KernelArtifactError => KernelPrefetchError,
    KernelCatalogUpdate => KernelCatalogUpdate,
    EmergencySignal => EmergencySignal,
    RunJob => RunJob,
    RunResult => RunResult,
}

/// Who publishes: stamped on every envelope, under the signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Subsystem name, e.g. `tolaria`.
    pub source: String,
    /// Training run id.
    pub run_id: String,
}

/// What became of a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// Stored on `stream` as `entry`.
    Stored {
        /// Stream it took.
        stream: Stream,
        /// Its entry id.
        entry: EntryId,
    },
    /// Not stored yet: the backend is down, so it is held locally and sent
    /// after it answers again ([`Oona::outage`] counts it).
    Held {
        /// Stream it will take.
        stream: Stream,
    },
    /// Not stored: shed by backpressure (counted).
    Shed {
        /// Stream it would have taken.
        stream: Stream,
        /// Why.
        reason: ShedReason,
    },
}

/// A handle on the bus.
#[derive(Debug)]
pub struct Oona<B: Bus = AnyBus> {
    shared: Arc<Shared<B>>,
}

impl<B: Bus> Clone for Oona<B> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Shared<B> {
    pub(crate) bus: B,
    pub(crate) key: SigningKey,
    pub(crate) identity: Identity,
    pub(crate) config: Config,
    pub(crate) leyline: LeylineConfig,
    pub(crate) stats: Stats,
    mode: Mutex<ModeTracker>,
    depths: Mutex<[Option<(Instant, u64)>; Stream::ALL.len()]>,
    outage: Mutex<Outage>,
    pub(crate) rejections: OnceLock<EmitterHandle>,
}

/// Connects the backend named by `config` and returns a handle on it.
///
/// Signing is not optional: the key is a required argument, and the runtime
/// fails at start-up when its secret cannot be resolved.
pub async fn connect(
    config: &Config,
    leyline: &LeylineConfig,
    key: SigningKey,
    identity: Identity,
) -> Result<Oona<AnyBus>> {
    config.validate()?;
    let bus = match &config.backend {
        BackendConfig::InProcess => AnyBus::Memory(MemoryBus::new(config.max_len)),
        BackendConfig::Redis { url } => {
            AnyBus::Redis(RedisBus::connect(url, &config.namespace, config.max_len).await?)
        }
    };
    Oona::new(bus, config, leyline, key, identity)
}

impl<B: Bus> Oona<B> {
    /// A handle on `bus`. Security windows and the shared limits (shedding
    /// depth, attempts before dead-lettering) come from `leyline`. Fails when
    /// either config is out of range.
    pub fn new(
        bus: B,
        config: &Config,
        leyline: &LeylineConfig,
        key: SigningKey,
        identity: Identity,
    ) -> Result<Self> {
        config.validate()?;
        leyline
            .validate("leyline")
            .map_err(|e| Error::Invariant(format!("invalid leyline config: {e}")))?;
        Ok(Self {
            shared: Arc::new(Shared {
                bus,
                key,
                identity,
                config: config.clone(),
                leyline: leyline.clone(),
                stats: Stats::default(),
                mode: Mutex::new(ModeTracker::new(config.backpressure.clone())),
                depths: Mutex::new([None; Stream::ALL.len()]),
                outage: Mutex::new(Outage::default()),
                rejections: OnceLock::new(),
            }),
        })
    }

    pub(crate) fn shared(&self) -> &Shared<B> {
        &self.shared
    }

    /// The backend.
    pub fn bus(&self) -> &B {
        &self.shared.bus
    }

    /// The publisher identity stamped on envelopes.
    pub fn identity(&self) -> &Identity {
        &self.shared.identity
    }

    /// The resolved configuration.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Deliveries before an entry is dead-lettered (`leyline.limits.max_retries`).
    pub fn max_attempts(&self) -> u32 {
        self.shared.leyline.limits.max_retries
    }

    /// Depth at which LOW/NORMAL traffic to a stream is shed
    /// (`leyline.limits.max_queue_depth`).
    pub fn shed_depth(&self) -> u64 {
        u64::from(self.shared.leyline.limits.max_queue_depth)
    }

    /// Sends every later rejection (quarantine) to `emitter` as a telemetry
    /// event too. Only the first call takes effect.
    pub fn report_rejections_to(&self, emitter: EmitterHandle) {
        let _ = self.shared.rejections.set(emitter);
    }

    /// Publishes `message` with `priority` (an [`EmergencySignal`] is always
    /// CRITICAL and never shed).
    pub async fn publish<M: BusMessage>(
        &self,
        message: &M,
        priority: MessagePriority,
    ) -> Result<Published> {
        self.publish_encoded(M::TYPE, message.encode_to_vec(), priority, BTreeMap::new())
            .await
    }

    /// Signs `signal` (if unsigned) with this handle's key and publishes it on
    /// the emergency stream: never rate-limited, never shed, and never dropped
    /// while the backend is down (then it is [`Published::Held`]).
    pub async fn publish_signal(&self, mut signal: EmergencySignal) -> Result<Published> {
        if signal.signature.is_empty() {
            sign(&self.shared.key, &mut signal);
        }
        match self
            .publish_encoded(
                BusMessageType::EmergencySignal,
                signal.encode_to_vec(),
                MessagePriority::Critical,
                BTreeMap::new(),
            )
            .await?
        {
            stored @ (Published::Stored { .. } | Published::Held { .. }) => Ok(stored),
            // `route` never sheds an emergency signal; if that ever changed, fail loudly.
            Published::Shed { stream, reason } => Err(Error::Invariant(format!(
                "emergency signal shed from {stream} ({})",
                reason.as_str()
            ))),
        }
    }

    /// Publishes several messages of one type and priority in order, in one
    /// round trip where the backend allows (Redis: one pipeline). They share one
    /// routing decision: all stored, or all shed.
    pub async fn publish_batch<M: BusMessage>(
        &self,
        messages: &[M],
        priority: MessagePriority,
    ) -> Result<Vec<Published>> {
        let started = Instant::now();
        let (stream, priority) = match self.route(M::TYPE, priority).await? {
            Ok(routed) => routed,
            Err(shed) => return Ok(vec![shed; messages.len()]),
        };
        let held: Vec<Held> = messages
            .iter()
            .map(|m| {
                self.held(
                    stream,
                    M::TYPE,
                    m.encode_to_vec(),
                    priority,
                    BTreeMap::new(),
                )
            })
            .collect();
        self.store(stream, held, started).await
    }

    /// Publishes an already-encoded payload of `message_type`.
    pub async fn publish_encoded(
        &self,
        message_type: BusMessageType,
        payload: Vec<u8>,
        priority: MessagePriority,
        attributes: BTreeMap<String, String>,
    ) -> Result<Published> {
        let started = Instant::now();
        let (stream, priority) = match self.route(message_type, priority).await? {
            Ok(routed) => routed,
            Err(shed) => return Ok(shed),
        };
        let held = self.held(stream, message_type, payload, priority, attributes);
        self.store(stream, vec![held], started)
            .await?
            .pop()
            .ok_or_else(|| Error::Invariant("one publication gave no outcome".into()))
    }

    /// Stores `held` on `stream` in one round trip: held behind earlier ones
    /// while the backend is down, else sent with quick retries and held when
    /// the backend keeps refusing (a transient error); any other error is
    /// the caller's.
    async fn store(
        &self,
        stream: Stream,
        held: Vec<Held>,
        started: Instant,
    ) -> Result<Vec<Published>> {
        if self.hold_first().await {
            return Ok(self.hold_all(held));
        }
        let mut pause = Duration::from_millis(self.shared.config.outage.retry_ms);
        let mut attempt = 0;
        loop {
            let records = held.iter().map(|h| self.sign(h)).collect();
            match self.shared.bus.publish_many(stream, records).await {
                Ok(ids) => {
                    let per = started.elapsed().as_micros() as u64 / ids.len().max(1) as u64;
                    for _ in &ids {
                        self.shared.stats.published(stream, per);
                    }
                    self.backend_answered();
                    return Ok(ids
                        .into_iter()
                        .map(|entry| Published::Stored { stream, entry })
                        .collect());
                }
                Err(e) if e.is_transient() && attempt < self.shared.config.outage.retries => {
                    attempt += 1;
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                Err(e) => {
                    self.shared.stats.publish_error(stream);
                    if e.is_transient() && self.holding() {
                        self.went_down(&e);
                        return Ok(self.hold_all(held));
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Whether refused publications are held (`oona.outage.buffer` > 0).
    fn holding(&self) -> bool {
        self.shared.config.outage.buffer > 0
    }

    fn lock_outage(&self) -> std::sync::MutexGuard<'_, Outage> {
        self.shared.outage.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a new publication must be held behind earlier ones: true while
    /// the backend is down or held publications remain after a flush attempt
    /// (made at most every `probe_ms`).
    async fn hold_first(&self) -> bool {
        if !self.holding() || !self.lock_outage().must_hold() {
            return false;
        }
        let probe = Duration::from_millis(self.shared.config.outage.probe_ms);
        if self.lock_outage().probe_due(Instant::now(), probe) {
            self.flush_held().await;
        }
        self.lock_outage().must_hold()
    }

    fn hold_all(&self, held: Vec<Held>) -> Vec<Published> {
        let capacity = self.shared.config.outage.buffer as usize;
        let mut outage = self.lock_outage();
        held.into_iter()
            .map(|h| {
                let stream = h.stream;
                metrics::counter!("oona_outage_held_total", "stream" => stream.name()).increment(1);
                if let Some(dropped) = outage.hold(h, capacity) {
                    metrics::counter!("oona_outage_dropped_total", "stream" => dropped.stream.name())
                        .increment(1);
                }
                Published::Held { stream }
            })
            .collect()
    }

    fn went_down(&self, error: &Error) {
        if self
            .lock_outage()
            .down(Instant::now(), leyline::error_chain(error))
        {
            metrics::counter!("oona_outage_interruptions_total").increment(1);
        }
    }

    fn backend_answered(&self) {
        let mut outage = self.lock_outage();
        if outage.pending() == 0
            && let Some(lasted) = outage.up(Instant::now())
        {
            metrics::histogram!("oona_outage_seconds").record(lasted.as_secs_f64());
        }
    }

    /// Sends held publications, oldest first, until none is left or the
    /// backend refuses again; returns how many were sent. Called by publishes
    /// (at most every `probe_ms`) and by [`Oona::run_housekeeping`].
    pub async fn flush_held(&self) -> u64 {
        let mut sent = 0;
        loop {
            let Some(mut batch) = self.lock_outage().take() else {
                break;
            };
            while let Some(held) = batch.pop_front() {
                let started = Instant::now();
                match self.shared.bus.publish(held.stream, self.sign(&held)).await {
                    Ok(_) => {
                        self.shared
                            .stats
                            .published(held.stream, started.elapsed().as_micros() as u64);
                        self.lock_outage().delivered();
                        metrics::counter!("oona_outage_delivered_total", "stream" => held.stream.name())
                            .increment(1);
                        sent += 1;
                    }
                    Err(e) if e.is_transient() => {
                        batch.push_front(held);
                        self.lock_outage().give_back(batch);
                        self.went_down(&e);
                        return sent;
                    }
                    Err(_) => {
                        // Refused for good (the bus was closed, a reply we do
                        // not understand): counted, not retried forever.
                        self.shared.stats.publish_error(held.stream);
                        self.lock_outage().lost();
                        metrics::counter!("oona_outage_dropped_total", "stream" => held.stream.name())
                            .increment(1);
                    }
                }
            }
            self.lock_outage()
                .give_back(std::collections::VecDeque::new());
        }
        self.backend_answered();
        sent
    }

    /// Tries [`Oona::flush_held`] every `probe_ms` until nothing is held or
    /// `within` has passed (at exit); returns what is still held.
    pub async fn drain_held(&self, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        let probe = Duration::from_millis(self.shared.config.outage.probe_ms);
        loop {
            self.flush_held().await;
            let pending = self.lock_outage().pending() as u64;
            if pending == 0 || Instant::now() >= deadline {
                return pending;
            }
            tokio::time::sleep(probe.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
    }

    /// Interruptions of the backend so far and the publications held
    /// through them.
    pub fn outage(&self) -> OutageStats {
        self.lock_outage().stats(Instant::now())
    }

    /// The stream and effective priority of a message, or the shed outcome
    /// (already counted).
    async fn route(
        &self,
        message_type: BusMessageType,
        priority: MessagePriority,
    ) -> Result<std::result::Result<(Stream, MessagePriority), Published>> {
        let priority = match message_type {
            BusMessageType::EmergencySignal => MessagePriority::Critical,
            // Fleet work is never shed: a shed job or result would leave its
            // submitter waiting for ever.
            BusMessageType::RunJob | BusMessageType::RunResult => {
                priority.max(MessagePriority::High)
            }
            BusMessageType::Unspecified
            | BusMessageType::SystemState
            | BusMessageType::AdaptationCommand
            | BusMessageType::FieldReport
            | BusMessageType::Telemetry
            | BusMessageType::PolicyUpdate
            | BusMessageType::KernelPrefetchRequest
            | BusMessageType::KernelPrefetchReady
            | BusMessageType::KernelPrefetchError
            | BusMessageType::KernelCatalogUpdate => priority,
        };
        if message_type == BusMessageType::Unspecified {
            return Err(Error::Invariant(
                "cannot publish BUS_MESSAGE_TYPE_UNSPECIFIED".into(),
            ));
        }
        let target = crate::routing::stream_for(message_type, priority);
        let depth = self.sampled_depth(target).await?;
        let conservative = self.lock_mode().conservative();
        match route(
            message_type,
            priority,
            depth,
            conservative,
            u64::from(self.shared.leyline.limits.max_queue_depth),
        ) {
            Route::Publish(stream) => Ok(Ok((stream, priority))),
            Route::Shed(stream, reason) => {
                self.shared.stats.shed(stream, reason);
                Ok(Err(Published::Shed { stream, reason }))
            }
        }
    }

    /// A publication, not signed yet.
    fn held(
        &self,
        stream: Stream,
        message_type: BusMessageType,
        payload: Vec<u8>,
        priority: MessagePriority,
        attributes: BTreeMap<String, String>,
    ) -> Held {
        Held {
            stream,
            message_type,
            payload,
            priority,
            attributes,
            message_id: leyline::new_id(),
            issued_at_ms: leyline::unix_now_ms(),
        }
    }

    /// `held` as a signed envelope, encoded as a stored record. Signed now, so
    /// that a publication held through an outage is fresh when it arrives; it
    /// then says when it was first issued.
    fn sign(&self, held: &Held) -> Record {
        let now = leyline::unix_now_ms();
        let mut attributes = held.attributes.clone();
        // A second or more in the buffer: say so (quick retries do not count).
        if now.saturating_sub(held.issued_at_ms) >= 1_000 {
            attributes.insert(
                HELD_SINCE_ATTRIBUTE.to_owned(),
                held.issued_at_ms.to_string(),
            );
        }
        let mut envelope = BusEnvelope {
            message_type: held.message_type as i32,
            payload: held.payload.clone(),
            message_id: held.message_id.clone(),
            source: self.shared.identity.source.clone(),
            issued_at_ms: now,
            training_run_id: self.shared.identity.run_id.clone(),
            priority: held.priority as i32,
            attributes,
            signature: Vec::new(),
        };
        sign(&self.shared.key, &mut envelope);
        Record {
            payload: Bytes::from(envelope.encode_to_vec()),
            published_us: crate::now_us(),
            origin: None,
            extra: Vec::new(),
        }
    }

    fn lock_mode(&self) -> std::sync::MutexGuard<'_, ModeTracker> {
        self.shared.mode.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The depth of `stream`, sampled at most every `depth_refresh_ms`. While
    /// the backend is down (and refused publications are held) the last
    /// sample stands, so that routing costs no round trip.
    async fn sampled_depth(&self, stream: Stream) -> Result<u64> {
        let refresh = Duration::from_millis(self.shared.config.depth_refresh_ms);
        let cached = self.shared.depths.lock().unwrap_or_else(|p| p.into_inner())[stream.index()];
        if let Some((at, depth)) = cached
            && at.elapsed() < refresh
        {
            return Ok(depth);
        }
        let last = cached.map_or(0, |(_, d)| d);
        if self.holding() && self.lock_outage().is_down() {
            return Ok(last);
        }
        match self.depth(stream).await {
            Ok(d) => Ok(d.depth),
            Err(e) if e.is_transient() && self.holding() => {
                self.went_down(&e);
                Ok(last)
            }
            Err(e) => Err(e),
        }
    }

    /// Samples `stream`'s depth now (also feeds routing and conservative mode).
    pub async fn depth(&self, stream: Stream) -> Result<StreamDepth> {
        let d = self.shared.bus.depth(stream).await?;
        let now = Instant::now();
        self.shared.depths.lock().unwrap_or_else(|p| p.into_inner())[stream.index()] =
            Some((now, d.depth));
        self.shared.stats.depth(stream, d.depth);
        self.lock_mode().observe(stream, d.depth, now);
        Ok(d)
    }

    /// Whether conservative mode is on.
    pub fn conservative(&self) -> bool {
        self.lock_mode().conservative()
    }

    /// Enters conservative mode until [`Oona::leave_conservative`] (e.g. on an
    /// emergency signal at level CONSERVATIVE).
    pub fn enter_conservative(&self) {
        self.lock_mode().request(Instant::now());
    }

    /// Withdraws [`Oona::enter_conservative`]; depth rules apply again.
    pub fn leave_conservative(&self) {
        self.lock_mode().release();
    }

    /// Joins `group` on `stream` as `consumer`, creating the group at `start`
    /// if it does not exist yet.
    pub async fn subscribe(
        &self,
        stream: Stream,
        group: &str,
        consumer: &str,
        start: StartFrom,
    ) -> Result<Subscription<B>> {
        self.shared.bus.ensure_group(stream, group, start).await?;
        let reader = self.shared.bus.reader().await?;
        Ok(Subscription::new(
            self.clone(),
            reader,
            stream,
            group,
            consumer,
            start,
        ))
    }

    /// Deletes `group` on `stream` with its pending list — a group only one
    /// run reads, at the end of that run, so that groups do not pile up.
    /// Returns whether it existed.
    pub async fn remove_group(&self, stream: Stream, group: &str) -> Result<bool> {
        self.shared.bus.remove_group(stream, group).await
    }

    /// Trims, on every stream, entries older than the retention that every
    /// group has acknowledged. Returns how many were removed.
    pub async fn housekeep(&self) -> Result<u64> {
        let cutoff = leyline::unix_now_ms()
            .saturating_sub(self.shared.config.retention_s.saturating_mul(1000));
        let mut removed = 0;
        for stream in Stream::ALL {
            removed += self.shared.bus.trim_acknowledged(stream, cutoff).await?;
        }
        Ok(removed)
    }

    /// Runs [`Oona::housekeep`] and samples every stream's depth each
    /// `housekeeping_s`, and sends held publications every
    /// `outage.probe_ms` while there are any, until `cancel` fires. Backend
    /// errors are counted and retried at the next round, never fatal.
    /// Returns the entries trimmed.
    pub async fn run_housekeeping(&self, cancel: tokio_util::sync::CancellationToken) -> u64 {
        let every = Duration::from_secs(self.shared.config.housekeeping_s);
        let probe = Duration::from_millis(self.shared.config.outage.probe_ms);
        let mut trimmed = 0;
        let mut next = Instant::now() + every;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return trimmed,
                () = tokio::time::sleep(probe.min(every)) => {}
            }
            if self.lock_outage().pending() > 0 {
                self.flush_held().await;
            }
            if Instant::now() < next {
                continue;
            }
            next = Instant::now() + every;
            match self.housekeep().await {
                Ok(n) => trimmed += n,
                Err(_) => metrics::counter!("oona_housekeeping_errors_total").increment(1),
            }
            for stream in Stream::ALL {
                let _ = self.depth(stream).await;
            }
        }
    }

    /// A copy of every counter.
    pub fn stats(&self) -> StatsSnapshot {
        let mut s = self.shared.stats.snapshot(self.lock_mode().times_entered());
        s.outage = self.outage();
        s
    }

    /// Closes the backend (for every clone); blocked consumers return promptly.
    pub async fn close(&self) {
        self.shared.bus.close().await;
    }
}
