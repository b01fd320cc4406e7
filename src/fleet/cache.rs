//! Clearing the fleet's local caches: delete the PersistentVolumeClaims no pod mounts, then
//! prune each running pod's BuildKit over gRPC (no `kubectl exec buildctl`), leaving alone a
//! pod whose BuildKit is building.
//!
//! "Building" is read from `DiskUsage`: a running solve holds its cache records (the mounts of
//! running steps, the sources being transferred), which BuildKit reports as `InUse`. Prune
//! never deletes in-use records anyway, but pruning everything else under a running build
//! throws away the cache it is about to reuse, so such a pod is skipped whole. This needs no
//! API beyond the one already used for pruning.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, ListParams};

use super::Arch;
use super::address::ordinal;
use super::error::{Error, Result};
use super::kube_client::{Fleet, with_retry};
use crate::buildkit::PruneOptions;

/// Options of [`Fleet::cache_clear`].
#[derive(Debug, Clone)]
pub struct CacheClearOptions {
    /// What to prune in each pod; everything (`all`) by default, as `buildctl prune --all`.
    pub prune: PruneOptions,
}

impl Default for CacheClearOptions {
    fn default() -> Self {
        CacheClearOptions {
            prune: PruneOptions {
                all: true,
                ..Default::default()
            },
        }
    }
}

/// What happened to one PersistentVolumeClaim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PvcAction {
    /// No pod mounted it; deleted.
    Deleted,
    /// A pod mounts it.
    InUse,
    /// Belongs to a replica the StatefulSet wants (its pod is about to be created).
    Wanted,
}

/// What happened in one running pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodPrune {
    /// Pruned.
    Pruned {
        /// Records deleted.
        records: usize,
        /// Bytes freed.
        bytes: u64,
    },
    /// A build is running (this many cache records in use); not pruned.
    Busy {
        /// Records in use.
        in_use: usize,
    },
    /// BuildKit in the pod could not be pruned.
    Failed {
        /// Why.
        error: String,
    },
}

/// What [`Fleet::cache_clear_with`] reports while it works, for live progress.
#[derive(Debug, Clone)]
pub enum CacheClearEvent<'a> {
    /// A PVC was dealt with.
    Pvc {
        /// Its name.
        name: &'a str,
        /// What was done.
        action: &'a PvcAction,
    },
    /// A pod's BuildKit is being checked and pruned.
    Pruning {
        /// The pod.
        pod: &'a str,
    },
    /// A pod's prune ended.
    Pruned {
        /// The pod.
        pod: &'a str,
        /// How.
        outcome: &'a PodPrune,
    },
}

/// The outcome of [`Fleet::cache_clear`].
#[derive(Debug, Clone, Default)]
pub struct CacheClearReport {
    /// Each PVC of the namespace, by name.
    pub pvcs: Vec<(String, PvcAction)>,
    /// Each running BuildKit pod, by name.
    pub pods: Vec<(String, PodPrune)>,
}

impl CacheClearReport {
    /// Whether every running pod was pruned or skipped as busy.
    pub fn is_success(&self) -> bool {
        !self
            .pods
            .iter()
            .any(|(_, p)| matches!(p, PodPrune::Failed { .. }))
    }
}

/// The StatefulSet and ordinal of a fleet PVC (`buildkitd-buildkit-<arch>-<n>`).
fn pvc_replica(name: &str) -> Option<(Arch, u64)> {
    let pod = name.strip_prefix("buildkitd-")?;
    Arch::of_pod(pod).map(|arch| (arch, ordinal(pod)))
}

impl Fleet {
    /// Deletes the namespace's PVCs that no pod mounts (those of scaled-away replicas), except
    /// those of replicas the StatefulSet currently wants, then prunes every running BuildKit
    /// pod that is not building.
    ///
    /// # Errors
    /// When PVCs or pods cannot be listed or a PVC cannot be deleted. A pod that cannot be
    /// pruned is reported in [`CacheClearReport::pods`], and the others are still pruned.
    pub async fn cache_clear(&self, options: &CacheClearOptions) -> Result<CacheClearReport> {
        self.cache_clear_with(options, &|_| {}).await
    }

    /// [`Fleet::cache_clear`], telling `progress` about each PVC and pod as it goes.
    ///
    /// # Errors
    /// As [`Fleet::cache_clear`].
    pub async fn cache_clear_with(
        &self,
        options: &CacheClearOptions,
        progress: &(dyn Fn(CacheClearEvent<'_>) + Send + Sync),
    ) -> Result<CacheClearReport> {
        let ns = &self.namespace;
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), ns);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let lp = ListParams::default();
        let claims = with_retry(|| pvcs.list(&lp)).await.map_err(|e| {
            Error::from_kube(
                e,
                format!("listing PVCs in namespace {ns}"),
                ("list", "persistentvolumeclaims"),
                ns,
            )
        })?;
        let all_pods = with_retry(|| pods.list(&lp)).await.map_err(|e| {
            Error::from_kube(
                e,
                format!("listing pods in namespace {ns}"),
                ("list", "pods"),
                ns,
            )
        })?;
        let mounted: BTreeSet<String> = all_pods
            .items
            .iter()
            .filter_map(|p| p.spec.as_ref())
            .flat_map(|s| s.volumes.iter().flatten())
            .filter_map(|v| {
                v.persistent_volume_claim
                    .as_ref()
                    .map(|c| c.claim_name.clone())
            })
            .collect();
        let wanted = self.wanted_replicas().await;
        let dp = DeleteParams::default();

        let mut report = CacheClearReport::default();
        for claim in &claims.items {
            let Some(name) = claim.metadata.name.clone() else {
                continue;
            };
            let action = if mounted.contains(&name) {
                PvcAction::InUse
            } else if pvc_replica(&name)
                .is_some_and(|(arch, n)| wanted.iter().any(|(a, r)| *a == arch && n < *r))
            {
                PvcAction::Wanted
            } else {
                match with_retry(|| pvcs.delete(&name, &dp)).await {
                    Ok(_) => PvcAction::Deleted,
                    // Deleted by someone else meanwhile: the goal is reached.
                    Err(kube::Error::Api(s)) if s.code == 404 => PvcAction::Deleted,
                    Err(e) => {
                        return Err(Error::from_kube(
                            e,
                            format!("deleting PVC {name}"),
                            ("delete", "persistentvolumeclaims"),
                            ns,
                        ));
                    }
                }
            };
            progress(CacheClearEvent::Pvc {
                name: &name,
                action: &action,
            });
            report.pvcs.push((name, action));
        }

        for pod in all_pods.items.iter().filter(|p| {
            p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                && p.metadata.name.as_deref().and_then(Arch::of_pod).is_some()
        }) {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
            progress(CacheClearEvent::Pruning { pod: &name });
            let outcome = match self.prune_pod(&name, ip.as_deref(), &options.prune).await {
                Ok(outcome) => outcome,
                Err(err) => PodPrune::Failed {
                    error: super::error::error_chain(&err),
                },
            };
            progress(CacheClearEvent::Pruned {
                pod: &name,
                outcome: &outcome,
            });
            report.pods.push((name, outcome));
        }
        Ok(report)
    }

    /// Replica counts of the StatefulSets, when this account may read them (the cache-clear
    /// CronJob's Role may not; then every unmounted PVC is deleted, as Panfactum does).
    async fn wanted_replicas(&self) -> Vec<(Arch, u64)> {
        let api: Api<StatefulSet> = Api::namespaced(self.client.clone(), &self.namespace);
        let mut out = Vec::new();
        for arch in Arch::ALL {
            match api.get_opt(&arch.statefulset()).await {
                Ok(Some(sts)) => {
                    let replicas = sts.spec.and_then(|s| s.replicas).unwrap_or(1);
                    out.push((arch, u64::try_from(replicas).unwrap_or(0)));
                }
                Ok(None) => {}
                Err(err) => tracing::debug!("cannot read {}: {err}", arch.statefulset()),
            }
        }
        out
    }

    async fn prune_pod(
        &self,
        pod: &str,
        ip: Option<&str>,
        prune: &PruneOptions,
    ) -> Result<PodPrune> {
        let client = self.pod_client(pod, ip).await?;
        let wrap = |source| Error::Buildkit {
            pod: pod.to_owned(),
            source,
        };
        let usage = client.disk_usage().await.map_err(wrap)?;
        let in_use = usage.iter().filter(|r| r.in_use).count();
        if in_use > 0 {
            return Ok(PodPrune::Busy { in_use });
        }
        let freed = client.prune(prune).await.map_err(wrap)?;
        Ok(PodPrune::Pruned {
            records: freed.len(),
            bytes: freed
                .iter()
                .map(|r| u64::try_from(r.size).unwrap_or(0))
                .sum(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvc_names_map_to_replicas() {
        assert_eq!(
            pvc_replica("buildkitd-buildkit-amd64-3"),
            Some((Arch::Amd64, 3))
        );
        assert_eq!(
            pvc_replica("buildkitd-buildkit-arm64-0"),
            Some((Arch::Arm64, 0))
        );
        assert_eq!(pvc_replica("data-postgres-0"), None);
    }
}
