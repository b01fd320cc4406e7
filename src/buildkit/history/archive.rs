//! A build record as one self-contained file, to keep a failed CI build's record as a CI
//! artifact after the daemon (or its pod) is gone: `history export REF -o FILE`, read back by
//! `history logs --file FILE` and `history inspect --file FILE`.
//!
//! # Format (`pf-buildkit-history/v1`)
//!
//! An uncompressed POSIX (ustar) tar holding, in this order:
//!
//! | entry | what it holds |
//! |---|---|
//! | `pf-buildkit-history.json` | `{"format": "pf-buildkit-history/v1", "source": ADDRESS, "record": RECORD, "blobs": [DIGEST, …]}`: the daemon or pod it came from, the record as `history inspect --format json` prints it (`record`), and the digests of the blobs that follow |
//! | `blobs/sha256/HEX` | each blob of the record the daemon still had, named by its digest: the logs (`application/vnd.buildkit.status.v0`: status updates, each a 4-byte little-endian length and a protobuf `moby.buildkit.v1.StatusResponse`), the error (`google.rpc.Status` protobuf, details included) and the attestations (provenance, SBOM: in-toto JSON) |
//!
//! The logs and the error are always there when the record names them; an attachment the
//! daemon no longer holds is left out (its digest is then missing from `blobs`). A reader
//! checks each blob against its digest.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::frames::{FrameError, StatusFrames};
use super::record::{BlobDescriptor, BuildRecord};
use super::{BlobProblem, failure_of, inline_failure, is_sha256};
use crate::buildkit::client::Client;
use crate::buildkit::error::Error;
use crate::buildkit::progress::FailureReport;
use crate::buildkit::progress::SolveStatus;

/// The value of the index's `format`.
pub const FORMAT: &str = "pf-buildkit-history/v1";
/// The index entry's name, first in the archive.
pub const INDEX_ENTRY: &str = "pf-buildkit-history.json";

/// The archive's first entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ArchiveIndex {
    /// [`FORMAT`].
    pub format: String,
    /// The daemon or pod the record came from.
    pub source: String,
    /// The record.
    pub record: BuildRecord,
    /// Digests of the blobs the archive holds.
    pub blobs: Vec<String>,
}

/// Why an archive could not be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    /// The file could not be written or read.
    #[error("{}", path.display())]
    Io {
        /// The archive.
        path: PathBuf,
        /// What the file system said.
        #[source]
        source: std::io::Error,
    },
    /// The daemon could not give a blob.
    #[error(transparent)]
    Daemon(#[from] Error),
    /// The file is not an archive of this format.
    #[error("{} is not a pf-buildkit history archive: {problem}", path.display())]
    NotAnArchive {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A blob in the archive is damaged.
    #[error("{}: blob {digest}: {problem}", path.display())]
    Blob {
        /// The archive.
        path: PathBuf,
        /// The blob's digest.
        digest: String,
        /// What is wrong with it.
        problem: BlobProblem,
    },
}

/// What [`export`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExportSummary {
    /// Blobs written.
    pub blobs: usize,
    /// Attachments the daemon no longer had, left out.
    pub missing: Vec<String>,
    /// The archive's size in bytes.
    pub bytes: u64,
}

/// Writes `record` (from the daemon `client` reaches, named `source` in the index), its
/// logs, error and attachments to `path`. The file appears whole or not at all: it is
/// written beside `path` under a temporary name and renamed at the end, and dropping the
/// future removes it.
///
/// # Errors
/// [`ArchiveError::Io`] when the file cannot be written; [`ArchiveError::Daemon`] when the
/// logs or the error cannot be read, or a blob is not what the record says.
pub async fn export(
    client: &Client,
    record: &BuildRecord,
    source: &str,
    path: &Path,
) -> Result<ExportSummary, ArchiveError> {
    let io = |source| ArchiveError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_owned();
    // Readable as any file the user writes (0666 less the umask), not a temporary file's 0600.
    let staged = crate::files::off_runtime(move || {
        use std::os::unix::fs::PermissionsExt as _;
        tempfile::Builder::new()
            .prefix(".pf-buildkit-history-")
            .permissions(std::fs::Permissions::from_mode(0o666))
            .tempfile_in(dir)
    })
    .await
    .map_err(io)?;
    let mut file = tokio::fs::File::from_std(staged.as_file().try_clone().map_err(io)?);

    // The required blobs first, so a daemon that lost them fails the export before anything
    // else is read; then what attachments it still has.
    let required: Vec<&BlobDescriptor> = record
        .logs
        .iter()
        .chain(record.external_error.iter())
        .collect();
    let mut blobs: Vec<(&BlobDescriptor, Vec<u8>)> = Vec::new();
    let mut missing = Vec::new();
    for attachment in &record.attachments {
        match client.read_blob(&attachment.descriptor).await {
            Ok(bytes) => blobs.push((&attachment.descriptor, bytes)),
            Err(Error::Rpc { status, .. }) if status.code == crate::buildkit::RpcCode::NotFound => {
                missing.push(attachment.descriptor.digest.clone());
            }
            Err(e) => return Err(e.into()),
        }
    }
    let mut digests: Vec<String> = required.iter().map(|b| b.digest.clone()).collect();
    digests.extend(blobs.iter().map(|(b, _)| b.digest.clone()));
    let mut seen = BTreeSet::new();
    digests.retain(|d| seen.insert(d.clone()));
    let index = ArchiveIndex {
        format: FORMAT.to_owned(),
        source: source.to_owned(),
        record: record.clone(),
        blobs: digests,
    };
    let index = serde_json::to_vec_pretty(&index).map_err(|e| io(std::io::Error::other(e)))?;
    let mut written = 0u64;
    written += write_entry_header(&mut file, INDEX_ENTRY, index.len() as u64)
        .await
        .map_err(io)?;
    file.write_all(&index).await.map_err(io)?;
    written += index.len() as u64 + pad(&mut file, index.len() as u64).await.map_err(io)?;

    let mut done = BTreeSet::new();
    for blob in required {
        if !done.insert(blob.digest.clone()) {
            continue;
        }
        let size = u64::try_from(blob.size).unwrap_or(0);
        written += write_entry_header(&mut file, &blob_entry(&blob.digest), size)
            .await
            .map_err(io)?;
        // Streamed: a logs blob can be large; the reader checks size and digest at the end.
        let mut reader = client.open_blob(blob).await?;
        while let Some(chunk) = reader.next_chunk().await? {
            file.write_all(&chunk).await.map_err(io)?;
        }
        written += size + pad(&mut file, size).await.map_err(io)?;
    }
    for (blob, bytes) in &blobs {
        if !done.insert(blob.digest.clone()) {
            continue;
        }
        let size = bytes.len() as u64;
        written += write_entry_header(&mut file, &blob_entry(&blob.digest), size)
            .await
            .map_err(io)?;
        file.write_all(bytes).await.map_err(io)?;
        written += size + pad(&mut file, size).await.map_err(io)?;
    }
    // The end of a tar: two empty blocks.
    file.write_all(&[0u8; 1024]).await.map_err(io)?;
    written += 1024;
    file.flush().await.map_err(io)?;
    file.sync_all().await.map_err(io)?;
    drop(file);
    let target = path.to_owned();
    crate::files::off_runtime(move || staged.persist(target).map(drop).map_err(|e| e.error))
        .await
        .map_err(io)?;
    Ok(ExportSummary {
        blobs: done.len(),
        missing,
        bytes: written,
    })
}

/// The entry name of a blob: `blobs/sha256/HEX`.
fn blob_entry(digest: &str) -> String {
    format!("blobs/{}", digest.replacen(':', "/", 1))
}

async fn write_entry_header(
    file: &mut tokio::fs::File,
    name: &str,
    size: u64,
) -> std::io::Result<u64> {
    let mut header = tar::Header::new_ustar();
    header.set_path(name)?;
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    file.write_all(header.as_bytes()).await?;
    Ok(512)
}

/// Pads an entry of `size` bytes to the tar block size; returns the padding written.
async fn pad(file: &mut tokio::fs::File, size: u64) -> std::io::Result<u64> {
    let rest = (512 - size % 512) % 512;
    // `rest` is below 512.
    file.write_all(&[0u8; 512][..rest as usize]).await?;
    Ok(rest)
}

/// An archive [`export`] wrote, opened for reading. Reading is blocking file work: call it
/// off an async runtime's workers (`spawn_blocking`).
#[derive(Debug, Clone)]
pub struct HistoryArchive {
    path: PathBuf,
    /// Its index: the record and where it came from.
    pub index: ArchiveIndex,
}

impl HistoryArchive {
    /// Opens `path` and reads its index.
    ///
    /// # Errors
    /// [`ArchiveError::Io`] when it cannot be read; [`ArchiveError::NotAnArchive`] when it is
    /// not an archive of this format.
    pub fn open(path: &Path) -> Result<HistoryArchive, ArchiveError> {
        let not = |problem: String| ArchiveError::NotAnArchive {
            path: path.to_owned(),
            problem,
        };
        let file = std::fs::File::open(path).map_err(|source| ArchiveError::Io {
            path: path.to_owned(),
            source,
        })?;
        let mut archive = tar::Archive::new(std::io::BufReader::new(file));
        let mut entries = archive.entries().map_err(|e| not(e.to_string()))?;
        let mut first = entries
            .next()
            .ok_or_else(|| not("it is empty".to_owned()))?
            .map_err(|e| not(e.to_string()))?;
        let name = first.path().map_err(|e| not(e.to_string()))?.into_owned();
        if name != Path::new(INDEX_ENTRY) {
            return Err(not(format!(
                "its first entry is {}, not {INDEX_ENTRY}",
                name.display()
            )));
        }
        // The index is small; a huge one is not ours.
        if first.size() > 64 << 20 {
            return Err(not(format!("its {INDEX_ENTRY} is {} bytes", first.size())));
        }
        let mut text = Vec::new();
        first
            .read_to_end(&mut text)
            .map_err(|e| not(e.to_string()))?;
        let index: ArchiveIndex =
            serde_json::from_slice(&text).map_err(|e| not(format!("{INDEX_ENTRY}: {e}")))?;
        if index.format != FORMAT {
            return Err(not(format!(
                "its format is {:?}, this pf-buildkit reads {FORMAT:?}",
                index.format
            )));
        }
        Ok(HistoryArchive {
            path: path.to_owned(),
            index,
        })
    }

    /// The record.
    pub fn record(&self) -> &BuildRecord {
        &self.index.record
    }

    /// Feeds the record's status updates to `each`, in order, reading the logs blob in
    /// chunks; checks its digest at the end.
    ///
    /// # Errors
    /// When the archive holds no logs, or they are damaged.
    pub fn logs(&self, mut each: impl FnMut(SolveStatus)) -> Result<(), ArchiveError> {
        let blob = self.required(self.record().logs.as_ref(), "logs")?;
        let mut frames = StatusFrames::new();
        let damaged = |problem: FrameError| self.damaged(&blob.digest, problem.into());
        self.read_blob(blob, |chunk| {
            frames.push(chunk);
            while let Some(status) = frames.next_status().map_err(damaged)? {
                each(SolveStatus::from_proto(status));
            }
            Ok(())
        })?;
        frames.finish().map_err(damaged)
    }

    /// The build's failure with its Dockerfile lines, from the error blob; `None` when it did
    /// not fail.
    ///
    /// # Errors
    /// When the error blob is missing or damaged.
    pub fn failure(&self) -> Result<Option<FailureReport>, ArchiveError> {
        let Some(error) = &self.record().error else {
            return Ok(None);
        };
        let Some(blob) = &self.record().external_error else {
            return Ok(Some(inline_failure(error)));
        };
        let mut bytes = Vec::new();
        self.read_blob(blob, |chunk| {
            bytes.extend_from_slice(chunk);
            Ok(())
        })?;
        failure_of(&error.message, &bytes)
            .map(Some)
            .map_err(|problem| self.damaged(&blob.digest, problem))
    }

    fn required<'a>(
        &self,
        blob: Option<&'a BlobDescriptor>,
        what: &'static str,
    ) -> Result<&'a BlobDescriptor, ArchiveError> {
        blob.ok_or_else(|| ArchiveError::Blob {
            path: self.path.clone(),
            digest: String::new(),
            problem: BlobProblem::Missing(what),
        })
    }

    fn damaged(&self, digest: &str, problem: BlobProblem) -> ArchiveError {
        ArchiveError::Blob {
            path: self.path.clone(),
            digest: digest.to_owned(),
            problem,
        }
    }

    /// Reads the entry of `blob` in chunks, checking its size and digest.
    fn read_blob(
        &self,
        blob: &BlobDescriptor,
        mut each: impl FnMut(&[u8]) -> Result<(), ArchiveError>,
    ) -> Result<(), ArchiveError> {
        if !is_sha256(&blob.digest) {
            return Err(self.damaged(&blob.digest, BlobProblem::Algorithm));
        }
        let io = |source| ArchiveError::Io {
            path: self.path.clone(),
            source,
        };
        let file = std::fs::File::open(&self.path).map_err(io)?;
        let mut archive = tar::Archive::new(std::io::BufReader::new(file));
        let wanted = blob_entry(&blob.digest);
        for entry in archive.entries().map_err(io)? {
            let mut entry = entry.map_err(io)?;
            if entry.path().map_err(io)?.as_ref() != Path::new(&wanted) {
                continue;
            }
            let expected = u64::try_from(blob.size).unwrap_or(0);
            if entry.size() != expected {
                return Err(self.damaged(
                    &blob.digest,
                    BlobProblem::Size {
                        expected,
                        got: entry.size(),
                    },
                ));
            }
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = entry.read(&mut buf).map_err(io)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                each(&buf[..n])?;
            }
            let got = format!("sha256:{:x}", hasher.finalize());
            if got != blob.digest {
                return Err(self.damaged(&blob.digest, BlobProblem::Digest { got }));
            }
            return Ok(());
        }
        Err(self.damaged(&blob.digest, BlobProblem::Missing("blob in the archive")))
    }
}
