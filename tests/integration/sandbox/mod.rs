//! Daemons a test owns, in the spirit of BuildKit's own integration sandbox: a test that
//! kills, restarts or watches its daemon starts its own here, with configuration, state and
//! sockets written from scratch under a directory of its own, and everything ends when the
//! handle drops (the process killed and reaped, what it left removed, the directory deleted).
//!
//! What stays in `scripts/testenv`: installing packages and unpacking binaries, and the
//! long-lived daemons every test shares (the Engine, the registries, moto, the standalone
//! tier and the Kubernetes tier). The sandbox takes only the binaries' paths from it.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub mod buildkitd;

pub use buildkitd::Buildkitd;

/// How long a daemon may take to start serving (generous: CI runners are busy machines).
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// The lines of a daemon's log kept for a failure message.
const LOG_TAIL: usize = 40;

/// A directory for one daemon's files: under `PF_TEST_SANDBOX_DIR` when the test environment
/// names one (so `scripts/testenv stop` can reap what a crashed test process left), else
/// the system's temporary directory. Removed when dropped.
fn scratch(env: &str, prefix: &str) -> tempfile::TempDir {
    let parent = std::env::var_os(env)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&parent)
        .unwrap_or_else(|e| panic!("create the sandbox folder {}: {e}", parent.display()));
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&parent)
        .unwrap_or_else(|e| panic!("create a folder in {}: {e}", parent.display()))
}

/// Starts `cmd` with its stderr read for as long as it lives (a full pipe would block it) and
/// returns once a line holds `ready`. Panics with the log's last lines if it exits first, or
/// does not get there within [`START_TIMEOUT`].
fn spawn_until(mut cmd: Command, what: &str, ready: &'static str) -> Child {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e}"));
    let (ready_tx, ready_rx) = mpsc::channel();
    let log = child.stderr.take().expect("stderr is piped");
    std::thread::spawn(move || {
        let mut tail = std::collections::VecDeque::with_capacity(LOG_TAIL);
        for line in BufReader::new(log).lines() {
            let Ok(line) = line else { break };
            if line.contains(ready) {
                let _ = ready_tx.send(Ok(()));
            }
            if tail.len() == LOG_TAIL {
                tail.pop_front();
            }
            tail.push_back(line);
        }
        let _ = ready_tx.send(Err(Vec::from(tail).join("\n")));
    });
    match ready_rx.recv_timeout(START_TIMEOUT) {
        Ok(Ok(())) => child,
        Ok(Err(log)) => {
            let _ = child.wait();
            panic!("{what} exited before serving:\n{log}")
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not serve within {START_TIMEOUT:?}")
        }
    }
}

/// The first `name` on `PATH` (what a daemon's own lookup would find), for a config file
/// that names the binary.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .chain(["/usr/sbin".into(), "/usr/bin".into(), "/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}
