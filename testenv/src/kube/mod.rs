//! A real Kubernetes control plane, as `../shared/kube/` ships it: etcd 3.5, kube-apiserver
//! v1.36.2 and the kubelet's port-forward handler serving as node `node-1`'s kubelet, every
//! pod's port 1234 reaching a buildkitd. No scheduler, controllers or pod-running kubelet:
//! the plane writes the node's status itself, and tests write the rest (see `real_kube`).
//!
//! One implementation for every plane: a plane with its own credentials and kubelet handler
//! (what the Kubernetes tier is), and the fault tests' private planes (which share the
//! tier's credentials and kubelet, on free ports, and stop or restart their etcd and API
//! server). A [`ControlPlane`] owns its processes and its folder: dropping it stops them and
//! removes the folder. Its work blocks (processes, polling): async code calls it from
//! `spawn_blocking`.

pub mod credentials;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

pub use credentials::Credentials;

use crate::error::{Error, Result};
use crate::http::{self, Target, Tls};
use crate::process::{Daemon, Launch};

/// The unpacked etcd's file name (`scripts/testenv` names the binaries for their versions).
pub const ETCD: &str = "etcd-v3.5.30";
/// The unpacked kube-apiserver's file name.
pub const APISERVER: &str = "kube-apiserver-v1.36.2";
/// The unpacked kubelet port-forward handler's file name.
pub const KUBELET: &str = "kubelet-portforward-v1.36.2";

/// The pod port that reaches the buildkitd.
pub const POD_PORT: u16 = 1234;

/// The API server takes about 5 s after etcd when the machine is idle, 30 s and more when it
/// is loaded: it gets at least this long.
const APISERVER_MIN_WAIT: Duration = Duration::from_secs(180);

/// The ports of a control plane on 127.0.0.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// etcd's client port.
    pub etcd: u16,
    /// etcd's peer port.
    pub etcd_peer: u16,
    /// The API server's secure port.
    pub apiserver: u16,
    /// node-1's kubelet (the port-forward handler).
    pub kubelet: u16,
    /// The token webhook a test serves (named in `token-webhook.kubeconfig`).
    pub webhook: u16,
}

impl Ports {
    /// Five ports from `first` on: etcd, etcd's peers, the API server, the kubelet, the webhook.
    pub fn consecutive(first: u16) -> Option<Ports> {
        Some(Ports {
            etcd: first,
            etcd_peer: first.checked_add(1)?,
            apiserver: first.checked_add(2)?,
            kubelet: first.checked_add(3)?,
            webhook: first.checked_add(4)?,
        })
    }

    /// Free ports for etcd and the API server, with `kubelet` and `webhook` as given.
    pub fn free(kubelet: u16, webhook: u16) -> Result<Ports> {
        Ok(Ports {
            etcd: free_port()?,
            etcd_peer: free_port()?,
            apiserver: free_port()?,
            kubelet,
            webhook,
        })
    }
}

/// A port nothing listens on now (the system's choice).
pub fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Error::msg(format!("find a free port on 127.0.0.1: {e}")))
}

/// What a control plane is made of.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The folder with the unpacked [`ETCD`], [`APISERVER`] and [`KUBELET`].
    pub bin: PathBuf,
    /// The plane's folder: etcd's data, the audit log, the admin kubeconfig and (unless
    /// [`Spec::credentials_of`] names another plane's) the credentials. Made afresh by
    /// [`ControlPlane::start`] and removed when the plane drops.
    pub dir: PathBuf,
    /// Where the daemons' logs go (kept after the plane drops when outside `dir`).
    pub logs: PathBuf,
    /// Its ports.
    pub ports: Ports,
    /// Another plane's folder whose credentials this one uses, so clients of one trust and
    /// are known by both; `None` writes its own.
    pub credentials_of: Option<PathBuf>,
    /// Where every pod's port [`POD_PORT`] leads (`HOST:PORT`): the plane starts its own
    /// kubelet handler on `ports.kubelet`. `None`: node-1's kubelet is one that already
    /// serves on `ports.kubelet` (another plane's).
    pub pods_reach: Option<String>,
    /// How long etcd and the kubelet handler may take to be ready (the API server gets at
    /// least three minutes).
    pub timeout: Duration,
    /// Whether the daemons die with the thread that starts them (see
    /// [`Launch::die_with_parent`]): for the supervisor, not for a test's async runtime.
    pub die_with_parent: bool,
}

/// Who signs the API server's serving certificate when it is rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Issuer {
    /// The plane's CA, which its kubeconfigs trust.
    OwnCa,
    /// A new CA, which nothing trusts.
    OtherCa,
}

/// A running control plane (see the module's documentation).
#[derive(Debug)]
pub struct ControlPlane {
    spec: Spec,
    credentials: Credentials,
    /// Declared in the order they stop: the API server, the kubelet handler, etcd.
    apiserver: Option<Daemon>,
    kubelet: Option<Kubelet>,
    etcd: Option<Daemon>,
    /// The API server's serving certificate, key and the CA to trust it by, once rotated.
    serving: Option<(PathBuf, PathBuf, PathBuf)>,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        drop(self.apiserver.take());
        drop(self.kubelet.take());
        drop(self.etcd.take());
        let _ = std::fs::remove_dir_all(&self.spec.dir);
    }
}

impl ControlPlane {
    /// Makes the folder and the credentials, starts etcd, the kubelet handler and the API
    /// server, waits until each is ready, and seeds the API server: node-1 (Ready, its kubelet
    /// on `ports.kubelet`), namespace `buildkit` with its default service account, the fleet's
    /// ClusterRole `pf-buildkit-fleet` bound to `pf-builder` there. Writes `admin.kubeconfig`.
    pub fn start(spec: Spec) -> Result<ControlPlane> {
        let dir = &spec.dir;
        if dir.exists() {
            std::fs::remove_dir_all(dir)
                .map_err(|e| Error::msg(format!("remove the old {}: {e}", dir.display())))?;
        }
        for d in [dir, &spec.logs] {
            std::fs::create_dir_all(d)
                .map_err(|e| Error::msg(format!("create {}: {e}", d.display())))?;
        }
        // From here on, a failure drops the plane: what started stops, the folder goes.
        let mut plane = ControlPlane {
            credentials: Credentials::at(dir),
            apiserver: None,
            kubelet: None,
            etcd: None,
            serving: None,
            spec: spec.clone(),
        };
        plane.credentials = match &spec.credentials_of {
            Some(other) => Credentials::at(other),
            None => Credentials::write(dir, spec.ports.webhook)?,
        };
        let mut ours = vec![
            ("etcd", spec.ports.etcd),
            ("etcd peer", spec.ports.etcd_peer),
            ("kube-apiserver", spec.ports.apiserver),
        ];
        if spec.pods_reach.is_some() {
            ours.push(("kubelet", spec.ports.kubelet));
        }
        for (what, port) in ours {
            if http::port_taken(port) {
                return Err(Error::msg(format!(
                    "127.0.0.1:{port} (for {what}) is already taken by another process; the tier's ports move with PF_TEST_KUBE_PORT"
                )));
            }
        }
        plane.start_etcd()?;
        if let Some(target) = &spec.pods_reach {
            plane.kubelet = Some(Kubelet::start(
                &spec.bin,
                &plane.credentials,
                spec.ports.kubelet,
                target,
                &spec.logs,
                spec.timeout,
                spec.die_with_parent,
            )?);
        }
        plane.start_apiserver()?;
        plane.seed()?;
        plane.write_admin_kubeconfig()?;
        Ok(plane)
    }

    /// `https://127.0.0.1:PORT`.
    pub fn server(&self) -> String {
        format!("https://127.0.0.1:{}", self.spec.ports.apiserver)
    }

    /// The plane's folder.
    pub fn dir(&self) -> &Path {
        &self.spec.dir
    }

    /// Its ports.
    pub fn ports(&self) -> Ports {
        self.spec.ports
    }

    /// The credentials it uses.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// The API server's audit log (JSON lines).
    pub fn audit_log(&self) -> PathBuf {
        self.spec.dir.join("audit.log")
    }

    /// A kubeconfig for `pf-admin`, namespace `buildkit` (for people and benchmark scripts).
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.spec.dir.join("admin.kubeconfig")
    }

    /// What runs now: etcd, the kubelet handler, the API server.
    pub fn daemons(&mut self) -> Vec<&mut Daemon> {
        [
            self.etcd.as_mut(),
            self.kubelet.as_mut().map(|k| &mut k.daemon),
            self.apiserver.as_mut(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// Starts etcd (again, on the same data) and waits until it is healthy and, when the API
    /// server runs, until that is ready again (it reconnects to etcd in its own time).
    pub fn start_etcd(&mut self) -> Result<()> {
        let ports = self.spec.ports;
        let peer = format!("http://127.0.0.1:{}", ports.etcd_peer);
        let client = format!("http://127.0.0.1:{}", ports.etcd);
        let args = vec![
            format!("--data-dir={}", self.spec.dir.join("etcd").display()),
            "--name=default".to_owned(),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster=default={peer}"),
            "--log-level=warn".to_owned(),
        ];
        let mut etcd = self.spawn("etcd", ETCD, &args)?;
        etcd.wait_ready(
            &format!("health on 127.0.0.1:{}", ports.etcd),
            self.spec.timeout,
            || {
                let addr = format!("127.0.0.1:{}", ports.etcd);
                http::request(Target::Tcp(&addr), "GET", "/health", &[], &[])
                    .is_ok_and(|a| String::from_utf8_lossy(&a.body).contains("\"health\":\"true\""))
            },
        )?;
        self.etcd = Some(etcd);
        if self.apiserver.is_some() {
            self.wait_apiserver()?;
        }
        Ok(())
    }

    /// Kills etcd (SIGKILL, as a crash).
    pub fn kill_etcd(&mut self) {
        if let Some(mut etcd) = self.etcd.take() {
            etcd.kill();
        }
    }

    /// Starts the API server (again) and waits until `/readyz` answers `ok`.
    pub fn start_apiserver(&mut self) -> Result<()> {
        let apiserver = self.spawn("kube-apiserver", APISERVER, &self.apiserver_args())?;
        self.apiserver = Some(apiserver);
        self.wait_apiserver()
    }

    /// Kills the API server (SIGKILL: its connections drop without a goodbye).
    pub fn kill_apiserver(&mut self) {
        if let Some(mut apiserver) = self.apiserver.take() {
            apiserver.kill();
        }
    }

    /// Gives the API server a new serving certificate for 127.0.0.1 signed by `issuer`, and
    /// restarts it (it would reload the files within a minute; a restart makes it happen
    /// now). Returns the CA certificate (PEM file) that now verifies it, once it is ready.
    pub fn rotate_serving_certificate(&mut self, issuer: Issuer) -> Result<PathBuf> {
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let path = |ext: &str| self.spec.dir.join(format!("apiserver-{n}.{ext}"));
        let (cert, key, ca) = match issuer {
            Issuer::OwnCa => {
                let (cert, key) = self.credentials.new_apiserver_certificate()?;
                (cert, key, self.credentials.ca())
            }
            Issuer::OtherCa => {
                let (ca_pem, ca) = credentials::new_ca("pf-test-other-ca")?;
                let (cert, key) = credentials::apiserver_leaf(&ca)?;
                let ca_path = path("ca.crt");
                write(&ca_path, &ca_pem)?;
                (cert, key, ca_path)
            }
        };
        let (cert_path, key_path) = (path("crt"), path("key"));
        write(&cert_path, &cert)?;
        write(&key_path, &key)?;
        self.serving = Some((cert_path, key_path, ca.clone()));
        self.kill_apiserver();
        self.start_apiserver()?;
        Ok(ca)
    }

    /// The API server's command line (without the binary).
    fn apiserver_args(&self) -> Vec<String> {
        let ports = self.spec.ports;
        let (cert, key) = match &self.serving {
            Some((cert, key, _)) => (cert.clone(), key.clone()),
            None => (
                self.credentials.pki("apiserver.crt"),
                self.credentials.pki("apiserver.key"),
            ),
        };
        let mut args = vec![
            "--bind-address=127.0.0.1".to_owned(),
            format!("--secure-port={}", ports.apiserver),
            "--advertise-address=127.0.0.1".to_owned(),
            format!("--etcd-servers=http://127.0.0.1:{}", ports.etcd),
            format!("--tls-cert-file={}", cert.display()),
            format!("--tls-private-key-file={}", key.display()),
            "--authorization-mode=Node,RBAC".to_owned(),
            "--authentication-token-webhook-version=v1".to_owned(),
            "--authentication-token-webhook-cache-ttl=10s".to_owned(),
            "--kubelet-preferred-address-types=InternalIP".to_owned(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_owned(),
            "--service-cluster-ip-range=10.96.0.0/12".to_owned(),
            "--endpoint-reconciler-type=none".to_owned(),
            format!("--audit-log-path={}", self.audit_log().display()),
            "--audit-log-format=json".to_owned(),
            "--audit-log-maxsize=200".to_owned(),
            "--audit-log-maxbackup=1".to_owned(),
        ];
        args.extend(self.credentials.apiserver_flags());
        args
    }

    /// TLS that verifies the API server's certificate as it is now.
    fn apiserver_tls(&self) -> Result<Tls> {
        let ca = match &self.serving {
            Some((_, _, ca)) => ca.clone(),
            None => self.credentials.ca(),
        };
        http::tls_from_files(&ca, None)
    }

    /// Waits until the API server answers `/readyz` with `ok` (etcd reachable included).
    fn wait_apiserver(&mut self) -> Result<()> {
        let tls = self.apiserver_tls()?;
        let port = self.spec.ports.apiserver;
        let timeout = self.spec.timeout.max(APISERVER_MIN_WAIT);
        let apiserver = self
            .apiserver
            .as_mut()
            .ok_or_else(|| Error::msg("kube-apiserver does not run"))?;
        apiserver.wait_ready(
            &format!("/readyz ok on https://127.0.0.1:{port}"),
            timeout,
            || {
                let addr = format!("127.0.0.1:{port}");
                http::request(Target::Tls(&addr, &tls), "GET", "/readyz", &[], &[])
                    .is_ok_and(|a| a.body == b"ok")
            },
        )
    }

    fn spawn(&self, name: &str, binary: &str, args: &[String]) -> Result<Daemon> {
        launch(
            name,
            &self.spec.bin.join(binary),
            args,
            &self.spec.logs,
            self.spec.die_with_parent,
        )
    }

    /// `method path [JSON body]` as `pf-admin`: the answer's JSON (`null` when it is not
    /// JSON), or an error naming the call, the status and what the server said.
    pub fn admin_call(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, Value)>,
    ) -> Result<Value> {
        let auth = format!("Bearer {}", self.credentials.token(credentials::ADMIN)?);
        let mut headers = vec![
            ("Authorization", auth.as_str()),
            ("Accept", "application/json"),
            ("User-Agent", "pf-testenv"),
        ];
        let bytes = match &body {
            Some((content_type, value)) => {
                headers.push(("Content-Type", content_type));
                value.to_string().into_bytes()
            }
            None => Vec::new(),
        };
        let addr = format!("127.0.0.1:{}", self.spec.ports.apiserver);
        let tls = self.apiserver_tls()?;
        let answer = http::request(Target::Tls(&addr, &tls), method, path, &headers, &bytes)
            .map_err(|e| Error::msg(format!("{method} {}{path}: {e}", self.server())))?;
        if (200..300).contains(&answer.status) {
            return Ok(serde_json::from_slice(&answer.body).unwrap_or(Value::Null));
        }
        Err(Error::msg(format!(
            "{method} {}{path} answered {}: {}",
            self.server(),
            answer.status,
            String::from_utf8_lossy(&answer.body).trim()
        )))
    }

    /// What a kubelet, an installer and an administrator would have written: see
    /// [`ControlPlane::start`].
    fn seed(&self) -> Result<()> {
        const JSON: &str = "application/json";
        const MERGE: &str = "application/merge-patch+json";
        let create =
            |path: &str, object: Value| match self.admin_call("POST", path, Some((JSON, object))) {
                Err(e) if e.to_string().contains(" answered 409:") => Ok(()),
                other => other.map(drop),
            };
        create(
            "/api/v1/nodes",
            json!({ "apiVersion": "v1", "kind": "Node", "metadata": {
                "name": "node-1", "labels": { "kubernetes.io/arch": "amd64" } } }),
        )?;
        self.admin_call(
            "PATCH",
            "/api/v1/nodes/node-1/status",
            Some((
                MERGE,
                json!({ "status": {
                    "addresses": [
                        { "type": "InternalIP", "address": "127.0.0.1" },
                        { "type": "Hostname", "address": "node-1" } ],
                    "daemonEndpoints": { "kubeletEndpoint": { "Port": self.spec.ports.kubelet } },
                    "conditions": [ { "type": "Ready", "status": "True",
                        "reason": "KubeletReady", "message": "pf-testenv" } ] } }),
            )),
        )?;
        create(
            "/api/v1/namespaces",
            json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": "buildkit" } }),
        )?;
        create(
            "/api/v1/namespaces/buildkit/serviceaccounts",
            json!({ "apiVersion": "v1", "kind": "ServiceAccount", "metadata": { "name": "default" } }),
        )?;
        // What the fleet commands need, as a ClusterRole to bind per namespace.
        create(
            "/apis/rbac.authorization.k8s.io/v1/clusterroles",
            json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": { "name": "pf-buildkit-fleet" }, "rules": [
                { "apiGroups": ["apps"], "resources": ["statefulsets", "statefulsets/scale"],
                  "verbs": ["get", "list", "watch", "patch", "update"] },
                { "apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"] },
                { "apiGroups": [""], "resources": ["pods/portforward"], "verbs": ["get", "create"] },
                { "apiGroups": [""], "resources": ["persistentvolumeclaims"],
                  "verbs": ["get", "list", "delete"] },
                { "apiGroups": ["metrics.k8s.io"], "resources": ["pods"], "verbs": ["get", "list"] } ] }),
        )?;
        create(
            "/apis/rbac.authorization.k8s.io/v1/namespaces/buildkit/rolebindings",
            json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": { "name": "pf-builder" },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": "pf-buildkit-fleet" },
                "subjects": [ { "apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                    "name": credentials::BUILDER } ] }),
        )
    }

    fn write_admin_kubeconfig(&self) -> Result<()> {
        let text = format!(
            "apiVersion: v1
kind: Config
clusters:
- name: testenv
  cluster:
    server: {}
    certificate-authority: {}
users:
- name: {admin}
  user:
    token: {}
contexts:
- name: testenv
  context: {{cluster: testenv, user: {admin}, namespace: buildkit}}
current-context: testenv
",
            self.server(),
            self.credentials.ca().display(),
            self.credentials.token(credentials::ADMIN)?,
            admin = credentials::ADMIN,
        );
        write(&self.admin_kubeconfig(), &text)
    }
}

/// A kubelet port-forward handler: a node's kubelet as the API server sees it, serving
/// `/portForward/NAMESPACE/POD` (every pod's port [`POD_PORT`] leading to one address) and
/// `/healthz`, with a serving certificate for 127.0.0.1 and client certificates checked
/// against the credentials' CA. Dropping it stops it.
#[derive(Debug)]
pub struct Kubelet {
    daemon: Daemon,
    port: u16,
}

impl Kubelet {
    /// Starts the handler from `bin` on 127.0.0.1:`port`, pod port [`POD_PORT`] leading to
    /// `pods_reach` (`HOST:PORT`), its log in `logs`; returns once `/healthz` answers.
    pub fn start(
        bin: &Path,
        credentials: &Credentials,
        port: u16,
        pods_reach: &str,
        logs: &Path,
        timeout: Duration,
        die_with_parent: bool,
    ) -> Result<Kubelet> {
        let p = |n: &str| credentials.pki(n).display().to_string();
        let args = vec![
            format!("--tls-cert-file={}", p("kubelet.crt")),
            format!("--tls-private-key-file={}", p("kubelet.key")),
            format!("--client-ca-file={}", p("ca.crt")),
            format!("127.0.0.1:{port}"),
            format!("{POD_PORT}={pods_reach}"),
        ];
        let mut daemon = launch(
            "kubelet-portforward",
            &bin.join(KUBELET),
            &args,
            logs,
            die_with_parent,
        )?;
        let tls = http::tls_from_files(
            &credentials.ca(),
            Some((
                &credentials.pki("kubelet-client.crt"),
                &credentials.pki("kubelet-client.key"),
            )),
        )?;
        let addr = format!("127.0.0.1:{port}");
        daemon.wait_ready(&format!("health on {addr}"), timeout, || {
            http::status(Target::Tls(&addr, &tls), "/healthz") == 200
        })?;
        Ok(Kubelet { daemon, port })
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }
}

/// Starts `program args…` as `name`, its output in `logs/NAME.log`.
fn launch(
    name: &str,
    program: &Path,
    args: &[String],
    logs: &Path,
    die_with_parent: bool,
) -> Result<Daemon> {
    let mut launch = Launch::new(name, program, &logs.join(format!("{name}.log")))
        .args(args)
        .grace(Duration::from_secs(15));
    if die_with_parent {
        launch = launch.die_with_parent();
    }
    launch.start()
}

/// Writes `text` to `path`, readable by its owner only.
fn write(path: &Path, text: &str) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| Error::msg(format!("write {}: {e}", path.display())))
}
