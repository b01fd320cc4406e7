//! What a run step is given: its network and security modes, its mounts, secrets and SSH
//! agents. Plain values; [`Run`](super::Run) puts them into the graph.

/// The container's network (BuildKit's `NetMode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
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
#[non_exhaustive]
pub enum SecurityMode {
    /// The default sandbox.
    #[default]
    Sandbox,
    /// Privileged (needs the `security.insecure` entitlement).
    Insecure,
}

/// How concurrent builds share a cache mount.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
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
    pub(crate) kind: MountKind,
    pub(crate) readonly: bool,
    pub(crate) selector: String,
    pub(crate) no_output: bool,
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
    pub(crate) fn has_output(&self) -> bool {
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
