//! `kube-pod://POD?namespace=NS&context=CTX&port=1234`: a pod's BuildKit through a Kubernetes
//! port-forward, as a [`Connector`] the fleet offers in [`connectors`], so `--addr`,
//! `--builder` and [`Client::connect_with`] take it like any other address.

use std::str::FromStr;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::PORT;
use super::error::Error;
use super::kube_client::Fleet;
use super::portforward::PodDialer;
use crate::buildkit::{
    Client, Connector, ConnectorError, Connectors, Dialer, Endpoint, ParseEndpointError, TlsOptions,
};

use crate::setters::with_setters;
/// The scheme name `kube-pod` (endpoints read `kube-pod://POD?...`), as [`connectors`] offers
/// it.
pub const KUBE_POD_SCHEME: &str = "kube-pod";

/// A pod addressed by a `kube-pod://` endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
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

impl KubePod {
    /// The pod `pod` in the context's default namespace, BuildKit on port [`PORT`].
    pub fn new(pod: impl Into<String>) -> Self {
        KubePod {
            pod: pod.into(),
            namespace: None,
            context: None,
            port: PORT,
        }
    }
}

with_setters!(KubePod {
    with_port => port: u16,
} optional {
    with_namespace => namespace: String,
    with_context => context: String,
});

impl FromStr for KubePod {
    type Err = String;
    /// Parses what follows `kube-pod://`.
    fn from_str(rest: &str) -> Result<Self, String> {
        let (pod, query) = rest.split_once('?').unwrap_or((rest, ""));
        let pod = pod.trim_end_matches('/');
        if pod.is_empty() {
            return Err("missing pod name (kube-pod://POD?namespace=NS)".into());
        }
        let mut out = KubePod::new(pod);
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

/// The `kube-pod://` connector: each connection is a new port-forward to the pod.
#[derive(Debug, Clone, Copy, Default)]
pub struct KubePodConnector;

impl Connector for KubePodConnector {
    fn check(&self, address: &str) -> Result<(), String> {
        address.parse::<KubePod>().map(drop)
    }

    fn dialer(
        &self,
        address: String,
        tls: TlsOptions,
    ) -> BoxFuture<'static, Result<Arc<dyn Dialer>, ConnectorError>> {
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

/// The connectors the fleet offers the BuildKit client: `kube-pod://` ([`KubePodConnector`]).
/// Give them to [`Endpoint::parse_with`] and [`Client::connect_with`] (or use [`parse`] and
/// [`connect`]).
pub fn connectors() -> Connectors {
    Connectors::new().with(KUBE_POD_SCHEME, KubePodConnector)
}

/// Parses any BuildKit address, `kube-pod://` included: [`Endpoint::parse_with`] with the
/// fleet's [`connectors`].
///
/// # Errors
/// As [`Endpoint::parse_with`]; a malformed `kube-pod://` address says what is wrong.
pub fn parse(addr: &str) -> Result<Endpoint, ParseEndpointError> {
    Endpoint::parse_with(addr, &connectors())
}

/// Connects to any BuildKit endpoint, `kube-pod://` included: [`Client::connect_with`] with
/// the fleet's [`connectors`].
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use pf_buildkit::buildkit::TlsOptions;
/// let endpoint = pf_buildkit::fleet::parse("kube-pod://buildkit-amd64-0?namespace=buildkit")?;
/// let client = pf_buildkit::fleet::connect(endpoint, &TlsOptions::default()).await?;
/// println!("{:?}", client.workers().await?);
/// # Ok(()) }
/// ```
///
/// # Errors
/// Those of [`Client::connect_with`]; a `kube-pod://` endpoint's Kubernetes configuration
/// errors and [`Error::TlsOverPortForward`] arrive as the source of
/// [`crate::buildkit::Error::Scheme`].
pub async fn connect(
    endpoint: Endpoint,
    tls: &TlsOptions,
) -> Result<Client, crate::buildkit::Error> {
    Client::connect_with(endpoint, tls, &connectors()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kube_pod_parses_as_an_endpoint_with_the_fleets_connectors() {
        let endpoint =
            parse("kube-pod://buildkit-amd64-0?namespace=buildkit&context=prod&port=1234").unwrap();
        let Endpoint::Custom { scheme, address } = &endpoint else {
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
            let err = parse(addr).unwrap_err().to_string();
            assert!(err.contains(needle), "{addr}: {err}");
        }
    }
}
