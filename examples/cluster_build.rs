//! The cluster build as a library call: every architecture on the Kubernetes BuildKit fleet
//! named by the repository's `buildkit.json` (scaled up if need be), each image pushed as
//! `REGISTRY/REPO:TAG-ARCH`, then one index `REGISTRY/REPO:TAG`:
//! `cargo run --example cluster_build -- ./context team/app v1.2.3`.
//!
//! Set `BUILDER_ARM64=tcp://HOST:PORT` (or any `BUILDER_<ARCH>`) to build that architecture on
//! a BuildKit of your own instead of the fleet.

use pf_buildkit::buildkit::BuildOptions;
use pf_buildkit::buildkit::progress::ProgressMode;
use pf_buildkit::multiplatform::{BuildRequest, Event, Metadata};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(context), Some(repository), Some(tag)) = (args.next(), args.next(), args.next())
    else {
        eprintln!("usage: cluster_build CONTEXT_DIR REPOSITORY TAG");
        std::process::exit(2);
    };
    let mut request = BuildRequest::new(BuildOptions::new(&context), repository, tag);
    for (name, value) in std::env::vars() {
        if let Some(arch) = name.strip_prefix("BUILDER_") {
            request = request.with_builder(arch.to_ascii_lowercase(), value.parse()?);
        }
    }
    // Registry, cluster and S3 cache come from the buildkit.json of the context's repository.
    let plan = request.plan_in(context.as_ref()).await?;
    for (arch, placement) in &plan.placements {
        eprintln!("{arch}: {placement:?}");
    }
    let events = |event: Event<'_>| {
        if let Event::Leased { arch, pod } = event {
            eprintln!("{arch}: building on pod {}", pod.pod);
        }
    };
    let result = plan
        .run(&events, &|_arch: &str| ProgressMode::Plain.stderr_sink())
        .await?;
    println!(
        "{}",
        serde_json::to_string_pretty(&Metadata::from(&result))?
    );
    Ok(())
}
