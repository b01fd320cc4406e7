//! A live terminal view, like buildx's: a header with the elapsed time and steps done, one
//! line per step with its time or `CACHED`, and the last lines of output of running steps.
//!
//! The view fits the terminal: lines are cut to its width and, while the build runs, the
//! view keeps to its height by dropping the oldest finished steps first. The size is read
//! again before every redraw, and the previous frame is erased by the rows it takes at the
//! current width, so a resized terminal is redrawn cleanly. The last frame shows every step
//! and stays on screen.

use std::io::Write;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::{
    FailureReport, ProgressSink, SolveStatus, State, TransferSummary, VertexWarning, write_failure,
};

/// Lines of output shown under a running step (progressui's default).
const LOG_LINES: usize = 6;
/// Lines of a step kept for the error summary.
const KEPT_LINES: usize = 10;

/// Live progress on a terminal.
pub struct TtyProgress<W: Write + Send> {
    out: W,
    state: State,
    start: Instant,
    /// Visible widths of the lines of the frame on screen.
    drawn: Vec<usize>,
    last_draw: Option<Instant>,
    warnings: Vec<VertexWarning>,
}

/// The terminal's size as (columns, rows): stderr's, else `COLUMNS`/`LINES`, else 80×24.
fn terminal_size() -> (usize, usize) {
    if let Ok(size) = rustix::termios::tcgetwinsize(std::io::stderr())
        && size.ws_col > 0
        && size.ws_row > 0
    {
        return (usize::from(size.ws_col), usize::from(size.ws_row));
    }
    let var = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
            .unwrap_or(default)
    };
    (var("COLUMNS", 80), var("LINES", 24))
}

/// One step's lines in the view.
struct Row {
    lines: Vec<String>,
    finished: bool,
}

impl<W: Write + Send> TtyProgress<W> {
    /// Renders to `out`, which should be the terminal on stderr (whose size it reads).
    pub fn new(out: W) -> Self {
        TtyProgress {
            out,
            state: State::default(),
            start: Instant::now(),
            drawn: Vec::new(),
            last_draw: None,
            warnings: Vec::new(),
        }
    }

    fn rows(&self, width: usize, finished: bool) -> (String, Vec<Row>) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let mut visible: Vec<_> = self
            .state
            .steps
            .iter()
            .filter(|s| s.started.is_some() || s.cached)
            .collect();
        // In the order the steps started, as buildx shows them.
        visible.sort_by(|a, b| {
            a.started
                .unwrap_or(f64::MAX)
                .total_cmp(&b.started.unwrap_or(f64::MAX))
                .then(a.index.cmp(&b.index))
        });
        let done = visible.iter().filter(|s| s.completed.is_some()).count();
        let status = if finished && done == visible.len() && done > 0 {
            " FINISHED"
        } else {
            ""
        };
        let header = fit(
            &format!(
                "[+] Building {:.1}s ({done}/{}){status}",
                self.start.elapsed().as_secs_f64(),
                visible.len()
            ),
            width,
        );
        let mut rows = Vec::new();
        for step in visible {
            let prefix = if step.cached {
                "CACHED "
            } else if step.error.ends_with("context canceled") {
                "CANCELED "
            } else if !step.error.is_empty() {
                "ERROR "
            } else {
                ""
            };
            let end = step.completed.unwrap_or(now);
            let took = step.started.map_or(0.0, |s| (end - s).max(0.0));
            let time = format!(" {took:.1}s");
            let room = width.saturating_sub(time.len() + 1);
            let name = fit(&format!(" => {prefix}{}", step.name), room);
            let pad = room.saturating_sub(name.chars().count());
            let mut lines = vec![format!("{name}{}{time}", " ".repeat(pad))];
            let running = step.completed.is_none();
            if running && !finished {
                let skip = step.lines.len().saturating_sub(LOG_LINES);
                for line in step.lines.iter().skip(skip) {
                    let line = fit(&format!(" => => # {line}"), width.saturating_sub(1));
                    lines.push(format!("\x1b[2m{line}\x1b[0m"));
                }
            }
            rows.push(Row {
                lines,
                finished: !running,
            });
        }
        (header, rows)
    }

    fn draw(&mut self, finished: bool) {
        let (width, height) = terminal_size();
        let (header, mut rows) = self.rows(width, finished);
        if !finished {
            // Keep to the terminal's height: finished steps go first, oldest first, then
            // whatever is oldest.
            let room = height.saturating_sub(2).max(1);
            let mut used: usize = rows.iter().map(|r| r.lines.len()).sum();
            while used > room && !rows.is_empty() {
                let at = rows.iter().position(|r| r.finished).unwrap_or(0);
                used -= rows.remove(at).lines.len();
            }
        }
        let lines: Vec<String> = std::iter::once(header)
            .chain(rows.into_iter().flat_map(|r| r.lines))
            .collect();

        let mut buf = String::from("\x1b[?25l");
        // Back to the top of the previous frame, counting the rows its lines take at the
        // current width (more than one each when the terminal got narrower).
        let up: usize = self
            .drawn
            .iter()
            .map(|w| w.max(&1).div_ceil(width.max(1)))
            .sum();
        if up > 0 {
            buf.push_str(&format!("\x1b[{up}A"));
        }
        buf.push_str("\r\x1b[J");
        for line in &lines {
            buf.push_str("\x1b[2K");
            buf.push_str(line);
            buf.push('\n');
        }
        buf.push_str("\x1b[?25h");
        self.drawn = lines.iter().map(|l| visible_width(l)).collect();
        let _ = self.out.write_all(buf.as_bytes());
        let _ = self.out.flush();
        self.last_draw = Some(Instant::now());
    }
}

/// Cuts `text` to `width` characters.
fn fit(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    text.chars().take(width).collect()
}

/// Characters a line shows (escape sequences take none).
fn visible_width(line: &str) -> usize {
    let mut n = 0;
    let mut in_escape = false;
    for c in line.chars() {
        match (in_escape, c) {
            (false, '\x1b') => in_escape = true,
            (true, c) if c.is_ascii_alphabetic() => in_escape = false,
            (true, _) => {}
            (false, _) => n += 1,
        }
    }
    n
}

impl<W: Write + Send> ProgressSink for TtyProgress<W> {
    fn update(&mut self, status: &SolveStatus) {
        for v in &status.vertexes {
            self.state.vertex(v);
        }
        for log in &status.logs {
            self.state.log(&log.vertex, &log.data, KEPT_LINES);
        }
        self.warnings.extend(status.warnings.iter().cloned());
        if self
            .last_draw
            .is_none_or(|t| t.elapsed().as_millis() >= 100)
        {
            self.draw(false);
        }
    }

    fn tick(&mut self) {
        self.draw(false);
    }

    fn finish(&mut self, _transfer: &TransferSummary, failure: Option<&FailureReport>) {
        self.draw(true);
        let _ = super::write_warnings(&mut self.out, &self.warnings);
        if let Some(failure) = failure {
            if let Some(step) = self.state.failed_step(failure) {
                let _ = writeln!(self.out, "------\n > {}:", step.name);
                for line in &step.lines {
                    let _ = writeln!(self.out, "{line}");
                }
                let _ = writeln!(self.out, "------");
            }
            let _ = write_failure(&mut self.out, failure);
        }
        let _ = self.out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_final_view_has_no_plain_transfer_line() {
        let mut out = Vec::new();
        let mut progress = TtyProgress::new(&mut out);
        let sent = TransferSummary {
            entries: 3,
            files: 2,
            bytes: 2048,
        };
        progress.finish(&sent, None);
        drop(progress);
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("context: sent"), "{text}");
    }

    #[test]
    fn widths_ignore_escapes_and_lines_are_cut() {
        assert_eq!(visible_width("\x1b[2m => => # hi\x1b[0m"), 11);
        assert_eq!(fit("abcdef", 4), "abcd");
        assert_eq!(fit("ab", 4), "ab");
    }
}
