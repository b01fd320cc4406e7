//! Exec ops: a process run in a container assembled from mounts ([`State::run`]).

use std::sync::Arc;

use super::LlbError;
use super::exec_options::{Mount, MountKind, NetMode, Secret, SecurityMode, Ssh};
use super::node::{ExecSpec, MountSpec, Node, OpKind, OpOptions, Output, State};
use super::state::{join_path, set_env};

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
