//! What a build may leave behind, measured: descriptors still open under a directory, the
//! runtime's live tasks, and a shared OCI layout's integrity. Used by the cancellation and
//! shared-store tests (issue 16).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The tasks alive in the test's runtime (spawned and not yet ended).
pub fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// The files this process holds open under `root` (from `/proc/self/fd`): other tests of
/// the process open files too, but never under this test's own directory.
pub fn open_under(root: &Path) -> Vec<PathBuf> {
    std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter(|target| target.starts_with(root))
        .collect()
}

/// Checks `check` every 20 ms until it passes, failing the test with its last complaint
/// after `within`. Aborted tasks end, and closed files close, a moment after the drop that
/// ends them: this waits for that, never for a fixed time.
pub async fn settle(within: Duration, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match check() {
            Ok(()) => return,
            Err(complaint) if tokio::time::Instant::now() >= deadline => {
                panic!("after {within:?}: {complaint}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Waits until the runtime's live tasks are back to `baseline` or fewer.
pub async fn tasks_back_to(baseline: usize, what: &str) {
    settle(Duration::from_secs(30), || {
        let alive = alive_tasks();
        if alive <= baseline {
            Ok(())
        } else {
            Err(format!("{what}: {alive} tasks alive, {baseline} before"))
        }
    })
    .await;
}

/// Checks a layout that builds shared: every blob `index.json` reaches is whole (as
/// [`crate::content::verify_layout`] checks it), and nothing else is there: no other blob, no
/// upload, no lock or temporary file. With a `foreign` (containerd-style) writer among them,
/// an empty `ingest/` may stay: containerd's content store makes it and never removes it.
/// Returns the number of blobs verified.
pub fn verify_shared_layout(layout: &Path, foreign: bool) -> usize {
    let reached: BTreeSet<String> = crate::content::verify_layout(layout)
        .iter()
        .map(|desc| desc["digest"].as_str().unwrap().to_owned())
        .collect();
    let top: BTreeSet<String> = std::fs::read_dir(layout)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        // verify_layout checked that it is empty.
        .filter(|name| !(foreign && name == "ingest"))
        .collect();
    let expected: BTreeSet<String> = ["blobs", "index.json", "oci-layout"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        top,
        expected,
        "{} holds more than a layout",
        layout.display()
    );
    let stored: BTreeSet<String> = std::fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .map(|e| format!("sha256:{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    let unreached: Vec<&String> = stored.difference(&reached).collect();
    assert!(
        unreached.is_empty(),
        "blobs nothing reaches were left in {}: {unreached:?}",
        layout.display()
    );
    reached.len()
}
