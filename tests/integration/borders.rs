//! The module borders of DESIGN.md as a test: data flows `multiplatform` -> (`config`,
//! `fleet`) -> `buildkit` -> `registry`, and a module never imports one above it. Each
//! module's header says the same in words; this keeps the words true.
//!
//! The check reads the module tree, not text: every `crate::…` and `super::…` path in a
//! file (groups in braces included) is resolved to the module file it names, and the rules
//! are about those files. So an alias, a re-export or a `super::super::` cannot hide a
//! crossing, and a word in a string or a comment is not one. The same graph must have no file
//! cycles (two files that use each other), which are how borders inside a module rot.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each module and the modules (and external crates) its files must not use.
const RULES: &[(&str, &[&str])] = &[
    // BuildKit knows endpoints and dialers, not Kubernetes, the fleet or the build flow.
    (
        "buildkit",
        &[
            "fleet",
            "multiplatform",
            "config",
            "aws",
            "kube",
            "k8s_openapi",
        ],
    ),
    // The registry client stands alone (ECR logins are the one use of aws).
    (
        "registry",
        &[
            "buildkit",
            "fleet",
            "multiplatform",
            "config",
            "llb",
            "kube",
            "k8s_openapi",
        ],
    ),
    // AWS is a leaf under both the registry (ECR logins) and the fleet (EKS tokens).
    (
        "aws",
        &[
            "buildkit",
            "registry",
            "fleet",
            "multiplatform",
            "config",
            "llb",
            "kube",
            "k8s_openapi",
        ],
    ),
    // The fleet drives Kubernetes and hands BuildKit connections up; it runs no builds.
    ("fleet", &["multiplatform", "config"]),
    // buildkit.json is plain data.
    (
        "config",
        &["buildkit", "fleet", "multiplatform", "registry", "aws"],
    ),
];

/// External crates a rule may name, found as the first segment of a path.
const EXTERNAL: &[&str] = &["kube", "k8s_openapi"];

/// The crate's files by module path (`buildkit/session` for `src/buildkit/session/mod.rs`).
fn modules(root: &Path) -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, src: &Path, out: &mut BTreeMap<String, PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, src, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(src).unwrap().with_extension("");
                let mut name = rel.to_string_lossy().into_owned();
                for suffix in ["/mod", "lib", "main"] {
                    if name == suffix.trim_start_matches('/') {
                        name.clear();
                    } else if let Some(stripped) = name.strip_suffix(suffix) {
                        name = stripped.to_owned();
                    }
                }
                out.insert(name, path);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&root.join("src"), &root.join("src"), &mut out);
    out
}

/// The code of a file without comments and without its unit tests.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => &text,
    };
    text.lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path the code names from `crate::`, `super::` or an external crate, as segments
/// relative to the crate root (external crates as `extern:NAME`).
fn named_paths(code: &str, module: &str, is_dir_module: bool) -> Vec<Vec<String>> {
    let path =
        regex::Regex::new(r"\b(crate|super|self|kube|k8s_openapi)((?:::\w+)*)(::\{([^;]*?)\})?")
            .unwrap();
    let mut out = Vec::new();
    let own: Vec<String> = module
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    for found in path.captures_iter(code) {
        let head = &found[1];
        let mut segments: Vec<String> = found[2]
            .split("::")
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let base: Vec<String> = match head {
            "crate" => Vec::new(),
            "self" if is_dir_module => own.clone(),
            "self" => own[..own.len().saturating_sub(1)].to_vec(),
            "super" => {
                // `super` of `a/b` (a file) is `a`; of `a/b/mod.rs` too: the module `a::b`'s
                // parent. Each further `super` goes up one more.
                let mut base = own[..own.len().saturating_sub(1)].to_vec();
                while segments.first().is_some_and(|s| s == "super") {
                    segments.remove(0);
                    base.pop();
                }
                base
            }
            // An external crate counts as a path root (`kube::Api`), not as a word.
            _ if segments.is_empty() => continue,
            external => {
                if found
                    .get(0)
                    .is_some_and(|m| m.start() > 0 && code[..m.start()].ends_with("::"))
                {
                    continue;
                }
                out.push(vec![format!("extern:{external}")]);
                continue;
            }
        };
        let mut groups = vec![segments.clone()];
        if let Some(inner) = found.get(4) {
            for item in inner.as_str().split(',') {
                let item = item.trim().trim_start_matches('{').trim();
                if item.is_empty() {
                    continue;
                }
                let mut group = segments.clone();
                group.extend(
                    item.split(" as ")
                        .next()
                        .unwrap_or("")
                        .split("::")
                        .map(|s| s.trim().to_owned())
                        .filter(|s| {
                            !s.is_empty() && s.chars().all(|c| c.is_alphanumeric() || c == '_')
                        }),
                );
                groups.push(group);
            }
        }
        for group in groups {
            let mut full = base.clone();
            full.extend(group);
            out.push(full);
        }
    }
    out
}

/// The module file a path names: its longest prefix that is a module.
fn resolve(path: &[String], modules: &BTreeMap<String, PathBuf>) -> Option<String> {
    if let Some(external) = path.first().and_then(|s| s.strip_prefix("extern:")) {
        return Some(external.to_owned());
    }
    (1..=path.len())
        .rev()
        .map(|n| path[..n].join("/"))
        .find(|name| modules.contains_key(name))
}

/// Which module files each module file uses.
fn graph(root: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules(root);
    let mut edges = BTreeMap::new();
    for (module, file) in &modules {
        let is_dir = file.ends_with("mod.rs") || module.is_empty();
        let uses: BTreeSet<String> = named_paths(&code(file), module, is_dir)
            .iter()
            .filter_map(|path| resolve(path, &modules))
            .filter(|used| used != module)
            .collect();
        edges.insert(module.clone(), uses);
    }
    edges
}

fn top(module: &str) -> &str {
    module.split('/').next().unwrap_or(module)
}

#[test]
fn lower_modules_do_not_import_higher_ones() {
    let edges = graph(Path::new(env!("CARGO_MANIFEST_DIR")));
    let mut violations = Vec::new();
    for (module, forbidden) in RULES {
        assert!(
            edges.keys().any(|m| top(m) == *module),
            "no module {module}: is the rule stale?"
        );
        for (file, uses) in edges.iter().filter(|(m, _)| top(m) == *module) {
            for used in uses {
                let target = if EXTERNAL.contains(&used.as_str()) {
                    used.as_str()
                } else {
                    top(used)
                };
                if forbidden.contains(&target) {
                    violations.push(format!("src/{file}: uses {used}"));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "border crossings:\n{}",
        violations.join("\n")
    );
}

/// Pairs of files under `root`'s `src/` that use each other, as `src/a <-> src/b`. A parent
/// module file and its children may use each other: that is the tree.
fn file_cycles(root: &Path) -> Vec<String> {
    let edges = graph(root);
    let mut cycles = Vec::new();
    for (a, uses) in &edges {
        for b in uses {
            let related = b.starts_with(&format!("{a}/"))
                || a.starts_with(&format!("{b}/"))
                || a.is_empty()
                || b.is_empty();
            if a < b && !related && edges.get(b).is_some_and(|back| back.contains(a)) {
                cycles.push(format!("src/{a} <-> src/{b}"));
            }
        }
    }
    cycles
}

#[test]
fn no_two_files_use_each_other() {
    let cycles = file_cycles(Path::new(env!("CARGO_MANIFEST_DIR")));
    assert!(cycles.is_empty(), "file cycles:\n{}", cycles.join("\n"));
}

/// The cycle finder is real: two files of a small crate that use each other are found, and a
/// parent with its child is not.
#[test]
fn the_cycle_finder_finds_two_files_that_use_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("store")).unwrap();
    let files = [
        ("lib.rs", "mod solve;\nmod store;\n"),
        (
            "solve.rs",
            "use crate::store::Layout;\npub struct Options;\n",
        ),
        (
            "store/mod.rs",
            "mod lock;\nuse super::solve::Options;\npub struct Layout;\n",
        ),
        ("store/lock.rs", "use super::Layout;\n"),
    ];
    for (name, code) in files {
        std::fs::write(src.join(name), code).unwrap();
    }
    assert_eq!(file_cycles(dir.path()), ["src/solve <-> src/store"]);
}
