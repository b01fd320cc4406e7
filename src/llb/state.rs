//! [`State`]: a filesystem in the graph (an op's output, or scratch) and the settings later
//! steps inherit; the graph's vertices and their options; merge and diff.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::exec::ExecSpec;
use super::file::FileSpec;
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
                    if let super::file::FileAction::Copy(c) = action {
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

/// The empty filesystem.
pub fn scratch() -> State {
    State::default()
}

impl State {
    pub(crate) fn from_node(node: Node, platform: Option<Platform>) -> State {
        State {
            output: Some(Output {
                node: Arc::new(node),
                index: 0,
            }),
            platform,
            ..State::default()
        }
    }

    /// This state's settings with another filesystem.
    pub(crate) fn with_output(&self, output: Option<Output>) -> State {
        State {
            output,
            ..self.clone()
        }
    }

    /// Whether this is the empty filesystem.
    pub fn is_scratch(&self) -> bool {
        self.output.is_none()
    }

    /// The working directory for later steps; a relative path is taken from the current one.
    pub fn dir(&self, dir: impl AsRef<str>) -> State {
        State {
            dir: join_path(&self.dir, dir.as_ref()),
            ..self.clone()
        }
    }

    /// Sets (or replaces) an environment variable for later steps.
    pub fn env(&self, key: impl Into<String>, value: impl Into<String>) -> State {
        let mut next = self.clone();
        set_env(&mut next.env, key.into(), value.into());
        next
    }

    /// The user later steps run as (`name`, `uid`, `uid:gid`).
    pub fn user(&self, user: impl Into<String>) -> State {
        State {
            user: user.into(),
            ..self.clone()
        }
    }

    /// The platform later run steps are for (the Marshal platform when unset).
    pub fn platform(&self, platform: Platform) -> State {
        State {
            platform: Some(platform),
            ..self.clone()
        }
    }

    /// The working directory later steps start in.
    pub fn get_dir(&self) -> &str {
        &self.dir
    }
}

/// Sets `key` in an ordered environment, replacing an earlier value in place.
pub(crate) fn set_env(env: &mut Vec<(String, String)>, key: String, value: String) {
    match env.iter_mut().find(|(k, _)| *k == key) {
        Some(entry) => entry.1 = value,
        None => env.push((key, value)),
    }
}

/// `path` made absolute against `base`, cleaned (Go's `path.Join("/", base, path)`).
pub(crate) fn join_path(base: &str, path: &str) -> String {
    if path.starts_with('/') {
        clean_path(path)
    } else {
        clean_path(&format!("/{base}/{path}"))
    }
}

/// Go's `path.Clean`: no empty or `.` elements, `..` resolved, no trailing slash.
pub(crate) fn clean_path(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_owned(),
        (false, false) => joined,
    }
}

/// Stacks states, later ones on top (Go's `llb.Merge`). Scratch inputs are left out; one
/// remaining input is returned as it is.
///
/// ```
/// use pf_buildkit::llb;
/// let a = llb::scratch().file(llb::mkfile("/a", 0o644, "a"));
/// let b = llb::scratch().file(llb::mkfile("/b", 0o644, "b"));
/// let both = llb::merge([&a, &b]);
/// # let _ = both;
/// ```
pub fn merge<'a>(inputs: impl IntoIterator<Item = &'a State>) -> State {
    merge_with(inputs, OpOptions::default())
}

/// [`merge`] with op options (a custom name).
pub fn merge_with<'a>(inputs: impl IntoIterator<Item = &'a State>, options: OpOptions) -> State {
    let inputs: Vec<&State> = inputs.into_iter().filter(|s| !s.is_scratch()).collect();
    match inputs.as_slice() {
        [] => scratch(),
        [only] => (*only).clone(),
        _ => {
            let outputs = inputs.iter().filter_map(|s| s.output.clone()).collect();
            State::from_node(
                Node {
                    kind: OpKind::Merge(outputs),
                    options,
                },
                None,
            )
        }
    }
}

/// The changes that turn `lower` into `upper` (Go's `llb.Diff`): a diff from scratch is
/// `upper` itself. The result keeps `lower`'s settings.
///
/// ```
/// use pf_buildkit::llb;
/// let base = llb::image("alpine");
/// let installed = base.run_shlex("apk add git").root();
/// let just_git = llb::diff(&base, &installed);
/// # let _ = just_git;
/// ```
pub fn diff(lower: &State, upper: &State) -> State {
    diff_with(lower, upper, OpOptions::default())
}

/// [`diff`] with op options (a custom name).
pub fn diff_with(lower: &State, upper: &State, options: OpOptions) -> State {
    if lower.is_scratch() {
        return upper.clone();
    }
    let node = Node {
        kind: OpKind::Diff {
            lower: lower.output.clone(),
            upper: upper.output.clone(),
        },
        options,
    };
    lower.with_output(Some(Output {
        node: Arc::new(node),
        index: 0,
    }))
}

with_setters!(OpOptions {
    with_ignore_cache => ignore_cache: bool,
} optional {
    with_custom_name => custom_name: String,
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_clean_like_go() {
        assert_eq!(clean_path("/a/./b/../c/"), "/a/c");
        assert_eq!(clean_path("/.."), "/");
        assert_eq!(join_path("/src", "x/y"), "/src/x/y");
        assert_eq!(join_path("/src", "/abs"), "/abs");
        assert_eq!(join_path("/", ""), "/");
    }

    #[test]
    fn env_replaces_in_place() {
        let st = scratch().env("A", "1").env("B", "2").env("A", "3");
        assert_eq!(
            st.env,
            vec![("A".into(), "3".into()), ("B".into(), "2".into())]
        );
    }
}
