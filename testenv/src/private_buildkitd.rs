//! A buildkitd of a test's own (the standalone binary `scripts/testenv` unpacked): for tests
//! that kill, stop or restart their daemon, or need one no other test builds on. Its
//! configuration, root and sockets are written from nothing in a folder of its own, and
//! everything ends when the handle drops: the process killed and reaped, its containers and
//! mounts removed, the folder deleted.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::buildkitd::{config_text, on_path};
use crate::error::{Error, Result};
use crate::leftovers;
use crate::process::{Daemon, Launch, signal_pid};
use crate::registry::write;

/// What buildkitd logs once it serves.
const SERVING: &str = "running server on";

/// A private buildkitd, serving on a unix socket in its own folder until dropped.
#[derive(Debug)]
pub struct PrivateBuildkitd {
    /// Declared before `dir`: the daemon ends before its folder goes.
    daemon: Option<Daemon>,
    dir: tempfile::TempDir,
    binary: PathBuf,
    timeout: Duration,
}

impl PrivateBuildkitd {
    /// Writes a configuration (the OCI worker with the machine's runc and `snapshotter`,
    /// `registry` as plain HTTP, a trace socket of its own), starts `binary` in a new folder
    /// under `parent` and returns once its log says it serves. Not tied to the calling
    /// thread: a test may start it on any thread.
    pub fn start(
        binary: &Path,
        registry: &str,
        parent: &Path,
        snapshotter: &str,
        timeout: Duration,
    ) -> Result<PrivateBuildkitd> {
        std::fs::create_dir_all(parent).map_err(Error::file("create", parent))?;
        let dir = tempfile::Builder::new()
            .prefix("buildkitd-")
            .tempdir_in(parent)
            .map_err(Error::file("create a folder in", parent))?;
        let runc = on_path("runc")
            .ok_or_else(|| Error::msg("runc is not installed (scripts/testenv installs it)"))?;
        write(
            &dir.path().join("buildkitd.toml"),
            &config_text(dir.path(), &runc, snapshotter, registry),
        )?;
        let mut daemon = PrivateBuildkitd {
            daemon: None,
            dir,
            binary: binary.to_path_buf(),
            timeout,
        };
        daemon.spawn()?;
        Ok(daemon)
    }

    /// The daemon's state folder (`--root`).
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// Its unix socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("buildkitd.sock")
    }

    /// `unix://` address of its socket.
    pub fn addr(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// Its process id while it runs (0 once killed).
    pub fn pid(&self) -> u32 {
        self.daemon.as_ref().map_or(0, Daemon::pid)
    }

    /// Sends `signal` (SIGSTOP, SIGCONT, …) to it.
    pub fn signal(&self, signal: i32) {
        signal_pid(self.pid(), signal);
    }

    fn spawn(&mut self) -> Result<()> {
        let _ = std::fs::remove_file(self.socket());
        let log = self.dir.path().join("buildkitd.log");
        let mut daemon = Launch::new("a private buildkitd", &self.binary, &log)
            .args([
                "--config".as_ref(),
                self.dir.path().join("buildkitd.toml").as_os_str(),
            ])
            .args(["--root".as_ref(), self.root().as_os_str()])
            .args([format!("--addr={}", self.addr())])
            .start()?;
        daemon.wait_ready("its serving line", self.timeout, || {
            std::fs::read_to_string(&log).is_ok_and(|l| l.contains(SERVING))
        })?;
        self.daemon = Some(daemon);
        Ok(())
    }

    /// SIGKILL (a crash, no grace), reaped; its containers and mounts removed.
    pub fn kill(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            daemon.kill();
        }
        leftovers::buildkit_leftovers(&self.root());
    }

    /// Killed, then started again on the same root and configuration.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }
}

impl Drop for PrivateBuildkitd {
    fn drop(&mut self) {
        self.kill();
    }
}
