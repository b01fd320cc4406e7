//! OCI image-layout directories on the client, used as content stores the daemon reads from
//! and writes to over the session: local cache directories (`--export-cache type=local`,
//! `--import-cache type=local`), `--output type=oci,tar=false`, and `--oci-layout` inputs.
//!
//! The layout is the one buildctl keeps: `oci-layout`, `index.json`, `blobs/<alg>/<hex>`, and
//! `ingest/` for uploads in progress.
//!
//! - An upload goes to its own file under `ingest/` and becomes a blob only by `rename` after
//!   its size and digest are checked, so a reader never sees a partial blob and two builds
//!   writing the same blob at once both end with the same, whole file.
//! - `index.json` is rewritten whole (temporary file, then `rename`) under an exclusive lock
//!   on `index.json.lock`, the lock file buildctl uses, so concurrent builds (ours or
//!   buildctl's) never lose each other's entries.
//! - Everything a store creates is remembered, so a build that ends without its result can
//!   take it back ([`LayoutStore::rollback`]), without deleting a blob another build sharing
//!   the directory relies on (`collect`'s rule; `locks` has the two locks).
//!
//! Border: plain file-system code; it uses only the id generator (`random`), and must not import
//! the session services, `registry`, `fleet` or anything above `buildkit`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use locks::{IndexLock, RootLock};

mod collect;
mod locks;

/// The annotation holding a manifest's tag (or reference name) in `index.json`.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// containerd's annotation holding the full image name in `index.json`.
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";

/// A problem with an OCI layout directory. Each names the directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutError {
    /// The path exists but is a file (or something else that is not a directory).
    #[error("{} is not a directory", path.display())]
    NotADirectory {
        /// The path as the caller gave it for the layout's root.
        path: PathBuf,
    },
    /// The layout's `index.json` is not JSON.
    #[error("{} is not an OCI layout: its index.json is not JSON", path.display())]
    IndexNotJson {
        /// The layout's root directory.
        path: PathBuf,
        /// The JSON parser's error (shared, so that the error can be duplicated).
        #[source]
        source: std::sync::Arc<serde_json::Error>,
    },
    /// The directory holds no readable `index.json`.
    #[error("{} is not an OCI layout: {reason}", path.display())]
    NotALayout {
        /// The layout's root directory.
        path: PathBuf,
        /// What is missing or malformed, in words, e.g. "the directory does not exist".
        reason: String,
    },
    /// No entry of `index.json` has this tag or name.
    #[error("OCI layout {} has no tag {tag:?} in its index.json", path.display())]
    TagNotFound {
        /// The layout's root directory.
        path: PathBuf,
        /// The tag (or reference name) as asked for, matched against `index.json`'s ref-name
        /// annotations.
        tag: String,
    },
    /// The blob is not in the layout.
    #[error("OCI layout {} has no blob {digest}", path.display())]
    BlobNotFound {
        /// The layout's root directory.
        path: PathBuf,
        /// The digest as asked for, `ALG:HEX`.
        digest: String,
    },
    /// A digest that is not `sha256:<64 hex>` (or `sha512:<128 hex>`).
    #[error("invalid digest {0:?}")]
    InvalidDigest(String),
    /// The blob is already stored (an upload of it is not needed).
    #[error("blob {digest} already exists in {}", path.display())]
    AlreadyExists {
        /// The layout's root directory.
        path: PathBuf,
        /// The digest of the blob already there, `ALG:HEX`.
        digest: String,
    },
    /// The store was offered for reading only.
    #[error("OCI layout {} is read-only for this build", path.display())]
    ReadOnly {
        /// The layout's root directory.
        path: PathBuf,
    },
    /// An upload did not match the size or digest it was announced with.
    #[error("upload to {} rejected: {reason}", path.display())]
    Mismatch {
        /// The layout's root directory.
        path: PathBuf,
        /// What differed: the announced and the received size or digest, in words.
        reason: String,
    },
    /// A lock the store needs was held by someone else for longer than the store waits.
    #[error(
        "waited {}s for the lock {} (another build, buildctl or buildx holds it)",
        waited.as_secs(),
        path.display()
    )]
    LockTimeout {
        /// The lock: `index.json.lock`, or the layout's root while a build deletes from it.
        path: PathBuf,
        /// How long the store waited.
        waited: std::time::Duration,
    },
    /// The build using the store ended (cancelled, failed or finished): no more writes.
    #[error("the build writing to {} has ended", path.display())]
    Closed {
        /// The layout's root directory (or the lock that was being waited for).
        path: PathBuf,
    },
    /// A file operation failed (the OS error is the source).
    #[error("{}", path.display())]
    Io {
        /// The exact file or directory the operation was on (a blob, an ingest file, `index.json`,
        /// or the lock file).
        path: PathBuf,
        /// The OS error from that operation.
        source: std::io::Error,
    },
}

impl LayoutError {
    /// A copy of this error (`io::Error` is not `Clone`: an I/O cause keeps its kind, its OS
    /// code when it has one, and its text).
    fn duplicate(&self) -> LayoutError {
        match self {
            LayoutError::NotADirectory { path } => {
                LayoutError::NotADirectory { path: path.clone() }
            }
            LayoutError::NotALayout { path, reason } => LayoutError::NotALayout {
                path: path.clone(),
                reason: reason.clone(),
            },
            LayoutError::IndexNotJson { path, source } => LayoutError::IndexNotJson {
                path: path.clone(),
                source: source.clone(),
            },
            LayoutError::TagNotFound { path, tag } => LayoutError::TagNotFound {
                path: path.clone(),
                tag: tag.clone(),
            },
            LayoutError::BlobNotFound { path, digest } => LayoutError::BlobNotFound {
                path: path.clone(),
                digest: digest.clone(),
            },
            LayoutError::InvalidDigest(d) => LayoutError::InvalidDigest(d.clone()),
            LayoutError::AlreadyExists { path, digest } => LayoutError::AlreadyExists {
                path: path.clone(),
                digest: digest.clone(),
            },
            LayoutError::ReadOnly { path } => LayoutError::ReadOnly { path: path.clone() },
            LayoutError::Mismatch { path, reason } => LayoutError::Mismatch {
                path: path.clone(),
                reason: reason.clone(),
            },
            LayoutError::LockTimeout { path, waited } => LayoutError::LockTimeout {
                path: path.clone(),
                waited: *waited,
            },
            LayoutError::Closed { path } => LayoutError::Closed { path: path.clone() },
            LayoutError::Io { path, source } => LayoutError::Io {
                path: path.clone(),
                source: match source.raw_os_error() {
                    Some(code) => std::io::Error::from_raw_os_error(code),
                    None => std::io::Error::new(source.kind(), source.to_string()),
                },
            },
        }
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> LayoutError + '_ {
    move |source| LayoutError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Splits `alg:hex` after checking it, so a digest can never name a path outside `blobs/`.
pub fn parse_digest(digest: &str) -> Result<(&str, &str), LayoutError> {
    let invalid = || LayoutError::InvalidDigest(digest.to_owned());
    let (alg, hex) = digest.split_once(':').ok_or_else(invalid)?;
    let len = match alg {
        "sha256" => 64,
        "sha512" => 128,
        _ => return Err(invalid()),
    };
    if hex.len() != len
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(invalid());
    }
    Ok((alg, hex))
}

/// How an `index.json` entry is named: buildctl's `Name` (an image name: both annotations)
/// or `Tag` (only the reference-name annotation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexName {
    /// A full image name such as `registry/app:v1`.
    Name(String),
    /// A bare tag such as `latest`.
    Tag(String),
}

/// An upload in progress: its own file under `ingest/`, hashed as it is written.
#[derive(Debug)]
pub struct Ingest {
    file: File,
    path: PathBuf,
    hasher: Sha256,
    /// Bytes written so far.
    pub offset: u64,
    /// When the upload began.
    pub started: SystemTime,
    /// When data last arrived.
    pub updated: SystemTime,
    /// The size announced (0: unknown).
    pub total: u64,
    /// The digest announced, if any.
    pub expected: Option<String>,
}

impl Ingest {
    /// Appends data.
    ///
    /// # Errors
    /// [`LayoutError::Io`] naming the ingest file (a full disk shows here).
    pub fn write(&mut self, data: &[u8]) -> Result<(), LayoutError> {
        self.file.write_all(data).map_err(io_error(&self.path))?;
        self.hasher.update(data);
        self.offset += data.len() as u64;
        self.updated = SystemTime::now();
        Ok(())
    }

    /// Drops what was written so far (a writer restarting at offset 0).
    ///
    /// # Errors
    /// [`LayoutError::Io`] naming the ingest file.
    pub fn restart(&mut self) -> Result<(), LayoutError> {
        self.file.set_len(0).map_err(io_error(&self.path))?;
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(io_error(&self.path))?;
        self.hasher = Sha256::new();
        self.offset = 0;
        Ok(())
    }

    /// The sha256 digest of what was written so far.
    pub fn digest(&self) -> String {
        format!("sha256:{:x}", self.hasher.clone().finalize())
    }
}

/// How long a store waits for a lock (`index.json.lock`, or the root while another build
/// deletes from it) before giving up with [`LayoutError::LockTimeout`], unless set with
/// [`LayoutStore::with_lock_wait`].
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// One OCI layout directory serving as a content store.
///
/// A writable store is one build's view of a directory that other builds (in this process
/// or others, pf-buildkit's or buildctl's) may share. From its first write until the build
/// ends it holds a shared lock on the root directory. It ends in one of two ways:
/// [`Self::release`] after success keeps what it wrote; [`Self::rollback`] takes back what
/// it wrote and did not record in `index.json`. A blob is deleted only while no other
/// pf-buildkit build holds the root (it may have been told that blob exists); otherwise its
/// name goes to a list in the layout, and the last build to leave deletes what is still
/// unreachable from `index.json`.
#[derive(Debug)]
pub struct LayoutStore {
    root: PathBuf,
    writable: bool,
    lock_wait: std::time::Duration,
    /// Set when the build ends, before [`Self::writes`] is locked: a lock wait in progress
    /// gives up at its next try instead of holding the ending back.
    ended: AtomicBool,
    writes: Mutex<Writes>,
    /// The first write failure, kept so the build can report the path rather than the
    /// daemon's rewording of it.
    failure: Mutex<Option<LayoutError>>,
}

/// What a writable store did to its directory, changed only under [`LayoutStore::writes`].
#[derive(Debug, Default)]
struct Writes {
    /// Files and directories this store created, oldest first: what a rollback takes back.
    created: Vec<PathBuf>,
    /// The shared lock on the root, from the first write on.
    in_use: Option<RootLock>,
    /// `index.json` holds this build's entry: the store's result is in place for good.
    committed: bool,
    /// Released or rolled back: every further write fails.
    ended: bool,
}

impl LayoutStore {
    fn new(root: &Path, writable: bool) -> Self {
        LayoutStore {
            root: root.to_owned(),
            writable,
            lock_wait: LOCK_WAIT,
            ended: AtomicBool::new(false),
            writes: Mutex::new(Writes::default()),
            failure: Mutex::new(None),
        }
    }

    /// A store the daemon may write to (a cache or output destination). Nothing is created
    /// until the first upload.
    ///
    /// # Errors
    /// [`LayoutError::NotADirectory`] when `root` exists and is not a directory.
    pub fn for_writing(root: &Path) -> Result<Self, LayoutError> {
        if root.exists() && !root.is_dir() {
            return Err(LayoutError::NotADirectory {
                path: root.to_owned(),
            });
        }
        Ok(Self::new(root, true))
    }

    /// A store the daemon may only read (a cache source or an `--oci-layout` input): the
    /// directory must be a layout already.
    ///
    /// # Errors
    /// [`LayoutError::NotADirectory`] or [`LayoutError::NotALayout`].
    pub fn for_reading(root: &Path) -> Result<Self, LayoutError> {
        let store = Self::new(root, false);
        if !root.is_dir() {
            if root.exists() {
                return Err(LayoutError::NotADirectory {
                    path: root.to_owned(),
                });
            }
            return Err(LayoutError::NotALayout {
                path: root.to_owned(),
                reason: "the directory does not exist".into(),
            });
        }
        store.read_index()?;
        Ok(store)
    }

    /// The same store waiting at most `wait` for a lock (default [`LOCK_WAIT`]).
    #[must_use]
    pub fn with_lock_wait(mut self, wait: std::time::Duration) -> Self {
        self.lock_wait = wait;
        self
    }

    /// The layout's root directory, as the store was opened with.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the daemon may write to it.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    fn writes(&self) -> MutexGuard<'_, Writes> {
        // A panic elsewhere leaves the list as it was: still the truth about the directory.
        self.writes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn closed(&self) -> LayoutError {
        LayoutError::Closed {
            path: self.root.clone(),
        }
    }

    /// The store's write state, with the root created and locked shared: from here on no
    /// other build deletes a blob this one sees.
    ///
    /// # Errors
    /// [`LayoutError::Closed`] once the build ended; lock and creation errors.
    fn enter(&self) -> Result<MutexGuard<'_, Writes>, LayoutError> {
        let mut writes = self.writes();
        if writes.ended {
            return Err(self.closed());
        }
        if writes.in_use.is_none() {
            self.create_dirs(&mut writes, &self.root)?;
            let ended = || self.ended.load(Ordering::Acquire);
            let lock = RootLock::shared(&self.root, self.lock_wait, &ended)?;
            writes.in_use = Some(lock);
        }
        Ok(writes)
    }

    /// Enters a writable store whose root exists, before telling the daemon what it holds.
    fn enter_if_present(&self) -> Result<(), LayoutError> {
        if self.writable && self.root.is_dir() {
            drop(self.enter()?);
        }
        Ok(())
    }

    /// Where a blob lives.
    ///
    /// # Errors
    /// [`LayoutError::InvalidDigest`].
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, LayoutError> {
        let (alg, hex) = parse_digest(digest)?;
        Ok(self.root.join("blobs").join(alg).join(hex))
    }

    /// A committed blob's size and modification time.
    ///
    /// # Errors
    /// [`LayoutError::BlobNotFound`], [`LayoutError::InvalidDigest`], [`LayoutError::Io`].
    pub fn info(&self, digest: &str) -> Result<(u64, SystemTime), LayoutError> {
        let path = self.blob_path(digest)?;
        self.enter_if_present()?;
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => Ok((
                meta.len(),
                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            )),
            Ok(_) => Err(self.not_found(digest)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(self.not_found(digest)),
            Err(e) => Err(LayoutError::Io { path, source: e }),
        }
    }

    fn not_found(&self, digest: &str) -> LayoutError {
        LayoutError::BlobNotFound {
            path: self.root.clone(),
            digest: digest.to_owned(),
        }
    }

    /// Opens a committed blob for reading.
    ///
    /// # Errors
    /// As [`Self::info`].
    pub fn open_blob(&self, digest: &str) -> Result<File, LayoutError> {
        let path = self.blob_path(digest)?;
        File::open(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                self.not_found(digest)
            } else {
                LayoutError::Io { path, source: e }
            }
        })
    }

    /// Every committed blob: digest and size.
    ///
    /// # Errors
    /// [`LayoutError::Io`] when `blobs/` cannot be listed.
    pub fn list(&self) -> Result<Vec<(String, u64)>, LayoutError> {
        self.enter_if_present()?;
        let mut out = Vec::new();
        for alg in ["sha256", "sha512"] {
            let dir = self.root.join("blobs").join(alg);
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(LayoutError::Io {
                        path: dir,
                        source: e,
                    });
                }
            };
            for entry in entries.flatten() {
                let digest = format!("{alg}:{}", entry.file_name().to_string_lossy());
                if parse_digest(&digest).is_err() {
                    continue;
                }
                if let Ok(meta) = entry.metadata()
                    && meta.is_file()
                {
                    out.push((digest, meta.len()));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Starts an upload.
    ///
    /// # Errors
    /// [`LayoutError::ReadOnly`]; [`LayoutError::AlreadyExists`] when `expected` is stored
    /// already (the uploader then skips it); [`LayoutError::Closed`] once the build ended;
    /// [`LayoutError::Io`].
    pub fn begin_upload(
        &self,
        reference: &str,
        expected: Option<&str>,
        total: u64,
    ) -> Result<Ingest, LayoutError> {
        if !self.writable {
            return Err(LayoutError::ReadOnly {
                path: self.root.clone(),
            });
        }
        let mut writes = self.enter()?;
        if let Some(expected) = expected
            && self.blob_path(expected)?.is_file()
        {
            return Err(LayoutError::AlreadyExists {
                path: self.root.clone(),
                digest: expected.to_owned(),
            });
        }
        let ingest_dir = self.root.join("ingest");
        self.create_dirs(&mut writes, &ingest_dir)?;
        // One file per upload: two uploads of one ref (two builds, or a retry) never share
        // a file, so neither can corrupt the other.
        let tag: String = Sha256::digest(reference.as_bytes())[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let suffix: String = super::random::random_id()[..10].to_owned();
        let path = ingest_dir.join(format!("{tag}-{suffix}"));
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| {
                self.note_failure(LayoutError::Io {
                    path: path.clone(),
                    source: e,
                })
            })?;
        writes.created.push(path.clone());
        let now = SystemTime::now();
        Ok(Ingest {
            file,
            path,
            hasher: Sha256::new(),
            offset: 0,
            started: now,
            updated: now,
            total,
            expected: expected.map(str::to_owned),
        })
    }

    /// Checks an upload against its announced size and digest and moves it into `blobs/`.
    /// Returns the blob's digest. An upload whose blob appeared meanwhile (another build)
    /// is dropped and counts as done.
    ///
    /// # Errors
    /// [`LayoutError::Mismatch`] (the ingest is deleted); [`LayoutError::Closed`] once the
    /// build ended (likewise); [`LayoutError::Io`].
    pub fn commit(
        &self,
        ingest: Ingest,
        total: u64,
        expected: Option<&str>,
    ) -> Result<String, LayoutError> {
        let Ingest {
            file, path, offset, ..
        } = &ingest;
        let digest = ingest.digest();
        let mismatch = |reason: String| {
            let _ = std::fs::remove_file(path);
            LayoutError::Mismatch {
                path: self.root.clone(),
                reason,
            }
        };
        if total > 0 && *offset != total {
            return Err(mismatch(format!("got {offset} bytes, expected {total}")));
        }
        if let Some(expected) = expected
            && expected != digest
        {
            if parse_digest(expected).is_ok_and(|(alg, _)| alg != "sha256") {
                return Err(mismatch(format!(
                    "cannot verify {expected}: only sha256 is supported"
                )));
            }
            return Err(mismatch(format!(
                "content is {digest}, expected {expected}"
            )));
        }
        // Outside the write lock: the slow part, and it changes nothing anyone else sees.
        file.sync_all().map_err(|e| {
            self.note_failure(LayoutError::Io {
                path: path.clone(),
                source: e,
            })
        })?;
        let target = self.blob_path(&digest)?;
        // The rename happens under the write lock, so a rollback either sees the blob in the
        // list or makes the rename fail: a blob never appears after its build ended.
        let mut writes = match self.enter() {
            Ok(writes) => writes,
            Err(e) => {
                let _ = std::fs::remove_file(path);
                return Err(e);
            }
        };
        writes.created.retain(|p| p != path);
        if let Some(dir) = target.parent() {
            self.create_dirs(&mut writes, dir)?;
        }
        if target.is_file() {
            let _ = std::fs::remove_file(path);
            return Ok(digest);
        }
        std::fs::rename(path, &target).map_err(|e| {
            let _ = std::fs::remove_file(path);
            self.note_failure(LayoutError::Io {
                path: target.clone(),
                source: e,
            })
        })?;
        writes.created.push(target);
        Ok(digest)
    }

    /// Drops an upload.
    pub fn abort(&self, ingest: Ingest) {
        let _ = std::fs::remove_file(&ingest.path);
        self.writes().created.retain(|p| p != &ingest.path);
    }

    /// Records a write failure the daemon was told about, so the build can name the path.
    /// The daemon is told `err`'s words; the store keeps a copy of the first failure, typed.
    pub fn note_failure(&self, err: LayoutError) -> LayoutError {
        if let Ok(mut slot) = self.failure.lock()
            && slot.is_none()
        {
            *slot = Some(err.duplicate());
        }
        err
    }

    /// Takes the first write failure, if any (a second call returns `None`).
    pub fn take_failure(&self) -> Option<LayoutError> {
        self.failure.lock().ok().and_then(|mut f| f.take())
    }

    /// Ends the build's use of the store and takes back what it wrote: its uploads in
    /// progress at once, its blobs and directories when no other build uses the store (else
    /// the last build to leave does it). Once `index.json` holds the build's entry, the store
    /// is kept as [`Self::release`] keeps it. Every later write fails; a second call does
    /// nothing. Never waits for a lock.
    pub fn rollback(&self) {
        self.end(false);
    }

    /// Ends the build's use of the store and keeps what it wrote; when no other build uses
    /// the store, deletes what rolled-back builds left for the last one to leave. Never
    /// waits for a lock. A read-only store has nothing to release.
    pub fn release(&self) {
        self.end(true);
    }

    fn end(&self, keep: bool) {
        self.ended.store(true, Ordering::Release);
        let mut writes = self.writes();
        if writes.ended {
            return;
        }
        writes.ended = true;
        let created = std::mem::take(&mut writes.created);
        let Some(in_use) = writes.in_use.take() else {
            // Never written to: nothing of ours is there.
            return;
        };
        let keep = keep || writes.committed;
        drop(writes);
        drop(in_use);
        let ingest = self.root.join("ingest");
        let mut ours = Vec::new();
        for path in created {
            if path.parent() == Some(ingest.as_path()) {
                // Nobody else knows an ingest file's name.
                let _ = std::fs::remove_file(&path);
            } else if !keep {
                ours.push(path);
            }
        }
        match RootLock::try_exclusive(&self.root) {
            Some(_alone) => collect::collect(self, &ours),
            None => collect::abandon(self, &ours),
        }
    }

    /// `create_dir_all`, remembering each directory it made.
    fn create_dirs(&self, writes: &mut Writes, dir: &Path) -> Result<(), LayoutError> {
        let mut missing = Vec::new();
        let mut cursor = Some(dir);
        while let Some(d) = cursor {
            if d.as_os_str().is_empty() || d.exists() {
                break;
            }
            missing.push(d.to_owned());
            cursor = d.parent();
        }
        for d in missing.into_iter().rev() {
            match std::fs::create_dir(&d) {
                Ok(()) => writes.created.push(d),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && d.is_dir() => {}
                Err(e) => {
                    return Err(self.note_failure(LayoutError::Io { path: d, source: e }));
                }
            }
        }
        Ok(())
    }

    /// Reads `index.json`.
    ///
    /// # Errors
    /// [`LayoutError::NotALayout`] when it is missing or is not an image index,
    /// [`LayoutError::IndexNotJson`] when it is not JSON.
    pub fn read_index(&self) -> Result<Map<String, Value>, LayoutError> {
        let path = self.root.join("index.json");
        let not_layout = |reason: String| LayoutError::NotALayout {
            path: self.root.clone(),
            reason,
        };
        let data = std::fs::read(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                not_layout("it has no index.json".into())
            } else {
                LayoutError::Io {
                    path: path.clone(),
                    source: e,
                }
            }
        })?;
        let index: Value =
            serde_json::from_slice(&data).map_err(|e| LayoutError::IndexNotJson {
                path: self.root.clone(),
                source: std::sync::Arc::new(e),
            })?;
        match index {
            Value::Object(map) if map.get("manifests").is_none_or(Value::is_array) => Ok(map),
            _ => Err(not_layout("index.json is not an image index".into())),
        }
    }

    /// The `index.json` entry for a tag or image name (image names first, as buildctl
    /// looks them up).
    ///
    /// # Errors
    /// [`LayoutError::TagNotFound`]; errors of [`Self::read_index`].
    pub fn resolve(&self, tag: &str) -> Result<Value, LayoutError> {
        let index = self.read_index()?;
        let manifests = index
            .get("manifests")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let annotation = |m: &Value, key: &str| {
            m.get("annotations")
                .and_then(|a| a.get(key))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        [ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME]
            .iter()
            .find_map(|key| {
                manifests
                    .iter()
                    .find(|m| annotation(m, key).as_deref() == Some(tag))
                    .cloned()
            })
            .ok_or_else(|| LayoutError::TagNotFound {
                path: self.root.clone(),
                tag: tag.to_owned(),
            })
    }

    /// Adds `descriptor` to `index.json` under each name, replacing entries with the same
    /// name and keeping all others (buildctl's rule), and writes `oci-layout`. Holds an
    /// exclusive lock on `index.json.lock` meanwhile (waiting for it at most the store's
    /// lock wait, polling: call this off the async runtime) and replaces `index.json` by
    /// `rename`, so readers see the old or the new index, never a mix. Once it returns, the
    /// entry stays: a later [`Self::rollback`] keeps it and the blobs it reaches.
    ///
    /// # Errors
    /// [`LayoutError::LockTimeout`] naming the lock file; [`LayoutError::Closed`] when the
    /// build ended while waiting; [`LayoutError::Io`] (the old `index.json` is then
    /// untouched); [`LayoutError::NotALayout`] when the existing `index.json` is unreadable.
    pub fn put_index(&self, descriptor: &Value, names: &[IndexName]) -> Result<(), LayoutError> {
        drop(self.enter()?);
        let ended = || self.ended.load(Ordering::Acquire);
        let _lock = IndexLock::acquire(&self.root.join("index.json.lock"), self.lock_wait, &ended)?;
        // The commit point: under the write lock, so a rollback comes wholly before it
        // (nothing written) or wholly after it (everything kept).
        let mut writes = self.enter()?;
        let layout_path = self.root.join("oci-layout");
        if !layout_path.is_file() {
            write_atomically(&layout_path, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
            writes.created.push(layout_path);
        }
        let index_path = self.root.join("index.json");
        let mut index = if index_path.exists() {
            self.read_index()?
        } else {
            Map::new()
        };
        index
            .entry("schemaVersion")
            .or_insert_with(|| Value::from(2));
        index
            .entry("mediaType")
            .or_insert_with(|| Value::from("application/vnd.oci.image.index.v1+json"));
        let mut manifests = match index.remove("manifests") {
            Some(Value::Array(m)) => m,
            _ => Vec::new(),
        };
        if names.is_empty() {
            manifests.push(descriptor.clone());
        }
        for name in names {
            insert_named(&mut manifests, descriptor, name);
        }
        index.insert("manifests".into(), Value::Array(manifests));
        let data = serde_json::to_vec(&Value::Object(index)).map_err(|e| LayoutError::Io {
            path: index_path.clone(),
            source: std::io::Error::other(e),
        })?;
        write_atomically(&index_path, &data)?;
        writes.committed = true;
        Ok(())
    }
}

/// buildctl's rule for one name: drop entries with the same reference name and image name,
/// then append the descriptor annotated with the name.
fn insert_named(manifests: &mut Vec<Value>, descriptor: &Value, name: &IndexName) {
    let (image_name, ref_name) = match name {
        IndexName::Tag(tag) => (String::new(), tag.clone()),
        IndexName::Name(name) => (name.clone(), reference_object(name)),
    };
    let annotation = |m: &Value, key: &str| -> String {
        m.get("annotations")
            .and_then(|a| a.get(key))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    manifests.retain(|m| {
        annotation(m, ANNOTATION_REF_NAME) != ref_name
            || annotation(m, ANNOTATION_IMAGE_NAME) != image_name
    });
    let mut entry = descriptor.clone();
    if let Value::Object(map) = &mut entry {
        let annotations = map
            .entry("annotations")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(a) = annotations {
            if !image_name.is_empty() {
                a.insert(ANNOTATION_IMAGE_NAME.into(), Value::from(image_name));
            }
            a.insert(ANNOTATION_REF_NAME.into(), Value::from(ref_name));
        }
    }
    manifests.push(entry);
}

/// The reference name buildctl records for an image name: containerd's "object" (the tag
/// and/or digest after the repository) when the name starts with a host, else the name as
/// given.
fn reference_object(name: &str) -> String {
    let Some((host, path)) = name.split_once('/') else {
        // A bare `repo:tag` has no host part: containerd cannot parse it and the whole
        // name is used; a bare `repo` parses as a host with no object.
        return if name.contains(':') || name.contains('@') {
            name.to_owned()
        } else {
            String::new()
        };
    };
    if let Some((_, port)) = host.rsplit_once(':')
        && !port.bytes().all(|b| b.is_ascii_digit())
    {
        return name.to_owned();
    }
    match path.find([':', '@']) {
        Some(i) => path[i..].strip_prefix(':').unwrap_or(&path[i..]).to_owned(),
        None => String::new(),
    }
}

/// Writes a file by writing a temporary sibling, syncing it, and renaming it over the
/// target. On failure the target is untouched and the temporary file removed.
fn write_atomically(path: &Path, data: &[u8]) -> Result<(), LayoutError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let suffix: String = super::random::random_id()[..10].to_owned();
    let tmp = path.with_file_name(format!(".{name}.{suffix}.tmp"));
    let result = (|| {
        let mut file = File::options().write(true).create_new(true).open(&tmp)?;
        file.write_all(data)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        LayoutError::Io {
            path: path.to_owned(),
            source: e,
        }
    })
}

/// Reads a blob from a store into memory: for small JSON documents only (manifests,
/// indexes), never layers.
///
/// # Errors
/// As [`LayoutStore::open_blob`], or [`LayoutError::Mismatch`] for a blob over `limit`.
pub fn read_small_blob(
    store: &LayoutStore,
    digest: &str,
    limit: u64,
) -> Result<Vec<u8>, LayoutError> {
    let file = store.open_blob(digest)?;
    let mut data = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut data)
        .map_err(io_error(&store.blob_path(digest)?))?;
    if data.len() as u64 > limit {
        return Err(LayoutError::Mismatch {
            path: store.root().to_owned(),
            reason: format!("blob {digest} is larger than {limit} bytes"),
        });
    }
    Ok(data)
}

/// The entries of `index.json` by their reference-name annotation: name -> digest.
pub fn index_names(index: &Map<String, Value>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for m in index
        .get("manifests")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let digest = m.get("digest").and_then(Value::as_str).unwrap_or_default();
        let name = m
            .get("annotations")
            .and_then(|a| a.get(ANNOTATION_REF_NAME))
            .and_then(Value::as_str)
            .unwrap_or_default();
        out.insert(name.to_owned(), digest.to_owned());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(data: &[u8]) -> String {
        format!("sha256:{:x}", Sha256::digest(data))
    }

    #[test]
    fn digests_cannot_escape_blobs() {
        for bad in [
            "sha256:../../etc/passwd",
            "md5:abcd",
            "sha256:ABCDEF",
            "sha256",
            &format!("sha256:{}", "g".repeat(64)),
        ] {
            assert!(parse_digest(bad).is_err(), "{bad}");
        }
        assert!(parse_digest(&sha(b"x")).is_ok());
    }

    #[test]
    fn upload_commits_only_verified_content() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cache");
        let store = LayoutStore::for_writing(&root).unwrap();
        assert!(!root.exists(), "nothing is created before an upload");

        let mut up = store.begin_upload("r1", Some(&sha(b"hello")), 5).unwrap();
        up.write(b"hel").unwrap();
        up.write(b"lo").unwrap();
        let digest = store.commit(up, 5, Some(&sha(b"hello"))).unwrap();
        assert_eq!(digest, sha(b"hello"));
        assert_eq!(
            std::fs::read(store.blob_path(&digest).unwrap()).unwrap(),
            b"hello"
        );
        assert_eq!(store.info(&digest).unwrap().0, 5);
        assert!(matches!(
            store.begin_upload("r2", Some(&digest), 5),
            Err(LayoutError::AlreadyExists { .. })
        ));

        let mut bad = store.begin_upload("r3", None, 0).unwrap();
        bad.write(b"other").unwrap();
        let err = store.commit(bad, 0, Some(&sha(b"wrong"))).unwrap_err();
        assert!(matches!(err, LayoutError::Mismatch { .. }), "{err}");
        let mut short = store.begin_upload("r4", None, 0).unwrap();
        short.write(b"ab").unwrap();
        assert!(store.commit(short, 3, None).is_err());
        assert_eq!(
            std::fs::read_dir(root.join("ingest")).unwrap().count(),
            0,
            "rejected uploads leave no ingest files"
        );
        assert_eq!(store.list().unwrap(), vec![(digest, 5)]);
    }

    #[test]
    fn rollback_restores_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("layout");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("keep"), b"k").unwrap();
        let store = LayoutStore::for_writing(&root).unwrap();
        let mut up = store.begin_upload("r", None, 0).unwrap();
        up.write(b"data").unwrap();
        store.commit(up, 4, None).unwrap();
        let _pending = store.begin_upload("p", None, 0).unwrap();
        store.rollback();
        let left: Vec<_> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("keep")]);
    }

    /// Uploads `data` as a committed blob of `store`.
    fn put_blob(store: &LayoutStore, data: &[u8]) -> String {
        let mut up = store.begin_upload("r", None, 0).unwrap();
        up.write(data).unwrap();
        store.commit(up, data.len() as u64, None).unwrap()
    }

    /// Every file under `root`, relative, sorted.
    fn tree(root: &Path) -> Vec<String> {
        fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                out.push(path.strip_prefix(root).unwrap().display().to_string());
                if path.is_dir() {
                    walk(&path, root, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(root, root, &mut out);
        out.sort();
        out
    }

    #[test]
    fn a_blob_another_build_was_told_exists_outlives_the_rollback() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cache");
        let a = LayoutStore::for_writing(&root).unwrap();
        let b = LayoutStore::for_writing(&root).unwrap();
        let shared = put_blob(&a, b"shared layer");
        let own = put_blob(&a, b"a's own layer");
        // B is told the shared blob exists, so its daemon will not upload it.
        assert!(matches!(
            b.begin_upload("r", Some(&shared), 12),
            Err(LayoutError::AlreadyExists { .. })
        ));
        a.rollback();
        assert!(b.info(&shared).is_ok(), "A deleted a blob B relies on");
        assert!(
            matches!(
                a.begin_upload("r", None, 0),
                Err(LayoutError::Closed { .. })
            ),
            "a rolled-back store takes no more writes"
        );
        let descriptor = serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": shared,
            "size": 12,
        });
        b.put_index(&descriptor, &[IndexName::Tag("latest".into())])
            .unwrap();
        b.release();
        // B was the last to leave: what A abandoned and nothing reaches is gone.
        assert!(!a.blob_path(&own).unwrap().exists());
        assert_eq!(
            tree(&root),
            vec![
                "blobs".to_owned(),
                "blobs/sha256".into(),
                format!("blobs/sha256/{}", &shared[7..]),
                "index.json".into(),
                "oci-layout".into(),
            ]
        );
    }

    #[test]
    fn the_last_of_two_failed_builds_restores_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("layout");
        let a = LayoutStore::for_writing(&root).unwrap();
        let b = LayoutStore::for_writing(&root).unwrap();
        put_blob(&a, b"one");
        put_blob(&b, b"two");
        let _pending = b.begin_upload("p", None, 0).unwrap();
        a.rollback();
        assert!(root.join(".pf-buildkit-abandoned").is_file());
        b.rollback();
        assert!(!root.exists(), "left: {:?}", tree(&root));
    }

    /// buildctl rewrites index.json in place: a build leaving while it does reads a torn
    /// file. It deletes nothing then, and the next build to leave alone collects it all.
    #[test]
    fn a_torn_index_defers_the_collection() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("layout");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(
            root.join("index.json"),
            br#"{"schemaVersion":2,"manifests":[]}"#,
        )
        .unwrap();
        let a = LayoutStore::for_writing(&root).unwrap();
        let own = put_blob(&a, b"a's own layer");
        std::fs::write(root.join("index.json"), br#"{"schemaVersion":2,"manif"#).unwrap();
        a.rollback();
        assert!(
            a.blob_path(&own).unwrap().is_file(),
            "deleted on a torn index"
        );
        assert!(root.join(".pf-buildkit-abandoned").is_file());

        std::fs::write(
            root.join("index.json"),
            br#"{"schemaVersion":2,"manifests":[]}"#,
        )
        .unwrap();
        let b = LayoutStore::for_writing(&root).unwrap();
        put_blob(&b, b"b's own layer");
        b.rollback();
        assert_eq!(tree(&root), vec!["index.json".to_owned()]);
    }

    #[test]
    fn a_held_index_lock_times_out_naming_the_lock_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = LayoutStore::for_writing(dir.path())
            .unwrap()
            .with_lock_wait(std::time::Duration::from_millis(200));
        let lock_path = dir.path().join("index.json.lock");
        let holder = File::create(&lock_path).unwrap();
        holder.lock().unwrap();
        let descriptor = serde_json::json!({"digest": sha(b"x"), "size": 1});
        let err = store
            .put_index(&descriptor, &[IndexName::Tag("t".into())])
            .unwrap_err();
        let LayoutError::LockTimeout { path, .. } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(path, &lock_path);
        assert!(err.to_string().contains("index.json.lock"), "{err}");
        assert!(!dir.path().join("index.json").exists());
    }

    #[test]
    fn ending_the_build_stops_a_lock_wait_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(LayoutStore::for_writing(dir.path()).unwrap());
        let holder = File::create(dir.path().join("index.json.lock")).unwrap();
        holder.lock().unwrap();
        let waiter = std::thread::spawn({
            let store = store.clone();
            move || {
                let descriptor = serde_json::json!({"digest": sha(b"x"), "size": 1});
                store.put_index(&descriptor, &[IndexName::Tag("t".into())])
            }
        });
        // The waiter has entered the store (created its root lock) before the rollback.
        while store.writes().in_use.is_none() {
            std::thread::yield_now();
        }
        let started = std::time::Instant::now();
        store.rollback();
        let err = waiter.join().unwrap().unwrap_err();
        assert!(matches!(err, LayoutError::Closed { .. }), "{err:?}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert!(!dir.path().join("index.json").exists());
        assert!(!dir.path().join("oci-layout").exists());
    }

    #[test]
    fn a_recorded_result_survives_a_later_rollback() {
        let dir = tempfile::tempdir().unwrap();
        let store = LayoutStore::for_writing(dir.path()).unwrap();
        let digest = put_blob(&store, b"manifest");
        let descriptor = serde_json::json!({"digest": digest, "size": 8});
        store
            .put_index(&descriptor, &[IndexName::Tag("t".into())])
            .unwrap();
        store.rollback();
        assert!(store.blob_path(&digest).unwrap().is_file());
        assert_eq!(index_names(&store.read_index().unwrap())["t"], digest);
        // Empty, and kept as buildctl keeps it (its content store needs it once opened).
        assert_eq!(
            std::fs::read_dir(dir.path().join("ingest"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn index_keeps_other_entries_and_replaces_same_names() {
        let dir = tempfile::tempdir().unwrap();
        let store = LayoutStore::for_writing(dir.path()).unwrap();
        let desc = |d: &[u8]| serde_json::json!({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": sha(d), "size": 1});
        store
            .put_index(&desc(b"a"), &[IndexName::Tag("latest".into())])
            .unwrap();
        store
            .put_index(&desc(b"b"), &[IndexName::Tag("v1".into())])
            .unwrap();
        store
            .put_index(&desc(b"c"), &[IndexName::Tag("latest".into())])
            .unwrap();
        store
            .put_index(
                &desc(b"d"),
                &[IndexName::Name("127.0.0.1:5000/app:v2".into())],
            )
            .unwrap();
        let index = store.read_index().unwrap();
        assert_eq!(index["schemaVersion"], 2);
        let names = index_names(&index);
        assert_eq!(names["latest"], sha(b"c"));
        assert_eq!(names["v1"], sha(b"b"));
        assert_eq!(names["v2"], sha(b"d"));
        assert_eq!(index["manifests"].as_array().unwrap().len(), 3);
        assert_eq!(
            store.resolve("127.0.0.1:5000/app:v2").unwrap()["digest"],
            sha(b"d")
        );
        assert_eq!(store.resolve("v1").unwrap()["digest"], sha(b"b"));
        assert!(matches!(
            store.resolve("nope"),
            Err(LayoutError::TagNotFound { .. })
        ));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("oci-layout")).unwrap(),
            r#"{"imageLayoutVersion":"1.0.0"}"#
        );
        assert!(LayoutStore::for_reading(dir.path()).is_ok());
    }

    #[test]
    fn concurrent_index_updates_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let root = root.clone();
                std::thread::spawn(move || {
                    let store = LayoutStore::for_writing(&root).unwrap();
                    let desc = serde_json::json!({"digest": sha(&[i]), "size": 1});
                    store
                        .put_index(&desc, &[IndexName::Tag(format!("t{i}"))])
                        .unwrap();
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let store = LayoutStore::for_reading(&root).unwrap();
        assert_eq!(index_names(&store.read_index().unwrap()).len(), 8);
    }

    #[test]
    fn an_index_that_is_not_json_keeps_the_parsers_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("index.json"), b"{\"manifests\": [").unwrap();
        let err = LayoutStore::for_reading(dir.path())
            .and_then(|store| store.read_index().map(drop))
            .unwrap_err();
        assert!(matches!(err, LayoutError::IndexNotJson { .. }), "{err:?}");
        let source = std::error::Error::source(&err).expect("a source");
        let json = source
            .downcast_ref::<std::sync::Arc<serde_json::Error>>()
            .expect("the JSON parser's error");
        assert!(json.is_eof(), "{json}");
        // A duplicate (the store keeps its first failure) still has the parser's error.
        let again = err.duplicate();
        assert!(std::error::Error::source(&again).is_some());
    }

    #[test]
    fn reading_needs_a_layout() {
        let dir = tempfile::tempdir().unwrap();
        let err = LayoutStore::for_reading(dir.path()).unwrap_err();
        assert!(err.to_string().contains("is not an OCI layout"), "{err}");
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(
            LayoutStore::for_reading(&file),
            Err(LayoutError::NotADirectory { .. })
        ));
        assert!(matches!(
            LayoutStore::for_writing(&file),
            Err(LayoutError::NotADirectory { .. })
        ));
    }

    #[test]
    fn reference_names_follow_containerd() {
        assert_eq!(reference_object("127.0.0.1:5000/app:v2"), "v2");
        assert_eq!(reference_object("docker.io/library/app:v1"), "v1");
        assert_eq!(reference_object("app:v1"), "app:v1");
        assert_eq!(reference_object("app"), "");
        assert_eq!(reference_object("reg/app"), "");
    }
}
