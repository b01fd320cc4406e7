//! File ops: directories, files, removals and copies, chained into one op ([`State::file`]).

use std::time::SystemTime;

use super::file_actions::{Chown, Mkdir, Mkfile, Rm, unix_nanos};
use super::node::{Copy, FileAction, FileSpec, Node, OpKind, OpOptions, Output, State};

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
        self.with_output(Some(Output {
            node: std::sync::Arc::new(node),
            index: 0,
        }))
    }
}
