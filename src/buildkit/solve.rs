//! A build on one BuildKit: [`BuildOptions`] become a `SolveRequest`, for the `dockerfile.v0`
//! frontend or for an LLB definition the caller marshalled, run together with a session and the
//! status stream.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine as _;
use futures_util::StreamExt;
use prost::Message;

use super::Client;
use super::entitlement::Entitlement;
use super::fsutil::{Directory, MemoryTree, Source};
use super::invalid::{DestinationProblem, InvalidOptions};
use super::oci_layout::LayoutError;
use super::output::{Cache, CacheDirection, Output};
use super::progress::{
    FailureReport, ProgressSink, SolveStatus, SourceSnippet, TransferSummary, VertexWarning,
};
use super::proto::control::{
    CacheOptions, CacheOptionsEntry, Exporter, SolveRequest, StatusRequest,
};
use super::proto::google::rpc::Status as GoogleStatus;
use super::proto::pb::Definition;
use super::session::{
    Attachable, ExportTarget, SecretSource, Session, SessionOptions, shared_key_for,
};
use super::stores::{BuildStores, RollbackOnDrop};
use crate::registry::credentials::CredentialsError;
use crate::registry::{CredentialsProvider, DockerConfig, Platform};
use crate::setters::with_setters;

/// After Solve returns, how long the status stream may stay silent before we stop waiting
/// for its end (buildctl's value).
const STATUS_DRAIN: Duration = Duration::from_secs(5);

/// Everything one build needs: a Dockerfile build by default, or the solve of an LLB
/// definition ([`BuildOptions::for_definition`]). Start from a constructor and add what the
/// build needs with the `with_*` methods (or set the fields).
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use pf_buildkit::buildkit::{BuildOptions, Client, Endpoint, Output, TlsOptions};
/// use pf_buildkit::buildkit::progress::PlainProgress;
///
/// let client = Client::connect("docker://".parse::<Endpoint>()?, &TlsOptions::default()).await?;
/// let options = BuildOptions::new("./app")
///     .with_target("release")
///     .with_build_arg("VERSION", "1.2.3")
///     .with_output(Output::tar("app.tar"));
/// let result = client.build(&options, &mut PlainProgress::new(std::io::stderr())).await?;
/// println!("sent {} bytes of context", result.transfer.bytes);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct BuildOptions {
    /// The build context directory, served to the daemon as the `context` local; a relative
    /// path is taken from the working directory.
    pub context: PathBuf,
    /// The Dockerfile; `<context>/Dockerfile` when `None`.
    pub dockerfile: Option<PathBuf>,
    /// The Dockerfile stage to build (`FROM … AS NAME`); the last stage when `None`.
    pub target: Option<String>,
    /// `ARG` values by name, sent as `build-arg:NAME` frontend attributes.
    pub build_args: BTreeMap<String, String>,
    /// Labels set on the image config, by key, sent as `label:KEY` frontend attributes.
    pub labels: BTreeMap<String, String>,
    /// Target platforms; the daemon's own when empty.
    pub platforms: Vec<Platform>,
    /// Ignore the cache for every stage.
    pub no_cache: bool,
    /// Secrets by the id a `RUN --mount=type=secret,id=ID` asks for.
    pub secrets: BTreeMap<String, SecretSource>,
    /// SSH agent sockets by the id a `RUN --mount=type=ssh,id=ID` asks for (`default` when it names
    /// none).
    pub ssh: BTreeMap<String, PathBuf>,
    /// Raw frontend attributes (`--opt`); they override the ones derived above.
    pub frontend_attrs: BTreeMap<String, String>,
    /// Provenance and SBOM attestations of a Dockerfile build (none unless asked); raw
    /// `attest:` entries of `frontend_attrs` win over them.
    pub attestations: super::attest::Attestations,
    /// Named contexts that are local directories: `COPY --from=NAME` / `FROM NAME`.
    pub named_contexts: BTreeMap<String, PathBuf>,
    /// More local directories the session serves by name, with no attribute added (buildctl's
    /// `--local NAME=DIR`; pair with `--opt context:X=local:NAME`). `context` and
    /// `dockerfile` here replace the directories derived from `context` and `dockerfile`.
    pub locals: BTreeMap<String, PathBuf>,
    /// OCI layout directories offered as content stores by name (buildctl's
    /// `--oci-layout NAME=DIR`): name them in a named context as
    /// `oci-layout://NAME@sha256:…` or `oci-layout://NAME:TAG`.
    pub oci_layouts: BTreeMap<String, PathBuf>,
    /// Exporters, in order; none leaves the result only in the daemon's cache.
    pub outputs: Vec<Output>,
    /// Where the build cache is exported to, each one backend (`registry`, `local`, `s3`, …).
    pub cache_exports: Vec<Cache>,
    /// Caches the daemon may reuse layers from, each one backend as in `cache_exports`.
    pub cache_imports: Vec<Cache>,
    /// Serve registry credentials from the Docker configuration (`DOCKER_CONFIG`).
    pub registry_auth: bool,
    /// On a Docker Engine, run the session as `Control.Session` rather than through the
    /// Engine's `/session` upgrade.
    pub session_via_control: bool,
    /// An LLB graph to solve instead of a Dockerfile (see `pf_buildkit::llb`): no frontend
    /// runs, `context`, `dockerfile` and the Dockerfile's attributes are unused, and the
    /// graph's local sources read the directories of `locals` by name.
    pub definition: Option<Definition>,
    /// Local directories by name from any [`Source`] (a [`MemoryTree`], a tree of your own):
    /// served like `locals`, and in place of the `context` or `dockerfile` directory when
    /// named so (see [`BuildOptions::from_memory`]).
    pub sources: BTreeMap<String, Arc<dyn Source>>,
    /// The frontend to run instead of `dockerfile.v0`, e.g. `gateway.v0` with the attribute
    /// `source=IMAGE` (see [`BuildOptions::for_frontend`]): only the raw `frontend_attrs` are
    /// sent, and the Dockerfile's own options (`dockerfile`, `target`, …) are unused.
    pub frontend: Option<String>,
    /// Privileges the build asks for; the daemon must allow them too.
    pub entitlements: Vec<Entitlement>,
    /// Session services of the caller's own, reached by the frontend or the build's steps
    /// (a secret store, an SSH agent, …).
    pub attachables: Vec<Arc<dyn Attachable>>,
    /// Where the daemon's registry credentials come from, in place of the Docker config
    /// (`registry_auth` is then not looked at).
    pub credentials: Option<Arc<dyn CredentialsProvider>>,
    /// How long a write to a client-side store (a local cache, an OCI layout output) waits
    /// for a lock another build or buildctl holds before the build fails naming the lock
    /// file; [`oci_layout::LOCK_WAIT`](super::oci_layout::LOCK_WAIT) when `None`.
    pub store_lock_wait: Option<Duration>,
    /// The build's ref: its id in the daemon's build history (`history logs REF`), known
    /// before the build starts so a caller can name it whatever the outcome; a new one
    /// ([`new_build_ref`]) when `None`. Each build needs a ref of its own.
    pub reference: Option<String>,
}

/// A new build ref: 25 random characters of `0-9a-z`, as buildctl makes them.
pub fn new_build_ref() -> String {
    super::random::random_id()
}

impl BuildOptions {
    /// Options for a context directory, with registry credentials from the Docker config.
    pub fn new(context: impl Into<PathBuf>) -> Self {
        BuildOptions {
            context: context.into(),
            registry_auth: true,
            ..Default::default()
        }
    }

    /// Options that solve an LLB definition (a marshalled `pf_buildkit::llb::State`), with
    /// registry credentials from the Docker config. Add `locals` for its local sources,
    /// `secrets` and `ssh` for its mounts, and outputs and caches as for a Dockerfile.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use pf_buildkit::buildkit::{BuildOptions, Client, Endpoint, Output, TlsOptions};
    /// use pf_buildkit::buildkit::progress::PlainProgress;
    /// use pf_buildkit::llb::{self, MarshalOptions};
    ///
    /// let graph = llb::image("busybox").run_shlex("sh -c 'echo hi > /hi'").root();
    /// let definition = graph.marshal(&MarshalOptions::host())?;
    /// let options = BuildOptions::for_definition(definition.into_pb()).with_output(Output::local("out"));
    /// let client = Client::connect("docker://".parse::<Endpoint>()?, &TlsOptions::default()).await?;
    /// client.build(&options, &mut PlainProgress::new(std::io::stderr())).await?;
    /// # Ok(()) }
    /// ```
    pub fn for_definition(definition: Definition) -> Self {
        BuildOptions {
            definition: Some(definition),
            registry_auth: true,
            ..Default::default()
        }
    }

    /// Options for a context generated in memory: `tree` is served as both the context and
    /// the Dockerfile's directory (it holds the `Dockerfile`), never written to disk. Every
    /// build sends the whole tree (the daemon keeps no copy to compare it with).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use pf_buildkit::buildkit::{BuildOptions, Client, Endpoint, Output, TlsOptions};
    /// use pf_buildkit::buildkit::fsutil::MemoryTree;
    /// use pf_buildkit::buildkit::progress::PlainProgress;
    ///
    /// let tree = MemoryTree::new()
    ///     .file("Dockerfile", "FROM scratch\nCOPY version /\n")
    ///     .file("version", "1.2.3\n");
    /// let options = BuildOptions::from_memory(tree).with_output(Output::local("out"));
    /// let client = Client::connect("docker://".parse::<Endpoint>()?, &TlsOptions::default()).await?;
    /// client.build(&options, &mut PlainProgress::new(std::io::stderr())).await?;
    /// # Ok(()) }
    /// ```
    pub fn from_memory(tree: MemoryTree) -> Self {
        let tree: Arc<dyn Source> = Arc::new(tree);
        BuildOptions {
            sources: BTreeMap::from([
                ("context".to_owned(), tree.clone()),
                ("dockerfile".to_owned(), tree),
            ]),
            registry_auth: true,
            ..Default::default()
        }
    }

    /// Options that run `frontend` with `attrs` (raw frontend attributes), with registry
    /// credentials from the Docker config: e.g. `gateway.v0` with `source=IMAGE` runs a
    /// frontend image. Add `locals` or `sources` for the directories it reads.
    pub fn for_frontend(
        frontend: impl Into<String>,
        attrs: impl IntoIterator<Item = (String, String)>,
    ) -> Self {
        BuildOptions {
            frontend: Some(frontend.into()),
            frontend_attrs: attrs.into_iter().collect(),
            registry_auth: true,
            ..Default::default()
        }
    }

    /// Adds a build argument (`ARG NAME`).
    #[must_use]
    pub fn with_build_arg(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.build_args.insert(name.into(), value.into());
        self
    }

    /// Adds a label of the image config.
    #[must_use]
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Adds a target platform (`"linux/arm64".parse()?`, or [`Platform::new`]).
    #[must_use]
    pub fn with_platform(mut self, platform: Platform) -> Self {
        self.platforms.push(platform);
        self
    }

    /// Adds a secret for `RUN --mount=type=secret,id=ID`.
    #[must_use]
    pub fn with_secret(mut self, id: impl Into<String>, source: SecretSource) -> Self {
        self.secrets.insert(id.into(), source);
        self
    }

    /// Adds an SSH agent socket for `RUN --mount=type=ssh,id=ID`.
    #[must_use]
    pub fn with_ssh(mut self, id: impl Into<String>, socket: impl Into<PathBuf>) -> Self {
        self.ssh.insert(id.into(), socket.into());
        self
    }

    /// Adds a raw frontend attribute (`--opt KEY=VALUE`).
    #[must_use]
    pub fn with_frontend_attr(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.frontend_attrs.insert(key.into(), value.into());
        self
    }

    /// Adds a named context from a local directory.
    #[must_use]
    pub fn with_named_context(mut self, name: impl Into<String>, dir: impl Into<PathBuf>) -> Self {
        self.named_contexts.insert(name.into(), dir.into());
        self
    }

    /// Adds a local directory served by name.
    #[must_use]
    pub fn with_local(mut self, name: impl Into<String>, dir: impl Into<PathBuf>) -> Self {
        self.locals.insert(name.into(), dir.into());
        self
    }

    /// Adds an OCI layout directory offered as a content store by name.
    #[must_use]
    pub fn with_oci_layout(mut self, name: impl Into<String>, dir: impl Into<PathBuf>) -> Self {
        self.oci_layouts.insert(name.into(), dir.into());
        self
    }

    /// Adds an output (exporter).
    #[must_use]
    pub fn with_output(mut self, output: Output) -> Self {
        self.outputs.push(output);
        self
    }

    /// Adds a cache export.
    #[must_use]
    pub fn with_cache_export(mut self, cache: Cache) -> Self {
        self.cache_exports.push(cache);
        self
    }

    /// Adds a cache import.
    #[must_use]
    pub fn with_cache_import(mut self, cache: Cache) -> Self {
        self.cache_imports.push(cache);
        self
    }

    /// Adds a local directory served by name from any [`Source`].
    #[must_use]
    pub fn with_source(mut self, name: impl Into<String>, source: impl Source) -> Self {
        self.sources.insert(name.into(), Arc::new(source));
        self
    }

    /// Adds a privilege the build asks for.
    #[must_use]
    pub fn with_entitlement(mut self, entitlement: Entitlement) -> Self {
        self.entitlements.push(entitlement);
        self
    }

    /// Adds a session service of the caller's own.
    #[must_use]
    pub fn with_attachable(mut self, attachable: impl Attachable) -> Self {
        self.attachables.push(Arc::new(attachable));
        self
    }

    /// Takes the daemon's registry credentials from `provider` instead of the Docker config.
    #[must_use]
    pub fn with_credentials(mut self, provider: impl CredentialsProvider) -> Self {
        self.credentials = Some(Arc::new(provider));
        self
    }

    /// Whether this is a Dockerfile build (neither an LLB definition nor another frontend).
    fn is_dockerfile_build(&self) -> bool {
        self.definition.is_none() && self.frontend.is_none()
    }

    /// The Dockerfile path used.
    pub fn dockerfile_path(&self) -> PathBuf {
        self.dockerfile
            .clone()
            .unwrap_or_else(|| self.context.join("Dockerfile"))
    }

    /// Checks what can be checked before contacting the daemon: the options agree with each
    /// other (one OCI layout output, named layouts offered), directories and files exist,
    /// secrets are readable, SSH agents are given, output destinations can be written.
    ///
    /// # Errors
    /// [`BuildError::Invalid`] naming the first problem.
    pub fn validate(&self) -> Result<(), BuildError> {
        self.check().map_err(BuildError::Invalid)
    }

    fn check(&self) -> Result<(), InvalidOptions> {
        super::stores::check_flags(self)?;
        // A context of another source (a tree in memory) has nothing on disk to check.
        if self.is_dockerfile_build() && !self.sources.contains_key("context") {
            self.check_dockerfile_inputs()?;
        }
        self.check_session_inputs()
    }

    /// The context directory and the Dockerfile, which only a Dockerfile build reads.
    fn check_dockerfile_inputs(&self) -> Result<(), InvalidOptions> {
        if !self.context.is_dir() {
            return Err(InvalidOptions::ContextNotADirectory {
                path: self.context.clone(),
            });
        }
        let dockerfile = self.dockerfile_path();
        match std::fs::metadata(&dockerfile) {
            Err(source) => {
                return Err(InvalidOptions::Dockerfile {
                    path: dockerfile,
                    source,
                });
            }
            Ok(meta) if !meta.is_file() => {
                return Err(InvalidOptions::DockerfileNotAFile { path: dockerfile });
            }
            Ok(_) => {}
        }
        Ok(())
    }

    /// What the session serves and the exporters write, common to every build.
    fn check_session_inputs(&self) -> Result<(), InvalidOptions> {
        for (name, dir) in self.named_contexts.iter().chain(&self.locals) {
            if !dir.is_dir() {
                return Err(InvalidOptions::LocalNotADirectory {
                    name: name.clone(),
                    path: dir.clone(),
                });
            }
        }
        for (id, source) in &self.secrets {
            source.read().map_err(|source| InvalidOptions::Secret {
                id: id.clone(),
                source,
            })?;
        }
        for (id, socket) in &self.ssh {
            if !socket.exists() {
                return Err(InvalidOptions::SshSocketMissing {
                    id: id.clone(),
                    path: socket.clone(),
                });
            }
        }
        for output in &self.outputs {
            let Some(dest) = output.dest() else { continue };
            destination_problem(output, dest).map_err(|problem| {
                InvalidOptions::OutputDestination {
                    path: dest.to_owned(),
                    problem,
                }
            })?;
        }
        Ok(())
    }

    /// The frontend attributes of this build (without the session-specific ones). A
    /// definition solve runs no frontend: only the raw `frontend_attrs` are sent.
    pub fn frontend_attrs(&self) -> BTreeMap<String, String> {
        if !self.is_dockerfile_build() {
            return self.frontend_attrs.clone();
        }
        let mut attrs = BTreeMap::new();
        let dockerfile = self.dockerfile_path();
        let filename = dockerfile
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "Dockerfile".into());
        attrs.insert("filename".into(), filename);
        // The context directory's name, which the build history shows as the build's name
        // (buildx's key for it; the frontend reads nothing of it).
        if let Some(name) = absolute(&self.context).file_name() {
            attrs.insert(
                "vcs:localdir:context".into(),
                name.to_string_lossy().into_owned(),
            );
        }
        if let Some(target) = &self.target {
            attrs.insert("target".into(), target.clone());
        }
        for (k, v) in &self.build_args {
            attrs.insert(format!("build-arg:{k}"), v.clone());
        }
        for (k, v) in &self.labels {
            attrs.insert(format!("label:{k}"), v.clone());
        }
        if !self.platforms.is_empty() {
            let platforms: Vec<String> = self.platforms.iter().map(Platform::to_string).collect();
            attrs.insert("platform".into(), platforms.join(","));
        }
        if self.no_cache {
            // Empty means every stage; a non-empty value would name stages.
            attrs.insert("no-cache".into(), String::new());
        }
        for name in self.named_contexts.keys() {
            attrs.insert(format!("context:{name}"), format!("local:{name}"));
        }
        if !self.cache_imports.is_empty() {
            let imports: Vec<serde_json::Value> = self
                .cache_imports
                .iter()
                .map(|c| {
                    let (kind, attrs) = c.wire(CacheDirection::Import);
                    serde_json::json!({"Type": kind, "Attrs": attrs})
                })
                .collect();
            attrs.insert(
                "cache-imports".into(),
                serde_json::Value::Array(imports).to_string(),
            );
        }
        attrs.extend(self.attestations.frontend_attrs());
        for (k, v) in &self.frontend_attrs {
            attrs.insert(k.clone(), v.clone());
        }
        attrs
    }

    /// The `SolveRequest` for this build, given a build ref and a session id.
    pub fn solve_request(&self, reference: &str, session_id: &str) -> SolveRequest {
        let exporters: Vec<Exporter> = self
            .outputs
            .iter()
            .map(|o| {
                let (kind, attrs) = o.wire();
                Exporter {
                    r#type: kind,
                    attrs: attrs.into_iter().collect(),
                }
            })
            .collect();
        let entries = |caches: &[Cache], direction| -> Vec<CacheOptionsEntry> {
            caches
                .iter()
                .map(|c| {
                    let (kind, attrs) = c.wire(direction);
                    CacheOptionsEntry {
                        r#type: kind,
                        attrs: attrs.into_iter().collect(),
                    }
                })
                .collect()
        };
        SolveRequest {
            r#ref: reference.to_owned(),
            session: session_id.to_owned(),
            frontend: match (&self.definition, &self.frontend) {
                (Some(_), _) => String::new(),
                (None, Some(frontend)) => frontend.clone(),
                (None, None) => "dockerfile.v0".into(),
            },
            entitlements: self
                .entitlements
                .iter()
                .map(|e| e.as_str().to_owned())
                .collect(),
            definition: self.definition.clone(),
            frontend_attrs: self.frontend_attrs().into_iter().collect(),
            // Daemons before v0.13 read only the deprecated single exporter.
            exporter_deprecated: exporters
                .first()
                .map(|e| e.r#type.clone())
                .unwrap_or_default(),
            exporter_attrs_deprecated: exporters
                .first()
                .map(|e| e.attrs.clone())
                .unwrap_or_default(),
            exporters,
            cache: Some(CacheOptions {
                exports: entries(&self.cache_exports, CacheDirection::Export),
                imports: entries(&self.cache_imports, CacheDirection::Import),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn session_options(&self) -> Result<SessionOptions, BuildError> {
        let dockerfile = self.dockerfile_path();
        let dockerfile_dir = match dockerfile.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let mut dirs: BTreeMap<String, Arc<dyn Source>> = BTreeMap::new();
        let on_disk = |dir: &Path| Arc::new(Directory(absolute(dir))) as Arc<dyn Source>;
        if self.is_dockerfile_build() {
            dirs.insert("context".to_owned(), on_disk(&self.context));
            dirs.insert("dockerfile".to_owned(), on_disk(&dockerfile_dir));
        }
        for (name, dir) in self.named_contexts.iter().chain(&self.locals) {
            dirs.insert(name.clone(), on_disk(dir));
        }
        for (name, source) in &self.sources {
            dirs.insert(name.clone(), source.clone());
        }
        // The shared key lets the daemon diff against its last copy of the context. A tree not
        // on disk gets a key of its own each time: its entries' times say nothing about change.
        let shared_key = match dirs.get("context").map(|c| c.path()) {
            Some(None) => super::random::random_id(),
            _ => shared_key_for(&self.context),
        };
        let exports = self
            .outputs
            .iter()
            .map(|o| match o.dest() {
                // The daemon writes a layout through the content store, not FileSend.
                Some(_) if o.is_layout_dir() => ExportTarget::None,
                Some(d) if o.is_directory() => ExportTarget::Directory(absolute(d)),
                Some(d) => ExportTarget::File(absolute(d)),
                None => ExportTarget::None,
            })
            .collect();
        let credentials = match (&self.credentials, self.registry_auth) {
            (Some(provider), _) => Some(provider.clone()),
            (None, true) => Some(Arc::new(DockerConfig::load()?) as Arc<dyn CredentialsProvider>),
            (None, false) => None,
        };
        Ok(SessionOptions {
            content_stores: BTreeMap::new(),
            dirs,
            secrets: self.secrets.clone(),
            ssh: self.ssh.clone(),
            exports,
            credentials,
            shared_key,
            via_control: self.session_via_control,
            attachables: self.attachables.clone(),
        })
    }
}

with_setters!(BuildOptions {
    with_context => context: PathBuf,
    with_no_cache => no_cache: bool,
    with_attestations => attestations: super::attest::Attestations,
    with_registry_auth => registry_auth: bool,
    with_session_via_control => session_via_control: bool,
    with_store_lock_wait => store_lock_wait: Option<Duration>,
} optional {
    with_dockerfile => dockerfile: PathBuf,
    with_target => target: String,
});

/// Whether the exporter of `output` can write at `dest`: a directory output needs a directory
/// or nothing there; a file output needs an existing parent directory and no directory there.
fn destination_problem(output: &Output, dest: &Path) -> Result<(), DestinationProblem> {
    if output.is_directory() || output.is_layout_dir() {
        if dest.exists() && !dest.is_dir() {
            return Err(DestinationProblem::NotADirectory);
        }
        return Ok(());
    }
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    match std::fs::metadata(&parent) {
        Err(source) => Err(DestinationProblem::Parent { parent, source }),
        Ok(meta) if !meta.is_dir() => Err(DestinationProblem::ParentNotADirectory { parent }),
        Ok(_) if dest.is_dir() => Err(DestinationProblem::IsADirectory {
            kind: output.kind().to_owned(),
        }),
        Ok(_) => Ok(()),
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_owned())
}

/// What a finished build produced.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct BuildResult {
    /// The build's ref (its id in the daemon's history).
    pub reference: String,
    /// The exporters' response (`containerimage.digest`, `image.name`, …).
    pub exporter_response: BTreeMap<String, String>,
    /// What this client sent of the build context (the Dockerfile's own transfer excluded).
    pub transfer: TransferSummary,
    /// The daemon's warnings (Dockerfile checks and others), in the order they came.
    pub warnings: Vec<VertexWarning>,
}

/// Why a build did not succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The options are unusable; nothing was sent.
    #[error(transparent)]
    Invalid(#[from] InvalidOptions),
    /// A client-side content store (an OCI layout directory: local cache or layout output)
    /// could not be written. What the build had written there was taken back.
    #[error("cannot write to OCI layout {}", path.display())]
    Store {
        /// The layout's root directory, as set in the options.
        path: PathBuf,
        /// The first write that failed.
        #[source]
        source: LayoutError,
    },
    /// The daemon's answer about a content store it wrote is unusable (the descriptor to
    /// record in `index.json` is missing or malformed). What the build had written there was
    /// taken back.
    #[error("OCI layout {}: {problem}", path.display())]
    StoreAnswer {
        /// The layout's root directory, as set in the options.
        path: PathBuf,
        /// What is wrong with the answer.
        problem: &'static str,
    },
    /// The Solve succeeded but an exported file could not be renamed onto its destination
    /// (it was deleted).
    #[error("cannot put the exported file in place at {}", path.display())]
    PlaceOutput {
        /// The output's destination, as set in the options.
        path: PathBuf,
        /// The rename's I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The Docker configuration could not be read.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// The daemon ran the build and it failed (a step failed, a file was missing, …).
    #[error("build failed: {}", .report.message)]
    Failed {
        /// What failed, with the failing step and Dockerfile lines when known.
        report: FailureReport,
        /// The status the Solve call ended with: the daemon's code and message (not a
        /// `source`: `report` already holds its text).
        status: super::RpcStatus,
    },
    /// The daemon could not be talked to.
    #[error(transparent)]
    Rpc(#[from] super::Error),
}

impl Client {
    /// Runs a build (a Dockerfile's, or an LLB definition's): opens a session serving the
    /// context or locals, secrets and exports,
    /// sends the Solve, and feeds the status stream to `progress`. Dropping the future
    /// cancels the build on the daemon.
    ///
    /// # Errors
    /// [`BuildError::Invalid`] for options that fail [`BuildOptions::validate`];
    /// [`BuildError::Failed`] when the build fails; [`BuildError::Rpc`] when the daemon cannot
    /// be reached.
    #[tracing::instrument(skip_all, fields(endpoint = %self.endpoint(), context = %options.context.display()))]
    pub async fn build(
        &self,
        options: &BuildOptions,
        progress: &mut dyn ProgressSink,
    ) -> Result<BuildResult, BuildError> {
        // Reading secrets, statting destinations, the Docker config and the node id are file
        // work: a slow disk or network file system must not stall the runtime's threads.
        let (options, stores, session_options) = {
            let options = options.clone();
            crate::files::off_runtime(move || prepare(&options)).await?
        };
        let options = &options;
        // From here on, whatever ends the build takes back what it wrote to the stores.
        let stores = Arc::new(stores);
        let _rollback = RollbackOnDrop(stores.clone());
        let session = Session::start(self, session_options);
        let reference = options.reference.clone().unwrap_or_else(new_build_ref);
        let request = options.solve_request(&reference, session.id());
        tracing::debug!(reference, session = session.id(), "solving");

        let mut control = self.control();
        let solve = async move { control.solve(request).await };
        let mut status_control = self.control();
        let status_ref = reference.clone();
        let (status_tx, mut status_rx) = tokio::sync::mpsc::channel(64);
        // The status stream runs beside Solve; it ends on its own after the build.
        let status_task = tokio::spawn(async move {
            let Ok(response) = status_control
                .status(StatusRequest { r#ref: status_ref })
                .await
            else {
                return;
            };
            let mut stream = response.into_inner();
            while let Some(Ok(update)) = stream.next().await {
                if status_tx
                    .send(SolveStatus::from_proto(update))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        // Stops the status task when the build is cancelled (this future dropped).
        let _status_guard = tokio_util::task::AbortOnDropHandle::new(status_task);

        tokio::pin!(solve);
        let mut ticker = tokio::time::interval(Duration::from_millis(150));
        let mut status_open = true;
        let mut warnings = Vec::new();
        let solved = loop {
            tokio::select! {
                result = &mut solve => break result,
                update = status_rx.recv(), if status_open => match update {
                    Some(update) => {
                        warnings.extend(update.warnings.iter().cloned());
                        progress.update(&update);
                    }
                    None => status_open = false,
                },
                _ = ticker.tick() => progress.tick(),
            }
        };
        // Drain the rest of the status stream (the final vertex states) briefly.
        while status_open {
            match tokio::time::timeout(STATUS_DRAIN, status_rx.recv()).await {
                Ok(Some(update)) => {
                    warnings.extend(update.warnings.iter().cloned());
                    progress.update(&update);
                }
                _ => status_open = false,
            }
        }
        let transfer = session
            .stats("context")
            .map(|stats| TransferSummary {
                entries: stats.entries.load(Ordering::Relaxed),
                files: stats.files.load(Ordering::Relaxed),
                bytes: stats.bytes.load(Ordering::Relaxed),
            })
            .unwrap_or_default();
        let session_failure = session.failure();
        // The Solve has returned, so every export stream has ended: the files received are
        // all staged. Out of the session they go, to await the verdict; then it ends.
        let staged = session.take_staged_exports();
        session.close();
        match solved {
            Ok(response) => {
                let exporter_response: BTreeMap<String, String> = response
                    .into_inner()
                    .exporter_response
                    .into_iter()
                    .collect();
                // Only now, with the Solve's verdict in, do results appear at their
                // destinations: index.json entries first, then exported files.
                let finish = {
                    let (stores, response) = (stores.clone(), exporter_response.clone());
                    crate::files::off_runtime(move || stores.finish(&response))
                };
                finish.await?;
                crate::files::off_runtime(move || staged.place())
                    .await
                    .map_err(|(path, source)| BuildError::PlaceOutput { path, source })?;
                progress.finish(&transfer, None);
                Ok(BuildResult {
                    reference,
                    exporter_response,
                    transfer,
                    warnings,
                })
            }
            Err(status) => {
                // Nothing of a failed build stays in the user's layout directories.
                stores.rollback();
                if let Some((path, source)) = stores.take_failure() {
                    // The progress view's last words: the error and its cause as text.
                    let report = FailureReport {
                        message: format!("cannot write to OCI layout {}: {source}", path.display()),
                        ..Default::default()
                    };
                    progress.finish(&transfer, Some(&report));
                    return Err(BuildError::Store { path, source });
                }
                let mut report = failure_report(&status);
                // The session's end, unless the failure already says the same.
                if let Some(reason) = session_failure
                    && !report.message.contains(&reason)
                {
                    report.message = format!("{} (session: {reason})", report.message);
                }
                progress.finish(&transfer, Some(&report));
                if is_transport_failure(&status) {
                    return Err(BuildError::Rpc(super::Error::rpc(
                        self.endpoint(),
                        "Solve",
                        status,
                    )));
                }
                Err(BuildError::Failed {
                    report,
                    status: super::RpcStatus::from(&status),
                })
            }
        }
    }
}

/// The blocking part of starting a build: checks the options, opens the stores and reads
/// what the session serves.
fn prepare(
    options: &BuildOptions,
) -> Result<(BuildOptions, BuildStores, SessionOptions), BuildError> {
    options.validate()?;
    let (options, stores) = BuildStores::prepare(options)?;
    let mut session_options = options.session_options()?;
    session_options.content_stores = stores.by_id.clone();
    Ok((options, stores, session_options))
}

/// A Solve that ended because of the connection (or a peer without Solve), not because the
/// build failed: told by the status's typed source, never by its text.
fn is_transport_failure(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unimplemented
        || !matches!(super::error::classify(status), super::error::Cause::Daemon)
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct SourceDetail {
    info: Option<SourceInfoJson>,
    ranges: Vec<RangeJson>,
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct SourceInfoJson {
    filename: String,
    data: String,
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct RangeJson {
    start: PositionJson,
    end: PositionJson,
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct PositionJson {
    line: i64,
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct VertexDetail {
    digest: String,
}

/// Reads BuildKit's error details: the failing step (`errdefs.Vertex`) and the Dockerfile
/// lines (`errdefs.Source`), whose values are JSON despite the protobuf envelope.
pub fn failure_report(status: &tonic::Status) -> FailureReport {
    let message = super::error::describe_status(status);
    match GoogleStatus::decode(status.details()) {
        Ok(details) => report_from_details(message, &details.details),
        Err(_) => FailureReport {
            message,
            ..Default::default()
        },
    }
}

/// The report of a failure whose `google.rpc.Status` details are `details`: the live Solve's
/// status, or a history record's error blob.
pub(crate) fn report_from_details(message: String, details: &[prost_types::Any]) -> FailureReport {
    let mut report = FailureReport {
        message,
        ..Default::default()
    };
    for any in details {
        if any.type_url.ends_with("errdefs.Source+json") {
            let Ok(source) = serde_json::from_slice::<SourceDetail>(&any.value) else {
                continue;
            };
            // Every range gets its snippet: several files, named contexts.
            if let Some(snippet) = source_snippet(&source) {
                report.sources.push(snippet);
            }
        } else if any.type_url.ends_with("errdefs.Vertex+json")
            && let Ok(v) = serde_json::from_slice::<VertexDetail>(&any.value)
            && !v.digest.is_empty()
        {
            report.vertex = Some(v.digest);
        }
    }
    report
}

fn source_snippet(source: &SourceDetail) -> Option<SourceSnippet> {
    let info = source.info.as_ref()?;
    let data = base64::engine::general_purpose::STANDARD
        .decode(info.data.as_bytes())
        .ok()?;
    let line = |n: i64| u32::try_from(n).unwrap_or(0);
    let ranges: Vec<(u32, u32)> = source
        .ranges
        .iter()
        .map(|r| (line(r.start.line), line(r.end.line)))
        .collect();
    SourceSnippet::new(&info.filename, &String::from_utf8_lossy(&data), &ranges)
}

/// Writes the exporter response as a JSON object to `path` (through a temporary file, so a
/// reader never sees half of it). `containerimage.descriptor` is decoded from base64 into
/// JSON, as buildctl does. Warnings go under `buildx.build.warnings`, as buildx writes them.
///
/// # Errors
/// The I/O error writing the file.
pub fn write_metadata_file(
    path: &Path,
    response: &BTreeMap<String, String>,
    warnings: &[VertexWarning],
) -> std::io::Result<()> {
    let mut out: HashMap<&str, serde_json::Value> = HashMap::new();
    if !warnings.is_empty() {
        out.insert(
            "buildx.build.warnings",
            super::progress::warnings_json(warnings),
        );
    }
    for (k, v) in response {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(v.as_bytes())
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .filter(|j| j.is_object());
        let value = match decoded {
            Some(json) if k.ends_with(".descriptor") || k == "containerimage.descriptor" => json,
            _ => serde_json::Value::String(v.clone()),
        };
        out.insert(k, value);
    }
    let sorted: BTreeMap<_, _> = out.into_iter().collect();
    let text = serde_json::to_vec_pretty(&sorted).map_err(std::io::Error::other)?;
    crate::files::write_atomically(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> BuildOptions {
        let mut o = BuildOptions::new("/ctx");
        o.dockerfile = Some(PathBuf::from("/df/Build.dockerfile"));
        o.target = Some("final".into());
        o.build_args.insert("A".into(), "1".into());
        o.labels.insert("org.x".into(), "y".into());
        o.platforms = vec![
            Platform::new("linux", "amd64"),
            "linux/arm64".parse().unwrap(),
        ];
        o.no_cache = true;
        o.outputs.push("type=tar,dest=/out/a.tar".parse().unwrap());
        o.outputs
            .push("type=image,name=r/x:1,push=true".parse().unwrap());
        o.cache_imports
            .push(Cache::parse("type=registry,ref=r/c", CacheDirection::Import).unwrap());
        o.frontend_attrs
            .insert("force-network-mode".into(), "none".into());
        o
    }

    /// The `io::Error` somewhere under `err`.
    fn io_cause<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
        let mut next = Some(err);
        while let Some(e) = next {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                return Some(io);
            }
            next = e.source();
        }
        None
    }

    /// A context directory with a Dockerfile, and options for it.
    fn valid() -> (tempfile::TempDir, BuildOptions) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        let mut o = BuildOptions::new(dir.path());
        o.registry_auth = false;
        (dir, o)
    }

    #[test]
    fn a_missing_dockerfile_is_named_with_its_io_error() {
        let (dir, mut o) = valid();
        let missing = dir.path().join("nope/Dockerfile");
        o.dockerfile = Some(missing.clone());
        let err = o.validate().unwrap_err();
        let BuildError::Invalid(InvalidOptions::Dockerfile { path, source }) = &err else {
            panic!("{err:?}");
        };
        assert_eq!(path, &missing);
        assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        assert_eq!(
            io_cause(&err).map(std::io::Error::kind),
            Some(std::io::ErrorKind::NotFound)
        );
        assert_eq!(
            err.to_string(),
            format!("cannot read the Dockerfile {}", missing.display())
        );
    }

    #[test]
    fn a_file_output_in_a_missing_directory_keeps_the_io_error() {
        let (dir, mut o) = valid();
        let dest = dir.path().join("no-such-dir/out.tar");
        o.outputs
            .push(format!("type=tar,dest={}", dest.display()).parse().unwrap());
        let err = o.validate().unwrap_err();
        let BuildError::Invalid(InvalidOptions::OutputDestination { path, problem }) = &err else {
            panic!("{err:?}");
        };
        assert_eq!(path, &dest);
        let DestinationProblem::Parent { parent, .. } = problem else {
            panic!("{problem:?}");
        };
        assert_eq!(parent, &dir.path().join("no-such-dir"));
        assert_eq!(
            io_cause(&err).map(std::io::Error::kind),
            Some(std::io::ErrorKind::NotFound)
        );
        assert!(!err.to_string().contains("--"), "{err}");
    }

    #[test]
    fn output_destinations_of_the_wrong_kind_say_which() {
        let (dir, mut o) = valid();
        let file = dir.path().join("Dockerfile");
        o.outputs.push(
            format!("type=local,dest={}", file.display())
                .parse()
                .unwrap(),
        );
        let err = o.validate().unwrap_err();
        assert!(
            matches!(
                &err,
                BuildError::Invalid(InvalidOptions::OutputDestination {
                    problem: DestinationProblem::NotADirectory,
                    ..
                })
            ),
            "{err:?}"
        );
        o.outputs = vec![
            format!("type=tar,dest={}", dir.path().display())
                .parse()
                .unwrap(),
        ];
        let err = o.validate().unwrap_err();
        let BuildError::Invalid(InvalidOptions::OutputDestination {
            problem: DestinationProblem::IsADirectory { kind },
            ..
        }) = &err
        else {
            panic!("{err:?}");
        };
        assert_eq!(kind, "tar");
    }

    #[test]
    fn a_cache_destination_that_is_a_file_is_a_typed_store_error() {
        let (dir, mut o) = valid();
        let file = dir.path().join("Dockerfile");
        o.cache_exports.push(
            Cache::parse(
                &format!("type=local,dest={}", file.display()),
                CacheDirection::Export,
            )
            .unwrap(),
        );
        o.validate().unwrap();
        let err = BuildStores::prepare(&o).unwrap_err();
        let InvalidOptions::Store { role, path, source } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(role, &crate::buildkit::StoreRole::CacheExport);
        assert_eq!(path, &file);
        assert!(
            matches!(source, LayoutError::NotADirectory { .. }),
            "{source:?}"
        );
        assert_eq!(err.to_string(), "cannot use the cache export destination");
        assert_eq!(
            source.to_string(),
            format!("{} is not a directory", file.display())
        );
        assert_eq!(std::fs::read(&file).unwrap(), b"FROM scratch\n");
    }

    #[test]
    fn an_unreadable_secret_keeps_its_io_error_and_never_its_value() {
        let (dir, mut o) = valid();
        let missing = dir.path().join("token");
        o.secrets
            .insert("tok".into(), SecretSource::File(missing.clone()));
        let err = o.validate().unwrap_err();
        let BuildError::Invalid(InvalidOptions::Secret { id, source }) = &err else {
            panic!("{err:?}");
        };
        assert_eq!(id, "tok");
        assert!(
            matches!(source, super::super::session::SecretError::Unreadable { path, .. } if path == &missing),
            "{source:?}"
        );
        assert_eq!(
            io_cause(&err).map(std::io::Error::kind),
            Some(std::io::ErrorKind::NotFound)
        );
    }

    #[test]
    fn request_carries_attrs_exporters_and_caches() {
        let req = options().solve_request("ref1", "sess1");
        assert_eq!(req.frontend, "dockerfile.v0");
        assert_eq!(req.session, "sess1");
        let a = &req.frontend_attrs;
        assert_eq!(a["filename"], "Build.dockerfile");
        assert_eq!(a["vcs:localdir:context"], "ctx");
        assert_eq!(a["target"], "final");
        assert_eq!(a["build-arg:A"], "1");
        assert_eq!(a["label:org.x"], "y");
        assert_eq!(a["platform"], "linux/amd64,linux/arm64");
        assert_eq!(a["no-cache"], "");
        assert_eq!(a["force-network-mode"], "none");
        assert_eq!(
            a["cache-imports"],
            r#"[{"Attrs":{"ref":"r/c"},"Type":"registry"}]"#
        );
        assert_eq!(req.exporters.len(), 2);
        assert_eq!(req.exporters[0].r#type, "tar");
        assert!(
            req.exporters[0].attrs.is_empty(),
            "dest stays on the client"
        );
        assert_eq!(req.exporter_deprecated, "tar");
        assert_eq!(req.exporters[1].attrs["push"], "true");
        assert_eq!(req.cache.unwrap().imports[0].attrs["ref"], "r/c");
    }

    #[test]
    fn a_definition_solve_sends_the_graph_and_no_frontend() {
        let definition = Definition {
            def: vec![bytes::Bytes::from_static(b"\x0a\x00")],
            ..Default::default()
        };
        let mut o = BuildOptions::for_definition(definition.clone());
        o.registry_auth = false;
        o.locals.insert("context".into(), PathBuf::from("/ctx"));
        o.validate().unwrap_err(); // /ctx does not exist: locals are still checked
        let req = o.solve_request("ref1", "sess1");
        assert_eq!(req.frontend, "");
        assert_eq!(req.definition, Some(definition));
        assert!(req.frontend_attrs.is_empty());
        let s = o.session_options().unwrap();
        assert_eq!(s.dirs.keys().collect::<Vec<_>>(), ["context"]);
    }

    #[test]
    fn session_serves_context_and_dockerfile_dirs() {
        let mut o = options();
        o.registry_auth = false;
        let s = o.session_options().unwrap();
        assert_eq!(s.dirs["context"].path(), Some(Path::new("/ctx")));
        assert_eq!(s.dirs["dockerfile"].path(), Some(Path::new("/df")));
        assert_eq!(s.exports[0], ExportTarget::File("/out/a.tar".into()));
        assert_eq!(s.exports[1], ExportTarget::None);
    }

    #[test]
    fn source_details_give_the_failing_line() {
        let source = serde_json::json!({
            "info": {"filename": "Dockerfile", "data": base64::engine::general_purpose::STANDARD.encode("FROM x\nRUN false\n")},
            "ranges": [{"start": {"line": 2}, "end": {"line": 2}}]
        });
        let status = GoogleStatus {
            code: 2,
            message: "failed".into(),
            details: vec![prost_types::Any {
                type_url: "github.com/moby/buildkit/errdefs.Source+json".into(),
                value: serde_json::to_vec(&source).unwrap(),
            }],
        };
        let status = tonic::Status::with_details(
            tonic::Code::Unknown,
            "process did not complete successfully",
            status.encode_to_vec().into(),
        );
        let report = failure_report(&status);
        assert_eq!(report.sources.len(), 1);
        assert_eq!(report.sources[0].filename, "Dockerfile");
        assert_eq!(report.sources[0].line, 2);
        assert!(
            report.sources[0]
                .lines
                .contains(&(2, true, "RUN false".into()))
        );
        assert!(
            report.sources[0]
                .lines
                .contains(&(1, false, "FROM x".into()))
        );
    }

    #[test]
    fn every_source_range_gets_a_snippet() {
        let source = |file: &str, text: &str, line: i64| {
            prost_types::Any {
            type_url: "github.com/moby/buildkit/errdefs.Source+json".into(),
            value: serde_json::to_vec(&serde_json::json!({
                "info": {"filename": file, "data": base64::engine::general_purpose::STANDARD.encode(text)},
                "ranges": [{"start": {"line": line}, "end": {"line": line}}]
            }))
            .unwrap(),
        }
        };
        let status = GoogleStatus {
            code: 2,
            message: "failed".into(),
            details: vec![
                source("Dockerfile", "FROM x\nCOPY --from=assets a /\n", 2),
                source("assets/Dockerfile", "FROM y\n", 1),
            ],
        };
        let status = tonic::Status::with_details(
            tonic::Code::Unknown,
            "failed",
            status.encode_to_vec().into(),
        );
        let report = failure_report(&status);
        let names: Vec<(&str, u32)> = report
            .sources
            .iter()
            .map(|s| (s.filename.as_str(), s.line))
            .collect();
        assert_eq!(names, vec![("Dockerfile", 2), ("assets/Dockerfile", 1)]);
    }
}
