//! Clearing the fleet's local caches: delete the PersistentVolumeClaims no pod mounts, then
//! prune each running pod's BuildKit over gRPC (no `kubectl exec buildctl`), leaving alone a
//! pod whose BuildKit is building.
//!
//! "Building" is asked of BuildKit's build history: `ListenBuildHistory` with `activeOnly` and
//! `earlyExit` lists the builds in progress. Cache records "in use" are not that signal: the
//! build history can keep a finished (or failed) build's records held, so an idle daemon looks
//! busy for good (the Docker Engine 26.1's BuildKit, idle, showed two records in use). Records
//! in use remain the fallback for daemons without the history API. Prune never deletes in-use records anyway, but pruning everything else under a
//! running build throws away the cache it is about to reuse, so such a pod is skipped whole.
//!
//! Which PVC belongs to which replica comes from each StatefulSet's `volumeClaimTemplates`:
//! the controller names a claim `TEMPLATE-STATEFULSET-ORDINAL`.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, ListParams};

use super::Arch;
use super::error::{Error, Result};
use super::kube_client::{Fleet, with_retry};
use crate::buildkit::PruneOptions;
use crate::setters::with_setters;

/// Options of [`Fleet::cache_clear`].
#[derive(Debug, Clone)]
#[non_exhaustive]
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
#[non_exhaustive]
pub enum PvcAction {
    /// No pod mounted it; deleted.
    Deleted,
    /// A pod mounts it; kept.
    InUse,
    /// Belongs to a replica the StatefulSet wants (its pod is about to be created).
    Wanted,
    /// Already being deleted (`Terminating`, held by the `kubernetes.io/pvc-protection`
    /// finalizer until no pod uses it); not deleted again.
    Terminating,
}

/// What was done, as a line for the user names it: `Deleted unused PVC`, `PVC in use`, …
impl std::fmt::Display for PvcAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PvcAction::Deleted => "Deleted unused PVC",
            PvcAction::InUse => "PVC in use",
            PvcAction::Wanted => "PVC of a wanted replica, kept",
            PvcAction::Terminating => "PVC already being deleted (Terminating)",
        })
    }
}

/// How a pod's BuildKit was judged idle or busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BusySignal {
    /// The daemon's build history listed the builds in progress.
    BuildHistory,
    /// The daemon has no build history API: cache records in use stood for a running build.
    RecordsInUse,
}

impl std::fmt::Display for BusySignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BusySignal::BuildHistory => "build history",
            BusySignal::RecordsInUse => "cache records (no build history API)",
        })
    }
}

/// What happened in one running pod.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum PodPrune {
    /// Idle, so pruned with [`CacheClearOptions::prune`].
    Pruned {
        /// Records deleted.
        records: usize,
        /// Bytes freed.
        bytes: u64,
        /// How the pod was found idle.
        signal: BusySignal,
    },
    /// A build is running; not pruned.
    Busy {
        /// How the build was noticed.
        signal: BusySignal,
        /// Builds in progress ([`BusySignal::BuildHistory`]) or cache records in use
        /// ([`BusySignal::RecordsInUse`]).
        count: usize,
    },
    /// BuildKit in the pod could not be pruned.
    Failed {
        /// Why (shared, so the report stays cheap to clone).
        error: std::sync::Arc<Error>,
    },
}

/// What [`Fleet::cache_clear_with`] reports while it works, for live progress.
#[derive(Debug, Clone)]
#[non_exhaustive]
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
        /// The pod's name, e.g. `buildkit-amd64-0`.
        pod: &'a str,
    },
    /// A pod's prune ended.
    Pruned {
        /// The pod's name, e.g. `buildkit-amd64-0`.
        pod: &'a str,
        /// How it ended: pruned, busy, or failed.
        outcome: &'a PodPrune,
    },
}

/// The outcome of [`Fleet::cache_clear`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
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

/// The claims of one StatefulSet's wanted replicas: `TEMPLATE-STATEFULSET-ORDINAL` for each of
/// its claim templates and each ordinal below its replica count.
#[derive(Debug, Clone, PartialEq, Eq)]
struct WantedClaims {
    statefulset: String,
    templates: Vec<String>,
    replicas: u64,
}

impl WantedClaims {
    fn of(sts: &StatefulSet) -> Option<WantedClaims> {
        let statefulset = sts.metadata.name.clone()?;
        let spec = sts.spec.as_ref();
        let templates = spec
            .and_then(|s| s.volume_claim_templates.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|t| t.metadata.name.clone())
            .collect();
        // The API server defaults an unset replica count to 1.
        let replicas = spec.and_then(|s| s.replicas).unwrap_or(1);
        Some(WantedClaims {
            statefulset,
            templates,
            replicas: u64::try_from(replicas).unwrap_or(0),
        })
    }

    /// Whether `pvc` is the claim of one of the wanted replicas.
    fn contains(&self, pvc: &str) -> bool {
        self.templates.iter().any(|t| {
            pvc.strip_prefix(t.as_str())
                .and_then(|rest| rest.strip_prefix('-'))
                .and_then(|rest| rest.strip_prefix(self.statefulset.as_str()))
                .and_then(|rest| rest.strip_prefix('-'))
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| n < self.replicas)
        })
    }
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
        let wanted = self.wanted_claims().await;
        let dp = DeleteParams::default();

        let mut report = CacheClearReport::default();
        for claim in &claims.items {
            let Some(name) = claim.metadata.name.clone() else {
                continue;
            };
            let action = if claim.metadata.deletion_timestamp.is_some() {
                PvcAction::Terminating
            } else if mounted.contains(&name) {
                PvcAction::InUse
            } else if wanted.iter().any(|w| w.contains(&name)) {
                PvcAction::Wanted
            } else {
                match with_retry(|| pvcs.delete(&name, &dp)).await {
                    // The API server answers with the object, now Terminating behind the
                    // pvc-protection finalizer until no pod uses it: as good as deleted.
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
                    error: std::sync::Arc::new(err),
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

    /// The claims of the replicas each StatefulSet wants, when this account may read them (the
    /// cache-clear CronJob's Role may not; then every unmounted PVC is deleted, as Panfactum
    /// does).
    async fn wanted_claims(&self) -> Vec<WantedClaims> {
        let api: Api<StatefulSet> = Api::namespaced(self.client.clone(), &self.namespace);
        let mut out = Vec::new();
        for arch in Arch::ALL {
            match api.get_opt(&arch.statefulset()).await {
                Ok(Some(sts)) => out.extend(WantedClaims::of(&sts)),
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
        let (signal, count) = match client.active_builds().await.map_err(wrap)? {
            Some(builds) => (BusySignal::BuildHistory, builds.len()),
            None => {
                let usage = client.disk_usage().await.map_err(wrap)?;
                let in_use = usage.iter().filter(|r| r.in_use).count();
                (BusySignal::RecordsInUse, in_use)
            }
        };
        if count > 0 {
            return Ok(PodPrune::Busy { signal, count });
        }
        let freed = client.prune(prune).await.map_err(wrap)?;
        Ok(PodPrune::Pruned {
            signal,
            records: freed.len(),
            bytes: freed
                .iter()
                .map(|r| u64::try_from(r.size).unwrap_or(0))
                .sum(),
        })
    }
}

with_setters!(CacheClearOptions {
    with_prune => prune: PruneOptions,
});

#[cfg(test)]
mod tests {
    use super::*;

    fn sts(name: &str, templates: &[&str], replicas: Option<i32>) -> StatefulSet {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": name },
            "spec": {
                "replicas": replicas,
                "serviceName": name,
                "selector": {},
                "template": {},
                "volumeClaimTemplates": templates.iter().map(|t| serde_json::json!({ "metadata": { "name": t } })).collect::<Vec<_>>()
            }
        }))
        .unwrap()
    }

    #[test]
    fn claims_are_template_statefulset_ordinal() {
        let w = WantedClaims::of(&sts("buildkit-amd64", &["cache", "state"], Some(2))).unwrap();
        assert!(w.contains("cache-buildkit-amd64-0"));
        assert!(w.contains("state-buildkit-amd64-1"));
        assert!(
            !w.contains("cache-buildkit-amd64-2"),
            "beyond the replica count"
        );
        assert!(
            !w.contains("buildkitd-buildkit-amd64-0"),
            "not one of its templates"
        );
        assert!(!w.contains("cache-buildkit-arm64-0"));
        assert!(!w.contains("cache-buildkit-amd64-"));
        assert!(!w.contains("cache-buildkit-amd64-x"));
        // No replica count means one replica; no templates, no claims.
        let w = WantedClaims::of(&sts("buildkit-arm64", &["buildkitd"], None)).unwrap();
        assert!(w.contains("buildkitd-buildkit-arm64-0"));
        assert!(!w.contains("buildkitd-buildkit-arm64-1"));
        let w = WantedClaims::of(&sts("buildkit-arm64", &[], Some(3))).unwrap();
        assert!(!w.contains("buildkitd-buildkit-arm64-0"));
    }
}
