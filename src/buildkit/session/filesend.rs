//! `moby.filesync.v1.FileSend/DiffCopy`: exporters sending results back. One method, two
//! wire formats: the `local` exporter speaks fsutil Packets (we are the receiver), `tar`,
//! `oci` and `docker` send raw file bytes in BytesMessages. So the path is served with a
//! raw-bytes codec and the exporter (metadata `buildkit-attachable-exporter-id`) picks the
//! decoding.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes};
use futures_util::{FutureExt, Stream, StreamExt};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use super::ExportTarget;
use super::tasks::Tasks;
use crate::buildkit::MAX_MESSAGE_SIZE;
use crate::buildkit::fsutil;
use crate::buildkit::proto::control::BytesMessage;
use crate::buildkit::proto::fsutil::types::Packet;
use crate::buildkit::status::{RpcCode, RpcStatus};

pub(super) fn service(
    exports: Vec<ExportTarget>,
    tasks: Tasks,
    staged: Arc<StagedExports>,
) -> FileSendService {
    FileSendService {
        exports: Arc::new(exports),
        tasks,
        staged,
    }
}

/// Serves `/moby.filesync.v1.FileSend/DiffCopy` by hand (the generated server has one fixed
/// message type).
#[derive(Clone)]
pub(super) struct FileSendService {
    exports: Arc<Vec<ExportTarget>>,
    tasks: Tasks,
    staged: Arc<StagedExports>,
}

/// Exported files received in full, each still under its temporary name beside its
/// destination: a daemon may end a file's stream cleanly and then fail the build, so a file
/// is put in place only once the Solve succeeded ([`StagedExports::place`]). Whatever is
/// still here when the session ends is deleted.
#[derive(Debug, Default)]
pub(crate) struct StagedExports(Mutex<Vec<(TempFile, PathBuf)>>);

impl StagedExports {
    fn stage(&self, file: TempFile, dest: PathBuf) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((file, dest));
    }

    /// Renames every staged file onto its destination (blocking: call it off the runtime).
    ///
    /// # Errors
    /// The destination and the I/O error of the first rename that failed; the files not
    /// yet placed are deleted.
    pub(crate) fn place(&self) -> Result<(), (PathBuf, std::io::Error)> {
        let staged = std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner));
        for (file, dest) in staged {
            std::fs::rename(file.path(), &dest).map_err(|e| (dest, e))?;
            file.keep();
        }
        Ok(())
    }

    /// The files staged so far, moved out: the session may end (deleting what is still
    /// staged in it) while the build decides their fate.
    pub(crate) fn take(&self) -> StagedExports {
        StagedExports(Mutex::new(std::mem::take(
            &mut *self.0.lock().unwrap_or_else(PoisonError::into_inner),
        )))
    }

    /// Deletes every staged file.
    pub(crate) fn discard(&self) {
        drop(std::mem::take(
            &mut *self.0.lock().unwrap_or_else(PoisonError::into_inner),
        ));
    }
}

impl tonic::server::NamedService for FileSendService {
    const NAME: &'static str = "moby.filesync.v1.FileSend";
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type RawStream = Pin<Box<dyn Stream<Item = Result<Bytes, tonic::Status>> + Send>>;

impl<B> tower::Service<http::Request<B>> for FileSendService
where
    B: tonic::codegen::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let diff_copy = DiffCopy {
            exports: self.exports.clone(),
            tasks: self.tasks.clone(),
            staged: self.staged.clone(),
        };
        Box::pin(async move {
            if req.uri().path() != "/moby.filesync.v1.FileSend/DiffCopy" {
                return Ok(tonic::Status::unimplemented("").into_http());
            }
            let mut grpc = tonic::server::Grpc::new(RawCodec)
                .apply_max_message_size_config(Some(MAX_MESSAGE_SIZE), Some(MAX_MESSAGE_SIZE));
            Ok(grpc.streaming(diff_copy, req).await)
        })
    }
}

struct DiffCopy {
    exports: Arc<Vec<ExportTarget>>,
    tasks: Tasks,
    staged: Arc<StagedExports>,
}

impl tonic::server::StreamingService<Bytes> for DiffCopy {
    type Response = Bytes;
    type ResponseStream = RawStream;
    type Future = BoxFuture<Result<tonic::Response<RawStream>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<tonic::Streaming<Bytes>>) -> Self::Future {
        let exports = self.exports.clone();
        let tasks = self.tasks.clone();
        let staged = self.staged.clone();
        Box::pin(async move {
            let index = match request.metadata().get("buildkit-attachable-exporter-id") {
                None => 0,
                Some(v) => v
                    .to_str()
                    .ok()
                    .and_then(|s| s.trim().parse::<usize>().ok())
                    .ok_or_else(|| {
                        tonic::Status::invalid_argument("invalid buildkit-attachable-exporter-id")
                    })?,
            };
            let target = exports.get(index).cloned().unwrap_or(ExportTarget::None);
            match target {
                ExportTarget::None => Err(tonic::Status::not_found(format!(
                    "exporter {index} does not send files to the client"
                ))),
                ExportTarget::File(path) => {
                    let file = receive_file(&path, request.into_inner()).await?;
                    staged.stage(file, path);
                    let empty: RawStream = Box::pin(futures_util::stream::empty());
                    Ok(tonic::Response::new(empty))
                }
                ExportTarget::Directory(dir) => Ok(tonic::Response::new(receive_dir(
                    dir,
                    request.into_inner(),
                    &tasks,
                ))),
            }
        })
    }
}

/// Streams BytesMessage chunks into a temporary file beside `dest` and returns it once the
/// daemon ends the stream (the build puts it in place); removed on failure. Only a few
/// chunks are held in memory.
///
/// One blocking thread does all the writes (with `std::fs`): `tokio::fs` would hand every
/// chunk to a new blocking task, a thread wake-up and a copy per message.
async fn receive_file(
    dest: &Path,
    mut incoming: tonic::Streaming<Bytes>,
) -> Result<TempFile, tonic::Status> {
    let tmp = TempFile(Some(temp_path(dest)));
    let tmp_path = tmp.path().to_owned();
    // Created here, before the writer starts, so that the guard above always removes it: a
    // writer still running after a cancellation writes to an unlinked file.
    let file = {
        let path = tmp_path.clone();
        // A new file, never one already there: O_EXCL does not follow a symlink planted at
        // the temporary name, so the export cannot be redirected through it.
        tokio::task::spawn_blocking(move || {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
        })
        .await
        .map_err(|e| tonic::Status::internal(format!("writer task failed: {e}")))?
        .map_err(|e| io_status("create", &tmp_path, &e))?
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Bytes>>(WRITE_QUEUE);
    let writer = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let mut file = file;
        while let Some(chunks) = rx.blocking_recv() {
            write_all_vectored(&mut file, &chunks)?;
        }
        file.sync_all()
    });
    let data_of = |frame: Result<Bytes, tonic::Status>| {
        BytesMessage::decode(frame?)
            .map(|message| message.data)
            .map_err(|e| tonic::Status::invalid_argument(format!("bad BytesMessage: {e}")))
    };
    let received = async {
        // The daemon's messages are small (a tar exporter's writes, 8 KiB on average): each
        // batch takes every one already received, so they reach the disk in one `writev`
        // and the writer thread wakes once for them.
        let mut ended = false;
        while !ended && let Some(frame) = incoming.next().await {
            let mut batch = vec![data_of(frame)?];
            let mut bytes = batch[0].len();
            while bytes < WRITE_BATCH && batch.len() < WRITE_BATCH_CHUNKS {
                match incoming.next().now_or_never() {
                    Some(Some(frame)) => {
                        let data = data_of(frame)?;
                        bytes += data.len();
                        batch.push(data);
                    }
                    Some(None) => {
                        ended = true;
                        break;
                    }
                    // Nothing more has arrived yet.
                    None => break,
                }
            }
            if tx.send(batch).await.is_err() {
                // The writer stopped on an error, reported below.
                break;
            }
        }
        Ok::<(), tonic::Status>(())
    }
    .await;
    drop(tx);
    let written = writer
        .await
        .map_err(|e| tonic::Status::internal(format!("writer task failed: {e}")))?;
    received?;
    written.map_err(|e| io_status("write", &tmp_path, &e))?;
    Ok(tmp)
}

/// Batches of an exported file's chunks queued for the writer thread.
const WRITE_QUEUE: usize = 8;

/// A batch of chunks stops growing past this many bytes (it may end with one message of up to
/// [`MAX_MESSAGE_SIZE`])...
const WRITE_BATCH: usize = 256 << 10;

/// ...or this many chunks (well under the kernel's 1,024 buffers for one `writev`).
const WRITE_BATCH_CHUNKS: usize = 256;

/// Writes all of `chunks` in order, in as few `writev` calls as the file takes.
fn write_all_vectored(file: &mut std::fs::File, chunks: &[Bytes]) -> std::io::Result<()> {
    use std::io::{IoSlice, Write};
    let mut slices: Vec<IoSlice<'_>> = chunks.iter().map(|c| IoSlice::new(c)).collect();
    let mut slices = &mut slices[..];
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        match file.write_vectored(slices) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A temporary file removed when dropped (on failure, or when the build is cancelled and
/// this service's future is dropped), unless kept.
#[derive(Debug)]
struct TempFile(Option<PathBuf>);

impl TempFile {
    fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }

    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Runs the fsutil receiver into `dest`, translating frames to and from Packets; its tasks
/// are the session's.
fn receive_dir(dest: PathBuf, incoming: tonic::Streaming<Bytes>, tasks: &Tasks) -> RawStream {
    let packets = incoming.map(|frame| match frame {
        Ok(bytes) => Packet::decode(bytes).map_err(|e| {
            RpcStatus::new(RpcCode::InvalidArgument, format!("bad fsutil packet: {e}"))
        }),
        Err(status) => Err(RpcStatus::from(&status)),
    });
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Packet>(64);
    let (out_tx, out_rx) = tokio::sync::mpsc::channel::<Result<Bytes, tonic::Status>>(64);
    let stats = Arc::new(fsutil::TransferStats::default());
    let relay_tx = out_tx.clone();
    tasks.spawn(async move {
        while let Some(packet) = rx.recv().await {
            if relay_tx
                .send(Ok(packet.encode_to_vec().into()))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    tasks.spawn(async move {
        if let Err(err) = fsutil::receive(dest.clone(), Box::pin(packets), tx, stats).await {
            let _ = out_tx
                .send(Err(tonic::Status::internal(format!(
                    "writing the export into {}: {err}",
                    dest.display()
                ))))
                .await;
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(out_rx))
}

fn temp_path(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "export".into());
    // Unique per export: two builds (in one process or two) may export to the same file.
    let unique = &super::random_id()[..10];
    dest.with_file_name(format!(".{name}.pf-buildkit-{unique}.tmp"))
}

fn io_status(what: &str, path: &Path, err: &std::io::Error) -> tonic::Status {
    tonic::Status::internal(format!("cannot {what} {}: {err}", path.display()))
}

/// A codec that passes message bytes through undecoded.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}
