//! Builds a context generated in memory (a Dockerfile and a file written by this program, never
//! on disk) and checks what the build exported:
//! `cargo run --example memory_context -- docker://` (or any BuildKit address).

use pf_buildkit::buildkit::fsutil::MemoryTree;
use pf_buildkit::buildkit::progress::ProgressMode;
use pf_buildkit::buildkit::{BuildOptions, Client, Endpoint, Output, TlsOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(addr) = std::env::args().nth(1) else {
        eprintln!("usage: memory_context ADDR");
        std::process::exit(2);
    };
    // Something only this run knows, so the export cannot come from an older build's cache.
    let stamp = format!("generated at {:?}\n", std::time::SystemTime::now());
    let tree = MemoryTree::new()
        .file("Dockerfile", "FROM scratch\nCOPY stamp.txt app/ /\n")
        .file("stamp.txt", stamp.clone())
        .executable("app/run.sh", "#!/bin/sh\necho hello\n")
        // Excluded by the .dockerignore below: the frontend's filter applies to memory too.
        .file("app/secret.key", "not for the image")
        .file(".dockerignore", "app/*.key\n");

    let out = tempfile::tempdir()?;
    let options = BuildOptions::from_memory(tree).with_output(Output::local(out.path()));
    let client = Client::connect(addr.parse::<Endpoint>()?, &TlsOptions::default()).await?;
    let mut progress = ProgressMode::Plain.stderr_sink();
    let result = client.build(&options, progress.as_mut()).await?;

    let exported = std::fs::read_to_string(out.path().join("stamp.txt"))?;
    if exported != stamp {
        return Err(format!("exported stamp.txt is {exported:?}, expected {stamp:?}").into());
    }
    if !out.path().join("run.sh").is_file() || out.path().join("secret.key").exists() {
        return Err("the export does not hold exactly what the .dockerignore lets through".into());
    }
    println!(
        "built from memory: {} files, {} bytes of context sent",
        result.transfer.files, result.transfer.bytes
    );
    Ok(())
}
