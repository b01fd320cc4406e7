//! `workers`, `info`, `du` and `prune` show the daemon's real data.

use serde_json::Value;

use crate::util::{self, Tier, stderr, stdout};

async fn json(tier: Tier, args: &[&str]) -> Value {
    let out = util::tokio_bin()
        .args(["--addr", &tier.addr()])
        .args(args)
        .args(["--format", "json"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", stdout(&out)))
}

async fn workers_json_has_platforms_and_labels(tier: Tier) {
    let workers = json(tier, &["workers"]).await;
    let workers = workers.as_array().unwrap();
    assert_eq!(workers.len(), 1, "the test daemons run one worker each");
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
    // The worker says which snapshotter it uses; `build` relies on reading it.
    assert!(
        w["labels"]["org.mobyproject.buildkit.worker.snapshotter"].is_string(),
        "{w}"
    );
}

async fn info_reports_the_buildkit_package(tier: Tier) {
    let info = json(tier, &["info"]).await;
    assert!(
        info["package"].as_str().unwrap().contains("buildkit"),
        "{info}"
    );
    let out = util::run(&["--addr", &tier.addr(), "info"]);
    assert!(stdout(&out).starts_with("BuildKit: "), "{}", stdout(&out));
}

fn du_lists_records_with_sizes(tier: Tier) {
    // The cache is held against a full prune, and holds a record this test made.
    let _cache = tier.cache_shared();
    build_unique_layer(tier, UNIQUE_BYTES);
    let records = json_sync(tier, &["du"]);
    let records = records.as_array().unwrap();
    for r in records {
        assert!(!r["id"].as_str().unwrap().is_empty(), "{r}");
        assert!(r["size"].as_i64().unwrap() >= 0, "{r}");
    }
    assert!(
        records
            .iter()
            .any(|r| r["size"].as_i64().unwrap() >= UNIQUE_BYTES as i64),
        "du shows the layer just built, of at least {UNIQUE_BYTES} bytes: {records:?}"
    );
}

/// The size of the layer [`build_unique_layer`] makes.
const UNIQUE_BYTES: usize = 1_000_000;

/// Builds an image whose one layer holds `bytes` bytes no other build has (they depend on the
/// process and the time), so a record of at least that size is certainly in the cache.
fn build_unique_layer(tier: Tier, bytes: usize) {
    let dir = tempfile::tempdir().unwrap();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u32
        ^ std::process::id();
    let unique: Vec<u8> = (0..bytes as u32)
        .map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(dir.path().join("blob"), &unique).unwrap();
    std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\nCOPY blob /\n").unwrap();
    let tar = dir.path().join("out.tar");
    let out = util::bin()
        .args(["--addr", &tier.addr(), "build", "--progress", "quiet"])
        .args(["--context", dir.path().to_str().unwrap()])
        .args(["--output", &format!("type=tar,dest={}", tar.display())])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

/// [`json`] without a runtime, for tests that hold a std lock.
fn json_sync(tier: Tier, args: &[&str]) -> Value {
    let out = util::bin()
        .args(["--addr", &tier.addr()])
        .args(args)
        .args(["--format", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    serde_json::from_str(&stdout(&out)).unwrap()
}

fn prune_all_after_a_build_frees_what_du_reported(tier: Tier) {
    let _cache = tier.cache_exclusive();
    build_unique_layer(tier, UNIQUE_BYTES);

    let before = json_sync(tier, &["du"]);
    let before = before.as_array().unwrap();
    let reclaimable: Vec<&Value> = before.iter().filter(|r| r["in_use"] == false).collect();
    let reclaimable_bytes: i64 = reclaimable
        .iter()
        .map(|r| r["size"].as_i64().unwrap())
        .sum();
    assert!(
        reclaimable_bytes >= UNIQUE_BYTES as i64,
        "du shows the build's layer: {before:?}"
    );

    let freed = json_sync(tier, &["prune", "--all"]);
    let freed = freed.as_array().unwrap();
    let freed_ids: Vec<&str> = freed.iter().map(|r| r["id"].as_str().unwrap()).collect();
    let freed_bytes: i64 = freed.iter().map(|r| r["size"].as_i64().unwrap()).sum();
    assert!(
        freed_bytes >= UNIQUE_BYTES as i64,
        "prune freed {freed_bytes} bytes"
    );

    // Everything du reported as reclaimable is gone, unless a build elsewhere in this run
    // picked it up again in the meantime: then it is in use now, or was during the prune and
    // has been released since (its last use moved on).
    let after = json_sync(tier, &["du"]);
    for record in reclaimable {
        let id = record["id"].as_str().unwrap();
        let still = after.as_array().unwrap().iter().find(|r| r["id"] == id);
        assert!(
            freed_ids.contains(&id)
                || still.is_some_and(|r| {
                    r["in_use"] == true
                        || r["last_used_at"] != record["last_used_at"]
                        || r["usage_count"] != record["usage_count"]
                }),
            "{id} was reclaimable but neither freed nor used since: {record}"
        );
    }
}

tier_tests!(
    async workers_json_has_platforms_and_labels,
    async info_reports_the_buildkit_package,
);
tier_tests!(
    du_lists_records_with_sizes,
    prune_all_after_a_build_frees_what_du_reported
);
