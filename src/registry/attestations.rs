//! Reading BuildKit's attestations back from a registry (`manifest inspect --provenance`,
//! `--sbom`): in an image index, each image's attestation manifest is an entry of platform
//! `unknown/unknown` whose `vnd.docker.reference.digest` names the image; its layers are
//! in-toto statements (`application/vnd.in-toto+json`), each annotated with its predicate
//! type.
//!
//! Border: registry reads only, through [`Client`]; nothing here knows how the attestations
//! were asked for.

use bytes::Bytes;
use oci_spec::distribution::Reference;
use serde::Deserialize;

use super::assemble::{
    Descriptor, IndexDoc, IndexEntry, REFERENCE_DIGEST, is_image_manifest, is_index,
};
use super::client::{Client, parse_json};
use super::error::Error;
use super::platform::Platform;

/// The media type of an attestation layer: one in-toto statement, unsigned JSON.
pub const IN_TOTO: &str = "application/vnd.in-toto+json";
/// The layer annotation naming the statement's predicate type.
pub const PREDICATE_TYPE: &str = "in-toto.io/predicate-type";

/// Which attestations to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttestationKind {
    /// SLSA provenance (`https://slsa.dev/provenance/v0.2` or `/v1`).
    Provenance,
    /// An SPDX software bill of materials (`https://spdx.dev/Document`).
    Sbom,
}

impl AttestationKind {
    /// Whether a statement of `predicate_type` is of this kind.
    pub fn matches(self, predicate_type: &str) -> bool {
        match self {
            AttestationKind::Provenance => {
                predicate_type.starts_with("https://slsa.dev/provenance/")
            }
            AttestationKind::Sbom => predicate_type == "https://spdx.dev/Document",
        }
    }

    /// The kind in words, for messages.
    pub fn name(self) -> &'static str {
        match self {
            AttestationKind::Provenance => "provenance",
            AttestationKind::Sbom => "SBOM",
        }
    }
}

/// One image's attestations of one kind.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ImageAttestations {
    /// The image's platform, as its index entry says.
    pub platform: Platform,
    /// The image manifest's digest, the statements' subject.
    pub image: String,
    /// Each statement's `predicate`, in the attestation manifest's layer order (BuildKit
    /// puts the SBOM of the final image first, then those of other stages or the context).
    pub predicates: Vec<serde_json::Value>,
}

/// The layers of an attestation manifest, with their annotations.
#[derive(Debug, Deserialize)]
struct AttestationManifest {
    #[serde(default)]
    layers: Vec<AnnotatedLayer>,
}

#[derive(Debug, Deserialize)]
struct AnnotatedLayer {
    #[serde(flatten)]
    descriptor: Descriptor,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct Statement {
    predicate: serde_json::Value,
}

impl Client {
    /// The `kind` attestations of each image of `reference` (of `platform` only, when given),
    /// as BuildKit stores them in an index. Images without one are left out.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), pf_buildkit::registry::Error> {
    /// use pf_buildkit::registry::{AttestationKind, Client, ClientOptions, parse_reference};
    ///
    /// let client = Client::new(ClientOptions::from_env()?)?;
    /// let image = parse_reference("registry.example/app:v1")?;
    /// for found in client.attestations(&image, AttestationKind::Provenance, None).await? {
    ///     for predicate in &found.predicates {
    ///         println!("{}: {}", found.platform, predicate["buildDefinition"]["buildType"]);
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::NoMatchingPlatform`] when the index has no image for `platform`;
    /// [`Error::NoAttestations`] when no image has one (a single image manifest never does);
    /// otherwise as [`Client::fetch_manifest`], or a statement that is not JSON.
    pub async fn attestations(
        &self,
        reference: &Reference,
        kind: AttestationKind,
        platform: Option<&Platform>,
    ) -> Result<Vec<ImageAttestations>, Error> {
        let fetched = self.fetch_manifest(reference).await?;
        let none = || Error::NoAttestations {
            reference: reference.whole(),
            kind: kind.name(),
            platform: platform.map(Platform::to_string),
        };
        if !is_index(&fetched.media_type) {
            return Err(none());
        }
        let index: IndexDoc = parse_json(&fetched.bytes, &reference.whole(), "index")?;
        let images: Vec<&IndexEntry> = index
            .manifests
            .iter()
            .filter(|e| !e.is_attestation())
            .filter(|e| match (&e.platform, platform) {
                (Some(has), Some(wanted)) => wanted.matches(has),
                (Some(has), None) => !has.is_unknown(),
                (None, _) => false,
            })
            .collect();
        if let (Some(wanted), true) = (platform, images.is_empty()) {
            return Err(Error::NoMatchingPlatform {
                reference: reference.whole(),
                platform: wanted.to_string(),
            });
        }
        let mut found = Vec::new();
        for image in images {
            let mut predicates = Vec::new();
            for attestation in index.manifests.iter().filter(|e| {
                e.is_attestation()
                    && e.annotations
                        .as_ref()
                        .and_then(|a| a.get(REFERENCE_DIGEST))
                        .is_some_and(|subject| *subject == image.digest)
            }) {
                predicates.extend(self.statements_of(reference, attestation, kind).await?);
            }
            if !predicates.is_empty() {
                found.push(ImageAttestations {
                    platform: image
                        .platform
                        .clone()
                        .unwrap_or_else(|| Platform::new("", "")),
                    image: image.digest.clone(),
                    predicates,
                });
            }
        }
        if found.is_empty() {
            return Err(none());
        }
        Ok(found)
    }

    /// The predicates of the `kind` statements in one attestation manifest.
    async fn statements_of(
        &self,
        reference: &Reference,
        attestation: &IndexEntry,
        kind: AttestationKind,
    ) -> Result<Vec<serde_json::Value>, Error> {
        let by_digest = Reference::with_digest(
            reference.registry().to_owned(),
            reference.repository().to_owned(),
            attestation.digest.clone(),
        );
        let fetched = self.fetch_manifest(&by_digest).await?;
        if !is_image_manifest(&fetched.media_type) {
            return Err(Error::Unusable {
                reference: by_digest.whole(),
                problem: format!(
                    "an attestation entry of type {}, not a manifest",
                    fetched.media_type
                ),
            });
        }
        let manifest: AttestationManifest =
            parse_json(&fetched.bytes, &by_digest.whole(), "attestation manifest")?;
        let mut predicates = Vec::new();
        for layer in manifest.layers {
            let wanted = layer.descriptor.media_type == IN_TOTO
                && layer
                    .annotations
                    .get(PREDICATE_TYPE)
                    .is_some_and(|t| kind.matches(t));
            if !wanted {
                continue;
            }
            let bytes: Bytes = self
                .fetch_small_blob(&by_digest, &layer.descriptor, "attestation")
                .await?;
            let statement: Statement = parse_json(&bytes, &by_digest.whole(), "in-toto statement")?;
            predicates.push(statement.predicate);
        }
        Ok(predicates)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_match_buildkits_predicate_types() {
        let provenance = AttestationKind::Provenance;
        assert!(provenance.matches("https://slsa.dev/provenance/v0.2"));
        assert!(provenance.matches("https://slsa.dev/provenance/v1"));
        assert!(!provenance.matches("https://spdx.dev/Document"));
        assert!(AttestationKind::Sbom.matches("https://spdx.dev/Document"));
        assert!(!AttestationKind::Sbom.matches("https://cyclonedx.org/bom"));
    }
}
