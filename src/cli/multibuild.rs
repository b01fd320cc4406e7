//! `build --repo R --tag T`: the multi-platform build and its flags.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use futures_util::future::try_join_all;

use anyhow::Context as _;
use clap::Args;
use serde::Serialize;

use pf_buildkit::build::{
    Builder, DEFAULT_ARCHES, MultiPlatformBuild, PrefixedLines, PushMode, S3Cache,
};
use pf_buildkit::buildkit::progress::{
    PlainProgress, ProgressMode, ProgressSink, QuietProgress, RawJsonProgress,
};
use pf_buildkit::buildkit::{BuildOptions, Endpoint};
use pf_buildkit::config::{BuildkitConfig, ConfigError};
use pf_buildkit::fleet::{Arch, Fleet, Lease, LeaseOptions};
use pf_buildkit::registry::DockerConfig;

use super::{GlobalArgs, Outcome};

/// Flags of the multi-platform build (active when `--repo` is given).
#[derive(Debug, Args)]
pub struct MultiArgs {
    /// Repository to push to: builds every architecture and pushes REGISTRY/REPO:TAG-ARCH
    /// images and the index REGISTRY/REPO:TAG
    #[arg(long, value_name = "REPO", requires = "tag")]
    pub repo: Option<String>,
    /// Tag of the index (architecture images get TAG-ARCH)
    #[arg(long, value_name = "TAG", requires = "repo")]
    pub tag: Option<String>,
    /// Registry host (default: "registry" in buildkit.json)
    #[arg(long, value_name = "HOST", requires = "repo")]
    pub registry: Option<String>,
    /// BuildKit for one architecture, e.g. arm64=tcp://10.0.0.7:1234 (repeatable; default:
    /// --addr for every architecture)
    #[arg(long = "builder", value_name = "ARCH=ENDPOINT", requires = "repo")]
    pub builders: Vec<String>,
    /// Architectures to build (default: amd64,arm64, or those of --builder)
    #[arg(
        long = "arch",
        value_name = "ARCH[,ARCH]",
        value_delimiter = ',',
        requires = "repo"
    )]
    pub arches: Vec<String>,
    /// Talk plain HTTP to the registry
    #[arg(long, requires = "repo")]
    pub insecure_registry: bool,
    /// Export each image to this client and push it from here, rather than from the daemon
    #[arg(long, requires = "repo")]
    pub push_from_client: bool,
    /// Local build cache per architecture in DIR/ARCH, imported and exported on every build
    /// (default: "cache_dir" in buildkit.json)
    #[arg(long, value_name = "DIR", requires = "repo")]
    pub cache_dir: Option<PathBuf>,
    /// Kubeconfig context of the BuildKit cluster (default: "cluster" in buildkit.json); used
    /// for architectures without --builder when neither --addr nor BUILDKIT_HOST is set
    #[arg(long, value_name = "CONTEXT", requires = "repo")]
    pub kube_context: Option<String>,
    /// Seconds to wait for the cluster's BuildKit to scale up (one deadline for all
    /// architectures)
    #[arg(long, value_name = "SECONDS", default_value_t = 600, requires = "repo")]
    pub timeout: u64,
}

/// What `--metadata-file` records for a multi-platform build.
#[derive(Debug, Serialize)]
struct Metadata<'a> {
    index: IndexMetadata<'a>,
    images: BTreeMap<&'a str, ImageMetadata<'a>>,
}

#[derive(Debug, Serialize)]
struct IndexMetadata<'a> {
    reference: &'a str,
    digest: &'a str,
    #[serde(rename = "mediaType")]
    media_type: &'a str,
}

#[derive(Debug, Serialize)]
struct ImageMetadata<'a> {
    reference: &'a str,
    digest: &'a str,
}

pub async fn run(
    global: &GlobalArgs,
    args: &MultiArgs,
    options: BuildOptions,
    progress: ProgressMode,
    metadata_file: Option<&PathBuf>,
) -> anyhow::Result<Outcome> {
    let (Some(repo), Some(tag)) = (&args.repo, &args.tag) else {
        anyhow::bail!("--repo and --tag go together");
    };
    if !options.outputs.is_empty() {
        anyhow::bail!(
            "--output cannot be combined with --repo: the images go to REGISTRY/REPO:TAG-ARCH"
        );
    }
    if !options.platforms.is_empty() {
        anyhow::bail!("--platform cannot be combined with --repo: use --arch");
    }
    // buildkit.json is required only when it must supply the registry; with --registry it may
    // still name the cluster, but a repository without one is fine.
    let config = match BuildkitConfig::discover(&std::env::current_dir()?) {
        Ok(config) => Some(config),
        Err(ConfigError::NoRepository { .. } | ConfigError::Missing { .. })
            if args.registry.is_some() =>
        {
            None
        }
        Err(err) => return Err(err.into()),
    };
    let registry = match (&args.registry, &config) {
        (Some(registry), _) => registry.clone(),
        (None, Some(config)) => config.registry()?.to_owned(),
        (None, None) => {
            anyhow::bail!("no registry: pass --registry or set \"registry\" in buildkit.json")
        }
    };

    let mut endpoints: BTreeMap<String, Endpoint> = BTreeMap::new();
    for spec in &args.builders {
        let (arch, addr) = spec.split_once('=').with_context(|| {
            format!("--builder {spec:?}: expected ARCH=ENDPOINT, e.g. arm64=tcp://10.0.0.7:1234")
        })?;
        if endpoints.insert(arch.to_owned(), addr.parse()?).is_some() {
            anyhow::bail!("--builder: architecture {arch} is given twice");
        }
    }
    let arches: Vec<String> = if !args.arches.is_empty() {
        args.arches.iter().map(|a| a.trim().to_owned()).collect()
    } else if !endpoints.is_empty() {
        endpoints.keys().cloned().collect()
    } else {
        DEFAULT_ARCHES.iter().map(|a| (*a).to_owned()).collect()
    };

    let mut build = MultiPlatformBuild::new(options, registry, repo, tag);
    build.insecure_registry = args.insecure_registry;
    build.push = if args.push_from_client {
        PushMode::FromClient
    } else {
        PushMode::Auto
    };
    build.registry_credentials = DockerConfig::load()?;
    if let Some(config) = &config
        && let Some((bucket, region)) = config.s3_cache()?
    {
        build.s3_cache = Some(S3Cache {
            bucket: bucket.to_owned(),
            region: region.to_owned(),
        });
    }
    build.cache_dir = args
        .cache_dir
        .clone()
        .or_else(|| config.as_ref().and_then(BuildkitConfig::local_cache_dir));
    let arch_refs: Vec<&str> = arches.iter().map(String::as_str).collect();
    build.validate(&arch_refs)?;
    build.options.validate()?;

    // Connect every builder before building anything: a bad address fails the whole build
    // up front. Architectures without --builder use --addr when it is given, else the cluster.
    let tls = global.tls();
    let mut builders = Vec::new();
    let mut cluster_arches = Vec::new();
    for arch in &arches {
        let endpoint = match endpoints.remove(arch) {
            Some(endpoint) => endpoint,
            None if global.addr.is_some() || !cluster_configured(args, config.as_ref()) => {
                global.addr().parse()?
            }
            None => {
                cluster_arches.push(arch.clone());
                continue;
            }
        };
        // kube-pod:// builders connect through a port-forward.
        let client = pf_buildkit::fleet::connect(endpoint, &tls)
            .await
            .with_context(|| arch.clone())?;
        builders.push(Builder {
            arch: arch.clone(),
            client,
        });
    }
    if let Some(extra) = endpoints.keys().next() {
        anyhow::bail!("--builder {extra}=…: {extra} is not among the architectures built (--arch)");
    }
    // Leases keep recording builds while held and close their port-forwards when dropped:
    // at the end of this function, on failure, and on Ctrl-C alike.
    let _leases = if cluster_arches.is_empty() {
        Vec::new()
    } else {
        let context = match (&args.kube_context, &config) {
            (Some(context), _) => context.clone(),
            (None, Some(config)) => config.cluster()?.to_owned(),
            (None, None) => anyhow::bail!(
                "no BuildKit for {}: pass --builder, --addr or --kube-context",
                cluster_arches.join(", ")
            ),
        };
        let leases =
            lease_cluster(&context, &cluster_arches, Duration::from_secs(args.timeout)).await?;
        for (arch, lease) in cluster_arches.iter().zip(&leases) {
            eprintln!("{arch}: building on pod {}", lease.pod().pod);
            builders.push(Builder {
                arch: arch.clone(),
                client: lease.client().clone(),
            });
        }
        leases
    };
    // Keep the requested order (amd64 before arm64) for progress and metadata.
    builders.sort_by_key(|b| arches.iter().position(|a| *a == b.arch));

    let make_sink = move |arch: &str| -> Box<dyn ProgressSink> {
        match progress {
            ProgressMode::Quiet => Box::new(QuietProgress),
            ProgressMode::RawJson => Box::new(RawJsonProgress::new(PrefixedLines::stderr(""))),
            // Two live views cannot share one terminal; prefixed plain lines can.
            _ => Box::new(PlainProgress::new(PrefixedLines::stderr(format!(
                "{arch}: "
            )))),
        }
    };
    let result = build.run(&builders, &make_sink).await?;

    if let Some(path) = metadata_file {
        let metadata = Metadata {
            index: IndexMetadata {
                reference: &result.reference,
                digest: &result.index.digest,
                media_type: &result.index.media_type,
            },
            images: result
                .images
                .iter()
                .map(|(arch, image)| {
                    (
                        arch.as_str(),
                        ImageMetadata {
                            reference: &image.reference,
                            digest: &image.digest,
                        },
                    )
                })
                .collect(),
        };
        let text = serde_json::to_string_pretty(&metadata)?;
        pf_buildkit::buildkit::write_file_atomically(path, (text + "\n").as_bytes())
            .with_context(|| format!("cannot write --metadata-file {}", path.display()))?;
    }
    println!("{}", result.index.digest);
    Ok(Outcome::Success)
}

fn cluster_configured(args: &MultiArgs, config: Option<&BuildkitConfig>) -> bool {
    args.kube_context.is_some()
        || config.is_some_and(|c| c.cluster.as_deref().is_some_and(|s| !s.trim().is_empty()))
}

/// Scales the cluster's architectures up under one deadline, picks each one's least-loaded
/// pod and connects to it through a port-forward (or straight to the pod in-cluster).
async fn lease_cluster(
    context: &str,
    arches: &[String],
    timeout: Duration,
) -> anyhow::Result<Vec<Lease>> {
    let fleet = Fleet::connect(Some(context)).await?;
    let options = LeaseOptions {
        scale_up_wait: Some(timeout),
        ..LeaseOptions::default()
    };
    let leases = try_join_all(arches.iter().map(|arch| {
        let fleet = &fleet;
        let options = &options;
        async move {
            let parsed: Arch = arch.parse()?;
            eprintln!(
                "{arch}: waiting for BuildKit in {context} (up to {} s)",
                timeout.as_secs()
            );
            let lease = fleet
                .lease(parsed, options)
                .await
                .with_context(|| arch.clone())?;
            anyhow::Ok(lease)
        }
    }))
    .await?;
    Ok(leases)
}
