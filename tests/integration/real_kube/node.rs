//! A second node, `node-2`, of a test's own on the shared API server: a kubelet port-forward
//! handler started for the test, whose pods' port 1234 reaches the standalone buildkitd through
//! a relay standing for the pod's container. [`PrivateNode::end_containers`] ends that
//! container's connections as a deleted pod's container ends; the shared `node-1` is untouched.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::{RealKube, call, kube_file, must};
use crate::util;

/// The node's name (tests on the shared server take turns, so one name serves them all).
pub const NAME: &str = "node-2";

/// `node-2`'s kubelet handler and its pods' container.
pub struct PrivateNode {
    kubelet: Option<Child>,
    container: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for PrivateNode {
    fn drop(&mut self) {
        self.container.abort();
        if let Some(mut child) = self.kubelet.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
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
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let log = std::fs::File::create(dir.path().join("kubelet-portforward.log")).expect("log");
        let kubelet = Command::new(
            std::path::PathBuf::from(util::env("PF_TEST_KUBE_BIN"))
                .join("kubelet-portforward-v1.36.2"),
        )
        .arg("--tls-cert-file")
        .arg(kube_file("pki/kubelet.crt"))
        .arg("--tls-private-key-file")
        .arg(kube_file("pki/kubelet.key"))
        .arg("--client-ca-file")
        .arg(kube_file("pki/ca.crt"))
        .arg(format!("127.0.0.1:{port}"))
        .arg(format!("1234=127.0.0.1:{container_port}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start kubelet-portforward");
        let node = PrivateNode {
            kubelet: Some(kubelet),
            container,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "the private kubelet did not listen"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

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
