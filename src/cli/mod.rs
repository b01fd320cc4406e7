//! Command-line flags and output formatting; every command is one library call.

use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

use pf_buildkit::buildkit::{Client, Endpoint, ParseEndpointError, Pem, TlsOptions};

mod build;
mod daemon;
mod debug;
pub mod error;
mod fleet;
mod history;
mod live;
mod manifest;
mod multiplatform;
mod prefix;
mod units;
pub mod usage;

/// How a command ended, for the exit code.
pub enum Outcome {
    /// Exit 0.
    Success,
    /// Exit 1, the reason already printed.
    #[allow(dead_code)]
    Failure,
    /// Exit 130.
    Interrupted,
}

/// A native BuildKit client and Kubernetes BuildKit fleet tool.
#[derive(Debug, Parser)]
#[command(
    name = "pf-buildkit",
    // The version, the commit and the target (build.rs), so a bug report names the exact build.
    version = env!("PF_BUILDKIT_LONG_VERSION"),
    about,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Worker threads of the async runtime, when the command has a better number than one per
    /// CPU: one per build it runs at once.
    ///
    /// Why: a build's transfer is a chain of tasks (file reads, the session's two HTTP/2
    /// layers, the tunnel, TLS), each waking the next. With a worker per CPU, tokio hands
    /// woken tasks to whichever worker is idle, so every hop of the chain crosses threads (a
    /// futex wake and cold caches each time). A single cold build of 383 MB and 20,004 files
    /// used about 25% less client CPU on one worker (2.35 s against 3.1 s through a
    /// port-forward, 1.7 s against 2.1 s direct) and was no slower; file I/O still runs on
    /// the blocking pool. Builds of several architectures run side by side, a worker each.
    /// Other commands (a tunnel serving many connections, the fleet's calls) keep the
    /// default.
    pub fn worker_threads(&self) -> Option<usize> {
        match &self.command {
            Command::Build(args) => Some(args.concurrent_builds()),
            _ => None,
        }
    }
}

/// BuildKit's default socket (buildctl's default on Linux).
pub const DEFAULT_ADDR: &str = "unix:///run/buildkit/buildkitd.sock";

/// Where BuildKit is and how to reach it.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// BuildKit address: tcp://HOST:PORT, unix:///PATH, docker://, docker+unix:///PATH,
    /// kube-pod://POD?namespace=NS&context=CTX&port=1234 [default:
    /// unix:///run/buildkit/buildkitd.sock]
    #[arg(long, global = true, env = "BUILDKIT_HOST", value_parser = endpoint)]
    pub addr: Option<String>,
    /// CA certificate (PEM) that signs the daemon's certificate
    #[arg(long, global = true, value_name = "FILE")]
    pub tlscacert: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS
    #[arg(long, global = true, value_name = "FILE")]
    pub tlscert: Option<PathBuf>,
    /// Client key (PEM) for mTLS
    #[arg(long, global = true, value_name = "FILE")]
    pub tlskey: Option<PathBuf>,
    /// Name to verify in the daemon's certificate (default: the host of --addr)
    #[arg(long, global = true, value_name = "NAME")]
    pub tlsservername: Option<String>,
}

/// An address the client can dial (`kube-pod://` included), kept as typed: a usage error
/// names what is wrong with it.
fn endpoint(text: &str) -> Result<String, ParseEndpointError> {
    pf_buildkit::fleet::parse(text).map(|_| text.to_owned())
}

impl GlobalArgs {
    pub fn tls(&self) -> TlsOptions {
        let mut tls = TlsOptions::new();
        tls.ca_cert = self.tlscacert.clone().map(Pem::File);
        tls.cert = self.tlscert.clone().map(Pem::File);
        tls.key = self.tlskey.clone().map(Pem::File);
        tls.server_name = self.tlsservername.clone();
        tls
    }

    /// `--addr`, or BuildKit's default socket.
    pub fn addr(&self) -> &str {
        self.addr.as_deref().unwrap_or(DEFAULT_ADDR)
    }

    /// Connects to `--addr`.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        // `--addr` may name a pod: the fleet's connectors know `kube-pod://`.
        let endpoint: Endpoint = pf_buildkit::fleet::parse(self.addr())?;
        // kube-pod:// goes through a port-forward; the rest as the BuildKit client connects.
        Ok(pf_buildkit::fleet::connect(endpoint, &self.tls()).await?)
    }
}

/// Output format of the daemon commands.
#[derive(Debug, Clone, Copy, Default, ValueEnum)]
pub enum Format {
    /// Aligned columns for people
    #[default]
    Table,
    /// JSON for scripts
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the daemon's workers and their platforms
    Workers(daemon::WorkersArgs),
    /// Show the daemon's version
    Info(daemon::InfoArgs),
    /// Show the build cache's disk usage
    Du(daemon::DuArgs),
    /// Free build cache
    Prune(daemon::PruneArgs),
    /// Build a Dockerfile; with --repo and --tag, every architecture and one multi-platform index
    Build(Box<build::BuildArgs>),
    #[command(flatten)]
    Fleet(fleet::FleetCommand),
    /// The build history of a daemon, or of the whole fleet: ls, logs, inspect, rm, export
    #[command(subcommand)]
    History(history::HistoryCommand),
    /// Push or inspect multi-platform manifests in a registry
    Manifest(manifest::ManifestArgs),
    /// Look inside what the client sends (dump-llb)
    #[command(subcommand)]
    Debug(debug::DebugCommand),
    /// Print a shell completion script
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
}

/// Runs one command.
pub async fn run(cli: Cli) -> anyhow::Result<Outcome> {
    match cli.command {
        Command::Workers(args) => daemon::workers(&cli.global, &args).await,
        Command::Info(args) => daemon::info(&cli.global, &args).await,
        Command::Du(args) => daemon::du(&cli.global, &args).await,
        Command::Prune(args) => daemon::prune(&cli.global, &args).await,
        Command::Build(args) => build::build(&cli.global, &args).await,
        Command::Fleet(command) => fleet::run(command).await,
        Command::History(command) => history::run(&cli.global, command).await,
        Command::Manifest(args) => manifest::run(args).await,
        Command::Debug(command) => debug::run(&command),
        Command::Completions { shell } => {
            // Generated into memory: clap_complete panics when its writer fails, and a closed
            // stdout must end quietly like every other result.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "pf-buildkit", &mut script);
            std::io::Write::write_all(&mut std::io::stdout().lock(), &script)?;
            Ok(Outcome::Success)
        }
    }
}

/// Writes one line of a result to stdout. Unlike `println!`, a closed stdout (`… | true`)
/// is an error the caller returns, and `main` ends quietly on it rather than panicking.
pub fn print_line(line: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    writeln!(std::io::stdout().lock(), "{line}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    fn workers(args: &[&str]) -> Option<usize> {
        let argv = std::iter::once("pf-buildkit").chain(args.iter().copied());
        Cli::try_parse_from(argv).unwrap().worker_threads()
    }

    #[test]
    fn a_build_gets_a_worker_per_build_it_runs_at_once() {
        assert_eq!(workers(&["build"]), Some(1));
        assert_eq!(
            workers(&["build", "--platform", "linux/amd64,linux/arm64"]),
            Some(1)
        );
        assert_eq!(workers(&["build", "--repo", "r", "--tag", "t"]), Some(2));
        assert_eq!(
            workers(&["build", "--repo", "r", "--tag", "t", "--arch", "amd64"]),
            Some(1)
        );
        assert_eq!(
            workers(&[
                "build",
                "--repo",
                "r",
                "--tag",
                "t",
                "--arch",
                "amd64,arm64,riscv64"
            ]),
            Some(3)
        );
        assert_eq!(
            workers(&[
                "build",
                "--repo",
                "r",
                "--tag",
                "t",
                "--builder",
                "arm64=tcp://h:1"
            ]),
            Some(1)
        );
    }

    #[test]
    fn other_commands_keep_a_worker_per_cpu() {
        assert_eq!(workers(&["tunnel", "--arch", "amd64"]), None);
        assert_eq!(workers(&["workers"]), None);
    }
}
