//! The client's content store (issue 9): local cache export and import, OCI layout outputs
//! checked blob by blob, builds `FROM` an OCI layout, concurrent exports into one cache
//! directory, and bad input, each failing with one line and leaving the layout as it was.
//!
//! Every test runs on both tiers: the standalone buildkitd (the production daemon) and the
//! Docker Engine's BuildKit.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::util::{self, Tier};

fn build(addr: &str, args: &[&str]) -> std::process::Output {
    build_with_progress(addr, "plain", args)
}

fn build_with_progress(addr: &str, progress: &str, args: &[&str]) -> std::process::Output {
    util::bin()
        .args(["--addr", addr, "build", "--progress", progress])
        .args(["--opt", "force-network-mode=none"])
        .args(args)
        .output()
        .unwrap()
}

fn assert_ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "exit {:?}\nstderr:\n{}",
        out.status.code(),
        util::stderr(out)
    );
}

/// Asserts a failure with exit 1 whose last stderr line names `path`.
fn assert_one_line_naming(out: &std::process::Output, path: &Path) {
    let stderr = util::stderr(out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("pf-buildkit: ") && last.contains(path.to_str().unwrap()),
        "last line does not name {}: {stderr}",
        path.display()
    );
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn sha256_file(path: &Path) -> String {
    let mut hasher = Sha256::new();
    let mut file = std::fs::File::open(path).unwrap();
    std::io::copy(&mut file, &mut hasher).unwrap();
    format!("sha256:{:x}", hasher.finalize())
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    let (alg, hex) = digest.split_once(':').unwrap();
    layout.join("blobs").join(alg).join(hex)
}

/// Checks a layout blob by blob: every file under `blobs/` hashes to its name, every
/// descriptor reachable from `index.json` has a blob of its size and digest, and no upload
/// was left in `ingest/`. Returns the descriptors reachable from the index.
pub(crate) fn verify_layout(layout: &Path) -> Vec<Value> {
    assert_eq!(
        read_json(&layout.join("oci-layout")),
        serde_json::json!({"imageLayoutVersion": "1.0.0"})
    );
    for entry in std::fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        assert_eq!(
            sha256_file(&path),
            format!("sha256:{name}"),
            "{}",
            path.display()
        );
    }
    if let Ok(ingest) = std::fs::read_dir(layout.join("ingest")) {
        assert_eq!(
            ingest.count(),
            0,
            "uploads left in {}/ingest",
            layout.display()
        );
    }
    let index = read_json(&layout.join("index.json"));
    let mut pending: Vec<Value> = index["manifests"].as_array().unwrap().clone();
    let mut seen = Vec::new();
    while let Some(desc) = pending.pop() {
        let digest = desc["digest"].as_str().unwrap();
        let path = blob(layout, digest);
        assert_eq!(sha256_file(&path), digest);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            desc["size"].as_u64().unwrap(),
            "size of {digest}"
        );
        let media = desc["mediaType"].as_str().unwrap_or_default();
        if media.contains("manifest") || media.contains("index") {
            let doc = read_json(&path);
            pending.extend(doc["manifests"].as_array().cloned().unwrap_or_default());
            pending.extend(doc["layers"].as_array().cloned().unwrap_or_default());
            if let Some(config) = doc.get("config") {
                pending.push(config.clone());
            }
        }
        seen.push(desc);
    }
    seen
}

/// The layer digests of the single image in a layout.
fn image_layers(layout: &Path) -> Vec<String> {
    let index = read_json(&layout.join("index.json"));
    let manifest = read_json(&blob(
        layout,
        index["manifests"][0]["digest"].as_str().unwrap(),
    ));
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect()
}

/// Every path under `root` with a hash of its content, for "left exactly as it was".
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.insert(path.clone(), "dir".into());
                dirs.push(path);
            } else {
                out.insert(path.clone(), sha256_file(&path));
            }
        }
    }
    out
}

fn dockerfile(dir: &Path, body: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("Dockerfile"), body).unwrap();
}

fn prune_all(addr: &str) {
    let out = util::bin()
        .args(["--addr", addr, "prune", "--all"])
        .output()
        .unwrap();
    assert_ok(&out);
}

fn local_cache_survives_a_prune_and_layouts_hold_every_blob(tier: Tier) {
    let addr = tier.addr();
    // Prunes the daemons' whole cache: no cache-dependent test may run meanwhile.
    let _cache = tier.cache_exclusive();
    let base = util::env("PF_TEST_BASE_IMAGE");
    let dir = tempfile::tempdir().unwrap();
    let ctx = dir.path().join("ctx");
    // Random content: the RUN layer exists only in this build, so a CACHED step after
    // the prune can only come from the imported cache.
    dockerfile(
        &ctx,
        &format!("FROM {base}\nRUN head -c 300000 /dev/urandom > /random\n"),
    );
    let cache = dir.path().join("cache");
    let first_image = dir.path().join("image1");
    let out = build(
        &addr,
        &[
            "--context",
            ctx.to_str().unwrap(),
            "--export-cache",
            &format!("type=local,dest={},mode=max", cache.display()),
            "--output",
            &format!(
                "type=oci,dest={},tar=false,name=127.0.0.1:5999/pf/content:v1",
                first_image.display()
            ),
        ],
    );
    assert_ok(&out);

    // The image layout: every blob verified, the index entry named as buildctl names it.
    let reachable = verify_layout(&first_image);
    assert!(
        reachable.len() >= 4,
        "index, manifest, config, layers: {reachable:?}"
    );
    let index = read_json(&first_image.join("index.json"));
    let annotations = &index["manifests"][0]["annotations"];
    assert_eq!(
        annotations["io.containerd.image.name"],
        "127.0.0.1:5999/pf/content:v1"
    );
    assert_eq!(annotations["org.opencontainers.image.ref.name"], "v1");

    // The cache layout: tagged latest, every blob verified.
    verify_layout(&cache);
    let cache_index = read_json(&cache.join("index.json"));
    assert_eq!(
        cache_index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "latest"
    );
    let layers = image_layers(&first_image);

    prune_all(&addr);
    let second_image = dir.path().join("image2");
    let out = build_with_progress(
        &addr,
        "rawjson",
        &[
            "--context",
            ctx.to_str().unwrap(),
            "--import-cache",
            &format!("type=local,src={}", cache.display()),
            "--output",
            &format!("type=oci,dest={},tar=false", second_image.display()),
        ],
    );
    assert_ok(&out);
    // The daemon's last word on the RUN step: cached (it may first announce the step,
    // then pull the cached layers under it, before marking it cached).
    let stderr = util::stderr(&out);
    let run_step = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .flat_map(|u| u["vertexes"].as_array().cloned().unwrap_or_default())
        .rfind(|v| {
            v["name"]
                .as_str()
                .is_some_and(|n| n.contains("RUN head -c 300000"))
        })
        .unwrap_or_else(|| panic!("no RUN step in {stderr}"));
    assert_eq!(
        run_step["cached"], true,
        "{addr}: the RUN step was not CACHED after the prune:\n{stderr}"
    );
    verify_layout(&second_image);
    assert_eq!(
        image_layers(&second_image),
        layers,
        "{addr}: layer digests differ"
    );
    let index = read_json(&second_image.join("index.json"));
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "latest"
    );
}

fn builds_run_from_an_oci_layout_by_tag_and_by_digest(tier: Tier) {
    let addr = tier.addr();
    let base = util::env("PF_TEST_BASE_IMAGE");
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("layout-{}", std::process::id());
    dockerfile(
        &dir.path().join("base"),
        &format!("FROM {base}\nRUN echo {marker} > /marker\n"),
    );
    let layout = dir.path().join("layout");
    let out = build(
        &addr,
        &[
            "--context",
            dir.path().join("base").to_str().unwrap(),
            "--output",
            &format!(
                "type=oci,dest={},tar=false,name=127.0.0.1:5999/pf/base:v1",
                layout.display()
            ),
        ],
    );
    assert_ok(&out);
    let index = read_json(&layout.join("index.json"));
    let digest = index["manifests"][0]["digest"].as_str().unwrap().to_owned();

    let app = dir.path().join("app");
    dockerfile(&app, "FROM base\nRUN cp /marker /copied\n");
    for reference in [
        "oci-layout://base:v1".to_owned(),
        format!("oci-layout://base@{digest}"),
    ] {
        let out_dir = dir.path().join(format!("out-{}", reference.len()));
        let out = build(
            &addr,
            &[
                "--context",
                app.to_str().unwrap(),
                "--oci-layout",
                &format!("base={}", layout.display()),
                "--opt",
                &format!("context:base={reference}"),
                "--output",
                &format!("type=local,dest={}", out_dir.display()),
            ],
        );
        assert_ok(&out);
        assert_eq!(
            std::fs::read_to_string(out_dir.join("copied")).unwrap(),
            format!("{marker}\n"),
            "{addr} {reference}"
        );
    }
}

fn two_builds_export_into_one_cache_directory_at_once(tier: Tier) {
    let addr = tier.addr();
    let base = util::env("PF_TEST_BASE_IMAGE");
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let children: Vec<_> = ["a", "b"]
        .iter()
        .map(|name| {
            let ctx = dir.path().join(name);
            dockerfile(
                &ctx,
                &format!("FROM {base}\nRUN head -c 200000 /dev/urandom > /{name}\n"),
            );
            util::bin()
                .args(["--addr", &addr, "build", "--progress", "quiet"])
                .args(["--opt", "force-network-mode=none"])
                .args(["--context", ctx.to_str().unwrap()])
                .args([
                    "--export-cache",
                    &format!("type=local,dest={},mode=max,tag={name}", cache.display()),
                ])
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        assert_ok(&child.wait_with_output().unwrap());
    }
    verify_layout(&cache);
    let index = read_json(&cache.join("index.json"));
    let mut tags: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m["annotations"]["org.opencontainers.image.ref.name"]
                .as_str()
                .unwrap()
        })
        .collect();
    tags.sort_unstable();
    assert_eq!(tags, ["a", "b"], "{addr}: {index}");
    assert!(!cache.join("index.json.lock").exists());
}

fn bad_input_fails_in_one_line_and_leaves_layouts_alone(tier: Tier) {
    let addr = tier.addr();
    let dir = tempfile::tempdir().unwrap();
    let ctx = dir.path().join("ctx");
    dockerfile(&ctx, "FROM scratch\nCOPY Dockerfile /\n");
    let ctx = ctx.to_str().unwrap();

    // A destination that is a file.
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    for flag in ["--export-cache", "--output"] {
        let spec = match flag {
            "--export-cache" => format!("type=local,dest={}", file.display()),
            _ => format!("type=oci,dest={},tar=false", file.display()),
        };
        let out = build(&addr, &["--context", ctx, flag, &spec]);
        assert_one_line_naming(&out, &file);
        assert_eq!(std::fs::read(&file).unwrap(), b"not a directory");
    }

    // A source that is not a layout.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = build(
        &addr,
        &[
            "--context",
            ctx,
            "--import-cache",
            &format!("type=local,src={}", empty.display()),
        ],
    );
    assert_one_line_naming(&out, &empty);
    let out = build(
        &addr,
        &[
            "--context",
            ctx,
            "--oci-layout",
            &format!("base={}", empty.display()),
            "--opt",
            "context:base=oci-layout://base:latest",
        ],
    );
    assert_one_line_naming(&out, &empty);
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);

    // A layout without the digest or tag asked for.
    let layout = dir.path().join("layout");
    let out = build(
        &addr,
        &[
            "--context",
            ctx,
            "--output",
            &format!("type=oci,dest={},tar=false", layout.display()),
        ],
    );
    assert_ok(&out);
    let before = snapshot(&layout);
    let missing = format!("sha256:{}", "0".repeat(64));
    for args in [
        vec![
            "--import-cache".to_owned(),
            format!("type=local,src={},tag=nope", layout.display()),
        ],
        vec![
            "--import-cache".to_owned(),
            format!("type=local,src={},digest={missing}", layout.display()),
        ],
        vec![
            "--oci-layout".to_owned(),
            format!("base={}", layout.display()),
            "--opt".to_owned(),
            "context:base=oci-layout://base:nope".to_owned(),
        ],
        vec![
            "--oci-layout".to_owned(),
            format!("base={}", layout.display()),
            "--opt".to_owned(),
            format!("context:base=oci-layout://base@{missing}"),
        ],
    ] {
        let mut all = vec!["--context", ctx];
        all.extend(args.iter().map(String::as_str));
        let out = build(&addr, &all);
        assert_one_line_naming(&out, &layout);
    }
    assert_eq!(
        snapshot(&layout),
        before,
        "a failed build changed the layout"
    );
}

/// Unmounts the small tmpfs when the test ends, however it ends.
struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

fn a_full_disk_fails_in_one_line_and_leaves_the_layout_alone(tier: Tier) {
    let addr = tier.addr();
    let base = util::env("PF_TEST_BASE_IMAGE");
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("small");
    std::fs::create_dir(&mount).unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&mount)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "mounting a tmpfs needs root, as the test environment does"
    );
    let _mounted = Tmpfs(mount.clone());

    // A small layout already there, which the failed export must leave as it was.
    let cache = mount.join("cache");
    let small = dir.path().join("small-ctx");
    dockerfile(&small, "FROM scratch\nCOPY Dockerfile /\n");
    let out = build(
        &addr,
        &[
            "--context",
            small.to_str().unwrap(),
            "--export-cache",
            &format!("type=local,dest={},mode=max", cache.display()),
        ],
    );
    assert_ok(&out);
    let before = snapshot(&cache);

    let big = dir.path().join("big-ctx");
    dockerfile(
        &big,
        &format!("FROM {base}\nRUN head -c 2000000 /dev/urandom > /big\n"),
    );
    let out = build(
        &addr,
        &[
            "--context",
            big.to_str().unwrap(),
            "--export-cache",
            &format!("type=local,dest={},mode=max", cache.display()),
        ],
    );
    assert_one_line_naming(&out, &cache);
    assert!(
        util::stderr(&out).to_lowercase().contains("no space left"),
        "{}",
        util::stderr(&out)
    );
    assert_eq!(
        snapshot(&cache),
        before,
        "{addr}: the failed export changed the layout"
    );
}

tier_tests!(
    local_cache_survives_a_prune_and_layouts_hold_every_blob,
    builds_run_from_an_oci_layout_by_tag_and_by_digest,
    two_builds_export_into_one_cache_directory_at_once,
    bad_input_fails_in_one_line_and_leaves_layouts_alone,
    a_full_disk_fails_in_one_line_and_leaves_the_layout_alone,
);
