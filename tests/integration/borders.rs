//! The module borders of DESIGN.md as a test: data flows `multiplatform` -> (`config`,
//! `fleet`) -> `buildkit` -> `registry`, and a module never imports one above it. Each
//! module's header says the same in words; this keeps the words true.

use std::path::{Path, PathBuf};

/// Each source tree and the paths it must not name.
const RULES: &[(&str, &[&str])] = &[
    // BuildKit knows endpoints and dialers, not Kubernetes, the fleet or the build flow.
    (
        "src/buildkit",
        &[
            "crate::fleet",
            "crate::multiplatform",
            "crate::config",
            "crate::llb",
            "kube::",
            "k8s_openapi",
        ],
    ),
    // LLB is pure graph building on top of the wire types: a solve takes its Definition, so
    // buildkit never needs it, and it needs nothing of the build flow.
    (
        "src/llb",
        &[
            "crate::fleet",
            "crate::multiplatform",
            "crate::config",
            "kube::",
            "k8s_openapi",
        ],
    ),
    // The registry client stands alone.
    (
        "src/registry",
        &[
            "crate::buildkit",
            "crate::fleet",
            "crate::multiplatform",
            "crate::config",
            "kube::",
            "k8s_openapi",
        ],
    ),
    // AWS is a leaf under both the registry (ECR logins) and the fleet (EKS tokens).
    (
        "src/aws",
        &[
            "crate::buildkit",
            "crate::registry",
            "crate::fleet",
            "crate::multiplatform",
            "crate::config",
            "kube::",
            "k8s_openapi",
        ],
    ),
    // The fleet drives Kubernetes and hands BuildKit connections up; it runs no builds.
    ("src/fleet", &["crate::multiplatform", "crate::config"]),
    // buildkit.json is plain data.
    (
        "src/config.rs",
        &[
            "crate::buildkit",
            "crate::fleet",
            "crate::multiplatform",
            "crate::registry",
        ],
    ),
];

fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_file() {
        out.push(path.to_owned());
        return;
    }
    for entry in std::fs::read_dir(path).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() || path.extension().is_some_and(|e| e == "rs") {
            rust_files(&path, out);
        }
    }
}

#[test]
fn lower_modules_do_not_import_higher_ones() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut violations = Vec::new();
    for (tree, forbidden) in RULES {
        let mut files = Vec::new();
        rust_files(&root.join(tree), &mut files);
        assert!(
            !files.is_empty(),
            "{tree} has no Rust files: is the rule stale?"
        );
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                for path in *forbidden {
                    if code.contains(path) {
                        let at = file.strip_prefix(root).unwrap_or(&file).display();
                        violations.push(format!("{at}:{}: {path}", n + 1));
                    }
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
