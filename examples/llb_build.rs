//! Builds BuildKit's `run-mounts` reference graph with the LLB builder, on base image IMAGE,
//! prints the graph's terminal op digest alone on the first line, then solves it on the
//! BuildKit at `$BUILDKIT_HOST` and prints what came out (the `/out` mount, as a tar):
//!
//! ```text
//! cargo run --example llb_build -- 127.0.0.1:5055/base/busybox:1.35
//! ```
//!
//! With the reference graph's own image the digest is the fixture's `terminal`
//! (`tests/llb-fixtures/run-mounts.json`): the same cache key Go's `client/llb` gives.

use pf_buildkit::buildkit::progress::ProgressMode;
use pf_buildkit::buildkit::{BuildOptions, Client, Endpoint, Output, TlsOptions};
use pf_buildkit::llb::{self, CacheSharing, MarshalOptions, Mount};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(image) = std::env::args().nth(1) else {
        eprintln!("usage: llb_build IMAGE   (solves on $BUILDKIT_HOST)");
        std::process::exit(2);
    };
    let run = llb::image(&image)
        .run_shlex(r#"sh -c "date > /cache/stamp; cp /cache/stamp /out/stamp; ls /tmpfs""#)
        .mount(
            "/cache",
            &llb::scratch(),
            Mount::cache("pf-llb-cache", CacheSharing::Shared),
        )
        .mount("/tmpfs", &llb::scratch(), Mount::tmpfs())
        .dir("/")
        .env("FOO", "bar")
        .mount("/out", &llb::scratch(), Mount::bind())
        .build();
    let out = run.mount_state("/out")?;
    let definition = out.marshal(&MarshalOptions::for_platform("linux/amd64".parse()?))?;
    println!("{}", definition.terminal());

    let addr = std::env::var("BUILDKIT_HOST").map_err(
        |_| "set BUILDKIT_HOST to the BuildKit to solve on (tcp://…, unix://…, docker://)",
    )?;
    let client = Client::connect(addr.parse::<Endpoint>()?, &TlsOptions::default()).await?;
    let dir = tempfile::tempdir()?;
    let tar = dir.path().join("out.tar");
    let options = BuildOptions::for_definition(definition.into_pb()).with_output(Output::tar(&tar));
    let mut progress = ProgressMode::Auto.stderr_sink();
    let result = client.build(&options, progress.as_mut()).await?;
    println!("solved as {}", result.reference);
    let mut archive = tar::Archive::new(std::fs::File::open(&tar)?);
    for entry in archive.entries()? {
        let entry = entry?;
        println!("{} ({} bytes)", entry.path()?.display(), entry.size());
    }
    Ok(())
}
