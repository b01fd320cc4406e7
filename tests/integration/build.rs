//! `pf-buildkit build` against the real Docker Engine's BuildKit and the real registry:
//! context transfer and exports, RUN with secrets and build args, failures, pushes,
//! incremental transfer, bad input and interrupts.
// Test helpers panic on purpose: a failed setup step is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use sha2::{Digest, Sha256};

use crate::util::{self, Tier};

/// `pf-buildkit --addr <the tier's daemon> build ...`, returning the output.
fn build(tier: Tier, args: &[&str]) -> std::process::Output {
    let addr = tier.addr();
    let mut all = vec!["--addr", addr.as_str(), "build"];
    all.extend_from_slice(args);
    util::bin()
        .args(&all)
        .env("XDG_CACHE_HOME", cache_home())
        .output()
        .expect("run pf-buildkit")
}

/// One cache dir for all tests, so the session shared key (node id) stays stable.
fn cache_home() -> PathBuf {
    let dir = std::env::temp_dir().join("pf-buildkit-test-cache");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(path: &Path, content: &str) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, content).unwrap();
}

fn assert_ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        util::stdout(out),
        util::stderr(out)
    );
}

/// The files and bytes of the context sent, from rawjson progress's last line
/// (`{"context":{"entries":E,"files":N,"bytes":B}}`).
fn sent_counters(stderr: &str) -> (u64, u64) {
    let context = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v.get("context").cloned())
        .unwrap_or_else(|| panic!("no context counters in:\n{stderr}"));
    (
        context["files"].as_u64().unwrap(),
        context["bytes"].as_u64().unwrap(),
    )
}

fn run_with_secret_and_build_args_never_shows_the_secret(tier: Tier) {
    let dir = tempfile::tempdir().unwrap();
    let base = util::env("PF_TEST_BASE_IMAGE");
    write(
        &dir.path().join("Dockerfile"),
        &format!(
            "FROM {base}\nARG GREETING\nARG NAME=nobody\n\
             RUN --mount=type=secret,id=token sh -c 'echo \"$GREETING $NAME\"; sha256sum /run/secrets/token'\n"
        ),
    );
    let secret_value = "pf-test-secret-9f8e7d";
    let secret_file = dir.path().join("token.txt");
    std::fs::write(&secret_file, secret_value).unwrap();
    let secret = format!("id=token,src={}", secret_file.display());
    let context = dir.path().to_str().unwrap();
    let out = build(
        tier,
        &[
            "--context",
            context,
            "--progress",
            "plain",
            "--no-cache",
            "--opt",
            "force-network-mode=none",
            "--secret",
            &secret,
            "--build-arg",
            "GREETING=hello",
            "--build-arg",
            "NAME=pf",
        ],
    );
    assert_ok(&out);
    let stderr = util::stderr(&out);
    assert!(stderr.contains("hello pf"), "{stderr}");
    let expected = format!("{:x}", Sha256::digest(secret_value.as_bytes()));
    assert!(
        stderr.contains(&expected),
        "the secret did not reach the step:\n{stderr}"
    );
    assert!(!stderr.contains(secret_value) && !util::stdout(&out).contains(secret_value));

    // The same secret from an environment variable.
    let out = util::bin()
        .args([
            "--addr",
            &tier.addr(),
            "build",
            "--context",
            context,
            "--progress",
            "rawjson",
            "--no-cache",
            "--opt",
            "force-network-mode=none",
            "--secret",
            "id=token,env=PF_TEST_TOKEN",
        ])
        .env("PF_TEST_TOKEN", secret_value)
        .output()
        .unwrap();
    assert_ok(&out);
    let stderr = util::stderr(&out);
    assert!(!stderr.contains(secret_value));
    // rawjson: one status object per line; logs carry base64 data.
    let mut logs = String::new();
    for line in stderr.lines().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        for log in v["logs"].as_array().into_iter().flatten() {
            use base64::Engine as _;
            let data = base64::engine::general_purpose::STANDARD
                .decode(log["data"].as_str().unwrap())
                .unwrap();
            logs.push_str(&String::from_utf8_lossy(&data));
        }
    }
    assert!(logs.contains(&expected), "rawjson logs: {logs}");
}

fn failing_run_exits_1_with_its_output_and_line(tier: Tier) {
    let dir = tempfile::tempdir().unwrap();
    let base = util::env("PF_TEST_BASE_IMAGE");
    write(
        &dir.path().join("Dockerfile"),
        &format!(
            "FROM {base}\nRUN echo fine\nRUN echo first-words && echo last-words >&2 && exit 7\n"
        ),
    );
    let out = build(
        tier,
        &[
            "--context",
            dir.path().to_str().unwrap(),
            "--progress",
            "plain",
            "--opt",
            "force-network-mode=none",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", util::stderr(&out));
    let stderr = util::stderr(&out);
    assert!(stderr.contains("first-words") && stderr.contains("last-words"));
    assert!(
        stderr.contains("   3 | >>> RUN echo first-words"),
        "no Dockerfile line:\n{stderr}"
    );
    let last = stderr.lines().last().unwrap();
    assert!(
        last.starts_with("pf-buildkit: build failed:") && last.contains("exit code: 7"),
        "{last}"
    );
}

/// The daemon's own error is shown as it is, whatever words it contains: "connection" in a
/// file name once turned it into "this is not BuildKit".
fn missing_copy_source_keeps_the_daemons_text(tier: Tier) {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("Dockerfile"),
        "FROM scratch\nCOPY connection.py /app/\n",
    );
    let out = build(
        tier,
        &[
            "--context",
            dir.path().to_str().unwrap(),
            "--progress",
            "plain",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", util::stderr(&out));
    let stderr = util::stderr(&out);
    let last = stderr.lines().last().unwrap();
    assert!(last.starts_with("pf-buildkit: build failed:"), "{last}");
    assert!(
        last.contains("connection.py") && last.contains("not found"),
        "{last}"
    );
    for wrong in ["not BuildKit", "went away", "HTTP/2"] {
        assert!(!last.contains(wrong), "{wrong:?} in {last}");
    }
}

fn pushes_to_the_registry_and_writes_metadata(tier: Tier) {
    let dir = tempfile::tempdir().unwrap();
    let base = util::env("PF_TEST_BASE_IMAGE");
    let registry = util::env("PF_TEST_REGISTRY");
    // One tag per tier: both tiers run at once, and each must find its own push.
    let tag = format!("t{}-{}", std::process::id(), tier.name());
    write(
        &dir.path().join("Dockerfile"),
        &format!("FROM {base}\nRUN echo {tag} > /tag\n"),
    );
    let name = format!("{registry}/pf-test/build-push:{tag}");
    let output = format!("type=image,name={name},push=true,registry.insecure=true");
    let metadata = dir.path().join("meta.json");
    let out = build(
        tier,
        &[
            "--context",
            dir.path().to_str().unwrap(),
            "--progress",
            "quiet",
            "--opt",
            "force-network-mode=none",
            "--output",
            &output,
            "--metadata-file",
            metadata.to_str().unwrap(),
        ],
    );
    assert_ok(&out);
    let printed = util::stdout(&out).trim().to_owned();
    assert!(printed.starts_with("sha256:"), "{printed}");
    assert_eq!(
        util::registry_digest("pf-test/build-push", &tag).as_deref(),
        Some(printed.as_str())
    );
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&metadata).unwrap()).unwrap();
    assert_eq!(meta["containerimage.digest"], printed.as_str());
    assert_eq!(
        meta["containerimage.descriptor"]["digest"],
        printed.as_str()
    );
    assert_eq!(meta["image.name"], name.as_str());
}

/// Input the command line cannot judge (a missing file, an unset variable) fails in one line,
/// exit 1, and writes nothing; malformed flags are usage errors (`cli.rs`).
#[test]
fn bad_input_is_one_line_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("Dockerfile"), "FROM scratch\n");
    let ctx = dir.path().to_str().unwrap().to_owned();
    let dest = dir.path().join("never.tar");
    let dest_spec = format!("type=tar,dest={}", dest.display());
    let missing = dir.path().join("missing");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--secret".into(), format!("id=a,src={}", missing.display())],
            "secret a: cannot read secret file",
        ),
        (
            vec![
                "--secret".into(),
                "id=a,env=PF_TEST_SURELY_UNSET_VAR".into(),
            ],
            "PF_TEST_SURELY_UNSET_VAR is not set",
        ),
        (
            vec!["--ssh".into(), format!("k={}", missing.display())],
            "agent socket",
        ),
        (
            vec![
                "--file".into(),
                missing.join("Dockerfile").display().to_string(),
            ],
            "No such file or directory (os error 2); give the Dockerfile's path with --file",
        ),
    ];
    for (extra, expected) in cases {
        let mut args = vec![
            "--context".to_owned(),
            ctx.clone(),
            "--output".into(),
            dest_spec.clone(),
        ];
        args.extend(extra.iter().cloned());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = build(Tier::preferred(), &refs);
        let line = util::assert_one_line_failure(&out);
        assert!(line.contains(expected), "{extra:?}: {line}");
        assert!(!dest.exists(), "{extra:?} wrote output");
    }
    // A missing context directory.
    let out = build(Tier::preferred(), &["--context", missing.to_str().unwrap()]);
    assert!(util::assert_one_line_failure(&out).contains("is not a directory"));
}

/// Ctrl-C (SIGINT, exit 130) and a CI runner's SIGTERM (exit 143) cancel the build alike:
/// one signal per tier, so both are covered without a second build.
fn a_signal_cancels_the_build_and_exits_130_or_143(tier: Tier) {
    let (signal, code, word) = match tier {
        Tier::Engine => ("-TERM", 143, "terminated"),
        _ => ("-INT", 130, "interrupted"),
    };
    let dir = tempfile::tempdir().unwrap();
    let base = util::env("PF_TEST_BASE_IMAGE");
    let marker = format!("started-{}", std::process::id());
    write(
        &dir.path().join("Dockerfile"),
        &format!("FROM {base}\nRUN echo {marker} && sleep 60\n"),
    );
    let mut child = util::bin()
        .args([
            "--addr",
            &tier.addr(),
            "build",
            "--context",
            dir.path().to_str().unwrap(),
            "--progress",
            "plain",
            "--no-cache",
            "--opt",
            "force-network-mode=none",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    // Wait until the step runs (its output arrives), then interrupt.
    loop {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            panic!("build ended before the step ran:\n{seen}");
        }
        seen.push_str(&line);
        if line.contains(&marker) && !line.contains("RUN") {
            break;
        }
    }
    let pid = child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(code), "{seen}{rest}");
    assert!(rest.contains(word), "{rest}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(50),
        "the build was not cancelled"
    );
}

/// Builds `FROM scratch` + `COPY . /` of `context`, exported as a tar with the library API
/// and the session opened as `Control.Session` (the other transport than the CLI's).
fn library_build_over_control_session_exports_a_tar(tier: Tier) {
    use pf_buildkit::buildkit::progress::QuietProgress;
    use pf_buildkit::buildkit::{BuildOptions, Client, Endpoint, TlsOptions};

    let dir = tempfile::tempdir().unwrap();
    let ctx = dir.path().join("ctx");
    write(&ctx.join("Dockerfile"), "FROM scratch\nCOPY . /\n");
    write(&ctx.join("dir/hello.txt"), "hello\n");
    let tar = dir.path().join("out.tar");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let result = runtime.block_on(async {
        let endpoint: Endpoint = tier.addr().parse().unwrap();
        let client = Client::connect(endpoint, &TlsOptions::default())
            .await
            .unwrap();
        let mut options = BuildOptions::new(&ctx);
        options.session_via_control = true;
        options.registry_auth = false;
        options
            .outputs
            .push(format!("type=tar,dest={}", tar.display()).parse().unwrap());
        client.build(&options, &mut QuietProgress).await
    });
    let result = result.unwrap();
    assert!(result.transfer.files >= 2 && result.transfer.bytes > 0);
    let listing = std::process::Command::new("tar")
        .arg("tf")
        .arg(&tar)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    assert!(listing.lines().any(|l| l == "dir/hello.txt"), "{listing}");
    // No temporary file is left beside the export.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// What a test compares of a file tree: per relative path, the kind, permission bits, and
/// the content's hash or the link's target.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Dir(u32),
    File(u32, String),
    Link(String),
}

fn snapshot(root: &Path) -> BTreeMap<String, Entry> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Entry>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let mode = meta.mode() & 0o7777;
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                out.insert(rel, Entry::Link(target.to_string_lossy().into_owned()));
            } else if meta.is_dir() {
                out.insert(rel, Entry::Dir(mode));
                walk(root, &path, out);
            } else {
                let mut hasher = Sha256::new();
                let mut file = std::fs::File::open(&path).unwrap();
                std::io::copy(&mut file, &mut hasher).unwrap();
                out.insert(rel, Entry::File(mode, format!("{:x}", hasher.finalize())));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Deterministic pseudo-random bytes (xorshift), so the big file needs no fixture.
fn pattern_file(path: &Path, len: usize, seed: u64) {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut x = seed | 1;
    let mut left = len;
    while left > 0 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let bytes = x.to_le_bytes();
        let n = left.min(8);
        file.write_all(&bytes[..n]).unwrap();
        left -= n;
    }
    file.flush().unwrap();
}

fn set_mode(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn context_tree_round_trips_through_local_and_tar_exports(tier: Tier) {
    let dir = tempfile::tempdir().unwrap();
    let ctx = dir.path().join("ctx");
    write(&ctx.join("Dockerfile"), "FROM scratch\nCOPY . /\n");
    write(
        &ctx.join(".dockerignore"),
        "**/*.log\n!keep.log\nignored-dir\nsecret/**\n!secret/public\n",
    );
    write(&ctx.join("a/b/c/deep.txt"), "deep\n");
    write(&ctx.join("a/b/sibling.txt"), "sib\n");
    write(&ctx.join("a.txt"), "sorts after the a/ directory\n");
    std::fs::create_dir_all(ctx.join("empty")).unwrap();
    std::fs::create_dir_all(ctx.join("a/empty-inner")).unwrap();
    write(&ctx.join("bin/run.sh"), "#!/bin/sh\necho run\n");
    set_mode(&ctx.join("bin/run.sh"), 0o755);
    write(&ctx.join("readonly.txt"), "ro\n");
    set_mode(&ctx.join("readonly.txt"), 0o444);
    set_mode(&ctx.join("a/b"), 0o750);
    std::os::unix::fs::symlink("a/b/c/deep.txt", ctx.join("link-rel")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", ctx.join("link-abs")).unwrap();
    std::os::unix::fs::symlink("does/not/exist", ctx.join("link-dangling")).unwrap();
    std::os::unix::fs::symlink("../../outside.txt", ctx.join("a/link-out")).unwrap();
    write(&ctx.join("hard-1.txt"), "same inode\n");
    std::fs::hard_link(ctx.join("hard-1.txt"), ctx.join("hard-2.txt")).unwrap();
    write(&ctx.join("données/été.txt"), "accents\n");
    write(&ctx.join("日本/名前.txt"), "kanji\n");
    write(&ctx.join("x.log"), "excluded\n");
    write(&ctx.join("a/y.log"), "excluded\n");
    write(&ctx.join("keep.log"), "re-included\n");
    write(&ctx.join("ignored-dir/z.txt"), "excluded\n");
    write(&ctx.join("secret/private.txt"), "excluded\n");
    write(&ctx.join("secret/public"), "re-included\n");
    pattern_file(&ctx.join("big.bin"), (64 << 20) + 4099, 42);

    let mut expected = snapshot(&ctx);
    for gone in [
        "x.log",
        "a/y.log",
        "ignored-dir",
        "ignored-dir/z.txt",
        "secret/private.txt",
    ] {
        assert!(expected.remove(gone).is_some(), "{gone}");
    }

    let local = dir.path().join("local-out");
    let tar = dir.path().join("out.tar");
    let out = build(
        tier,
        &[
            "--context",
            ctx.to_str().unwrap(),
            "--progress",
            "rawjson",
            "--output",
            &format!("type=local,dest={}", local.display()),
            "--output",
            &format!("type=tar,dest={}", tar.display()),
        ],
    );
    assert_ok(&out);
    let stderr = util::stderr(&out);
    let (_, bytes) = sent_counters(&stderr);
    assert!(bytes >= 64 << 20, "{stderr}");

    assert_eq!(snapshot(&local), expected);
    let hard1 = std::fs::metadata(local.join("hard-1.txt")).unwrap();
    let hard2 = std::fs::metadata(local.join("hard-2.txt")).unwrap();
    assert_eq!(hard1.ino(), hard2.ino(), "hardlinks are kept");

    let untarred = dir.path().join("untarred");
    std::fs::create_dir_all(&untarred).unwrap();
    let status = std::process::Command::new("tar")
        .arg("-xpf")
        .arg(&tar)
        .arg("-C")
        .arg(&untarred)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(snapshot(&untarred), expected);
}

fn unchanged_rebuild_sends_no_file_data_and_edits_send_only_the_edited_files(tier: Tier) {
    // Asserts on what the daemon's cache holds: no full prune meanwhile.
    let _cache = tier.cache_shared();
    let dir = tempfile::tempdir().unwrap();
    let ctx = dir.path().join("ctx");
    let dockerfile_dir = dir.path().join("df");
    write(
        &dockerfile_dir.join("Dockerfile"),
        "FROM scratch\nCOPY . /\n",
    );
    for i in 0..20_000 {
        let content = format!("file {i}\n").repeat(1 + i % 7);
        write(&ctx.join(format!("d{:02}/f{i:05}.txt", i % 50)), &content);
    }
    let tar = dir.path().join("out.tar");
    let args = |progress: &'static str| {
        vec![
            "--context".to_owned(),
            ctx.display().to_string(),
            "--file".to_owned(),
            dockerfile_dir.join("Dockerfile").display().to_string(),
            "--progress".to_owned(),
            progress.to_owned(),
            "--output".to_owned(),
            format!("type=tar,dest={}", tar.display()),
        ]
    };
    let run = |progress| {
        let a = args(progress);
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        let out = build(tier, &refs);
        assert_ok(&out);
        sent_counters(&util::stderr(&out))
    };
    let (files, bytes) = run("rawjson");
    assert_eq!(files, 20_000);
    assert!(bytes > 20_000 * 7);

    assert_eq!(run("rawjson"), (0, 0), "an unchanged context is sent again");

    let mut edited_bytes = 0;
    for i in (0..20_000).step_by(2000) {
        let path = ctx.join(format!("d{:02}/f{i:05}.txt", i % 50));
        let content = format!("edited {i}\n");
        edited_bytes += content.len() as u64;
        std::fs::write(path, content).unwrap();
    }
    assert_eq!(run("rawjson"), (10, edited_bytes));
}

fn oci_and_docker_exports_are_image_archives_and_caches_go_to_the_registry(tier: Tier) {
    // Asserts on what the daemon's cache holds: no full prune meanwhile.
    let _cache = tier.cache_shared();
    let dir = tempfile::tempdir().unwrap();
    let base = util::env("PF_TEST_BASE_IMAGE");
    let registry = util::env("PF_TEST_REGISTRY");
    let tag = format!("c{}", std::process::id());
    write(
        &dir.path().join("Dockerfile"),
        &format!("FROM {base}\nRUN echo {tag} > /tag\n"),
    );
    let oci = dir.path().join("oci.tar");
    let docker = dir.path().join("docker.tar");
    let cache_ref = format!("{registry}/pf-test/build-cache:{tag}");
    let out = build(
        tier,
        &[
            "--context",
            dir.path().to_str().unwrap(),
            "--progress",
            "plain",
            "--opt",
            "force-network-mode=none",
            "--output",
            &format!("type=oci,dest={},name=pf-test/oci:1", oci.display()),
            "--output",
            &format!(
                "type=docker,dest={},name=pf-test/docker:1",
                docker.display()
            ),
            "--export-cache",
            &format!("type=registry,ref={cache_ref},mode=max,registry.insecure=true"),
        ],
    );
    assert_ok(&out);
    let list = |tar: &Path| {
        let out = std::process::Command::new("tar")
            .arg("tf")
            .arg(tar)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let oci_files = list(&oci);
    assert!(oci_files.lines().any(|l| l == "oci-layout") && oci_files.contains("index.json"));
    let docker_files = list(&docker);
    assert!(
        docker_files.lines().any(|l| l == "manifest.json"),
        "{docker_files}"
    );
    assert!(
        util::registry_digest("pf-test/build-cache", &tag).is_some(),
        "no cache manifest in the registry"
    );

    // The cache imports from the registry (both as Cache.Imports and cache-imports).
    let out = build(
        tier,
        &[
            "--context",
            dir.path().to_str().unwrap(),
            "--progress",
            "plain",
            "--opt",
            "force-network-mode=none",
            "--import-cache",
            &format!("type=registry,ref={cache_ref},registry.insecure=true"),
        ],
    );
    assert_ok(&out);
}

fn ssh_agent_is_offered_to_run_mounts(tier: Tier) {
    let dir = tempfile::tempdir().unwrap();
    let base = util::env("PF_TEST_BASE_IMAGE");
    // A stand-in agent socket of our own: the daemon's CheckAgent connects to it.
    let socket = dir.path().join("agent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let (seen_tx, seen_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            if stream.is_ok() && seen_tx.send(()).is_err() {
                break;
            }
        }
    });
    let ctx = dir.path().join("ctx");
    write(
        &ctx.join("Dockerfile"),
        &format!(
            "FROM {base}\nRUN --mount=type=ssh,id=deploy sh -c 'test -S \"$SSH_AUTH_SOCK\" && echo agent-mounted-at-$SSH_AUTH_SOCK'\n"
        ),
    );
    let spec = format!("deploy={}", socket.display());
    let out = build(
        tier,
        &[
            "--context",
            ctx.to_str().unwrap(),
            "--progress",
            "plain",
            "--no-cache",
            "--opt",
            "force-network-mode=none",
            "--ssh",
            &spec,
        ],
    );
    assert_ok(&out);
    assert!(
        util::stderr(&out).contains("agent-mounted-at-/"),
        "{}",
        util::stderr(&out)
    );
    assert!(
        seen_rx.try_recv().is_ok(),
        "the daemon never checked the agent"
    );

    // Without --ssh the step fails with a message naming the id.
    let out = build(
        tier,
        &[
            "--context",
            ctx.to_str().unwrap(),
            "--progress",
            "plain",
            "--no-cache",
            "--opt",
            "force-network-mode=none",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        util::stderr(&out).contains("deploy"),
        "{}",
        util::stderr(&out)
    );
}

fn tty_progress_draws_steps_and_marks_cached_ones(tier: Tier) {
    // Asserts on what the daemon's cache holds: no full prune meanwhile.
    let _cache = tier.cache_shared();
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("Dockerfile"),
        "FROM scratch\nCOPY Dockerfile /\n",
    );
    let ctx = dir.path().to_str().unwrap();
    let first = build(tier, &["--context", ctx, "--progress", "tty"]);
    assert_ok(&first);
    let stderr = util::stderr(&first);
    assert!(stderr.contains("FINISHED"), "{stderr}");
    assert!(stderr.contains("[1/1] COPY Dockerfile /"), "{stderr}");
    assert!(stderr.contains("\x1b[2K"), "no redraw sequences: {stderr}");
    // The same build again comes from the cache.
    let second = build(tier, &["--context", ctx, "--progress", "tty"]);
    assert_ok(&second);
    let stderr = util::stderr(&second);
    assert!(
        stderr.contains(" => CACHED [1/1] COPY Dockerfile /"),
        "{stderr}"
    );
}

fn extra_local_directories_serve_named_contexts(tier: Tier) {
    let dir = tempfile::tempdir().unwrap();
    let ctx = dir.path().join("ctx");
    let extra = dir.path().join("extra");
    write(
        &ctx.join("Dockerfile"),
        "FROM scratch\nCOPY --from=assets logo.txt /from-assets.txt\nCOPY Dockerfile /\n",
    );
    write(&extra.join("logo.txt"), "named context content\n");
    let tar = dir.path().join("out.tar");
    let local = format!("assets={}", extra.display());
    let out = build(
        tier,
        &[
            "--context",
            ctx.to_str().unwrap(),
            "--progress",
            "plain",
            "--local",
            &local,
            "--opt",
            "context:assets=local:assets",
            "--output",
            &format!("type=tar,dest={}", tar.display()),
        ],
    );
    assert_ok(&out);
    let content = std::process::Command::new("tar")
        .arg("-xOf")
        .arg(&tar)
        .arg("from-assets.txt")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&content.stdout),
        "named context content\n"
    );

    let out = build(
        tier,
        &[
            "--context",
            ctx.to_str().unwrap(),
            "--local",
            &format!("assets={}", dir.path().join("nope").display()),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(util::stderr(&out).contains("local directory assets"));
}

tier_tests!(
    missing_copy_source_keeps_the_daemons_text,
    run_with_secret_and_build_args_never_shows_the_secret,
    failing_run_exits_1_with_its_output_and_line,
    pushes_to_the_registry_and_writes_metadata,
    a_signal_cancels_the_build_and_exits_130_or_143,
    library_build_over_control_session_exports_a_tar,
    context_tree_round_trips_through_local_and_tar_exports,
    unchanged_rebuild_sends_no_file_data_and_edits_send_only_the_edited_files,
    oci_and_docker_exports_are_image_archives_and_caches_go_to_the_registry,
    ssh_agent_is_offered_to_run_mounts,
    tty_progress_draws_steps_and_marks_cached_ones,
    extra_local_directories_serve_named_contexts,
);
