//! A buildkitd of a test's own (upstream's standalone daemon, from the test environment):
//! for tests that kill or stop their daemon, or that need one no other test builds on.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::util;

/// How long a private daemon may take to start serving.
const EVENT_TIMEOUT: Duration = Duration::from_secs(120);

/// A buildkitd of the test's own: the shared config (worker, runc, the plain-HTTP registry),
/// its own root, unix socket and trace socket.
pub struct PrivateDaemon {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateDaemon {
    /// Starts one and returns once its log says it serves.
    pub fn start() -> PrivateDaemon {
        let parent = PathBuf::from(util::env("PF_TEST_BUILDKITD_PRIVATE_DIR"));
        std::fs::create_dir_all(&parent).unwrap();
        let dir = tempfile::Builder::new()
            .prefix("fault-")
            .tempdir_in(&parent)
            .unwrap();
        let mut daemon = PrivateDaemon { dir, child: None };
        daemon.spawn();
        daemon
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("buildkitd.sock")
    }

    /// `unix://` address of its socket.
    pub fn addr(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    pub fn pid(&self) -> String {
        self.child.as_ref().unwrap().id().to_string()
    }

    /// The shared config with this daemon's own trace socket: with one socket path, daemons
    /// starting at the same time race on it and one fails to start.
    fn config(&self) -> PathBuf {
        let shared = std::fs::read_to_string(util::env("PF_TEST_BUILDKITD_CONFIG")).unwrap();
        let own = self.dir.path().join("otel-grpc.sock");
        let mut text = String::new();
        let mut replaced = false;
        for line in shared.lines() {
            if line.trim_start().starts_with("socketPath") {
                text.push_str(&format!("  socketPath = {:?}\n", own.display().to_string()));
                replaced = true;
            } else {
                text.push_str(line);
                text.push('\n');
            }
        }
        if !replaced {
            text = format!(
                "[otel]\n  socketPath = {:?}\n{text}",
                own.display().to_string()
            );
        }
        let path = self.dir.path().join("buildkitd.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn spawn(&mut self) {
        let _ = std::fs::remove_file(self.socket());
        let mut child = Command::new(util::env("PF_TEST_BUILDKITD"))
            .arg("--config")
            .arg(self.config())
            .arg("--root")
            .arg(self.root())
            .arg("--addr")
            .arg(self.addr())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (ready_tx, ready_rx) = mpsc::channel();
        let log = child.stderr.take().unwrap();
        // Reads the log for as long as the daemon lives (a full pipe would block it).
        std::thread::spawn(move || {
            let mut tail = Vec::new();
            for line in BufReader::new(log).lines() {
                let Ok(line) = line else { break };
                if line.contains("running server on") {
                    let _ = ready_tx.send(Ok(()));
                }
                tail.push(line);
                if tail.len() > 40 {
                    tail.remove(0);
                }
            }
            let _ = ready_tx.send(Err(tail.join("\n")));
        });
        match ready_rx.recv_timeout(EVENT_TIMEOUT) {
            Ok(Ok(())) => {}
            Ok(Err(log)) => panic!("the private buildkitd exited before serving:\n{log}"),
            Err(_) => panic!("the private buildkitd did not serve in {EVENT_TIMEOUT:?}"),
        }
        self.child = Some(child);
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid()])
            .status()
            .unwrap();
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

    /// A killed daemon started again on the same root.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for PrivateDaemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Removes the runc containers and mounts a killed buildkitd left under `root`.
fn leftovers(root: &Path) {
    for state in glob_states(root) {
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
fn glob_states(root: &Path) -> Vec<PathBuf> {
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
