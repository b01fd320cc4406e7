//! An in-process fake Kubernetes API server for the fleet tests: real HTTP/1.1 on 127.0.0.1:0
//! (hyper), real WebSocket port-forwards (`v4.channel.k8s.io`, tokio-tungstenite) that carry
//! bytes to real local targets (the real BuildKit), and the REST behaviour kube relies on
//! (lists with resourceVersions, merge patches with preconditions, the scale subresource,
//! metrics.k8s.io, PVC deletes, `Status` errors with real texts and codes, RBAC 403s).
//!
//! Tests state their cluster with [`Scenario`] and run the real binary against the kubeconfig
//! the fake writes (contexts `fake` with a token user, `exec` with an exec auth plugin).
//!
//! What a real kube-apiserver v1.36 was measured to do (see `kube.md` §7.5) and the fake
//! repeats: a refused WebSocket port-forward answers 403 `pods "NAME" is forbidden: ` with an
//! empty reason; an absent metrics API is 404 to an account that may read it and 403 to one
//! that may not (authorization runs first); a deleted PVC comes back carrying a
//! `deletionTimestamp` and the `kubernetes.io/pvc-protection` finalizer and stays
//! `Terminating` while a pod mounts it; a stale `metadata.resourceVersion` in a patch is 409.
//!
//! Deliberate simplifications (none of them used by the client under test): one namespace
//! holds objects (others are empty); strategic-merge patches are applied as JSON merge
//! patches, which is exact for the maps patched here (annotations, replicas); no watch; no
//! exec; the pvc-protection controller is instant (an unmounted PVC goes at its delete); no
//! StatefulSet controller, except [`Scenario::auto_available`], which makes scaling set the
//! available count at once.
#![allow(dead_code)]

mod portforward;
mod rest;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

pub use portforward::{docker_engine, tcp, unix, without_build_history};

/// The token of the `fake` context's user.
pub const TOKEN: &str = "fake-token";
/// The token the `exec` context's auth plugin prints.
pub const EXEC_TOKEN: &str = "exec-plugin-token";
/// The user RBAC messages name.
pub const USER: &str = "system:serviceaccount:ci:builder";

/// A byte stream a port-forward carries.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// Opens the connection a port-forward to a pod's port carries.
pub type DialFn =
    Arc<dyn Fn(u16) -> BoxFuture<'static, io::Result<Pin<Box<dyn Stream>>>> + Send + Sync>;

/// A TokenReview-style authenticator: given a bearer token the fake does not know, says
/// whether it is valid (as the API server asks its webhook, e.g. aws-iam-authenticator).
pub type TokenReview = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// What metrics.k8s.io answers.
#[derive(Clone)]
pub enum Metrics {
    /// Not installed: 404 for the whole group.
    Absent,
    /// Registered but down: 503.
    Unavailable,
    /// PodMetrics per pod: container name and CPU quantity.
    Present(BTreeMap<String, Vec<(String, String)>>),
}

/// A request as the fake saw it, for assertions on the wire.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// HTTP method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Raw query.
    pub query: String,
    /// Content-Type.
    pub content_type: String,
    /// Body as text.
    pub body: String,
    /// Authorization header.
    pub authorization: String,
    /// Sec-WebSocket-Protocol offered.
    pub ws_protocol: String,
    /// User-Agent.
    pub user_agent: String,
}

/// The cluster a test states.
pub struct Scenario {
    pub(crate) namespace: String,
    pub(crate) statefulsets: Vec<Value>,
    pub(crate) pods: Vec<Value>,
    pub(crate) pvcs: Vec<Value>,
    pub(crate) metrics: Metrics,
    pub(crate) forbidden: Vec<(String, String)>,
    pub(crate) dials: BTreeMap<String, DialFn>,
    pub(crate) auto_available: bool,
    pub(crate) stamp_before_scale: Vec<String>,
    pub(crate) claim_template: String,
    pub(crate) token_review: Option<TokenReview>,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario::new()
    }
}

impl Scenario {
    /// An empty `buildkit` namespace with a metrics API holding no samples.
    pub fn new() -> Self {
        Scenario {
            namespace: "buildkit".into(),
            statefulsets: Vec::new(),
            pods: Vec::new(),
            pvcs: Vec::new(),
            metrics: Metrics::Present(BTreeMap::new()),
            forbidden: Vec::new(),
            dials: BTreeMap::new(),
            auto_available: false,
            stamp_before_scale: Vec::new(),
            claim_template: "buildkitd".into(),
            token_review: None,
        }
    }

    /// The claim template name of the StatefulSets and pods stated after this call
    /// (`buildkitd`, Panfactum's, until changed): pods mount `TEMPLATE-POD`.
    pub fn claim_template(mut self, name: &str) -> Self {
        name.clone_into(&mut self.claim_template);
        self
    }

    /// StatefulSet `buildkit-<arch>` with `replicas` wanted and `available` available, and the
    /// last-build annotation when given.
    pub fn statefulset(
        mut self,
        arch: &str,
        replicas: i32,
        available: i32,
        last_build: Option<&str>,
    ) -> Self {
        let name = format!("buildkit-{arch}");
        let mut annotations = json!({ "reloader.stakater.com/auto": "true" });
        if let Some(v) = last_build {
            annotations["panfactum.com/last-build"] = json!(v);
        }
        let id = format!("{:x}", name.len() * 7919);
        self.statefulsets.push(json!({
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": { "name": name, "namespace": self.namespace, "annotations": annotations, "labels": { "id": id } },
            "spec": {
                "replicas": replicas,
                "serviceName": format!("{name}-headless"),
                "podManagementPolicy": "Parallel",
                "selector": { "matchLabels": { "id": id } },
                "template": {
                    "metadata": { "labels": { "id": id } },
                    "spec": { "containers": [ { "name": "buildkitd", "image": "moby/buildkit:v0.28.1-rootless" } ] }
                },
                "volumeClaimTemplates": [ { "metadata": { "name": self.claim_template }, "spec": { "accessModes": ["ReadWriteOnce"], "resources": { "requests": { "storage": "25Gi" } } } } ]
            },
            "status": { "replicas": available, "availableReplicas": available, "readyReplicas": available, "currentReplicas": available }
        }));
        self
    }

    /// A pod in `phase` with `ip`, Ready when `ready`, scheduled on a node, mounting its
    /// StatefulSet PVC `<claim template>-<name>`, with the `buildkitd` and `linkerd-proxy`
    /// containers.
    pub fn pod(mut self, name: &str, phase: &str, ip: &str, ready: bool) -> Self {
        let id = format!("{:x}", (name.len() - 2) * 7919);
        let mut status = json!({
            "phase": phase,
            "conditions": [
                { "type": "Ready", "status": if ready { "True" } else { "False" } },
                { "type": "PodScheduled", "status": "True" }
            ]
        });
        if !ip.is_empty() {
            status["podIP"] = json!(ip);
            status["podIPs"] = json!([{ "ip": ip }]);
        }
        self.pods.push(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": { "name": name, "namespace": self.namespace, "labels": { "id": id } },
            "spec": {
                "nodeName": "node-1",
                "containers": [ { "name": "buildkitd", "image": "moby/buildkit:v0.28.1-rootless", "ports": [ { "containerPort": 1234 } ] }, { "name": "linkerd-proxy", "image": "cr.l5d.io/linkerd/proxy:edge-25.4.1" } ],
                "volumes": [ { "name": self.claim_template, "persistentVolumeClaim": { "claimName": format!("{}-{name}", self.claim_template) } } ]
            },
            "status": status
        }));
        self
    }

    /// Moves the last pod stated to `node` (`node-1` until then).
    pub fn on_node(mut self, node: &str) -> Self {
        if let Some(pod) = self.pods.last_mut() {
            pod["spec"]["nodeName"] = json!(node);
        }
        self
    }

    /// A pod that exists but has not been scheduled (no node, no IP).
    pub fn unscheduled_pod(mut self, name: &str) -> Self {
        self = self.pod(name, "Pending", "", false);
        if let Some(spec) = self.pods.last_mut().and_then(|p| p["spec"].as_object_mut()) {
            spec.remove("nodeName");
        }
        self
    }

    /// A PersistentVolumeClaim.
    pub fn pvc(mut self, name: &str) -> Self {
        self.pvcs.push(json!({
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": { "name": name, "namespace": self.namespace },
            "spec": { "accessModes": ["ReadWriteOnce"], "resources": { "requests": { "storage": "25Gi" } }, "storageClassName": "ebs-standard" },
            "status": { "phase": "Bound" }
        }));
        self
    }

    /// A PersistentVolumeClaim already being deleted: `Terminating` behind the
    /// `kubernetes.io/pvc-protection` finalizer (a pod still uses it).
    pub fn terminating_pvc(mut self, name: &str) -> Self {
        self = self.pvc(name);
        if let Some(meta) = self.pvcs.last_mut().map(|p| &mut p["metadata"]) {
            meta["deletionTimestamp"] = json!("2026-01-01T00:10:00Z");
            meta["deletionGracePeriodSeconds"] = json!(0);
            meta["finalizers"] = json!(["kubernetes.io/pvc-protection"]);
        }
        self
    }

    /// PodMetrics for `pod`: CPU quantities per container.
    pub fn cpu(mut self, pod: &str, containers: &[(&str, &str)]) -> Self {
        if !matches!(self.metrics, Metrics::Present(_)) {
            self.metrics = Metrics::Present(BTreeMap::new());
        }
        if let Metrics::Present(m) = &mut self.metrics {
            m.insert(
                pod.to_owned(),
                containers
                    .iter()
                    .map(|(c, q)| ((*c).to_owned(), (*q).to_owned()))
                    .collect(),
            );
        }
        self
    }

    /// metrics.k8s.io not installed.
    pub fn no_metrics_api(mut self) -> Self {
        self.metrics = Metrics::Absent;
        self
    }

    /// metrics.k8s.io registered but unavailable (503).
    pub fn metrics_unavailable(mut self) -> Self {
        self.metrics = Metrics::Unavailable;
        self
    }

    /// RBAC refuses `verb` on `resource` (e.g. `create`, `pods/portforward`).
    pub fn forbid(mut self, verb: &str, resource: &str) -> Self {
        self.forbidden.push((verb.to_owned(), resource.to_owned()));
        self
    }

    /// Port-forwards to `pod` open their connections with `dial`.
    pub fn dial(mut self, pod: &str, dial: DialFn) -> Self {
        self.dials.insert(pod.to_owned(), dial);
        self
    }

    /// Scaling a StatefulSet makes that many replicas available at once (a StatefulSet
    /// controller that is instantly done).
    pub fn auto_available(mut self) -> Self {
        self.auto_available = true;
        self
    }

    /// Another client records a build on `statefulset` just before the next scale request for
    /// it arrives (the race a scale-down must not lose).
    pub fn build_recorded_during_next_scale(mut self, statefulset: &str) -> Self {
        self.stamp_before_scale.push(statefulset.to_owned());
        self
    }

    /// Bearer tokens other than [`TOKEN`] and [`EXEC_TOKEN`] are accepted when `review` says so.
    pub fn token_review(mut self, review: TokenReview) -> Self {
        self.token_review = Some(review);
        self
    }

    /// Starts the server and writes its kubeconfig.
    pub async fn start(self) -> FakeKube {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake API server");
        let addr = listener.local_addr().expect("local addr");
        let dir = tempfile::tempdir().expect("tempdir");
        let state = Arc::new(Mutex::new(rest::State::new(self)));
        let server = tokio::spawn(rest::serve(listener, state.clone()));
        let kubeconfig = write_kubeconfig(
            dir.path(),
            &format!("server: http://{addr}"),
            TOKEN,
            EXEC_TOKEN,
        );
        FakeKube {
            addr,
            state,
            dir,
            kubeconfig,
            server,
        }
    }
}

/// A running fake API server.
pub struct FakeKube {
    addr: std::net::SocketAddr,
    state: Arc<Mutex<rest::State>>,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeKube {
    /// The server's address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// The kubeconfig file (contexts `fake`, current, `exec` and `broken-plugin`).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// A scratch directory that lives as long as the fake (also the tests' HOME).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The binary under test, pointed at this cluster, with no proxies and a scratch HOME.
    pub fn bin(&self) -> std::process::Command {
        kube_bin(&self.kubeconfig, self.dir.path())
    }

    /// Runs the binary against this cluster, off the async runtime's threads.
    pub async fn run(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = self.bin();
        cmd.args(args);
        tokio::task::spawn_blocking(move || cmd.output().expect("run pf-buildkit"))
            .await
            .expect("join")
    }

    /// A StatefulSet as stored now.
    pub fn statefulset(&self, name: &str) -> Value {
        self.state
            .lock()
            .unwrap()
            .get("statefulsets", name)
            .expect("statefulset exists")
    }

    /// Sets a StatefulSet's status (e.g. the available count), as its controller would.
    pub fn set_available(&self, name: &str, available: i32) {
        self.state.lock().unwrap().set_available(name, available);
    }

    /// Names of the PVCs that still exist.
    pub fn pvc_names(&self) -> Vec<String> {
        self.state.lock().unwrap().names("persistentvolumeclaims")
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().log.clone()
    }

    /// How many patches were refused with 409 for a stale `metadata.resourceVersion`.
    pub fn conflicts(&self) -> usize {
        self.state.lock().unwrap().conflicts
    }

    /// How many port-forwards were upgraded (101) so far.
    pub fn portforwards_opened(&self) -> usize {
        self.state.lock().unwrap().portforwards.len()
    }

    /// How many port-forwards are open now.
    pub fn portforwards_open(&self) -> usize {
        self.state
            .lock()
            .unwrap()
            .portforwards
            .iter()
            .filter(|p| !p.is_closed())
            .count()
    }

    /// Cuts port-forward number `n` (0-based, in opening order) as a dying API server would:
    /// the TCP connection drops with no close frame.
    pub fn kill_portforward(&self, n: usize) {
        let state = self.state.lock().unwrap();
        state.portforwards[n].kill();
    }

    /// Waits until `n` port-forwards are open (an event the fake signals, not a sleep).
    pub async fn wait_portforwards_open(&self, n: usize) {
        self.wait_until("port-forwards to open", |f| f.portforwards_open() >= n)
            .await;
    }

    /// Waits until `done` holds, re-checking on each change the fake signals (writes,
    /// port-forwards opening or closing); fails after 30 s.
    pub async fn wait_until(&self, what: &str, done: impl Fn(&FakeKube) -> bool) {
        let mut changes = self.state.lock().unwrap().changes.subscribe();
        loop {
            if done(self) {
                return;
            }
            tokio::time::timeout(std::time::Duration::from_secs(30), changes.changed())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
                .expect("fake alive");
        }
    }
}

/// The binary under test with `kubeconfig`, `home` as HOME, no proxies and no in-cluster
/// variables.
pub fn kube_bin(kubeconfig: &Path, home: &Path) -> std::process::Command {
    let mut cmd = crate::util::bin();
    cmd.env("KUBECONFIG", kubeconfig).env("HOME", home);
    for var in [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "NO_PROXY",
        "no_proxy",
        "KUBERNETES_SERVICE_HOST",
        "KUBERNETES_SERVICE_PORT",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// Writes a kubeconfig with the contexts `fake` (current; token user, namespace `buildkit`),
/// `exec` (a user whose token comes from an exec auth plugin script) and `broken-plugin` (an
/// exec auth plugin that does not exist). `cluster` holds the cluster's fields (`server:`, and
/// `certificate-authority:` for TLS), `token` the token user's, `exec_token` what the plugin
/// prints.
pub fn write_kubeconfig(dir: &Path, cluster: &str, token: &str, exec_token: &str) -> PathBuf {
    let plugin = dir.join("fake-auth-plugin.sh");
    std::fs::write(
        &plugin,
        format!(
            "#!/bin/sh\necho \"$KUBERNETES_EXEC_INFO\" > \"$(dirname \"$0\")/exec-info.json\"\ncat <<'EOF'\n{{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"ExecCredential\",\"status\":{{\"token\":\"{exec_token}\",\"expirationTimestamp\":\"2099-01-01T00:00:00Z\"}}}}\nEOF\n"
        ),
    )
    .expect("write plugin");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let config = format!(
        r#"apiVersion: v1
kind: Config
current-context: fake
clusters:
- name: fake
  cluster:
    {cluster}
contexts:
- name: fake
  context:
    cluster: fake
    user: token-user
    namespace: buildkit
- name: exec
  context:
    cluster: fake
    user: exec-user
- name: broken-plugin
  context:
    cluster: fake
    user: broken-user
users:
- name: token-user
  user:
    token: {token}
- name: exec-user
  user:
    exec:
      apiVersion: client.authentication.k8s.io/v1
      command: ./fake-auth-plugin.sh
      interactiveMode: Never
- name: broken-user
  user:
    exec:
      apiVersion: client.authentication.k8s.io/v1
      command: ./no-such-auth-plugin.sh
      interactiveMode: Never
"#
    );
    let path = dir.join("kubeconfig");
    std::fs::write(&path, config).expect("write kubeconfig");
    path
}
