//! Faults on the standalone daemon: buildkitd killed mid-transfer, mid-RUN and mid-export, a
//! session connection reset under the build, and a daemon that stalls mid-export. Each test
//! starts its own buildkitd (own root and socket under the test environment's private folder)
//! and kills it by its PID, never the shared one. Every wait is for an event the test can
//! see: a line of the daemon's log or of the build's progress, or the process ending.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::util::{self, Tier};

/// How long a start or a progress event may take before the test gives up.
const EVENT_TIMEOUT: Duration = Duration::from_secs(120);

/// A buildkitd of the test's own: the shared config (worker, runc, the plain-HTTP registry),
/// its own root and unix socket.
struct PrivateDaemon {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateDaemon {
    /// Starts one and returns once its log says it serves.
    fn start() -> PrivateDaemon {
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

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("buildkitd.sock")
    }

    /// `unix://` address of its socket.
    fn addr(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    fn pid(&self) -> String {
        self.child.as_ref().unwrap().id().to_string()
    }

    fn spawn(&mut self) {
        let _ = std::fs::remove_file(self.socket());
        let mut child = Command::new(util::env("PF_TEST_BUILDKITD"))
            .arg("--config")
            .arg(util::env("PF_TEST_BUILDKITD_CONFIG"))
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

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal}");
    }

    /// SIGKILL, then reap it and remove what it left: containers of RUN steps, mounts.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        leftovers(&self.root());
    }

    /// A killed daemon started again on the same root.
    fn restart(&mut self) {
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

/// A running `pf-buildkit build` whose progress lines arrive on a channel.
struct Build {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Build {
    fn start(addr: &str, args: &[&str]) -> Build {
        let mut child = util::bin()
            .args(["--addr", addr, "build", "--progress", "plain"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Build {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a progress line that `what` matches.
    fn wait_for(&mut self, what: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => {
                    let hit = what(&line);
                    self.seen.push(line);
                    if hit {
                        return;
                    }
                }
                Err(_) => panic!(
                    "the awaited progress line never came:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits for the process to end, at most `limit` from now; returns its status and
    /// everything it printed.
    fn end_within(mut self, limit: Duration) -> (ExitStatus, Vec<String>) {
        let started = Instant::now();
        let deadline = started + limit;
        // stderr closes when the process ends.
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => self.seen.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!(
                        "the build was still running {limit:?} after the fault:\n{}",
                        self.seen.join("\n")
                    );
                }
            }
        }
        let status = self.child.wait().unwrap();
        assert!(
            started.elapsed() <= limit,
            "ended after {:?}",
            started.elapsed()
        );
        (status, self.seen)
    }

    fn interrupt(&self) {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

/// A context whose transfer and export take long enough to be caught in the middle: one
/// sparse file (no disk space here, all of it on the wire).
fn big_context(dir: &Path, dockerfile: &str) -> PathBuf {
    let ctx = dir.join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
    std::fs::write(ctx.join("small.txt"), "small\n").unwrap();
    let big = std::fs::File::create(ctx.join("big.bin")).unwrap();
    big.set_len(1 << 30).unwrap();
    ctx
}

/// The build ended with exit 1 and one error line saying the daemon went away.
fn assert_went_away(status: ExitStatus, seen: &[String]) {
    let all = seen.join("\n");
    assert_eq!(status.code(), Some(1), "{all}");
    let errors: Vec<&String> = seen
        .iter()
        .filter(|l| l.starts_with("pf-buildkit: "))
        .collect();
    assert_eq!(errors.len(), 1, "one error line expected:\n{all}");
    assert!(errors[0].contains("went away"), "{}", errors[0]);
}

/// No temporary file of an export in `dir` (the destination's folder).
fn assert_no_temp_files(dir: &Path) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            assert!(
                !name.starts_with(".pf-tmp-") && !name.ends_with(".tmp"),
                "temporary file left: {}",
                entry.path().display()
            );
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            }
        }
    }
}

/// After the fault, the same daemon restarted on the same root builds again.
fn assert_next_build_works(daemon: &mut PrivateDaemon, dir: &Path) {
    daemon.restart();
    let ctx = dir.join("after");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), "FROM scratch\nCOPY hello /\n").unwrap();
    std::fs::write(ctx.join("hello"), "again\n").unwrap();
    let out_dir = dir.join("after-out");
    let out = util::bin()
        .args(["--addr", &daemon.addr(), "build", "--progress", "quiet"])
        .arg("--context")
        .arg(&ctx)
        .arg("--output")
        .arg(format!("type=local,dest={}", out_dir.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", util::stderr(&out));
    assert_eq!(
        std::fs::read_to_string(out_dir.join("hello")).unwrap(),
        "again\n"
    );
}

fn standalone() -> bool {
    Tier::Standalone.present(module_path!()).is_some()
}

#[test]
fn daemon_killed_during_the_context_transfer() {
    if !standalone() {
        return;
    }
    let mut daemon = PrivateDaemon::start();
    let dir = tempfile::tempdir().unwrap();
    let ctx = big_context(dir.path(), "FROM scratch\nCOPY . /\n");
    let dest = dir.path().join("out");
    let output = format!("type=local,dest={}", dest.display());
    let mut build = Build::start(
        &daemon.addr(),
        &["--context", ctx.to_str().unwrap(), "--output", &output],
    );
    build.wait_for(|l| l.contains("[internal] load build context"));
    daemon.kill();
    let (status, seen) = build.end_within(Duration::from_secs(10));
    assert_went_away(status, &seen);
    assert!(!dest.exists(), "nothing exported");
    assert_no_temp_files(dir.path());
    assert_next_build_works(&mut daemon, dir.path());
}

#[test]
fn daemon_killed_during_a_run_step() {
    if !standalone() {
        return;
    }
    let mut daemon = PrivateDaemon::start();
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("fault-run-{}", std::process::id());
    std::fs::write(
        dir.path().join("Dockerfile"),
        format!(
            "FROM {}\nRUN echo {marker} && sleep 120\n",
            util::env("PF_TEST_BASE_IMAGE")
        ),
    )
    .unwrap();
    let mut build = Build::start(
        &daemon.addr(),
        &["--context", dir.path().to_str().unwrap(), "--no-cache"],
    );
    build.wait_for(|l| l.contains(&marker) && !l.contains("RUN"));
    daemon.kill();
    let (status, seen) = build.end_within(Duration::from_secs(10));
    assert_went_away(status, &seen);
    assert_next_build_works(&mut daemon, dir.path());
}

/// Kills the daemon once the export to `output` has begun, as a progress line shows.
fn killed_during_export(kind: &str, export_line: &str) {
    if !standalone() {
        return;
    }
    let mut daemon = PrivateDaemon::start();
    let dir = tempfile::tempdir().unwrap();
    let ctx = big_context(dir.path(), "FROM scratch\nCOPY . /\n");
    let dest_dir = dir.path().join("dest");
    std::fs::create_dir_all(&dest_dir).unwrap();
    let dest = dest_dir.join("out");
    let output = format!("type={kind},dest={}", dest.display());
    let mut build = Build::start(
        &daemon.addr(),
        &["--context", ctx.to_str().unwrap(), "--output", &output],
    );
    build.wait_for(|l| l.contains(export_line));
    daemon.kill();
    let (status, seen) = build.end_within(Duration::from_secs(10));
    assert_went_away(status, &seen);
    assert_no_temp_files(&dest_dir);
    assert_next_build_works(&mut daemon, dir.path());
}

#[test]
fn daemon_killed_during_a_local_export() {
    killed_during_export("local", "exporting to client directory");
}

#[test]
fn daemon_killed_during_a_tar_export() {
    killed_during_export("tar", "exporting to client tarball");
}

/// A relay in front of the private daemon whose connections the test can reset (RST) at
/// once: what a daemon-side reset of the session's connection looks like to the client.
fn resettable_relay(
    socket: PathBuf,
) -> (
    u16,
    tokio::sync::watch::Sender<bool>,
    tokio::runtime::Runtime,
) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (reset_tx, reset_rx) = tokio::sync::watch::channel(false);
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    runtime.spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let socket = socket.clone();
            let mut reset = reset_rx.clone();
            tokio::spawn(async move {
                let Ok(mut daemon) = tokio::net::UnixStream::connect(&socket).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut daemon) => {}
                    _ = reset.wait_for(|r| *r) => {
                        // Linger 0: closing sends RST rather than FIN. (tokio deprecates it
                        // because a non-zero linger blocks on drop; a zero one does not.)
                        #[allow(deprecated)]
                        let _ = inbound.set_linger(Some(Duration::ZERO));
                    }
                }
            });
        }
    });
    (port, reset_tx, runtime)
}

#[test]
fn session_connection_reset_mid_transfer() {
    if !standalone() {
        return;
    }
    let daemon = PrivateDaemon::start();
    let (port, reset, _runtime) = resettable_relay(daemon.socket());
    let dir = tempfile::tempdir().unwrap();
    let ctx = big_context(dir.path(), "FROM scratch\nCOPY . /\n");
    let dest = dir.path().join("out");
    let output = format!("type=local,dest={}", dest.display());
    let mut build = Build::start(
        &format!("tcp://127.0.0.1:{port}"),
        &["--context", ctx.to_str().unwrap(), "--output", &output],
    );
    build.wait_for(|l| l.contains("[internal] load build context"));
    reset.send(true).unwrap();
    let (status, seen) = build.end_within(Duration::from_secs(10));
    let all = seen.join("\n");
    assert_eq!(status.code(), Some(1), "{all}");
    let errors: Vec<&String> = seen
        .iter()
        .filter(|l| l.starts_with("pf-buildkit: "))
        .collect();
    assert_eq!(errors.len(), 1, "one error line expected:\n{all}");
    assert!(
        errors[0].contains("went away") || errors[0].contains("reset"),
        "{}",
        errors[0]
    );
    assert!(!errors[0].contains("not BuildKit"), "{}", errors[0]);
    assert!(!dest.exists());
    assert_no_temp_files(dir.path());
}

#[test]
fn ctrl_c_while_the_daemon_stalls_mid_export() {
    if !standalone() {
        return;
    }
    let daemon = PrivateDaemon::start();
    let dir = tempfile::tempdir().unwrap();
    let ctx = big_context(dir.path(), "FROM scratch\nCOPY . /\n");
    let dest_dir = dir.path().join("dest");
    std::fs::create_dir_all(&dest_dir).unwrap();
    let output = format!("type=local,dest={}", dest_dir.join("out").display());
    let mut build = Build::start(
        &daemon.addr(),
        &["--context", ctx.to_str().unwrap(), "--output", &output],
    );
    build.wait_for(|l| l.contains("exporting to client directory"));
    daemon.signal("-STOP");
    build.interrupt();
    let (status, seen) = build.end_within(Duration::from_secs(2));
    daemon.signal("-CONT");
    assert_eq!(status.code(), Some(130), "{}", seen.join("\n"));
    assert_no_temp_files(&dest_dir);
}
