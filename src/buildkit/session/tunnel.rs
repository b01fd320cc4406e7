//! The session's byte stream (a `Control.Session` call or the Engine's `/session` upgrade) and
//! the HTTP/2 gRPC server that runs over it: the daemon is the HTTP/2 client, we serve.

use std::io;

use bytes::BytesMut;
use futures_util::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::service::Routes;

use crate::buildkit::proto::control::BytesMessage;
use crate::buildkit::transport::{BoxedIo, docker_upgrade};
use crate::buildkit::{Client, DockerHost};

/// Largest chunk of tunnel bytes put in one `BytesMessage`: writes are coalesced up to this,
/// because the daemon reads 32 KiB at a time and a message per h2 frame costs throughput.
const TUNNEL_CHUNK: usize = 256 << 10;

/// In-memory buffer between the h2 server and the tunnel pumps.
const PIPE_BUFFER: usize = 1 << 20;

/// HTTP/2 flow-control windows of the session server: large enough that exports (FileSend)
/// are not throttled by round trips (4 MiB per round trip), small enough that what the daemon
/// may push ahead of our disk writes stays well inside the client's memory budget (with 16 MiB
/// per stream, an exported tarball could queue 16 MiB in memory behind a slow disk).
const STREAM_WINDOW: u32 = 4 << 20;
const CONNECTION_WINDOW: u32 = 8 << 20;

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
pub(crate) async fn open(
    client: &Client,
    headers: &[(String, String)],
    via_control: bool,
) -> io::Result<BoxedIo> {
    match client.docker_host().filter(|_| !via_control) {
        Some(host) => open_docker(host, headers).await,
        None => open_control(client, headers).await,
    }
}

async fn open_docker(host: &DockerHost, headers: &[(String, String)]) -> io::Result<BoxedIo> {
    docker_upgrade(host, "/session", headers).await
}

/// Runs `Control.Session` and joins its two halves into one byte stream through an in-memory
/// pipe: one pump batches outbound bytes into messages, the other always reads inbound ones.
async fn open_control(client: &Client, headers: &[(String, String)]) -> io::Result<BoxedIo> {
    let (ours, theirs) = tokio::io::duplex(PIPE_BUFFER);
    let (mut from_server, mut to_server) = tokio::io::split(theirs);
    let (tx, rx) = tokio::sync::mpsc::channel::<BytesMessage>(16);
    tokio::spawn(async move {
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
        io::Error::other(format!(
            "the daemon refused the session: {}",
            crate::buildkit::error::describe_status(&status)
        ))
    })?;
    let mut inbound = response.into_inner();
    tokio::spawn(async move {
        while let Some(message) = inbound.next().await {
            let Ok(message) = message else { break };
            if to_server.write_all(&message.data).await.is_err() {
                break;
            }
        }
        let _ = to_server.shutdown().await;
    });
    Ok(Box::pin(ours))
}

/// Serves `routes` over the session stream until the daemon closes it or the future is
/// dropped.
pub(crate) async fn serve(io: BoxedIo, routes: Routes) -> io::Result<()> {
    let service = TowerToHyperService::new(routes.prepare());
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
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
