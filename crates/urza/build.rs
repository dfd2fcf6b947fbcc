//! Generates the tonic client and server of `UrzaService` from
//! `proto/leyline/v1/urza.proto` with `protox` (no system `protoc`). The messages
//! themselves are Leyline's (`extern_path`), so only the service code lives here.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("../../proto");
    let service = proto_root.join("leyline/v1/urza.proto");
    println!(
        "cargo:rerun-if-changed={}",
        proto_root.join("leyline/v1").display()
    );
    let descriptors = protox::compile([&service], [&proto_root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // The server decodes requests with its own codec (a request that does
    // not decode is INVALID_ARGUMENT); the client keeps tonic's.
    for (side, server, codec) in [
        ("server", true, "crate::grpc::codec::StrictCodec"),
        ("client", false, "tonic_prost::ProstCodec"),
    ] {
        let dir = out.join(side);
        std::fs::create_dir_all(&dir)?;
        tonic_prost_build::configure()
            .build_client(!server)
            .build_server(server)
            .codec_path(codec)
            .out_dir(&dir)
            .extern_path(".esper.leyline.v1", "::leyline::v1")
            .compile_fds(descriptors.clone())?;
    }
    Ok(())
}
