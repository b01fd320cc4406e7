//! One daemon process, owned: started with its output in a log file, waited for until a check
//! says it serves (or it dies, or a deadline passes), and on drop stopped the way `init`
//! would: SIGTERM, a grace period, SIGKILL, reaped. Every component of the environment, shared
//! or private to a test, starts its processes through [`Daemon`].

use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How often readiness checks and exit waits look again.
const POLL: Duration = Duration::from_millis(100);

/// The lines of a daemon's log quoted in a failure.
const LOG_TAIL: usize = 25;

/// How a [`Daemon`] is started.
#[derive(Debug)]
pub struct Launch {
    name: String,
    cmd: Command,
    log: PathBuf,
    grace: Duration,
    die_with_parent: bool,
}

impl Launch {
    /// `program` under the name `name` (used in messages), its stdout and stderr appended to
    /// `log`, stdin closed.
    pub fn new(name: &str, program: impl AsRef<OsStr>, log: &Path) -> Launch {
        Launch {
            name: name.to_owned(),
            cmd: Command::new(program),
            log: log.to_path_buf(),
            grace: Duration::from_secs(10),
            die_with_parent: false,
        }
    }

    /// The command, to add arguments, environment and a working directory.
    pub fn cmd(&mut self) -> &mut Command {
        &mut self.cmd
    }

    /// Adds arguments (a shorthand for `cmd().args(..)`).
    pub fn args<I, S>(mut self, args: I) -> Launch
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd.args(args);
        self
    }

    /// How long the daemon has between SIGTERM and SIGKILL when it is stopped (default 10 s).
    pub fn grace(mut self, grace: Duration) -> Launch {
        self.grace = grace;
        self
    }

    /// The kernel sends the daemon SIGKILL when the THREAD that starts it ends (that is
    /// PR_SET_PDEATHSIG's unit, not the process): a supervisor that starts every daemon from
    /// its main thread and is SIGKILLed leaves no daemon behind. Not for a daemon a test
    /// starts lazily on a thread that ends before the daemon should.
    pub fn die_with_parent(mut self) -> Launch {
        self.die_with_parent = true;
        self
    }

    /// Starts the process (not waiting for it to serve: see [`Daemon::wait_ready`]).
    pub fn start(mut self) -> Result<Daemon> {
        if let Some(parent) = self.log.parent() {
            std::fs::create_dir_all(parent).map_err(Error::file("create", parent))?;
        }
        let log = File::create(&self.log).map_err(Error::file("create", &self.log))?;
        let err = log.try_clone().map_err(Error::file("open", &self.log))?;
        self.cmd.stdin(Stdio::null()).stdout(log).stderr(err);
        let die_with_parent = self.die_with_parent;
        let parent = std::process::id();
        // SAFETY: the closure runs in the child between fork and exec and calls only
        // async-signal-safe functions (sigemptyset, pthread_sigmask, prctl, getppid, _exit)
        // on values it owns.
        unsafe {
            self.cmd.pre_exec(move || {
                // The supervisor blocks the signals it takes synchronously, and a blocked
                // mask survives exec (std does not reset it): a daemon must get its SIGTERM.
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
                if die_with_parent {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
                    // The parent may have died before prctl: then nobody would stop us.
                    if libc::getppid() as u32 != parent {
                        libc::_exit(1);
                    }
                }
                Ok(())
            });
        }
        let child = self.cmd.spawn().map_err(Error::ctx(format!(
            "start {} ({:?})",
            self.name,
            self.cmd.get_program()
        )))?;
        Ok(Daemon {
            name: self.name,
            child: Some(child),
            log: self.log,
            grace: self.grace,
        })
    }
}

/// A running daemon process, stopped and reaped when dropped.
#[derive(Debug)]
pub struct Daemon {
    name: String,
    child: Option<Child>,
    log: PathBuf,
    grace: Duration,
}

impl Daemon {
    /// Its name in messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its process id (0 once stopped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Whether the process still runs (it has not exited).
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Polls `ready` until it says yes. Fails, quoting the log's last lines, when the process
    /// exits first or `timeout` passes; `what` says what was awaited ("answer on …").
    pub fn wait_ready(
        &mut self,
        what: &str,
        timeout: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if ready() {
                return Ok(());
            }
            if !self.running() {
                return Err(self.failure(&format!("exited before {what}")));
            }
            if Instant::now() >= deadline {
                return Err(self.failure(&format!("no {what} after {}s", timeout.as_secs())));
            }
            std::thread::sleep(POLL);
        }
    }

    /// An error naming the daemon, `problem`, and the last lines of its log.
    pub fn failure(&self, problem: &str) -> Error {
        Error::msg(format!(
            "{} {problem} (log {}):\n{}",
            self.name,
            self.log.display(),
            log_tail(&self.log)
        ))
    }

    /// Sends `signal` to the process (while it runs).
    pub fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            signal_pid(child.id(), signal);
        }
    }

    /// SIGTERM, up to the grace period to exit, then SIGKILL; reaped either way. Idempotent.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        signal_pid(child.id(), libc::SIGTERM);
        if !wait_exit(&mut child, self.grace) {
            let _ = child.kill();
        }
        let _ = child.wait();
    }

    /// SIGKILL and reap, no grace (a test's crash).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits up to `grace` for `child` to exit; whether it did.
fn wait_exit(child: &mut Child, grace: Duration) -> bool {
    let deadline = Instant::now() + grace;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return true,
            Ok(None) if Instant::now() >= deadline => return false,
            Ok(None) => std::thread::sleep(POLL),
        }
    }
}

/// kill(2), ignoring a process that is already gone.
pub fn signal_pid(pid: u32, signal: i32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    if pid > 0 {
        // SAFETY: kill(2) has no memory effects; a vanished pid only gives ESRCH.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// Whether process `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses and may hold anything.
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    !matches!(state, None | Some('Z' | 'X'))
}

/// Polls until process `pid` is gone (or a zombie), up to `timeout`; whether it went.
pub fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
    true
}

/// The last lines of a log file (25 of them).
pub fn log_tail(log: &Path) -> String {
    let Ok(file) = File::open(log) else {
        return String::from("(no log)");
    };
    let mut tail = std::collections::VecDeque::with_capacity(LOG_TAIL);
    for line in BufReader::new(file).lines().map_while(|l| l.ok()) {
        if tail.len() == LOG_TAIL {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    Vec::from(tail).join("\n")
}

/// Polls `check` every 100 ms until it holds or `timeout` passes; whether it held.
pub fn poll_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// Signals tests send to their daemons (a frozen daemon: SIGSTOP, then SIGCONT).
pub use libc::{SIGCONT, SIGKILL, SIGSTOP, SIGTERM};
