//! Why a build's options are unusable, found before anything is sent to the daemon. Each
//! variant names the value at fault (a path, a secret id, a layout name) and keeps the I/O or
//! layout failure under it as its source; none names a command-line flag, since library
//! users set these values in code (the binary adds the flag, `cli/error.rs`).

use std::path::PathBuf;

use super::oci_layout::LayoutError;
use super::session::SecretError;

/// Options [`super::BuildOptions`] that cannot be built with; nothing was sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidOptions {
    /// The build context is not a directory (or does not exist).
    #[error("build context {} is not a directory", path.display())]
    ContextNotADirectory {
        /// The context directory as set in the options (relative paths are not resolved).
        path: PathBuf,
    },
    /// The Dockerfile cannot be looked at (it does not exist, or its directory is unreadable).
    #[error("cannot read the Dockerfile {}", path.display())]
    Dockerfile {
        /// The Dockerfile's path (given, or `CONTEXT/Dockerfile`).
        path: PathBuf,
        /// The I/O error from looking at it; `NotFound` when there is no such file.
        #[source]
        source: std::io::Error,
    },
    /// The Dockerfile's path names a directory or another non-file.
    #[error("Dockerfile {} is not a file", path.display())]
    DockerfileNotAFile {
        /// The Dockerfile's path (given, or `CONTEXT/Dockerfile`).
        path: PathBuf,
    },
    /// A named context or extra local directory is not a directory.
    #[error("local directory {name}: {} is not a directory", path.display())]
    LocalNotADirectory {
        /// The name the daemon asks for it by: a named context's name, or an extra local's.
        name: String,
        /// The directory as set in the options.
        path: PathBuf,
    },
    /// A secret's value cannot be read.
    #[error("secret {id}")]
    Secret {
        /// The secret's id, as the Dockerfile's `RUN --mount=type=secret,id=ID` names it.
        id: String,
        /// What went wrong reading the secret's file or environment variable.
        #[source]
        source: SecretError,
    },
    /// An SSH agent socket does not exist.
    #[error("ssh {id}: agent socket {} does not exist", path.display())]
    SshSocketMissing {
        /// The agent's id (`default` unless named), as `RUN --mount=type=ssh,id=ID` names it.
        id: String,
        /// The agent socket path as set in the options.
        path: PathBuf,
    },
    /// An output's destination cannot be written as the exporter needs.
    #[error("output destination {}", path.display())]
    OutputDestination {
        /// The destination path as set in the output's options.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        problem: DestinationProblem,
    },
    /// A content store's directory has a path the daemon cannot be told (it names local
    /// stores by their path, as a string).
    #[error("{role} {} is not valid UTF-8", path.display())]
    NotUtf8 {
        /// Which store.
        role: StoreRole,
        /// The directory as set in the options.
        path: PathBuf,
    },
    /// A content store (cache destination or source, layout output, named layout) cannot
    /// be opened, or does not hold the tag or digest asked for. (The text leaves the path to
    /// the source, which names it.)
    #[error("cannot use {role}")]
    Store {
        /// Which store.
        role: StoreRole,
        /// The directory as set in the options; the source's text names it too.
        path: PathBuf,
        /// What the layout check found: missing or malformed layout files, a missing tag or digest,
        /// or an I/O error.
        #[source]
        source: LayoutError,
    },
    /// An `index.json` entry the build would use has no valid digest.
    #[error("{role} {}: its index.json entry for the tag has no valid digest", path.display())]
    NoDigest {
        /// Which store.
        role: StoreRole,
        /// The layout directory whose `index.json` holds the entry.
        path: PathBuf,
    },
    /// More than one OCI layout directory output: the daemon has one store id for it.
    #[error(
        "only one OCI layout directory output (type=oci,tar=false) per build: the daemon names its store \"export\""
    )]
    TwoLayoutOutputs,
    /// A name for an OCI layout that cannot appear in an `oci-layout://` reference.
    #[error("OCI layout name {name:?} must be a lower-case reference name (no ':', '@' or ',')")]
    OciLayoutName {
        /// The name as set in the options.
        name: String,
    },
    /// A frontend attribute names an `oci-layout://` store that no layout was offered as.
    #[error("{key}={value}: no OCI layout named {name} is offered to the build")]
    UnknownOciLayout {
        /// The attribute (e.g. `context:base`).
        key: String,
        /// Its value.
        value: String,
        /// The layout name taken from the value's `oci-layout://NAME`.
        name: String,
    },
    /// A frontend attribute's `oci-layout://NAME@DIGEST` has a malformed digest.
    #[error("{key}={value}")]
    OciLayoutDigest {
        /// The frontend attribute's key, e.g. `context:base`.
        key: String,
        /// Its value.
        value: String,
        /// Why the digest does not parse.
        #[source]
        source: LayoutError,
    },
}

/// What is wrong with an output destination.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DestinationProblem {
    /// A directory output (`local`, an OCI layout) at a path that is a file.
    #[error("it exists and is not a directory")]
    NotADirectory,
    /// A file output (`tar`, `oci`, `docker`) at a path that is a directory.
    #[error("it is a directory, and type={kind} writes a file")]
    IsADirectory {
        /// The exporter type as written, e.g. `tar` or `oci`.
        kind: String,
    },
    /// The directory the file would go in cannot be looked at (most often: it does not
    /// exist).
    #[error("cannot use its directory {}", parent.display())]
    Parent {
        /// The destination's parent directory.
        parent: PathBuf,
        /// The I/O error from looking at the parent (`NotFound` when it does not exist).
        #[source]
        source: std::io::Error,
    },
    /// The destination's parent is a file.
    #[error("{} is not a directory", parent.display())]
    ParentNotADirectory {
        /// The destination's parent.
        parent: PathBuf,
    },
}

/// Which client-side content store an error is about.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreRole {
    /// A local cache export destination (`type=local,dest=DIR`).
    CacheExport,
    /// A local cache import source (`type=local,src=DIR`).
    CacheImport,
    /// An OCI layout directory output (`type=oci,tar=false`).
    LayoutOutput,
    /// An OCI layout offered to the build by name.
    OciLayout {
        /// The name the layout was offered under, as in `oci-layout://NAME`.
        name: String,
    },
}

impl std::fmt::Display for StoreRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreRole::CacheExport => f.write_str("the cache export destination"),
            StoreRole::CacheImport => f.write_str("the cache import source"),
            StoreRole::LayoutOutput => f.write_str("the OCI layout output"),
            StoreRole::OciLayout { name } => write!(f, "the OCI layout {name}"),
        }
    }
}
