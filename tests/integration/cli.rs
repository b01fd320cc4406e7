//! The command line itself: version, completions, and the usage-error contract: every bad
//! flag value, unknown flag or command and combination of flags that do not go together exits
//! 2 with one `pf-buildkit: …` line, prints nothing on stdout, and does no work. Needs no
//! test environment: the daemon, registry and API server the commands would reach are one
//! listener of the test's own that must see no connection.

use std::net::TcpListener;
use std::path::Path;

use crate::util::{assert_usage_error, run, stderr, stdout};

#[test]
fn version_names_the_program_commit_and_target() {
    let out = run(&["--version"]);
    assert!(out.status.success());
    let line = stdout(&out).trim().to_owned();
    let head = std::process::Command::new("git")
        .args(["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "HEAD"])
        .output()
        .expect("git runs");
    assert!(head.status.success(), "the tests run in a git checkout");
    let commit = &String::from_utf8_lossy(&head.stdout)[..12];
    assert_eq!(
        line,
        format!(
            "pf-buildkit {} (commit {commit}, {}-unknown-linux-gnu)",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::ARCH
        )
    );
}

#[test]
fn help_is_a_result_on_stdout() {
    let out = run(&["build", "--help"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("--build-arg"), "{}", stdout(&out));
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
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

/// Bad command lines and a piece of the one line each must print. `ADDR` in an argument is
/// the trap listener's `host:port`.
#[rustfmt::skip]
const USAGE_ERRORS: &[(&[&str], &str)] = &[
    // The command line as a whole.
    (&[], "a command is needed: workers, info, du, prune, build"),
    (&["wrokers"], "unknown command \"wrokers\"; did you mean workers?"),
    (&["scale"], "a command is needed: up, down"),
    (&["workers", "--formt", "json"], "unknown flag --formt; did you mean --format?"),
    (&["workers", "--api-token=s3cret"], "unknown flag --api-token"),
    (&["workers", "extra"], "unexpected argument \"extra\""),
    (&["completions", "fish2"], "<SHELL>: \"fish2\" is not one of bash"),
    // Global flags.
    (&["--addr", "ftp://x", "workers"], "--addr: invalid BuildKit address \"ftp://x\": unknown scheme"),
    // Daemon commands.
    (&["workers", "--format", "xml"], "--format: \"xml\" is not one of table, json"),
    (&["info", "--format", "yaml"], "--format: \"yaml\" is not one of table, json"),
    (&["du", "--format"], "--format needs a value"),
    (&["prune", "--keep-duration", "soon"], "--keep-duration: \"soon\" is not a duration"),
    (&["prune", "--keep-duration", "10"], "--keep-duration: \"10\" is not a duration"),
    (&["prune", "--keep-storage", "10XB"], "--keep-storage: \"10XB\" is not a size"),
    (&["prune", "--keep-storage=-1"], "--keep-storage: \"-1\" is not a size"),
    // The build's flags.
    (&["build", "--progress", "fancy"], "--progress: \"fancy\" is not one of auto, tty, plain, rawjson, quiet"),
    (&["build", "--build-arg", "NOEQUALS"], "--build-arg: invalid value \"NOEQUALS\": expected KEY=VALUE"),
    (&["build", "--build-arg", "=v"], "--build-arg: invalid value \"=v\": the key is empty"),
    (&["build", "--label", "x"], "--label: invalid value \"x\": expected KEY=VALUE"),
    (&["build", "--opt", "x"], "--opt: invalid value \"x\": expected KEY=VALUE"),
    (&["build", "--local", "x"], "--local: invalid value \"x\": expected KEY=VALUE"),
    (&["build", "--oci-layout", "x"], "--oci-layout: invalid value \"x\": expected KEY=VALUE"),
    (&["build", "--secret", "id=a"], "--secret: invalid secret spec \"id=a\": give the value's source"),
    (&["build", "--secret", "src=/x"], "--secret: invalid secret spec \"src=/x\": id= is missing"),
    (&["build", "--secret", "id=a,from=x"], "unknown key \"from\""),
    (&["build", "--ssh", "x=/a,/b"], "--ssh: invalid ssh spec"),
    (&["build", "--ssh", ""], "--ssh: invalid ssh spec"),
    (&["build", "--platform", "linux/amd64,linux/amd65"], "--platform: invalid platform \"linux/amd65\": unknown architecture \"amd65\""),
    (&["build", "-o", "type=image,name=x,push=maybe"], "push must be true or false, not \"maybe\""),
    (&["build", "--output", "type=bogus,dest=x"], "--output: invalid output spec \"type=bogus,dest=x\": unknown type \"bogus\""),
    (&["build", "--output", "type=tar"], "type=tar needs dest=PATH"),
    (&["build", "--output", "dest=x"], "type= is missing"),
    (&["build", "--output", "type=tar,dest=x,tar=false"], "tar=false is supported for type=oci only"),
    (&["build", "-o", "type=image,push=true"], "push=true needs name=REF"),
    (&["build", "--export-cache", "type=registry"], "--export-cache: invalid cache export spec"),
    (&["build", "--export-cache", "type=s3,bucket=b,secret_access_key=s3cret,mode=maxx"], "mode must be min or max"),
    (&["build", "--import-cache", "type=nope,ref=x"], "--import-cache: invalid cache import spec"),
    (&["build", "--output", "type=oci,dest=a,tar=false", "--output", "type=oci,dest=b,tar=false"], "give at most one --output type=oci,tar=false"),
    (&["build", "--sbom=bogus"], "pf-buildkit: --sbom: invalid SBOM value \"bogus\": \"bogus\" is not key=value"),
    (&["build", "--sbom", "generator="], "--sbom: invalid SBOM value \"generator=\": generator= is empty: name an image"),
    (&["build", "--provenance=mode=full"], "pf-buildkit: --provenance: invalid provenance value \"mode=full\": mode=full: use min or max"),
    (&["build", "--attest", "type=vex"], "--attest: invalid attestation spec \"type=vex\": type=vex is not supported"),
    (&["build", "--attest", "type=sbom", "--sbom"], "--attest/--provenance/--sbom: sbom is asked for twice"),
    (&["manifest", "inspect", "ADDR/a:b", "--platform", "linux/arm64"], "--platform goes with --provenance or --sbom"),
    (&["manifest", "inspect", "ADDR/a:b", "--sbom", "--provenance"], "--sbom cannot be used with --provenance"),
    (&["build", "--lock-wait", "1m"], "--lock-wait: \"1m\" must be a whole number of seconds"),
    (&["build", "--oci-layout", "Bad:Name=dir"], "OCI layout name \"Bad:Name\""),
    (&["build", "--opt", "context:base=oci-layout://base:v1"], "no OCI layout named base is offered to the build; offer it with --oci-layout base=DIR"),
    // The multi-platform build's flags.
    (&["build", "--repo", "pf-test/app"], "missing --tag <TAG>"),
    (&["build", "--tag", "v1"], "missing --repo <REPO>"),
    (&["build", "--registry", "ADDR"], "missing --tag <TAG> and --repo <REPO>"),
    (&["build", "--repo", "pf-test/app", "--tag", "v1", "--registry", "ADDR", "--output", "type=local,dest=out"], "--output cannot be combined with --repo"),
    (&["build", "--repo", "pf-test/app", "--tag", "v1", "--registry", "ADDR", "--platform", "linux/arm64"], "--platform cannot be combined with --repo: use --arch"),
    (&["build", "--repo", "pf-test/app", "--tag", "v1", "--registry", "ADDR", "--builder", "amd64"], "--builder: expected ARCH=ENDPOINT"),
    (&["build", "--repo", "pf-test/app", "--tag", "v1", "--registry", "ADDR", "--builder", "amd64=ftp://x"], "unknown scheme"),
    (&["build", "--repo", "pf-test/app", "--tag", "v1", "--registry", "ADDR", "--builder", "amd64=tcp://ADDR", "--builder", "amd64=tcp://ADDR"], "--builder: architecture amd64 is given twice"),
    (&["build", "--repo", "pf-test/app", "--tag", "v1", "--registry", "ADDR", "--arch", "amd64,sparc"], "unknown architecture \"sparc\""),
    (&["build", "--repo", "pf-test/app", "--tag", "v1", "--registry", "ADDR", "--arch", "amd64,amd64"], "architecture amd64 is given twice"),
    (&["build", "--repo", "pf-test/app", "--tag", "v1", "--registry", "ADDR", "--arch", "amd64", "--builder", "arm64=tcp://ADDR"], "a builder is given for arm64, which is not among the architectures built"),
    (&["build", "--repo", "Bad/Repo", "--tag", "v1", "--registry", "ADDR"], "repository \"Bad/Repo\""),
    (&["build", "--repo", "pf-test/app", "--tag", "v1:x", "--registry", "ADDR"], "tag \"v1:x\""),
    (&["build", "--repo", "pf-test/app", "--tag", "v1", "--registry", "ADDR/path"], "must be a host[:port] without a path"),
    (&["build", "--repo", "pf-test/app", "--tag", "v1", "--registry", "ADDR", "--timeout", "soon"], "--timeout: \"soon\" must be a whole number of seconds"),
    // Fleet commands.
    (&["get-address", "--arch", "x86"], "--arch: invalid architecture \"x86\": must be amd64 or arm64"),
    (&["get-address"], "missing --arch <ARCH>"),
    (&["record-build", "--arch", "arm"], "invalid architecture \"arm\""),
    (&["scale", "up", "--only", "sparc"], "--only: invalid architecture \"sparc\""),
    (&["scale", "up", "--wait", "--timeout", "soon"], "--timeout: \"soon\" must be a whole number of seconds"),
    (&["scale", "down", "--timeout=-1"], "--timeout: \"-1\" must be a whole number of seconds"),
    // A negative number reads as a flag.
    (&["scale", "down", "--timeout", "-1"], "unknown flag -1"),
    (&["resume", "--timeout", "1.5"], "--timeout: \"1.5\" must be a whole number of seconds"),
    (&["suspend", "--timeout", "1h"], "--timeout: \"1h\" must be a whole number of seconds"),
    (&["tunnel", "--arch", "amd64", "--port", "70000"], "--port: \"70000\" is not a port number"),
    (&["tunnel", "--arch", "amd64", "--timeout", "x"], "--timeout: \"x\" must be a whole number of seconds"),
    (&["cache", "clear", "--fliter", "x"], "unknown flag --fliter; did you mean --filter?"),
    // Manifests.
    (&["manifest", "push", "--platforms", "linux/amd64,linux/amd65", "--template", "ADDR/r:x-ARCH", "--target", "ADDR/r:x"], "--platforms: invalid platform \"linux/amd65\": unknown architecture \"amd65\""),
    (&["manifest", "push", "--platforms", "linux/amd64", "--template", "ADDR/r:ARCHIVE", "--target", "ADDR/r:x"], "--template: template \"127.0.0.1:"),
    (&["manifest", "push", "--platforms", "linux/amd64", "--template", "ADDR/r:x-ARCH", "--target", "ADDR/Not Valid:x"], "--target: invalid image reference"),
    (&["manifest", "push", "--template", "ADDR/r:x-ARCH", "--target", "ADDR/r:x"], "missing --platforms <LIST>"),
    (&["manifest", "inspect", "ADDR/Not Valid"], "REFERENCE: invalid image reference"),
];

/// Every case in [`USAGE_ERRORS`]: exit 2, one line, nothing on stdout, and no work done:
/// no connection reached the listener that stands for BuildKit, the registry and the
/// Kubernetes API server, and nothing was written in the scratch directory the command ran in.
#[test]
fn every_usage_error_exits_2_in_one_line_and_does_nothing() {
    let trap = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = trap.local_addr().unwrap().to_string();
    let scratch = tempfile::tempdir().unwrap();
    let context = scratch.path().join("context");
    std::fs::create_dir(&context).unwrap();
    std::fs::write(context.join("Dockerfile"), "FROM scratch\n").unwrap();
    let kubeconfig = scratch.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: trap\n\
             clusters: [{{name: trap, cluster: {{server: 'http://{addr}'}}}}]\n\
             users: [{{name: trap, user: {{token: t}}}}]\n\
             contexts: [{{name: trap, context: {{cluster: trap, user: trap}}}}]\n"
        ),
    )
    .unwrap();
    let before = tree(scratch.path());
    for (args, needle) in USAGE_ERRORS {
        let args: Vec<String> = args.iter().map(|a| a.replace("ADDR", &addr)).collect();
        let out = crate::util::bin()
            .args(&args)
            .current_dir(&context)
            .env("BUILDKIT_HOST", format!("tcp://{addr}"))
            .env("KUBECONFIG", &kubeconfig)
            .env("DOCKER_CONFIG", scratch.path())
            .env("XDG_CACHE_HOME", scratch.path())
            .env("HOME", scratch.path())
            .output()
            .unwrap();
        let line = assert_usage_error(&out);
        assert!(
            line.contains(needle),
            "{args:?}: {needle:?} not in {line:?}"
        );
        assert!(!line.contains("s3cret"), "{args:?} echoed a secret: {line}");
        assert_eq!(tree(scratch.path()), before, "{args:?} wrote files");
    }
    trap.set_nonblocking(true).unwrap();
    assert!(
        trap.accept().is_err(),
        "a command with a usage error connected to the daemon, registry or API server"
    );
}

/// The paths under `dir`, sorted.
fn tree(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path.clone());
            }
            out.push(path);
        }
    }
    out.sort();
    out
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
