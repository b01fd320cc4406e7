//! Integration tests against the real components the project's `scripts/testenv` starts: a
//! Docker Engine with its embedded BuildKit, a registry and, when its binary is at hand,
//! upstream's standalone buildkitd (tests that build run on each daemon: `util::Tier`).
//! Kubernetes is a real API server, or an in-process fake for faults. Addresses come from
//! the environment that `scripts/testenv start` prints. A test that needs a daemon of its own
//! starts it through `sandbox`, which writes its configuration and removes it on drop.

// Test code may panic on anything unexpected: that is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod util;

mod attest;
mod aws;
mod borders;
mod build;
mod cancel;
mod cli;
mod content;
mod daemon;
mod fake_kube;
mod faults;
mod fleet;
mod fleet_real;
mod fleet_scenarios;
mod flood;
mod history;
mod hostile;
mod hostile_peer;
mod leftovers;
mod llb;
mod manifest;
mod multiplatform;
mod progress;
mod real_kube;
mod registry_proxy;
mod relay;
mod sandbox;
mod shared_store;
mod static_binary;
mod tls;
mod transports;
mod user_agent;
