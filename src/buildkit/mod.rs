//! The BuildKit client: addresses, transports, the Control API and (in submodules) sessions,
//! solves and progress. Knows nothing of Kubernetes: a port-forward arrives as a [`Dialer`],
//! made by the `kube-pod://` [`Connector`] the fleet module offers.
//!
//! Border: owns the BuildKit wire protocol and connections to daemons. It may use
//! [`crate::registry`] (credentials for the session's auth callback) and must not import
//! `fleet`, `multiplatform`, `config` or the `kube` crates (`tests/integration/borders.rs`
//! checks this).

pub mod attest;
mod build_error;
mod client;
mod connector;
pub mod endpoint;
mod entitlement;
mod error;
pub mod fsutil;
pub mod history;
mod invalid;
pub mod oci_layout;
mod options;
mod output;
pub mod progress;
pub mod proto;
mod random;
pub mod session;
mod solve;
pub mod spec;
mod status;
mod stores;
mod tls;
mod transport;

pub use client::{
    CONNECT_TIMEOUT, CacheRecord, Client, DaemonInfo, GcPolicy, MAX_MESSAGE_SIZE, PruneOptions,
    Worker,
};
pub use connector::{Connector, ConnectorError, Connectors};
pub use endpoint::{DEFAULT_BUILDKIT_PORT, DockerHost, Endpoint, ParseEndpointError};
pub use entitlement::Entitlement;
pub use error::{Error, Result};
pub use invalid::{DestinationProblem, InvalidOptions, StoreRole};
pub use output::{Attrs, Cache, CacheDirection, Output};
pub use session::Attachable;
pub use solve::{BuildError, BuildOptions, BuildResult, new_build_ref, write_metadata_file};
pub use status::{RpcCode, RpcStatus};
pub use tls::{Pem, TlsConfigError, TlsFile, TlsOptions, TlsProblem};
pub use transport::{BoxedIo, Dialer, EndpointDialer, Io};
