//! The sender's walk: depth-first pre-order over a directory, siblings in byte order of their
//! names, filtered, each kept entry turned into the `Stat` fsutil would send for it.
//!
//! Runs on a blocking thread and is nothing but system calls, so it makes as few as it can:
//! each directory is opened once, from its parent's descriptor and never through a symlink,
//! and listed into one reused buffer; each entry is stat'ed once, relative to its directory's
//! descriptor (no path is resolved from the root again), and its extended attributes are
//! listed once (`llistxattr`, as fsutil does: nothing else tells whether a file has any).
//! Files are never opened here: the sender opens one only when the receiver asks for it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ffi::{CStr, OsStr};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

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

/// Go's `os.FileMode` for an lstat `st_mode`, with the socket bit cleared as fsutil does.
pub(crate) fn go_mode(st_mode: u32) -> u32 {
    let mut m = st_mode & 0o777;
    match FileType::from_raw_mode(st_mode as _) {
        FileType::Directory => m |= mode::DIR,
        FileType::Symlink => m |= mode::SYMLINK,
        FileType::BlockDevice => m |= mode::DEVICE,
        FileType::CharacterDevice => m |= mode::DEVICE | mode::CHAR_DEVICE,
        FileType::Fifo => m |= mode::NAMED_PIPE,
        // Sockets would get mode::SOCKET, which fsutil clears because tar cannot represent it.
        _ => {}
    }
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

/// What the walk keeps of an lstat result (the fields' types differ between architectures).
#[derive(Clone, Copy)]
struct Meta {
    st_mode: u32,
    uid: u32,
    gid: u32,
    size: i64,
    mod_time: i64,
    rdev: u64,
    nlink: u64,
    dev: u64,
    ino: u64,
}

impl Meta {
    // The `rustix::fs::Stat` fields are `c_long`, `u64` or `u32` depending on the target.
    #[allow(clippy::unnecessary_cast)]
    fn from_stat(st: &rustix::fs::Stat) -> Meta {
        Meta {
            st_mode: st.st_mode as u32,
            uid: st.st_uid as u32,
            gid: st.st_gid as u32,
            size: st.st_size as i64,
            mod_time: (st.st_mtime as i64)
                .saturating_mul(1_000_000_000)
                .saturating_add(st.st_mtime_nsec as i64),
            rdev: st.st_rdev as u64,
            nlink: st.st_nlink as u64,
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
        }
    }

    fn file_type(&self) -> FileType {
        FileType::from_raw_mode(self.st_mode as _)
    }
}

/// lstat of `name` in `dir`.
fn lstat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Meta> {
    let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(Meta::from_stat(&st))
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

/// Bytes of directory entries read per `getdents` call (a 1,000-entry directory in one).
const LISTING_BUFFER: usize = 32 * 1024;

/// The names of one directory, in one buffer: a million-entry directory costs its names and
/// 8 bytes an entry, not an allocation per name.
#[derive(Default)]
struct Listing {
    names: Vec<u8>,
    entries: Vec<ListedName>,
}

struct ListedName {
    start: u32,
    len: u16,
    /// The type the directory entry gave, which may be [`FileType::Unknown`].
    kind: FileType,
}

impl Listing {
    fn push(&mut self, name: &[u8], kind: FileType) -> io::Result<()> {
        let too_large = || io::Error::other("directory listing too large");
        let start = u32::try_from(self.names.len()).map_err(|_| too_large())?;
        let len = u16::try_from(name.len()).map_err(|_| too_large())?;
        self.names.extend_from_slice(name);
        self.names.push(0);
        self.entries.push(ListedName { start, len, kind });
        Ok(())
    }

    /// The name of an entry, NUL-terminated for the `*at` calls.
    fn name(&self, entry: &ListedName) -> &CStr {
        let start = entry.start as usize;
        let end = start + usize::from(entry.len) + 1;
        // Each name was pushed followed by its NUL, and names from the kernel hold none.
        CStr::from_bytes_with_nul(&self.names[start..end]).unwrap_or_default()
    }

    /// Sorts the entries by the bytes of their names (fsutil's order for siblings).
    fn sort(&mut self) {
        let names = &self.names;
        let bytes = |e: &ListedName| &names[e.start as usize..e.start as usize + e.len as usize];
        self.entries.sort_unstable_by(|a, b| bytes(a).cmp(bytes(b)));
    }
}

/// Lists the directory open as `dir` (read from its start) into `listing`, without `.` and
/// `..`.
#[cfg(target_os = "linux")]
fn list(dir: &OwnedFd, buf: &mut Vec<u8>, listing: &mut Listing) -> io::Result<()> {
    let mut entries = rustix::fs::RawDir::new(dir, buf.spare_capacity_mut());
    while let Some(entry) = entries.next() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            listing.push(name, entry.file_type())?;
        }
    }
    Ok(())
}

/// Lists the directory open as `dir` into `listing`, without `.` and `..`.
#[cfg(not(target_os = "linux"))]
fn list(dir: &OwnedFd, _buf: &mut Vec<u8>, listing: &mut Listing) -> io::Result<()> {
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            listing.push(name, entry.file_type())?;
        }
    }
    Ok(())
}

/// Opens the directory `name` in `dir` for listing, never through a symlink.
fn open_dir_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(Into::into)
}

/// A directory being walked, above the entry being looked at.
struct Frame {
    abs: PathBuf,
    rel: String,
    state: MatchState,
    /// Its STAT has been sent: it was kept, or a kept descendant needed it.
    emitted: bool,
    /// Its name is valid UTF-8 (a skipped directory may have any name, until something in it
    /// is kept and its STAT must be sent).
    utf8: bool,
}

/// Walks `root` (already canonical), calling `emit` for each kept entry in stream order.
pub(crate) fn walk(
    root: &Path,
    filter: &ResolvedFilter,
    emit: &mut dyn FnMut(Stat) -> Result<(), WalkError>,
) -> Result<(), WalkError> {
    let root_err = |error: io::Error| WalkError::Read {
        path: ".".to_string(),
        error,
    };
    let fd = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| root_err(e.into()))?;
    let mut walker = Walker {
        filter,
        emit,
        inodes: HashMap::new(),
        stack: Vec::new(),
        buf: Vec::with_capacity(LISTING_BUFFER),
    };
    walker.walk_dir(&fd, root, "", true)
}

struct Walker<'a> {
    filter: &'a ResolvedFilter,
    emit: &'a mut dyn FnMut(Stat) -> Result<(), WalkError>,
    /// The first path of every multiply linked inode met so far.
    inodes: HashMap<(u64, u64), String>,
    /// The directories above the entry being looked at (the root excluded).
    stack: Vec<Frame>,
    /// The `getdents` buffer, shared by every directory.
    buf: Vec<u8>,
}

/// The entry is gone (or is no longer what it was) since its directory was listed.
fn is_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    ) || e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error())
}

impl Walker<'_> {
    /// Walks the directory open as `dir` (at `abs`, sent as `rel`): `kept` when its own STAT
    /// was sent (or it is the root).
    fn walk_dir(
        &mut self,
        dir: &OwnedFd,
        abs: &Path,
        rel: &str,
        kept: bool,
    ) -> Result<(), WalkError> {
        let is_root = rel.is_empty();
        let mut listing = Listing::default();
        if let Err(e) = list(dir, &mut self.buf, &mut listing) {
            // fsutil ignores unreadable directories that the filter skips, and directories
            // that vanished during the walk.
            if is_gone(&e) || (!kept && e.kind() == io::ErrorKind::PermissionDenied) {
                return Ok(());
            }
            return Err(WalkError::Read {
                path: if is_root {
                    ".".to_string()
                } else {
                    rel.to_string()
                },
                error: e,
            });
        }
        listing.sort();
        for entry in &listing.entries {
            let name = listing.name(entry);
            let name_str = String::from_utf8_lossy(name.to_bytes());
            let child_rel = if is_root {
                name_str.to_string()
            } else {
                format!("{rel}/{name_str}")
            };
            let read_err = |error: io::Error| WalkError::Read {
                path: child_rel.clone(),
                error,
            };
            // The entry's lstat, taken at most once: now if the listing did not say whether
            // it is a directory, else only if it is kept.
            let mut meta = None;
            let is_dir = match entry.kind {
                FileType::Directory => true,
                FileType::Unknown => match lstat_at(dir.as_fd(), name) {
                    Ok(m) => {
                        meta = Some(m);
                        m.file_type() == FileType::Directory
                    }
                    Err(e) if is_gone(&e) => continue,
                    Err(e) => return Err(read_err(e)),
                },
                _ => false,
            };
            let empty = MatchState::default();
            let parent_state = self.stack.last().map(|f| &f.state).unwrap_or(&empty);
            let (verdict, state) = self.filter.check(&child_rel, is_dir, parent_state);
            match verdict {
                Verdict::Prune => continue,
                Verdict::Skip => {
                    if is_dir {
                        self.descend(dir, name, abs, child_rel, state, false)?;
                    }
                }
                Verdict::Keep => {
                    if matches!(name_str, Cow::Owned(_)) {
                        return Err(WalkError::NotUtf8 { path: child_rel });
                    }
                    let meta = match meta {
                        Some(m) => m,
                        None => match lstat_at(dir.as_fd(), name) {
                            Ok(m) => m,
                            Err(e) if is_gone(&e) => continue,
                            Err(e) => return Err(read_err(e)),
                        },
                    };
                    self.emit_parents()?;
                    let child_abs = abs.join(OsStr::from_bytes(name.to_bytes()));
                    let stat = self.make_stat(&child_abs, &child_rel, &meta, Some((dir, name)))?;
                    (self.emit)(stat)?;
                    if meta.file_type() == FileType::Directory {
                        self.descend(dir, name, abs, child_rel, state, true)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Opens the directory `name` in `parent` and walks it; a directory that is gone (or was
    /// swapped for something else since it was listed) is passed over, as is an unreadable
    /// one that the filter skips.
    fn descend(
        &mut self,
        parent: &OwnedFd,
        name: &CStr,
        parent_abs: &Path,
        rel: String,
        state: MatchState,
        emitted: bool,
    ) -> Result<(), WalkError> {
        let fd = match open_dir_at(parent.as_fd(), name) {
            Ok(fd) => fd,
            Err(e) if is_gone(&e) || (!emitted && e.kind() == io::ErrorKind::PermissionDenied) => {
                return Ok(());
            }
            Err(error) => return Err(WalkError::Read { path: rel, error }),
        };
        let abs = parent_abs.join(OsStr::from_bytes(name.to_bytes()));
        self.stack.push(Frame {
            abs: abs.clone(),
            rel: rel.clone(),
            state,
            emitted,
            utf8: std::str::from_utf8(name.to_bytes()).is_ok(),
        });
        let result = self.walk_dir(&fd, &abs, &rel, emitted);
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
            if !frame.utf8 {
                return Err(WalkError::NotUtf8 {
                    path: frame.rel.clone(),
                });
            }
            // Not stat'ed before: the listing said it is a directory, and it was skipped.
            let meta = rustix::fs::statat(rustix::fs::CWD, &frame.abs, AtFlags::SYMLINK_NOFOLLOW)
                .map(|st| Meta::from_stat(&st))
                .map_err(|e| WalkError::Read {
                    path: frame.rel.clone(),
                    error: e.into(),
                })?;
            let (abs, rel) = (frame.abs.clone(), frame.rel.clone());
            let stat = self.make_stat(&abs, &rel, &meta, None)?;
            self.stack[i].emitted = true;
            (self.emit)(stat)?;
        }
        Ok(())
    }

    /// Builds the Stat of one entry, registering hardlinked inodes. `at` is the entry's
    /// directory and name, to read a symlink's target.
    fn make_stat(
        &mut self,
        abs: &Path,
        rel: &str,
        meta: &Meta,
        at: Option<(&OwnedFd, &CStr)>,
    ) -> Result<Stat, WalkError> {
        let mut stat = Stat {
            path: rel.to_string(),
            mode: go_mode(meta.st_mode),
            uid: meta.uid,
            gid: meta.gid,
            size: 0,
            mod_time: meta.mod_time,
            ..Stat::default()
        };
        let kind = meta.file_type();
        if kind != FileType::Directory {
            stat.devmajor = dev_major(meta.rdev);
            stat.devminor = dev_minor(meta.rdev);
            // fsutil maps every inode it meets to its first path; later paths of a multiply
            // linked inode become links to it. (Its size stays the file's size: fsutil sets
            // the size after the hardlink check.)
            if meta.nlink > 1 {
                let key = (meta.dev, meta.ino);
                match self.inodes.get(&key) {
                    Some(first) => stat.linkname = first.clone(),
                    None => {
                        self.inodes.insert(key, rel.to_string());
                    }
                }
            }
            stat.size = meta.size;
            if kind == FileType::Symlink {
                let read = at
                    .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))
                    .and_then(|(dir, name)| {
                        rustix::fs::readlinkat(dir, name, Vec::new()).map_err(Into::into)
                    })
                    .map_err(|error| WalkError::Read {
                        path: rel.to_string(),
                        error,
                    })?;
                stat.linkname = read
                    .to_str()
                    .map_err(|_| WalkError::NotUtf8 {
                        path: format!("{rel} -> {}", read.to_string_lossy()),
                    })?
                    .to_string();
            }
        }
        stat.xattrs = read_xattrs(abs).map_err(|error| WalkError::Xattr {
            path: rel.to_string(),
            error,
        })?;
        Ok(stat)
    }
}
