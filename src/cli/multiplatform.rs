//! `build --repo R --tag T`: the multi-platform build and its flags.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use pf_buildkit::buildkit::progress::{
    PlainProgress, ProgressMode, ProgressSink, QuietProgress, RawJsonProgress,
};
use pf_buildkit::buildkit::{BuildOptions, Endpoint};
use pf_buildkit::multiplatform::{
    ArchBuild, BuildRequest, Error, Event, InvalidRequest, Metadata, PushMode,
};

use super::live::{Live, LiveMode};
use super::prefix::PrefixedLines;
use super::usage::UsageError;
use super::{DEFAULT_ADDR, GlobalArgs, Outcome};
use pf_buildkit::fleet::ReadyProgress;

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
    #[arg(long = "builder", value_name = "ARCH=ENDPOINT", requires = "repo", value_parser = parse_builder)]
    pub builders: Vec<(String, Endpoint)>,
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
    #[arg(long, value_name = "SECONDS", default_value = "600", requires = "repo", value_parser = super::units::parse_seconds)]
    pub timeout: Duration,
}

impl MultiArgs {
    /// Builds run at once: every architecture's with `--repo` (those of `--arch`, else of
    /// `--builder`, else the default ones), else the one build.
    pub fn concurrent_builds(&self) -> usize {
        if self.repo.is_none() {
            1
        } else if !self.arches.is_empty() {
            self.arches.len()
        } else if !self.builders.is_empty() {
            self.builders.len()
        } else {
            pf_buildkit::multiplatform::DEFAULT_ARCHES.len()
        }
    }
}

/// `ARCH=ENDPOINT`; clap reports a malformed one as a usage error (exit 2).
fn parse_builder(spec: &str) -> Result<(String, Endpoint), String> {
    let (arch, addr) = spec
        .split_once('=')
        .ok_or_else(|| "expected ARCH=ENDPOINT, e.g. arm64=tcp://10.0.0.7:1234".to_owned())?;
    let endpoint = pf_buildkit::fleet::parse(addr).map_err(|e| e.to_string())?;
    Ok((arch.to_owned(), endpoint))
}

/// A request the library refused for a value the command line gave (an architecture, the
/// repository, the tag, `--registry`, a `--builder` not built) is a usage error; a refusal of
/// what `buildkit.json` holds, or anything else, is a failure.
fn flag_error(err: Error, args: &MultiArgs) -> anyhow::Error {
    let usage = match &err {
        Error::Invalid(InvalidRequest::Registry { .. }) => args.registry.is_some(),
        Error::Invalid(_) | Error::UnusedBuilder { .. } => true,
        _ => false,
    };
    if usage {
        UsageError::Rejected(Box::new(err)).into()
    } else {
        err.into()
    }
}

/// Parses the flags into a [`BuildRequest`], runs it with the binary's progress and
/// messages, and prints the index digest.
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
    let mut request = BuildRequest::new(options, repo, tag);
    request.registry = args.registry.clone();
    request.arches = args.arches.clone();
    for (arch, endpoint) in &args.builders {
        if request
            .builders
            .insert(arch.clone(), endpoint.clone())
            .is_some()
        {
            return Err(UsageError::Combination(format!(
                "--builder: architecture {arch} is given twice"
            ))
            .into());
        }
    }
    request.shared = global.addr.as_deref().map(str::parse).transpose()?;
    request.fallback = Some(DEFAULT_ADDR.parse()?);
    request.kube_context = args.kube_context.clone();
    request.scale_up_wait = args.timeout;
    request.tls = global.tls();
    request.insecure_registry = args.insecure_registry;
    request.cache_dir = args.cache_dir.clone();
    request.push = if args.push_from_client {
        PushMode::FromClient
    } else {
        PushMode::Auto
    };
    let plan = request
        .plan_in(&std::env::current_dir()?)
        .await
        .map_err(|err| flag_error(err, args))?;

    let live = Live::new(LiveMode::for_stderr(progress == ProgressMode::Quiet));
    let events = |event: Event<'_>| match event {
        Event::WaitingForCluster {
            arch,
            context,
            wait,
        } => live.set(
            arch,
            &format!("waiting for BuildKit in {context}"),
            &format!("up to {} s", wait.as_secs()),
        ),
        Event::Ready { arch, progress } => show_cluster_wait(&live, arch, progress),
        Event::Leased { arch, pod } => live.done(arch, &format!("building on pod {}", pod.pod)),
        _ => {}
    };
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
    let result = plan.run(&events, &make_sink).await;
    live.finish();
    // `--progress quiet` asks for the result or the error alone: its one line.
    if let (Err(Error::Arch { builds, .. }), false) = (&result, progress == ProgressMode::Quiet) {
        print_build_records(builds)?;
    }
    let result = result?;
    if let Some(path) = metadata_file {
        Metadata::from(&result).write(path)?;
    }
    super::print_line(&result.index.digest)?;
    Ok(Outcome::Success)
}

/// Where each architecture's build is in its daemon's history, with the `history logs`
/// command line to copy, before the failure's one line (not with `--progress quiet`, which
/// keeps a failure to that line).
fn print_build_records(builds: &[ArchBuild]) -> std::io::Result<()> {
    use std::io::Write as _;
    if builds.is_empty() {
        return Ok(());
    }
    let mut out = std::io::stderr().lock();
    writeln!(
        out,
        "pf-buildkit: the builds are in their daemons' history:"
    )?;
    for build in builds {
        let (place, scope) = history_scope(&build.builder);
        writeln!(
            out,
            "  {}: {} on {place}: pf-buildkit history logs {} {scope}",
            build.arch, build.reference, build.reference
        )?;
    }
    Ok(())
}

/// Where a builder is, for people, and the flags that reach its history: a fleet pod
/// (`kube-pod://POD?…&context=CTX`) by `--context CTX` (the fleet's current context when it
/// names none), any other daemon by `--addr`.
fn history_scope(endpoint: &str) -> (String, String) {
    let Some(rest) = endpoint.strip_prefix("kube-pod://") else {
        return (endpoint.to_owned(), format!("--addr '{endpoint}'"));
    };
    let (pod, query) = rest.split_once('?').unwrap_or((rest, ""));
    let context = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("context="))
        .filter(|c| !c.is_empty());
    let scope = match context {
        Some(context) => format!("--context '{context}'"),
        None => "--fleet".to_owned(),
    };
    (format!("pod {pod}"), scope)
}

/// The scale-up of a cluster build, one live line per architecture until it has its pod.
fn show_cluster_wait(live: &Live, arch: &str, progress: ReadyProgress<'_>) {
    match progress {
        ReadyProgress::Scaled(report) if report.scaled => live.set(
            arch,
            &format!("scaled {} from 0 to 1 replica", report.arch.statefulset()),
            "",
        ),
        ReadyProgress::Waiting(states) => {
            for s in states.iter().filter(|s| !s.is_ready()) {
                live.set(
                    arch,
                    &format!(
                        "waiting for a BuildKit replica of {} to become available",
                        s.arch.statefulset()
                    ),
                    &format!("{} s left", s.remaining.as_millis().div_ceil(1000)),
                );
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::history_scope;

    #[test]
    fn a_pod_builder_is_reached_through_the_fleet_any_other_by_its_address() {
        assert_eq!(
            history_scope("kube-pod://buildkit-arm64-0?namespace=buildkit&port=1234&context=prod"),
            (
                "pod buildkit-arm64-0".to_owned(),
                "--context 'prod'".to_owned()
            )
        );
        assert_eq!(
            history_scope("kube-pod://buildkit-amd64-1?namespace=buildkit&port=1234"),
            ("pod buildkit-amd64-1".to_owned(), "--fleet".to_owned())
        );
        assert_eq!(
            history_scope("tcp://10.0.0.7:1234"),
            (
                "tcp://10.0.0.7:1234".to_owned(),
                "--addr 'tcp://10.0.0.7:1234'".to_owned()
            )
        );
    }
}
