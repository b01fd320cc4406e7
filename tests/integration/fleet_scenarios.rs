//! Fleet scenarios written once and run on both API servers: the in-process fake
//! (`fleet.rs`) and the real kube-apiserver (`fleet_real.rs`). [`Cluster`] is what a
//! scenario needs from either; each caller adds the checks only its server can make.

use std::path::Path;
use std::process::Output;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::fake_kube::FakeKube;
use crate::real_kube::RealKube;
use crate::util;

/// An API server with a test's cluster on it, as the scenarios see it.
#[allow(async_fn_in_trait)]
pub trait Cluster {
    /// The binary under test, pointed at this cluster.
    fn bin(&self) -> std::process::Command;
    /// A StatefulSet as stored now.
    async fn statefulset(&self, name: &str) -> Value;
    /// Names of the PVCs that exist and are not being deleted.
    async fn pvc_names(&self) -> Vec<String>;
    /// How many port-forwards to `pod` the server upgraded (101) so far.
    fn portforwards_to(&self, pod: &str) -> usize;
    /// Every request the client made named pf-buildkit's User-Agent.
    fn assert_user_agent(&self);
}

impl Cluster for FakeKube {
    fn bin(&self) -> std::process::Command {
        FakeKube::bin(self)
    }
    async fn statefulset(&self, name: &str) -> Value {
        FakeKube::statefulset(self, name)
    }
    async fn pvc_names(&self) -> Vec<String> {
        FakeKube::pvc_names(self)
    }
    fn portforwards_to(&self, pod: &str) -> usize {
        let path = format!("/pods/{pod}/portforward");
        self.requests()
            .iter()
            .filter(|r| r.path.ends_with(&path))
            .count()
    }
    fn assert_user_agent(&self) {
        let requests = self.requests();
        assert!(!requests.is_empty());
        for r in &requests {
            assert_eq!(
                r.user_agent,
                pf_buildkit::USER_AGENT,
                "{} {}",
                r.method,
                r.path
            );
        }
    }
}

impl Cluster for RealKube {
    fn bin(&self) -> std::process::Command {
        RealKube::bin(self)
    }
    async fn statefulset(&self, name: &str) -> Value {
        RealKube::statefulset(self, name).await
    }
    async fn pvc_names(&self) -> Vec<String> {
        RealKube::pvc_names(self).await
    }
    fn portforwards_to(&self, pod: &str) -> usize {
        let path = format!("/pods/{pod}/portforward");
        self.audit()
            .iter()
            .filter(|e| e.uri.contains(&path) && e.code == 101)
            .count()
    }
    fn assert_user_agent(&self) {
        let entries = self.audit();
        assert!(
            !entries.is_empty(),
            "the audit log holds the test's requests"
        );
        for e in &entries {
            assert_eq!(
                e.user_agent,
                pf_buildkit::USER_AGENT,
                "{} {}",
                e.verb,
                e.uri
            );
        }
    }
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The build time a StatefulSet's annotation records, if any.
pub fn annotation(sts: &Value) -> Option<u64> {
    sts["metadata"]["annotations"]["panfactum.com/last-build"]
        .as_str()
        .and_then(|v| v.parse().ok())
}

/// A repository whose buildkit.json names the local registry and the kubeconfig's `fake`
/// context as the cluster.
pub fn cluster_repo(dockerfile: &str, files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join(".git")).unwrap();
    std::fs::create_dir(dir.path().join(".buildkit")).unwrap();
    std::fs::write(
        dir.path().join(".buildkit/buildkit.json"),
        format!(
            "{{\"registry\": \"{}\", \"cluster\": \"fake\"}}",
            util::env("PF_TEST_REGISTRY")
        ),
    )
    .unwrap();
    std::fs::write(dir.path().join("Dockerfile"), dockerfile).unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

/// Runs `cmd` in `dir` off the async runtime's threads.
async fn output_in(mut cmd: std::process::Command, dir: &Path) -> Output {
    cmd.current_dir(dir);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

/// The cluster build: both StatefulSets at zero (and a controller that follows their
/// scale), pods `buildkit-{amd64,arm64}-0` running. The build from buildkit.json scales them
/// up, waits, picks the pods, builds through port-forwards to the real BuildKit, records the
/// builds and pushes one index to the real registry.
pub async fn cluster_build_scales_up_and_builds_over_port_forwards(cluster: &impl Cluster) {
    let dir = cluster_repo(
        "FROM scratch\nARG TARGETARCH\nCOPY hello.txt /hello-${TARGETARCH}.txt\n",
        &[("hello.txt", "hi\n")],
    );
    let repo = util::unique_repo("cluster-build");
    let before = now();
    let mut cmd = cluster.bin();
    cmd.args([
        "build",
        "--progress",
        "plain",
        "--repo",
        &repo,
        "--tag",
        "v1",
        "--insecure-registry",
        "--timeout",
        "60",
    ]);
    let o = output_in(cmd, dir.path()).await;
    let e = util::stderr(&o);
    assert!(o.status.success(), "{e}");
    let digest = util::stdout(&o).trim().to_owned();
    assert_eq!(util::registry_digest(&repo, "v1"), Some(digest));
    for arch in ["amd64", "arm64"] {
        let sts = cluster.statefulset(&format!("buildkit-{arch}")).await;
        assert_eq!(sts["spec"]["replicas"], 1, "{arch} scaled up");
        let stamp = annotation(&sts).expect("build recorded");
        assert!(stamp >= before, "{arch}: {stamp} < {before}");
        assert!(
            e.contains(&format!("{arch}: building on pod buildkit-{arch}-0")),
            "{e}"
        );
        assert!(
            cluster.portforwards_to(&format!("buildkit-{arch}-0")) >= 1,
            "{arch}: built through a port-forward to its pod"
        );
    }
    cluster.assert_user_agent();
}

/// The cluster of [`cache_clear_deletes_only_unmounted_pvcs_and_leaves_a_busy_pod_alone`]:
/// pod `buildkit-amd64-0` runs (its port 1234 is the caller's to connect), and five PVCs of
/// which three are mounted by a pod or claimed by a wanted replica.
pub fn cache_clear_cluster() -> crate::fake_kube::Scenario {
    crate::fake_kube::Scenario::new()
        .statefulset("amd64", 1, 1, None)
        .statefulset("arm64", 1, 0, None)
        .pod("buildkit-amd64-0", "Running", "10.0.0.10", true)
        // mounted by a pod that is not running yet: still in use
        .pod("buildkit-amd64-2", "Pending", "", false)
        .pvc("buildkitd-buildkit-amd64-0")
        .pvc("buildkitd-buildkit-amd64-1")
        .pvc("buildkitd-buildkit-amd64-2")
        // arm64 wants one replica whose pod is not created yet: its claim is kept
        .pvc("buildkitd-buildkit-arm64-0")
        .pvc("buildkitd-buildkit-arm64-1")
}

/// `cache clear` on [`cache_clear_cluster`] while a build runs on `tier`'s daemon (the one
/// behind pod `buildkit-amd64-0`): the unmounted, unwanted claims go, the busy pod is left
/// alone (its build history says a build runs), and nothing is pruned.
pub async fn cache_clear_deletes_only_unmounted_pvcs_and_leaves_a_busy_pod_alone(
    cluster: &impl Cluster,
    tier: util::Tier,
) {
    use pf_buildkit::buildkit::{Client, TlsOptions};
    let daemon = tier.name();
    let client = Client::connect(tier.addr().parse().unwrap(), &TlsOptions::default())
        .await
        .unwrap();
    let build = crate::fleet::start_busy_build(&client).await;

    // The daemon is shared with the other tests: should the busy check ever fail, the prune
    // it lets through is limited to a record that does not exist (and the test fails below).
    let mut cmd = cluster.bin();
    cmd.args([
        "cache",
        "clear",
        "--filter",
        "id==pf-fleet-test-no-such-record",
    ]);
    let o = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    build.abort();
    let e = util::stderr(&o);
    assert!(o.status.success(), "{daemon}: {e}");
    assert_eq!(
        cluster.pvc_names().await,
        [
            "buildkitd-buildkit-amd64-0",
            "buildkitd-buildkit-amd64-2",
            "buildkitd-buildkit-arm64-0"
        ],
        "{e}"
    );
    for line in [
        "Deleted unused PVC: buildkitd-buildkit-amd64-1",
        "Deleted unused PVC: buildkitd-buildkit-arm64-1",
        "PVC in use: buildkitd-buildkit-amd64-2",
    ] {
        assert!(e.contains(line), "{line:?} missing: {e}");
    }
    // Other tests may build on the shared daemon too: at least this one is in progress.
    assert!(
        e.contains("buildkit-amd64-0: skipped: a build is running (")
            && e.contains(" in progress, by build history)"),
        "{daemon} has the history API and lists the running build: {e}"
    );
    assert!(!e.contains("Pruned"), "{e}");
    // The busy check went through a port-forward to that pod; no prune call followed it.
    assert!(cluster.portforwards_to("buildkit-amd64-0") >= 1);
    cluster.assert_user_agent();
}

/// The cluster of [`a_pod_dying_mid_build_fails_in_one_line_and_pushes_no_index`]: both
/// StatefulSets with a replica, pod `buildkit-amd64-0` running (its port 1234 is the
/// caller's to connect).
pub fn pod_dying_cluster() -> crate::fake_kube::Scenario {
    crate::fake_kube::Scenario::new()
        .statefulset("amd64", 1, 1, None)
        .statefulset("arm64", 1, 1, None)
        .pod("buildkit-amd64-0", "Running", "10.0.0.10", true)
}

/// A cluster build on amd64 whose step runs for minutes; once it runs, `die` ends the pod.
/// The build fails within 10 s in one line naming the pod, with exit 1, and pushes nothing.
pub async fn a_pod_dying_mid_build_fails_in_one_line_and_pushes_no_index(
    cluster: &impl Cluster,
    die: impl AsyncFnOnce(),
) {
    use std::process::Stdio;
    use tokio::io::AsyncBufReadExt;

    // A unique marker keeps the step out of the cache.
    let marker = format!("{:?}\n", SystemTime::now());
    let dir = cluster_repo(
        &format!(
            "FROM {}\nCOPY marker /\nRUN sleep 300\n",
            util::env("PF_TEST_BASE_IMAGE")
        ),
        &[("marker", &marker)],
    );
    let repo = util::unique_repo("pod-dies");
    let mut cmd = tokio::process::Command::from(cluster.bin());
    cmd.current_dir(dir.path())
        .args(["build", "--progress", "plain", "--arch", "amd64"])
        .args(["--repo", &repo, "--tag", "v1", "--insecure-registry"])
        .args(["--opt", "force-network-mode=none"])
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        seen.push(line.clone());
        if line.contains("RUN sleep 300") {
            break;
        }
    }
    assert!(
        seen.iter().any(|l| l.contains("RUN sleep 300")),
        "{seen:#?}"
    );
    let died = std::time::Instant::now();
    die().await;
    while let Some(line) = lines.next_line().await.unwrap() {
        seen.push(line);
    }
    let status = child.wait().await.unwrap();
    let took = died.elapsed();
    assert_eq!(status.code(), Some(1), "{seen:#?}");
    assert!(
        took < std::time::Duration::from_secs(10),
        "failed {took:?} after the pod died"
    );
    let last = seen.last().unwrap();
    assert!(
        last.starts_with("pf-buildkit: amd64 (on kube-pod://buildkit-amd64-0?namespace=buildkit"),
        "{last}"
    );
    assert!(
        last.contains(
            ": Solve failed: the daemon went away: the connection closed before the call finished"
        ),
        "{last}"
    );
    assert_eq!(util::registry_digest(&repo, "v1"), None, "no index");
}
