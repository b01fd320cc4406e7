//! Which snapshotter containerd and buildkitd use: overlayfs where the scratch folder's
//! filesystem takes overlay mounts (ext4, xfs: yes; overlayfs itself, inside a container: no),
//! else the slower native one. Probed once where the data will live.

use std::path::Path;
use std::process::Command;

/// `overlayfs` when an overlay mount works under `dir`, else `native`; `forced` (the
/// `PF_TESTENV_SNAPSHOTTER` setting) wins.
pub fn pick(dir: &Path, forced: Option<&str>) -> String {
    if let Some(s) = forced {
        return s.to_owned();
    }
    let t = dir.join(".overlay-probe");
    let _ = std::fs::remove_dir_all(&t);
    for d in ["lower", "upper", "work", "merged"] {
        if std::fs::create_dir_all(t.join(d)).is_err() {
            return "native".into();
        }
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        t.join("lower").display(),
        t.join("upper").display(),
        t.join("work").display()
    );
    let merged = t.join("merged");
    let ok = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(&merged)
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        let _ = Command::new("umount").arg(&merged).output();
    }
    let _ = std::fs::remove_dir_all(&t);
    if ok {
        "overlayfs".into()
    } else {
        eprintln!(
            "testenv: overlay mounts do not work under {}; using the (slower) native snapshotter",
            dir.display()
        );
        "native".into()
    }
}
