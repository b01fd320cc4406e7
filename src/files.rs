//! General file helpers the library's modules share. Owns nothing of BuildKit, Kubernetes or
//! registries, and imports no other module of the crate, so any of them may use it.

use std::path::Path;

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so
/// readers never see a half-written file and a failure leaves nothing behind.
///
/// # Errors
/// When the directory is not writable or the disk is full.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, bytes)?;
    tmp.persist(path).map(drop).map_err(|e| e.error)
}
