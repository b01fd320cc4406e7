//! The two `flock`s a layout is shared under. Both are taken by polling a non-blocking try
//! (on a blocking thread, never on the async runtime), so a wait has a deadline, can be given
//! up when the build is cancelled, and never stalls a runtime worker.
//!
//! - `index.json.lock`, buildctl's lock file, held exclusively while `index.json` is
//!   rewritten: buildctl, buildx and every pf-buildkit process take the same lock.
//! - The layout's root directory itself, held shared by every pf-buildkit build that uses the
//!   store and exclusively (try only, never waited for) by a build that wants to delete blobs:
//!   while another build holds it shared, a blob that build was told exists may be in its
//!   manifests, so nothing is deleted. `flock` locks belong to an open file, so two builds in
//!   one process exclude each other as two processes do.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::LayoutError;

/// How often a wait for a lock tries again.
const POLL: Duration = Duration::from_millis(20);

/// Whether the lock at `path` is still the file `file` (buildctl deletes `index.json.lock`
/// after unlocking, and a rolled-back build may remove an empty root: a lock on a file that
/// no longer has the name excludes nobody).
fn still_named(file: &File, path: &Path) -> io::Result<bool> {
    let locked = file.metadata()?;
    Ok(std::fs::metadata(path)
        .is_ok_and(|now| now.ino() == locked.ino() && now.dev() == locked.dev()))
}

/// Tries `lock` on the file `open` returns until it succeeds on a file that still has the
/// name `path`, `wait` runs out, or `cancelled` says the caller gave up.
fn poll(
    path: &Path,
    wait: Duration,
    cancelled: &dyn Fn() -> bool,
    open: &dyn Fn() -> io::Result<File>,
    lock: fn(&File) -> Result<(), std::fs::TryLockError>,
) -> Result<File, LayoutError> {
    let io = |source| LayoutError::Io {
        path: path.to_owned(),
        source,
    };
    let deadline = Instant::now() + wait;
    loop {
        if cancelled() {
            return Err(LayoutError::Closed {
                path: path.to_owned(),
            });
        }
        let file = open().map_err(io)?;
        match lock(&file) {
            Ok(()) if still_named(&file, path).map_err(io)? => return Ok(file),
            Ok(()) => continue,
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        if Instant::now() >= deadline {
            return Err(LayoutError::LockTimeout {
                path: path.to_owned(),
                waited: wait,
            });
        }
        std::thread::sleep(POLL);
    }
}

/// An exclusive lock on `index.json.lock`, held until dropped.
pub(super) struct IndexLock {
    file: File,
    path: PathBuf,
}

impl IndexLock {
    /// Waits at most `wait` for the lock (blocking the calling thread: call it off the
    /// runtime).
    ///
    /// # Errors
    /// [`LayoutError::LockTimeout`] naming the lock file, [`LayoutError::Closed`] when
    /// `cancelled` turned true meanwhile, [`LayoutError::Io`].
    pub(super) fn acquire(
        path: &Path,
        wait: Duration,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Self, LayoutError> {
        let open = || {
            File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
        };
        let file = poll(path, wait, cancelled, &open, File::try_lock)?;
        Ok(IndexLock {
            file,
            path: path.to_owned(),
        })
    }
}

impl Drop for IndexLock {
    /// Removes the lock file while still holding the lock (buildctl leaves none behind);
    /// a waiter that locked the removed file notices and locks the new one.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = self.file.unlock();
    }
}

/// A lock on a layout's root directory: shared while a build uses the store, exclusive
/// while a build deletes blobs from it. Released when dropped.
#[derive(Debug)]
pub(super) struct RootLock {
    _file: File,
}

impl RootLock {
    /// Waits at most `wait` for a shared lock on `root` (which must exist).
    ///
    /// # Errors
    /// As [`IndexLock::acquire`], naming the root.
    pub(super) fn shared(
        root: &Path,
        wait: Duration,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Self, LayoutError> {
        let open = || File::open(root);
        poll(root, wait, cancelled, &open, File::try_lock_shared).map(|_file| RootLock { _file })
    }

    /// The exclusive lock if nobody else holds the root, shared or exclusive; never waits.
    pub(super) fn try_exclusive(root: &Path) -> Option<Self> {
        let open = || File::open(root);
        poll(root, Duration::ZERO, &|| false, &open, File::try_lock)
            .ok()
            .map(|_file| RootLock { _file })
    }
}
