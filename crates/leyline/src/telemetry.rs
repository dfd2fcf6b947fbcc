//! Builders for telemetry packets, metrics and events.
//!
//! A packet's level is the highest level among its events (INFO when it has none),
//! and its priority is derived from that level by [`priority_for_level`]:
//! CRITICAL → CRITICAL, ERROR or WARNING → HIGH, anything else → NORMAL. Building
//! through [`PacketBuilder`] keeps the two consistent, which
//! [`crate::validate::Validator::telemetry_packet`] checks.
//!
//! ```
//! use leyline::telemetry::{event, PacketBuilder};
//! use leyline::v1::{MessagePriority, TelemetryLevel};
//!
//! let packet = PacketBuilder::new("kasmina", "run-1", 1_700_000_000_000)
//!     .metric("alpha_mean", 0.4, "ratio")
//!     .event(event("gate_failed", TelemetryLevel::Error, "G1: vanishing gradients").build())
//!     .build();
//! assert_eq!(packet.level(), TelemetryLevel::Error);
//! assert_eq!(packet.priority(), MessagePriority::High);
//! ```

use std::collections::BTreeMap;

use crate::security::Rejection;
use crate::v1::{
    HealthStatus, MessagePriority, MetricPoint, SystemHealth, TelemetryEvent, TelemetryLevel,
    TelemetryPacket, TraceSpan,
};

/// The bus priority of telemetry at `level`.
pub const fn priority_for_level(level: TelemetryLevel) -> MessagePriority {
    match level {
        TelemetryLevel::Critical => MessagePriority::Critical,
        TelemetryLevel::Error | TelemetryLevel::Warning => MessagePriority::High,
        TelemetryLevel::Info | TelemetryLevel::Unspecified => MessagePriority::Normal,
    }
}

/// Severity rank of a level (higher is more severe).
pub const fn level_rank(level: TelemetryLevel) -> u8 {
    match level {
        TelemetryLevel::Unspecified => 0,
        TelemetryLevel::Info => 1,
        TelemetryLevel::Warning => 2,
        TelemetryLevel::Error => 3,
        TelemetryLevel::Critical => 4,
    }
}

/// A metric point with no attributes.
pub fn metric(name: impl Into<String>, value: f64, unit: impl Into<String>) -> MetricPoint {
    MetricPoint {
        name: name.into(),
        value,
        unit: unit.into(),
        attributes: BTreeMap::new(),
    }
}

/// Starts an event; [`EventBuilder::build`] gives it a fresh id.
pub fn event(
    name: impl Into<String>,
    level: TelemetryLevel,
    description: impl Into<String>,
) -> EventBuilder {
    EventBuilder {
        event: TelemetryEvent {
            event_id: String::new(),
            name: name.into(),
            description: description.into(),
            level: level as i32,
            attributes: BTreeMap::new(),
            at_ms: 0,
        },
    }
}

/// Builds a [`TelemetryEvent`].
#[derive(Debug, Clone)]
pub struct EventBuilder {
    event: TelemetryEvent,
}

impl EventBuilder {
    /// Adds an attribute.
    pub fn attr(mut self, key: impl Into<String>, value: impl ToString) -> Self {
        self.event.attributes.insert(key.into(), value.to_string());
        self
    }

    /// Sets the event time (Unix epoch ms); defaults to the wall clock at build.
    pub fn at(mut self, at_ms: u64) -> Self {
        self.event.at_ms = at_ms;
        self
    }

    /// The event, with a fresh id.
    pub fn build(mut self) -> TelemetryEvent {
        self.event.event_id = crate::new_id();
        if self.event.at_ms == 0 {
            self.event.at_ms = crate::unix_now_ms();
        }
        self.event
    }
}

/// Builds a [`TelemetryPacket`] with level and priority derived from its events.
#[derive(Debug, Clone)]
pub struct PacketBuilder {
    packet: TelemetryPacket,
}

impl PacketBuilder {
    /// A packet from `source` for run `run_id`, stamped `timestamp_ms`.
    pub fn new(source: impl Into<String>, run_id: impl Into<String>, timestamp_ms: u64) -> Self {
        Self {
            packet: TelemetryPacket {
                source_subsystem: source.into(),
                training_run_id: run_id.into(),
                timestamp_ms,
                ..Default::default()
            },
        }
    }

    /// Adds a metric.
    pub fn metric(mut self, name: impl Into<String>, value: f64, unit: impl Into<String>) -> Self {
        self.packet.metrics.push(metric(name, value, unit));
        self
    }

    /// Adds a prepared metric point.
    pub fn metric_point(mut self, point: MetricPoint) -> Self {
        self.packet.metrics.push(point);
        self
    }

    /// Adds an event.
    pub fn event(mut self, event: TelemetryEvent) -> Self {
        self.packet.events.push(event);
        self
    }

    /// Adds a span.
    pub fn span(mut self, span: TraceSpan) -> Self {
        self.packet.spans.push(span);
        self
    }

    /// Sets the health summary.
    pub fn health(mut self, status: HealthStatus, summary: impl Into<String>) -> Self {
        self.packet.system_health = Some(SystemHealth {
            status: status as i32,
            summary: summary.into(),
            indicators: BTreeMap::new(),
        });
        self
    }

    /// Sets the global step the packet describes.
    pub fn global_step(mut self, step: u64) -> Self {
        self.packet.global_step = step;
        self
    }

    /// Marks the packet as describing one seed.
    pub fn seed(mut self, seed_id: impl Into<String>) -> Self {
        self.packet.seed_id = seed_id.into();
        self
    }

    /// The packet, with a fresh id, its level and its priority.
    pub fn build(mut self) -> TelemetryPacket {
        let level = self.packet.events.iter().map(TelemetryEvent::level).fold(
            TelemetryLevel::Info,
            |a, b| {
                if level_rank(b) > level_rank(a) { b } else { a }
            },
        );
        self.packet.packet_id = crate::new_id();
        self.packet.level = level as i32;
        self.packet.priority = priority_for_level(level) as i32;
        self.packet
    }
}

impl Rejection {
    /// The `message_rejected` event every rejection must be reported with.
    pub fn telemetry_event(&self) -> TelemetryEvent {
        event(
            "message_rejected",
            TelemetryLevel::Warning,
            self.to_string(),
        )
        .attr("reason", self.reason.as_str_name())
        .attr("message_type", &self.message_type)
        .attr("message_id", &self.message_id)
        .build()
    }
}

impl crate::validate::Invalid {
    /// The `message_invalid` event every validation rejection must be reported with.
    pub fn telemetry_event(&self, message_type: &str) -> TelemetryEvent {
        let mut builder = event("message_invalid", TelemetryLevel::Warning, self.to_string())
            .attr("message_type", message_type);
        if let Some(first) = self.report.violations().first() {
            builder = builder
                .attr("reason", first.code.as_str_name())
                .attr("field", &first.field);
        }
        builder.build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_follows_the_highest_event_level() {
        let cases = [
            (vec![], TelemetryLevel::Info, MessagePriority::Normal),
            (
                vec![TelemetryLevel::Info],
                TelemetryLevel::Info,
                MessagePriority::Normal,
            ),
            (
                vec![TelemetryLevel::Warning, TelemetryLevel::Info],
                TelemetryLevel::Warning,
                MessagePriority::High,
            ),
            (
                vec![TelemetryLevel::Error],
                TelemetryLevel::Error,
                MessagePriority::High,
            ),
            (
                vec![
                    TelemetryLevel::Info,
                    TelemetryLevel::Critical,
                    TelemetryLevel::Error,
                ],
                TelemetryLevel::Critical,
                MessagePriority::Critical,
            ),
        ];
        for (levels, level, priority) in cases {
            let mut b = PacketBuilder::new("test", "run", 1);
            for l in &levels {
                b = b.event(event("e", *l, "").build());
            }
            let p = b.build();
            assert_eq!((p.level(), p.priority()), (level, priority), "{levels:?}");
            assert!(
                crate::validate::Validator::default()
                    .telemetry_packet(&p)
                    .passed()
            );
        }
    }

    #[test]
    fn events_get_ids_and_times() {
        let a = event("x", TelemetryLevel::Info, "d").attr("k", 3).build();
        let b = event("x", TelemetryLevel::Info, "d").at(5).build();
        assert_ne!(a.event_id, b.event_id);
        assert!(a.at_ms > 0);
        assert_eq!(b.at_ms, 5);
        assert_eq!(a.attributes["k"], "3");
    }
}
