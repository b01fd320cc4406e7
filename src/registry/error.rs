//! Errors of the registry client; each names the registry, reference, digest or file involved.

use std::path::PathBuf;

use reqwest::StatusCode;

use super::credentials::CredentialsError;

/// A registry operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A reference that does not parse.
    #[error("invalid image reference {reference:?}: {problem}")]
    InvalidReference {
        /// The reference text exactly as given.
        reference: String,
        /// What is wrong, e.g. that the tag has characters a tag may not have.
        problem: String,
    },
    /// A registry host that cannot form a URL.
    #[error("invalid registry host {registry:?}")]
    InvalidRegistry {
        /// The registry host as given (`HOST[:PORT]`), which did not make a valid `https://` or
        /// `http://` URL.
        registry: String,
    },
    /// The docker config could not be read.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// The HTTP client could not be built.
    #[error("cannot set up the HTTP client")]
    HttpClient(#[source] reqwest::Error),
    /// No HTTP answer (refused, dropped, not HTTP) even after retries.
    #[error(
        "cannot talk to registry {registry} (after {attempts} attempt(s)){}",
        mismatch_text(mismatch)
    )]
    Connect {
        /// The registry host as the reference names it (`HOST[:PORT]`; Docker Hub is `docker.io`).
        registry: String,
        /// Attempts made, the first included.
        attempts: u32,
        /// The registry speaks another protocol than the client, when that is what failed.
        mismatch: Option<ProtocolMismatch>,
        /// The last attempt's failure (refused, reset, TLS, timeout, or an answer that is not
        /// HTTP).
        #[source]
        source: reqwest::Error,
    },
    /// A status the operation cannot continue from.
    #[error("registry {registry} answered {status} to {method} {path}{}{}", retried(*attempts), with_message(message))]
    Status {
        /// The registry host as the reference names it (`HOST[:PORT]`).
        registry: String,
        /// The HTTP method of the request, e.g. `PUT`.
        method: String,
        /// The URL path of the request, e.g. `/v2/app/manifests/v1`, or the token realm's path.
        path: String,
        /// The HTTP status the last attempt got.
        status: StatusCode,
        /// Attempts made, the first included; more than one only for statuses worth retrying.
        attempts: u32,
        /// The registry's error, `CODE: message` from its JSON error body, else up to 120
        /// characters of the body; may be empty.
        message: String,
    },
    /// 401 after presenting what the docker config holds.
    #[error("{}", unauthorized(registry, *had_credentials))]
    Unauthorized {
        /// The registry host as the reference names it (`HOST[:PORT]`).
        registry: String,
        /// Whether credentials were sent (and rejected) or there were none.
        had_credentials: bool,
    },
    /// The registry's `WWW-Authenticate` challenge or token answer is unusable.
    #[error(
        "registry {registry} sent an unusable auth challenge or token answer (realm {realm:?})"
    )]
    BadChallenge {
        /// The registry host as the reference names it (`HOST[:PORT]`).
        registry: String,
        /// The token service URL the challenge named (`realm="…"`), as sent.
        realm: String,
    },
    /// The manifest does not exist.
    #[error("{reference} not found in its registry")]
    NotFound {
        /// The whole reference, `REGISTRY/REPOSITORY[:TAG][@DIGEST]`, after Docker Hub names were
        /// filled in.
        reference: String,
    },
    /// Content does not hash to the digest it was fetched by or announced with.
    #[error("digest mismatch for {what}: expected {expected}, content hashes to {actual}")]
    DigestMismatch {
        /// What was checked, in words naming the reference, e.g. `config of REGISTRY/REPO:TAG`.
        what: String,
        /// The digest it was fetched by or announced with, `sha256:<hex>`.
        expected: String,
        /// The sha256 of the bytes actually received, `sha256:<hex>`.
        actual: String,
    },
    /// A digest string that is not `sha256:<64 hex>`.
    #[error("unsupported or malformed digest {digest:?} in {what}")]
    BadDigest {
        /// What held it, in words naming the reference (a descriptor, a header).
        what: String,
        /// The digest text as found, which is not `sha256:` and 64 lowercase hex digits.
        digest: String,
    },
    /// A manifest or config the client cannot use.
    #[error("{reference}: {problem}")]
    Unusable {
        /// The whole reference, `REGISTRY/REPOSITORY[:TAG][@DIGEST]`.
        reference: String,
        /// What is wrong with it, e.g. that the manifest is larger than 16 MiB.
        problem: String,
    },
    /// A document (manifest, index, the index being pushed) that is not the JSON it must be.
    #[error("{reference}: invalid {document} JSON")]
    Json {
        /// The reference, or what the document is when it has none yet.
        reference: String,
        /// Which document: `manifest`, `index`, ….
        document: &'static str,
        /// What the JSON parser or writer said.
        #[source]
        source: serde_json::Error,
    },
    /// A source image is not the platform it was listed for.
    #[error("{reference} is {actual}, not {expected}")]
    PlatformMismatch {
        /// The whole source reference, `REGISTRY/REPOSITORY[:TAG][@DIGEST]`.
        reference: String,
        /// The platform the source was listed for, `os/arch[/variant]`.
        expected: String,
        /// The platform in the image's config, `os/arch[/variant]`.
        actual: String,
    },
    /// A source index has no image for the requested platform.
    #[error("{reference} is an index with no image for {platform}")]
    NoMatchingPlatform {
        /// The whole source reference, an index.
        reference: String,
        /// The platform the source was listed for, `os/arch[/variant]`.
        platform: String,
    },
    /// An image (or the one platform asked for) carries no attestation of the kind asked for.
    #[error("{reference} has no {kind} attestation{}", for_platform(platform))]
    NoAttestations {
        /// The whole reference, `REGISTRY/REPOSITORY[:TAG][@DIGEST]`.
        reference: String,
        /// The kind asked for, as `AttestationKind::name` says it.
        kind: &'static str,
        /// The platform asked for, `os/arch[/variant]`, if one was.
        platform: Option<String>,
    },
    /// Two sources give the same platform.
    #[error("platform {platform} is given twice ({first} and {second})")]
    DuplicatePlatform {
        /// The platform both sources give, `os/arch[/variant]`.
        platform: String,
        /// The first source reference giving it.
        first: String,
        /// The second source reference giving it.
        second: String,
    },
    /// A platform that is not `os/arch[/variant]` with a known os and architecture.
    #[error("invalid platform {platform:?}: {problem}")]
    InvalidPlatform {
        /// The platform text as given (one item of a comma-separated list, or the whole list when
        /// it is empty).
        platform: String,
        /// What is wrong, e.g. an unknown architecture.
        problem: String,
    },
    /// A template without `ARCH`, `OS` or `VARIANT`.
    #[error(
        "template {template:?} has no ARCH, OS or VARIANT placeholder, so every platform would use the same image"
    )]
    NoPlaceholder {
        /// The template exactly as given, e.g. `registry.example/app:v1`.
        template: String,
    },
    /// No sources given.
    #[error("no source images given")]
    NoSources,
    /// A local file (an OCI layout tarball) cannot be read.
    #[error("cannot read {path}")]
    Io {
        /// The tarball's path as given.
        path: PathBuf,
        /// The I/O error from opening or reading it.
        #[source]
        source: std::io::Error,
    },
    /// A file given as an OCI layout tarball is not a tar archive.
    #[error("{path} is not a tar archive")]
    NotTar {
        /// The tarball's path as given.
        path: PathBuf,
        /// What the tar reader said.
        #[source]
        source: std::io::Error,
    },
    /// An OCI layout tarball that is not what BuildKit's `oci` exporter writes.
    #[error("{path} is not a usable OCI image layout: {problem}")]
    Layout {
        /// The tarball's path as given.
        path: PathBuf,
        /// What is wrong, e.g. that `oci-layout` is not an image layout marker.
        problem: String,
    },
}

/// HTTPS met plain HTTP, or the other way round: such failures are not retried, and the fix
/// is the client's choice of protocol (`ClientOptions::insecure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolMismatch {
    /// HTTPS was spoken and the registry answered in plain HTTP.
    PlainHttpAnswer,
    /// Plain HTTP was spoken and the answer was not HTTP (most often: TLS).
    NotHttpAnswer,
}

fn mismatch_text(mismatch: &Option<ProtocolMismatch>) -> &'static str {
    match mismatch {
        Some(ProtocolMismatch::PlainHttpAnswer) => ": it answered HTTPS with plain HTTP",
        Some(ProtocolMismatch::NotHttpAnswer) => {
            ": it did not answer in HTTP (is it a registry? does it need HTTPS?)"
        }
        None => "",
    }
}

fn for_platform(platform: &Option<String>) -> String {
    platform
        .as_deref()
        .map(|p| format!(" for {p}"))
        .unwrap_or_default()
}

fn retried(attempts: u32) -> String {
    if attempts > 1 {
        format!(" after {attempts} attempts")
    } else {
        String::new()
    }
}

fn with_message(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(" ({message})")
    }
}

fn unauthorized(registry: &str, had_credentials: bool) -> String {
    if had_credentials {
        format!(
            "registry {registry} rejected the credentials from the docker config (401 Unauthorized): check `docker login {registry}`"
        )
    } else {
        format!(
            "registry {registry} requires credentials and the docker config has none for it (401 Unauthorized): run `docker login {registry}`"
        )
    }
}
