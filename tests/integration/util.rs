//! Shared helpers: the test environment's addresses and running the binary.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// How to get the test environment, the one line a run without it prints.
const NO_ENVIRONMENT: &str = "integration tests: no test environment (PF_TEST_REGISTRY is unset): \
run `scripts/test`, or `eval \"$(scripts/testenv start)\"` and then `cargo test` (see README)";

/// An environment variable `scripts/testenv start` sets. Without the environment at all, the
/// first test that asks ends the test process with one line saying how to get it (a panic in
/// every test would print a stack of the same message); with the environment but not this
/// variable (a component it could not start), the test fails naming the variable.
pub fn env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => {
            if std::env::var_os("PF_TEST_REGISTRY").is_none_or(|v| v.is_empty()) {
                no_environment();
            }
            panic!("{name} is not set: run `eval \"$(scripts/testenv start)\"` first (see README)")
        }
    }
}

/// Prints [`NO_ENVIRONMENT`] once, past libtest's output capture, and exits 1. Tests that
/// asked at the same moment wait here until the process is gone.
fn no_environment() -> ! {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), "\n{NO_ENVIRONMENT}");
        std::process::exit(1);
    });
    unreachable!("the process exited")
}

/// The Docker Engine socket path of the test environment.
pub fn docker_socket() -> PathBuf {
    let host = env("PF_TEST_DOCKER_HOST");
    PathBuf::from(host.strip_prefix("unix://").unwrap_or(&host))
}

/// `docker+unix://` address of the test environment's Engine.
pub fn docker_addr() -> String {
    format!("docker+unix://{}", docker_socket().display())
}

/// The binary under test with a clean environment: no ambient BuildKit, kube or docker config.
pub fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pf-buildkit"));
    for var in [
        "BUILDKIT_HOST",
        "KUBECONFIG",
        "DOCKER_CONFIG",
        "DOCKER_HOST",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// Runs the binary with `args` and returns its output.
pub fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run pf-buildkit")
}

/// stdout as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// [`bin`] for async tests, so servers in the test process keep running while it does.
pub fn tokio_bin() -> tokio::process::Command {
    tokio::process::Command::from(bin())
}

/// A daemon's build cache, shared by every test process (nextest runs one per test): tests
/// whose assertions depend on what the cache holds take it shared; a test that prunes
/// everything takes it exclusively, so it never runs beside them. An `flock` on a file in the
/// test environment's directory, released when the guard drops (or the process dies).
pub struct CacheLock(std::fs::File);

impl CacheLock {
    /// Waits for the lock of `tier`'s cache. It blocks the calling thread, so it must not be
    /// a runtime's: take it in the test before entering tokio, or in `spawn_blocking`.
    fn take(tier: Tier, exclusive: bool) -> CacheLock {
        assert!(
            tokio::runtime::Handle::try_current().is_err(),
            "take the cache lock outside the async runtime (before it, or in spawn_blocking)"
        );
        let dir = docker_socket()
            .parent()
            .expect("the Engine socket is in the test environment's directory")
            .join("locks");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("build-cache-{}.lock", tier.name()));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        let locked = if exclusive {
            file.lock()
        } else {
            file.lock_shared()
        };
        locked.unwrap_or_else(|e| panic!("lock {}: {e}", path.display()));
        CacheLock(file)
    }
}

/// A BuildKit daemon of the test environment. The build, export, session, cache and
/// multi-platform tests run on each daemon that is present, standalone first: it is what the
/// production fleet runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// Upstream buildkitd v0.32.2, started by `scripts/testenv` when its binary is at hand.
    /// Sessions go through `Control.Session` on the Control connection; RUN steps get the host
    /// network; test-private instances can be started and killed (fault tests).
    Standalone,
    /// The Docker Engine's embedded BuildKit, reached through the Engine API's `/grpc` upgrade.
    /// The CLI's sessions go through its `/session` upgrade; RUN steps need network mode none.
    Engine,
}

impl Tier {
    /// Short name for messages and test names.
    pub fn name(self) -> &'static str {
        match self {
            Tier::Standalone => "standalone",
            Tier::Engine => "engine",
        }
    }

    /// Why this tier does not run here, or `None` when it does. The Engine always runs (a
    /// test environment without it fails loudly in [`env`]).
    pub fn skip_reason(self) -> Option<String> {
        match self {
            Tier::Engine => None,
            Tier::Standalone => match std::env::var("PF_TEST_BUILDKIT_ADDR") {
                Ok(v) if !v.is_empty() => None,
                _ => Some(
                    "PF_TEST_BUILDKIT_ADDR is not set: scripts/testenv found no \
                     ../shared/buildkit/buildkitd-v0.32.2-linux-amd64.xz (PF_TESTENV_BUILDKIT)"
                        .to_owned(),
                ),
            },
        }
    }

    /// The tier if it runs here; otherwise says on stderr that a test skipped it, and why.
    pub fn present(self, test: &str) -> Option<Tier> {
        match self.skip_reason() {
            None => Some(self),
            Some(reason) => {
                eprintln!("{test}: {} tier skipped: {reason}", self.name());
                None
            }
        }
    }

    /// Every tier that runs here, standalone first.
    pub fn available() -> Vec<Tier> {
        [Tier::Standalone, Tier::Engine]
            .into_iter()
            .filter(|t| t.skip_reason().is_none())
            .collect()
    }

    /// The daemon production runs if present, else the Engine: for tests (the fleet's) that
    /// need one real BuildKit and are not about the daemon.
    pub fn preferred() -> Tier {
        Self::available()[0]
    }

    /// The address the client is given (`--addr`).
    pub fn addr(self) -> String {
        match self {
            Tier::Standalone => env("PF_TEST_BUILDKIT_ADDR"),
            Tier::Engine => docker_addr(),
        }
    }

    /// Whether the CLI's session is opened with `Control.Session` (else the Engine's
    /// `/session` upgrade).
    pub fn session_via_control(self) -> bool {
        self == Tier::Standalone
    }

    /// Whether a test can start and kill its own instance of this daemon.
    pub fn private_instances(self) -> bool {
        self == Tier::Standalone
    }

    /// Holds this daemon's build cache steady against a full prune while the guard lives.
    pub fn cache_shared(self) -> CacheLock {
        CacheLock::take(self, false)
    }

    /// Excludes the tests that rely on this daemon's cache while the guard lives.
    pub fn cache_exclusive(self) -> CacheLock {
        CacheLock::take(self, true)
    }
}

/// Turns `fn NAME(tier: Tier)` into one test per [`Tier`]: `NAME::standalone` and
/// `NAME::engine` (a module and a function may share a name). Where the standalone daemon is
/// absent, its test says on stderr that it skipped the tier, and why. `async NAME` for an
/// `async fn`, run on tokio.
macro_rules! tier_tests {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            use $crate::util::Tier;

            #[test]
            fn standalone() {
                if let Some(tier) = Tier::Standalone.present(module_path!()) {
                    super::$name(tier);
                }
            }

            #[test]
            fn engine() {
                super::$name(Tier::Engine);
            }
        }
    )+};
    ($(async $name:ident),+ $(,)?) => {$(
        mod $name {
            use $crate::util::Tier;

            #[tokio::test]
            async fn standalone() {
                if let Some(tier) = Tier::Standalone.present(module_path!()) {
                    super::$name(tier).await;
                }
            }

            #[tokio::test]
            async fn engine() {
                super::$name(Tier::Engine).await;
            }
        }
    )+};
}

/// Checks that `out` is a usage error: exit 2, nothing on stdout, and exactly one line on
/// stderr, `pf-buildkit: …` (what is wrong, and how to fix it where there is more to say),
/// whether clap or the command found it. Returns that line.
pub fn assert_usage_error(out: &Output) -> String {
    assert_one_line(out, 2)
}

/// `out` ended with `code`, printed nothing on stdout and one `pf-buildkit: ` line on stderr.
fn assert_one_line(out: &Output, code: i32) -> String {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert!(out.stdout.is_empty(), "stdout: {}", stdout(out));
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line expected: {err}"
    );
    assert!(err.starts_with("pf-buildkit: "), "{err}");
    err
}

/// Checks that `out` failed as a user should see it: exit 1, nothing on stdout (no result of a
/// half-done job), and exactly one line on stderr, `pf-buildkit: …`. Returns that line.
pub fn assert_one_line_failure(out: &Output) -> String {
    assert_one_line(out, 1)
}

/// [`assert_one_line_failure`], and the line holds each of `needles`.
pub fn assert_fails_with(out: &Output, needles: &[&str]) -> String {
    let err = assert_one_line_failure(out);
    for needle in needles {
        assert!(err.contains(needle), "{needle:?} not in {err:?}");
    }
    err
}

/// A repository name (`pf-test/WHAT-…`) no other test, process or earlier run uses.
pub fn unique_repo(what: &str) -> String {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    format!("pf-test/{what}-{nanos:x}-{:x}-{n}", std::process::id())
}

/// The digest of `PF_TEST_REGISTRY/repo:tag` (image, index or list), or `None` when the
/// registry has no such manifest. Asked with a raw HTTP HEAD, not through the library, so a
/// test's check does not depend on the code under test.
pub fn registry_digest(repo: &str, tag: &str) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let registry = env("PF_TEST_REGISTRY");
    let mut stream = std::net::TcpStream::connect(&registry).unwrap();
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

/// `sha256:<hex>` of `bytes`, as registries and OCI layouts name content.
pub fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{:x}", sha2::Sha256::digest(bytes))
}

/// A plain reqwest client for a test's own raw HTTP calls (reqwest is built without a default
/// crypto provider: the library configures ring itself; the test installs it process-wide).
pub fn http_client(redirects: bool) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut b = reqwest::Client::builder();
    if !redirects {
        b = b.redirect(reqwest::redirect::Policy::none());
    }
    b.build().unwrap()
}
