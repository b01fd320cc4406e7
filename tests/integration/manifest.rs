//! `manifest push` / `manifest inspect` and the registry library against the real registry at
//! `$PF_TEST_REGISTRY`: index assembly, cross-repository copies, flattening, retries through a
//! fault-injecting proxy, auth failures, bad input, and OCI layout tarball pushes.
//!
//! Source images are pushed with raw registry API calls here (not with the code under test).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::registry_proxy::{Fault, Proxy, ProxyConfig};
use crate::util::{self, assert_one_line_failure, http_client, unique_repo};

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

fn registry() -> String {
    util::env("PF_TEST_REGISTRY")
}

/// Bytes that differ on every call (a fresh layer).
fn random_bytes(len: usize) -> Vec<u8> {
    let seed = unique_repo("seed");
    let mut out = Vec::with_capacity(len);
    let mut block = Sha256::digest(seed.as_bytes()).to_vec();
    while out.len() < len {
        out.extend_from_slice(&block);
        block = Sha256::digest(&block).to_vec();
    }
    out.truncate(len);
    out
}

/// Raw registry calls against `host` (plain HTTP).
struct Raw {
    http: reqwest::Client,
    host: String,
}

impl Raw {
    fn new(host: &str) -> Self {
        Self {
            http: http_client(true),
            host: host.to_owned(),
        }
    }

    async fn put_blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = util::sha256_digest(data);
        let res = self
            .http
            .post(format!("http://{}/v2/{repo}/blobs/uploads/", self.host))
            .header("content-length", "0")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
        let location = res.headers()["location"].to_str().unwrap().to_owned();
        let mut url = reqwest::Url::parse(&format!("http://{}/", self.host))
            .unwrap()
            .join(&location)
            .unwrap();
        url.query_pairs_mut().append_pair("digest", &digest);
        let res = self
            .http
            .put(url)
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
        digest
    }

    async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> String {
        let res = self
            .http
            .put(format!(
                "http://{}/v2/{repo}/manifests/{reference}",
                self.host
            ))
            .header("content-type", media_type)
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
        util::sha256_digest(body)
    }

    /// (content type, bytes) of a manifest, or None on 404.
    async fn get_manifest(&self, repo: &str, reference: &str) -> Option<(String, Vec<u8>)> {
        let res = self
            .http
            .get(format!(
                "http://{}/v2/{repo}/manifests/{reference}",
                self.host
            ))
            .header("accept", ACCEPT)
            .send()
            .await
            .unwrap();
        if res.status() == 404 {
            return None;
        }
        assert_eq!(res.status(), 200);
        let ct = res.headers()["content-type"].to_str().unwrap().to_owned();
        Some((ct, res.bytes().await.unwrap().to_vec()))
    }

    async fn head_blob(&self, repo: &str, digest: &str) -> u16 {
        self.http
            .head(format!("http://{}/v2/{repo}/blobs/{digest}", self.host))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

/// A pushed single-platform image.
#[derive(Debug, Clone)]
struct Image {
    digest: String,
    media_type: String,
    size: u64,
    blobs: Vec<String>,
}

/// Pushes a small image (one random layer) for `os/arch` under `repo:tag`.
async fn push_image(raw: &Raw, repo: &str, tag: &str, os: &str, arch: &str, docker: bool) -> Image {
    let layer = random_bytes(2048);
    let layer_digest = raw.put_blob(repo, &layer).await;
    let config = serde_json::to_vec(&json!({
        "architecture": arch, "os": os,
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "config": {}
    }))
    .unwrap();
    let config_digest = raw.put_blob(repo, &config).await;
    let (mt, cmt, lmt) = if docker {
        (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER)
    } else {
        (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER)
    };
    let manifest = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2, "mediaType": mt,
        "config": {"mediaType": cmt, "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": lmt, "digest": layer_digest, "size": layer.len()}]
    }))
    .unwrap();
    let digest = raw.put_manifest(repo, tag, mt, &manifest).await;
    Image {
        digest,
        media_type: mt.into(),
        size: manifest.len() as u64,
        blobs: vec![config_digest, layer_digest],
    }
}

/// Pushes an attestation manifest for `subject` (as BuildKit does: an OCI manifest with an
/// in-toto layer) and returns it.
async fn push_attestation(raw: &Raw, repo: &str, subject: &str) -> Image {
    let statement = serde_json::to_vec(&json!({"_type": "https://in-toto.io/Statement/v0.1", "subject": [{"digest": {"sha256": &subject[7..]}}], "nonce": unique_repo("n")})).unwrap();
    let layer_digest = raw.put_blob(repo, &statement).await;
    let config = br#"{"architecture":"unknown","os":"unknown","config":{},"rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = raw.put_blob(repo, config).await;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.in-toto+json", "digest": layer_digest, "size": statement.len(),
                    "annotations": {"in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"}}]
    }))
    .unwrap();
    let digest = raw
        .put_manifest(
            repo,
            &util::sha256_digest(&manifest),
            OCI_MANIFEST,
            &manifest,
        )
        .await;
    Image {
        digest,
        media_type: OCI_MANIFEST.into(),
        size: manifest.len() as u64,
        blobs: vec![config_digest, layer_digest],
    }
}

/// Pushes a per-arch build with an attestation as BuildKit does: an OCI index holding the
/// image and its attestation manifest, tagged `repo:tag`.
async fn push_index_with_attestation(
    raw: &Raw,
    repo: &str,
    tag: &str,
    arch: &str,
) -> (Image, Image, String) {
    let image = push_image(raw, repo, &format!("{tag}-img"), "linux", arch, false).await;
    let att = push_attestation(raw, repo, &image.digest).await;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": image.digest, "size": image.size,
             "platform": {"architecture": arch, "os": "linux"}},
            {"mediaType": OCI_MANIFEST, "digest": att.digest, "size": att.size,
             "platform": {"architecture": "unknown", "os": "unknown"},
             "annotations": {"vnd.docker.reference.type": "attestation-manifest",
                             "vnd.docker.reference.digest": image.digest}}
        ]
    }))
    .unwrap();
    let digest = raw.put_manifest(repo, tag, OCI_INDEX, &index).await;
    (image, att, digest)
}

/// An empty docker config folder, so no ambient credentials leak into a test.
fn empty_docker_config() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

async fn run_bin(args: &[&str], docker_config: &Path) -> std::process::Output {
    util::tokio_bin()
        .args(args)
        .env("DOCKER_CONFIG", docker_config)
        .output()
        .await
        .unwrap()
}

async fn manifest_push(
    host: &str,
    repo_src: &str,
    tag: &str,
    target: &str,
    platforms: &str,
) -> std::process::Output {
    let cfg = empty_docker_config();
    run_bin(
        &[
            "manifest",
            "push",
            "--platforms",
            platforms,
            "--template",
            &format!("{host}/{repo_src}:{tag}-ARCH"),
            "--target",
            target,
            "--insecure-registry",
        ],
        cfg.path(),
    )
    .await
}

/// Platforms of an index's entries, as `os/arch`, with digests.
fn entries(index: &Value) -> Vec<(String, String)> {
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                format!(
                    "{}/{}",
                    m["platform"]["os"].as_str().unwrap(),
                    m["platform"]["architecture"].as_str().unwrap()
                ),
                m["digest"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn push_from_two_docker_tags_makes_a_docker_manifest_list() {
    let host = registry();
    let raw = Raw::new(&host);
    let repo = unique_repo("docker");
    let amd = push_image(&raw, &repo, "v1-amd64", "linux", "amd64", true).await;
    let arm = push_image(&raw, &repo, "v1-arm64", "linux", "arm64", true).await;

    let out = manifest_push(
        &host,
        &repo,
        "v1",
        &format!("{host}/{repo}:v1"),
        "linux/amd64,linux/arm64",
    )
    .await;
    assert!(out.status.success(), "{}", util::stderr(&out));
    let printed = util::stdout(&out).trim().to_owned();

    let (ct, bytes) = raw.get_manifest(&repo, "v1").await.expect("index pushed");
    assert_eq!(ct, DOCKER_LIST);
    assert_eq!(
        printed,
        util::sha256_digest(&bytes),
        "printed digest is the index's"
    );
    let index: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(index["mediaType"], DOCKER_LIST);
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(
        entries(&index),
        vec![
            ("linux/amd64".to_owned(), amd.digest.clone()),
            ("linux/arm64".to_owned(), arm.digest.clone())
        ]
    );
    for (m, img) in index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .zip([&amd, &arm])
    {
        assert_eq!(m["mediaType"], DOCKER_MANIFEST);
        assert_eq!(m["size"], img.size);
        for blob in &img.blobs {
            assert_eq!(raw.head_blob(&repo, blob).await, 200);
        }
    }

    // `manifest inspect` shows the same document.
    let cfg = empty_docker_config();
    let out = run_bin(
        &[
            "manifest",
            "inspect",
            &format!("{host}/{repo}:v1"),
            "--insecure-registry",
        ],
        cfg.path(),
    )
    .await;
    assert!(out.status.success(), "{}", util::stderr(&out));
    let shown: Value = serde_json::from_str(&util::stdout(&out)).unwrap();
    assert_eq!(shown, index);
    assert!(
        util::stdout(&out).starts_with("{\n  \"schemaVersion\": 2,\n  \"mediaType\": "),
        "pretty-printed in the registry's key order: {}",
        util::stdout(&out)
    );
    // By digest too; and a missing tag is named.
    let out = run_bin(
        &[
            "manifest",
            "inspect",
            "--insecure-registry",
            &format!("{host}/{repo}@{}", arm.digest),
        ],
        cfg.path(),
    )
    .await;
    assert!(out.status.success(), "{}", util::stderr(&out));
    let shown: Value = serde_json::from_str(&util::stdout(&out)).unwrap();
    assert_eq!(shown["mediaType"], DOCKER_MANIFEST);
    assert_eq!(shown["layers"][0]["digest"], arm.blobs[1].as_str());
    let out = run_bin(
        &[
            "manifest",
            "inspect",
            "--insecure-registry",
            &format!("{host}/{repo}:nope"),
        ],
        cfg.path(),
    )
    .await;
    let err = assert_one_line_failure(&out);
    assert!(
        err.contains(&format!("{host}/{repo}:nope not found")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn oci_or_mixed_sources_make_an_oci_index() {
    let host = registry();
    let raw = Raw::new(&host);
    let repo = unique_repo("mixed");
    let amd = push_image(&raw, &repo, "m-amd64", "linux", "amd64", true).await;
    let arm = push_image(&raw, &repo, "m-arm64", "linux", "arm64", false).await;
    let out = manifest_push(
        &host,
        &repo,
        "m",
        &format!("{host}/{repo}:m"),
        "linux/amd64,linux/arm64",
    )
    .await;
    assert!(out.status.success(), "{}", util::stderr(&out));
    let (ct, bytes) = raw.get_manifest(&repo, "m").await.unwrap();
    assert_eq!(ct, OCI_INDEX);
    let index: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(index["manifests"][0]["mediaType"], amd.media_type);
    assert_eq!(index["manifests"][1]["mediaType"], arm.media_type);

    let repo = unique_repo("oci");
    push_image(&raw, &repo, "o-amd64", "linux", "amd64", false).await;
    push_image(&raw, &repo, "o-arm64", "linux", "arm64", false).await;
    let out = manifest_push(
        &host,
        &repo,
        "o",
        &format!("{host}/{repo}:o"),
        "linux/amd64,linux/arm64",
    )
    .await;
    assert!(out.status.success(), "{}", util::stderr(&out));
    assert_eq!(raw.get_manifest(&repo, "o").await.unwrap().0, OCI_INDEX);
}

#[tokio::test(flavor = "multi_thread")]
async fn sources_in_another_repository_are_mounted_into_the_target() {
    let host = registry();
    let raw = Raw::new(&host);
    let src = unique_repo("src");
    let dst = unique_repo("dst");
    let amd = push_image(&raw, &src, "v2-amd64", "linux", "amd64", false).await;
    let arm = push_image(&raw, &src, "v2-arm64", "linux", "arm64", false).await;
    let proxy = Proxy::start(ProxyConfig::default()).await;

    let target = format!("{}/{dst}:v2", proxy.addr);
    let out = manifest_push(
        &proxy.addr.to_string(),
        &src,
        "v2",
        &target,
        "linux/amd64,linux/arm64",
    )
    .await;
    assert!(out.status.success(), "{}", util::stderr(&out));
    let (_, bytes) = raw.get_manifest(&dst, "v2").await.unwrap();
    let index: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        entries(&index).into_iter().map(|e| e.1).collect::<Vec<_>>(),
        vec![amd.digest.clone(), arm.digest.clone()]
    );
    for img in [&amd, &arm] {
        assert!(
            raw.get_manifest(&dst, &img.digest).await.is_some(),
            "child manifest in target repo"
        );
        for blob in &img.blobs {
            assert_eq!(raw.head_blob(&dst, blob).await, 200);
        }
    }
    // Every blob came by mount (201), none by upload.
    let log = proxy.log();
    let mounts = log
        .iter()
        .filter(|(m, p, s)| m == "POST" && p.contains("mount=") && *s == 201)
        .count();
    assert_eq!(mounts, 4, "{log:#?}");
    assert!(
        !log.iter()
            .any(|(m, p, _)| m == "PUT" && p.contains("/blobs/uploads/")),
        "no blob was uploaded: {log:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_mounts_fall_back_to_a_streaming_copy() {
    let host = registry();
    let raw = Raw::new(&host);
    let src = unique_repo("nomount-src");
    let dst = unique_repo("nomount-dst");
    let amd = push_image(&raw, &src, "v3-amd64", "linux", "amd64", true).await;
    // The proxy strips `mount`, so the registry answers 202 (an upload session) as one that
    // refuses the mount does.
    let proxy = Proxy::start(ProxyConfig {
        refuse_mounts: true,
        ..Default::default()
    })
    .await;
    let target = format!("{}/{dst}:v3", proxy.addr);
    let out = manifest_push(&proxy.addr.to_string(), &src, "v3", &target, "linux/amd64").await;
    assert!(out.status.success(), "{}", util::stderr(&out));
    for blob in &amd.blobs {
        assert_eq!(raw.head_blob(&dst, blob).await, 200);
    }
    let log = proxy.log();
    let uploads = log
        .iter()
        .filter(|(m, p, s)| m == "PUT" && p.contains("/blobs/uploads/") && *s == 201)
        .count();
    assert_eq!(uploads, 2, "config and layer streamed: {log:#?}");
    let (ct, _) = raw.get_manifest(&dst, "v3").await.unwrap();
    assert_eq!(ct, DOCKER_LIST);

    // Sources on another registry host (the proxy) than the target (the registry itself):
    // no mount is possible, so the blobs stream from one to the other.
    let other = unique_repo("other-registry");
    let out = manifest_push(
        &proxy.addr.to_string(),
        &src,
        "v3",
        &format!("{host}/{other}:v3"),
        "linux/amd64",
    )
    .await;
    assert!(out.status.success(), "{}", util::stderr(&out));
    for blob in &amd.blobs {
        assert_eq!(raw.head_blob(&other, blob).await, 200);
        assert!(
            proxy
                .log()
                .iter()
                .any(|(m, p, s)| m == "GET" && p.ends_with(&format!("/blobs/{blob}")) && *s == 200),
            "{blob} read from the source registry"
        );
    }
    assert!(raw.get_manifest(&other, &amd.digest).await.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn index_sources_are_flattened_keeping_attestations() {
    let host = registry();
    let raw = Raw::new(&host);
    let src = unique_repo("idx-src");
    let dst = unique_repo("idx-dst");
    let (amd, amd_att, _) = push_index_with_attestation(&raw, &src, "b-amd64", "amd64").await;
    let (arm, arm_att, _) = push_index_with_attestation(&raw, &src, "b-arm64", "arm64").await;

    let out = manifest_push(
        &host,
        &src,
        "b",
        &format!("{host}/{dst}:b"),
        "linux/amd64,linux/arm64",
    )
    .await;
    assert!(out.status.success(), "{}", util::stderr(&out));
    let (ct, bytes) = raw.get_manifest(&dst, "b").await.unwrap();
    assert_eq!(
        ct, OCI_INDEX,
        "attestations are OCI, so the list is an OCI index"
    );
    let index: Value = serde_json::from_slice(&bytes).unwrap();
    let got = entries(&index);
    assert_eq!(
        got,
        vec![
            ("linux/amd64".to_owned(), amd.digest.clone()),
            ("linux/arm64".to_owned(), arm.digest.clone()),
            ("unknown/unknown".to_owned(), amd_att.digest.clone()),
            ("unknown/unknown".to_owned(), arm_att.digest.clone()),
        ]
    );
    assert_eq!(
        index["manifests"][2]["annotations"]["vnd.docker.reference.type"],
        "attestation-manifest"
    );
    assert_eq!(
        index["manifests"][3]["annotations"]["vnd.docker.reference.digest"],
        arm.digest.as_str()
    );
    for img in [&amd, &arm, &amd_att, &arm_att] {
        assert!(raw.get_manifest(&dst, &img.digest).await.is_some());
        for blob in &img.blobs {
            assert_eq!(raw.head_blob(&dst, blob).await, 200, "{blob} in {dst}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn transient_faults_are_retried() {
    let host = registry();
    let raw = Raw::new(&host);
    let src = unique_repo("flaky-src");
    let dst = unique_repo("flaky-dst");
    push_image(&raw, &src, "f-amd64", "linux", "amd64", false).await;
    push_image(&raw, &src, "f-arm64", "linux", "arm64", false).await;
    let proxy = Proxy::start(ProxyConfig {
        // Every request's first try fails, alternating 500, 429 with Retry-After, and a
        // connection dropped before any answer.
        faults: vec![
            Fault::Status(500),
            Fault::RetryAfter(1),
            Fault::Drop,
            Fault::Status(503),
            Fault::Drop,
            Fault::Status(502),
        ],
        ..Default::default()
    })
    .await;
    let started = Instant::now();
    let target = format!("{}/{dst}:f", proxy.addr);
    let out = manifest_push(
        &proxy.addr.to_string(),
        &src,
        "f",
        &target,
        "linux/amd64,linux/arm64",
    )
    .await;
    assert!(out.status.success(), "{}", util::stderr(&out));
    assert_eq!(proxy.faults_served(), 6);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After honoured"
    );
    let (_, bytes) = raw.get_manifest(&dst, "f").await.unwrap();
    assert_eq!(util::stdout(&out).trim(), util::sha256_digest(&bytes));
}

#[tokio::test(flavor = "multi_thread")]
async fn permanent_faults_give_a_clear_error_and_push_nothing() {
    let host = registry();
    let raw = Raw::new(&host);
    let repo = unique_repo("down");
    push_image(&raw, &repo, "d-amd64", "linux", "amd64", false).await;
    let proxy = Proxy::start(ProxyConfig {
        always: Some(Fault::Status(503)),
        ..Default::default()
    })
    .await;
    let started = Instant::now();
    let target = format!("{}/{repo}:d", proxy.addr);
    let out = manifest_push(&proxy.addr.to_string(), &repo, "d", &target, "linux/amd64").await;
    let err = assert_one_line_failure(&out);
    assert!(
        err.contains(&format!(
            "registry {} answered 503 Service Unavailable",
            proxy.addr
        )) && err.contains("after 5 attempts"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(30), "bounded");
    assert!(raw.get_manifest(&repo, "d").await.is_none());

    let proxy = Proxy::start(ProxyConfig {
        always: Some(Fault::Drop),
        ..Default::default()
    })
    .await;
    let target = format!("{}/{repo}:d", proxy.addr);
    let out = manifest_push(&proxy.addr.to_string(), &repo, "d", &target, "linux/amd64").await;
    let err = assert_one_line_failure(&out);
    assert!(
        err.contains(&format!(
            "cannot talk to registry {} (after 5 attempt(s))",
            proxy.addr
        )),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_credentials_come_from_the_docker_config() {
    let host = registry();
    let raw = Raw::new(&host);
    let repo = unique_repo("auth");
    push_image(&raw, &repo, "a-amd64", "linux", "amd64", false).await;
    let proxy = Proxy::start(ProxyConfig {
        basic_auth: Some(("builder".into(), "s3cret-pw".into())),
        ..Default::default()
    })
    .await;
    let addr = proxy.addr.to_string();
    let args = |target: String| {
        vec![
            "manifest".to_owned(),
            "push".into(),
            "--platforms=linux/amd64".into(),
            format!("--template={addr}/{repo}:a-ARCH"),
            format!("--target={target}"),
            "--insecure-registry".into(),
        ]
    };
    let target = format!("{addr}/{repo}:a");
    let run = |cfg: &str| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), cfg).unwrap();
        let a = args(target.clone());
        async move {
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            run_bin(&a, dir.path()).await
        }
    };
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);

    // No credentials.
    let out = run("{}").await;
    let err = assert_one_line_failure(&out);
    assert!(
        err.contains(&format!("registry {addr} requires credentials")) && err.contains("401"),
        "{err}"
    );
    // Wrong credentials: named registry, rejected, and the password never shown.
    let out = run(&format!(
        r#"{{"auths":{{"{addr}":{{"auth":"{}"}}}}}}"#,
        b64("builder:wrong-pw")
    ))
    .await;
    let err = assert_one_line_failure(&out);
    assert!(
        err.contains(&format!("registry {addr} rejected the credentials")) && err.contains("401"),
        "{err}"
    );
    assert!(!err.contains("wrong-pw"));
    assert!(raw.get_manifest(&repo, "a").await.is_none());
    // Right credentials (username/password form).
    let out = run(&format!(
        r#"{{"auths":{{"{addr}":{{"username":"builder","password":"s3cret-pw"}}}}}}"#
    ))
    .await;
    assert!(out.status.success(), "{}", util::stderr(&out));
    assert!(raw.get_manifest(&repo, "a").await.is_some());

    // A credential helper (`credHelpers`, then `credsStore`): the program gets the registry on
    // stdin and answers with JSON, as docker-credential-* helpers do.
    let helpers = tempfile::tempdir().unwrap();
    let script = helpers.path().join("docker-credential-pftest");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nread host\n[ \"$1\" = get ] && [ \"$host\" = \"{addr}\" ] || exit 1\necho '{{\"ServerURL\":\"{addr}\",\"Username\":\"builder\",\"Secret\":\"s3cret-pw\"}}'\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        helpers.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for (i, cfg) in [
        format!(r#"{{"credHelpers":{{"{addr}":"pftest"}}}}"#),
        r#"{"credsStore":"pftest"}"#.to_owned(),
    ]
    .into_iter()
    .enumerate()
    {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), cfg).unwrap();
        let target = format!("{addr}/{repo}:helper{i}");
        let a = args(target);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let out = util::tokio_bin()
            .args(&a)
            .env("DOCKER_CONFIG", dir.path())
            .env("PATH", &path)
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{}", util::stderr(&out));
        assert!(
            raw.get_manifest(&repo, &format!("helper{i}"))
                .await
                .is_some()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_fails_in_one_line_and_pushes_nothing() {
    let host = registry();
    let raw = Raw::new(&host);
    let repo = unique_repo("bad");
    push_image(&raw, &repo, "x-amd64", "linux", "amd64", false).await;
    let dst = unique_repo("bad-dst");
    let target = format!("{host}/{dst}:x");
    let cfg = empty_docker_config();
    let push = |platforms: &str, template: String, target: String| {
        let platforms = platforms.to_owned();
        let cfg = cfg.path().to_owned();
        async move {
            run_bin(
                &[
                    "manifest",
                    "push",
                    "--platforms",
                    &platforms,
                    "--template",
                    &template,
                    "--target",
                    &target,
                    "--insecure-registry",
                ],
                &cfg,
            )
            .await
        }
    };

    let out = push(
        "linux/amd64,linux/amd65",
        format!("{host}/{repo}:x-ARCH"),
        target.clone(),
    )
    .await;
    let err = util::assert_usage_error(&out);
    assert!(err.contains("unknown architecture \"amd65\""), "{err}");

    let out = push(
        "linux/amd64",
        format!("{host}/{repo}:ARCHIVE"),
        target.clone(),
    )
    .await;
    let err = util::assert_usage_error(&out);
    assert!(
        err.contains("has no ARCH, OS or VARIANT placeholder"),
        "{err}"
    );

    // arm64 does not exist: named, and the amd64 image is not copied into the target either.
    let out = push(
        "linux/amd64,linux/arm64",
        format!("{host}/{repo}:x-ARCH"),
        target.clone(),
    )
    .await;
    let err = assert_one_line_failure(&out);
    assert!(
        err.contains(&format!("{host}/{repo}:x-arm64 not found")),
        "{err}"
    );
    assert!(raw.get_manifest(&dst, "x").await.is_none());

    // A source of the wrong platform.
    let out = push(
        "linux/arm64",
        format!("{host}/{repo}:x-amd64-ARCH"),
        target.clone(),
    )
    .await;
    assert_one_line_failure(&out);
    let out = push(
        "linux/arm64",
        format!("{host}/{repo}:x-amd64"),
        target.clone(),
    )
    .await;
    assert!(util::assert_usage_error(&out).contains("has no ARCH, OS or VARIANT placeholder"));

    let out = push(
        "linux/amd64",
        format!("{host}/{repo}:x-ARCH"),
        format!("{host}/Not Valid:x"),
    )
    .await;
    let err = util::assert_usage_error(&out);
    assert!(err.contains("invalid image reference"), "{err}");

    // A server that answers garbage instead of HTTP.
    let garbage = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gaddr = garbage.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for conn in garbage.incoming() {
            let Ok(mut conn) = conn else { break };
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(b"SSH-2.0-OpenSSH_9.2 not a registry\r\n\r\n");
        }
    });
    let out = push(
        "linux/amd64",
        format!("{gaddr}/{repo}:x-ARCH"),
        format!("{gaddr}/{dst}:x"),
    )
    .await;
    let err = assert_one_line_failure(&out);
    assert!(
        err.contains(&format!("cannot talk to registry {gaddr}")),
        "{err}"
    );

    assert!(err.contains("did not answer in HTTP"), "{err}");
    assert!(
        err.trim_end()
            .ends_with("; if the registry needs HTTPS, drop --insecure-registry"),
        "{err}"
    );

    // HTTPS to a plain-HTTP registry: no retries, and a hint.
    let out = run_bin(
        &[
            "manifest",
            "push",
            "--platforms=linux/amd64",
            &format!("--template={host}/{repo}:x-ARCH"),
            &format!("--target={target}"),
        ],
        cfg.path(),
    )
    .await;
    let err = assert_one_line_failure(&out);
    assert!(
        err.contains("(after 1 attempt(s)): it answered HTTPS with plain HTTP"),
        "{err}"
    );
    assert!(
        err.trim_end()
            .ends_with("; pass --insecure-registry for a plain-HTTP registry"),
        "{err}"
    );

    assert!(
        raw.get_manifest(&dst, "x").await.is_none(),
        "nothing pushed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn oci_layout_tarballs_are_pushed_blob_by_blob() {
    use pf_buildkit::registry::{Client, ClientOptions, parse_reference};
    let host = registry();
    let raw = Raw::new(&host);
    let repo = unique_repo("layout");

    // A layout like BuildKit's oci exporter writes for two platforms: index.json -> index ->
    // two image manifests.
    let mut blobs: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut add = |bytes: Vec<u8>| {
        let d = util::sha256_digest(&bytes);
        let n = bytes.len();
        blobs.insert(d.clone(), bytes);
        (d, n)
    };
    let mut children = Vec::new();
    let mut layer_digests = Vec::new();
    for arch in ["amd64", "arm64"] {
        let (ld, ln) = add(random_bytes(300_000));
        layer_digests.push(ld.clone());
        let (cd, cn) = add(
            serde_json::to_vec(&json!({"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": [ld]}}))
                .unwrap(),
        );
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": cd, "size": cn},
            "layers": [{"mediaType": OCI_LAYER, "digest": ld, "size": ln}]
        }))
        .unwrap();
        let (md, mn) = add(manifest);
        children.push(json!({"mediaType": OCI_MANIFEST, "digest": md, "size": mn, "platform": {"architecture": arch, "os": "linux"}}));
    }
    let index = serde_json::to_vec(
        &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children}),
    )
    .unwrap();
    let (idx_digest, idx_size) = add(index);
    let top = serde_json::to_vec(
        &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_INDEX, "digest": idx_digest, "size": idx_size,
         "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}),
    )
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let tar_path = dir.path().join("out.tar");
    {
        let mut builder = tar::Builder::new(std::fs::File::create(&tar_path).unwrap());
        let mut append = |name: &str, data: &[u8]| {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, name, data).unwrap();
        };
        append("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
        append("index.json", &top);
        for (d, bytes) in &blobs {
            append(&format!("blobs/sha256/{}", &d[7..]), bytes);
        }
        builder.into_inner().unwrap();
    }

    let client = Client::new(ClientOptions::default().with_insecure(true)).unwrap();
    let target = parse_reference(&format!("{host}/{repo}:t")).unwrap();
    let digest = client.push_oci_layout(&tar_path, &target).await.unwrap();
    assert_eq!(digest, idx_digest);
    let (ct, bytes) = raw.get_manifest(&repo, "t").await.unwrap();
    assert_eq!(ct, OCI_INDEX);
    assert_eq!(
        util::sha256_digest(&bytes),
        idx_digest,
        "the exact bytes from the tarball"
    );
    for d in &layer_digests {
        assert_eq!(raw.head_blob(&repo, d).await, 200);
    }
    // Pushing again skips what is there and gives the same digest.
    assert_eq!(
        client.push_oci_layout(&tar_path, &target).await.unwrap(),
        idx_digest
    );

    // A tarball missing a blob is refused before the tag is written.
    let broken = dir.path().join("broken.tar");
    {
        let mut builder = tar::Builder::new(std::fs::File::create(&broken).unwrap());
        for (name, data) in [
            ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
            ("index.json", top.clone()),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(&mut header, name, data.as_slice())
                .unwrap();
        }
        builder.into_inner().unwrap();
    }
    let other = parse_reference(&format!("{host}/{repo}:broken")).unwrap();
    let err = client
        .push_oci_layout(&broken, &other)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("is missing") && err.contains("broken.tar"),
        "{err}"
    );
    assert!(raw.get_manifest(&repo, "broken").await.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn resolve_reports_platform_and_verifies_digests() {
    use pf_buildkit::registry::{Client, ClientOptions, ResolvedContent, parse_reference};
    let host = registry();
    let raw = Raw::new(&host);
    let repo = unique_repo("resolve");
    let img = push_image(&raw, &repo, "r", "linux", "arm64", false).await;
    let client = Client::new(ClientOptions::default().with_insecure(true)).unwrap();
    let resolved = client
        .resolve(&parse_reference(&format!("{host}/{repo}:r")).unwrap())
        .await
        .unwrap();
    assert_eq!(resolved.descriptor.digest, img.digest);
    assert_eq!(resolved.descriptor.size, img.size);
    assert_eq!(resolved.descriptor.media_type, OCI_MANIFEST);
    match resolved.content {
        ResolvedContent::Image { platform, .. } => assert_eq!(platform.to_string(), "linux/arm64"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bearer_tokens_cover_the_mount_source() {
    let host = registry();
    let raw = Raw::new(&host);
    let src = unique_repo("tok-src");
    let dst = unique_repo("tok-dst");
    let img = push_image(&raw, &src, "t-amd64", "linux", "amd64", false).await;
    let proxy = Proxy::start(ProxyConfig {
        bearer_auth: Some(("ci".into(), "tok-pass".into())),
        ..Default::default()
    })
    .await;
    let addr = proxy.addr.to_string();
    let dir = tempfile::tempdir().unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode("ci:tok-pass");
    std::fs::write(
        dir.path().join("config.json"),
        format!(r#"{{"auths":{{"{addr}":{{"auth":"{auth}"}}}}}}"#),
    )
    .unwrap();
    let out = run_bin(
        &[
            "manifest",
            "push",
            "--platforms=linux/amd64",
            &format!("--template={addr}/{src}:t-ARCH"),
            &format!("--target={addr}/{dst}:t"),
            "--insecure-registry",
        ],
        dir.path(),
    )
    .await;
    assert!(out.status.success(), "{}", util::stderr(&out));
    for blob in &img.blobs {
        assert_eq!(raw.head_blob(&dst, blob).await, 200);
    }
    let log = proxy.log();
    assert!(
        log.iter()
            .any(|(m, p, s)| m == "POST" && p.contains("mount=") && *s == 201),
        "mounted with a token: {log:#?}"
    );
    let tokens = proxy.tokens();
    assert!(
        tokens.iter().any(|(_, scopes)| scopes
            == &vec![
                format!("repository:{dst}:pull,push"),
                format!("repository:{src}:pull")
            ]),
        "{tokens:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn altered_manifests_are_caught_by_their_digest() {
    let host = registry();
    let raw = Raw::new(&host);
    let repo = unique_repo("lying");
    let img = push_image(&raw, &repo, "l-amd64", "linux", "amd64", false).await;
    let proxy = Proxy::start(ProxyConfig {
        corrupt_manifests: true,
        ..Default::default()
    })
    .await;
    let addr = proxy.addr.to_string();
    let out = manifest_push(
        &addr,
        &repo,
        "l",
        &format!("{addr}/{repo}:l"),
        "linux/amd64",
    )
    .await;
    let err = assert_one_line_failure(&out);
    assert!(
        err.contains(&format!(
            "digest mismatch for {addr}/{repo}:l-amd64 (Docker-Content-Digest): expected {}",
            img.digest
        )),
        "{err}"
    );
    assert!(raw.get_manifest(&repo, "l").await.is_none());
    // By digest, the reference itself is the claim.
    let cfg = empty_docker_config();
    let out = run_bin(
        &[
            "manifest",
            "inspect",
            "--insecure-registry",
            &format!("{addr}/{repo}@{}", img.digest),
        ],
        cfg.path(),
    )
    .await;
    let err = assert_one_line_failure(&out);
    assert!(err.contains("digest mismatch"), "{err}");
}
