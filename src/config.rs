//! Panfactum's client configuration: the repository root, its `buildkit_dir`, and the
//! `buildkit.json` there (registry, cluster, cache bucket).
//!
//! Border: plain data read from files; it imports no other module of this crate.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The file name of the client configuration inside `buildkit_dir`.
pub const CONFIG_FILE: &str = "buildkit.json";

/// The default `buildkit_dir`, relative to the repository root.
pub const DEFAULT_BUILDKIT_DIR: &str = ".buildkit";

/// What is wrong with the configuration, always naming the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// No ancestor of the start directory is a repository root.
    #[error(
        "no repository root above {start}: none of its ancestors holds .git or panfactum.yaml; run from inside the repository, or give the registry and a builder for each architecture explicitly"
    )]
    NoRepository {
        /// The directory the search started from, made absolute when the working directory is
        /// known.
        start: PathBuf,
    },
    /// A file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file that could not be read: `panfactum.yaml` or `buildkit.json`.
        path: PathBuf,
        /// The I/O error; a missing `buildkit.json` is [`Self::Missing`] instead, and a missing
        /// `panfactum.yaml` is no error.
        #[source]
        source: std::io::Error,
    },
    /// `buildkit.json` does not exist.
    #[error(
        "no BuildKit configuration at {path}: create it with at least {{\"registry\": \"HOST\", \"cluster\": \"KUBE-CONTEXT\"}}, or give the registry and a builder for each architecture explicitly"
    )]
    Missing {
        /// The `buildkit.json` path that was looked for (under `buildkit_dir`, or as given to
        /// [`BuildkitConfig::load`]).
        path: PathBuf,
    },
    /// `buildkit.json` holds nothing but whitespace.
    #[error("{path} is empty: it must hold a JSON object with \"registry\" and \"cluster\"")]
    Empty {
        /// The `buildkit.json` that holds only whitespace.
        path: PathBuf,
    },
    /// The file is not valid JSON, or a field has the wrong type.
    #[error("{path} is not valid")]
    Invalid {
        /// The `buildkit.json` that failed to parse.
        path: PathBuf,
        /// What the parser found, and where (its text gives the line and column).
        #[source]
        source: serde_json::Error,
    },
    /// A field the command needs is missing or empty.
    #[error("{path}: \"{field}\" is missing or empty; {hint}")]
    Field {
        /// The `buildkit.json` the configuration came from; empty for a config made with `Default`.
        path: PathBuf,
        /// The JSON key as written in the file: `registry`, `cluster`, `cache_bucket` or
        /// `cache_bucket_region`.
        field: &'static str,
        /// How to fix it: a clause that follows the semicolon in the message.
        hint: &'static str,
    },
    /// A field holds a value of the right type that means nothing.
    #[error("{path}: \"{field}\" is not valid: {reason}")]
    BadValue {
        /// The `buildkit.json` the value came from.
        path: PathBuf,
        /// The JSON key as written in the file.
        field: &'static str,
        /// What is wrong with it and what to use.
        reason: String,
    },
    /// A directory setting in `panfactum.yaml` is malformed.
    #[error(
        "{path}: {key} must be a relative path without a leading or trailing '/', not {value:?}"
    )]
    BadDir {
        /// The `panfactum.yaml` holding the setting.
        path: PathBuf,
        /// The YAML key, such as `buildkit_dir`.
        key: &'static str,
        /// The value with its quotes and any trailing ` #` comment stripped; may be empty.
        value: String,
    },
}

/// Finds the repository root: the nearest ancestor of `start` (itself included) holding `.git`
/// (a directory, or a file as in worktrees and submodules) or `panfactum.yaml`.
///
/// # Errors
/// [`ConfigError::NoRepository`] when there is none up to `/`.
pub fn find_repo_root(start: &Path) -> Result<PathBuf, ConfigError> {
    let start = std::path::absolute(start).unwrap_or_else(|_| start.to_owned());
    start
        .ancestors()
        .find(|dir| dir.join(".git").exists() || dir.join("panfactum.yaml").is_file())
        .map(Path::to_owned)
        .ok_or(ConfigError::NoRepository { start })
}

/// The `buildkit_dir` of a repository: `panfactum.yaml`'s `buildkit_dir`, default `.buildkit`.
///
/// # Errors
/// When `panfactum.yaml` exists but cannot be read, or its `buildkit_dir` is malformed.
pub fn buildkit_dir(root: &Path) -> Result<PathBuf, ConfigError> {
    let yaml = root.join("panfactum.yaml");
    let value = match std::fs::read_to_string(&yaml) {
        Ok(text) => top_level_scalar(&text, "buildkit_dir"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => return Err(ConfigError::Read { path: yaml, source }),
    };
    let dir = value.unwrap_or_else(|| DEFAULT_BUILDKIT_DIR.to_owned());
    if dir.is_empty() || dir.starts_with('/') || dir.ends_with('/') {
        return Err(ConfigError::BadDir {
            path: yaml,
            key: "buildkit_dir",
            value: dir,
        });
    }
    Ok(root.join(dir))
}

/// Reads a top-level `key: value` scalar from a YAML document. `panfactum.yaml` holds flat
/// string settings; a full YAML parser would be a dependency for one key.
fn top_level_scalar(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.trim_start().strip_prefix(':')?;
        let value = match rest.trim() {
            v if v.starts_with('"') || v.starts_with('\'') => {
                let quote = &v[..1];
                v[1..].split(quote).next().unwrap_or("")
            }
            v => v.split(" #").next().unwrap_or("").trim(),
        };
        Some(value.to_owned())
    })
}

/// A setting that is on, off, or on with options in a flag's syntax.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Toggle {
    /// `true` or `false`.
    Bool(bool),
    /// Options, in the syntax of the matching command-line flag.
    Options(String),
}

/// `buildkit.json`: where images go and which cluster builds them.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct BuildkitConfig {
    /// The registry host, e.g. `123456789012.dkr.ecr.us-east-2.amazonaws.com`.
    #[serde(default)]
    pub registry: Option<String>,
    /// The kubeconfig context of the cluster running the BuildKit fleet.
    #[serde(default)]
    pub cluster: Option<String>,
    /// The S3 bucket of the layer cache, by name (not an `s3://` URL); set together with
    /// `cache_bucket_region`.
    #[serde(default)]
    pub cache_bucket: Option<String>,
    /// The AWS region of `cache_bucket`, such as `us-east-2`.
    #[serde(default)]
    pub cache_bucket_region: Option<String>,
    /// A directory for per-architecture local build caches (`DIR/ARCH`); relative to the
    /// directory of `buildkit.json`.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// Provenance for every cluster build of the repository: `true`, `false`, or the value of
    /// `build --provenance` (`"mode=max"`); the command line's flags win.
    #[serde(default)]
    pub provenance: Option<Toggle>,
    /// An SBOM for every cluster build of the repository; the command line's flags win.
    #[serde(default)]
    pub sbom: Option<bool>,
    /// The SBOM generator image when `sbom` is on, e.g. a copy in the repository's own
    /// registry for an air-gapped cluster.
    #[serde(default)]
    pub sbom_generator: Option<String>,
    /// The `buildkit.json` this was loaded from; empty for a config made with `Default`.
    #[serde(skip)]
    pub path: PathBuf,
}

impl BuildkitConfig {
    /// Loads `<buildkit_dir>/buildkit.json` of the repository that holds `start`.
    ///
    /// # Errors
    /// See [`ConfigError`]: every variant names the file.
    pub fn discover(start: &Path) -> Result<Self, ConfigError> {
        let root = find_repo_root(start)?;
        Self::load(&buildkit_dir(&root)?.join(CONFIG_FILE))
    }

    /// Loads a `buildkit.json`.
    ///
    /// # Errors
    /// When it is missing, empty, not JSON, or a field is not a string.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ConfigError::Missing {
                    path: path.to_owned(),
                });
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        if text.trim().is_empty() {
            return Err(ConfigError::Empty {
                path: path.to_owned(),
            });
        }
        let mut config: BuildkitConfig =
            serde_json::from_str(&text).map_err(|source| ConfigError::Invalid {
                path: path.to_owned(),
                source,
            })?;
        config.path = path.to_owned();
        Ok(config)
    }

    /// The registry, or an error saying how to provide it.
    ///
    /// # Errors
    /// [`ConfigError::Field`] when missing or empty.
    pub fn registry(&self) -> Result<&str, ConfigError> {
        self.field(
            &self.registry,
            "registry",
            "set it to the registry host images are pushed to, or give the registry explicitly",
        )
    }

    /// The cluster's kubeconfig context, or an error saying how to provide it.
    ///
    /// # Errors
    /// [`ConfigError::Field`] when missing or empty.
    pub fn cluster(&self) -> Result<&str, ConfigError> {
        self.field(&self.cluster, "cluster", "set it to the kubeconfig context of the BuildKit cluster, or give the context or a builder for each architecture explicitly")
    }

    /// The local cache directory, resolved against the directory of `buildkit.json`.
    pub fn local_cache_dir(&self) -> Option<PathBuf> {
        let dir = self
            .cache_dir
            .as_ref()
            .filter(|d| !d.as_os_str().is_empty())?;
        Some(match self.path.parent() {
            Some(base) if dir.is_relative() => base.join(dir),
            _ => dir.clone(),
        })
    }

    /// The S3 cache bucket and region, when configured; both or neither.
    ///
    /// # Errors
    /// [`ConfigError::Field`] when one is set without the other.
    pub fn s3_cache(&self) -> Result<Option<(&str, &str)>, ConfigError> {
        let bucket = self.cache_bucket.as_deref().filter(|s| !s.is_empty());
        let region = self
            .cache_bucket_region
            .as_deref()
            .filter(|s| !s.is_empty());
        match (bucket, region) {
            (None, None) => Ok(None),
            (Some(b), Some(r)) => Ok(Some((b, r))),
            (Some(_), None) => Err(self.missing(
                "cache_bucket_region",
                "set the S3 cache bucket's region, or remove cache_bucket",
            )),
            (None, Some(_)) => Err(self.missing(
                "cache_bucket",
                "set the S3 cache bucket, or remove cache_bucket_region",
            )),
        }
    }

    fn field<'a>(
        &self,
        value: &'a Option<String>,
        field: &'static str,
        hint: &'static str,
    ) -> Result<&'a str, ConfigError> {
        value
            .as_deref()
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| self.missing(field, hint))
    }

    fn missing(&self, field: &'static str, hint: &'static str) -> ConfigError {
        ConfigError::Field {
            path: self.path.clone(),
            field,
            hint,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn root_is_nearest_git_or_panfactum_yaml() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("repo");
        std::fs::create_dir_all(repo.join(".git")).unwrap();
        let sub = repo.join("packages/app");
        std::fs::create_dir_all(&sub).unwrap();
        assert_eq!(find_repo_root(&sub).unwrap(), repo);
        write(&sub, "panfactum.yaml", "repo_name: x\n");
        assert_eq!(find_repo_root(&sub.join("")).unwrap(), sub);
        // A worktree's .git is a file.
        let wt = tmp.path().join("wt");
        write(&wt, ".git", "gitdir: elsewhere\n");
        assert_eq!(find_repo_root(&wt).unwrap(), wt);
    }

    #[test]
    fn no_repository_ends_at_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        // tempdirs live under /tmp, which is not inside a repository on test machines.
        if find_repo_root(tmp.path()).is_ok() {
            return;
        }
        assert!(matches!(
            find_repo_root(tmp.path()),
            Err(ConfigError::NoRepository { .. })
        ));
    }

    #[test]
    fn buildkit_dir_from_panfactum_yaml() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(
            buildkit_dir(tmp.path()).unwrap(),
            tmp.path().join(".buildkit")
        );
        write(
            tmp.path(),
            "panfactum.yaml",
            "repo_name: x\nbuildkit_dir: \"tools/bk\" # here\n",
        );
        assert_eq!(
            buildkit_dir(tmp.path()).unwrap(),
            tmp.path().join("tools/bk")
        );
        write(tmp.path(), "panfactum.yaml", "buildkit_dir: /abs\n");
        let err = buildkit_dir(tmp.path()).unwrap_err().to_string();
        assert!(
            err.contains("buildkit_dir") && err.contains("panfactum.yaml"),
            "{err}"
        );
    }

    #[test]
    fn config_errors_name_file_and_field() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("buildkit.json");
        let err = BuildkitConfig::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("no BuildKit configuration") && err.contains("buildkit.json"),
            "{err}"
        );
        write(tmp.path(), "buildkit.json", "  \n");
        assert!(
            BuildkitConfig::load(&path)
                .unwrap_err()
                .to_string()
                .contains("is empty")
        );
        write(tmp.path(), "buildkit.json", "{\"registry\": ");
        let err = BuildkitConfig::load(&path).unwrap_err();
        assert_eq!(err.to_string(), format!("{} is not valid", path.display()));
        // The parser's error is the source, with where it stopped.
        let ConfigError::Invalid { source, .. } = &err else {
            panic!("{err:?}");
        };
        assert_eq!((source.line(), source.column()), (1, 13), "{source}");
        write(tmp.path(), "buildkit.json", "{\"registry\": 5}");
        assert!(
            BuildkitConfig::load(&path)
                .unwrap_err()
                .to_string()
                .contains("not valid")
        );
        write(
            tmp.path(),
            "buildkit.json",
            "{\"registry\": \"\", \"cache_bucket\": \"b\"}",
        );
        let config = BuildkitConfig::load(&path).unwrap();
        let err = config.registry().unwrap_err().to_string();
        assert!(
            err.contains("\"registry\" is missing or empty") && err.contains("buildkit.json"),
            "{err}"
        );
        assert!(
            config
                .cluster()
                .unwrap_err()
                .to_string()
                .contains("\"cluster\"")
        );
        assert!(
            config
                .s3_cache()
                .unwrap_err()
                .to_string()
                .contains("cache_bucket_region")
        );
    }

    #[test]
    fn full_config_loads() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join(".git")).unwrap();
        write(
            tmp.path(),
            ".buildkit/buildkit.json",
            r#"{"registry":"r.example","cluster":"prod","cache_bucket":"b","cache_bucket_region":"us-east-2","bastion":"x","credHelpers":{}}"#,
        );
        let config = BuildkitConfig::discover(tmp.path()).unwrap();
        assert_eq!(config.registry().unwrap(), "r.example");
        assert_eq!(config.cluster().unwrap(), "prod");
        assert_eq!(config.s3_cache().unwrap(), Some(("b", "us-east-2")));
    }
}
