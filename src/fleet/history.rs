//! The fleet's build history: every running pod of both StatefulSets asked for its history
//! in parallel (over port-forwards, or straight to the pod's IP in the cluster), merged newest
//! first, each record with the pod that holds it, so `history logs REF` finds its pod.

use std::collections::BTreeMap;

use futures_util::future::try_join_all;

use super::Arch;
use super::error::{Error, Result};
use super::kube_client::Fleet;
use crate::buildkit::Client;
use crate::buildkit::history::{BuildRecord, HistoryQuery};

/// A record of the fleet's history and the pod that holds it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PodRecord {
    /// The pod, e.g. `buildkit-arm64-0`.
    pub pod: String,
    /// The record.
    pub record: BuildRecord,
}

/// The records of every running pod, newest first, and a connection to each pod.
#[derive(Debug, Default)]
pub struct FleetHistory {
    /// The records, newest first.
    pub records: Vec<PodRecord>,
    /// The pods asked, by name.
    clients: BTreeMap<String, Client>,
}

impl FleetHistory {
    /// The connection to `pod`, one of those asked.
    pub fn client(&self, pod: &str) -> Option<&Client> {
        self.clients.get(pod)
    }

    /// The pods asked, by name.
    pub fn pods(&self) -> impl Iterator<Item = &str> {
        self.clients.keys().map(String::as_str)
    }
}

impl Fleet {
    /// The build history of every running BuildKit pod of both architectures, asked in
    /// parallel and merged newest first. No running pod: an empty history.
    ///
    /// # Errors
    /// When pods cannot be listed, or a pod's BuildKit cannot be reached or has no history
    /// API ([`Error::Buildkit`] naming the pod).
    pub async fn build_history(&self, query: &HistoryQuery) -> Result<FleetHistory> {
        let pods: Vec<(String, Option<String>)> = self
            .running_pods()
            .await?
            .into_iter()
            .filter_map(|p| {
                let name = p.metadata.name?;
                Arch::of_pod(&name)?;
                Some((name, p.status.and_then(|s| s.pod_ip)))
            })
            .collect();
        let asked = pods.iter().map(|(pod, ip)| async move {
            let client = self.pod_client(pod, ip.as_deref()).await?;
            let records = client
                .build_history(query)
                .await
                .map_err(|source| Error::Buildkit {
                    pod: pod.clone(),
                    source,
                })?;
            Ok::<_, Error>((pod.clone(), client, records))
        });
        let mut history = FleetHistory::default();
        for (pod, client, records) in try_join_all(asked).await? {
            history
                .records
                .extend(records.into_iter().map(|record| PodRecord {
                    pod: pod.clone(),
                    record,
                }));
            history.clients.insert(pod, client);
        }
        history.records.sort_by(|a, b| {
            b.record
                .created_at
                .cmp(&a.record.created_at)
                .then_with(|| a.record.reference.cmp(&b.record.reference))
        });
        Ok(history)
    }
}
