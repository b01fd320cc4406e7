//! In-process EKS authentication for the kube client: a kubeconfig user whose exec plugin is
//! `aws eks get-token` or `aws-iam-authenticator token` gets its bearer token from
//! [`EksTokenSource`] instead (no process starts), remade before it expires.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::header::AUTHORIZATION;
use http::{HeaderValue, Request};
use tower::{Layer, Service};

use crate::aws::{AwsError, EksTokenRequest, EksTokenSource};

/// The EKS token request a kube config's exec plugin stands for, if it is one of the forms
/// made in-process.
pub(crate) fn eks_request(config: &kube::Config) -> Option<EksTokenRequest> {
    let exec = config.auth_info.exec.as_ref()?;
    let command = exec.command.as_deref()?;
    let args = exec.args.clone().unwrap_or_default();
    let env = exec.env.clone().unwrap_or_default();
    EksTokenRequest::from_exec(command, &args, &env)
}

/// Adds `Authorization: Bearer <EKS token>` to every request.
#[derive(Clone)]
pub(crate) struct EksAuthLayer {
    source: Arc<EksTokenSource>,
}

impl EksAuthLayer {
    pub(crate) fn new(source: Arc<EksTokenSource>) -> Self {
        Self { source }
    }
}

impl<S> Layer<S> for EksAuthLayer {
    type Service = EksAuth<S>;
    fn layer(&self, inner: S) -> EksAuth<S> {
        EksAuth {
            inner,
            source: self.source.clone(),
            pending: None,
            header: None,
        }
    }
}

type Pending = Pin<Box<dyn Future<Output = Result<HeaderValue, AwsError>> + Send>>;

/// The service [`EksAuthLayer`] makes. A token is made (or renewed) while the service is
/// polled for readiness, so `call` only attaches it.
pub(crate) struct EksAuth<S> {
    inner: S,
    source: Arc<EksTokenSource>,
    pending: Option<Pending>,
    header: Option<HeaderValue>,
}

fn bearer(token: &str) -> Result<HeaderValue, AwsError> {
    let mut value =
        HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| AwsError::Request {
            call: crate::aws::eks::CALL,
            reason: "the token is not a valid header value".into(),
            source: Some(e.into()),
        })?;
    value.set_sensitive(true);
    Ok(value)
}

impl<S, B> Service<Request<B>> for EksAuth<S>
where
    S: Service<Request<B>>,
    S::Error: Into<tower::BoxError>,
{
    type Response = S::Response;
    type Error = tower::BoxError;
    type Future = futures_util::future::MapErr<S::Future, fn(S::Error) -> tower::BoxError>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        loop {
            if let Some(pending) = self.pending.as_mut() {
                let made = ready!(pending.as_mut().poll(cx));
                self.pending = None;
                match made {
                    Ok(header) => {
                        self.header = Some(header);
                        break;
                    }
                    Err(err) => return Poll::Ready(Err(Box::new(err))),
                }
            }
            match self.source.cached() {
                Some(token) => {
                    self.header = Some(bearer(&token.token)?);
                    break;
                }
                None => {
                    let source = self.source.clone();
                    self.pending = Some(Box::pin(async move {
                        let token = source.token().await?;
                        bearer(&token.token)
                    }));
                }
            }
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        use futures_util::TryFutureExt;
        if let Some(header) = self.header.clone() {
            request.headers_mut().insert(AUTHORIZATION, header);
        }
        self.inner
            .call(request)
            .map_err(Into::into as fn(S::Error) -> tower::BoxError)
    }
}
