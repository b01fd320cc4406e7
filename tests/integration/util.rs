//! Shared helpers: the test environment's addresses and running the binary.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// An environment variable `scripts/testenv start` sets; a missing one fails the test with
/// a message saying how to set it up.
pub fn env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => {
            panic!("{name} is not set: run `eval \"$(scripts/testenv start)\"` first (see README)")
        }
    }
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

/// The Engine's build cache is shared by every test in this process. Tests whose assertions
/// depend on what the cache holds take it shared; a test that prunes everything takes it
/// exclusively, so it never runs beside them.
static BUILD_CACHE: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Holds the build cache steady against a full prune for as long as the guard lives.
pub fn cache_shared() -> std::sync::RwLockReadGuard<'static, ()> {
    BUILD_CACHE
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Excludes the tests that rely on the cache while the guard lives.
pub fn cache_exclusive() -> std::sync::RwLockWriteGuard<'static, ()> {
    BUILD_CACHE
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Checks that `out` is a usage error (exit 2, as clap reports one) and returns its stderr.
pub fn assert_usage_error(out: &Output) -> String {
    let text = stderr(out);
    assert_eq!(out.status.code(), Some(2), "stderr: {text}");
    assert!(text.starts_with("error: "), "{text}");
    text
}
