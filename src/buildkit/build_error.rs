//! [`BuildError`]: why a build did not succeed, shared by the solve and the client-side stores
//! it writes.

use std::path::PathBuf;

use super::invalid::InvalidOptions;
use super::oci_layout::LayoutError;
use super::progress::FailureReport;
use crate::registry::credentials::CredentialsError;

/// Why a build did not succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The options are unusable; nothing was sent.
    #[error(transparent)]
    Invalid(#[from] InvalidOptions),
    /// A client-side content store (an OCI layout directory: local cache or layout output)
    /// could not be written. What the build had written there was taken back.
    #[error("cannot write to OCI layout {}", path.display())]
    Store {
        /// The layout's root directory, as set in the options.
        path: PathBuf,
        /// The first write that failed.
        #[source]
        source: LayoutError,
    },
    /// The daemon's answer about a content store it wrote is unusable (the descriptor to
    /// record in `index.json` is missing or malformed). What the build had written there was
    /// taken back.
    #[error("OCI layout {}: {problem}", path.display())]
    StoreAnswer {
        /// The layout's root directory, as set in the options.
        path: PathBuf,
        /// What is wrong with the answer.
        problem: &'static str,
    },
    /// The Solve succeeded but an exported file could not be renamed onto its destination
    /// (it was deleted).
    #[error("cannot put the exported file in place at {}", path.display())]
    PlaceOutput {
        /// The output's destination, as set in the options.
        path: PathBuf,
        /// The rename's I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The Docker configuration could not be read.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// The daemon ran the build and it failed (a step failed, a file was missing, …).
    #[error("build failed: {}", .report.message)]
    Failed {
        /// What failed, with the failing step and Dockerfile lines when known.
        report: FailureReport,
        /// The status the Solve call ended with: the daemon's code and message (not a
        /// `source`: `report` already holds its text).
        status: super::RpcStatus,
    },
    /// The daemon could not be talked to.
    #[error(transparent)]
    Rpc(#[from] super::Error),
}
