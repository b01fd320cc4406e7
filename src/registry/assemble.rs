//! Pure index assembly: resolved per-platform sources in, the index bytes and the children to
//! make present in the target repository out. No I/O, so every rule is unit-tested.
//!
//! Border: it uses only the registry's own reference, platform and error types, and no HTTP.

use std::collections::{BTreeMap, HashSet};

use bytes::Bytes;
use oci_spec::distribution::Reference;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::error::Error;
use super::platform::Platform;

/// Docker image manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema 1 manifests (rejected).
pub(crate) const DOCKER_SCHEMA1: &[&str] = &[
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];

/// The annotation BuildKit puts on attestation manifests in an index.
pub const REFERENCE_TYPE: &str = "vnd.docker.reference.type";
/// The annotation naming an attestation's subject manifest.
pub const REFERENCE_DIGEST: &str = "vnd.docker.reference.digest";
/// The value of [`REFERENCE_TYPE`] for attestations.
pub const ATTESTATION_MANIFEST: &str = "attestation-manifest";

/// Whether a media type is an index or manifest list.
pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST
}

/// Whether a media type is a single image manifest.
pub fn is_image_manifest(media_type: &str) -> bool {
    media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST
}

/// `sha256:<hex>` of some bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let mut out = String::with_capacity(71);
    out.push_str("sha256:");
    for b in hash {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Whether `digest` is `sha256:` and 64 lowercase hex digits (the only form this client
/// accepts, which also keeps digests safe to put in URL paths).
pub fn is_valid_digest(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Checks that `bytes` hash to `expected`.
///
/// # Errors
/// A malformed or non-sha256 digest, or a mismatch.
pub fn verify_digest(what: &str, expected: &str, bytes: &[u8]) -> Result<(), Error> {
    if !is_valid_digest(expected) {
        return Err(Error::BadDigest {
            what: what.to_owned(),
            digest: expected.to_owned(),
        });
    }
    let actual = sha256_digest(bytes);
    if actual != expected {
        return Err(Error::DigestMismatch {
            what: what.to_owned(),
            expected: expected.to_owned(),
            actual,
        });
    }
    Ok(())
}

/// A content descriptor: what a manifest or blob is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Descriptor {
    /// The media type, e.g. [`OCI_MANIFEST`]; empty when the document declared none.
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// The digest of the exact bytes, `sha256:<hex>`.
    pub digest: String,
    /// The size of the exact bytes.
    pub size: u64,
}

/// One entry of an index or manifest list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct IndexEntry {
    /// The child's media type (an image manifest, or an attestation's); empty when absent.
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// The child manifest's digest, `sha256:<hex>`.
    pub digest: String,
    /// The child manifest's size in bytes.
    pub size: u64,
    /// Platform of the child (absent on some artifacts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// The entry's annotations as the source had them (e.g. an attestation's reference);
    /// `None` writes none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// OCI artifact type.
    #[serde(
        rename = "artifactType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub artifact_type: Option<String>,
}

impl IndexEntry {
    /// Whether this is a BuildKit attestation manifest.
    pub fn is_attestation(&self) -> bool {
        self.annotation(REFERENCE_TYPE) == Some(ATTESTATION_MANIFEST)
    }

    fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }
}

/// The parts of an index document the client reads.
#[derive(Debug, Deserialize)]
pub(crate) struct IndexDoc {
    #[serde(default)]
    pub manifests: Vec<IndexEntry>,
}

/// The parts of an image manifest the client reads.
#[derive(Debug, Deserialize)]
pub(crate) struct ManifestDoc {
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

/// What a source reference turned out to be.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ResolvedContent {
    /// A single image manifest, with the platform its config declares.
    Image {
        /// From the config's `os`, `architecture`, `variant`, `os.version`, `os.features`.
        platform: Platform,
        /// The manifest bytes (digest-verified).
        manifest: Bytes,
    },
    /// An index or manifest list, with its entries.
    Index {
        /// The entries, images and attestations.
        entries: Vec<IndexEntry>,
    },
}

/// A reference resolved in its registry.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Resolved {
    /// The reference as the caller gave it (a tag or a digest), not rewritten to the digest it
    /// resolved to.
    pub reference: Reference,
    /// What it points at (media type, digest, size).
    pub descriptor: Descriptor,
    /// Image or index.
    pub content: ResolvedContent,
}

/// One requested platform and the source that should provide it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ResolvedSource {
    /// The platform the user asked this source to provide.
    pub requested: Platform,
    /// The source as its registry has it: digest, media type, and the image or index behind it.
    pub resolved: Resolved,
}

/// A child of the assembled index, and where it currently lives.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Child {
    /// The entry as written into the index.
    pub entry: IndexEntry,
    /// The repository it comes from (copied into the target repository when different).
    pub source: Reference,
    /// The manifest bytes when already fetched (single-image sources).
    pub manifest: Option<Bytes>,
}

/// The index to push, assembled and serialised but not yet sent.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AssembledIndex {
    /// [`OCI_INDEX`] or [`DOCKER_MANIFEST_LIST`].
    pub media_type: String,
    /// The exact bytes to PUT.
    pub bytes: Bytes,
    /// `sha256` of [`AssembledIndex::bytes`].
    pub digest: String,
    /// The children, images first, then attestations.
    pub children: Vec<Child>,
}

#[derive(Serialize)]
struct IndexOut<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    manifests: Vec<IndexEntry>,
}

/// Assembles the index for `sources`, one per requested platform.
///
/// - A single image gives one entry with the platform from its config, which must match the
///   requested platform (a variant missing from the config is taken from the request).
/// - An index is flattened: its images matching the requested platform, plus the attestation
///   manifests whose subject is one of those images.
/// - The result is a Docker manifest list when every child is a Docker manifest, else an OCI
///   index. Docker lists carry no annotations.
///
/// # Errors
/// No sources; a source of the wrong platform; an index without the platform; two sources
/// giving the same platform.
pub fn assemble_index(sources: &[ResolvedSource]) -> Result<AssembledIndex, Error> {
    if sources.is_empty() {
        return Err(Error::NoSources);
    }
    let mut images: Vec<(Child, String)> = Vec::new();
    let mut attestations: Vec<Child> = Vec::new();
    for source in sources {
        let reference = &source.resolved.reference;
        let name = reference.whole();
        match &source.resolved.content {
            ResolvedContent::Image { platform, manifest } => {
                if !source.requested.matches(platform) {
                    return Err(Error::PlatformMismatch {
                        reference: name,
                        expected: source.requested.to_string(),
                        actual: platform.to_string(),
                    });
                }
                let mut platform = platform.clone();
                if platform.variant.as_deref().unwrap_or("").is_empty() {
                    platform.variant = source.requested.variant.clone();
                }
                let d = &source.resolved.descriptor;
                images.push((
                    Child {
                        entry: IndexEntry {
                            media_type: d.media_type.clone(),
                            digest: d.digest.clone(),
                            size: d.size,
                            platform: Some(platform),
                            annotations: None,
                            artifact_type: None,
                        },
                        source: reference.clone(),
                        manifest: Some(manifest.clone()),
                    },
                    name,
                ));
            }
            ResolvedContent::Index { entries } => {
                let kept: Vec<&IndexEntry> = entries
                    .iter()
                    .filter(|e| !e.is_attestation())
                    .filter(|e| {
                        e.platform
                            .as_ref()
                            .is_some_and(|p| source.requested.matches(p))
                    })
                    .collect();
                if kept.is_empty() {
                    return Err(Error::NoMatchingPlatform {
                        reference: name,
                        platform: source.requested.to_string(),
                    });
                }
                let kept_digests: HashSet<&str> = kept.iter().map(|e| e.digest.as_str()).collect();
                for entry in &kept {
                    images.push((
                        Child {
                            entry: (*entry).clone(),
                            source: reference.clone(),
                            manifest: None,
                        },
                        name.clone(),
                    ));
                }
                for entry in entries.iter().filter(|e| e.is_attestation()) {
                    let subject = entry.annotation(REFERENCE_DIGEST).unwrap_or_default();
                    if kept_digests.contains(subject) {
                        attestations.push(Child {
                            entry: entry.clone(),
                            source: reference.clone(),
                            manifest: None,
                        });
                    }
                }
            }
        }
    }

    // The same image listed twice for the same platform (the same source given twice) is kept
    // once; two different images for one platform are an error.
    let mut children: Vec<Child> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for (child, name) in images {
        let platform = child
            .entry
            .platform
            .clone()
            .unwrap_or_else(|| Platform::new("", ""));
        let mut duplicate = false;
        for (i, other) in children.iter().enumerate() {
            let Some(other_platform) = &other.entry.platform else {
                continue;
            };
            if other_platform.same_as(&platform) {
                if other.entry.digest == child.entry.digest {
                    duplicate = true;
                    break;
                }
                return Err(Error::DuplicatePlatform {
                    platform: platform.to_string(),
                    first: names[i].clone(),
                    second: name,
                });
            }
        }
        if !duplicate {
            children.push(child);
            names.push(name);
        }
    }
    let mut seen: HashSet<String> = children.iter().map(|c| c.entry.digest.clone()).collect();
    for child in attestations {
        if seen.insert(child.entry.digest.clone()) {
            children.push(child);
        }
    }

    let docker = children
        .iter()
        .all(|c| c.entry.media_type.starts_with("application/vnd.docker."));
    let media_type = if docker {
        DOCKER_MANIFEST_LIST
    } else {
        OCI_INDEX
    };
    let manifests = children
        .iter()
        .map(|c| {
            let mut e = c.entry.clone();
            if docker {
                e.annotations = None;
                e.artifact_type = None;
            }
            e
        })
        .collect();
    let doc = IndexOut {
        schema_version: 2,
        media_type,
        manifests,
    };
    let bytes = serde_json::to_vec_pretty(&doc).map_err(|source| Error::Json {
        reference: "the assembled index".into(),
        document: "index",
        source,
    })?;
    let digest = sha256_digest(&bytes);
    Ok(AssembledIndex {
        media_type: media_type.to_owned(),
        bytes: Bytes::from(bytes),
        digest,
        children,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(s: &str) -> Reference {
        crate::registry::parse_reference(s).unwrap()
    }

    fn digest(n: u8) -> String {
        format!("sha256:{}", format!("{n:02x}").repeat(32))
    }

    fn image(r: &str, requested: &str, actual: &str, media_type: &str, n: u8) -> ResolvedSource {
        ResolvedSource {
            requested: requested.parse().unwrap(),
            resolved: Resolved {
                reference: reference(r),
                descriptor: Descriptor {
                    media_type: media_type.into(),
                    digest: digest(n),
                    size: 100 + u64::from(n),
                },
                content: ResolvedContent::Image {
                    platform: actual.parse().unwrap(),
                    manifest: Bytes::from_static(b"{}"),
                },
            },
        }
    }

    fn entry(platform: &str, n: u8) -> IndexEntry {
        IndexEntry {
            media_type: OCI_MANIFEST.into(),
            digest: digest(n),
            size: 500,
            platform: Some(platform.parse().unwrap()),
            annotations: None,
            artifact_type: None,
        }
    }

    fn attestation(subject: u8, n: u8) -> IndexEntry {
        let mut annotations = BTreeMap::new();
        annotations.insert(REFERENCE_TYPE.into(), ATTESTATION_MANIFEST.into());
        annotations.insert(REFERENCE_DIGEST.into(), digest(subject));
        IndexEntry {
            media_type: OCI_MANIFEST.into(),
            digest: digest(n),
            size: 300,
            platform: Some(Platform::new("unknown", "unknown")),
            annotations: Some(annotations),
            artifact_type: None,
        }
    }

    fn index(r: &str, requested: &str, entries: Vec<IndexEntry>) -> ResolvedSource {
        ResolvedSource {
            requested: requested.parse().unwrap(),
            resolved: Resolved {
                reference: reference(r),
                descriptor: Descriptor {
                    media_type: OCI_INDEX.into(),
                    digest: digest(99),
                    size: 900,
                },
                content: ResolvedContent::Index { entries },
            },
        }
    }

    fn parsed(index: &AssembledIndex) -> serde_json::Value {
        serde_json::from_slice(&index.bytes).unwrap()
    }

    #[test]
    fn docker_sources_give_a_docker_manifest_list() {
        let out = assemble_index(&[
            image(
                "r.example/a:t-amd64",
                "linux/amd64",
                "linux/amd64",
                DOCKER_MANIFEST,
                1,
            ),
            image(
                "r.example/a:t-arm64",
                "linux/arm64",
                "linux/arm64",
                DOCKER_MANIFEST,
                2,
            ),
        ])
        .unwrap();
        assert_eq!(out.media_type, DOCKER_MANIFEST_LIST);
        let json = parsed(&out);
        assert_eq!(json["schemaVersion"], 2);
        assert_eq!(json["mediaType"], DOCKER_MANIFEST_LIST);
        assert_eq!(json["manifests"][0]["digest"], digest(1));
        assert_eq!(json["manifests"][0]["size"], 101);
        assert_eq!(json["manifests"][0]["platform"]["architecture"], "amd64");
        assert_eq!(json["manifests"][1]["platform"]["architecture"], "arm64");
        assert_eq!(out.digest, sha256_digest(&out.bytes));
    }

    #[test]
    fn any_oci_child_gives_an_oci_index() {
        let out = assemble_index(&[
            image(
                "r.example/a:t-amd64",
                "linux/amd64",
                "linux/amd64",
                DOCKER_MANIFEST,
                1,
            ),
            image(
                "r.example/a:t-arm64",
                "linux/arm64",
                "linux/arm64",
                OCI_MANIFEST,
                2,
            ),
        ])
        .unwrap();
        assert_eq!(out.media_type, OCI_INDEX);
        assert_eq!(parsed(&out)["mediaType"], OCI_INDEX);
    }

    #[test]
    fn wrong_platform_is_an_error_naming_the_source() {
        let err = assemble_index(&[image(
            "r.example/a:t-arm64",
            "linux/arm64",
            "linux/amd64",
            OCI_MANIFEST,
            1,
        )])
        .unwrap_err()
        .to_string();
        assert_eq!(err, "r.example/a:t-arm64 is linux/amd64, not linux/arm64");
    }

    #[test]
    fn variant_missing_from_config_comes_from_the_request() {
        let out = assemble_index(&[image(
            "r.example/a:t-arm",
            "linux/arm/v7",
            "linux/arm",
            OCI_MANIFEST,
            1,
        )])
        .unwrap();
        assert_eq!(parsed(&out)["manifests"][0]["platform"]["variant"], "v7");
    }

    #[test]
    fn indexes_are_flattened_keeping_their_attestations() {
        let out = assemble_index(&[
            index(
                "r.example/a:t-amd64",
                "linux/amd64",
                vec![entry("linux/amd64", 1), attestation(1, 11)],
            ),
            index(
                "r.example/a:t-arm64",
                "linux/arm64",
                // An index with both platforms: only arm64 and its attestation are taken.
                vec![
                    entry("linux/amd64", 3),
                    entry("linux/arm64", 2),
                    attestation(3, 13),
                    attestation(2, 12),
                ],
            ),
        ])
        .unwrap();
        assert_eq!(out.media_type, OCI_INDEX);
        let digests: Vec<&str> = out
            .children
            .iter()
            .map(|c| c.entry.digest.as_str())
            .collect();
        assert_eq!(digests, vec![digest(1), digest(2), digest(11), digest(12)]);
        let json = parsed(&out);
        assert_eq!(
            json["manifests"][2]["annotations"][REFERENCE_TYPE],
            ATTESTATION_MANIFEST
        );
        assert_eq!(json["manifests"][2]["platform"]["os"], "unknown");
    }

    #[test]
    fn index_without_the_platform_is_an_error() {
        let err = assemble_index(&[index(
            "r.example/a:t-arm64",
            "linux/arm64",
            vec![entry("linux/amd64", 1)],
        )])
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "r.example/a:t-arm64 is an index with no image for linux/arm64"
        );
    }

    #[test]
    fn two_images_for_one_platform_are_rejected() {
        let err = assemble_index(&[
            image(
                "r.example/a:one",
                "linux/amd64",
                "linux/amd64",
                OCI_MANIFEST,
                1,
            ),
            image(
                "r.example/a:two",
                "linux/amd64",
                "linux/amd64",
                OCI_MANIFEST,
                2,
            ),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("linux/amd64 is given twice"), "{err}");
        assert!(assemble_index(&[]).is_err());
    }

    #[test]
    fn digests_are_checked() {
        let body = b"hello";
        let good = sha256_digest(body);
        assert!(verify_digest("x", &good, body).is_ok());
        assert!(matches!(
            verify_digest("x", &digest(1), body),
            Err(Error::DigestMismatch { .. })
        ));
        assert!(matches!(
            verify_digest("x", "sha256:../../etc", body),
            Err(Error::BadDigest { .. })
        ));
    }
}
