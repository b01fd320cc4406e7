//! The client side of a BuildKit session: a gRPC server, run over the session's byte stream,
//! that the daemon calls back for the build context (FileSync), exported results (FileSend),
//! registry credentials (Auth), secrets and SSH agents, and health checks.
//!
//! Border: it may use `fsutil`, `oci_layout` and [`crate::registry`] (credentials for Auth); it
//! must not import `fleet`, `multiplatform` or `config`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;

use super::Client;
use super::random::random_bytes;
// `pub(crate)`: the LLB marshaller names its local sources with session-style ids too.
pub(crate) use super::random::random_id;
use crate::registry::CredentialsProvider;

mod attachable;
mod auth;
mod content;
mod filesend;
mod filesync;
mod health;
mod secrets;
mod ssh;
mod tasks;
mod tunnel;

pub(crate) use filesend::StagedExports;
use tasks::Tasks;

pub use super::fsutil::TransferStats;
pub use attachable::Attachable;
pub use content::STORE_ID_HEADER;

/// The gRPC methods every session serves, announced to the daemon: health, the local
/// directories (FileSync), exports (FileSend) and registry credentials (Auth, which buildctl
/// also always offers).
const METHODS: &[&str] = &[
    "/grpc.health.v1.Health/Check",
    "/moby.filesync.v1.FileSync/DiffCopy",
    "/moby.filesync.v1.FileSend/DiffCopy",
    "/moby.filesync.v1.Auth/Credentials",
    "/moby.filesync.v1.Auth/FetchToken",
    "/moby.filesync.v1.Auth/GetTokenAuthority",
    "/moby.filesync.v1.Auth/VerifyTokenAuthority",
];

/// The Secrets service's methods, announced only when the build has secrets (`--secret`).
const SECRETS_METHODS: &[&str] = &["/moby.buildkit.secrets.v1.Secrets/GetSecret"];

/// The SSH service's methods, announced only when the build forwards agents (`--ssh`).
const SSH_METHODS: &[&str] = &[
    "/moby.sshforward.v1.SSH/CheckAgent",
    "/moby.sshforward.v1.SSH/ForwardAgent",
];

/// The methods a session with `options` announces: like buildctl, the Secrets and SSH
/// services only when the user configured them, so a daemon cannot even probe for them; and
/// the caller's attachables' methods, in place of the built-in ones of the services they claim.
fn announced_methods(options: &SessionOptions) -> Vec<String> {
    let mut methods = METHODS.to_vec();
    if !options.secrets.is_empty() {
        methods.extend_from_slice(SECRETS_METHODS);
    }
    if !options.ssh.is_empty() {
        methods.extend_from_slice(SSH_METHODS);
    }
    if !options.content_stores.is_empty() {
        methods.extend_from_slice(content::METHODS);
    }
    let claimed = claimed_services(&options.attachables);
    let mut methods: Vec<String> = methods
        .into_iter()
        .filter(|m| !claimed.contains(attachable::service_of(m)))
        .map(str::to_owned)
        .collect();
    for attachable in &options.attachables {
        methods.extend(attachable.methods());
    }
    methods
}

/// The services the caller's attachables serve, by name.
fn claimed_services(attachables: &[Arc<dyn Attachable>]) -> BTreeSet<String> {
    attachables
        .iter()
        .flat_map(|a| a.methods())
        .map(|m| attachable::service_of(&m).to_owned())
        .collect()
}

/// Where a secret's value comes from. Values are read when the daemon asks, never logged.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SecretSource {
    /// The whole contents of the file at this path, read when the daemon asks (at most
    /// [`MAX_SECRET_SIZE`]).
    File(PathBuf),
    /// The value of the environment variable of this name in the client's process, as raw bytes.
    Env(String),
}

/// buildkit's own limit on one secret's size.
pub const MAX_SECRET_SIZE: u64 = 500 << 10;

impl SecretSource {
    /// Reads the value from the file or the client's environment.
    ///
    /// # Errors
    /// [`SecretError`] naming the file or variable (never the value) when it cannot be read,
    /// is missing, or is larger than [`MAX_SECRET_SIZE`].
    pub fn read(&self) -> Result<Vec<u8>, SecretError> {
        match self {
            SecretSource::File(path) => {
                let unreadable = |source| SecretError::Unreadable {
                    path: path.clone(),
                    source,
                };
                let file = std::fs::File::open(path).map_err(unreadable)?;
                let mut data = Vec::new();
                file.take(MAX_SECRET_SIZE + 1)
                    .read_to_end(&mut data)
                    .map_err(unreadable)?;
                if data.len() as u64 > MAX_SECRET_SIZE {
                    return Err(SecretError::TooLarge {
                        path: path.clone(),
                        limit_kib: MAX_SECRET_SIZE >> 10,
                    });
                }
                Ok(data)
            }
            SecretSource::Env(var) => std::env::var_os(var)
                .map(|v| v.into_encoded_bytes())
                .ok_or_else(|| SecretError::EnvUnset { var: var.clone() }),
        }
    }
}

/// Why a secret's value cannot be read; names the file or variable, never the value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// The file cannot be opened or read.
    #[error("cannot read secret file {}", path.display())]
    Unreadable {
        /// The secret's file.
        path: PathBuf,
        /// The I/O error from opening or reading the file.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than BuildKit accepts for one secret.
    #[error("secret file {} is larger than {limit_kib} KiB", path.display())]
    TooLarge {
        /// The secret's file.
        path: PathBuf,
        /// The limit, in KiB.
        limit_kib: u64,
    },
    /// The environment variable is not set.
    #[error("environment variable {var} is not set")]
    EnvUnset {
        /// The variable's name.
        var: String,
    },
}

/// Where the client writes what one exporter sends back over the session.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExportTarget {
    /// The exporter sends nothing to the client (`image`, `moby`).
    None,
    /// A directory tree (the `local` exporter).
    Directory(PathBuf),
    /// One file (`tar`, `oci`, `docker`): written beside its final name, renamed into place
    /// only once the Solve succeeded.
    File(PathBuf),
}

/// What a session offers the daemon.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct SessionOptions {
    /// Local directories by the name the frontend asks for (`context`, `dockerfile`, named
    /// contexts): on disk, in memory, or of the caller's own.
    pub dirs: BTreeMap<String, Arc<dyn super::fsutil::Source>>,
    /// Secrets by the id a `RUN --mount=type=secret,id=ID` asks for.
    pub secrets: BTreeMap<String, SecretSource>,
    /// SSH agent sockets by id (`default` is the usual id).
    pub ssh: BTreeMap<String, PathBuf>,
    /// One entry per exporter of the solve, in the same order.
    pub exports: Vec<ExportTarget>,
    /// Content stores (OCI layout directories) by the store id the daemon names them with:
    /// `local:<dir>` for local caches, `export` for an OCI layout output, `oci:<name>` for
    /// `--oci-layout` inputs. The content service is offered only when there is one.
    pub content_stores: BTreeMap<String, Arc<crate::buildkit::oci_layout::LayoutStore>>,
    /// Serve registry credentials from this provider (the Docker configuration, or the
    /// caller's own); none means anonymous access.
    pub credentials: Option<Arc<dyn CredentialsProvider>>,
    /// The shared key: equal keys let the daemon reuse the last transfer of a directory, so
    /// an unchanged context sends no file data. See [`shared_key_for`].
    pub shared_key: String,
    /// On a Docker Engine, use `Control.Session` over the `/grpc` connection instead of the
    /// Engine's `/session` upgrade (both work; buildx uses the latter).
    pub via_control: bool,
    /// Services of the caller's own, served beside (or instead of) the built-in ones.
    pub attachables: Vec<Arc<dyn Attachable>>,
}

/// A running session. Dropping it (or [`Session::close`]) ends it: every task it started
/// is aborted and exported files not yet put in place are deleted.
pub struct Session {
    id: String,
    stats: BTreeMap<String, Arc<TransferStats>>,
    failure: Arc<Mutex<Option<String>>>,
    task: JoinHandle<()>,
    tasks: Tasks,
    staged: Arc<StagedExports>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("id", &self.id).finish()
    }
}

impl Session {
    /// Starts a session with the daemon behind `client`. Returns at once: the stream is
    /// opened in the background, so that a Solve naming [`Session::id`] can be sent at the
    /// same time (the daemon waits only 5 s for the session).
    pub fn start(client: &Client, options: SessionOptions) -> Session {
        let id = random_id();
        // One set of counters per directory, so the context's transfer is told apart from
        // the Dockerfile's (which the daemon always fetches whole).
        let stats: BTreeMap<String, Arc<TransferStats>> = options
            .dirs
            .keys()
            .map(|name| (name.clone(), Arc::new(TransferStats::default())))
            .collect();
        let failure = Arc::new(Mutex::new(None));
        let methods = announced_methods(&options);
        let methods: Vec<&str> = methods.iter().map(String::as_str).collect();
        let headers = tunnel::session_headers(&id, &options.shared_key, &methods);
        let via_control = options.via_control;
        let tasks = Tasks::default();
        let staged = Arc::new(StagedExports::default());
        let routes = routes(options, stats.clone(), &tasks, &staged);
        let client = client.clone();
        let failure_slot = failure.clone();
        let session_tasks = tasks.clone();
        let task = tokio::spawn(async move {
            let tasks = session_tasks;
            let (result, end) = match tunnel::open(&client, &headers, via_control, &tasks).await {
                Ok((io, end)) => (tunnel::serve(io, routes, tasks).await, Some(end)),
                Err(err) => (Err(err), None),
            };
            if let Err(err) = result {
                tracing::debug!(error = %err, "session ended with an error");
                // Says which side closed the session and how, when the error's types tell:
                // the status the tunnel's outer stream ended with first (it saw the daemon
                // go), then the session server's own error.
                use crate::buildkit::error::{Cause, classify, classify_error};
                let ended =
                    end.and_then(|end| end.take())
                        .and_then(|status| match classify(&status) {
                            Cause::Daemon => Some(status.message().to_owned()),
                            Cause::Protocol(_) => None,
                            cause => Some(cause.to_string()),
                        });
                let reason = ended.unwrap_or_else(|| match classify_error(&err) {
                    Cause::Protocol(_) => err.to_string(),
                    cause => cause.to_string(),
                });
                if let Ok(mut slot) = failure_slot.lock() {
                    *slot = Some(reason);
                }
            }
        });
        Session {
            id,
            stats,
            failure,
            task,
            tasks,
            staged,
        }
    }

    /// The session id to put in `SolveRequest.Session`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Counters of what was sent of one local directory (by its name, e.g. `context`).
    pub fn stats(&self, dir: &str) -> Option<&Arc<TransferStats>> {
        self.stats.get(dir)
    }

    /// Why the session stream failed, if it did.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|f| f.clone())
    }

    /// The exported files received in full so far, taken out of the session to await the
    /// Solve's verdict (dropped, they are deleted).
    pub(crate) fn take_staged_exports(&self) -> StagedExports {
        self.staged.take()
    }

    /// Ends the session: the stream closes and the daemon drops it.
    pub fn close(self) {
        drop(self);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
        self.tasks.end();
        self.staged.discard();
    }
}

fn routes(
    options: SessionOptions,
    stats: BTreeMap<String, Arc<TransferStats>>,
    tasks: &Tasks,
    staged: &Arc<StagedExports>,
) -> tonic::service::Routes {
    let SessionOptions {
        dirs,
        secrets,
        ssh,
        exports,
        content_stores,
        credentials,
        shared_key: _,
        via_control: _,
        attachables,
    } = options;
    let claimed = claimed_services(&attachables);
    let mut routes = tonic::service::Routes::builder();
    // Adds a built-in service unless an attachable of the caller's serves it instead (the
    // router allows one service per name).
    macro_rules! offer {
        ($service:expr) => {{
            let service = $service;
            if !claimed.contains(service_name(&service)) {
                routes.add_service(service);
            }
        }};
    }
    offer!(health::service());
    offer!(filesync::service(dirs, stats, tasks.clone()));
    offer!(filesend::service(exports, tasks.clone(), staged.clone()));
    offer!(auth::service(credentials));
    // Not routed unless configured: a call to either then finds no service (Unimplemented),
    // matching what the session announced.
    if !secrets.is_empty() {
        offer!(secrets::service(secrets));
    }
    if !ssh.is_empty() {
        offer!(ssh::service(ssh, tasks.clone()));
    }
    if !content_stores.is_empty() {
        offer!(content::service(content_stores, tasks.clone()));
    }
    for attachable in &attachables {
        attachable.register(&mut routes);
    }
    routes.routes()
}

/// The gRPC name of a generated service, e.g. `moby.filesync.v1.Auth`.
fn service_name<S: tonic::server::NamedService>(_: &S) -> &'static str {
    S::NAME
}

/// The shared key for a context directory: a hash of this machine's node id (a random value
/// kept in the user's cache directory) and the directory's absolute path. Stable across
/// builds, so the daemon diffs against its last copy and transfers only changed files.
pub fn shared_key_for(dir: &Path) -> String {
    shared_key_with_node(dir, &node_id())
}

fn shared_key_with_node(dir: &Path, node: &str) -> String {
    let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
    let mut hasher = Sha256::new();
    hasher.update(node.as_bytes());
    hasher.update([0]);
    hasher.update(absolute.as_os_str().as_encoded_bytes());
    let digest = hasher.finalize();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// This machine's node id, created on first use in `$XDG_CACHE_HOME/pf-buildkit/node-id` (or
/// `~/.cache/pf-buildkit/node-id`). Without a writable cache directory a per-user constant is
/// used, which still keeps keys stable.
fn node_id() -> String {
    let Some(dir) = cache_dir() else {
        return "no-cache-dir".to_owned();
    };
    let path = dir.join("node-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim();
        if !id.is_empty() {
            return id.to_owned();
        }
    }
    let id: String = random_bytes::<16>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    // Write then rename, so a concurrent build never reads a half-written id.
    let tmp = dir.join(format!("node-id.{}", std::process::id()));
    let written = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&tmp, &id))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    // Another process may have won the race: use whatever is on disk.
    std::fs::read_to_string(&path)
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or(id)
}

fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("pf-buildkit"));
    }
    std::env::var_os("HOME")
        .filter(|d| !d.is_empty())
        .map(|home| PathBuf::from(home).join(".cache").join("pf-buildkit"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_and_ssh_are_announced_only_when_configured() {
        let mut options = SessionOptions::default();
        let plain = announced_methods(&options);
        assert!(
            plain
                .iter()
                .any(|m| m == "/moby.filesync.v1.Auth/Credentials")
        );
        assert!(
            !plain
                .iter()
                .any(|m| m.contains("Secrets") || m.contains("SSH"))
        );

        options
            .secrets
            .insert("token".into(), SecretSource::Env("TOKEN".into()));
        let with_secrets = announced_methods(&options);
        assert!(
            with_secrets
                .iter()
                .any(|m| m == "/moby.buildkit.secrets.v1.Secrets/GetSecret")
        );
        assert!(!with_secrets.iter().any(|m| m.contains("SSH")));

        options
            .ssh
            .insert("default".into(), PathBuf::from("/run/agent.sock"));
        let with_both = announced_methods(&options);
        assert!(
            with_both
                .iter()
                .any(|m| m == "/moby.sshforward.v1.SSH/ForwardAgent")
        );
    }

    #[test]
    fn shared_key_is_stable_per_directory() {
        let a = shared_key_with_node(Path::new("/tmp/a"), "n1");
        assert_eq!(a, shared_key_with_node(Path::new("/tmp/a"), "n1"));
        assert_ne!(a, shared_key_with_node(Path::new("/tmp/b"), "n1"));
        assert_ne!(a, shared_key_with_node(Path::new("/tmp/a"), "n2"));
    }
}
