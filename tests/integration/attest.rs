//! Supply-chain attestations (issue 21) on the real daemons and registries: provenance (and
//! SBOMs) arrive on each architecture's image, in the client-assembled index and in
//! `manifest push`'s, in client-side pushes, OCI layouts and tar outputs; they say what a user
//! needs (base image with digest, Dockerfile, build args, steps with mode=max) and nothing
//! secret; `--provenance=false` wins over `buildkit.json`.
//!
//! Everything is read back blob by blob through the registry's HTTP API with a plain HTTP
//! client, not through the library under test.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use base64::Engine as _;
use serde_json::Value;

use crate::util::{self, Tier, stderr, stdout, unique_repo};

const SPDX: &str = "https://spdx.dev/Document";

const INDEX_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

/// The ECR stand-in's login (moto's deterministic token): a registry that needs credentials,
/// so the daemons ask the session for them and the test can look for them in every blob.
const ECR_USER: &str = "AWS";
const ECR_PASSWORD: &str = "123456789012-auth-token";

/// A registry read through its HTTP API, with Basic credentials when it needs them.
struct Registry {
    host: String,
    login: Option<(&'static str, &'static str)>,
    http: reqwest::Client,
}

impl Registry {
    fn open(host: String, login: Option<(&'static str, &'static str)>) -> Registry {
        Registry {
            host,
            login,
            http: util::http_client(true),
        }
    }

    fn local() -> Registry {
        Registry::open(util::env("PF_TEST_REGISTRY"), None)
    }

    fn ecr() -> Registry {
        Registry::open(
            util::env("PF_TEST_ECR_REGISTRY"),
            Some((ECR_USER, ECR_PASSWORD)),
        )
    }

    async fn get(&self, repo: &str, kind: &str, reference: &str) -> Vec<u8> {
        let url = format!("http://{}/v2/{repo}/{kind}/{reference}", self.host);
        let mut request = self.http.get(&url).header("Accept", INDEX_TYPES);
        if let Some((user, password)) = self.login {
            request = request.basic_auth(user, Some(password));
        }
        let response = request.send().await.unwrap();
        assert!(
            response.status().is_success(),
            "GET {url}: {}",
            response.status()
        );
        let bytes = response.bytes().await.unwrap().to_vec();
        if reference.starts_with("sha256:") {
            assert_eq!(util::sha256_digest(&bytes), reference, "GET {url}");
        }
        bytes
    }

    async fn manifest(&self, repo: &str, reference: &str) -> (String, Value, Vec<u8>) {
        let bytes = self.get(repo, "manifests", reference).await;
        let doc: Value = serde_json::from_slice(&bytes).unwrap();
        (util::sha256_digest(&bytes), doc, bytes)
    }

    async fn blob(&self, repo: &str, digest: &str) -> Vec<u8> {
        self.get(repo, "blobs", digest).await
    }
}

/// What one architecture carries: its image manifest's digest and its attestations' in-toto
/// statements (layer media type `application/vnd.in-toto+json`), by predicate type.
#[derive(Debug)]
struct Attested {
    image: String,
    statements: BTreeMap<String, Value>,
}

/// Reads an index as BuildKit and the client write it: every image entry's platform, and
/// for each attestation entry the checks of BuildKit's storage format. Returns, by
/// architecture, the image and its statements; also every manifest and blob read, for the
/// leak checks. An image without attestations has no statements.
async fn read_index(
    registry: &Registry,
    repo: &str,
    index: &Value,
    everything: &mut Vec<Vec<u8>>,
) -> BTreeMap<String, Attested> {
    let entries = index["manifests"].as_array().unwrap();
    let mut by_arch = BTreeMap::new();
    let mut arch_of = BTreeMap::new();
    for entry in entries.iter().filter(|e| e["platform"]["os"] == "linux") {
        let arch = entry["platform"]["architecture"]
            .as_str()
            .unwrap()
            .to_owned();
        let digest = entry["digest"].as_str().unwrap().to_owned();
        arch_of.insert(digest.clone(), arch.clone());
        let previous = by_arch.insert(
            arch,
            Attested {
                image: digest.clone(),
                statements: BTreeMap::new(),
            },
        );
        assert!(previous.is_none(), "two images of one platform: {index}");
        let (_, manifest, bytes) = registry.manifest(repo, &digest).await;
        everything.push(bytes);
        for blob in blobs_of(&manifest) {
            everything.push(registry.blob(repo, &blob).await);
        }
    }
    for entry in entries.iter().filter(|e| e["platform"]["os"] != "linux") {
        assert_eq!(entry["platform"]["os"], "unknown", "{entry}");
        assert_eq!(entry["platform"]["architecture"], "unknown", "{entry}");
        let annotations = &entry["annotations"];
        assert_eq!(
            annotations["vnd.docker.reference.type"], "attestation-manifest",
            "{entry}"
        );
        let subject = annotations["vnd.docker.reference.digest"].as_str().unwrap();
        let arch = arch_of
            .get(subject)
            .unwrap_or_else(|| panic!("attestation for an image not in the index: {index}"));
        let (_, manifest, bytes) = registry
            .manifest(repo, entry["digest"].as_str().unwrap())
            .await;
        everything.push(bytes);
        let attested = by_arch.get_mut(arch).unwrap();
        assert!(
            attested.statements.is_empty(),
            "{arch} has two attestation manifests: {index}"
        );
        for layer in manifest["layers"].as_array().unwrap() {
            assert_eq!(
                layer["mediaType"], "application/vnd.in-toto+json",
                "{manifest}"
            );
            let bytes = registry.blob(repo, layer["digest"].as_str().unwrap()).await;
            let statement: Value = serde_json::from_slice(&bytes).unwrap();
            everything.push(bytes);
            let kind = statement["predicateType"].as_str().unwrap().to_owned();
            assert_eq!(
                layer["annotations"]["in-toto.io/predicate-type"], kind,
                "{manifest}"
            );
            // The statement is about this architecture's image and no other.
            let subjects = statement["subject"].as_array().unwrap();
            assert!(
                subjects.iter().all(|s| format!(
                    "sha256:{}",
                    s["digest"]["sha256"].as_str().unwrap()
                ) == subject),
                "{arch}: {kind} names another subject than {subject}"
            );
            attested.statements.insert(kind, statement);
        }
        everything.push(
            registry
                .blob(repo, manifest["config"]["digest"].as_str().unwrap())
                .await,
        );
    }
    by_arch
}

/// The config and layer digests of an image manifest.
fn blobs_of(manifest: &Value) -> Vec<String> {
    let mut blobs = vec![manifest["config"]["digest"].as_str().unwrap().to_owned()];
    for layer in manifest["layers"].as_array().unwrap() {
        blobs.push(layer["digest"].as_str().unwrap().to_owned());
    }
    blobs
}

/// The provenance predicate's facts in one shape, whichever SLSA version the daemon wrote
/// (v0.2 on the Engine's BuildKit, v1 on v0.32's).
struct ProvenanceFacts<'a> {
    materials: &'a [Value],
    config_path: &'a Value,
    args: &'a Value,
    steps: Option<&'a [Value]>,
}

fn steps(build_config: &Value) -> Option<&[Value]> {
    build_config["llbDefinition"].as_array().map(Vec::as_slice)
}

fn provenance_facts(statement: &Value) -> ProvenanceFacts<'_> {
    let p = &statement["predicate"];
    match statement["predicateType"].as_str().unwrap() {
        "https://slsa.dev/provenance/v0.2" => ProvenanceFacts {
            materials: p["materials"].as_array().map_or(&[], Vec::as_slice),
            config_path: &p["invocation"]["configSource"]["entryPoint"],
            args: &p["invocation"]["parameters"]["args"],
            steps: steps(&p["buildConfig"]),
        },
        "https://slsa.dev/provenance/v1" => {
            let definition = &p["buildDefinition"];
            ProvenanceFacts {
                materials: definition["resolvedDependencies"]
                    .as_array()
                    .map_or(&[], Vec::as_slice),
                config_path: &definition["externalParameters"]["configSource"]["path"],
                args: &definition["externalParameters"]["request"]["args"],
                steps: steps(&definition["internalParameters"]["buildConfig"]),
            }
        }
        other => panic!("unexpected provenance type {other}"),
    }
}

/// The one provenance statement of an architecture.
fn provenance(attested: &Attested) -> &Value {
    let mut found = attested
        .statements
        .iter()
        .filter(|(kind, _)| kind.starts_with("https://slsa.dev/provenance/"));
    let (_, statement) = found.next().expect("no provenance");
    assert!(found.next().is_none(), "two provenance statements");
    statement
}

/// Every blob as stored, and gzip layers also decompressed (a secret written into a layer
/// would be compressed there).
fn readable(blob: &[u8]) -> Vec<u8> {
    if !blob.starts_with(&[0x1f, 0x8b]) {
        return blob.to_vec();
    }
    let mut child = std::process::Command::new("gzip")
        .arg("-dc")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = blob.to_vec();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "gzip -dc failed on a layer");
    out.stdout
}

fn assert_nowhere(everything: &[Vec<u8>], needles: &[&str]) {
    for blob in everything {
        let text = readable(blob);
        for needle in needles {
            assert!(
                !text.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{needle:?} is in a pushed blob: {}",
                String::from_utf8_lossy(&text[..text.len().min(2000)])
            );
        }
    }
}

fn context(dockerfile: &str, files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Dockerfile"), dockerfile).unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

/// `pf-buildkit --addr <the tier's daemon> build ARGS…` in `dir`, with `docker_config` as
/// the docker config folder when given.
async fn build_in(tier: Tier, dir: &Path, docker_config: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = util::tokio_bin();
    if let Some(config) = docker_config {
        cmd.env("DOCKER_CONFIG", config);
    }
    cmd.current_dir(dir)
        .args(["--addr", &tier.addr(), "build", "--progress", "plain"])
        .args(args)
        .output()
        .await
        .unwrap()
}

/// A docker config folder holding the ECR stand-in's login.
fn ecr_docker_config(dir: &Path) -> std::path::PathBuf {
    let folder = dir.join("docker-config");
    std::fs::create_dir(&folder).unwrap();
    let login =
        base64::engine::general_purpose::STANDARD.encode(format!("{ECR_USER}:{ECR_PASSWORD}"));
    let ecr = util::env("PF_TEST_ECR_REGISTRY");
    std::fs::write(
        folder.join("config.json"),
        format!(r#"{{"auths":{{"{ecr}":{{"auth":"{login}"}}}}}}"#),
    )
    .unwrap();
    folder
}

/// Whether BuildKit can run an SBOM generator on `tier`. It runs the generator in the
/// default network, which `force-network-mode` (for RUN steps) does not change, and the test
/// Engine has no bridge network: there it fails, in one line naming the generator's step.
async fn sbom_runs_on(tier: Tier) -> bool {
    if tier != Tier::Engine {
        return true;
    }
    let dir = context("FROM scratch\nCOPY hello.txt /\n", &[("hello.txt", "hi\n")]);
    let generator = format!("generator={}", util::env("PF_TEST_SBOM_GENERATOR"));
    let tar = dir.path().join("out.tar");
    let out = util::tokio_bin()
        .current_dir(dir.path())
        .args([
            "--addr",
            &tier.addr(),
            "build",
            "--progress",
            "quiet",
            "--sbom",
            &generator,
        ])
        .args(["--output", &format!("type=tar,dest={}", tar.display())])
        .output()
        .await
        .unwrap();
    let line = util::assert_fails_with(&out, &["sbom-scan", "network bridge not found"]);
    eprintln!("engine tier: no SBOM generation (the test Engine has no bridge network): {line}");
    assert!(!tar.exists(), "a failed build left its output");
    false
}

async fn attestations_on_each_architecture_and_nothing_secret(tier: Tier) {
    let sbom = sbom_runs_on(tier).await;
    let base = util::env("PF_TEST_BASE_IMAGE");
    let secret = format!("pf-secret-{}", unique_repo("value").replace('/', "-"));
    let dir = context(
        &format!(
            "FROM {base}\nARG GREETING\n\
             RUN --mount=type=secret,id=token wc -c /run/secrets/token > /token-length\n\
             ARG TARGETARCH\nCOPY hello-${{TARGETARCH}}.txt /hello.txt\n"
        ),
        &[
            ("hello-amd64.txt", "amd64\n"),
            ("hello-arm64.txt", "arm64\n"),
            ("token", &secret),
        ],
    );
    let docker_config = ecr_docker_config(dir.path());
    let ecr = util::env("PF_TEST_ECR_REGISTRY");
    let repo = unique_repo("provenance");
    let mut args = vec![
        "--repo",
        &repo,
        "--tag",
        "v1",
        "--registry",
        &ecr,
        "--insecure-registry",
        "--attest",
        "type=provenance,mode=max",
        "--build-arg",
        "GREETING=hello-provenance",
        "--secret",
        "id=token,src=token",
        "--opt",
        "force-network-mode=none",
    ];
    let generator = format!("generator={}", util::env("PF_TEST_SBOM_GENERATOR"));
    if sbom {
        args.extend(["--sbom", &generator]);
    }
    let out = build_in(tier, dir.path(), Some(&docker_config), &args).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let digest = stdout(&out).trim().to_owned();

    let registry = Registry::ecr();
    let (index_digest, index, index_bytes) = registry.manifest(&repo, "v1").await;
    assert_eq!(index_digest, digest);
    let mut everything = vec![index_bytes];
    let attested = read_index(&registry, &repo, &index, &mut everything).await;
    assert_eq!(
        attested.keys().collect::<Vec<_>>(),
        ["amd64", "arm64"],
        "{index}"
    );
    let base_digest = util::registry_digest("pf-test/busybox", "latest").unwrap();
    for (arch, attested) in &attested {
        // Provenance, and the SBOM where it was asked for: nothing else.
        let kinds: Vec<&str> = attested.statements.keys().map(String::as_str).collect();
        let provenance_only =
            kinds.len() == 1 && kinds[0].starts_with("https://slsa.dev/provenance/");
        if sbom {
            assert_eq!(kinds.len(), 2, "{arch}: {kinds:?}");
            assert!(kinds.contains(&SPDX), "{arch}: {kinds:?}");
            // The generator scanned this architecture's image: its file, its content.
            let files = attested.statements[SPDX]["predicate"]["files"]
                .as_array()
                .unwrap();
            let hello = files
                .iter()
                .find(|f| f["fileName"] == "/hello.txt")
                .unwrap_or_else(|| panic!("{arch}: /hello.txt not in the SBOM: {files:?}"));
            assert_eq!(
                hello["checksums"][0]["checksumValue"]
                    .as_str()
                    .map(|h| format!("sha256:{h}")),
                Some(util::sha256_digest(format!("{arch}\n").as_bytes())),
                "{arch}"
            );
        } else {
            assert!(provenance_only, "{arch}: {kinds:?}");
        }
        // Each architecture's image is the one its own tag pushed.
        let (_, own, _) = registry.manifest(&repo, &format!("v1-{arch}")).await;
        let own_images: Vec<&Value> = own["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["platform"]["os"] == "linux")
            .collect();
        assert_eq!(own_images.len(), 1, "{arch}: {own}");
        assert_eq!(own_images[0]["digest"], attested.image.as_str(), "{arch}");

        let statement = provenance(attested);
        let facts = provenance_facts(statement);
        assert!(
            facts.materials.iter().any(|m| {
                m["uri"].as_str().unwrap().contains("pf-test/busybox")
                    && format!("sha256:{}", m["digest"]["sha256"].as_str().unwrap()) == base_digest
            }),
            "{arch}: the base image with its digest {base_digest} is not among the materials: {:?}",
            facts.materials
        );
        assert_eq!(facts.config_path, "Dockerfile", "{arch}");
        assert_eq!(
            facts.args["build-arg:GREETING"], "hello-provenance",
            "{arch}"
        );
        let steps = facts.steps.expect("mode=max records the build steps");
        assert!(
            steps
                .iter()
                .any(|s| s.to_string().contains("wc -c /run/secrets/token")),
            "{arch}: the RUN step is not among the steps"
        );
    }
    // The secret's value and the registry login are in no manifest, config, layer or
    // statement; the secret's id may be (it names the mount).
    let login =
        base64::engine::general_purpose::STANDARD.encode(format!("{ECR_USER}:{ECR_PASSWORD}"));
    assert_nowhere(&everything, &[&secret, ECR_PASSWORD, &login]);

    // `manifest inspect --provenance` prints each predicate as buildx does: by platform, or
    // alone for the one platform asked for.
    let inspect = |extra: &'static [&'static str]| {
        let reference = format!("{ecr}/{repo}:v1");
        let docker_config = docker_config.clone();
        async move {
            let out = util::tokio_bin()
                .env("DOCKER_CONFIG", &docker_config)
                .args(["manifest", "inspect", "--insecure-registry", &reference])
                .args(extra)
                .output()
                .await
                .unwrap();
            assert!(out.status.success(), "{extra:?}: {}", stderr(&out));
            serde_json::from_str::<Value>(&stdout(&out)).unwrap()
        }
    };
    let printed = inspect(&["--provenance"]).await;
    for (arch, attested) in &attested {
        assert_eq!(
            printed[format!("linux/{arch}")]["SLSA"],
            provenance(attested)["predicate"],
            "{arch}"
        );
    }
    assert_eq!(printed.as_object().unwrap().len(), 2, "{printed}");
    let printed = inspect(&["--provenance", "--platform", "linux/arm64"]).await;
    assert_eq!(printed["SLSA"], provenance(&attested["arm64"])["predicate"]);
    if sbom {
        let printed = inspect(&["--sbom"]).await;
        for (arch, attested) in &attested {
            assert_eq!(
                printed[format!("linux/{arch}")]["SPDX"],
                attested.statements[SPDX]["predicate"],
                "{arch}"
            );
        }
    }

    // `manifest push` from the per-architecture tags (each an index with its attestation)
    // keeps each architecture's attestation on its own image, and no others.
    let out = util::tokio_bin()
        .env("DOCKER_CONFIG", &docker_config)
        .args([
            "manifest",
            "push",
            "--insecure-registry",
            "--platforms",
            "linux/amd64,linux/arm64",
        ])
        .args(["--template", &format!("{ecr}/{repo}:v1-ARCH")])
        .args(["--target", &format!("{ecr}/{repo}:again")])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let (_, again, _) = registry.manifest(&repo, "again").await;
    let pushed = read_index(&registry, &repo, &again, &mut Vec::new()).await;
    assert_eq!(pushed.len(), 2, "{again}");
    for (arch, attested) in &attested {
        assert_eq!(pushed[arch].image, attested.image, "{arch}");
        assert_eq!(pushed[arch].statements, attested.statements, "{arch}");
    }
}

async fn provenance_false_wins_over_buildkit_json(tier: Tier) {
    let dir = context("FROM scratch\nCOPY hello.txt /\n", &[("hello.txt", "hi\n")]);
    std::fs::create_dir(dir.path().join(".git")).unwrap();
    std::fs::create_dir(dir.path().join(".buildkit")).unwrap();
    let registry = util::env("PF_TEST_REGISTRY");
    std::fs::write(
        dir.path().join(".buildkit/buildkit.json"),
        format!(r#"{{"registry": "{registry}", "cluster": "unused", "provenance": "mode=max"}}"#),
    )
    .unwrap();
    let local = Registry::local();
    for (flag, wanted) in [(None, true), (Some("--provenance=false"), false)] {
        let repo = unique_repo("provenance-policy");
        let mut args = vec!["--repo", &repo, "--tag", "v1", "--insecure-registry"];
        args.extend(flag);
        let out = build_in(tier, dir.path(), None, &args).await;
        assert!(out.status.success(), "{flag:?}: {}", stderr(&out));
        let (_, index, _) = local.manifest(&repo, "v1").await;
        let attested = read_index(&local, &repo, &index, &mut Vec::new()).await;
        assert_eq!(attested.len(), 2, "{index}");
        for (arch, attested) in &attested {
            if wanted {
                // buildkit.json's "mode=max" arrived: the steps are recorded.
                assert!(
                    provenance_facts(provenance(attested)).steps.is_some(),
                    "{arch}"
                );
            } else {
                assert!(attested.statements.is_empty(), "{flag:?}: {arch}: {index}");
                // The architecture's own tag is a bare image, not an index with attestations.
                let (_, own, _) = local.manifest(&repo, &format!("v1-{arch}")).await;
                assert!(own.get("manifests").is_none(), "{arch}: {own}");
            }
        }
        if !wanted {
            // Reading it back says, in one line, that there is none and how to get one.
            let out = util::tokio_bin()
                .args(["manifest", "inspect", "--insecure-registry", "--provenance"])
                .arg(format!("{registry}/{repo}:v1"))
                .output()
                .await
                .unwrap();
            util::assert_fails_with(&out, &["has no provenance attestation", "--provenance"]);
        }
    }
}

async fn client_side_push_layouts_and_tars_carry_provenance(tier: Tier) {
    let dir = context(
        "FROM scratch\nARG TARGETARCH\nCOPY hello.txt /hello-${TARGETARCH}.txt\n",
        &[("hello.txt", "hi\n")],
    );
    let registry = util::env("PF_TEST_REGISTRY");
    let repo = unique_repo("provenance-client");
    let out = build_in(
        tier,
        dir.path(),
        None,
        &[
            "--repo",
            &repo,
            "--tag",
            "v1",
            "--registry",
            &registry,
            "--insecure-registry",
            "--push-from-client",
            "--provenance",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let local = Registry::local();
    let (_, index, _) = local.manifest(&repo, "v1").await;
    let attested = read_index(&local, &repo, &index, &mut Vec::new()).await;
    assert_eq!(attested.len(), 2, "{index}");
    for (arch, attested) in &attested {
        provenance(attested);
        assert!(
            !attested.statements.is_empty(),
            "{arch}: the client-side push lost the attestation: {index}"
        );
    }

    // One build, two outputs. An OCI layout directory: its index.json names the build's
    // index, which holds the image and its attestation manifest.
    let layout = dir.path().join("layout");
    let tar = dir.path().join("fs.tar");
    let out = build_in(
        tier,
        dir.path(),
        None,
        &[
            "--provenance",
            "--output",
            &format!("type=oci,tar=false,dest={}", layout.display()),
            "--output",
            &format!("type=tar,dest={}", tar.display()),
        ],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let read =
        |path: &Path| -> Value { serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap() };
    let blob = |digest: &str| {
        layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let top = read(&layout.join("index.json"));
    let inner = read(&blob(top["manifests"][0]["digest"].as_str().unwrap()));
    let entries = inner["manifests"].as_array().unwrap();
    let image = entries
        .iter()
        .find(|e| e["platform"]["os"] == "linux")
        .unwrap();
    let attestation = entries
        .iter()
        .find(|e| e["annotations"]["vnd.docker.reference.type"] == "attestation-manifest")
        .unwrap_or_else(|| panic!("no attestation in the layout: {inner}"));
    assert_eq!(
        attestation["annotations"]["vnd.docker.reference.digest"],
        image["digest"]
    );
    let manifest = read(&blob(attestation["digest"].as_str().unwrap()));
    assert_provenance(&read(&blob(
        manifest["layers"][0]["digest"].as_str().unwrap(),
    )));

    // A tar output is the image's files, not an image: BuildKit puts the statement beside
    // them as provenance.json.
    let mut archive = tar::Archive::new(std::fs::File::open(&tar).unwrap());
    let mut names = Vec::new();
    let mut statement = None;
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        if name.trim_start_matches("./") == "provenance.json" {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut entry, &mut text).unwrap();
            statement = Some(serde_json::from_str::<Value>(&text).unwrap());
        }
        names.push(name);
    }
    assert_provenance(
        &statement.unwrap_or_else(|| panic!("no provenance.json in the tar: {names:?}")),
    );
}

fn assert_provenance(statement: &Value) {
    assert!(
        statement["predicateType"]
            .as_str()
            .is_some_and(|t| t.starts_with("https://slsa.dev/provenance/")),
        "not a provenance statement: {statement}"
    );
}

tier_tests!(
    async attestations_on_each_architecture_and_nothing_secret,
    async provenance_false_wins_over_buildkit_json,
    async client_side_push_layouts_and_tars_carry_provenance,
);

/// A generator image the registry does not have fails the build in one line naming it, and
/// pushes nothing.
#[tokio::test]
async fn a_missing_sbom_generator_fails_naming_it() {
    let tier = Tier::preferred();
    let dir = context("FROM scratch\nCOPY hello.txt /\n", &[("hello.txt", "hi\n")]);
    let registry = util::env("PF_TEST_REGISTRY");
    let missing = format!("{registry}/{}:latest", unique_repo("no-generator"));
    let repo = unique_repo("sbom-missing");
    let out = util::tokio_bin()
        .current_dir(dir.path())
        .args(["--addr", &tier.addr(), "build", "--progress", "quiet"])
        .args([
            "--repo",
            &repo,
            "--tag",
            "v1",
            "--registry",
            &registry,
            "--insecure-registry",
        ])
        .args(["--sbom", &format!("generator={missing}")])
        .output()
        .await
        .unwrap();
    util::assert_fails_with(&out, &[&missing]);
    assert!(
        util::registry_digest(&repo, "v1").is_none(),
        "an index was pushed"
    );
}
