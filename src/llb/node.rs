//! The graph's data: where a [`State`] is in the graph ([`Output`]), the vertices ([`Node`])
//! and what each op holds ([`OpKind`]). These types refer to each other in a loop (a state
//! points at a vertex, an exec or file op holds the states it reads), so they live in one
//! file; the files that build ops (`exec`, `file`, `source`, `state`) and the one that encodes
//! them (`marshal`) use it, and it uses only the plain values of `exec_options` and
//! `file_actions`.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::exec_options::{Mount, MountKind, NetMode, Secret, SecurityMode, Ssh};
use super::file_actions::{Chown, Mkdir, Mkfile, Rm};
use super::{LlbError, Platform};
use crate::setters::with_setters;

/// Options every op takes: a name for the progress output and cache control. None of them
/// changes the op's digest; they go into the Definition's metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OpOptions {
    /// Shown in progress output instead of the generated name (Go's `llb.WithCustomName`).
    pub custom_name: Option<String>,
    /// Always run this op, never take it from the cache (Go's `llb.IgnoreCache`).
    pub ignore_cache: bool,
}

impl OpOptions {
    /// Options with a custom name.
    pub fn named(name: impl Into<String>) -> Self {
        OpOptions {
            custom_name: Some(name.into()),
            ..Default::default()
        }
    }
}

/// What one vertex does.
#[derive(Debug)]
pub(crate) enum OpKind {
    Source(SourceSpec),
    Exec(ExecSpec),
    File(FileSpec),
    Merge(Vec<Output>),
    Diff {
        lower: Option<Output>,
        upper: Option<Output>,
    },
}

/// A source op: its identifier and attributes, and the caps they need.
#[derive(Debug)]
pub(crate) struct SourceSpec {
    pub identifier: String,
    pub attrs: BTreeMap<String, String>,
    pub caps: Vec<&'static str>,
    /// The platform the source was asked for (images), else the Marshal platform.
    pub platform: Option<Platform>,
    /// A parse failure of the reference, reported when the graph is marshalled.
    pub error: Option<LlbError>,
}

/// A vertex of the graph. Shared by every state that refers to it; compared by identity.
#[derive(Debug)]
pub(crate) struct Node {
    pub kind: OpKind,
    pub options: OpOptions,
}

impl Node {
    /// Moves the outputs this vertex holds (its inputs) out of it.
    fn take_inputs(&mut self, into: &mut Vec<Arc<Node>>) {
        let mut take = |o: &mut Option<Output>| {
            if let Some(o) = o.take() {
                into.push(o.node);
            }
        };
        match &mut self.kind {
            OpKind::Source(_) => {}
            OpKind::Exec(spec) => {
                for m in &mut spec.mounts {
                    take(&mut m.source.output);
                }
            }
            OpKind::File(spec) => {
                take(&mut spec.base.output);
                for action in &mut spec.actions {
                    if let FileAction::Copy(c) = action {
                        take(&mut c.source.output);
                    }
                }
            }
            OpKind::Merge(inputs) => into.extend(inputs.drain(..).map(|o| o.node)),
            OpKind::Diff { lower, upper } => {
                take(lower);
                take(upper);
            }
        }
    }
}

impl Drop for Node {
    /// Drops the vertices only this one holds one after the other instead of recursively,
    /// so that a graph thousands of steps deep does not overflow the stack when it goes.
    fn drop(&mut self) {
        let mut pending = Vec::new();
        self.take_inputs(&mut pending);
        while let Some(node) = pending.pop() {
            if let Ok(mut node) = Arc::try_unwrap(node) {
                node.take_inputs(&mut pending);
            }
        }
    }
}

/// One output of a vertex.
#[derive(Debug, Clone)]
pub(crate) struct Output {
    pub node: Arc<Node>,
    pub index: i64,
}

impl Output {
    /// Whether two outputs are the same output of the same vertex.
    pub fn same(&self, other: &Output) -> bool {
        Arc::ptr_eq(&self.node, &other.node) && self.index == other.index
    }
}

/// A filesystem in the build graph (an op's output, or empty) and the settings that steps
/// built on it inherit: working directory, environment, user, platform.
///
/// States are cheap to clone and immutable: every method returns a new state.
///
/// ```
/// use pf_buildkit::llb;
/// let st = llb::image("alpine").dir("/src").env("CGO_ENABLED", "0");
/// let out = st.run(["go", "build", "./..."]).root();
/// # let _ = out;
/// ```
#[derive(Debug, Clone)]
pub struct State {
    pub(crate) output: Option<Output>,
    pub(crate) dir: String,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) user: String,
    pub(crate) platform: Option<Platform>,
}

impl Default for State {
    fn default() -> Self {
        State {
            output: None,
            dir: "/".to_owned(),
            env: Vec::new(),
            user: String::new(),
            platform: None,
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
    pub(crate) fn output_index(&self, dest: &str) -> Option<i64> {
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

/// One action of a file op.
#[derive(Debug, Clone)]
pub(crate) enum FileAction {
    Mkdir(Mkdir),
    Mkfile(Mkfile),
    Rm(Rm),
    Copy(Box<Copy>),
}

/// A file op as it will be marshalled: the actions, and the state they apply to.
#[derive(Debug)]
pub(crate) struct FileSpec {
    pub base: State,
    pub actions: Vec<FileAction>,
}

// Here with the graph's types because it holds the State it copies from; its methods are in
// file.rs, with the other file actions' builders.
/// Copies from another state ([`copy`](super::copy)).
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

with_setters!(OpOptions {
    with_ignore_cache => ignore_cache: bool,
} optional {
    with_custom_name => custom_name: String,
});
