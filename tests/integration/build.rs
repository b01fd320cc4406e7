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

use crate::util;

/// `pf-buildkit --addr <engine> build ...`, returning the output.
fn build(args: &[&str]) -> std::process::Output {
    let addr = util::docker_addr();
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

#[allow(dead_code)]
/// The `#0 context: sent N files, … (B bytes) in E entries` counters from plain progress.
fn sent_counters(stderr: &str) -> (u64, u64) {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("#0 context: sent "))
        .unwrap_or_else(|| panic!("no transfer line in:\n{stderr}"));
    let files: u64 = line["#0 context: sent ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let bytes: u64 = line
        .split('(')
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    (files, bytes)
}

#[test]
fn run_with_secret_and_build_args_never_shows_the_secret() {
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
    let out = build(&[
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
    ]);
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
            &util::docker_addr(),
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

#[test]
fn failing_run_exits_1_with_its_output_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let base = util::env("PF_TEST_BASE_IMAGE");
    write(
        &dir.path().join("Dockerfile"),
        &format!(
            "FROM {base}\nRUN echo fine\nRUN echo first-words && echo last-words >&2 && exit 7\n"
        ),
    );
    let out = build(&[
        "--context",
        dir.path().to_str().unwrap(),
        "--progress",
        "plain",
        "--opt",
        "force-network-mode=none",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", util::stderr(&out));
    let stderr = util::stderr(&out);
    assert!(stderr.contains("first-words") && stderr.contains("last-words"));
    assert!(
        stderr.contains("   3 | RUN echo first-words"),
        "no Dockerfile line:\n{stderr}"
    );
    let last = stderr.lines().last().unwrap();
    assert!(
        last.starts_with("pf-buildkit: build failed:") && last.contains("exit code: 7"),
        "{last}"
    );
}

/// Reads one manifest's digest from the registry (plain HTTP on loopback).
fn registry_digest(registry: &str, repo: &str, tag: &str) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(registry).unwrap();
    write!(
        stream,
        "HEAD /v2/{repo}/manifests/{tag} HTTP/1.1\r\nHost: {registry}\r\n\
         Accept: application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
         application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json\r\n\
         Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    if !response.starts_with("HTTP/1.1 200") {
        return None;
    }
    response.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .starts_with("docker-content-digest:")
            .then(|| l.split_once(':').unwrap().1.trim().to_owned())
    })
}

#[test]
fn pushes_to_the_registry_and_writes_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let base = util::env("PF_TEST_BASE_IMAGE");
    let registry = util::env("PF_TEST_REGISTRY");
    let tag = format!("t{}", std::process::id());
    write(
        &dir.path().join("Dockerfile"),
        &format!("FROM {base}\nRUN echo {tag} > /tag\n"),
    );
    let name = format!("{registry}/pf-test/build-push:{tag}");
    let output = format!("type=image,name={name},push=true,registry.insecure=true");
    let metadata = dir.path().join("meta.json");
    let out = build(&[
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
    ]);
    assert_ok(&out);
    let printed = util::stdout(&out).trim().to_owned();
    assert!(printed.starts_with("sha256:"), "{printed}");
    assert_eq!(
        registry_digest(&registry, "pf-test/build-push", &tag).as_deref(),
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

#[test]
fn bad_input_is_one_line_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("Dockerfile"), "FROM scratch\n");
    let ctx = dir.path().to_str().unwrap().to_owned();
    let dest = dir.path().join("never.tar");
    let dest_spec = format!("type=tar,dest={}", dest.display());
    let missing = dir.path().join("missing");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--output".into(), "type=tar".into()], "needs dest"),
        (
            vec!["--output".into(), "type=bogus,dest=x".into()],
            "unknown type",
        ),
        (vec!["--output".into(), "dest=x".into()], "type= is missing"),
        (
            vec!["--secret".into(), "id=a".into()],
            "src=FILE or env=VARIABLE",
        ),
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
        (vec!["--ssh".into(), "x=/a,/b".into()], "invalid --ssh"),
        (
            vec!["--ssh".into(), format!("k={}", missing.display())],
            "agent socket",
        ),
        (
            vec!["--build-arg".into(), "NOEQUALS".into()],
            "expected KEY=VALUE",
        ),
        (
            vec!["--export-cache".into(), "type=registry".into()],
            "needs ref=REF",
        ),
        (
            vec!["--import-cache".into(), "type=nope,ref=x".into()],
            "unknown type",
        ),
        (
            vec![
                "--file".into(),
                missing.join("Dockerfile").display().to_string(),
            ],
            "does not exist",
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
        let out = build(&refs);
        let stderr = util::stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{extra:?}: {stderr}");
        assert!(
            stderr.starts_with("pf-buildkit: ") && stderr.contains(expected),
            "{extra:?}: {stderr}"
        );
        assert!(!dest.exists(), "{extra:?} wrote output");
    }
    // A missing context directory.
    let out = build(&["--context", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(util::stderr(&out).contains("is not a directory"));
}

#[test]
fn ctrl_c_cancels_the_build_and_exits_130() {
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
            &util::docker_addr(),
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
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{seen}{rest}");
    assert!(rest.contains("interrupted"), "{rest}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(50),
        "the build was not cancelled"
    );
}

/// Builds `FROM scratch` + `COPY . /` of `context`, exported as a tar with the library API
/// and the session opened as `Control.Session` (the other transport than the CLI's).
#[test]
fn library_build_over_control_session_exports_a_tar() {
    use pf_buildkit::buildkit::progress::QuietProgress;
    use pf_buildkit::buildkit::{BuildOptions, Client, Endpoint, TlsOptions};

    let dir = tempfile::tempdir().unwrap();
    let ctx = dir.path().join("ctx");
    write(&ctx.join("Dockerfile"), "FROM scratch\nCOPY . /\n");
    write(&ctx.join("dir/hello.txt"), "hello\n");
    let tar = dir.path().join("out.tar");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let result = runtime.block_on(async {
        let endpoint: Endpoint = util::docker_addr().parse().unwrap();
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

#[allow(dead_code)]
fn mode_of(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

#[allow(dead_code)]
fn set_mode(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[allow(dead_code)]
fn tree(_: &BTreeMap<String, String>) {}
