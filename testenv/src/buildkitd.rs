//! The standalone buildkitd every standalone-tier test shares (upstream's static binary,
//! unpacked by `scripts/testenv`): rootful with the machine's runc, its own root, a unix
//! socket and a TCP port on 127.0.0.1, and a config that lets it pull from and push to the
//! plain-HTTP test registry.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::http;
use crate::leftovers::{self, Folder};
use crate::process::{Daemon, Launch};
use crate::registry::write;

/// How the shared buildkitd is set up.
#[derive(Debug, Clone)]
pub struct BuildkitdConfig {
    /// The buildkitd binary.
    pub binary: PathBuf,
    /// Its folder (config, root, sockets).
    pub dir: PathBuf,
    /// The log file.
    pub log: PathBuf,
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    /// The registry (`HOST:PORT`) it reaches over plain HTTP.
    pub registry: String,
    /// `overlayfs`, `native` or `auto`.
    pub snapshotter: String,
    /// How long it may take to serve.
    pub timeout: Duration,
    /// See [`Launch::die_with_parent`].
    pub die_with_parent: bool,
}

/// A running shared buildkitd.
#[derive(Debug)]
pub struct SharedBuildkitd {
    daemon: Daemon,
    folder: Folder,
    tcp: String,
}

impl SharedBuildkitd {
    /// Writes the config, starts the daemon and returns once its TCP port answers gRPC and
    /// its socket exists.
    pub fn start(config: &BuildkitdConfig) -> Result<SharedBuildkitd> {
        let tcp = format!("127.0.0.1:{}", config.port);
        if http::port_taken(config.port) {
            return Err(Error::msg(format!(
                "{tcp} is already taken by another process; set PF_TEST_BUILDKIT_PORT"
            )));
        }
        // A killed run's containers and mounts go before the folder is emptied.
        leftovers::buildkit_leftovers(&config.dir.join("root"));
        let folder = Folder::fresh(&config.dir)?;
        let runc = on_path("runc")
            .ok_or_else(|| Error::msg("runc is not installed (scripts/testenv installs it)"))?;
        let toml = folder.join("buildkitd.toml");
        write(
            &toml,
            &config_text(folder.path(), &runc, &config.snapshotter, &config.registry),
        )?;
        let socket = folder.join("buildkitd.sock");
        let mut launch = Launch::new("buildkitd", &config.binary, &config.log)
            .args(["--config".as_ref(), toml.as_os_str()])
            .args(["--root".as_ref(), folder.join("root").as_os_str()])
            .args([format!("--addr=unix://{}", socket.display())])
            .args([format!("--addr=tcp://{tcp}")])
            .grace(Duration::from_secs(15));
        if config.die_with_parent {
            launch = launch.die_with_parent();
        }
        let mut daemon = launch.start()?;
        daemon.wait_ready(
            &format!("gRPC answer on tcp://{tcp}"),
            config.timeout,
            || socket.exists() && http::speaks_h2(&tcp),
        )?;
        Ok(SharedBuildkitd {
            daemon,
            folder,
            tcp,
        })
    }

    /// `tcp://127.0.0.1:PORT`.
    pub fn tcp_addr(&self) -> String {
        format!("tcp://{}", self.tcp)
    }

    /// Its folder.
    pub fn dir(&self) -> &Path {
        self.folder.path()
    }

    /// Its process.
    pub fn daemon(&mut self) -> &mut Daemon {
        &mut self.daemon
    }
}

impl Drop for SharedBuildkitd {
    fn drop(&mut self) {
        self.daemon.stop();
        leftovers::buildkit_leftovers(&self.folder.join("root"));
    }
}

/// A buildkitd configuration with every path under `dir`: two daemons never share a file
/// (the trace socket defaults to one path for every daemon on the machine, and two starting
/// at once raced on it: "chown /run/buildkit/otel-grpc.sock: no such file").
pub fn config_text(dir: &Path, runc: &Path, snapshotter: &str, registry: &str) -> String {
    let mut text = String::from("# buildkitd configuration written by pf-testenv\n");
    let _ = writeln!(
        text,
        "[otel]\n  socketPath = {:?}",
        dir.join("otel-grpc.sock").display().to_string()
    );
    let _ = writeln!(
        text,
        "[worker.oci]\n  enabled = true\n  snapshotter = {snapshotter:?}\n  binary = {:?}\n  gc = false",
        runc.display().to_string()
    );
    text.push_str("[worker.containerd]\n  enabled = false\n");
    // The test registry speaks plain HTTP.
    let _ = writeln!(text, "[registry.{registry:?}]\n  http = true");
    text
}

/// The first `name` on `PATH` (what a daemon's own lookup would find), for a config file
/// that names the binary.
pub fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into(), "/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}
