//! A control plane of a test's own, for tests that stop or restart the API server or etcd:
//! etcd and kube-apiserver from the testenv's binaries, with its certificates, tokens and
//! command line (`apiserver.flags`), on free ports, data and audit log in a folder under
//! `PF_TEST_KUBE_PRIVATE_DIR` (which `scripts/testenv stop` cleans of leftovers). Its node
//! `node-1` is served by the shared kubelet handler, so pods still reach the standalone
//! buildkitd.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::{admin_client, admin_client_trusting, call, kube_file, must};
use crate::util;

/// How long etcd or the API server may take to become ready on a loaded machine.
const READY_WAIT: Duration = Duration::from_secs(180);

/// A private etcd and kube-apiserver.
pub struct ControlPlane {
    dir: tempfile::TempDir,
    etcd_port: u16,
    peer_port: u16,
    api_port: u16,
    etcd: Option<Child>,
    apiserver: Option<Child>,
    /// The serving certificate, key and issuing CA (DER) when not the testenv's.
    serving: Option<(PathBuf, PathBuf, Vec<u8>)>,
}

/// Who signs the API server's next serving certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Issuer {
    /// The testenv's CA, which the kubeconfigs trust.
    TestenvCa,
    /// A CA of its own, which nothing trusts.
    OtherCa,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for child in [self.apiserver.take(), self.etcd.take()]
            .into_iter()
            .flatten()
        {
            stop(child);
        }
    }
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn binary(name: &str) -> PathBuf {
    PathBuf::from(util::env("PF_TEST_KUBE_BIN")).join(name)
}

fn log_file(dir: &Path, name: &str) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))
        .expect("log file")
}

impl ControlPlane {
    /// Starts etcd and the API server, waits until it is ready, and seeds it as the testenv
    /// seeds the shared one: node-1 (the shared kubelet handler), namespace `buildkit` with
    /// its service account, and the fleet's ClusterRole (copied from the shared server).
    pub async fn start() -> ControlPlane {
        let parent = PathBuf::from(util::env("PF_TEST_KUBE_PRIVATE_DIR"));
        std::fs::create_dir_all(&parent).expect("private dir");
        let dir = tempfile::Builder::new()
            .prefix("cp-")
            .tempdir_in(&parent)
            .expect("tempdir");
        let mut cp = ControlPlane {
            dir,
            etcd_port: free_port(),
            peer_port: free_port(),
            api_port: free_port(),
            etcd: None,
            apiserver: None,
            serving: None,
        };
        cp.start_etcd().await;
        cp.start_apiserver().await;
        cp.seed().await;
        cp
    }

    /// `https://127.0.0.1:PORT`.
    pub fn server(&self) -> String {
        format!("https://127.0.0.1:{}", self.api_port)
    }

    /// The API server's audit log.
    pub fn audit_log(&self) -> PathBuf {
        self.dir.path().join("audit.log")
    }

    /// Starts etcd (again, on the same data) and waits until it is healthy and, when the API
    /// server runs, until that is ready again (it reconnects to etcd in its own time).
    pub async fn start_etcd(&mut self) {
        let d = self.dir.path();
        let child = Command::new(binary("etcd-v3.5.30"))
            .args([
                "--data-dir",
                &d.join("etcd").display().to_string(),
                "--name",
                "default",
            ])
            .arg(format!(
                "--listen-client-urls=http://127.0.0.1:{}",
                self.etcd_port
            ))
            .arg(format!(
                "--advertise-client-urls=http://127.0.0.1:{}",
                self.etcd_port
            ))
            .arg(format!(
                "--listen-peer-urls=http://127.0.0.1:{}",
                self.peer_port
            ))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{}",
                self.peer_port
            ))
            .arg(format!(
                "--initial-cluster=default=http://127.0.0.1:{}",
                self.peer_port
            ))
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log_file(d, "etcd"))
            .stderr(log_file(d, "etcd"))
            .spawn()
            .expect("start etcd");
        self.etcd = Some(child);
        let http = util::http_client(false);
        let url = format!("http://127.0.0.1:{}/health", self.etcd_port);
        let deadline = Instant::now() + READY_WAIT;
        loop {
            if let Ok(r) = http.get(&url).send().await
                && r.text()
                    .await
                    .is_ok_and(|t| t.contains("\"health\":\"true\""))
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not become healthy; see {}",
                d.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if self.apiserver.is_some() {
            self.wait_ready().await;
        }
    }

    /// Kills etcd (SIGKILL, as a crash).
    pub fn kill_etcd(&mut self) {
        if let Some(child) = self.etcd.take() {
            stop(child);
        }
    }

    /// Starts the API server (again) with the testenv's command line and waits for `/readyz`.
    pub async fn start_apiserver(&mut self) {
        let d = self.dir.path();
        let flags = std::fs::read_to_string(kube_file("apiserver.flags")).expect("apiserver.flags");
        let args: Vec<String> = flags
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                l.replace("@PORT@", &self.api_port.to_string())
                    .replace("@ETCD_PORT@", &self.etcd_port.to_string())
                    .replace("@AUDIT_LOG@", &self.audit_log().display().to_string())
            })
            .map(|l| match &self.serving {
                Some((cert, _, _)) if l.starts_with("--tls-cert-file=") => {
                    format!("--tls-cert-file={}", cert.display())
                }
                Some((_, key, _)) if l.starts_with("--tls-private-key-file=") => {
                    format!("--tls-private-key-file={}", key.display())
                }
                _ => l,
            })
            .collect();
        let child = Command::new(binary("kube-apiserver-v1.36.2"))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log_file(d, "kube-apiserver"))
            .stderr(log_file(d, "kube-apiserver"))
            .spawn()
            .expect("start kube-apiserver");
        self.apiserver = Some(child);
        self.wait_ready().await;
    }

    /// Waits until the API server answers `/readyz` with `ok` (etcd reachable included).
    async fn wait_ready(&self) {
        let d = self.dir.path();
        let admin = match &self.serving {
            Some((_, _, ca)) => admin_client_trusting(&self.server(), ca.clone()),
            None => admin_client(&self.server()).await,
        };
        let deadline = Instant::now() + READY_WAIT;
        loop {
            let req = http::Request::get("/readyz")
                .body(Vec::new())
                .expect("request");
            if admin.request_text(req).await.is_ok_and(|t| t == "ok") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver did not become ready; see {}",
                d.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Rotates the API server's serving certificate: a new key and certificate for 127.0.0.1
    /// signed by `issuer`, then a restart (the API server would also reload the files within
    /// a minute; a restart makes it happen now). Returns once it is ready.
    pub async fn rotate_serving_certificate(&mut self, issuer: Issuer) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        // The issuer as a signer sees it: its name (scripts/testenv's CA is
        // CN=pf-testenv-kube-ca) and its key.
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let (name, ca_key) = match issuer {
            Issuer::TestenvCa => {
                let pem = std::fs::read_to_string(kube_file("pki/ca.key")).expect("CA key");
                (
                    "pf-testenv-kube-ca",
                    KeyPair::from_pem(&pem).expect("CA key"),
                )
            }
            Issuer::OtherCa => ("pf-test-other-ca", KeyPair::generate().expect("key")),
        };
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let ca_cert = ca_params.clone().self_signed(&ca_key).expect("CA cert");
        let ca = rcgen::Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().expect("key");
        let params = CertificateParams::new(vec![
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
            "kubernetes.default.svc".to_owned(),
        ])
        .expect("params");
        let cert = params.signed_by(&key, &ca).expect("sign");
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos();
        let cert_path = self.dir.path().join(format!("apiserver-{n}.crt"));
        let key_path = self.dir.path().join(format!("apiserver-{n}.key"));
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        // With the testenv's CA, its own certificate is what clients already trust (the
        // re-signed copy has the same key and name).
        let trusted = match issuer {
            Issuer::TestenvCa => super::pem_der(&kube_file("pki/ca.crt")),
            Issuer::OtherCa => ca_cert.der().to_vec(),
        };
        self.serving = Some((cert_path, key_path, trusted));
        self.kill_apiserver();
        self.start_apiserver().await;
    }

    /// Kills the API server (SIGKILL: its connections drop without a goodbye).
    pub fn kill_apiserver(&mut self) {
        if let Some(child) = self.apiserver.take() {
            stop(child);
        }
    }

    async fn seed(&self) {
        let admin = admin_client(&self.server()).await;
        let shared = admin_client(&util::env("PF_TEST_KUBE_SERVER")).await;
        let json_ct = "application/json";
        let kubelet_port: u16 = util::env("PF_TEST_KUBE_KUBELET_PORT")
            .parse()
            .expect("port");
        must(
            &admin,
            "POST",
            "/api/v1/nodes",
            Some((json_ct, json!({ "metadata": { "name": "node-1" } }))),
        )
        .await;
        must(
            &admin,
            "PATCH",
            "/api/v1/nodes/node-1/status",
            Some((
                "application/merge-patch+json",
                json!({ "status": {
                "addresses": [ { "type": "InternalIP", "address": "127.0.0.1" } ],
                "daemonEndpoints": { "kubeletEndpoint": { "Port": kubelet_port } } } }),
            )),
        )
        .await;
        must(
            &admin,
            "POST",
            "/api/v1/namespaces",
            Some((json_ct, json!({ "metadata": { "name": "buildkit" } }))),
        )
        .await;
        must(
            &admin,
            "POST",
            "/api/v1/namespaces/buildkit/serviceaccounts",
            Some((json_ct, json!({ "metadata": { "name": "default" } }))),
        )
        .await;
        let mut role = must(
            &shared,
            "GET",
            "/apis/rbac.authorization.k8s.io/v1/clusterroles/pf-buildkit-fleet",
            None,
        )
        .await;
        role["metadata"] = json!({ "name": "pf-buildkit-fleet" });
        let _ = call(
            &admin,
            "POST",
            "/apis/rbac.authorization.k8s.io/v1/clusterroles",
            Some((json_ct, role)),
        )
        .await;
    }
}
