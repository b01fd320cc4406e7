//! Exec ops: a process run in a container assembled from mounts ([`State::run`]).

use std::sync::Arc;

use super::state::{Node, OpKind, OpOptions, Output, State, join_path, set_env};
use super::{LlbError, Platform};

/// The container's network (BuildKit's `NetMode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NetMode {
    /// The daemon's default network.
    #[default]
    Sandbox,
    /// The host's network (needs the `network.host` entitlement).
    Host,
    /// No network.
    None,
}

/// The container's privileges (BuildKit's `SecurityMode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SecurityMode {
    /// The default sandbox.
    #[default]
    Sandbox,
    /// Privileged (needs the `security.insecure` entitlement).
    Insecure,
}

/// How concurrent builds share a cache mount.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CacheSharing {
    /// Any number of writers at once.
    #[default]
    Shared,
    /// A second writer gets a fresh directory.
    Private,
    /// A second writer waits.
    Locked,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MountKind {
    Bind,
    Cache { id: String, sharing: CacheSharing },
    Tmpfs { size: i64 },
}

/// How a state is mounted into a run step.
///
/// ```
/// use pf_buildkit::llb::{self, CacheSharing, Mount};
/// let src = llb::local("context");
/// let run = llb::image("golang")
///     .run_shlex("go build ./...")
///     .mount("/src", &src, Mount::readonly().selector("/app"))
///     .mount("/root/.cache/go-build", &llb::scratch(), Mount::cache("gobuild", CacheSharing::Shared))
///     .mount("/tmp", &llb::scratch(), Mount::tmpfs().size(64 << 20));
/// # let _ = run;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    kind: MountKind,
    readonly: bool,
    selector: String,
    no_output: bool,
}

impl Mount {
    /// A writable bind mount whose changes are a result of the step.
    pub fn bind() -> Self {
        Mount {
            kind: MountKind::Bind,
            readonly: false,
            selector: String::new(),
            no_output: false,
        }
    }

    /// A read-only bind mount.
    pub fn readonly() -> Self {
        Mount {
            readonly: true,
            ..Mount::bind()
        }
    }

    /// A persistent cache directory, shared by `id` between builds on the daemon.
    pub fn cache(id: impl Into<String>, sharing: CacheSharing) -> Self {
        Mount {
            kind: MountKind::Cache {
                id: id.into(),
                sharing,
            },
            ..Mount::bind()
        }
    }

    /// A memory-backed directory (mount it on scratch).
    pub fn tmpfs() -> Self {
        Mount {
            kind: MountKind::Tmpfs { size: 0 },
            ..Mount::bind()
        }
    }

    /// Mounts only this path of the source.
    pub fn selector(self, path: impl Into<String>) -> Self {
        Mount {
            selector: path.into(),
            ..self
        }
    }

    /// A tmpfs mount's size limit in bytes.
    pub fn size(self, bytes: i64) -> Self {
        match self.kind {
            MountKind::Tmpfs { .. } => Mount {
                kind: MountKind::Tmpfs { size: bytes },
                ..self
            },
            _ => self,
        }
    }

    /// A writable mount whose changes are thrown away.
    pub fn no_output(self) -> Self {
        Mount {
            no_output: true,
            ..self
        }
    }

    /// Whether the step's changes to this mount are one of its results.
    fn has_output(&self) -> bool {
        !self.no_output && !self.readonly && self.kind == MountKind::Bind
    }
}

/// A secret from the session, mounted as a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secret {
    pub(crate) id: String,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) mode: u32,
    pub(crate) optional: bool,
}

impl Secret {
    /// The secret the session serves as `id`, mode 0400, owned by root.
    pub fn new(id: impl Into<String>) -> Self {
        Secret {
            id: id.into(),
            uid: 0,
            gid: 0,
            mode: 0o400,
            optional: false,
        }
    }

    /// The file's owner.
    pub fn owner(self, uid: u32, gid: u32) -> Self {
        Secret { uid, gid, ..self }
    }

    /// The file's permission bits.
    pub fn mode(self, mode: u32) -> Self {
        Secret { mode, ..self }
    }

    /// Runs the step without the file when the session has no such secret.
    pub fn optional(self) -> Self {
        Secret {
            optional: true,
            ..self
        }
    }
}

/// An SSH agent socket from the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ssh {
    pub(crate) id: String,
    pub(crate) target: Option<String>,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) mode: u32,
    pub(crate) optional: bool,
}

impl Default for Ssh {
    fn default() -> Self {
        Ssh {
            id: String::new(),
            target: None,
            uid: 0,
            gid: 0,
            mode: 0o600,
            optional: false,
        }
    }
}

impl Ssh {
    /// The agent the session serves as `id` (empty means `default`).
    pub fn new(id: impl Into<String>) -> Self {
        Ssh {
            id: id.into(),
            ..Ssh::default()
        }
    }

    /// Where the socket appears (`/run/buildkit/ssh_agent.N` by default).
    pub fn target(self, path: impl Into<String>) -> Self {
        Ssh {
            target: Some(path.into()),
            ..self
        }
    }

    /// The socket's owner.
    pub fn owner(self, uid: u32, gid: u32) -> Self {
        Ssh { uid, gid, ..self }
    }

    /// The socket's permission bits.
    pub fn mode(self, mode: u32) -> Self {
        Ssh { mode, ..self }
    }

    /// Runs the step without the socket when the session has no such agent.
    pub fn optional(self) -> Self {
        Ssh {
            optional: true,
            ..self
        }
    }
}

/// One mount of an exec op, with the state it mounts.
#[derive(Debug, Clone)]
pub(crate) struct MountSpec {
    pub dest: String,
    pub source: State,
    pub mount: Mount,
}

impl MountSpec {
    pub fn readonly(&self) -> bool {
        self.mount.readonly
    }
    pub fn selector(&self) -> &str {
        &self.mount.selector
    }
    pub fn kind(&self) -> &MountKind {
        &self.mount.kind
    }
    pub fn no_output(&self) -> bool {
        self.mount.no_output
    }
}

/// An exec op as it will be marshalled.
#[derive(Debug)]
pub(crate) struct ExecSpec {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: String,
    pub user: String,
    pub hostname: String,
    pub network: NetMode,
    pub security: SecurityMode,
    /// Sorted by destination, the root mount first.
    pub mounts: Vec<MountSpec>,
    pub secrets: Vec<(String, Secret)>,
    pub ssh: Vec<Ssh>,
    pub platform: Option<Platform>,
    /// A problem found while building, reported when the graph is marshalled.
    pub error: Option<LlbError>,
}

impl ExecSpec {
    /// The output index of the mount at `dest`: outputs are numbered over the mounts that
    /// produce one, in destination order (the root is 0).
    fn output_index(&self, dest: &str) -> Option<i64> {
        let mut index = 0;
        for m in &self.mounts {
            if !m.mount.has_output() {
                continue;
            }
            if m.dest == dest {
                return Some(index);
            }
            index += 1;
        }
        None
    }
}

/// A run step being described; [`Run::build`] (or [`Run::root`]) adds it to the graph.
///
/// ```
/// use pf_buildkit::llb::{self, NetMode, SecurityMode};
/// let out = llb::image("busybox")
///     .run(["sh", "-c", "id > /out"])
///     .env("A", "1")
///     .dir("/tmp")
///     .user("nobody")
///     .network(NetMode::None)
///     .security(SecurityMode::Sandbox)
///     .root();
/// # let _ = out;
/// ```
#[derive(Debug, Clone)]
#[must_use = "a run step does nothing until .build() or .root() puts it in the graph"]
pub struct Run {
    base: State,
    args: Vec<String>,
    env: Vec<(String, String)>,
    dir: String,
    user: String,
    hostname: String,
    network: NetMode,
    security: SecurityMode,
    root: Mount,
    mounts: Vec<MountSpec>,
    secrets: Vec<(String, Secret)>,
    ssh: Vec<Ssh>,
    options: OpOptions,
    error: Option<LlbError>,
}

impl State {
    /// A run step with this state as its root filesystem, working directory, environment and
    /// user.
    pub fn run<S: Into<String>>(&self, args: impl IntoIterator<Item = S>) -> Run {
        Run {
            base: self.clone(),
            args: args.into_iter().map(Into::into).collect(),
            env: self.env.clone(),
            dir: self.dir.clone(),
            user: self.user.clone(),
            hostname: String::new(),
            network: NetMode::Sandbox,
            security: SecurityMode::Sandbox,
            root: Mount::bind(),
            mounts: Vec::new(),
            secrets: Vec::new(),
            ssh: Vec::new(),
            options: OpOptions::default(),
            error: None,
        }
    }

    /// [`State::run`] with a command line split as a POSIX shell splits words (Go's
    /// `llb.Shlex`): `sh -c "echo hi"` is `["sh", "-c", "echo hi"]`. An unterminated quote is
    /// reported when the graph is marshalled.
    pub fn run_shlex(&self, command: &str) -> Run {
        match super::shlex::split(command) {
            Ok(args) => self.run(args),
            Err(problem) => {
                let mut run = self.run(Vec::<String>::new());
                run.error = Some(LlbError::CommandLine {
                    command: command.to_owned(),
                    problem,
                });
                run
            }
        }
    }
}

impl Run {
    /// Sets (or replaces) an environment variable of the process.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        set_env(&mut self.env, key.into(), value.into());
        self
    }

    /// The working directory; a relative path is taken from the state's.
    pub fn dir(mut self, dir: impl AsRef<str>) -> Self {
        self.dir = join_path(&self.dir, dir.as_ref());
        self
    }

    /// The user the process runs as.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = user.into();
        self
    }

    /// The container's host name.
    pub fn hostname(mut self, hostname: impl Into<String>) -> Self {
        self.hostname = hostname.into();
        self
    }

    /// The container's network.
    pub fn network(mut self, mode: NetMode) -> Self {
        self.network = mode;
        self
    }

    /// The container's privileges.
    pub fn security(mut self, mode: SecurityMode) -> Self {
        self.security = mode;
        self
    }

    /// Mounts the root filesystem read-only (the step then has no root result).
    pub fn readonly_root(mut self) -> Self {
        self.root = Mount::readonly();
        self
    }

    /// Mounts `source` at `dest`.
    pub fn mount(mut self, dest: impl Into<String>, source: &State, mount: Mount) -> Self {
        self.mounts.push(MountSpec {
            dest: dest.into(),
            source: source.clone(),
            mount,
        });
        self
    }

    /// Mounts the session's secret `id` as a file at `dest` (mode 0400).
    pub fn secret(self, dest: impl Into<String>, id: impl Into<String>) -> Self {
        self.secret_with(dest, Secret::new(id))
    }

    /// Mounts a session secret as a file at `dest`, with owner, mode and optionality.
    pub fn secret_with(mut self, dest: impl Into<String>, secret: Secret) -> Self {
        self.secrets.push((dest.into(), secret));
        self
    }

    /// Forwards the session's `default` SSH agent; sets `SSH_AUTH_SOCK` unless it is set.
    pub fn ssh(self) -> Self {
        self.ssh_with(Ssh::new("default"))
    }

    /// Forwards a session SSH agent.
    pub fn ssh_with(mut self, ssh: Ssh) -> Self {
        self.ssh.push(ssh);
        self
    }

    /// A name for the progress output.
    pub fn custom_name(mut self, name: impl Into<String>) -> Self {
        self.options.custom_name = Some(name.into());
        self
    }

    /// Runs the step even when its result is cached.
    pub fn ignore_cache(mut self) -> Self {
        self.options.ignore_cache = true;
        self
    }

    /// Puts the step into the graph.
    pub fn build(self) -> ExecState {
        let Run {
            base,
            args,
            mut env,
            dir,
            user,
            hostname,
            network,
            security,
            root,
            mut mounts,
            secrets,
            mut ssh,
            options,
            error,
        } = self;
        mounts.insert(
            0,
            MountSpec {
                dest: "/".into(),
                source: base.clone(),
                mount: root,
            },
        );
        // Go sorts by destination; a later mount at the same path stays after an earlier one.
        mounts.sort_by(|a, b| a.dest.cmp(&b.dest));
        for (i, s) in ssh.iter_mut().enumerate() {
            if s.target.is_none() {
                s.target = Some(format!("/run/buildkit/ssh_agent.{i}"));
            }
        }
        if let Some(first) = ssh.first().and_then(|s| s.target.clone())
            && !env.iter().any(|(k, _)| k == "SSH_AUTH_SOCK")
        {
            env.push(("SSH_AUTH_SOCK".into(), first));
        }
        let error = error.or_else(|| {
            mounts.iter().find_map(|m| {
                let problem = match m.mount.kind {
                    MountKind::Tmpfs { .. } if !m.source.is_scratch() => {
                        "a tmpfs mount must be on scratch"
                    }
                    _ => return None,
                };
                Some(LlbError::Mount {
                    dest: m.dest.clone(),
                    problem,
                })
            })
        });
        let spec = ExecSpec {
            args,
            env,
            cwd: dir,
            user,
            hostname,
            network,
            security,
            mounts,
            secrets,
            ssh,
            platform: base.platform.clone(),
            error,
        };
        ExecState {
            base,
            node: Arc::new(Node {
                kind: OpKind::Exec(spec),
                options,
            }),
        }
    }

    /// Puts the step into the graph and returns its root filesystem.
    pub fn root(self) -> State {
        self.build().root()
    }
}

/// A run step in the graph: its root filesystem and its mounts, as states.
#[derive(Debug, Clone)]
pub struct ExecState {
    base: State,
    node: Arc<Node>,
}

impl ExecState {
    fn spec(&self) -> &ExecSpec {
        match &self.node.kind {
            OpKind::Exec(spec) => spec,
            _ => unreachable!("an ExecState always holds an exec node"),
        }
    }

    /// The root filesystem after the step, with the base state's settings. With a read-only
    /// root it is the base state itself.
    pub fn root(&self) -> State {
        self.mount_state("/").unwrap_or_else(|_| self.base.clone())
    }

    /// The filesystem at mount `dest` after the step, with the mounted state's settings.
    ///
    /// # Errors
    /// [`LlbError::Mount`] when there is no mount at `dest`, or it has no result (a cache,
    /// tmpfs or no-output mount).
    pub fn mount_state(&self, dest: &str) -> Result<State, LlbError> {
        let spec = self.spec();
        let Some(m) = spec.mounts.iter().find(|m| m.dest == dest) else {
            return Err(LlbError::Mount {
                dest: dest.to_owned(),
                problem: "the step has no mount there",
            });
        };
        if m.mount.readonly {
            return Ok(m.source.clone());
        }
        match spec.output_index(dest) {
            Some(index) => Ok(m.source.with_output(Some(Output {
                node: self.node.clone(),
                index,
            }))),
            None => Err(LlbError::Mount {
                dest: dest.to_owned(),
                problem: "a cache, tmpfs or no-output mount has no result to build on",
            }),
        }
    }
}
