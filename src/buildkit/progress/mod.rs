//! The status stream of a solve, rendered for people (`tty`, `plain`), scripts (`rawjson`)
//! or not at all (`quiet`), as buildctl's `--progress` modes.
//!
//! Sinks receive each update as a [`SolveStatus`], the crate's own type; the wire's status
//! messages are converted once, in `solve_status`.
//!
//! Border: renders only: it reads the generated status types (in `solve_status` alone) and
//! writes to the writer it is given (the binary picks stderr); it imports nothing else of the
//! crate.

use std::collections::{HashMap, VecDeque};
use std::io::IsTerminal;
use std::time::SystemTime;

mod plain;
mod rawjson;
mod solve_status;
mod trace;
mod tty;

pub use plain::PlainProgress;
pub use rawjson::{RawJsonProgress, warnings_json};
pub(crate) use rawjson::{civil_from_days, rfc3339};
pub use solve_status::{
    ProgressGroup, SolveStatus, SourceInfo, SourcePosition, SourceRange, Vertex, VertexLog,
    VertexStatus, VertexWarning,
};
pub use tty::TtyProgress;

/// Counters of the build context sent to the daemon (this client's side of the transfer).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
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
#[non_exhaustive]
pub struct FailureReport {
    /// What failed, one line: the daemon's gRPC status message (or, for a local failure, what the
    /// connection or store did).
    pub message: String,
    /// The vertex digest (`sha256:…`) of the failed step, from the daemon's error details; `None`
    /// when it named none.
    pub vertex: Option<String>,
    /// The source lines the error points at, one snippet per range the daemon sent.
    pub sources: Vec<SourceSnippet>,
}

/// Lines of a source file (a Dockerfile) around the ones an error or warning points at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SourceSnippet {
    /// The file's name as the daemon gave it (`Dockerfile`).
    pub filename: String,
    /// The first line the ranges point at (1-based): what `Dockerfile:N` names.
    pub line: u32,
    /// The lines shown: number, whether a range covers it, text.
    pub lines: Vec<(u32, bool, String)>,
}

impl SourceSnippet {
    /// The snippet for `ranges` (1-based, inclusive line pairs) of `text`, with context
    /// lines around them as buildctl shows it: four for a single line, two for a range.
    /// `None` when the ranges are empty or outside the text.
    pub fn new(filename: &str, text: &str, ranges: &[(u32, u32)]) -> Option<SourceSnippet> {
        let lines: Vec<&str> = text.split('\n').collect();
        let total = u32::try_from(lines.len()).unwrap_or(u32::MAX);
        let first = ranges.iter().map(|r| r.0).min()?;
        let last = ranges.iter().map(|r| r.1.max(r.0)).max()?;
        if first < 1 || first > total {
            return None;
        }
        let (mut start, mut end) = (first, last.min(total));
        // Context grows one line on each side per round until `pad` lines were counted,
        // each round counting one more (buildctl's rounds, kept so the windows match).
        let pad = if start == end { 4 } else { 2 };
        let mut counted = 0;
        while counted < pad {
            if start > 1 {
                start -= 1;
                counted += 1;
            }
            if end != total {
                end += 1;
                counted += 1;
            }
            counted += 1;
        }
        let covered = |n: u32| ranges.iter().any(|r| r.0 <= n && n <= r.1.max(r.0));
        Some(SourceSnippet {
            filename: filename.to_owned(),
            line: first,
            lines: (start..=end)
                .map(|n| (n, covered(n), lines[n as usize - 1].to_owned()))
                .collect(),
        })
    }

    /// Writes the snippet as buildctl does: `Dockerfile:N`, a rule, ` NNN | >>> line`.
    ///
    /// # Errors
    /// When `out` fails.
    pub fn write(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        writeln!(out, "{}:{}", self.filename, self.line)?;
        writeln!(out, "--------------------")?;
        for (n, marked, text) in &self.lines {
            let mark = if *marked { ">>>" } else { "   " };
            writeln!(out, " {n:>3} | {mark} {text}")?;
        }
        writeln!(out, "--------------------")
    }
}

/// Receives the status stream of a solve. Implement it to render progress your own way.
pub trait ProgressSink: Send {
    /// One status update from the daemon.
    fn update(&mut self, status: &SolveStatus);
    /// Called about every 150 ms while the build runs (for live views).
    fn tick(&mut self) {}
    /// The build ended: the client's transfer counters and, on failure, what failed.
    fn finish(&mut self, transfer: &TransferSummary, failure: Option<&FailureReport>);
}

/// A sink that shows nothing.
#[derive(Debug, Default)]
pub struct QuietProgress;

impl ProgressSink for QuietProgress {
    fn update(&mut self, _status: &SolveStatus) {}
    fn finish(&mut self, _transfer: &TransferSummary, _failure: Option<&FailureReport>) {}
}

/// buildctl's `--progress` modes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
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
    /// No output at all; the build's result and errors still reach the caller.
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
        if let Some(t) = v.started.map(seconds) {
            step.started = Some(step.started.map_or(t, |s| s.min(t)));
        }
        step.completed = v.completed.map(seconds);
        step.cached = v.cached;
        step.error = v.error.clone().unwrap_or_default();
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

/// Seconds since the epoch (negative before it).
pub(crate) fn seconds(t: SystemTime) -> f64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => after.as_secs_f64(),
        Err(before) => -before.duration().as_secs_f64(),
    }
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

/// The end of a failed build's summary, after the failed steps' output: one snippet per
/// source range the daemon sent, then the error.
pub(crate) fn write_failure(
    out: &mut dyn std::io::Write,
    failure: &FailureReport,
) -> std::io::Result<()> {
    for snippet in &failure.sources {
        snippet.write(out)?;
    }
    writeln!(out, "ERROR: failed to solve: {}", failure.message)
}

/// The build's warnings as buildx lists them at the end: ` 2 warnings found:` then
/// ` - <short>` each (`rawjson` and `--metadata-file` carry the detail, link and source).
pub(crate) fn write_warnings(
    out: &mut dyn std::io::Write,
    warnings: &[VertexWarning],
) -> std::io::Result<()> {
    if warnings.is_empty() {
        return Ok(());
    }
    let noun = if warnings.len() == 1 {
        "warning"
    } else {
        "warnings"
    };
    writeln!(out, "\n {} {noun} found:", warnings.len())?;
    for w in warnings {
        writeln!(out, " - {}", w.short_text())?;
    }
    Ok(())
}

/// Bytes as progressui shows statuses (`tonistiigi/units` with `%.2f`): whole bytes below
/// 1000 (`355B`), else two decimals in decimal units (`1.03MB`, `40.96kB`).
pub(crate) fn go_bytes(n: i64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if n.abs() < 1000 {
        return format!("{n}B");
    }
    let mut value = n as f64;
    let mut unit = 0;
    while value.abs() >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.2}{}", UNITS[unit])
}

/// Summary of the context transfer at the end of plain progress, its size in the units of
/// the progress lines above it (`#0 context: sent 10 files, 40.96kB in 12 entries`). The tty
/// view leaves it out: its final view already showed the transfer; rawjson carries the exact
/// counters as JSON.
pub(crate) fn transfer_line(t: &TransferSummary) -> String {
    format!(
        "#0 context: sent {} files, {} in {} entries",
        t.files,
        go_bytes(i64::try_from(t.bytes).unwrap_or(i64::MAX)),
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
    fn go_bytes_like_progressui() {
        assert_eq!(go_bytes(0), "0B");
        assert_eq!(go_bytes(355), "355B");
        assert_eq!(go_bytes(1000), "1.00kB");
        assert_eq!(go_bytes(1_032_192), "1.03MB");
        assert_eq!(go_bytes(40_960), "40.96kB");
    }

    #[test]
    fn snippets_pad_like_buildctl() {
        let text = "l1\nl2\nl3\nl4\nl5\nl6\nl7\n";
        let one = SourceSnippet::new("Dockerfile", text, &[(4, 4)]).unwrap();
        assert_eq!(one.line, 4);
        let numbers: Vec<u32> = one.lines.iter().map(|l| l.0).collect();
        assert_eq!(numbers, vec![2, 3, 4, 5, 6]);
        let mut out = Vec::new();
        one.write(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "Dockerfile:4\n--------------------\n   2 |     l2\n   3 |     l3\n   4 | >>> l4\n   5 |     l5\n   6 |     l6\n--------------------\n"
        );
        // A range: one line of context each side; at the top, more below.
        let range = SourceSnippet::new("Dockerfile", text, &[(2, 3)]).unwrap();
        let numbers: Vec<(u32, bool)> = range.lines.iter().map(|l| (l.0, l.1)).collect();
        assert_eq!(numbers, vec![(1, false), (2, true), (3, true), (4, false)]);
        let top = SourceSnippet::new("Dockerfile", text, &[(1, 1)]).unwrap();
        let numbers: Vec<u32> = top.lines.iter().map(|l| l.0).collect();
        assert_eq!(numbers, vec![1, 2, 3]);
        assert!(SourceSnippet::new("Dockerfile", text, &[(40, 40)]).is_none());
        assert!(SourceSnippet::new("Dockerfile", text, &[]).is_none());
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
