//! `kube-pod://POD?namespace=NS&context=CTX&port=1234`: a pod's BuildKit through a Kubernetes
//! port-forward, as an address [`Scheme`] registered with the BuildKit client
//! ([`register_kube_pod`]), so `--addr`, `--builder` and [`Client::connect`] take it like any
//! other address.

use std::str::FromStr;
use std::sync::{Arc, Once};

use futures_util::future::BoxFuture;

use super::PORT;
use super::error::Error;
use super::kube_client::Fleet;
use super::portforward::PodDialer;
use crate::buildkit::{Client, Dialer, Scheme, SchemeError, TlsOptions, register_scheme};

/// The scheme name `kube-pod` (endpoints read `kube-pod://POD?...`), as [`register_kube_pod`]
/// registers it.
pub const KUBE_POD_SCHEME: &str = "kube-pod";

/// A pod addressed by a `kube-pod://` endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubePod {
    /// The pod's name, the endpoint's host part, e.g. `buildkit-amd64-0`.
    pub pod: String,
    /// Namespace; `None` means the context's default.
    pub namespace: Option<String>,
    /// Kubeconfig context; `None` means the current one.
    pub context: Option<String>,
    /// The container port BuildKit listens on ([`PORT`] unless given).
    pub port: u16,
}

impl FromStr for KubePod {
    type Err = String;
    /// Parses what follows `kube-pod://`.
    fn from_str(rest: &str) -> Result<Self, String> {
        let (pod, query) = rest.split_once('?').unwrap_or((rest, ""));
        let pod = pod.trim_end_matches('/');
        if pod.is_empty() {
            return Err("missing pod name (kube-pod://POD?namespace=NS)".into());
        }
        let mut out = KubePod {
            pod: pod.to_owned(),
            namespace: None,
            context: None,
            port: PORT,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "namespace" => out.namespace = Some(value.to_owned()).filter(|v| !v.is_empty()),
                "context" => out.context = Some(value.to_owned()).filter(|v| !v.is_empty()),
                "port" => {
                    out.port = value
                        .parse()
                        .map_err(|_| format!("port {value:?} is not a number from 1 to 65535"))?
                }
                // buildctl's kube-pod:// accepts a container; a port-forward does not need one.
                "container" => {}
                other => {
                    return Err(format!(
                        "unknown parameter {other:?}; kube-pod:// takes namespace, context and port"
                    ));
                }
            }
        }
        Ok(out)
    }
}

/// The `kube-pod://` scheme: each connection is a new port-forward to the pod.
#[derive(Debug, Clone, Copy, Default)]
pub struct KubePodScheme;

impl Scheme for KubePodScheme {
    fn check(&self, address: &str) -> Result<(), String> {
        address.parse::<KubePod>().map(drop)
    }

    fn dialer(
        &self,
        address: String,
        tls: TlsOptions,
    ) -> BoxFuture<'static, Result<Arc<dyn Dialer>, SchemeError>> {
        Box::pin(async move {
            let target: KubePod = address.parse()?;
            if tls.is_enabled() {
                return Err(Error::TlsOverPortForward.into());
            }
            let mut fleet = Fleet::connect(target.context.as_deref()).await?;
            fleet.namespace = target
                .namespace
                .clone()
                .unwrap_or_else(|| fleet.client.default_namespace().to_owned());
            let dialer = PodDialer::new(&fleet, target.pod, target.port);
            Ok(Arc::new(dialer) as Arc<dyn Dialer>)
        })
    }
}

/// Registers `kube-pod://` with the BuildKit client for this process (once; later calls do
/// nothing). Call it before parsing addresses that may name a pod.
pub fn register_kube_pod() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| register_scheme(KUBE_POD_SCHEME, KubePodScheme));
}

/// Connects to any BuildKit endpoint, `kube-pod://` included: registers the scheme, then
/// connects as [`Client::connect`] does.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use pf_buildkit::buildkit::TlsOptions;
/// pf_buildkit::fleet::register_kube_pod();
/// let endpoint = "kube-pod://buildkit-amd64-0?namespace=buildkit".parse()?;
/// let client = pf_buildkit::fleet::connect(endpoint, &TlsOptions::default()).await?;
/// println!("{:?}", client.workers().await?);
/// # Ok(()) }
/// ```
///
/// # Errors
/// Those of [`Client::connect`]; a `kube-pod://` endpoint's Kubernetes configuration errors
/// and [`Error::TlsOverPortForward`] arrive as the source of
/// [`crate::buildkit::Error::Scheme`].
pub async fn connect(
    endpoint: crate::buildkit::Endpoint,
    tls: &TlsOptions,
) -> Result<Client, crate::buildkit::Error> {
    register_kube_pod();
    Client::connect(endpoint, tls).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buildkit::Endpoint;

    #[test]
    fn a_registered_kube_pod_parses_as_an_endpoint() {
        register_kube_pod();
        let endpoint: Endpoint =
            "kube-pod://buildkit-amd64-0?namespace=buildkit&context=prod&port=1234"
                .parse()
                .unwrap();
        let Endpoint::Registered { scheme, address } = &endpoint else {
            panic!("{endpoint:?}");
        };
        assert_eq!(scheme, KUBE_POD_SCHEME);
        assert_eq!(
            address.parse::<KubePod>().unwrap(),
            KubePod {
                pod: "buildkit-amd64-0".into(),
                namespace: Some("buildkit".into()),
                context: Some("prod".into()),
                port: 1234
            }
        );
        assert_eq!(
            endpoint.to_string(),
            "kube-pod://buildkit-amd64-0?namespace=buildkit&context=prod&port=1234"
        );
        for (addr, needle) in [
            ("kube-pod://?namespace=x", "missing pod name"),
            ("kube-pod://p?colour=blue", "unknown parameter"),
            ("kube-pod://p?port=x", "not a number"),
        ] {
            let err = addr.parse::<Endpoint>().unwrap_err().to_string();
            assert!(err.contains(needle), "{addr}: {err}");
        }
    }
}
