//! A second node, `node-2`, of a test's own on the shared API server: a kubelet port-forward
//! handler started for the test, whose pods' port 1234 reaches the standalone buildkitd through
//! a relay standing for the pod's container. [`PrivateNode::end_containers`] ends that
//! container's connections as a deleted pod's container ends; the shared `node-1` is untouched.

use std::time::Duration;

use serde_json::json;

use super::{RealKube, call, kube_file, must};
use crate::util;
use pf_testenv::kube as plane;

/// How long the handler may take to serve on a loaded machine.
const START_WAIT: Duration = Duration::from_secs(60);

/// The node's name (tests on the shared server take turns, so one name serves them all).
pub const NAME: &str = "node-2";

/// `node-2`'s kubelet handler and its pods' container.
pub struct PrivateNode {
    /// Declared first: the handler ends before its folder goes.
    kubelet: Option<plane::Kubelet>,
    container: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for PrivateNode {
    fn drop(&mut self) {
        self.container.abort();
        drop(self.kubelet.take());
    }
}

impl PrivateNode {
    /// Starts the handler and the container relay, and points `node-2`'s status at them.
    pub async fn start(real: &RealKube) -> PrivateNode {
        let buildkitd = util::Tier::Standalone
            .addr()
            .trim_start_matches("tcp://")
            .to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let container_port = listener.local_addr().unwrap().port();
        let container = tokio::spawn(async move {
            // Connections live in the set: aborting the task ends them all.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let buildkitd = buildkitd.clone();
                connections.spawn(async move {
                    if let Ok(mut daemon) = tokio::net::TcpStream::connect(&buildkitd).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut daemon).await;
                    }
                });
            }
        });

        let parent = std::path::PathBuf::from(util::env("PF_TEST_KUBE_PRIVATE_DIR"));
        std::fs::create_dir_all(&parent).expect("private dir");
        let dir = tempfile::Builder::new()
            .prefix("node-")
            .tempdir_in(&parent)
            .expect("tempdir");
        let bin = std::path::PathBuf::from(util::env("PF_TEST_KUBE_BIN"));
        let credentials = plane::Credentials::at(&kube_file(""));
        let logs = dir.path().to_path_buf();
        let kubelet = tokio::task::spawn_blocking(move || {
            let port = plane::free_port()?;
            let reach = format!("127.0.0.1:{container_port}");
            plane::Kubelet::start(&bin, &credentials, port, &reach, &logs, START_WAIT, false)
        })
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("{e}"));
        let port = kubelet.port();
        let node = PrivateNode {
            kubelet: Some(kubelet),
            container,
            _dir: dir,
        };

        let admin = real.admin();
        // Made once on the shared server, then only its status changes.
        let _ = call(
            admin,
            "POST",
            "/api/v1/nodes",
            Some(("application/json", json!({ "metadata": { "name": NAME } }))),
        )
        .await;
        must(
            admin,
            "PATCH",
            &format!("/api/v1/nodes/{NAME}/status"),
            Some((
                "application/merge-patch+json",
                json!({ "status": {
                    "addresses": [ { "type": "InternalIP", "address": "127.0.0.1" } ],
                    "daemonEndpoints": { "kubeletEndpoint": { "Port": port } } } }),
            )),
        )
        .await;
        node
    }

    /// Ends every connection to the pods' port, as the container of a deleted pod ends.
    pub fn end_containers(&self) {
        self.container.abort();
    }
}
