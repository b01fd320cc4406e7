//! Pushing an OCI image-layout tarball (what BuildKit's `type=oci` exporter writes:
//! `oci-layout`, `index.json`, `blobs/sha256/<hex>`) to a registry, streaming each blob from
//! its place in the tar file so layers never sit in memory.

use std::collections::HashMap;
use std::io::SeekFrom;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use oci_spec::distribution::Reference;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::assemble::{
    Descriptor, IndexDoc, ManifestDoc, is_image_manifest, is_index, is_valid_digest, verify_digest,
};
use super::client::Client;
use super::error::Error;

/// Where each file of the tarball is: byte offset of its content and its size.
#[derive(Debug, Default)]
struct TarIndex {
    files: HashMap<String, (u64, u64)>,
}

impl TarIndex {
    /// Reads the tar headers only (no content) with the `tar` crate.
    fn scan(path: &Path) -> Result<Self, Error> {
        let io = |source| Error::Io {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let mut archive = tar::Archive::new(std::io::BufReader::new(file));
        let mut files = HashMap::new();
        for entry in archive.entries().map_err(io)? {
            let entry = entry.map_err(|source| Error::NotTar {
                path: path.to_owned(),
                source,
            })?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let name = entry
                .path()
                .map_err(io)?
                .to_string_lossy()
                .trim_start_matches("./")
                .to_owned();
            files.insert(name, (entry.raw_file_position(), entry.size()));
        }
        Ok(Self { files })
    }
}

/// An OCI layout tarball opened for reading: its path and where each member lies in it.
struct Layout {
    path: PathBuf,
    index: TarIndex,
}

impl Layout {
    fn problem(&self, problem: impl Into<String>) -> Error {
        Error::Layout {
            path: self.path.clone(),
            problem: problem.into(),
        }
    }

    fn blob_name(digest: &str) -> String {
        format!("blobs/{}", digest.replacen(':', "/", 1))
    }

    fn locate(&self, name: &str) -> Result<(u64, u64), Error> {
        self.index
            .files
            .get(name)
            .copied()
            .ok_or_else(|| self.problem(format!("{name} is missing")))
    }

    /// Reads a small file (index.json, a manifest) whole.
    async fn read_small(&self, name: &str) -> Result<Bytes, Error> {
        let (offset, size) = self.locate(name)?;
        if size > 16 << 20 {
            return Err(self.problem(format!("{name} is larger than 16 MiB")));
        }
        let io = |source| Error::Io {
            path: self.path.clone(),
            source,
        };
        let mut file = tokio::fs::File::open(&self.path).await.map_err(io)?;
        file.seek(SeekFrom::Start(offset)).await.map_err(io)?;
        let mut buf = vec![0; size as usize];
        file.read_exact(&mut buf).await.map_err(io)?;
        Ok(Bytes::from(buf))
    }

    /// A blob's manifest bytes, digest-checked against the descriptor.
    async fn read_document(&self, desc: &Descriptor) -> Result<Bytes, Error> {
        if !is_valid_digest(&desc.digest) {
            return Err(self.problem(format!("unsupported digest {:?}", desc.digest)));
        }
        let bytes = self.read_small(&Self::blob_name(&desc.digest)).await?;
        verify_digest(
            &format!("{} in {}", desc.digest, self.path.display()),
            &desc.digest,
            &bytes,
        )?;
        Ok(bytes)
    }

    /// Where a blob's content is, checking it is there with the size its descriptor says.
    fn check_blob(&self, desc: &Descriptor) -> Result<(u64, u64), Error> {
        let (offset, size) = self.locate(&Self::blob_name(&desc.digest))?;
        if size != desc.size {
            return Err(self.problem(format!(
                "blob {} is {size} bytes, its descriptor says {}",
                desc.digest, desc.size
            )));
        }
        Ok((offset, size))
    }

    /// A stream over a blob's bytes in the tar file, in 64 KiB chunks.
    fn blob_stream(
        &self,
        desc: &Descriptor,
    ) -> Result<impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static, Error>
    {
        let (offset, size) = self.check_blob(desc)?;
        let path = self.path.clone();
        let open = async move {
            let mut file = tokio::fs::File::open(&path).await?;
            file.seek(SeekFrom::Start(offset)).await?;
            Ok::<_, std::io::Error>(tokio_util::io::ReaderStream::with_capacity(
                file.take(size),
                64 * 1024,
            ))
        };
        Ok(futures_util::TryFutureExt::try_flatten_stream(open))
    }
}

impl Client {
    /// Pushes an OCI image-layout tarball (BuildKit's `type=oci` output) to `target`
    /// (`registry/repository:tag`) and returns the digest of what the tag now points at.
    ///
    /// `index.json` must list exactly one manifest or index (BuildKit writes one). Every blob
    /// is streamed from its place in the tar file; blobs already in the repository are skipped.
    /// Children are pushed by digest first, so the tag appears last.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), pf_buildkit::registry::Error> {
    /// use pf_buildkit::registry::{Client, ClientOptions, parse_reference};
    ///
    /// let client = Client::new(ClientOptions::from_env()?)?;
    /// let digest = client
    ///     .push_oci_layout("image.tar".as_ref(), &parse_reference("registry.example/app:v1-amd64")?)
    ///     .await?;
    /// println!("{digest}");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// An unreadable or malformed tarball, a missing blob, a digest mismatch, or a registry
    /// failure.
    #[tracing::instrument(skip_all, fields(tar = %tar.display(), target = %target.whole()))]
    pub async fn push_oci_layout(&self, tar: &Path, target: &Reference) -> Result<String, Error> {
        let path = tar.to_owned();
        let index = tokio::task::spawn_blocking({
            let path = path.clone();
            move || TarIndex::scan(&path)
        })
        .await
        .map_err(|e| Error::Io {
            path: path.clone(),
            source: std::io::Error::other(e),
        })??;
        let layout = Layout { path, index };
        let marker = layout.read_small("oci-layout").await?;
        if !String::from_utf8_lossy(&marker).contains("imageLayoutVersion") {
            return Err(layout.problem("oci-layout is not an image layout marker"));
        }
        let top: IndexDoc = serde_json::from_slice(&layout.read_small("index.json").await?)
            .map_err(|e| layout.problem(format!("index.json: {e}")))?;
        let [root] = top.manifests.as_slice() else {
            return Err(layout.problem(format!(
                "index.json lists {} manifests; expected exactly one",
                top.manifests.len()
            )));
        };
        let root = Descriptor {
            media_type: root.media_type.clone(),
            digest: root.digest.clone(),
            size: root.size,
        };
        let tag = target.tag().unwrap_or("latest").to_owned();
        self.push_layout_node(&layout, target, &root, Some(&tag), 0)
            .await
    }

    /// Pushes one manifest or index of the layout (children first) and returns its digest.
    fn push_layout_node<'a>(
        &'a self,
        layout: &'a Layout,
        target: &'a Reference,
        desc: &'a Descriptor,
        tag: Option<&'a str>,
        depth: u32,
    ) -> futures_util::future::BoxFuture<'a, Result<String, Error>> {
        Box::pin(async move {
            if depth > 4 {
                return Err(layout.problem("indexes nested too deeply"));
            }
            let bytes = layout.read_document(desc).await?;
            let media_type = if desc.media_type.is_empty() {
                super::client::media_type_of(&bytes)
                    .ok_or_else(|| layout.problem(format!("{} has no media type", desc.digest)))?
            } else {
                desc.media_type.clone()
            };
            if is_index(&media_type) {
                let doc: IndexDoc = serde_json::from_slice(&bytes)
                    .map_err(|e| layout.problem(format!("index {}: {e}", desc.digest)))?;
                for child in &doc.manifests {
                    let child = Descriptor {
                        media_type: child.media_type.clone(),
                        digest: child.digest.clone(),
                        size: child.size,
                    };
                    self.push_layout_node(layout, target, &child, None, depth + 1)
                        .await?;
                }
            } else if is_image_manifest(&media_type) {
                let doc: ManifestDoc = serde_json::from_slice(&bytes)
                    .map_err(|e| layout.problem(format!("manifest {}: {e}", desc.digest)))?;
                for blob in std::iter::once(&doc.config).chain(doc.layers.iter()) {
                    if !is_valid_digest(&blob.digest) {
                        return Err(layout.problem(format!("unsupported digest {:?}", blob.digest)));
                    }
                    // Fail early, before any upload, if the blob is not in the tarball.
                    layout.check_blob(blob)?;
                    self.upload_blob(target, blob, || layout.blob_stream(blob))
                        .await?;
                }
            } else {
                return Err(layout.problem(format!(
                    "{} has media type {media_type}, not an image manifest or index",
                    desc.digest
                )));
            }
            let part = tag.unwrap_or(&desc.digest);
            self.push_manifest(target, part, &media_type, bytes).await
        })
    }
}
