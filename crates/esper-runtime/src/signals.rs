//! Operator signals for `esper train`.
//!
//! The first SIGINT or SIGTERM asks the run to stop at the end of the epoch
//! in progress: that epoch's checkpoint and metrics line are written, no
//! `summary.json` (the run is not finished: `esper train --resume` or the
//! cohort continues it), and the process exits 130 (SIGINT) or 143 (SIGTERM).
//! A second signal ends the process at once with the same code; the last
//! checkpoint stands (they are written atomically).
//!
//! Stopping mid-epoch would need the data loader's position in the
//! checkpoint; ending on an epoch boundary keeps a resumed run bit-identical
//! to an uninterrupted one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::error::{Error, Result};

/// A stop signal the process received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM (a supervisor or `kill`).
    Terminate,
}

impl StopSignal {
    /// The signal's name.
    pub fn name(self) -> &'static str {
        match self {
            StopSignal::Interrupt => "SIGINT",
            StopSignal::Terminate => "SIGTERM",
        }
    }

    /// The exit status a process ended by it reports (128 + its number).
    pub fn exit_code(self) -> u8 {
        match self {
            StopSignal::Interrupt => 130,
            StopSignal::Terminate => 143,
        }
    }

    fn code(self) -> u8 {
        match self {
            StopSignal::Interrupt => 1,
            StopSignal::Terminate => 2,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(StopSignal::Interrupt),
            2 => Some(StopSignal::Terminate),
            _ => None,
        }
    }
}

/// Watches SIGINT and SIGTERM for the life of the process.
#[derive(Debug, Clone)]
pub struct StopSignals {
    received: Arc<AtomicU8>,
}

impl StopSignals {
    /// Installs the handlers on `runtime`; `on_first` is printed when the
    /// first signal arrives (after `program` and the signal's name).
    pub fn install(
        runtime: &tokio::runtime::Handle,
        program: &'static str,
        on_first: String,
    ) -> Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        let _entered = runtime.enter();
        let listen = |kind: SignalKind, what: &str| {
            signal(kind).map_err(|e| Error::Runtime(format!("installing the {what} handler: {e}")))
        };
        let mut interrupt = listen(SignalKind::interrupt(), "SIGINT")?;
        let mut terminate = listen(SignalKind::terminate(), "SIGTERM")?;
        let received = Arc::new(AtomicU8::new(0));
        let seen = Arc::clone(&received);
        runtime.spawn(async move {
            loop {
                let got = tokio::select! {
                    Some(()) = interrupt.recv() => StopSignal::Interrupt,
                    Some(()) = terminate.recv() => StopSignal::Terminate,
                    else => return,
                };
                if let Some(first) = StopSignal::from_code(seen.swap(got.code(), Ordering::SeqCst))
                {
                    eprintln!(
                        "{program}: {} after {}: stopping now",
                        got.name(),
                        first.name()
                    );
                    std::process::exit(i32::from(got.exit_code()));
                }
                eprintln!("{program}: {}: {on_first}", got.name());
            }
        });
        Ok(Self { received })
    }

    /// The first signal received, if any.
    pub fn received(&self) -> Option<StopSignal> {
        StopSignal::from_code(self.received.load(Ordering::SeqCst))
    }
}
