//! The session's byte stream (a `Control.Session` call or the Engine's `/session` upgrade) and
//! the HTTP/2 gRPC server that runs over it: the daemon is the HTTP/2 client, we serve.

use std::io;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::service::Routes;

use crate::buildkit::proto::control::BytesMessage;
use crate::buildkit::transport::{BoxedIo, docker_upgrade, read_ahead};
use crate::buildkit::{Client, DockerHost};

use super::tasks::Tasks;

/// Largest chunk of tunnel bytes put in one `BytesMessage`: writes are coalesced up to this,
/// because the daemon reads 32 KiB at a time and a message per h2 frame costs throughput.
const TUNNEL_CHUNK: usize = 256 << 10;

/// In-memory buffer between the h2 server and the tunnel pumps.
const PIPE_BUFFER: usize = 1 << 20;

/// HTTP/2 flow-control window of each stream of the session server: what the daemon may send
/// on one stream (an exported file, a local export) before we read it, and so all that a
/// stream can leave in memory while its receiver waits for a slow disk (that wait is the
/// backpressure on the daemon: fsutil has none of its own for STATs, which the sender sends
/// unasked).
///
/// Why 8 MiB and not less: the window is returned one round trip after the bytes are read, and
/// over a port-forward that round trip crosses the kubelet and the API server twice, on a
/// machine whose CPUs the same transfer keeps busy. With 1 MiB a tar export through the real
/// API server was held to ~80 MB/s (4.0-4.5 s for 383 MB); with 8 MiB it took 3.0-3.3 s,
/// 4 MiB halfway between, and 16 MiB no better (`scripts/bench-portforward.sh`). On a direct
/// connection the window never limits.
const STREAM_WINDOW: u32 = 8 << 20;

/// The connection window of the session server. Each stream is held to [`STREAM_WINDOW`], so
/// this sizes h2's DATA-frame budget, which is half of it: every frame under 256 bytes that a
/// stream leaves unread costs `256 - len`, and past the budget h2 ends the session with GOAWAY
/// `ENHANCE_YOUR_CALM "too_many_data_frames"`. A local export's receiver reads a packet only
/// when the previous one is on disk, so behind a slow disk a stream fills its window with
/// whatever the daemon sends: STATs (26 bytes and more), small files' data and EOFs (10 bytes
/// for file ids from 128 on, but only for files we asked for, a bounded number). A whole window
/// of the smallest STATs costs about 74 MiB, so a 192 MiB budget lets two such streams wait at
/// once and the budget never ends a well-behaved session, however slow the disk.
const CONNECTION_WINDOW: u32 = 384 << 20;

/// The headers that announce a session, as `(name, value)` pairs; the grpc-method header is
/// repeated once per served method.
pub(crate) fn session_headers(
    id: &str,
    shared_key: &str,
    methods: &[&str],
) -> Vec<(String, String)> {
    let mut headers = vec![
        ("x-docker-expose-session-uuid".to_owned(), id.to_owned()),
        (
            "x-docker-expose-session-sharedkey".to_owned(),
            shared_key.to_owned(),
        ),
        (
            "x-docker-expose-session-name".to_owned(),
            "pf-buildkit".to_owned(),
        ),
    ];
    for method in methods {
        headers.push((
            "x-docker-expose-session-grpc-method".to_owned(),
            (*method).to_owned(),
        ));
    }
    headers
}

/// Opens the byte stream the daemon will speak HTTP/2 over: the Engine's `/session` upgrade
/// when the client talks to a Docker Engine (unless `via_control`), else `Control.Session`.
/// The pumps of a `Control.Session` run as `tasks`.
pub(crate) async fn open(
    client: &Client,
    headers: &[(String, String)],
    via_control: bool,
    tasks: &Tasks,
) -> io::Result<(BoxedIo, TunnelEnd)> {
    let end = TunnelEnd::default();
    let io = match client.docker_host().filter(|_| !via_control) {
        Some(host) => open_docker(host, headers).await?,
        None => open_control(client, headers, end.clone(), tasks).await?,
    };
    Ok((io, end))
}

/// How the daemon's side of a `Control.Session` tunnel ended, when it ended with an error.
///
/// The session server reads the tunnel through an in-memory pipe, so when the daemon goes
/// away the server sees only the pipe closing ("connection error"); the status the outer
/// stream ended with says what happened, and is kept here for the session's failure.
#[derive(Debug, Clone, Default)]
pub(crate) struct TunnelEnd(Arc<std::sync::Mutex<Option<tonic::Status>>>);

impl TunnelEnd {
    fn set(&self, status: tonic::Status) {
        if let Ok(mut slot) = self.0.lock() {
            slot.get_or_insert(status);
        }
    }

    /// What ended the daemon's side, if it ended with an error (taken once).
    pub(crate) fn take(&self) -> Option<tonic::Status> {
        self.0.lock().ok().and_then(|mut slot| slot.take())
    }
}

/// The Engine's `/session` upgrade: the session's HTTP/2 server reads the socket itself, so
/// its reads are buffered as the Control connection's are (exports arrive this way).
async fn open_docker(host: &DockerHost, headers: &[(String, String)]) -> io::Result<BoxedIo> {
    docker_upgrade(host, "/session", headers)
        .await
        .map(read_ahead)
}

/// Runs `Control.Session` and joins its two halves into one byte stream through an in-memory
/// pipe: one pump batches outbound bytes into messages, the other always reads inbound ones.
async fn open_control(
    client: &Client,
    headers: &[(String, String)],
    end: TunnelEnd,
    tasks: &Tasks,
) -> io::Result<BoxedIo> {
    let (ours, theirs) = tokio::io::duplex(PIPE_BUFFER);
    let (mut from_server, to_server) = tokio::io::split(theirs);
    let (tx, rx) = tokio::sync::mpsc::channel::<BytesMessage>(16);
    tasks.spawn(async move {
        let mut buf = BytesMut::with_capacity(TUNNEL_CHUNK);
        loop {
            buf.reserve(TUNNEL_CHUNK);
            match from_server.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let data = buf.split().freeze();
                    if tx.send(BytesMessage { data }).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    for (name, value) in headers {
        let key =
            tonic::metadata::MetadataKey::from_bytes(name.as_bytes()).map_err(io::Error::other)?;
        let value = value.parse().map_err(io::Error::other)?;
        request.metadata_mut().append(key, value);
    }
    let mut control = client.control();
    // The response headers arrive once the daemon has accepted the session; its first bytes
    // (the h2 preface) follow, so waiting here does not delay anything.
    let response = control.session(request).await.map_err(|status| {
        io::Error::other(crate::buildkit::Error::rpc(
            client.endpoint(),
            "Session",
            status,
        ))
    })?;
    let inbound = response.into_inner();
    tasks.spawn(pump_inbound(inbound, to_server, end, tasks.clone()));
    Ok(Box::pin(ours))
}

/// Bytes from the daemon that may wait in memory for the session's HTTP/2 server (see
/// [`pump_inbound`]). What a well-behaved daemon sends while that server is not reading is
/// small: REQs (~30 bytes a file) and window updates, under 8 MiB for 200,000 files. Past the
/// limit, the outer connection's own flow control holds the daemon back.
const INBOUND_LIMIT: usize = 16 << 20;

/// Memory charged per queued message on top of its bytes (the `Bytes` handle and the queue
/// slot), so that a flood of tiny messages is bounded as well as a few large ones.
const INBOUND_MESSAGE_COST: usize = 64;

/// Moves the daemon's `BytesMessage`s into the in-memory pipe that the session's HTTP/2 server
/// reads, without ever letting that server's pace stop the reading of the outer stream.
///
/// Why: the outer stream is one HTTP/2 stream of the Control connection, and every message on
/// it arrives as its own small DATA frame (the daemon writes one message per write of the
/// inner connection: often a single fsutil REQ, ~30 bytes). h2 charges each DATA frame under
/// 256 bytes that the application has not taken yet against a connection budget (`256 - len`
/// each, half the connection window: see `CONTROL_CONNECTION_WINDOW` in `client.rs`) and
/// sends GOAWAY `ENHANCE_YOUR_CALM "too_many_data_frames"` when it runs out. The inner server
/// stops reading its input whenever its own output cannot be written (h2 reads the next frame
/// only once its write buffer has room), which is normal while a context is being uploaded:
/// the daemon's REQs then pile up. Before this reader existed, a writer blocked on the pipe
/// left them in h2's buffer and a 40,000-file context ended after about a thousand files. So
/// the reader takes every message at once into a queue charged against [`INBOUND_LIMIT`]
/// bytes, and a second task writes the queue into the pipe at the server's pace.
async fn pump_inbound(
    mut inbound: tonic::Streaming<BytesMessage>,
    mut to_server: tokio::io::WriteHalf<tokio::io::DuplexStream>,
    end: TunnelEnd,
    tasks: Tasks,
) {
    let budget = Arc::new(Semaphore::new(INBOUND_LIMIT));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Bytes, OwnedSemaphorePermit)>();
    let (written_tx, written) = tokio::sync::oneshot::channel::<()>();
    tasks.spawn(async move {
        // Each permit is released once its bytes are in the pipe.
        while let Some((data, _permit)) = rx.recv().await {
            if to_server.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = to_server.shutdown().await;
        let _ = written_tx.send(());
    });
    while let Some(message) = inbound.next().await {
        let message = match message {
            Ok(message) => message,
            Err(status) => {
                end.set(status);
                break;
            }
        };
        if message.data.is_empty() {
            continue;
        }
        let cost = (message.data.len() + INBOUND_MESSAGE_COST).min(INBOUND_LIMIT);
        let Ok(cost) = u32::try_from(cost) else { break };
        let Ok(permit) = budget.clone().acquire_many_owned(cost).await else {
            break;
        };
        if tx.send((message.data, permit)).is_err() {
            break;
        }
    }
    // Closing the queue lets the writer drain it and then shut the pipe down.
    drop(tx);
    let _ = written.await;
}

/// Serves `routes` over the session stream until the daemon closes it or the future is
/// dropped; each stream's handler runs as one of `tasks`.
pub(crate) async fn serve(io: BoxedIo, routes: Routes, tasks: Tasks) -> io::Result<()> {
    let service = TowerToHyperService::new(routes.prepare());
    let mut builder = hyper::server::conn::http2::Builder::new(tasks);
    builder
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(1 << 20)
        .max_send_buf_size(4 << 20)
        .max_concurrent_streams(1000);
    builder
        .serve_connection(TokioIo::new(io), service)
        .await
        .map_err(io::Error::other)
}
