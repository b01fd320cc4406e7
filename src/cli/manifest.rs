//! `manifest push` (manifest-tool's `push from-args` flags) and `manifest inspect`.

use std::io::Write;

use clap::{Args, Subcommand};

use pf_buildkit::registry::{
    Client, ClientOptions, parse_platforms, parse_reference, sources_from_template,
};

use super::Outcome;
use super::usage::UsageError;

#[derive(Debug, Args)]
pub struct ManifestArgs {
    #[command(subcommand)]
    command: ManifestCommand,
}

#[derive(Debug, Subcommand)]
enum ManifestCommand {
    /// Push one multi-platform index (or manifest list) made from per-platform images
    ///
    /// Each platform's source is --template with ARCH, OS and VARIANT replaced (whole tokens
    /// only: `app:v1-ARCH` becomes `app:v1-amd64`, `ARCHIVE` stays). Sources that are indexes
    /// themselves are flattened, keeping their attestations. The result is a Docker manifest
    /// list when every child is a Docker manifest, else an OCI index. Prints its digest.
    Push(PushArgs),
    /// Print a manifest or index as JSON
    Inspect(InspectArgs),
}

#[derive(Debug, Args)]
struct PushArgs {
    /// Accepted for manifest-tool compatibility (`manifest-tool push from-args ...`)
    #[arg(value_parser = ["from-args"], hide = true)]
    mode: Option<String>,
    /// Platforms to include, comma-separated (e.g. linux/amd64,linux/arm64)
    #[arg(long, value_name = "LIST")]
    platforms: String,
    /// Source image name with ARCH, OS and/or VARIANT placeholders (e.g. REG/REPO:TAG-ARCH)
    #[arg(long, value_name = "NAME")]
    template: String,
    /// The index to push (REG/REPO:TAG)
    #[arg(long, value_name = "NAME")]
    target: String,
    /// Talk plain HTTP to the registries
    #[arg(long, alias = "insecure")]
    insecure_registry: bool,
}

#[derive(Debug, Args)]
struct InspectArgs {
    /// The image or index (REG/REPO:TAG or REG/REPO@DIGEST)
    reference: String,
    /// Talk plain HTTP to the registry
    #[arg(long, alias = "insecure")]
    insecure_registry: bool,
}

fn client(insecure: bool) -> anyhow::Result<Client> {
    let options = ClientOptions::from_env()?.with_insecure(insecure);
    Ok(Client::new(options)?)
}

pub async fn run(args: ManifestArgs) -> anyhow::Result<Outcome> {
    match args.command {
        ManifestCommand::Push(args) => push(args).await,
        ManifestCommand::Inspect(args) => inspect(args).await,
    }
}

async fn push(args: PushArgs) -> anyhow::Result<Outcome> {
    // Validate everything before talking to any registry.
    let platforms = parse_platforms(&args.platforms).map_err(UsageError::of("--platforms"))?;
    let sources =
        sources_from_template(&args.template, &platforms).map_err(UsageError::of("--template"))?;
    let target = parse_reference(&args.target).map_err(UsageError::of("--target"))?;
    let client = client(args.insecure_registry)?;
    let pushed = client.push_index(&target, &sources).await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", pushed.digest)?;
    Ok(Outcome::Success)
}

async fn inspect(args: InspectArgs) -> anyhow::Result<Outcome> {
    let reference = parse_reference(&args.reference).map_err(UsageError::of("REFERENCE"))?;
    let fetched = client(args.insecure_registry)?
        .fetch_manifest(&reference)
        .await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", fetched.to_pretty_json()?)?;
    Ok(Outcome::Success)
}
