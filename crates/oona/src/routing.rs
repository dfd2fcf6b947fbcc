//! Routing and backpressure: which stream a message takes, and whether it is
//! shed. [`route`] is a pure function of (message type, priority, depth, mode);
//! the mode itself changes only by the explicit rules of [`ModeTracker`].
//!
//! Rules (the predecessor's defects in mind): emergency signals always take the
//! emergency stream and are never shed; CRITICAL telemetry takes the emergency
//! stream; under depth pressure or in conservative mode LOW/NORMAL messages are
//! shed — counted, reported to the publisher — and never promoted to the
//! emergency stream.

use std::time::{Duration, Instant};

use leyline::v1::{BusMessageType, MessagePriority};

use crate::Stream;
use crate::config::BackpressureConfig;

/// Why a message was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ShedReason {
    /// Its stream was at or above `shed_depth`.
    DepthPressure,
    /// The bus is in conservative mode.
    Conservative,
}

impl ShedReason {
    /// Stable label for counters.
    pub fn as_str(self) -> &'static str {
        match self {
            ShedReason::DepthPressure => "depth_pressure",
            ShedReason::Conservative => "conservative",
        }
    }
}

/// The routing decision for one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// Store it on this stream.
    Publish(Stream),
    /// Drop it (counted) instead of storing it on this stream.
    Shed(Stream, ShedReason),
}

/// The stream a message type takes before backpressure is considered.
pub(crate) fn stream_for(message_type: BusMessageType, priority: MessagePriority) -> Stream {
    match message_type {
        BusMessageType::EmergencySignal => Stream::Emergency,
        BusMessageType::Telemetry => match priority {
            MessagePriority::Critical => Stream::Emergency,
            MessagePriority::Unspecified
            | MessagePriority::Low
            | MessagePriority::Normal
            | MessagePriority::High => Stream::Telemetry,
        },
        BusMessageType::Unspecified
        | BusMessageType::SystemState
        | BusMessageType::AdaptationCommand => Stream::Normal,
        BusMessageType::FieldReport => Stream::FieldReports,
        BusMessageType::PolicyUpdate => Stream::Policy,
        BusMessageType::KernelPrefetchRequest => Stream::KernelRequests,
        BusMessageType::KernelPrefetchReady | BusMessageType::KernelCatalogUpdate => {
            Stream::KernelReady
        }
        BusMessageType::KernelPrefetchError => Stream::KernelErrors,
        BusMessageType::RunJob => Stream::Jobs,
        BusMessageType::RunResult => Stream::JobResults,
    }
}

/// Whether a priority may be shed (LOW, NORMAL, and unspecified, treated as NORMAL).
fn sheddable(priority: MessagePriority) -> bool {
    match priority {
        MessagePriority::Unspecified | MessagePriority::Low | MessagePriority::Normal => true,
        MessagePriority::High | MessagePriority::Critical => false,
    }
}

/// Routes one message. `depth` is the depth of the stream it would take;
/// LOW/NORMAL messages are shed when it is at least `shed_depth`.
pub(crate) fn route(
    message_type: BusMessageType,
    priority: MessagePriority,
    depth: u64,
    conservative: bool,
    shed_depth: u64,
) -> Route {
    let stream = stream_for(message_type, priority);
    // Emergency signals are exempt whatever priority their publisher claimed.
    if message_type == BusMessageType::EmergencySignal || !sheddable(priority) {
        return Route::Publish(stream);
    }
    if conservative {
        Route::Shed(stream, ShedReason::Conservative)
    } else if depth >= shed_depth {
        Route::Shed(stream, ShedReason::DepthPressure)
    } else {
        Route::Publish(stream)
    }
}

/// Conservative mode with hysteresis. Entered when any stream reaches
/// `conservative_enter_depth` or on request; left when every stream is at most
/// `conservative_exit_depth` and the mode has lasted `conservative_min_ms`
/// (a requested mode is left only on request).
#[derive(Debug)]
pub(crate) struct ModeTracker {
    config: BackpressureConfig,
    depths: [u64; Stream::ALL.len()],
    since: Option<Instant>,
    requested: bool,
    entered: u64,
}

impl ModeTracker {
    /// Starts in normal mode.
    pub(crate) fn new(config: BackpressureConfig) -> Self {
        Self {
            config,
            depths: [0; Stream::ALL.len()],
            since: None,
            requested: false,
            entered: 0,
        }
    }

    /// Records a depth sample and applies the rules.
    pub(crate) fn observe(&mut self, stream: Stream, depth: u64, now: Instant) {
        self.depths[stream.index()] = depth;
        let deepest = self.depths.iter().copied().max().unwrap_or(0);
        match self.since {
            None if deepest >= self.config.conservative_enter_depth => self.enter(now),
            Some(since)
                if !self.requested
                    && deepest <= self.config.conservative_exit_depth
                    && now.duration_since(since)
                        >= Duration::from_millis(self.config.conservative_min_ms) =>
            {
                self.since = None;
            }
            None | Some(_) => {}
        }
    }

    /// Enters conservative mode on request (e.g. an emergency signal at level
    /// CONSERVATIVE); it lasts until [`ModeTracker::release`].
    pub(crate) fn request(&mut self, now: Instant) {
        self.requested = true;
        if self.since.is_none() {
            self.enter(now);
        }
    }

    /// Withdraws a request; depth rules apply again from now on.
    pub(crate) fn release(&mut self) {
        self.requested = false;
    }

    /// Whether conservative mode is on.
    pub(crate) fn conservative(&self) -> bool {
        self.since.is_some()
    }

    /// Times conservative mode was entered.
    pub(crate) fn times_entered(&self) -> u64 {
        self.entered
    }

    fn enter(&mut self, now: Instant) {
        self.since = Some(now);
        self.entered += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn priority(i: u8) -> MessagePriority {
        MessagePriority::try_from(i32::from(i % 5)).unwrap()
    }
    fn message_type(i: u8) -> BusMessageType {
        BusMessageType::try_from(i32::from(i % 11)).unwrap()
    }

    proptest! {
        #[test]
        fn routing_never_promotes_and_never_sheds_emergencies(
            t in any::<u8>(), p in any::<u8>(), depth in any::<u64>(), cons in any::<bool>()
        ) {
            let shed = 10_000;
            let (t, p) = (message_type(t), priority(p));
            let r = route(t, p, depth, cons, shed);
            // Pure: the same inputs give the same answer.
            prop_assert_eq!(r, route(t, p, depth, cons, shed));
            let stream = match r { Route::Publish(s) | Route::Shed(s, _) => s };
            // Depth and mode never change the stream, only whether it is shed.
            prop_assert_eq!(stream, stream_for(t, p));
            if t == BusMessageType::EmergencySignal {
                prop_assert_eq!(r, Route::Publish(Stream::Emergency));
            }
            if stream == Stream::Emergency {
                prop_assert!(matches!(r, Route::Publish(_)));
            }
            if matches!(p, MessagePriority::High | MessagePriority::Critical) {
                prop_assert!(matches!(r, Route::Publish(_)));
            }
        }
    }

    #[test]
    fn low_and_normal_are_shed_under_pressure() {
        let shed = 10_000;
        let t = BusMessageType::Telemetry;
        assert_eq!(
            route(t, MessagePriority::Low, shed, false, shed),
            Route::Shed(Stream::Telemetry, ShedReason::DepthPressure)
        );
        assert_eq!(
            route(t, MessagePriority::Normal, 0, true, shed),
            Route::Shed(Stream::Telemetry, ShedReason::Conservative)
        );
        assert_eq!(
            route(t, MessagePriority::Normal, shed - 1, false, shed),
            Route::Publish(Stream::Telemetry)
        );
    }

    #[test]
    fn conservative_mode_has_hysteresis_and_is_not_sticky() {
        let cfg = BackpressureConfig::default();
        let mut m = ModeTracker::new(cfg.clone());
        let t0 = Instant::now();
        m.observe(Stream::Telemetry, cfg.conservative_enter_depth - 1, t0);
        assert!(!m.conservative());
        m.observe(Stream::Telemetry, cfg.conservative_enter_depth, t0);
        assert!(m.conservative());
        // Drained but too soon: stays.
        m.observe(Stream::Telemetry, 0, t0 + Duration::from_millis(10));
        assert!(m.conservative());
        // Between the thresholds: stays.
        let later = t0 + Duration::from_millis(cfg.conservative_min_ms + 1);
        m.observe(Stream::Telemetry, cfg.conservative_exit_depth + 1, later);
        assert!(m.conservative());
        // Drained and long enough: leaves.
        m.observe(Stream::Telemetry, cfg.conservative_exit_depth, later);
        assert!(!m.conservative());
        assert_eq!(m.times_entered(), 1);
        // A request holds the mode whatever the depth, until released.
        m.request(later);
        m.observe(Stream::Telemetry, 0, later + Duration::from_secs(60));
        assert!(m.conservative());
        m.release();
        m.observe(Stream::Telemetry, 0, later + Duration::from_secs(61));
        assert!(!m.conservative());
    }
}
