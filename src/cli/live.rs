//! Live lines for the long fleet operations (`scale up --wait`, the cluster build's
//! scale-up, `cache clear`, `tunnel`): one line per item (an architecture, a pod) with its
//! state and elapsed time. On a terminal each line has a spinner and is redrawn in place
//! (indicatif); on a pipe a plain `item: state` line is written when an item's state
//! changes, or every ten seconds while it waits; in quiet mode nothing is written.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A waiting item is written again on a pipe after this long without a change.
const PLAIN_REPEAT: Duration = Duration::from_secs(10);

/// How the live lines are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveMode {
    /// Spinner lines redrawn in place (stderr is a terminal).
    Terminal,
    /// A line per change (stderr is a file or a pipe).
    Plain,
    /// No progress lines at all (`--quiet`, or `--progress quiet`); results and errors still print.
    Quiet,
}

impl LiveMode {
    /// Terminal when stderr is one, else plain; quiet when asked.
    pub fn for_stderr(quiet: bool) -> Self {
        if quiet {
            LiveMode::Quiet
        } else if std::io::stderr().is_terminal() {
            LiveMode::Terminal
        } else {
            LiveMode::Plain
        }
    }
}

/// One item's line.
struct Item {
    bar: Option<ProgressBar>,
    state: String,
    since: Instant,
    written: Option<Instant>,
    finished: bool,
}

/// The live lines of one operation. Shared by reference between concurrent tasks.
pub struct Live {
    mode: LiveMode,
    multi: Option<MultiProgress>,
    items: Mutex<HashMap<String, Item>>,
}

impl Live {
    /// Lines shown per `mode`.
    pub fn new(mode: LiveMode) -> Self {
        let multi = (mode == LiveMode::Terminal)
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Live {
            mode,
            multi,
            items: Mutex::new(HashMap::new()),
        }
    }

    /// `item` is in `state` (still going), with a `detail` that may change on every call
    /// (time left): its line shows both with a spinner on a terminal; on a pipe it is
    /// written when the state changed or after ten seconds unchanged.
    pub fn set(&self, item: &str, state: &str, detail: &str) {
        self.update(item, state, detail, false);
    }

    /// `item` reached its final `state`, shown with the time it took. Later calls for it
    /// change nothing.
    pub fn done(&self, item: &str, state: &str) {
        self.update(item, state, "", true);
    }

    /// A line that is not an item's state (a result, a note), above the live lines.
    pub fn note(&self, line: &str) {
        match (&self.multi, self.mode) {
            (_, LiveMode::Quiet) => {}
            (Some(multi), _) => {
                let _ = multi.println(line);
            }
            (None, _) => {
                let _ = writeln!(std::io::stderr().lock(), "{line}");
            }
        }
    }

    fn update(&self, item: &str, state: &str, detail: &str, finished: bool) {
        if self.mode == LiveMode::Quiet {
            return;
        }
        let Ok(mut items) = self.items.lock() else {
            return;
        };
        let entry = items.entry(item.to_owned()).or_insert_with(|| Item {
            bar: self.multi.as_ref().map(|m| {
                let bar = m.add(ProgressBar::new_spinner());
                bar.set_style(running_style());
                bar.set_prefix(item.to_owned());
                bar.enable_steady_tick(Duration::from_millis(100));
                bar
            }),
            state: String::new(),
            since: Instant::now(),
            written: None,
            finished: false,
        });
        if entry.finished {
            return;
        }
        entry.finished = finished;
        let changed = entry.state != state;
        entry.state = state.to_owned();
        let text = if detail.is_empty() {
            state.to_owned()
        } else {
            format!("{state} ({detail})")
        };
        match &entry.bar {
            Some(bar) => {
                if finished {
                    bar.set_style(finished_style());
                    bar.finish_with_message(text);
                } else {
                    bar.set_message(text);
                }
            }
            None => {
                let due = entry.written.is_none_or(|t| t.elapsed() >= PLAIN_REPEAT);
                if finished || changed || due {
                    let secs = entry.since.elapsed().as_secs_f64();
                    let line = if finished {
                        format!("{item}: {text} ({secs:.1}s)")
                    } else {
                        format!("{item}: {text}")
                    };
                    let _ = writeln!(std::io::stderr().lock(), "{line}");
                    entry.written = Some(Instant::now());
                }
            }
        }
    }

    /// Ends every line still going (leaving the last view on screen).
    pub fn finish(&self) {
        if let Ok(items) = self.items.lock() {
            for item in items.values() {
                if let Some(bar) = &item.bar
                    && !bar.is_finished()
                {
                    bar.abandon();
                }
            }
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.finish();
    }
}

fn running_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner:.cyan} {prefix}: {wide_msg} {elapsed:>4}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn finished_style() -> ProgressStyle {
    ProgressStyle::with_template("✔ {prefix}: {wide_msg} {elapsed:>4}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}
