//! `containerd.services.content.v1.Content`: the client's content stores, served to the
//! daemon the way buildctl serves them. Each request names its store in the
//! `buildkit-attachable-store-id` header:
//!
//! - `local:<dir>`: a local cache (`dest=` of `--export-cache type=local`, `src=` of
//!   `--import-cache type=local`; the daemon builds the id from that attribute);
//! - `export`: the directory of `--output type=oci,tar=false`;
//! - `oci:<name>`: an `--oci-layout NAME=DIR` input.
//!
//! Only the stores the user configured exist; the daemon can neither name another directory
//! nor write to a store offered for reading. Uploads stream to disk one message at a time
//! (each request gets its response before the next is read), so memory stays flat whatever
//! the blob size.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use super::tasks::Tasks;
use crate::buildkit::MAX_MESSAGE_SIZE;
use crate::buildkit::oci_layout::{Ingest, LayoutError, LayoutStore};
use crate::buildkit::proto::containerd::services::content::v1::content_server::{
    Content, ContentServer,
};
use crate::buildkit::proto::containerd::services::content::v1::{
    AbortRequest, DeleteContentRequest, Info, InfoRequest, InfoResponse, ListContentRequest,
    ListContentResponse, ListStatusesRequest, ListStatusesResponse, ReadContentRequest,
    ReadContentResponse, StatusRequest, StatusResponse, UpdateRequest, UpdateResponse, WriteAction,
    WriteContentRequest, WriteContentResponse,
};

/// The header naming the store a request is for.
pub const STORE_ID_HEADER: &str = "buildkit-attachable-store-id";

/// The methods this service answers, announced with the session.
pub(super) const METHODS: &[&str] = &[
    "/containerd.services.content.v1.Content/Info",
    "/containerd.services.content.v1.Content/Update",
    "/containerd.services.content.v1.Content/List",
    "/containerd.services.content.v1.Content/Delete",
    "/containerd.services.content.v1.Content/Read",
    "/containerd.services.content.v1.Content/Status",
    "/containerd.services.content.v1.Content/ListStatuses",
    "/containerd.services.content.v1.Content/Write",
    "/containerd.services.content.v1.Content/Abort",
];

/// Bytes per `Read` response (containerd's own chunk size).
const READ_CHUNK: usize = 1 << 20;

pub(super) fn service(
    stores: BTreeMap<String, Arc<LayoutStore>>,
    tasks: Tasks,
) -> ContentServer<ContentService> {
    ContentServer::new(ContentService {
        stores,
        active: Arc::default(),
        tasks,
    })
    .max_decoding_message_size(MAX_MESSAGE_SIZE)
    .max_encoding_message_size(MAX_MESSAGE_SIZE)
}

/// What `Status` reports of one upload in progress.
#[derive(Debug, Clone)]
struct Progress {
    store: String,
    started: SystemTime,
    updated: SystemTime,
    offset: u64,
    total: u64,
    expected: String,
}

pub(super) struct ContentService {
    stores: BTreeMap<String, Arc<LayoutStore>>,
    /// Uploads in progress by ref.
    active: Arc<std::sync::Mutex<HashMap<String, Progress>>>,
    tasks: Tasks,
}

impl ContentService {
    fn store<T>(
        &self,
        request: &tonic::Request<T>,
    ) -> Result<(String, Arc<LayoutStore>), tonic::Status> {
        let id = request
            .metadata()
            .get(STORE_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                tonic::Status::invalid_argument(format!(
                    "request lacks metadata {STORE_ID_HEADER:?}"
                ))
            })?;
        let store = self
            .stores
            .get(id)
            .cloned()
            .ok_or_else(|| tonic::Status::not_found(format!("unknown store {id}")))?;
        Ok((id.to_owned(), store))
    }
}

/// containerd's error codes for each kind of store failure (the daemon's content client turns
/// them back into its `errdefs` errors, so `AlreadyExists` means "skip this blob").
fn status(err: LayoutError) -> tonic::Status {
    let message = crate::buildkit::error::wire_text(&err);
    match err {
        LayoutError::BlobNotFound { .. } | LayoutError::TagNotFound { .. } => {
            tonic::Status::not_found(message)
        }
        LayoutError::AlreadyExists { .. } => tonic::Status::already_exists(message),
        LayoutError::InvalidDigest(_) => tonic::Status::invalid_argument(message),
        LayoutError::ReadOnly { .. } => tonic::Status::permission_denied(message),
        LayoutError::Mismatch { .. } => tonic::Status::failed_precondition(message),
        LayoutError::NotADirectory { .. }
        | LayoutError::NotALayout { .. }
        | LayoutError::IndexNotJson { .. } => tonic::Status::failed_precondition(message),
        LayoutError::LockTimeout { .. } => tonic::Status::deadline_exceeded(message),
        LayoutError::Closed { .. } => tonic::Status::cancelled(message),
        LayoutError::Io { .. } => tonic::Status::internal(message),
    }
}

fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

fn info(digest: &str, size: u64, modified: SystemTime) -> Info {
    Info {
        digest: digest.to_owned(),
        size: i64::try_from(size).unwrap_or(i64::MAX),
        created_at: Some(timestamp(modified)),
        updated_at: Some(timestamp(modified)),
        labels: HashMap::new(),
    }
}

fn non_negative(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

type ReadStream = Pin<Box<dyn Stream<Item = Result<ReadContentResponse, tonic::Status>> + Send>>;
type ListStream = Pin<Box<dyn Stream<Item = Result<ListContentResponse, tonic::Status>> + Send>>;
type WriteStream = Pin<Box<dyn Stream<Item = Result<WriteContentResponse, tonic::Status>> + Send>>;

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tonic::Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| tonic::Status::internal(format!("content store task failed: {e}")))
}

#[tonic::async_trait]
impl Content for ContentService {
    async fn info(
        &self,
        request: tonic::Request<InfoRequest>,
    ) -> Result<tonic::Response<InfoResponse>, tonic::Status> {
        let (_, store) = self.store(&request)?;
        let digest = request.into_inner().digest;
        let (size, modified) = blocking({
            let digest = digest.clone();
            move || store.info(&digest)
        })
        .await?
        .map_err(status)?;
        Ok(tonic::Response::new(InfoResponse {
            info: Some(info(&digest, size, modified)),
        }))
    }

    async fn update(
        &self,
        request: tonic::Request<UpdateRequest>,
    ) -> Result<tonic::Response<UpdateResponse>, tonic::Status> {
        // Labels (garbage-collection hints of the daemon's own store) have no place in an
        // OCI layout; like buildctl's store we keep none, and answer with the blob's info.
        let (_, store) = self.store(&request)?;
        let digest = request
            .into_inner()
            .info
            .map(|i| i.digest)
            .unwrap_or_default();
        let (size, modified) = blocking({
            let digest = digest.clone();
            move || store.info(&digest)
        })
        .await?
        .map_err(status)?;
        Ok(tonic::Response::new(UpdateResponse {
            info: Some(info(&digest, size, modified)),
        }))
    }

    type ListStream = ListStream;

    async fn list(
        &self,
        request: tonic::Request<ListContentRequest>,
    ) -> Result<tonic::Response<ListStream>, tonic::Status> {
        let (_, store) = self.store(&request)?;
        let blobs = blocking(move || {
            store.list().map(|blobs| {
                blobs
                    .into_iter()
                    .map(|(digest, size)| {
                        let modified = store
                            .info(&digest)
                            .map(|(_, m)| m)
                            .unwrap_or(SystemTime::UNIX_EPOCH);
                        info(&digest, size, modified)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .await?
        .map_err(status)?;
        let batches: Vec<Result<ListContentResponse, tonic::Status>> = blobs
            .chunks(100)
            .map(|c| Ok(ListContentResponse { info: c.to_vec() }))
            .collect();
        Ok(tonic::Response::new(Box::pin(futures_util::stream::iter(
            batches,
        ))))
    }

    async fn delete(
        &self,
        request: tonic::Request<DeleteContentRequest>,
    ) -> Result<tonic::Response<()>, tonic::Status> {
        // Nothing the daemon does for these exporters deletes from the client's store, and
        // a peer must not remove what earlier builds left in a user's directory.
        let (id, _) = self.store(&request)?;
        Err(tonic::Status::permission_denied(format!(
            "store {id} does not allow deleting"
        )))
    }

    type ReadStream = ReadStream;

    async fn read(
        &self,
        request: tonic::Request<ReadContentRequest>,
    ) -> Result<tonic::Response<ReadStream>, tonic::Status> {
        let (_, store) = self.store(&request)?;
        let ReadContentRequest {
            digest,
            offset,
            size,
        } = request.into_inner();
        let offset = non_negative(offset);
        // The daemon's reader asks for one small range per call (each `ReadAt`): answer
        // those with one blocking hop instead of a reader task and a queue.
        if size > 0 && non_negative(size) <= READ_CHUNK as u64 {
            let message = blocking(move || read_range(&store, &digest, offset, non_negative(size)))
                .await?
                .map_err(status)?;
            return Ok(tonic::Response::new(Box::pin(futures_util::stream::once(
                async move { Ok(message) },
            ))));
        }
        let file = blocking({
            let store = store.clone();
            let digest = digest.clone();
            move || -> Result<std::fs::File, LayoutError> {
                let mut file = store.open_blob(&digest)?;
                file.seek(SeekFrom::Start(offset))
                    .map_err(|e| LayoutError::Io {
                        path: store.root().to_owned(),
                        source: e,
                    })?;
                Ok(file)
            }
        })
        .await?
        .map_err(status)?;
        let limit = if size > 0 {
            non_negative(size)
        } else {
            u64::MAX
        };
        // A small queue: the reader runs at most a few chunks ahead of the connection.
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::task::spawn_blocking(move || {
            let mut reader = file.take(limit);
            let mut position = offset;
            loop {
                let mut chunk = vec![0u8; READ_CHUNK];
                let n = match reader.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(tonic::Status::internal(format!(
                            "reading {digest} from {}: {e}",
                            store.root().display()
                        ))));
                        break;
                    }
                };
                chunk.truncate(n);
                let message = ReadContentResponse {
                    offset: i64::try_from(position).unwrap_or(i64::MAX),
                    data: Bytes::from(chunk),
                };
                position += n as u64;
                if tx.blocking_send(Ok(message)).is_err() {
                    break;
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn status(
        &self,
        request: tonic::Request<StatusRequest>,
    ) -> Result<tonic::Response<StatusResponse>, tonic::Status> {
        let (id, _) = self.store(&request)?;
        let reference = request.into_inner().r#ref;
        let progress = self
            .active
            .lock()
            .ok()
            .and_then(|a| a.get(&reference).filter(|p| p.store == id).cloned())
            .ok_or_else(|| tonic::Status::not_found(format!("no upload {reference}")))?;
        Ok(tonic::Response::new(StatusResponse {
            status: Some(status_of(&reference, &progress)),
        }))
    }

    async fn list_statuses(
        &self,
        request: tonic::Request<ListStatusesRequest>,
    ) -> Result<tonic::Response<ListStatusesResponse>, tonic::Status> {
        let (id, _) = self.store(&request)?;
        let statuses = self
            .active
            .lock()
            .map(|a| {
                a.iter()
                    .filter(|(_, p)| p.store == id)
                    .map(|(r, p)| status_of(r, p))
                    .collect()
            })
            .unwrap_or_default();
        Ok(tonic::Response::new(ListStatusesResponse { statuses }))
    }

    type WriteStream = WriteStream;

    async fn write(
        &self,
        request: tonic::Request<tonic::Streaming<WriteContentRequest>>,
    ) -> Result<tonic::Response<WriteStream>, tonic::Status> {
        let (id, store) = self.store(&request)?;
        let mut incoming = request.into_inner();
        let first = incoming
            .next()
            .await
            .ok_or_else(|| tonic::Status::invalid_argument("empty write stream"))??;
        if first.r#ref.is_empty() {
            return Err(tonic::Status::invalid_argument(
                "the first write message must have a ref",
            ));
        }
        let reference = first.r#ref.clone();
        let expected = Some(first.expected.clone()).filter(|e| !e.is_empty());
        let total = non_negative(first.total);
        // Fails with AlreadyExists before any data moves when the blob is stored already.
        let ingest = blocking({
            let store = store.clone();
            let reference = reference.clone();
            move || store.begin_upload(&reference, expected.as_deref(), total)
        })
        .await?
        .map_err(status)?;
        tracing::debug!(store = %id, reference, total, "upload started");
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let active = self.active.clone();
        self.tasks.spawn(async move {
            let upload = Upload {
                store,
                store_id: id,
                reference,
                active,
            };
            upload.run(ingest, first, incoming, tx).await;
        });
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn abort(
        &self,
        request: tonic::Request<AbortRequest>,
    ) -> Result<tonic::Response<()>, tonic::Status> {
        // Our ingests belong to their write streams and are removed when a stream ends
        // without a commit, so there is nothing left to abort by name.
        let (id, _) = self.store(&request)?;
        let reference = request.into_inner().r#ref;
        let known = self
            .active
            .lock()
            .map(|a| a.get(&reference).is_some_and(|p| p.store == id))
            .unwrap_or(false);
        if known {
            return Err(tonic::Status::unavailable(format!(
                "upload {reference} is in progress on its write stream"
            )));
        }
        Err(tonic::Status::not_found(format!("no upload {reference}")))
    }
}

/// Reads `size` bytes (fewer at the end of the blob) at `offset`.
fn read_range(
    store: &LayoutStore,
    digest: &str,
    offset: u64,
    size: u64,
) -> Result<ReadContentResponse, LayoutError> {
    let io = |source| LayoutError::Io {
        path: store.root().to_owned(),
        source,
    };
    let mut file = store.open_blob(digest)?;
    file.seek(SeekFrom::Start(offset)).map_err(io)?;
    let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(READ_CHUNK));
    file.take(size).read_to_end(&mut data).map_err(io)?;
    Ok(ReadContentResponse {
        offset: i64::try_from(offset).unwrap_or(i64::MAX),
        data: Bytes::from(data),
    })
}

fn status_of(
    reference: &str,
    p: &Progress,
) -> crate::buildkit::proto::containerd::services::content::v1::Status {
    crate::buildkit::proto::containerd::services::content::v1::Status {
        started_at: Some(timestamp(p.started)),
        updated_at: Some(timestamp(p.updated)),
        r#ref: reference.to_owned(),
        offset: i64::try_from(p.offset).unwrap_or(i64::MAX),
        total: i64::try_from(p.total).unwrap_or(i64::MAX),
        expected: p.expected.clone(),
    }
}

/// One `Write` stream.
struct Upload {
    store: Arc<LayoutStore>,
    store_id: String,
    reference: String,
    active: Arc<std::sync::Mutex<HashMap<String, Progress>>>,
}

type Reply = tokio::sync::mpsc::Sender<Result<WriteContentResponse, tonic::Status>>;

impl Upload {
    fn track(&self, ingest: &Ingest) {
        if let Ok(mut active) = self.active.lock() {
            active.insert(
                self.reference.clone(),
                Progress {
                    store: self.store_id.clone(),
                    started: ingest.started,
                    updated: ingest.updated,
                    offset: ingest.offset,
                    total: ingest.total,
                    expected: ingest.expected.clone().unwrap_or_default(),
                },
            );
        }
    }

    fn untrack(&self) {
        if let Ok(mut active) = self.active.lock() {
            active.remove(&self.reference);
        }
    }

    /// Answers each request in turn; the ingest is committed on COMMIT, dropped when the
    /// stream ends (or fails) first.
    async fn run(
        self,
        ingest: Ingest,
        first: WriteContentRequest,
        mut incoming: tonic::Streaming<WriteContentRequest>,
        reply: Reply,
    ) {
        let mut ingest = Some(ingest);
        let mut request = first;
        loop {
            let Some(current) = ingest.take() else { break };
            self.track(&current);
            match self.handle(current, request).await {
                Ok((next, response)) => {
                    ingest = next;
                    if reply.send(Ok(response)).await.is_err() {
                        break;
                    }
                }
                Err(err) => {
                    let _ = reply.send(Err(err)).await;
                    break;
                }
            }
            if ingest.is_none() {
                break; // committed
            }
            request = match incoming.next().await {
                Some(Ok(r)) => r,
                Some(Err(err)) => {
                    tracing::debug!(reference = self.reference, error = %err, "upload stream broke");
                    break;
                }
                None => break,
            };
        }
        if let Some(left) = ingest {
            let store = self.store.clone();
            let _ = blocking(move || store.abort(left)).await;
        }
        self.untrack();
    }

    /// One request: returns the ingest (None once committed) and the response.
    async fn handle(
        &self,
        mut ingest: Ingest,
        request: WriteContentRequest,
    ) -> Result<(Option<Ingest>, WriteContentResponse), tonic::Status> {
        let action = WriteAction::try_from(request.action).unwrap_or(WriteAction::Write);
        if request.total > 0 {
            ingest.total = non_negative(request.total);
        }
        if !request.expected.is_empty() {
            ingest.expected = Some(request.expected.clone());
        }
        let store = self.store.clone();
        let outcome = blocking(move || apply(&store, ingest, action, &request))
            .await?
            .map_err(|failed| {
                let Failed { left, error } = *failed;
                if let Some(left) = left {
                    self.store.abort(left);
                }
                status(error)
            })?;
        let response = match &outcome {
            Step::Open(current) => WriteContentResponse {
                action: action as i32,
                started_at: Some(timestamp(current.started)),
                updated_at: Some(timestamp(current.updated)),
                offset: i64::try_from(current.offset).unwrap_or(i64::MAX),
                total: i64::try_from(current.total).unwrap_or(i64::MAX),
                digest: if action == WriteAction::Stat {
                    current.digest()
                } else {
                    String::new()
                },
            },
            Step::Committed { digest, size } => {
                // The writer checks that the committed size is what it sent.
                let now = SystemTime::now();
                let size = i64::try_from(*size).unwrap_or(i64::MAX);
                WriteContentResponse {
                    action: action as i32,
                    started_at: Some(timestamp(now)),
                    updated_at: Some(timestamp(now)),
                    offset: size,
                    total: size,
                    digest: digest.clone(),
                }
            }
        };
        let ingest = match outcome {
            Step::Open(ingest) => Some(ingest),
            Step::Committed { .. } => None,
        };
        Ok((ingest, response))
    }
}

/// What one write request left behind.
enum Step {
    /// The upload is not complete yet: the ingest stays open for the next request.
    Open(Ingest),
    /// The blob is committed into the layout under its digest.
    Committed {
        /// Its digest, `ALG:HEX`, checked against the bytes received.
        digest: String,
        /// Its size in bytes.
        size: u64,
    },
}

/// A failed write request: the ingest to drop (when it is still ours) and why.
struct Failed {
    left: Option<Ingest>,
    error: LayoutError,
}

/// Applies one write request to the ingest (blocking file work).
fn apply(
    store: &LayoutStore,
    mut ingest: Ingest,
    action: WriteAction,
    request: &WriteContentRequest,
) -> Result<Step, Box<Failed>> {
    let fail = |left: Option<Ingest>, error: LayoutError| Box::new(Failed { left, error });
    if action == WriteAction::Stat {
        return Ok(Step::Open(ingest));
    }
    let offset = non_negative(request.offset);
    if request.offset == 0 && ingest.offset > 0 {
        // Offset 0 restarts the upload (containerd's rule).
        if let Err(e) = ingest.restart() {
            let e = store.note_failure(e);
            return Err(fail(Some(ingest), e));
        }
    } else if offset > 0 && offset != ingest.offset {
        let reason = format!(
            "write at offset {offset}, but {} bytes were written",
            ingest.offset
        );
        let path = store.root().to_owned();
        return Err(fail(Some(ingest), LayoutError::Mismatch { path, reason }));
    }
    if !request.data.is_empty()
        && let Err(e) = ingest.write(&request.data)
    {
        let e = store.note_failure(e);
        return Err(fail(Some(ingest), e));
    }
    if action == WriteAction::Commit {
        let total = ingest.total;
        let size = ingest.offset;
        let expected = ingest.expected.clone();
        return store
            .commit(ingest, total, expected.as_deref())
            .map(|digest| Step::Committed { digest, size })
            .map_err(|e| fail(None, e));
    }
    Ok(Step::Open(ingest))
}
