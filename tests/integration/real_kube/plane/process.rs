//! One daemon of the control plane: started with its output in a log file, polled until it
//! is ready (failing early when it exits), killed and reaped when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::error::{Error, Result};

/// How often readiness is polled.
const POLL: Duration = Duration::from_millis(200);
/// The lines of a log a failure quotes.
const LOG_TAIL: usize = 10;

/// A running daemon; dropping it kills and reaps it.
pub struct Daemon {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Daemon {
    /// Starts `program args…` with stdin closed and stdout and stderr appended to `log`.
    pub fn spawn(name: &str, program: &Path, args: &[String], log: &Path) -> Result<Daemon> {
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .map_err(|e| Error::msg(format!("open {}: {e}", log.display())))
        };
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(open()?)
            .stderr(open()?)
            .spawn()
            .map_err(|e| Error::msg(format!("start {name} ({}): {e}", program.display())))?;
        Ok(Daemon {
            name: name.to_owned(),
            child,
            log: log.to_path_buf(),
        })
    }

    /// Polls `ready` until it holds; fails when the daemon exits first or `timeout` passes,
    /// quoting the end of its log.
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
            let failure = match self.child.try_wait() {
                Ok(Some(status)) => format!("exited ({status}) before {what}"),
                Err(e) => format!("cannot be waited for ({e}) before {what}"),
                Ok(None) if Instant::now() >= deadline => {
                    format!("gave no {what} within {timeout:?}")
                }
                Ok(None) => {
                    std::thread::sleep(POLL);
                    continue;
                }
            };
            return Err(Error::msg(format!(
                "{} {failure}; the end of {}:\n{}",
                self.name,
                self.log.display(),
                log_tail(&self.log)
            )));
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL)..].join("\n")
}
