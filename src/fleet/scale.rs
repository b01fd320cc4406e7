//! Scaling the StatefulSets through their `scale` subresource (as `kubectl scale` does) and
//! stamping builds with a merge patch of the last-build annotation.
//!
//! Both writes carry the `resourceVersion` they were decided on, so a scale-down never undoes a
//! build recorded a moment earlier and a scale-up never lowers a count the HPA just raised: the
//! API server answers 409 and the decision is made again on fresh state.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::error::{Error, Result};
use super::kube_client::{Fleet, transient, with_retry};
use super::{Arch, LAST_BUILD_ANNOTATION};
use crate::setters::with_setters;

/// How often `scale up --wait` looks at the StatefulSets.
const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// How long one look of `scale up --wait` may take. With its etcd down, the API server holds
/// a read for a minute before it answers 500; the wait gives up on such a look sooner and
/// looks again, within its own deadline.
const LOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a write is decided again after a 409 before giving up.
const CONFLICT_ATTEMPTS: u32 = 5;

/// Options of [`Fleet::scale_up`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ScaleUpOptions {
    /// Wait until every architecture has an available replica, at most this long in all.
    pub wait: Option<Duration>,
}

/// What [`Fleet::scale_up`] did for one architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScaleUpReport {
    /// The architecture whose StatefulSet (`buildkit-ARCH`) was looked at.
    pub arch: Arch,
    /// The StatefulSet's `spec.replicas` as read before any change (0 when it was suspended).
    pub replicas_before: i32,
    /// Whether it was scaled from 0 to 1.
    pub scaled: bool,
}

/// Progress of waiting for replicas, one per architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WaitState {
    /// The architecture whose StatefulSet is being waited for.
    pub arch: Arch,
    /// The StatefulSet's `status.availableReplicas` at this look (0 when absent).
    pub available: i32,
    /// Time left until the shared deadline.
    pub remaining: Duration,
}

impl WaitState {
    /// Whether this architecture has a replica to build on.
    pub fn is_ready(&self) -> bool {
        self.available >= 1
    }
}

/// What [`Fleet::scale_down`] decided for one architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScaleDownReport {
    /// The architecture whose StatefulSet (`buildkit-ARCH`) was looked at.
    pub arch: Arch,
    /// The last build recorded in the StatefulSet's annotation, in epoch seconds; `None` when
    /// absent or unreadable.
    pub last_build: Option<u64>,
    /// The annotation's text when it was not a number of seconds (treated as no build).
    pub invalid_annotation: Option<String>,
    /// What was done: scaled down, skipped as recently used, or already at zero.
    pub action: ScaleDownAction,
    /// The idle time the caller gave; `None` scales down regardless of the last build.
    pub timeout: Option<Duration>,
}

/// A scale-down decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ScaleDownAction {
    /// Scaled to 0.
    ScaledDown,
    /// A build was recorded within the timeout; left alone.
    Skipped,
    /// Already at 0 replicas.
    AlreadyZero,
}

impl ScaleDownReport {
    /// The decision in Panfactum's words, e.g.
    /// `amd64: Last build occurred over 1800 seconds ago. Scaling down...`.
    pub fn message(&self) -> String {
        let arch = self.arch;
        let timeout = self.timeout.map_or(0, |t| t.as_secs());
        match self.action {
            ScaleDownAction::AlreadyZero => format!("{arch}: Already scaled down."),
            ScaleDownAction::Skipped => format!(
                "{arch}: Last build occurred less than {timeout} seconds ago. Skipping scale down."
            ),
            ScaleDownAction::ScaledDown if self.timeout.is_none() => {
                format!("{arch}: No idle timeout given. Scaling down...")
            }
            ScaleDownAction::ScaledDown if self.last_build.is_none() => {
                format!("{arch}: No builds recorded. Scaling down...")
            }
            ScaleDownAction::ScaledDown => {
                format!("{arch}: Last build occurred over {timeout} seconds ago. Scaling down...")
            }
        }
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whether an architecture counts as idle: no build recorded, or the last one more than
/// `timeout` ago (strictly, as Panfactum). No timeout means scale down regardless.
pub(crate) fn is_idle(last_build: Option<u64>, now: u64, timeout: Option<Duration>) -> bool {
    match (timeout, last_build) {
        (None, _) | (Some(_), None) => true,
        (Some(timeout), Some(last)) => now.saturating_sub(last) > timeout.as_secs(),
    }
}

fn is_conflict(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(s) if s.code == 409)
}

impl Fleet {
    fn statefulsets(&self) -> Api<StatefulSet> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn sts_error(
        &self,
        err: kube::Error,
        arch: Arch,
        action: &str,
        perm: (&'static str, &'static str),
    ) -> Error {
        if matches!(&err, kube::Error::Api(s) if s.code == 404) {
            return Error::NotFound {
                kind: "StatefulSet",
                name: arch.statefulset(),
                namespace: self.namespace.clone(),
            };
        }
        Error::from_kube(
            err,
            format!("{action} StatefulSet {}", arch.statefulset()),
            perm,
            &self.namespace,
        )
    }

    /// Stamps the architecture's StatefulSet with the current time (annotation
    /// [`LAST_BUILD_ANNOTATION`], epoch seconds), so the scale-to-zero job keeps it running.
    ///
    /// # Errors
    /// [`Error::NotFound`] when the StatefulSet does not exist; [`Error::Forbidden`] without
    /// `patch` on `statefulsets`.
    pub async fn record_build(&self, arch: Arch) -> Result<()> {
        let patch = json!({ "metadata": { "annotations": { LAST_BUILD_ANNOTATION: now_secs().to_string() } } });
        let api = self.statefulsets();
        let name = arch.statefulset();
        let (pp, merge) = (PatchParams::default(), Patch::Merge(&patch));
        with_retry(|| api.patch(&name, &pp, &merge))
            .await
            .map_err(|e| {
                self.sts_error(e, arch, "recording a build on", ("patch", "statefulsets"))
            })?;
        Ok(())
    }

    /// Scales each architecture from 0 to 1 replica (never lowering a higher count, which the
    /// HPA owns), always records a build, and with [`ScaleUpOptions::wait`] waits until each has
    /// an available replica, all architectures against one deadline. They run in parallel.
    /// `progress` is called after each look at the StatefulSets while waiting.
    ///
    /// # Errors
    /// [`Error::ScaleUpTimeout`] when the wait runs out; API errors as
    /// [`Fleet::record_build`], plus `get`/`patch` on `statefulsets/scale`.
    pub async fn scale_up(
        &self,
        archs: &[Arch],
        options: &ScaleUpOptions,
        progress: &(dyn Fn(&[WaitState]) + Send + Sync),
    ) -> Result<Vec<ScaleUpReport>> {
        let reports =
            futures_util::future::try_join_all(archs.iter().map(|&arch| self.scale_up_one(arch)))
                .await?;
        if let Some(timeout) = options.wait {
            self.wait_available(archs, timeout, progress).await?;
        }
        Ok(reports)
    }

    async fn scale_up_one(&self, arch: Arch) -> Result<ScaleUpReport> {
        let api = self.statefulsets();
        let name = arch.statefulset();
        // Stamp first: a scale-down deciding meanwhile then sees a fresh build, or fails its
        // resourceVersion precondition and decides again. Stamping after the scale would leave
        // a window where it sees one replica and an old stamp, and scales back to zero.
        self.record_build(arch).await?;
        let (api, name) = (&api, &name);
        self.scale_if_unchanged(arch, "scaling up", move || async move {
            let scale = with_retry(|| api.get_scale(name)).await.map_err(|e| {
                self.sts_error(
                    e,
                    arch,
                    "reading the scale of",
                    ("get", "statefulsets/scale"),
                )
            })?;
            let replicas = scale.spec.and_then(|s| s.replicas).unwrap_or(0);
            Ok(if replicas != 0 {
                Decision::Keep(ScaleUpReport {
                    arch,
                    replicas_before: replicas,
                    scaled: false,
                })
            } else {
                Decision::Scale {
                    resource_version: scale.metadata.resource_version,
                    replicas: 1,
                    report: ScaleUpReport {
                        arch,
                        replicas_before: 0,
                        scaled: true,
                    },
                }
            })
        })
        .await
    }

    /// Waits until each architecture's StatefulSet has an available replica, all against one
    /// deadline `timeout` from now, calling `progress` after each look (every 2 s).
    ///
    /// A look that fails for a reason that may pass (the API server or its etcd restarting:
    /// a 5xx, a broken connection, no answer within 10 s) is logged and made again until the
    /// deadline; the last known counts stand in for it meanwhile.
    ///
    /// # Errors
    /// [`Error::ScaleUpTimeout`] naming the StatefulSets still without one; other API errors,
    /// and a transient one still there at the deadline.
    pub async fn wait_available(
        &self,
        archs: &[Arch],
        timeout: Duration,
        progress: &(dyn Fn(&[WaitState]) + Send + Sync),
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        let api = self.statefulsets();
        let mut known = vec![0; archs.len()];
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let looks = futures_util::future::join_all(archs.iter().map(|&arch| {
                let api = api.clone();
                async move {
                    let name = arch.statefulset();
                    let look = tokio::time::timeout(
                        LOOK_TIMEOUT.min(remaining).max(POLL_INTERVAL),
                        with_retry(|| api.get(&name)),
                    )
                    .await;
                    (arch, look)
                }
            }))
            .await;
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            for ((arch, look), known) in looks.into_iter().zip(&mut known) {
                let name = arch.statefulset();
                match look {
                    Ok(Ok(sts)) => {
                        *known = sts.status.and_then(|s| s.available_replicas).unwrap_or(0);
                    }
                    Ok(Err(err)) if transient(&err) && !remaining.is_zero() => {
                        tracing::warn!(
                            statefulset = %name,
                            error = &err as &dyn std::error::Error,
                            "reading the StatefulSet failed; looking again until the deadline"
                        );
                    }
                    Ok(Err(err)) => {
                        return Err(self.sts_error(err, arch, "reading", ("get", "statefulsets")));
                    }
                    Err(_) => tracing::warn!(
                        statefulset = %name,
                        "no answer from the API server within the look's time; looking again"
                    ),
                }
            }
            let states: Vec<WaitState> = archs
                .iter()
                .zip(&known)
                .map(|(&arch, &available)| WaitState {
                    arch,
                    available,
                    remaining,
                })
                .collect();
            progress(&states);
            if states.iter().all(WaitState::is_ready) {
                return Ok(());
            }
            if remaining.is_zero() {
                let waiting: Vec<String> = states
                    .iter()
                    .filter(|s| !s.is_ready())
                    .map(|s| s.arch.statefulset())
                    .collect();
                return Err(Error::ScaleUpTimeout {
                    statefulsets: waiting.join(", "),
                    seconds: timeout.as_secs(),
                    namespace: self.namespace.clone(),
                });
            }
            tokio::time::sleep(remaining.min(POLL_INTERVAL)).await;
        }
    }

    /// Scales each architecture to 0 when it is idle: no build recorded, or the last one more
    /// than `timeout` ago; without a timeout, regardless. Architectures go one after the other,
    /// amd64 first. An annotation that is not a number counts as no build (and is reported).
    ///
    /// # Errors
    /// API errors; [`Error::Conflict`] when builds keep being recorded during the decision.
    pub async fn scale_down(&self, timeout: Option<Duration>) -> Result<Vec<ScaleDownReport>> {
        let mut reports = Vec::new();
        for arch in Arch::ALL {
            reports.push(self.scale_down_one(arch, timeout).await?);
        }
        Ok(reports)
    }

    async fn scale_down_one(
        &self,
        arch: Arch,
        timeout: Option<Duration>,
    ) -> Result<ScaleDownReport> {
        let api = self.statefulsets();
        let name = arch.statefulset();
        let (api, name) = (&api, &name);
        self.scale_if_unchanged(arch, "scaling down", move || async move {
            let sts = with_retry(|| api.get(name))
                .await
                .map_err(|e| self.sts_error(e, arch, "reading", ("get", "statefulsets")))?;
            let annotation = sts
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(LAST_BUILD_ANNOTATION))
                .map(|v| v.trim().to_owned());
            let last_build = annotation.as_deref().and_then(|v| v.parse::<u64>().ok());
            let invalid_annotation = annotation.filter(|_| last_build.is_none());
            let replicas = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let report = |action| ScaleDownReport {
                arch,
                last_build,
                invalid_annotation: invalid_annotation.clone(),
                action,
                timeout,
            };
            Ok(if replicas == 0 {
                Decision::Keep(report(ScaleDownAction::AlreadyZero))
            } else if !is_idle(last_build, now_secs(), timeout) {
                Decision::Keep(report(ScaleDownAction::Skipped))
            } else {
                // Decided on this version: a build recorded since makes the write fail with 409.
                Decision::Scale {
                    resource_version: sts.metadata.resource_version,
                    replicas: 0,
                    report: report(ScaleDownAction::ScaledDown),
                }
            })
        })
        .await
    }

    /// Reads and decides with `decide`, and writes the decided replica count with the
    /// `resourceVersion` it was decided on; on a 409 (the StatefulSet changed meanwhile) reads
    /// and decides again, up to [`CONFLICT_ATTEMPTS`] times. `action` names the write in
    /// errors ("scaling up").
    async fn scale_if_unchanged<R, F>(
        &self,
        arch: Arch,
        action: &str,
        mut decide: impl FnMut() -> F,
    ) -> Result<R>
    where
        F: Future<Output = Result<Decision<R>>>,
    {
        let api = self.statefulsets();
        let name = arch.statefulset();
        for _ in 0..CONFLICT_ATTEMPTS {
            let (resource_version, replicas, report) = match decide().await? {
                Decision::Keep(report) => return Ok(report),
                Decision::Scale {
                    resource_version,
                    replicas,
                    report,
                } => (resource_version, replicas, report),
            };
            let patch = json!({
                "metadata": { "resourceVersion": resource_version },
                "spec": { "replicas": replicas },
            });
            let (pp, merge) = (PatchParams::default(), Patch::Merge(&patch));
            match with_retry(|| api.patch_scale(&name, &pp, &merge)).await {
                Ok(_) => return Ok(report),
                Err(e) if is_conflict(&e) => continue,
                Err(e) => {
                    return Err(self.sts_error(e, arch, action, ("patch", "statefulsets/scale")));
                }
            }
        }
        Err(Error::Conflict { statefulset: name })
    }
}

/// What [`Fleet::scale_if_unchanged`]'s read decided.
enum Decision<R> {
    /// Nothing to write: return this report.
    Keep(R),
    /// Write `replicas` if the StatefulSet is still at `resource_version`; then return `report`.
    Scale {
        resource_version: Option<String>,
        replicas: i32,
        report: R,
    },
}

with_setters!(ScaleUpOptions {
    with_wait => wait: Option<Duration>,
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idleness_follows_panfactum_with_its_edge_fixed() {
        let t = Some(Duration::from_secs(1800));
        assert!(is_idle(None, 10_000, t), "no build recorded counts as idle");
        assert!(is_idle(Some(1_000), 10_000, t));
        assert!(
            !is_idle(Some(8_200), 10_000, t),
            "exactly the timeout is not over it"
        );
        assert!(is_idle(Some(8_199), 10_000, t));
        // No timeout: scale down even if a build was stamped this very second.
        assert!(is_idle(Some(10_000), 10_000, None));
        // A stamp from the future (clock skew) is recent, not idle.
        assert!(!is_idle(Some(20_000), 10_000, t));
    }

    #[test]
    fn decisions_speak_of_the_timeout_not_a_flag() {
        let report = |timeout: Option<u64>, last_build, action| ScaleDownReport {
            arch: Arch::Arm64,
            last_build,
            invalid_annotation: None,
            action,
            timeout: timeout.map(Duration::from_secs),
        };
        assert_eq!(
            report(None, Some(5), ScaleDownAction::ScaledDown).message(),
            "arm64: No idle timeout given. Scaling down..."
        );
        assert_eq!(
            report(Some(60), None, ScaleDownAction::ScaledDown).message(),
            "arm64: No builds recorded. Scaling down..."
        );
        assert_eq!(
            report(Some(60), Some(5), ScaleDownAction::Skipped).message(),
            "arm64: Last build occurred less than 60 seconds ago. Skipping scale down."
        );
    }
}
