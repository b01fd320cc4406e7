//! What the plain printer knows of a solve: every step (vertex) with the intervals it ran,
//! its statuses, the log lines not yet printed and its warnings, kept the way BuildKit's
//! progressui keeps them so that the printed blocks come out the same.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Instant, SystemTime};

use super::{SolveStatus, Vertex, VertexLog, VertexStatus, VertexWarning};

/// How many printed log lines of each step are kept for the error summary.
pub(crate) const RECENT_LOG_LINES: usize = 10;

/// Nanoseconds since the epoch: exact, so equal timestamps compare equal.
pub(crate) type Nanos = i128;

/// A time as nanoseconds since the epoch (negative before it).
pub(crate) fn nanos(t: SystemTime) -> Nanos {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => Nanos::try_from(after.as_nanos()).unwrap_or(Nanos::MAX),
        Err(before) => -Nanos::try_from(before.duration().as_nanos()).unwrap_or(Nanos::MAX),
    }
}

/// Seconds between two instants of the daemon's clock.
pub(crate) fn secs_between(from: Nanos, to: Nanos) -> f64 {
    (to - from) as f64 / 1e9
}

/// One run of a step: when it started and, once it has, when it stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Interval {
    pub start: Nanos,
    pub stop: Option<Nanos>,
}

/// Joins overlapping runs; a run that has not stopped swallows every later one.
pub(crate) fn merge_intervals(mut runs: Vec<Interval>) -> Vec<Interval> {
    runs.sort_by_key(|r| r.start);
    let mut merged: Vec<Interval> = Vec::new();
    let mut iter = runs.into_iter();
    let Some(mut cur) = iter.next() else {
        return merged;
    };
    for next in iter {
        let Some(stop) = cur.stop else {
            break;
        };
        if stop < next.start {
            merged.push(cur);
            cur = next;
            continue;
        }
        match next.stop {
            None => {
                cur.stop = None;
                break;
            }
            Some(next_stop) if next_stop > stop => cur.stop = Some(next_stop),
            Some(_) => {}
        }
    }
    merged.push(cur);
    merged
}

/// The fields of a vertex snapshot whose change makes the step worth printing again.
#[derive(Debug, Clone, Default, PartialEq)]
struct Seen {
    name: String,
    started: Option<Nanos>,
    completed: Option<Nanos>,
    cached: bool,
    error: String,
}

/// One step of the build.
#[derive(Debug)]
pub(crate) struct Step {
    /// `#N` once printed; 0 before.
    pub index: usize,
    pub name: String,
    pub cached: bool,
    pub error: String,
    /// Runs keyed by their start.
    runs: BTreeMap<Nanos, Option<Nanos>>,
    pub merged: Vec<Interval>,
    /// The last snapshot that had started (what a change is measured against).
    seen: Option<Seen>,
    /// Statuses (`transferring context`, a layer pull) by ID, and the IDs in the order
    /// they started (one never started is never shown).
    pub statuses: HashMap<String, VertexStatus>,
    pub status_order: Vec<String>,
    /// Status IDs updated since the step was last printed.
    pub status_updates: HashSet<String>,
    pub warnings: Vec<VertexWarning>,
    pub warnings_shown: usize,
    /// Log lines (`<seconds> <text>`) not yet printed; the last may be unfinished.
    pub logs: Vec<String>,
    pub logs_partial: bool,
    /// How much of `logs[0]` was already printed (an unfinished line printed in part).
    pub logs_offset: usize,
    /// The last printed lines, for the error summary, and an unfinished one.
    pub recent: VecDeque<String>,
    pub recent_partial: Option<String>,
    /// Events since the step's block was last left: how "busy" it is.
    pub count: usize,
    pub block_since: Option<Instant>,
}

impl Step {
    fn new() -> Self {
        Step {
            index: 0,
            name: String::new(),
            cached: false,
            error: String::new(),
            runs: BTreeMap::new(),
            merged: Vec::new(),
            seen: None,
            statuses: HashMap::new(),
            status_order: Vec::new(),
            status_updates: HashSet::new(),
            warnings: Vec::new(),
            warnings_shown: 0,
            logs: Vec::new(),
            logs_partial: false,
            logs_offset: 0,
            recent: VecDeque::new(),
            recent_partial: None,
            count: 0,
            block_since: None,
        }
    }

    /// Counts an event; the first one since the count was reset starts the block clock.
    fn bump(&mut self, now: Instant) {
        if self.count == 0 {
            self.block_since = Some(now);
        }
        self.count += 1;
    }

    /// Has run at least once.
    pub fn is_started(&self) -> bool {
        !self.merged.is_empty()
    }

    /// Its latest run has stopped.
    pub fn is_completed(&self) -> bool {
        self.merged.last().is_some_and(|r| r.stop.is_some())
    }

    /// The start of its latest run.
    pub fn last_start(&self) -> Option<Nanos> {
        self.merged.last().map(|r| r.start)
    }

    /// When its latest run stopped.
    pub fn last_stop(&self) -> Option<Nanos> {
        self.merged.last().and_then(|r| r.stop)
    }

    /// Seconds it ran, all runs together (a run still going counts as nothing yet).
    pub fn run_seconds(&self) -> f64 {
        self.merged
            .iter()
            .filter_map(|r| r.stop.map(|stop| secs_between(r.start, stop)))
            .sum()
    }

    /// Ended with an error that is not a cancellation.
    pub fn failed(&self) -> bool {
        !self.error.is_empty() && !self.error.ends_with("context canceled")
    }
}

/// All steps of one solve.
#[derive(Debug, Default)]
pub(crate) struct Trace {
    pub steps: Vec<Step>,
    by_digest: HashMap<String, usize>,
    /// Steps in the order they first started.
    pub started: Vec<usize>,
    /// Steps with something new to print.
    pub updates: BTreeSet<usize>,
    /// Every warning, in the order the daemon sent them.
    pub warnings: Vec<VertexWarning>,
}

impl Trace {
    /// Takes one status update from the daemon in.
    pub fn update(&mut self, status: &SolveStatus, now: Instant) {
        for v in &status.vertexes {
            self.vertex(v, now);
        }
        for s in &status.statuses {
            self.status(s, now);
        }
        for w in &status.warnings {
            self.warnings.push(w.clone());
            // A warning is shown with the step's next block, not on its own.
            if let Some(&i) = self.by_digest.get(&w.vertex) {
                let step = &mut self.steps[i];
                step.warnings.push(w.clone());
                step.bump(now);
            }
        }
        for l in &status.logs {
            self.log(l, now);
        }
    }

    fn vertex(&mut self, v: &Vertex, now: Instant) {
        let i = match self.by_digest.get(&v.digest) {
            Some(&i) => i,
            None => {
                self.steps.push(Step::new());
                self.by_digest
                    .insert(v.digest.clone(), self.steps.len() - 1);
                self.steps.len() - 1
            }
        };
        let step = &mut self.steps[i];
        let was_started = step.is_started();
        let started = v.started.map(nanos);
        let completed = v.completed.map(nanos);
        if let Some(start) = started {
            let snapshot = Seen {
                name: v.name.clone(),
                started,
                completed,
                cached: v.cached,
                error: v.error.clone().unwrap_or_default(),
            };
            let old = step.seen.clone().unwrap_or_default();
            // A completed snapshot always counts as news, even when repeated: progressui
            // compares the completion by reference, so it prints its ending again.
            let changed = old.name != snapshot.name
                || old.started != snapshot.started
                || completed.is_some()
                || old.cached != snapshot.cached
                || old.error != snapshot.error;
            if changed {
                step.bump(now);
                self.updates.insert(i);
            }
            step.seen = Some(snapshot);
            if !was_started {
                self.started.push(i);
            }
            step.runs.insert(start, completed);
        }
        // An unstarted copy of a started step must not reset it.
        if !was_started || started.is_some() {
            step.name.clone_from(&v.name);
            step.cached = v.cached;
            step.error = v.error.clone().unwrap_or_default();
        }
        if started.is_some() {
            let runs = step
                .runs
                .iter()
                .map(|(&start, &stop)| Interval { start, stop })
                .collect();
            step.merged = merge_intervals(runs);
        }
    }

    fn status(&mut self, s: &VertexStatus, now: Instant) {
        let Some(&i) = self.by_digest.get(&s.vertex) else {
            return;
        };
        let step = &mut self.steps[i];
        let was_started = step
            .statuses
            .get(&s.id)
            .is_some_and(|old| old.started.is_some());
        if s.started.is_some() && !was_started {
            step.status_order.push(s.id.clone());
        }
        step.statuses.insert(s.id.clone(), s.clone());
        step.status_updates.insert(s.id.clone());
        step.bump(now);
        self.updates.insert(i);
    }

    fn log(&mut self, l: &VertexLog, now: Instant) {
        let Some(&i) = self.by_digest.get(&l.vertex) else {
            return;
        };
        let step = &mut self.steps[i];
        let data = &l.data;
        let complete = data.last() == Some(&b'\n');
        let body = if complete {
            &data[..data.len() - 1]
        } else {
            &data[..]
        };
        for (n, piece) in body.split(|b| *b == b'\n').enumerate() {
            let text = String::from_utf8_lossy(piece);
            if n == 0 && step.logs_partial && !step.logs.is_empty() {
                if let Some(last) = step.logs.last_mut() {
                    last.push_str(&text);
                }
                continue;
            }
            let since = match (step.last_start(), l.timestamp) {
                (Some(start), Some(t)) => secs_between(start, nanos(t)),
                _ => 0.0,
            };
            step.logs.push(format!("{} {text}", log_seconds(since)));
        }
        step.logs_partial = !complete;
        step.bump(now);
        self.updates.insert(i);
    }
}

/// Seconds since a step started, as progressui writes them before a log line: three
/// decimals under 10 s, two under 100 s, one beyond.
pub(crate) fn log_seconds(since: f64) -> String {
    if since < 10.0 {
        format!("{since:.3}")
    } else if since < 100.0 {
        format!("{since:.2}")
    } else {
        format!("{since:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(start: Nanos, stop: Option<Nanos>) -> Interval {
        Interval { start, stop }
    }

    #[test]
    fn intervals_merge_like_progressui() {
        assert_eq!(merge_intervals(vec![]), vec![]);
        assert_eq!(
            merge_intervals(vec![run(5, Some(6)), run(1, Some(2))]),
            vec![run(1, Some(2)), run(5, Some(6))]
        );
        assert_eq!(
            merge_intervals(vec![run(1, Some(4)), run(2, Some(6))]),
            vec![run(1, Some(6))]
        );
        assert_eq!(
            merge_intervals(vec![run(1, Some(9)), run(2, Some(3))]),
            vec![run(1, Some(9))]
        );
        assert_eq!(
            merge_intervals(vec![run(1, Some(2)), run(3, None), run(4, Some(5))]),
            vec![run(1, Some(2)), run(3, None)]
        );
        assert_eq!(
            merge_intervals(vec![run(1, Some(4)), run(2, None)]),
            vec![run(1, None)]
        );
    }

    #[test]
    fn log_seconds_precision() {
        assert_eq!(log_seconds(0.0671), "0.067");
        assert_eq!(log_seconds(12.345), "12.35");
        assert_eq!(log_seconds(123.45), "123.5");
    }
}
