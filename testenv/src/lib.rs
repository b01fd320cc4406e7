//! The test environment of pf-buildkit: the real daemons its tests talk to, started,
//! configured and stopped from Rust, in the spirit of BuildKit's own integration sandbox.
//!
//! Every component is a value that owns its process(es) and its folder; dropping it stops the
//! process (SIGTERM, a grace period, SIGKILL, reaped) and removes what it left (runc
//! containers, shims, mounts, the folder). Shared components live in one [`Environment`],
//! held by the `pf-testenv` supervisor process; a test that needs a daemon of its own starts
//! the same component itself and drops it at its end.
//!
//! What stays in `scripts/testenv`: installing packages, unpacking binaries and making the
//! image files in the cache (`/var/cache/pf-buildkit-testenv`). This crate only reads them.
//!
//! ```no_run
//! # fn main() -> pf_testenv::Result<()> {
//! use pf_testenv::{Registry, RegistryConfig, Settings};
//! let settings = Settings::from_env()?;
//! let dir = tempfile::tempdir().expect("a temporary folder");
//! let registry = Registry::start(&RegistryConfig {
//!     name: "registry".into(),
//!     binary: settings.root().join("usr/bin/docker-registry"),
//!     dir: dir.path().join("registry"),
//!     log: dir.path().join("registry.log"),
//!     port: 15000,
//!     login: None,
//!     timeout: settings.timeout,
//!     die_with_parent: false,
//! })?;
//! println!("push to {}", registry.addr());
//! // Dropping `registry` stops it and removes its folder.
//! # Ok(())
//! # }
//! ```

pub mod buildkitd;
pub mod engine;
pub mod environment;
pub mod error;
pub mod http;
pub mod images;
pub mod kube;
pub mod leftovers;
pub mod moto;
pub mod private_buildkitd;
pub mod process;
pub mod registry;
pub mod settings;
pub mod snapshotter;
pub mod supervisor;

pub use buildkitd::{BuildkitdConfig, SharedBuildkitd};
pub use engine::{Engine, EngineConfig};
pub use environment::Environment;
pub use error::{Error, Result};
pub use images::CachedImage;
pub use leftovers::Folder;
pub use moto::Moto;
pub use private_buildkitd::PrivateBuildkitd;
pub use process::{Daemon, Launch};
pub use registry::{Registry, RegistryConfig};
pub use settings::Settings;
