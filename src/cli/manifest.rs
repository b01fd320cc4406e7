//! `manifest push` (manifest-tool's `push from-args` flags) and `manifest inspect`.

use std::io::Write;

use clap::{Args, Subcommand};

use pf_buildkit::registry::{
    AttestationKind, Client, ClientOptions, ImageAttestations, Platform, parse_platforms,
    parse_reference, sources_from_template,
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
    /// Print a manifest or index as JSON, or with --provenance or --sbom its attestations
    ///
    /// --provenance prints each image's SLSA provenance predicate as {"SLSA": …}, and --sbom
    /// its SPDX documents as {"SPDX": …, "AdditionalSPDXs": […]}, the shapes of buildx's
    /// `imagetools inspect --format '{{json .Provenance}}'` (and `.SBOM`): for one platform
    /// (--platform, or an index with one image) that object, else an object of them by
    /// platform. A reference without them fails, saying so.
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
    /// Print the SLSA provenance predicates instead of the manifest
    #[arg(long, conflicts_with = "sbom")]
    provenance: bool,
    /// Print the SPDX SBOM predicates instead of the manifest
    #[arg(long)]
    sbom: bool,
    /// With --provenance or --sbom: only this platform's image (e.g. linux/arm64)
    #[arg(long, value_name = "PLATFORM")]
    platform: Option<String>,
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
    let kind = match (args.provenance, args.sbom) {
        (true, _) => Some(AttestationKind::Provenance),
        (_, true) => Some(AttestationKind::Sbom),
        _ => None,
    };
    let platform = match (&args.platform, kind) {
        (Some(_), None) => {
            return Err(UsageError::Combination(
                "--platform goes with --provenance or --sbom; give one of them".into(),
            )
            .into());
        }
        (Some(p), Some(_)) => Some(
            p.parse::<Platform>()
                .map_err(UsageError::of("--platform"))?,
        ),
        (None, _) => None,
    };
    let client = client(args.insecure_registry)?;
    let text = match kind {
        None => client.fetch_manifest(&reference).await?.to_pretty_json()?,
        Some(kind) => {
            let found = client
                .attestations(&reference, kind, platform.as_ref())
                .await?;
            serde_json::to_string_pretty(&buildx_shape(kind, found))?
        }
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    Ok(Outcome::Success)
}

/// buildx's shapes: `{"SLSA": predicate}` for provenance, `{"SPDX": first,
/// "AdditionalSPDXs": [rest]}` for SBOMs; alone for one image (one platform asked for, or an
/// index of one), else by platform, leaving out images without any.
fn buildx_shape(kind: AttestationKind, found: Vec<ImageAttestations>) -> serde_json::Value {
    use serde_json::{Map, Value};
    let one = |predicates: Vec<Value>| {
        let mut predicates = predicates.into_iter();
        let mut object = Map::new();
        match kind {
            AttestationKind::Sbom => {
                object.insert("SPDX".into(), predicates.next().unwrap_or_default());
                let rest: Vec<Value> = predicates.collect();
                if !rest.is_empty() {
                    object.insert("AdditionalSPDXs".into(), Value::Array(rest));
                }
            }
            _ => {
                object.insert("SLSA".into(), predicates.next().unwrap_or_default());
            }
        }
        Value::Object(object)
    };
    if let [image] = &found[..] {
        return one(image.predicates.clone());
    }
    Value::Object(
        found
            .into_iter()
            .filter(|f| !f.predicates.is_empty())
            .map(|f| (f.platform.to_string(), one(f.predicates)))
            .collect(),
    )
}
