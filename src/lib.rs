#![cfg_attr(docsrs, feature(doc_cfg))]
//! pf-buildkit: a native BuildKit client and Kubernetes BuildKit fleet tool.
//!
//! The library is the product; the `pf-buildkit` binary is a thin skin over it. It talks to
//! BuildKit over its gRPC API directly (no `buildctl`), over TCP, unix sockets, TLS, the Docker
//! Engine's embedded BuildKit, or any byte stream you supply. The [`fleet`] module runs a
//! Kubernetes BuildKit fleet through the Kubernetes API (no `kubectl`): choosing and scaling
//! pods, port-forwards (`kube-pod://` endpoints via [`fleet::connect`]), tunnels, cache clearing.
//! [`multiplatform`] is the whole multi-platform and cluster build as one call. [`llb`] builds
//! BuildKit's LLB graphs in Rust, byte for byte as Go's `client/llb` marshals them, for
//! [`buildkit::Client::build`] to solve.
//!
//! Data flows one way: [`multiplatform`] -> ([`config`], [`fleet`]) -> [`buildkit`] ->
//! [`registry`]; a module never imports one above it (`tests/integration/borders.rs`).
//!
//! # Features
//!
//! Everything is on by default, which is what the binary needs. An embedder that wants only
//! BuildKit and the registry turns the defaults off (`default-features = false`) and compiles
//! none of the AWS SDK, kube, k8s-openapi or the binary's crates.
//!
//! | feature | what it adds | crates it brings |
//! |---|---|---|
//! | (none) | [`buildkit`] (client, sessions, solves, progress), [`llb`], [`registry`], [`config`] | tonic, hyper, rustls (ring), reqwest, oci-spec |
//! | `aws` | the `aws` module: ECR logins in the registry's credentials, EKS tokens for the fleet | the AWS SDK (aws-config, aws-sdk-ecr, aws-sigv4) |
//! | `fleet` | the `fleet` module (`kube-pod://` addresses, scaling, tunnels, cache clearing) and the `multiplatform` build | kube, k8s-openapi |
//! | `cli` (default) | the `pf-buildkit` binary; implies `aws` and `fleet` | clap, clap_complete, anyhow, tracing-subscriber, indicatif |
//!
//! ```no_run
//! # async fn run() -> Result<(), pf_buildkit::buildkit::Error> {
//! use pf_buildkit::buildkit::{Client, Endpoint, TlsOptions};
//!
//! let client = Client::connect("docker://".parse::<Endpoint>()?, &TlsOptions::default()).await?;
//! let info = client.info().await?;
//! println!("BuildKit {} ({})", info.version, info.package);
//! # Ok(()) }
//! ```

#[cfg(feature = "aws")]
#[cfg_attr(docsrs, doc(cfg(feature = "aws")))]
pub mod aws;
pub mod buildkit;
pub mod config;
mod files;
#[cfg(feature = "fleet")]
#[cfg_attr(docsrs, doc(cfg(feature = "fleet")))]
pub mod fleet;
pub mod llb;
#[cfg(feature = "fleet")]
#[cfg_attr(docsrs, doc(cfg(feature = "fleet")))]
pub mod multiplatform;
pub mod registry;
mod setters;

/// The `User-Agent` of every HTTP request this crate makes (Kubernetes API, registries, AWS),
/// so that audit and access logs name the client: `pf-buildkit/VERSION`.
pub const USER_AGENT: &str = concat!("pf-buildkit/", env!("CARGO_PKG_VERSION"));
