//! Source ops: where a graph's content comes from (an image, a client directory, a git
//! repository, a URL). Attribute keys and caps are BuildKit's.

use std::collections::BTreeMap;

use super::node::{Node, OpKind, OpOptions, SourceSpec, State};
use super::{LlbError, Platform, gojson};

/// When the daemon looks an image up in its registry (Go's `llb.ResolveMode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResolveMode {
    /// The daemon's default (no attribute is written).
    #[default]
    Default,
    /// Always ask the registry.
    ForcePull,
    /// Use a local image of that name when there is one.
    PreferLocal,
}

/// A container image from a registry (`docker-image://`).
///
/// ```
/// use pf_buildkit::llb::{Image, ResolveMode};
/// let arm = Image::new("busybox:1.36")
///     .platform("linux/arm64".parse().unwrap())
///     .resolve_mode(ResolveMode::ForcePull)
///     .into_state();
/// # let _ = arm;
/// ```
#[derive(Debug, Clone)]
pub struct Image {
    reference: String,
    platform: Option<Platform>,
    resolve_mode: ResolveMode,
    checksum: Option<String>,
    options: OpOptions,
}

/// An image by reference, for the Marshal platform; shorthand for
/// `Image::new(reference).into_state()`.
pub fn image(reference: impl Into<String>) -> State {
    Image::new(reference).into_state()
}

impl Image {
    /// An image by reference (`busybox`, `registry:5000/team/app:1.2`, `…@sha256:…`); a name
    /// without tag or digest means `:latest`, a name without registry Docker Hub.
    pub fn new(reference: impl Into<String>) -> Self {
        Image {
            reference: reference.into(),
            platform: None,
            resolve_mode: ResolveMode::Default,
            checksum: None,
            options: OpOptions::default(),
        }
    }

    /// The platform to pull (also the platform of run steps on this state).
    pub fn platform(self, platform: Platform) -> Self {
        Image {
            platform: Some(platform),
            ..self
        }
    }

    /// When the daemon consults the registry.
    pub fn resolve_mode(self, mode: ResolveMode) -> Self {
        Image {
            resolve_mode: mode,
            ..self
        }
    }

    /// The manifest digest the image must have.
    pub fn checksum(self, digest: impl Into<String>) -> Self {
        Image {
            checksum: Some(digest.into()),
            ..self
        }
    }

    /// The source as a state.
    pub fn into_state(self) -> State {
        let (reference, error) = match crate::registry::parse_reference(&self.reference) {
            Ok(r) => (r.whole(), None),
            Err(err) => (
                self.reference.clone(),
                Some(LlbError::ImageReference {
                    reference: self.reference.clone(),
                    problem: err.to_string(),
                }),
            ),
        };
        let mut attrs = BTreeMap::new();
        let mut caps = vec!["source.image"];
        match self.resolve_mode {
            ResolveMode::Default => {}
            ResolveMode::ForcePull => {
                attrs.insert("image.resolvemode".into(), "pull".into());
                caps.push("source.image.resolvemode");
            }
            ResolveMode::PreferLocal => {
                attrs.insert("image.resolvemode".into(), "local".into());
            }
        }
        if let Some(checksum) = self.checksum {
            attrs.insert("image.checksum".into(), checksum);
            caps.push("source.image.checksum");
        }
        let spec = SourceSpec {
            identifier: format!("docker-image://{reference}"),
            attrs,
            caps,
            platform: self.platform.clone(),
            error,
        };
        source_state(spec, self.options, self.platform)
    }
}

/// A directory the client sends through the session (`local://NAME`); the solve's `locals`
/// say which directory a name is.
///
/// ```
/// use pf_buildkit::llb::Local;
/// let context = Local::new("context")
///     .include(["src/", "Cargo.*"])
///     .exclude(["target"])
///     .shared_key_hint("app")
///     .into_state();
/// # let _ = context;
/// ```
#[derive(Debug, Clone)]
pub struct Local {
    name: String,
    include: Vec<String>,
    exclude: Vec<String>,
    follow_paths: Vec<String>,
    shared_key_hint: Option<String>,
    session_id: Option<String>,
    unique_id: Option<String>,
    options: OpOptions,
}

/// A local directory by name; shorthand for `Local::new(name).into_state()`.
pub fn local(name: impl Into<String>) -> State {
    Local::new(name).into_state()
}

impl Local {
    /// The directory the session serves as `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Local {
            name: name.into(),
            include: Vec::new(),
            exclude: Vec::new(),
            follow_paths: Vec::new(),
            shared_key_hint: None,
            session_id: None,
            unique_id: None,
            options: OpOptions::default(),
        }
    }

    /// Sends only paths matching one of these patterns.
    pub fn include<S: Into<String>>(mut self, patterns: impl IntoIterator<Item = S>) -> Self {
        self.include.extend(patterns.into_iter().map(Into::into));
        self
    }

    /// Leaves out paths matching one of these patterns (`.dockerignore` syntax).
    pub fn exclude<S: Into<String>>(mut self, patterns: impl IntoIterator<Item = S>) -> Self {
        self.exclude.extend(patterns.into_iter().map(Into::into));
        self
    }

    /// Sends only these paths (and what symlinks among them point to).
    pub fn follow_paths<S: Into<String>>(mut self, paths: impl IntoIterator<Item = S>) -> Self {
        self.follow_paths.extend(paths.into_iter().map(Into::into));
        self
    }

    /// Lets the daemon reuse what an earlier transfer with the same hint sent.
    pub fn shared_key_hint(self, hint: impl Into<String>) -> Self {
        Local {
            shared_key_hint: Some(hint.into()),
            ..self
        }
    }

    /// Reads the directory from this session rather than the solve's own.
    pub fn session_id(self, id: impl Into<String>) -> Self {
        Local {
            session_id: Some(id.into()),
            ..self
        }
    }

    /// A fixed `local.unique` value (Go's `llb.LocalUniqueID`), which makes the op's digest
    /// reproducible; by default it is [`MarshalOptions::local_unique_id`](super::MarshalOptions).
    pub fn unique_id(self, id: impl Into<String>) -> Self {
        Local {
            unique_id: Some(id.into()),
            ..self
        }
    }

    /// The source as a state.
    pub fn into_state(self) -> State {
        let mut attrs = BTreeMap::new();
        let mut caps = Vec::new();
        let mut put = |key: &str, value: String, cap: &'static str| {
            attrs.insert(key.to_owned(), value);
            caps.push(cap);
        };
        if let Some(id) = self.session_id {
            put("local.session", id, "source.local.sessionid");
        }
        if !self.include.is_empty() {
            put(
                "local.includepattern",
                gojson::string_array(&self.include),
                "source.local.includepatterns",
            );
        }
        if !self.follow_paths.is_empty() {
            put(
                "local.followpaths",
                gojson::string_array(&self.follow_paths),
                "source.local.followpaths",
            );
        }
        if !self.exclude.is_empty() {
            put(
                "local.excludepatterns",
                gojson::string_array(&self.exclude),
                "source.local.excludepatterns",
            );
        }
        if let Some(hint) = self.shared_key_hint {
            put("local.sharedkeyhint", hint, "source.local.sharedkeyhint");
        }
        if let Some(id) = self.unique_id {
            // Marshal sees it and does not put the default in its place.
            attrs.insert("local.unique".into(), id);
        }
        caps.push("source.local");
        let spec = SourceSpec {
            identifier: format!("local://{}", self.name),
            attrs,
            caps,
            platform: None,
            error: None,
        };
        source_state(spec, self.options, None)
    }
}

/// A git repository at a ref (`git://`).
///
/// ```
/// use pf_buildkit::llb::Git;
/// let docs = Git::new("https://github.com/moby/buildkit.git")
///     .reference("v0.32.2")
///     .subdir("docs")
///     .keep_git_dir()
///     .into_state();
/// # let _ = docs;
/// ```
#[derive(Debug, Clone)]
pub struct Git {
    url: String,
    reference: String,
    subdir: String,
    keep_git_dir: bool,
    checksum: Option<String>,
    known_ssh_hosts: Option<String>,
    ssh_socket: Option<String>,
    options: OpOptions,
}

/// A git repository at a ref; shorthand for `Git::new(url).reference(r).into_state()`.
pub fn git(url: impl Into<String>, reference: impl Into<String>) -> State {
    Git::new(url).reference(reference).into_state()
}

impl Git {
    /// A repository by URL: `https://…`, `ssh://…`, `git://…` or `user@host:path`.
    pub fn new(url: impl Into<String>) -> Self {
        Git {
            url: url.into(),
            reference: String::new(),
            subdir: String::new(),
            keep_git_dir: false,
            checksum: None,
            known_ssh_hosts: None,
            ssh_socket: None,
            options: OpOptions::default(),
        }
    }

    /// A branch, tag or commit (the default branch when unset).
    pub fn reference(self, reference: impl Into<String>) -> Self {
        Git {
            reference: reference.into(),
            ..self
        }
    }

    /// Only this directory of the repository.
    pub fn subdir(self, subdir: impl AsRef<str>) -> Self {
        let cleaned = super::state::clean_path(&format!("/{}", subdir.as_ref()));
        Git {
            subdir: cleaned.trim_start_matches('/').to_owned(),
            ..self
        }
    }

    /// Keeps the `.git` directory.
    pub fn keep_git_dir(self) -> Self {
        Git {
            keep_git_dir: true,
            ..self
        }
    }

    /// The commit the ref must resolve to.
    pub fn checksum(self, commit: impl Into<String>) -> Self {
        Git {
            checksum: Some(commit.into()),
            ..self
        }
    }

    /// `known_hosts` lines for an SSH remote.
    pub fn known_ssh_hosts(self, lines: impl Into<String>) -> Self {
        Git {
            known_ssh_hosts: Some(lines.into()),
            ..self
        }
    }

    /// The session's SSH agent id for an SSH remote (`default` when unset).
    pub fn ssh_socket(self, id: impl Into<String>) -> Self {
        Git {
            ssh_socket: Some(id.into()),
            ..self
        }
    }

    /// The source as a state.
    pub fn into_state(self) -> State {
        let remote = GitRemote::parse(&self.url);
        let mut identifier = format!("git://{}", remote.id());
        if !self.reference.is_empty() || !self.subdir.is_empty() {
            identifier.push('#');
            identifier.push_str(&self.reference);
            if !self.subdir.is_empty() {
                identifier.push(':');
                identifier.push_str(&self.subdir);
            }
        }
        let mut attrs = BTreeMap::new();
        let mut caps = Vec::new();
        if self.keep_git_dir {
            attrs.insert("git.keepgitdir".into(), "true".into());
            caps.push("source.git.keepgitdir");
        }
        attrs.insert("git.fullurl".into(), remote.url.clone());
        caps.push("source.git.fullurl");
        attrs.insert("git.authtokensecret".into(), "GIT_AUTH_TOKEN".into());
        attrs.insert("git.authheadersecret".into(), "GIT_AUTH_HEADER".into());
        if remote.ssh {
            if let Some(hosts) = self.known_ssh_hosts {
                attrs.insert("git.knownsshhosts".into(), hosts);
            }
            caps.push("source.git.knownsshhosts");
            let socket = self.ssh_socket.unwrap_or_else(|| "default".into());
            attrs.insert("git.mountsshsock".into(), socket);
            caps.push("source.git.mountsshsock");
        }
        if let Some(checksum) = self.checksum {
            attrs.insert("git.checksum".into(), checksum);
            caps.push("source.git.checksum");
        }
        caps.push("source.git");
        let spec = SourceSpec {
            identifier,
            attrs,
            caps,
            platform: None,
            error: None,
        };
        source_state(spec, self.options, None)
    }
}

/// A git remote split as BuildKit's `gitutil.ParseURL` does: scheme URLs and scp-like
/// `user@host:path`; anything else is taken as an https URL.
struct GitRemote {
    url: String,
    host: String,
    path: String,
    ssh: bool,
}

impl GitRemote {
    fn parse(url: &str) -> GitRemote {
        if let Some((scheme, rest)) = url.split_once("://")
            && matches!(scheme, "http" | "https" | "git" | "ssh")
        {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit('@').next().unwrap_or(authority);
            return GitRemote {
                url: url.to_owned(),
                host: host.to_owned(),
                path: path.to_owned(),
                ssh: scheme == "ssh",
            };
        }
        if let Some((user_host, path)) = url.split_once(':')
            && let Some((_, host)) = user_host.split_once('@')
            && !path.starts_with("//")
        {
            return GitRemote {
                url: url.to_owned(),
                host: host.to_owned(),
                path: path.to_owned(),
                ssh: true,
            };
        }
        GitRemote::parse(&format!("https://{url}"))
    }

    /// Host and path, the same for every protocol that reaches the same repository.
    fn id(&self) -> String {
        let path = super::state::clean_path(&format!("/{}", self.path));
        format!("{}{}", self.host, path)
    }
}

/// A file downloaded over HTTP(S).
///
/// ```
/// use pf_buildkit::llb::Http;
/// let archive = Http::new("https://example.com/tool.tar.gz")
///     .checksum("sha256:0000000000000000000000000000000000000000000000000000000000000000")
///     .filename("tool.tar.gz")
///     .mode(0o644)
///     .into_state();
/// # let _ = archive;
/// ```
#[derive(Debug, Clone)]
pub struct Http {
    url: String,
    checksum: Option<String>,
    filename: Option<String>,
    mode: Option<u32>,
    owner: Option<(u32, u32)>,
    options: OpOptions,
}

/// A URL; shorthand for `Http::new(url).into_state()`.
pub fn http(url: impl Into<String>) -> State {
    Http::new(url).into_state()
}

impl Http {
    /// A file by URL.
    pub fn new(url: impl Into<String>) -> Self {
        Http {
            url: url.into(),
            checksum: None,
            filename: None,
            mode: None,
            owner: None,
            options: OpOptions::default(),
        }
    }

    /// The digest (`sha256:…`) the content must have.
    pub fn checksum(self, digest: impl Into<String>) -> Self {
        Http {
            checksum: Some(digest.into()),
            ..self
        }
    }

    /// The file's name in the result (the URL's last path element by default).
    pub fn filename(self, name: impl Into<String>) -> Self {
        Http {
            filename: Some(name.into()),
            ..self
        }
    }

    /// The file's permission bits.
    pub fn mode(self, mode: u32) -> Self {
        Http {
            mode: Some(mode & 0o777),
            ..self
        }
    }

    /// The file's owner.
    pub fn owner(self, uid: u32, gid: u32) -> Self {
        Http {
            owner: Some((uid, gid)),
            ..self
        }
    }

    /// The source as a state.
    pub fn into_state(self) -> State {
        let mut attrs = BTreeMap::new();
        let mut caps = Vec::new();
        if let Some(checksum) = self.checksum {
            attrs.insert("http.checksum".into(), checksum);
            caps.push("source.http.checksum");
        }
        if let Some(name) = self.filename {
            attrs.insert("http.filename".into(), name);
        }
        if let Some(mode) = self.mode.filter(|m| *m != 0) {
            attrs.insert("http.perm".into(), format!("0{mode:o}"));
            caps.push("source.http.perm");
        }
        if let Some((uid, gid)) = self.owner {
            // BuildKit's cap id has this spelling.
            if uid != 0 {
                attrs.insert("http.uid".into(), uid.to_string());
                caps.push("soruce.http.uidgid");
            }
            if gid != 0 {
                attrs.insert("http.gid".into(), gid.to_string());
                caps.push("soruce.http.uidgid");
            }
        }
        caps.push("source.http");
        let spec = SourceSpec {
            identifier: self.url,
            attrs,
            caps,
            platform: None,
            error: None,
        };
        source_state(spec, self.options, None)
    }
}

/// The op options every source builder takes.
macro_rules! op_options {
    ($($source:ident),*) => {$(
        impl $source {
            /// A name for the progress output.
            pub fn custom_name(mut self, name: impl Into<String>) -> Self {
                self.options.custom_name = Some(name.into());
                self
            }

            /// Fetches again even when the result is cached.
            pub fn ignore_cache(mut self) -> Self {
                self.options.ignore_cache = true;
                self
            }
        }
    )*};
}

op_options!(Image, Local, Git, Http);

fn source_state(spec: SourceSpec, options: OpOptions, platform: Option<Platform>) -> State {
    State::from_node(
        Node {
            kind: OpKind::Source(spec),
            options,
        },
        platform,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_ids_are_host_and_path() {
        let https = GitRemote::parse("https://github.com/moby/buildkit.git");
        assert_eq!(https.id(), "github.com/moby/buildkit.git");
        assert!(!https.ssh);
        let scp = GitRemote::parse("git@github.com:moby/buildkit.git");
        assert_eq!(scp.id(), "github.com/moby/buildkit.git");
        assert!(scp.ssh);
        let bare = GitRemote::parse("github.com/moby/buildkit");
        assert_eq!(bare.url, "https://github.com/moby/buildkit");
    }
}
