//! The shared environment as one value: every component the tests share, started in order
//! and, when the value drops, stopped in reverse (the Kubernetes tier, the standalone
//! buildkitd, the Engine, the registries, moto). The supervisor process holds one.

use std::path::PathBuf;

use crate::buildkitd::{BuildkitdConfig, SharedBuildkitd};
use crate::engine::{Engine, EngineConfig};
use crate::error::{Error, Result};
use crate::images::CachedImage;
use crate::kube::{self, ControlPlane};
use crate::moto::Moto;
use crate::process::Daemon;
use crate::registry::{Registry, RegistryConfig};
use crate::settings::{ECR_ACCOUNT, Settings};
use crate::snapshotter;

/// The running shared components. Fields drop in declaration order: what uses the registry
/// and the Engine's containerd goes first.
#[derive(Debug)]
pub struct Environment {
    kube: Option<ControlPlane>,
    buildkitd: Option<SharedBuildkitd>,
    engine: Engine,
    registry: Registry,
    ecr_registry: Registry,
    moto: Moto,
    moto_iam: Moto,
}

impl Environment {
    /// Starts everything `settings` describe, from processes of this thread (see
    /// [`Launch::die_with_parent`](crate::Launch::die_with_parent)). `cancelled` is asked
    /// between steps: when it says yes, what runs is stopped and the start fails.
    pub fn start(settings: &Settings, cancelled: &mut dyn FnMut() -> bool) -> Result<Environment> {
        let dir = &settings.dir;
        let logs = dir.join("logs");
        let root = settings.root();
        let timeout = settings.timeout;
        let step = |cancelled: &mut dyn FnMut() -> bool| {
            if cancelled() {
                Err(Error::msg("interrupted while starting"))
            } else {
                Ok(())
            }
        };
        let snapshotter = snapshotter::pick(dir, settings.snapshotter.as_deref());
        let engine = Engine::start(&EngineConfig {
            root: root.clone(),
            dir: dir.clone(),
            logs: logs.clone(),
            snapshotter: snapshotter.clone(),
            timeout,
            die_with_parent: true,
        })?;
        step(cancelled)?;
        let registry_binary = root.join("usr/bin/docker-registry");
        let registry = Registry::start(&RegistryConfig {
            name: "registry".into(),
            binary: registry_binary.clone(),
            dir: dir.join("registry"),
            log: logs.join("registry.log"),
            port: settings.registry_port,
            login: None,
            timeout,
            die_with_parent: true,
        })?;
        step(cancelled)?;
        let moto = Moto::start(
            "moto",
            &dir.join("moto"),
            &logs.join("moto.log"),
            settings.moto_port(),
            false,
            timeout,
            true,
        )?;
        step(cancelled)?;
        let moto_iam = Moto::start(
            "moto-iam",
            &dir.join("moto-iam"),
            &logs.join("moto-iam.log"),
            settings.moto_port() + 1,
            true,
            timeout,
            true,
        )?;
        step(cancelled)?;
        map_ecr_name(&settings.ecr_name())?;
        let ecr_registry = Registry::start(&RegistryConfig {
            name: "ecr-registry".into(),
            binary: registry_binary,
            dir: dir.join("ecr-registry"),
            log: logs.join("ecr-registry.log"),
            port: settings.ecr_port(),
            // moto's deterministic login for the account.
            login: Some(("AWS".into(), format!("{ECR_ACCOUNT}-auth-token"))),
            timeout,
            die_with_parent: true,
        })?;
        step(cancelled)?;
        for image in [
            CachedImage::base(&settings.cache),
            CachedImage::sbom_generator(&settings.cache),
        ] {
            image.push(registry.addr())?;
        }
        step(cancelled)?;
        let buildkitd = match settings.buildkitd_binary() {
            None => None,
            Some(binary) => {
                std::fs::create_dir_all(settings.buildkit_private_dir())
                    .map_err(Error::file("create", &settings.buildkit_private_dir()))?;
                Some(SharedBuildkitd::start(&BuildkitdConfig {
                    binary,
                    dir: settings.buildkit_dir(),
                    log: logs.join("buildkitd.log"),
                    port: settings.buildkit_port,
                    registry: settings.registry(),
                    snapshotter,
                    timeout,
                    die_with_parent: true,
                })?)
            }
        };
        step(cancelled)?;
        let kube = match (&buildkitd, settings.kube_binaries()) {
            (Some(_), Some(bin)) => Some(start_kube(settings, bin)?),
            _ => None,
        };
        write_cli_wrapper(settings)?;
        Ok(Environment {
            kube,
            buildkitd,
            engine,
            registry,
            ecr_registry,
            moto,
            moto_iam,
        })
    }

    /// Stops everything in the order the fields drop, saying on stderr how long each part
    /// took (what a slow `stop` spent its time on).
    pub fn shutdown(self) {
        let Environment {
            kube,
            buildkitd,
            engine,
            registry,
            ecr_registry,
            moto,
            moto_iam,
        } = self;
        timed("the Kubernetes tier", || drop(kube));
        timed("buildkitd", || drop(buildkitd));
        timed("the Engine", || drop(engine));
        timed("the registries", || drop((registry, ecr_registry)));
        timed("moto", || drop((moto, moto_iam)));
    }

    /// Whether the standalone buildkitd runs.
    pub fn has_buildkitd(&self) -> bool {
        self.buildkitd.is_some()
    }

    /// Whether the Kubernetes tier runs.
    pub fn has_kube(&self) -> bool {
        self.kube.is_some()
    }

    /// Each process's name and pid, in start order.
    pub fn processes(&mut self) -> Vec<(String, u32)> {
        self.daemons()
            .into_iter()
            .map(|d| (d.name().to_owned(), d.pid()))
            .collect()
    }

    fn daemons(&mut self) -> Vec<&mut Daemon> {
        let mut daemons = Vec::from(self.engine.daemons());
        daemons.extend([
            self.registry.daemon(),
            self.ecr_registry.daemon(),
            self.moto.daemon(),
            self.moto_iam.daemon(),
        ]);
        if let Some(b) = self.buildkitd.as_mut() {
            daemons.push(b.daemon());
        }
        if let Some(k) = self.kube.as_mut() {
            daemons.extend(k.daemons());
        }
        daemons
    }

    /// The first component whose process has exited, with its log's last lines.
    pub fn exited(&mut self) -> Option<Error> {
        self.daemons()
            .into_iter()
            .find_map(|d| (!d.running()).then(|| d.failure("exited")))
    }
}

/// The Kubernetes tier: a control plane with credentials of its own, on the settings' ports,
/// whose kubelet handler takes every pod's port to the standalone buildkitd; and the folder
/// for the planes tests start themselves (with this one's credentials).
fn start_kube(settings: &Settings, bin: PathBuf) -> Result<ControlPlane> {
    let private = settings.kube_private_dir();
    std::fs::create_dir_all(&private).map_err(Error::file("create", &private))?;
    ControlPlane::start(kube::Spec {
        bin,
        dir: settings.kube_dir(),
        logs: settings.dir.join("logs"),
        ports: settings.kube_ports(),
        credentials_of: None,
        pods_reach: Some(format!("127.0.0.1:{}", settings.buildkit_port)),
        timeout: settings.timeout,
        die_with_parent: true,
    })
    .map_err(|e| Error::msg(format!("the Kubernetes tier: {e}")))
}

fn timed(what: &str, stop: impl FnOnce()) {
    let t0 = std::time::Instant::now();
    stop();
    eprintln!("testenv: stopped {what} in {:.1?}", t0.elapsed());
}

/// The daemons resolve the ECR stand-in's host name themselves: one line in /etc/hosts maps
/// it to loopback (added once, nothing else changed).
fn map_ecr_name(name: &str) -> Result<()> {
    let hosts = PathBuf::from("/etc/hosts");
    let text = std::fs::read_to_string(&hosts).map_err(Error::file("read", &hosts))?;
    let mapped = text.lines().any(|l| {
        let mut words = l.split_whitespace();
        words.next() == Some("127.0.0.1") && words.next() == Some(name) && words.next().is_none()
    });
    if mapped {
        return Ok(());
    }
    let sep = if text.is_empty() || text.ends_with('\n') {
        ""
    } else {
        "\n"
    };
    std::fs::write(&hosts, format!("{text}{sep}127.0.0.1 {name}\n"))
        .map_err(Error::file("write", &hosts))
}

/// A docker CLI bound to this Engine, with its own config folder (for buildx).
fn write_cli_wrapper(settings: &Settings) -> Result<()> {
    let bin = settings.dir.join("bin");
    let config = settings.dir.join("docker-config");
    for d in [&bin, &config] {
        std::fs::create_dir_all(d).map_err(Error::file("create", d))?;
    }
    let wrapper = bin.join("docker");
    let socket = settings.docker_socket();
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n# docker CLI (trixie's) for the test engine at {s}\n\
             DOCKER_CONFIG=\"{c}\" exec \"{r}/usr/bin/docker\" -H \"unix://{s}\" \"$@\"\n",
            s = socket.display(),
            c = config.display(),
            r = settings.root().display()
        ),
    )
    .map_err(Error::file("write", &wrapper))?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
        .map_err(Error::file("chmod", &wrapper))
}
