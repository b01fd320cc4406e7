//! Filesystem operations confined to one directory, for the receiver of a local export.
//!
//! The daemon names every path it writes, and several streams may write into the same
//! destination at once, so a directory checked a moment ago may be a symlink by the time a
//! file is created under it. Resolving paths from the destination's name would follow it.
//! Here every operation starts from a descriptor of the destination held open since the
//! transfer began: the parent of the entry is opened with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)` (or, where the kernel lacks openat2, a walk that opens one component
//! at a time with `O_NOFOLLOW`) at the moment of the operation, and the operation itself is
//! the `*at` system call on a single final name that never follows a symlink. So neither a
//! symlink nor `..` anywhere on the path can lead a write outside, whatever is already in the
//! destination and however streams interleave.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use super::Stat;

/// How directories used only as a starting point are opened: `O_PATH` where it exists (no
/// read permission needed, nothing read), else read-only.
#[cfg(any(target_os = "linux", target_os = "android"))]
const LOOKUP_ONLY: OFlags = OFlags::PATH;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const LOOKUP_ONLY: OFlags = OFlags::RDONLY;

/// Why a path or link was refused; carried in an `io::Error` of the kind that fits.
#[derive(Debug, thiserror::Error)]
enum Refused {
    /// Not a clean relative path (the reason says what is in it).
    #[error("{0}")]
    BadName(&'static str),
    /// A symlink (or an escape) met while resolving a path under the root.
    #[error("refused: a symlink on the path could lead outside the destination")]
    Symlink,
    /// A hard link's target was replaced by something other than a regular file.
    #[error("the link target is no longer a regular file")]
    LinkTargetReplaced,
}

/// Why a path was refused before any system call: it is not a clean relative path.
fn bad_name(reason: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, Refused::BadName(reason))
}

/// The error for a symlink (or an escape) met while resolving a path under the root.
fn refused() -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, Refused::Symlink)
}

/// Maps the errors a confined resolution gives for a symlink or an escape to [`refused`].
fn confine_error(e: rustix::io::Errno) -> io::Error {
    match e {
        // ELOOP: a symlink met with RESOLVE_NO_SYMLINKS or O_NOFOLLOW; EXDEV: an escape
        // attempt under RESOLVE_BENEATH; ENOTDIR: a non-directory (such as a symlink opened
        // with O_NOFOLLOW|O_DIRECTORY) where a directory was needed.
        rustix::io::Errno::LOOP | rustix::io::Errno::XDEV | rustix::io::Errno::NOTDIR => refused(),
        other => other.into(),
    }
}

/// Checks that `name` is one normal path component.
fn check_name(name: &str) -> io::Result<()> {
    match name {
        "" => Err(bad_name("empty name")),
        "." | ".." => Err(bad_name("`.` or `..` as a name")),
        n if n.contains('/') => Err(bad_name("`/` in a name")),
        n if n.contains('\0') => Err(bad_name("NUL byte in a name")),
        _ => Ok(()),
    }
}

/// Splits a clean relative path into its parent (possibly empty) and final name, checking
/// every component.
pub(super) fn split(rel: &str) -> io::Result<(&str, &str)> {
    if rel.starts_with('/') {
        return Err(bad_name("absolute path"));
    }
    for part in rel.split('/') {
        check_name(part)?;
    }
    Ok(match rel.rfind('/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => ("", rel),
    })
}

/// A directory descriptor: the root itself (borrowed) or a directory under it.
pub(super) enum DirFd<'a> {
    Root(BorrowedFd<'a>),
    Sub(OwnedFd),
}

impl AsFd for DirFd<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            DirFd::Root(fd) => *fd,
            DirFd::Sub(fd) => fd.as_fd(),
        }
    }
}

impl DirFd<'_> {
    /// An owned descriptor of the same directory, to keep beyond the root's borrow.
    pub(super) fn to_owned_fd(&self) -> io::Result<OwnedFd> {
        self.as_fd().try_clone_to_owned()
    }
}

/// The destination, held open for the whole transfer.
pub(super) struct Root {
    fd: OwnedFd,
}

impl Root {
    /// Opens `path` (which the user named, so its own symlinks are followed) as the root.
    pub(super) fn open(path: &Path) -> io::Result<Root> {
        let fd = rustix::fs::open(
            path,
            LOOKUP_ONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Root { fd })
    }

    /// Opens the directory at `rel` (empty for the root) with `flags`, refusing a symlink or
    /// `..` on the way.
    fn open_dir(&self, rel: &str, flags: OFlags) -> io::Result<OwnedFd> {
        let flags = flags | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        if rel.is_empty() {
            return rustix::fs::openat(&self.fd, ".", flags, Mode::empty()).map_err(Into::into);
        }
        for part in rel.split('/') {
            check_name(part)?;
        }
        #[cfg(target_os = "linux")]
        {
            use rustix::fs::ResolveFlags;
            let resolve =
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
            match rustix::fs::openat2(&self.fd, rel, flags, Mode::empty(), resolve) {
                // Kernels before 5.6 have no openat2: walk instead.
                Err(rustix::io::Errno::NOSYS) => {}
                // openat2 may ask for a retry when a rename raced the lookup.
                Err(rustix::io::Errno::AGAIN) => {}
                other => return other.map_err(confine_error),
            }
        }
        self.walk(rel, flags)
    }

    /// Opens `rel` one component at a time, each with `O_NOFOLLOW`: the components are
    /// checked names (no `..`), so no step can leave the root or follow a link.
    fn walk(&self, rel: &str, flags: OFlags) -> io::Result<OwnedFd> {
        let step = LOOKUP_ONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut parts = rel.split('/').peekable();
        let mut current: Option<OwnedFd> = None;
        while let Some(part) = parts.next() {
            let at = match &current {
                Some(fd) => fd.as_fd(),
                None => self.fd.as_fd(),
            };
            let f = if parts.peek().is_none() { flags } else { step };
            current = Some(rustix::fs::openat(at, part, f, Mode::empty()).map_err(confine_error)?);
        }
        current.ok_or_else(|| bad_name("empty path"))
    }

    /// The parent directory of `rel` (opened for use as a directory descriptor only) and
    /// the final name.
    pub(super) fn parent<'r, 'p>(&'r self, rel: &'p str) -> io::Result<(DirFd<'r>, &'p str)> {
        let (dir, name) = split(rel)?;
        if dir.is_empty() {
            return Ok((DirFd::Root(self.fd.as_fd()), name));
        }
        Ok((DirFd::Sub(self.open_dir(dir, LOOKUP_ONLY)?), name))
    }

    /// Opens the directory at `rel` for reading, to change its own metadata.
    pub(super) fn open_dir_rdonly(&self, rel: &str) -> io::Result<OwnedFd> {
        self.open_dir(rel, OFlags::RDONLY)
    }

    /// Opens the directory at `rel` as a path only (needs no read permission).
    pub(super) fn open_dir_path(&self, rel: &str) -> io::Result<OwnedFd> {
        self.open_dir(rel, LOOKUP_ONLY)
    }
}

/// The type and mode of `name` in `dir`, not following a symlink; `None` when nothing is
/// there.
pub(super) fn lstat_at(dir: impl AsFd, name: &str) -> io::Result<Option<(FileType, u32)>> {
    check_name(name)?;
    // `st_mode` is not a u32 on every platform.
    #[allow(clippy::unnecessary_cast)]
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some((
            FileType::from_raw_mode(st.st_mode),
            st.st_mode as u32 & 0o7777,
        ))),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Creates a new file `name` in `dir` for writing; fails if anything is already there.
pub(super) fn create_new(dir: impl AsFd, name: &str) -> io::Result<File> {
    check_name(name)?;
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    Ok(File::from(fd))
}

/// Creates directory `name` in `dir`.
pub(super) fn mkdir(dir: impl AsFd, name: &str, perms: u32) -> io::Result<()> {
    check_name(name)?;
    rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(perms as _))?;
    Ok(())
}

/// Creates symlink `name` in `dir` pointing at `target` (stored as given, never followed).
pub(super) fn symlink(target: &str, dir: impl AsFd, name: &str) -> io::Result<()> {
    check_name(name)?;
    rustix::fs::symlinkat(target, dir, name)?;
    Ok(())
}

/// Creates `name` in `dir` as a hardlink to `from_name` in `from_dir`. The source is linked
/// itself (a symlink is not followed) and must be a regular file.
pub(super) fn hard_link(
    from_dir: impl AsFd,
    from_name: &str,
    dir: impl AsFd,
    name: &str,
) -> io::Result<()> {
    check_name(from_name)?;
    check_name(name)?;
    if !matches!(
        lstat_at(&from_dir, from_name)?,
        Some((FileType::RegularFile, _))
    ) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            Refused::LinkTargetReplaced,
        ));
    }
    rustix::fs::linkat(from_dir, from_name, dir, name, AtFlags::empty())?;
    Ok(())
}

/// Creates a FIFO or device node `name` in `dir`.
#[cfg(target_os = "linux")]
pub(super) fn mknod(
    dir: impl AsFd,
    name: &str,
    kind: FileType,
    perms: u32,
    dev: rustix::fs::Dev,
) -> io::Result<()> {
    check_name(name)?;
    rustix::fs::mknodat(dir, name, kind, Mode::from_raw_mode(perms as _), dev)?;
    Ok(())
}

/// Moves `from` in `from_dir` onto `to` in `to_dir`, replacing what is there: a symlink at
/// `to` is replaced, not followed; a directory there is removed first.
pub(super) fn replace(
    from_dir: impl AsFd,
    from: &str,
    to_dir: impl AsFd,
    to: &str,
) -> io::Result<()> {
    check_name(from)?;
    if let Some((FileType::Directory, _)) = lstat_at(&to_dir, to)? {
        remove_tree(&to_dir, to)?;
    }
    rustix::fs::renameat(from_dir, from, to_dir, to)?;
    Ok(())
}

/// Removes `name` from `dir` if it is not a directory; a missing entry is not an error.
pub(super) fn unlink(dir: impl AsFd, name: &str) -> io::Result<()> {
    check_name(name)?;
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Removes the directory `name` in `dir` and everything in it, never following a symlink:
/// each level is opened with `O_NOFOLLOW` from its parent's descriptor.
pub(super) fn remove_tree(dir: impl AsFd, name: &str) -> io::Result<()> {
    check_name(name)?;
    let sub = rustix::fs::openat(
        &dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(confine_error)?;
    let reader = rustix::fs::Dir::read_from(&sub)?;
    for entry in reader {
        let entry = entry?;
        let child = entry.file_name().to_string_lossy().into_owned();
        if child == "." || child == ".." {
            continue;
        }
        match rustix::fs::unlinkat(&sub, entry.file_name(), AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(rustix::io::Errno::ISDIR) | Err(rustix::io::Errno::PERM) => {
                remove_tree(&sub, &child)?
            }
            Err(e) => return Err(e.into()),
        }
    }
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?;
    Ok(())
}

/// Sets the access and modification times of `name` in `dir` itself (not a symlink's
/// target).
pub(super) fn set_times_at(dir: impl AsFd, name: &str, ns: i64) -> io::Result<()> {
    check_name(name)?;
    rustix::fs::utimensat(dir, name, &timestamps(ns), AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}

/// Sets the access and modification times of an open file or directory.
pub(super) fn set_times_fd(fd: impl AsFd, ns: i64) -> io::Result<()> {
    rustix::fs::futimens(fd, &timestamps(ns))?;
    Ok(())
}

fn timestamps(ns: i64) -> rustix::fs::Timestamps {
    let ts = rustix::fs::Timespec {
        tv_sec: ns.div_euclid(1_000_000_000),
        tv_nsec: ns.rem_euclid(1_000_000_000) as _,
    };
    rustix::fs::Timestamps {
        last_access: ts,
        last_modification: ts,
    }
}

/// Sets the permission bits of an open file or directory.
pub(super) fn chmod_fd(fd: impl AsFd, perms: u32) -> io::Result<()> {
    rustix::fs::fchmod(fd, Mode::from_raw_mode(perms as _))?;
    Ok(())
}

/// Sets the permission bits of a directory opened as a path only (`O_PATH`), through its
/// `/proc/self/fd` entry, which names exactly that inode: `fchmod` refuses such
/// descriptors, and a directory without read permission cannot be opened otherwise.
pub(super) fn chmod_path_fd(fd: impl AsFd, perms: u32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let proc = format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd());
    rustix::fs::chmod(proc.as_str(), Mode::from_raw_mode(perms as _))?;
    Ok(())
}

/// Sets extended attributes on an open file or directory; failures are logged, not fatal
/// (as fsutil does: a filesystem without xattrs still receives the tree).
pub(super) fn set_xattrs_fd(fd: impl AsFd, stat: &Stat) {
    let rel = stat.path.as_str();
    for (name, value) in &stat.xattrs {
        if let Err(e) =
            rustix::fs::fsetxattr(&fd, name.as_str(), value, rustix::fs::XattrFlags::empty())
        {
            tracing::debug!(path = rel, name, "cannot set extended attribute: {e}");
        }
    }
}

/// Sets extended attributes on `name` in `dir` itself (a symlink or device node, which
/// cannot be opened for `fsetxattr`), through the directory's `/proc/self/fd` entry so the
/// path cannot be redirected; failures are logged, not fatal.
pub(super) fn set_xattrs_at(dir: impl AsFd, name: &str, stat: &Stat) {
    use std::os::fd::AsRawFd;
    if stat.xattrs.is_empty() || check_name(name).is_err() {
        return;
    }
    let rel = stat.path.as_str();
    let path = format!("/proc/self/fd/{}/{name}", dir.as_fd().as_raw_fd());
    for (key, value) in &stat.xattrs {
        if let Err(e) = rustix::fs::lsetxattr(
            path.as_str(),
            key.as_str(),
            value,
            rustix::fs::XattrFlags::empty(),
        ) {
            tracing::debug!(path = rel, name = key, "cannot set extended attribute: {e}");
        }
    }
}
