//! `history ls|logs|inspect|rm|export` against real daemons: a private standalone buildkitd
//! (a history of its own, so `^N` is certain) and the Engine's BuildKit (shared with other
//! tests: builds are found by a build argument of this test's own); the fleet form through the
//! fake API server with two pods; and a daemon without the history API.

use std::path::Path;
use std::process::Output;

use crate::fake_kube::{Scenario, tcp, unix, without_build_history};
use crate::sandbox::Buildkitd;
use crate::util::{self, Tier, assert_one_line_failure};

/// A build argument no other test or run uses, to find this test's builds in a shared history.
fn unique_id(what: &str) -> String {
    util::unique_repo(what).replace(['/', '-'], "")
}

/// The context of a build that passes (`fail` false) or fails at its third step.
fn context(fail: bool) -> tempfile::TempDir {
    let base = util::env("PF_TEST_BASE_IMAGE");
    let last = if fail {
        "RUN echo out-1 && echo out-2 && exit 3"
    } else {
        "RUN echo out-1 && echo out-2"
    };
    let dir = tempfile::Builder::new()
        .prefix("history-")
        .tempdir()
        .unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        format!("FROM {base}\nARG ID\nRUN echo start-$ID\n{last}\nRUN echo never\n"),
    )
    .unwrap();
    dir
}

fn build(addr: &str, dir: &Path, id: &str) -> Output {
    util::bin()
        .args(["--addr", addr, "build", "--progress", "plain", "--no-cache"])
        .args(["--opt", "force-network-mode=none", "--build-arg"])
        .arg(format!("ID={id}"))
        .arg("--context")
        .arg(dir)
        .output()
        .unwrap()
}

fn history(addr: &str, args: &[&str]) -> Output {
    util::bin()
        .args(["--addr", addr, "history"])
        .args(args)
        .output()
        .unwrap()
}

/// `history ls --format json`, parsed.
fn list(addr: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["ls", "--format", "json"];
    args.extend_from_slice(extra);
    let out = history(addr, &args);
    assert!(out.status.success(), "{}", util::stderr(&out));
    serde_json::from_str(&util::stdout(&out)).unwrap()
}

/// The record whose `ID` build argument is `id`.
fn record_of<'a>(records: &'a [serde_json::Value], id: &str) -> Option<&'a serde_json::Value> {
    records
        .iter()
        .find(|r| r["frontend_attrs"]["build-arg:ID"] == id)
}

/// Plain progress with what differs between a live run and its replay taken out, all of it
/// timing: durations and log times; a transfer's in-flight amounts (`#1 transferring
/// dockerfile:` before its `… 160B done`), shown as often as the live view happened to print;
/// where the live view closed a step's block and opened it again (`#4 DONE`, then `#4 [1/4]
/// FROM …` anew once layers are pulled); the context summary only the sending client knows;
/// the binary's own last line; and the order in which steps started at about the same time
/// first appear, hence their numbers (the daemon records the stream as its own subscription
/// received it). What is left: each step's lines, by step, then the summary after the
/// progress, line for line.
fn timeless(text: &str) -> (Vec<Vec<String>>, Vec<String>) {
    let number = regex::Regex::new(r"\d+\.\d+s?\b").unwrap();
    let step = regex::Regex::new(r"^#(\d+) ").unwrap();
    let lines: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with("#0 context: sent") && !l.starts_with("pf-buildkit: "))
        .map(|l| number.replace_all(l, "T").into_owned())
        .collect();
    let in_flight = |i: usize| {
        let line = &lines[i];
        let Some((id, _)) = line.split_once(':') else {
            return false;
        };
        !line.ends_with(" done")
            && lines[i + 1..]
                .iter()
                .any(|l| l.starts_with(&format!("{id}:")) && l.ends_with(" done"))
    };
    let mut steps: Vec<(String, Vec<String>)> = Vec::new();
    let mut summary = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if !summary.is_empty() || line == "------" || line.starts_with("ERROR: ") {
            summary.push(line.clone());
            continue;
        }
        let Some(n) = step.captures(line).map(|c| c[1].to_owned()) else {
            continue; // the blank lines between blocks
        };
        if in_flight(i) || line.ends_with(" ...") {
            continue;
        }
        match steps.iter_mut().find(|(m, _)| *m == n) {
            None => steps.push((n, vec![line.clone()])),
            Some((_, seen)) => {
                if seen[0] == *line {
                    continue; // the block opened again
                }
                // An end the step went on from was the live view's timing.
                let ended = |l: &String| {
                    l.ends_with(" DONE T") || l.ends_with(" CACHED") || l.contains(" ERROR: ")
                };
                if seen.last().is_some_and(ended) {
                    seen.pop();
                }
                seen.push(line.clone());
            }
        }
    }
    let mut steps: Vec<Vec<String>> = steps
        .into_iter()
        .map(|(_, lines)| {
            lines
                .iter()
                .map(|l| step.replace(l, "# ").into_owned())
                .collect()
        })
        .collect();
    steps.sort();
    (steps, summary)
}

/// The value of `inspect`'s `NAME:   value` line.
fn field<'a>(text: &'a str, name: &str) -> &'a str {
    let prefix = format!("{name}:");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        .trim()
}

tier_tests!(a_passing_and_a_failing_build_are_listed_replayed_inspected_exported_and_removed);

fn a_passing_and_a_failing_build_are_listed_replayed_inspected_exported_and_removed(tier: Tier) {
    // The standalone daemon: one of this test's own, whose history holds only these builds.
    let private = (tier == Tier::Standalone).then(Buildkitd::start);
    let addr = private
        .as_ref()
        .map_or_else(|| tier.addr(), Buildkitd::addr);
    let (pass_id, fail_id) = (unique_id("pass"), unique_id("fail"));
    let (pass_dir, fail_dir) = (context(false), context(true));

    let passed = build(&addr, pass_dir.path(), &pass_id);
    assert!(passed.status.success(), "{}", util::stderr(&passed));
    let failed = build(&addr, fail_dir.path(), &fail_id);
    assert_eq!(failed.status.code(), Some(1), "{}", util::stderr(&failed));

    // ls: both, newest first, with their status, name and step counts.
    let records = list(&addr, &[]);
    let pass = record_of(&records, &pass_id).expect("the passing build is listed");
    let fail = record_of(&records, &fail_id).expect("the failing build is listed");
    let (pass_ref, fail_ref) = (
        pass["ref"].as_str().unwrap().to_owned(),
        fail["ref"].as_str().unwrap().to_owned(),
    );
    assert_eq!(pass["status"], "completed", "{pass}");
    assert_eq!(fail["status"], "failed", "{fail}");
    assert_eq!(fail["address"], addr.as_str());
    let dir_name = fail_dir.path().file_name().unwrap().to_str().unwrap();
    assert_eq!(fail["name"], dir_name, "the context's directory names it");
    assert!(fail["steps"]["total"].as_i64().unwrap() >= 4, "{fail}");
    assert!(
        fail["error"]["message"]
            .as_str()
            .unwrap()
            .contains("exit code: 3")
    );
    let position = |r: &str| records.iter().position(|x| x["ref"] == r).unwrap();
    assert!(position(&fail_ref) < position(&pass_ref), "newest first");
    let failed_only = list(&addr, &["--filter", "status=failed"]);
    assert!(record_of(&failed_only, &fail_id).is_some());
    assert!(record_of(&failed_only, &pass_id).is_none());
    assert!(failed_only.iter().all(|r| r["status"] == "failed"));
    let table = history(&addr, &["ls"]);
    let table = util::stdout(&table);
    let header = table.lines().next().unwrap();
    for column in [
        "REF", "ADDRESS", "NAME", "STATUS", "STARTED", "DURATION", "STEPS",
    ] {
        assert!(header.contains(column), "{header}");
    }
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&fail_ref) && l.contains(" failed ")),
        "{table}"
    );

    // logs: the progress as it showed live, line for line apart from timing, for both.
    for (reference, live) in [(&fail_ref, &failed), (&pass_ref, &passed)] {
        let replay = history(&addr, &["logs", reference]);
        assert!(replay.status.success(), "{}", util::stderr(&replay));
        assert!(replay.stdout.is_empty());
        assert_eq!(
            timeless(&util::stderr(&replay)),
            timeless(&util::stderr(live)),
            "replay:\n{}\nlive:\n{}",
            util::stderr(&replay),
            util::stderr(live)
        );
    }
    let replay = util::stderr(&history(&addr, &["logs", &fail_ref]));
    assert!(replay.contains("Dockerfile:4\n"), "{replay}");
    assert!(
        replay.contains(" 4 | >>> RUN echo out-1 && echo out-2 && exit 3\n"),
        "{replay}"
    );
    assert!(
        replay
            .trim_end()
            .lines()
            .last()
            .unwrap()
            .starts_with("ERROR: failed to solve: process "),
        "{replay}"
    );
    // A unique start of the ref is enough.
    let prefix = history(&addr, &["logs", &fail_ref[..fail_ref.len() - 3]]);
    assert_eq!(util::stderr(&prefix), replay);

    // inspect: the build's inputs, result and error.
    let out = history(&addr, &["inspect", &fail_ref]);
    assert!(out.status.success(), "{}", util::stderr(&out));
    let text = util::stdout(&out);
    assert_eq!(field(&text, "Ref"), fail_ref);
    assert_eq!(field(&text, "Context"), dir_name);
    assert_eq!(field(&text, "Dockerfile"), "Dockerfile");
    assert_eq!(field(&text, "Status"), "failed");
    assert!(field(&text, "Error").ends_with("exit code: 3"), "{text}");
    for expected in [
        format!("ID          {fail_id}"),
        " 4 | >>> RUN echo out-1".to_owned(),
        format!("Print build logs: pf-buildkit history logs {fail_ref} --addr {addr}"),
    ] {
        assert!(text.contains(&expected), "{expected:?} not in\n{text}");
    }
    let out = history(&addr, &["inspect", &fail_ref, "--format", "json"]);
    let json: serde_json::Value = serde_json::from_str(&util::stdout(&out)).unwrap();
    assert_eq!(json["record"]["ref"], fail_ref.as_str());
    assert_eq!(json["status"], "failed");
    assert!(
        json["failure"]["sources"][0]
            .as_str()
            .unwrap()
            .contains(">>> RUN echo out-1"),
        "{json}"
    );

    // ^N counts from the newest, where the history is this test's alone.
    if private.is_some() {
        let newest = history(&addr, &["inspect", "^0", "--format", "json"]);
        let newest: serde_json::Value = serde_json::from_str(&util::stdout(&newest)).unwrap();
        assert_eq!(newest["record"]["ref"], fail_ref.as_str());
        let before = history(&addr, &["logs", "^1"]);
        assert_eq!(
            timeless(&util::stderr(&before)),
            timeless(&util::stderr(&passed))
        );
        let e = assert_one_line_failure(&history(&addr, &["logs", "^2"]));
        assert!(e.contains("no build ^2: the history holds 2 builds"), "{e}");
    }

    // export, then read back without the daemon.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("failed.tar");
    let out = history(&addr, &["export", &fail_ref, "-o", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", util::stderr(&out));
    let from_file = util::bin()
        .args(["history", "logs", "--file", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(from_file.status.success(), "{}", util::stderr(&from_file));
    assert_eq!(util::stderr(&from_file), replay);
    let from_file = util::bin()
        .args(["history", "inspect", "--format", "json", "--file"])
        .arg(&file)
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_str(&util::stdout(&from_file)).unwrap();
    assert_eq!(json["record"]["ref"], fail_ref.as_str());
    assert_eq!(json["source"], addr.as_str());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temporary file left"
    );
    // Its mode is that of any file the user writes (the umask's), not a temporary file's.
    let probe = dir.path().join("probe");
    std::fs::write(&probe, b"").unwrap();
    let mode =
        |p: &Path| std::os::unix::fs::PermissionsExt::mode(&p.metadata().unwrap().permissions());
    assert_eq!(mode(&file), mode(&probe));
    std::fs::remove_file(probe).unwrap();
    // A damaged archive is one line.
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() - 2048;
    bytes[at] ^= 0xff;
    let damaged = dir.path().join("damaged.tar");
    std::fs::write(&damaged, bytes).unwrap();
    let out = util::bin()
        .args(["history", "logs", "--file", damaged.to_str().unwrap()])
        .output()
        .unwrap();
    let e = util::stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(
        e.trim_end()
            .lines()
            .last()
            .unwrap()
            .starts_with("pf-buildkit: "),
        "{e}"
    );

    // rm: the record goes; asking for it again is one line.
    let out = history(&addr, &["rm", &pass_ref]);
    assert!(out.status.success(), "{}", util::stderr(&out));
    assert_eq!(util::stdout(&out).trim(), pass_ref);
    assert!(record_of(&list(&addr, &[]), &pass_id).is_none());
    let e = assert_one_line_failure(&history(&addr, &["logs", &pass_ref]));
    assert!(
        e.contains(&format!("no build record with ref {pass_ref}")),
        "{e}"
    );
    let e = assert_one_line_failure(&history(&addr, &["rm", "nosuchref0000"]));
    assert!(e.contains("no build record with ref nosuchref0000"), "{e}");
    let e = util::assert_usage_error(&history(&addr, &["logs", "not/a/ref"]));
    assert!(e.contains("is not a build ref"), "{e}");
}

#[tokio::test]
async fn the_fleet_form_lists_both_pods_and_finds_the_pod_that_holds_a_ref() {
    let Some(tier) = Tier::Standalone.present(module_path!()) else {
        return;
    };
    // Two pods: the shared standalone daemon, and one of this test's own.
    let own = tokio::task::spawn_blocking(Buildkitd::start).await.unwrap();
    let fake = Scenario::new()
        .pod("buildkit-amd64-0", "Running", "10.0.0.10", true)
        .dial(
            "buildkit-amd64-0",
            tcp(tier.addr().trim_start_matches("tcp://").to_owned()),
        )
        .pod("buildkit-arm64-0", "Running", "10.0.1.10", true)
        .dial("buildkit-arm64-0", unix(own.socket()))
        .start()
        .await;
    let (shared_id, own_id) = (unique_id("fleet"), unique_id("fleet"));
    let (shared_dir, own_dir) = (context(false), context(true));
    let (shared_addr, own_addr) = (tier.addr(), own.addr());
    let (a, b) = (shared_dir.path().to_owned(), own_dir.path().to_owned());
    let (sid, oid) = (shared_id.clone(), own_id.clone());
    tokio::task::spawn_blocking(move || {
        assert!(build(&shared_addr, &a, &sid).status.success());
        assert_eq!(build(&own_addr, &b, &oid).status.code(), Some(1));
    })
    .await
    .unwrap();

    let out = fake
        .run(&["history", "ls", "--context", "fake", "--format", "json"])
        .await;
    assert!(out.status.success(), "{}", util::stderr(&out));
    let records: Vec<serde_json::Value> = serde_json::from_str(&util::stdout(&out)).unwrap();
    let shared = record_of(&records, &shared_id).expect("the shared pod's build");
    let mine = record_of(&records, &own_id).expect("the other pod's build");
    assert_eq!(shared["pod"], "buildkit-amd64-0");
    assert_eq!(mine["pod"], "buildkit-arm64-0");
    assert_eq!(mine["status"], "failed");
    let table = util::stdout(&fake.run(&["history", "ls", "--context", "fake"]).await);
    assert!(table.lines().next().unwrap().contains("POD"), "{table}");

    // logs and inspect find the pod that holds the ref.
    let reference = mine["ref"].as_str().unwrap();
    let out = fake
        .run(&["history", "logs", reference, "--context", "fake"])
        .await;
    assert!(out.status.success(), "{}", util::stderr(&out));
    assert!(
        util::stderr(&out).contains(" 4 | >>> RUN echo out-1 && echo out-2 && exit 3"),
        "{}",
        util::stderr(&out)
    );
    let out = fake
        .run(&["history", "inspect", reference, "--context", "fake"])
        .await;
    let text = util::stdout(&out);
    assert_eq!(field(&text, "Pod"), "buildkit-arm64-0");
    assert!(
        text.contains(&format!("pf-buildkit history logs {reference} --fleet")),
        "{text}"
    );
    // rm deletes it on that pod only.
    let out = fake
        .run(&["history", "rm", reference, "--context", "fake"])
        .await;
    assert!(out.status.success(), "{}", util::stderr(&out));
    let own_addr = own.addr();
    let left = tokio::task::spawn_blocking(move || list(&own_addr, &[]))
        .await
        .unwrap();
    assert!(record_of(&left, &own_id).is_none());
    // --addr and --context together are a usage error.
    let out = fake
        .run(&[
            "history",
            "ls",
            "--context",
            "fake",
            "--addr",
            "tcp://127.0.0.1:1",
        ])
        .await;
    util::assert_usage_error(&out);
    drop(own);
}

#[tokio::test]
async fn a_daemon_without_the_history_api_is_one_clear_line() {
    let tier = Tier::preferred();
    let dial = match tier {
        Tier::Standalone => tcp(tier.addr().trim_start_matches("tcp://").to_owned()),
        Tier::Engine => crate::fake_kube::docker_engine(util::docker_socket()),
    };
    let fake = Scenario::new()
        .pod("buildkit-amd64-0", "Running", "10.0.0.10", true)
        .dial("buildkit-amd64-0", without_build_history(dial))
        .start()
        .await;
    for args in [
        vec!["history", "ls", "--addr", "kube-pod://buildkit-amd64-0"],
        vec!["history", "ls", "--context", "fake"],
        vec!["history", "logs", "^0", "--context", "fake"],
    ] {
        let out = fake.run(&args).await;
        let e = assert_one_line_failure(&out);
        assert!(e.contains("keeps no build history"), "{args:?}: {e}");
        assert!(e.contains("BuildKit v0.11 or later"), "{e}");
    }
}
