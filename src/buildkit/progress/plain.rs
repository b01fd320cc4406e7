//! BuildKit's plain progress, as progressui prints it: one block per step, separated by
//! blank lines, numbered `#N` in the order the blocks first appear; a step's pending lines
//! are held and printed together, `#N ...` marks leaving a step that has not finished, and
//! a block ends with `#N DONE 1.2s`, `#N CACHED`, `#N ERROR: …` or `#N CANCELED`.
//!
//! Which step gets the next block follows progressui's scheduler: finished steps first (in
//! the order they finished), then the step being shown keeps the output unless another has
//! waited more than 10 s, or the busiest one deserves it by the 5 s anti-flicker rule.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use super::trace::{RECENT_LOG_LINES, Trace, nanos, secs_between};
use super::{
    FailureReport, ProgressSink, SolveStatus, TransferSummary, go_bytes, transfer_line,
    write_failure,
};

/// A step shown less than this long keeps the output against busier steps (scaled by its
/// share of the activity).
const ANTI_FLICKER: Duration = Duration::from_secs(5);
/// A step with news waits no longer than this for its block.
const MAX_DELAY: Duration = Duration::from_secs(10);
/// A status still running is printed again only after this long…
const MIN_STATUS_TIME: f64 = 5.0;
/// …or this much more of its total.
const MIN_STATUS_PROGRESS: f64 = 0.05;
/// Updates closer together than this are printed together (progressui's display rate).
const PRINT_INTERVAL: Duration = Duration::from_millis(100);

/// Plain-text progress written to `W` (normally stderr).
pub struct PlainProgress<W: Write + Send> {
    out: W,
    trace: Trace,
    printer: Printer,
    last_print: Option<Instant>,
    /// Print on every update instead of at most every 100 ms (for recorded streams).
    eager: bool,
    /// A recorded stream: no context summary at the end (the replay sent no context).
    replay: bool,
}

impl<W: Write + Send> PlainProgress<W> {
    /// Renders to `out`.
    pub fn new(out: W) -> Self {
        PlainProgress {
            out,
            trace: Trace::default(),
            printer: Printer::default(),
            last_print: None,
            eager: false,
            replay: false,
        }
    }

    /// Renders a recorded stream (a history record's logs) to `out`, with the lines the
    /// build showed live: [`eager`](Self::eager), and without the `#0 context: sent …` line,
    /// which only the client that sent the context knows. Where the live view happened to
    /// print between two updates of a step (closing its block and opening it again), the
    /// replay may print them as one block: that is timing.
    pub fn replay(out: W) -> Self {
        PlainProgress {
            replay: true,
            ..Self::new(out).eager()
        }
    }

    /// Prints after every update rather than at most every 100 ms: the output no longer
    /// depends on how fast the updates arrive.
    #[must_use]
    pub fn eager(mut self) -> Self {
        self.eager = true;
        self
    }

    fn print(&mut self, now: Instant) {
        let mut buf = Vec::new();
        self.printer.print(&mut self.trace, now, &mut buf);
        self.last_print = Some(now);
        if !buf.is_empty() {
            // Progress is best effort: a closed stderr must not fail the build.
            let _ = self.out.write_all(&buf);
            let _ = self.out.flush();
        }
    }
}

impl<W: Write + Send> ProgressSink for PlainProgress<W> {
    fn update(&mut self, status: &SolveStatus) {
        let now = Instant::now();
        self.trace.update(status, now);
        if self.eager
            || self
                .last_print
                .is_none_or(|t| now.duration_since(t) >= PRINT_INTERVAL)
        {
            self.print(now);
        }
    }

    fn tick(&mut self) {
        self.print(Instant::now());
    }

    fn finish(&mut self, transfer: &TransferSummary, failure: Option<&FailureReport>) {
        self.print(Instant::now());
        let mut buf = Vec::new();
        if !self.replay {
            let _ = writeln!(buf, "\n{}", transfer_line(transfer));
        } else {
            buf.push(b'\n');
        }
        let _ = super::write_warnings(&mut buf, &self.trace.warnings);
        let _ = write_error_logs(&mut buf, &self.trace);
        if let Some(failure) = failure {
            let _ = write_failure(&mut buf, failure);
        }
        let _ = self.out.write_all(&buf);
        let _ = self.out.flush();
    }
}

/// progressui's text multiplexer: which step is shown, and what was printed of statuses.
#[derive(Debug, Default)]
struct Printer {
    current: Option<usize>,
    /// Per status ID: the amount and time last printed (to throttle running statuses).
    last: HashMap<String, (i64, f64)>,
    not_first: bool,
    next_index: usize,
}

impl Printer {
    /// Prints whatever the scheduler lets out now.
    fn print(&mut self, t: &mut Trace, now: Instant, out: &mut Vec<u8>) {
        let (mut completed, mut rest): (Vec<usize>, Vec<usize>) = t
            .updates
            .iter()
            .copied()
            .partition(|&i| t.steps[i].is_completed());
        let current = self.current;

        // Finished steps first, the one being shown before the others.
        if let Some(c) = current
            && completed.contains(&c)
        {
            self.print_step(t, c, now, out);
        }
        completed.sort_by_key(|&i| t.steps[i].last_stop());
        for &i in &completed {
            if Some(i) != current {
                self.print_step(t, i, now, out);
            }
        }

        if rest.is_empty() {
            if let Some(c) = current
                && t.steps[c].is_started()
                && !t.steps[c].is_completed()
            {
                return;
            }
            // Make a running step the shown one, so its block is open.
            if let Some(i) =
                (0..t.steps.len()).find(|&i| t.steps[i].is_started() && !t.steps[i].is_completed())
            {
                self.print_step(t, i, now, out);
            }
            return;
        }

        if let Some(c) = current
            && rest.contains(&c)
        {
            self.print_step(t, c, now, out);
        }

        // How busy each candidate has been since its block clock started.
        if let Some(c) = current
            && !rest.contains(&c)
        {
            rest.push(c);
        }
        rest.sort_unstable();
        let mut stats: HashMap<usize, Stat> = HashMap::new();
        let mut sum = 0.0;
        let mut busiest: Option<usize> = None;
        for &i in &rest {
            let Some(since) = t.steps[i].block_since else {
                continue;
            };
            let shown_for = now.saturating_duration_since(since);
            let speed = t.steps[i].count as f64 / shown_for.as_secs_f64();
            let over_limit = shown_for > MAX_DELAY && Some(i) != current;
            stats.insert(
                i,
                Stat {
                    shown_for,
                    speed,
                    share: 0.0,
                    over_limit,
                },
            );
            sum += speed;
            let beats = busiest.is_none_or(|b| stats[&b].speed < speed);
            if over_limit || beats {
                busiest = Some(i);
            }
        }
        for stat in stats.values_mut() {
            stat.share = stat.speed / sum;
        }

        let Some(busiest) = busiest else {
            return;
        };
        let current_done = current.is_none_or(|c| completed.contains(&c));
        if current_done {
            self.print_step(t, busiest, now, out);
            return;
        }
        // A step that waited too long gets its block.
        if let Some(&i) = rest
            .iter()
            .find(|i| stats.get(i).is_some_and(|s| s.over_limit))
        {
            self.print_step(t, i, now, out);
            return;
        }
        // Fair split: the shown step keeps the output for a time that grows with its share.
        if let Some(c) = current
            && let Some(stat) = stats.get(&c)
            && 1.0 / (1.0 - stat.share) * ANTI_FLICKER.as_secs_f64() < stat.shown_for.as_secs_f64()
        {
            self.print_step(t, busiest, now, out);
        }
    }

    /// Prints a step's pending lines, opening its block when it is not the shown one.
    fn print_step(&mut self, t: &mut Trace, i: usize, _now: Instant, out: &mut Vec<u8>) {
        if t.steps[i].index == 0 {
            self.next_index += 1;
            t.steps[i].index = self.next_index;
        }
        if self.current != Some(i) {
            if let Some(old) = self.current {
                let old = &mut t.steps[old];
                if old.logs_partial {
                    out.push(b'\n');
                }
                old.logs_offset = 0;
                old.count = 0;
                let _ = writeln!(out, "#{} ...", old.index);
            }
            if self.not_first {
                out.push(b'\n');
            }
            self.not_first = true;
            let step = &t.steps[i];
            let _ = writeln!(out, "#{} {}", step.index, step.name);
        }
        let step = &mut t.steps[i];
        let n = step.index;

        let mut open_status = false;
        for id in &step.status_order {
            if !step.status_updates.contains(id) {
                continue;
            }
            let Some(s) = step.statuses.get(id) else {
                continue;
            };
            let at = s.timestamp.map_or(0.0, |t| nanos(t) as f64 / 1e9);
            if s.completed.is_none()
                && let Some(&(current, when)) = self.last.get(id)
            {
                let progress = if s.total > 0 {
                    (s.current - current) as f64 / s.total as f64
                } else {
                    0.0
                };
                if progress < MIN_STATUS_PROGRESS && at - when < MIN_STATUS_TIME {
                    continue;
                }
            }
            self.last.insert(id.clone(), (s.current, at));
            let amount = if s.total != 0 {
                format!(" {} / {}", go_bytes(s.current), go_bytes(s.total))
            } else if s.current != 0 {
                format!(" {}", go_bytes(s.current))
            } else {
                String::new()
            };
            let end = s.completed.or(s.timestamp);
            let mut time = match (s.started, end) {
                (Some(a), Some(b)) => {
                    let took = secs_between(nanos(a), nanos(b));
                    if took > 0.01 {
                        format!(" {took:.1}s")
                    } else {
                        String::new()
                    }
                }
                _ => String::new(),
            };
            if s.completed.is_some() {
                time.push_str(" done");
            } else {
                open_status = true;
            }
            let _ = writeln!(out, "#{n} {id}{amount}{time}");
        }
        step.status_updates.clear();

        for w in &step.warnings[step.warnings_shown..] {
            let _ = writeln!(out, "#{n} WARN: {}", w.short_text());
        }
        step.warnings_shown = step.warnings.len();

        let last = step.logs.len().saturating_sub(1);
        for (k, line) in step.logs.iter().enumerate() {
            // The rest of a line already printed in part continues where it stopped.
            if k == 0 && step.logs_offset > 0 {
                out.extend_from_slice(line.get(step.logs_offset..).unwrap_or("").as_bytes());
            } else {
                let _ = write!(out, "#{n} {line}");
            }
            if k != last || !step.logs_partial {
                out.push(b'\n');
                step.recent.push_back(line.clone());
                if step.recent.len() > RECENT_LOG_LINES {
                    step.recent.pop_front();
                }
                step.recent_partial = None;
            } else {
                step.recent_partial = Some(line.clone());
            }
        }
        if !step.logs.is_empty() {
            if step.logs_partial {
                let keep = step.logs.split_off(last);
                step.logs_offset = keep[0].len();
                step.logs = keep;
            } else {
                step.logs.clear();
                step.logs_offset = 0;
            }
        }

        self.current = Some(i);
        if step.is_completed() && !open_status {
            self.current = None;
            step.count = 0;
            if step.logs_partial {
                out.push(b'\n');
            }
            if !step.error.is_empty() {
                if step.failed() {
                    let _ = writeln!(out, "#{n} ERROR: {}", step.error);
                } else {
                    let _ = writeln!(out, "#{n} CANCELED");
                }
            } else if step.cached {
                let _ = writeln!(out, "#{n} CACHED");
            } else {
                let _ = writeln!(out, "#{n} DONE {:.1}s", step.run_seconds());
            }
        }
        t.updates.remove(&i);
    }
}

struct Stat {
    shown_for: Duration,
    speed: f64,
    share: f64,
    over_limit: bool,
}

/// The failed steps' last output, as progressui prints it after the progress:
/// `------`, ` > step name:`, the lines, `------`.
fn write_error_logs(out: &mut Vec<u8>, t: &Trace) -> std::io::Result<()> {
    for &i in &t.started {
        let step = &t.steps[i];
        if !step.failed() {
            continue;
        }
        writeln!(out, "------")?;
        writeln!(out, " > {}:", step.name)?;
        for line in step.recent.iter().chain(step.recent_partial.iter()) {
            writeln!(out, "{line}")?;
        }
        writeln!(out, "------")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
