//! Compiles `proto/leyline/v1/*.proto` with `protox` (pure Rust: no system `protoc`)
//! and generates Rust types with `prost-build`. Maps become `BTreeMap` so that the
//! encoding of a message is deterministic, which signing relies on.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("../../proto");
    let contract_dir = proto_root.join("leyline/v1");

    let mut files = Vec::new();
    for entry in std::fs::read_dir(&contract_dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "proto") {
            files.push(path);
        }
    }
    files.sort();
    println!("cargo:rerun-if-changed={}", contract_dir.display());
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    let descriptors = protox::compile(&files, [&proto_root])?;

    let mut config = prost_build::Config::new();
    config.btree_map(["."]);
    // `prost::Name` on every message: full names give signatures domain separation.
    config.enable_type_names();
    // Unit tests derive proptest strategies for every generated type (round-trip tests).
    config.type_attribute(
        ".",
        "#[cfg_attr(test, derive(::proptest_derive::Arbitrary))]",
    );
    config.compile_fds(descriptors)?;
    Ok(())
}
