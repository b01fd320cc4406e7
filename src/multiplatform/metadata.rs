//! The record of a multi-platform build that `--metadata-file` writes: the index and each
//! architecture's image, by reference and digest. Its field names are a contract with the
//! scripts that read it.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::{Error, MultiPlatformResult};

/// What a multi-platform build pushed, as JSON:
/// `{"index": {"reference", "digest", "mediaType"}, "images": {ARCH: {"reference", "digest"}}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Metadata {
    /// The image index pushed as `REGISTRY/REPO:TAG`, the tag users pull.
    pub index: IndexRecord,
    /// Each architecture's image, by architecture name.
    pub images: BTreeMap<String, ImageRecord>,
}

/// The index in a [`Metadata`] record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct IndexRecord {
    /// `REGISTRY/REPO:TAG`.
    pub reference: String,
    /// `sha256:…` of the index as pushed.
    pub digest: String,
    /// OCI image index or Docker manifest list.
    #[serde(rename = "mediaType")]
    pub media_type: String,
}

/// One architecture's image in a [`Metadata`] record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ImageRecord {
    /// `REGISTRY/REPO:TAG-ARCH`.
    pub reference: String,
    /// `sha256:…` of the image manifest as pushed.
    pub digest: String,
}

impl From<&MultiPlatformResult> for Metadata {
    fn from(result: &MultiPlatformResult) -> Self {
        Metadata {
            index: IndexRecord {
                reference: result.reference.clone(),
                digest: result.index.digest.clone(),
                media_type: result.index.media_type.clone(),
            },
            images: result
                .images
                .iter()
                .map(|(arch, image)| {
                    let record = ImageRecord {
                        reference: image.reference.clone(),
                        digest: image.digest.clone(),
                    };
                    (arch.clone(), record)
                })
                .collect(),
        }
    }
}

impl Metadata {
    /// Writes the record as pretty JSON to `path`, through a temporary file so a reader never
    /// sees half of it.
    ///
    /// # Errors
    /// [`Error::Metadata`] naming the file.
    pub fn write(&self, path: &Path) -> Result<(), Error> {
        let fail = |source| Error::Metadata {
            path: path.to_owned(),
            source,
        };
        let mut text = serde_json::to_vec_pretty(self).map_err(|e| fail(e.into()))?;
        text.push(b'\n');
        crate::files::write_atomically(path, &text).map_err(fail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::multiplatform::ArchImage;
    use crate::registry::PushedIndex;

    #[test]
    fn the_record_keeps_its_field_names() {
        let result = MultiPlatformResult {
            index: PushedIndex {
                digest: "sha256:i".into(),
                media_type: "application/vnd.oci.image.index.v1+json".into(),
                size: 1,
            },
            reference: "r/app:v1".into(),
            images: BTreeMap::from([(
                "arm64".to_owned(),
                ArchImage {
                    reference: "r/app:v1-arm64".into(),
                    digest: "sha256:a".into(),
                    pushed_by_client: false,
                },
            )]),
        };
        let json = serde_json::to_value(Metadata::from(&result)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "index": {
                    "reference": "r/app:v1",
                    "digest": "sha256:i",
                    "mediaType": "application/vnd.oci.image.index.v1+json"
                },
                "images": {"arm64": {"reference": "r/app:v1-arm64", "digest": "sha256:a"}}
            })
        );
    }
}
