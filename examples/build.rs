//! Builds a Dockerfile with the library and writes the image as a tar file:
//! `cargo run --example build -- unix:///run/buildkit/buildkitd.sock ./context out.tar`.

use pf_buildkit::buildkit::progress::ProgressMode;
use pf_buildkit::buildkit::{BuildOptions, Client, Endpoint, Output, TlsOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(context), Some(dest)) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: build ADDR CONTEXT_DIR DEST.tar");
        std::process::exit(2);
    };
    let client = Client::connect(addr.parse::<Endpoint>()?, &TlsOptions::default()).await?;
    let options = BuildOptions::new(context).with_output(Output::tar(dest));
    let mut progress = ProgressMode::Auto.stderr_sink();
    let result = client.build(&options, progress.as_mut()).await?;
    eprintln!(
        "sent {} files ({} bytes) of context",
        result.transfer.files, result.transfer.bytes
    );
    Ok(())
}
