//! The status stream of a solve, rendered for people (`tty`, `plain`), scripts (`rawjson`)
//! or not at all (`quiet`), as buildctl's `--progress` modes.

use std::collections::{HashMap, VecDeque};
use std::io::IsTerminal;

use crate::buildkit::proto::control::{StatusResponse, Vertex};

mod plain;
mod rawjson;
mod tty;

pub use plain::PlainProgress;
pub use rawjson::RawJsonProgress;
pub use tty::TtyProgress;

/// How many log lines of a failed step are shown.
const ERROR_LOG_LINES: usize = 10;

/// Counters of the build context sent to the daemon (this client's side of the transfer).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TransferSummary {
    /// Entries (files, directories, links) described to the daemon.
    pub entries: u64,
    /// Files whose content was sent.
    pub files: u64,
    /// Bytes of file content sent.
    pub bytes: u64,
}

/// Why a solve failed, as far as the renderers need it.
#[derive(Debug, Clone, Default)]
pub struct FailureReport {
    /// The daemon's message.
    pub message: String,
    /// The digest of the failed step, when the daemon said.
    pub vertex: Option<String>,
    /// The Dockerfile lines the error points at: `(file name, [(line number, text)])`.
    pub source: Option<(String, Vec<(u32, String)>)>,
}

/// Receives the status stream of a solve. Implement it to render progress your own way.
pub trait ProgressSink: Send {
    /// One status update from the daemon.
    fn update(&mut self, status: &StatusResponse);
    /// Called about every 150 ms while the build runs (for live views).
    fn tick(&mut self) {}
    /// The build ended: the client's transfer counters and, on failure, what failed.
    fn finish(&mut self, transfer: &TransferSummary, failure: Option<&FailureReport>);
}

/// A sink that shows nothing.
#[derive(Debug, Default)]
pub struct QuietProgress;

impl ProgressSink for QuietProgress {
    fn update(&mut self, _status: &StatusResponse) {}
    fn finish(&mut self, _transfer: &TransferSummary, _failure: Option<&FailureReport>) {}
}

/// buildctl's `--progress` modes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ProgressMode {
    /// `tty` when stderr is a terminal, else `plain`.
    #[default]
    Auto,
    /// A live view of running steps.
    Tty,
    /// Line-oriented text, as buildkit's plain mode.
    Plain,
    /// One JSON status object per line.
    RawJson,
    /// Nothing.
    Quiet,
}

impl ProgressMode {
    /// A sink for this mode writing to stderr.
    pub fn stderr_sink(self) -> Box<dyn ProgressSink> {
        match self {
            ProgressMode::Auto if std::io::stderr().is_terminal() => {
                Box::new(TtyProgress::new(std::io::stderr()))
            }
            ProgressMode::Auto | ProgressMode::Plain => {
                Box::new(PlainProgress::new(std::io::stderr()))
            }
            ProgressMode::Tty => Box::new(TtyProgress::new(std::io::stderr())),
            ProgressMode::RawJson => Box::new(RawJsonProgress::new(std::io::stderr())),
            ProgressMode::Quiet => Box::new(QuietProgress),
        }
    }
}

/// What the renderers remember about one step.
#[derive(Debug, Clone, Default)]
pub(crate) struct Step {
    pub index: usize,
    pub name: String,
    pub started: Option<f64>,
    pub completed: Option<f64>,
    pub cached: bool,
    pub error: String,
    pub partial: Vec<u8>,
    pub lines: VecDeque<String>,
}

/// The steps seen so far, in first-seen order, with their last log lines.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub steps: Vec<Step>,
    by_digest: HashMap<String, usize>,
}

impl State {
    /// Applies a vertex snapshot; returns its index.
    pub fn vertex(&mut self, v: &Vertex) -> usize {
        let i = self.index(&v.digest);
        let step = &mut self.steps[i];
        step.name.clone_from(&v.name);
        // A later "unstarted" copy must not reset a started step.
        if let Some(t) = v.started.as_ref().map(seconds) {
            step.started = Some(step.started.map_or(t, |s| s.min(t)));
        }
        step.completed = v.completed.as_ref().map(seconds);
        step.cached = v.cached;
        step.error.clone_from(&v.error);
        i
    }

    /// The index of a digest, creating the step when first seen.
    pub fn index(&mut self, digest: &str) -> usize {
        if let Some(i) = self.by_digest.get(digest) {
            return *i;
        }
        let i = self.steps.len();
        self.steps.push(Step {
            index: i + 1,
            ..Step::default()
        });
        self.by_digest.insert(digest.to_owned(), i);
        i
    }

    /// Appends log bytes to a step; returns the complete lines they finished.
    pub fn log(&mut self, digest: &str, data: &[u8], keep: usize) -> (usize, Vec<String>) {
        let i = self.index(digest);
        let step = &mut self.steps[i];
        step.partial.extend_from_slice(data);
        let mut lines = Vec::new();
        while let Some(pos) = step.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = step.partial.drain(..=pos).collect();
            let text = String::from_utf8_lossy(&line[..line.len() - 1])
                .trim_end_matches('\r')
                .to_owned();
            // Progress bars redraw with \r: keep what was drawn last.
            let text = text.rsplit('\r').next().unwrap_or_default().to_owned();
            step.lines.push_back(text.clone());
            while step.lines.len() > keep {
                step.lines.pop_front();
            }
            lines.push(text);
        }
        (i, lines)
    }

    /// The step a failure points at: the named digest, else the last step with an error.
    pub fn failed_step(&self, failure: &FailureReport) -> Option<&Step> {
        failure
            .vertex
            .as_ref()
            .and_then(|d| self.by_digest.get(d))
            .map(|i| &self.steps[*i])
            .or_else(|| self.steps.iter().rev().find(|s| !s.error.is_empty()))
    }
}

/// Seconds since the epoch of a protobuf timestamp.
pub(crate) fn seconds(t: &prost_types::Timestamp) -> f64 {
    t.seconds as f64 + f64::from(t.nanos) / 1e9
}

/// Bytes as buildkit shows them (decimal units, up to 4 significant digits): `40.96kB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    let digits = if value >= 100.0 {
        1
    } else if value >= 10.0 {
        2
    } else {
        3
    };
    let text = format!("{value:.digits$}");
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    };
    format!("{text}{}", UNITS[unit])
}

/// The error summary shared by the text renderers: the failed step's last output and the
/// Dockerfile lines the error points at.
pub(crate) fn write_failure(
    out: &mut dyn std::io::Write,
    state: &State,
    failure: &FailureReport,
) -> std::io::Result<()> {
    if let Some(step) = state.failed_step(failure).filter(|s| !s.lines.is_empty()) {
        writeln!(out, "------")?;
        writeln!(out, " > {}:", step.name)?;
        for line in &step.lines {
            writeln!(out, "{line}")?;
        }
        writeln!(out, "------")?;
    }
    if let Some((file, lines)) = &failure.source {
        writeln!(out, " {file}:")?;
        for (number, text) in lines {
            writeln!(out, " {number:>4} | {text}")?;
        }
        writeln!(out, "--------------------")?;
    }
    writeln!(out, "ERROR: {}", failure.message)
}

/// Summary of the context transfer, the line tests and people read.
pub(crate) fn transfer_line(t: &TransferSummary) -> String {
    format!(
        "#0 context: sent {} files, {} ({} bytes) in {} entries",
        t.files,
        human_bytes(t.bytes),
        t.bytes,
        t.entries
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_like_buildkit() {
        assert_eq!(human_bytes(0), "0B");
        assert_eq!(human_bytes(999), "999B");
        assert_eq!(human_bytes(40960), "40.96kB");
        assert_eq!(human_bytes(1_000_000), "1MB");
        assert_eq!(human_bytes(67_108_864), "67.11MB");
    }

    #[test]
    fn logs_split_lines_and_keep_the_last_ones() {
        let mut state = State::default();
        let (_, lines) = state.log("d", b"a\nb", 2);
        assert_eq!(lines, vec!["a"]);
        let (_, lines) = state.log("d", b"c\n10%\r100%\nz\n", 2);
        assert_eq!(lines, vec!["bc", "100%", "z"]);
        assert_eq!(state.steps[0].lines, vec!["100%", "z"]);
    }
}
