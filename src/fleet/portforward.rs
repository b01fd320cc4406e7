//! Byte streams to a pod's BuildKit through Kubernetes port-forwards: one port-forward per
//! connection, handed to the BuildKit client as a [`Dialer`]; and
//! [`Fleet::pod_client`](super::Fleet::pod_client), a BuildKit client for one pod (by its IP in
//! the cluster, else through a port-forward). The `kube-pod://` scheme built on these lives in
//! `kube_pod`.
//!
//! A connection is a SPDY/3.1 upgrade (`portforward_spdy`), the kubelet's own protocol, which
//! the API server passes through untouched and the kubelet reads at the least cost; where the
//! API server or a proxy in front of it refuses SPDY, a `v4.channel.k8s.io` WebSocket
//! (`portforward_websocket`), and the dialer keeps to that from then on.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::error::{Error, PortForwardError, Result};
use super::kube_client::{Fleet, with_retry};
use super::portforward_spdy::{self as spdy, SpdyStream};
use super::portforward_websocket::V4Stream;
use crate::buildkit::{BoxedIo, Client, Dialer, Endpoint, TlsOptions};

/// How long a new connection waits for the server's first bytes (see
/// [`PodDialer::open_checked`]).
const FIRST_BYTES_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Opens a new port-forward to one pod's port each time BuildKit's client needs a connection.
#[derive(Clone)]
pub struct PodDialer {
    pods: Api<Pod>,
    pod: String,
    namespace: String,
    port: u16,
    context: Option<String>,
    /// SPDY was refused where a WebSocket then worked: later connections go straight to the
    /// WebSocket.
    websocket_only: Arc<AtomicBool>,
}

impl std::fmt::Debug for PodDialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// The upgraded connection to the API server a port-forward travels on.
type Upgraded = TokioIo<hyper::upgrade::Upgraded>;

impl PodDialer {
    /// A dialer to `pod`'s `port` in the fleet's namespace.
    pub fn new(fleet: &Fleet, pod: impl Into<String>, port: u16) -> Self {
        PodDialer {
            pods: Api::namespaced(fleet.client.clone(), &fleet.namespace),
            pod: pod.into(),
            namespace: fleet.namespace.clone(),
            port,
            context: fleet.context.clone(),
            websocket_only: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The name of the pod this dialer forwards to, e.g. `buildkit-amd64-0`.
    pub fn pod(&self) -> &str {
        &self.pod
    }

    /// Opens one port-forwarded connection: SPDY, else a WebSocket.
    ///
    /// # Errors
    /// [`Error::Forbidden`] naming `create` on `pods/portforward` when RBAC refuses; other API
    /// errors (404 pod, 400 pod without a node) as [`Error::Api`] or [`Error::NotFound`];
    /// [`Error::PortForwardFailed`] when the kubelet refuses the streams.
    pub async fn open(&self) -> Result<PortForwardStream> {
        if !self.websocket_only.load(Ordering::Relaxed) {
            match self.upgrade_spdy().await {
                Ok(upgraded) => return self.start_spdy(upgraded).await,
                // Whatever refused it, the WebSocket's answer is the one to give: the same
                // refusals (RBAC, a missing pod) come back there, in the words users know.
                Err(err) => tracing::debug!(
                    pod = %self.pod,
                    error = &err as &dyn std::error::Error,
                    "SPDY port-forward refused; trying a WebSocket"
                ),
            }
            let stream = self.open_websocket().await?;
            self.websocket_only.store(true, Ordering::Relaxed);
            return Ok(stream);
        }
        self.open_websocket().await
    }

    /// Asks the API server for a SPDY/3.1 port-forward (a `POST`, as `kubectl` without
    /// WebSockets does); the upgraded connection, or why not.
    async fn upgrade_spdy(&self) -> std::result::Result<Upgraded, kube::Error> {
        let request = http::Request::post(format!(
            "{}/{}/portforward",
            self.pods.resource_url(),
            self.pod
        ))
        .header(http::header::CONNECTION, "Upgrade")
        .header(http::header::UPGRADE, spdy::UPGRADE)
        .header(spdy::PROTOCOL_HEADER, spdy::PROTOCOL)
        .body(kube::client::Body::empty())
        .map_err(kube::Error::HttpError)?;
        let response = self.pods.clone().into_client().send(request).await?;
        let protocol = response.headers().get(spdy::PROTOCOL_HEADER);
        if response.status() != http::StatusCode::SWITCHING_PROTOCOLS
            || protocol.is_none_or(|p| p != spdy::PROTOCOL)
        {
            return Err(kube::Error::Api(
                kube::core::Status::failure(
                    &format!("SPDY upgrade answered {}", response.status()),
                    "NoSpdy",
                )
                .with_code(response.status().as_u16())
                .boxed(),
            ));
        }
        let upgraded = hyper::upgrade::on(response).await.map_err(|e| {
            kube::Error::UpgradeConnection(kube::client::UpgradeConnectionError::GetPendingUpgrade(
                e,
            ))
        })?;
        Ok(TokioIo::new(upgraded))
    }

    /// Opens the port's streams on an upgraded SPDY connection.
    async fn start_spdy(&self, upgraded: Upgraded) -> Result<PortForwardStream> {
        let mut stream = SpdyStream::new(upgraded, self.port);
        std::future::poll_fn(|cx| stream.poll_start(cx))
            .await
            .map_err(|err| Error::PortForwardFailed {
                pod: self.pod.clone(),
                port: self.port,
                source: PortForwardError::from_read(err),
            })?;
        Ok(PortForwardStream {
            inner: Transport::Spdy(stream),
            pod: self.pod.clone(),
            port: self.port,
        })
    }

    /// Opens a `v4.channel.k8s.io` WebSocket port-forward.
    async fn open_websocket(&self) -> Result<PortForwardStream> {
        let upgrade = || async {
            let request = kube::core::Request::new(self.pods.resource_url())
                .portforward(&self.pod, &[self.port])
                .map_err(kube::Error::BuildRequest)?;
            self.pods.clone().into_client().connect(request).await
        };
        let connection = with_retry(upgrade).await.map_err(|e| {
            if matches!(&e, kube::Error::Api(s) if s.code == 404 && s.reason == "NotFound") {
                return Error::NotFound {
                    kind: "pod",
                    name: self.pod.clone(),
                    namespace: self.namespace.clone(),
                };
            }
            Error::from_kube(
                e,
                format!("port-forward to pod {} port {}", self.pod, self.port),
                ("create (and get)", "pods/portforward"),
                &self.namespace,
            )
        })?;
        Ok(PortForwardStream {
            inner: Transport::WebSocket(V4Stream::new(connection.into_stream(), self.port)),
            pod: self.pod.clone(),
            port: self.port,
        })
    }
}

/// One port-forwarded connection through the API server to the pod's kubelet, in SPDY or on
/// a `v4.channel.k8s.io` WebSocket. When the kubelet reports an error for the port (nothing
/// listens, the pod's network is gone), reading ends with that error rather than a bare EOF,
/// so the cause reaches the user.
///
/// Shutting the stream down ends the port-forward, both ways (the WebSocket protocol has no
/// half-close, and the kubelet ends the port when either way does).
pub struct PortForwardStream {
    inner: Transport,
    pod: String,
    port: u16,
}

/// The protocol a [`PortForwardStream`] speaks.
enum Transport {
    Spdy(SpdyStream<Upgraded>),
    WebSocket(V4Stream<Upgraded>),
}

impl PortForwardStream {
    /// Lets flushes wait for the next read, for a user that always reads while it waits: an
    /// HTTP/2 connection (see the SPDY stream's `poll_flush`). A WebSocket sends each flushed
    /// write as it comes.
    pub(crate) fn coalesce_flushes(mut self) -> Self {
        if let Transport::Spdy(s) = &mut self.inner {
            s.coalesce_flushes();
        }
        self
    }

    /// Reads until data is waiting (`true`) or the stream has ended (`false`).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        match &mut self.inner {
            Transport::Spdy(s) => s.poll_fill(cx),
            Transport::WebSocket(s) => s.poll_fill(cx),
        }
    }
}

impl std::fmt::Debug for PortForwardStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let protocol = match self.inner {
            Transport::Spdy(_) => "spdy",
            Transport::WebSocket(_) => "websocket",
        };
        write!(
            f,
            "PortForwardStream({}:{} {protocol})",
            self.pod, self.port
        )
    }
}

/// Runs `$call` on whichever protocol stream `$self` holds.
macro_rules! on_transport {
    ($self:ident, $s:ident => $call:expr) => {
        match &mut $self.inner {
            Transport::Spdy($s) => $call,
            Transport::WebSocket($s) => $call,
        }
    };
}

impl AsyncRead for PortForwardStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        on_transport!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for PortForwardStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        on_transport!(self, s => Pin::new(s).poll_write(cx, buf))
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        on_transport!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_transport!(self, s => Pin::new(s).poll_flush(cx))
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_transport!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

impl PodDialer {
    /// Opens one port-forwarded connection and waits (briefly) until the pod's server has
    /// spoken, so that a port with nothing listening fails here, in the kubelet's words.
    ///
    /// A port-forward is "open" even when nothing listens in the pod: the kubelet reports that
    /// afterwards, on the error channel. BuildKit (an HTTP/2 server) sends its settings first,
    /// so its first bytes arrive at once; a server that waits for the client to speak is
    /// handed over after a short wait.
    ///
    /// # Errors
    /// Errors of [`PodDialer::open`]; [`Error::PortForwardFailed`] when the connection fails
    /// or closes before the server has said anything.
    pub async fn open_checked(&self) -> Result<PortForwardStream> {
        let mut stream = self.open().await?;
        let failed = |source| Error::PortForwardFailed {
            pod: self.pod.clone(),
            port: self.port,
            source,
        };
        let first = std::future::poll_fn(|cx| stream.poll_fill(cx));
        match tokio::time::timeout(FIRST_BYTES_WAIT, first).await {
            Ok(Ok(false)) => Err(failed(PortForwardError::ClosedAtOnce)),
            Ok(Ok(true)) => Ok(stream),
            Ok(Err(err)) => Err(failed(PortForwardError::from_read(err))),
            Err(_) => Ok(stream),
        }
    }
}

impl Dialer for PodDialer {
    fn dial(&self) -> BoxFuture<'static, io::Result<BoxedIo>> {
        let this = self.clone();
        Box::pin(async move {
            match this.open_checked().await {
                Ok(stream) => Ok(Box::pin(stream.coalesce_flushes()) as BoxedIo),
                // `Other`, so the BuildKit client reports our error rather than a generic
                // kind; the fleet error itself is kept as the source, not flattened to text.
                Err(err) => Err(io::Error::other(err)),
            }
        })
    }

    fn describe(&self) -> String {
        let mut s = format!(
            "kube-pod://{}?namespace={}&port={}",
            self.pod, self.namespace, self.port
        );
        if let Some(ctx) = &self.context {
            s.push_str("&context=");
            s.push_str(ctx);
        }
        s
    }
}

impl Fleet {
    /// A BuildKit client for `pod`: straight to the pod's IP when running in the cluster,
    /// through a port-forward otherwise.
    ///
    /// # Errors
    /// [`Error::Buildkit`] when BuildKit cannot be reached.
    pub async fn pod_client(&self, pod: &str, ip: Option<&str>) -> Result<Client> {
        let wrap = |source| Error::Buildkit {
            pod: pod.to_owned(),
            source,
        };
        match (self.in_cluster, ip) {
            (true, Some(ip)) => {
                let endpoint = Endpoint::Tcp {
                    host: ip.to_owned(),
                    port: super::PORT,
                };
                Client::connect(endpoint, &TlsOptions::default())
                    .await
                    .map_err(wrap)
            }
            _ => Client::connect_with_dialer(PodDialer::new(self, pod, super::PORT))
                .await
                .map_err(wrap),
        }
    }
}
