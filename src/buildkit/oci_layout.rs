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
//! - Everything a store creates is remembered, so a failed build can take it all back and
//!   leave the directory as it found it ([`LayoutStore::rollback`]).
//!
//! Border: plain file-system code; it uses only the id generator (`random`), and must not import
//! the session services, `registry`, `fleet` or anything above `buildkit`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

/// The annotation holding a manifest's tag (or reference name) in `index.json`.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// containerd's annotation holding the full image name in `index.json`.
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";

/// A problem with an OCI layout directory. Each names the directory.
#[derive(Debug, thiserror::Error)]
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

/// One OCI layout directory serving as a content store.
#[derive(Debug)]
pub struct LayoutStore {
    root: PathBuf,
    writable: bool,
    /// Files and directories this store created, oldest first: what [`Self::rollback`]
    /// removes.
    created: Mutex<Vec<PathBuf>>,
    /// The first write failure, kept so the build can report the path rather than the
    /// daemon's rewording of it.
    failure: Mutex<Option<LayoutError>>,
}

impl LayoutStore {
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
        Ok(LayoutStore {
            root: root.to_owned(),
            writable: true,
            created: Mutex::new(Vec::new()),
            failure: Mutex::new(None),
        })
    }

    /// A store the daemon may only read (a cache source or an `--oci-layout` input): the
    /// directory must be a layout already.
    ///
    /// # Errors
    /// [`LayoutError::NotADirectory`] or [`LayoutError::NotALayout`].
    pub fn for_reading(root: &Path) -> Result<Self, LayoutError> {
        let store = LayoutStore {
            root: root.to_owned(),
            writable: false,
            created: Mutex::new(Vec::new()),
            failure: Mutex::new(None),
        };
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

    /// The layout's root directory, as the store was opened with.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the daemon may write to it.
    pub fn is_writable(&self) -> bool {
        self.writable
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
    /// already (the uploader then skips it); [`LayoutError::Io`].
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
        if let Some(expected) = expected
            && self.blob_path(expected)?.is_file()
        {
            return Err(LayoutError::AlreadyExists {
                path: self.root.clone(),
                digest: expected.to_owned(),
            });
        }
        let ingest_dir = self.root.join("ingest");
        self.create_dirs(&ingest_dir)?;
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
        self.remember(&path);
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
    /// [`LayoutError::Mismatch`] (the ingest is deleted); [`LayoutError::Io`].
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
        file.sync_all().map_err(|e| {
            self.note_failure(LayoutError::Io {
                path: path.clone(),
                source: e,
            })
        })?;
        let target = self.blob_path(&digest)?;
        if let Some(dir) = target.parent() {
            self.create_dirs(dir)?;
        }
        if target.is_file() {
            let _ = std::fs::remove_file(path);
            self.forget(path);
            return Ok(digest);
        }
        std::fs::rename(path, &target).map_err(|e| {
            let _ = std::fs::remove_file(path);
            self.note_failure(LayoutError::Io {
                path: target.clone(),
                source: e,
            })
        })?;
        self.forget(path);
        self.remember(&target);
        Ok(digest)
    }

    /// Drops an upload.
    pub fn abort(&self, ingest: Ingest) {
        let _ = std::fs::remove_file(&ingest.path);
        self.forget(&ingest.path);
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

    /// Removes every file and directory this store created (blobs, ingests, directories),
    /// newest first: a failed build leaves the layout as it found it.
    pub fn rollback(&self) {
        let Ok(mut created) = self.created.lock() else {
            return;
        };
        for path in created.drain(..).rev() {
            if path.is_dir() {
                // Only if empty: another build may have put files there meanwhile.
                let _ = std::fs::remove_dir(&path);
            } else {
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    fn remember(&self, path: &Path) {
        if let Ok(mut created) = self.created.lock() {
            created.push(path.to_owned());
        }
    }

    fn forget(&self, path: &Path) {
        if let Ok(mut created) = self.created.lock() {
            created.retain(|p| p != path);
        }
    }

    /// `create_dir_all`, remembering each directory it made.
    fn create_dirs(&self, dir: &Path) -> Result<(), LayoutError> {
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
                Ok(()) => self.remember(&d),
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
    /// exclusive lock on `index.json.lock` meanwhile and replaces `index.json` by `rename`,
    /// so readers see the old or the new index, never a mix.
    ///
    /// # Errors
    /// [`LayoutError::Io`] (the old `index.json` is then untouched);
    /// [`LayoutError::NotALayout`] when the existing `index.json` is unreadable.
    pub fn put_index(&self, descriptor: &Value, names: &[IndexName]) -> Result<(), LayoutError> {
        self.create_dirs(&self.root)?;
        let _lock = IndexLock::acquire(&self.root.join("index.json.lock"))?;
        let layout_path = self.root.join("oci-layout");
        if !layout_path.is_file() {
            write_atomically(&layout_path, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
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
        write_atomically(&index_path, &data)
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

/// An exclusive `flock` on `index.json.lock`, held until dropped. buildctl deletes the lock
/// file after unlocking, so after locking we check the path still names the file we
/// locked, and lock again if it does not.
struct IndexLock {
    file: File,
    path: PathBuf,
}

impl Drop for IndexLock {
    /// Removes the lock file while still holding the lock (buildctl leaves none behind);
    /// a waiter that locked the removed file notices and locks the new one.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = self.file.unlock();
    }
}

impl IndexLock {
    fn acquire(path: &Path) -> Result<Self, LayoutError> {
        use std::os::unix::fs::MetadataExt;
        loop {
            let file = File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map_err(io_error(path))?;
            file.lock().map_err(io_error(path))?;
            let locked = file.metadata().map_err(io_error(path))?;
            match std::fs::metadata(path) {
                Ok(now) if now.ino() == locked.ino() && now.dev() == locked.dev() => {
                    return Ok(IndexLock {
                        file,
                        path: path.to_owned(),
                    });
                }
                _ => continue,
            }
        }
    }
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
