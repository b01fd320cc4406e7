//! The fleet commands (`get-address`, `record-build`, `scale up|down`, `resume`, `suspend`,
//! `tunnel`, `cache clear`, `clear-cache`): flags and output; the work is in `pf_buildkit::fleet`.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};

use pf_buildkit::fleet::{
    Arch, CacheClearOptions, Fleet, PodMetricsState, PodPrune, PvcAction, ReadyProgress,
    ScaleUpOptions, ScaleUpReport, TunnelOptions, WaitState,
};

use super::Outcome;
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
    #[arg(long, value_name = "SECONDS", default_value = DEFAULT_WAIT_SECONDS, value_parser = parse_seconds)]
    timeout: Duration,
    #[command(flatten)]
    kube: KubeArgs,
}

#[derive(Debug, Args)]
pub struct ScaleDownArgs {
    /// Only scale down architectures with no build recorded within this many seconds
    /// (default: scale down regardless)
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
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
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Seconds to wait for the architecture to scale up
    #[arg(long, value_name = "SECONDS", default_value = DEFAULT_WAIT_SECONDS, value_parser = parse_seconds)]
    timeout: Duration,
    #[command(flatten)]
    kube: KubeArgs,
}

#[derive(Debug, Args)]
pub struct CacheClearArgs {
    /// Only prune records matching this containerd-style filter (repeatable; default: all)
    #[arg(long = "filter", value_name = "FILTER")]
    filters: Vec<String>,
    #[command(flatten)]
    kube: KubeArgs,
}

/// A whole number of seconds; clap reports anything else as a usage error (exit 2).
fn parse_seconds(value: &str) -> Result<Duration, String> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{value:?} must be a whole number of seconds"));
    }
    let secs: u64 = value
        .parse()
        .map_err(|_| format!("{value:?} is too large a number of seconds"))?;
    Ok(Duration::from_secs(secs))
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
            "pf-buildkit: warning: {why}; using the first running pod, {}",
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
    scale_up_with(&fleet, &archs, args.wait.then_some(timeout)).await?;
    Ok(Outcome::Success)
}

async fn scale_up_with(
    fleet: &Fleet,
    archs: &[Arch],
    wait: Option<Duration>,
) -> anyhow::Result<()> {
    let reports = fleet
        .scale_up(archs, &ScaleUpOptions::default(), &|_| {})
        .await?;
    reports.iter().for_each(print_scaled);
    if let Some(timeout) = wait {
        let renderer = WaitRenderer::new();
        let result = fleet
            .wait_available(archs, timeout, &|states| renderer.render(states))
            .await;
        renderer.finish();
        result?;
    }
    Ok(())
}

fn print_scaled(r: &ScaleUpReport) {
    if r.scaled {
        eprintln!(
            "{}: scaled StatefulSet {} from 0 to 1 replica",
            r.arch,
            r.arch.statefulset()
        );
    } else {
        eprintln!(
            "{}: StatefulSet {} has {} replica(s); left as is",
            r.arch,
            r.arch.statefulset(),
            r.replicas_before
        );
    }
}

/// Shows one line per architecture with the time left, redrawn in place on a terminal and
/// every ten seconds (or on a change) otherwise.
struct WaitRenderer {
    tty: bool,
    state: Mutex<(usize, Option<Instant>, Vec<bool>)>,
}

impl WaitRenderer {
    fn new() -> Self {
        WaitRenderer {
            tty: std::io::stderr().is_terminal(),
            state: Mutex::new((0, None, Vec::new())),
        }
    }

    fn render(&self, states: &[WaitState]) {
        let Ok(mut guard) = self.state.lock() else {
            return;
        };
        let (printed, last, ready) = &mut *guard;
        let now_ready: Vec<bool> = states.iter().map(WaitState::is_ready).collect();
        let mut err = std::io::stderr().lock();
        if self.tty {
            if *printed > 0 {
                let _ = write!(err, "\x1b[{printed}A");
            }
        } else if last.is_some_and(|t| t.elapsed() < Duration::from_secs(10)) && *ready == now_ready
        {
            return;
        }
        for s in states {
            let line = if s.is_ready() {
                format!("{}: {} available replica(s)", s.arch, s.available)
            } else {
                format!(
                    "{}: waiting {} more seconds for a BuildKit replica of {} to become available...",
                    s.arch,
                    // Rounded up: "0 more seconds" only once time is up.
                    s.remaining.as_millis().div_ceil(1000),
                    s.arch.statefulset()
                )
            };
            if self.tty {
                let _ = writeln!(err, "\x1b[2K{line}");
            } else {
                let _ = writeln!(err, "{line}");
            }
        }
        *printed = states.len();
        *last = Some(Instant::now());
        *ready = now_ready;
    }

    fn finish(&self) {
        let _ = std::io::stderr().flush();
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
        eprintln!("{}", report.message());
    }
    Ok(Outcome::Success)
}

async fn tunnel(args: TunnelArgs) -> anyhow::Result<Outcome> {
    let arch = args.arch;
    let timeout = args.timeout;
    let fleet = args.kube.fleet().await?;
    let options = TunnelOptions {
        port: args.port,
        scale_up_wait: Some(timeout),
        ..Default::default()
    };
    let renderer = WaitRenderer::new();
    let tunnel = fleet
        .tunnel(arch, &options, &|progress| match progress {
            ReadyProgress::Scaled(report) => print_scaled(report),
            ReadyProgress::Waiting(states) => renderer.render(states),
            _ => {}
        })
        .await;
    renderer.finish();
    let mut tunnel = tunnel?;
    let port = tunnel.local_addr().port();
    // The port on stdout is the "ready" signal for scripts: it is printed once the listener
    // is bound and the port-forward permission is confirmed.
    let mut out = std::io::stdout().lock();
    writeln!(out, "{port}")?;
    out.flush()?;
    drop(out);
    eprintln!(
        "Tunnel to pod {} ({arch}) on 127.0.0.1:{port}; use BUILDKIT_HOST=tcp://127.0.0.1:{port}. Press Ctrl+C to close.",
        tunnel.pod().pod
    );
    tunnel.wait().await;
    anyhow::bail!("the tunnel's listener stopped")
}

async fn cache_clear(args: CacheClearArgs) -> anyhow::Result<Outcome> {
    let fleet = args.kube.fleet().await?;
    let mut options = CacheClearOptions::default();
    options.prune.filters = args.filters;
    let report = fleet.cache_clear(&options).await?;
    for (pvc, action) in &report.pvcs {
        match action {
            PvcAction::Deleted => eprintln!("Deleted unused PVC: {pvc}"),
            PvcAction::InUse => eprintln!("PVC in use: {pvc}"),
            PvcAction::Wanted => eprintln!("PVC of a wanted replica, kept: {pvc}"),
        }
    }
    let mut failed = 0;
    for (pod, outcome) in &report.pods {
        match outcome {
            PodPrune::Pruned { records, bytes } => eprintln!(
                "Pruned the cache of pod {pod}: {records} records, {} freed",
                format_bytes(i64::try_from(*bytes).unwrap_or(i64::MAX))
            ),
            PodPrune::Busy { in_use } => {
                eprintln!("Skipped pod {pod}: a build is running ({in_use} cache records in use)")
            }
            PodPrune::Failed { error } => {
                failed += 1;
                eprintln!("pf-buildkit: cannot prune pod {pod}: {error}");
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} pod(s) could not be pruned");
    }
    Ok(Outcome::Success)
}
