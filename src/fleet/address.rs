//! Choosing a pod: the running, ready pods of an architecture's StatefulSet, least CPU first
//! (from `metrics.k8s.io`), and the pod DNS address builds reach it at.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams};
use serde::Deserialize;

use super::error::{Error, Result, status_message};
use super::kube_client::{Fleet, with_retry};
use super::quantity::cpu_nanocores;
use super::{Arch, PORT};

/// The pod chosen for an architecture.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PodAddress {
    /// The architecture asked for; the pod belongs to its StatefulSet.
    pub arch: Arch,
    /// The pod's name, e.g. `buildkit-amd64-1`.
    pub pod: String,
    /// The pod's IP as its status reports it (`podIP`), never empty; the address a client in the
    /// cluster dials.
    pub ip: String,
    /// The namespace the pod runs in (the fleet's, [`NAMESPACE`](super::NAMESPACE) by default).
    pub namespace: String,
    /// CPU in use, in nanocores, when metrics were available for the pod.
    pub cpu_nanocores: Option<u64>,
    /// Whether the choice was informed by metrics.
    pub metrics: PodMetricsState,
}

/// What the metrics API said.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum PodMetricsState {
    /// Metrics were read; the pod with the least CPU was chosen.
    Used,
    /// No metrics API (or it failed); the first running pod was chosen.
    Unavailable(MetricsUnavailable),
}

/// Why pod metrics could not be read.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsUnavailable {
    /// The API server does not serve `metrics.k8s.io`.
    #[error("the metrics API (metrics.k8s.io) is not installed")]
    NotInstalled,
    /// The account may not list pod metrics (authorization comes before the group lookup, so
    /// this is also what a cluster without the metrics API answers such an account).
    #[error(
        "the metrics API (metrics.k8s.io) may not be read by this account, or is not installed (needs verb list on pods.metrics.k8s.io in namespace {namespace})"
    )]
    Forbidden {
        /// The namespace the pods were listed in.
        namespace: String,
    },
    /// The API server answered the call with another error status (503 while the metrics
    /// server restarts).
    #[error("the metrics API (metrics.k8s.io) failed: {message}")]
    Answered {
        /// The HTTP status code the API server answered the metrics call with, e.g. 503.
        code: u16,
        /// The API server's status message (or its HTTP status line when it sent none).
        message: String,
    },
    /// The call got no answer (the connection, an auth plugin, a response that could not be
    /// read).
    #[error("the metrics API (metrics.k8s.io) failed")]
    Failed(#[source] std::sync::Arc<kube::Error>),
}

impl PodAddress {
    /// The pod's cluster DNS name and port, without a scheme:
    /// `10-0-1-5.buildkit.pod.cluster.local:1234`.
    pub fn host_port(&self) -> String {
        format!(
            "{}.{}.pod.cluster.local:{PORT}",
            self.ip.replace(['.', ':'], "-"),
            self.namespace
        )
    }

    /// The BuildKit address: `tcp://10-0-1-5.buildkit.pod.cluster.local:1234`.
    pub fn url(&self) -> String {
        format!("tcp://{}", self.host_port())
    }
}

/// `metrics.k8s.io/v1beta1` PodMetrics, typed (k8s-openapi has no metrics types).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct PodMetrics {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub containers: Vec<ContainerMetrics>,
}

/// One container's usage.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ContainerMetrics {
    #[serde(default)]
    pub usage: BTreeMap<String, Quantity>,
}

impl kube::Resource for PodMetrics {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;
    fn kind(_: &()) -> Cow<'_, str> {
        "PodMetrics".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "metrics.k8s.io".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1beta1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "pods".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl PodMetrics {
    /// CPU of all containers together (BuildKit and its sidecars share the node's CPU).
    fn cpu_nanocores(&self) -> u64 {
        self.containers
            .iter()
            .filter_map(|c| c.usage.get("cpu"))
            .filter_map(|q| cpu_nanocores(&q.0))
            .fold(0u64, u64::saturating_add)
    }
}

/// Whether the pod is Running, Ready and not being deleted.
pub(crate) fn is_serving(pod: &Pod) -> bool {
    if pod.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let Some(status) = &pod.status else {
        return false;
    };
    status.phase.as_deref() == Some("Running")
        && status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Orders pods by their StatefulSet ordinal, so "first" means `-0` before `-1` before `-10`.
pub(crate) fn ordinal(name: &str) -> u64 {
    name.rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX)
}

impl Fleet {
    /// The running pods of the fleet, all architectures (phase Running, any readiness).
    pub(crate) async fn running_pods(&self) -> Result<Vec<Pod>> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let params = ListParams::default().fields("status.phase=Running");
        let list = with_retry(|| pods.list(&params)).await.map_err(|e| {
            Error::from_kube(
                e,
                format!("listing pods in namespace {}", self.namespace),
                ("list", "pods"),
                &self.namespace,
            )
        })?;
        let mut items = list.items;
        items.sort_by_key(|p| ordinal(p.metadata.name.as_deref().unwrap_or_default()));
        Ok(items)
    }

    /// Chooses the least-loaded running, ready pod of `arch`: CPU from `metrics.k8s.io`, summed
    /// over all its containers (ties and pods without metrics go by ordinal). Without a metrics
    /// API the first pod is chosen and [`PodAddress::metrics`] says why.
    ///
    /// Pods belong to the architecture by their exact StatefulSet name (`buildkit-<arch>-<n>`),
    /// as Panfactum's StatefulSets carry no architecture label.
    ///
    /// # Errors
    /// [`Error::NoRunningPods`] when no pod can take builds; [`Error::Forbidden`] or
    /// [`Error::Api`] when pods cannot be listed; [`Error::PodHasNoIp`].
    pub async fn get_address(&self, arch: Arch) -> Result<PodAddress> {
        let pods: Vec<Pod> = self
            .running_pods()
            .await?
            .into_iter()
            .filter(|p| p.metadata.name.as_deref().is_some_and(|n| arch.owns_pod(n)))
            .filter(is_serving)
            .collect();
        if pods.is_empty() {
            return Err(Error::NoRunningPods {
                arch,
                namespace: self.namespace.clone(),
            });
        }
        let (usage, metrics) = match self.pod_cpu().await {
            Ok(usage) => (usage, PodMetricsState::Used),
            Err(why) => (BTreeMap::new(), PodMetricsState::Unavailable(why)),
        };
        // Pods without metrics count as idle: they have just started.
        let chosen = pods
            .iter()
            .min_by_key(|p| {
                let name = p.metadata.name.as_deref().unwrap_or_default();
                (usage.get(name).copied().unwrap_or(0), ordinal(name))
            })
            .unwrap_or(&pods[0]);
        let name = chosen.metadata.name.clone().unwrap_or_default();
        let ip = chosen
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .filter(|ip| !ip.is_empty())
            .ok_or_else(|| Error::PodHasNoIp { pod: name.clone() })?;
        Ok(PodAddress {
            arch,
            cpu_nanocores: usage.get(&name).copied(),
            pod: name,
            ip,
            namespace: self.namespace.clone(),
            metrics,
        })
    }

    /// CPU per pod name, or why metrics are unavailable.
    async fn pod_cpu(&self) -> std::result::Result<BTreeMap<String, u64>, MetricsUnavailable> {
        let api: Api<PodMetrics> = Api::namespaced(self.client.clone(), &self.namespace);
        let params = ListParams::default();
        match with_retry(|| api.list(&params)).await {
            Ok(list) => Ok(list
                .items
                .iter()
                .filter_map(|m| Some((m.metadata.name.clone()?, m.cpu_nanocores())))
                .collect()),
            Err(kube::Error::Api(status)) if status.code == 404 => {
                Err(MetricsUnavailable::NotInstalled)
            }
            // Authorization comes before the group lookup, so an account without rights on
            // metrics.k8s.io gets 403 whether or not the API is installed.
            Err(kube::Error::Api(status)) if status.code == 403 => {
                Err(MetricsUnavailable::Forbidden {
                    namespace: self.namespace.clone(),
                })
            }
            Err(kube::Error::Api(status)) => Err(MetricsUnavailable::Answered {
                code: status.code,
                message: status_message(&status),
            }),
            Err(err) => Err(MetricsUnavailable::Failed(std::sync::Arc::new(err))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(ip: &str) -> PodAddress {
        PodAddress {
            arch: Arch::Amd64,
            pod: "buildkit-amd64-0".into(),
            ip: ip.into(),
            namespace: "buildkit".into(),
            cpu_nanocores: None,
            metrics: PodMetricsState::Used,
        }
    }

    #[test]
    fn addresses_use_pod_dns_names() {
        assert_eq!(
            address("10.0.1.5").url(),
            "tcp://10-0-1-5.buildkit.pod.cluster.local:1234"
        );
        assert_eq!(
            address("10.0.1.5").host_port(),
            "10-0-1-5.buildkit.pod.cluster.local:1234"
        );
        assert_eq!(
            address("fd00::5").host_port(),
            "fd00--5.buildkit.pod.cluster.local:1234"
        );
    }

    #[test]
    fn ordinals_sort_numerically() {
        let mut names = vec!["buildkit-amd64-10", "buildkit-amd64-2", "buildkit-amd64-0"];
        names.sort_by_key(|n| ordinal(n));
        assert_eq!(
            names,
            ["buildkit-amd64-0", "buildkit-amd64-2", "buildkit-amd64-10"]
        );
    }
}
