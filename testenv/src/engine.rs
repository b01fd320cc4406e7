//! The Docker Engine whose embedded BuildKit the tests talk to: containerd and dockerd from
//! Debian trixie's packages (unpacked by `scripts/testenv`), every file of both under one
//! folder, with the containerd image store (only then does the embedded BuildKit offer the
//! real `image` exporter with push=true and the oci, docker, tar and local exporters). No
//! bridge network and no iptables: nothing on the host is reconfigured, so RUN steps need
//! network mode none or host.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::http::{self, Target};
use crate::leftovers::{self, Folder};
use crate::process::{Daemon, Launch};
use crate::registry::write;

/// How the Engine is set up.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The unpacked packages (`usr/bin/containerd`, `usr/sbin/dockerd`, …).
    pub root: PathBuf,
    /// The folder for both daemons' files (its `containerd`, `docker` and `exec` folders, the
    /// socket `docker.sock` and `daemon.json` (at most ~80 bytes: unix socket paths are limited
    /// to 107).
    pub dir: PathBuf,
    /// Where the logs go (`containerd.log`, `dockerd.log`).
    pub logs: PathBuf,
    /// `overlayfs` or `native`.
    pub snapshotter: String,
    /// How long each daemon may take.
    pub timeout: Duration,
    /// See [`Launch::die_with_parent`].
    pub die_with_parent: bool,
}

/// A running Engine: dockerd on its containerd.
#[derive(Debug)]
pub struct Engine {
    /// Declared first: dropped (stopped) before containerd, which it uses.
    dockerd: Daemon,
    containerd: Daemon,
    /// containerd's, dockerd's data and exec roots: unmounted and removed on drop.
    _folders: [Folder; 3],
    dir: PathBuf,
}

impl Engine {
    /// The socket of an Engine whose folder is `dir`.
    pub fn socket_in(dir: &Path) -> PathBuf {
        dir.join("docker.sock")
    }

    /// Starts containerd, then dockerd on it, and returns once the Engine answers and is the
    /// one the tests need (containerd image store, BuildKit's /grpc upgrade).
    pub fn start(config: &EngineConfig) -> Result<Engine> {
        let dir = &config.dir;
        let socket = Self::socket_in(dir);
        if socket.as_os_str().len() > 90 {
            return Err(Error::msg(format!(
                "{} is too long for unix socket paths (at most about 80 bytes); set PF_TESTENV_DIR",
                dir.display()
            )));
        }
        cleanup(dir);
        let path = daemon_path(&config.root);
        let ctrd_dir = Folder::fresh(&dir.join("containerd"))?;
        let ctrd_sock = ctrd_dir.join("containerd.sock");
        // Everything under the folder (root, state, sockets, the "opt" plugin's
        // /opt/containerd); CRI disabled: nothing here is Kubernetes.
        let ctrd_config = ctrd_dir.join("config.toml");
        let c = ctrd_dir.path().display();
        write(
            &ctrd_config,
            &format!(
                "version = 2\nroot = \"{c}/root\"\nstate = \"{c}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\n\
                 [grpc]\n  address = \"{c}/containerd.sock\"\n\n\
                 [ttrpc]\n  address = \"{c}/containerd.sock.ttrpc\"\n\n\
                 [debug]\n  address = \"{c}/debug.sock\"\n\n\
                 [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{c}/opt\"\n"
            ),
        )?;
        let mut launch = Launch::new(
            "containerd",
            config.root.join("usr/bin/containerd"),
            &config.logs.join("containerd.log"),
        )
        .args(["--config".as_ref(), ctrd_config.as_os_str()])
        .grace(Duration::from_secs(15));
        launch.cmd().env("PATH", &path);
        if config.die_with_parent {
            launch = launch.die_with_parent();
        }
        let mut containerd = launch.start()?;
        containerd.wait_ready(
            &format!("socket {}", ctrd_sock.display()),
            config.timeout,
            || ctrd_sock.exists(),
        )?;

        // The folders dockerd writes; its socket and daemon.json sit beside them.
        let data = Folder::fresh(&dir.join("docker"))?;
        let exec = Folder::fresh(&dir.join("exec"))?;
        let daemon_json = dir.join("daemon.json");
        let storage = if config.snapshotter == "overlayfs" {
            String::new()
        } else {
            format!(",\"storage-driver\":\"{}\"", config.snapshotter)
        };
        write(
            &daemon_json,
            &format!("{{\"features\":{{\"containerd-snapshotter\":true}}{storage}}}\n"),
        )?;
        let _ = std::fs::remove_file(&socket);
        let mut launch = Launch::new(
            "dockerd",
            config.root.join("usr/sbin/dockerd"),
            &config.logs.join("dockerd.log"),
        )
        .args([
            "--config-file".as_ref(),
            daemon_json.as_os_str(),
            "--containerd".as_ref(),
            ctrd_sock.as_os_str(),
            "--data-root".as_ref(),
            data.path().as_os_str(),
            "--exec-root".as_ref(),
            exec.path().as_os_str(),
            "--pidfile".as_ref(),
            exec.join("dockerd.pid").as_os_str(),
        ])
        .args([format!("--host=unix://{}", socket.display())])
        // The socket is for root (the default group, docker, may not exist); and the host's
        // network is left alone.
        .args([
            "--group=root",
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            "--ip-forward=false",
        ])
        .grace(Duration::from_secs(30));
        launch.cmd().env("PATH", &path);
        if config.die_with_parent {
            launch = launch.die_with_parent();
        }
        let mut dockerd = launch.start()?;
        dockerd.wait_ready(
            &format!("answer on {}", socket.display()),
            config.timeout,
            || ping(&socket),
        )?;
        check(&socket, &dockerd)?;
        Ok(Engine {
            dockerd,
            containerd,
            _folders: [ctrd_dir, data, exec],
            dir: dir.clone(),
        })
    }

    /// The Engine's socket.
    pub fn socket(&self) -> PathBuf {
        Self::socket_in(&self.dir)
    }

    /// containerd and dockerd.
    pub fn daemons(&mut self) -> [&mut Daemon; 2] {
        [&mut self.containerd, &mut self.dockerd]
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // dockerd first (it uses containerd), with time to stop its containers.
        self.dockerd.stop();
        self.containerd.stop();
        cleanup(&self.dir);
        let _ = std::fs::remove_file(self.socket());
        let _ = std::fs::remove_file(self.dir.join("daemon.json"));
    }
}

/// Leftovers of a dockerd or containerd that was killed, under `dir`: containers (BuildKit
/// runs RUN steps with runc directly) and container shims. (Mounts go with the folders.)
pub fn cleanup(dir: &Path) {
    leftovers::engine_containers(dir);
    let shim = format!(
        "-address {} ",
        dir.join("containerd/containerd.sock").display()
    );
    leftovers::kill_processes_matching(&shim);
}

/// Whether the Engine at `socket` answers `/_ping` with OK.
pub fn ping(socket: &Path) -> bool {
    http::request(Target::Unix(socket), "GET", "/_ping", &[], &[])
        .is_ok_and(|r| r.status == 200 && r.body == b"OK")
}

/// The Engine must use the containerd image store and offer BuildKit's gRPC upgrade.
fn check(socket: &Path, dockerd: &Daemon) -> Result<()> {
    let info = http::request(Target::Unix(socket), "GET", "/info", &[], &[])
        .map_err(Error::ctx(format!("GET /info on {}", socket.display())))?;
    if !String::from_utf8_lossy(&info.body).contains("\"io.containerd.snapshotter.v1\"") {
        return Err(dockerd.failure("does not use the containerd image store"));
    }
    let code = http::upgrade_status(Target::Unix(socket), "/grpc");
    if code != 101 {
        return Err(dockerd.failure(&format!(
            "answered POST /grpc with an h2c upgrade with {code}, not 101"
        )));
    }
    Ok(())
}

/// The daemons' PATH: dockerd finds docker-proxy and docker-init, containerd finds
/// containerd-shim-runc-v2, all in the unpacked tree; runc comes from the system.
fn daemon_path(root: &Path) -> OsString {
    let mut dirs = vec![root.join("usr/sbin"), root.join("usr/bin")];
    dirs.extend(
        [
            "/usr/local/sbin",
            "/usr/local/bin",
            "/usr/sbin",
            "/usr/bin",
            "/sbin",
            "/bin",
        ]
        .map(PathBuf::from),
    );
    std::env::join_paths(dirs).unwrap_or_default()
}
