//! The registry's HTTP layer: URLs, the auth challenge dance (Basic and bearer tokens with
//! several scopes), and bounded retries with backoff on 5xx, 429 and dropped connections.
//!
//! This sits on reqwest with rustls (ring). A registry client crate such as oci-client is not
//! used: it has no retry hook, does not expose `Retry-After`, treats a refused
//! cross-repository mount (202) as an error and drops the upload session, and asks for
//! single-repository token scopes (a mount needs pull on the source repository as well).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode, Url};

use super::credentials::{Credential, CredentialsProvider};
use super::error::{Error, ProtocolMismatch};
use crate::setters::with_setters;

/// How often and how long to retry a request that failed for a reason that may pass.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts per request, the first included (default 5).
    pub attempts: u32,
    /// Wait before the second attempt; doubles each time (default 250 ms).
    pub initial_backoff: Duration,
    /// Longest wait between attempts (default 4 s).
    pub max_backoff: Duration,
    /// Longest `Retry-After` honoured; longer requests are cut to this (default 30 s).
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 5,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(4),
            max_retry_after: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }

    /// Runs `attempt` (given its 1-based number) until it is [`Attempt::Done`] or the attempts
    /// run out, waiting between tries as the server asked (capped at `max_retry_after`) or
    /// else the exponential backoff (capped at `max_backoff`). The one retry loop of the
    /// registry client: single requests, token requests and whole blob copies all use it.
    pub(crate) async fn run<T, E, F>(
        &self,
        what: &str,
        mut attempt: impl FnMut(u32) -> F,
    ) -> Result<T, E>
    where
        E: std::error::Error + 'static,
        F: Future<Output = Attempt<T, E>>,
    {
        let mut n = 0u32;
        loop {
            n += 1;
            match attempt(n).await {
                Attempt::Done(result) => return result,
                Attempt::Repeat => n -= 1,
                Attempt::Transient { error, .. } if n >= self.attempts => return Err(error),
                Attempt::Transient { error, wait } => {
                    let wait =
                        wait.map_or_else(|| self.backoff(n), |w| w.min(self.max_retry_after));
                    tracing::debug!(
                        what,
                        attempt = n,
                        ?wait,
                        error = &error as &dyn std::error::Error,
                        "failed; retrying"
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

/// What one attempt of an operation run by [`RetryPolicy::run`] came to.
pub(crate) enum Attempt<T, E> {
    /// Finished: a success, or a failure that another attempt would not change.
    Done(Result<T, E>),
    /// Failed in a way that may pass. Tried again after `wait` (the server's `Retry-After`)
    /// or the backoff; `error` is the result once the attempts are spent.
    Transient { error: E, wait: Option<Duration> },
    /// To be repeated at once without counting as an attempt (an auth challenge was answered).
    Repeat,
}

/// What access a request needs, for the bearer token's scopes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Scope {
    pub repository: String,
    pub push: bool,
    /// A second repository to pull from (the source of a cross-repository mount).
    pub mount_from: Option<String>,
}

impl Scope {
    pub fn pull(repository: &str) -> Self {
        Self {
            repository: repository.to_owned(),
            push: false,
            mount_from: None,
        }
    }

    pub fn push(repository: &str) -> Self {
        Self {
            repository: repository.to_owned(),
            push: true,
            mount_from: None,
        }
    }

    fn strings(&self) -> Vec<String> {
        let action = if self.push { "pull,push" } else { "pull" };
        let mut out = vec![format!("repository:{}:{action}", self.repository)];
        if let Some(from) = &self.mount_from
            && from != &self.repository
        {
            out.push(format!("repository:{from}:pull"));
        }
        out
    }
}

/// What we know about how a registry wants to be authenticated.
#[derive(Default)]
struct RegistryAuth {
    /// `None` until looked up in the docker config.
    credential: Option<Option<Credential>>,
    /// The registry answered a Basic challenge: send Basic on every request.
    basic: bool,
    /// Bearer tokens by scope.
    tokens: HashMap<Vec<String>, String>,
}

/// One request that can be replayed (its body is in memory).
pub(crate) struct Request {
    pub method: Method,
    pub url: Url,
    pub headers: HeaderMap,
    pub body: Option<Bytes>,
    pub scope: Scope,
}

impl Request {
    pub fn new(method: Method, url: Url, scope: Scope) -> Self {
        Self {
            method,
            url,
            headers: HeaderMap::new(),
            body: None,
            scope,
        }
    }

    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.insert(name, v);
        }
        self
    }

    pub fn body(mut self, body: Bytes) -> Self {
        self.body = Some(body);
        self
    }
}

/// The HTTP client shared by every registry operation.
pub(crate) struct Transport {
    http: reqwest::Client,
    /// `None`: anonymous access.
    credentials: Option<Arc<dyn CredentialsProvider>>,
    plain_http_all: bool,
    plain_http: HashSet<String>,
    pub retry: RetryPolicy,
    auth: Mutex<HashMap<String, RegistryAuth>>,
}

impl Transport {
    pub fn new(
        credentials: Option<Arc<dyn CredentialsProvider>>,
        plain_http_all: bool,
        plain_http: HashSet<String>,
        retry: RetryPolicy,
    ) -> Result<Self, Error> {
        let http = reqwest::Client::builder()
            // Every registry plain HTTP: skip reading the system's certificate store (~150
            // files), which is most of a short command's start-up time.
            .tls_backend_preconfigured(tls_config(!plain_http_all))
            .user_agent(crate::USER_AGENT)
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(300))
            // Registries redirect blob GETs to storage; never forward credentials there
            // (reqwest drops Authorization on cross-host redirects).
            .redirect(reqwest::redirect::Policy::limited(10))
            .build()
            .map_err(Error::HttpClient)?;
        Ok(Self {
            http,
            credentials,
            plain_http_all,
            plain_http,
            retry,
            auth: Mutex::new(HashMap::new()),
        })
    }

    /// `http://` for registries asked to be plain HTTP, else `https://`.
    pub fn base_url(&self, registry: &str) -> Result<Url, Error> {
        let scheme = if self.plain_http_all || self.plain_http.contains(registry) {
            "http"
        } else {
            "https"
        };
        let host = api_host(registry);
        Url::parse(&format!("{scheme}://{host}/")).map_err(|_| Error::InvalidRegistry {
            registry: registry.to_owned(),
        })
    }

    /// A URL under `/v2/` of `registry`.
    pub fn url(&self, registry: &str, path: &str) -> Result<Url, Error> {
        self.base_url(registry)?
            .join(path)
            .map_err(|_| Error::InvalidRegistry {
                registry: registry.to_owned(),
            })
    }

    async fn credential(&self, registry: &str) -> Result<Option<Credential>, Error> {
        {
            let auth = lock(&self.auth);
            if let Some(Some(known)) = auth.get(registry).map(|a| a.credential.clone()) {
                return Ok(known);
            }
        }
        // Helpers are programs and ECR is a network call: the provider does them off the
        // runtime's threads.
        let found = match &self.credentials {
            Some(provider) => provider.credentials(registry).await?,
            None => None,
        };
        lock(&self.auth)
            .entry(registry.to_owned())
            .or_default()
            .credential = Some(found.clone());
        Ok(found)
    }

    /// The Authorization header we already know to send for this registry and scope.
    fn known_authorization(&self, registry: &str, scope: &Scope) -> Option<HeaderValue> {
        let auth = lock(&self.auth);
        let state = auth.get(registry)?;
        if let Some(token) = state.tokens.get(&scope.strings()) {
            return bearer(token);
        }
        if state.basic
            && let Some(Some(Credential::Basic { username, password })) = &state.credential
        {
            return basic(username, password);
        }
        None
    }

    /// Sends a replayable request with auth and retries. Returns any response that is not an
    /// auth failure or a transient error; the caller judges other statuses.
    pub async fn send(&self, registry: &str, req: &Request) -> Result<reqwest::Response, Error> {
        // Only the first 401 is answered; a second means the answer was not accepted.
        let challenged = &AtomicBool::new(false);
        self.retry
            .run(req.url.as_str(), move |attempt| async move {
                let mut builder = self
                    .http
                    .request(req.method.clone(), req.url.clone())
                    .headers(req.headers.clone());
                if let Some(value) = self.known_authorization(registry, &req.scope) {
                    builder = builder.header(reqwest::header::AUTHORIZATION, value);
                }
                if let Some(body) = &req.body {
                    builder = builder.body(body.clone());
                } else if req.method == Method::POST || req.method == Method::PUT {
                    builder = builder.header(reqwest::header::CONTENT_LENGTH, "0");
                }
                let response = match builder.send().await {
                    Ok(response) => response,
                    Err(err) => {
                        let mismatch = protocol_mismatch(&err, req.url.scheme());
                        // A protocol mismatch (HTTP to an HTTPS port and the like) stays so.
                        let retry = mismatch.is_none();
                        let error = Error::Connect {
                            registry: registry.to_owned(),
                            attempts: attempt,
                            mismatch,
                            source: err,
                        };
                        return if retry {
                            Attempt::Transient { error, wait: None }
                        } else {
                            Attempt::Done(Err(error))
                        };
                    }
                };
                let status = response.status();
                if status == StatusCode::UNAUTHORIZED {
                    if challenged.swap(true, Ordering::Relaxed) {
                        return Attempt::Done(Err(self.unauthorized(registry)));
                    }
                    return match self
                        .answer_challenge(registry, &req.scope, response.headers())
                        .await
                    {
                        Ok(()) => Attempt::Repeat,
                        Err(err) => Attempt::Done(Err(err)),
                    };
                }
                if is_transient(status) {
                    let wait = retry_after(response.headers());
                    let error = self.status_error(registry, req, response, attempt).await;
                    return Attempt::Transient { error, wait };
                }
                Attempt::Done(Ok(response))
            })
            .await
    }

    /// Sends a request whose body is a stream, once (a stream cannot be replayed; callers retry
    /// the whole operation). Auth must already be known: the session-opening request before it
    /// established it.
    pub async fn send_streaming(
        &self,
        registry: &str,
        method: Method,
        url: Url,
        scope: &Scope,
        headers: HeaderMap,
        body: reqwest::Body,
    ) -> Result<reqwest::Response, Error> {
        let mut builder = self.http.request(method, url).headers(headers).body(body);
        if let Some(value) = self.known_authorization(registry, scope) {
            builder = builder.header(reqwest::header::AUTHORIZATION, value);
        }
        let response = builder.send().await.map_err(|source| Error::Connect {
            registry: registry.to_owned(),
            attempts: 1,
            mismatch: None,
            source,
        })?;
        if response.status() == StatusCode::UNAUTHORIZED {
            return Err(self.unauthorized(registry));
        }
        Ok(response)
    }

    /// Starts a streaming GET (a blob), with auth and retries on the request itself.
    pub async fn get_stream(
        &self,
        registry: &str,
        url: Url,
        scope: Scope,
    ) -> Result<reqwest::Response, Error> {
        self.send(registry, &Request::new(Method::GET, url, scope))
            .await
    }

    fn unauthorized(&self, registry: &str) -> Error {
        let had_credentials = matches!(
            lock(&self.auth).get(registry).map(|a| &a.credential),
            Some(Some(Some(_)))
        );
        Error::Unauthorized {
            registry: registry.to_owned(),
            had_credentials,
        }
    }

    /// Builds the error for a final bad status, with the registry's own message.
    pub async fn status_error(
        &self,
        registry: &str,
        req: &Request,
        response: reqwest::Response,
        attempts: u32,
    ) -> Error {
        let status = response.status();
        let body = response.bytes().await.unwrap_or_default();
        Error::Status {
            registry: registry.to_owned(),
            method: req.method.to_string(),
            path: req.url.path().to_owned(),
            status,
            attempts,
            message: registry_message(&body),
        }
    }

    /// Reads a `WWW-Authenticate` challenge and gets what it asks for.
    async fn answer_challenge(
        &self,
        registry: &str,
        scope: &Scope,
        headers: &HeaderMap,
    ) -> Result<(), Error> {
        let challenge = headers
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .map(parse_challenge)
            .unwrap_or(Challenge::Unknown);
        let credential = self.credential(registry).await?;
        match challenge {
            Challenge::Basic => {
                if !matches!(credential, Some(Credential::Basic { .. })) {
                    return Err(self.unauthorized(registry));
                }
                lock(&self.auth)
                    .entry(registry.to_owned())
                    .or_default()
                    .basic = true;
                Ok(())
            }
            Challenge::Bearer { realm, service } => {
                let token = self
                    .fetch_token(registry, &realm, service.as_deref(), scope, credential)
                    .await?;
                lock(&self.auth)
                    .entry(registry.to_owned())
                    .or_default()
                    .tokens
                    .insert(scope.strings(), token);
                Ok(())
            }
            Challenge::Unknown => Err(self.unauthorized(registry)),
        }
    }

    async fn fetch_token(
        &self,
        registry: &str,
        realm: &str,
        service: Option<&str>,
        scope: &Scope,
        credential: Option<Credential>,
    ) -> Result<String, Error> {
        let realm_url = Url::parse(realm).map_err(|_| Error::BadChallenge {
            registry: registry.to_owned(),
            realm: realm.to_owned(),
        })?;
        let scopes = &scope.strings();
        let (credential, realm_url) = (&credential, &realm_url);
        let token_request = move |attempt: u32| async move {
            let builder = match &credential {
                Some(Credential::IdentityToken(token)) => {
                    // OAuth2 refresh-token grant, as the Docker CLI does with identity tokens.
                    let mut form = vec![
                        ("grant_type", "refresh_token".to_owned()),
                        ("refresh_token", token.clone()),
                        ("client_id", "pf-buildkit".to_owned()),
                        ("scope", scopes.join(" ")),
                    ];
                    if let Some(service) = service {
                        form.push(("service", service.to_owned()));
                    }
                    let body = form
                        .iter()
                        .map(|(k, v)| format!("{k}={}", form_encode(v)))
                        .collect::<Vec<_>>()
                        .join("&");
                    self.http
                        .post(realm_url.clone())
                        .header(
                            reqwest::header::CONTENT_TYPE,
                            "application/x-www-form-urlencoded",
                        )
                        .body(body)
                }
                other => {
                    let mut url = realm_url.clone();
                    {
                        let mut q = url.query_pairs_mut();
                        if let Some(service) = service {
                            q.append_pair("service", service);
                        }
                        for s in scopes {
                            q.append_pair("scope", s);
                        }
                    }
                    let mut b = self.http.get(url);
                    if let Some(Credential::Basic { username, password }) = other
                        && let Some(value) = basic(username, password)
                    {
                        b = b.header(reqwest::header::AUTHORIZATION, value);
                    }
                    b
                }
            };
            let response = match builder.send().await {
                Ok(r) => r,
                Err(source) => {
                    let error = Error::Connect {
                        registry: registry.to_owned(),
                        attempts: attempt,
                        mismatch: None,
                        source,
                    };
                    return Attempt::Transient { error, wait: None };
                }
            };
            let status = response.status();
            if is_transient(status) {
                let wait = retry_after(response.headers());
                let body = response.bytes().await.unwrap_or_default();
                let error = Error::Status {
                    registry: registry.to_owned(),
                    method: "GET".into(),
                    path: realm_url.path().to_owned(),
                    status,
                    attempts: attempt,
                    message: registry_message(&body),
                };
                return Attempt::Transient { error, wait };
            }
            Attempt::Done(Ok((response, attempt)))
        };
        let (response, attempt) = self.retry.run("token request", token_request).await?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(Error::Unauthorized {
                registry: registry.to_owned(),
                had_credentials: credential.is_some(),
            });
        }
        let body = response.bytes().await.map_err(|source| Error::Connect {
            registry: registry.to_owned(),
            attempts: attempt,
            mismatch: None,
            source,
        })?;
        if !status.is_success() {
            return Err(Error::Status {
                registry: registry.to_owned(),
                method: "GET".into(),
                path: realm_url.path().to_owned(),
                status,
                attempts: attempt,
                message: registry_message(&body),
            });
        }
        #[derive(serde::Deserialize)]
        struct TokenAnswer {
            token: Option<String>,
            access_token: Option<String>,
        }
        let answer: TokenAnswer =
            serde_json::from_slice(&body).map_err(|_| Error::BadChallenge {
                registry: registry.to_owned(),
                realm: realm.to_owned(),
            })?;
        answer
            .token
            .or(answer.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::BadChallenge {
                registry: registry.to_owned(),
                realm: realm.to_owned(),
            })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the auth cache inconsistent in a way that
    // matters (worst case a token is asked for again).
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Docker Hub's API lives on another host than its name.
fn api_host(registry: &str) -> &str {
    match registry {
        "docker.io" | "index.docker.io" => "registry-1.docker.io",
        other => other,
    }
}

fn bearer(token: &str) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
    v.set_sensitive(true);
    Some(v)
}

fn basic(username: &str, password: &str) -> Option<HeaderValue> {
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    let mut v = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
    v.set_sensitive(true);
    Some(v)
}

fn form_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Whether HTTPS met a plain-HTTP server or the other way round; such failures are not
/// retried. rustls and hyper say so only in their text, which reqwest keeps in the chain.
fn protocol_mismatch(err: &reqwest::Error, scheme: &str) -> Option<ProtocolMismatch> {
    let mut source: Option<&dyn std::error::Error> = Some(err);
    let mut text = String::new();
    while let Some(e) = source {
        text.push_str(&e.to_string());
        text.push(' ');
        source = e.source();
    }
    if scheme == "https"
        && (text.contains("InvalidContentType") || text.contains("corrupt message"))
    {
        return Some(ProtocolMismatch::PlainHttpAnswer);
    }
    if scheme == "http" && text.contains("invalid HTTP version") {
        return Some(ProtocolMismatch::NotHttpAnswer);
    }
    None
}

/// 5xx that may pass, and 429.
pub(crate) fn is_transient(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 500 | 502 | 503 | 504)
}

/// `Retry-After` in seconds (the HTTP-date form is rare from registries; it falls back to
/// the backoff).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[derive(Debug, PartialEq, Eq)]
enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
    Unknown,
}

/// Parses `Bearer realm="...",service="...",scope="..."` or `Basic realm="..."`.
fn parse_challenge(header: &str) -> Challenge {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Challenge::Basic;
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Challenge::Unknown;
    }
    let mut params = HashMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        params.insert(key, value.to_owned());
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    match params.remove("realm") {
        Some(realm) => Challenge::Bearer {
            realm,
            service: params.remove("service"),
        },
        None => Challenge::Unknown,
    }
}

/// The first message of a registry error envelope (`{"errors":[{"code","message"}]}`), or a
/// short excerpt of a body that is not one.
pub(crate) fn registry_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Envelope {
        errors: Vec<EnvelopeError>,
    }
    #[derive(serde::Deserialize)]
    struct EnvelopeError {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(env) = serde_json::from_slice::<Envelope>(body)
        && let Some(first) = env.errors.first()
    {
        return format!("{}: {}", first.code, first.message);
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let mut excerpt: String = text.chars().take(120).collect();
    if text.chars().count() > 120 {
        excerpt.push('…');
    }
    excerpt.replace(['\n', '\r'], " ")
}

/// rustls with the ring provider and the system's root certificates (no OpenSSL).
fn tls_config(load_roots: bool) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    if load_roots {
        for cert in rustls_native_certs::load_native_certs().certs {
            // A certificate the store cannot parse is skipped, as every TLS client does.
            let _ = roots.add(cert);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = match rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
    {
        Ok(b) => b,
        // The ring provider supports the default versions; this arm is not reachable in practice.
        Err(_) => rustls::ClientConfig::builder_with_protocol_versions(rustls::DEFAULT_VERSIONS),
    };
    let mut config = builder.with_root_certificates(roots).with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

with_setters!(RetryPolicy {
    with_attempts => attempts: u32,
    with_initial_backoff => initial_backoff: Duration,
    with_max_backoff => max_backoff: Duration,
    with_max_retry_after => max_retry_after: Duration,
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenge_parses_realm_and_service() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a:pull""#
            ),
            Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into())
            }
        );
        assert_eq!(parse_challenge(r#"Basic realm="x""#), Challenge::Basic);
        assert_eq!(parse_challenge("Negotiate"), Challenge::Unknown);
    }

    #[test]
    fn scopes_include_the_mount_source() {
        let mut s = Scope::push("team/app");
        s.mount_from = Some("team/base".into());
        assert_eq!(
            s.strings(),
            vec!["repository:team/app:pull,push", "repository:team/base:pull"]
        );
        assert_eq!(Scope::pull("x").strings(), vec!["repository:x:pull"]);
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff(1), Duration::from_millis(250));
        assert_eq!(p.backoff(2), Duration::from_millis(500));
        assert_eq!(p.backoff(10), Duration::from_secs(4));
    }

    #[tokio::test]
    async fn run_gives_up_after_the_attempts_and_a_repeat_is_not_one() {
        let policy = RetryPolicy {
            attempts: 3,
            initial_backoff: Duration::ZERO,
            ..RetryPolicy::default()
        };
        let calls = &std::sync::atomic::AtomicU32::new(0);
        let result: Result<(), std::io::Error> = policy
            .run("test", move |n| async move {
                let call = calls.fetch_add(1, Ordering::Relaxed) + 1;
                if call == 1 {
                    return Attempt::Repeat;
                }
                Attempt::Transient {
                    error: std::io::Error::other(format!("attempt {n}")),
                    wait: None,
                }
            })
            .await;
        assert_eq!(result.unwrap_err().to_string(), "attempt 3");
        assert_eq!(calls.load(Ordering::Relaxed), 4);

        let done: Result<u32, std::io::Error> = policy
            .run("test", |n| async move {
                if n < 2 {
                    Attempt::Transient {
                        error: std::io::Error::other("not yet"),
                        wait: None,
                    }
                } else {
                    Attempt::Done(Ok(n))
                }
            })
            .await;
        assert_eq!(done.unwrap(), 2);
    }

    #[test]
    fn retry_after_seconds() {
        let mut h = HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
    }

    #[test]
    fn registry_messages_are_short() {
        assert_eq!(
            registry_message(
                br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#
            ),
            "MANIFEST_UNKNOWN: manifest unknown"
        );
        assert_eq!(registry_message(b"<html>\nhi</html>"), "<html> hi</html>");
    }
}
