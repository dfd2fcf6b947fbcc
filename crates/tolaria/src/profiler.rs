//! The step profiler: bounded windows of training steps traced as `tracing`
//! spans (`step` › `data`, `seeds_before_step`, `forward` › `seed` (one per
//! live seed, with its slot and stage), `backward`, `seeds_after_backward`,
//! `optimizer`, `seeds_after_step`) into Chrome trace
//! files (open them in `chrome://tracing` or Perfetto).
//!
//! Off unless `[tolaria.profiler] dir` names a directory. The directory is
//! checked once, when the trainer starts (created, a probe file written and
//! removed); if that fails, or a trace cannot be written later, the failure is
//! a WARNING event and a counter, and training continues untraced.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use leyline::v1::{TelemetryEvent, TelemetryLevel};
use serde::{Deserialize, Serialize};
use tracing_subscriber::layer::SubscriberExt;

/// The `[tolaria.profiler]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProfilerConfig {
    /// Directory of trace files; no profiling when unset (the default).
    pub dir: Option<PathBuf>,
    /// Step (1-based global optimizer step) at which the first window opens (default 20).
    pub start_step: u64,
    /// Steps traced per window (default 10).
    pub steps: u64,
    /// Windows traced at most (default 1).
    pub windows: u32,
    /// Steps from one window's start to the next (default 500; at least `steps`).
    pub every_steps: u64,
}

impl Default for ProfilerConfig {
    fn default() -> Self {
        Self {
            dir: None,
            start_step: 20,
            steps: 10,
            windows: 1,
            every_steps: 500,
        }
    }
}

impl ProfilerConfig {
    /// Why the settings cannot work, if they cannot: (key, detail).
    pub(crate) fn problem(&self) -> Option<(&'static str, String)> {
        if self.steps == 0 {
            return Some(("steps", "must be at least 1".into()));
        }
        if self.windows == 0 {
            return Some(("windows", "must be at least 1".into()));
        }
        if self.every_steps < self.steps {
            return Some((
                "every_steps",
                format!(
                    "{} is shorter than a window of {} steps",
                    self.every_steps, self.steps
                ),
            ));
        }
        None
    }
}

/// Records whether the trace writer ever failed (the writer thread of
/// `tracing-chrome` gives up on an I/O error; this is how we learn of it).
struct Watched {
    file: File,
    failed: Arc<AtomicBool>,
}

impl Write for Watched {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file
            .write(buf)
            .inspect_err(|_| self.failed.store(true, Ordering::Relaxed))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file
            .flush()
            .and_then(|()| self.file.sync_data())
            .inspect_err(|_| self.failed.store(true, Ordering::Relaxed))
    }
}

struct Window {
    dispatch: tracing::Dispatch,
    flush: tracing_chrome::FlushGuard,
    failed: Arc<AtomicBool>,
    path: PathBuf,
    first_step: u64,
    last_step: u64,
}

/// The profiler as the trainer holds it.
pub(crate) struct Profiler {
    config: ProfilerConfig,
    dir: Option<PathBuf>,
    window: Option<Window>,
    opened: u32,
    traces: Vec<PathBuf>,
    failures: u32,
}

fn failure(detail: String) -> TelemetryEvent {
    leyline::telemetry::event("profiler_failed", TelemetryLevel::Warning, detail).build()
}

impl Profiler {
    /// Checks the capability once; a failure disables profiling with an event.
    pub(crate) fn new(config: ProfilerConfig, events: &mut Vec<TelemetryEvent>) -> Self {
        let mut profiler = Self {
            dir: None,
            window: None,
            opened: 0,
            traces: Vec::new(),
            failures: 0,
            config,
        };
        if let Some(dir) = profiler.config.dir.clone() {
            let probe = dir.join(".esper-profiler-probe");
            let check = std::fs::create_dir_all(&dir)
                .and_then(|()| std::fs::write(&probe, b"probe"))
                .and_then(|()| std::fs::remove_file(&probe));
            match check {
                Ok(()) => profiler.dir = Some(dir),
                Err(e) => {
                    profiler.failures += 1;
                    events.push(failure(format!(
                        "profiler disabled: cannot write traces to {}: {e}",
                        dir.display()
                    )));
                }
            }
        }
        profiler
    }

    /// Called before step `step` (1-based); returns the tracing guard to hold
    /// for the step when it falls in a window.
    pub(crate) fn enter(
        &mut self,
        step: u64,
        events: &mut Vec<TelemetryEvent>,
    ) -> Option<tracing::dispatcher::DefaultGuard> {
        let dir = self.dir.as_ref()?;
        if self.window.is_none() {
            let c = &self.config;
            let starts_here = step >= c.start_step
                && (step - c.start_step).is_multiple_of(c.every_steps)
                && self.opened < c.windows;
            if !starts_here {
                return None;
            }
            self.opened += 1;
            let last_step = step + c.steps - 1;
            let path = dir.join(format!("trace-steps-{step:09}-{last_step:09}.json"));
            let file = match File::create(&path) {
                Ok(file) => file,
                Err(e) => {
                    self.failures += 1;
                    events.push(failure(format!("cannot create {}: {e}", path.display())));
                    return None;
                }
            };
            let failed = Arc::new(AtomicBool::new(false));
            let (layer, flush) = tracing_chrome::ChromeLayerBuilder::new()
                .writer(Watched {
                    file,
                    failed: Arc::clone(&failed),
                })
                .include_args(true)
                .build();
            let subscriber = tracing_subscriber::registry().with(layer);
            let dispatch = tracing::Dispatch::new(subscriber);
            self.window = Some(Window {
                dispatch,
                flush,
                failed,
                path,
                first_step: step,
                last_step,
            });
        }
        let guard = self
            .window
            .as_ref()
            .map(|w| tracing::dispatcher::set_default(&w.dispatch));
        if step == self.window.as_ref().map_or(0, |w| w.first_step) {
            // Callsites hit while no subscriber existed (before the first
            // window, or between windows) are cached as "never"; recompute
            // with this window's subscriber in place, or it records nothing.
            tracing::callsite::rebuild_interest_cache();
        }
        guard
    }

    /// Called after step `step`; closes the window after its last step.
    pub(crate) fn exit(&mut self, step: u64, events: &mut Vec<TelemetryEvent>) {
        if self.window.as_ref().is_some_and(|w| step >= w.last_step) {
            self.close(events);
        }
    }

    /// Closes an open window (end of run or of the window).
    pub(crate) fn close(&mut self, events: &mut Vec<TelemetryEvent>) {
        let Some(window) = self.window.take() else {
            return;
        };
        let Window {
            dispatch,
            flush,
            failed,
            path,
            ..
        } = window;
        drop(dispatch);
        // Dropping the guard finishes the JSON array and joins the writer thread.
        drop(flush);
        if failed.load(Ordering::Relaxed) {
            self.failures += 1;
            events.push(failure(format!("writing {} failed", path.display())));
        } else {
            self.traces.push(path);
        }
    }

    /// Trace files written.
    pub(crate) fn traces(&self) -> &[PathBuf] {
        &self.traces
    }

    /// Profiler failures (each also an event).
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }
}
