//! Registry credentials from the Docker CLI's config file (`$DOCKER_CONFIG/config.json` or
//! `~/.docker/config.json`): `auths`, `credHelpers` and `credsStore`; and, for ECR hosts the
//! config says nothing about, a login from ECR itself (no `docker login`, no helper program).
//!
//! Border: it uses [`crate::aws`] for ECR logins and nothing else of the crate; it must not import
//! `buildkit`, `fleet`, `multiplatform` or `config`.

use std::collections::HashMap;
use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use futures_util::future::BoxFuture;
use serde::Deserialize;

#[cfg(feature = "aws")]
use crate::aws::{AwsError, EcrCredentials, EcrHost};
/// How long a credential helper may take to answer. Cloud helpers call their provider's API;
/// a helper waiting on a locked keychain or a prompt nobody sees must not hang a push.
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(30);

/// The key Docker Hub's credentials are stored under in the docker config.
const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// Why credentials could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialsError {
    /// A [`CredentialsProvider`] of the caller's own failed.
    #[error("cannot get credentials for {registry}")]
    Provider {
        /// The registry host asked about.
        registry: String,
        /// The provider's own error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The config file exists but cannot be read.
    #[error("cannot read docker config {path}")]
    Read {
        /// The docker config file (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`).
        path: PathBuf,
        /// The I/O error from reading it (a missing file is no error: it means no credentials).
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid JSON of the expected shape.
    #[error("docker config {path} is not valid")]
    Parse {
        /// The docker config file, or `<memory>` for text given directly.
        path: PathBuf,
        /// Where the JSON parser stopped and why (its text gives line and column).
        #[source]
        source: serde_json::Error,
    },
    /// An `auth` entry is not base64 of `user:password`.
    #[error("docker config {path}: the auth entry for {registry} is not base64 of user:password")]
    BadAuth {
        /// The docker config file, or `<memory>` for text given directly.
        path: PathBuf,
        /// The registry key of the entry.
        registry: String,
    },
    /// A configured credential helper failed.
    #[error("credential helper docker-credential-{helper} failed for {registry}: {message}")]
    Helper {
        /// The helper's suffix (`docker-credential-<helper>`).
        helper: String,
        /// The key the helper was asked about on stdin: the registry host, or
        /// `https://index.docker.io/v1/` for Docker Hub.
        registry: String,
        /// What went wrong, with the helper's own stderr when it said something (never the
        /// secret, which a helper prints on stdout).
        message: String,
    },
    /// An ECR registry's login could not be had from AWS.
    #[cfg(feature = "aws")]
    #[cfg_attr(docsrs, doc(cfg(feature = "aws")))]
    #[error("cannot get credentials for ECR registry {registry}")]
    Ecr {
        /// The ECR registry host, `ACCOUNT.dkr.ecr.REGION.amazonaws.com`.
        registry: String,
        /// What AWS (or the credential chain) said.
        #[source]
        source: AwsError,
    },
    /// A configured credential helper could not be run or talked to.
    #[error("credential helper docker-credential-{helper} for {registry}: cannot {action}")]
    HelperIo {
        /// The helper's suffix (`docker-credential-<helper>`).
        helper: String,
        /// The key the helper was asked about, as in [`Self::Helper`].
        registry: String,
        /// What failed: "run it", "write to it", "read its answer".
        action: &'static str,
        /// The I/O error from starting the program or using its pipes (`NotFound` when it is not on
        /// `PATH`).
        #[source]
        source: std::io::Error,
    },
}

/// Where registry credentials come from, asked once per registry host when they are needed:
/// for the daemon's pushes and pulls during a build (the session's Auth service), through
/// [`BuildOptions::credentials`](crate::buildkit::BuildOptions::credentials).
/// [`DockerConfig`] is one; implement it to serve logins from a secret store of your own.
///
/// ```
/// use futures_util::future::BoxFuture;
/// use pf_buildkit::registry::{Credential, CredentialsError, CredentialsProvider};
///
/// /// One robot account for one registry; anonymous elsewhere.
/// struct Robot;
///
/// impl CredentialsProvider for Robot {
///     fn credentials<'a>(
///         &'a self,
///         registry: &'a str,
///     ) -> BoxFuture<'a, Result<Option<Credential>, CredentialsError>> {
///         Box::pin(async move {
///             Ok((registry == "registry.example").then(|| Credential::Basic {
///                 username: "robot".into(),
///                 password: std::env::var("ROBOT_TOKEN").unwrap_or_default(),
///             }))
///         })
///     }
/// }
/// ```
pub trait CredentialsProvider: Send + Sync + 'static {
    /// The credentials for `registry` (`HOST[:PORT]`); `None` means anonymous access.
    ///
    /// # Errors
    /// Why they cannot be had; [`CredentialsError::Provider`] carries an error of your own.
    fn credentials<'a>(
        &'a self,
        registry: &'a str,
    ) -> BoxFuture<'a, Result<Option<Credential>, CredentialsError>>;
}

impl fmt::Debug for dyn CredentialsProvider {
    /// Nothing of what a provider holds: it may be secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CredentialsProvider")
    }
}

/// A provider already shared (one store for several builds or clients) is a provider too, so
/// the same `Arc` can go to every `with_credentials`.
impl<P: CredentialsProvider + ?Sized> CredentialsProvider for Arc<P> {
    fn credentials<'a>(
        &'a self,
        registry: &'a str,
    ) -> BoxFuture<'a, Result<Option<Credential>, CredentialsError>> {
        (**self).credentials(registry)
    }
}

impl CredentialsProvider for DockerConfig {
    fn credentials<'a>(
        &'a self,
        registry: &'a str,
    ) -> BoxFuture<'a, Result<Option<Credential>, CredentialsError>> {
        Box::pin(self.resolve(registry))
    }
}

/// Credentials for one registry. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Credential {
    /// A user name and password (HTTP Basic, or the password grant of a token server).
    Basic {
        /// User name.
        username: String,
        /// Password or access token.
        password: String,
    },
    /// An OAuth2 refresh token (`identitytoken`), exchanged at the registry's token server.
    IdentityToken(String),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Credential::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Clone, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

impl fmt::Debug for AuthEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthEntry")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// A parsed docker config: where each registry's credentials come from.
///
/// Credential helpers (`docker-credential-<name> get`) run only when the config names one,
/// and only when a registry's credentials are asked for. ECR logins (when enabled, as
/// [`DockerConfig::load`] does) are asked of AWS only for an ECR host the file has no entry
/// or helper for; clones share their cache.
#[derive(Debug, Clone, Default)]
pub struct DockerConfig {
    path: Option<PathBuf>,
    file: ConfigFile,
    #[cfg(feature = "aws")]
    ecr: Option<Arc<EcrCredentials>>,
}

impl DockerConfig {
    /// An empty config: anonymous access everywhere (ECR logins off).
    pub fn empty() -> Self {
        Self::default()
    }

    /// Gets logins for ECR hosts from `ecr` when the file has nothing for them.
    #[cfg(feature = "aws")]
    #[cfg_attr(docsrs, doc(cfg(feature = "aws")))]
    pub fn with_ecr(mut self, ecr: Arc<EcrCredentials>) -> Self {
        self.ecr = Some(ecr);
        self
    }

    /// Never asks AWS: ECR hosts are anonymous unless the file has credentials for them.
    /// (Without the `aws` feature that is always so.)
    pub fn without_ecr(self) -> Self {
        Self {
            #[cfg(feature = "aws")]
            ecr: None,
            ..self
        }
    }

    /// The credentials for `registry`: [`DockerConfig::credentials`], then, for an ECR host
    /// with nothing configured, a login from `ecr:GetAuthorizationToken` (when enabled).
    /// Helper programs run off the async workers.
    ///
    /// # Errors
    /// As [`DockerConfig::credentials`], and [`CredentialsError::Ecr`] when AWS fails.
    pub async fn resolve(&self, registry: &str) -> Result<Option<Credential>, CredentialsError> {
        let config = self.clone();
        let key = registry.to_owned();
        let found = tokio::task::spawn_blocking(move || config.credentials(&key))
            .await
            .map_err(|e| CredentialsError::Helper {
                helper: "(credential helper)".into(),
                registry: registry.to_owned(),
                message: e.to_string(),
            })??;
        if found.is_some() {
            return Ok(found);
        }
        #[cfg(not(feature = "aws"))]
        return Ok(None);
        #[cfg(feature = "aws")]
        self.ecr_login(registry).await
    }

    /// A login from ECR for an ECR host, when ECR logins are on.
    #[cfg(feature = "aws")]
    async fn ecr_login(&self, registry: &str) -> Result<Option<Credential>, CredentialsError> {
        let (Some(ecr), Some(host)) = (&self.ecr, EcrHost::parse(registry)) else {
            return Ok(None);
        };
        let login = ecr
            .login(&host)
            .await
            .map_err(|source| CredentialsError::Ecr {
                registry: registry.to_owned(),
                source,
            })?;
        Ok(Some(Credential::Basic {
            username: login.username,
            password: login.password,
        }))
    }

    /// The config the Docker CLI would use: `$DOCKER_CONFIG/config.json`, else
    /// `$HOME/.docker/config.json`. A missing file is an empty config. ECR logins are on.
    ///
    /// # Errors
    /// The file exists but cannot be read or parsed.
    pub fn load() -> Result<Self, CredentialsError> {
        let dir = match std::env::var_os("DOCKER_CONFIG") {
            Some(dir) if !dir.is_empty() => Some(PathBuf::from(dir)),
            _ => std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".docker")),
        };
        let config = match dir {
            Some(dir) => Self::from_file(&dir.join("config.json"))?,
            None => Self::empty(),
        };
        #[cfg(feature = "aws")]
        let config = config.with_ecr(EcrCredentials::shared());
        Ok(config)
    }

    /// Reads one config file; a missing file is an empty config.
    ///
    /// # Errors
    /// The file exists but cannot be read or parsed.
    pub fn from_file(path: &Path) -> Result<Self, CredentialsError> {
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Self::empty()),
            Err(source) => {
                return Err(CredentialsError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let file = serde_json::from_slice(&text).map_err(|source| CredentialsError::Parse {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            path: Some(path.to_owned()),
            file,
            #[cfg(feature = "aws")]
            ecr: None,
        })
    }

    /// Parses config JSON held in memory (for tests and embedding).
    ///
    /// # Errors
    /// The text is not a docker config.
    pub fn from_json(text: &str) -> Result<Self, CredentialsError> {
        let file = serde_json::from_str(text).map_err(|source| CredentialsError::Parse {
            path: PathBuf::from("<memory>"),
            source,
        })?;
        Ok(Self {
            path: None,
            file,
            #[cfg(feature = "aws")]
            ecr: None,
        })
    }

    /// The credentials for `registry` (a host such as `ghcr.io` or `127.0.0.1:5000`), or `None`
    /// for anonymous access. A `credHelpers` entry wins over `auths`, which wins over `credsStore`.
    ///
    /// # Errors
    /// A malformed `auth` entry, or a configured helper that fails.
    pub fn credentials(&self, registry: &str) -> Result<Option<Credential>, CredentialsError> {
        let key = config_key(registry);
        if let Some(helper) = self.file.cred_helpers.get(key) {
            return run_helper(helper, key);
        }
        if let Some(entry) = self.find_auth(key)
            && let Some(found) = self.entry_credential(key, entry)?
        {
            return Ok(Some(found));
        }
        if let Some(store) = self.file.creds_store.as_deref().filter(|s| !s.is_empty()) {
            return run_helper(store, key);
        }
        Ok(None)
    }

    fn find_auth(&self, key: &str) -> Option<&AuthEntry> {
        if let Some(entry) = self.file.auths.get(key) {
            return Some(entry);
        }
        // Older configs store keys as URLs (`https://host/v1/`); match on the host part.
        self.file
            .auths
            .iter()
            .find(|(k, _)| host_of_key(k) == host_of_key(key))
            .map(|(_, v)| v)
    }

    fn entry_credential(
        &self,
        key: &str,
        entry: &AuthEntry,
    ) -> Result<Option<Credential>, CredentialsError> {
        if let Some(token) = entry.identitytoken.as_deref().filter(|t| !t.is_empty()) {
            return Ok(Some(Credential::IdentityToken(token.to_owned())));
        }
        if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
            let bad = || CredentialsError::BadAuth {
                path: self
                    .path
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("<memory>")),
                registry: key.to_owned(),
            };
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|_| bad())?;
            let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
            let (username, password) = decoded.split_once(':').ok_or_else(bad)?;
            return Ok(Some(Credential::Basic {
                username: username.to_owned(),
                password: password.to_owned(),
            }));
        }
        match (&entry.username, &entry.password) {
            (Some(username), Some(password)) if !username.is_empty() => {
                Ok(Some(Credential::Basic {
                    username: username.clone(),
                    password: password.clone(),
                }))
            }
            _ => Ok(None),
        }
    }
}

/// The key a registry host is stored under (Docker Hub keeps its legacy URL).
fn config_key(registry: &str) -> &str {
    match registry {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB_KEY,
        other => other,
    }
}

/// `https://host/v1/` → `host`; `host` → `host`.
fn host_of_key(key: &str) -> &str {
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    rest.split('/').next().unwrap_or(rest)
}

#[derive(Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

/// Runs `docker-credential-<helper> get` with the registry on stdin, as the Docker CLI does.
fn run_helper(helper: &str, registry: &str) -> Result<Option<Credential>, CredentialsError> {
    let program = format!("docker-credential-{helper}");
    run_helper_program(Path::new(&program), helper, registry, HELPER_TIMEOUT)
}

/// [`run_helper`] with the program and the time it may take given.
fn run_helper_program(
    program: &Path,
    helper: &str,
    registry: &str,
    timeout: Duration,
) -> Result<Option<Credential>, CredentialsError> {
    let fail = |message: String| CredentialsError::Helper {
        helper: helper.to_owned(),
        registry: registry.to_owned(),
        message,
    };
    let io = |action: &'static str| {
        move |source| CredentialsError::HelperIo {
            helper: helper.to_owned(),
            registry: registry.to_owned(),
            action,
            source,
        }
    };
    let mut child = Command::new(program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io("run it"))?;
    // Both pipes are drained on their own threads, so a chatty helper never blocks on a full
    // pipe; stdout reaching its end means the helper is done (or has closed it).
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        let (tx, rx) = std::sync::mpsc::channel();
        if let Some(mut pipe) = pipe {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                let result = pipe.read_to_end(&mut bytes).map(|_| bytes);
                let _ = tx.send(result);
            });
        }
        rx
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading its stdin closes the pipe; its exit status
        // then says more than the broken pipe would.
        if let Err(err) = stdin.write_all(registry.as_bytes())
            && err.kind() != std::io::ErrorKind::BrokenPipe
        {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io("write to it")(err));
        }
    }
    let stdout = match stdout.recv_timeout(timeout) {
        Ok(read) => read.map_err(io("read its answer"))?,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(fail(format!(
                "it did not answer within {} s",
                timeout.as_secs()
            )));
        }
    };
    let status = child.wait().map_err(io("read its answer"))?;
    if !status.success() {
        // The helper says "credentials not found in native keychain" on stdout when it has none.
        if String::from_utf8_lossy(&stdout).contains("credentials not found") {
            return Ok(None);
        }
        // What the helper said on stderr is why, in its own words: one line of it.
        let said = stderr
            .recv_timeout(Duration::from_secs(1))
            .ok()
            .and_then(Result::ok)
            .map(|b| {
                String::from_utf8_lossy(&b)
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .filter(|s| !s.is_empty());
        return Err(fail(match said {
            Some(said) => format!("it exited with {status}: {}", truncate(&said, 300)),
            None => format!("it exited with {status}"),
        }));
    }
    let answer: HelperAnswer = serde_json::from_slice(&stdout)
        .map_err(|_| fail("it printed something other than credentials".to_owned()))?;
    if answer.username == "<token>" {
        return Ok(Some(Credential::IdentityToken(answer.secret)));
    }
    Ok(Some(Credential::Basic {
        username: answer.username,
        password: answer.secret,
    }))
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_field_is_base64_user_colon_password() {
        let cfg = DockerConfig::from_json(
            r#"{"auths":{"reg.example:5000":{"auth":"dXNlcjpwYTpzcw=="}}}"#,
        )
        .unwrap();
        assert_eq!(
            cfg.credentials("reg.example:5000").unwrap(),
            Some(Credential::Basic {
                username: "user".into(),
                password: "pa:ss".into()
            })
        );
        assert_eq!(cfg.credentials("other.example").unwrap(), None);
    }

    #[test]
    fn username_password_and_identity_token() {
        let cfg = DockerConfig::from_json(
            r#"{"auths":{"a.example":{"username":"u","password":"p"},
                "https://b.example/v1/":{"identitytoken":"tok"}}}"#,
        )
        .unwrap();
        assert_eq!(
            cfg.credentials("a.example").unwrap(),
            Some(Credential::Basic {
                username: "u".into(),
                password: "p".into()
            })
        );
        assert_eq!(
            cfg.credentials("b.example").unwrap(),
            Some(Credential::IdentityToken("tok".into()))
        );
    }

    #[test]
    fn docker_hub_uses_its_legacy_key() {
        let cfg = DockerConfig::from_json(
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"aHViOnNlY3JldA=="}}}"#,
        )
        .unwrap();
        assert!(matches!(
            cfg.credentials("docker.io").unwrap(),
            Some(Credential::Basic { username, .. }) if username == "hub"
        ));
    }

    #[test]
    fn bad_auth_is_an_error_naming_the_registry() {
        let cfg = DockerConfig::from_json(r#"{"auths":{"x.example":{"auth":"!!!"}}}"#).unwrap();
        let err = cfg.credentials("x.example").unwrap_err().to_string();
        assert!(err.contains("x.example"), "{err}");
    }

    #[test]
    fn missing_helper_is_a_clear_error() {
        let cfg =
            DockerConfig::from_json(r#"{"credHelpers":{"h.example":"pf-test-no-such-helper"}}"#)
                .unwrap();
        let err = cfg.credentials("h.example").unwrap_err().to_string();
        assert!(
            err.contains("docker-credential-pf-test-no-such-helper") && err.contains("h.example"),
            "{err}"
        );
    }

    /// An executable shell script in a temporary directory, standing in for a helper.
    fn helper_script(body: &str) -> (tempfile::TempDir, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docker-credential-pftest");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        (dir, path)
    }

    #[test]
    fn a_helper_that_never_answers_times_out() {
        let (_dir, path) = helper_script("exec sleep 60");
        let started = std::time::Instant::now();
        let err = run_helper_program(&path, "pftest", "h.example", Duration::from_millis(500))
            .unwrap_err()
            .to_string();
        assert!(err.contains("did not answer within"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_failing_helper_shows_its_stderr() {
        let (_dir, path) = helper_script("cat >/dev/null; echo 'keychain is locked' >&2; exit 3");
        let err = run_helper_program(&path, "pftest", "h.example", HELPER_TIMEOUT)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("h.example")
                && err.contains("exit status: 3")
                && err.contains("keychain is locked"),
            "{err}"
        );
    }

    #[test]
    fn a_helper_answer_is_a_credential() {
        let (_dir, path) = helper_script(
            r#"cat >/dev/null; echo '{"ServerURL":"h.example","Username":"u","Secret":"s"}'"#,
        );
        let found = run_helper_program(&path, "pftest", "h.example", HELPER_TIMEOUT).unwrap();
        assert_eq!(
            found,
            Some(Credential::Basic {
                username: "u".into(),
                password: "s".into()
            })
        );
    }

    #[test]
    fn debug_never_shows_secrets() {
        let c = Credential::Basic {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        let t = Credential::IdentityToken("tok-secret".into());
        assert!(!format!("{t:?}").contains("tok-secret"));
    }
}
