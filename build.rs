//! Compiles `vendor-protos/` into Rust with protox (a pure-Rust protobuf compiler), so building
//! the crate needs no `protoc`; and records what `pf-buildkit --version` names: the git commit
//! the binary was built from and the target it was built for.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    compile_protos()?;
    record_build_info();
    Ok(())
}

fn compile_protos() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=vendor-protos");
    let files = [
        "buildkit/control.proto",
        "buildkit/filesync.proto",
        "buildkit/auth.proto",
        "buildkit/secrets.proto",
        "buildkit/ssh.proto",
        "grpc/health.proto",
        "containerd/content.proto",
    ];
    let descriptors = protox::compile(files, ["vendor-protos"])?;
    // The compiled descriptors, for the test that checks ops.proto against upstream's.
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("vendor_protos.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Bytes fields that carry file data: `bytes::Bytes` lets chunks move without copies.
        .bytes(".")
        // LLB maps (op attrs, metadata, caps) as BTreeMaps: sorted like Go's deterministic
        // encoding, and stable when dumped or compared.
        .btree_map(".pb")
        .compile_fds(descriptors)?;
    Ok(())
}

/// Sets `PF_BUILDKIT_LONG_VERSION` for the binary's `--version`, e.g.
/// `0.1.0 (commit 0135d80abc12, x86_64-unknown-linux-gnu, static)`.
///
/// The commit comes from, in order: `PF_BUILDKIT_COMMIT` (for builds from an export with no
/// git metadata), `.cargo_vcs_info.json` (which `cargo package` writes into the crate, so a
/// build from the published tarball names the commit it was packaged from), then `git` in the
/// source tree. None of them: `unknown commit`. Missing git is never an error.
fn record_build_info() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    println!("cargo:rerun-if-env-changed=PF_BUILDKIT_COMMIT");
    let commit = std::env::var("PF_BUILDKIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| packaged_commit(&manifest_dir))
        .or_else(|| git_commit(&manifest_dir));
    let commit = match commit {
        Some(sha) => format!("commit {}", &sha[..sha.len().min(12)]),
        None => "unknown commit".to_owned(),
    };
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown target".to_owned());
    // `crt-static` on a gnu target: the binary needs no libc beside it.
    let linkage = if std::env::var("CARGO_CFG_TARGET_FEATURE")
        .is_ok_and(|features| features.split(',').any(|f| f == "crt-static"))
    {
        ", static"
    } else {
        ""
    };
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    println!("cargo:rustc-env=PF_BUILDKIT_LONG_VERSION={version} ({commit}, {target}{linkage})");
}

/// The commit in `.cargo_vcs_info.json` (`{"git":{"sha1":"…"},…}`), present only in a crate
/// that `cargo package` made. Read by hand: one field does not justify a JSON parser here.
fn packaged_commit(manifest_dir: &Path) -> Option<String> {
    let path = manifest_dir.join(".cargo_vcs_info.json");
    let text = std::fs::read_to_string(&path).ok()?;
    rerun_if_changed(&path);
    let after = &text[text.find("\"sha1\"")? + "\"sha1\"".len()..];
    let start = after.find('"')? + 1;
    let sha: String = after[start..]
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .collect();
    (sha.len() >= 7).then_some(sha)
}

/// HEAD's commit from `git`, and the files whose change means a new commit, so cargo reruns
/// this script after a commit or a checkout (and only then).
fn git_commit(manifest_dir: &Path) -> Option<String> {
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .arg("-C")
            .arg(manifest_dir)
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let sha = git(&["rev-parse", "--verify", "HEAD"])?;
    // A worktree keeps HEAD in its own git dir and the branches in the common one.
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        rerun_if_changed(&Path::new(&dir).join("HEAD"));
    }
    if let Some(common) = git(&["rev-parse", "--path-format=absolute", "--git-common-dir"]) {
        let common = Path::new(&common);
        rerun_if_changed(&common.join("packed-refs"));
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            rerun_if_changed(&common.join(branch));
        }
    }
    Some(sha)
}

/// Only for files that exist: cargo reruns a script on every build while a file it watches is
/// missing, and that would recompile the crate each time.
fn rerun_if_changed(path: &Path) {
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
