//! Which paths of a directory are sent: include and exclude patterns (`.dockerignore` rules)
//! and `followpaths`, with the same directory pruning shortcuts as fsutil's filter.

use std::collections::HashSet;
use std::io;
use std::path::Path;

use super::pattern::{self, PatternError, PatternMatcher, go_match};

/// Characters that make a pattern more than a plain path prefix (fsutil's `patternChars`).
const PATTERN_CHARS: &[char] = &['*', '[', ']', '?', '^', '\\'];

/// What to send from a directory: the filter the daemon asks for in the DiffCopy metadata.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    includes: Vec<String>,
    excludes: Option<PatternMatcher>,
    follow_paths: Vec<String>,
}

impl Filter {
    /// Builds a filter from the daemon's `include-patterns`, `exclude-patterns` and
    /// `followpaths`, with moby/patternmatcher (`.dockerignore`) semantics.
    ///
    /// Follow paths are resolved against the directory when the walk starts (symlinks on
    /// those paths are followed inside the root; each link and its final target become
    /// include patterns; missing paths are ignored).
    ///
    /// # Errors
    ///
    /// [`PatternError`] for a malformed pattern (an unclosed `[`, a trailing `\`, a lone `!`).
    pub fn new(
        includes: Vec<String>,
        excludes: Vec<String>,
        follow_paths: Vec<String>,
    ) -> Result<Filter, PatternError> {
        // Compile the includes once now so that bad patterns are reported before any walk.
        PatternMatcher::new(&includes)?;
        let excludes = if excludes.is_empty() {
            None
        } else {
            Some(PatternMatcher::new(&excludes)?)
        };
        Ok(Filter {
            includes,
            excludes,
            follow_paths,
        })
    }

    /// No filtering: every entry is sent.
    pub fn all() -> Filter {
        Filter::default()
    }

    /// Resolves the follow paths under `root` and compiles the final include set.
    pub(crate) fn resolve(&self, root: &Path) -> Result<ResolvedFilter, ResolveError> {
        let mut includes = self.includes.clone();
        if !self.follow_paths.is_empty()
            && let Some(targets) = follow_links(root, &self.follow_paths)?
        {
            includes.extend(targets);
            includes = dedupe_paths(&includes).unwrap_or_default();
        }
        self.compile(includes)
    }

    /// The filter for a tree with no links to follow (a tree in memory sends its links as
    /// they are): the includes as given.
    pub(crate) fn resolve_without_links(&self) -> Result<ResolvedFilter, ResolveError> {
        self.compile(self.includes.clone())
    }

    fn compile(&self, includes: Vec<String>) -> Result<ResolvedFilter, ResolveError> {
        let include = if includes.is_empty() {
            None
        } else {
            Some(PatternMatcher::new(&includes).map_err(ResolveError::Pattern)?)
        };
        let only_prefix_includes = include.as_ref().is_none_or(|m| {
            m.patterns
                .iter()
                .all(|p| p.exclusion || !p.without_trailing_glob().contains(PATTERN_CHARS))
        });
        let only_prefix_exclude_exceptions = self.excludes.as_ref().is_none_or(|m| {
            m.patterns
                .iter()
                .all(|p| !p.exclusion || !p.without_trailing_glob().contains(PATTERN_CHARS))
        });
        Ok(ResolvedFilter {
            include,
            exclude: self.excludes.clone(),
            only_prefix_includes,
            only_prefix_exclude_exceptions,
        })
    }
}

/// Why a filter could not be applied to a directory.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ResolveError {
    #[error(transparent)]
    Pattern(PatternError),
    #[error("cannot resolve followpath {path}: {}", super::io_reason(error))]
    Io { path: String, error: io::Error },
}

/// The filter with follow paths resolved, ready for one walk.
#[derive(Debug)]
pub(crate) struct ResolvedFilter {
    include: Option<PatternMatcher>,
    exclude: Option<PatternMatcher>,
    only_prefix_includes: bool,
    only_prefix_exclude_exceptions: bool,
}

/// The filter's verdict on one entry.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Send it (and walk into it if it is a directory).
    Keep,
    /// Do not send it, but walk into it: a descendant may be kept, and then this directory
    /// is sent just before it.
    Skip,
    /// Neither send it nor walk into it.
    Prune,
}

/// Per-pattern results of a directory, handed to its children.
#[derive(Debug, Clone, Default)]
pub(crate) struct MatchState {
    include: Vec<bool>,
    exclude: Vec<bool>,
}

impl ResolvedFilter {
    /// Decides for `path` (relative, `/`-separated) given its parent's state. Returns the
    /// state to hand to its children (meaningful for directories).
    pub(crate) fn check(
        &self,
        path: &str,
        is_dir: bool,
        parent: &MatchState,
    ) -> (Verdict, MatchState) {
        let mut state = MatchState::default();
        let mut skip = false;
        if let Some(include) = &self.include {
            let (m, info) = include.matches_using_parent(path, &parent.include);
            state.include = info;
            if !m {
                if is_dir && self.only_prefix_includes {
                    let dir_slash = format!("{path}/");
                    let reachable = include.patterns.iter().any(|p| {
                        !p.exclusion
                            && format!("{}/", p.without_trailing_glob()).starts_with(&dir_slash)
                    });
                    if !reachable {
                        return (Verdict::Prune, state);
                    }
                }
                skip = true;
            }
        }
        if let Some(exclude) = &self.exclude {
            let (m, info) = exclude.matches_using_parent(path, &parent.exclude);
            state.exclude = info;
            if m {
                if is_dir && self.only_prefix_exclude_exceptions {
                    if !exclude.exclusions {
                        return (Verdict::Prune, state);
                    }
                    let dir_slash = format!("{path}/");
                    let reachable = exclude.patterns.iter().any(|p| {
                        p.exclusion
                            && format!("{}/", p.without_trailing_glob()).starts_with(&dir_slash)
                    });
                    if !reachable {
                        return (Verdict::Prune, state);
                    }
                }
                skip = true;
            }
        }
        (if skip { Verdict::Skip } else { Verdict::Keep }, state)
    }
}

/// fsutil's `dedupePaths`: drops paths under the previous kept path; `None` when one of them is
/// the root (no filter at all). Expects sorted input, but is also applied (as fsutil does) to
/// the unsorted include list.
fn dedupe_paths(paths: &[String]) -> Option<Vec<String>> {
    let mut out: Vec<String> = Vec::with_capacity(paths.len());
    let mut last = String::new();
    for p in paths {
        if p == "." {
            return None;
        }
        if p.starts_with(&format!("{last}/")) {
            continue;
        }
        out.push(p.clone());
        last = p.clone();
    }
    Some(out)
}

/// fsutil's `FollowLinks`: every symlink met along each path is resolved inside `root`; the
/// links and final targets become include paths. `None` means "everything" (a path resolved to
/// the root).
fn follow_links(root: &Path, paths: &[String]) -> Result<Option<Vec<String>>, ResolveError> {
    let mut resolver = Resolver {
        root,
        resolved: HashSet::new(),
    };
    for p in paths {
        resolver.append(p, 0)?;
    }
    let mut out: Vec<String> = resolver.resolved.into_iter().collect();
    out.sort();
    Ok(dedupe_paths(&out))
}

struct Resolver<'a> {
    root: &'a Path,
    resolved: HashSet<String>,
}

/// Symlink chains longer than this are cut off (a loop would otherwise never end).
const MAX_LINK_DEPTH: usize = 255;

fn join(a: &str, b: &str) -> String {
    pattern::clean(&format!("{a}/{b}"))
}

fn contains_wildcards(name: &str) -> bool {
    let b = name.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'*' | b'?' | b'[' => return true,
            _ => {}
        }
        i += 1;
    }
    false
}

impl Resolver<'_> {
    fn append(&mut self, p: &str, depth: usize) -> Result<(), ResolveError> {
        if depth > MAX_LINK_DEPTH {
            return Ok(());
        }
        let mut p = join(".", p);
        let mut current = ".".to_string();
        loop {
            let (first, rest) = match p.split_once('/') {
                Some((a, b)) => (a.to_string(), Some(b.to_string())),
                None => (p.clone(), None),
            };
            current = join(&current, &first);
            let targets = self.read_symlink(&current, true)?;
            p = rest.unwrap_or_default();
            if (p.is_empty() || targets.is_some()) && self.resolved.contains(&current) {
                return Ok(());
            }
            if let Some(targets) = targets {
                self.resolved.insert(current.clone());
                for target in targets {
                    self.append(&join(&target, &p), depth + 1)?;
                }
                return Ok(());
            }
            if p.is_empty() {
                self.resolved.insert(current);
                return Ok(());
            }
        }
    }

    /// The target(s) of `p` if it is a symlink (or, with a wildcard base name, of each
    /// matching sibling that is one), as absolute paths inside the root.
    fn read_symlink(
        &self,
        p: &str,
        allow_wildcard: bool,
    ) -> Result<Option<Vec<String>>, ResolveError> {
        let io_err = |source: io::Error| ResolveError::Io {
            path: p.to_string(),
            error: source,
        };
        let base = p.rsplit('/').next().unwrap_or(p);
        if allow_wildcard && contains_wildcards(base) {
            let parent = pattern::dir(p);
            let entries = match std::fs::read_dir(self.root.join(parent)) {
                Ok(entries) => entries,
                Err(e) if is_not_found(&e) => return Ok(None),
                Err(e) => return Err(io_err(e)),
            };
            let mut names = Vec::new();
            for entry in entries {
                let entry = entry.map_err(io_err)?;
                if let Some(name) = entry.file_name().to_str() {
                    names.push(name.to_string());
                }
            }
            names.sort();
            let mut out: Option<Vec<String>> = None;
            for name in names {
                if go_match(base, &name).unwrap_or(false)
                    && let Some(found) = self.read_symlink(&join(parent, &name), false)?
                {
                    out.get_or_insert_with(Vec::new).extend(found);
                }
            }
            return Ok(out);
        }
        if p == "." || p == "/" {
            return Ok(None);
        }
        let full = self.root.join(p);
        let meta = match std::fs::symlink_metadata(&full) {
            Ok(m) => m,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(io_err(e)),
        };
        if !meta.file_type().is_symlink() {
            return Ok(None);
        }
        let link = std::fs::read_link(&full).map_err(io_err)?;
        let link = pattern::clean(&link.to_string_lossy());
        if link.starts_with('/') {
            return Ok(Some(vec![link]));
        }
        Ok(Some(vec![join("/", &join(pattern::dir(p), &link))]))
    }
}

fn is_not_found(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}
