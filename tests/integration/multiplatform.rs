//! `build --repo --tag`: every architecture built concurrently on the real BuildKit, pushed
//! to the real registry, and one index over them; a failing architecture pushes nothing.

use std::path::Path;
use std::process::Output;

use pf_buildkit::registry::{self, ClientOptions};
use serde_json::Value;

use crate::util::{self, Tier, stderr, stdout, unique_repo};

fn registry_client() -> registry::Client {
    registry::Client::new(ClientOptions::default().with_insecure(true)).unwrap()
}

fn context(dockerfile: &str, files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Dockerfile"), dockerfile).unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

/// `pf-buildkit --addr <the tier's daemon> build ARGS…` run in `dir`.
async fn build_in(tier: Tier, dir: &Path, args: &[&str]) -> Output {
    util::tokio_bin()
        .current_dir(dir)
        .args(["--addr", &tier.addr(), "build"])
        .args(args)
        .output()
        .await
        .unwrap()
}

async fn multi_build(tier: Tier, dir: &Path, repo: &str, extra: &[&str]) -> Output {
    let registry = util::env("PF_TEST_REGISTRY");
    let mut args = vec!["--progress", "plain", "--repo", repo, "--tag", "v1"];
    args.extend(["--registry", &registry, "--insecure-registry"]);
    args.extend(extra);
    build_in(tier, dir, &args).await
}

async fn exists(reference: &str) -> bool {
    let reference = registry::parse_reference(reference).unwrap();
    let tag = reference.tag().unwrap().to_owned();
    registry_client()
        .manifest_exists(&reference, &tag)
        .await
        .unwrap()
}

/// Fetches the index and checks it against the per-architecture tags and the registry's blobs.
async fn assert_index(repo: &str, digest: &str, arches: &[&str]) -> Value {
    let registry = util::env("PF_TEST_REGISTRY");
    let client = registry_client();
    let index_ref = registry::parse_reference(&format!("{registry}/{repo}:v1")).unwrap();
    let index = client.fetch_manifest(&index_ref).await.unwrap();
    assert_eq!(index.digest, digest, "stdout digest is the index's");
    assert!(
        index.media_type == "application/vnd.oci.image.index.v1+json"
            || index.media_type == "application/vnd.docker.distribution.manifest.list.v2+json",
        "{}",
        index.media_type
    );
    let doc: Value = serde_json::from_slice(&index.bytes).unwrap();
    let children = doc["manifests"].as_array().unwrap();
    let images: Vec<&Value> = children
        .iter()
        .filter(|c| c["platform"]["os"] == "linux")
        .collect();
    assert_eq!(images.len(), arches.len(), "{doc}");
    for arch in arches {
        let child = images
            .iter()
            .find(|c| c["platform"]["architecture"] == *arch)
            .unwrap_or_else(|| panic!("no {arch} in {doc}"));
        // The child is exactly what the per-architecture tag resolves to.
        let arch_ref = registry::parse_reference(&format!("{registry}/{repo}:v1-{arch}")).unwrap();
        let arch_manifest = client.fetch_manifest(&arch_ref).await.unwrap();
        assert_eq!(child["digest"], arch_manifest.digest.as_str(), "{arch}");
        assert_eq!(child["size"], arch_manifest.bytes.len(), "{arch}");
        // Every blob the image references is in the repository.
        let manifest: Value = serde_json::from_slice(&arch_manifest.bytes).unwrap();
        let mut blobs = vec![manifest["config"]["digest"].as_str().unwrap().to_owned()];
        for layer in manifest["layers"].as_array().unwrap() {
            blobs.push(layer["digest"].as_str().unwrap().to_owned());
        }
        for blob in blobs {
            assert!(
                client.blob_exists(&index_ref, &blob).await.unwrap(),
                "{arch}: blob {blob} missing"
            );
        }
    }
    doc
}

async fn two_architectures_pushed_with_one_index(tier: Tier) {
    let dir = context(
        "FROM scratch\nARG TARGETARCH\nCOPY hello-${TARGETARCH}.txt /hello.txt\n",
        &[
            ("hello-amd64.txt", "amd64\n"),
            ("hello-arm64.txt", "arm64\n"),
        ],
    );
    let repo = unique_repo("multi");
    let metadata = dir.path().join("metadata.json");
    let out = multi_build(
        tier,
        dir.path(),
        &repo,
        &["--metadata-file", metadata.to_str().unwrap()],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let digest = stdout(&out).trim().to_owned();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{digest}"
    );
    // Progress lines say which architecture they belong to.
    let err = stderr(&out);
    assert!(err.lines().any(|l| l.starts_with("amd64: #")), "{err}");
    assert!(err.lines().any(|l| l.starts_with("arm64: #")), "{err}");
    // Each architecture's lines, prefix taken off, are plain progress in progressui's blocks.
    for arch in ["amd64", "arm64"] {
        let prefix = format!("{arch}: ");
        let own: Vec<&str> = err
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .collect();
        let blocks = crate::progress::plain_blocks(&own.join("\n"))
            .unwrap_or_else(|e| panic!("{arch}: {e}"));
        assert_eq!(blocks[0].number, 1, "{err}");
        assert!(
            blocks.iter().any(|b| b.name.contains("COPY hello-")),
            "{err}"
        );
    }

    assert_index(&repo, &digest, &["amd64", "arm64"]).await;

    // --metadata-file records every digest.
    let meta: Value = serde_json::from_str(&std::fs::read_to_string(&metadata).unwrap()).unwrap();
    assert_eq!(meta["index"]["digest"], digest.as_str());
    for arch in ["amd64", "arm64"] {
        let reference = format!("{}/{repo}:v1-{arch}", util::env("PF_TEST_REGISTRY"));
        assert_eq!(meta["images"][arch]["reference"], reference.as_str());
        let fetched = registry_client()
            .fetch_manifest(&registry::parse_reference(&reference).unwrap())
            .await
            .unwrap();
        assert_eq!(meta["images"][arch]["digest"], fetched.digest.as_str());
    }
}

async fn client_side_push_and_builders_per_architecture(tier: Tier) {
    let dir = context("FROM scratch\nCOPY hello.txt /\n", &[("hello.txt", "hi\n")]);
    let repo = unique_repo("client-push");
    let addr = tier.addr();
    let out = multi_build(
        tier,
        dir.path(),
        &repo,
        &[
            "--push-from-client",
            "--builder",
            &format!("amd64={addr}"),
            "--builder",
            &format!("arm64={addr}"),
        ],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let digest = stdout(&out).trim().to_owned();
    assert_index(&repo, &digest, &["amd64", "arm64"]).await;
}

async fn one_architecture_failing_cancels_the_other_and_pushes_no_index(tier: Tier) {
    // arm64 fails at once: its COPY source does not exist. amd64 goes on to a step that would
    // run for minutes, so finishing quickly proves it was cancelled rather than waited for.
    // The marker's unique content keeps the long step out of the cache.
    let base = util::env("PF_TEST_BASE_IMAGE");
    let dockerfile =
        format!("FROM {base}\nARG TARGETARCH\nCOPY marker-${{TARGETARCH}}.txt /\nRUN sleep 300\n");
    let marker = format!("{:?}\n", std::time::SystemTime::now());
    let dir = context(&dockerfile, &[("marker-amd64.txt", &marker)]);
    let repo = unique_repo("fail");
    let started = std::time::Instant::now();
    let out = multi_build(
        tier,
        dir.path(),
        &repo,
        &["--opt", "force-network-mode=none"],
    )
    .await;
    let elapsed = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let last = stderr(&out).trim_end().lines().last().unwrap().to_owned();
    assert!(
        last.starts_with(&format!("pf-buildkit: arm64 (on {}", tier.addr())),
        "{last}"
    );
    assert!(
        elapsed.as_secs() < 120,
        "amd64 was not cancelled: took {elapsed:?}"
    );
    assert!(stdout(&out).is_empty());
    // Before it, each architecture's build ref and the command that prints its logs.
    let err = stderr(&out);
    let command = |arch: &str| {
        let line = err
            .lines()
            .find(|l| l.starts_with(&format!("  {arch}: ")))
            .unwrap_or_else(|| panic!("no {arch} build ref in\n{err}"));
        let (_, command) = line.split_once(": pf-buildkit ").unwrap();
        assert!(
            command.ends_with(&format!("--addr '{}'", tier.addr())),
            "{line}"
        );
        command.split(' ').nth(2).unwrap().to_owned()
    };
    let (arm64, amd64) = (command("arm64"), command("amd64"));
    assert_ne!(arm64, amd64);
    let logs = util::tokio_bin()
        .args(["--addr", &tier.addr(), "history", "logs", &arm64])
        .output()
        .await
        .unwrap();
    assert!(logs.status.success(), "{}", stderr(&logs));
    let logs = stderr(&logs);
    assert!(logs.contains("COPY marker-${TARGETARCH}.txt /"), "{logs}");
    assert!(
        logs.trim_end()
            .lines()
            .last()
            .unwrap()
            .starts_with("ERROR: failed to solve: "),
        "{logs}"
    );
    let registry = util::env("PF_TEST_REGISTRY");
    assert!(
        !exists(&format!("{registry}/{repo}:v1")).await,
        "an index was pushed"
    );
    assert!(
        !exists(&format!("{registry}/{repo}:v1-amd64")).await,
        "amd64 was pushed"
    );
}

#[tokio::test]
async fn bad_input_is_one_line_and_pushes_nothing() {
    let dir = context("FROM scratch\nCOPY hello.txt /\n", &[("hello.txt", "hi\n")]);
    let repo = unique_repo("bad");
    // Malformed flags and values the library refuses are usage errors (exit 2), in one line;
    // `cli.rs` has the whole table.
    for (extra, needle) in [
        (
            vec!["--arch", "amd64,sparc"],
            "unknown architecture \"sparc\"",
        ),
        (vec!["--builder", "amd64"], "expected ARCH=ENDPOINT"),
        (vec!["--builder", "amd64=ftp://x"], "unknown scheme"),
        (
            vec!["--output", "type=local,dest=out"],
            "--output cannot be combined with --repo",
        ),
    ] {
        let out = multi_build(Tier::preferred(), dir.path(), &repo, &extra).await;
        let err = util::assert_usage_error(&out);
        assert!(err.contains(needle), "{extra:?}: {err}");
    }
    for (repo, tag, needle) in [
        ("Bad/Repo", "v1", "repository \"Bad/Repo\""),
        ("pf-test/ok", "v1:x", "tag \"v1:x\""),
    ] {
        let registry = util::env("PF_TEST_REGISTRY");
        let args = ["--repo", repo, "--tag", tag, "--registry", &registry];
        let out = build_in(Tier::preferred(), dir.path(), &args).await;
        assert!(util::assert_usage_error(&out).contains(needle));
    }
    let registry = util::env("PF_TEST_REGISTRY");
    assert!(!exists(&format!("{registry}/{repo}:v1")).await);
}

async fn registry_comes_from_buildkit_json(tier: Tier) {
    let dir = context("FROM scratch\nCOPY hello.txt /\n", &[("hello.txt", "hi\n")]);
    std::fs::create_dir(dir.path().join(".git")).unwrap();
    // No buildkit.json yet: the message names the file and what to put in it.
    let out = build_in(tier, dir.path(), &["--repo", "pf-test/cfg", "--tag", "v1"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(".buildkit/buildkit.json"),
        "{}",
        stderr(&out)
    );

    std::fs::create_dir(dir.path().join(".buildkit")).unwrap();
    std::fs::write(
        dir.path().join(".buildkit/buildkit.json"),
        format!(
            "{{\"registry\": \"{}\", \"cluster\": \"unused\"}}",
            util::env("PF_TEST_REGISTRY")
        ),
    )
    .unwrap();
    let repo = unique_repo("cfg");
    let args = ["--progress", "quiet", "--repo", &repo, "--tag", "v1"];
    let out = build_in(
        tier,
        dir.path(),
        &[&args[..], &["--insecure-registry", "--arch", "arm64"]].concat(),
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_index(&repo, stdout(&out).trim(), &["arm64"]).await;
}

tier_tests!(
    async two_architectures_pushed_with_one_index,
    async client_side_push_and_builders_per_architecture,
    async one_architecture_failing_cancels_the_other_and_pushes_no_index,
    async registry_comes_from_buildkit_json,
    async local_cache_per_architecture_from_buildkit_json_or_flag,
);

async fn local_cache_per_architecture_from_buildkit_json_or_flag(tier: Tier) {
    let dir = context(
        "FROM scratch\nARG TARGETARCH\nCOPY hello-${TARGETARCH}.txt /hello.txt\n",
        &[
            ("hello-amd64.txt", "amd64\n"),
            ("hello-arm64.txt", "arm64\n"),
        ],
    );
    std::fs::create_dir(dir.path().join(".git")).unwrap();
    std::fs::create_dir(dir.path().join(".buildkit")).unwrap();
    std::fs::write(
        dir.path().join(".buildkit/buildkit.json"),
        format!(
            "{{\"registry\": \"{}\", \"cluster\": \"unused\", \"cache_dir\": \"cache\"}}",
            util::env("PF_TEST_REGISTRY")
        ),
    )
    .unwrap();
    let cache = dir.path().join(".buildkit/cache");
    let repo = unique_repo("cache-dir");
    let args = ["--progress", "plain", "--repo", &repo, "--tag", "v1"];
    let args = [&args[..], &["--insecure-registry"]].concat();

    // First run: nothing to import; each architecture exports its own layout.
    let out = build_in(tier, dir.path(), &args).await;
    assert!(out.status.success(), "{}", stderr(&out));
    for arch in ["amd64", "arm64"] {
        let index: Value =
            serde_json::from_slice(&std::fs::read(cache.join(arch).join("index.json")).unwrap())
                .unwrap();
        assert_eq!(
            index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"], "latest",
            "{arch}: {index}"
        );
        let digest = index["manifests"][0]["digest"].as_str().unwrap();
        assert!(
            cache
                .join(arch)
                .join("blobs/sha256")
                .join(digest.trim_start_matches("sha256:"))
                .is_file()
        );
    }

    // Second run, the directory named by the flag: each architecture imports its cache.
    let flag = ["--cache-dir", cache.to_str().unwrap()];
    let out = build_in(tier, dir.path(), &[&args[..], &flag[..]].concat()).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    for arch in ["amd64", "arm64"] {
        assert!(
            err.lines().any(|l| l.starts_with(&format!("{arch}: #"))
                && l.contains("importing cache manifest from local:")),
            "{arch} imported no local cache:\n{err}"
        );
    }
    assert_index(&repo, stdout(&out).trim(), &["amd64", "arm64"]).await;
}
