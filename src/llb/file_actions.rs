//! The file actions that read no other state: directories, files and removals, and the
//! owners they set. Plain values; [`State::file`](super::State::file) puts them into the graph.

use std::time::SystemTime;

/// A user or group: by number, or by name (looked up in the target's `/etc/passwd` or
/// `/etc/group`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserSpec {
    /// A numeric id.
    Id(u32),
    /// A name.
    Name(String),
}

impl UserSpec {
    fn parse(s: &str) -> UserSpec {
        if s == "root" {
            return UserSpec::Id(0);
        }
        match s.parse::<i32>() {
            Ok(id) => UserSpec::Id(id as u32),
            Err(_) => UserSpec::Name(s.to_owned()),
        }
    }
}

/// The owner of created files.
///
/// ```
/// use pf_buildkit::llb::Chown;
/// let by_name = Chown::parse("app:staff");
/// let by_id = Chown::ids(1000, 1000);
/// # let _ = (by_name, by_id);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Chown {
    /// The owning user.
    pub user: Option<UserSpec>,
    /// The owning group.
    pub group: Option<UserSpec>,
}

impl Chown {
    /// `user[:group]`, each a name or a number (Go's `llb.WithUser`).
    pub fn parse(spec: &str) -> Chown {
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        Chown {
            user: Some(UserSpec::parse(user)),
            group: group.map(UserSpec::parse),
        }
    }

    /// Numeric user and group.
    pub fn ids(uid: u32, gid: u32) -> Chown {
        Chown {
            user: Some(UserSpec::Id(uid)),
            group: Some(UserSpec::Id(gid)),
        }
    }
}

/// Nanoseconds since the epoch, as BuildKit stores creation times; -1 means unset.
pub(crate) fn unix_nanos(time: SystemTime) -> i64 {
    match time.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

/// Creates a directory ([`mkdir`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mkdir {
    pub(crate) path: String,
    pub(crate) mode: u32,
    pub(crate) parents: bool,
    pub(crate) owner: Option<Chown>,
    pub(crate) created: Option<i64>,
}

/// Creates the directory `path` with permission bits `mode`; a relative path is taken from
/// the state's working directory.
///
/// ```
/// use pf_buildkit::llb;
/// let st = llb::scratch().file(llb::mkdir("/opt/app/bin", 0o755).parents(true));
/// # let _ = st;
/// ```
pub fn mkdir(path: impl Into<String>, mode: u32) -> Mkdir {
    Mkdir {
        path: path.into(),
        mode,
        parents: false,
        owner: None,
        created: None,
    }
}

impl Mkdir {
    /// Creates missing parent directories too.
    pub fn parents(self, parents: bool) -> Self {
        Mkdir { parents, ..self }
    }

    /// The directory's owner.
    pub fn owner(self, owner: Chown) -> Self {
        Mkdir {
            owner: Some(owner),
            ..self
        }
    }

    /// The directory's modification time.
    pub fn created(self, time: SystemTime) -> Self {
        Mkdir {
            created: Some(unix_nanos(time)),
            ..self
        }
    }
}

/// Writes a file ([`mkfile`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mkfile {
    pub(crate) path: String,
    pub(crate) mode: u32,
    pub(crate) data: Vec<u8>,
    pub(crate) owner: Option<Chown>,
    pub(crate) created: Option<i64>,
}

/// Writes `data` to the file `path` with permission bits `mode`.
///
/// ```
/// use pf_buildkit::llb;
/// let st = llb::scratch().file(llb::mkfile("/hello.txt", 0o644, "hello\n"));
/// # let _ = st;
/// ```
pub fn mkfile(path: impl Into<String>, mode: u32, data: impl Into<Vec<u8>>) -> Mkfile {
    Mkfile {
        path: path.into(),
        mode,
        data: data.into(),
        owner: None,
        created: None,
    }
}

impl Mkfile {
    /// The file's owner.
    pub fn owner(self, owner: Chown) -> Self {
        Mkfile {
            owner: Some(owner),
            ..self
        }
    }

    /// The file's modification time.
    pub fn created(self, time: SystemTime) -> Self {
        Mkfile {
            created: Some(unix_nanos(time)),
            ..self
        }
    }
}

/// Removes a path ([`rm`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rm {
    pub(crate) path: String,
    pub(crate) allow_not_found: bool,
    pub(crate) allow_wildcard: bool,
}

/// Removes `path`.
///
/// ```
/// use pf_buildkit::llb;
/// let st = llb::image("busybox").file(llb::rm("/tmp/*").allow_wildcard(true).allow_not_found(true));
/// # let _ = st;
/// ```
pub fn rm(path: impl Into<String>) -> Rm {
    Rm {
        path: path.into(),
        allow_not_found: false,
        allow_wildcard: false,
    }
}

impl Rm {
    /// Succeeds when nothing is there.
    pub fn allow_not_found(self, allow: bool) -> Self {
        Rm {
            allow_not_found: allow,
            ..self
        }
    }

    /// Treats `path` as a glob.
    pub fn allow_wildcard(self, allow: bool) -> Self {
        Rm {
            allow_wildcard: allow,
            ..self
        }
    }
}
