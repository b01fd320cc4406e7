//! Errors of the fleet module: configuration, API calls, permissions, pods and timeouts.

use std::path::PathBuf;

/// Everything that can go wrong operating the fleet.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Neither a kubeconfig nor an in-cluster service account was found.
    #[error(
        "no Kubernetes configuration: no kubeconfig ({kubeconfig}) and not running in a cluster ({in_cluster})"
    )]
    NoConfig {
        /// Why no kubeconfig was found.
        kubeconfig: String,
        /// Why the in-cluster configuration was not usable.
        in_cluster: String,
    },
    /// `--context` was given but there is no kubeconfig to hold it.
    #[error("no kubeconfig to take context {context:?} from ({reason})")]
    NoKubeconfigForContext {
        /// The context asked for.
        context: String,
        /// Why no kubeconfig was found.
        reason: String,
    },
    /// The kubeconfig has no such context.
    #[error("kubeconfig has no context {context:?}")]
    UnknownContext {
        /// The context asked for.
        context: String,
    },
    /// The kubeconfig could not be used.
    #[error("cannot use the kubeconfig: {reason}")]
    Kubeconfig {
        /// What is wrong with it (kube's own words).
        reason: String,
    },
    /// A kube client could not be built from the configuration (e.g. an exec auth plugin failed).
    #[error("cannot create the Kubernetes client: {reason}")]
    Client {
        /// kube's words.
        reason: String,
    },
    /// The account lacks a permission the operation needs.
    #[error(
        "{action}: permission denied ({message}); the Kubernetes account needs verb {verb} on {resource} in namespace {namespace}"
    )]
    Forbidden {
        /// What was being done.
        action: String,
        /// The API server's message.
        message: String,
        /// The missing verb(s), e.g. `create`.
        verb: &'static str,
        /// The resource, e.g. `pods/portforward`.
        resource: &'static str,
        /// The namespace.
        namespace: String,
    },
    /// An object the fleet needs does not exist.
    #[error("{kind} {name:?} not found in namespace {namespace}")]
    NotFound {
        /// `statefulset`, `pod`, ….
        kind: &'static str,
        /// The object's name.
        name: String,
        /// The namespace.
        namespace: String,
    },
    /// Any other failed API call.
    #[error("{action}: {message}")]
    Api {
        /// What was being done.
        action: String,
        /// What the API server or the connection said.
        message: String,
        /// The HTTP status code, when the server answered.
        code: Option<u16>,
    },
    /// No pod of an architecture can take builds.
    #[error("no running and ready BuildKit pods for {arch} in namespace {namespace}")]
    NoRunningPods {
        /// The architecture.
        arch: super::Arch,
        /// The namespace.
        namespace: String,
    },
    /// A port-forward opened but its connection failed (nothing listening in the pod, the
    /// pod's network going away).
    #[error("port-forward to pod {pod} port {port} failed: {reason}")]
    PortForwardFailed {
        /// The pod.
        pod: String,
        /// The pod's port.
        port: u16,
        /// The kubelet's or the connection's words.
        reason: String,
    },
    /// A running pod has no IP yet.
    #[error("BuildKit pod {pod} has no IP address")]
    PodHasNoIp {
        /// The pod.
        pod: String,
    },
    /// Waiting for replicas ran out of time.
    #[error(
        "timed out after {seconds} s waiting for an available BuildKit replica of {statefulsets} in namespace {namespace}; check the pods with `kubectl get pods -n {namespace}`"
    )]
    ScaleUpTimeout {
        /// The StatefulSets still without an available replica, comma-separated.
        statefulsets: String,
        /// The timeout.
        seconds: u64,
        /// The namespace.
        namespace: String,
    },
    /// The StatefulSet's replica count kept changing under us.
    #[error("StatefulSet {statefulset} kept changing while scaling it; try again")]
    Conflict {
        /// The StatefulSet.
        statefulset: String,
    },
    /// BuildKit in a pod failed.
    #[error("BuildKit in pod {pod}")]
    Buildkit {
        /// The pod.
        pod: String,
        /// What failed.
        #[source]
        source: crate::buildkit::Error,
    },
    /// The tunnel's local port could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A `kube-pod://` endpoint with TLS options: the port-forward carries plain gRPC only.
    #[error(
        "TLS options do not apply to kube-pod:// endpoints (the port-forward is the secure channel)"
    )]
    TlsOverPortForward,
    /// A kubeconfig path that could not be read.
    #[error("cannot read kubeconfig {path}")]
    ReadKubeconfig {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The result type of the fleet module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Maps a failed kube call: 403 names the permission, 404 the object, the rest keeps the
    /// server's message.
    pub(crate) fn from_kube(
        err: kube::Error,
        action: impl Into<String>,
        permission: (&'static str, &'static str),
        namespace: &str,
    ) -> Self {
        let action = action.into();
        match err {
            kube::Error::Api(status) if status.code == 403 => Error::Forbidden {
                action,
                // A refused WebSocket upgrade says only `pods "NAME" is forbidden: `, with
                // an empty reason: drop the dangling colon; the permission is named after it.
                message: status.message.trim_end().trim_end_matches(':').to_owned(),
                verb: permission.0,
                resource: permission.1,
                namespace: namespace.to_owned(),
            },
            kube::Error::Api(status) => Error::Api {
                action,
                message: if status.message.is_empty() {
                    format!("HTTP {} {}", status.code, status.reason)
                } else {
                    status.message.clone()
                },
                code: Some(status.code),
            },
            other => Error::Api {
                action,
                message: describe_kube_error(&other),
                code: None,
            },
        }
    }

    /// The HTTP status code the API server answered with, if this is an API error.
    pub fn code(&self) -> Option<u16> {
        match self {
            Error::Api { code, .. } => *code,
            Error::Forbidden { .. } => Some(403),
            Error::NotFound { .. } => Some(404),
            _ => None,
        }
    }
}

/// kube's error text with its causes, minus its debug dumps.
pub(crate) fn describe_kube_error(err: &kube::Error) -> String {
    let first = match err {
        kube::Error::Api(status) => return status.message.clone(),
        kube::Error::Service(e) => e.to_string(),
        other => other.to_string(),
    };
    crate::append_chain(first, std::error::Error::source(err))
}
