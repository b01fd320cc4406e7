//! A buildkitd of a test's own (upstream's standalone daemon, the binary `scripts/testenv`
//! unpacked): for tests that kill or stop their daemon, or that need one no other test builds
//! on. Its configuration is written here, from nothing: the OCI worker with the machine's
//! runc, the test registry as plain HTTP, and its own root, socket and trace socket.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use crate::util;

/// Where private daemons live: the folder `scripts/testenv` names (its `stop` kills what a
/// crashed test process left there), else the system's temporary directory.
const PARENT_ENV: &str = "PF_TEST_BUILDKITD_PRIVATE_DIR";

/// A private buildkitd, serving on a unix socket in its own directory until dropped.
pub struct Buildkitd {
    /// Declared before `dir`: the daemon ends before its directory goes.
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Buildkitd {
    /// Writes a configuration, starts the daemon and returns once its log says it serves.
    pub fn start() -> Buildkitd {
        let dir = super::scratch(PARENT_ENV, "buildkitd-");
        std::fs::write(dir.path().join("buildkitd.toml"), config(dir.path()))
            .expect("write the private buildkitd's config");
        let mut daemon = Buildkitd { child: None, dir };
        daemon.spawn();
        daemon
    }

    /// The daemon's state directory (`--root`).
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

    /// Its process id, while it runs.
    pub fn pid(&self) -> String {
        self.child
            .as_ref()
            .expect("the private buildkitd runs")
            .id()
            .to_string()
    }

    fn spawn(&mut self) {
        let _ = std::fs::remove_file(self.socket());
        let mut cmd = Command::new(util::env("PF_TEST_BUILDKITD"));
        cmd.arg("--config")
            .arg(self.dir.path().join("buildkitd.toml"))
            .arg("--root")
            .arg(self.root())
            .arg("--addr")
            .arg(self.addr());
        self.child = Some(super::spawn_until(
            cmd,
            "the private buildkitd",
            "running server on",
        ));
    }

    /// Sends `signal` (`-STOP`, `-CONT`, `-TERM`…) with kill(1).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid()])
            .status()
            .expect("run kill(1)");
        assert!(status.success(), "kill {signal}");
    }

    /// SIGKILL, then reap it and remove what it left: containers of RUN steps, mounts.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        leftovers(&self.root());
    }

    /// A killed daemon started again on the same root and configuration.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Buildkitd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The daemon's configuration. Every path in it is under `dir`: two daemons never share a
/// file (with one trace socket, daemons starting at the same time raced on it and one
/// failed with "chown /run/buildkit/otel-grpc.sock: no such file").
fn config(dir: &Path) -> String {
    let runc = super::on_path("runc").expect("runc is not installed (scripts/testenv installs it)");
    // `auto`: overlayfs where the root's filesystem takes overlay mounts, else native, as
    // `scripts/testenv` picks for the shared daemon; PF_TESTENV_SNAPSHOTTER overrides both.
    let snapshotter = std::env::var("PF_TESTENV_SNAPSHOTTER")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "auto".into());
    let mut text = String::from("# a test's private buildkitd (tests/integration/sandbox)\n");
    let _ = writeln!(
        text,
        "[otel]\n  socketPath = {:?}",
        path_str(&dir.join("otel-grpc.sock"))
    );
    let _ = writeln!(
        text,
        "[worker.oci]\n  enabled = true\n  snapshotter = {snapshotter:?}\n  binary = {:?}\n  gc = false",
        path_str(&runc)
    );
    text.push_str("[worker.containerd]\n  enabled = false\n");
    // The test registry speaks plain HTTP.
    let registry = util::env("PF_TEST_REGISTRY");
    let _ = writeln!(text, "[registry.{registry:?}]\n  http = true");
    text
}

fn path_str(path: &Path) -> String {
    path.to_str()
        .unwrap_or_else(|| panic!("{} is not UTF-8", path.display()))
        .to_owned()
}

/// Removes the runc containers and mounts a killed buildkitd left under `root`.
fn leftovers(root: &Path) {
    for state in runc_states(root) {
        let (Some(dir), Some(id)) = (state.parent(), state.file_name()) else {
            continue;
        };
        let _ = Command::new("runc")
            .arg("--root")
            .arg(dir)
            .args(["delete", "--force"])
            .arg(id)
            .output();
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = format!("{}/", root.display());
    let mut mounts: Vec<&str> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .collect();
    mounts.sort_unstable_by(|a, b| b.cmp(a));
    for m in mounts {
        let _ = Command::new("umount").args(["-l", m]).output();
    }
}

/// `ROOT/runc-*/executor/ID` folders (runc's state, one per container).
fn runc_states(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for worker in std::fs::read_dir(root).into_iter().flatten().flatten() {
        if !worker.file_name().to_string_lossy().starts_with("runc-") {
            continue;
        }
        let executor = worker.path().join("executor");
        for c in std::fs::read_dir(executor).into_iter().flatten().flatten() {
            if c.path().join("state.json").exists() {
                out.push(c.path());
            }
        }
    }
    out
}
