//! The plain printer on recorded event sequences, against what progressui prints for them.

use super::*;
use crate::buildkit::progress::SourceSnippet;
use crate::buildkit::progress::{Vertex, VertexLog, VertexStatus, VertexWarning};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A time `ms` milliseconds into the build.
fn at(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000) + Duration::from_millis(ms.try_into().unwrap())
}

fn vertex(digest: &str, name: &str, started: Option<i64>, completed: Option<i64>) -> Vertex {
    Vertex {
        digest: digest.into(),
        name: name.into(),
        started: started.map(at),
        completed: completed.map(at),
        ..Vertex::default()
    }
}

fn vertices(list: Vec<Vertex>) -> SolveStatus {
    SolveStatus {
        vertexes: list,
        ..SolveStatus::default()
    }
}

fn log(digest: &str, ms: i64, text: &str) -> SolveStatus {
    SolveStatus {
        logs: vec![VertexLog {
            vertex: digest.into(),
            timestamp: Some(at(ms)),
            stream: 1,
            data: text.as_bytes().to_vec(),
        }],
        ..SolveStatus::default()
    }
}

/// Feeds the updates to an eager printer and returns everything it wrote.
fn render(updates: &[SolveStatus], failure: Option<&FailureReport>) -> String {
    let mut out = Vec::new();
    let mut progress = PlainProgress::new(&mut out).eager();
    for u in updates {
        progress.update(u);
    }
    progress.finish(&TransferSummary::default(), failure);
    drop(progress);
    String::from_utf8(out).unwrap()
}

const TRANSFER: &str = "\n#0 context: sent 0 files, 0B in 0 entries\n";

#[test]
fn steps_print_as_numbered_blocks_separated_by_blank_lines() {
    let text = render(
        &[
            vertices(vec![vertex(
                "a",
                "[internal] load build definition",
                Some(0),
                None,
            )]),
            SolveStatus {
                statuses: vec![VertexStatus {
                    id: "transferring dockerfile:".into(),
                    vertex: "a".into(),
                    current: 355,
                    timestamp: Some(at(8)),
                    started: Some(at(0)),
                    completed: Some(at(8)),
                    ..VertexStatus::default()
                }],
                ..SolveStatus::default()
            },
            vertices(vec![vertex(
                "a",
                "[internal] load build definition",
                Some(0),
                Some(30),
            )]),
            // Seen before it starts: numbered only when its block is printed.
            vertices(vec![vertex("c", "[2/2] RUN late", None, None)]),
            vertices(vec![vertex("b", "[1/2] FROM base", Some(40), None)]),
            vertices(vec![vertex("b", "[1/2] FROM base", Some(40), Some(1440))]),
            vertices(vec![vertex("c", "[2/2] RUN late", Some(1500), None)]),
            log("c", 1567, "hello\n"),
            log("c", 12_600, "world\n"),
            vertices(vec![vertex(
                "c",
                "[2/2] RUN late",
                Some(1500),
                Some(112_600),
            )]),
        ],
        None,
    );
    assert_eq!(
        text,
        "#1 [internal] load build definition\n\
         #1 transferring dockerfile: 355B done\n\
         #1 DONE 0.0s\n\
         \n\
         #2 [1/2] FROM base\n\
         #2 DONE 1.4s\n\
         \n\
         #3 [2/2] RUN late\n\
         #3 0.067 hello\n\
         #3 11.10 world\n\
         #3 DONE 111.1s\n"
            .to_owned()
            + TRANSFER
    );
}

#[test]
fn a_parallel_step_waits_for_the_shown_one_and_prints_its_lines_together() {
    let text = render(
        &[
            vertices(vec![
                vertex("a", "[a 1/1] RUN a", Some(0), None),
                vertex("b", "[b 1/1] RUN b", Some(1), None),
            ]),
            log("a", 100, "a-1\n"),
            log("b", 110, "b-1\n"),
            log("a", 400, "a-2\n"),
            log("b", 410, "b-2\n"),
            vertices(vec![vertex("b", "[b 1/1] RUN b", Some(1), Some(700))]),
            log("a", 710, "a-3\n"),
            vertices(vec![vertex("a", "[a 1/1] RUN a", Some(0), Some(800))]),
        ],
        None,
    );
    assert_eq!(
        text,
        "#1 [a 1/1] RUN a\n\
         #1 0.100 a-1\n\
         #1 0.400 a-2\n\
         #1 ...\n\
         \n\
         #2 [b 1/1] RUN b\n\
         #2 0.109 b-1\n\
         #2 0.409 b-2\n\
         #2 DONE 0.7s\n\
         \n\
         #1 [a 1/1] RUN a\n\
         #1 0.710 a-3\n\
         #1 DONE 0.8s\n"
            .to_owned()
            + TRANSFER
    );
}

#[test]
fn a_restarted_step_reads_as_progressui_shows_it() {
    let ctx = "[internal] load build context";
    let text = render(
        &[
            vertices(vec![vertex("ctx", ctx, Some(0), Some(0))]),
            vertices(vec![vertex("ctx", ctx, Some(100), None)]),
            vertices(vec![vertex("ctx", ctx, Some(100), Some(3100))]),
        ],
        None,
    );
    // The first run ends its block; the second opens a new block under the same number
    // and ends with the time of both runs.
    assert_eq!(
        text,
        format!("#1 {ctx}\n#1 DONE 0.0s\n\n#1 {ctx}\n#1 DONE 3.0s\n{TRANSFER}")
    );
}

#[test]
fn cached_and_failed_steps_end_their_blocks_and_the_failure_is_summarised() {
    let mut failed = vertex("r", "[2/2] RUN false", Some(10), Some(900));
    failed.error =
        Some("process \"/bin/sh -c false\" did not complete successfully: exit code: 1".into());
    let mut cached = vertex("f", "[1/2] FROM base", Some(5), Some(5));
    cached.cached = true;
    let source = SourceSnippet::new("Dockerfile", "FROM base\nRUN false\n", &[(2, 2)]);
    let failure = FailureReport {
        message: "exit code: 1".into(),
        vertex: Some("r".into()),
        sources: source.into_iter().collect(),
    };
    let text = render(
        &[
            vertices(vec![cached]),
            vertices(vec![vertex("r", "[2/2] RUN false", Some(10), None)]),
            log("r", 20, "about to fail\npartial"),
            vertices(vec![failed.clone()]),
        ],
        Some(&failure),
    );
    assert_eq!(
        text,
        format!(
            "#1 [1/2] FROM base\n\
             #1 CACHED\n\
             \n\
             #2 [2/2] RUN false\n\
             #2 0.010 about to fail\n\
             #2 0.010 partial\n\
             #2 ERROR: {}\n{TRANSFER}\
             ------\n > [2/2] RUN false:\n0.010 about to fail\n0.010 partial\n------\n\
             Dockerfile:2\n\
             --------------------\n\
             \x20  1 |     FROM base\n\
             \x20  2 | >>> RUN false\n\
             \x20  3 |     \n\
             --------------------\n\
             ERROR: failed to solve: exit code: 1\n",
            failed.error.as_deref().unwrap_or_default()
        )
    );
}

#[test]
fn warnings_show_in_their_steps_block_and_at_the_end() {
    let warning = VertexWarning {
        vertex: "d".into(),
        level: 1,
        short: b"FromAsCasing: 'as' and 'FROM' keywords' casing do not match (line 1)".to_vec(),
        url: Some("https://docs.docker.com/go/dockerfile/rule/from-as-casing/".into()),
        ..VertexWarning::default()
    };
    let text = render(
        &[
            vertices(vec![vertex(
                "d",
                "[internal] load build definition",
                Some(0),
                None,
            )]),
            SolveStatus {
                warnings: vec![warning],
                ..SolveStatus::default()
            },
            vertices(vec![vertex(
                "d",
                "[internal] load build definition",
                Some(0),
                Some(10),
            )]),
        ],
        None,
    );
    assert_eq!(
        text,
        "#1 [internal] load build definition\n\
         #1 WARN: FromAsCasing: 'as' and 'FROM' keywords' casing do not match (line 1)\n\
         #1 DONE 0.0s\n"
            .to_owned()
            + TRANSFER
            + "\n 1 warning found:\n\
               \x20- FromAsCasing: 'as' and 'FROM' keywords' casing do not match (line 1)\n"
    );
}

#[test]
fn a_running_status_is_printed_again_only_after_real_progress() {
    let status = |current: i64, ms: i64, done: bool| SolveStatus {
        statuses: vec![VertexStatus {
            id: "sha256:layer".into(),
            vertex: "p".into(),
            current,
            total: 1_000_000,
            timestamp: Some(at(ms)),
            started: Some(at(0)),
            completed: done.then(|| at(ms)),
            ..VertexStatus::default()
        }],
        ..SolveStatus::default()
    };
    let text = render(
        &[
            vertices(vec![vertex("p", "[1/1] FROM x", Some(0), None)]),
            status(10_000, 100, false),
            status(20_000, 200, false),    // 1 % more: held
            status(500_000, 300, false),   // 48 % more: printed
            status(510_000, 5_400, false), // 5 s later: printed
            status(1_000_000, 5_500, true),
            vertices(vec![vertex("p", "[1/1] FROM x", Some(0), Some(5_600))]),
        ],
        None,
    );
    assert_eq!(
        text,
        "#1 [1/1] FROM x\n\
         #1 sha256:layer 10.00kB / 1.00MB 0.1s\n\
         #1 sha256:layer 500.00kB / 1.00MB 0.3s\n\
         #1 sha256:layer 510.00kB / 1.00MB 5.4s\n\
         #1 sha256:layer 1.00MB / 1.00MB 5.5s done\n\
         #1 DONE 5.6s\n"
            .to_owned()
            + TRANSFER
    );
}
