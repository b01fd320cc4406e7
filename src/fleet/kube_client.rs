//! The connection to the Kubernetes API: kubeconfig (with a named context and exec auth plugins) or
//! the in-cluster service account, and a short, bounded retry around every call.

use std::future::Future;
use std::time::Duration;

use kube::config::{InClusterError, KubeConfigOptions, KubeconfigError};
use kube::{Client, Config};

use super::NAMESPACE;
use super::error::{Error, Result};

/// How many times a call is tried when the API server answers 429, 503 or 504.
pub const RETRY_ATTEMPTS: u32 = 4;

/// The first pause between attempts; it doubles each time (0.25 s, 0.5 s, 1 s: under 2 s in all).
const RETRY_BASE: Duration = Duration::from_millis(250);

/// A connection to the cluster that runs the BuildKit fleet.
///
/// Cheap to clone: clones share the kube client.
#[derive(Clone)]
pub struct Fleet {
    pub(crate) client: Client,
    pub(crate) namespace: String,
    pub(crate) in_cluster: bool,
    pub(crate) context: Option<String>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("namespace", &self.namespace)
            .field("in_cluster", &self.in_cluster)
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// Connects with the kubeconfig (`KUBECONFIG` or `~/.kube/config`) and `context` (its
    /// current context when `None`), or with the pod's service account when there is no
    /// kubeconfig and no context was asked for. Exec auth plugins named by the kubeconfig run,
    /// except (with the `aws` feature) `aws eks get-token` and `aws-iam-authenticator token`,
    /// whose tokens are made in-process (see the `aws::eks` module).
    ///
    /// # Errors
    /// [`Error::NoConfig`] when there is neither; [`Error::UnknownContext`] when the kubeconfig
    /// lacks `context`; [`Error::Kubeconfig`] or [`Error::Client`] when it cannot be used.
    pub async fn connect(context: Option<&str>) -> Result<Fleet> {
        let (config, in_cluster) = load_config(context).await?;
        Self::from_config(config, in_cluster, context)
    }

    /// Connects with an explicit kube [`Config`] (e.g. built from a kubeconfig file of your own).
    ///
    /// kube's own retry (up to 15 attempts over minutes) is switched off: every call here is
    /// retried at most [`RETRY_ATTEMPTS`] times, within seconds. Every request carries
    /// `User-Agent: pf-buildkit/VERSION` ([`crate::USER_AGENT`]).
    ///
    /// # Errors
    /// [`Error::Client`] when the client cannot be built (e.g. an exec auth plugin failed).
    pub fn from_config(
        mut config: Config,
        in_cluster: bool,
        context: Option<&str>,
    ) -> Result<Fleet> {
        config.default_retry = false;
        // kube sends no User-Agent of its own; the API server's audit log should name us.
        config
            .headers
            .retain(|(name, _)| name != http::header::USER_AGENT);
        config.headers.push((
            http::header::USER_AGENT,
            http::HeaderValue::from_static(crate::USER_AGENT),
        ));
        #[cfg(feature = "aws")]
        let client = match super::eks_auth::eks_request(&config) {
            // An EKS exec plugin: the token is made here, so kube must not run the program.
            Some(request) => {
                tracing::debug!(cluster = %request.cluster, "making EKS tokens in-process");
                config.auth_info.exec = None;
                let source = std::sync::Arc::new(crate::aws::EksTokenSource::new(request));
                kube::client::ClientBuilder::try_from(config)
                    .map_err(|source| Error::Client { source })?
                    .with_layer(&super::eks_auth::EksAuthLayer::new(source))
                    .build()
            }
            None => Client::try_from(config).map_err(|source| Error::Client { source })?,
        };
        // Without the `aws` feature an EKS exec plugin runs as kube runs any other.
        #[cfg(not(feature = "aws"))]
        let client = Client::try_from(config).map_err(|source| Error::Client { source })?;
        Ok(Fleet {
            client,
            namespace: NAMESPACE.to_owned(),
            in_cluster,
            context: context.map(str::to_owned),
        })
    }

    /// Uses `namespace` rather than [`NAMESPACE`] (for clusters that deviate, and for tests).
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// The namespace the fleet runs in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Whether this process runs inside the cluster (pods are then reached by their IPs).
    pub fn in_cluster(&self) -> bool {
        self.in_cluster
    }

    /// The kubeconfig context in use, when one was named.
    pub fn context(&self) -> Option<&str> {
        self.context.as_deref()
    }

    /// The underlying kube client.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

/// Loads the configuration: the kubeconfig first; the service account only when there is no
/// kubeconfig at all (a broken kubeconfig is an error, not a reason to guess).
async fn load_config(context: Option<&str>) -> Result<(Config, bool)> {
    let options = KubeConfigOptions {
        context: context.map(str::to_owned),
        ..Default::default()
    };
    match Config::from_kubeconfig(&options).await {
        Ok(config) => Ok((config, false)),
        Err(err) => without_kubeconfig(err, context, Config::incluster),
    }
}

/// What a kubeconfig that failed to load leaves: the service account (`in_cluster`) when
/// there is no kubeconfig at all and no context was asked for, an error otherwise.
fn without_kubeconfig(
    err: KubeconfigError,
    context: Option<&str>,
    in_cluster: impl FnOnce() -> std::result::Result<Config, InClusterError>,
) -> Result<(Config, bool)> {
    if is_missing_kubeconfig(&err) {
        if let Some(context) = context {
            return Err(Error::NoKubeconfigForContext {
                context: context.to_owned(),
                source: err,
            });
        }
        return match in_cluster() {
            Ok(config) => Ok((config, true)),
            Err(in_cluster) => Err(Error::NoConfig {
                kubeconfig: err,
                in_cluster,
            }),
        };
    }
    match err {
        KubeconfigError::LoadContext(name) => Err(Error::UnknownContext { context: name }),
        source => Err(Error::Kubeconfig { source }),
    }
}

/// Whether the error means there is no kubeconfig file at all (rather than a broken one).
fn is_missing_kubeconfig(err: &KubeconfigError) -> bool {
    match err {
        KubeconfigError::FindPath => true,
        KubeconfigError::ReadConfig(io, _) => io.kind() == std::io::ErrorKind::NotFound,
        _ => false,
    }
}

/// Whether an API answer is worth another try soon: throttling or an overloaded or
/// unavailable server (aggregated APIs such as metrics answer 503 while restarting).
fn retryable(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if matches!(status.code, 429 | 503 | 504))
}

/// Whether a failed call may well work when made again later, so a loop with a deadline of
/// its own (`scale up --wait`) keeps looking instead of failing: what [`with_retry`] retries,
/// a 500 or 502 (the API server answers 500 `context deadline exceeded` while its etcd is
/// down), and a connection that failed or broke (the API server restarting).
pub(crate) fn transient(err: &kube::Error) -> bool {
    match err {
        kube::Error::Api(status) => matches!(status.code, 429 | 500 | 502 | 503 | 504),
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// Runs `call`, trying again at most [`RETRY_ATTEMPTS`] times in all on 429/503/504.
pub(crate) async fn with_retry<T, F, Fut>(mut call: F) -> std::result::Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, kube::Error>>,
{
    let mut pause = RETRY_BASE;
    let mut attempt = 1;
    loop {
        match call().await {
            Err(err) if attempt < RETRY_ATTEMPTS && retryable(&err) => {
                tracing::debug!(
                    attempt,
                    error = &err as &dyn std::error::Error,
                    "retrying Kubernetes call"
                );
                tokio::time::sleep(pause).await;
                pause *= 2;
                attempt += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use kube::config::Kubeconfig;

    use super::*;

    /// The in-cluster lookup of a process outside a cluster.
    fn outside_a_cluster() -> std::result::Result<Config, InClusterError> {
        Err(InClusterError::ReadEnvironmentVariable(
            std::env::VarError::NotPresent,
        ))
    }

    fn read_error(path: &std::path::Path) -> KubeconfigError {
        match Kubeconfig::read_from(path) {
            Ok(_) => panic!("{} should not load", path.display()),
            Err(err) => err,
        }
    }

    #[test]
    fn no_kubeconfig_and_no_cluster_keeps_both_causes_typed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        let Err(err) = without_kubeconfig(read_error(&path), None, outside_a_cluster) else {
            panic!("no configuration at all must fail");
        };
        assert!(
            err.to_string().contains(&format!(
                "no kubeconfig ({} does not exist)",
                path.display()
            )),
            "{err}"
        );
        let Error::NoConfig { kubeconfig, .. } = &err else {
            panic!("{err:?}");
        };
        assert!(
            matches!(kubeconfig, KubeconfigError::ReadConfig(io, p)
                if io.kind() == std::io::ErrorKind::NotFound && p == &path),
            "{kubeconfig:?}"
        );
        let source = err.source().expect("the in-cluster failure is the source");
        assert!(
            matches!(
                source.downcast_ref::<InClusterError>(),
                Some(InClusterError::ReadEnvironmentVariable(_))
            ),
            "{source:?}"
        );
    }

    #[test]
    fn a_context_without_a_kubeconfig_keeps_the_read_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        let err = without_kubeconfig(read_error(&path), Some("prod"), || {
            panic!("a named context never falls back to the service account")
        })
        .map(drop)
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "no kubeconfig to take context \"prod\" from"
        );
        let kubeconfig = err
            .source()
            .and_then(|e| e.downcast_ref::<KubeconfigError>())
            .expect("kube's KubeconfigError is the source");
        let io = kubeconfig
            .source()
            .and_then(|e| e.downcast_ref::<std::io::Error>())
            .expect("the read's io::Error under it");
        assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
    }

    #[test]
    fn a_broken_kubeconfig_is_an_error_with_kubes_cause_not_a_fallback() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(&path, "clusters: [unclosed").unwrap();
        let err = without_kubeconfig(read_error(&path), None, || {
            panic!("a broken kubeconfig never falls back to the service account")
        })
        .map(drop)
        .unwrap_err();
        assert_eq!(err.to_string(), "cannot use the kubeconfig");
        assert!(
            matches!(
                err.source()
                    .and_then(|e| e.downcast_ref::<KubeconfigError>()),
                Some(KubeconfigError::Parse(_))
            ),
            "{err:?}"
        );
    }

    #[test]
    fn a_wait_looks_again_after_server_trouble_but_not_after_a_refusal() {
        let api = |code: u16| {
            kube::Error::Api(
                kube::core::Status::failure("test", "Test")
                    .with_code(code)
                    .boxed(),
            )
        };
        for code in [429, 500, 502, 503, 504] {
            assert!(transient(&api(code)), "{code}");
        }
        for code in [400, 401, 403, 404, 409, 422] {
            assert!(!transient(&api(code)), "{code}");
        }
        assert!(transient(&kube::Error::Service(
            "connection refused".into()
        )));
        assert!(!retryable(&api(500)), "a bounded retry leaves a 500 alone");
    }
}
