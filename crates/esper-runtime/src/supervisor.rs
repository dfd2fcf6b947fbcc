//! The supervisor: the process's background subsystems (the bus
//! housekeeping, the exporter, clients that keep a connection) run as
//! supervised tasks, and one `system_mode` is derived from their health,
//! from the dependencies they report, and from emergency signals.
//!
//! A task that fails (returns an error, panics, or ends while nobody asked
//! it to) is started again after a backoff that doubles from
//! `initial` up to `max`; it counts as healthy again once it has run
//! `healthy_after` without failing, and its backoff starts over. While any
//! task is restarting or a dependency is down the mode is DEGRADED; it
//! returns to OPERATIONAL when they recover. An emergency at CONSERVATIVE or
//! HALT makes it EMERGENCY for the rest of the process. Every change is
//! exported (`esper_system_mode`) and handed to whoever watches
//! ([`Supervisor::watch`]: the bus publishes it on Oona as a telemetry
//! packet's system health).
//!
//! Cancelling the supervisor's token (a HALT, the end of the run) stops
//! every task; none is restarted after that.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::exporter::SystemMode;

/// Restart timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Wait before the first restart.
    pub initial: Duration,
    /// Longest wait.
    pub max: Duration,
    /// A task that ran this long without failing is healthy again.
    pub healthy_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(30),
            healthy_after: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    /// The wait before restart number `failures` (from 1).
    pub fn delay(&self, failures: u32) -> Duration {
        let doubled = self
            .initial
            .saturating_mul(1u32 << failures.saturating_sub(1).min(20));
        doubled.min(self.max)
    }
}

/// How one supervised task is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskHealth {
    /// Up, and up long enough to count as healthy.
    Running,
    /// Failed: waiting to restart, or restarted and not yet healthy.
    Restarting {
        /// Failures in a row.
        failures: u32,
        /// The last failure.
        last_error: String,
    },
    /// Stopped on request.
    Stopped,
}

#[derive(Debug)]
struct Inner {
    tasks: Mutex<BTreeMap<String, TaskHealth>>,
    down: Mutex<BTreeSet<String>>,
    emergency: AtomicBool,
    restarts: AtomicU64,
    mode: watch::Sender<SystemMode>,
}

impl Inner {
    fn set_task(&self, name: &str, health: TaskHealth) {
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), health);
        self.update();
    }

    fn derive(&self) -> SystemMode {
        if self.emergency.load(Ordering::Acquire) {
            return SystemMode::Emergency;
        }
        let restarting = self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .any(|h| matches!(h, TaskHealth::Restarting { .. }));
        let down = !self
            .down
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty();
        if restarting || down {
            SystemMode::Degraded
        } else {
            SystemMode::Operational
        }
    }

    fn update(&self) {
        let mode = self.derive();
        self.mode.send_if_modified(|m| {
            let changed = *m != mode;
            *m = mode;
            changed
        });
        crate::exporter::record_system_mode(mode);
    }
}

/// Supervises tasks on one tokio runtime.
#[derive(Debug, Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
    handle: tokio::runtime::Handle,
    cancel: CancellationToken,
    backoff: Backoff,
}

impl Supervisor {
    /// A supervisor whose tasks run on `handle` until `cancel` fires.
    pub fn new(
        handle: tokio::runtime::Handle,
        cancel: CancellationToken,
        backoff: Backoff,
    ) -> Self {
        let (mode, _) = watch::channel(SystemMode::Operational);
        crate::exporter::record_system_mode(SystemMode::Operational);
        Self {
            inner: Arc::new(Inner {
                tasks: Mutex::default(),
                down: Mutex::default(),
                emergency: AtomicBool::new(false),
                restarts: AtomicU64::new(0),
                mode,
            }),
            handle,
            cancel,
            backoff,
        }
    }

    /// Runs `make(token)` as task `name`, again after each failure (with
    /// backoff) until the supervisor is cancelled. The future should return
    /// `Ok` only once `token` is cancelled; returning earlier counts as a
    /// failure.
    pub fn supervise<F, Fut>(&self, name: &str, make: F)
    where
        F: Fn(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        let cancel = self.cancel.clone();
        let backoff = self.backoff;
        let name = name.to_owned();
        inner.set_task(&name, TaskHealth::Running);
        self.handle.spawn(async move {
            let mut failures = 0u32;
            loop {
                let token = cancel.child_token();
                let mut run = tokio::spawn(make(token.clone()));
                let started = tokio::time::Instant::now();
                let mut healthy = failures == 0;
                let outcome = loop {
                    tokio::select! {
                        joined = &mut run => break joined,
                        () = tokio::time::sleep(backoff.healthy_after), if !healthy => {
                            healthy = true;
                            failures = 0;
                            inner.set_task(&name, TaskHealth::Running);
                        }
                    }
                };
                if cancel.is_cancelled() {
                    inner.set_task(&name, TaskHealth::Stopped);
                    return;
                }
                let error = match outcome {
                    Ok(Ok(())) => "ended while it was still needed".to_owned(),
                    Ok(Err(e)) => e,
                    Err(e) if e.is_panic() => "panicked".to_owned(),
                    Err(e) => e.to_string(),
                };
                if started.elapsed() >= backoff.healthy_after {
                    failures = 0;
                }
                failures += 1;
                eprintln!(
                    "esper: {name} failed ({error}); restarting in {:.1} s (failure {failures} in a row)",
                    backoff.delay(failures).as_secs_f64()
                );
                metrics::counter!("esper_supervisor_restarts_total", "task" => name.clone())
                    .increment(1);
                inner.restarts.fetch_add(1, Ordering::Relaxed);
                inner.set_task(
                    &name,
                    TaskHealth::Restarting {
                        failures,
                        last_error: error,
                    },
                );
                tokio::select! {
                    () = cancel.cancelled() => {
                        inner.set_task(&name, TaskHealth::Stopped);
                        return;
                    }
                    () = tokio::time::sleep(backoff.delay(failures)) => {}
                }
            }
        });
    }

    /// Reports a dependency (the bus, a remote service) down or back up.
    pub fn dependency(&self, name: &str, up: bool) {
        {
            let mut down = self.inner.down.lock().unwrap_or_else(|p| p.into_inner());
            if up {
                down.remove(name);
            } else {
                down.insert(name.to_owned());
            }
        }
        self.inner.update();
    }

    /// An emergency at CONSERVATIVE or above was raised.
    pub fn raise_emergency(&self) {
        self.inner.emergency.store(true, Ordering::Release);
        self.inner.update();
    }

    /// The mode now.
    pub fn mode(&self) -> SystemMode {
        *self.inner.mode.borrow()
    }

    /// Changes of the mode, as they happen.
    pub fn watch(&self) -> watch::Receiver<SystemMode> {
        self.inner.mode.subscribe()
    }

    /// Every task's health, and the dependencies down.
    pub fn health(&self) -> (BTreeMap<String, TaskHealth>, BTreeSet<String>) {
        (
            self.inner
                .tasks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            self.inner
                .down
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }

    /// Restarts so far.
    pub fn restarts(&self) -> u64 {
        self.inner.restarts.load(Ordering::Relaxed)
    }

    /// Stops every task.
    pub fn stop(&self) {
        self.cancel.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;
    use std::time::Instant;

    fn fast() -> Backoff {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(400),
            healthy_after: Duration::from_millis(150),
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let b = fast();
        let waits: Vec<u128> = (1..=5).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 400, 400]);
    }

    #[test]
    fn a_crashing_task_is_restarted_with_backoff_and_the_mode_recovers() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let cancel = CancellationToken::new();
        let sup = Supervisor::new(runtime.handle().clone(), cancel.clone(), fast());
        let mut modes = sup.watch();
        let starts = Arc::new(AtomicU32::new(0));
        let started_at = Arc::new(Mutex::new(Vec::<Instant>::new()));
        {
            let starts = Arc::clone(&starts);
            let started_at = Arc::clone(&started_at);
            // Fails at once twice (a panic, then an error), then stays up.
            sup.supervise("flaky", move |token| {
                let n = starts.fetch_add(1, Ordering::SeqCst);
                started_at.lock().unwrap().push(Instant::now());
                async move {
                    match n {
                        0 => panic!("boom"),
                        1 => Err("refused".to_owned()),
                        _ => {
                            token.cancelled().await;
                            Ok(())
                        }
                    }
                }
            });
        }
        let seen = runtime.block_on(async {
            let mut seen = vec![*modes.borrow()];
            let until = tokio::time::Instant::now() + Duration::from_secs(5);
            while seen.last() != Some(&SystemMode::Operational) || seen.len() < 3 {
                tokio::select! {
                    changed = modes.changed() => {
                        changed.unwrap();
                        seen.push(*modes.borrow());
                    }
                    () = tokio::time::sleep_until(until) => break,
                }
            }
            seen
        });
        assert_eq!(
            seen,
            [
                SystemMode::Operational,
                SystemMode::Degraded,
                SystemMode::Operational
            ]
        );
        assert_eq!(starts.load(Ordering::SeqCst), 3);
        assert_eq!(sup.restarts(), 2);
        let at = started_at.lock().unwrap().clone();
        // The second restart waited about twice the first.
        let (first, second) = (at[1] - at[0], at[2] - at[1]);
        assert!(first >= Duration::from_millis(100), "{first:?}");
        assert!(second >= Duration::from_millis(200), "{second:?}");
        assert_eq!(sup.health().0["flaky"], TaskHealth::Running);
        // A dependency down degrades; back up, it recovers; an emergency
        // stays.
        sup.dependency("oona", false);
        assert_eq!(sup.mode(), SystemMode::Degraded);
        sup.dependency("oona", true);
        assert_eq!(sup.mode(), SystemMode::Operational);
        sup.raise_emergency();
        assert_eq!(sup.mode(), SystemMode::Emergency);
        sup.stop();
        runtime.block_on(async { tokio::time::sleep(Duration::from_millis(50)).await });
        assert_eq!(sup.health().0["flaky"], TaskHealth::Stopped);
        assert_eq!(
            starts.load(Ordering::SeqCst),
            3,
            "nothing restarts after stop"
        );
    }
}
