//! Generates the protobuf message types with prost from `proto/*.proto`.
//!
//! The `.proto` files are compiled by protox (a pure-Rust protobuf
//! compiler), so building needs no system `protoc`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = PathBuf::from("proto");
    let files = ["agent.proto", "common.proto", "kubernetes.proto", "sandbox.proto"];
    for file in &files {
        println!("cargo:rerun-if-changed=proto/{file}");
    }
    let descriptors = protox::compile(files, [&proto_dir])?;
    prost_build::Config::new()
        // Serialize lets hosts and arcbox-agentctl print messages as JSON.
        .type_attribute(".", "#[derive(serde::Serialize)]")
        .compile_fds(descriptors)?;
    Ok(())
}
