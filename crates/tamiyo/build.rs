//! Generates the tonic client and server of `TamiyoService` from
//! `proto/leyline/v1/tamiyo.proto` with `protox` (no system `protoc`). The
//! messages are Leyline's (`extern_path`); only the service code lives here.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("../../proto");
    let service = proto_root.join("leyline/v1/tamiyo.proto");
    println!(
        "cargo:rerun-if-changed={}",
        proto_root.join("leyline/v1").display()
    );
    let descriptors = protox::compile([&service], [&proto_root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .out_dir(PathBuf::from(std::env::var("OUT_DIR")?))
        .extern_path(".esper.leyline.v1", "::leyline::v1")
        .compile_fds(descriptors)?;
    Ok(())
}
