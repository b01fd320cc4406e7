//! AWS with no aws CLI (issue 11): ECR logins serve both the client and the daemons, every
//! source of the credential chain works (moto's STS for roles and web identity; test servers
//! here for container credentials and IMDSv2), EKS tokens pass an independent SigV4 check and
//! the fake API server's TokenReview-style check, short-lived credentials renew the token,
//! and bad input fails in one line naming the registry or call and the reason.
//!
//! Every run of the binary gets an empty docker config, a HOME without `~/.aws`, no AWS
//! variable from the outside, `PATH=/usr/bin:/bin` (no `aws` there), and instance metadata
//! pointed at a closed local port, so nothing leaves the machine.

use std::collections::HashMap;
use std::path::Path;
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use pf_buildkit::fleet::{Arch, Fleet};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::fake_kube::{FakeKube, Scenario, TokenReview};
use crate::util::{self, stderr, stdout};

/// moto's account, in the ECR stand-in's host name.
const ACCOUNT: &str = "123456789012";

/// A port nothing listens on (bound, then released).
async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

/// The binary with nothing from the outside that could supply AWS credentials.
struct Env {
    home: tempfile::TempDir,
    cmd: tokio::process::Command,
}

async fn isolated() -> Env {
    let home = tempfile::tempdir().unwrap();
    let docker = home.path().join("docker");
    std::fs::create_dir_all(&docker).unwrap();
    std::fs::write(docker.join("config.json"), "{}").unwrap();
    let mut cmd = util::tokio_bin();
    for (name, _) in std::env::vars() {
        if name.starts_with("AWS_") {
            cmd.env_remove(name);
        }
    }
    cmd.env("HOME", home.path())
        .env("DOCKER_CONFIG", &docker)
        .env("PATH", "/usr/bin:/bin")
        .env(
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            format!("http://127.0.0.1:{}", closed_port().await),
        )
        .env("AWS_ENDPOINT_URL", util::env("PF_TEST_MOTO"));
    Env { home, cmd }
}

impl Env {
    fn keys(&mut self) -> &mut Self {
        self.cmd
            .env("AWS_ACCESS_KEY_ID", "AKIDENVIRONMENT")
            .env("AWS_SECRET_ACCESS_KEY", "environment-secret");
        self
    }

    fn var(&mut self, name: &str, value: impl AsRef<std::ffi::OsStr>) -> &mut Self {
        self.cmd.env(name, value);
        self
    }

    fn file(&self, name: &str, text: &str) -> std::path::PathBuf {
        let path = self.home.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    async fn run(&mut self, args: &[&str]) -> Output {
        self.cmd.args(args).output().await.unwrap()
    }

    /// `manifest inspect` of a tag that does not exist in the ECR stand-in: "not found" means
    /// the registry let us in (it answers 401 to anyone without moto's login).
    async fn inspect_missing(&mut self) -> Output {
        let reference = format!("{}/pf-test/absent:none", util::env("PF_TEST_ECR_REGISTRY"));
        self.run(&["manifest", "inspect", "--insecure-registry", &reference])
            .await
    }
}

/// The registry let the client in: the tag is simply missing.
fn assert_logged_in(out: &Output) {
    let err = stderr(out);
    assert!(!out.status.success(), "the tag does not exist");
    assert!(
        err.contains("not found") || err.contains("unknown"),
        "expected a missing tag, not an auth failure: {err}"
    );
    assert!(!err.to_lowercase().contains("unauthorized"), "{err}");
}

fn one_line_failure(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(1), "{}", stderr(out));
    let err = stderr(out);
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    err
}

#[tokio::test]
async fn two_architectures_pushed_to_ecr_by_the_daemons_with_no_docker_login() {
    let ecr = util::env("PF_TEST_ECR_REGISTRY");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM scratch\nARG TARGETARCH\nCOPY hello.txt /hello-${TARGETARCH}.txt\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("hello.txt"), "hello\n").unwrap();
    let repo = format!(
        "pf-test/ecr-{:x}",
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let mut env = isolated().await;
    env.keys().cmd.current_dir(dir.path());
    let out = env
        .run(&[
            "--addr",
            &util::docker_addr(),
            "build",
            "--progress",
            "plain",
            "--repo",
            &repo,
            "--tag",
            "v1",
            "--registry",
            &ecr,
            "--insecure-registry",
        ])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let digest = stdout(&out).trim().to_owned();
    assert!(digest.starts_with("sha256:"), "{digest}");
    // The daemons pushed the per-architecture images themselves (the session's Auth served
    // them the ECR login): their progress names the push.
    let err = stderr(&out);
    for arch in ["amd64", "arm64"] {
        assert!(
            err.contains(&format!("pushing manifest for {ecr}/{repo}:v1-{arch}")),
            "{arch} pushed by its daemon: {err}"
        );
    }

    // The stand-in refuses anonymous reads, and serves the index to moto's login.
    let index = format!("{ecr}/{repo}:v1");
    let anonymous = pf_buildkit::registry::Client::new(
        pf_buildkit::registry::ClientOptions::default().with_insecure(true),
    )
    .unwrap();
    let refused = anonymous
        .fetch_manifest(&pf_buildkit::registry::parse_reference(&index).unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("401") || refused.to_lowercase().contains("unauthorized"),
        "{refused}"
    );
    let login =
        base64::engine::general_purpose::STANDARD.encode(format!("AWS:{ACCOUNT}-auth-token"));
    let config = pf_buildkit::registry::DockerConfig::from_json(&format!(
        r#"{{"auths":{{"{ecr}":{{"auth":"{login}"}}}}}}"#
    ))
    .unwrap();
    let client = pf_buildkit::registry::Client::new(
        pf_buildkit::registry::ClientOptions::default()
            .with_insecure(true)
            .with_credentials(config),
    )
    .unwrap();
    let fetched = client
        .fetch_manifest(&pf_buildkit::registry::parse_reference(&index).unwrap())
        .await
        .unwrap();
    assert_eq!(fetched.digest, digest);
    let doc: serde_json::Value = serde_json::from_slice(&fetched.bytes).unwrap();
    let arches: Vec<&str> = doc["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["platform"]["architecture"].as_str())
        .collect();
    assert!(
        arches.contains(&"amd64") && arches.contains(&"arm64"),
        "{doc}"
    );
}

#[tokio::test]
async fn a_docker_config_entry_for_the_ecr_host_wins_over_aws() {
    // No AWS credentials anywhere, but the docker config has the login: AWS is never asked.
    let ecr = util::env("PF_TEST_ECR_REGISTRY");
    let mut env = isolated().await;
    let login =
        base64::engine::general_purpose::STANDARD.encode(format!("AWS:{ACCOUNT}-auth-token"));
    let docker = env.home.path().join("docker");
    std::fs::write(
        docker.join("config.json"),
        format!(r#"{{"auths":{{"{ecr}":{{"auth":"{login}"}}}}}}"#),
    )
    .unwrap();
    assert_logged_in(&env.inspect_missing().await);
}

#[tokio::test]
async fn credentials_from_environment_keys() {
    let mut env = isolated().await;
    env.keys();
    assert_logged_in(&env.inspect_missing().await);
}

#[tokio::test]
async fn credentials_from_a_profile_assuming_a_role_from_a_source_profile() {
    let mut env = isolated().await;
    let config = env.file(
        "aws-config",
        "[profile ci]\nrole_arn = arn:aws:iam::123456789012:role/ci\nsource_profile = base\n\n[profile base]\nregion = us-east-1\n",
    );
    let credentials = env.file(
        "aws-credentials",
        "[base]\naws_access_key_id = AKIDPROFILEBASE\naws_secret_access_key = base-secret\n",
    );
    env.var("AWS_CONFIG_FILE", &config)
        .var("AWS_SHARED_CREDENTIALS_FILE", &credentials)
        .var("AWS_PROFILE", "ci");
    assert_logged_in(&env.inspect_missing().await);

    // The same profile naming a source profile that does not exist fails, naming it.
    let mut env = isolated().await;
    let config = env.file(
        "aws-config",
        "[profile ci]\nrole_arn = arn:aws:iam::123456789012:role/ci\nsource_profile = missing\n",
    );
    env.var("AWS_CONFIG_FILE", &config).var("AWS_PROFILE", "ci");
    let err = one_line_failure(&env.inspect_missing().await);
    assert!(
        err.contains("ecr:GetAuthorizationToken") && err.contains("missing"),
        "{err}"
    );
}

#[tokio::test]
async fn credentials_from_web_identity() {
    let mut env = isolated().await;
    let token = env.file("web-identity-token", "eyJhbGciOiJSUzI1NiJ9.e30.c2ln");
    env.var(
        "AWS_ROLE_ARN",
        "arn:aws:iam::123456789012:role/github-actions",
    )
    .var("AWS_WEB_IDENTITY_TOKEN_FILE", &token)
    .var("AWS_ROLE_SESSION_NAME", "pf-test");
    assert_logged_in(&env.inspect_missing().await);
}

/// A minimal HTTP/1.1 server: `answer(method, path, headers)` gives status and body. Returns
/// its port and the requests seen (`METHOD PATH`).
async fn http_server(
    answer: impl Fn(&str, &str, &HashMap<String, String>) -> (u16, String) + Send + Sync + 'static,
) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let answer = answer.clone();
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&buf).into_owned();
                let mut lines = text.split("\r\n");
                let request_line = lines.next().unwrap_or_default();
                let mut parts = request_line.split(' ');
                let method = parts.next().unwrap_or_default().to_owned();
                let path = parts.next().unwrap_or_default().to_owned();
                let headers: HashMap<String, String> = lines
                    .take_while(|l| !l.is_empty())
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                    .collect();
                log.lock().unwrap().push(format!("{method} {path}"));
                let (status, body) = answer(&method, &path, &headers);
                let reply = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nx-aws-ec2-metadata-token-ttl-seconds: 21600\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(reply.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    (port, seen)
}

/// `SystemTime` as RFC 3339 UTC (`2026-01-02T03:04:05Z`).
fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Credentials as the container and instance metadata endpoints return them.
fn credentials_json(key: &str, secret: &str, expires: SystemTime) -> String {
    serde_json::json!({
        "Code": "Success",
        "Type": "AWS-HMAC",
        "AccessKeyId": key,
        "SecretAccessKey": secret,
        "Token": format!("session-{key}"),
        "Expiration": rfc3339(expires),
        "LastUpdated": rfc3339(SystemTime::now()),
    })
    .to_string()
}

/// A container credentials endpoint (ECS, EKS Pod Identity) that requires `auth` and hands
/// out a new key on every call, valid for `life`. Secrets are `secret-KEY`; the keys handed
/// out are recorded.
async fn container_endpoint(
    auth: &'static str,
    life: Duration,
) -> (u16, Arc<Mutex<Vec<String>>>, Arc<Mutex<Vec<String>>>) {
    let keys = Arc::new(Mutex::new(Vec::<String>::new()));
    let handed = keys.clone();
    let (port, seen) = http_server(move |method, path, headers| {
        if method != "GET" || path != "/credentials" {
            return (404, "{}".into());
        }
        if !headers
            .get("user-agent")
            .is_some_and(|ua| ua.starts_with("pf-buildkit/"))
        {
            return (400, "{}".into());
        }
        if headers.get("authorization").map(String::as_str) != Some(auth) {
            return (401, "{}".into());
        }
        let mut keys = handed.lock().unwrap();
        let key = format!("AKIDCONTAINER{}", keys.len());
        keys.push(key.clone());
        (
            200,
            credentials_json(&key, &format!("secret-{key}"), SystemTime::now() + life),
        )
    })
    .await;
    (port, seen, keys)
}

#[tokio::test]
async fn credentials_from_the_container_endpoint_with_its_token_file() {
    let (port, seen, keys) =
        container_endpoint("container-auth-token", Duration::from_secs(3600)).await;
    let mut env = isolated().await;
    let token = env.file("container-token", "container-auth-token");
    env.var(
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        format!("http://127.0.0.1:{port}/credentials"),
    )
    .var("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", &token);
    assert_logged_in(&env.inspect_missing().await);
    assert_eq!(keys.lock().unwrap().len(), 1, "{:?}", seen.lock().unwrap());
}

#[tokio::test]
async fn credentials_from_imdsv2_with_a_session_token() {
    let (port, seen) = http_server(|method, path, headers| {
        const TOKEN: &str = "imds-session-token";
        if headers.get("user-agent").map(String::as_str) != Some(pf_buildkit::USER_AGENT) {
            return (400, String::new());
        }
        if method == "PUT" && path == "/latest/api/token" {
            return match headers.get("x-aws-ec2-metadata-token-ttl-seconds") {
                Some(_) => (200, TOKEN.into()),
                None => (400, String::new()),
            };
        }
        // IMDSv2: every read carries the session token.
        if headers.get("x-aws-ec2-metadata-token").map(String::as_str) != Some(TOKEN) {
            return (401, String::new());
        }
        match path {
            "/latest/meta-data/iam/security-credentials/"
            | "/latest/meta-data/iam/security-credentials-extended/" => (200, "pf-role".into()),
            "/latest/meta-data/iam/security-credentials/pf-role"
            | "/latest/meta-data/iam/security-credentials-extended/pf-role" => (
                200,
                credentials_json(
                    "AKIDINSTANCE",
                    "instance-secret",
                    SystemTime::now() + Duration::from_secs(3600),
                ),
            ),
            _ => (404, String::new()),
        }
    })
    .await;
    let mut env = isolated().await;
    env.var(
        "AWS_EC2_METADATA_SERVICE_ENDPOINT",
        format!("http://127.0.0.1:{port}"),
    );
    assert_logged_in(&env.inspect_missing().await);
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter().any(|r| r == "PUT /latest/api/token"),
        "{seen:?}"
    );
    assert!(seen.iter().any(|r| r.ends_with("/pf-role")), "{seen:?}");
}

#[tokio::test]
async fn no_credentials_anywhere_lists_where_it_looked() {
    let mut env = isolated().await;
    let out = env.inspect_missing().await;
    let err = one_line_failure(&out);
    let ecr = util::env("PF_TEST_ECR_REGISTRY");
    for part in [
        ecr.as_str(),
        "ecr:GetAuthorizationToken",
        "no AWS credentials",
        "AWS_ACCESS_KEY_ID",
        "web identity",
        "container credentials",
        "instance metadata",
    ] {
        assert!(err.contains(part), "{part:?} in {err}");
    }
}

/// The access key of moto-iam's user `pf-denied`, which has no permission at all.
fn denied_user() -> (String, String) {
    let text = std::fs::read_to_string(util::env("PF_TEST_MOTO_IAM_KEYS")).unwrap();
    let (key, secret) = text.trim().split_once(' ').unwrap();
    (key.to_owned(), secret.to_owned())
}

#[tokio::test]
async fn a_wrong_secret_and_access_denied_have_their_own_messages() {
    let (key, secret) = denied_user();
    let ecr = util::env("PF_TEST_ECR_REGISTRY");
    for (secret, want) in [
        (
            "not-the-secret".to_owned(),
            "AWS rejected the credentials for ecr:GetAuthorizationToken",
        ),
        (
            secret,
            "AWS denied ecr:GetAuthorizationToken in us-east-1 (access denied)",
        ),
    ] {
        let mut env = isolated().await;
        env.var("AWS_ENDPOINT_URL", util::env("PF_TEST_MOTO_IAM"))
            .var("AWS_ACCESS_KEY_ID", &key)
            .var("AWS_SECRET_ACCESS_KEY", &secret);
        let err = one_line_failure(&env.inspect_missing().await);
        assert!(err.contains(want) && err.contains(&ecr), "{want}: {err}");
        assert!(
            !err.contains(&secret) || secret == "not-the-secret",
            "no secret in {err}"
        );
    }
}

#[tokio::test]
async fn an_unknown_region_has_its_own_message() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM scratch\nCOPY Dockerfile /\n",
    )
    .unwrap();
    let mut env = isolated().await;
    env.keys().cmd.current_dir(dir.path());
    let registry = format!("{ACCOUNT}.dkr.ecr.xx-nowhere-1.amazonaws.com:1");
    let out = env
        .run(&[
            "--addr",
            &util::docker_addr(),
            "build",
            "--progress",
            "quiet",
            "--repo",
            "pf-test/a",
            "--tag",
            "b",
            "--registry",
            &registry,
            "--insecure-registry",
        ])
        .await;
    let err = one_line_failure(&out);
    assert!(
        err.contains("unknown AWS region \"xx-nowhere-1\"") && err.contains(&registry),
        "{err}"
    );
}

#[tokio::test]
async fn aws_unreachable_fails_a_build_within_a_minute_and_pushes_no_index() {
    // A listener that accepts and never answers: the worst case, a black hole.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            open.push(conn);
        }
    });
    let ecr = util::env("PF_TEST_ECR_REGISTRY");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM scratch\nCOPY Dockerfile /\n",
    )
    .unwrap();
    let mut env = isolated().await;
    env.keys()
        .var("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"))
        .cmd
        .current_dir(dir.path());
    let started = Instant::now();
    let out = env
        .run(&[
            "--addr",
            &util::docker_addr(),
            "build",
            "--progress",
            "quiet",
            "--repo",
            "pf-test/unreachable",
            "--tag",
            "v1",
            "--registry",
            &ecr,
            "--insecure-registry",
        ])
        .await;
    held.abort();
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    let err = one_line_failure(&out);
    assert!(
        err.contains(&ecr)
            && err.contains("ecr:GetAuthorizationToken")
            && err.contains("cannot reach AWS"),
        "{err}"
    );
    assert!(stdout(&out).is_empty(), "no index digest");
}

// ---------------------------------------------------------------------------------------
// EKS
// ---------------------------------------------------------------------------------------

const CLUSTER: &str = "pf-test-cluster";

/// HMAC-SHA256, written out here so the check shares no code with the signer.
fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(data)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

/// An EKS token as aws-iam-authenticator checks it, then a SigV4 query-signature check
/// against `secrets` (access key → secret). Returns the access key that signed it.
fn verify_eks_token(
    token: &str,
    cluster: &str,
    secrets: &HashMap<String, String>,
) -> Result<String, String> {
    let encoded = token
        .strip_prefix("k8s-aws-v1.")
        .ok_or("no k8s-aws-v1. prefix")?;
    if encoded.contains('=') {
        return Err("padded base64".into());
    }
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|e| format!("not base64url: {e}"))?;
    let url = String::from_utf8(url).map_err(|_| "not UTF-8")?;
    let (origin, query) = url.split_once("/?").ok_or("no query")?;
    let host = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .ok_or("not http(s)")?;
    let mut pairs: Vec<(&str, &str)> = query
        .split('&')
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| percent_decode(v))
            .ok_or(format!("no {name}"))
    };
    for (name, want) in [
        ("Action", "GetCallerIdentity"),
        ("Version", "2011-06-15"),
        ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
        ("X-Amz-Expires", "60"),
        ("X-Amz-SignedHeaders", "host;x-k8s-aws-id"),
    ] {
        let got = get(name)?;
        if got != want {
            return Err(format!("{name}={got}, want {want}"));
        }
    }
    let credential = get("X-Amz-Credential")?;
    let parts: Vec<&str> = credential.split('/').collect();
    let [key, date, region, "sts", "aws4_request"] = parts[..] else {
        return Err(format!("bad credential scope {credential}"));
    };
    let amz_date = get("X-Amz-Date")?;
    if !amz_date.starts_with(date) {
        return Err("date and scope disagree".into());
    }
    if host != format!("sts.{region}.amazonaws.com") && !host.starts_with("127.0.0.1:") {
        return Err(format!("unexpected STS host {host}"));
    }
    let signature = get("X-Amz-Signature")?;
    pairs.retain(|(k, _)| *k != "X-Amz-Signature");
    pairs.sort();
    let canonical_query: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let canonical = format!(
        "GET\n/\n{}\nhost:{host}\nx-k8s-aws-id:{cluster}\n\nhost;x-k8s-aws-id\n{}",
        canonical_query.join("&"),
        hex(&Sha256::digest(b""))
    );
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{date}/{region}/sts/aws4_request\n{}",
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let secret = secrets
        .get(key)
        .ok_or(format!("unknown access key {key}"))?;
    let mut signing = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    for step in [region, "sts", "aws4_request"] {
        signing = hmac(&signing, step.as_bytes());
    }
    if hex(&hmac(&signing, to_sign.as_bytes())) != signature {
        return Err("signature does not match".into());
    }
    Ok(key.to_owned())
}

/// The fake's TokenReview: tokens for [`CLUSTER`] signed with one of `secrets`.
fn review(secrets: Arc<Mutex<HashMap<String, String>>>) -> TokenReview {
    Arc::new(move |token| verify_eks_token(token, CLUSTER, &secrets.lock().unwrap()).is_ok())
}

fn exec_user(name: &str, command: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let args: Vec<String> = args.iter().map(|a| format!("\"{a}\"")).collect();
    let env: Vec<String> = env
        .iter()
        .map(|(k, v)| format!("{{\"name\": \"{k}\", \"value\": \"{v}\"}}"))
        .collect();
    format!(
        "- name: {name}\n  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1beta1\n      command: {command}\n      args: [{}]\n      env: [{}]\n      interactionMode: Never\n",
        args.join(", "),
        env.join(", ")
    )
}

/// The kubeconfig `cluster:` fields for `fake`.
fn fake_cluster(fake: &FakeKube) -> String {
    format!("server: http://{}", fake.addr())
}

/// A kubeconfig for the cluster with `cluster` fields (`server:`, CA) with one context per
/// `(context, user entry)`.
fn kubeconfig(dir: &Path, cluster: &str, users: &[(&str, String)]) -> std::path::PathBuf {
    let mut text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    {cluster}\ncontexts:\n"
    );
    for (context, _) in users {
        text.push_str(&format!(
            "- name: {context}\n  context:\n    cluster: fake\n    user: {context}\n    namespace: buildkit\n"
        ));
    }
    text.push_str(&format!("current-context: {}\nusers:\n", users[0].0));
    for (_, user) in users {
        text.push_str(user);
    }
    let path = dir.join("kubeconfig");
    std::fs::write(&path, text).unwrap();
    path
}

fn cluster_scenario() -> Scenario {
    Scenario::new()
        .statefulset("amd64", 1, 1, None)
        .statefulset("arm64", 1, 1, None)
        .pod("buildkit-amd64-0", "Running", "10.0.0.10", true)
        .cpu("buildkit-amd64-0", &[("buildkitd", "10m")])
}

async fn fleet_with(path: &Path, context: &str) -> Result<Fleet, pf_buildkit::fleet::Error> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path).unwrap();
    let options = kube::config::KubeConfigOptions {
        context: Some(context.into()),
        ..Default::default()
    };
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .unwrap();
    Fleet::from_config(config, false, Some(context))
}

/// Kubeconfig users for the three exec forms made in-process (contexts `get-token`,
/// `update-kubeconfig`, `authenticator`, signing for regions us-east-1, us-west-2 and
/// eu-west-1), and two whose tokens a review must refuse (`wrong-cluster`, `wrong-secret`).
/// The programs they name do not exist anywhere: nothing may try to start them.
fn eks_users() -> Vec<(&'static str, String)> {
    let keys = [
        ("AWS_ACCESS_KEY_ID", "AKIDEKSEXEC"),
        ("AWS_SECRET_ACCESS_KEY", "eks-exec-secret"),
    ];
    let mut with_region = keys.to_vec();
    with_region.push(("AWS_REGION", "eu-west-1"));
    vec![
        (
            "get-token",
            exec_user(
                "get-token",
                "/nonexistent/aws",
                &[
                    "eks",
                    "get-token",
                    "--cluster-name",
                    CLUSTER,
                    "--region",
                    "us-east-1",
                ],
                &keys,
            ),
        ),
        (
            "update-kubeconfig",
            exec_user(
                "update-kubeconfig",
                "/nonexistent/aws",
                &[
                    "--region",
                    "us-west-2",
                    "eks",
                    "get-token",
                    "--cluster-name",
                    CLUSTER,
                    "--output",
                    "json",
                ],
                &keys,
            ),
        ),
        (
            "authenticator",
            exec_user(
                "authenticator",
                "/nonexistent/aws-iam-authenticator",
                &["token", "-i", CLUSTER],
                &with_region,
            ),
        ),
        (
            "wrong-cluster",
            exec_user(
                "wrong-cluster",
                "/nonexistent/aws",
                &[
                    "eks",
                    "get-token",
                    "--cluster-name",
                    "other",
                    "--region",
                    "us-east-1",
                ],
                &keys,
            ),
        ),
        (
            "wrong-secret",
            exec_user(
                "wrong-secret",
                "/nonexistent/aws",
                &[
                    "eks",
                    "get-token",
                    "--cluster-name",
                    CLUSTER,
                    "--region",
                    "us-east-1",
                ],
                &[
                    ("AWS_ACCESS_KEY_ID", "AKIDEKSEXEC"),
                    ("AWS_SECRET_ACCESS_KEY", "not-the-secret"),
                ],
            ),
        ),
    ]
}

/// The secret of the access key [`eks_users`] sign with.
fn eks_secrets() -> Arc<Mutex<HashMap<String, String>>> {
    Arc::new(Mutex::new(HashMap::from([(
        "AKIDEKSEXEC".to_owned(),
        "eks-exec-secret".to_owned(),
    )])))
}

/// The library with each of [`eks_users`]' three forms in the kubeconfig at `path` gets the
/// pod's address.
async fn eks_contexts_get_addresses(path: &Path) {
    for context in ["get-token", "update-kubeconfig", "authenticator"] {
        let fleet = fleet_with(path, context).await.unwrap();
        let address = fleet
            .get_address(Arch::Amd64)
            .await
            .unwrap_or_else(|e| panic!("{context}: {e}"));
        assert!(address.url().contains("10-0-0-10"), "{}", address.url());
    }
}

/// A token for another cluster, or signed with the wrong secret, is refused (401).
async fn eks_wrong_contexts_are_refused(path: &Path) {
    for context in ["wrong-cluster", "wrong-secret"] {
        let fleet = fleet_with(path, context).await.unwrap();
        let err = fleet
            .get_address(Arch::Amd64)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("401") || err.to_lowercase().contains("unauthorized"),
            "{context}: {err}"
        );
    }
}

/// The STS hosts of `tokens` (each must pass the independent check first).
fn eks_token_regions(
    tokens: impl IntoIterator<Item = String>,
    secrets: &Mutex<HashMap<String, String>>,
) -> Vec<String> {
    let mut regions = std::collections::BTreeSet::new();
    for token in tokens {
        verify_eks_token(&token, CLUSTER, &secrets.lock().unwrap()).unwrap();
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.strip_prefix("k8s-aws-v1.").unwrap())
            .unwrap();
        let url = String::from_utf8(url).unwrap();
        regions.insert(url.split('/').nth(2).unwrap().to_owned());
    }
    regions.into_iter().collect()
}

const EKS_REGIONS: [&str; 3] = [
    "sts.eu-west-1.amazonaws.com",
    "sts.us-east-1.amazonaws.com",
    "sts.us-west-2.amazonaws.com",
];

#[tokio::test]
async fn eks_tokens_for_the_three_exec_forms_pass_sigv4_and_token_review_with_no_process() {
    let secrets = eks_secrets();
    let fake = cluster_scenario()
        .token_review(review(secrets.clone()))
        .start()
        .await;
    let path = kubeconfig(fake.dir(), &fake_cluster(&fake), &eks_users());
    eks_contexts_get_addresses(&path).await;
    // Every request carried a token the independent check accepts, for the region asked.
    let tokens: Vec<String> = fake
        .requests()
        .iter()
        .map(|r| r.authorization.strip_prefix("Bearer ").unwrap().to_owned())
        .collect();
    assert!(!tokens.is_empty());
    assert_eq!(eks_token_regions(tokens, &secrets), EKS_REGIONS);
    eks_wrong_contexts_are_refused(&path).await;
}

#[tokio::test]
async fn eks_tokens_pass_the_real_api_servers_token_webhook() {
    let secrets = eks_secrets();
    let Some(real) = cluster_scenario()
        .token_review(review(secrets.clone()))
        .start_real(module_path!())
        .await
    else {
        return;
    };
    let path = kubeconfig(real.dir(), &real.cluster_fields(), &eks_users());
    eks_contexts_get_addresses(&path).await;
    // The API server asked the webhook about the tokens its token file does not know (each
    // new one; it caches answers): all pass the independent check, one region per form.
    assert_eq!(
        eks_token_regions(real.reviewed_tokens(), &secrets),
        EKS_REGIONS
    );
    // It recorded the requests as the webhook's user, each with our User-Agent.
    crate::fleet_scenarios::Cluster::assert_user_agent(&real);
    let reviewed = real.reviewed_tokens().len();
    eks_wrong_contexts_are_refused(&path).await;
    assert!(
        real.reviewed_tokens().len() > reviewed,
        "the refused tokens went to the webhook"
    );
}

#[tokio::test]
async fn eks_tokens_are_remade_when_short_lived_credentials_near_expiry() {
    // Container credentials that expire in two minutes: inside the renewal window, so every
    // request needs fresh credentials and a fresh token.
    let (port, _seen, handed) =
        container_endpoint("pod-identity-token", Duration::from_secs(120)).await;
    let secrets = Arc::new(Mutex::new(HashMap::new()));
    // The verifier learns each secret the endpoint hands out (secret-KEY).
    let learned = secrets.clone();
    let handed_keys = handed.clone();
    let review: TokenReview = Arc::new(move |token| {
        let mut known = learned.lock().unwrap();
        for key in handed_keys.lock().unwrap().iter() {
            known
                .entry(key.clone())
                .or_insert_with(|| format!("secret-{key}"));
        }
        verify_eks_token(token, CLUSTER, &known).is_ok()
    });
    let fake = cluster_scenario().token_review(review).start().await;
    let users = [(
        "eks",
        exec_user(
            "eks",
            "aws",
            &[
                "--region",
                "us-east-1",
                "eks",
                "get-token",
                "--cluster-name",
                CLUSTER,
                "--output",
                "json",
            ],
            &[],
        ),
    )];
    let path = kubeconfig(fake.dir(), &fake_cluster(&fake), &users);
    let mut env = isolated().await;
    let token = env.file("pod-identity-token", "pod-identity-token");
    env.var("KUBECONFIG", &path)
        .var(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            format!("http://127.0.0.1:{port}/credentials"),
        )
        .var("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", &token);
    let out = env.run(&["get-address", "--arch", "amd64"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let signers: std::collections::BTreeSet<String> = fake
        .requests()
        .iter()
        .map(|r| {
            verify_eks_token(
                r.authorization.strip_prefix("Bearer ").unwrap(),
                CLUSTER,
                &secrets.lock().unwrap(),
            )
            .unwrap()
        })
        .collect();
    assert!(
        fake.requests().len() >= 2 && signers.len() == fake.requests().len(),
        "each request signed with newly fetched credentials: {signers:?} for {} requests",
        fake.requests().len()
    );
}

#[tokio::test]
async fn eks_without_credentials_or_region_fails_in_one_line() {
    let fake = cluster_scenario().start().await;
    let users = [
        (
            "no-creds",
            exec_user(
                "no-creds",
                "aws",
                &[
                    "eks",
                    "get-token",
                    "--cluster-name",
                    CLUSTER,
                    "--region",
                    "us-east-1",
                ],
                &[],
            ),
        ),
        (
            "bad-region",
            exec_user(
                "bad-region",
                "aws",
                &[
                    "eks",
                    "get-token",
                    "--cluster-name",
                    CLUSTER,
                    "--region",
                    "mars-central-1",
                ],
                &[
                    ("AWS_ACCESS_KEY_ID", "AKID"),
                    ("AWS_SECRET_ACCESS_KEY", "s"),
                ],
            ),
        ),
    ];
    let path = kubeconfig(fake.dir(), &fake_cluster(&fake), &users);
    for (context, want) in [
        ("no-creds", "no AWS credentials"),
        ("bad-region", "unknown AWS region \"mars-central-1\""),
    ] {
        let mut env = isolated().await;
        env.var("KUBECONFIG", &path);
        let out = env
            .run(&["get-address", "--arch", "amd64", "--context", context])
            .await;
        let err = one_line_failure(&out);
        assert!(
            err.contains(want) && err.contains("EKS token"),
            "{context}: {err}"
        );
    }
    assert!(
        fake.requests().iter().all(|r| r.authorization.is_empty()),
        "no token sent"
    );
}
