//! The registry client: resolve references, copy images between repositories (mount or
//! stream), push manifests and indexes, inspect.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use oci_spec::distribution::Reference;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode, Url};

use super::assemble::{
    self, AssembledIndex, DOCKER_SCHEMA1, Descriptor, IndexDoc, ManifestDoc, OCI_INDEX,
    OCI_MANIFEST, Resolved, ResolvedContent, ResolvedSource, is_image_manifest, is_index,
    sha256_digest, verify_digest,
};
use super::credentials::{CredentialsProvider, DockerConfig};
use super::error::Error;
use super::http::{Attempt, Request, RetryPolicy, Scope, Transport};
use super::platform::Platform;
use crate::setters::with_setters;

/// Manifests and configs larger than this are refused (they are kilobytes in practice).
const MAX_SMALL_DOCUMENT: u64 = 16 << 20;

const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// How to reach registries.
///
/// ```
/// use pf_buildkit::registry::{ClientOptions, DockerConfig};
///
/// let options = ClientOptions::default()
///     .with_credentials(DockerConfig::empty())
///     .with_insecure_registries(["127.0.0.1:5000".to_owned()]);
/// # let _ = options;
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ClientOptions {
    /// Where credentials come from; `None` (the default) is anonymous access.
    pub credentials: Option<Arc<dyn CredentialsProvider>>,
    /// Talk plain HTTP to every registry (manifest-tool's `--insecure-registry`).
    pub insecure: bool,
    /// Talk plain HTTP to these registries only (`host:port`).
    pub insecure_registries: Vec<String>,
    /// Retries on 5xx, 429 and dropped connections (default: [`RetryPolicy::default`]).
    pub retry: RetryPolicy,
}

impl ClientOptions {
    /// Options with the Docker CLI's config (`DOCKER_CONFIG` or `~/.docker/config.json`).
    ///
    /// # Errors
    /// The config exists but cannot be read.
    pub fn from_env() -> Result<Self, Error> {
        Ok(Self::default().with_credentials(DockerConfig::load()?))
    }

    /// Takes credentials from `provider` (a [`DockerConfig`], or a provider of your own).
    #[must_use]
    pub fn with_credentials(mut self, provider: impl CredentialsProvider) -> Self {
        self.credentials = Some(Arc::new(provider));
        self
    }
}

with_setters!(ClientOptions {
    with_insecure => insecure: bool,
    with_insecure_registries => insecure_registries: Vec<String>,
    with_retry => retry: RetryPolicy,
});

/// One source of an index: a reference and the platform it must provide ([`Source::new`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Source {
    /// The source image, or an index holding an image for `platform`.
    pub reference: Reference,
    /// The platform this source must provide; an image must be it, an index must hold it.
    pub platform: Platform,
}

impl Source {
    /// The image (or index) `reference`, which must provide `platform`.
    pub fn new(reference: Reference, platform: Platform) -> Self {
        Source {
            reference,
            platform,
        }
    }
}

/// An index as the registry accepted it: what the target tag now points at.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PushedIndex {
    /// `sha256:...` of the index.
    pub digest: String,
    /// Its media type (OCI index or Docker manifest list).
    pub media_type: String,
    /// Its size in bytes.
    pub size: u64,
}

/// A manifest as fetched, digest-verified.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FetchedManifest {
    /// Media type (from `Content-Type`, else the document's `mediaType`).
    pub media_type: String,
    /// `sha256:...` of the bytes.
    pub digest: String,
    /// The exact bytes the registry served, which hash to `digest`.
    pub bytes: Bytes,
}

impl FetchedManifest {
    /// The document pretty-printed (two-space indent) with its keys in the registry's order.
    ///
    /// # Errors
    /// The bytes are not JSON.
    pub fn to_pretty_json(&self) -> Result<String, Error> {
        parse_json::<serde::de::IgnoredAny>(&self.bytes, &self.digest, "manifest")?;
        Ok(reindent(&String::from_utf8_lossy(&self.bytes)))
    }
}

/// Re-indents valid JSON like `serde_json::to_string_pretty`, keeping key order and the
/// exact text of every string and number.
fn reindent(json: &str) -> String {
    fn newline(out: &mut String, indent: usize) {
        out.push('\n');
        for _ in 0..indent {
            out.push_str("  ");
        }
    }
    let chars: Vec<char> = json.chars().collect();
    let mut out = String::with_capacity(json.len() * 2);
    let (mut indent, mut in_string, mut escaped) = (0usize, false, false);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                let mut j = i;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                if chars.get(j) == Some(&close) {
                    out.push(c);
                    out.push(close);
                    i = j + 1;
                } else {
                    indent += 1;
                    out.push(c);
                    newline(&mut out, indent);
                }
            }
            '}' | ']' => {
                indent = indent.saturating_sub(1);
                newline(&mut out, indent);
                out.push(c);
            }
            ',' => {
                out.push(',');
                newline(&mut out, indent);
            }
            ':' => out.push_str(": "),
            c if c.is_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

/// A registry client; cheap to clone (clones share connections and tokens).
///
/// ```no_run
/// # async fn run() -> Result<(), pf_buildkit::registry::Error> {
/// use pf_buildkit::registry::{Client, ClientOptions, Source, parse_reference};
///
/// let client = Client::new(ClientOptions::from_env()?)?;
/// let sources = vec![
///     Source::new(parse_reference("registry.example/app:v1-amd64")?, "linux/amd64".parse()?),
///     Source::new(parse_reference("registry.example/app:v1-arm64")?, "linux/arm64".parse()?),
/// ];
/// let index = client.push_index(&parse_reference("registry.example/app:v1")?, &sources).await?;
/// println!("{}", index.digest);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    t: Arc<Transport>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

/// The tag or digest part of a reference for a URL path.
fn reference_part(r: &Reference) -> String {
    match (r.digest(), r.tag()) {
        (Some(d), _) => d.to_owned(),
        (None, Some(t)) => t.to_owned(),
        (None, None) => "latest".to_owned(),
    }
}

fn same_repository(a: &Reference, b: &Reference) -> bool {
    a.registry() == b.registry() && a.repository() == b.repository()
}

impl Client {
    /// A client with `options`.
    ///
    /// # Errors
    /// The HTTP client cannot be built.
    pub fn new(options: ClientOptions) -> Result<Self, Error> {
        let t = Transport::new(
            options.credentials,
            options.insecure,
            options
                .insecure_registries
                .into_iter()
                .collect::<HashSet<_>>(),
            options.retry,
        )?;
        Ok(Self { t: Arc::new(t) })
    }

    fn manifest_url(&self, r: &Reference, part: &str) -> Result<Url, Error> {
        self.t.url(
            r.registry(),
            &format!("/v2/{}/manifests/{part}", r.repository()),
        )
    }

    fn blob_url(&self, r: &Reference, digest: &str) -> Result<Url, Error> {
        self.t.url(
            r.registry(),
            &format!("/v2/{}/blobs/{digest}", r.repository()),
        )
    }

    /// Fetches a manifest or index by tag or digest and checks its digest: against the
    /// reference's digest, and against the `Docker-Content-Digest` the registry announces.
    ///
    /// # Errors
    /// [`Error::NotFound`], a digest mismatch, or a registry/transport failure.
    pub async fn fetch_manifest(&self, reference: &Reference) -> Result<FetchedManifest, Error> {
        let part = reference_part(reference);
        if let Some(d) = reference.digest()
            && !assemble::is_valid_digest(d)
        {
            return Err(Error::BadDigest {
                what: reference.whole(),
                digest: d.to_owned(),
            });
        }
        let registry = reference.registry();
        let req = Request::new(
            Method::GET,
            self.manifest_url(reference, &part)?,
            Scope::pull(reference.repository()),
        )
        .header("accept", ACCEPT_MANIFESTS);
        let response = self.t.send(registry, &req).await?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => {
                return Err(Error::NotFound {
                    reference: reference.whole(),
                });
            }
            _ => return Err(self.t.status_error(registry, &req, response, 1).await),
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_SMALL_DOCUMENT)
        {
            return Err(Error::Unusable {
                reference: reference.whole(),
                problem: "manifest larger than 16 MiB".into(),
            });
        }
        let headers = response.headers().clone();
        let bytes = response.bytes().await.map_err(|source| Error::Connect {
            registry: registry.to_owned(),
            attempts: 1,
            mismatch: None,
            source,
        })?;
        let digest = sha256_digest(&bytes);
        if let Some(expected) = reference.digest() {
            verify_digest(&reference.whole(), expected, &bytes)?;
        }
        if let Some(announced) = headers
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            && announced.starts_with("sha256:")
            && announced != digest
        {
            return Err(Error::DigestMismatch {
                what: format!("{} (Docker-Content-Digest)", reference.whole()),
                expected: announced.to_owned(),
                actual: digest,
            });
        }
        let media_type = headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned())
            .filter(|v| is_index(v) || is_image_manifest(v) || DOCKER_SCHEMA1.contains(&v.as_str()))
            .or_else(|| media_type_of(&bytes))
            .ok_or_else(|| Error::Unusable {
                reference: reference.whole(),
                problem: "the registry's answer is not an image manifest or index".into(),
            })?;
        if DOCKER_SCHEMA1.contains(&media_type.as_str()) {
            return Err(Error::Unusable {
                reference: reference.whole(),
                problem: "Docker schema 1 manifests are not supported; push the image again with a current client".into(),
            });
        }
        Ok(FetchedManifest {
            media_type,
            digest,
            bytes,
        })
    }

    /// Reads a small blob (`what`: a config, an attestation) whole and checks its digest.
    pub(super) async fn fetch_small_blob(
        &self,
        reference: &Reference,
        desc: &Descriptor,
        what: &str,
    ) -> Result<Bytes, Error> {
        if !assemble::is_valid_digest(&desc.digest) {
            return Err(Error::BadDigest {
                what: format!("{what} of {}", reference.whole()),
                digest: desc.digest.clone(),
            });
        }
        if desc.size > MAX_SMALL_DOCUMENT {
            return Err(Error::Unusable {
                reference: reference.whole(),
                problem: format!("{what} {} is larger than 16 MiB", desc.digest),
            });
        }
        let registry = reference.registry();
        let req = Request::new(
            Method::GET,
            self.blob_url(reference, &desc.digest)?,
            Scope::pull(reference.repository()),
        );
        let response = self.t.send(registry, &req).await?;
        if !response.status().is_success() {
            return Err(self.t.status_error(registry, &req, response, 1).await);
        }
        let bytes = response.bytes().await.map_err(|source| Error::Connect {
            registry: registry.to_owned(),
            attempts: 1,
            mismatch: None,
            source,
        })?;
        verify_digest(
            &format!("{what} {} of {}", desc.digest, reference.whole()),
            &desc.digest,
            &bytes,
        )?;
        Ok(bytes)
    }

    /// Resolves a reference to its descriptor and content: for an image, the platform its
    /// config declares; for an index, its entries.
    ///
    /// # Errors
    /// Not found, not an image or index, digest mismatch, or a registry failure.
    pub async fn resolve(&self, reference: &Reference) -> Result<Resolved, Error> {
        let fetched = self.fetch_manifest(reference).await?;
        let descriptor = Descriptor {
            media_type: fetched.media_type.clone(),
            digest: fetched.digest.clone(),
            size: fetched.bytes.len() as u64,
        };
        let unusable = |problem: String| Error::Unusable {
            reference: reference.whole(),
            problem,
        };
        let content = if is_index(&fetched.media_type) {
            let doc: IndexDoc = parse_json(&fetched.bytes, &reference.whole(), "index")?;
            for entry in &doc.manifests {
                if !assemble::is_valid_digest(&entry.digest) {
                    return Err(Error::BadDigest {
                        what: reference.whole(),
                        digest: entry.digest.clone(),
                    });
                }
            }
            ResolvedContent::Index {
                entries: doc.manifests,
            }
        } else {
            let doc: ManifestDoc = parse_json(&fetched.bytes, &reference.whole(), "manifest")?;
            let config = self
                .fetch_small_blob(reference, &doc.config, "config")
                .await?;
            let platform: Platform = serde_json::from_slice(&config)
                .map_err(|_| unusable("its config has no os and architecture".into()))?;
            if platform.os.is_empty() || platform.architecture.is_empty() {
                return Err(unusable("its config has no os and architecture".into()));
            }
            ResolvedContent::Image {
                platform,
                manifest: fetched.bytes,
            }
        };
        Ok(Resolved {
            reference: reference.clone(),
            descriptor,
            content,
        })
    }

    /// Fetches a manifest or index and returns it as JSON (for `manifest inspect`).
    ///
    /// # Errors
    /// As [`Client::fetch_manifest`], or a body that is not JSON.
    pub async fn inspect(&self, reference: &Reference) -> Result<serde_json::Value, Error> {
        let fetched = self.fetch_manifest(reference).await?;
        parse_json(&fetched.bytes, &reference.whole(), "manifest")
    }

    /// Whether a blob exists in `reference`'s repository.
    ///
    /// # Errors
    /// A registry or transport failure.
    pub async fn blob_exists(&self, reference: &Reference, digest: &str) -> Result<bool, Error> {
        self.exists(reference, self.blob_url(reference, digest)?)
            .await
    }

    /// Whether a manifest exists (by tag or digest) in `reference`'s repository.
    ///
    /// # Errors
    /// A registry or transport failure.
    pub async fn manifest_exists(&self, reference: &Reference, part: &str) -> Result<bool, Error> {
        let url = self.manifest_url(reference, part)?;
        let req = Request::new(Method::HEAD, url, Scope::pull(reference.repository()))
            .header("accept", ACCEPT_MANIFESTS);
        self.exists_req(reference, req).await
    }

    async fn exists(&self, reference: &Reference, url: Url) -> Result<bool, Error> {
        let req = Request::new(Method::HEAD, url, Scope::pull(reference.repository()));
        self.exists_req(reference, req).await
    }

    async fn exists_req(&self, reference: &Reference, req: Request) -> Result<bool, Error> {
        let registry = reference.registry();
        let response = self.t.send(registry, &req).await?;
        match response.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.t.status_error(registry, &req, response, 1).await),
        }
    }

    /// Opens a blob upload in `target`'s repository, trying a cross-repository mount from
    /// `mount_from` first. `Ok(None)` means the blob was mounted; `Ok(Some(url))` is an upload
    /// session to PUT the content to (the mount was refused with 202, or not tried).
    async fn open_upload(
        &self,
        target: &Reference,
        digest: &str,
        mount_from: Option<&Reference>,
    ) -> Result<Option<Url>, Error> {
        let registry = target.registry();
        let mut url = self.t.url(
            registry,
            &format!("/v2/{}/blobs/uploads/", target.repository()),
        )?;
        let mut scope = Scope::push(target.repository());
        if let Some(from) = mount_from {
            url.query_pairs_mut()
                .append_pair("mount", digest)
                .append_pair("from", from.repository());
            scope.mount_from = Some(from.repository().to_owned());
        }
        let req = Request::new(Method::POST, url, scope);
        let response = self.t.send(registry, &req).await?;
        match response.status() {
            StatusCode::CREATED if mount_from.is_some() => {
                tracing::debug!(%digest, target = %target.whole(), "blob mounted");
                Ok(None)
            }
            StatusCode::ACCEPTED => {
                let location = response
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| Error::Unusable {
                        reference: target.whole(),
                        problem: "the registry opened an upload without a Location".into(),
                    })?;
                let location = req.url.join(location).map_err(|_| Error::Unusable {
                    reference: target.whole(),
                    problem: format!("the registry gave an invalid upload Location {location:?}"),
                })?;
                Ok(Some(location))
            }
            _ => Err(self.t.status_error(registry, &req, response, 1).await),
        }
    }

    /// PUTs content to an upload session, streaming `body`; expects 201.
    async fn finish_upload(
        &self,
        target: &Reference,
        mut location: Url,
        digest: &str,
        size: u64,
        body: reqwest::Body,
    ) -> Result<(), Error> {
        location.query_pairs_mut().append_pair("digest", digest);
        let mut headers = HeaderMap::new();
        headers.insert(
            reqwest::header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        headers.insert(reqwest::header::CONTENT_LENGTH, HeaderValue::from(size));
        let registry = target.registry();
        let response = self
            .t
            .send_streaming(
                registry,
                Method::PUT,
                location.clone(),
                &Scope::push(target.repository()),
                headers,
                body,
            )
            .await?;
        if response.status() == StatusCode::CREATED {
            return Ok(());
        }
        let req = Request::new(Method::PUT, location, Scope::push(target.repository()));
        Err(self.t.status_error(registry, &req, response, 1).await)
    }

    /// Makes blob `desc` present in `target`'s repository: nothing if it is there, a
    /// cross-repository mount from `source` when both are on one registry, else a streaming
    /// copy (also when the registry refuses the mount). Retries the whole copy on transient
    /// failures, since a streamed body cannot be replayed.
    async fn copy_blob(
        &self,
        source: &Reference,
        target: &Reference,
        desc: &Descriptor,
    ) -> Result<(), Error> {
        if !assemble::is_valid_digest(&desc.digest) {
            return Err(Error::BadDigest {
                what: format!("a blob of {}", source.whole()),
                digest: desc.digest.clone(),
            });
        }
        if self.blob_exists(target, &desc.digest).await? {
            return Ok(());
        }
        let mount_from = (source.registry() == target.registry()).then_some(source);
        self.t
            .retry
            .run(&desc.digest, move |_| async move {
                retryable(self.copy_blob_once(source, target, desc, mount_from).await)
            })
            .await
    }

    async fn copy_blob_once(
        &self,
        source: &Reference,
        target: &Reference,
        desc: &Descriptor,
        mount_from: Option<&Reference>,
    ) -> Result<(), Error> {
        let Some(location) = self.open_upload(target, &desc.digest, mount_from).await? else {
            return Ok(());
        };
        tracing::debug!(digest = %desc.digest, from = %source.whole(), "streaming blob copy");
        let url = self.blob_url(source, &desc.digest)?;
        let response = self
            .t
            .get_stream(
                source.registry(),
                url.clone(),
                Scope::pull(source.repository()),
            )
            .await?;
        if !response.status().is_success() {
            let req = Request::new(Method::GET, url, Scope::pull(source.repository()));
            return Err(self
                .t
                .status_error(source.registry(), &req, response, 1)
                .await);
        }
        let size = response.content_length().unwrap_or(desc.size);
        if size != desc.size {
            return Err(Error::Unusable {
                reference: source.whole(),
                problem: format!(
                    "blob {} is {size} bytes, its manifest says {}",
                    desc.digest, desc.size
                ),
            });
        }
        let stream = response.bytes_stream().map_err(std::io::Error::other);
        self.finish_upload(
            target,
            location,
            &desc.digest,
            desc.size,
            reqwest::Body::wrap_stream(stream),
        )
        .await
    }

    /// PUTs a manifest or index (exact bytes, exact media type) under `part` (tag or digest)
    /// in `target`'s repository and returns its digest.
    ///
    /// # Errors
    /// A registry or transport failure, or a registry announcing another digest.
    pub async fn push_manifest(
        &self,
        target: &Reference,
        part: &str,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<String, Error> {
        let digest = sha256_digest(&bytes);
        let registry = target.registry();
        let req = Request::new(
            Method::PUT,
            self.manifest_url(target, part)?,
            Scope::push(target.repository()),
        )
        .header("content-type", media_type)
        .body(bytes);
        let response = self.t.send(registry, &req).await?;
        if response.status() != StatusCode::CREATED && response.status() != StatusCode::OK {
            return Err(self.t.status_error(registry, &req, response, 1).await);
        }
        if let Some(announced) = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            && announced.starts_with("sha256:")
            && announced != digest
        {
            return Err(Error::DigestMismatch {
                what: format!("manifest pushed to {}", target.whole()),
                expected: digest,
                actual: announced.to_owned(),
            });
        }
        Ok(digest)
    }

    /// Fetches (unless already known) and verifies the manifest of an image to be copied into
    /// `target`'s repository, with the blobs it needs there; `None` when it is there already.
    async fn prepare_image(
        &self,
        source: &Reference,
        target: &Reference,
        desc: &Descriptor,
        known: Option<Bytes>,
    ) -> Result<Option<(Bytes, Vec<Descriptor>)>, Error> {
        if self.manifest_exists(target, &desc.digest).await? {
            return Ok(None);
        }
        let bytes = match known {
            Some(b) => b,
            None => {
                let by_digest = Reference::with_digest(
                    source.registry().to_owned(),
                    source.repository().to_owned(),
                    desc.digest.clone(),
                );
                let fetched = self.fetch_manifest(&by_digest).await?;
                if !is_image_manifest(&fetched.media_type) {
                    return Err(Error::Unusable {
                        reference: by_digest.whole(),
                        problem: format!(
                            "an index entry of type {} (nested indexes are not supported)",
                            fetched.media_type
                        ),
                    });
                }
                fetched.bytes
            }
        };
        verify_digest(
            &format!("{}@{}", source.whole(), desc.digest),
            &desc.digest,
            &bytes,
        )?;
        let doc: ManifestDoc = parse_json(
            &bytes,
            &format!("{}@{}", source.whole(), desc.digest),
            "manifest",
        )?;
        let blobs = std::iter::once(doc.config).chain(doc.layers).collect();
        Ok(Some((bytes, blobs)))
    }

    /// Resolves every source, assembles the index (see [`assemble::assemble_index`]), copies
    /// children that live in other repositories into `target`'s (mounting blobs where the
    /// registry allows, else streaming them), and pushes the index under `target`'s tag.
    ///
    /// Nothing is tagged unless every step before succeeds.
    ///
    /// # Errors
    /// A source that is missing, of the wrong platform, or duplicated; a registry failure.
    #[tracing::instrument(skip_all, fields(target = %target.whole(), sources = sources.len()))]
    pub async fn push_index(
        &self,
        target: &Reference,
        sources: &[Source],
    ) -> Result<PushedIndex, Error> {
        if sources.is_empty() {
            return Err(Error::NoSources);
        }
        if target.digest().is_some() {
            return Err(Error::Unusable {
                reference: target.whole(),
                problem: "the target must name a tag, not a digest".into(),
            });
        }
        let resolved = futures_util::future::try_join_all(sources.iter().map(|s| async {
            Ok::<_, Error>(ResolvedSource {
                requested: s.platform.clone(),
                resolved: self.resolve(&s.reference).await?,
            })
        }))
        .await?;
        let index = assemble::assemble_index(&resolved)?;
        tracing::debug!(media_type = %index.media_type, children = index.children.len(), "index assembled");
        self.copy_children(target, &index).await?;
        let tag = reference_part(target);
        let digest = self
            .push_manifest(target, &tag, &index.media_type, index.bytes.clone())
            .await?;
        Ok(PushedIndex {
            digest,
            media_type: index.media_type,
            size: index.bytes.len() as u64,
        })
    }

    async fn copy_children(&self, target: &Reference, index: &AssembledIndex) -> Result<(), Error> {
        // Each distinct manifest living in another repository, fetched and verified.
        let mut seen = HashSet::new();
        let children: Vec<_> = index
            .children
            .iter()
            .filter(|c| !same_repository(&c.source, target))
            .filter(|c| seen.insert(c.entry.digest.clone()))
            .collect();
        let prepared = futures_util::stream::iter(children.iter().map(|c| async move {
            let desc = Descriptor {
                media_type: c.entry.media_type.clone(),
                digest: c.entry.digest.clone(),
                size: c.entry.size,
            };
            let prepared = self
                .prepare_image(&c.source, target, &desc, c.manifest.clone())
                .await?;
            Ok::<_, Error>(prepared.map(|(bytes, blobs)| (*c, desc, bytes, blobs)))
        }))
        .buffer_unordered(4)
        .try_collect::<Vec<_>>()
        .await?;
        let prepared: Vec<_> = prepared.into_iter().flatten().collect();

        // Every blob once, before any manifest needs it: images often share layers and configs,
        // and concurrent writes of one blob into one repository race in the registry's storage.
        let mut seen = HashSet::new();
        let blobs: Vec<_> = prepared
            .iter()
            .flat_map(|(c, _, _, blobs)| blobs.iter().map(move |b| (&c.source, b)))
            .filter(|(_, b)| seen.insert(b.digest.clone()))
            .collect();
        futures_util::stream::iter(
            blobs
                .into_iter()
                .map(|(source, b)| self.copy_blob(source, target, b)),
        )
        .buffer_unordered(4)
        .try_collect::<Vec<()>>()
        .await?;

        // Images before attestations: an attestation's subject should exist first.
        for attestations in [false, true] {
            let pushes = prepared
                .iter()
                .filter(|(c, ..)| c.entry.is_attestation() == attestations)
                .map(|(_, desc, bytes, _)| {
                    self.push_manifest(target, &desc.digest, &desc.media_type, bytes.clone())
                });
            futures_util::stream::iter(pushes)
                .buffer_unordered(4)
                .try_collect::<Vec<String>>()
                .await?;
        }
        Ok(())
    }

    /// Uploads a blob from a byte stream of known size and digest, unless it is already there.
    pub(crate) async fn upload_blob<F, S>(
        &self,
        target: &Reference,
        desc: &Descriptor,
        open: F,
    ) -> Result<(), Error>
    where
        F: Fn() -> Result<S, Error>,
        S: futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static,
    {
        if self.blob_exists(target, &desc.digest).await? {
            return Ok(());
        }
        self.t
            .retry
            .run(&desc.digest, |_| async {
                let result = async {
                    let Some(location) = self.open_upload(target, &desc.digest, None).await? else {
                        return Ok(());
                    };
                    let stream = open()?;
                    self.finish_upload(
                        target,
                        location,
                        &desc.digest,
                        desc.size,
                        reqwest::Body::wrap_stream(stream),
                    )
                    .await
                }
                .await;
                retryable(result)
            })
            .await
    }
}

/// A whole streamed copy's result, as an attempt: dropped connections and transient statuses
/// are worth copying again.
fn retryable<T>(result: Result<T, Error>) -> Attempt<T, Error> {
    match result {
        Err(error @ Error::Connect { .. }) => Attempt::Transient { error, wait: None },
        Err(error @ Error::Status { status, .. }) if super::http::is_transient(status) => {
            Attempt::Transient { error, wait: None }
        }
        other => Attempt::Done(other),
    }
}

/// The `mediaType` field of a manifest, for registries that send a generic Content-Type.
pub(crate) fn media_type_of(bytes: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        config: Option<serde_json::Value>,
    }
    let probe: Probe = serde_json::from_slice(bytes).ok()?;
    match probe.media_type {
        Some(m) if is_index(&m) || is_image_manifest(&m) => Some(m),
        Some(_) => None,
        // OCI allows omitting mediaType; tell the two apart by shape.
        None if probe.manifests.is_some() => Some(OCI_INDEX.to_owned()),
        None if probe.config.is_some() => Some(OCI_MANIFEST.to_owned()),
        None => None,
    }
}

/// `bytes` as the JSON `document` of `reference`, or [`Error::Json`] naming both.
pub(super) fn parse_json<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    reference: &str,
    document: &'static str,
) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|source| Error::Json {
        reference: reference.to_owned(),
        document,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::assemble::{DOCKER_MANIFEST, DOCKER_MANIFEST_LIST};
    use crate::registry::parse_reference;

    #[test]
    fn a_document_that_is_not_json_keeps_the_parsers_error() {
        let fetched = FetchedManifest {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            digest: "sha256:00".into(),
            bytes: Bytes::from_static(b"{\"schemaVersion\": 2,"),
        };
        let err = fetched.to_pretty_json().unwrap_err();
        assert!(
            matches!(&err, Error::Json { document: "manifest", reference, .. } if reference == "sha256:00"),
            "{err:?}"
        );
        let source = std::error::Error::source(&err).expect("a source");
        assert!(
            source.downcast_ref::<serde_json::Error>().is_some(),
            "{source:?}"
        );
        assert_eq!(err.to_string(), "sha256:00: invalid manifest JSON");
    }

    #[test]
    fn media_type_from_body() {
        assert_eq!(
            media_type_of(br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[]}"#),
            Some(DOCKER_MANIFEST_LIST.to_owned())
        );
        assert_eq!(
            media_type_of(br#"{"schemaVersion":2,"config":{}}"#),
            Some(OCI_MANIFEST.to_owned())
        );
        assert_eq!(media_type_of(b"garbage"), None);
        assert_eq!(
            media_type_of(br#"{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{}}"#),
            Some(DOCKER_MANIFEST.to_owned())
        );
    }

    #[test]
    fn pretty_json_keeps_key_order() {
        let doc = br#"{"schemaVersion":2,"mediaType":"x","manifests":[{"digest":"a\"b,{","size":1,"platform":{"os":"linux","architecture":"amd64"},"annotations":{}}],"empty":[]}"#;
        let fetched = FetchedManifest {
            media_type: OCI_INDEX.into(),
            digest: sha256_digest(doc),
            bytes: Bytes::from_static(doc),
        };
        let pretty = fetched.to_pretty_json().unwrap();
        let value: serde_json::Value = serde_json::from_slice(doc).unwrap();
        // Same document, serde_json's layout, original key order.
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&pretty).unwrap(),
            value
        );
        assert!(pretty.starts_with("{\n  \"schemaVersion\": 2,\n  \"mediaType\": \"x\",\n  \"manifests\": [\n    {\n      \"digest\": \"a\\\"b,{\","), "{pretty}");
        assert!(
            pretty.contains("\"annotations\": {}") && pretty.ends_with("\"empty\": []\n}"),
            "{pretty}"
        );
        let bad = FetchedManifest {
            bytes: Bytes::from_static(b"{nope"),
            ..fetched
        };
        assert!(bad.to_pretty_json().is_err());
    }

    #[test]
    fn reference_parts() {
        assert_eq!(
            reference_part(&parse_reference("r.example/a:t").unwrap()),
            "t"
        );
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            reference_part(&parse_reference(&format!("r.example/a@{d}")).unwrap()),
            d
        );
        assert!(parse_reference("UPPER/Case:tag").is_err());
    }
}
