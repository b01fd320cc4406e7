//! Registry API: credentials from the docker config, resolving images, multi-platform index
//! assembly and push (`manifest push`), `manifest inspect` and the attestations it reads,
//! and pushing OCI layout tarballs.
//!
//! Border: owns the OCI distribution API and Docker credentials; it imports no other module
//! of this crate but [`crate::aws`] (ECR logins), and never `buildkit`, `fleet`,
//! `multiplatform`, `config` or kube (`tests/integration/borders.rs` checks this), so it can be
//! used alone.
//!
//! ```no_run
//! # async fn run() -> Result<(), pf_buildkit::registry::Error> {
//! use pf_buildkit::registry::{Client, ClientOptions, parse_reference, sources_from_template, parse_platforms};
//!
//! let client = Client::new(ClientOptions::from_env()?.with_insecure(true))?;
//! let platforms = parse_platforms("linux/amd64,linux/arm64")?;
//! let sources = sources_from_template("127.0.0.1:5000/app:v1-ARCH", &platforms)?;
//! let index = client.push_index(&parse_reference("127.0.0.1:5000/app:v1")?, &sources).await?;
//! println!("{} ({})", index.digest, index.media_type);
//! # Ok(()) }
//! ```

pub mod assemble;
mod attestations;
mod client;
pub mod credentials;
mod error;
mod http;
mod layout;
pub mod platform;
mod reference;

pub use assemble::{
    AssembledIndex, Descriptor, IndexEntry, Resolved, ResolvedContent, ResolvedSource,
    assemble_index,
};
pub use attestations::{AttestationKind, IN_TOTO, ImageAttestations, PREDICATE_TYPE};
pub use client::{Client, ClientOptions, FetchedManifest, PushedIndex, Source};
pub use credentials::{Credential, CredentialsError, CredentialsProvider, DockerConfig};
pub use error::{Error, ProtocolMismatch};
pub use http::RetryPolicy;
pub use platform::{Platform, expand_template, has_placeholder, parse_platforms};
pub use reference::{parse_reference, valid_repository, valid_tag};

/// The sources manifest-tool's `push from-args` would use: `template` with `ARCH`, `OS` and
/// `VARIANT` replaced (as whole tokens) for each platform.
///
/// # Errors
/// A template without a placeholder, or a name that is not a valid reference.
pub fn sources_from_template(template: &str, platforms: &[Platform]) -> Result<Vec<Source>, Error> {
    if !has_placeholder(template) {
        return Err(Error::NoPlaceholder {
            template: template.to_owned(),
        });
    }
    platforms
        .iter()
        .map(|p| {
            Ok(Source {
                reference: parse_reference(&expand_template(template, p))?,
                platform: p.clone(),
            })
        })
        .collect()
}
