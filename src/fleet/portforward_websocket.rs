//! The port-forward in `v4.channel.k8s.io` on the WebSocket kube upgrades: what
//! kube-rs and the other non-Go clients speak, and the way through servers and proxies that
//! refuse a SPDY upgrade (see `portforward_spdy` for the one tried first).
//!
//! Spoken here rather than through kube's `Portforwarder`, which sends every 4 KiB it reads as
//! its own WebSocket message, flushed on its own, through a channel and two in-memory pipes.
//! Here the writes are gathered until the writer flushes (HTTP/2 flushes after each batch of
//! frames) or [`MAX_MESSAGE`] bytes are waiting, so the kubelet receives a few large messages
//! instead of many small ones, and bytes are copied once on the way in and once on the way out.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Message};

use super::error::PortForwardError;
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

/// The `v4.channel.k8s.io` client side for one port over any WebSocket transport.
pub(super) struct V4Stream<S> {
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
    pub(super) fn new(ws: WebSocketStream<S>, port: u16) -> Self {
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
    pub(super) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
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

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio_tungstenite::tungstenite::protocol::Role;

    use super::*;
    use crate::fleet::Error;

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
