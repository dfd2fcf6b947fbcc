//! The fixed set of Oona streams, entry ids and group start positions.

use std::fmt;
use std::str::FromStr;

/// One of Oona's streams. The set is closed: routing maps every message to one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stream {
    /// System state, adaptation commands.
    Normal,
    /// Emergency signals and CRITICAL telemetry. Never shed, never length-capped.
    Emergency,
    /// Telemetry below CRITICAL.
    Telemetry,
    /// Controller policy updates.
    Policy,
    /// Kernel prefetch requests to Urza.
    KernelRequests,
    /// Kernel ready notices and catalog updates from Urza.
    KernelReady,
    /// Kernel prefetch errors from Urza.
    KernelErrors,
    /// Field reports (outcomes of adaptations).
    FieldReports,
    /// Fleet run jobs for `esper worker`s. Never length-capped.
    Jobs,
    /// What became of fleet run jobs. Never length-capped.
    JobResults,
    /// Entries that failed their handler too often. Never length-capped.
    DeadLetter,
    /// Entries that failed verification or decoding. Never length-capped.
    Quarantine,
}

impl Stream {
    /// Every stream, in a fixed order (the order of [`Stream::index`]).
    pub const ALL: [Stream; 12] = [
        Stream::Normal,
        Stream::Emergency,
        Stream::Telemetry,
        Stream::Policy,
        Stream::KernelRequests,
        Stream::KernelReady,
        Stream::KernelErrors,
        Stream::FieldReports,
        Stream::DeadLetter,
        Stream::Quarantine,
        Stream::Jobs,
        Stream::JobResults,
    ];

    /// The stream's name under a namespace prefix (e.g. `oona.normal`).
    pub fn name(self) -> &'static str {
        match self {
            Stream::Normal => "normal",
            Stream::Emergency => "emergency",
            Stream::Telemetry => "telemetry",
            Stream::Policy => "policy",
            Stream::KernelRequests => "kernels.requests",
            Stream::KernelReady => "kernels.ready",
            Stream::KernelErrors => "kernels.errors",
            Stream::FieldReports => "field_reports",
            Stream::DeadLetter => "dead_letter",
            Stream::Quarantine => "quarantine",
            Stream::Jobs => "jobs",
            Stream::JobResults => "job_results",
        }
    }

    /// Dense index in `0..Stream::ALL.len()`.
    pub fn index(self) -> usize {
        match self {
            Stream::Normal => 0,
            Stream::Emergency => 1,
            Stream::Telemetry => 2,
            Stream::Policy => 3,
            Stream::KernelRequests => 4,
            Stream::KernelReady => 5,
            Stream::KernelErrors => 6,
            Stream::FieldReports => 7,
            Stream::DeadLetter => 8,
            Stream::Quarantine => 9,
            Stream::Jobs => 10,
            Stream::JobResults => 11,
        }
    }

    /// Whether `MAXLEN` capping applies. Emergency, dead-letter and quarantine
    /// streams are only ever trimmed of entries every group has acknowledged.
    pub fn capped(self) -> bool {
        match self {
            Stream::Emergency
            | Stream::DeadLetter
            | Stream::Quarantine
            | Stream::Jobs
            | Stream::JobResults => false,
            Stream::Normal
            | Stream::Telemetry
            | Stream::Policy
            | Stream::KernelRequests
            | Stream::KernelReady
            | Stream::KernelErrors
            | Stream::FieldReports => true,
        }
    }

    /// The stream with this name, if any.
    pub fn from_name(name: &str) -> Option<Stream> {
        Stream::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A stream entry id, `<milliseconds>-<sequence>` as in Redis Streams. Both
/// backends assign ids this way, so ids order entries within a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct EntryId {
    /// Milliseconds part (the server's clock when the entry was added).
    pub ms: u64,
    /// Sequence within the millisecond.
    pub seq: u64,
}

impl EntryId {
    /// The smallest id (`0-0`).
    pub const ZERO: EntryId = EntryId { ms: 0, seq: 0 };

    /// The id just after this one.
    pub fn next(self) -> EntryId {
        match self.seq.checked_add(1) {
            Some(seq) => EntryId { ms: self.ms, seq },
            None => EntryId {
                ms: self.ms.saturating_add(1),
                seq: 0,
            },
        }
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// An entry id that did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed stream entry id {0:?} (expected <ms>-<seq>)")]
pub struct BadEntryId(pub String);

impl FromStr for EntryId {
    type Err = BadEntryId;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || BadEntryId(text.to_owned());
        let (ms, seq) = text.split_once('-').ok_or_else(bad)?;
        Ok(EntryId {
            ms: ms.parse().map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

/// Where a new consumer group starts reading. There is deliberately no "only new
/// messages" (`$`) option: a group created late must not silently lose history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// From the first entry still in the stream.
    Beginning,
    /// From the first entry after this id.
    After(EntryId),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_round_trip() {
        for (i, s) in Stream::ALL.into_iter().enumerate() {
            assert_eq!(s.index(), i);
            assert_eq!(Stream::from_name(s.name()), Some(s));
        }
    }

    #[test]
    fn entry_ids_parse_order_and_step() {
        let id: EntryId = "1700000000000-7".parse().unwrap();
        assert_eq!(
            id,
            EntryId {
                ms: 1_700_000_000_000,
                seq: 7
            }
        );
        assert_eq!(id.to_string(), "1700000000000-7");
        assert!(id < id.next());
        assert!(
            EntryId {
                ms: 1,
                seq: u64::MAX
            }
            .next()
                == EntryId { ms: 2, seq: 0 }
        );
        assert!("12".parse::<EntryId>().is_err());
        assert!("a-1".parse::<EntryId>().is_err());
    }
}
