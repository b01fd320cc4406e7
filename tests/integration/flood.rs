//! The session under many small messages (issue 8): contexts and `local` exports of tens of
//! thousands of files on the standalone BuildKit daemon, which the fleet runs and which reaches
//! the session through `Control.Session`. Every fsutil STAT, REQ and EOF travels as its own
//! small HTTP/2 DATA frame on two HTTP/2 connections (the Control connection and the session's
//! own), and h2 ends a connection that leaves too many of them unread
//! (`ENHANCE_YOUR_CALM "too_many_data_frames"`). Before the fix a 40,000-file context failed
//! after about a thousand files, and exports of 30,000 files failed every time.
//!
//! The tests need the standalone tier; without it they say so on stderr (`Tier::present`).

use std::path::{Path, PathBuf};

use crate::util::{self, Tier};

/// The standalone daemon's address, or `None` (with a line on stderr saying why the test does
/// not run) when the tier is absent.
fn standalone(test: &str) -> Option<String> {
    Tier::Standalone.present(test).map(Tier::addr)
}

/// Writes `count` small files under `root`, 200 to a directory: `dNNN/fNNNNNN` holding `"N\n"`.
fn many_files(root: &Path, count: usize) {
    for i in 0..count {
        let dir = root.join(format!("d{:03}", i % 200));
        if i < 200 {
            std::fs::create_dir_all(&dir).unwrap();
        }
        std::fs::write(dir.join(format!("f{i:06}")), format!("{i}\n")).unwrap();
    }
}

/// A fresh cache home: a new node id, so the daemon has no earlier transfer to diff against
/// and the context is sent whole (cold).
fn cold_cache(dir: &Path) -> PathBuf {
    let home = dir.join("cache");
    std::fs::create_dir_all(&home).unwrap();
    home
}

fn assert_ok(out: &std::process::Output) {
    let stderr = util::stderr(out);
    assert!(
        out.status.success(),
        "exit {:?}\nstderr (last 40 lines):\n{}",
        out.status.code(),
        stderr
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The number of files the plain progress says were sent (`#0 context: sent N files, ...`).
fn files_sent(stderr: &str) -> u64 {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("#0 context: sent "))
        .unwrap_or_else(|| panic!("no transfer line in:\n{stderr}"));
    line["#0 context: sent ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// 60,000 files through the session twice: a cold context transfer, then the `local` export of
/// the same files back into a directory, every file checked.
#[test]
fn local_export_of_60000_files_keeps_the_session_up() {
    const FILES: usize = 60_000;
    let Some(addr) = standalone("local_export_of_60000_files_keeps_the_session_up") else {
        return;
    };
    let _cache = Tier::Standalone.cache_shared();
    let dir = tempfile::tempdir().unwrap();
    let ctx = dir.path().join("ctx");
    many_files(&ctx.join("files"), FILES);
    std::fs::write(ctx.join("Dockerfile"), "FROM scratch\nCOPY files /\n").unwrap();
    let dest = dir.path().join("out");
    let out = util::bin()
        .args(["--addr", &addr, "build", "--progress", "plain", "--context"])
        .arg(&ctx)
        .arg("--output")
        .arg(format!("type=local,dest={}", dest.display()))
        .env("XDG_CACHE_HOME", cold_cache(dir.path()))
        .output()
        .unwrap();
    assert_ok(&out);
    assert!(files_sent(&util::stderr(&out)) >= FILES as u64);
    let mut found = 0;
    for i in 0..FILES {
        let path = dest.join(format!("d{:03}/f{i:06}", i % 200));
        let content = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{} was not exported: {e}", path.display()));
        assert_eq!(content, format!("{i}\n"), "{}", path.display());
        found += 1;
    }
    assert_eq!(found, FILES);
    // Nothing else: no temporary files left behind, no stray entries.
    let dirs: Vec<_> = std::fs::read_dir(&dest).unwrap().collect();
    assert_eq!(dirs.len(), 200);
    for d in dirs {
        let count = std::fs::read_dir(d.unwrap().path()).unwrap().count();
        assert_eq!(count, FILES / 200);
    }
}

/// A cold transfer of a 100,000-file context (REQs from the daemon for every file, in bursts),
/// exported as a tar: the tar exporter writes each small file's bytes and padding as messages
/// of their own, another flood of small frames in the other direction.
#[test]
fn cold_context_of_100000_files_and_its_tar_export() {
    const FILES: usize = 100_000;
    let Some(addr) = standalone("cold_context_of_100000_files_and_its_tar_export") else {
        return;
    };
    let _cache = Tier::Standalone.cache_shared();
    let dir = tempfile::tempdir().unwrap();
    let ctx = dir.path().join("ctx");
    many_files(&ctx, FILES);
    let dockerfile = dir.path().join("Dockerfile");
    std::fs::write(&dockerfile, "FROM scratch\nCOPY . /\n").unwrap();
    let tar = dir.path().join("out.tar");
    let out = util::bin()
        .args(["--addr", &addr, "build", "--progress", "plain", "--context"])
        .arg(&ctx)
        .arg("--file")
        .arg(&dockerfile)
        .arg("--output")
        .arg(format!("type=tar,dest={}", tar.display()))
        .env("XDG_CACHE_HOME", cold_cache(dir.path()))
        .output()
        .unwrap();
    assert_ok(&out);
    assert_eq!(files_sent(&util::stderr(&out)), FILES as u64);
    let listing = std::process::Command::new("tar")
        .arg("tf")
        .arg(&tar)
        .output()
        .unwrap();
    assert!(listing.status.success());
    let files = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .filter(|l| {
            l.rsplit('/')
                .next()
                .is_some_and(|name| name.starts_with('f'))
        })
        .count();
    assert_eq!(files, FILES);
}
