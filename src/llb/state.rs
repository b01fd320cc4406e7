//! [`State`]'s methods: the settings later steps inherit; merge and diff.

use std::sync::Arc;

use super::Platform;
use super::node::{Node, OpKind, OpOptions, Output, State};

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
