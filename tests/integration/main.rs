//! Integration tests against the real components the project's `scripts/testenv` starts: a
//! Docker Engine with its embedded BuildKit and a registry. Kubernetes is an in-process API
//! server. Addresses come from the environment that `scripts/testenv start` prints.

mod fake_kube;
mod fleet;
mod util;
