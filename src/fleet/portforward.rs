//! Byte streams to a pod's BuildKit through Kubernetes port-forwards: one WebSocket per
//! connection (the v4 protocol carries one TCP connection per port), handed to the BuildKit
//! client as a [`Dialer`]; and [`Fleet::pod_client`](super::Fleet::pod_client), a BuildKit
//! client for one pod (by its IP in the cluster, else through a port-forward). The
//! `kube-pod://` scheme built on these lives in `kube_pod`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, DuplexStream, ReadBuf};

use super::error::{Error, PortForwardError, Result};
use super::kube_client::{Fleet, with_retry};
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
}

impl std::fmt::Debug for PodDialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl PodDialer {
    /// A dialer to `pod`'s `port` in the fleet's namespace.
    pub fn new(fleet: &Fleet, pod: impl Into<String>, port: u16) -> Self {
        PodDialer {
            pods: Api::namespaced(fleet.client.clone(), &fleet.namespace),
            pod: pod.into(),
            namespace: fleet.namespace.clone(),
            port,
            context: fleet.context.clone(),
        }
    }

    /// The name of the pod this dialer forwards to, e.g. `buildkit-amd64-0`.
    pub fn pod(&self) -> &str {
        &self.pod
    }

    /// Opens one port-forwarded connection.
    ///
    /// # Errors
    /// [`Error::Forbidden`] naming `create` on `pods/portforward` when RBAC refuses; other API
    /// errors (404 pod, 400 pod without a node) as [`Error::Api`] or [`Error::NotFound`].
    pub async fn open(&self) -> Result<PortForwardStream> {
        let ports = [self.port];
        let mut forwarder = with_retry(|| self.pods.portforward(&self.pod, &ports))
            .await
            .map_err(|e| {
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
        let missing = || Error::PortForwardFailed {
            pod: self.pod.clone(),
            port: self.port,
            source: PortForwardError::NoStream,
        };
        let stream = forwarder.take_stream(self.port).ok_or_else(missing)?;
        let errors = forwarder.take_error(self.port).ok_or_else(missing)?;
        let pod = self.pod.clone();
        let port = self.port;
        // join() waits for the stream to be dropped; it then ends the WebSocket.
        tokio::spawn(async move {
            if let Err(err) = forwarder.join().await {
                // SendAfterClosing after the server closed is the normal end.
                tracing::debug!(%pod, port, "port-forward ended: {err}");
            }
        });
        Ok(PortForwardStream {
            pending: bytes::Bytes::new(),
            inner: stream,
            error: Some(Box::pin(errors)),
            pod: self.pod.clone(),
            port: self.port,
        })
    }
}

/// One port-forwarded connection. When the kubelet reports an error for the port (nothing
/// listens, the pod's network is gone), reading ends with that error rather than a bare EOF,
/// so the cause reaches the user.
pub struct PortForwardStream {
    /// Bytes read ahead by [`PodDialer::dial`], served before the rest.
    pending: bytes::Bytes,
    inner: DuplexStream,
    error: Option<Pin<Box<dyn Future<Output = Option<String>> + Send>>>,
    pod: String,
    port: u16,
}

impl std::fmt::Debug for PortForwardStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PortForwardStream({}:{})", self.pod, self.port)
    }
}

impl AsyncRead for PortForwardStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.pending.is_empty() {
            let n = self.pending.len().min(buf.remaining());
            let chunk = self.pending.split_to(n);
            buf.put_slice(&chunk);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if !matches!(polled, Poll::Ready(Ok(()))) || buf.filled().len() != before {
            return polled;
        }
        // EOF. kube hands the error message over before it closes the stream, so a port that
        // failed has its text ready here.
        if let Some(error) = self.error.as_mut()
            && let Poll::Ready(message) = error.as_mut().poll(cx)
        {
            self.error = None;
            if let Some(message) = message {
                return Poll::Ready(Err(io::Error::other(PortForwardError::KubeletRefused {
                    message: message.trim().to_owned(),
                })));
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for PortForwardStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
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
        let mut first = vec![0u8; 16 * 1024];
        match tokio::time::timeout(FIRST_BYTES_WAIT, stream.read(&mut first)).await {
            Ok(Ok(0)) => Err(failed(PortForwardError::ClosedAtOnce)),
            Ok(Ok(n)) => {
                first.truncate(n);
                stream.pending = first.into();
                Ok(stream)
            }
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
                Ok(stream) => Ok(Box::pin(stream) as BoxedIo),
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

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    /// A port-forwarded connection whose peer has closed and whose error channel holds
    /// `message`, as kube hands them over when the kubelet refuses the port.
    fn refused_stream(message: &str) -> PortForwardStream {
        let (ours, theirs) = tokio::io::duplex(64);
        drop(theirs);
        let message = Some(message.to_owned());
        PortForwardStream {
            pending: bytes::Bytes::new(),
            inner: ours,
            error: Some(Box::pin(async move { message })),
            pod: "buildkit-amd64-1".into(),
            port: 1234,
        }
    }

    #[tokio::test]
    async fn the_kubelets_refusal_ends_the_read_as_a_typed_error() {
        let mut stream = refused_stream("error forwarding port 1234 to pod buildkit-amd64-1\n");
        let mut buf = [0u8; 8];
        let err = stream.read(&mut buf).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "error forwarding port 1234 to pod buildkit-amd64-1"
        );
        match err.downcast::<PortForwardError>() {
            Ok(PortForwardError::KubeletRefused { message }) => {
                assert_eq!(
                    message,
                    "error forwarding port 1234 to pod buildkit-amd64-1"
                );
            }
            other => panic!("{other:?}"),
        }
        // Said once: the next read is a plain end of stream.
        assert_eq!(stream.read(&mut buf).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_failed_port_forward_keeps_the_refusal_as_its_source() {
        let mut stream = refused_stream("nothing listens");
        let mut buf = [0u8; 8];
        let read = stream.read(&mut buf).await.unwrap_err();
        let err = Error::PortForwardFailed {
            pod: "buildkit-amd64-1".into(),
            port: 1234,
            source: PortForwardError::from_read(read),
        };
        assert_eq!(
            err.to_string(),
            "port-forward to pod buildkit-amd64-1 port 1234 failed"
        );
        assert!(
            matches!(
                err.source().and_then(|e| e.downcast_ref::<PortForwardError>()),
                Some(PortForwardError::KubeletRefused { message }) if message == "nothing listens"
            ),
            "{err:?}"
        );

        // Any other read failure is kept as the io::Error it is.
        let other = PortForwardError::from_read(io::Error::from(io::ErrorKind::BrokenPipe));
        let PortForwardError::Read(io) = &other else {
            panic!("{other:?}");
        };
        assert_eq!(io.kind(), io::ErrorKind::BrokenPipe);
        assert!(other.source().is_some());
    }
}
