//! A live terminal view, like buildx's: a header with the elapsed time and steps done, one
//! line per step with its time or `CACHED`, and the last lines of output of running steps.
//! Redrawn in place with ANSI cursor movement.

use std::io::Write;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::{
    ERROR_LOG_LINES, FailureReport, ProgressSink, State, TransferSummary, transfer_line,
    write_failure,
};
use crate::buildkit::proto::control::StatusResponse;

/// Lines of output shown under a running step.
const LOG_LINES: usize = 6;

/// Live progress on a terminal.
pub struct TtyProgress<W: Write + Send> {
    out: W,
    state: State,
    start: Instant,
    drawn: usize,
    last_draw: Option<Instant>,
    width: usize,
}

impl<W: Write + Send> TtyProgress<W> {
    /// Renders to `out`, which should be a terminal.
    pub fn new(out: W) -> Self {
        let width = std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(100);
        TtyProgress {
            out,
            state: State::default(),
            start: Instant::now(),
            drawn: 0,
            last_draw: None,
            width,
        }
    }

    fn lines(&self, finished: bool) -> Vec<String> {
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
        let phase = if finished { "Finished" } else { "Building" };
        let mut lines = vec![format!(
            "[+] {phase} {:.1}s ({done}/{})",
            self.start.elapsed().as_secs_f64(),
            visible.len()
        )];
        for step in visible {
            let (prefix, time) = if step.cached {
                ("CACHED ", String::new())
            } else if !step.error.is_empty() {
                ("ERROR ", String::new())
            } else {
                let end = step.completed.unwrap_or(now);
                let took = step.started.map_or(0.0, |s| (end - s).max(0.0));
                ("", format!("{took:.1}s"))
            };
            let mut text = format!(" => {prefix}{}", step.name);
            let room = self.width.saturating_sub(time.len() + 2);
            if text.chars().count() > room {
                text = text
                    .chars()
                    .take(room.saturating_sub(1))
                    .collect::<String>()
                    + "…";
            }
            let pad = room.saturating_sub(text.chars().count());
            lines.push(format!("{text}{}{time}", " ".repeat(pad + 1)));
            if step.completed.is_none() && !finished {
                let skip = step.lines.len().saturating_sub(LOG_LINES);
                for line in step.lines.iter().skip(skip) {
                    let line: String = line.chars().take(self.width.saturating_sub(8)).collect();
                    lines.push(format!("\x1b[2m => => # {line}\x1b[0m"));
                }
            }
        }
        lines
    }

    fn draw(&mut self, finished: bool) {
        let lines = self.lines(finished);
        let mut buf = String::new();
        if self.drawn > 0 {
            buf.push_str(&format!("\x1b[{}A", self.drawn));
        }
        for line in &lines {
            buf.push_str("\x1b[2K");
            buf.push_str(line);
            buf.push('\n');
        }
        // Clear what the previous, longer frame left below.
        if self.drawn > lines.len() {
            for _ in lines.len()..self.drawn {
                buf.push_str("\x1b[2K\n");
            }
            buf.push_str(&format!("\x1b[{}A", self.drawn - lines.len()));
        }
        self.drawn = lines.len();
        let _ = self.out.write_all(buf.as_bytes());
        let _ = self.out.flush();
        self.last_draw = Some(Instant::now());
    }
}

impl<W: Write + Send> ProgressSink for TtyProgress<W> {
    fn update(&mut self, status: &StatusResponse) {
        for v in &status.vertexes {
            self.state.vertex(v);
        }
        for log in &status.logs {
            self.state
                .log(&log.vertex, &log.msg, ERROR_LOG_LINES.max(LOG_LINES));
        }
        if self
            .last_draw
            .is_none_or(|t| t.elapsed().as_millis() >= 120)
        {
            self.draw(false);
        }
    }

    fn tick(&mut self) {
        self.draw(false);
    }

    fn finish(&mut self, transfer: &TransferSummary, failure: Option<&FailureReport>) {
        self.draw(true);
        let _ = writeln!(self.out, "{}", transfer_line(transfer));
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
