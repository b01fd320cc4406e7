//! Snapshots of directory trees, to prove that nothing outside a destination was written.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// One entry as seen without following symlinks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A directory, with its mode.
    Dir { mode: u32 },
    /// A regular file: mode, link count, inode and contents.
    File {
        mode: u32,
        nlink: u64,
        ino: u64,
        data: Vec<u8>,
    },
    /// A symlink and its target.
    Symlink(PathBuf),
    /// Anything else, by its mode.
    Other(u32),
}

/// Every entry under a root, by relative path.
pub type Snapshot = BTreeMap<PathBuf, Entry>;

/// Walks `root` (not following symlinks) and records every entry.
pub fn take(root: &Path) -> Snapshot {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut Snapshot) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let rel = path.strip_prefix(root).expect("under root").to_owned();
        let meta = std::fs::symlink_metadata(&path).expect("lstat");
        let kind = meta.file_type();
        let e = if kind.is_dir() {
            walk(root, &path, out);
            Entry::Dir { mode: meta.mode() }
        } else if kind.is_file() {
            Entry::File {
                mode: meta.mode(),
                nlink: meta.nlink(),
                ino: meta.ino(),
                data: std::fs::read(&path).unwrap_or_default(),
            }
        } else if kind.is_symlink() {
            Entry::Symlink(std::fs::read_link(&path).expect("readlink"))
        } else {
            Entry::Other(meta.mode())
        };
        out.insert(rel, e);
    }
}

/// Paths under `root` whose name marks a temporary file of the receiver.
pub fn temp_files(root: &Path) -> Vec<PathBuf> {
    take(root)
        .into_keys()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().contains(".pf-tmp"))
        })
        .collect()
}
