//! Daemons a test owns, in the spirit of BuildKit's own integration sandbox: a test that
//! kills, restarts or watches its daemon starts its own here, and everything ends when the
//! handle drops (the process killed and reaped, what it left removed, its folder deleted).
//!
//! The components come from `pf-testenv` (testenv/), the crate that also starts the shared
//! environment, so private and shared daemons are started and stopped by one process helper.
//! This module only reads the environment's variables and turns errors into test failures.

use std::path::PathBuf;
use std::time::Duration;

use crate::util;

/// How long a daemon may take to start serving (generous: CI runners are busy machines).
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// A private buildkitd (upstream's standalone daemon), serving on a unix socket in its own
/// folder until dropped: under `PF_TEST_BUILDKITD_PRIVATE_DIR` (so the environment's `stop`
/// reaps what a crashed test process left), else the system's temporary directory.
pub struct Buildkitd(pf_testenv::PrivateBuildkitd);

impl Buildkitd {
    /// Writes a configuration, starts the daemon and returns once its log says it serves.
    pub fn start() -> Buildkitd {
        let parent = std::env::var_os("PF_TEST_BUILDKITD_PRIVATE_DIR")
            .filter(|p| !p.is_empty())
            .map_or_else(std::env::temp_dir, PathBuf::from);
        // `auto`: overlayfs where the root's filesystem takes overlay mounts, else native, as
        // the shared daemon picks; PF_TESTENV_SNAPSHOTTER overrides both.
        let snapshotter = std::env::var("PF_TESTENV_SNAPSHOTTER")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "auto".into());
        let daemon = pf_testenv::PrivateBuildkitd::start(
            util::env("PF_TEST_BUILDKITD").as_ref(),
            &util::env("PF_TEST_REGISTRY"),
            &parent,
            &snapshotter,
            START_TIMEOUT,
        );
        Buildkitd(daemon.unwrap_or_else(|e| panic!("{e}")))
    }

    /// Its unix socket.
    pub fn socket(&self) -> PathBuf {
        self.0.socket()
    }

    /// `unix://` address of its socket.
    pub fn addr(&self) -> String {
        self.0.addr()
    }

    /// Stops (`true`) or continues (`false`) the process: SIGSTOP, SIGCONT.
    pub fn pause(&self, paused: bool) {
        self.0.signal(if paused {
            pf_testenv::process::SIGSTOP
        } else {
            pf_testenv::process::SIGCONT
        });
    }

    /// SIGKILL, then reap it and remove what it left: containers of RUN steps, mounts.
    pub fn kill(&mut self) {
        self.0.kill();
    }

    /// A killed daemon started again on the same root and configuration.
    pub fn restart(&mut self) {
        self.0.restart().unwrap_or_else(|e| panic!("{e}"));
    }
}
