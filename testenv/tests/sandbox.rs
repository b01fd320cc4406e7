//! The sandbox's own tests, against the real daemons (the binaries `scripts/testenv` installs
//! in the cache): each component, dropped, leaves no process, no port, no mount and no
//! folder; the supervisor, started and stopped (or killed) in a folder and on ports of its
//! own, leaves nothing either (the Kubernetes tier included), and one `start` racing another
//! starts one set. Without its shared files the Kubernetes tier says in one line why it is
//! skipped.

// Test code may panic on anything unexpected: that is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use pf_testenv::buildkitd::on_path;
use pf_testenv::http::{self, Target};
use pf_testenv::leftovers::mounts_under;
use pf_testenv::process::{alive, poll_until};
use pf_testenv::{
    BuildkitdConfig, Engine, EngineConfig, Moto, Registry, RegistryConfig, Settings,
    SharedBuildkitd,
};

/// How long a stopped daemon's port and process may take to go (busy CI machines).
const GONE: Duration = Duration::from_secs(30);

/// The settings of the machine's environment (cache, timeout), after checking that
/// `scripts/testenv` installed what these tests start. Without it the test process ends in
/// one line saying how to get it, instead of each test failing on its own.
fn settings() -> Settings {
    let settings = Settings::from_env().expect("the PF_TESTENV_* settings");
    let registry = settings.root().join("usr/bin/docker-registry");
    if !registry.is_file() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr().lock(),
                "\npf-testenv tests: no {}: run 'scripts/testenv start' (it installs the daemons) or scripts/test",
                registry.display()
            );
            std::process::exit(1);
        });
    }
    settings
}

/// The standalone buildkitd, or none (the tier is optional: its tests then say so and pass,
/// and the supervisor tests check the tier's skip line).
fn buildkitd(settings: &Settings) -> Option<PathBuf> {
    let binary = settings.buildkitd_binary();
    if binary.is_none() {
        eprintln!(
            "no standalone buildkitd: {}",
            settings.buildkit_xz.display()
        );
    }
    binary
}

/// A port base P such that P, P+100, P+200, P+201, P+1000 and the Kubernetes tier's
/// P+1400 to P+1404 are free: each test its own (the shared environment uses 5000-6404).
fn free_ports() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = 20000 + (std::process::id() % 50) as u16 * 300;
    loop {
        let p = start + NEXT.fetch_add(1, Ordering::Relaxed) * 7;
        assert!(p < 40000, "no free block of ports");
        if [p, p + 100, p + 200, p + 201, p + 1000]
            .into_iter()
            .chain(p + 1400..=p + 1404)
            .all(|q| !http::port_taken(q))
        {
            return p;
        }
    }
}

/// A short scratch folder (unix socket paths are at most 107 bytes).
fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("pf-te-")
        .tempdir_in("/tmp")
        .unwrap()
}

/// Pids of processes (other than this one) whose command line names `path` or a path under
/// it.
fn processes_naming(path: &Path) -> Vec<u32> {
    let dir = format!("{}/", path.display());
    let file = format!("{} ", path.display());
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id() && alive(*pid))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let cmdline = String::from_utf8_lossy(&c).replace('\0', " ");
                cmdline.contains(&dir) || cmdline.contains(&file)
            })
        })
        .collect()
}

fn assert_gone(what: &str, pids: &[u32], ports: &[u16], dirs: &[PathBuf]) {
    for pid in pids {
        assert!(
            poll_until(GONE, || !alive(*pid)),
            "{what}: process {pid} still runs"
        );
    }
    for port in ports {
        assert!(
            poll_until(GONE, || !http::port_taken(*port)),
            "{what}: port {port} still answers"
        );
    }
    for dir in dirs {
        assert!(
            mounts_under(dir).is_empty(),
            "{what}: mounts left under {}",
            dir.display()
        );
        assert!(!dir.exists(), "{what}: {} is still there", dir.display());
    }
}

#[test]
fn a_dropped_registry_leaves_no_process_port_or_folder() {
    let settings = settings();
    let tmp = scratch();
    let port = free_ports();
    let dir = tmp.path().join("ecr");
    let mut registry = Registry::start(&RegistryConfig {
        name: "ecr-registry".into(),
        binary: settings.root().join("usr/bin/docker-registry"),
        dir: dir.clone(),
        log: tmp.path().join("ecr.log"),
        port,
        login: Some(("AWS".into(), "secret".into())),
        timeout: settings.timeout,
        die_with_parent: false,
    })
    .unwrap();
    let addr = registry.addr().to_owned();
    // The login is asked for, and the right one is let in.
    assert_eq!(http::status(Target::Tcp(&addr), "/v2/"), 401);
    let ok = http::request(
        Target::Tcp(&addr),
        "GET",
        "/v2/",
        &[("Authorization", "Basic QVdTOnNlY3JldA==")],
        &[],
    )
    .unwrap();
    assert_eq!(ok.status, 200, "AWS:secret is refused");
    let pid = registry.daemon().pid();
    drop(registry);
    assert_gone("registry", &[pid], &[port], &[dir]);
}

#[test]
fn a_dropped_moto_with_iam_leaves_no_process_port_or_folder() {
    let settings = settings();
    let tmp = scratch();
    let port = free_ports() + 201;
    let dir = tmp.path().join("moto-iam");
    let mut moto = Moto::start(
        "moto-iam",
        &dir,
        &tmp.path().join("moto.log"),
        port,
        true,
        settings.timeout,
        false,
    )
    .unwrap();
    let keys = std::fs::read_to_string(moto.keys_file()).unwrap();
    assert_eq!(keys.split_whitespace().count(), 2, "keys file: {keys:?}");
    let pid = moto.daemon().pid();
    drop(moto);
    assert_gone("moto-iam", &[pid], &[port], &[dir]);
}

#[test]
fn a_dropped_buildkitd_leaves_no_process_port_mount_or_folder() {
    let settings = settings();
    let Some(binary) = buildkitd(&settings) else {
        return;
    };
    let tmp = scratch();
    let port = free_ports() + 1000;
    let dir = tmp.path().join("buildkit");
    let mut buildkitd = SharedBuildkitd::start(&BuildkitdConfig {
        binary,
        dir: dir.clone(),
        log: tmp.path().join("buildkitd.log"),
        port,
        registry: "127.0.0.1:1".into(),
        snapshotter: "auto".into(),
        timeout: settings.timeout,
        die_with_parent: false,
    })
    .unwrap();
    assert!(http::speaks_h2(&format!("127.0.0.1:{port}")));
    let pid = buildkitd.daemon().pid();
    drop(buildkitd);
    assert_gone("buildkitd", &[pid], &[port], &[dir]);
}

#[test]
fn a_dropped_engine_leaves_no_process_mount_or_folder() {
    let settings = settings();
    let tmp = scratch();
    let mut engine = Engine::start(&EngineConfig {
        root: settings.root(),
        dir: tmp.path().to_path_buf(),
        logs: tmp.path().join("logs"),
        snapshotter: pf_testenv::snapshotter::pick(tmp.path(), settings.snapshotter.as_deref()),
        timeout: settings.timeout,
        die_with_parent: false,
    })
    .unwrap();
    let socket = engine.socket();
    assert!(pf_testenv::engine::ping(&socket));
    let pids: Vec<u32> = engine.daemons().iter().map(|d| d.pid()).collect();
    drop(engine);
    let dirs = ["containerd", "docker", "exec"].map(|d| tmp.path().join(d));
    assert_gone("engine", &pids, &[], &dirs);
    assert!(!socket.exists(), "the Engine's socket is left");
    assert_eq!(
        processes_naming(tmp.path()),
        Vec::<u32>::new(),
        "processes left"
    );
}

/// `pf-testenv COMMAND` with an environment of its own in `dir` on ports from `base`.
fn testenv(dir: &Path, base: u16, command: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pf-testenv"))
        .arg(command)
        .env("PF_TESTENV_DIR", dir)
        .env("PF_TEST_REGISTRY_PORT", base.to_string())
        .env("PF_TEST_BUILDKIT_PORT", (base + 1000).to_string())
        .output()
        .unwrap()
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The daemons' pids the supervisor recorded.
fn recorded(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("processes"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(' ')?.1.parse().ok())
        .collect()
}

fn supervisor_pid(dir: &Path) -> u32 {
    std::fs::read_to_string(dir.join("supervisor.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The ports the environment on `base` listens on (the Kubernetes tier's too: etcd, its
/// peers, the API server, the kubelet handler).
fn ports(base: u16) -> [u16; 9] {
    [
        base,
        base + 100,
        base + 200,
        base + 201,
        base + 1000,
        base + 1400,
        base + 1401,
        base + 1402,
        base + 1403,
    ]
}

#[test]
fn racing_starts_make_one_supervisor_and_stop_leaves_nothing() {
    settings();
    let tmp = scratch();
    let base = free_ports();
    let dir = tmp.path().to_path_buf();
    let starts: Vec<_> = (0..2)
        .map(|_| {
            let dir = dir.clone();
            std::thread::spawn(move || ok(testenv(&dir, base, "start"), "start"))
        })
        .collect();
    let envs: Vec<String> = starts.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(
        envs[0], envs[1],
        "the two starts print different environments"
    );
    assert!(envs[0].contains(&format!("export PF_TEST_REGISTRY=127.0.0.1:{base}\n")));
    // The Kubernetes tier runs beside the standalone buildkitd when its binaries are here.
    let with_kube = settings().buildkitd_binary().is_some() && settings().kube_binaries().is_some();
    assert_eq!(
        envs[0].contains(&format!(
            "export PF_TEST_KUBE_SERVER=https://127.0.0.1:{}\n",
            base + 1402
        )),
        with_kube,
        "{}",
        envs[0]
    );
    // One set: one registry and one dockerd run with this folder's config files, and they are
    // the ones the supervisor recorded.
    let supervisor = supervisor_pid(&dir);
    let daemons = recorded(&dir);
    for config in ["registry/config.yml", "daemon.json"] {
        let running = processes_naming(&dir.join(config));
        assert_eq!(running.len(), 1, "processes with {config}: {running:?}");
        assert!(
            daemons.contains(&running[0]),
            "{config}: {running:?} not in {daemons:?}"
        );
    }
    assert_eq!(
        http::status(Target::Tcp(&format!("127.0.0.1:{base}")), "/v2/"),
        200
    );
    assert_eq!(ok(testenv(&dir, base, "env"), "env"), envs[0]);

    ok(testenv(&dir, base, "stop"), "stop");
    let mut all = daemons.clone();
    all.push(supervisor);
    assert_gone("environment", &all, &ports(base), &[]);
    assert_eq!(processes_naming(&dir), Vec::<u32>::new(), "processes left");
    assert_eq!(mounts_under(&dir), Vec::<String>::new(), "mounts left");
    assert!(!dir.join("testenv.env").exists(), "the env file is left");
    assert!(
        !testenv(&dir, base, "env").status.success(),
        "env says it runs"
    );
}

#[test]
fn a_killed_supervisor_takes_its_daemons_and_the_next_start_cleans_up() {
    settings();
    if on_path("runc").is_none() {
        panic!("runc is not installed: run 'scripts/testenv start' (it installs it)");
    }
    let tmp = scratch();
    let base = free_ports();
    let dir = tmp.path().to_path_buf();
    ok(testenv(&dir, base, "start"), "start");
    let daemons = recorded(&dir);
    let supervisor = supervisor_pid(&dir);
    pf_testenv::process::signal_pid(supervisor, libc::SIGKILL);
    // PR_SET_PDEATHSIG: the kernel kills every daemon with it.
    assert_gone("killed supervisor's daemons", &daemons, &[], &[]);
    assert!(
        !testenv(&dir, base, "env").status.success(),
        "env says it runs"
    );

    let env = ok(testenv(&dir, base, "start"), "second start");
    assert!(env.contains(&format!("127.0.0.1:{base}")));
    assert_ne!(supervisor_pid(&dir), supervisor);
    let daemons = recorded(&dir);
    let supervisor = supervisor_pid(&dir);
    ok(testenv(&dir, base, "stop"), "stop");
    let mut all = daemons;
    all.push(supervisor);
    assert_gone("environment", &all, &ports(base), &[]);
    assert_eq!(processes_naming(&dir), Vec::<u32>::new(), "processes left");
    assert_eq!(mounts_under(&dir), Vec::<String>::new(), "mounts left");
}

#[test]
fn an_interrupted_start_stops_what_it_started() {
    settings();
    let tmp = scratch();
    let base = free_ports();
    let dir = tmp.path().to_path_buf();
    let start = Command::new(env!("CARGO_BIN_EXE_pf-testenv"))
        .arg("start")
        .env("PF_TESTENV_DIR", &dir)
        .env("PF_TEST_REGISTRY_PORT", base.to_string())
        .env("PF_TEST_BUILDKIT_PORT", (base + 1000).to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once the supervisor runs, the start is waiting for it (the Engine alone takes seconds).
    assert!(
        poll_until(GONE, || dir.join("supervisor.pid").exists()),
        "no supervisor started"
    );
    let supervisor = supervisor_pid(&dir);
    pf_testenv::process::signal_pid(start.id(), libc::SIGINT);
    let out = start.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the start succeeded: {stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(out.stdout.is_empty(), "env lines printed");
    assert_gone("interrupted start", &[supervisor], &ports(base), &[]);
    assert_eq!(processes_naming(&dir), Vec::<u32>::new(), "processes left");
    assert_eq!(mounts_under(&dir), Vec::<String>::new(), "mounts left");
}

/// `pf-testenv kube-tier` in a folder where nothing runs, with `vars` set.
fn kube_tier(vars: &[(&str, &Path)]) -> String {
    let tmp = scratch();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pf-testenv"));
    cmd.arg("kube-tier").env("PF_TESTENV_DIR", tmp.path());
    for (name, value) in vars {
        cmd.env(name, value);
    }
    ok(cmd.output().unwrap(), "kube-tier")
}

#[test]
fn the_kubernetes_tier_says_in_one_line_why_it_is_skipped() {
    let settings = settings();
    let empty = scratch();
    // No shared files: the line names the files, the folder and the variable that moves it.
    assert_eq!(
        kube_tier(&[("PF_TESTENV_KUBE", empty.path())]),
        format!(
            "Kubernetes tier: skipped (no etcd-v3.5.30-linux-amd64.xz \
             kube-apiserver-v1.36.2-linux-amd64.xz kubelet-portforward-v1.36.2-linux-amd64.xz \
             with README.md in {}; PF_TESTENV_KUBE names another folder)\n",
            empty.path().display()
        )
    );
    // No standalone buildkitd for the pods to reach.
    let missing = empty.path().join("buildkitd.xz");
    assert_eq!(
        kube_tier(&[("PF_TESTENV_BUILDKIT", &missing)]),
        "Kubernetes tier: skipped (it needs the standalone buildkitd, which is missing)\n"
    );
    // Everything at hand, nothing started in this folder.
    if settings.buildkitd_binary().is_some() && settings.kube_binaries().is_some() {
        assert_eq!(
            kube_tier(&[]),
            "Kubernetes tier: not running (start it with: scripts/testenv start)\n"
        );
    }
}

#[test]
fn a_dropped_private_buildkitd_leaves_no_process_mount_or_folder() {
    let settings = settings();
    let Some(binary) = buildkitd(&settings) else {
        return;
    };
    let tmp = scratch();
    let mut daemon = pf_testenv::PrivateBuildkitd::start(
        &binary,
        "127.0.0.1:1",
        tmp.path(),
        "auto",
        Duration::from_secs(120),
    )
    .unwrap();
    assert!(daemon.socket().exists());
    let dir = daemon.root().parent().unwrap().to_path_buf();
    // A crash, and the same daemon again on its root.
    let first = daemon.pid();
    daemon.restart().unwrap();
    assert_gone("the killed private buildkitd", &[first], &[], &[]);
    let pid = daemon.pid();
    assert_ne!(pid, first);
    drop(daemon);
    assert_gone("private buildkitd", &[pid], &[], &[dir]);
}

#[test]
fn a_mount_of_the_folder_elsewhere_goes_with_the_folder() {
    // What a daemon killed while exporting leaves: its snapshot mounted outside its root.
    let tmp = scratch();
    let dir = tmp.path().join("root");
    std::fs::create_dir_all(dir.join("snapshot")).unwrap();
    let outside = scratch();
    let mounted = Command::new("mount")
        .arg("--bind")
        .arg(dir.join("snapshot"))
        .arg(outside.path())
        .status()
        .unwrap();
    assert!(mounted.success(), "mount --bind");
    assert_eq!(
        mounts_under(&dir),
        vec![outside.path().display().to_string()]
    );
    pf_testenv::leftovers::buildkit_leftovers(&dir);
    assert_eq!(mounts_under(&dir), Vec::<String>::new());
}
