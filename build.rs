//! Compiles `vendor-protos/` into Rust with protox (a pure-Rust protobuf compiler), so building
//! the crate needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=vendor-protos");
    let files = [
        "buildkit/control.proto",
        "buildkit/filesync.proto",
        "buildkit/auth.proto",
        "buildkit/secrets.proto",
        "buildkit/ssh.proto",
        "grpc/health.proto",
        "containerd/content.proto",
    ];
    let descriptors = protox::compile(files, ["vendor-protos"])?;
    // The compiled descriptors, for the test that checks ops.proto against upstream's.
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("vendor_protos.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Bytes fields that carry file data: `bytes::Bytes` lets chunks move without copies.
        .bytes(".")
        // LLB maps (op attrs, metadata, caps) as BTreeMaps: sorted like Go's deterministic
        // encoding, and stable when dumped or compared.
        .btree_map(".pb")
        .compile_fds(descriptors)?;
    Ok(())
}
