//! A control plane of a test's own, for tests that stop or restart the API server or etcd:
//! the sandbox's [`plane::ControlPlane`] with the Kubernetes tier's credentials (so the tests'
//! kubeconfigs trust it and its users' tokens work) on free ports, its folder under
//! `PF_TEST_KUBE_PRIVATE_DIR`. Its node `node-1` is served by the tier's kubelet handler, so
//! pods still reach the standalone buildkitd.

use std::path::PathBuf;
use std::time::Duration;

use crate::util;
use pf_testenv::kube as plane;

pub use plane::Issuer;

/// How long etcd may take to become ready on a loaded machine.
const READY_WAIT: Duration = Duration::from_secs(180);

/// A private etcd and kube-apiserver. Their work runs off the async runtime's threads.
pub struct ControlPlane(Option<plane::ControlPlane>);

impl ControlPlane {
    /// Starts etcd and the API server, waits until it is ready, and seeds it as the tier's is
    /// seeded: node-1 (the tier's kubelet handler), namespace `buildkit` with its service
    /// account, and the fleet's ClusterRole.
    pub async fn start() -> ControlPlane {
        let parent = PathBuf::from(util::env("PF_TEST_KUBE_PRIVATE_DIR"));
        std::fs::create_dir_all(&parent).expect("private dir");
        // A unique name; the plane makes the folder afresh and removes it when dropped.
        let dir = tempfile::Builder::new()
            .prefix("cp-")
            .tempdir_in(&parent)
            .expect("tempdir")
            .keep();
        let port = |name: &str| util::env(name).parse::<u16>().expect("a port number");
        let spec = plane::Spec {
            bin: PathBuf::from(util::env("PF_TEST_KUBE_BIN")),
            logs: dir.clone(),
            dir,
            ports: plane::Ports::free(
                port("PF_TEST_KUBE_KUBELET_PORT"),
                port("PF_TEST_KUBE_WEBHOOK_PORT"),
            )
            .unwrap_or_else(|e| panic!("{e}")),
            credentials_of: Some(PathBuf::from(util::env("PF_TEST_KUBE_DIR"))),
            pods_reach: None,
            timeout: READY_WAIT,
            // Started from a blocking-pool thread, which may end before the plane should.
            die_with_parent: false,
        };
        ControlPlane(Some(
            blocking(move || plane::ControlPlane::start(spec)).await,
        ))
    }

    fn plane(&self) -> &plane::ControlPlane {
        self.0
            .as_ref()
            .expect("the control plane is not mid-restart")
    }

    /// Runs `f` on the plane off the runtime's threads.
    async fn with<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut plane::ControlPlane) -> pf_testenv::Result<T> + Send + 'static,
    ) -> T {
        let mut plane = self.0.take().expect("the control plane is not mid-restart");
        let (plane, out) = blocking(move || {
            let out = f(&mut plane);
            out.map(|out| (plane, out))
        })
        .await;
        self.0 = Some(plane);
        out
    }

    /// `https://127.0.0.1:PORT`.
    pub fn server(&self) -> String {
        self.plane().server()
    }

    /// The API server's audit log.
    pub fn audit_log(&self) -> PathBuf {
        self.plane().audit_log()
    }

    /// Starts etcd (again, on the same data) and waits until it is healthy and, when the API
    /// server runs, until that is ready again.
    pub async fn start_etcd(&mut self) {
        self.with(plane::ControlPlane::start_etcd).await;
    }

    /// Kills etcd (SIGKILL, as a crash).
    pub fn kill_etcd(&mut self) {
        self.0.as_mut().expect("running").kill_etcd();
    }

    /// Starts the API server (again) and waits for `/readyz`.
    pub async fn start_apiserver(&mut self) {
        self.with(plane::ControlPlane::start_apiserver).await;
    }

    /// Kills the API server (SIGKILL: its connections drop without a goodbye).
    pub fn kill_apiserver(&mut self) {
        self.0.as_mut().expect("running").kill_apiserver();
    }

    /// Rotates the API server's serving certificate (see
    /// [`plane::ControlPlane::rotate_serving_certificate`]); returns once it is ready.
    pub async fn rotate_serving_certificate(&mut self, issuer: Issuer) {
        self.with(move |p| p.rotate_serving_certificate(issuer))
            .await;
    }
}

/// Runs `f` on a blocking thread; its error fails the test.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> pf_testenv::Result<T> + Send + 'static,
) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("{e}"))
}
