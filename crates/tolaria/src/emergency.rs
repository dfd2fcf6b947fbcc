//! The emergency controller: typed levels with validated transitions, and an
//! outbox that never loses a signal.
//!
//! Levels rise NOTICE → ELEVATED → CONSERVATIVE → HALT. [`EmergencyController::escalate`]
//! only goes up; [`EmergencyController::downgrade`] only goes down, explicitly, and
//! never out of HALT (a halted run stops, with a final checkpoint). Every change
//! becomes an [`EmergencySignal`] in the [`Outbox`], stamped with wall-clock and
//! monotonic times.
//!
//! The outbox is bounded. When it is full, queued signals are coalesced by level
//! (one entry per level, carrying how many signals it stands for and the latest
//! reason) and the overflow is counted and reported as a CRITICAL event: a signal
//! may be merged, never dropped. A send that fails leaves the signal queued for the
//! next [`Outbox::drain`].

use std::collections::VecDeque;
use std::time::Instant;

use leyline::v1::{EmergencyLevel, EmergencySignal, TelemetryEvent, TelemetryLevel};

use crate::error::{Error, Result};

/// Attribute holding how many signals a (coalesced) signal stands for.
pub const COUNT_ATTRIBUTE: &str = "signal_count";

const fn rank(level: EmergencyLevel) -> u8 {
    match level {
        EmergencyLevel::Unspecified => 0,
        EmergencyLevel::Notice => 1,
        EmergencyLevel::Elevated => 2,
        EmergencyLevel::Conservative => 3,
        EmergencyLevel::Halt => 4,
    }
}

/// How many signals `signal` stands for (1 unless coalesced).
pub fn signal_count(signal: &EmergencySignal) -> u64 {
    signal
        .attributes
        .get(COUNT_ATTRIBUTE)
        .and_then(|c| c.parse().ok())
        .unwrap_or(1)
}

/// Bounded queue of emergency signals awaiting delivery.
#[derive(Debug)]
pub struct Outbox {
    capacity: usize,
    queue: VecDeque<EmergencySignal>,
    overflows: u64,
}

impl Outbox {
    /// An outbox holding at most `capacity` entries (at least 5: one per level
    /// plus room, so coalescing always frees space).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(5),
            queue: VecDeque::new(),
            overflows: 0,
        }
    }

    /// Queues `signal`. Returns the CRITICAL `emergency_outbox_overflow` event to
    /// report when the outbox had to coalesce to make room.
    pub fn push(&mut self, signal: EmergencySignal) -> Option<TelemetryEvent> {
        let mut overflow = None;
        if self.queue.len() >= self.capacity {
            self.coalesce();
            self.overflows += 1;
            overflow = Some(
                leyline::telemetry::event(
                    "emergency_outbox_overflow",
                    TelemetryLevel::Critical,
                    format!(
                        "emergency outbox full ({} entries): signals coalesced by level",
                        self.capacity
                    ),
                )
                .attr("overflows", self.overflows)
                .build(),
            );
        }
        self.queue.push_back(signal);
        overflow
    }

    /// Merges queued signals so that each level has one entry, in level order.
    fn coalesce(&mut self) {
        let mut merged: Vec<EmergencySignal> = Vec::new();
        for signal in self.queue.drain(..) {
            match merged.iter_mut().find(|m| m.level == signal.level) {
                Some(into) => {
                    let total = signal_count(into) + signal_count(&signal);
                    into.attributes
                        .insert(COUNT_ATTRIBUTE.into(), total.to_string());
                    into.reason = signal.reason;
                    into.triggered_at_ms = signal.triggered_at_ms;
                    into.monotonic_time_ms = signal.monotonic_time_ms;
                }
                None => merged.push(signal),
            }
        }
        merged.sort_by_key(|s| s.level);
        self.queue.extend(merged);
    }

    /// Sends queued signals oldest first until one fails; that one and the rest
    /// stay queued. Returns how many were sent.
    pub fn drain<E>(
        &mut self,
        mut send: impl FnMut(&EmergencySignal) -> std::result::Result<(), E>,
    ) -> usize {
        let mut sent = 0;
        while let Some(signal) = self.queue.front() {
            if send(signal).is_err() {
                break;
            }
            self.queue.pop_front();
            sent += 1;
        }
        sent
    }

    /// Entries queued.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Nothing queued.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Times the outbox had to coalesce.
    pub fn overflows(&self) -> u64 {
        self.overflows
    }
}

/// Tracks the run's emergency level.
#[derive(Debug)]
pub struct EmergencyController {
    level: EmergencyLevel,
    run_id: String,
    started: Instant,
    outbox: Outbox,
}

impl EmergencyController {
    /// A controller at NOTICE for run `run_id`.
    pub fn new(run_id: impl Into<String>, outbox_capacity: usize) -> Self {
        Self {
            level: EmergencyLevel::Notice,
            run_id: run_id.into(),
            started: Instant::now(),
            outbox: Outbox::new(outbox_capacity),
        }
    }

    /// The current level.
    pub fn level(&self) -> EmergencyLevel {
        self.level
    }

    /// The run must stop.
    pub fn halted(&self) -> bool {
        self.level == EmergencyLevel::Halt
    }

    /// The outbox of signals to deliver.
    pub fn outbox(&mut self) -> &mut Outbox {
        &mut self.outbox
    }

    /// Raises the level to `to` (strictly higher). Returns an overflow event to
    /// report, if queuing the signal overflowed the outbox.
    pub fn escalate(&mut self, to: EmergencyLevel, reason: &str) -> Result<Option<TelemetryEvent>> {
        if rank(to) <= rank(self.level) {
            return Err(Error::Emergency(format!(
                "cannot escalate from {} to {}",
                self.level.as_str_name(),
                to.as_str_name()
            )));
        }
        Ok(self.change(to, reason))
    }

    /// Lowers the level to `to` (strictly lower, at least NOTICE). HALT is final.
    pub fn downgrade(
        &mut self,
        to: EmergencyLevel,
        reason: &str,
    ) -> Result<Option<TelemetryEvent>> {
        if self.level == EmergencyLevel::Halt {
            return Err(Error::Emergency(
                "HALT is final: a halted run is not downgraded".into(),
            ));
        }
        if rank(to) >= rank(self.level) || to == EmergencyLevel::Unspecified {
            return Err(Error::Emergency(format!(
                "cannot downgrade from {} to {}",
                self.level.as_str_name(),
                to.as_str_name()
            )));
        }
        Ok(self.change(to, reason))
    }

    /// Queues a signal at the current level without changing it: a CRITICAL
    /// event (e.g. a seed's isolation violation) for the emergency path.
    pub fn notify(&mut self, reason: &str) -> Option<TelemetryEvent> {
        let signal = EmergencySignal {
            signal_id: leyline::new_id(),
            level: self.level as i32,
            reason: reason.to_string(),
            origin: "tolaria".into(),
            triggered_at_ms: leyline::unix_now_ms(),
            monotonic_time_ms: u64::try_from(self.started.elapsed().as_millis())
                .unwrap_or(u64::MAX),
            training_run_id: self.run_id.clone(),
            attributes: [("kind".to_string(), "critical_event".to_string())].into(),
            ..Default::default()
        };
        self.outbox.push(signal)
    }

    fn change(&mut self, to: EmergencyLevel, reason: &str) -> Option<TelemetryEvent> {
        let from = self.level;
        self.level = to;
        let signal = EmergencySignal {
            signal_id: leyline::new_id(),
            level: to as i32,
            reason: reason.to_string(),
            origin: "tolaria".into(),
            triggered_at_ms: leyline::unix_now_ms(),
            monotonic_time_ms: u64::try_from(self.started.elapsed().as_millis())
                .unwrap_or(u64::MAX),
            training_run_id: self.run_id.clone(),
            attributes: [("from".to_string(), from.as_str_name().to_string())].into(),
            ..Default::default()
        };
        self.outbox.push(signal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn transitions_are_validated() {
        let mut c = EmergencyController::new("run", 8);
        assert_eq!(c.level(), EmergencyLevel::Notice);
        assert!(c.escalate(EmergencyLevel::Notice, "same").is_err());
        c.escalate(EmergencyLevel::Conservative, "loss spike")
            .unwrap();
        assert!(c.escalate(EmergencyLevel::Elevated, "lower").is_err());
        assert!(c.downgrade(EmergencyLevel::Halt, "higher").is_err());
        c.downgrade(EmergencyLevel::Elevated, "recovered").unwrap();
        c.escalate(EmergencyLevel::Halt, "rollback deadline missed")
            .unwrap();
        assert!(c.halted());
        assert!(
            c.downgrade(EmergencyLevel::Notice, "try")
                .unwrap_err()
                .to_string()
                .contains("final")
        );
        let mut levels = Vec::new();
        c.outbox().drain(|s| {
            levels.push(s.level());
            Ok::<(), ()>(())
        });
        assert_eq!(
            levels,
            vec![
                EmergencyLevel::Conservative,
                EmergencyLevel::Elevated,
                EmergencyLevel::Halt
            ]
        );
    }

    #[test]
    fn a_failed_send_keeps_the_signal_for_the_next_drain() {
        let mut c = EmergencyController::new("run", 8);
        c.escalate(EmergencyLevel::Elevated, "a").unwrap();
        c.escalate(EmergencyLevel::Halt, "b").unwrap();
        assert_eq!(c.outbox().drain(|_| Err::<(), _>("bus down")), 0);
        assert_eq!(c.outbox().len(), 2);
        assert_eq!(c.outbox().drain(|_| Ok::<(), ()>(())), 2);
        assert!(c.outbox().is_empty());
    }

    fn signal(level: EmergencyLevel, i: u64) -> EmergencySignal {
        EmergencySignal {
            signal_id: i.to_string(),
            level: level as i32,
            reason: format!("r{i}"),
            ..Default::default()
        }
    }

    proptest! {
        /// Under overflow and failing sends, every pushed signal is delivered,
        /// alone or inside a coalesced one of its level.
        #[test]
        fn the_outbox_never_loses_a_signal(
            levels in proptest::collection::vec(1i32..=4, 1..2_000),
            capacity in 5usize..32,
            fail_every in 2usize..7,
        ) {
            let mut outbox = Outbox::new(capacity);
            let mut pushed = [0u64; 5];
            let mut delivered = [0u64; 5];
            let mut attempts = 0usize;
            let mut overflow_events = 0u64;
            for (i, level) in levels.iter().enumerate() {
                let level = EmergencyLevel::try_from(*level).unwrap();
                pushed[level as usize] += 1;
                if outbox.push(signal(level, i as u64)).is_some() {
                    overflow_events += 1;
                }
                if i.is_multiple_of(3) {
                    outbox.drain(|s| {
                        attempts += 1;
                        if attempts.is_multiple_of(fail_every) { return Err(()); }
                        delivered[s.level as usize] += signal_count(s);
                        Ok(())
                    });
                }
                prop_assert!(outbox.len() <= capacity);
            }
            outbox.drain(|s| {
                delivered[s.level as usize] += signal_count(s);
                Ok::<(), ()>(())
            });
            prop_assert_eq!(pushed, delivered);
            prop_assert_eq!(overflow_events, outbox.overflows());
        }
    }
}
