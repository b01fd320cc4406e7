//! `workers`, `info`, `du` and `prune` show the daemon's real data.

use serde_json::Value;

use crate::util::{self, stderr, stdout};

async fn json(args: &[&str]) -> Value {
    let out = util::tokio_bin()
        .args(["--addr", &util::docker_addr()])
        .args(args)
        .args(["--format", "json"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", stdout(&out)))
}

#[tokio::test]
async fn workers_json_has_platforms_and_labels() {
    let workers = json(&["workers"]).await;
    let workers = workers.as_array().unwrap();
    assert_eq!(workers.len(), 1, "the Engine runs one worker");
    let w = &workers[0];
    assert!(!w["id"].as_str().unwrap().is_empty());
    let platforms: Vec<&str> = w["platforms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(
        platforms.iter().all(|p| p.starts_with("linux/")),
        "{platforms:?}"
    );
    // The Engine's worker says which snapshotter it uses; `build` relies on reading it.
    assert!(
        w["labels"]["org.mobyproject.buildkit.worker.snapshotter"].is_string(),
        "{w}"
    );
}

#[tokio::test]
async fn info_reports_the_buildkit_package() {
    let info = json(&["info"]).await;
    assert!(
        info["package"].as_str().unwrap().contains("buildkit"),
        "{info}"
    );
    let out = util::run(&["--addr", &util::docker_addr(), "info"]);
    assert!(stdout(&out).starts_with("BuildKit: "), "{}", stdout(&out));
}

#[tokio::test]
async fn du_lists_records_with_sizes() {
    let records = json(&["du"]).await;
    for r in records.as_array().unwrap() {
        assert!(!r["id"].as_str().unwrap().is_empty());
        assert!(r["size"].as_i64().unwrap() >= 0);
    }
}
