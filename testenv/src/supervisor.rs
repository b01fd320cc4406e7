//! The supervisor: one detached process per environment folder that owns every shared
//! component as its child, writes the env file once all are ready, and drops them all on
//! SIGTERM, SIGINT or SIGHUP, or when one of them dies. Its children get
//! PR_SET_PDEATHSIG(SIGKILL), so even a SIGKILLed supervisor leaves no daemon; what such a
//! run leaves in the folder (containers, shims, mounts) is cleaned at the next start.
//!
//! Files in the folder: `supervisor.lock` (flock: one `start` or `stop` at a time, across
//! processes), `supervisor.pid`, `testenv.env` (written when ready, removed on the way
//! down), `supervisor.failed` (why the last start failed), `processes` (name and pid of each
//! daemon) and `logs/`.

use std::fs::File;
use std::io::Write as _;
use std::os::fd::AsRawFd as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::environment::Environment;
use crate::error::{Error, Result};
use crate::leftovers;
use crate::process;
use crate::settings::Settings;

/// The argument that makes the binary the supervisor.
pub const SUPERVISE: &str = "supervise";

/// The longest a start may take, whatever the daemons' own deadlines (never hang forever).
const START_LIMIT: Duration = Duration::from_secs(30 * 60);

/// How long the supervisor may take to drop everything: the Engine alone may take 30 s to
/// stop its containers, then containerd 15 s, buildkitd 15 s, … and removing the daemons'
/// folders (snapshots of every build the suite ran) took 90 s each on a busy machine's disk.
/// Past this, it is killed: its daemons die with it and `clean` removes what is left.
const STOP_LIMIT: Duration = Duration::from_secs(600);

/// The supervisor's files in an environment folder.
#[derive(Debug, Clone)]
pub struct Files {
    dir: PathBuf,
}

impl Files {
    /// The files of the environment in `dir`.
    pub fn new(dir: &Path) -> Files {
        Files {
            dir: dir.to_path_buf(),
        }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
    /// The env file (present only while everything runs).
    pub fn env(&self) -> PathBuf {
        self.path("testenv.env")
    }
    fn pid(&self) -> PathBuf {
        self.path("supervisor.pid")
    }
    fn failed(&self) -> PathBuf {
        self.path("supervisor.failed")
    }
    fn processes(&self) -> PathBuf {
        self.path("processes")
    }
    fn log(&self) -> PathBuf {
        self.path("logs/supervisor.log")
    }

    /// The running supervisor's pid, if one runs for this folder.
    pub fn supervisor(&self) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.pid())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let ours = String::from_utf8_lossy(&cmdline).contains(SUPERVISE);
        (ours && process::alive(pid)).then_some(pid)
    }

    /// The env lines, if the environment runs.
    pub fn running_env(&self) -> Option<String> {
        self.supervisor()?;
        std::fs::read_to_string(self.env()).ok()
    }

    /// Each daemon's name and whether it runs, as the supervisor recorded them.
    pub fn status(&self) -> Vec<(String, Option<u32>)> {
        let text = std::fs::read_to_string(self.processes()).unwrap_or_default();
        text.lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(name, pid)| {
                let pid = pid.parse().ok().filter(|p| process::alive(*p));
                (name.to_owned(), pid)
            })
            .collect()
    }
}

/// An exclusive flock on the folder's `supervisor.lock`, held until dropped (the kernel
/// drops it with the process, however it ends).
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

impl Lock {
    /// Waits for the lock.
    pub fn take(dir: &Path) -> Result<Lock> {
        std::fs::create_dir_all(dir).map_err(Error::file("create", dir))?;
        let path = dir.join("supervisor.lock");
        let file = File::create(&path).map_err(Error::file("create", &path))?;
        // SAFETY: flock on a descriptor this function owns.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(Error::file("lock", &path)(std::io::Error::last_os_error()));
        }
        Ok(Lock { _file: file })
    }
}

/// `start`: the env lines of a running environment with these settings, or of one started
/// now (a detached supervisor, waited for until it is ready or has failed).
pub fn start(settings: &Settings, exe: &Path) -> Result<String> {
    let files = Files::new(&settings.dir);
    let _lock = Lock::take(&settings.dir)?;
    let with_buildkitd = settings.buildkitd_binary().is_some();
    let want = settings.env_lines(with_buildkitd, settings.kube_binaries().is_some());
    if let Some(pid) = files.supervisor() {
        match std::fs::read_to_string(files.env()) {
            Ok(env) if env == want => return Ok(env),
            _ => {
                return Err(Error::msg(format!(
                    "the test environment in {} (supervisor pid {pid}) runs with other settings or is not ready; run 'scripts/testenv stop' first",
                    settings.dir.display()
                )));
            }
        }
    }
    if let Some(name) = legacy_daemon(&settings.dir) {
        return Err(Error::msg(format!(
            "{name} started by an older scripts/testenv runs in {}; stop it with that version's 'scripts/testenv stop' or set PF_TESTENV_DIR",
            settings.dir.display()
        )));
    }
    clean(settings);
    for f in [files.env(), files.failed(), files.processes(), files.pid()] {
        let _ = std::fs::remove_file(f);
    }
    let log_path = files.log();
    if let Some(parent) = log_path.parent() {
        std::fs::create_dir_all(parent).map_err(Error::file("create", parent))?;
    }
    let log = File::create(&log_path).map_err(Error::file("create", &log_path))?;
    let err = log.try_clone().map_err(Error::file("open", &log_path))?;
    let mut cmd = Command::new(exe);
    cmd.arg(SUPERVISE)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err);
    // SAFETY: between fork and exec only async-signal-safe calls: setsid (a session of its
    // own: no terminal's Ctrl-C reaches it, it outlives this command) and close_range (it
    // must not hold a caller's lock files, such as the script's, for its whole life).
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(Error::ctx(format!(
        "start the supervisor {}",
        exe.display()
    )))?;
    let pid = child.id();
    std::fs::write(files.pid(), format!("{pid}\n")).map_err(Error::file("write", &files.pid()))?;
    // Not waited for: it lives on; once this command exits, init reaps it.
    drop(child);
    // Ctrl-C or SIGTERM while waiting stops the half-started environment too: a start that
    // was given up leaves nothing running.
    let signals = Signals::block();
    let deadline = Instant::now() + START_LIMIT;
    loop {
        if let Ok(env) = std::fs::read_to_string(files.env()) {
            return Ok(env);
        }
        if !process::alive(pid) {
            let why = std::fs::read_to_string(files.failed()).unwrap_or_else(|_| {
                format!(
                    "the supervisor exited (log {}):\n{}",
                    log_path.display(),
                    process::log_tail(&log_path)
                )
            });
            return Err(Error::msg(why.trim_end().to_owned()));
        }
        let why = match signals.wait(Duration::from_millis(100)) {
            Some(signal) => format!("interrupted by signal {signal}"),
            None if Instant::now() >= deadline => format!(
                "not ready after {}s (log {})",
                START_LIMIT.as_secs(),
                log_path.display()
            ),
            None => continue,
        };
        process::signal_pid(pid, libc::SIGTERM);
        if !process::wait_gone(pid, STOP_LIMIT) {
            process::signal_pid(pid, libc::SIGKILL);
        }
        return Err(Error::msg(format!(
            "{why}; the half-started environment was stopped"
        )));
    }
}

/// `stop`: signals the supervisor, waits until it has dropped everything, then removes what
/// a killed run may have left. Idempotent.
pub fn stop(settings: &Settings) -> Result<()> {
    if !settings.dir.is_dir() {
        return Ok(());
    }
    let files = Files::new(&settings.dir);
    let _lock = Lock::take(&settings.dir)?;
    if let Some(pid) = files.supervisor() {
        eprintln!("testenv: stopping the supervisor (pid {pid})");
        process::signal_pid(pid, libc::SIGTERM);
        let log = files.log();
        let gone = process::wait_gone(pid, Duration::from_secs(15))
            || {
                eprintln!(
                    "testenv: the supervisor is still stopping its daemons and removing their folders (log {})",
                    log.display()
                );
                process::wait_gone(pid, STOP_LIMIT)
            };
        if !gone {
            eprintln!(
                "testenv: the supervisor did not stop in {}s; killing it",
                STOP_LIMIT.as_secs()
            );
            process::signal_pid(pid, libc::SIGKILL);
            process::wait_gone(pid, Duration::from_secs(10));
        }
    }
    clean(settings);
    for f in [files.env(), files.pid(), files.processes()] {
        let _ = std::fs::remove_file(f);
    }
    Ok(())
}

/// A daemon the bash-only `scripts/testenv` of before started (its PID files): never
/// cleaned away from under the tests that use it.
fn legacy_daemon(dir: &Path) -> Option<&'static str> {
    ["containerd", "dockerd", "registry", "buildkitd", "moto"]
        .into_iter()
        .find(|name| {
            std::fs::read_to_string(dir.join("pids").join(format!("{name}.pid")))
                .ok()
                .and_then(|p| p.trim().parse().ok())
                .is_some_and(process::alive)
        })
}

/// Removes what a killed supervisor's run left in the folder: processes naming it
/// (daemons, a test's private buildkitds), runc containers, shims and mounts.
fn clean(settings: &Settings) {
    let killed = leftovers::kill_processes_naming(&settings.dir);
    if killed > 0 {
        eprintln!(
            "testenv: killed {killed} leftover processes of {}",
            settings.dir.display()
        );
    }
    leftovers::buildkit_leftovers(&settings.buildkit_dir().join("root"));
    for private in std::fs::read_dir(settings.buildkit_private_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        leftovers::buildkit_leftovers(&private.path().join("root"));
    }
    crate::engine::cleanup(&settings.dir);
    leftovers::unmount_under(&settings.dir);
}

/// The supervisor's life: start everything, write the env file, wait for a signal or a
/// dying daemon, drop everything. Run on the process's main thread, before any other thread
/// exists (the signal mask is per thread, and PR_SET_PDEATHSIG follows the spawning thread).
pub fn supervise(settings: &Settings) -> Result<()> {
    let files = Files::new(&settings.dir);
    let signals = Signals::block();
    let result = Environment::start(settings, &mut || signals.pending());
    let mut environment = match result {
        Ok(e) => e,
        Err(e) => {
            let _ = std::fs::write(files.failed(), format!("{e}\n"));
            return Err(e);
        }
    };
    let mut listing = String::new();
    for (name, pid) in environment.processes() {
        listing.push_str(&format!("{name} {pid}\n"));
    }
    write_atomic(&files.processes(), &listing)?;
    let env = settings.env_lines(environment.has_buildkitd(), environment.has_kube());
    write_atomic(&files.env(), &env)?;
    eprintln!("testenv: ready");
    let outcome = loop {
        if let Some(signal) = signals.wait(Duration::from_secs(1)) {
            eprintln!("testenv: signal {signal}: stopping");
            break Ok(());
        }
        if let Some(e) = environment.exited() {
            eprintln!("testenv: {e}");
            let _ = std::fs::write(files.failed(), format!("{e}\n"));
            break Err(e);
        }
    };
    let _ = std::fs::remove_file(files.env());
    environment.shutdown();
    // Private daemons and control planes tests started under the folder and did not stop.
    leftovers::kill_processes_naming(&settings.buildkit_private_dir());
    leftovers::kill_processes_naming(&settings.kube_private_dir());
    // A test's own kubelet handlers name the tier's credentials, not a private folder.
    leftovers::kill_processes_naming(&settings.kube_dir());
    eprintln!("testenv: stopped");
    outcome
}

fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(Error::file("create", &tmp))?;
    f.write_all(text.as_bytes())
        .map_err(Error::file("write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(Error::file("rename", path))
}

/// SIGTERM, SIGINT and SIGHUP, blocked on this thread and taken synchronously: no handler
/// runs at an arbitrary moment, and children start with an empty mask (std resets it).
struct Signals(libc::sigset_t);

impl Signals {
    fn block() -> Signals {
        // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
                libc::sigaddset(&mut set, s);
            }
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            Signals(set)
        }
    }

    /// The next of the signals, waiting up to `timeout`.
    fn wait(&self, timeout: Duration) -> Option<i32> {
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
        };
        // SAFETY: the set was initialised in `block`; no siginfo is asked for.
        let s = unsafe { libc::sigtimedwait(&self.0, std::ptr::null_mut(), &ts) };
        (s > 0).then_some(s)
    }

    /// Whether one of the signals has arrived (taken if so).
    fn pending(&self) -> bool {
        self.wait(Duration::ZERO).is_some()
    }
}
