//! Fuzzes the field-report WAL reader on arbitrary file images: it must return
//! (never panic, never allocate past the record limit) and every record it
//! keeps must carry a timestamp.
//!
//! Run: `cargo +nightly fuzz run decode_field_report_wal -- -max_total_time=60`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let loaded = tamiyo::field_reports::wal::parse(data);
    assert!(loaded.reports.iter().all(|r| r.issued_at_ms != 0));
});
