//! Length + CRC framed, append-only record files — the field-report WAL and
//! the learned controller's trajectories share them.
//!
//! A record is `[u32 length LE][u32 CRC-32 of the payload LE][payload]`.
//! Reading never loses good records to a bad one: a record whose CRC fails
//! is skipped (its length is still within the file) and reported with its
//! offset; a length that runs past the end, or past the caller's limit, is
//! a torn tail (an append interrupted by a crash), reported and cut when the
//! file is opened for appending, so that the next record starts on a
//! boundary.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Bytes of a record header.
pub(crate) const HEADER: usize = 8;

/// A record that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRecord {
    /// Byte offset of its header.
    pub offset: u64,
    /// What was wrong.
    pub reason: String,
}

/// What a file image holds: good payloads (with their offsets), records
/// skipped, and a torn tail.
#[derive(Debug, Default)]
pub(crate) struct Frames<'a> {
    /// (offset of the header, payload), in file order.
    pub records: Vec<(u64, &'a [u8])>,
    /// Records whose CRC failed.
    pub bad: Vec<BadRecord>,
    /// Bytes at the end that do not form a record.
    pub torn_tail: Option<BadRecord>,
}

/// `payload` as one framed record.
pub(crate) fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Splits a whole file image into records; a length over `max_record`
/// bytes is treated as a torn tail (a corrupt length must not make a reader
/// allocate or skip the rest of the file blindly).
pub(crate) fn parse(bytes: &[u8], max_record: usize) -> Frames<'_> {
    let mut frames = Frames::default();
    let mut offset = 0usize;
    while offset < bytes.len() {
        let bad = |reason: String| BadRecord {
            offset: offset as u64,
            reason,
        };
        if bytes.len() - offset < HEADER {
            frames.torn_tail = Some(bad(format!(
                "{} bytes, shorter than a header",
                bytes.len() - offset
            )));
            break;
        }
        let word = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let len = word(offset) as usize;
        let crc = word(offset + 4);
        if len > max_record || offset + HEADER + len > bytes.len() {
            frames.torn_tail = Some(bad(format!(
                "record length {len} runs past the end ({} bytes left)",
                bytes.len() - offset - HEADER
            )));
            break;
        }
        let payload = &bytes[offset + HEADER..offset + HEADER + len];
        if crc32fast::hash(payload) != crc {
            frames.bad.push(bad("CRC mismatch".into()));
        } else {
            frames.records.push((offset as u64, payload));
        }
        offset += HEADER + len;
    }
    frames
}

pub(crate) fn io(context: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io {
        context,
        path,
        source,
    }
}

/// An open record file, appended to.
#[derive(Debug)]
pub(crate) struct Appender {
    path: PathBuf,
    file: File,
}

impl Appender {
    /// Opens (creating, with its directory) the file at `path`, returns its
    /// image as it was, and cuts a torn tail found by `parse` with
    /// `max_record` (reported as a warning naming `what`).
    pub(crate) fn open(
        path: &Path,
        what: &'static str,
        max_record: usize,
    ) -> Result<(Self, Vec<u8>)> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        }
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io("reading", path)(e)),
        };
        let frames = parse(&bytes, max_record);
        if let Some(tail) = &frames.torn_tail {
            let file = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(io("opening", path))?;
            file.set_len(tail.offset).map_err(io("truncating", path))?;
            file.sync_all().map_err(io("syncing", path))?;
        }
        for bad in frames.bad.iter().chain(&frames.torn_tail) {
            tracing::warn!(target: "tamiyo", offset = bad.offset, "{what} {}: {}", path.display(), bad.reason);
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io("opening", path))?;
        Ok((
            Self {
                path: path.to_path_buf(),
                file,
            },
            bytes,
        ))
    }

    /// Appends one record (already framed) and fsyncs its data.
    pub(crate) fn append(&mut self, record: &[u8]) -> Result<()> {
        self.file
            .write_all(record)
            .map_err(io("appending to", &self.path))?;
        self.file.sync_data().map_err(io("syncing", &self.path))
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the file again for appending (after it was replaced).
    pub(crate) fn reopen(&mut self) -> Result<()> {
        self.file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(io("opening", &self.path))?;
        Ok(())
    }
}
