//! Byte streams to a pod's BuildKit through Kubernetes port-forwards: one WebSocket per
//! connection (the v4 protocol carries one TCP connection per port), handed to the BuildKit
//! client as a [`Dialer`]; and [`Fleet::pod_client`](super::Fleet::pod_client), a BuildKit
//! client for one pod (by its IP in the cluster, else through a port-forward). The
//! `kube-pod://` scheme built on these lives in `kube_pod`.
//!
//! The stream speaks `v4.channel.k8s.io` itself on the WebSocket kube upgrades, rather than
//! through kube's `Portforwarder`: that one sends every 4 KiB it reads as its own WebSocket
//! message, flushed on its own, through a channel and two in-memory pipes. Here the writes
//! are gathered until the writer flushes (HTTP/2 flushes after each batch of frames) or
//! [`MAX_MESSAGE`] bytes are waiting, so the kubelet receives a few large messages instead
//! of many small ones, and bytes are copied once on the way in and once on the way out.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::future::BoxFuture;
use futures_util::{Sink, Stream};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Message};

use super::error::{Error, PortForwardError, Result};
use super::kube_client::{Fleet, with_retry};
use crate::buildkit::{BoxedIo, Client, Dialer, Endpoint, TlsOptions};

/// How long a new connection waits for the server's first bytes (see
/// [`PodDialer::open_checked`]).
const FIRST_BYTES_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// The most bytes one WebSocket message to the pod carries (the channel byte aside). Writes
/// are gathered up to this size unless flushed first. client-go's size (its copy buffer): the
/// kubelet's Go WebSocket reader allocates each message whole, and measured through the real
/// handler 32 KiB cost it less CPU than 256 KiB (scripts/bench-portforward.sh).
const MAX_MESSAGE: usize = 32 * 1024;

/// The data channel of the (only) port: `v4.channel.k8s.io` numbers port `i`'s data `2i` and
/// its errors `2i + 1`.
const DATA: u8 = 0;
/// The error channel of the port.
const ERROR: u8 = 1;

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
            inner: V4Stream::new(connection.into_stream(), self.port),
            pod: self.pod.clone(),
        })
    }
}

/// One port-forwarded connection: `v4.channel.k8s.io` on a WebSocket to the API server, which
/// relays it to the pod's kubelet. When the kubelet reports an error for the port (nothing
/// listens, the pod's network is gone), reading ends with that error rather than a bare EOF,
/// so the cause reaches the user.
///
/// The protocol has no half-close: shutting the stream down closes the WebSocket, both ways.
pub struct PortForwardStream {
    inner: V4Stream<TokioIo<hyper::upgrade::Upgraded>>,
    pod: String,
}

impl std::fmt::Debug for PortForwardStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PortForwardStream({}:{})", self.pod, self.inner.port)
    }
}

impl AsyncRead for PortForwardStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
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
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The `v4.channel.k8s.io` client side for one port over any WebSocket transport.
struct V4Stream<S> {
    ws: WebSocketStream<S>,
    port: u16,
    /// Data from the pod not yet read (without its channel byte).
    pending: Bytes,
    /// Whether each channel's first message, which names the port, has arrived.
    headers: [bool; 2],
    /// The kubelet's error text for the port, reported once the data has been read.
    refusal: Option<String>,
    /// The WebSocket has ended (close frame or end of stream).
    read_done: bool,
    /// Written bytes waiting to go out as one message: the data channel byte, then the data.
    out: BytesMut,
}

/// A WebSocket failure as the [`io::Error`] a byte stream reports, the typed cause inside.
fn broken(err: tungstenite::Error) -> io::Error {
    let (kind, source) = match err {
        tungstenite::Error::Io(io) => (io.kind(), io),
        other => (io::ErrorKind::ConnectionReset, io::Error::other(other)),
    };
    io::Error::new(kind, PortForwardError::Broken(source))
}

impl<S: AsyncRead + AsyncWrite + Unpin> V4Stream<S> {
    fn new(ws: WebSocketStream<S>, port: u16) -> Self {
        V4Stream {
            ws,
            port,
            pending: Bytes::new(),
            headers: [false; 2],
            refusal: None,
            read_done: false,
            out: BytesMut::new(),
        }
    }

    /// Reads messages until data is waiting (`true`) or the WebSocket has ended (`false`);
    /// an error the kubelet reported for the port ends it instead, once.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        loop {
            if !self.pending.is_empty() {
                return Poll::Ready(Ok(true));
            }
            if self.read_done {
                // The kubelet's text arrives before the close, so a port that failed has it
                // here; it is said once, then the stream is at its end.
                if let Some(message) = self.refusal.take() {
                    return Poll::Ready(Err(io::Error::other(PortForwardError::KubeletRefused {
                        message: message.trim().to_owned(),
                    })));
                }
                return Poll::Ready(Ok(false));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(message))) => self.receive(message)?,
                Some(Ok(Message::Close(_))) | None => self.read_done = true,
                // Pings are answered by tungstenite; nothing else belongs to the protocol.
                Some(Ok(_)) => {}
                Some(Err(tungstenite::Error::ConnectionClosed)) => self.read_done = true,
                Some(Err(err)) => {
                    self.read_done = true;
                    // The kubelet's own words, when it sent some, say more than the break.
                    if self.refusal.is_none() {
                        return Poll::Ready(Err(broken(err)));
                    }
                }
            }
        }
    }

    /// Takes in one message from the API server: the port's data, its error text, or the
    /// first message of a channel (the port number, checked).
    fn receive(&mut self, mut message: Bytes) -> io::Result<()> {
        if message.is_empty() {
            return Ok(());
        }
        let channel = message.get_u8();
        let header = match channel {
            DATA | ERROR => &mut self.headers[usize::from(channel)],
            // Channels of other ports: this stream forwards one.
            _ => return Ok(()),
        };
        if !*header {
            *header = true;
            let port = (message.len() == 2).then(|| message.get_u16_le());
            if port != Some(self.port) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    PortForwardError::Broken(io::Error::other(format!(
                        "channel {channel} opened for port {port:?}, not {}",
                        self.port
                    ))),
                ));
            }
            return Ok(());
        }
        if channel == ERROR {
            let text = String::from_utf8_lossy(&message);
            self.refusal.get_or_insert_default().push_str(&text);
        } else {
            self.pending = message;
        }
        Ok(())
    }

    /// Sends the gathered writes as one message (without flushing the WebSocket).
    fn poll_send_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.out.len() <= 1 {
            return Poll::Ready(Ok(()));
        }
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(broken)?;
        let message = self.out.split().freeze();
        Pin::new(&mut self.ws)
            .start_send(Message::Binary(message))
            .map_err(broken)?;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for V4Stream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if ready!(self.poll_fill(cx))? {
            let n = self.pending.len().min(buf.remaining());
            buf.put_slice(&self.pending.split_to(n));
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for V4Stream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.out.len() > MAX_MESSAGE {
            ready!(this.poll_send_out(cx))?;
        }
        if this.out.is_empty() {
            this.out.reserve(MAX_MESSAGE.min(64 * 1024) + 1);
            this.out.extend_from_slice(&[DATA]);
        }
        let mut taken = 0;
        for buf in bufs {
            let room = MAX_MESSAGE + 1 - this.out.len();
            if room == 0 {
                break;
            }
            let n = buf.len().min(room);
            this.out.extend_from_slice(&buf[..n]);
            taken += n;
        }
        Poll::Ready(Ok(taken))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send_out(cx))?;
        Pin::new(&mut self.ws).poll_flush(cx).map_err(broken)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send_out(cx))?;
        match ready!(Pin::new(&mut self.ws).poll_close(cx)) {
            Ok(())
            | Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                Poll::Ready(Ok(()))
            }
            Err(err) => Poll::Ready(Err(broken(err))),
        }
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
        let first = std::future::poll_fn(|cx| stream.inner.poll_fill(cx));
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

    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio_tungstenite::tungstenite::protocol::Role;

    use super::*;

    /// A port-forward to port 1234 over an in-memory pipe, and the server's (the kubelet's, as
    /// the API server relays it) end of the WebSocket, both channel headers sent.
    async fn pair() -> (V4Stream<DuplexStream>, WebSocketStream<DuplexStream>) {
        let (client, server) = tokio::io::duplex(1 << 20);
        let client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        let mut server = WebSocketStream::from_raw_socket(server, Role::Server, None).await;
        for channel in [DATA, ERROR] {
            let header = vec![channel, 0xd2, 0x04]; // 1234, little-endian
            server.send(Message::binary(header)).await.unwrap();
        }
        (V4Stream::new(client, 1234), server)
    }

    #[tokio::test]
    async fn the_kubelets_refusal_ends_the_read_as_a_typed_error() {
        let (mut stream, mut server) = pair().await;
        let text = b"\x01error forwarding port 1234 to pod buildkit-amd64-1\n".to_vec();
        server.send(Message::binary(text)).await.unwrap();
        server.close(None).await.unwrap();
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
        let (mut stream, mut server) = pair().await;
        server
            .send(Message::binary(b"\x01nothing listens".to_vec()))
            .await
            .unwrap();
        drop(server);
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

    #[tokio::test]
    async fn writes_are_gathered_into_large_messages_until_a_flush() {
        let (mut stream, mut server) = pair().await;
        // 4 MiB in HTTP/2-sized writes (a 9-byte frame header, then 16 KiB of data), flushed
        // once at the end, as the BuildKit client's HTTP/2 connection writes an upload.
        let chunk: Vec<u8> = (0..16384u32).map(|i| i as u8).collect();
        let mut sent = 0;
        let writer = async {
            for _ in 0..256 {
                stream.write_all(&[0u8; 9]).await.unwrap();
                stream.write_all(&chunk).await.unwrap();
                sent += 9 + chunk.len();
            }
            stream.flush().await.unwrap();
            // A small write is not held back once flushed.
            stream.write_all(b"ping").await.unwrap();
            stream.flush().await.unwrap();
            stream
        };
        let reader = async {
            let mut sizes = Vec::new();
            let mut total = 0;
            while total < 256 * (9 + 16384) + 4 {
                let Some(Ok(Message::Binary(m))) = server.next().await else {
                    panic!("the stream ended early");
                };
                assert_eq!(m[0], DATA, "data goes on channel 0");
                total += m.len() - 1;
                sizes.push(m.len() - 1);
            }
            sizes
        };
        let (_stream, sizes) = tokio::join!(writer, reader);
        assert_eq!(sizes.last(), Some(&4), "the flushed small write: {sizes:?}");
        // Full messages but for the end of each flushed batch: not one message per write.
        let total: usize = sizes.iter().sum();
        assert!(
            sizes.len() <= total / MAX_MESSAGE + 2,
            "{} messages: {sizes:?}",
            sizes.len()
        );
        assert!(sizes.iter().all(|&n| n <= MAX_MESSAGE), "{sizes:?}");
    }

    #[tokio::test]
    async fn data_reads_whole_and_a_wrong_port_header_is_refused() {
        let (mut stream, mut server) = pair().await;
        let mut message = vec![DATA];
        message.extend((0..100_000u32).map(|i| i as u8));
        server.send(Message::binary(message.clone())).await.unwrap();
        server.close(None).await.unwrap();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, message[1..]);

        let (client, server) = tokio::io::duplex(1 << 16);
        let client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        let mut server = WebSocketStream::from_raw_socket(server, Role::Server, None).await;
        server
            .send(Message::binary(vec![DATA, 0x39, 0x05]))
            .await
            .unwrap();
        let mut stream = V4Stream::new(client, 1234);
        let err = stream.read(&mut [0u8; 8]).await.unwrap_err();
        assert!(
            matches!(
                err.get_ref()
                    .and_then(|e| e.downcast_ref::<PortForwardError>()),
                Some(PortForwardError::Broken(_))
            ),
            "{err:?}"
        );
    }
}
