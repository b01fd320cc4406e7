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

use crate::sandbox::Buildkitd;
use crate::util::{self, Tier};

/// How long a start or a progress event may take before the test gives up.
const EVENT_TIMEOUT: Duration = Duration::from_secs(120);

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

/// The build ended with exit 1 and exactly one error line; returns it.
fn the_error_line(status: ExitStatus, seen: &[String]) -> &String {
    let all = seen.join("\n");
    assert_eq!(status.code(), Some(1), "{all}");
    let errors: Vec<&String> = seen
        .iter()
        .filter(|l| l.starts_with("pf-buildkit: "))
        .collect();
    assert_eq!(errors.len(), 1, "one error line expected:\n{all}");
    errors[0]
}

/// The build ended with exit 1 and one error line saying the daemon went away.
fn assert_went_away(status: ExitStatus, seen: &[String]) {
    let error = the_error_line(status, seen);
    assert!(error.contains("went away"), "{error}");
    // Where the progress names the session's end, it says what happened, not only that the
    // session's connection failed.
    for line in seen.iter().filter(|l| l.contains("(session: ")) {
        assert!(line.contains("(session: the daemon went away"), "{line}");
    }
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
fn assert_next_build_works(daemon: &mut Buildkitd, dir: &Path) {
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
    let mut daemon = Buildkitd::start();
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
    let mut daemon = Buildkitd::start();
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
    let mut daemon = Buildkitd::start();
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
    let daemon = Buildkitd::start();
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
    let error = the_error_line(status, &seen);
    assert!(
        error.contains("went away") || error.contains("reset"),
        "{error}"
    );
    assert!(!error.contains("not BuildKit"), "{error}");
    assert!(!dest.exists());
    assert_no_temp_files(dir.path());
}

#[test]
fn ctrl_c_while_the_daemon_stalls_mid_export() {
    if !standalone() {
        return;
    }
    let daemon = Buildkitd::start();
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
    daemon.pause(true);
    build.interrupt();
    let (status, seen) = build.end_within(Duration::from_secs(2));
    daemon.pause(false);
    assert_eq!(status.code(), Some(130), "{}", seen.join("\n"));
    assert_no_temp_files(&dest_dir);
}
