//! What one build asks for: [`BuildOptions`] and the checks it passes before anything is
//! opened or sent, and how it becomes a `SolveRequest`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::build_error::BuildError;
use super::entitlement::Entitlement;
use super::fsutil::{Directory, MemoryTree, Source};
use super::invalid::{DestinationProblem, InvalidOptions};
use super::output::{Cache, CacheDirection, Output};
use super::proto::control::{CacheOptions, CacheOptionsEntry, Exporter, SolveRequest};
use super::proto::pb::Definition;
use super::session::{Attachable, ExportTarget, SecretSource, SessionOptions, shared_key_for};
use crate::registry::{CredentialsProvider, DockerConfig, Platform};
use crate::setters::with_setters;

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
        check_flags(self)?;
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

    pub(super) fn session_options(&self) -> Result<SessionOptions, BuildError> {
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

/// The store options' checks that need no file: at most one layout output, layout names
/// that are reference names, and an offered layout for every `oci-layout://NAME` context.
/// [`BuildOptions::validate`] runs them too, so such options fail before anything is opened
/// or sent.
pub(crate) fn check_flags(options: &BuildOptions) -> Result<(), InvalidOptions> {
    if options.outputs.iter().filter(|o| o.is_layout_dir()).count() > 1 {
        return Err(InvalidOptions::TwoLayoutOutputs);
    }
    if let Some(name) = options.oci_layouts.keys().find(|name| {
        name.is_empty() || name.contains([':', '@', ',']) || **name != name.to_ascii_lowercase()
    }) {
        return Err(InvalidOptions::OciLayoutName { name: name.clone() });
    }
    for (key, value) in &options.frontend_attrs {
        let Some(reference) = value.strip_prefix(OCI_LAYOUT_SCHEME) else {
            continue;
        };
        let (name, _, _) = split_reference(reference);
        if !options.oci_layouts.contains_key(name) {
            return Err(InvalidOptions::UnknownOciLayout {
                key: key.clone(),
                value: value.clone(),
                name: name.to_owned(),
            });
        }
    }
    Ok(())
}

pub(super) fn split_reference(reference: &str) -> (&str, Option<&str>, Option<&str>) {
    let (rest, digest) = match reference.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (reference, None),
    };
    let slash = rest.rfind('/').map_or(0, |i| i + 1);
    match rest[slash..].find(':') {
        Some(i) => (&rest[..slash + i], Some(&rest[slash + i + 1..]), digest),
        None => (rest, None, digest),
    }
}

/// The prefix of a named context served from an OCI layout offered by name.
pub(super) const OCI_LAYOUT_SCHEME: &str = "oci-layout://";
