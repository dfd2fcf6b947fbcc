//! A circuit breaker: opens after `failures_to_open` consecutive failures,
//! stays open for `open_for`, then lets calls through half-open; closes after
//! `successes_to_close` consecutive successes, re-opens on a failure. Time is
//! passed in, so behaviour is deterministic under test.

use std::time::{Duration, Instant};

use leyline::v1::CircuitBreakerState;

/// Breaker thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub failures_to_open: u32,
    /// How long it stays open before a half-open trial.
    pub open_for: Duration,
    /// Consecutive half-open successes that close it.
    pub successes_to_close: u32,
}

impl Default for BreakerConfig {
    /// 3 failures → open 30 s → half-open; 2 successes close.
    fn default() -> Self {
        Self {
            failures_to_open: 3,
            open_for: Duration::from_secs(30),
            successes_to_close: 2,
        }
    }
}

/// The breaker.
#[derive(Debug, Clone)]
pub(crate) struct Breaker {
    config: BreakerConfig,
    state: CircuitBreakerState,
    failures: u32,
    successes: u32,
    opened_at: Option<Instant>,
}

impl Breaker {
    /// A closed breaker.
    pub(crate) fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: CircuitBreakerState::Closed,
            failures: 0,
            successes: 0,
            opened_at: None,
        }
    }

    /// The state at `now` (an open breaker whose time is up is half-open).
    pub(crate) fn state(&mut self, now: Instant) -> CircuitBreakerState {
        if self.state == CircuitBreakerState::Open
            && self
                .opened_at
                .is_some_and(|t| now.duration_since(t) >= self.config.open_for)
        {
            self.state = CircuitBreakerState::HalfOpen;
            self.successes = 0;
        }
        self.state
    }

    /// Whether the breaker is open at `now`.
    pub(crate) fn is_open(&mut self, now: Instant) -> bool {
        self.state(now) == CircuitBreakerState::Open
    }

    /// Records an outcome at `now`.
    pub(crate) fn record(&mut self, ok: bool, now: Instant) {
        let state = self.state(now);
        match (state, ok) {
            (CircuitBreakerState::Open, _) => {}
            (CircuitBreakerState::HalfOpen, true) => {
                self.successes += 1;
                if self.successes >= self.config.successes_to_close {
                    self.state = CircuitBreakerState::Closed;
                    self.failures = 0;
                }
            }
            (CircuitBreakerState::HalfOpen, false) => self.open(now),
            (CircuitBreakerState::Closed | CircuitBreakerState::Unspecified, true) => {
                self.failures = 0;
            }
            (CircuitBreakerState::Closed | CircuitBreakerState::Unspecified, false) => {
                self.failures += 1;
                if self.failures >= self.config.failures_to_open {
                    self.open(now);
                }
            }
        }
    }

    fn open(&mut self, now: Instant) {
        self.state = CircuitBreakerState::Open;
        self.opened_at = Some(now);
        self.successes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_failures_open_thirty_seconds_then_two_successes_close() {
        let mut b = Breaker::new(BreakerConfig::default());
        let t0 = Instant::now();
        b.record(false, t0);
        b.record(false, t0);
        assert_eq!(b.state(t0), CircuitBreakerState::Closed);
        b.record(true, t0); // a success resets the count
        b.record(false, t0);
        b.record(false, t0);
        b.record(false, t0);
        assert!(b.is_open(t0));
        assert!(b.is_open(t0 + Duration::from_secs(29)));
        let t1 = t0 + Duration::from_secs(30);
        assert_eq!(b.state(t1), CircuitBreakerState::HalfOpen);
        b.record(true, t1);
        assert_eq!(b.state(t1), CircuitBreakerState::HalfOpen);
        b.record(false, t1); // a half-open failure re-opens
        assert!(b.is_open(t1 + Duration::from_secs(1)));
        let t2 = t1 + Duration::from_secs(30);
        b.record(true, t2);
        b.record(true, t2);
        assert_eq!(b.state(t2), CircuitBreakerState::Closed);
    }
}
