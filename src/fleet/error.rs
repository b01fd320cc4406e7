//! Errors of the fleet module: configuration, API calls, permissions, pods and timeouts.

use kube::config::{InClusterError, KubeconfigError};

/// Everything that can go wrong operating the fleet.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Neither a kubeconfig nor an in-cluster service account was found.
    #[error(
        "no Kubernetes configuration: no kubeconfig ({}) and not running in a cluster",
        missing_kubeconfig_text(.kubeconfig)
    )]
    NoConfig {
        /// Why no kubeconfig was found (no home directory, or no file at the path).
        kubeconfig: KubeconfigError,
        /// Why the in-cluster configuration was not usable.
        #[source]
        in_cluster: InClusterError,
    },
    /// A context was asked for but there is no kubeconfig to hold it.
    #[error("no kubeconfig to take context {context:?} from")]
    NoKubeconfigForContext {
        /// The kubeconfig context as the caller named it.
        context: String,
        /// Why no kubeconfig was found: no file at the path, or no home directory to look in.
        #[source]
        source: KubeconfigError,
    },
    /// The kubeconfig has no such context.
    #[error("kubeconfig has no context {context:?}")]
    UnknownContext {
        /// The kubeconfig context as the caller named it.
        context: String,
    },
    /// The kubeconfig could not be used.
    #[error("cannot use the kubeconfig")]
    Kubeconfig {
        /// What is wrong with it.
        #[source]
        source: KubeconfigError,
    },
    /// A kube client could not be built from the configuration (e.g. an exec auth plugin failed).
    #[error("cannot create the Kubernetes client")]
    Client {
        /// What kube reported.
        #[source]
        source: kube::Error,
    },
    /// The account lacks a permission the operation needs.
    #[error(
        "{action}: permission denied ({message}); the Kubernetes account needs verb {verb} on {resource} in namespace {namespace}"
    )]
    Forbidden {
        /// What was being done, as a phrase that names the object, e.g. "listing pods in namespace
        /// buildkit".
        action: String,
        /// The API server's Status message, trailing colon trimmed; may be short, as for a refused
        /// WebSocket upgrade.
        message: String,
        /// The missing verb(s), e.g. `create`.
        verb: &'static str,
        /// The resource, e.g. `pods/portforward`.
        resource: &'static str,
        /// The namespace the call was made in (the fleet's, [`NAMESPACE`](super::NAMESPACE) by
        /// default).
        namespace: String,
    },
    /// An object the fleet needs does not exist.
    #[error("{kind} {name:?} not found in namespace {namespace}")]
    NotFound {
        /// The object's kind as the message names it: `pod` or `StatefulSet`.
        kind: &'static str,
        /// The object's name.
        name: String,
        /// The namespace it was looked for in (the fleet's, [`NAMESPACE`](super::NAMESPACE) by
        /// default).
        namespace: String,
    },
    /// The API server answered a call with an error status (a refused permission is
    /// [`Error::Forbidden`]).
    #[error("{action}: {message}")]
    Api {
        /// What was being done, as a phrase that names the object, e.g. "listing pods in namespace
        /// buildkit".
        action: String,
        /// The API server's status message (or its HTTP status line when it sent none).
        message: String,
        /// The HTTP status code it answered with.
        code: u16,
    },
    /// A call that got no answer from the API server: the connection, TLS, an auth plugin,
    /// or a response that could not be read.
    #[error("{action}")]
    Request {
        /// What was being done, as a phrase that names the object, e.g. "listing pods in namespace
        /// buildkit".
        action: String,
        /// What kube reported: the connection, TLS, auth plugin or decoding failure.
        #[source]
        source: kube::Error,
    },
    /// No pod of an architecture can take builds.
    #[error("no running and ready BuildKit pods for {arch} in namespace {namespace}")]
    NoRunningPods {
        /// The architecture whose StatefulSet has no running and ready pod.
        arch: super::Arch,
        /// The namespace searched (the fleet's, [`NAMESPACE`](super::NAMESPACE) by default).
        namespace: String,
    },
    /// A port-forward opened but its connection failed (nothing listening in the pod, the
    /// pod's network going away).
    #[error("port-forward to pod {pod} port {port} failed")]
    PortForwardFailed {
        /// The name of the pod the port-forward was opened to, e.g. `buildkit-amd64-0`.
        pod: String,
        /// The pod's port the forward was for, usually [`PORT`](super::PORT).
        port: u16,
        /// What the kubelet or the connection reported.
        #[source]
        source: PortForwardError,
    },
    /// A running pod has no IP yet.
    #[error("BuildKit pod {pod} has no IP address")]
    PodHasNoIp {
        /// The name of the least-loaded running pod, chosen for its address, whose status has no
        /// `podIP`.
        pod: String,
    },
    /// Waiting for replicas ran out of time.
    #[error(
        "timed out after {seconds} s waiting for an available BuildKit replica of {statefulsets} in namespace {namespace}"
    )]
    ScaleUpTimeout {
        /// The StatefulSets still without an available replica, comma-separated.
        statefulsets: String,
        /// The bound that ran out, in whole seconds (the caller's timeout).
        seconds: u64,
        /// The namespace of the StatefulSets (the fleet's, [`NAMESPACE`](super::NAMESPACE) by
        /// default).
        namespace: String,
    },
    /// The StatefulSet's replica count kept changing under us.
    #[error("StatefulSet {statefulset} kept changing while scaling it; try again")]
    Conflict {
        /// The StatefulSet's name, e.g. `buildkit-amd64`.
        statefulset: String,
    },
    /// BuildKit in a pod failed.
    #[error("BuildKit in pod {pod}")]
    Buildkit {
        /// The name of the pod whose BuildKit was called (through a port-forward, or its IP
        /// in-cluster).
        pod: String,
        /// What the BuildKit client reported, naming the endpoint it used.
        #[source]
        source: crate::buildkit::Error,
    },
    /// The tunnel's local port could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The local address asked for, `127.0.0.1:PORT` (port 0 picks a free one).
        addr: String,
        /// The OS error from binding, or from reading back the bound address.
        #[source]
        source: std::io::Error,
    },
    /// A `kube-pod://` endpoint with TLS options: the port-forward carries plain gRPC only.
    #[error(
        "TLS options do not apply to kube-pod:// endpoints (the port-forward is the secure channel)"
    )]
    TlsOverPortForward,
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
                message: status_message(&status),
                code: status.code,
            },
            source => Error::Request { action, source },
        }
    }

    /// The HTTP status code the API server answered with, if this is an API error.
    pub fn code(&self) -> Option<u16> {
        match self {
            Error::Api { code, .. } => Some(*code),
            Error::Forbidden { .. } => Some(403),
            Error::NotFound { .. } => Some(404),
            _ => None,
        }
    }
}

/// An API server's answer in its own words: the status message, or the HTTP status line when
/// it sent none.
pub(crate) fn status_message(status: &kube::core::Status) -> String {
    if status.message.is_empty() {
        format!("HTTP {} {}", status.code, status.reason)
    } else {
        status.message.clone()
    }
}

/// Why there is no kubeconfig, in a few words: the file that does not exist, or that there
/// is no home directory to look in. (Only these two errors mean "no kubeconfig"; any other is
/// shown in kube's words.)
fn missing_kubeconfig_text(err: &KubeconfigError) -> String {
    match err {
        KubeconfigError::FindPath => "no home directory to find ~/.kube/config in".to_owned(),
        KubeconfigError::ReadConfig(io, path) if io.kind() == std::io::ErrorKind::NotFound => {
            format!("{} does not exist", path.display())
        }
        other => other.to_string(),
    }
}

/// What went wrong on a port-forward the API server had opened: the cause of
/// [`Error::PortForwardFailed`], and, for [`PortForwardError::KubeletRefused`], the error a
/// [`PortForwardStream`](super::PortForwardStream)'s read ends with (inside an
/// [`std::io::Error`]; take it out with [`std::io::Error::downcast`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PortForwardError {
    /// The kubelet reported an error for the port on the port-forward's error channel
    /// (nothing listening in the pod, the pod's network gone).
    #[error("{message}")]
    KubeletRefused {
        /// The kubelet's text from the error channel, as sent (e.g. that the connection to the
        /// pod's port was refused).
        message: String,
    },
    /// The connection closed before the server in the pod said anything.
    #[error("the connection closed at once; is BuildKit listening there?")]
    ClosedAtOnce,
    /// The API server's answer carried no data or error stream for the port.
    #[error("the API server opened no stream for the port")]
    NoStream,
    /// Reading from the connection failed.
    #[error("reading from the connection failed")]
    Read(#[source] std::io::Error),
    /// The port-forward's WebSocket to the API server broke (the API server or the network
    /// went away) or carried something the protocol does not allow.
    #[error("the port-forward's connection to the API server broke")]
    Broken(#[source] std::io::Error),
}

impl PortForwardError {
    /// The typed error a failed read carries, or the read error itself.
    pub(crate) fn from_read(err: std::io::Error) -> Self {
        match err.downcast::<PortForwardError>() {
            Ok(typed) => typed,
            Err(err) => PortForwardError::Read(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    fn status(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            message: message.into(),
            reason: "ServiceUnavailable".into(),
            ..Default::default()
        }))
    }

    #[test]
    fn a_call_without_an_answer_keeps_kubes_error_as_the_source() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let err = Error::from_kube(
            kube::Error::Service(Box::new(refused)),
            "listing pods in namespace ci",
            ("list", "pods"),
            "ci",
        );
        assert!(matches!(err, Error::Request { .. }), "{err:?}");
        assert_eq!(err.code(), None);
        let kube = err
            .source()
            .and_then(|e| e.downcast_ref::<kube::Error>())
            .expect("kube::Error is the source");
        assert!(matches!(kube, kube::Error::Service(_)), "{kube:?}");
        // The cause is the source, not also part of the text.
        assert_eq!(err.to_string(), "listing pods in namespace ci");
    }

    #[test]
    fn an_api_status_is_data_with_its_code() {
        let err = Error::from_kube(
            status(503, "the server is busy"),
            "reading",
            ("get", "pods"),
            "ci",
        );
        assert_eq!(err.to_string(), "reading: the server is busy");
        assert_eq!(err.code(), Some(503));
        assert!(err.source().is_none(), "a status is the server's words");

        let err = Error::from_kube(status(500, ""), "reading", ("get", "pods"), "ci");
        assert_eq!(err.to_string(), "reading: HTTP 500 ServiceUnavailable");

        let err = Error::from_kube(
            status(403, "pods is forbidden: "),
            "listing pods",
            ("list", "pods"),
            "ci",
        );
        assert_eq!(err.code(), Some(403));
        assert_eq!(
            err.to_string(),
            "listing pods: permission denied (pods is forbidden); the Kubernetes account needs verb list on pods in namespace ci"
        );
    }
}
