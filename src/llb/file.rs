//! File ops: directories, files, removals and copies, chained into one op ([`State::file`]).

use std::time::SystemTime;

use super::state::{Node, OpKind, OpOptions, State};

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
fn unix_nanos(time: SystemTime) -> i64 {
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

/// Copies from another state ([`copy`]).
#[derive(Debug, Clone)]
pub struct Copy {
    pub(crate) source: State,
    pub(crate) src: String,
    pub(crate) dest: String,
    pub(crate) owner: Option<Chown>,
    pub(crate) mode: Option<u32>,
    pub(crate) follow_symlinks: bool,
    pub(crate) contents_only: bool,
    pub(crate) attempt_unpack: bool,
    pub(crate) create_dest_path: bool,
    pub(crate) allow_wildcard: bool,
    pub(crate) allow_empty_wildcard: bool,
    pub(crate) created: Option<i64>,
    pub(crate) include: Vec<String>,
    pub(crate) exclude: Vec<String>,
    pub(crate) always_replace: bool,
}

/// Copies `src` of `source` to `dest` of the state the op runs on. A relative `src` is taken
/// from `source`'s working directory, a relative `dest` from the target's.
///
/// ```
/// use pf_buildkit::llb;
/// let bin = llb::image("busybox");
/// let st = llb::scratch().file(
///     llb::copy(&bin, "/bin/busybox", "/usr/bin/")
///         .create_dest_path(true)
///         .mode(0o755)
///         .owner(llb::Chown::ids(0, 0)),
/// );
/// # let _ = st;
/// ```
pub fn copy(source: &State, src: impl Into<String>, dest: impl Into<String>) -> Copy {
    Copy {
        source: source.clone(),
        src: src.into(),
        dest: dest.into(),
        owner: None,
        mode: None,
        follow_symlinks: false,
        contents_only: false,
        attempt_unpack: false,
        create_dest_path: false,
        allow_wildcard: false,
        allow_empty_wildcard: false,
        created: None,
        include: Vec::new(),
        exclude: Vec::new(),
        always_replace: false,
    }
}

impl Copy {
    /// Creates missing directories of `dest`.
    pub fn create_dest_path(mut self, create: bool) -> Self {
        self.create_dest_path = create;
        self
    }

    /// Copies only paths matching one of these patterns.
    pub fn include<S: Into<String>>(mut self, patterns: impl IntoIterator<Item = S>) -> Self {
        self.include.extend(patterns.into_iter().map(Into::into));
        self
    }

    /// Leaves out paths matching one of these patterns.
    pub fn exclude<S: Into<String>>(mut self, patterns: impl IntoIterator<Item = S>) -> Self {
        self.exclude.extend(patterns.into_iter().map(Into::into));
        self
    }

    /// The owner of the copies.
    pub fn owner(mut self, owner: Chown) -> Self {
        self.owner = Some(owner);
        self
    }

    /// The permission bits of the copies (the sources' when unset).
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = Some(mode);
        self
    }

    /// Follows a symlink at `src`.
    pub fn follow_symlinks(mut self, follow: bool) -> Self {
        self.follow_symlinks = follow;
        self
    }

    /// Copies a directory's contents rather than the directory.
    pub fn contents_only(mut self, only: bool) -> Self {
        self.contents_only = only;
        self
    }

    /// Unpacks an archive at `src` (Dockerfile `ADD` behaviour).
    pub fn attempt_unpack(mut self, unpack: bool) -> Self {
        self.attempt_unpack = unpack;
        self
    }

    /// Treats `src` as a glob.
    pub fn allow_wildcard(mut self, allow: bool) -> Self {
        self.allow_wildcard = allow;
        self
    }

    /// Succeeds when the glob matches nothing.
    pub fn allow_empty_wildcard(mut self, allow: bool) -> Self {
        self.allow_empty_wildcard = allow;
        self
    }

    /// Replaces a destination of another type instead of failing.
    pub fn always_replace_existing(mut self, replace: bool) -> Self {
        self.always_replace = replace;
        self
    }

    /// The copies' modification time.
    pub fn created(mut self, time: SystemTime) -> Self {
        self.created = Some(unix_nanos(time));
        self
    }
}

/// One action of a file op.
#[derive(Debug, Clone)]
pub(crate) enum FileAction {
    Mkdir(Mkdir),
    Mkfile(Mkfile),
    Rm(Rm),
    Copy(Box<Copy>),
}

/// File actions applied in order, each on the result of the one before; one file op.
///
/// ```
/// use pf_buildkit::llb;
/// let st = llb::scratch().file(
///     llb::mkdir("/a", 0o755)
///         .then(llb::mkfile("/a/b", 0o600, "b"))
///         .then(llb::rm("/a/b").allow_not_found(true)),
/// );
/// # let _ = st;
/// ```
#[derive(Debug, Clone)]
pub struct FileActions {
    pub(crate) actions: Vec<FileAction>,
}

impl FileActions {
    /// Appends an action that works on the result of the previous ones.
    pub fn then(mut self, next: impl Into<FileActions>) -> FileActions {
        self.actions.extend(next.into().actions);
        self
    }
}

macro_rules! file_action {
    ($($kind:ident => $wrap:expr),* $(,)?) => {$(
        impl From<$kind> for FileActions {
            fn from(action: $kind) -> FileActions {
                FileActions { actions: vec![$wrap(action)] }
            }
        }
        impl $kind {
            /// Chains another action after this one, on its result.
            pub fn then(self, next: impl Into<FileActions>) -> FileActions {
                FileActions::from(self).then(next)
            }
        }
    )*};
}

file_action! {
    Mkdir => FileAction::Mkdir,
    Mkfile => FileAction::Mkfile,
    Rm => FileAction::Rm,
    Copy => |c| FileAction::Copy(Box::new(c)),
}

/// A file op as it will be marshalled: the actions, and the state they apply to.
#[derive(Debug)]
pub(crate) struct FileSpec {
    pub base: State,
    pub actions: Vec<FileAction>,
}

impl State {
    /// Applies file actions to this state, as one op; the result keeps this state's settings.
    pub fn file(&self, actions: impl Into<FileActions>) -> State {
        self.file_with(actions, OpOptions::default())
    }

    /// [`State::file`] with op options (a custom name).
    pub fn file_with(&self, actions: impl Into<FileActions>, options: OpOptions) -> State {
        let node = Node {
            kind: OpKind::File(FileSpec {
                base: self.clone(),
                actions: actions.into().actions,
            }),
            options,
        };
        self.with_output(Some(super::state::Output {
            node: std::sync::Arc::new(node),
            index: 0,
        }))
    }
}
