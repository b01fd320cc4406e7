//! The sender's walk: depth-first pre-order over a directory, siblings in byte order of their
//! names, filtered, each kept entry turned into the `Stat` fsutil would send for it.
//!
//! Runs on a blocking thread: it is nothing but system calls.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::Metadata;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::buildkit::proto::fsutil::types::Stat;

use super::filter::{MatchState, ResolvedFilter, Verdict};
use super::{io_reason, mode};

/// Why the walk stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WalkError {
    #[error("cannot read {path}: {}", io_reason(error))]
    Read { path: String, error: io::Error },
    #[error("cannot read the extended attributes of {path}: {}", io_reason(error))]
    Xattr { path: String, error: io::Error },
    #[error("cannot send {path}: its name is not valid UTF-8")]
    NotUtf8 { path: String },
    /// The consumer asked to stop (the other side went away).
    #[error("stopped")]
    Stopped,
}

/// Go's `os.FileMode` for an lstat result, with the socket bit cleared as fsutil does.
pub(crate) fn go_mode(meta: &Metadata) -> u32 {
    let ft = meta.file_type();
    let st_mode = meta.mode();
    let mut m = st_mode & 0o777;
    if ft.is_dir() {
        m |= mode::DIR;
    } else if ft.is_symlink() {
        m |= mode::SYMLINK;
    } else if ft.is_block_device() {
        m |= mode::DEVICE;
    } else if ft.is_char_device() {
        m |= mode::DEVICE | mode::CHAR_DEVICE;
    } else if ft.is_fifo() {
        m |= mode::NAMED_PIPE;
    }
    // Sockets would get mode::SOCKET, which fsutil clears because tar cannot represent it.
    if st_mode & 0o4000 != 0 {
        m |= mode::SETUID;
    }
    if st_mode & 0o2000 != 0 {
        m |= mode::SETGID;
    }
    if st_mode & 0o1000 != 0 {
        m |= mode::STICKY;
    }
    m
}

/// Linux `major(rdev)` as fsutil computes it.
pub(crate) fn dev_major(rdev: u64) -> i64 {
    ((rdev >> 8) & 0xfff) as i64
}

/// Linux `minor(rdev)` as fsutil computes it.
pub(crate) fn dev_minor(rdev: u64) -> i64 {
    ((rdev & 0xff) | ((rdev >> 12) & 0xfff00)) as i64
}

/// Builds the Stat of one entry, registering hardlinked inodes in `inodes`.
pub(crate) fn make_stat(
    abs: &Path,
    rel: &str,
    meta: &Metadata,
    inodes: &mut HashMap<(u64, u64), String>,
) -> Result<Stat, WalkError> {
    let mut stat = Stat {
        path: rel.to_string(),
        mode: go_mode(meta),
        uid: meta.uid(),
        gid: meta.gid(),
        size: 0,
        mod_time: meta.mtime().saturating_mul(1_000_000_000) + meta.mtime_nsec(),
        ..Stat::default()
    };
    let ft = meta.file_type();
    if !ft.is_dir() {
        stat.devmajor = dev_major(meta.rdev());
        stat.devminor = dev_minor(meta.rdev());
        // fsutil maps every inode it meets to its first path; later paths of a multiply linked
        // inode become links to it. (Its size stays the file's size: fsutil sets the size
        // after the hardlink check.)
        if meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            match inodes.get(&key) {
                Some(first) => stat.linkname = first.clone(),
                None => {
                    inodes.insert(key, rel.to_string());
                }
            }
        }
        stat.size = meta.len() as i64;
        if ft.is_symlink() {
            let target = std::fs::read_link(abs).map_err(|source| WalkError::Read {
                path: rel.to_string(),
                error: source,
            })?;
            stat.linkname = target
                .to_str()
                .ok_or_else(|| WalkError::NotUtf8 {
                    path: format!("{rel} -> {}", target.to_string_lossy()),
                })?
                .to_string();
        }
    }
    stat.xattrs = read_xattrs(abs).map_err(|source| WalkError::Xattr {
        path: rel.to_string(),
        error: source,
    })?;
    Ok(stat)
}

/// Extended attributes of `path` (not following a symlink), without `com.apple.*`.
fn read_xattrs(path: &Path) -> io::Result<HashMap<String, bytes::Bytes>> {
    let mut out = HashMap::new();
    let mut names: Vec<u8> = Vec::with_capacity(256);
    loop {
        match rustix::fs::llistxattr(path, rustix::buffer::spare_capacity(&mut names)) {
            Ok(_) => break,
            Err(rustix::io::Errno::RANGE) => {
                let need = rustix::fs::llistxattr_query(path)?;
                names = Vec::with_capacity(need.max(names.capacity() * 2));
            }
            Err(rustix::io::Errno::NOTSUP) => return Ok(out),
            Err(e) => return Err(e.into()),
        }
    }
    if names.is_empty() {
        return Ok(out);
    }
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let Ok(name) = std::str::from_utf8(name) else {
            continue;
        };
        if name.starts_with("com.apple.") {
            continue;
        }
        let Ok(len) = rustix::fs::lgetxattr_query(path, name) else {
            continue;
        };
        let mut value: Vec<u8> = Vec::with_capacity(len.max(1));
        if len == 0 {
            out.insert(name.to_string(), bytes::Bytes::new());
            continue;
        }
        if rustix::fs::lgetxattr(path, name, rustix::buffer::spare_capacity(&mut value)).is_ok() {
            out.insert(name.to_string(), bytes::Bytes::from(value));
        }
    }
    Ok(out)
}

struct Frame {
    abs: PathBuf,
    rel: String,
    state: MatchState,
    emitted: bool,
}

/// Walks `root` (already canonical), calling `emit` for each kept entry in stream order.
pub(crate) fn walk(
    root: &Path,
    filter: &ResolvedFilter,
    emit: &mut dyn FnMut(Stat) -> Result<(), WalkError>,
) -> Result<(), WalkError> {
    let mut walker = Walker {
        filter,
        emit,
        inodes: HashMap::new(),
        stack: Vec::new(),
    };
    walker.walk_dir(root, "", true, true)
}

struct Walker<'a> {
    filter: &'a ResolvedFilter,
    emit: &'a mut dyn FnMut(Stat) -> Result<(), WalkError>,
    inodes: HashMap<(u64, u64), String>,
    /// The directories above the entry being looked at (the root excluded).
    stack: Vec<Frame>,
}

fn is_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

impl Walker<'_> {
    fn walk_dir(
        &mut self,
        abs: &Path,
        rel: &str,
        is_root: bool,
        kept: bool,
    ) -> Result<(), WalkError> {
        let read_err = |source: io::Error| WalkError::Read {
            path: if is_root {
                ".".to_string()
            } else {
                rel.to_string()
            },
            error: source,
        };
        let mut entries: Vec<(OsString, bool)> = Vec::new();
        let listing = std::fs::read_dir(abs).and_then(|rd| {
            for entry in rd {
                let entry = entry?;
                let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
                entries.push((entry.file_name(), is_dir));
            }
            Ok(())
        });
        if let Err(e) = listing {
            // fsutil ignores unreadable directories that the filter skips, and directories
            // that vanished during the walk.
            if is_gone(&e) || (!kept && e.kind() == io::ErrorKind::PermissionDenied) {
                return Ok(());
            }
            return Err(read_err(e));
        }
        entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        for (name, is_dir) in entries {
            let name_str = name.to_string_lossy();
            let child_rel = if is_root {
                name_str.to_string()
            } else {
                format!("{rel}/{name_str}")
            };
            let child_abs = abs.join(&name);
            let empty = MatchState::default();
            let parent_state = self.stack.last().map(|f| &f.state).unwrap_or(&empty);
            let (verdict, state) = self.filter.check(&child_rel, is_dir, parent_state);
            match verdict {
                Verdict::Prune => continue,
                Verdict::Skip => {
                    if is_dir {
                        self.descend(child_abs, child_rel, state, false)?;
                    }
                }
                Verdict::Keep => {
                    if name.to_str().is_none() {
                        return Err(WalkError::NotUtf8 { path: child_rel });
                    }
                    let meta = match std::fs::symlink_metadata(&child_abs) {
                        Ok(m) => m,
                        Err(e) if is_gone(&e) => continue,
                        Err(source) => {
                            return Err(WalkError::Read {
                                path: child_rel,
                                error: source,
                            });
                        }
                    };
                    self.emit_parents()?;
                    let stat = make_stat(&child_abs, &child_rel, &meta, &mut self.inodes)?;
                    (self.emit)(stat)?;
                    if meta.is_dir() {
                        self.descend(child_abs, child_rel, state, true)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn descend(
        &mut self,
        abs: PathBuf,
        rel: String,
        state: MatchState,
        emitted: bool,
    ) -> Result<(), WalkError> {
        self.stack.push(Frame {
            abs: abs.clone(),
            rel: rel.clone(),
            state,
            emitted,
        });
        let result = self.walk_dir(&abs, &rel, false, emitted);
        self.stack.pop();
        result
    }

    /// Sends the skipped directories above the current entry that have not been sent yet.
    fn emit_parents(&mut self) -> Result<(), WalkError> {
        for i in 0..self.stack.len() {
            if self.stack[i].emitted {
                continue;
            }
            let frame = &self.stack[i];
            if frame.abs.file_name().and_then(|n| n.to_str()).is_none() {
                return Err(WalkError::NotUtf8 {
                    path: frame.rel.clone(),
                });
            }
            let meta = std::fs::symlink_metadata(&frame.abs).map_err(|source| WalkError::Read {
                path: frame.rel.clone(),
                error: source,
            })?;
            let stat = make_stat(&frame.abs, &frame.rel, &meta, &mut self.inodes)?;
            self.stack[i].emitted = true;
            (self.emit)(stat)?;
        }
        Ok(())
    }
}
