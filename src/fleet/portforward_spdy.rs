//! A port-forward in SPDY/3.1 (`portforward.k8s.io`), the kubelet's own port-forward protocol
//! and what `kubectl port-forward` speaks to it.
//!
//! Why not only the `v4.channel.k8s.io` WebSocket: the API server passes a SPDY upgrade on to
//! the kubelet byte for byte (as it does the v4 WebSocket), and the kubelet reads a SPDY data
//! frame straight into one buffer, where each v4 WebSocket message costs it an unmasking loop
//! over every byte and a growing copy of the message. Through the real handler a cold build
//! cost the kubelet markedly less CPU in SPDY (scripts/bench-portforward.sh).
//!
//! The client side for one connection, as client-go opens it: an error stream (id 1) and a data
//! stream (id 3), both carrying the headers `streamtype`, `port` and `requestid`; the kubelet
//! pairs them by `requestid`, connects to the port, and copies the data stream to it. Its error
//! text, when the port cannot be reached, arrives on the error stream. Only the frames this
//! needs are spoken:
//!
//! - sent: SYN_STREAM (twice), DATA (the data stream's bytes, a FIN on each stream), and the
//!   answer to a PING;
//! - read: SYN_REPLY, DATA, RST_STREAM, GOAWAY, PING; anything else is skipped.
//!
//! Headers of a SYN_STREAM travel in a zlib stream shared by the connection, which SPDY
//! starts with a preset dictionary. A zlib stream need not use its dictionary: these are
//! written as stored (uncompressed) deflate blocks, which any inflater reads, so no
//! compression code is needed. The server's headers (its SYN_REPLYs) are not needed and are
//! skipped unread.
//!
//! The kubelet's SPDY library does no flow control (no WINDOW_UPDATE is sent or heeded), like
//! client-go: the connection's own backpressure paces the data.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::error::PortForwardError;

/// The `Upgrade` token of the request.
pub(super) const UPGRADE: &str = "SPDY/3.1";
/// The stream protocol asked for in `X-Stream-Protocol-Version` (and echoed in the 101).
pub(super) const PROTOCOL: &str = "portforward.k8s.io";
/// The header naming the stream protocol, in the request and in the answer.
pub(super) const PROTOCOL_HEADER: &str = "x-stream-protocol-version";

/// SPDY version 3 (SPDY/3.1 differs only in flow control, which the kubelet does not do).
const VERSION: u16 = 3;
/// Control frame types.
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
/// The last frame of its stream from this side.
const FLAG_FIN: u8 = 0x01;
/// Every frame's header: a control word or stream id, then flags and a 24-bit length.
const HEADER: usize = 8;

/// Our streams: client-initiated ids are odd, in the order created. client-go creates the
/// error stream first.
const ERROR_STREAM: u32 = 1;
const DATA_STREAM: u32 = 3;

/// The most bytes one data frame carries. The kubelet's reader allocates each frame whole;
/// writes are gathered up to this size unless the writer flushes first.
const MAX_FRAME: usize = 32 * 1024;
/// The largest control frame taken in; real ones are a few dozen bytes.
const MAX_CONTROL: usize = 64 * 1024;
/// Bytes taken from the connection in one read.
const READ_CHUNK: usize = 256 * 1024;
/// Queued output past which writes wait for the connection.
const WRITE_QUEUE: usize = 256 * 1024;

/// A zlib stream header: deflate, 32 KiB window, no preset dictionary used (FDICT clear).
const ZLIB_HEADER: [u8; 2] = [0x78, 0x01];
/// An empty stored deflate block (not the last), what a zlib sync flush writes.
const SYNC_FLUSH: [u8; 5] = [0x00, 0x00, 0x00, 0xff, 0xff];

/// One port-forwarded connection in SPDY over any byte stream (the upgraded connection to the
/// API server).
pub(super) struct SpdyStream<S> {
    io: S,
    port: u16,
    /// Bytes read from the connection, not yet parsed.
    rbuf: BytesMut,
    /// The data frame being read: its stream, the bytes of it still to come, and its FIN.
    frame: Option<(u32, usize, bool)>,
    /// The data stream's bytes, parsed and not yet read.
    pending: VecDeque<Bytes>,
    /// Which of our streams the server has answered (bit 0 error, bit 1 data).
    replied: u8,
    /// The kubelet's error text for the port, reported once the data has been read.
    refusal: Option<String>,
    /// Why the server ended the data stream otherwise (a reset, a GOAWAY), if it did.
    broken: Option<String>,
    /// No more data will come: the data stream's FIN, a reset, or the connection's end.
    read_done: bool,
    /// Frames waiting to be written; a data frame still being filled sits last.
    wbuf: BytesMut,
    /// Where in `wbuf` the data frame being filled starts (its header), if one is.
    open: Option<usize>,
    /// Our FIN on the data stream has been queued.
    fin_sent: bool,
    /// Flushes may be put off until the next read (see [`SpdyStream::poll_flush`]).
    coalesce: bool,
    /// A flush was put off: the frame being filled goes out at the next read, or at the next
    /// flush with nothing written since.
    flush_owed: bool,
    /// Bytes were written since the last flush was asked for.
    fresh: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> SpdyStream<S> {
    /// Queues the two streams' SYN_STREAMs for `port` (sent with the first flush; see
    /// [`SpdyStream::poll_start`]).
    pub(super) fn new(io: S, port: u16) -> Self {
        let mut stream = SpdyStream {
            io,
            port,
            rbuf: BytesMut::new(),
            frame: None,
            pending: VecDeque::new(),
            replied: 0,
            refusal: None,
            broken: None,
            read_done: false,
            wbuf: BytesMut::with_capacity(WRITE_QUEUE + MAX_FRAME + 2 * HEADER),
            open: None,
            fin_sent: false,
            coalesce: false,
            flush_owed: false,
            fresh: false,
        };
        let port = port.to_string();
        let mut first = true;
        for (id, kind) in [(ERROR_STREAM, "error"), (DATA_STREAM, "data")] {
            let headers = [("streamtype", kind), ("port", &port), ("requestid", "0")];
            stream.put_syn_stream(id, &headers, first);
            first = false;
            if id == ERROR_STREAM {
                // As client-go: nothing is ever written to the error stream.
                stream.put_data_frame(ERROR_STREAM, FLAG_FIN, &[]);
            }
        }
        stream
    }

    /// Lets flushes be put off until the next read, for a user that always reads while it
    /// waits (an HTTP/2 connection); see [`SpdyStream::poll_flush`].
    pub(super) fn coalesce_flushes(&mut self) {
        self.coalesce = true;
    }

    /// Sends the streams' SYN_STREAMs and waits until the server has answered both (its
    /// SPDY library drops data sent on a stream before it has replied to it).
    pub(super) fn poll_start(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        ready!(Pin::new(&mut self.io).poll_flush(cx))?;
        while self.replied != 0b11 {
            if self.read_done {
                return Poll::Ready(Err(self.end_error().unwrap_or_else(|| {
                    broken(format!(
                        "the connection ended before the streams for port {} were answered",
                        self.port
                    ))
                })));
            }
            if !self.parse()? {
                ready!(self.poll_read_more(cx))?;
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Reads until data is waiting (`true`) or the data stream has ended (`false`); an error
    /// the kubelet reported for the port ends it instead, once.
    pub(super) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        loop {
            if !self.pending.is_empty() {
                return Poll::Ready(Ok(true));
            }
            if self.read_done {
                return match self.end_error() {
                    Some(err) => Poll::Ready(Err(err)),
                    None => Poll::Ready(Ok(false)),
                };
            }
            if !self.parse()? {
                ready!(self.poll_read_more(cx))?;
            }
        }
    }

    /// The error the end of the data stream reports, once: the kubelet's words, else the
    /// reason the server broke the stream.
    fn end_error(&mut self) -> Option<io::Error> {
        if let Some(message) = self.refusal.take() {
            return Some(io::Error::other(PortForwardError::KubeletRefused {
                message: message.trim().to_owned(),
            }));
        }
        self.broken.take().map(broken)
    }

    /// Reads more of the connection into `rbuf`; its end ends the stream.
    fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.rbuf.reserve(READ_CHUNK);
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.rbuf
        ))?;
        if n == 0 {
            self.read_done = true;
        }
        Poll::Ready(Ok(()))
    }

    /// Takes in what `rbuf` holds of the next frame; `false` when more bytes are needed.
    fn parse(&mut self) -> io::Result<bool> {
        if let Some((stream, left, fin)) = self.frame {
            if left == 0 {
                self.frame = None;
                if fin && stream == DATA_STREAM {
                    self.read_done = true;
                }
                return Ok(true);
            }
            let n = left.min(self.rbuf.len());
            if n == 0 {
                return Ok(false);
            }
            let bytes = self.rbuf.split_to(n).freeze();
            match stream {
                DATA_STREAM => self.pending.push_back(bytes),
                ERROR_STREAM => self
                    .refusal
                    .get_or_insert_default()
                    .push_str(&String::from_utf8_lossy(&bytes)),
                _ => {}
            }
            self.frame = Some((stream, left - n, fin));
            return Ok(true);
        }
        if self.rbuf.len() < HEADER {
            return Ok(false);
        }
        let word = u32::from_be_bytes([self.rbuf[0], self.rbuf[1], self.rbuf[2], self.rbuf[3]]);
        let flags = self.rbuf[4];
        let length = usize::from(self.rbuf[5]) << 16
            | usize::from(self.rbuf[6]) << 8
            | usize::from(self.rbuf[7]);
        if word & 0x8000_0000 == 0 {
            self.rbuf.advance(HEADER);
            self.frame = Some((word, length, flags & FLAG_FIN != 0));
            return Ok(true);
        }
        if length > MAX_CONTROL {
            return Err(broken(format!(
                "the server sent a SPDY control frame of {length} bytes"
            )));
        }
        if self.rbuf.len() < HEADER + length {
            return Ok(false);
        }
        let mut frame = self.rbuf.split_to(HEADER + length);
        frame.advance(HEADER);
        self.control(word as u16, flags, frame.freeze())?;
        Ok(true)
    }

    /// Acts on one control frame (its payload), by type.
    fn control(&mut self, kind: u16, flags: u8, mut payload: Bytes) -> io::Result<()> {
        let stream = (payload.len() >= 4).then(|| payload.get_u32() & 0x7fff_ffff);
        match (kind, stream) {
            (SYN_REPLY, Some(ERROR_STREAM)) => self.replied |= 0b01,
            (SYN_REPLY, Some(DATA_STREAM)) => {
                self.replied |= 0b10;
                if flags & FLAG_FIN != 0 {
                    self.read_done = true;
                }
            }
            (RST_STREAM, Some(id @ (ERROR_STREAM | DATA_STREAM))) => {
                let status = (payload.len() >= 4).then(|| payload.get_u32());
                self.read_done = true;
                self.broken.get_or_insert_with(|| {
                    format!(
                        "the kubelet reset stream {id} (status {})",
                        status.unwrap_or(0)
                    )
                });
            }
            (GOAWAY, _) => {
                self.read_done = true;
                self.broken
                    .get_or_insert_with(|| "the kubelet ended the SPDY connection".into());
            }
            (PING, Some(id)) => {
                // Answered with the next write: HTTP/2 writes (and flushes) often.
                self.close_frame();
                self.put_control(PING, 0, &id.to_be_bytes());
            }
            _ => {}
        }
        Ok(())
    }

    /// Appends a control frame to the output.
    fn put_control(&mut self, kind: u16, flags: u8, payload: &[u8]) {
        self.wbuf.put_u16(0x8000 | VERSION);
        self.wbuf.put_u16(kind);
        self.put_flags_and_length(flags, payload.len());
        self.wbuf.extend_from_slice(payload);
    }

    fn put_flags_and_length(&mut self, flags: u8, length: usize) {
        // Lengths are at most MAX_FRAME or a few dozen bytes: well within 24 bits.
        self.wbuf
            .put_u32(u32::from(flags) << 24 | (length as u32 & 0x00ff_ffff));
    }

    /// Appends a whole data frame to the output.
    fn put_data_frame(&mut self, stream: u32, flags: u8, data: &[u8]) {
        self.wbuf.put_u32(stream);
        self.put_flags_and_length(flags, data.len());
        self.wbuf.extend_from_slice(data);
    }

    /// Appends a SYN_STREAM opening `id` with `headers` (names in lower case). The first
    /// header block of the connection starts the zlib stream.
    fn put_syn_stream(&mut self, id: u32, headers: &[(&str, &str)], first: bool) {
        let mut block = Vec::new();
        block.put_u32(headers.len() as u32);
        for (name, value) in headers {
            block.put_u32(name.len() as u32);
            block.extend_from_slice(name.as_bytes());
            block.put_u32(value.len() as u32);
            block.extend_from_slice(value.as_bytes());
        }
        let mut zlib = Vec::new();
        if first {
            zlib.extend_from_slice(&ZLIB_HEADER);
        }
        // A stored block, not the last: BFINAL 0, BTYPE 00 (then byte-aligned), LEN, NLEN.
        let len = block.len() as u16;
        zlib.push(0);
        zlib.put_u16_le(len);
        zlib.put_u16_le(!len);
        zlib.extend_from_slice(&block);
        // Then an empty stored block, as zlib's sync flush ends a header block: Go's inflater
        // hands out a stored block's bytes only once it has read the next block's header, and
        // the frame must hold that header for the headers to be read without waiting.
        zlib.extend_from_slice(&SYNC_FLUSH);
        let mut payload = Vec::with_capacity(10 + zlib.len());
        payload.put_u32(id);
        payload.put_u32(0); // associated-to stream
        payload.put_u16(0); // priority and slot
        payload.extend_from_slice(&zlib);
        self.put_control(SYN_STREAM, 0, &payload);
    }

    /// Completes the data frame being filled (its header written), or drops it when empty.
    fn close_frame(&mut self) {
        if let Some(at) = self.open.take() {
            let len = self.wbuf.len() - at - HEADER;
            if len == 0 {
                self.wbuf.truncate(at);
                return;
            }
            let header = &mut self.wbuf[at..at + HEADER];
            header[..4].copy_from_slice(&DATA_STREAM.to_be_bytes());
            header[4..].copy_from_slice(&(len as u32).to_be_bytes());
            // The length's high byte is the flags byte: none (len < 2^24).
        }
    }

    /// Writes out everything queued, the frame being filled included, and flushes the
    /// connection.
    fn poll_flush_now(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        ready!(Pin::new(&mut self.io).poll_flush(cx))?;
        self.flush_owed = false;
        Poll::Ready(Ok(()))
    }

    /// Writes out every complete frame queued.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.close_frame();
        while !self.wbuf.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.wbuf))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wbuf.advance(n);
        }
        Poll::Ready(Ok(()))
    }
}

/// A broken port-forward connection, as the [`io::Error`] a byte stream reports.
fn broken(message: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionReset,
        PortForwardError::Broken(io::Error::other(message)),
    )
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for SpdyStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.flush_owed {
            // Pending only while the connection cannot take more; its readiness wakes this
            // task, and the frames stay queued for the next write or flush.
            if let Poll::Ready(result) = this.poll_flush_now(cx) {
                result?;
            }
        }
        if ready!(this.poll_fill(cx))? {
            while buf.remaining() > 0 {
                let Some(front) = this.pending.front_mut() else {
                    break;
                };
                let n = front.len().min(buf.remaining());
                buf.put_slice(&front.split_to(n));
                if front.is_empty() {
                    this.pending.pop_front();
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for SpdyStream<S> {
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
        if this.wbuf.len() >= WRITE_QUEUE {
            ready!(this.poll_drain(cx))?;
        }
        let mut taken = 0;
        for buf in bufs {
            let mut buf = &buf[..];
            while !buf.is_empty() && this.wbuf.len() < WRITE_QUEUE {
                let at = match this.open {
                    Some(at) if this.wbuf.len() - at - HEADER < MAX_FRAME => at,
                    _ => {
                        this.close_frame();
                        let at = this.wbuf.len();
                        this.wbuf.put_bytes(0, HEADER);
                        this.open = Some(at);
                        at
                    }
                };
                let room = MAX_FRAME - (this.wbuf.len() - at - HEADER);
                let n = room.min(buf.len());
                this.wbuf.extend_from_slice(&buf[..n]);
                buf = &buf[n..];
                taken += n;
            }
        }
        if taken > 0 {
            this.fresh = true;
        }
        Poll::Ready(Ok(taken))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Flushes; with [`SpdyStream::coalesce_flushes`], a flush that follows new bytes is
    /// put off until the next read, or the next flush with nothing written since.
    ///
    /// Why: h2 flushes its transport after every DATA frame it writes (16 KiB, the daemon's
    /// frame size). Taken at its word, each flush would end a SPDY frame of about 16 KiB:
    /// twice the frames kubectl's 32 KiB reads make for the same bytes, and the kubelet pays
    /// per frame (a read, an allocation, a channel send, a write to the pod). Through the
    /// real handler it made ~20% more writes for our traffic than for kubectl's. h2 writes
    /// the frames it has queued one after another within one poll of its task, so putting
    /// off the flushes between them lets them fill whole frames. The last one is owed: this
    /// task is woken at once, and h2 reads at the start of every poll, which pays it. Nothing
    /// waits for a timer.
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.coalesce && this.fresh {
            this.fresh = false;
            this.flush_owed = true;
            cx.waker().wake_by_ref();
            return Poll::Ready(Ok(()));
        }
        this.poll_flush_now(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.fin_sent {
            self.close_frame();
            self.put_data_frame(DATA_STREAM, FLAG_FIN, &[]);
            self.fin_sent = true;
        }
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;

    /// One frame as the server reads it: control type (None for data) or stream, flags,
    /// payload.
    #[derive(Debug)]
    struct Frame {
        control: Option<u16>,
        stream: u32,
        flags: u8,
        payload: Vec<u8>,
    }

    async fn read_frame(server: &mut DuplexStream) -> Frame {
        let mut header = [0u8; HEADER];
        server.read_exact(&mut header).await.unwrap();
        let word = u32::from_be_bytes(header[..4].try_into().unwrap());
        let length = u32::from_be_bytes(header[4..].try_into().unwrap()) & 0x00ff_ffff;
        let mut payload = vec![0; length as usize];
        server.read_exact(&mut payload).await.unwrap();
        let control = (word & 0x8000_0000 != 0).then(|| {
            assert_eq!(word >> 16 & 0x7fff, u32::from(VERSION));
            word as u16
        });
        let stream = match control {
            None => word,
            Some(_) if payload.len() >= 4 => {
                u32::from_be_bytes(payload[..4].try_into().unwrap()) & 0x7fff_ffff
            }
            Some(_) => 0,
        };
        Frame {
            control,
            stream,
            flags: header[4],
            payload,
        }
    }

    /// The headers of a SYN_STREAM, read as the kubelet's inflater reads them: the zlib
    /// stream (its header in the first block only) holds stored blocks and a sync flush.
    fn syn_headers(frame: &Frame, first: bool) -> Vec<(String, String)> {
        assert_eq!(frame.control, Some(SYN_STREAM));
        let mut zlib = &frame.payload[10..];
        if first {
            assert_eq!(zlib[..2], ZLIB_HEADER);
            zlib = &zlib[2..];
        }
        let mut block = Vec::new();
        while !zlib.is_empty() {
            assert_eq!(zlib[0], 0, "a stored block, not the last");
            let len = usize::from(u16::from_le_bytes([zlib[1], zlib[2]]));
            assert_eq!(
                !u16::from_le_bytes([zlib[1], zlib[2]]),
                u16::from_le_bytes([zlib[3], zlib[4]])
            );
            block.extend_from_slice(&zlib[5..5 + len]);
            zlib = &zlib[5 + len..];
        }
        assert!(
            frame.payload.ends_with(&SYNC_FLUSH),
            "ends with a sync flush"
        );
        let mut b = &block[..];
        let mut headers = Vec::new();
        let text = |b: &mut &[u8]| {
            let n = b.get_u32() as usize;
            let s = String::from_utf8(b[..n].to_vec()).unwrap();
            b.advance(n);
            s
        };
        for _ in 0..b.get_u32() {
            let name = text(&mut b);
            headers.push((name, text(&mut b)));
        }
        headers
    }

    fn control_frame(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.put_u16(0x8000 | VERSION);
        f.put_u16(kind);
        f.put_u32(u32::from(flags) << 24 | payload.len() as u32);
        f.extend_from_slice(payload);
        f
    }

    fn data_frame(stream: u32, flags: u8, data: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.put_u32(stream);
        f.put_u32(u32::from(flags) << 24 | data.len() as u32);
        f.extend_from_slice(data);
        f
    }

    /// A SYN_REPLY for `stream`, its (compressed, unread) headers stood for by junk.
    fn syn_reply(stream: u32) -> Vec<u8> {
        let mut payload = stream.to_be_bytes().to_vec();
        payload.extend_from_slice(&[0x78, 0xbb, 1, 2, 3]);
        control_frame(SYN_REPLY, 0, &payload)
    }

    /// A started port-forward to port 1234 over an in-memory pipe, and the server's end.
    async fn started() -> (SpdyStream<DuplexStream>, DuplexStream) {
        let (client, mut server) = tokio::io::duplex(1 << 20);
        let mut stream = SpdyStream::new(client, 1234);
        let kubelet = async {
            let error = read_frame(&mut server).await;
            assert_eq!(error.stream, ERROR_STREAM);
            assert_eq!(
                syn_headers(&error, true),
                [
                    ("streamtype", "error"),
                    ("port", "1234"),
                    ("requestid", "0")
                ]
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
            );
            let fin = read_frame(&mut server).await;
            assert!(fin.control.is_none() && fin.stream == ERROR_STREAM);
            assert_eq!((fin.flags, fin.payload.len()), (FLAG_FIN, 0));
            let data = read_frame(&mut server).await;
            assert_eq!(data.stream, DATA_STREAM);
            assert_eq!(
                syn_headers(&data, false),
                [("streamtype", "data"), ("port", "1234"), ("requestid", "0")]
                    .map(|(n, v)| (n.to_owned(), v.to_owned()))
            );
            server.write_all(&syn_reply(ERROR_STREAM)).await.unwrap();
            server.write_all(&syn_reply(DATA_STREAM)).await.unwrap();
        };
        let start = std::future::poll_fn(|cx| stream.poll_start(cx));
        let (started, ()) = tokio::join!(start, kubelet);
        started.unwrap();
        (stream, server)
    }

    #[tokio::test]
    async fn writes_are_gathered_into_data_frames_until_a_flush() {
        let (mut stream, mut server) = started().await;
        let chunk: Vec<u8> = (0..16384u32).map(|i| i as u8).collect();
        let writer = async {
            for _ in 0..256 {
                stream.write_all(&[0u8; 9]).await.unwrap();
                stream.write_all(&chunk).await.unwrap();
            }
            stream.flush().await.unwrap();
            stream.write_all(b"ping").await.unwrap();
            stream.flush().await.unwrap();
            stream.shutdown().await.unwrap();
            stream
        };
        let reader = async {
            let mut sizes = Vec::new();
            loop {
                let f = read_frame(&mut server).await;
                assert!(f.control.is_none(), "{f:?}");
                assert_eq!(f.stream, DATA_STREAM);
                if f.flags & FLAG_FIN != 0 {
                    assert!(f.payload.is_empty());
                    break sizes;
                }
                sizes.push(f.payload.len());
            }
        };
        let (_stream, sizes) = tokio::join!(writer, reader);
        assert_eq!(sizes.last(), Some(&4), "the flushed small write: {sizes:?}");
        let total: usize = sizes.iter().sum();
        assert_eq!(total, 256 * (9 + 16384) + 4);
        assert!(sizes.len() <= total / MAX_FRAME + 2, "{sizes:?}");
        assert!(sizes.iter().all(|&n| n <= MAX_FRAME), "{sizes:?}");
    }

    /// Whether the server side has nothing to read yet (its pipe is empty).
    fn nothing_sent(server: &mut DuplexStream) -> bool {
        let mut byte = [0u8; 1];
        let mut cx = Context::from_waker(std::task::Waker::noop());
        Pin::new(server)
            .poll_read(&mut cx, &mut ReadBuf::new(&mut byte))
            .is_pending()
    }

    /// h2's pattern: a flush after every 16 KiB DATA frame. Taken at its word, each flush
    /// ends a frame; with coalescing, the frames written within one poll share 32 KiB frames,
    /// and the flush put off is paid by the next read, or by a flush with nothing new.
    #[tokio::test]
    async fn flushes_between_frames_written_in_one_poll_are_put_off_until_the_next_read() {
        let chunk = vec![7u8; 16384 + 9];
        // Eight frames and their flushes within one poll, as h2 writes what it has queued.
        let write_batch = |stream: &mut SpdyStream<DuplexStream>| {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            for _ in 0..8 {
                let mut rest = &chunk[..];
                while !rest.is_empty() {
                    match Pin::new(&mut *stream).poll_write(&mut cx, rest) {
                        Poll::Ready(Ok(n)) => rest = &rest[n..],
                        other => panic!("{other:?}"),
                    }
                }
                assert!(Pin::new(&mut *stream).poll_flush(&mut cx).is_ready());
            }
        };
        let sizes = |frames: Vec<Frame>| frames.iter().map(|f| f.payload.len()).collect::<Vec<_>>();

        // Without coalescing: a frame per flush.
        let (mut plain, mut server) = started().await;
        write_batch(&mut plain);
        let mut frames = Vec::new();
        for _ in 0..8 {
            frames.push(read_frame(&mut server).await);
        }
        assert!(sizes(frames).iter().all(|&n| n == 16384 + 9));

        // With it: nothing leaves until the read that follows, then whole 32 KiB frames.
        let (mut stream, mut server) = started().await;
        stream.coalesce_flushes();
        write_batch(&mut stream);
        assert!(nothing_sent(&mut server), "a frame left before the read");
        let mut buf = [0u8; 16];
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let read = Pin::new(&mut stream).poll_read(&mut cx, &mut ReadBuf::new(&mut buf));
        assert!(read.is_pending(), "no data was sent to this side");
        let total = 8 * (16384 + 9);
        let mut got = Vec::new();
        while got.iter().sum::<usize>() < total {
            got.push(read_frame(&mut server).await.payload.len());
        }
        assert_eq!(got.iter().sum::<usize>(), total);
        assert!(
            got[..got.len() - 1].iter().all(|&n| n == MAX_FRAME),
            "{got:?}"
        );

        // A flush with nothing written since the one put off sends what is owed.
        stream.write_all(b"tail").await.unwrap();
        stream.flush().await.unwrap();
        assert!(
            nothing_sent(&mut server),
            "the first flush after new bytes is put off"
        );
        stream.flush().await.unwrap();
        assert_eq!(read_frame(&mut server).await.payload, b"tail");
    }

    #[tokio::test]
    async fn data_reads_whole_across_frames_and_reads_and_a_ping_is_answered() {
        let (mut stream, mut server) = started().await;
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        let mut wire = Vec::new();
        for part in data.chunks(30_000) {
            wire.extend(data_frame(DATA_STREAM, 0, part));
        }
        wire.extend(control_frame(PING, 0, &2u32.to_be_bytes()));
        wire.extend(data_frame(DATA_STREAM, FLAG_FIN, &[]));
        // Dribbled a few bytes at a time: frames split anywhere.
        let kubelet = async {
            for piece in wire.chunks(7_001) {
                server.write_all(piece).await.unwrap();
            }
            server
        };
        let mut got = Vec::new();
        let (read, mut server) = tokio::join!(stream.read_to_end(&mut got), kubelet);
        read.unwrap();
        assert_eq!(got, data);
        // The ping goes back with the next write.
        stream.write_all(b"x").await.unwrap();
        stream.flush().await.unwrap();
        let ping = read_frame(&mut server).await;
        assert_eq!(
            (ping.control, ping.payload),
            (Some(PING), 2u32.to_be_bytes().to_vec())
        );
    }

    #[tokio::test]
    async fn the_kubelets_error_text_ends_the_read_once() {
        let (mut stream, mut server) = started().await;
        let text = b"error forwarding port 1234 to pod bench-0, uid : connection refused\n";
        server
            .write_all(&data_frame(ERROR_STREAM, 0, text))
            .await
            .unwrap();
        server
            .write_all(&data_frame(ERROR_STREAM, FLAG_FIN, &[]))
            .await
            .unwrap();
        server
            .write_all(&data_frame(DATA_STREAM, FLAG_FIN, &[]))
            .await
            .unwrap();
        let mut buf = [0u8; 8];
        let err = stream.read(&mut buf).await.unwrap_err();
        match err.downcast::<PortForwardError>() {
            Ok(PortForwardError::KubeletRefused { message }) => assert_eq!(
                message,
                "error forwarding port 1234 to pod bench-0, uid : connection refused"
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(stream.read(&mut buf).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_reset_or_an_unanswered_start_is_a_broken_port_forward() {
        let (mut stream, mut server) = started().await;
        let mut rst = DATA_STREAM.to_be_bytes().to_vec();
        rst.extend(5u32.to_be_bytes()); // CANCEL
        server
            .write_all(&control_frame(RST_STREAM, 0, &rst))
            .await
            .unwrap();
        let err = stream.read(&mut [0u8; 8]).await.unwrap_err();
        let Some(PortForwardError::Broken(cause)) = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<PortForwardError>())
        else {
            panic!("{err:?}");
        };
        assert_eq!(cause.to_string(), "the kubelet reset stream 3 (status 5)");

        // The connection ends before the streams are answered.
        let (client, mut server) = tokio::io::duplex(1 << 16);
        let mut stream = SpdyStream::new(client, 1234);
        let kubelet = async move {
            for _ in 0..3 {
                read_frame(&mut server).await;
            }
        };
        let start = std::future::poll_fn(|cx| stream.poll_start(cx));
        let (started, ()) = tokio::join!(start, kubelet);
        let err = started.unwrap_err();
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
