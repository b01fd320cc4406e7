//! `--progress plain` and `tty` of real builds on the real BuildKit, checked against the
//! structure progressui prints for the same events: one block per step separated by blank
//! lines, steps numbered from `#1` in the order their blocks appear, every line of a block
//! under its number, a block left unfinished ending in `#N ...`, every step ending once in
//! `DONE <secs>s`, `CACHED`, `ERROR: …` or `CANCELED`; and buildctl's error summary.

use std::path::Path;
use std::process::Output;

use crate::util::{self, Tier};

/// One block of plain output: the step number and its lines after the header.
#[derive(Debug, Clone)]
pub struct Block {
    pub number: usize,
    pub name: String,
    pub lines: Vec<String>,
}

impl Block {
    /// The block's last line: how it ended.
    pub fn end(&self) -> &str {
        self.lines.last().map_or("", String::as_str)
    }

    /// Whether the step's block ends the step (not `#N ...`).
    pub fn is_final(&self) -> bool {
        let end = self.end();
        end == "CACHED"
            || end == "CANCELED"
            || end.starts_with("ERROR: ")
            || (end.starts_with("DONE ") && is_seconds(&end["DONE ".len()..]))
    }
}

/// `1.2s`
fn is_seconds(text: &str) -> bool {
    text.strip_suffix('s').is_some_and(|n| {
        n.split_once('.').is_some_and(|(a, b)| {
            !a.is_empty() && b.len() == 1 && (a.to_owned() + b).chars().all(|c| c.is_ascii_digit())
        })
    })
}

/// `0.067`, `12.34`, `123.4`: a log line's seconds since its step started.
fn is_log_seconds(text: &str) -> bool {
    let Some((whole, frac)) = text.split_once('.') else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    digits(whole)
        && digits(frac)
        && match whole.len() {
            1 => frac.len() == 3,
            2 => frac.len() == 2,
            _ => frac.len() == 1,
        }
}

/// Parses the progress part of plain output (up to the `#0 context` line) into blocks and
/// checks progressui's structure; returns the blocks or what is wrong.
pub fn plain_blocks(text: &str) -> Result<Vec<Block>, String> {
    let progress = text.split("\n#0 context: sent ").next().unwrap_or_default();
    let mut blocks = Vec::new();
    let mut highest = 0;
    for chunk in progress.split("\n\n") {
        let mut lines = chunk.lines();
        let Some(header) = lines.next() else {
            return Err(format!("an empty block in:\n{text}"));
        };
        let (number, name) = header
            .strip_prefix('#')
            .and_then(|h| h.split_once(' '))
            .and_then(|(n, name)| Some((n.parse::<usize>().ok()?, name)))
            .ok_or_else(|| format!("block header {header:?} is not `#N name`"))?;
        if number > highest + 1 {
            return Err(format!(
                "#{number} appears before #{}:\n{text}",
                highest + 1
            ));
        }
        highest = highest.max(number);
        let prefix = format!("#{number} ");
        let mut body = Vec::new();
        for line in lines {
            let rest = line
                .strip_prefix(&prefix)
                .ok_or_else(|| format!("{line:?} in the block of #{number}:\n{text}"))?;
            body.push(rest.to_owned());
        }
        let block = Block {
            number,
            name: name.to_owned(),
            lines: body,
        };
        for (k, line) in block.lines.iter().enumerate() {
            let last = k + 1 == block.lines.len();
            if line == "..." && !last {
                return Err(format!("`#{number} ...` inside a block:\n{text}"));
            }
            if (line == "CACHED" || line.starts_with("DONE ") || line.starts_with("ERROR: "))
                && !last
            {
                return Err(format!("#{number} {line} does not end its block:\n{text}"));
            }
        }
        if !block.is_final() && block.end() != "..." && !block.lines.is_empty() {
            // A block may stop without an ending only where the build stopped.
            if blocks.len() + 1 != progress.split("\n\n").count() {
                return Err(format!(
                    "block of #{number} ends with {:?}:\n{text}",
                    block.end()
                ));
            }
        }
        blocks.push(block);
    }
    Ok(blocks)
}

/// Every step's last block ends it. A step loading the shared base image may stop at `...`:
/// BuildKit runs one vertex for all builds that load the same image at once, and once, on
/// the Engine with the whole suite building from that image beside, this build's `FROM`
/// block stopped at its `resolve` line with no end while every later step ended. Alone, 66
/// rebuilds traced in rawjson all had the daemon end that vertex; the step is the image
/// load, not what these tests are about.
fn assert_every_step_ends(blocks: &[Block], text: &str) {
    let highest = blocks.iter().map(|b| b.number).max().unwrap_or(0);
    for n in 1..=highest {
        let last = blocks.iter().rev().find(|b| b.number == n).unwrap();
        let shared_image = last.name.contains("] FROM ");
        assert!(
            last.is_final() || (shared_image && last.end() == "..."),
            "#{n} never ends:\n{text}"
        );
    }
}

/// The log lines of a block: `<seconds> <text>`, without the seconds.
fn log_texts(block: &Block) -> Vec<String> {
    block
        .lines
        .iter()
        .filter_map(|l| {
            l.split_once(' ')
                .filter(|(s, _)| is_log_seconds(s))
                .map(|(_, t)| t.to_owned())
        })
        .collect()
}

fn build(tier: Tier, dir: &Path, extra: &[&str]) -> Output {
    util::bin()
        .args(["--addr", &tier.addr(), "build", "--context"])
        .arg(dir)
        .args(["--opt", "force-network-mode=none"])
        .args(extra)
        .output()
        .unwrap()
}

fn context(dockerfile: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Dockerfile"), dockerfile).unwrap();
    std::fs::write(dir.path().join("file.txt"), "context file\n").unwrap();
    dir
}

tier_tests!(
    parallel_stages_print_as_progressui_blocks_and_a_rebuild_as_cached,
    a_failing_run_shows_its_output_and_the_dockerfile_lines_as_buildctl_does,
    tty_view_through_a_terminal_ends_with_the_final_view,
);

fn parallel_stages_print_as_progressui_blocks_and_a_rebuild_as_cached(tier: Tier) {
    let _cache = tier.cache_shared();
    let base = util::env("PF_TEST_BASE_IMAGE");
    // A value no earlier run used, so the first build really runs its steps.
    let salt = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let dir = context(&format!(
        "FROM {base} AS base\nRUN echo base-{salt}\n\n\
         FROM base AS a\nRUN for i in 1 2 3; do echo a-$i; sleep 0.2; done\n\n\
         FROM base AS b\nRUN for i in 1 2 3; do echo b-$i; sleep 0.2; done\n\n\
         FROM base\nCOPY --from=a /bin/busybox /a\nCOPY --from=b /bin/busybox /b\nCOPY file.txt /ctx/\n"
    ));
    let out = build(tier, dir.path(), &["--progress", "plain"]);
    let err = util::stderr(&out);
    assert!(out.status.success(), "{err}");
    let blocks = plain_blocks(&err).unwrap_or_else(|e| panic!("{e}"));
    assert_every_step_ends(&blocks, &err);
    assert_eq!(blocks[0].number, 1, "{err}");
    // Each parallel stage's lines are all in its own blocks, in order, with timestamps.
    for stage in ["a", "b"] {
        let name = format!("[{stage} 1/1] RUN");
        let mine: Vec<&Block> = blocks
            .iter()
            .filter(|b| b.name.starts_with(&name))
            .collect();
        assert!(!mine.is_empty(), "no block for {name}:\n{err}");
        let texts: Vec<String> = mine.iter().flat_map(|b| log_texts(b)).collect();
        let want: Vec<String> = (1..=3).map(|i| format!("{stage}-{i}")).collect();
        assert_eq!(texts, want, "{err}");
        assert!(mine.last().unwrap().end().starts_with("DONE "), "{err}");
    }
    // The context transfer has its status line and ends DONE (possibly after a restart).
    let ctx: Vec<&Block> = blocks
        .iter()
        .filter(|b| b.name == "[internal] load build context")
        .collect();
    assert!(!ctx.is_empty(), "{err}");
    assert!(ctx.iter().all(|b| ctx[0].number == b.number), "{err}");
    assert!(ctx.last().unwrap().end().starts_with("DONE "), "{err}");
    assert!(
        ctx.iter()
            .flat_map(|b| &b.lines)
            .any(|l| l.starts_with("transferring context: ")),
        "{err}"
    );

    // The same build again: the RUN steps come from the cache.
    let again = build(tier, dir.path(), &["--progress", "plain"]);
    let err = util::stderr(&again);
    assert!(again.status.success(), "{err}");
    let blocks = plain_blocks(&err).unwrap_or_else(|e| panic!("{e}"));
    assert_every_step_ends(&blocks, &err);
    for name in ["[base 2/2] RUN", "[a 1/1] RUN", "[b 1/1] RUN"] {
        let block = blocks
            .iter()
            .find(|b| b.name.starts_with(name))
            .unwrap_or_else(|| panic!("no {name}:\n{err}"));
        assert_eq!(block.lines, vec!["CACHED"], "{err}");
    }
}

fn a_failing_run_shows_its_output_and_the_dockerfile_lines_as_buildctl_does(tier: Tier) {
    let base = util::env("PF_TEST_BASE_IMAGE");
    let dir = context(&format!(
        "FROM {base}\nRUN echo ok\nRUN echo out-1 && echo out-2 && exit 3\nRUN echo never\n"
    ));
    let out = build(tier, dir.path(), &["--progress", "plain", "--no-cache"]);
    assert_eq!(out.status.code(), Some(1));
    let err = util::stderr(&out);
    let blocks = plain_blocks(&err).unwrap_or_else(|e| panic!("{e}"));
    let failed = blocks
        .iter()
        .find(|b| b.name == "[3/4] RUN echo out-1 && echo out-2 && exit 3")
        .unwrap_or_else(|| panic!("{err}"));
    assert_eq!(log_texts(failed), vec!["out-1", "out-2"], "{err}");
    assert!(failed.end().starts_with("ERROR: process "), "{err}");
    assert!(failed.end().ends_with("exit code: 3"), "{err}");

    // After the progress: the step's last lines, then the Dockerfile around line 3.
    let summary = err
        .split("\n------\n")
        .skip(1)
        .collect::<Vec<_>>()
        .join("\n------\n");
    let lines: Vec<&str> = summary.lines().collect();
    assert_eq!(
        lines[0], " > [3/4] RUN echo out-1 && echo out-2 && exit 3:",
        "{err}"
    );
    assert!(
        lines[1].ends_with(" out-1") && is_log_seconds(lines[1].split(' ').next().unwrap()),
        "{err}"
    );
    assert!(lines[2].ends_with(" out-2"), "{err}");
    assert_eq!(lines[3], "------", "{err}");
    assert_eq!(lines[4], "Dockerfile:3", "{err}");
    assert_eq!(lines[5], "--------------------", "{err}");
    assert_eq!(lines[6], format!("   1 |     FROM {base}"), "{err}");
    assert_eq!(lines[7], "   2 |     RUN echo ok", "{err}");
    assert_eq!(
        lines[8], "   3 | >>> RUN echo out-1 && echo out-2 && exit 3",
        "{err}"
    );
    assert_eq!(lines[9], "   4 |     RUN echo never", "{err}");
    assert_eq!(lines[10], "   5 |     ", "{err}");
    assert_eq!(lines[11], "--------------------", "{err}");
    assert!(
        lines[12].starts_with("ERROR: failed to solve: process "),
        "{err}"
    );
}

fn tty_view_through_a_terminal_ends_with_the_final_view(tier: Tier) {
    let _cache = tier.cache_shared();
    let dir = context("FROM scratch\nCOPY file.txt /\n");
    // `script` gives the build a pseudo-terminal on stderr, 100×30.
    let command = format!(
        "stty cols 100 rows 30; {} --addr {} build --context {} --progress auto",
        env!("CARGO_BIN_EXE_pf-buildkit"),
        tier.addr(),
        dir.path().display()
    );
    let out = std::process::Command::new("script")
        .args(["-qefc", &command, "/dev/null"])
        .env_remove("BUILDKIT_HOST")
        .output()
        .unwrap();
    let text = util::stdout(&out);
    assert!(out.status.success(), "{text}");
    // auto chose the live view: redraws, a header, and the final view with FINISHED.
    assert!(text.contains("\x1b[2K"), "{text:?}");
    assert!(text.contains("[+] Building"), "{text:?}");
    let final_view = text.rsplit("[+] Building").next().unwrap();
    assert!(final_view.contains("FINISHED"), "{text:?}");
    assert!(final_view.contains("[1/1] COPY file.txt /"), "{text:?}");
    // The view showed the transfer; plain's summary line does not follow it.
    assert!(!text.contains("context: sent"), "{text:?}");
    // No line of the view is wider than the terminal.
    for line in text.split(['\n', '\r']) {
        let visible: String = strip_ansi(line);
        assert!(visible.chars().count() <= 100, "{visible:?}");
    }
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ params final-byte
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

#[test]
fn dockerfile_check_warnings_show_in_the_step_at_the_end_and_in_metadata_and_rawjson() {
    // The Engine's BuildKit runs no Dockerfile checks: the standalone tier only.
    let Some(tier) = Tier::Standalone.present(module_path!()) else {
        return;
    };
    let addr = tier.addr();
    let base = util::env("PF_TEST_BASE_IMAGE");
    let dir = context(&format!("FROM {base} as base\nCOPY file.txt /\n"));
    let metadata = dir.path().join("metadata.json");
    let run = |progress: &str| {
        util::bin()
            .args(["--addr", &addr, "build", "--context"])
            .arg(dir.path())
            .args(["--progress", progress, "--metadata-file"])
            .arg(&metadata)
            .output()
            .unwrap()
    };
    let out = run("plain");
    let err = util::stderr(&out);
    assert!(out.status.success(), "{err}");
    let short = "FromAsCasing: 'as' and 'FROM' keywords' casing do not match (line 1)";
    let blocks = plain_blocks(&err).unwrap_or_else(|e| panic!("{e}"));
    assert_every_step_ends(&blocks, &err);
    // In the stream, the warning shows in the block of the step that raised it when it came
    // before that step's block ended (as progressui: a later one only shows at the end).
    for block in blocks
        .iter()
        .filter(|b| b.lines.iter().any(|l| l.starts_with("WARN: ")))
    {
        assert_eq!(
            block.name, "[internal] load build definition from Dockerfile",
            "{err}"
        );
        assert!(block.lines.contains(&format!("WARN: {short}")), "{err}");
    }
    assert!(
        err.contains(&format!("\n 1 warning found:\n - {short}\n")),
        "{err}"
    );

    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&metadata).unwrap()).unwrap();
    let warnings = meta["buildx.build.warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{meta}");
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(warnings[0]["short"].as_str().unwrap())
        .unwrap();
    assert_eq!(String::from_utf8(decoded).unwrap(), short);
    assert_eq!(warnings[0]["range"][0]["start"]["line"], 1, "{meta}");
    assert_eq!(
        warnings[0]["sourceInfo"]["filename"], "Dockerfile",
        "{meta}"
    );

    let out = run("rawjson");
    let err = util::stderr(&out);
    assert!(out.status.success(), "{err}");
    let in_json = err
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("warnings").cloned())
        .count();
    assert_eq!(in_json, 1, "{err}");
}
