//! The images the tests build on, pushed to the test registry through its HTTP API: the
//! busybox base and the SBOM generator. `scripts/testenv` makes their files in the cache
//! (fixed order, owners and times, so the same busybox always gives the same digests);
//! here they are only uploaded, blob by blob, then the manifest.

use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};
use crate::http::{self, Target};

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// An image made in the cache: its manifest and blob files.
#[derive(Debug, Clone)]
pub struct CachedImage {
    /// What it is, for messages.
    pub what: &'static str,
    /// The repository it is pushed to.
    pub repo: &'static str,
    /// The tag.
    pub tag: &'static str,
    /// `manifest.json`.
    pub manifest: PathBuf,
    /// The config and layer files the manifest names.
    pub blobs: Vec<PathBuf>,
}

impl CachedImage {
    /// The busybox base image in `cache/base-image`.
    pub fn base(cache: &Path) -> CachedImage {
        let b = cache.join("base-image");
        CachedImage {
            what: "the busybox base image",
            repo: crate::settings::BASE_REPO,
            tag: crate::settings::IMAGE_TAG,
            manifest: b.join("manifest.json"),
            blobs: vec![b.join("layer.tar.gz"), b.join("config.json")],
        }
    }

    /// The SBOM generator image in `cache/sbom-generator` (its first layer is the base's).
    pub fn sbom_generator(cache: &Path) -> CachedImage {
        let g = cache.join("sbom-generator");
        CachedImage {
            what: "the SBOM generator image",
            repo: crate::settings::SBOM_REPO,
            tag: crate::settings::IMAGE_TAG,
            manifest: g.join("manifest.json"),
            blobs: vec![
                cache.join("base-image/layer.tar.gz"),
                g.join("layer.tar.gz"),
                g.join("config.json"),
            ],
        }
    }

    /// Pushes the image to `registry` (`HOST:PORT`, plain HTTP) unless its tag already names
    /// this manifest; returns the manifest's digest.
    pub fn push(&self, registry: &str) -> Result<String> {
        let target = Target::Tcp(registry);
        let manifest = read(&self.manifest)?;
        let digest = sha256(&manifest);
        let path = format!("/v2/{}/manifests/{}", self.repo, self.tag);
        let remote = http::request(target, "HEAD", &path, &[("Accept", MANIFEST_TYPE)], &[])
            .ok()
            .and_then(|r| r.header("docker-content-digest").map(str::to_owned));
        if remote.as_deref() == Some(digest.as_str()) {
            return Ok(digest);
        }
        for blob in &self.blobs {
            self.push_blob(registry, &read(blob)?)?;
        }
        let put = http::request(
            target,
            "PUT",
            &path,
            &[("Content-Type", MANIFEST_TYPE)],
            &manifest,
        )
        .map_err(Error::ctx(format!("push of {registry}{path}")))?;
        if put.status != 201 {
            return Err(Error::msg(format!(
                "push of the {} manifest to {registry}{path}: {} {}",
                self.what,
                put.status,
                String::from_utf8_lossy(&put.body)
            )));
        }
        Ok(digest)
    }

    fn push_blob(&self, registry: &str, data: &[u8]) -> Result<()> {
        let target = Target::Tcp(registry);
        let digest = sha256(data);
        let head = format!("/v2/{}/blobs/{digest}", self.repo);
        if http::request(target, "HEAD", &head, &[], &[]).is_ok_and(|r| r.status == 200) {
            return Ok(());
        }
        let fail =
            |what: &str| Error::msg(format!("{registry}: {what} of {digest} ({})", self.what));
        let start = format!("/v2/{}/blobs/uploads/", self.repo);
        let r = http::request(target, "POST", &start, &[], &[])
            .map_err(Error::ctx(format!("{registry}: upload of {digest}")))?;
        let location = match (r.status, r.header("location")) {
            (202, Some(l)) => l.to_owned(),
            _ => return Err(fail(&format!("upload refused ({})", r.status))),
        };
        // The location may be absolute; the registry is the same either way.
        let location = match location.find("/v2/") {
            Some(i) => location[i..].to_owned(),
            None => return Err(fail("upload location without /v2/")),
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = http::request(
            target,
            "PUT",
            &format!("{location}{sep}digest={digest}"),
            &[("Content-Type", "application/octet-stream")],
            data,
        )
        .map_err(Error::ctx(format!("{registry}: upload of {digest}")))?;
        if put.status != 201 {
            return Err(fail(&format!("upload answered {}", put.status)));
        }
        Ok(())
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        Error::msg(format!(
            "read {}: {e} (scripts/testenv makes the image files)",
            path.display()
        ))
    })
}

/// `sha256:HEX` of `data`.
pub fn sha256(data: &[u8]) -> String {
    let hash = Sha256::digest(data);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}
