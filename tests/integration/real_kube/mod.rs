//! The fleet tests' real Kubernetes control plane: the kube-apiserver v1.36.2 (with etcd and
//! the kubelet's port-forward handler as node `node-1`) that the test environment runs
//! (`pf_testenv::kube`) when `../shared/kube/` holds it. Every pod's port 1234 reaches the
//! standalone buildkitd.
//!
//! A test states its cluster with the same [`Scenario`] as for the fake and calls
//! [`Scenario::start_real`]: the objects are written to the real API server, with the status a
//! scheduler, the StatefulSet controller and a kubelet would write (nothing else writes it).
//! The fleet's namespace is fixed (`buildkit`), so tests on the shared server take turns: a
//! file lock, held while the [`RealKube`] lives, serialises them across test processes too.
//!
//! The test's user is `pf-user-0`, bound to a Role that holds the fleet's ClusterRole
//! (`pf-buildkit-fleet`, made by the testenv) minus what [`Scenario::forbid`] takes away.
//! Requests are read back from the API server's audit log.
#![allow(dead_code)]

pub mod control_plane;
pub mod node;
pub mod token_webhook;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::fake_kube::{Scenario, write_kubeconfig};

/// The namespace the fleet uses.
const NS: &str = "buildkit";
/// The user tests run as.
pub const USER: &str = "pf-user-0";

/// Whether the Kubernetes tier runs; prints one line naming `test` when it does not.
pub fn present(test: &str) -> bool {
    if std::env::var_os("PF_TEST_KUBE_SERVER").is_some() {
        return true;
    }
    eprintln!(
        "{test}: skipped: no real Kubernetes API server (PF_TEST_KUBE_SERVER unset; see scripts/testenv kube-tier)"
    );
    false
}

/// A file of the testenv's control plane (`tokens.csv`, `pki/ca.crt`, `audit.log`, ...).
pub fn kube_file(name: &str) -> PathBuf {
    PathBuf::from(crate::util::env("PF_TEST_KUBE_DIR")).join(name)
}

/// The bearer token of a user of `tokens.csv`.
pub fn token(user: &str) -> String {
    let tokens = std::fs::read_to_string(kube_file("tokens.csv")).expect("read tokens.csv");
    tokens
        .lines()
        .find_map(|l| {
            let mut f = l.split(',');
            let t = f.next()?;
            (f.next()? == user).then(|| t.to_owned())
        })
        .unwrap_or_else(|| panic!("no token for {user} in tokens.csv"))
}

/// A kube client for `server` as `pf-admin`.
pub async fn admin_client(server: &str) -> kube::Client {
    admin_client_trusting(server, pem_der(&kube_file("pki/ca.crt")))
}

/// A kube client for `server` as `pf-admin` that trusts the CA certificate `ca` (DER).
pub fn admin_client_trusting(server: &str, ca: Vec<u8>) -> kube::Client {
    let mut config = kube::Config::new(server.parse().expect("server URL"));
    config.root_cert = Some(vec![ca]);
    config.auth_info.token = Some(token("pf-admin").into());
    config.default_retry = false;
    config.read_timeout = Some(Duration::from_secs(30));
    kube::Client::try_from(config).expect("admin client")
}

/// The DER of the first certificate in a PEM file.
fn pem_der(path: &Path) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject as _;
    rustls_pki_types::CertificateDer::from_pem_file(path)
        .expect("CA certificate")
        .to_vec()
}

/// `method path [body]` as admin; the answer's JSON, or its Status as the error.
pub async fn call(
    client: &kube::Client,
    method: &str,
    path: &str,
    body: Option<(&str, Value)>,
) -> Result<Value, kube::Error> {
    let mut req = http::Request::builder().method(method).uri(path);
    let bytes = match body {
        Some((content_type, v)) => {
            req = req.header(http::header::CONTENT_TYPE, content_type);
            serde_json::to_vec(&v).expect("json")
        }
        None => Vec::new(),
    };
    client
        .request::<Value>(req.body(bytes).expect("request"))
        .await
}

/// [`call`] that must succeed.
pub async fn must(
    client: &kube::Client,
    method: &str,
    path: &str,
    body: Option<(&str, Value)>,
) -> Value {
    call(client, method, path, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

const MERGE: &str = "application/merge-patch+json";
const JSON: &str = "application/json";

/// A cross-process lock on the shared server's `buildkit` namespace.
struct NamespaceLock(std::fs::File);

impl NamespaceLock {
    async fn take() -> NamespaceLock {
        let path = kube_file("fleet-tests.lock");
        tokio::task::spawn_blocking(move || {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .expect("open the namespace lock");
            file.lock().expect("lock the namespace");
            NamespaceLock(file)
        })
        .await
        .expect("join")
    }
}

/// The real API server with a test's cluster in namespace `buildkit`.
pub struct RealKube {
    admin: kube::Client,
    server: String,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    audit_log: PathBuf,
    /// When the test began (audit entries from before belong to other tests).
    since: String,
    controller: Option<tokio::task::JoinHandle<()>>,
    webhook: Option<token_webhook::TokenWebhook>,
    _lock: NamespaceLock,
}

impl Drop for RealKube {
    fn drop(&mut self) {
        if let Some(c) = self.controller.take() {
            c.abort();
        }
    }
}

impl Scenario {
    /// Writes this cluster to the testenv's real API server (after clearing what an earlier
    /// test left in the namespace); `None`, with a line saying so, without the Kubernetes tier.
    pub async fn start_real(self, test: &str) -> Option<RealKube> {
        if !present(test) {
            return None;
        }
        let server = crate::util::env("PF_TEST_KUBE_SERVER");
        Some(RealKube::start(self, &server, kube_file("audit.log")).await)
    }
}

impl RealKube {
    /// Takes the namespace, clears it and writes `scenario` to the server at `server`, whose
    /// audit log is `audit_log`.
    pub async fn start(scenario: Scenario, server: &str, audit_log: PathBuf) -> RealKube {
        let lock = NamespaceLock::take().await;
        let admin = admin_client(server).await;
        let since = now_rfc3339();
        clear_namespace(&admin).await;
        grant(&admin, &scenario.forbidden).await;
        for sts in &scenario.statefulsets {
            create_with_status(
                &admin,
                "/apis/apps/v1/namespaces/buildkit/statefulsets",
                sts,
            )
            .await;
        }
        for pvc in &scenario.pvcs {
            let mut pvc = pvc.clone();
            let terminating = pvc["metadata"]["deletionTimestamp"].is_string();
            if let Some(meta) = pvc["metadata"].as_object_mut() {
                meta.remove("deletionTimestamp");
                meta.remove("deletionGracePeriodSeconds");
                meta.remove("finalizers");
            }
            let name = pvc["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            create_with_status(
                &admin,
                "/api/v1/namespaces/buildkit/persistentvolumeclaims",
                &pvc,
            )
            .await;
            if terminating {
                // Deleted while a pod uses it: pvc-protection keeps it Terminating.
                must(
                    &admin,
                    "DELETE",
                    &format!("/api/v1/namespaces/buildkit/persistentvolumeclaims/{name}"),
                    None,
                )
                .await;
            }
        }
        for pod in &scenario.pods {
            create_with_status(&admin, "/api/v1/namespaces/buildkit/pods", pod).await;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = write_kubeconfig(
            dir.path(),
            &cluster_fields(server),
            &token(USER),
            &token(USER),
        );
        let mut real = RealKube {
            admin,
            server: server.to_owned(),
            dir,
            kubeconfig,
            audit_log,
            since,
            controller: None,
            webhook: None,
            _lock: lock,
        };
        if let Some(review) = scenario.token_review {
            real.webhook = Some(token_webhook::TokenWebhook::start(review).await);
        }
        if scenario.auto_available {
            real.play_statefulset_controller();
        }
        real
    }

    /// The API server's address.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The tokens the API server asked the scenario's token review about.
    pub fn reviewed_tokens(&self) -> Vec<String> {
        self.webhook
            .as_ref()
            .map(token_webhook::TokenWebhook::tokens)
            .unwrap_or_default()
    }

    /// The kubeconfig `cluster:` fields for this server (`server:`, the CA), as
    /// [`write_kubeconfig`] takes them.
    pub fn cluster_fields(&self) -> String {
        cluster_fields(&self.server)
    }

    /// Changes the test user's Role while the test runs: the fleet's rules minus `forbidden`
    /// (as [`Scenario::forbid`] writes them); returns once the authorizer applies it.
    pub async fn regrant(&self, forbidden: &[(&str, &str)]) {
        let forbidden: Vec<(String, String)> = forbidden
            .iter()
            .map(|(v, r)| ((*v).to_owned(), (*r).to_owned()))
            .collect();
        grant(&self.admin, &forbidden).await;
    }

    /// The admin client.
    pub fn admin(&self) -> &kube::Client {
        &self.admin
    }

    /// The kubeconfig (contexts `fake`, current, `exec` and `broken-plugin`, all as [`USER`]).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// A scratch directory that lives as long as this (also the tests' HOME).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The binary under test, pointed at this cluster.
    pub fn bin(&self) -> std::process::Command {
        crate::fake_kube::kube_bin(&self.kubeconfig, self.dir.path())
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
    pub async fn statefulset(&self, name: &str) -> Value {
        must(
            &self.admin,
            "GET",
            &format!("/apis/apps/v1/namespaces/buildkit/statefulsets/{name}"),
            None,
        )
        .await
    }

    /// Sets a StatefulSet's available (and ready, current) count, as its controller would.
    pub async fn set_available(&self, name: &str, available: i32) {
        set_available(&self.admin, name, available).await;
    }

    /// Sets a pod's phase and Ready condition, as its kubelet would.
    pub async fn set_pod(&self, name: &str, phase: &str, ready: bool) {
        must(
            &self.admin,
            "PATCH",
            &format!("/api/v1/namespaces/buildkit/pods/{name}/status"),
            Some((
                MERGE,
                json!({ "status": { "phase": phase, "conditions": [
                { "type": "Ready", "status": if ready { "True" } else { "False" } },
                { "type": "PodScheduled", "status": "True" } ] } }),
            )),
        )
        .await;
    }

    /// Deletes a pod at once (grace period 0), as a node going away would end it.
    pub async fn delete_pod(&self, name: &str) {
        must(
            &self.admin,
            "DELETE",
            &format!("/api/v1/namespaces/buildkit/pods/{name}?gracePeriodSeconds=0"),
            None,
        )
        .await;
    }

    /// Names of the PVCs that still exist and are not being deleted, after playing the
    /// pvc-protection controller once (a deleted PVC no pod mounts loses its finalizer).
    pub async fn pvc_names(&self) -> Vec<String> {
        release_unmounted_pvcs(&self.admin).await;
        let list = must(
            &self.admin,
            "GET",
            "/api/v1/namespaces/buildkit/persistentvolumeclaims",
            None,
        )
        .await;
        names(&list, |p| p["metadata"]["deletionTimestamp"].is_null())
    }

    /// PVCs that are Terminating (deleted, still mounted by a pod).
    pub async fn terminating_pvc_names(&self) -> Vec<String> {
        let list = must(
            &self.admin,
            "GET",
            "/api/v1/namespaces/buildkit/persistentvolumeclaims",
            None,
        )
        .await;
        names(&list, |p| !p["metadata"]["deletionTimestamp"].is_null())
    }

    /// The requests [`USER`] made since this test began, as the API server's audit log
    /// recorded them (see [`audit_entries`]): verb, request URI, User-Agent, code.
    pub fn audit(&self) -> Vec<AuditEntry> {
        audit_entries(&self.audit_log, USER, &self.since)
    }

    /// Starts playing the StatefulSet controller: whenever a StatefulSet's `spec.replicas`
    /// differs from its available count, the count follows (pods are the test's business).
    pub fn play_statefulset_controller(&mut self) {
        let admin = self.admin.clone();
        self.controller = Some(tokio::spawn(async move {
            loop {
                if let Ok(list) = call(
                    &admin,
                    "GET",
                    "/apis/apps/v1/namespaces/buildkit/statefulsets",
                    None,
                )
                .await
                {
                    for sts in list["items"].as_array().into_iter().flatten() {
                        let want = sts["spec"]["replicas"].as_i64().unwrap_or(0);
                        if sts["status"]["availableReplicas"].as_i64().unwrap_or(0) != want {
                            let name = sts["metadata"]["name"].as_str().unwrap_or_default();
                            set_available(&admin, name, want as i32).await;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }

    /// Polls `done` every 100 ms until it holds; fails after 30 s.
    pub async fn wait_until<F, Fut>(&self, what: &str, mut done: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done().await {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The kubeconfig `cluster:` fields for `server`: its URL and the testenv's CA.
fn cluster_fields(server: &str) -> String {
    format!(
        "server: {server}\n    certificate-authority: {}",
        kube_file("pki/ca.crt").display()
    )
}

/// One request in the audit log.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    /// Kubernetes verb (get, list, patch, create, delete, ...).
    pub verb: String,
    /// Path and query as sent.
    pub uri: String,
    /// The User-Agent header, empty when none was sent.
    pub user_agent: String,
    /// The answer's HTTP status code.
    pub code: u16,
}

/// The requests of `user` in the audit log at `path` from `since` on: each as completed
/// (`ResponseComplete`), or as started (`ResponseStarted`, an upgraded connection still open).
pub fn audit_entries(path: &Path, user: &str, since: &str) -> Vec<AuditEntry> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut order = Vec::new();
    let mut by_id = std::collections::HashMap::new();
    for e in text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    {
        let stage = e["stage"].as_str().unwrap_or_default();
        if !matches!(stage, "ResponseComplete" | "ResponseStarted")
            || e["user"]["username"] != user
            || e["requestReceivedTimestamp"].as_str().unwrap_or_default() < since
        {
            continue;
        }
        let id = e["auditID"].as_str().unwrap_or_default().to_owned();
        let entry = AuditEntry {
            verb: e["verb"].as_str().unwrap_or_default().to_owned(),
            uri: e["requestURI"].as_str().unwrap_or_default().to_owned(),
            user_agent: e["userAgent"].as_str().unwrap_or_default().to_owned(),
            code: e["responseStatus"]["code"].as_u64().unwrap_or_default() as u16,
        };
        if by_id.insert(id.clone(), entry).is_none() {
            order.push(id);
        }
    }
    order
        .into_iter()
        .filter_map(|id| by_id.remove(&id))
        .collect()
}

/// Now as the audit log writes times (RFC 3339, microseconds, UTC), so strings compare.
fn now_rfc3339() -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%S.%6NZ"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn names(list: &Value, keep: impl Fn(&Value) -> bool) -> Vec<String> {
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| keep(i))
        .filter_map(|i| i["metadata"]["name"].as_str().map(str::to_owned))
        .collect()
}

async fn set_available(admin: &kube::Client, name: &str, available: i32) {
    must(
        admin,
        "PATCH",
        &format!("/apis/apps/v1/namespaces/buildkit/statefulsets/{name}/status"),
        Some((
            MERGE,
            json!({ "status": {
            "replicas": available, "availableReplicas": available,
            "readyReplicas": available, "currentReplicas": available } }),
        )),
    )
    .await;
}

/// Creates `object` under `collection` (without its status, which a create ignores), then
/// writes the status through the `status` subresource as the owning component would.
async fn create_with_status(admin: &kube::Client, collection: &str, object: &Value) {
    let mut object = object.clone();
    let status = object.as_object_mut().and_then(|o| o.remove("status"));
    let created = must(admin, "POST", collection, Some((JSON, object))).await;
    if let Some(status) = status {
        let name = created["metadata"]["name"].as_str().unwrap_or_default();
        must(
            admin,
            "PATCH",
            &format!("{collection}/{name}/status"),
            Some((MERGE, json!({ "status": status }))),
        )
        .await;
    }
}

/// The pvc-protection controller's job: a deleted PVC that no pod mounts goes.
async fn release_unmounted_pvcs(admin: &kube::Client) {
    let pvcs = must(
        admin,
        "GET",
        "/api/v1/namespaces/buildkit/persistentvolumeclaims",
        None,
    )
    .await;
    let pods = must(admin, "GET", "/api/v1/namespaces/buildkit/pods", None).await;
    let mounted: Vec<&str> = pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["spec"]["volumes"].as_array().into_iter().flatten())
        .filter_map(|v| v["persistentVolumeClaim"]["claimName"].as_str())
        .collect();
    for name in names(&pvcs, |p| !p["metadata"]["deletionTimestamp"].is_null()) {
        if !mounted.contains(&name.as_str()) {
            let _ = call(
                admin,
                "PATCH",
                &format!("/api/v1/namespaces/buildkit/persistentvolumeclaims/{name}"),
                Some((MERGE, json!({ "metadata": { "finalizers": null } }))),
            )
            .await;
        }
    }
}

/// Empties the namespace of what the fleet tests make: StatefulSets, pods (at once) and PVCs
/// (their finalizers dropped, as no controller will).
async fn clear_namespace(admin: &kube::Client) {
    let base = "/apis/apps/v1/namespaces/buildkit/statefulsets";
    must(admin, "DELETE", base, None).await;
    must(
        admin,
        "DELETE",
        "/api/v1/namespaces/buildkit/pods?gracePeriodSeconds=0",
        None,
    )
    .await;
    must(
        admin,
        "DELETE",
        "/api/v1/namespaces/buildkit/persistentvolumeclaims",
        None,
    )
    .await;
    release_unmounted_pvcs(admin).await;
}

/// Binds [`USER`] in the namespace to the fleet's rules minus `forbidden` (verb, resource):
/// the resource is `NAME[/SUB][.GROUP]` as RBAC messages write it.
async fn grant(admin: &kube::Client, forbidden: &[(String, String)]) {
    let role = must(
        admin,
        "GET",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles/pf-buildkit-fleet",
        None,
    )
    .await;
    let mut rules = Vec::new();
    for rule in role["rules"].as_array().into_iter().flatten() {
        let group = rule["apiGroups"][0].as_str().unwrap_or_default();
        for resource in rule["resources"].as_array().into_iter().flatten() {
            let resource = resource.as_str().unwrap_or_default();
            let named = if group.is_empty() {
                resource.to_owned()
            } else {
                format!("{resource}.{group}")
            };
            let verbs: Vec<&Value> = rule["verbs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|v| {
                    !forbidden.iter().any(|(fv, fr)| {
                        v.as_str() == Some(fv.as_str())
                            && (*fr == named || (*fr == resource && group == "apps"))
                    })
                })
                .collect();
            if !verbs.is_empty() {
                rules
                    .push(json!({ "apiGroups": [group], "resources": [resource], "verbs": verbs }));
            }
        }
    }
    let roles = "/apis/rbac.authorization.k8s.io/v1/namespaces/buildkit/roles";
    let bindings = "/apis/rbac.authorization.k8s.io/v1/namespaces/buildkit/rolebindings";
    let _ = call(admin, "DELETE", &format!("{roles}/pf-test"), None).await;
    must(
        admin,
        "POST",
        roles,
        Some((
            JSON,
            json!({ "metadata": { "name": "pf-test" }, "rules": rules }),
        )),
    )
    .await;
    let _ = call(admin, "DELETE", &format!("{bindings}/pf-test"), None).await;
    must(
        admin,
        "POST",
        bindings,
        Some((JSON, json!({
            "metadata": { "name": "pf-test" },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pf-test" },
            "subjects": [ { "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USER } ]
        }))),
    )
    .await;
    // RBAC changes reach the authorizer through its informer: wait until they took.
    let review = |verb: &str, resource: &str, sub: &str, group: &str| {
        json!({ "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": { "user": USER, "resourceAttributes": {
                "namespace": NS, "verb": verb, "resource": resource, "subresource": sub, "group": group } } })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut settled = true;
        for (verb, resource) in forbidden
            .iter()
            .map(|(v, r)| (v.as_str(), r.as_str()))
            .chain([("patch", "statefulsets/scale.apps")])
        {
            let (name, group) = resource.split_once('.').unwrap_or((resource, ""));
            let (name, sub) = name.split_once('/').unwrap_or((name, ""));
            let group = if group.is_empty() && name.starts_with("statefulsets") {
                "apps"
            } else {
                group
            };
            let answer = must(
                admin,
                "POST",
                "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                Some((JSON, review(verb, name, sub, group))),
            )
            .await;
            let allowed = answer["status"]["allowed"] == true;
            let want = !forbidden.iter().any(|(v, r)| v == verb && r == resource);
            settled &= allowed == want;
        }
        if settled {
            break;
        }
        assert!(Instant::now() < deadline, "RBAC for {USER} did not settle");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
