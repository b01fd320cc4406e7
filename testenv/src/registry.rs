//! A registry (distribution 2.8, Debian's `docker-registry`, unpacked by `scripts/testenv`):
//! the plain-HTTP one every test pushes to, and the ECR stand-in that asks for HTTP Basic
//! auth with the login moto's GetAuthorizationToken hands out.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::http::{self, Target};
use crate::leftovers::Folder;
use crate::process::{Daemon, Launch};

/// How a registry is set up.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Its name in messages and its log's name ("registry", "ecr-registry").
    pub name: String,
    /// The `docker-registry` binary.
    pub binary: PathBuf,
    /// Its folder (config, data; removed on drop).
    pub dir: PathBuf,
    /// The log file.
    pub log: PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// HTTP Basic auth with this user and password, or none.
    pub login: Option<(String, String)>,
    /// How long it may take to answer.
    pub timeout: Duration,
    /// Start it so that the kernel kills it with the starting thread
    /// ([`Launch::die_with_parent`]).
    pub die_with_parent: bool,
}

/// A running registry.
#[derive(Debug)]
pub struct Registry {
    /// Declared before the folder: the process ends before its folder goes.
    daemon: Daemon,
    folder: Folder,
    addr: String,
}

impl Registry {
    /// Writes its config (and htpasswd), starts it and returns once `/v2/` answers (200, or
    /// 401 with a login). Refuses a port something else already serves: that would take the
    /// tests' pushes silently.
    pub fn start(config: &RegistryConfig) -> Result<Registry> {
        let addr = format!("127.0.0.1:{}", config.port);
        if http::port_taken(config.port) {
            return Err(Error::msg(format!(
                "{addr} (for the {}) is already taken by another process; stop it or set PF_TEST_REGISTRY_PORT",
                config.name
            )));
        }
        let folder = Folder::fresh(&config.dir)?;
        let auth = match &config.login {
            None => String::new(),
            Some((user, password)) => {
                let htpasswd = folder.join("htpasswd");
                // Cost 5 (bcrypt's minimum is 4): the registry checks it on every request.
                let hash = bcrypt::hash(password, 5)
                    .map_err(|e| Error::msg(format!("bcrypt for {}: {e}", config.name)))?;
                write(&htpasswd, &format!("{user}:{hash}\n"))?;
                format!(
                    "auth:\n  htpasswd:\n    realm: ecr-stand-in\n    path: {}\n",
                    htpasswd.display()
                )
            }
        };
        let yml = folder.join("config.yml");
        write(
            &yml,
            &format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 {auth}http:\n  addr: {addr}\n",
                folder.join("data").display()
            ),
        )?;
        let mut launch = Launch::new(&config.name, &config.binary, &config.log)
            .args(["serve".as_ref(), yml.as_os_str()])
            .grace(Duration::from_secs(10));
        if config.die_with_parent {
            launch = launch.die_with_parent();
        }
        let mut daemon = launch.start()?;
        let want = if config.login.is_some() { 401 } else { 200 };
        daemon.wait_ready(
            &format!("answer {want} on http://{addr}/v2/"),
            config.timeout,
            || http::status(Target::Tcp(&addr), "/v2/") == want,
        )?;
        Ok(Registry {
            daemon,
            folder,
            addr,
        })
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
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

/// Writes a whole file, naming it in the error.
pub(crate) fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(Error::file("write", path))
}
