//! The command line itself: version, completions, usage errors.

use crate::util::{run, stderr, stdout};

#[test]
fn version_names_the_program() {
    let out = run(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        stdout(&out).trim(),
        format!("pf-buildkit {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn completions_for_each_shell() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef pf-buildkit"),
        ("fish", "complete -c pf-buildkit"),
    ] {
        let out = run(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let script = stdout(&out);
        assert!(script.contains(marker), "{shell} script lacks {marker:?}");
        assert!(
            script.contains("workers") && script.contains("prune"),
            "{shell} script lacks subcommands"
        );
    }
}

#[test]
fn usage_errors_exit_2() {
    let out = run(&["prune", "--keep-duration", "soon"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not a duration"), "{}", stderr(&out));
    let out = run(&["no-such-command"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_closed_stdout_ends_quietly() {
    // The pipe's reader is closed before the binary starts, so its first write fails.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = crate::util::bin()
        .args(["completions", "bash"])
        .stdout(writer)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.is_empty(), "{err}");
}
