//! Where everything lives and which ports it takes: read once from the environment, with the
//! defaults `scripts/testenv` has always used, so that a second environment (another folder,
//! other ports) can run beside the shared one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::kube;

/// The account the ECR stand-in plays, and the host name its registry goes by.
pub const ECR_ACCOUNT: &str = "123456789012";

/// The repository and tag of the busybox base image the tests build `FROM`.
pub const BASE_REPO: &str = "pf-test/busybox";
/// The repository of the SBOM generator image (the base plus `scripts/sbom-scan`).
pub const SBOM_REPO: &str = "pf-test/sbom-generator";
/// The tag both images are pushed under.
pub const IMAGE_TAG: &str = "latest";

/// The standalone daemon's version (the file name `scripts/testenv` unpacks it under).
pub const BUILDKIT_VERSION: &str = "v0.32.2";

/// The compressed binaries of the Kubernetes tier in its shared folder (with a README.md
/// giving their sha256), as `scripts/testenv` looks for them.
pub const KUBE_FILES: [&str; 3] = [
    "etcd-v3.5.30-linux-amd64.xz",
    "kube-apiserver-v1.36.2-linux-amd64.xz",
    "kubelet-portforward-v1.36.2-linux-amd64.xz",
];

/// The environment's settings. Every path is absolute: daemons get them on their command
/// lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The scratch folder (`PF_TESTENV_DIR`, default `/tmp/pf-buildkit-testenv`).
    pub dir: PathBuf,
    /// Unpacked packages, binaries and image files (`PF_TESTENV_CACHE`, default
    /// `/var/cache/pf-buildkit-testenv`), made by `scripts/testenv`.
    pub cache: PathBuf,
    /// The registry's port on 127.0.0.1 (`PF_TEST_REGISTRY_PORT`, default 5000).
    pub registry_port: u16,
    /// The standalone buildkitd's TCP port (`PF_TEST_BUILDKIT_PORT`, default the registry
    /// port + 1000, or - 1000 when that does not fit).
    pub buildkit_port: u16,
    /// How long each daemon may take to be ready (`PF_TESTENV_TIMEOUT` seconds, default 60).
    pub timeout: Duration,
    /// `overlayfs` or `native` (`PF_TESTENV_SNAPSHOTTER`), else probed in the scratch folder.
    pub snapshotter: Option<String>,
    /// The compressed buildkitd fixture (`PF_TESTENV_BUILDKIT`, default
    /// `../shared/buildkit/buildkitd-v0.32.2-linux-amd64.xz` beside the project): the
    /// standalone tier runs only when it exists (and `scripts/testenv` unpacked it).
    pub buildkit_xz: PathBuf,
    /// The first of the Kubernetes tier's five ports (`PF_TEST_KUBE_PORT`, default the
    /// registry port + 1400): etcd, etcd's peers, the API server, the kubelet handler, the
    /// token webhook a test serves.
    pub kube_port: u16,
    /// The folder with the tier's compressed binaries and their README (`PF_TESTENV_KUBE`,
    /// default `../shared/kube` beside the project).
    pub kube_shared: PathBuf,
}

impl Settings {
    /// Reads the settings from the environment; a malformed value is an error naming it.
    pub fn from_env() -> Result<Settings> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let port = |name: &str, default: u16| -> Result<u16> {
            match var(name) {
                None => Ok(default),
                Some(v) => v
                    .parse()
                    .map_err(|_| Error::msg(format!("{name} must be a port number, not {v:?}"))),
            }
        };
        let registry_port = port("PF_TEST_REGISTRY_PORT", 5000)?;
        if registry_port > u16::MAX - 201 {
            return Err(Error::msg(
                "PF_TEST_REGISTRY_PORT must leave room for the ECR stand-in (+100) and moto (+200, +201)",
            ));
        }
        let default_bk = registry_port
            .checked_add(1000)
            .unwrap_or(registry_port.saturating_sub(1000));
        let timeout = match var("PF_TESTENV_TIMEOUT") {
            None => 60,
            Some(v) => v.parse().map_err(|_| {
                Error::msg(format!(
                    "PF_TESTENV_TIMEOUT must be whole seconds, not {v:?}"
                ))
            })?,
        };
        let kube_port = port(
            "PF_TEST_KUBE_PORT",
            registry_port
                .checked_add(1400)
                .unwrap_or(registry_port - 1400),
        )?;
        if kube_port > u16::MAX - 4 {
            return Err(Error::msg(
                "PF_TEST_KUBE_PORT must be a port number below 65532 (the tier takes five)",
            ));
        }
        Ok(Settings {
            dir: absolute(var("PF_TESTENV_DIR").unwrap_or("/tmp/pf-buildkit-testenv".into())),
            cache: absolute(
                var("PF_TESTENV_CACHE").unwrap_or("/var/cache/pf-buildkit-testenv".into()),
            ),
            registry_port,
            buildkit_port: port("PF_TEST_BUILDKIT_PORT", default_bk)?,
            timeout: Duration::from_secs(timeout),
            snapshotter: var("PF_TESTENV_SNAPSHOTTER"),
            buildkit_xz: absolute(var("PF_TESTENV_BUILDKIT").unwrap_or_else(|| {
                format!(
                    "{}/../../shared/buildkit/buildkitd-{BUILDKIT_VERSION}-linux-amd64.xz",
                    env!("CARGO_MANIFEST_DIR")
                )
            })),
            kube_port,
            kube_shared: absolute(
                var("PF_TESTENV_KUBE")
                    .unwrap_or_else(|| format!("{}/../../shared/kube", env!("CARGO_MANIFEST_DIR"))),
            ),
        })
    }

    /// `127.0.0.1:PORT` of the plain-HTTP registry.
    pub fn registry(&self) -> String {
        format!("127.0.0.1:{}", self.registry_port)
    }

    /// The ECR stand-in registry's port (the registry port + 100).
    pub fn ecr_port(&self) -> u16 {
        self.registry_port + 100
    }

    /// The ECR stand-in's host name (mapped to 127.0.0.1 in /etc/hosts).
    pub fn ecr_name(&self) -> String {
        format!("{ECR_ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com")
    }

    /// moto's port (the registry port + 200); the IAM-enforcing moto takes the next one.
    pub fn moto_port(&self) -> u16 {
        self.registry_port + 200
    }

    /// The folder of unpacked packages (`usr/bin`, `usr/sbin`, …).
    pub fn root(&self) -> PathBuf {
        self.cache.join("root")
    }

    /// The unpacked standalone buildkitd, when its fixture is at hand and `scripts/testenv`
    /// unpacked it.
    pub fn buildkitd_binary(&self) -> Option<PathBuf> {
        let bin = self
            .cache
            .join("buildkit")
            .join(format!("buildkitd-{BUILDKIT_VERSION}"));
        (self.buildkit_xz.is_file() && bin.is_file()).then_some(bin)
    }

    /// The Docker Engine's socket.
    pub fn docker_socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    /// The shared buildkitd's folder (root, socket, config).
    pub fn buildkit_dir(&self) -> PathBuf {
        self.dir.join("buildkit")
    }

    /// Where the buildkitds tests start themselves live (`PF_TEST_BUILDKITD_PRIVATE_DIR`).
    pub fn buildkit_private_dir(&self) -> PathBuf {
        self.dir.join("buildkit-private")
    }

    /// Whether the tier's shared folder holds its binaries and README (else it is skipped).
    pub fn kube_shared_present(&self) -> bool {
        self.kube_shared.join("README.md").is_file()
            && KUBE_FILES
                .iter()
                .all(|f| self.kube_shared.join(f).is_file())
    }

    /// The folder of the unpacked etcd, kube-apiserver and kubelet handler, when their shared
    /// files are at hand and `scripts/testenv` unpacked them all.
    pub fn kube_binaries(&self) -> Option<PathBuf> {
        let bin = self.cache.join("kube");
        let unpacked = [kube::ETCD, kube::APISERVER, kube::KUBELET]
            .iter()
            .all(|b| bin.join(b).is_file());
        (self.kube_shared_present() && unpacked).then_some(bin)
    }

    /// The tier's ports.
    pub fn kube_ports(&self) -> kube::Ports {
        kube::Ports::consecutive(self.kube_port)
            .unwrap_or_else(|| unreachable!("checked when read"))
    }

    /// The tier's control plane's folder (credentials, etcd's data, audit log, kubeconfig).
    pub fn kube_dir(&self) -> PathBuf {
        self.dir.join("kube")
    }

    /// Where the control planes tests start themselves live (`PF_TEST_KUBE_PRIVATE_DIR`).
    pub fn kube_private_dir(&self) -> PathBuf {
        self.dir.join("kube-private")
    }

    /// The `export NAME=VALUE` lines the tests read, for what this environment runs: the
    /// same names and meanings `scripts/testenv` has always printed. The Kubernetes tier's
    /// lines need the standalone buildkitd's.
    pub fn env_lines(&self, with_buildkitd: bool, with_kube: bool) -> String {
        let dir = &self.dir;
        let registry = self.registry();
        let moto = self.moto_port();
        let mut lines = vec![
            format!(
                "PF_TEST_DOCKER_HOST=unix://{}",
                self.docker_socket().display()
            ),
            format!("PF_TEST_REGISTRY={registry}"),
            format!("PF_TEST_BASE_IMAGE={registry}/{BASE_REPO}:{IMAGE_TAG}"),
            format!("PF_TEST_SBOM_GENERATOR={registry}/{SBOM_REPO}:{IMAGE_TAG}"),
            format!(
                "PF_TEST_ECR_REGISTRY={}:{}",
                self.ecr_name(),
                self.ecr_port()
            ),
            format!("PF_TEST_MOTO=http://127.0.0.1:{moto}"),
            format!("PF_TEST_MOTO_IAM=http://127.0.0.1:{}", moto + 1),
            format!(
                "PF_TEST_MOTO_IAM_KEYS={}",
                dir.join("moto-iam/keys").display()
            ),
        ];
        if let (true, Some(bin)) = (with_buildkitd, self.buildkitd_binary()) {
            let bk = self.buildkit_dir();
            lines.extend([
                format!(
                    "PF_TEST_BUILDKIT_ADDR=tcp://127.0.0.1:{}",
                    self.buildkit_port
                ),
                format!(
                    "PF_TEST_BUILDKIT_UNIX=unix://{}",
                    bk.join("buildkitd.sock").display()
                ),
                format!("PF_TEST_BUILDKITD={}", bin.display()),
                format!(
                    "PF_TEST_BUILDKITD_PRIVATE_DIR={}",
                    self.buildkit_private_dir().display()
                ),
            ]);
            // The control plane: its address and files (`tokens.csv`, `pki/`, `audit.log`), an
            // admin kubeconfig, the binaries and a folder for the planes tests start.
            if let (true, Some(bin)) = (with_kube, self.kube_binaries()) {
                let ports = self.kube_ports();
                let kube = self.kube_dir();
                lines.extend([
                    format!("PF_TEST_KUBE_SERVER=https://127.0.0.1:{}", ports.apiserver),
                    format!("PF_TEST_KUBE_DIR={}", kube.display()),
                    format!(
                        "PF_TEST_KUBE_KUBECONFIG={}",
                        kube.join("admin.kubeconfig").display()
                    ),
                    format!("PF_TEST_KUBE_WEBHOOK_PORT={}", ports.webhook),
                    format!("PF_TEST_KUBE_KUBELET_PORT={}", ports.kubelet),
                    format!("PF_TEST_KUBE_BIN={}", bin.display()),
                    format!(
                        "PF_TEST_KUBE_PRIVATE_DIR={}",
                        self.kube_private_dir().display()
                    ),
                ]);
            }
        }
        lines.iter().map(|l| format!("export {l}\n")).collect()
    }
}

/// `path` made absolute against the current directory, without resolving links (the folder
/// may not exist yet).
fn absolute(path: String) -> PathBuf {
    let path = Path::new(&path);
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    // `..` components resolved without touching the disk (like `realpath -m`).
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}
