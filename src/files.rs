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

/// Runs blocking file work on tokio's blocking threads, so a slow disk, a network file system
/// or a lock wait never stalls the runtime's workers. A panic in `work` resumes here.
pub(crate) async fn off_runtime<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(err) => match err.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            // Only a runtime shutting down cancels a blocking task; the caller goes with it.
            Err(_) => std::future::pending().await,
        },
    }
}
