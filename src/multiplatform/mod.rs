//! The multi-platform build: one Dockerfile solve per architecture, each on its own BuildKit
//! and all at once, each image pushed as `REGISTRY/REPO:TAG-ARCH`; then one image index
//! `REGISTRY/REPO:TAG` pushed through the registry API. If any architecture fails, the others
//! are cancelled and no index is pushed.
//!
//! It owns the whole job an embedding build system needs: [`BuildRequest`] resolves the
//! registry, architectures, S3 cache and builders from the request plus `buildkit.json`
//! ([`plan`]), leases cluster builders from the [`fleet`](crate::fleet) and releases them
//! ([`Builders`]), and [`Metadata`] is the record of what was pushed.
//!
//! Border: this module sits above `config`, `fleet`, `buildkit`, `registry` and `aws` and may
//! use all of them; nothing in the library imports it. It prints nothing: what a user should see
//! arrives as [`Event`]s and progress sinks.
//!
//! ```no_run
//! # async fn run() -> Result<(), pf_buildkit::multiplatform::Error> {
//! use pf_buildkit::buildkit::BuildOptions;
//! use pf_buildkit::buildkit::progress::QuietProgress;
//! use pf_buildkit::multiplatform::BuildRequest;
//!
//! // Registry and cluster from the repository's buildkit.json; amd64 and arm64 on the fleet.
//! let request = BuildRequest::new(BuildOptions::new("./app"), "team/app", "v1.2.3");
//! let plan = request.plan_in(std::path::Path::new(".")).await?;
//! let result = plan.run(&|_event| {}, &|_arch: &str| Box::new(QuietProgress)).await?;
//! println!("{}", result.index.digest);
//! # Ok(()) }
//! ```

mod metadata;
pub mod plan;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use futures_util::future::try_join_all;

use crate::buildkit::progress::ProgressSink;
use crate::buildkit::{BuildError, BuildOptions, Client, RpcCode};
use crate::buildkit::{Cache, Output};
use crate::registry::{self, CredentialsProvider, Platform, PushedIndex, Source};
use crate::setters::with_setters;

pub use metadata::{ImageRecord, IndexRecord, Metadata};
pub use plan::{BuildRequest, Builders, Event, Placement, Plan};

/// The architectures a Panfactum fleet builds, in order.
pub const DEFAULT_ARCHES: [&str; 2] = ["amd64", "arm64"];

/// Architectures a Linux image can be built for.
pub const KNOWN_ARCHES: [&str; 7] = [
    "amd64", "arm64", "arm", "386", "ppc64le", "s390x", "riscv64",
];

/// One architecture's BuildKit.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Builder {
    /// The architecture it builds, one of [`KNOWN_ARCHES`], e.g. `amd64`.
    pub arch: String,
    /// A connected client for that architecture's daemon.
    pub client: Client,
}

/// One architecture's build on its daemon: where its record is in the build history.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ArchBuild {
    /// The architecture, e.g. `arm64`.
    pub arch: String,
    /// The BuildKit it ran on, as [`Client::endpoint`](crate::buildkit::Client::endpoint)
    /// names it (`kube-pod://POD?…` for a pod of the fleet).
    pub builder: String,
    /// The build's ref in that daemon's history (its last, when the client pushed after the
    /// daemon could not).
    pub reference: String,
}

/// How each architecture's image reaches the registry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum PushMode {
    /// The daemon pushes (`type=image,push=true`); when that fails for a reason the client can
    /// route around (no image exporter, no route to the registry), the client pushes instead.
    #[default]
    Auto,
    /// The daemon exports an OCI tarball over the session and the client pushes it.
    FromClient,
}

/// An S3 layer cache, as Panfactum's `buildkit.json` configures it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct S3Cache {
    /// The bucket's name (not an `s3://` URL), as BuildKit's `s3` cache backend takes it.
    pub bucket: String,
    /// The bucket's AWS region, e.g. `us-east-2`.
    pub region: String,
}

/// A multi-platform build on builders the caller has connected (see [`BuildRequest`] for the
/// build that connects its own).
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use pf_buildkit::multiplatform::{Builder, MultiPlatformBuild};
/// use pf_buildkit::buildkit::{BuildOptions, Client, Endpoint, TlsOptions};
/// use pf_buildkit::buildkit::progress::QuietProgress;
///
/// let amd64 = Client::connect("tcp://buildkit-amd64:1234".parse::<Endpoint>()?, &TlsOptions::default()).await?;
/// let arm64 = Client::connect("tcp://buildkit-arm64:1234".parse::<Endpoint>()?, &TlsOptions::default()).await?;
/// let build = MultiPlatformBuild::new(BuildOptions::new("./app"), "registry.example.com", "team/app", "v1.2.3");
/// let builders = vec![
///     Builder::new("amd64", amd64),
///     Builder::new("arm64", arm64),
/// ];
/// let result = build.run(&builders, &|_arch: &str| Box::new(QuietProgress)).await?;
/// println!("{}", result.index.digest);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MultiPlatformBuild {
    /// The build itself (context, Dockerfile, args, secrets …). Its outputs and platforms are
    /// set per architecture; cache specs given here apply to every architecture.
    pub options: BuildOptions,
    /// Registry host (`host[:port]`).
    pub registry: String,
    /// Repository inside the registry, e.g. `team/app`.
    pub repository: String,
    /// The index tag; architecture images are tagged `TAG-ARCH`.
    pub tag: String,
    /// Speak plain HTTP to the registry (both the daemon and this client).
    pub insecure_registry: bool,
    /// How images reach the registry.
    pub push: PushMode,
    /// A per-architecture S3 layer cache (`name=REGISTRY/REPO-ARCH`, so architectures do not
    /// overwrite each other's cache manifest).
    pub s3_cache: Option<S3Cache>,
    /// A local cache per architecture in `DIR/ARCH` (an OCI layout each, as
    /// `--export-cache type=local` writes): imported when it holds a cache, exported with
    /// `mode=max` after each build. For CI runners that keep a directory between runs.
    pub cache_dir: Option<PathBuf>,
    /// Where registry logins come from, for the index, client-side pushes and the daemons'
    /// pushes (unless [`options`](Self::options) names its own
    /// [`credentials`](BuildOptions::credentials)). `None` (the default) pushes the index
    /// anonymously and leaves the daemons to the build options (the Docker config unless
    /// [`registry_auth`](BuildOptions::registry_auth) is off).
    pub registry_credentials: Option<Arc<dyn CredentialsProvider>>,
    /// Where client-side pushes stage their OCI tarballs (default: the system temp dir).
    pub scratch_dir: Option<PathBuf>,
}

/// What one architecture produced.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ArchImage {
    /// The image's whole reference, `REGISTRY/REPO:TAG-ARCH`.
    pub reference: String,
    /// The pushed manifest's digest, `sha256:<hex>`, as the daemon's export response or the
    /// client's push reported it.
    pub digest: String,
    /// Whether the client pushed it (rather than the daemon).
    pub pushed_by_client: bool,
}

/// What a multi-platform build produced.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MultiPlatformResult {
    /// The index `REGISTRY/REPO:TAG`.
    pub index: PushedIndex,
    /// The index's whole reference, `REGISTRY/REPO:TAG`.
    pub reference: String,
    /// Each architecture's image, by architecture name (`amd64`, `arm64`, …).
    pub images: BTreeMap<String, ArchImage>,
}

impl From<registry::Error> for Error {
    fn from(err: registry::Error) -> Self {
        Error::Registry(Box::new(err))
    }
}

impl From<crate::config::ConfigError> for Error {
    fn from(err: crate::config::ConfigError) -> Self {
        Error::Config(Box::new(err))
    }
}

/// Why a multi-platform build failed. Nothing is pushed as the index in every case.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request is unusable; nothing was built.
    #[error(transparent)]
    Invalid(#[from] InvalidRequest),
    /// The build options are unusable (a missing context, an unreadable secret …).
    #[error(transparent)]
    Options(Box<BuildError>),
    /// `buildkit.json` is needed and cannot be used.
    #[error(transparent)]
    Config(#[from] Box<crate::config::ConfigError>),
    /// Docker's credential configuration cannot be read.
    #[error(transparent)]
    Credentials(#[from] registry::credentials::CredentialsError),
    /// No registry was given and no `buildkit.json` names one.
    #[error("no registry: none was given and there is no buildkit.json to name one")]
    NoRegistry,
    /// A builder was given for an architecture that is not built.
    #[error("a builder is given for {arch}, which is not among the architectures built")]
    UnusedBuilder {
        /// The architecture named by the builder, e.g. `riscv64`.
        arch: String,
    },
    /// An architecture has no builder: none given, no shared or fallback endpoint, no cluster.
    #[error("no BuildKit for {arch}: no builder, endpoint or cluster is given for it")]
    NoBuilder {
        /// The architecture left without a builder, e.g. `arm64`.
        arch: String,
    },
    /// An architecture would build on the fleet, which has only amd64 and arm64.
    #[error("{arch} cannot build on the cluster {context}: its fleet has only amd64 and arm64")]
    NotInFleet {
        /// The architecture that would go to the fleet, neither amd64 nor arm64.
        arch: String,
        /// The kubeconfig context of the cluster, from the request or `buildkit.json`'s `cluster`.
        context: String,
    },
    /// An architecture's builder cannot be reached.
    #[error("{arch}")]
    Connect {
        /// The architecture whose builder was being connected.
        arch: String,
        /// What the BuildKit client reported, naming the endpoint.
        #[source]
        source: Box<crate::buildkit::Error>,
    },
    /// The fleet's cluster cannot be used (kubeconfig, context, credentials).
    #[error("cluster {context}")]
    Fleet {
        /// The kubeconfig context of the cluster, from the request or `buildkit.json`'s `cluster`.
        context: String,
        /// What the fleet reported: no kubeconfig, no such context, refused credentials.
        #[source]
        source: Box<crate::fleet::Error>,
    },
    /// No pod of the fleet could be leased for an architecture.
    #[error("{arch}")]
    Lease {
        /// The architecture a pod was being leased for.
        arch: String,
        /// What the fleet reported while scaling up, waiting, choosing a pod or connecting to it.
        #[source]
        source: Box<crate::fleet::Error>,
    },
    /// One architecture failed; the others were cancelled.
    #[error("{arch} (on {builder})")]
    Arch {
        /// The architecture that failed first.
        arch: String,
        /// The BuildKit it ran on, as [`Client::endpoint`](crate::buildkit::Client::endpoint) names
        /// it.
        builder: String,
        /// Its build's failure, with the failing step when the daemon named one.
        #[source]
        source: Box<BuildError>,
        /// Every architecture's build that started (the failed one and those cancelled), each
        /// with its ref in its daemon's build history, for `history logs`.
        builds: Vec<ArchBuild>,
    },
    /// The scratch directory of a client-side push cannot be created.
    #[error("{arch}: cannot create a scratch directory for the client-side push")]
    Scratch {
        /// The architecture whose image the client was to push.
        arch: String,
        /// The I/O error from creating it in the scratch directory (or the system temp dir).
        #[source]
        source: std::io::Error,
    },
    /// An architecture's build produced no image digest.
    #[error("{arch}: the daemon reported no image digest for {reference}")]
    NoDigest {
        /// The architecture whose build reported no digest.
        arch: String,
        /// The image's whole reference, `REGISTRY/REPO:TAG-ARCH`.
        reference: String,
    },
    /// A client-side push or the index push failed.
    #[error(transparent)]
    Registry(#[from] Box<registry::Error>),
    /// The metadata record cannot be written.
    #[error("cannot write the metadata file {path}")]
    Metadata {
        /// The metadata file's path as the caller gave it.
        path: PathBuf,
        /// The I/O error from writing it (through a temporary file in the same directory).
        #[source]
        source: std::io::Error,
    },
}

/// What is unusable in a multi-platform build's request, named by its value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidRequest {
    /// The list of architectures is empty.
    #[error("no architectures to build")]
    NoArchitectures,
    /// An architecture this build does not know.
    #[error("unknown architecture {arch:?}; use one of {}", KNOWN_ARCHES.join(", "))]
    UnknownArchitecture {
        /// The architecture name as given.
        arch: String,
    },
    /// An architecture listed twice.
    #[error("architecture {arch} is given twice")]
    DuplicateArchitecture {
        /// The architecture name given more than once.
        arch: String,
    },
    /// A registry that is not `host[:port]`.
    #[error("registry {registry:?} must be a host[:port] without a path")]
    Registry {
        /// The registry exactly as the caller gave it.
        registry: String,
    },
    /// A repository name the registry would refuse.
    #[error(
        "repository {repository:?} is not a valid repository name: lowercase letters, digits and separators (. _ - /), like team/app"
    )]
    Repository {
        /// The repository exactly as the caller gave it.
        repository: String,
    },
    /// A tag the registry would refuse.
    #[error(
        "tag {tag:?} is not a valid tag: up to 128 letters, digits, '_', '.' and '-', not starting with '.' or '-'"
    )]
    Tag {
        /// The tag exactly as the caller gave it.
        tag: String,
    },
}

impl Builder {
    /// `arch` built on the daemon `client` is connected to.
    pub fn new(arch: impl Into<String>, client: Client) -> Self {
        Builder {
            arch: arch.into(),
            client,
        }
    }
}

impl S3Cache {
    /// The bucket `bucket` in `region`.
    pub fn new(bucket: impl Into<String>, region: impl Into<String>) -> Self {
        S3Cache {
            bucket: bucket.into(),
            region: region.into(),
        }
    }
}

with_setters!(MultiPlatformBuild {
    with_insecure_registry => insecure_registry: bool,
    with_push => push: PushMode,
} optional {
    with_s3_cache => s3_cache: S3Cache,
    with_cache_dir => cache_dir: PathBuf,
    with_scratch_dir => scratch_dir: PathBuf,
});

impl MultiPlatformBuild {
    /// Takes registry logins from `provider` (a [`DockerConfig`](registry::DockerConfig), or a
    /// store of your own).
    #[must_use]
    pub fn with_registry_credentials(mut self, provider: impl CredentialsProvider) -> Self {
        self.registry_credentials = Some(Arc::new(provider));
        self
    }

    /// A build of `options` pushed to `registry/repository:tag`, daemons pushing.
    pub fn new(
        options: BuildOptions,
        registry: impl Into<String>,
        repository: impl Into<String>,
        tag: impl Into<String>,
    ) -> Self {
        MultiPlatformBuild {
            options,
            registry: registry.into(),
            repository: repository.into(),
            tag: tag.into(),
            insecure_registry: false,
            push: PushMode::Auto,
            s3_cache: None,
            cache_dir: None,
            registry_credentials: None,
            scratch_dir: None,
        }
    }

    /// `REGISTRY/REPO:TAG`.
    pub fn index_reference(&self) -> String {
        format!("{}/{}:{}", self.registry, self.repository, self.tag)
    }

    /// `REGISTRY/REPO:TAG-ARCH`.
    pub fn arch_reference(&self, arch: &str) -> String {
        format!("{}/{}:{}-{arch}", self.registry, self.repository, self.tag)
    }

    /// Checks the references and architectures before anything is built.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the problem.
    pub fn validate(&self, arches: &[&str]) -> Result<(), Error> {
        if arches.is_empty() {
            return Err(InvalidRequest::NoArchitectures.into());
        }
        if let Some(arch) = arches.iter().find(|a| !KNOWN_ARCHES.contains(a)) {
            return Err(InvalidRequest::UnknownArchitecture {
                arch: (*arch).to_owned(),
            }
            .into());
        }
        if let Some(dup) = arches
            .iter()
            .enumerate()
            .find_map(|(i, a)| arches[..i].contains(a).then_some(a))
        {
            return Err(InvalidRequest::DuplicateArchitecture {
                arch: (*dup).to_owned(),
            }
            .into());
        }
        if self.registry.is_empty() || self.registry.contains('/') {
            return Err(InvalidRequest::Registry {
                registry: self.registry.clone(),
            }
            .into());
        }
        if !registry::valid_repository(&self.repository) {
            return Err(InvalidRequest::Repository {
                repository: self.repository.clone(),
            }
            .into());
        }
        if !registry::valid_tag(&self.tag) {
            return Err(InvalidRequest::Tag {
                tag: self.tag.clone(),
            }
            .into());
        }
        for arch in arches {
            // The per-architecture tag must be valid too.
            registry::parse_reference(&self.arch_reference(arch))?;
        }
        registry::parse_reference(&self.index_reference())?;
        Ok(())
    }

    fn registry_client(&self) -> Result<registry::Client, registry::Error> {
        let mut options = registry::ClientOptions::default().with_insecure(self.insecure_registry);
        options.credentials = self.registry_credentials.clone();
        registry::Client::new(options)
    }

    /// Asks for an ECR registry's login now, so an unreachable AWS or missing AWS credentials
    /// fail before any builder is scaled up or any daemon starts and asks for it. Any
    /// [`CredentialsProvider`] is asked the same way; the [`DockerConfig`](registry::DockerConfig)
    /// caches the ECR login, so the pushes' lookups that follow do not ask AWS again. Other
    /// registries (and builds without the `aws` feature) are not asked before they are needed.
    ///
    /// # Errors
    /// [`Error::Registry`] naming the registry, the AWS call and the reason.
    pub async fn check_registry_login(&self) -> Result<(), Error> {
        #[cfg(feature = "aws")]
        if let Some(provider) = &self.registry_credentials
            && crate::aws::EcrHost::parse(&self.registry).is_some()
        {
            provider
                .credentials(&self.registry)
                .await
                .map_err(registry::Error::from)?;
        }
        Ok(())
    }

    /// Builds every architecture concurrently, then pushes the index.
    ///
    /// `progress` makes one sink per architecture. Dropping the returned future cancels every
    /// build still running.
    ///
    /// # Errors
    /// [`Error::Arch`] naming the first architecture that failed (the others are
    /// cancelled); [`Error::Registry`] when a push fails. No index is pushed unless
    /// every architecture succeeded.
    #[tracing::instrument(skip_all, fields(target = %self.index_reference()))]
    pub async fn run(
        &self,
        builders: &[Builder],
        progress: &(dyn Fn(&str) -> Box<dyn ProgressSink> + Sync),
    ) -> Result<MultiPlatformResult, Error> {
        let arches: Vec<&str> = builders.iter().map(|b| b.arch.as_str()).collect();
        self.validate(&arches)?;
        // Reads secret files and stats destinations: file work, off the runtime.
        let options = self.options.clone();
        crate::files::off_runtime(move || options.validate())
            .await
            .map_err(|e| Error::Options(Box::new(e)))?;
        let registry = self.registry_client()?;
        self.check_registry_login().await?;
        // Each build's ref, as it starts: a failure names every architecture's record.
        let started: std::sync::Mutex<Vec<ArchBuild>> = std::sync::Mutex::default();
        // try_join_all drops (and so cancels) the remaining builds on the first failure.
        let images = try_join_all(builders.iter().map(|builder| {
            let mut sink = progress(&builder.arch);
            let (registry, started) = (&registry, &started);
            async move {
                let image = self
                    .build_arch(builder, registry, sink.as_mut(), started)
                    .await?;
                Ok::<_, Error>((builder.arch.clone(), image))
            }
        }))
        .await
        .map_err(|err| match err {
            Error::Arch {
                arch,
                builder,
                source,
                ..
            } => Error::Arch {
                arch,
                builder,
                source,
                builds: started.lock().map(|b| b.clone()).unwrap_or_default(),
            },
            other => other,
        })?;
        let sources = images
            .iter()
            .map(|(arch, image)| {
                Ok(Source {
                    reference: registry::parse_reference(&image.reference)?,
                    platform: Platform::new("linux", arch),
                })
            })
            .collect::<Result<Vec<_>, registry::Error>>()?;
        let reference = self.index_reference();
        let index = registry
            .push_index(&registry::parse_reference(&reference)?, &sources)
            .await?;
        Ok(MultiPlatformResult {
            index,
            reference,
            images: images.into_iter().collect(),
        })
    }

    /// The build options for one architecture, exporting as `output`.
    fn arch_options(&self, arch: &str, output: Output) -> BuildOptions {
        let mut options = self.options.clone();
        // The daemons push with the logins the index is pushed with, unless the build brings
        // its own (or turned registry logins off).
        if options.credentials.is_none() && options.registry_auth {
            options.credentials = self.registry_credentials.clone();
        }
        options.platforms = vec![registry::Platform::new("linux", arch)];
        options.outputs = vec![output];
        if let Some(cache) = &self.s3_cache {
            let name = format!("{}/{}-{arch}", self.registry, self.repository);
            let s3 = Cache::s3(&cache.bucket, &cache.region).with_attr("name", name);
            options
                .cache_exports
                .push(s3.clone().with_attr("mode", "max"));
            options.cache_imports.push(s3);
        }
        if let Some(dir) = &self.cache_dir {
            let dir = dir.join(arch);
            // The first run has nothing to import; a directory holding something that is
            // not a layout still fails the import, naming it.
            if dir.exists() {
                options.cache_imports.push(Cache::local(&dir));
            }
            options
                .cache_exports
                .push(Cache::local(dir).with_attr("mode", "max"));
        }
        options
    }

    async fn build_arch(
        &self,
        builder: &Builder,
        registry: &registry::Client,
        progress: &mut dyn ProgressSink,
        started: &std::sync::Mutex<Vec<ArchBuild>>,
    ) -> Result<ArchImage, Error> {
        let arch = builder.arch.as_str();
        let reference = self.arch_reference(arch);
        let fail = |source: BuildError| Error::Arch {
            arch: arch.to_owned(),
            builder: builder.client.endpoint().to_owned(),
            source: Box::new(source),
            builds: Vec::new(),
        };
        // The options of one build of this architecture, under a new ref it records.
        let options = |output: Output| {
            let mut options = self.arch_options(arch, output);
            let reference = crate::buildkit::new_build_ref();
            if let Ok(mut started) = started.lock() {
                started.retain(|b| b.arch != arch);
                started.push(ArchBuild {
                    arch: arch.to_owned(),
                    builder: builder.client.endpoint().to_owned(),
                    reference: reference.clone(),
                });
            }
            options.reference = Some(reference);
            options
        };
        if self.push == PushMode::Auto {
            let mut output = Output::image(&reference).with_push(true);
            if self.insecure_registry {
                output = output.with_attr("registry.insecure", "true");
            }
            match builder.client.build(&options(output), progress).await {
                Ok(result) => {
                    let digest = result
                        .exporter_response
                        .get("containerimage.digest")
                        .cloned()
                        .ok_or_else(|| Error::NoDigest {
                            arch: arch.to_owned(),
                            reference: reference.clone(),
                        })?;
                    return Ok(ArchImage {
                        reference,
                        digest,
                        pushed_by_client: false,
                    });
                }
                Err(err) if daemon_cannot_push(&err) => {
                    tracing::warn!(arch, error = %err, "the daemon could not push; pushing from the client");
                }
                Err(err) => return Err(fail(err)),
            }
        }
        // Client-side push: the daemon streams an OCI tarball over the session.
        let scratch = match &self.scratch_dir {
            Some(dir) => tempfile::Builder::new()
                .prefix("pf-buildkit-")
                .tempdir_in(dir),
            None => tempfile::Builder::new().prefix("pf-buildkit-").tempdir(),
        }
        .map_err(|source| Error::Scratch {
            arch: arch.to_owned(),
            source,
        })?;
        let tar = scratch.path().join(format!("{arch}.oci.tar"));
        let output = Output::oci(&tar).with_attr("name", &reference);
        builder
            .client
            .build(&options(output), progress)
            .await
            .map_err(fail)?;
        let digest = registry
            .push_oci_layout(&tar, &registry::parse_reference(&reference)?)
            .await?;
        Ok(ArchImage {
            reference,
            digest,
            pushed_by_client: true,
        })
    }
}

/// Whether a failed daemon push is one the client can route around by pushing itself: the
/// daemon has no image exporter or push, or cannot reach the registry that this client may
/// reach. The registry refusing the credentials (401/403) is not one: the client would be
/// refused too, and a fallback would only hide the real error behind a second push.
fn daemon_cannot_push(err: &BuildError) -> bool {
    let (code, text) = match err {
        BuildError::Failed { report, status } => (status.code, report.message.to_ascii_lowercase()),
        BuildError::Rpc(e) => {
            let code = match e {
                crate::buildkit::Error::Rpc { status, .. } => status.code,
                _ => RpcCode::Unknown,
            };
            (code, e.to_string().to_ascii_lowercase())
        }
        _ => return false,
    };
    match code {
        // The daemon's status says what kind of failure it is, when it says.
        RpcCode::Unauthenticated | RpcCode::PermissionDenied => return false,
        RpcCode::Unimplemented => return true,
        _ => {}
    }
    // A registry's HTTP answer reaches us only as the daemon's text: 401 and 403 there are
    // refusals, whatever else the message says ("failed to push …: 401 Unauthorized").
    let refused = [
        "401 unauthorized",
        "403 forbidden",
        "unauthorized:",
        "denied:",
    ];
    if refused.iter().any(|needle| text.contains(needle)) {
        return false;
    }
    let unsupported = [
        "unknown exporter",
        "exporter \"image\"",
        "push is not supported",
    ];
    let unreachable = [
        "failed to do request",
        "no such host",
        "connection refused",
        "server gave http response to https client",
    ];
    unsupported
        .iter()
        .chain(&unreachable)
        .any(|needle| text.contains(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build() -> MultiPlatformBuild {
        MultiPlatformBuild::new(BuildOptions::new("."), "127.0.0.1:5000", "team/app", "v1")
    }

    /// A login store of the caller's own that counts the lookups it answers.
    #[derive(Default)]
    struct Counting(std::sync::atomic::AtomicUsize);

    impl CredentialsProvider for Counting {
        fn credentials<'a>(
            &'a self,
            _registry: &'a str,
        ) -> futures_util::future::BoxFuture<
            'a,
            Result<Option<registry::Credential>, registry::CredentialsError>,
        > {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async { Ok(None) })
        }
    }

    impl Counting {
        fn asked(&self) -> usize {
            self.0.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    #[tokio::test]
    async fn a_provider_of_ones_own_serves_the_daemons_and_the_ecr_check() {
        let provider = Arc::new(Counting::default());
        let mut b = build();
        b.registry_credentials = Some(provider.clone());
        // Not an ECR host: nothing is asked before the pushes need it.
        b.check_registry_login().await.unwrap();
        assert_eq!(provider.asked(), 0);
        #[cfg(feature = "aws")]
        {
            let mut ecr = b.clone();
            ecr.registry = "123456789012.dkr.ecr.us-east-1.amazonaws.com".into();
            ecr.check_registry_login().await.unwrap();
            assert_eq!(provider.asked(), 1);
        }
        let asked = provider.asked();

        // The daemons' sessions get the same provider ...
        let options = b.arch_options("amd64", Output::image("r/x:v1-amd64"));
        let given = options
            .credentials
            .expect("the daemons get the request's logins");
        given.credentials("127.0.0.1:5000").await.unwrap();
        assert_eq!(provider.asked(), asked + 1);
        // ... unless the build options bring their own.
        b.options = b.options.with_credentials(registry::DockerConfig::empty());
        let own = b.arch_options("amd64", Output::image("r/x:v1-amd64"));
        own.credentials
            .expect("the options' own logins")
            .credentials("127.0.0.1:5000")
            .await
            .unwrap();
        assert_eq!(provider.asked(), asked + 1);
    }

    #[test]
    fn references_follow_the_panfactum_scheme() {
        let b = build();
        assert_eq!(b.index_reference(), "127.0.0.1:5000/team/app:v1");
        assert_eq!(
            b.arch_reference("arm64"),
            "127.0.0.1:5000/team/app:v1-arm64"
        );
    }

    #[test]
    fn validation_names_the_bad_part() {
        let b = build();
        assert!(b.validate(&["amd64", "arm64"]).is_ok());
        for (arches, needle) in [
            (&["amd64", "sparc"][..], "unknown architecture \"sparc\""),
            (&["amd64", "amd64"][..], "given twice"),
            (&[][..], "no architectures"),
        ] {
            let err = b.validate(arches).unwrap_err();
            assert!(matches!(err, Error::Invalid(_)), "{err:?}");
            let err = err.to_string();
            assert!(err.contains(needle), "{err}");
        }
        let Err(Error::Invalid(InvalidRequest::UnknownArchitecture { arch })) =
            b.validate(&["sparc"])
        else {
            panic!("sparc was accepted");
        };
        assert_eq!(arch, "sparc");
        for (repository, tag, flag) in [
            ("Team/App", "v1", "repository \"Team/App\""),
            ("team/a..b", "v1", "repository \"team/a..b\""),
            ("team/app", "-v1", "tag \"-v1\""),
            ("team/app", "v1:2", "tag \"v1:2\""),
        ] {
            let mut bad = build();
            bad.repository = repository.into();
            bad.tag = tag.into();
            let err = bad.validate(&["amd64"]).unwrap_err().to_string();
            assert!(err.contains(flag), "{repository}:{tag}: {err}");
        }
    }

    #[test]
    fn only_a_daemon_that_cannot_push_falls_back_to_the_client() {
        let failed = |code, message: &str| BuildError::Failed {
            report: crate::buildkit::progress::FailureReport {
                message: message.to_owned(),
                vertex: None,
                sources: Vec::new(),
            },
            status: crate::buildkit::RpcStatus::new(code, message),
        };
        let unknown = RpcCode::Unknown;
        for (err, fallback) in [
            (failed(unknown, "unknown exporter \"image\""), true),
            (failed(RpcCode::Unimplemented, "push"), true),
            (
                failed(
                    unknown,
                    "failed to push r/x:v1: failed to do request: Head \"https://r/v2/\": dial tcp: connect: connection refused",
                ),
                true,
            ),
            (
                failed(
                    unknown,
                    "failed to push r/x:v1: http: server gave HTTP response to HTTPS client",
                ),
                true,
            ),
            // Refusals: the client would be refused as well.
            (
                failed(
                    unknown,
                    "failed to push r/x:v1: unexpected status from PUT request to https://r/v2/x/manifests/v1: 401 Unauthorized",
                ),
                false,
            ),
            (
                failed(
                    unknown,
                    "failed to push r/x:v1: denied: requested access to the resource is denied",
                ),
                false,
            ),
            (
                failed(RpcCode::PermissionDenied, "failed to do request"),
                false,
            ),
            // A step failing is not a push failure.
            (
                failed(
                    unknown,
                    "process \"/bin/sh -c exit 1\" did not complete successfully",
                ),
                false,
            ),
        ] {
            assert_eq!(daemon_cannot_push(&err), fallback, "{err}");
        }
    }

    #[test]
    fn s3_cache_is_named_per_architecture() {
        let mut b = build();
        b.s3_cache = Some(S3Cache {
            bucket: "bkt".into(),
            region: "us-east-2".into(),
        });
        let out = Output::image("x");
        let amd = b.arch_options("amd64", out.clone());
        let arm = b.arch_options("arm64", out);
        assert_eq!(amd.platforms, [registry::Platform::new("linux", "amd64")]);
        assert_eq!(
            amd.cache_exports[0].attrs()["name"],
            "127.0.0.1:5000/team/app-amd64"
        );
        assert_eq!(
            arm.cache_imports[0].attrs()["name"],
            "127.0.0.1:5000/team/app-arm64"
        );
        assert_eq!(arm.cache_exports[0].attrs()["mode"], "max");
        let (kind, attrs) = arm.cache_imports[0].wire(crate::buildkit::CacheDirection::Import);
        assert_eq!(kind, "s3");
        assert_eq!(
            (attrs["bucket"].as_str(), attrs["region"].as_str()),
            ("bkt", "us-east-2")
        );
    }
}
