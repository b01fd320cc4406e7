//! The token webhook the real API server asks about bearer tokens its token file does not
//! know (`--authentication-token-webhook-config-file`, `PF_TEST_KUBE_WEBHOOK_PORT`): a test
//! serves it with a [`TokenReview`] check, and a token that passes is user [`super::USER`].
//! The API server caches answers for 10 s, so not every request reaches it.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use crate::fake_kube::TokenReview;

/// The webhook, serving until dropped (its open connections too, so a later test's webhook
/// is the only one the API server reaches).
pub struct TokenWebhook {
    server: tokio::task::JoinHandle<()>,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Drop for TokenWebhook {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl TokenWebhook {
    /// Serves `review` on the testenv's webhook port.
    pub async fn start(review: TokenReview) -> TokenWebhook {
        let port = crate::util::env("PF_TEST_KUBE_WEBHOOK_PORT");
        let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|e| panic!("bind the token webhook on 127.0.0.1:{port}: {e}"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorded = seen.clone();
        let server = tokio::spawn(async move {
            // Connections live in the set, so aborting the server ends them too.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (review, recorded) = (review.clone(), recorded.clone());
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let (review, recorded) = (review.clone(), recorded.clone());
                        async move { Ok::<_, Infallible>(answer(req, &review, &recorded).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        TokenWebhook { server, seen }
    }

    /// Every token the API server asked about, in order.
    pub fn tokens(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// A TokenReview answer: authenticated as the test's user when `review` accepts the token.
async fn answer(
    req: hyper::Request<hyper::body::Incoming>,
    review: &TokenReview,
    seen: &Mutex<Vec<String>>,
) -> hyper::Response<Full<Bytes>> {
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let token = request["spec"]["token"].as_str().unwrap_or_default();
    seen.lock().unwrap().push(token.to_owned());
    let status = if review(token) {
        json!({ "authenticated": true, "user": {
            "username": super::USER, "uid": super::USER, "groups": ["system:authenticated"] } })
    } else {
        json!({ "authenticated": false, "error": "token refused by the test's review" })
    };
    let body = json!({
        "apiVersion": request["apiVersion"].as_str().unwrap_or("authentication.k8s.io/v1"),
        "kind": "TokenReview",
        "status": status,
    });
    hyper::Response::builder()
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("response")
}
