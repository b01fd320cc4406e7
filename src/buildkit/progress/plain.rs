//! buildkit's plain progress: `#N name`, log lines with seconds since the step started,
//! `#N DONE 1.2s`, `#N CACHED`, `#N ERROR: …`.

use std::collections::HashSet;
use std::io::Write;

use super::{
    ERROR_LOG_LINES, FailureReport, ProgressSink, State, TransferSummary, seconds, transfer_line,
    write_failure,
};
use crate::buildkit::proto::control::StatusResponse;

/// Plain-text progress written to `W` (normally stderr).
pub struct PlainProgress<W: Write + Send> {
    out: W,
    state: State,
    announced: HashSet<usize>,
    finished: HashSet<usize>,
    statuses_done: HashSet<(usize, String)>,
    warnings: usize,
}

impl<W: Write + Send> PlainProgress<W> {
    /// Renders to `out`.
    pub fn new(out: W) -> Self {
        PlainProgress {
            out,
            state: State::default(),
            announced: HashSet::new(),
            finished: HashSet::new(),
            statuses_done: HashSet::new(),
            warnings: 0,
        }
    }

    fn announce(&mut self, i: usize) -> std::io::Result<()> {
        if self.announced.insert(i) {
            let step = &self.state.steps[i];
            writeln!(self.out, "#{} {}", step.index, step.name)?;
        }
        Ok(())
    }

    fn render(&mut self, status: &StatusResponse) -> std::io::Result<()> {
        let mut touched = Vec::new();
        for v in &status.vertexes {
            let i = self.state.vertex(v);
            let step = &self.state.steps[i];
            // The daemon may complete a step and start it again (`[internal] load build
            // context` completes its cache check at once, then transfers): its real end
            // gets a DONE line too, with the time from the first start.
            if step.completed.is_none() {
                self.finished.remove(&i);
            }
            if step.started.is_none() && !step.cached {
                continue;
            }
            self.announce(i)?;
            touched.push(i);
        }
        for s in &status.statuses {
            let i = self.state.index(&s.vertex);
            if s.completed.is_none() || !self.statuses_done.insert((i, s.id.clone())) {
                continue;
            }
            self.announce(i)?;
            let n = self.state.steps[i].index;
            let took = match (&s.started, &s.completed) {
                (Some(a), Some(b)) => (seconds(b) - seconds(a)).max(0.0),
                _ => 0.0,
            };
            let amount = if s.total > 0 && s.current != s.total {
                format!(
                    " {} / {}",
                    super::human_bytes(s.current.max(0) as u64),
                    super::human_bytes(s.total as u64)
                )
            } else if s.current > 0 {
                format!(" {}", super::human_bytes(s.current as u64))
            } else {
                String::new()
            };
            writeln!(self.out, "#{n} {}{amount} {took:.1}s done", s.id)?;
        }
        for log in &status.logs {
            let (i, lines) = self.state.log(&log.vertex, &log.msg, ERROR_LOG_LINES);
            if lines.is_empty() {
                continue;
            }
            self.announce(i)?;
            let step = &self.state.steps[i];
            let since = match (step.started, log.timestamp.as_ref()) {
                (Some(start), Some(t)) => (seconds(t) - start).max(0.0),
                _ => 0.0,
            };
            let since = if since < 10.0 {
                format!("{since:.3}")
            } else if since < 100.0 {
                format!("{since:.2}")
            } else {
                format!("{since:.1}")
            };
            for line in lines {
                writeln!(self.out, "#{} {since} {line}", step.index)?;
            }
        }
        // Endings come after the update's statuses and logs, as buildkit prints them.
        for i in touched {
            let step = &self.state.steps[i];
            if let Some(done) = step.completed
                && self.finished.insert(i)
            {
                let n = step.index;
                if !step.error.is_empty() {
                    if step.error.ends_with("context canceled") {
                        writeln!(self.out, "#{n} CANCELED")?;
                    } else {
                        writeln!(self.out, "#{n} ERROR: {}", step.error)?;
                    }
                } else if step.cached {
                    writeln!(self.out, "#{n} CACHED")?;
                } else {
                    let took = step.started.map_or(0.0, |s| (done - s).max(0.0));
                    writeln!(self.out, "#{n} DONE {took:.1}s")?;
                }
            }
        }
        for w in &status.warnings {
            self.warnings += 1;
            let i = self.state.index(&w.vertex);
            self.announce(i)?;
            writeln!(
                self.out,
                "#{} WARN: {}",
                self.state.steps[i].index,
                String::from_utf8_lossy(&w.short)
            )?;
        }
        self.out.flush()
    }
}

impl<W: Write + Send> ProgressSink for PlainProgress<W> {
    fn update(&mut self, status: &StatusResponse) {
        // Progress is best effort: a closed stderr must not fail the build.
        let _ = self.render(status);
    }

    fn finish(&mut self, transfer: &TransferSummary, failure: Option<&FailureReport>) {
        let _ = writeln!(self.out, "{}", transfer_line(transfer));
        if self.warnings > 0 {
            let _ = writeln!(self.out, "{} warnings found", self.warnings);
        }
        if let Some(failure) = failure {
            let _ = write_failure(&mut self.out, &self.state, failure);
        }
        let _ = self.out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buildkit::proto::control::Vertex;

    fn vertex(started: Option<i64>, completed: Option<i64>) -> StatusResponse {
        let at = |seconds| prost_types::Timestamp { seconds, nanos: 0 };
        StatusResponse {
            vertexes: vec![Vertex {
                digest: "sha256:ctx".into(),
                name: "[internal] load build context".into(),
                started: started.map(at),
                completed: completed.map(at),
                ..Vertex::default()
            }],
            ..StatusResponse::default()
        }
    }

    #[test]
    fn a_restarted_step_gets_a_done_line_for_its_real_end() {
        let mut out = Vec::new();
        let mut progress = PlainProgress::new(&mut out);
        progress.update(&vertex(Some(100), Some(100)));
        progress.update(&vertex(Some(100), None));
        progress.update(&vertex(Some(100), Some(103)));
        drop(progress);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "#1 [internal] load build context\n#1 DONE 0.0s\n#1 DONE 3.0s\n"
        );
    }
}
