//! Shared stores are safe (issue 16): many builds and a foreign writer export into one
//! directory at once, some builds cancelled at random moments, and the directory stays a
//! whole layout; and a lock another process holds on a layout neither stalls the client's
//! runtime nor hangs the build.
//!
//! The stress test's rounds are `PF_TEST_STRESS_ROUNDS` (default 2, what fits CI); its
//! figures (rounds, builds, cancellations, blobs verified, the foreign writer's blobs and
//! lock conflicts) go to stderr.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pf_buildkit::buildkit::oci_layout::LayoutError;
use pf_buildkit::buildkit::progress::{
    FailureReport, ProgressSink, QuietProgress, SolveStatus, TransferSummary,
};
use pf_buildkit::buildkit::{
    BuildError, BuildOptions, Cache, Client, Endpoint, Output, TlsOptions,
};

use crate::hostile_peer::snapshot;
use crate::leftovers::verify_shared_layout;
use crate::util::{self, Tier};

/// Builds at once in each round of the stress test.
const BUILDS: usize = 8;

/// A small pseudo-random sequence (xorshift), seeded from the clock: which builds are
/// cancelled, and when, differs from run to run; the seed is printed so a failure can be
/// replayed with `PF_TEST_STRESS_SEED`.
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// What one run of the foreign writer did (its one JSON line).
#[derive(Debug, Default, serde::Deserialize)]
struct Foreign {
    written: u64,
    skipped: u64,
    lock_conflicts: u64,
}

/// Runs `foreign_writer.py` (buildctl's way of writing a layout, in another process and
/// language, none of this crate's code) into `layout` under `tag`, after `delay`.
async fn foreign_write(layout: &Path, tag: &str, delay: Duration) -> Foreign {
    tokio::time::sleep(delay).await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/integration/foreign_writer.py"
    );
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .arg(layout)
        .arg(tag)
        .arg(util::env("PF_TEST_BASE_IMAGE"))
        .kill_on_drop(true)
        .output()
        .await
        .expect("python3 (scripts/testenv installs it, for moto)");
    assert!(
        out.status.success(),
        "the foreign writer failed: {}",
        util::stderr(&out)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A client of `tier`'s daemon.
pub(crate) async fn connect(tier: Tier) -> Client {
    let endpoint: Endpoint = tier.addr().parse().unwrap();
    Client::connect(endpoint, &TlsOptions::default())
        .await
        .unwrap()
}

/// Options for `ctx` on `tier`: no registry credentials, RUN steps without a network.
pub(crate) fn options_for(tier: Tier, ctx: &Path) -> BuildOptions {
    let mut options = BuildOptions::new(ctx);
    options.registry_auth = false;
    options.session_via_control = tier.session_via_control();
    options
        .frontend_attrs
        .insert("force-network-mode".into(), "none".into());
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_builds_share_one_directory_some_cancelled() {
    let tier = Tier::preferred();
    let rounds: usize = std::env::var("PF_TEST_STRESS_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(2);
    let seed: u64 = std::env::var("PF_TEST_STRESS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let mut dice = Dice(seed);
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().join("shared");
    let ctx = tmp.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    let base = util::env("PF_TEST_BASE_IMAGE");
    // A shared base layer (every build is told it exists but one), then a layer of its own.
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {base}\nARG N\nRUN echo $N > /n && head -c 300000 /dev/urandom > /r\n"),
    )
    .unwrap();
    let client = Arc::new(connect(tier).await);
    let cancelled = Arc::new(AtomicUsize::new(0));
    let verified = Arc::new(AtomicU64::new(0));
    let mut foreign = Foreign::default();
    let started = Instant::now();
    // The foreign writer's first image comes alone: the base image's blobs are then in the
    // directory before any build starts, as after an earlier buildctl export. (A blob that
    // a cancelled build wrote and buildctl was told exists can still be deleted under
    // buildctl, which takes no lock on the root: the README says so; this test keeps to
    // what the stores promise.)
    let seed_tag = format!("foreign-first-{seed}");
    foreign_write(&shared, &seed_tag, Duration::ZERO).await;
    for round in 0..rounds {
        // The foreign writer starts at a random moment among the builds.
        let foreign_tag = format!("foreign-r{round}-{seed}");
        let foreign_run = tokio::spawn({
            let (shared, tag) = (shared.clone(), foreign_tag.clone());
            let delay = Duration::from_millis(dice.below(3000));
            async move { foreign_write(&shared, &tag, delay).await }
        });
        let mut builds = Vec::new();
        for i in 0..BUILDS {
            let mut options = options_for(tier, &ctx);
            let id = format!("r{round}-b{i}-{seed}");
            options.build_args.insert("N".into(), id.clone());
            // Half the builds export their cache, half an OCI layout: both into one directory.
            if i % 2 == 0 {
                options.cache_exports.push(
                    Cache::local(&shared)
                        .with_attr("mode", "max")
                        .with_attr("tag", &id),
                );
            } else {
                options.outputs.push(
                    format!(
                        "type=oci,tar=false,dest={},name=stress/{id}",
                        shared.display()
                    )
                    .parse()
                    .unwrap(),
                );
            }
            // Three in eight are cancelled, anywhere from at once to well into the export.
            let cancel_after = (dice.below(8) < 3).then(|| Duration::from_millis(dice.below(3000)));
            let client = client.clone();
            let cancelled = cancelled.clone();
            builds.push(tokio::spawn(async move {
                let mut quiet = QuietProgress;
                let build = client.build(&options, &mut quiet);
                match cancel_after {
                    None => Some(build.await.map(|_| id)),
                    Some(after) => match tokio::time::timeout(after, build).await {
                        Ok(result) => Some(result.map(|_| id)),
                        Err(_) => {
                            cancelled.fetch_add(1, Ordering::Relaxed);
                            None
                        }
                    },
                }
            }));
        }
        let mut finished = Vec::new();
        for build in builds {
            match build.await.unwrap() {
                Some(Ok(id)) => finished.push(id),
                Some(Err(err)) => panic!("round {round} (seed {seed}): a build failed: {err}"),
                None => {}
            }
        }
        let run = foreign_run.await.unwrap();
        foreign.written += run.written;
        foreign.skipped += run.skipped;
        foreign.lock_conflicts += run.lock_conflicts;
        let blobs = verify_shared_layout(&shared, true);
        verified.fetch_add(blobs as u64, Ordering::Relaxed);
        let index = std::fs::read_to_string(shared.join("index.json")).unwrap();
        for id in finished.iter().chain([&seed_tag, &foreign_tag]) {
            assert!(
                index.contains(id.as_str()),
                "round {round}: {id} is not in index.json"
            );
        }
    }
    eprintln!(
        "stress (seed {seed}): {rounds} rounds of {BUILDS} builds and a foreign writer, {} \
         cancelled, {} blobs verified, foreign blobs {} written and {} found there, {} foreign \
         lock conflicts, {:.1} s",
        cancelled.load(Ordering::Relaxed),
        verified.load(Ordering::Relaxed),
        foreign.written,
        foreign.skipped,
        foreign.lock_conflicts,
        started.elapsed().as_secs_f64()
    );
}

/// Progress that counts updates and notes when the last one came.
struct Counting(Arc<AtomicUsize>);

impl ProgressSink for Counting {
    fn update(&mut self, _status: &SolveStatus) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn finish(&mut self, _transfer: &TransferSummary, _failure: Option<&FailureReport>) {}
}

/// `flock(1)` holding `lock` exclusively in another process until dropped.
struct Holder(std::process::Child);

impl Holder {
    fn take(lock: &Path) -> Holder {
        let mut child = std::process::Command::new("flock")
            .arg("-x")
            .arg(lock)
            .args(["-c", "echo locked; read _"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("flock(1) from util-linux");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "locked");
        Holder(child)
    }

    fn release(mut self) {
        self.0.stdin.as_mut().unwrap().write_all(b"\n").unwrap();
        self.0.wait().unwrap();
    }
}

/// A destination directory (holding a file of its own) whose `index.json.lock` another
/// process holds, and a context whose Dockerfile runs `run` on the base image (with `ARG N`).
struct LockedDir {
    _tmp: tempfile::TempDir,
    ctx: std::path::PathBuf,
    dir: std::path::PathBuf,
    lock: std::path::PathBuf,
    holder: Holder,
    /// The directory as it was before any build.
    before: snapshot::Snapshot,
}

impl LockedDir {
    fn new(run: &str) -> LockedDir {
        let tmp = tempfile::tempdir().unwrap();
        let ctx = tmp.path().join("ctx");
        let dir = tmp.path().join("dest");
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("keep"), b"was here before").unwrap();
        let base = util::env("PF_TEST_BASE_IMAGE");
        std::fs::write(
            ctx.join("Dockerfile"),
            format!("FROM {base}\nARG N\nRUN {run}\n"),
        )
        .unwrap();
        let lock = dir.join("index.json.lock");
        let holder = Holder::take(&lock);
        let before = snapshot::take(&dir);
        LockedDir {
            _tmp: tmp,
            ctx,
            dir,
            lock,
            holder,
            before,
        }
    }
}

/// On a single-threaded runtime, so that any blocking wait would stall everything: while
/// another process holds the layout's `index.json.lock`, the build runs and its progress
/// flows, a timer on the same runtime keeps ticking, and the build waits for the lock
/// (with the default deadline: it succeeds once the lock is released) or, with a short
/// deadline, fails naming the lock file and takes back what it wrote.
#[tokio::test]
async fn a_held_layout_lock_stalls_neither_the_runtime_nor_the_progress() {
    let tier = Tier::preferred();
    let LockedDir {
        _tmp,
        ctx,
        dir: layout,
        lock,
        holder,
        before,
    } = LockedDir::new("for i in 1 2 3 4; do echo tick-$N-$i; sleep 0.25; done");
    let client = connect(tier).await;

    // A timer beside the build: the longest gap between its ticks.
    let longest_gap = Arc::new(AtomicU64::new(0));
    let ticker = tokio::spawn({
        let longest_gap = longest_gap.clone();
        async move {
            let mut last = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let gap = last.elapsed().as_millis() as u64;
                longest_gap.fetch_max(gap, Ordering::Relaxed);
                last = Instant::now();
            }
        }
    });

    let nonce = format!("{}", std::process::id());
    let layout_output = || Output::oci_layout(&layout).with_attr("name", "locked/app:v1");

    // With a short deadline: one line naming the lock, and the layout as it was.
    let mut options = options_for(tier, &ctx);
    options.no_cache = true;
    options.build_args.insert("N".into(), format!("a{nonce}"));
    options.outputs.push(layout_output());
    options.store_lock_wait = Some(Duration::from_secs(2));
    let updates = Arc::new(AtomicUsize::new(0));
    let err = client
        .build(&options, &mut Counting(updates.clone()))
        .await
        .unwrap_err();
    let BuildError::Store { source, .. } = &err else {
        panic!("{err:?}");
    };
    let LayoutError::LockTimeout { path, .. } = source else {
        panic!("{source:?}");
    };
    assert_eq!(path, &lock);
    assert!(
        updates.load(Ordering::Relaxed) > 0,
        "no progress while the lock was held"
    );
    assert_eq!(
        snapshot::take(&layout),
        before,
        "the failed build left files"
    );

    // With the default deadline: the build waits, then finishes once the lock is released.
    let mut options = options_for(tier, &ctx);
    options.no_cache = true;
    options.build_args.insert("N".into(), format!("b{nonce}"));
    options.outputs.push(layout_output());
    let updates = Arc::new(AtomicUsize::new(0));
    let mut progress = Counting(updates.clone());
    let build = client.build(&options, &mut progress);
    tokio::pin!(build);
    // The export is done when the image's blobs are in and no upload is open: the build
    // is then waiting for the lock alone. It must still be waiting a while later.
    let mut holder = Some(holder);
    let mut exported_at: Option<Instant> = None;
    let mut poll = tokio::time::interval(Duration::from_millis(20));
    let deadline = tokio::time::sleep(Duration::from_secs(180));
    tokio::pin!(deadline);
    let result = loop {
        tokio::select! {
            result = &mut build => break result,
            _ = poll.tick() => {
                let uploading = std::fs::read_dir(layout.join("ingest"))
                    .is_ok_and(|mut e| e.next().is_some());
                let blobs = std::fs::read_dir(layout.join("blobs/sha256"))
                    .map(|e| e.count())
                    .unwrap_or(0);
                if exported_at.is_none() && blobs >= 3 && !uploading {
                    exported_at = Some(Instant::now());
                }
                if exported_at.is_some_and(|t| t.elapsed() > Duration::from_secs(3))
                    && let Some(holder) = holder.take()
                {
                    assert!(!layout.join("index.json").exists(), "index.json written under a held lock");
                    holder.release();
                }
            }
            () = &mut deadline => panic!("the build did not finish"),
        }
    };
    assert!(
        holder.is_none(),
        "the build finished while the lock was held: {result:?}"
    );
    result.unwrap();
    assert!(updates.load(Ordering::Relaxed) > 0);
    let index = std::fs::read_to_string(layout.join("index.json")).unwrap();
    assert!(index.contains("locked/app:v1"), "{index}");
    ticker.abort();
    let gap = longest_gap.load(Ordering::Relaxed);
    assert!(
        gap < 2000,
        "the runtime stalled for {gap} ms while the lock was held"
    );
}

/// The lock held by another process, seen from the binary: a build exporting its cache into
/// a directory whose `index.json.lock` a `flock(1)` process holds runs to the end of its
/// Solve with its progress on stderr, waits `--lock-wait` seconds for the lock, then fails
/// with one line naming the lock file, and the directory is as it was.
#[test]
fn a_cache_lock_another_process_holds_fails_the_build_at_the_deadline() {
    const WAIT: u64 = 3;
    let tier = Tier::preferred();
    let LockedDir {
        _tmp,
        ctx,
        dir: cache,
        lock,
        holder,
        before,
    } = LockedDir::new("for i in 1 2 3; do echo tick-$i; sleep 0.2; done");

    let mut child = util::bin()
        .args([
            "--addr",
            &tier.addr(),
            "build",
            "--progress",
            "plain",
            "--no-cache",
        ])
        .args([
            "--opt",
            "force-network-mode=none",
            "--lock-wait",
            &WAIT.to_string(),
        ])
        .arg("--context")
        .arg(&ctx)
        .arg("--export-cache")
        .arg(format!("type=local,dest={},mode=max", cache.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Each stderr line with the moment it came.
    let lines: Vec<(Instant, String)> = BufReader::new(child.stderr.take().unwrap())
        .lines()
        .map(|line| (Instant::now(), line.unwrap()))
        .collect();
    let status = child.wait().unwrap();
    let text: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
    assert_eq!(status.code(), Some(1), "{text:#?}");

    let errors: Vec<&(Instant, String)> = lines
        .iter()
        .filter(|(_, l)| l.starts_with("pf-buildkit: "))
        .collect();
    let [(failed_at, error)] = errors.as_slice() else {
        panic!("one error line expected: {text:#?}");
    };
    assert!(
        error.contains(&format!("waited {WAIT}s for the lock {}", lock.display()))
            && error.ends_with("raise --lock-wait"),
        "{error}"
    );
    let progress: Vec<&(Instant, String)> =
        lines.iter().filter(|(_, l)| l.starts_with('#')).collect();
    assert!(
        progress.iter().any(|(_, l)| l.contains("tick-3")),
        "the RUN step's output did not flow while the lock was held: {text:#?}"
    );
    // The wait came after the Solve's last progress, and lasted the deadline.
    let (last_progress, _) = progress.last().unwrap();
    let waited = failed_at.duration_since(*last_progress);
    assert!(
        waited >= Duration::from_millis(WAIT * 1000 - 500),
        "failed {waited:?} after the last progress line, before the {WAIT} s deadline"
    );
    assert_eq!(
        snapshot::take(&cache),
        before,
        "the failed build left files"
    );
    holder.release();
}
