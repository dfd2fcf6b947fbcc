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
    MessagePriority, PolicyUpdate, SystemStatePacket, TelemetryPacket,
};
use prost::Message;

use crate::backend::{AnyBus, Bus, MemoryBus, Record, RedisBus, StreamDepth};
use crate::config::{BackendConfig, Config};
use crate::emitter::EmitterHandle;
use crate::metrics::{Stats, StatsSnapshot};
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
    /// the emergency stream: never rate-limited, never shed.
    pub async fn publish_signal(&self, mut signal: EmergencySignal) -> Result<EntryId> {
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
            Published::Stored { entry, .. } => Ok(entry),
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
        let records = messages
            .iter()
            .map(|m| self.record(M::TYPE, m.encode_to_vec(), priority, BTreeMap::new()))
            .collect();
        match self.shared.bus.publish_many(stream, records).await {
            Ok(ids) => {
                let per = started.elapsed().as_micros() as u64 / ids.len().max(1) as u64;
                for _ in &ids {
                    self.shared.stats.published(stream, per);
                }
                Ok(ids
                    .into_iter()
                    .map(|entry| Published::Stored { stream, entry })
                    .collect())
            }
            Err(e) => {
                self.shared.stats.publish_error(stream);
                Err(e)
            }
        }
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
        let record = self.record(message_type, payload, priority, attributes);
        match self.shared.bus.publish(stream, record).await {
            Ok(entry) => {
                self.shared
                    .stats
                    .published(stream, started.elapsed().as_micros() as u64);
                Ok(Published::Stored { stream, entry })
            }
            Err(e) => {
                self.shared.stats.publish_error(stream);
                Err(e)
            }
        }
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

    /// A signed envelope, encoded as a stored record.
    fn record(
        &self,
        message_type: BusMessageType,
        payload: Vec<u8>,
        priority: MessagePriority,
        attributes: BTreeMap<String, String>,
    ) -> Record {
        let mut envelope = BusEnvelope {
            message_type: message_type as i32,
            payload,
            message_id: leyline::new_id(),
            source: self.shared.identity.source.clone(),
            issued_at_ms: leyline::unix_now_ms(),
            training_run_id: self.shared.identity.run_id.clone(),
            priority: priority as i32,
            attributes,
            signature: Vec::new(),
        };
        sign(&self.shared.key, &mut envelope);
        Record {
            payload: Bytes::from(envelope.encode_to_vec()),
            published_us: crate::now_us(),
            origin: None,
        }
    }

    fn lock_mode(&self) -> std::sync::MutexGuard<'_, ModeTracker> {
        self.shared.mode.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The depth of `stream`, sampled at most every `depth_refresh_ms`.
    async fn sampled_depth(&self, stream: Stream) -> Result<u64> {
        let refresh = Duration::from_millis(self.shared.config.depth_refresh_ms);
        let cached = self.shared.depths.lock().unwrap_or_else(|p| p.into_inner())[stream.index()];
        if let Some((at, depth)) = cached
            && at.elapsed() < refresh
        {
            return Ok(depth);
        }
        Ok(self.depth(stream).await?.depth)
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
        ))
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
    /// `housekeeping_s` until `cancel` fires. Backend errors are counted and
    /// retried at the next round, never fatal. Returns the entries trimmed.
    pub async fn run_housekeeping(&self, cancel: tokio_util::sync::CancellationToken) -> u64 {
        let every = Duration::from_secs(self.shared.config.housekeeping_s);
        let mut trimmed = 0;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return trimmed,
                () = tokio::time::sleep(every) => {}
            }
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
        self.shared.stats.snapshot(self.lock_mode().times_entered())
    }

    /// Closes the backend (for every clone); blocked consumers return promptly.
    pub async fn close(&self) {
        self.shared.bus.close().await;
    }
}
