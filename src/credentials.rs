//! Registry credentials from the Docker CLI's configuration (`$DOCKER_CONFIG/config.json` or
//! `~/.docker/config.json`): `auths` entries, and `credHelpers` / `credsStore` programs
//! (`docker-credential-<name> get`), run only when the user configured one.
//!
//! Used by the BuildKit session's Auth service and by the registry client.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use serde::Deserialize;

/// The `config.json` key Docker uses for Docker Hub.
pub const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// Credentials for one registry. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name; empty when `secret` is an identity token.
    pub username: String,
    /// Password, access token or identity (refresh) token.
    pub secret: String,
}

impl Credentials {
    /// Whether `secret` is an OAuth identity token rather than a password.
    pub fn is_identity_token(&self) -> bool {
        self.username.is_empty()
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// A problem reading the Docker configuration.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The file exists but cannot be read.
    #[error("cannot read docker config {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid JSON of the expected shape.
    #[error("docker config {path} is not valid JSON")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// An `auth` value is not base64 of `user:password`.
    #[error("docker config {path}: the auth entry for {host} is not base64 of user:password")]
    BadAuth {
        /// The file.
        path: PathBuf,
        /// The registry key.
        host: String,
    },
    /// A credential helper failed.
    #[error("credential helper docker-credential-{helper} failed for {host}: {reason}")]
    Helper {
        /// The helper's name.
        helper: String,
        /// The registry asked about.
        host: String,
        /// What it said (never the secret).
        reason: String,
    },
}

#[derive(Debug, Default, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
}

impl std::fmt::Debug for AuthEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthEntry(<redacted>)")
    }
}

/// The Docker CLI's configuration, as far as registry credentials go.
#[derive(Debug, Default)]
pub struct DockerConfig {
    path: Option<PathBuf>,
    file: ConfigFile,
}

impl DockerConfig {
    /// Loads `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`. A missing file is an
    /// empty configuration (anonymous access).
    ///
    /// # Errors
    /// [`CredentialsError::Read`] or [`CredentialsError::Parse`] for an unreadable or malformed
    /// file.
    pub fn load() -> Result<Self, CredentialsError> {
        let dir = match std::env::var_os("DOCKER_CONFIG") {
            Some(dir) if !dir.is_empty() => Some(PathBuf::from(dir)),
            _ => std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".docker")),
        };
        match dir {
            Some(dir) => Self::load_from(&dir.join("config.json")),
            None => Ok(Self::default()),
        }
    }

    /// Loads a specific `config.json`; a missing file is an empty configuration.
    ///
    /// # Errors
    /// As [`DockerConfig::load`].
    pub fn load_from(path: &Path) -> Result<Self, CredentialsError> {
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self::default());
            }
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
        Ok(DockerConfig {
            path: Some(path.to_owned()),
            file,
        })
    }

    /// Credentials for a registry host as BuildKit names it (`registry-1.docker.io`,
    /// `127.0.0.1:5000`, `ghcr.io`); `Ok(None)` when none are configured.
    ///
    /// A credential helper configured for the host (or `credsStore`) is asked first, as the
    /// Docker CLI does; then the `auths` entry.
    ///
    /// # Errors
    /// [`CredentialsError::BadAuth`] for an undecodable `auth` value,
    /// [`CredentialsError::Helper`] when a configured helper fails.
    pub fn credentials_for(&self, host: &str) -> Result<Option<Credentials>, CredentialsError> {
        let key = config_key(host);
        let helper = self
            .file
            .cred_helpers
            .get(key)
            .or_else(|| self.file.cred_helpers.get(host))
            .or(self.file.creds_store.as_ref());
        if let Some(helper) = helper.filter(|h| !h.is_empty())
            && let Some(creds) = run_helper(helper, key)?
        {
            return Ok(Some(creds));
        }
        let entry = self.file.auths.get(key).or_else(|| {
            // Keys are sometimes written as URLs (`https://host/v1/`): match on the host part.
            self.file
                .auths
                .iter()
                .find(|(k, _)| strip_url(k) == key || strip_url(k) == host)
                .map(|(_, v)| v)
        });
        let Some(entry) = entry else { return Ok(None) };
        self.entry_credentials(key, entry)
    }

    fn entry_credentials(
        &self,
        key: &str,
        entry: &AuthEntry,
    ) -> Result<Option<Credentials>, CredentialsError> {
        if let Some(token) = entry.identitytoken.as_deref().filter(|t| !t.is_empty()) {
            return Ok(Some(Credentials {
                username: String::new(),
                secret: token.to_owned(),
            }));
        }
        if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
            let bad = || CredentialsError::BadAuth {
                path: self.path.clone().unwrap_or_default(),
                host: key.to_owned(),
            };
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|_| bad())?;
            let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
            let (user, pass) = decoded.split_once(':').ok_or_else(bad)?;
            return Ok(Some(Credentials {
                username: user.to_owned(),
                secret: pass.to_owned(),
            }));
        }
        if let (Some(user), Some(pass)) = (&entry.username, &entry.password) {
            return Ok(Some(Credentials {
                username: user.clone(),
                secret: pass.clone(),
            }));
        }
        if let Some(token) = entry.registrytoken.as_deref().filter(|t| !t.is_empty()) {
            return Ok(Some(Credentials {
                username: String::new(),
                secret: token.to_owned(),
            }));
        }
        Ok(None)
    }
}

/// The `config.json` key for a registry host: Docker Hub's hosts map to its legacy URL key.
pub fn config_key(host: &str) -> &str {
    match host {
        "registry-1.docker.io" | "docker.io" | "index.docker.io" => DOCKER_HUB_KEY,
        other => other,
    }
}

fn strip_url(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    key.split('/').next().unwrap_or(key)
}

#[derive(Deserialize)]
struct HelperOutput {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// Runs `docker-credential-<helper> get` with the server URL on stdin.
fn run_helper(helper: &str, key: &str) -> Result<Option<Credentials>, CredentialsError> {
    let program = format!("docker-credential-{helper}");
    let fail = |reason: String| CredentialsError::Helper {
        helper: helper.to_owned(),
        host: key.to_owned(),
        reason,
    };
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run {program}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(key.as_bytes())
            .map_err(|e| fail(e.to_string()))?;
    }
    let output = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if !output.status.success() {
        let said = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        // Helpers say "credentials not found in native keychain" for unknown servers.
        if said.to_ascii_lowercase().contains("not found") {
            return Ok(None);
        }
        return Err(fail(format!("exited with {}", output.status)));
    }
    let parsed: HelperOutput = serde_json::from_slice(&output.stdout)
        .map_err(|_| fail("printed something other than credentials JSON".into()))?;
    if parsed.secret.is_empty() {
        return Ok(None);
    }
    // Docker's convention: the user name `<token>` marks an identity token.
    let username = if parsed.username == "<token>" {
        String::new()
    } else {
        parsed.username
    };
    Ok(Some(Credentials {
        username,
        secret: parsed.secret,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> DockerConfig {
        DockerConfig {
            path: None,
            file: serde_json::from_str(json).unwrap(),
        }
    }

    #[test]
    fn auth_is_decoded_and_hub_maps_to_its_legacy_key() {
        // base64("user:pa:ss")
        let c = config(r#"{"auths":{"https://index.docker.io/v1/":{"auth":"dXNlcjpwYTpzcw=="}}}"#);
        let creds = c.credentials_for("registry-1.docker.io").unwrap().unwrap();
        assert_eq!(creds.username, "user");
        assert_eq!(creds.secret, "pa:ss");
        assert!(c.credentials_for("ghcr.io").unwrap().is_none());
    }

    #[test]
    fn identity_token_has_empty_username() {
        let c = config(r#"{"auths":{"r.example:5000":{"auth":"dTpw","identitytoken":"tok"}}}"#);
        let creds = c.credentials_for("r.example:5000").unwrap().unwrap();
        assert!(creds.is_identity_token());
        assert_eq!(creds.secret, "tok");
    }

    #[test]
    fn url_keys_match_hosts_and_debug_hides_secret() {
        let c =
            config(r#"{"auths":{"https://r.example/v2/":{"username":"u","password":"hunter2"}}}"#);
        let creds = c.credentials_for("r.example").unwrap().unwrap();
        assert_eq!(creds.username, "u");
        assert!(!format!("{creds:?}").contains("hunter2"));
    }

    #[test]
    fn bad_auth_is_an_error() {
        let c = config(r#"{"auths":{"r.example":{"auth":"!!!"}}}"#);
        assert!(matches!(
            c.credentials_for("r.example"),
            Err(CredentialsError::BadAuth { .. })
        ));
    }
}
