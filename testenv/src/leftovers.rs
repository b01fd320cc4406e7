//! What a killed daemon leaves behind, and the folders components own: runc containers of
//! RUN steps, containerd shims, mounts, stray processes. Each cleanup touches only what lies
//! under a folder of the environment, never anything else on the machine.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process;

/// A component's folder: created on start, removed on drop once nothing is mounted under it
/// (a remove through a live mount would delete the mounted tree's files).
#[derive(Debug)]
pub struct Folder {
    path: PathBuf,
}

impl Folder {
    /// Creates `path` (emptied first: what a previous run left there is not ours to reuse).
    pub fn fresh(path: &Path) -> crate::Result<Folder> {
        unmount_under(path);
        if path.exists() && mounts_under(path).is_empty() {
            std::fs::remove_dir_all(path).map_err(crate::Error::file("remove", path))?;
        }
        std::fs::create_dir_all(path).map_err(crate::Error::file("create", path))?;
        Ok(Folder {
            path: path.to_path_buf(),
        })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path/name`.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for Folder {
    fn drop(&mut self) {
        unmount_under(&self.path);
        if mounts_under(&self.path).is_empty() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Mount points at or under `dir`, and mount points elsewhere of a tree under `dir` (BuildKit
/// mounts a snapshot at `/tmp/buildkit-mountNNN` while it exports; a daemon killed meanwhile
/// leaves that mount behind), deepest first.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let dir = dir.to_string_lossy();
    let dir = dir.trim_end_matches('/');
    let prefix = format!("{dir}/");
    let inside = |p: &str| p.starts_with(&prefix) || p == dir;
    let mut mounts: Vec<String> = mountinfo
        .lines()
        .filter_map(|l| {
            // Fields: id, parent, major:minor, root (the mounted tree), mount point, …
            let mut fields = l.split(' ').skip(3);
            Some((fields.next()?, fields.next()?))
        })
        .filter(|(root, point)| inside(point) || inside(root))
        .map(|(_, point)| point.to_owned())
        .collect();
    mounts.sort_unstable_by(|a, b| b.cmp(a));
    mounts.dedup();
    mounts
}

/// Unmounts everything under `dir` (lazily when busy), deepest first.
pub fn unmount_under(dir: &Path) {
    for m in mounts_under(dir) {
        let ok = Command::new("umount")
            .arg(&m)
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            let _ = Command::new("umount").args(["-l", &m]).output();
        }
    }
}

/// Deletes (forcibly) the runc containers whose state lives in `ROOT/runc-*/executor/ID`
/// (BuildKit's OCI worker), then unmounts what is left under `root`.
pub fn buildkit_leftovers(root: &Path) {
    for worker in read_dir(root) {
        if worker
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("runc-"))
        {
            for container in read_dir(&worker.join("executor")) {
                if container.join("state.json").exists() {
                    runc_delete(&worker.join("executor"), &container);
                }
            }
        }
    }
    unmount_under(root);
}

/// Deletes the runc containers of a killed dockerd/containerd whose state (under the
/// system's runc roots) names a path under `dir`.
pub fn engine_containers(dir: &Path) {
    let needle = format!("\"{}/", dir.display());
    let mut roots = vec![PathBuf::from("/run/runc")];
    roots.extend(read_dir(Path::new("/run/containerd/runc")));
    for root in roots {
        for container in read_dir(&root) {
            let state = std::fs::read_to_string(container.join("state.json")).unwrap_or_default();
            if state.contains(&needle) {
                runc_delete(&root, &container);
            }
        }
    }
}

fn runc_delete(root: &Path, container: &Path) {
    let Some(id) = container.file_name() else {
        return;
    };
    let _ = Command::new("runc")
        .arg("--root")
        .arg(root)
        .args(["delete", "--force"])
        .arg(id)
        .output();
}

/// SIGKILLs every process (but this one) whose command line names a path under `dir`:
/// daemons of a killed run, a test's private daemons. Returns how many it killed.
pub fn kill_processes_naming(dir: &Path) -> usize {
    kill_processes_matching(&format!("{}/", dir.display()))
}

/// SIGKILLs every process (but this one) whose command line (arguments joined by spaces,
/// with a trailing space) holds `needle`, and waits until they are gone. Returns how many.
pub fn kill_processes_matching(needle: &str) -> usize {
    let me = std::process::id();
    let mut killed = Vec::new();
    for entry in read_dir(Path::new("/proc")) {
        let Some(pid) = entry
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(needle) {
            process::signal_pid(pid, libc::SIGKILL);
            killed.push(pid);
        }
    }
    for pid in &killed {
        process::wait_gone(*pid, std::time::Duration::from_secs(10));
    }
    killed.len()
}

fn read_dir(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect()
}
