//! The Kubernetes BuildKit fleet, spoken to directly through the Kubernetes API (no `kubectl`):
//! pick the least-loaded pod, scale the StatefulSets up and down, stamp builds, port-forward
//! to a pod, run a local tunnel, and clear the fleet's caches.
//!
//! It keeps Panfactum's contract so existing CronJobs, workflows and RBAC keep working:
//! namespace [`NAMESPACE`], StatefulSets `buildkit-amd64` and `buildkit-arm64`, container
//! [`CONTAINER`], port [`PORT`], and the annotation [`LAST_BUILD_ANNOTATION`] holding the epoch
//! seconds of the last build as a decimal string.
//!
//! Border: owns everything Kubernetes. It may use [`crate::buildkit`] (it hands BuildKit
//! connections up as dialers) and [`crate::aws`] (EKS tokens), and must not import
//! `multiplatform` or `config` (`tests/integration/borders.rs` checks this).
//!
//! ```no_run
//! # async fn run() -> Result<(), pf_buildkit::fleet::Error> {
//! use pf_buildkit::fleet::{Arch, Fleet};
//!
//! let fleet = Fleet::connect(Some("production-primary")).await?;
//! let address = fleet.get_address(Arch::Amd64).await?;
//! println!("{}", address.url());
//! # Ok(()) }
//! ```

mod address;
mod cache;
#[cfg(feature = "aws")]
mod eks_auth;
mod error;
mod history;
mod kube_client;
mod kube_pod;
mod portforward;
mod portforward_spdy;
mod portforward_websocket;
pub mod quantity;
mod scale;
mod tunnel;

use std::fmt;
use std::str::FromStr;

pub use address::{MetricsUnavailable, PodAddress, PodMetricsState};
pub use cache::{
    BusySignal, CacheClearEvent, CacheClearOptions, CacheClearReport, PodPrune, PvcAction,
};
pub use error::{Error, PortForwardError, Result};
pub use history::{FleetHistory, PodRecord};
pub use kube_client::{Fleet, RETRY_ATTEMPTS};
pub use kube_pod::{KUBE_POD_SCHEME, KubePod, KubePodConnector, connect, connectors, parse};
pub use portforward::{PodDialer, PortForwardStream};
pub use scale::{ScaleDownAction, ScaleDownReport, ScaleUpOptions, ScaleUpReport, WaitState};
pub use tunnel::{
    DEFAULT_SCALE_UP_WAIT, Lease, LeaseOptions, RECORD_INTERVAL, ReadyProgress, Tunnel,
    TunnelOptions,
};

/// The namespace the fleet runs in.
pub const NAMESPACE: &str = "buildkit";
/// The BuildKit container of each pod.
pub const CONTAINER: &str = "buildkitd";
/// The TCP port buildkitd listens on in each pod: BuildKit's conventional port, defined once
/// in [`crate::buildkit`].
pub const PORT: u16 = crate::buildkit::DEFAULT_BUILDKIT_PORT;
/// The StatefulSet annotation holding the epoch seconds of the last build.
pub const LAST_BUILD_ANNOTATION: &str = "panfactum.com/last-build";

/// A CPU architecture of the fleet: one StatefulSet each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Arch {
    /// `buildkit-amd64`.
    Amd64,
    /// `buildkit-arm64`.
    Arm64,
}

impl Arch {
    /// Both architectures, amd64 first.
    pub const ALL: [Arch; 2] = [Arch::Amd64, Arch::Arm64];

    /// `amd64` or `arm64`.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The StatefulSet of this architecture, e.g. `buildkit-amd64`.
    pub fn statefulset(self) -> String {
        format!("buildkit-{}", self.as_str())
    }

    /// Whether `pod` is one of this architecture's StatefulSet pods (`buildkit-<arch>-<n>`).
    pub fn owns_pod(self, pod: &str) -> bool {
        pod.strip_prefix(&self.statefulset())
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    }

    /// The architecture whose StatefulSet owns `pod`, if any.
    pub fn of_pod(pod: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.owns_pod(pod))
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An architecture name that is not `amd64` or `arm64`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid architecture {0:?}: must be amd64 or arm64")]
#[non_exhaustive]
pub struct ParseArchError(pub String);

impl FromStr for Arch {
    type Err = ParseArchError;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "amd64" => Ok(Arch::Amd64),
            "arm64" => Ok(Arch::Arm64),
            other => Err(ParseArchError(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_parses_exactly() {
        assert_eq!("amd64".parse::<Arch>(), Ok(Arch::Amd64));
        assert_eq!("arm64".parse::<Arch>(), Ok(Arch::Arm64));
        // The bash original's regex accepted both of these.
        assert!("amd64x".parse::<Arch>().is_err());
        assert!("xarm64".parse::<Arch>().is_err());
    }

    #[test]
    fn pods_belong_by_exact_statefulset_name() {
        assert!(Arch::Amd64.owns_pod("buildkit-amd64-0"));
        assert!(Arch::Amd64.owns_pod("buildkit-amd64-12"));
        assert!(!Arch::Amd64.owns_pod("buildkit-amd64-"));
        assert!(!Arch::Amd64.owns_pod("buildkit-amd64-x"));
        assert!(!Arch::Amd64.owns_pod("other-buildkit-amd64-0"));
        assert!(!Arch::Amd64.owns_pod("buildkit-arm64-0"));
        assert_eq!(Arch::of_pod("buildkit-arm64-3"), Some(Arch::Arm64));
        assert_eq!(Arch::of_pod("buildkit-cache-job"), None);
    }
}
