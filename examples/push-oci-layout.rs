//! Pushes an OCI image-layout tarball (BuildKit's `--output type=oci,dest=FILE`) to a
//! registry with the library, streaming each blob from the file.
//!
//! `cargo run --example push-oci-layout -- FILE REGISTRY/REPO:TAG [--insecure]`

use pf_buildkit::registry::{Client, ClientOptions, parse_reference};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(file), Some(target)) = (args.first(), args.get(1)) else {
        eprintln!("usage: push-oci-layout FILE REGISTRY/REPO:TAG [--insecure]");
        std::process::exit(2);
    };
    let client = Client::new(
        ClientOptions::from_env()?.with_insecure(args.iter().any(|a| a == "--insecure")),
    )?;
    let digest = client
        .push_oci_layout(file.as_ref(), &parse_reference(target)?)
        .await?;
    println!("{digest}");
    Ok(())
}
