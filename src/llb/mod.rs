//! LLB, BuildKit's build graph, built in Rust and marshalled byte for byte as BuildKit's own Go
//! `client/llb` marshals it, so op digests (BuildKit's cache keys) are the same as those of any
//! Go tool that builds the same graph.
//!
//! A [`State`] is a filesystem plus the settings later steps inherit (working directory,
//! environment, user, platform). Sources start a graph, [`State::run`] runs a process on one,
//! [`State::file`] changes files, [`merge`] and [`diff`] combine states; [`State::marshal`]
//! turns the graph into a [`Definition`] that [`crate::buildkit::Client::build`] solves.
//!
//! Each op kind in a few lines:
//!
//! ```
//! use pf_buildkit::llb::{self, CacheSharing, MarshalOptions, Mount, NetMode};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Sources: an image (optionally for another platform), a client directory, git, a URL.
//! let base = llb::image("busybox:1.36");
//! let arm = llb::Image::new("busybox:1.36").platform("linux/arm64".parse()?).into_state();
//! let context = llb::Local::new("context").include(["*.rs"]).exclude(["target"]).into_state();
//! let repo = llb::git("https://github.com/moby/buildkit.git", "v0.32.2");
//! let tarball = llb::Http::new("https://example.com/a.tgz")
//!     .checksum("sha256:0000000000000000000000000000000000000000000000000000000000000000")
//!     .into_state();
//!
//! // Exec: arguments, environment, network mode, and mounts (bind, cache, tmpfs, secret, ssh).
//! let built = base
//!     .run_shlex("sh -c 'make > /out/log'")
//!     .env("CI", "1")
//!     .dir("/src")
//!     .network(NetMode::None)
//!     .mount("/src", &context, Mount::readonly())
//!     .mount("/root/.cache", &llb::scratch(), Mount::cache("go", CacheSharing::Locked))
//!     .mount("/tmp", &llb::scratch(), Mount::tmpfs())
//!     .mount("/out", &llb::scratch(), Mount::bind())
//!     .secret("/run/secrets/token", "token")
//!     .ssh()
//!     .custom_name("build")
//!     .build();
//! let log = built.mount_state("/out")?;
//!
//! // File ops, chained; copy from another state.
//! let files = llb::scratch().file(
//!     llb::mkdir("/etc/app", 0o755)
//!         .parents(true)
//!         .then(llb::mkfile("/etc/app/conf", 0o644, "debug = false\n"))
//!         .then(llb::copy(&log, "/log", "/etc/app/log").create_dest_path(true))
//!         .then(llb::rm("/etc/app/old").allow_not_found(true)),
//! );
//!
//! // Merge and diff.
//! let layered = llb::merge([&built.root(), &files, &arm, &repo, &tarball]);
//! let changes = llb::diff(&base, &built.root());
//!
//! let definition = layered.marshal(&MarshalOptions::for_platform("linux/amd64".parse()?))?;
//! println!("{} ops, result {}", definition.ops().count(), definition.terminal());
//! # let _ = changes;
//! # Ok(()) }
//! ```
//!
//! Border: pure graph building and encoding, no I/O. It uses the generated wire types of
//! [`crate::buildkit::proto`] and the reference and platform parsers of [`crate::registry`],
//! and must not import `multiplatform`, `fleet`, `config` or the `kube` crates; `buildkit`
//! does not import it (a solve takes the wire `Definition`).

mod dump;
mod exec;
mod exec_options;
mod file;
mod file_actions;
mod gojson;
mod marshal;
mod node;
mod shlex;
mod source;
mod state;
mod wire;

pub use dump::dump_json_lines;
pub use exec::{ExecState, Run};
pub use exec_options::{CacheSharing, Mount, NetMode, Secret, SecurityMode, Ssh};
pub use file::{FileActions, copy};
pub use file_actions::{Chown, Mkdir, Mkfile, Rm, UserSpec, mkdir, mkfile, rm};
pub use marshal::{Definition, MarshalOptions};
pub use node::{Copy, OpOptions, State};
pub use shlex::split as shlex_split;
pub use source::{Git, Http, Image, Local, ResolveMode, git, http, image, local};
pub use state::{diff, diff_with, merge, merge_with, scratch};

pub use crate::registry::Platform;

/// Why a graph cannot be marshalled, or a Definition cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LlbError {
    /// An image reference that does not parse.
    #[error("invalid image reference {reference:?}: {problem}")]
    ImageReference {
        /// The reference as given.
        reference: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A command line that does not split into words (an unterminated quote).
    #[error("cannot split the command line {command:?}: {problem}")]
    CommandLine {
        /// The command line as given.
        command: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// An exec op with no arguments.
    #[error("a run step needs a command (its argument list is empty)")]
    NoArguments,
    /// A mount that cannot be what was asked of it.
    #[error("mount {dest}: {problem}")]
    Mount {
        /// The mount's target path.
        dest: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// A marshalled Definition that does not decode.
    #[error("the LLB definition does not decode: {problem}")]
    Decode {
        /// Which part and why.
        problem: String,
    },
}
