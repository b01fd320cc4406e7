//! moto's server (PyPI `moto[server]`, installed by `scripts/testenv`): the AWS stand-in for
//! STS and ECR. Two run: one that accepts any signature, and one that checks signatures and
//! IAM policies, for wrong secrets and access denied.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::http::{self, Target};
use crate::leftovers::Folder;
use crate::process::{Daemon, Launch};
use crate::registry::write;

/// The script moto runs as: its command line then names the folder, so a leftover of a
/// killed run is recognisable as ours.
const SERVER_PY: &str = "import sys\nfrom moto.server import main\nsys.exit(main(sys.argv[1:]))\n";

/// A running moto server.
#[derive(Debug)]
pub struct Moto {
    daemon: Daemon,
    folder: Folder,
    url: String,
}

impl Moto {
    /// Starts moto on `127.0.0.1:port` with its files in `dir`, and returns once its
    /// `/moto-api/` answers. With `enforce_iam`, signatures and IAM policies are checked,
    /// and the user `pf-denied` (no policy at all) gets an access key, written to
    /// `dir/keys` as "KEY SECRET".
    pub fn start(
        name: &str,
        dir: &Path,
        log: &Path,
        port: u16,
        enforce_iam: bool,
        timeout: Duration,
        die_with_parent: bool,
    ) -> Result<Moto> {
        let addr = format!("127.0.0.1:{port}");
        if http::port_taken(port) {
            return Err(Error::msg(format!(
                "{addr} (for {name}) is already taken by another process; set PF_TEST_REGISTRY_PORT"
            )));
        }
        let folder = Folder::fresh(dir)?;
        let script = folder.join("moto-server.py");
        write(&script, SERVER_PY)?;
        let mut launch = Launch::new(name, "python3", log)
            .args([
                script.as_os_str(),
                "-H".as_ref(),
                "127.0.0.1".as_ref(),
                "-p".as_ref(),
            ])
            .args([port.to_string()])
            .grace(Duration::from_secs(10));
        if enforce_iam {
            // The first two calls need no signature: they create the user and its key.
            launch.cmd().env("INITIAL_NO_AUTH_ACTION_COUNT", "2");
        }
        if die_with_parent {
            launch = launch.die_with_parent();
        }
        let mut daemon = launch.start()?;
        daemon.wait_ready(
            &format!("answer on http://{addr}/moto-api/"),
            timeout,
            || http::status(Target::Tcp(&addr), "/moto-api/") == 200,
        )?;
        let moto = Moto {
            daemon,
            folder,
            url: format!("http://{addr}"),
        };
        if enforce_iam {
            moto.make_denied_user()?;
        }
        Ok(moto)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Its folder.
    pub fn dir(&self) -> &Path {
        self.folder.path()
    }

    /// Its process.
    pub fn daemon(&mut self) -> &mut Daemon {
        &mut self.daemon
    }

    /// The file with the `pf-denied` user's "KEY SECRET" (the IAM-enforcing moto only).
    pub fn keys_file(&self) -> PathBuf {
        self.folder.join("keys")
    }

    fn make_denied_user(&self) -> Result<()> {
        let addr = self.url.trim_start_matches("http://");
        // The IAM service is chosen by the credential scope; the free calls need no signature.
        let auth = "AWS4-HMAC-SHA256 Credential=AKIDBOOTSTRAP/20260101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0";
        let call = |action: &str| -> Result<String> {
            let path = format!("/?Action={action}&UserName=pf-denied&Version=2010-05-08");
            let r = http::request(
                Target::Tcp(addr),
                "GET",
                &path,
                &[("Authorization", auth)],
                &[],
            )
            .map_err(Error::ctx(format!("moto-iam at {addr}: {action}")))?;
            if r.status != 200 {
                return Err(Error::msg(format!(
                    "moto-iam at {addr} refused {action}: {}",
                    r.status
                )));
            }
            Ok(String::from_utf8_lossy(&r.body).into_owned())
        };
        call("CreateUser")?;
        let xml = call("CreateAccessKey")?;
        let field = |tag: &str| {
            let open = format!("<{tag}>");
            let start = xml.find(&open)? + open.len();
            let len = xml[start..].find('<')?;
            Some(xml[start..start + len].to_owned())
        };
        let (Some(key), Some(secret)) = (field("AccessKeyId"), field("SecretAccessKey")) else {
            return Err(Error::msg(format!("moto-iam at {addr} gave no access key")));
        };
        write(&self.keys_file(), &format!("{key} {secret}\n"))
    }
}
