//! The field-report write-ahead log: append-only, one record per report,
//! framed as `[u32 length LE][u32 CRC-32 of the payload LE][payload]` where the
//! payload is the report's protobuf encoding; every append is fsynced.
//!
//! Loading never loses good records to a bad one: a record whose CRC or
//! decoding fails is skipped (its length is still within the file) and
//! reported with its offset; a length that runs past the end is a torn tail
//! (an append interrupted by a crash), reported and left out. Reports without
//! a timestamp are refused on append (retention needs one); [`Wal::compact`]
//! drops reports older than the retention, rewriting atomically.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;

use leyline::v1::FieldReport;
use prost::Message;

use crate::error::{Error, Result};
use crate::framing::{Appender, HEADER, io};

pub use crate::framing::BadRecord;

/// Largest report accepted (a corrupt length must not make us allocate).
pub const MAX_RECORD_BYTES: usize = 1 << 20;

/// What loading found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Loaded {
    /// Good reports, in append order.
    pub reports: Vec<FieldReport>,
    /// Records skipped (CRC mismatch, undecodable, no timestamp).
    pub bad: Vec<BadRecord>,
    /// A torn tail: bytes at the end that do not form a record.
    pub torn_tail: Option<BadRecord>,
}

/// An open log.
#[derive(Debug)]
pub struct Wal {
    log: Appender,
    /// Ids of the reports the log holds.
    ids: std::collections::HashSet<String>,
}

/// Encodes one framed record.
fn frame(report: &FieldReport) -> Vec<u8> {
    crate::framing::frame(&report.encode_to_vec())
}

/// Parses a whole log image.
pub fn parse(bytes: &[u8]) -> Loaded {
    let frames = crate::framing::parse(bytes, MAX_RECORD_BYTES);
    let mut loaded = Loaded {
        bad: frames.bad,
        torn_tail: frames.torn_tail,
        ..Loaded::default()
    };
    for (offset, payload) in frames.records {
        let bad = |reason: String| BadRecord { offset, reason };
        match FieldReport::decode(payload) {
            Ok(report) if report.issued_at_ms == 0 => {
                loaded
                    .bad
                    .push(bad(format!("report {} has no timestamp", report.report_id)));
            }
            Ok(report) => loaded.reports.push(report),
            Err(e) => loaded.bad.push(bad(format!("undecodable: {e}"))),
        }
    }
    loaded.bad.sort_by_key(|b| b.offset);
    loaded
}

impl Wal {
    /// Opens (creating) the log at `path` and loads what it holds.
    pub fn open(path: impl Into<PathBuf>) -> Result<(Self, Loaded)> {
        let path = path.into();
        let (log, bytes) = Appender::open(&path, "field-report WAL", MAX_RECORD_BYTES)?;
        let loaded = parse(&bytes);
        let ids = loaded.reports.iter().map(|r| r.report_id.clone()).collect();
        Ok((Self { log, ids }, loaded))
    }

    /// Appends one report and fsyncs; returns whether it was written.
    /// Reports without `issued_at_ms` are refused. A report whose id the log
    /// already holds is not written again: a run resumed from an older
    /// checkpoint decides again the reports it decided after it.
    pub fn append(&mut self, report: &FieldReport) -> Result<bool> {
        if self.ids.contains(&report.report_id) {
            return Ok(false);
        }
        if report.issued_at_ms == 0 {
            return Err(Error::InvalidReport {
                report_id: report.report_id.clone(),
                reason: "issued_at_ms is required (retention is by timestamp)".into(),
            });
        }
        let record = frame(report);
        if record.len() - HEADER > MAX_RECORD_BYTES {
            return Err(Error::InvalidReport {
                report_id: report.report_id.clone(),
                reason: format!(
                    "{} bytes, over the {MAX_RECORD_BYTES}-byte record limit",
                    record.len()
                ),
            });
        }
        self.log.append(&record)?;
        self.ids.insert(report.report_id.clone());
        Ok(true)
    }

    /// Rewrites the log keeping only reports issued at or after `keep_from_ms`
    /// (temp file, fsync, rename, directory fsync); returns how many were dropped.
    /// Unreadable records are dropped too (they were reported at open).
    pub fn compact(&mut self, keep_from_ms: u64) -> Result<usize> {
        let path = self.log.path().to_path_buf();
        let bytes = std::fs::read(&path).map_err(io("reading", &path))?;
        let loaded = parse(&bytes);
        let total = loaded.reports.len();
        let kept: Vec<&FieldReport> = loaded
            .reports
            .iter()
            .filter(|r| r.issued_at_ms >= keep_from_ms)
            .collect();
        let tmp = path.with_extension("compact");
        {
            let mut out = File::create(&tmp).map_err(io("creating", &tmp))?;
            for r in &kept {
                out.write_all(&frame(r)).map_err(io("writing", &tmp))?;
            }
            out.sync_all().map_err(io("syncing", &tmp))?;
        }
        std::fs::rename(&tmp, &path).map_err(io("renaming", &path))?;
        if let Some(dir) = path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io("syncing", dir))?;
        }
        self.log.reopen()?;
        self.ids = kept.iter().map(|r| r.report_id.clone()).collect();
        Ok(total - kept.len())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn report(id: &str, at: u64) -> FieldReport {
        FieldReport {
            report_id: id.into(),
            issued_at_ms: at,
            training_run_id: "run".into(),
            notes: "x".repeat(10),
            ..FieldReport::default()
        }
    }

    fn ids(reports: &[FieldReport]) -> Vec<&str> {
        reports.iter().map(|r| r.report_id.as_str()).collect()
    }

    #[test]
    fn a_corrupt_middle_record_is_skipped_and_reported_while_the_others_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reports.wal");
        let (mut wal, loaded) = Wal::open(&path).unwrap();
        assert!(loaded.reports.is_empty());
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            wal.append(&report(id, 1_000 + i as u64)).unwrap();
        }
        drop(wal);
        let mut bytes = std::fs::read(&path).unwrap();
        let second = frame(&report("a", 1_000)).len();
        bytes[second + HEADER + 3] ^= 0xff; // inside b's payload
        std::fs::write(&path, &bytes).unwrap();

        let (_, loaded) = Wal::open(&path).unwrap();
        assert_eq!(ids(&loaded.reports), vec!["a", "c"]);
        assert_eq!(loaded.bad.len(), 1);
        assert_eq!(loaded.bad[0].offset, second as u64);
        assert!(loaded.bad[0].reason.contains("CRC"));
        assert!(loaded.torn_tail.is_none());
    }

    #[test]
    fn a_torn_tail_is_cut_and_appends_continue_on_a_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reports.wal");
        let (mut wal, _) = Wal::open(&path).unwrap();
        wal.append(&report("a", 1)).unwrap();
        wal.append(&report("b", 2)).unwrap();
        drop(wal);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
        let (mut wal, loaded) = Wal::open(&path).unwrap();
        assert_eq!(ids(&loaded.reports), vec!["a"]);
        assert!(loaded.torn_tail.is_some());
        wal.append(&report("c", 3)).unwrap();
        drop(wal);
        let (_, loaded) = Wal::open(&path).unwrap();
        assert_eq!(ids(&loaded.reports), vec!["a", "c"]);
        assert!(loaded.torn_tail.is_none() && loaded.bad.is_empty());
    }

    #[test]
    fn a_report_already_in_the_log_is_not_written_twice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reports.wal");
        let (mut wal, _) = Wal::open(&path).unwrap();
        assert!(wal.append(&report("a", 1)).unwrap());
        assert!(!wal.append(&report("a", 1)).unwrap());
        drop(wal);
        // Also across a reopen (a resumed run).
        let (mut wal, _) = Wal::open(&path).unwrap();
        assert!(!wal.append(&report("a", 1)).unwrap());
        assert!(wal.append(&report("b", 2)).unwrap());
        drop(wal);
        let (_, loaded) = Wal::open(&path).unwrap();
        assert_eq!(ids(&loaded.reports), vec!["a", "b"]);
    }

    #[test]
    fn reports_need_a_timestamp_and_retention_drops_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reports.wal");
        let (mut wal, _) = Wal::open(&path).unwrap();
        assert!(matches!(
            wal.append(&report("untimed", 0)),
            Err(Error::InvalidReport { .. })
        ));
        for (id, at) in [("old", 100), ("mid", 200), ("new", 300)] {
            wal.append(&report(id, at)).unwrap();
        }
        assert_eq!(wal.compact(200).unwrap(), 1);
        wal.append(&report("newer", 400)).unwrap();
        drop(wal);
        let (_, loaded) = Wal::open(&path).unwrap();
        assert_eq!(ids(&loaded.reports), vec!["mid", "new", "newer"]);
    }

    proptest! {
        /// Whatever bytes the file holds, loading returns (never panics) and
        /// never finds more records than the bytes could frame.
        #[test]
        fn any_bytes_load_without_panicking(garbage in proptest::collection::vec(any::<u8>(), 0..256)) {
            let loaded = parse(&garbage);
            prop_assert!(loaded.reports.len() + loaded.bad.len() <= garbage.len() / HEADER + 1);
        }

        #[test]
        fn appended_reports_round_trip(n in 1usize..20) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("reports.wal");
            let (mut wal, _) = Wal::open(&path).unwrap();
            let written: Vec<FieldReport> = (0..n).map(|i| report(&format!("r{i}"), 1 + i as u64)).collect();
            for r in &written {
                wal.append(r).unwrap();
            }
            drop(wal);
            let (_, loaded) = Wal::open(&path).unwrap();
            prop_assert_eq!(loaded.reports, written);
        }
    }
}
