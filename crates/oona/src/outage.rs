//! Riding out a backend outage (Redis restarting, a dropped connection): a
//! publication the backend refuses with a transient error, after a few quick
//! retries, is *held* here — in order, bounded, counted — and sent after the
//! backend answers again. While publications are held, new ones queue behind
//! them (so each stream keeps its order) and only one publish per
//! `probe_ms` pays a round trip to find out whether the backend is back.
//!
//! When the buffer is full the oldest held publication that is not on the
//! emergency stream is dropped (counted); emergency signals are never dropped,
//! so the buffer may exceed its bound by emergency signals alone.
//!
//! Held publications are kept unsigned and signed when they are finally sent:
//! a subscriber judges freshness by when an entry entered the bus, and an
//! envelope signed before a long outage would be quarantined as stale. The
//! envelope keeps its message id (a publication the backend stored although
//! it reported a failure arrives once more and is caught as a replay) and
//! carries [`HELD_SINCE_ATTRIBUTE`], the wall-clock time it was first issued.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use leyline::v1::{BusMessageType, MessagePriority};

use crate::Stream;

/// Envelope attribute on a publication that was held during an outage: when
/// it was first issued, ms since the Unix epoch.
pub const HELD_SINCE_ATTRIBUTE: &str = "oona.held_since_ms";

/// A publication waiting for the backend: everything needed to sign it.
#[derive(Debug, Clone)]
pub(crate) struct Held {
    pub(crate) stream: Stream,
    pub(crate) message_type: BusMessageType,
    pub(crate) payload: Vec<u8>,
    pub(crate) priority: MessagePriority,
    pub(crate) attributes: BTreeMap<String, String>,
    pub(crate) message_id: String,
    pub(crate) issued_at_ms: u64,
}

/// What the bus went through: interruptions, time down, what was held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutageStats {
    /// Times the backend stopped accepting publications.
    pub interruptions: u64,
    /// Time it was down in all, ms (an ongoing outage included).
    pub down_ms: u64,
    /// Whether it is down now.
    pub down_now: bool,
    /// Publications held because the backend refused them.
    pub held: u64,
    /// … of which sent after it came back.
    pub delivered_late: u64,
    /// … of which dropped because the buffer was full (never an emergency
    /// signal) or the backend refused them for good.
    pub dropped: u64,
    /// … still waiting now.
    pub pending: u64,
    /// The error that began the latest interruption.
    pub last_error: Option<String>,
}

/// The held queue and the outage bookkeeping of one `Oona` handle.
#[derive(Debug, Default)]
pub(crate) struct Outage {
    queue: VecDeque<Held>,
    /// A flush has taken the queue's head and is sending it.
    flushing: bool,
    down_since: Option<Instant>,
    last_probe: Option<Instant>,
    interruptions: u64,
    down_before: Duration,
    held: u64,
    delivered_late: u64,
    dropped: u64,
    last_error: Option<String>,
}

impl Outage {
    /// Whether a new publication must queue behind held ones (or the
    /// backend is known to be down).
    pub(crate) fn must_hold(&self) -> bool {
        self.down_since.is_some() || self.flushing || !self.queue.is_empty()
    }

    /// Whether the backend is known to be down.
    pub(crate) fn is_down(&self) -> bool {
        self.down_since.is_some()
    }

    /// Whether a publish should try the backend now (at most every `every`).
    pub(crate) fn probe_due(&mut self, now: Instant, every: Duration) -> bool {
        if self.flushing {
            return false;
        }
        match self.last_probe {
            Some(at) if now.duration_since(at) < every => false,
            _ => {
                self.last_probe = Some(now);
                true
            }
        }
    }

    /// The backend refused a publication with `error`; returns whether this
    /// began a new interruption.
    pub(crate) fn down(&mut self, now: Instant, error: String) -> bool {
        if self.down_since.is_some() {
            return false;
        }
        self.down_since = Some(now);
        self.last_probe = Some(now);
        self.interruptions += 1;
        self.last_error = Some(error);
        true
    }

    /// Queues `held`; returns the publication dropped to make room, if any.
    pub(crate) fn hold(&mut self, held: Held, capacity: usize) -> Option<Held> {
        self.held += 1;
        let mut dropped = None;
        if self.queue.len() >= capacity
            && let Some(i) = self
                .queue
                .iter()
                .position(|h| h.stream != Stream::Emergency)
        {
            dropped = self.queue.remove(i);
            self.dropped += 1;
        }
        if held.stream != Stream::Emergency && self.queue.len() >= capacity {
            // Full of emergency signals: the newcomer is the one to drop.
            self.dropped += 1;
            return Some(held);
        }
        self.queue.push_back(held);
        dropped
    }

    /// Takes the queue for a flush; `None` when empty or a flush is running.
    pub(crate) fn take(&mut self) -> Option<VecDeque<Held>> {
        if self.flushing || self.queue.is_empty() {
            return None;
        }
        self.flushing = true;
        Some(std::mem::take(&mut self.queue))
    }

    /// Ends a flush: `rest` (not sent) goes back in front of what was held
    /// meanwhile.
    pub(crate) fn give_back(&mut self, mut rest: VecDeque<Held>) {
        rest.append(&mut self.queue);
        self.queue = rest;
        self.flushing = false;
    }

    /// One held publication was sent.
    pub(crate) fn delivered(&mut self) {
        self.delivered_late += 1;
    }

    /// One held publication was refused for good.
    pub(crate) fn lost(&mut self) {
        self.dropped += 1;
    }

    /// The backend accepted a publication; returns how long the interruption
    /// it ends lasted.
    pub(crate) fn up(&mut self, now: Instant) -> Option<Duration> {
        let since = self.down_since.take()?;
        let lasted = now.duration_since(since);
        self.down_before += lasted;
        Some(lasted)
    }

    pub(crate) fn pending(&self) -> usize {
        self.queue.len()
    }

    pub(crate) fn stats(&self, now: Instant) -> OutageStats {
        let ongoing = self
            .down_since
            .map_or(Duration::ZERO, |s| now.duration_since(s));
        OutageStats {
            interruptions: self.interruptions,
            down_ms: (self.down_before + ongoing).as_millis() as u64,
            down_now: self.down_since.is_some(),
            held: self.held,
            delivered_late: self.delivered_late,
            dropped: self.dropped,
            pending: self.queue.len() as u64,
            last_error: self.last_error.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(stream: Stream, n: u8) -> Held {
        Held {
            stream,
            message_type: BusMessageType::SystemState,
            payload: vec![n],
            priority: MessagePriority::Normal,
            attributes: BTreeMap::new(),
            message_id: format!("m{n}"),
            issued_at_ms: 0,
        }
    }

    #[test]
    fn a_full_buffer_drops_the_oldest_ordinary_publication_never_a_signal() {
        let mut o = Outage::default();
        assert!(o.hold(held(Stream::Emergency, 0), 2).is_none());
        assert!(o.hold(held(Stream::Normal, 1), 2).is_none());
        let dropped = o.hold(held(Stream::Normal, 2), 2).map(|h| h.payload);
        assert_eq!(dropped, Some(vec![1]));
        // Signals go in over the bound; an ordinary newcomer to a queue full
        // of signals is itself dropped.
        let mut o = Outage::default();
        for n in 0..3 {
            assert!(o.hold(held(Stream::Emergency, n), 2).is_none());
        }
        assert_eq!(o.pending(), 3);
        assert_eq!(
            o.hold(held(Stream::Normal, 9), 2).map(|h| h.payload),
            Some(vec![9])
        );
        let s = o.stats(Instant::now());
        assert_eq!((s.held, s.dropped, s.pending), (4, 1, 3));
    }

    #[test]
    fn a_flush_keeps_the_order_and_an_interruption_is_timed_once() {
        let mut o = Outage::default();
        let t0 = Instant::now();
        assert!(o.down(t0, "broken pipe".into()));
        assert!(!o.down(t0, "again".into()));
        o.hold(held(Stream::Normal, 1), 10);
        o.hold(held(Stream::Normal, 2), 10);
        let mut taken = o.take().unwrap_or_default();
        assert!(o.take().is_none(), "one flush at a time");
        o.hold(held(Stream::Normal, 3), 10);
        taken.pop_front();
        o.delivered();
        o.give_back(taken);
        let order: Vec<u8> = o.queue.iter().map(|h| h.payload[0]).collect();
        assert_eq!(order, [2, 3]);
        let lasted = o.up(t0 + Duration::from_millis(1500));
        assert_eq!(lasted, Some(Duration::from_millis(1500)));
        assert_eq!(o.up(t0 + Duration::from_secs(9)), None);
        let s = o.stats(t0 + Duration::from_secs(9));
        assert_eq!(s.interruptions, 1);
        assert_eq!(s.down_ms, 1500);
        assert!(!s.down_now);
        assert_eq!(s.last_error.as_deref(), Some("broken pipe"));
    }
}
