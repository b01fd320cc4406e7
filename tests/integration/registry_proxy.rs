//! A proxy in front of the real test registry that injects faults (statuses, Retry-After,
//! dropped connections, altered manifests) and can demand Basic auth: for the registry
//! client's retry, auth and verification tests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use crate::util;

#[derive(Debug, Clone, Copy)]
pub enum Fault {
    Status(u16),
    RetryAfter(u64),
    Drop,
}

#[derive(Default)]
pub struct ProxyConfig {
    /// Faults for the first requests, in order.
    pub faults: Vec<Fault>,
    /// A fault for every request.
    pub always: Option<Fault>,
    /// Demand this user and password.
    pub basic_auth: Option<(String, String)>,
    /// Strip `mount=` so the registry opens an upload session instead (202).
    pub refuse_mounts: bool,
    /// Demand bearer tokens from a token endpoint at `/token` that takes this user and
    /// password, and check each request's repository and action against the token's scopes.
    pub bearer_auth: Option<(String, String)>,
    /// Alter manifest bodies served (keeping the announced digest), like a lying registry.
    pub corrupt_manifests: bool,
}

struct ProxyState {
    config: ProxyConfig,
    upstream: String,
    seen: AtomicUsize,
    faults_served: AtomicUsize,
    log: Mutex<Vec<(String, String, u16)>>,
    http: reqwest::Client,
    /// Issued tokens and their scopes.
    tokens: Mutex<Vec<(String, Vec<String>)>>,
}

pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<ProxyState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    pub async fn start(config: ProxyConfig) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ProxyState {
            config,
            upstream: util::env("PF_TEST_REGISTRY"),
            seen: AtomicUsize::new(0),
            faults_served: AtomicUsize::new(0),
            log: Mutex::new(Vec::new()),
            http: util::http_client(false),
            tokens: Mutex::new(Vec::new()),
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    break;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        async move { handle(st, addr, req).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Proxy { addr, state, task }
    }

    pub fn log(&self) -> Vec<(String, String, u16)> {
        self.state.log.lock().unwrap().clone()
    }

    /// The bearer tokens the proxy issued, with the scopes each was asked for.
    pub fn tokens(&self) -> Vec<(String, Vec<String>)> {
        self.state.tokens.lock().unwrap().clone()
    }

    pub fn faults_served(&self) -> usize {
        self.state.faults_served.load(Ordering::SeqCst)
    }
}

#[derive(Debug)]
struct Dropped;
impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by the test proxy")
    }
}
impl std::error::Error for Dropped {}

async fn handle(
    st: Arc<ProxyState>,
    addr: SocketAddr,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Dropped> {
    let n = st.seen.fetch_add(1, Ordering::SeqCst);
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let fault = st.config.faults.get(n).copied().or(st.config.always);
    let respond = |status: u16, headers: Vec<(String, String)>, body: Bytes| {
        st.log
            .lock()
            .unwrap()
            .push((method.clone(), path.clone(), status));
        let mut b = hyper::Response::builder().status(status);
        for (k, v) in headers {
            b = b.header(k, v);
        }
        Ok::<_, Dropped>(b.body(Full::new(body)).unwrap())
    };
    if let Some(fault) = fault {
        st.faults_served.fetch_add(1, Ordering::SeqCst);
        return match fault {
            Fault::Status(code) => respond(code, vec![], Bytes::from_static(b"injected")),
            Fault::RetryAfter(secs) => respond(
                429,
                vec![("retry-after".to_owned(), secs.to_string())],
                Bytes::new(),
            ),
            Fault::Drop => Err(Dropped),
        };
    }
    if let Some((user, pass)) = &st.config.bearer_auth {
        let url = reqwest::Url::parse(&format!("http://{addr}{path}")).unwrap();
        if url.path() == "/token" {
            let expected = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
            );
            let given = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            if given != Some(expected.as_str()) {
                return respond(401, vec![], Bytes::new());
            }
            let scopes: Vec<String> = url
                .query_pairs()
                .filter(|(k, _)| k == "scope")
                .map(|(_, v)| v.into_owned())
                .collect();
            let mut tokens = st.tokens.lock().unwrap();
            let token = format!("tok-{}", tokens.len());
            tokens.push((token.clone(), scopes));
            drop(tokens);
            return respond(
                200,
                vec![],
                Bytes::from(format!(r#"{{"token":"{token}"}}"#)),
            );
        }
        // What this request needs: the action on its repository, plus pull on a mount source.
        let mut needed = Vec::new();
        if let Some(rest) = url.path().strip_prefix("/v2/") {
            let repo = ["/manifests/", "/blobs/", "/tags/"]
                .iter()
                .find_map(|m| rest.find(m).map(|i| &rest[..i]))
                .unwrap_or("");
            let push = matches!(method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE");
            if !repo.is_empty() {
                needed.push((repo.to_owned(), if push { "push" } else { "pull" }));
            }
            if let Some((_, from)) = url.query_pairs().find(|(k, _)| k == "from") {
                needed.push((from.into_owned(), "pull"));
            }
        }
        let token = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let granted = st
            .tokens
            .lock()
            .unwrap()
            .iter()
            .find(|(t, _)| t == token)
            .map(|(_, s)| s.clone());
        let allowed = granted.is_some_and(|scopes| {
            needed.iter().all(|(repo, action)| {
                scopes.iter().any(|s| {
                    s.strip_prefix(&format!("repository:{repo}:"))
                        .is_some_and(|actions| actions.split(',').any(|a| a == *action))
                })
            })
        });
        if !allowed {
            let scope = needed
                .first()
                .map(|(r, a)| format!(",scope=\"repository:{r}:{a}\""))
                .unwrap_or_default();
            return respond(
                401,
                vec![(
                    "www-authenticate".to_owned(),
                    format!(r#"Bearer realm="http://{addr}/token",service="pf-test"{scope}"#),
                )],
                Bytes::new(),
            );
        }
    }
    if let Some((user, pass)) = &st.config.basic_auth {
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        );
        let given = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if given != Some(expected.as_str()) {
            return respond(
                401,
                vec![(
                    "www-authenticate".to_owned(),
                    r#"Basic realm="pf-test""#.to_owned(),
                )],
                Bytes::from_static(
                    br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
                ),
            );
        }
    }
    let mut forward_path = path.clone();
    if st.config.refuse_mounts && method == "POST" && forward_path.contains("mount=") {
        forward_path = forward_path.split('?').next().unwrap().to_owned();
    }
    let mut upstream = st.http.request(
        req.method().clone(),
        format!("http://{}{forward_path}", st.upstream),
    );
    for (k, v) in req.headers() {
        if k == "host" || k == "authorization" || k == "content-length" || k == "transfer-encoding"
        {
            continue;
        }
        upstream = upstream.header(k, v);
    }
    // The registry builds Location URLs from these, so uploads come back through the proxy.
    upstream = upstream
        .header("x-forwarded-host", addr.to_string())
        .header("x-forwarded-proto", "http");
    let body = req
        .into_body()
        .collect()
        .await
        .map_err(|_| Dropped)?
        .to_bytes();
    let res = upstream.body(body).send().await.map_err(|_| Dropped)?;
    let status = res.status().as_u16();
    let headers: Vec<(String, String)> = res
        .headers()
        .iter()
        .filter(|(k, _)| *k != "transfer-encoding" && *k != "connection" && *k != "content-length")
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                v.to_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let content_length = res.headers().get("content-length").cloned();
    let mut bytes = res.bytes().await.map_err(|_| Dropped)?;
    if st.config.corrupt_manifests && method == "GET" && path.contains("/manifests/") {
        let mut altered = bytes.to_vec();
        altered.push(b' ');
        bytes = Bytes::from(altered);
    }
    let mut response = respond(status, headers, bytes)?;
    if method == "HEAD"
        && let Some(cl) = content_length
    {
        response.headers_mut().insert("content-length", cl);
    }
    Ok(response)
}
