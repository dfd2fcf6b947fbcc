//! Fuzzes Urza's decoders of outside bytes: artifact files (uploaded with
//! PutArtifact or read from a library directory) and the Urza service messages.
//! Whatever the bytes, reading a header or rebuilding a module must return a
//! value or a typed error — never panic, never allocate without bound — and a
//! rebuilt module must keep its slot's shape.
//!
//! Run: `cargo +nightly fuzz run decode_artifact -- -max_total_time=60`
//! (from the repository root; see docs/PERFORMANCE.md for recorded runs).

#![no_main]

use leyline::v1::*;
use libfuzzer_sys::fuzz_target;

#[path = "common/mod.rs"]
mod common;
use common::stable;

fuzz_target!(|data: &[u8]| {
    if urza::artifact::read_header(data).is_ok()
        && let Ok((header, module)) = urza::artifact::instantiate(data, &candle_core::Device::Cpu)
    {
        assert_eq!(module.slot(), &header.slot);
    }
    if let Some(request) = stable::<EnsureArtifactRequest>(data) {
        let _ = urza::SlotShape::from_wire(request.slot_kind, &request.slot_shape);
    }
    let _ = stable::<ArtifactChunk>(data);
    let _ = stable::<PutArtifactChunk>(data);
    let _ = stable::<ArtifactRecord>(data);
    let _ = stable::<CatalogEntry>(data);
    let _ = stable::<ListBlueprintsRequest>(data);
    let _ = stable::<ListBlueprintsResponse>(data);
});
