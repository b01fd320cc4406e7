//! The `pf-buildkit` binary: parse arguments, run one library call, print, exit.
//! Exit codes: 0 ok, 1 failure, 2 usage error, 130 interrupted (Ctrl-C), 143 terminated
//! (SIGTERM).

use std::process::ExitCode;

use clap::Parser as _;

mod cli;

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let args = match cli::Cli::try_parse_from(&argv) {
        Ok(args) => args,
        Err(err) => return usage_error(&err, &argv),
    };
    init_logging();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    // TOKIO_WORKER_THREADS, when set, is the user's choice and wins (the builder reads it).
    if let (Some(workers), None) = (
        args.worker_threads(),
        std::env::var_os("TOKIO_WORKER_THREADS"),
    ) {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        builder.worker_threads(workers.clamp(1, cpus));
    }
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("pf-buildkit: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    // A signal drops the command's future: every guard it holds (store rollbacks, temporary
    // files, sessions, tunnels) runs then, the same for Ctrl-C and for a CI runner's SIGTERM.
    let outcome = runtime.block_on(async {
        tokio::select! {
            result = cli::run(args) => Ended::Ran(result),
            _ = tokio::signal::ctrl_c() => Ended::Ran(Ok(cli::Outcome::Interrupted)),
            () = terminated() => Ended::Terminated,
        }
    });
    // Do not wait for detached tasks (sessions, tunnels) beyond a moment: they are cancelled.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    let outcome = match outcome {
        Ended::Ran(outcome) => outcome,
        Ended::Terminated => {
            eprintln!("pf-buildkit: terminated");
            return ExitCode::from(143);
        }
    };
    match outcome {
        Ok(cli::Outcome::Success) => ExitCode::SUCCESS,
        Ok(cli::Outcome::Failure) => ExitCode::FAILURE,
        Ok(cli::Outcome::Interrupted) => {
            eprintln!("pf-buildkit: interrupted");
            ExitCode::from(130)
        }
        Err(err) => {
            if is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            eprintln!("pf-buildkit: {}", cli::error::format_error(&err));
            if cli::usage::is_usage(&err) {
                ExitCode::from(cli::usage::EXIT_CODE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// How the command's future ended: it ran to its end, or SIGTERM cut it short.
enum Ended {
    Ran(anyhow::Result<cli::Outcome>),
    Terminated,
}

/// Resolves on SIGTERM (the signal CI runners and Kubernetes send before killing). If the
/// handler cannot be installed, it never resolves and SIGTERM keeps its default action.
async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            term.recv().await;
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot handle SIGTERM");
            std::future::pending::<()>().await;
        }
    }
}

/// Diagnostics go to stderr at the level `PF_BUILDKIT_LOG` (or `RUST_LOG`) asks for. Without
/// either, only warnings print: a failure is reported once, as the one-line error `main`
/// prints, not also as the `ERROR` events libraries log on their way (kube logs one for each
/// failed HTTP call). Colour only when stderr is a terminal.
fn init_logging() {
    use std::io::IsTerminal;
    use tracing_subscriber::filter::{FilterExt, LevelFilter, filter_fn};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};

    let asked = EnvFilter::try_from_env("PF_BUILDKIT_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .ok();
    let format = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let registry = tracing_subscriber::registry();
    match asked {
        Some(filter) => registry.with(format.with_filter(filter)).init(),
        None => registry
            .with(format.with_filter(
                // The AWS SDK warns about each credential source that fails; the one-line
                // error already says where it looked.
                LevelFilter::WARN.and(filter_fn(|m| {
                    *m.level() == tracing::Level::WARN && !m.target().starts_with("aws_")
                })),
            ))
            .init(),
    }
}

/// clap's verdict on the arguments: help and version are results (stdout, exit 0); anything
/// else is a usage error, one line in the project's style, exit 2.
fn usage_error(err: &clap::Error, argv: &[std::ffi::OsString]) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) {
        return match err.print() {
            Ok(()) => ExitCode::SUCCESS,
            // A closed stdout ends quietly, as for every other result.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
            Err(_) => ExitCode::FAILURE,
        };
    }
    eprintln!("pf-buildkit: {}", cli::usage::clap_line(err, argv));
    ExitCode::from(cli::usage::EXIT_CODE)
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
