//! Taking back what builds wrote to a shared layout without deleting what another build
//! relies on.
//!
//! A build that ends without recording its result deletes its blobs only while it holds the
//! root exclusively, that is, while no other pf-buildkit build uses the store: a build that
//! does may have been told one of those blobs exists and be about to name it in `index.json`.
//! Otherwise the build lists its blobs and directories in [`ABANDONED`], and whichever build
//! next holds the root alone (the last one to leave) deletes those still unreachable from
//! `index.json`. Nothing reachable from `index.json` is ever deleted.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{LayoutError, LayoutStore, parse_digest, read_small_blob};

/// The list of paths ended builds left for the last one to delete, one relative path a
/// line (directories end in `/`, the root itself is `./`).
const ABANDONED: &str = ".pf-buildkit-abandoned";

/// The largest manifest or index read while following `index.json`.
const DOCUMENT_LIMIT: u64 = 16 << 20;

/// Deletes `ours` and what the abandoned list names, except what `index.json` reaches.
/// Call holding the root exclusively.
pub(super) fn collect(store: &LayoutStore, ours: &[PathBuf]) {
    let root = store.root();
    let list = root.join(ABANDONED);
    let mut entries: Vec<PathBuf> = ours.to_vec();
    if let Ok(text) = std::fs::read_to_string(&list) {
        entries.extend(text.lines().filter_map(|line| listed_path(root, line)));
    }
    // An index.json that cannot be read says nothing about what it reaches (another program
    // may be rewriting it in place, as buildctl does): delete nothing, and leave the list to
    // the next build that leaves alone.
    let Some(reachable) = reachable(store) else {
        abandon(store, ours);
        return;
    };
    let (dirs, files): (Vec<PathBuf>, Vec<PathBuf>) = entries.into_iter().partition(|p| p.is_dir());
    for file in files {
        if file == root.join("oci-layout") {
            if !root.join("index.json").exists() {
                let _ = std::fs::remove_file(&file);
            }
            continue;
        }
        let Some(digest) = blob_digest(root, &file) else {
            continue;
        };
        if !reachable.contains(&digest) {
            let _ = std::fs::remove_file(&file);
        }
    }
    let _ = std::fs::remove_file(&list);
    // Deepest first, and only when empty. `ingest/` goes only when a build that did not
    // succeed made it: buildctl's content store makes it when opened and fails without it.
    let mut dirs = dirs;
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    dirs.dedup();
    for dir in dirs {
        let _ = std::fs::remove_dir(dir);
    }
}

/// Lists `ours` for the last build to leave. Call when another build holds the root.
pub(super) fn abandon(store: &LayoutStore, ours: &[PathBuf]) {
    let root = store.root();
    let lines: String = ours
        .iter()
        .filter_map(|path| {
            let relative = path.strip_prefix(root).ok()?.to_str()?;
            Some(if relative.is_empty() {
                "./\n".to_owned()
            } else if path.is_dir() {
                format!("{relative}/\n")
            } else {
                format!("{relative}\n")
            })
        })
        .collect();
    if lines.is_empty() {
        return;
    }
    let path = root.join(ABANDONED);
    // One append of a few lines: concurrent builds' lists never interleave within a line.
    let written = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        .and_then(|mut file| file.write_all(lines.as_bytes()));
    if let Err(error) = written {
        tracing::warn!(path = %path.display(), %error, "cannot list the blobs a cancelled build left");
    }
}

/// A line of the abandoned list as a path under `root`; only the forms `abandon` writes
/// are accepted, so an edited list can never make a build delete anything else.
fn listed_path(root: &Path, line: &str) -> Option<PathBuf> {
    match line {
        "./" => Some(root.to_owned()),
        "oci-layout" | "ingest/" | "blobs/" | "blobs/sha256/" | "blobs/sha512/" => {
            Some(root.join(line.trim_end_matches('/')))
        }
        _ => {
            let (alg, hex) = line.strip_prefix("blobs/")?.split_once('/')?;
            parse_digest(&format!("{alg}:{hex}")).ok()?;
            Some(root.join(line))
        }
    }
}

/// The digest of a path `blobs/<alg>/<hex>` under `root`.
fn blob_digest(root: &Path, path: &Path) -> Option<String> {
    let relative = path.strip_prefix(root.join("blobs")).ok()?.to_str()?;
    let (alg, hex) = relative.split_once('/')?;
    let digest = format!("{alg}:{hex}");
    parse_digest(&digest).ok()?;
    Some(digest)
}

/// Every digest `index.json` reaches through manifests and indexes (their layers, configs,
/// children and subjects); `None` when `index.json` exists but cannot be read.
pub(super) fn reachable(store: &LayoutStore) -> Option<HashSet<String>> {
    let index = match store.read_index() {
        Ok(index) => index,
        Err(LayoutError::NotALayout { .. }) if !store.root().join("index.json").exists() => {
            return Some(HashSet::new());
        }
        Err(_) => return None,
    };
    let mut seen = HashSet::new();
    let mut pending: Vec<Value> = index
        .get("manifests")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    while let Some(descriptor) = pending.pop() {
        let Some(digest) = descriptor.get("digest").and_then(Value::as_str) else {
            continue;
        };
        if parse_digest(digest).is_err() || !seen.insert(digest.to_owned()) {
            continue;
        }
        let media_type = descriptor
            .get("mediaType")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let document = media_type.is_empty()
            || media_type.contains("manifest")
            || media_type.contains("index");
        if !document {
            continue;
        }
        let Ok(data) = read_small_blob(store, digest, DOCUMENT_LIMIT) else {
            continue;
        };
        let Ok(Value::Object(doc)) = serde_json::from_slice::<Value>(&data) else {
            continue;
        };
        for key in ["manifests", "layers", "blobs"] {
            if let Some(Value::Array(children)) = doc.get(key) {
                pending.extend(children.iter().cloned());
            }
        }
        for key in ["config", "subject"] {
            if let Some(child @ Value::Object(_)) = doc.get(key) {
                pending.push(child.clone());
            }
        }
    }
    Some(seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_forms_written_are_read_back() {
        let root = Path::new("/l");
        let hex = "a".repeat(64);
        assert_eq!(
            listed_path(root, &format!("blobs/sha256/{hex}")),
            Some(root.join(format!("blobs/sha256/{hex}")))
        );
        assert_eq!(listed_path(root, "./"), Some(root.to_owned()));
        assert_eq!(listed_path(root, "ingest/"), Some(root.join("ingest")));
        for bad in [
            "../x",
            "blobs/sha256/../../x",
            "index.json",
            "/etc/passwd",
            "",
        ] {
            assert_eq!(listed_path(root, bad), None, "{bad}");
        }
    }
}
