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

/// One library for the whole run (opening SQLite per input would dominate).
fn library() -> &'static urza::Library {
    static LIBRARY: std::sync::OnceLock<(tempfile::TempDir, urza::Library)> =
        std::sync::OnceLock::new();
    &LIBRARY
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("a temp dir for the fuzz library");
            let mut config = urza::LibraryConfig::new(dir.path());
            config.max_slot_elements = 4_096;
            config.max_forge_parameters = 100_000;
            config.forge_runs = 1;
            let (library, _) = urza::Library::open(config).expect("a fresh library opens");
            (dir, library)
        })
        .1
}

fuzz_target!(|data: &[u8]| {
    if urza::artifact::read_header(data).is_ok()
        && let Ok((header, module)) = urza::artifact::instantiate(data, &candle_core::Device::Cpu)
    {
        assert_eq!(module.slot(), &header.slot);
    }
    // Through the handler's path, not only the message: EnsureArtifact on a
    // real library with small bounds (the service's are larger; the path is
    // the same) must refuse or forge, never panic or allocate without bound.
    if let Some(request) = stable::<EnsureArtifactRequest>(data)
        && let Ok(slot) = urza::SlotShape::from_wire(request.slot_kind, &request.slot_shape)
    {
        let _ = library().ensure_artifact(
            &request.blueprint_id,
            &slot,
            &request.parameters.into_iter().collect(),
            request.init_seed,
        );
    }
    let _ = stable::<ArtifactChunk>(data);
    let _ = stable::<PutArtifactChunk>(data);
    let _ = stable::<ArtifactRecord>(data);
    let _ = stable::<CatalogEntry>(data);
    let _ = stable::<ListBlueprintsRequest>(data);
    let _ = stable::<ListBlueprintsResponse>(data);
});
