//! The distributed binary as an air-gapped CI image runs it (issue 18): the static build that
//! `scripts/release` writes, in a root holding only itself, `/etc/hosts`, `/etc/resolv.conf`
//! and a CA bundle, run as a non-root user with that root read-only and a tmpfs on `/tmp`; and
//! the FROM-scratch image that `scripts/image` builds with it, run on the Engine.
//!
//! The static binary is `PF_TEST_STATIC_BINARY` (`scripts/test` builds it with
//! `scripts/release` before the tests), else the current `dist/` file.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::util::{self, Tier, assert_fails_with, stderr, stdout};

/// The user the bare roots and the image run as (not root, no entry needed).
const USER: &str = "65532:65532";

/// The static binary under test.
fn static_binary() -> PathBuf {
    if let Ok(path) = std::env::var("PF_TEST_STATIC_BINARY")
        && !path.is_empty()
    {
        return PathBuf::from(path);
    }
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
        "dist/pf-buildkit-{}-linux-{arch}",
        env!("CARGO_PKG_VERSION")
    ));
    assert!(
        path.is_file(),
        "no static binary: run scripts/release (scripts/test does) or set PF_TEST_STATIC_BINARY"
    );
    path
}

/// Whether the ELF file at `path` asks for a program interpreter (a dynamic loader): a
/// static-pie has a dynamic section but no `PT_INTERP`.
fn has_interpreter(path: &Path) -> bool {
    let elf = std::fs::read(path).unwrap();
    assert_eq!(
        &elf[..4],
        b"\x7fELF",
        "{} is not an ELF file",
        path.display()
    );
    assert_eq!(elf[4], 2, "64-bit ELF expected");
    let u16_at = |at: usize| u16::from_le_bytes(elf[at..at + 2].try_into().unwrap()) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (entry_size, count) = (u16_at(0x36), u16_at(0x38));
    const PT_INTERP: u32 = 3;
    (0..count).any(|i| {
        let at = phoff + i * entry_size;
        u32::from_le_bytes(elf[at..at + 4].try_into().unwrap()) == PT_INTERP
    })
}

/// A root holding only the binary (`/pf-buildkit`), `/etc/hosts`, `/etc/resolv.conf`,
/// Debian's CA bundle, an empty `/tmp`, and whatever a test adds.
struct BareRoot {
    dir: tempfile::TempDir,
}

impl BareRoot {
    fn new(hosts: &str, resolv_conf: &str) -> BareRoot {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // The non-root user must be able to enter it.
        set_mode(root, 0o755);
        for sub in ["etc/ssl/certs", "tmp"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        std::fs::copy(static_binary(), root.join("pf-buildkit")).unwrap();
        std::fs::write(root.join("etc/hosts"), hosts).unwrap();
        std::fs::write(root.join("etc/resolv.conf"), resolv_conf).unwrap();
        // The bundle the image ships (Debian's ca-certificates), when this machine has it: the
        // tests need a public bundle in place, not any certificate in it.
        let bundle = std::fs::read("/etc/ssl/certs/ca-certificates.crt")
            .unwrap_or_else(|_| b"# no public roots on this machine\n".to_vec());
        std::fs::write(root.join("etc/ssl/certs/ca-certificates.crt"), bundle).unwrap();
        BareRoot { dir }
    }

    /// Writes `contents` at `path` (relative to the root).
    fn add(&self, path: &str, contents: &[u8]) {
        let at = self.dir.path().join(path);
        std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        std::fs::write(at, contents).unwrap();
    }

    /// Runs `/pf-buildkit ARGS` chrooted into the root, in a mount namespace of its own where
    /// the root is read-only and `/tmp` a tmpfs, as [`USER`], with only `env` set.
    fn run(&self, env: &[(&str, &str)], args: &[&str]) -> Output {
        const SCRIPT: &str = r#"set -e
root=$1; shift
mount --bind "$root" "$root"
mount -o remount,bind,ro "$root"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
exec chroot --userspec=65532:65532 "$root" /pf-buildkit "$@""#;
        let mut cmd = Command::new("unshare");
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", "/tmp")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(SCRIPT)
            .arg("sh")
            .arg(self.dir.path())
            .args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run unshare")
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A DNS server on UDP port 53 of a loopback address of its own (resolv.conf has no port):
/// answers A queries for its names, "no such name" for any other, and records what it was asked.
struct Dns {
    addr: Ipv4Addr,
    asked: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Dns {
    fn start(names: &[(&str, Ipv4Addr)]) -> Dns {
        // 127.53.X.Y, from the process id: parallel test runs on one machine do not meet.
        let pid = std::process::id();
        let socket = (0..64u32)
            .find_map(|n| {
                let ip = Ipv4Addr::new(
                    127,
                    53,
                    ((pid >> 8) % 250) as u8,
                    ((pid + n) % 250 + 2) as u8,
                );
                UdpSocket::bind(SocketAddrV4::new(ip, 53)).ok()
            })
            .expect("bind a DNS server on port 53 of some 127.53.0.0/16 address (needs root)");
        let addr = match socket.local_addr().unwrap().ip() {
            std::net::IpAddr::V4(v4) => v4,
            other => panic!("not IPv4: {other}"),
        };
        // Polled so that Drop can end the thread.
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let names: Vec<(String, Ipv4Addr)> = names
            .iter()
            .map(|(n, ip)| (n.to_ascii_lowercase(), *ip))
            .collect();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (asked, stop) = (asked.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 1500];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((len, peer)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    if let Some((name, reply)) = dns_reply(&buf[..len], &names) {
                        asked.lock().unwrap().push(name);
                        let _ = socket.send_to(&reply, peer);
                    }
                }
            })
        };
        Dns {
            addr,
            asked,
            stop,
            thread: Some(thread),
        }
    }

    fn resolv_conf(&self) -> String {
        format!("nameserver {}\noptions timeout:2 attempts:2\n", self.addr)
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The answer to one DNS query (RFC 1035 §4), and the name asked; `None` for what is not a
/// query.
fn dns_reply(query: &[u8], names: &[(String, Ipv4Addr)]) -> Option<(String, Vec<u8>)> {
    if query.len() < 12 || query[2] & 0x80 != 0 || u16::from_be_bytes([query[4], query[5]]) != 1 {
        return None;
    }
    // The question: labels, then type and class.
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = *query.get(at)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(at..at + len)?).to_ascii_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]);
    let question_end = at + 4;
    let name = labels.join(".");
    let known = names.iter().find(|(n, _)| *n == name).map(|(_, ip)| *ip);
    const A: u16 = 1;
    let answer = known.filter(|_| qtype == A);
    // Known name: NOERROR (an AAAA query gets no record); unknown: NXDOMAIN.
    let rcode = if known.is_some() { 0 } else { 3 };
    let mut reply = Vec::with_capacity(question_end + 16);
    reply.extend_from_slice(&query[..2]);
    reply.push(0x80 | (query[2] & 0x01)); // QR, RD copied
    reply.push(0x80 | rcode); // RA
    reply.extend_from_slice(&[0, 1, 0, u8::from(answer.is_some()), 0, 0, 0, 0]);
    reply.extend_from_slice(query.get(12..question_end)?);
    if let Some(ip) = answer {
        // The name by pointer to the question, type A, class IN, TTL 5 s, 4 bytes.
        reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4]);
        reply.extend_from_slice(&ip.octets());
    }
    Some((name, reply))
}

fn registry_port() -> String {
    let registry = util::env("PF_TEST_REGISTRY");
    registry.rsplit_once(':').unwrap().1.to_owned()
}

fn base_repo_and_tag() -> (String, String) {
    let base = util::env("PF_TEST_BASE_IMAGE");
    let (_, path) = base.split_once('/').unwrap();
    let (repo, tag) = path.rsplit_once(':').unwrap();
    (repo.to_owned(), tag.to_owned())
}

/// `manifest inspect` printed the base image's manifest.
fn assert_inspected_base(out: &Output, how: &str) {
    assert!(out.status.success(), "{how}: {}", stderr(out));
    let manifest: serde_json::Value = serde_json::from_str(&stdout(out)).unwrap();
    assert!(manifest["layers"].is_array(), "{how}: {manifest}");
}

#[test]
fn the_release_binary_is_static() {
    let binary = static_binary();
    assert!(
        !has_interpreter(&binary),
        "{} names a program interpreter: it is not a static build",
        binary.display()
    );
    let out = Command::new(&binary).arg("--version").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).trim_end().ends_with(", static)"),
        "{}",
        stdout(&out)
    );
}

/// glibc keeps its `files` and `dns` modules inside the static binary: with nothing beside it,
/// names resolve through `/etc/hosts` and through the server `/etc/resolv.conf` names, hosts
/// first (glibc's order when there is no `/etc/nsswitch.conf`, as in the image).
#[test]
fn names_resolve_through_hosts_and_dns_in_a_bare_root() {
    let dns = Dns::start(&[("registry.dns.pf-test", Ipv4Addr::LOCALHOST)]);
    let root = BareRoot::new(
        "127.0.0.1 localhost\n127.0.0.1 registry.hosts.pf-test\n",
        &dns.resolv_conf(),
    );
    let (repo, tag) = base_repo_and_tag();
    let port = registry_port();
    let inspect = |host: &str| {
        root.run(
            &[],
            &[
                "manifest",
                "inspect",
                "--insecure-registry",
                &format!("{host}:{port}/{repo}:{tag}"),
            ],
        )
    };

    assert_inspected_base(&inspect("registry.hosts.pf-test"), "by /etc/hosts");
    assert!(
        !dns.asked().iter().any(|n| n == "registry.hosts.pf-test"),
        "/etc/hosts comes first: {:?}",
        dns.asked()
    );

    assert_inspected_base(&inspect("registry.dns.pf-test"), "by DNS");
    assert!(
        dns.asked().iter().any(|n| n == "registry.dns.pf-test"),
        "the name was not asked of the DNS server: {:?}",
        dns.asked()
    );

    // A name neither knows fails in one line naming it.
    let out = inspect("nowhere.pf-test");
    assert_fails_with(&out, &["nowhere.pf-test"]);
    assert!(dns.asked().iter().any(|n| n == "nowhere.pf-test"));
}

/// A registry whose certificate only a private CA signs: refused with the image's bundle
/// alone, with a line saying which variable to set; reached with `SSL_CERT_FILE`, and with
/// `SSL_CERT_DIR` adding the CA's directory to the system's.
#[test]
fn a_private_ca_is_trusted_through_ssl_cert_file_or_dir() {
    let pki = tempfile::tempdir().unwrap();
    let registry = TlsRegistry::start(pki.path(), "registry.tls.pf-test");
    let root = BareRoot::new(
        "127.0.0.1 localhost\n127.0.0.1 registry.tls.pf-test\n",
        "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
    );
    root.add("ca/private-ca.pem", registry.ca_pem.as_bytes());
    let (repo, tag) = base_repo_and_tag();
    let image = format!("registry.tls.pf-test:{}/{repo}:{tag}", registry.port);
    let inspect = |env: &[(&str, &str)]| root.run(env, &["manifest", "inspect", &image]);

    let out = inspect(&[]);
    assert_fails_with(
        &out,
        &["registry.tls.pf-test", "UnknownIssuer", "SSL_CERT_FILE"],
    );

    assert_inspected_base(
        &inspect(&[("SSL_CERT_FILE", "/ca/private-ca.pem")]),
        "SSL_CERT_FILE",
    );
    assert_inspected_base(
        &inspect(&[("SSL_CERT_DIR", "/etc/ssl/certs:/ca")]),
        "SSL_CERT_DIR",
    );
}

/// bookworm's docker-registry serving TLS with a certificate for `name` that a CA made here
/// signs, as a pull-through cache of the test registry (so it holds the base image).
struct TlsRegistry {
    port: u16,
    ca_pem: String,
    child: std::process::Child,
}

impl TlsRegistry {
    fn start(dir: &Path, name: &str) -> TlsRegistry {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "pf-buildkit private test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();

        // A free port: bound, read, released for the registry.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {data}\n\
                 proxy:\n  remoteurl: http://{upstream}\n\
                 http:\n  addr: 127.0.0.1:{port}\n  tls:\n    certificate: {dir}/cert.pem\n    key: {dir}/key.pem\n",
                data = dir.join("data").display(),
                upstream = util::env("PF_TEST_REGISTRY"),
                dir = dir.display(),
            ),
        )
        .unwrap();
        let mut child = Command::new(testenv_tool("docker-registry"))
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start docker-registry");
        // Ready once it says it listens (it logs to stderr); the rest of its log is drained.
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut seen = Vec::new();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("listening on") => break,
                Some(Ok(line)) => seen.push(line),
                _ => panic!(
                    "docker-registry exited before listening: {}",
                    seen.join("\n")
                ),
            }
        }
        std::thread::spawn(move || lines.for_each(drop));
        TlsRegistry {
            port,
            ca_pem: ca_cert.pem(),
            child,
        }
    }
}

impl Drop for TlsRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A program unpacked by `scripts/testenv` (`PF_TESTENV_CACHE`, default as the script's).
fn testenv_tool(name: &str) -> PathBuf {
    let cache = std::env::var("PF_TESTENV_CACHE")
        .ok()
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "/var/cache/pf-buildkit-testenv".to_owned());
    let path = Path::new(&cache).join("root/usr/bin").join(name);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/testenv start",
        path.display()
    );
    path
}

/// `scripts/image` with the static binary under test, building on `tier`'s BuildKit; returns
/// the pushed image's digest.
fn scripts_image(tier: Tier, image: &str, no_cache: bool) -> String {
    let mut cmd = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/image"));
    cmd.env("BUILDKIT_HOST", tier.addr())
        .env("PF_IMAGE_BINARY", static_binary())
        .env("PF_IMAGE_SOURCE", "https://example.invalid/pf-buildkit")
        .arg("--insecure-registry");
    if no_cache {
        cmd.arg("--no-cache");
    }
    let out = cmd.arg(image).output().expect("run scripts/image");
    assert!(
        out.status.success(),
        "scripts/image {image}: {}",
        stderr(&out)
    );
    let digest = stdout(&out).trim().to_owned();
    assert!(digest.starts_with("sha256:"), "{digest:?}");
    digest
}

/// The test environment's docker CLI, talking to its Engine, with a config of its own.
fn docker(config: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(testenv_tool("docker"));
    cmd.env("DOCKER_HOST", util::env("PF_TEST_DOCKER_HOST"))
        .env("DOCKER_CONFIG", config)
        .stdin(Stdio::null());
    cmd
}

/// `docker run` of `image` as CI runs it: host network, read-only root, a tmpfs on /tmp, a
/// non-root user, `buildkitd.pf-test` naming loopback; `options` (mounts, variables) for
/// `docker run`, then `args` for pf-buildkit.
async fn run_image(config: &Path, image: &str, options: &[String], args: &[&str]) -> Output {
    let mut cmd = docker(config);
    cmd.args([
        "run",
        "--rm",
        "--network",
        "host",
        "--read-only",
        "--tmpfs",
        "/tmp",
    ])
    .args(["--user", USER, "--add-host", "buildkitd.pf-test:127.0.0.1"])
    .args(options)
    .arg(image)
    .args(args);
    cmd.output().await.expect("run docker")
}

/// The CI image: built by `scripts/image` with pf-buildkit itself, reproducible, and working
/// in a read-only container as a non-root user: BuildKit reached by a name, a real build
/// pushed, `manifest inspect` of it, and the fleet's `get-address` with a kubeconfig mounted.
#[tokio::test(flavor = "multi_thread")]
async fn the_ci_image_runs_builds_and_fleet_commands_in_a_read_only_container() {
    let registry = util::env("PF_TEST_REGISTRY");
    let tier = Tier::preferred();
    let repo = util::unique_repo("ci-image");
    let image = format!("{registry}/{repo}:first");

    let digest = tokio::task::spawn_blocking({
        let image = image.clone();
        move || scripts_image(tier, &image, false)
    })
    .await
    .unwrap();
    assert_eq!(util::registry_digest(&repo, "first"), Some(digest.clone()));
    // One commit, one digest: a rebuild without the cache gives the same image.
    let again = tokio::task::spawn_blocking({
        let image = format!("{registry}/{repo}:again");
        move || scripts_image(tier, &image, true)
    })
    .await
    .unwrap();
    assert_eq!(again, digest, "a rebuild of one commit changed the digest");

    let config = tempfile::tempdir().unwrap();
    let config = config.path();
    let pinned = format!("{registry}/{repo}@{digest}");
    let out = docker(config)
        .args(["pull", "-q", &pinned])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "docker pull: {}", stderr(&out));

    // Labels and time stamps from the commit.
    let out = docker(config)
        .args([
            "image",
            "inspect",
            "--format",
            "{{json .Config.Labels}} {{.Created}}",
            &pinned,
        ])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let inspected = stdout(&out);
    let (labels, created) = inspected.trim().rsplit_once(' ').unwrap();
    let labels: serde_json::Value = serde_json::from_str(labels).unwrap();
    let head = git(&["rev-parse", "HEAD"]);
    assert_eq!(labels["org.opencontainers.image.revision"], head.as_str());
    assert_eq!(
        labels["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(
        labels["org.opencontainers.image.source"],
        "https://example.invalid/pf-buildkit"
    );
    let commit_time = Command::new("date")
        .args([
            "-u",
            "-d",
            &format!("@{}", git(&["log", "-1", "--format=%ct", "HEAD"])),
        ])
        .arg("+%Y-%m-%dT%H:%M:%SZ")
        .output()
        .unwrap();
    assert_eq!(
        created,
        stdout(&commit_time).trim(),
        "the image's creation time is the commit's"
    );

    // The binary alone, as the non-root user, root read-only.
    let out = run_image(config, &pinned, &[], &["--version"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let here = Command::new(static_binary())
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(
        stdout(&out),
        stdout(&here),
        "the image holds the binary under test"
    );

    // The fleet's get-address, with a kubeconfig mounted in.
    let fake = crate::fake_kube::Scenario::new()
        .statefulset("amd64", 1, 1, None)
        .pod("buildkit-amd64-0", "Running", "10.0.0.7", true)
        .cpu("buildkit-amd64-0", &[("buildkitd", "5m")])
        .start()
        .await;
    let kubeconfig = [
        "-v".to_owned(),
        format!("{}:/kube/config:ro", fake.kubeconfig().display()),
        "-e".to_owned(),
        "KUBECONFIG=/kube/config".to_owned(),
    ];
    let out = run_image(
        config,
        &pinned,
        &kubeconfig,
        &["get-address", "--arch", "amd64"],
    )
    .await;
    assert!(out.status.success(), "get-address: {}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "tcp://10-0-0-7.buildkit.pod.cluster.local:1234\n"
    );

    let Some(standalone) = Tier::Standalone.present("ci image in a container") else {
        return;
    };
    let port = standalone.addr().rsplit_once(':').unwrap().1.to_owned();
    let addr = format!("tcp://buildkitd.pf-test:{port}");

    let out = run_image(config, &pinned, &[], &["--addr", &addr, "workers"]).await;
    assert!(out.status.success(), "workers: {}", stderr(&out));
    assert!(stdout(&out).contains("linux/amd64"), "{}", stdout(&out));

    // A real build, pushed by the daemon; the metadata file goes to the writable /tmp.
    let context = tempfile::tempdir().unwrap();
    set_mode(context.path(), 0o755);
    std::fs::write(
        context.path().join("Dockerfile"),
        format!(
            "FROM {}\nCOPY hello /hello\n",
            util::env("PF_TEST_BASE_IMAGE")
        ),
    )
    .unwrap();
    std::fs::write(context.path().join("hello"), repo.as_bytes()).unwrap();
    let built = format!("{registry}/{repo}:built-in-container");
    let out = run_image(
        config,
        &pinned,
        &[
            "-v".to_owned(),
            format!("{}:/context:ro", context.path().display()),
        ],
        &[
            "--addr",
            &addr,
            "build",
            "--context",
            "/context",
            "--progress",
            "plain",
            "--metadata-file",
            "/tmp/metadata.json",
            "--output",
            &format!("type=image,name={built},push=true,registry.insecure=true"),
        ],
    )
    .await;
    assert!(out.status.success(), "build: {}", stderr(&out));
    assert!(
        util::registry_digest(&repo, "built-in-container").is_some(),
        "the build pushed nothing"
    );

    let out = run_image(
        config,
        &pinned,
        &[],
        &["manifest", "inspect", "--insecure-registry", &built],
    )
    .await;
    assert!(out.status.success(), "manifest inspect: {}", stderr(&out));
    // The base image's layer and the COPY's.
    let manifest: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        manifest["layers"].as_array().map(Vec::len),
        Some(2),
        "{manifest}"
    );
}

fn git(args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", stderr(&out));
    stdout(&out).trim().to_owned()
}
