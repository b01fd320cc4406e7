//! A hostile session peer: a test-only server that plays the BuildKit daemon so that tests can
//! drive the real client's session services with packet sequences no honest daemon sends.
//!
//! It serves `moby.buildkit.v1.Control` on `127.0.0.1` (the calls the client makes: the
//! `Info` connect probe, `ListWorkers`, `Session`, `Solve`, `Status`). When the client opens
//! its session, the peer runs an HTTP/2 client over the session's byte stream, as buildkitd
//! does, and each `Solve` is handed to the test as a [`SolveCall`] holding that session. The
//! test opens FileSync/FileSend calls on it ([`PeerSession::file_sync`],
//! [`PeerSession::file_send`]), plays whatever packets it likes, and then answers the Solve.
//!
//! A real daemon is never replaced by this in a test of a build's outcome: it exists to check
//! what the client does when the daemon is the adversary.
#![allow(dead_code)]

pub mod packets;
pub mod snapshot;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::{Stream, StreamExt};
use hyper_util::rt::TokioIo;
use pf_buildkit::buildkit::proto::control::control_server::{Control, ControlServer};
use pf_buildkit::buildkit::proto::control::types::{BuildkitVersion, WorkerRecord};
use pf_buildkit::buildkit::proto::control::{
    BuildHistoryEvent, BuildHistoryRequest, BytesMessage, DiskUsageRequest, DiskUsageResponse,
    InfoRequest, InfoResponse, ListWorkersRequest, ListWorkersResponse, PruneRequest, SolveRequest,
    SolveResponse, StatusRequest, StatusResponse, UpdateBuildHistoryRequest,
    UpdateBuildHistoryResponse, UsageRecord,
};
use pf_buildkit::buildkit::proto::fsutil::types::Packet;
use pf_buildkit::buildkit::proto::pb::Platform;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tonic::transport::Channel;

/// How long the peer waits for something the client must do (open the session a Solve
/// names, answer a call): a bound on a broken client, not a pacing delay.
pub const PEER_WAIT: Duration = Duration::from_secs(30);

/// HTTP/2 settings of the peer's client over the session stream. The defaults are those of
/// tonic's client; the flood tests may want others.
#[derive(Debug, Clone, Default)]
pub struct PeerOptions {
    /// Initial per-stream flow-control window the peer advertises.
    pub stream_window: Option<u32>,
    /// Initial connection flow-control window the peer advertises.
    pub connection_window: Option<u32>,
}

/// The running fake daemon. Dropping it stops the server.
pub struct HostilePeer {
    addr: SocketAddr,
    solves: mpsc::Receiver<SolveCall>,
    sessions_seen: Arc<Mutex<Vec<PeerSession>>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for HostilePeer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl HostilePeer {
    /// Binds `127.0.0.1:0` and serves Control with default [`PeerOptions`].
    pub async fn start() -> HostilePeer {
        Self::start_with(PeerOptions::default()).await
    }

    /// Binds `127.0.0.1:0` and serves Control; `options` shape the peer's HTTP/2 client.
    pub async fn start_with(options: PeerOptions) -> HostilePeer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the hostile peer");
        let addr = listener.local_addr().expect("local address");
        let (solve_tx, solves) = mpsc::channel(8);
        let sessions_seen = Arc::new(Mutex::new(Vec::new()));
        let control = FakeControl {
            sessions: Arc::new(Mutex::new(HashMap::new())),
            sessions_seen: sessions_seen.clone(),
            solves: solve_tx,
            options,
        };
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(ControlServer::new(control))
                .serve_with_incoming(incoming)
                .await;
        });
        HostilePeer {
            addr,
            solves,
            sessions_seen,
            server,
        }
    }

    /// The address to give the client, `tcp://127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("tcp://{}", self.addr)
    }

    /// A library client connected to the peer (through the real connect probe).
    pub async fn client(&self) -> pf_buildkit::buildkit::Client {
        let endpoint = self.addr().parse().expect("endpoint");
        pf_buildkit::buildkit::Client::connect(endpoint, &Default::default())
            .await
            .expect("connect to the hostile peer")
    }

    /// The next Solve the client sends, with the session it names already open.
    pub async fn next_solve(&mut self) -> SolveCall {
        tokio::time::timeout(PEER_WAIT, self.solves.recv())
            .await
            .expect("the client sent no Solve in time")
            .expect("the peer's server stopped")
    }

    /// Every session the client opened so far, in order.
    pub fn sessions(&self) -> Vec<PeerSession> {
        self.sessions_seen
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }
}

/// A Solve the client sent, held until the test answers it.
pub struct SolveCall {
    /// The request as sent.
    pub request: SolveRequest,
    /// The session the request names.
    pub session: PeerSession,
    answer: oneshot::Sender<Result<SolveResponse, tonic::Status>>,
}

impl SolveCall {
    /// Answers the Solve: the client's `build` returns with this.
    pub fn answer(self, result: Result<SolveResponse, tonic::Status>) {
        let _ = self.answer.send(result);
    }

    /// Answers the Solve with success.
    pub fn succeed(self) {
        self.answer(Ok(SolveResponse::default()));
    }

    /// Answers the Solve with a failure carrying `message` (as the daemon would pass on an
    /// exporter's error).
    pub fn fail(self, message: impl Into<String>) {
        self.answer(Err(tonic::Status::unknown(message.into())));
    }
}

/// The client's session as the daemon sees it: its announced methods and an HTTP/2 client
/// over the session stream.
#[derive(Clone)]
pub struct PeerSession {
    /// The session id (`x-docker-expose-session-uuid`).
    pub id: String,
    /// The methods the client announced (`x-docker-expose-session-grpc-method`), in order.
    pub methods: Vec<String>,
    channel: Channel,
}

/// The path of FileSync's DiffCopy.
pub const FILE_SYNC: &str = "/moby.filesync.v1.FileSync/DiffCopy";
/// The path of FileSend's DiffCopy.
pub const FILE_SEND: &str = "/moby.filesync.v1.FileSend/DiffCopy";

/// What a FileSync call asks for, as the metadata buildkitd sends.
#[derive(Debug, Clone, Default)]
pub struct SyncRequest {
    /// `dir-name`: which local directory (`context`, `dockerfile`).
    pub dir_name: String,
    /// `include-patterns`.
    pub include_patterns: Vec<String>,
    /// `exclude-patterns`.
    pub exclude_patterns: Vec<String>,
    /// `followpaths`.
    pub follow_paths: Vec<String>,
}

impl SyncRequest {
    /// A request for the directory called `name`, unfiltered.
    pub fn dir(name: &str) -> Self {
        SyncRequest {
            dir_name: name.to_owned(),
            ..Default::default()
        }
    }
}

impl PeerSession {
    /// Opens `FileSend/DiffCopy` for exporter number `exporter` (the client is the receiver).
    ///
    /// # Errors
    /// The status the client answered with, if it refused the call.
    pub async fn file_send(&self, exporter: usize) -> Result<DiffCopy, tonic::Status> {
        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert(
            "buildkit-attachable-exporter-id",
            exporter.to_string().parse().expect("metadata value"),
        );
        self.diff_copy(FILE_SEND, metadata).await
    }

    /// Sends `chunks` as the file of exporter number `exporter` (a `tar`, `oci` or `docker`
    /// export: raw bytes in `BytesMessage`s) and ends the stream cleanly; returns once the
    /// client has answered the call.
    ///
    /// # Errors
    /// The status the client answered with.
    pub async fn send_file(&self, exporter: usize, chunks: &[&[u8]]) -> Result<(), tonic::Status> {
        let messages: Vec<BytesMessage> = chunks
            .iter()
            .map(|c| BytesMessage {
                data: bytes::Bytes::copy_from_slice(c),
            })
            .collect();
        let mut request = tonic::Request::new(futures_util::stream::iter(messages));
        request.metadata_mut().insert(
            "buildkit-attachable-exporter-id",
            exporter.to_string().parse().expect("metadata value"),
        );
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("session not ready: {e}")))?;
        let codec = tonic_prost::ProstCodec::<BytesMessage, BytesMessage>::default();
        let response = grpc
            .streaming(
                request,
                http::uri::PathAndQuery::from_static(FILE_SEND),
                codec,
            )
            .await?;
        let mut answers = response.into_inner();
        while answers.message().await?.is_some() {}
        Ok(())
    }

    /// Opens `FileSync/DiffCopy` for a local directory (the client is the sender).
    ///
    /// # Errors
    /// The status the client answered with, if it refused the call.
    pub async fn file_sync(&self, request: &SyncRequest) -> Result<DiffCopy, tonic::Status> {
        let mut metadata = tonic::metadata::MetadataMap::new();
        let mut add = |key: &'static str, value: &str| {
            metadata.append(key, value.parse().expect("metadata value"));
        };
        add("dir-name", &request.dir_name);
        for p in &request.include_patterns {
            add("include-patterns", p);
        }
        for p in &request.exclude_patterns {
            add("exclude-patterns", p);
        }
        for p in &request.follow_paths {
            add("followpaths", p);
        }
        self.diff_copy(FILE_SYNC, metadata).await
    }

    /// Opens a bidirectional packet call on `path` with `metadata`.
    ///
    /// # Errors
    /// The status the client answered with, if it refused the call.
    pub async fn diff_copy(
        &self,
        path: &'static str,
        metadata: tonic::metadata::MetadataMap,
    ) -> Result<DiffCopy, tonic::Status> {
        // Deep enough for a burst of 100,000 tiny packets to be queued without waiting on
        // the client: the flood tests want the packets on the wire as fast as h2 takes them.
        let (tx, rx) = mpsc::channel::<Packet>(1024);
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        *request.metadata_mut() = metadata;
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("session not ready: {e}")))?;
        let codec = tonic_prost::ProstCodec::<Packet, Packet>::default();
        let response = grpc
            .streaming(request, http::uri::PathAndQuery::from_static(path), codec)
            .await?;
        Ok(DiffCopy {
            tx: Some(tx),
            rx: response.into_inner(),
        })
    }
}

/// One open DiffCopy call: packets out to the client, packets back from it.
pub struct DiffCopy {
    tx: Option<mpsc::Sender<Packet>>,
    rx: tonic::Streaming<Packet>,
}

impl DiffCopy {
    /// Sends one packet. False when the call is gone.
    pub async fn send(&self, packet: Packet) -> bool {
        match &self.tx {
            Some(tx) => tx.send(packet).await.is_ok(),
            None => false,
        }
    }

    /// A sender for packets, to send from another task while this one reads.
    pub fn sender(&self) -> mpsc::Sender<Packet> {
        self.tx.clone().expect("the sending side is still open")
    }

    /// Ends the peer's side of the call (the request stream).
    pub fn close_send(&mut self) {
        self.tx = None;
    }

    /// The next packet from the client: `None` when the client ended the call cleanly,
    /// `Some(Err)` with the status it ended it with.
    pub async fn recv(&mut self) -> Option<Result<Packet, tonic::Status>> {
        self.recv_within(PEER_WAIT).await
    }

    /// [`DiffCopy::recv`] with another bound, for a client with a long job to finish before
    /// it answers (writing 100,000 files, say).
    pub async fn recv_within(&mut self, wait: Duration) -> Option<Result<Packet, tonic::Status>> {
        match tokio::time::timeout(wait, self.rx.next()).await {
            Ok(item) => item,
            Err(_) => Some(Err(tonic::Status::deadline_exceeded(
                "the client sent nothing in time",
            ))),
        }
    }

    /// Reads until the client ends the call and returns everything it sent, plus the status
    /// it ended with (`None` for a clean end).
    pub async fn drain(&mut self) -> (Vec<Packet>, Option<tonic::Status>) {
        let mut packets = Vec::new();
        loop {
            match self.recv().await {
                None => return (packets, None),
                Some(Ok(p)) => packets.push(p),
                Some(Err(status)) => return (packets, Some(status)),
            }
        }
    }
}

/// The registry of sessions by id: a Solve may arrive before or after its Session call.
type Sessions = Arc<Mutex<HashMap<String, watch::Sender<Option<PeerSession>>>>>;

fn session_slot(sessions: &Sessions, id: &str) -> watch::Sender<Option<PeerSession>> {
    let mut map = sessions.lock().expect("sessions lock");
    map.entry(id.to_owned())
        .or_insert_with(|| watch::channel(None).0)
        .clone()
}

struct FakeControl {
    sessions: Sessions,
    sessions_seen: Arc<Mutex<Vec<PeerSession>>>,
    solves: mpsc::Sender<SolveCall>,
    options: PeerOptions,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send>>;

/// Bytes of session stream read at once, and the in-memory pipe between the gRPC call and
/// the peer's HTTP/2 client.
const SESSION_CHUNK: usize = 32 << 10;
const SESSION_PIPE: usize = 1 << 20;

#[tonic::async_trait]
impl Control for FakeControl {
    async fn disk_usage(
        &self,
        _request: tonic::Request<DiskUsageRequest>,
    ) -> Result<tonic::Response<DiskUsageResponse>, tonic::Status> {
        Ok(tonic::Response::new(DiskUsageResponse::default()))
    }

    type PruneStream = BoxStream<UsageRecord>;

    async fn prune(
        &self,
        _request: tonic::Request<PruneRequest>,
    ) -> Result<tonic::Response<Self::PruneStream>, tonic::Status> {
        Ok(tonic::Response::new(
            Box::pin(futures_util::stream::empty()),
        ))
    }

    async fn solve(
        &self,
        request: tonic::Request<SolveRequest>,
    ) -> Result<tonic::Response<SolveResponse>, tonic::Status> {
        let request = request.into_inner();
        let mut slot = session_slot(&self.sessions, &request.session).subscribe();
        let session = tokio::time::timeout(PEER_WAIT, slot.wait_for(Option::is_some))
            .await
            .map_err(|_| tonic::Status::deadline_exceeded("no session for this solve"))?
            .map_err(|_| tonic::Status::internal("session registry closed"))?
            .clone()
            .expect("waited for a session");
        let (answer, answered) = oneshot::channel();
        self.solves
            .send(SolveCall {
                request,
                session,
                answer,
            })
            .await
            .map_err(|_| tonic::Status::unavailable("no test is taking solves"))?;
        let result = answered
            .await
            .map_err(|_| tonic::Status::aborted("the test dropped the solve unanswered"))?;
        result.map(tonic::Response::new)
    }

    type ListenBuildHistoryStream = BoxStream<BuildHistoryEvent>;

    async fn listen_build_history(
        &self,
        _request: tonic::Request<BuildHistoryRequest>,
    ) -> Result<tonic::Response<Self::ListenBuildHistoryStream>, tonic::Status> {
        // This peer keeps no history; the client treats that as a daemon without the API.
        Err(tonic::Status::unimplemented("no build history here"))
    }

    async fn update_build_history(
        &self,
        _request: tonic::Request<UpdateBuildHistoryRequest>,
    ) -> Result<tonic::Response<UpdateBuildHistoryResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("no build history here"))
    }

    type StatusStream = BoxStream<StatusResponse>;

    async fn status(
        &self,
        _request: tonic::Request<StatusRequest>,
    ) -> Result<tonic::Response<Self::StatusStream>, tonic::Status> {
        Ok(tonic::Response::new(
            Box::pin(futures_util::stream::empty()),
        ))
    }

    type SessionStream = BoxStream<BytesMessage>;

    async fn session(
        &self,
        request: tonic::Request<tonic::Streaming<BytesMessage>>,
    ) -> Result<tonic::Response<Self::SessionStream>, tonic::Status> {
        let metadata = request.metadata();
        let id = metadata
            .get("x-docker-expose-session-uuid")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| tonic::Status::invalid_argument("no session uuid"))?
            .to_owned();
        let methods = metadata
            .get_all("x-docker-expose-session-grpc-method")
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect();
        let mut inbound = request.into_inner();

        // The session stream becomes a byte pipe; the peer's HTTP/2 client runs on one end.
        let (ours, theirs) = tokio::io::duplex(SESSION_PIPE);
        let (mut from_h2, mut to_h2) = tokio::io::split(theirs);
        tokio::spawn(async move {
            while let Some(Ok(message)) = inbound.next().await {
                if to_h2.write_all(&message.data).await.is_err() {
                    break;
                }
            }
            let _ = to_h2.shutdown().await;
        });
        let (out_tx, out_rx) = mpsc::channel::<Result<BytesMessage, tonic::Status>>(16);
        tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(SESSION_CHUNK);
            loop {
                buf.reserve(SESSION_CHUNK);
                match from_h2.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let data = buf.split().freeze();
                        if out_tx.send(Ok(BytesMessage { data })).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });

        // Lazily connected: the handshake needs this call's response stream to be flowing.
        let io = Arc::new(Mutex::new(Some(ours)));
        let connector = tower::service_fn(move |_uri: http::Uri| {
            let io = io.lock().ok().and_then(|mut slot| slot.take());
            async move {
                io.map(TokioIo::new)
                    .ok_or_else(|| std::io::Error::other("the session stream is used up"))
            }
        });
        let mut endpoint = tonic::transport::Endpoint::from_static("http://session");
        if let Some(w) = self.options.stream_window {
            endpoint = endpoint.initial_stream_window_size(w);
        }
        if let Some(w) = self.options.connection_window {
            endpoint = endpoint.initial_connection_window_size(w);
        }
        let channel = endpoint.connect_with_connector_lazy(connector);
        let session = PeerSession {
            id: id.clone(),
            methods,
            channel,
        };
        if let Ok(mut seen) = self.sessions_seen.lock() {
            seen.push(session.clone());
        }
        session_slot(&self.sessions, &id).send_replace(Some(session));
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out_rx),
        )))
    }

    async fn list_workers(
        &self,
        _request: tonic::Request<ListWorkersRequest>,
    ) -> Result<tonic::Response<ListWorkersResponse>, tonic::Status> {
        Ok(tonic::Response::new(ListWorkersResponse {
            record: vec![WorkerRecord {
                id: "hostile".to_owned(),
                platforms: vec![Platform {
                    os: "linux".to_owned(),
                    architecture: "amd64".to_owned(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }))
    }

    async fn info(
        &self,
        _request: tonic::Request<InfoRequest>,
    ) -> Result<tonic::Response<InfoResponse>, tonic::Status> {
        Ok(tonic::Response::new(InfoResponse {
            buildkit_version: Some(BuildkitVersion {
                package: "hostile-peer".to_owned(),
                version: "v0.0.0".to_owned(),
                revision: String::new(),
            }),
        }))
    }
}
