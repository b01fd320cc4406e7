//! The fleet commands (`get-address`, `record-build`, `scale up|down`, `resume`, `suspend`,
//! `tunnel`, `cache clear`, `clear-cache`): flags and output; the work is in `pf_buildkit::fleet`.

use std::io::Write;
use std::time::Duration;

use clap::{Args, Subcommand};

use pf_buildkit::fleet::{
    Arch, BusySignal, CacheClearEvent, CacheClearOptions, Fleet, PodMetricsState, PodPrune,
    ReadyProgress, ScaleDownAction, ScaleUpOptions, ScaleUpReport, TunnelOptions, WaitState,
};

use super::Outcome;
use super::live::{Live, LiveMode};
use super::units::format_bytes;

/// Default `--timeout` of `scale up --wait` and `tunnel` (Panfactum's).
const DEFAULT_WAIT_SECONDS: &str = "600";

#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Print the address of the least-loaded BuildKit pod of an architecture
    GetAddress(GetAddressArgs),
    /// Record a build on an architecture's StatefulSet, so it is not scaled to zero
    RecordBuild(RecordBuildArgs),
    /// Scale the BuildKit StatefulSets up (0 to 1) or idle ones down to 0
    Scale {
        #[command(subcommand)]
        direction: ScaleCommand,
    },
    /// Same as `scale up`
    Resume(ScaleUpArgs),
    /// Same as `scale down`
    Suspend(ScaleDownArgs),
    /// Listen on 127.0.0.1 and relay each connection to a BuildKit pod over a port-forward
    Tunnel(TunnelArgs),
    /// Manage the fleet's build caches
    Cache {
        #[command(subcommand)]
        action: CacheCommand,
    },
    /// Same as `cache clear`
    ClearCache(CacheClearArgs),
}

#[derive(Debug, Subcommand)]
pub enum ScaleCommand {
    /// Scale architectures from 0 to 1 replica (never lowering a count) and record a build
    Up(ScaleUpArgs),
    /// Scale architectures with no build recorded within --timeout seconds to 0
    Down(ScaleDownArgs),
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Delete PVCs no pod mounts and prune every idle running pod's BuildKit
    Clear(CacheClearArgs),
}

/// Which cluster.
#[derive(Debug, Args)]
pub struct KubeArgs {
    /// Kubeconfig context (default: the current one; in a pod: the service account)
    #[arg(long, value_name = "CTX")]
    context: Option<String>,
}

impl KubeArgs {
    async fn fleet(&self) -> anyhow::Result<Fleet> {
        Ok(Fleet::connect(self.context.as_deref()).await?)
    }
}

#[derive(Debug, Args)]
pub struct GetAddressArgs {
    /// Architecture: amd64 or arm64
    #[arg(long, value_name = "ARCH")]
    arch: Arch,
    /// Print HOST:PORT without tcp://
    #[arg(long)]
    omit_protocol: bool,
    #[command(flatten)]
    kube: KubeArgs,
}

#[derive(Debug, Args)]
pub struct RecordBuildArgs {
    /// Architecture: amd64 or arm64
    #[arg(long, value_name = "ARCH")]
    arch: Arch,
    #[command(flatten)]
    kube: KubeArgs,
}

#[derive(Debug, Args)]
pub struct ScaleUpArgs {
    /// Only this architecture (default: both)
    #[arg(long, value_name = "ARCH")]
    only: Option<Arch>,
    /// Wait until each architecture has an available replica
    #[arg(long)]
    wait: bool,
    /// Seconds to wait in all
    #[arg(long, value_name = "SECONDS", default_value = DEFAULT_WAIT_SECONDS, value_parser = super::units::parse_seconds)]
    timeout: Duration,
    /// Show no progress lines (errors still are)
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    kube: KubeArgs,
}

#[derive(Debug, Args)]
pub struct ScaleDownArgs {
    /// Only scale down architectures with no build recorded within this many seconds
    /// (default: scale down regardless)
    #[arg(long, value_name = "SECONDS", value_parser = super::units::parse_seconds)]
    timeout: Option<Duration>,
    #[command(flatten)]
    kube: KubeArgs,
}

#[derive(Debug, Args)]
pub struct TunnelArgs {
    /// Architecture: amd64 or arm64
    #[arg(long, value_name = "ARCH")]
    arch: Arch,
    /// Local port on 127.0.0.1 (0: pick a free one); the port is printed on stdout
    #[arg(long, default_value_t = 0, value_parser = parse_port)]
    port: u16,
    /// Seconds to wait for the architecture to scale up
    #[arg(long, value_name = "SECONDS", default_value = DEFAULT_WAIT_SECONDS, value_parser = super::units::parse_seconds)]
    timeout: Duration,
    /// Show no progress lines (errors still are)
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    kube: KubeArgs,
}

#[derive(Debug, Args)]
pub struct CacheClearArgs {
    /// Only prune records matching this containerd-style filter (repeatable; default: all)
    #[arg(long = "filter", value_name = "FILTER")]
    filters: Vec<String>,
    /// Show no progress lines (errors still are)
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    kube: KubeArgs,
}

/// A TCP port, 0 to 65535, named in the error when it is not one.
fn parse_port(value: &str) -> Result<u16, String> {
    value
        .parse()
        .map_err(|_| format!("{value:?} is not a port number (0 to 65535)"))
}

/// Runs a fleet command.
pub async fn run(command: FleetCommand) -> anyhow::Result<Outcome> {
    match command {
        FleetCommand::GetAddress(args) => get_address(args).await,
        FleetCommand::RecordBuild(args) => record_build(args).await,
        FleetCommand::Scale {
            direction: ScaleCommand::Up(args),
        }
        | FleetCommand::Resume(args) => scale_up(args).await,
        FleetCommand::Scale {
            direction: ScaleCommand::Down(args),
        }
        | FleetCommand::Suspend(args) => scale_down(args).await,
        FleetCommand::Tunnel(args) => tunnel(args).await,
        FleetCommand::Cache {
            action: CacheCommand::Clear(args),
        }
        | FleetCommand::ClearCache(args) => cache_clear(args).await,
    }
}

async fn get_address(args: GetAddressArgs) -> anyhow::Result<Outcome> {
    let arch = args.arch;
    let fleet = args.kube.fleet().await?;
    let address = fleet.get_address(arch).await?;
    if let PodMetricsState::Unavailable(why) = &address.metrics {
        eprintln!(
            "pf-buildkit: warning: {}; using the first running pod, {}",
            super::error::format_error(&anyhow::Error::new(why.clone())),
            address.pod
        );
    }
    let line = if args.omit_protocol {
        address.host_port()
    } else {
        address.url()
    };
    writeln!(std::io::stdout(), "{line}")?;
    Ok(Outcome::Success)
}

async fn record_build(args: RecordBuildArgs) -> anyhow::Result<Outcome> {
    let arch = args.arch;
    let fleet = args.kube.fleet().await?;
    fleet.record_build(arch).await?;
    eprintln!(
        "{arch}: recorded a build on StatefulSet {}",
        arch.statefulset()
    );
    Ok(Outcome::Success)
}

async fn scale_up(args: ScaleUpArgs) -> anyhow::Result<Outcome> {
    let archs = match &args.only {
        Some(only) => vec![*only],
        None => Arch::ALL.to_vec(),
    };
    let timeout = args.timeout;
    let fleet = args.kube.fleet().await?;
    let live = Live::new(LiveMode::for_stderr(args.quiet));
    scale_up_with(&fleet, &archs, args.wait.then_some(timeout), &live).await?;
    Ok(Outcome::Success)
}

async fn scale_up_with(
    fleet: &Fleet,
    archs: &[Arch],
    wait: Option<Duration>,
    live: &Live,
) -> anyhow::Result<()> {
    let reports = fleet
        .scale_up(archs, &ScaleUpOptions::default(), &|_| {})
        .await?;
    for report in &reports {
        show_scaled(live, report);
    }
    if let Some(timeout) = wait {
        let result = fleet
            .wait_available(archs, timeout, &|states| show_wait(live, states))
            .await;
        live.finish();
        result?;
    }
    Ok(())
}

/// What the scale-up did, above the live lines.
fn show_scaled(live: &Live, r: &ScaleUpReport) {
    live.note(&if r.scaled {
        format!(
            "{}: scaled StatefulSet {} from 0 to 1 replica",
            r.arch,
            r.arch.statefulset()
        )
    } else {
        format!(
            "{}: StatefulSet {} has {} replica(s); left as is",
            r.arch,
            r.arch.statefulset(),
            r.replicas_before
        )
    });
}

/// One live line per architecture while waiting for its replica.
fn show_wait(live: &Live, states: &[WaitState]) {
    for s in states {
        let arch = s.arch.to_string();
        if s.is_ready() {
            live.done(&arch, &format!("{} available replica(s)", s.available));
        } else {
            live.set(
                &arch,
                &format!(
                    "waiting for a BuildKit replica of {} to become available",
                    s.arch.statefulset()
                ),
                // Rounded up: "0 s left" only once time is up.
                &format!("{} s left", s.remaining.as_millis().div_ceil(1000)),
            );
        }
    }
}

/// The scale-up and wait of a tunnel's pod, as live lines.
fn show_ready(live: &Live, progress: ReadyProgress<'_>) {
    match progress {
        ReadyProgress::Scaled(report) => show_scaled(live, report),
        ReadyProgress::Waiting(states) => show_wait(live, states),
        _ => {}
    }
}

async fn scale_down(args: ScaleDownArgs) -> anyhow::Result<Outcome> {
    let timeout = args.timeout;
    let fleet = args.kube.fleet().await?;
    for report in fleet.scale_down(timeout).await? {
        let last = match (&report.last_build, &report.invalid_annotation) {
            (Some(secs), _) => secs.to_string(),
            (None, Some(bad)) => format!("{bad:?} (not epoch seconds; treated as none)"),
            (None, None) => "<none>".to_owned(),
        };
        eprintln!("{}: The last recorded build was: {last}", report.arch);
        if report.action == ScaleDownAction::ScaledDown && report.timeout.is_none() {
            // The library speaks of the value; the command line names the flag.
            eprintln!("{}: No --timeout given. Scaling down...", report.arch);
        } else {
            eprintln!("{}", report.message());
        }
    }
    Ok(Outcome::Success)
}

async fn tunnel(args: TunnelArgs) -> anyhow::Result<Outcome> {
    let arch = args.arch;
    let timeout = args.timeout;
    let fleet = args.kube.fleet().await?;
    let options = TunnelOptions::default()
        .with_port(args.port)
        .with_scale_up_wait(timeout);
    let live = Live::new(LiveMode::for_stderr(args.quiet));
    let tunnel = fleet
        .tunnel(arch, &options, &|progress| show_ready(&live, progress))
        .await;
    live.finish();
    let mut tunnel = tunnel?;
    let port = tunnel.local_addr().port();
    // The port on stdout is the "ready" signal for scripts: it is printed once the listener
    // is bound and the port-forward permission is confirmed.
    let mut out = std::io::stdout().lock();
    writeln!(out, "{port}")?;
    out.flush()?;
    drop(out);
    live.note(&format!(
        "Tunnel to pod {} ({arch}) on 127.0.0.1:{port}; use BUILDKIT_HOST=tcp://127.0.0.1:{port}. Press Ctrl+C to close.",
        tunnel.pod().pod
    ));
    let tunnel_live = Live::new(LiveMode::for_stderr(args.quiet));
    tunnel_live.set(
        &arch.to_string(),
        &format!("tunnel open to pod {}", tunnel.pod().pod),
        &format!("127.0.0.1:{port}"),
    );
    tunnel.wait().await;
    tunnel_live.finish();
    anyhow::bail!("the tunnel's listener stopped")
}

async fn cache_clear(args: CacheClearArgs) -> anyhow::Result<Outcome> {
    let fleet = args.kube.fleet().await?;
    let mut options = CacheClearOptions::default();
    options.prune.filters = args.filters;
    let live = Live::new(LiveMode::for_stderr(args.quiet));
    let report = fleet
        .cache_clear_with(&options, &|event| show_cache_clear(&live, &event))
        .await?;
    live.finish();
    let failed = report
        .pods
        .iter()
        .filter(|(_, p)| matches!(p, PodPrune::Failed { .. }))
        .count();
    if failed > 0 {
        anyhow::bail!("{failed} pod(s) could not be pruned");
    }
    Ok(Outcome::Success)
}

/// A line per PVC, and a live line per pod while its cache is pruned.
fn show_cache_clear(live: &Live, event: &CacheClearEvent<'_>) {
    match event {
        CacheClearEvent::Pvc { name, action } => live.note(&format!("{action}: {name}")),
        CacheClearEvent::Pruning { pod } => live.set(pod, "pruning the build cache", ""),
        CacheClearEvent::Pruned { pod, outcome } => match outcome {
            PodPrune::Pruned {
                records,
                bytes,
                signal,
            } => live.done(
                pod,
                &format!(
                    "pruned {records} records, {} freed (idle, by {signal})",
                    format_bytes(i64::try_from(*bytes).unwrap_or(i64::MAX))
                ),
            ),
            PodPrune::Busy {
                signal: BusySignal::BuildHistory,
                count,
            } => live.done(
                pod,
                &format!("skipped: a build is running ({count} in progress, by build history)"),
            ),
            PodPrune::Busy {
                signal: BusySignal::RecordsInUse,
                count,
            } => live.done(
                pod,
                &format!(
                    "skipped: a build is running ({count} cache records in use; no build history API)"
                ),
            ),
            PodPrune::Failed { error } => {
                live.done(pod, "prune failed");
                // Always shown, quiet or not: it makes the command fail.
                let error = super::error::format_error(&anyhow::Error::new(error.clone()));
                eprintln!("pf-buildkit: cannot prune pod {pod}: {error}");
            }
            // Outcomes and signals are #[non_exhaustive]: one added to the library and not yet
            // worded here still ends the pod's line.
            PodPrune::Busy { signal, count } => live.done(
                pod,
                &format!("skipped: a build is running ({count}, by {signal})"),
            ),
            _ => live.done(pod, "done"),
        },
        _ => {}
    }
}
