//! Generates the gRPC code of the Open Inference Protocol from `proto/grpc_predict_v2.proto`,
//! and the ONNX model messages from `proto/onnx.proto`.
//!
//! The protos are parsed with `protox`, a protobuf compiler written in Rust, so a build needs
//! no `protoc` on the machine and no network. Three files come out in `OUT_DIR`:
//!
//! - `inference.rs`: the messages and the server, included by `src/serve/grpc.rs`;
//! - `client/inference.rs`: the messages and the client, included by `tests/grpc.rs` only;
//! - `onnx.rs`: the ONNX messages (no services), included by `src/export/onnx.rs`.

use std::path::PathBuf;

const PROTO: &str = "proto/grpc_predict_v2.proto";
const ONNX_PROTO: &str = "proto/onnx.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO}");
    println!("cargo:rerun-if-changed={ONNX_PROTO}");
    println!("cargo:rerun-if-changed=build.rs");
    let descriptors = protox::compile([PROTO], ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(false)
        .build_transport(false)
        // The raw input tensor is read in place, not copied into a Vec.
        .bytes(".inference.ModelInferRequest.raw_input_contents")
        .out_dir(&out)
        .compile_fds(descriptors.clone())?;

    let client = out.join("client");
    std::fs::create_dir_all(&client)?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .build_transport(false)
        .out_dir(&client)
        .compile_fds(descriptors)?;

    // Messages only: `sisa export` encodes a ModelProto and never serves it.
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(false)
        .build_transport(false)
        .out_dir(&out)
        .compile_fds(protox::compile([ONNX_PROTO], ["proto"])?)?;
    Ok(())
}
