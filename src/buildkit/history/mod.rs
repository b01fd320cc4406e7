//! The daemon's build history (BuildKit v0.11 and later): every build it ran, its status,
//! error, timing and exporter response, and its whole progress stream kept as a blob in the
//! daemon's content store. What `buildx history` reads, one daemon at a time; the fleet reads
//! every pod's through these same calls.
//!
//! - [`Client::build_history`] lists records (`ListenBuildHistory`, ending at the current
//!   state), newest first;
//! - [`Client::build_logs`] reads a record's logs blob over the same connection
//!   (containerd's `Content.Read`, which buildkitd serves beside Control) as a stream of
//!   status updates, to feed any [`ProgressSink`](super::progress::ProgressSink);
//! - [`Client::build_failure`] reads a failed build's whole error (its Dockerfile lines);
//! - [`Client::delete_build_record`] deletes one (`UpdateBuildHistory`);
//! - [`archive`] writes a record, its logs and attachments to one file, and reads it back.
//!
//! A daemon without the history API answers each with [`Error::NoHistory`].
//!
//! ```no_run
//! # async fn run() -> Result<(), pf_buildkit::buildkit::Error> {
//! use pf_buildkit::buildkit::history::{BuildStatus, HistoryQuery};
//! use pf_buildkit::buildkit::progress::{PlainProgress, ProgressSink};
//! use pf_buildkit::buildkit::{Client, Endpoint, TlsOptions};
//!
//! let client = Client::connect("tcp://127.0.0.1:1234".parse::<Endpoint>()?, &TlsOptions::default()).await?;
//! let failed = client
//!     .build_history(&HistoryQuery::default().with_status(BuildStatus::Failed))
//!     .await?;
//! if let Some(record) = failed.first() {
//!     // Its progress, as `--progress plain` showed it live.
//!     let mut plain = PlainProgress::replay(std::io::stderr());
//!     let mut logs = client.build_logs(record).await?;
//!     while let Some(update) = logs.next().await {
//!         plain.update(&update?);
//!     }
//!     let failure = client.build_failure(record).await?;
//!     plain.finish(&Default::default(), failure.as_ref());
//! }
//! # Ok(()) }
//! ```

pub mod archive;
mod frames;
pub(super) mod problem;
mod record;
mod select;

use base64::Engine as _;
use futures_util::StreamExt;
use prost::Message;
use sha2::{Digest, Sha256};
use tonic::Streaming;

use super::client::{Client, MAX_MESSAGE_SIZE};
use super::error::{Error, Result};
use super::progress::FailureReport;
use super::progress::SolveStatus;
use super::proto::containerd::services::content::v1::content_client::ContentClient;
use super::proto::containerd::services::content::v1::{ReadContentRequest, ReadContentResponse};
use super::proto::control::{
    BuildHistoryEventType, BuildHistoryRequest, UpdateBuildHistoryRequest,
};
use super::proto::google::rpc::Status as GoogleStatus;
use crate::setters::with_setters;

use frames::StatusFrames;
pub use frames::{FrameError, LOGS_MEDIA_TYPE};
pub use problem::BlobProblem;
pub use record::{
    Attachment, BlobDescriptor, BuildRecord, BuildStatus, ExporterRecord, RecordError, StepCounts,
    rfc3339, utc_text,
};
pub use select::{RefSelector, SelectError, select};

/// Which records [`Client::build_history`] returns.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct HistoryQuery {
    /// Only the record of this full ref.
    pub reference: Option<String>,
    /// Only records of this status.
    pub status: Option<BuildStatus>,
    /// Only builds still running.
    pub active_only: bool,
}

with_setters!(HistoryQuery {
    with_active_only => active_only: bool,
} optional {
    with_reference => reference: String,
    with_status => status: BuildStatus,
});

impl Client {
    /// The builds of the daemon's history (finished and running), newest first.
    ///
    /// # Errors
    /// [`Error::NoHistory`] when the daemon has no history API; [`Error::Rpc`] when the call
    /// fails.
    pub async fn build_history(&self, query: &HistoryQuery) -> Result<Vec<BuildRecord>> {
        const CALL: &str = "ListenBuildHistory";
        let request = BuildHistoryRequest {
            active_only: query.active_only,
            r#ref: query.reference.clone().unwrap_or_default(),
            early_exit: true,
            ..Default::default()
        };
        let mut stream = self
            .history_call(self.control().listen_build_history(request), CALL)
            .await?;
        // The daemon sends the running builds (STARTED) and then the stored ones (COMPLETE);
        // a build that ends meanwhile can come twice: the last word wins.
        let mut records: Vec<BuildRecord> = Vec::new();
        while let Some(event) = stream.next().await {
            let event = event.map_err(|s| Error::rpc(self.endpoint(), CALL, s))?;
            let Some(record) = event.record else {
                continue;
            };
            records.retain(|r| r.reference != record.r#ref);
            if event.r#type != BuildHistoryEventType::Deleted as i32 {
                records.push(BuildRecord::from(record));
            }
        }
        if let Some(status) = query.status {
            records.retain(|r| r.status() == status);
        }
        // Newest first; equal times by ref, so the order is the same on every call.
        records.sort_by(|a, b| {
            b.created_at
                .cmp(&a.created_at)
                .then_with(|| a.reference.cmp(&b.reference))
        });
        Ok(records)
    }

    /// The record of `reference` (a full ref), `None` when the history has none.
    ///
    /// # Errors
    /// As [`Client::build_history`].
    pub async fn build_record(&self, reference: &str) -> Result<Option<BuildRecord>> {
        let query = HistoryQuery {
            reference: Some(reference.to_owned()),
            ..Default::default()
        };
        let records = self.build_history(&query).await?;
        Ok(records.into_iter().find(|r| r.reference == reference))
    }

    /// Deletes the record of `reference` (a full ref) and its blobs from the history.
    ///
    /// # Errors
    /// [`Error::NoHistory`] when the daemon has no history API; [`Error::Rpc`] when the
    /// daemon refuses (a running build's record cannot be deleted).
    pub async fn delete_build_record(&self, reference: &str) -> Result<()> {
        let request = UpdateBuildHistoryRequest {
            r#ref: reference.to_owned(),
            delete: true,
            ..Default::default()
        };
        self.history_call(
            self.control().update_build_history(request),
            "UpdateBuildHistory",
        )
        .await
        .map(drop)
    }

    /// The record's progress stream, read from its logs blob: the status updates the build
    /// sent, in order, as the live `Status` call gave them.
    ///
    /// # Errors
    /// [`Error::Blob`] when the record has no logs (a build still running); [`Error::Rpc`]
    /// when the blob cannot be read. The stream's items fail with [`Error::Blob`] when the
    /// blob is not what its descriptor says.
    pub async fn build_logs(&self, record: &BuildRecord) -> Result<BuildLogs> {
        let blob = record.logs.as_ref().ok_or_else(|| Error::Blob {
            endpoint: self.endpoint().to_owned(),
            digest: String::new(),
            problem: BlobProblem::Missing("logs: the build has not finished"),
        })?;
        Ok(BuildLogs {
            blob: self.open_blob(blob).await?,
            frames: StatusFrames::new(),
            done: false,
        })
    }

    /// A failed build's error as the renderers show it: the message, the failing step and
    /// the Dockerfile lines, from the record's external error blob when it has one (the
    /// record itself keeps only the message). `None` for a build that did not fail.
    ///
    /// # Errors
    /// [`Error::Rpc`] or [`Error::Blob`] when the error blob cannot be read.
    pub async fn build_failure(&self, record: &BuildRecord) -> Result<Option<FailureReport>> {
        let Some(error) = &record.error else {
            return Ok(None);
        };
        let Some(blob) = &record.external_error else {
            return Ok(Some(inline_failure(error)));
        };
        let bytes = self.read_blob(blob).await?;
        Ok(Some(failure_of(&error.message, &bytes).map_err(
            |problem| Error::Blob {
                endpoint: self.endpoint().to_owned(),
                digest: blob.digest.clone(),
                problem,
            },
        )?))
    }

    /// A blob of the daemon's content store, whole and checked against its descriptor. For
    /// the small blobs of a record (errors, attestations); logs stream with
    /// [`Client::build_logs`].
    ///
    /// # Errors
    /// [`Error::Rpc`] when the read fails; [`Error::Blob`] when what arrives is not the blob.
    pub async fn read_blob(&self, blob: &BlobDescriptor) -> Result<Vec<u8>> {
        let mut reader = self.open_blob(blob).await?;
        let mut out = Vec::new();
        while let Some(chunk) = reader.next_chunk().await? {
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// Starts reading `blob` from the daemon's content store.
    pub(crate) async fn open_blob(&self, blob: &BlobDescriptor) -> Result<BlobReader> {
        let problem = |problem| Error::Blob {
            endpoint: self.endpoint().to_owned(),
            digest: blob.digest.clone(),
            problem,
        };
        let expected = u64::try_from(blob.size).map_err(|_| {
            problem(BlobProblem::Size {
                expected: 0,
                got: 0,
            })
        })?;
        if !is_sha256(&blob.digest) {
            return Err(problem(BlobProblem::Algorithm));
        }
        let mut content = ContentClient::new(self.channel())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        let request = ReadContentRequest {
            digest: blob.digest.clone(),
            offset: 0,
            size: 0,
        };
        let stream = self
            .first_call(content.read(request), "Content.Read")
            .await?;
        Ok(BlobReader {
            endpoint: self.endpoint().to_owned(),
            digest: blob.digest.clone(),
            expected,
            stream,
            hasher: Sha256::new(),
            received: 0,
            finished: false,
        })
    }

    /// Awaits a history call, mapping UNIMPLEMENTED to [`Error::NoHistory`].
    async fn history_call<T>(
        &self,
        call: impl Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
        name: &'static str,
    ) -> Result<T> {
        match call.await {
            Ok(response) => Ok(response.into_inner()),
            Err(status)
                if status.code() == tonic::Code::Unimplemented
                    && std::error::Error::source(&status).is_none() =>
            {
                Err(Error::NoHistory {
                    endpoint: self.endpoint().to_owned(),
                    call: name,
                })
            }
            Err(status) => Err(Error::rpc(self.endpoint(), name, status)),
        }
    }
}

/// A build's progress stream read back from its logs blob: call [`BuildLogs::next`] until it
/// gives `None`. Holds one chunk of the blob at a time.
#[derive(Debug)]
pub struct BuildLogs {
    blob: BlobReader,
    frames: StatusFrames,
    done: bool,
}

impl BuildLogs {
    /// The next status update; `None` after the last.
    ///
    /// # Errors
    /// [`Error::Rpc`] when the read fails; [`Error::Blob`] when the blob is cut, corrupt or
    /// not the one the record names (checked at its end, by size and digest).
    pub async fn next(&mut self) -> Option<Result<SolveStatus>> {
        loop {
            if self.done {
                return None;
            }
            match self.frames.next_status() {
                Ok(Some(status)) => return Some(Ok(SolveStatus::from_proto(status))),
                Ok(None) => {}
                Err(e) => return Some(Err(self.fail(e.into()))),
            }
            match self.blob.next_chunk().await {
                Ok(Some(chunk)) => self.frames.push(&chunk),
                Ok(None) => {
                    self.done = true;
                    return self.frames.finish().err().map(|e| Err(self.fail(e.into())));
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }

    fn fail(&mut self, problem: BlobProblem) -> Error {
        self.done = true;
        self.blob.problem(problem)
    }
}

/// A blob arriving in chunks, checked against its descriptor as it comes: never more bytes
/// than its size, in order, and at the end its size and digest.
#[derive(Debug)]
pub(crate) struct BlobReader {
    endpoint: String,
    digest: String,
    expected: u64,
    stream: Streaming<ReadContentResponse>,
    hasher: Sha256,
    received: u64,
    finished: bool,
}

impl BlobReader {
    /// The next chunk, `None` at the end (after the size and digest were checked).
    pub(crate) async fn next_chunk(&mut self) -> Result<Option<bytes::Bytes>> {
        if self.finished {
            return Ok(None);
        }
        let Some(response) = self.stream.next().await else {
            self.finished = true;
            if self.received != self.expected {
                return Err(self.problem(BlobProblem::Size {
                    expected: self.expected,
                    got: self.received,
                }));
            }
            let got = format!("sha256:{:x}", self.hasher.clone().finalize());
            if got != self.digest {
                return Err(self.problem(BlobProblem::Digest { got }));
            }
            return Ok(None);
        };
        let response = match response {
            Ok(response) => response,
            Err(status) => {
                self.finished = true;
                return Err(Error::rpc(&self.endpoint, "Content.Read", status));
            }
        };
        if u64::try_from(response.offset).ok() != Some(self.received) {
            self.finished = true;
            return Err(self.problem(BlobProblem::Offset {
                expected: self.received,
                got: response.offset,
            }));
        }
        self.received += response.data.len() as u64;
        if self.received > self.expected {
            self.finished = true;
            return Err(self.problem(BlobProblem::Size {
                expected: self.expected,
                got: self.received,
            }));
        }
        self.hasher.update(&response.data);
        Ok(Some(response.data))
    }

    fn problem(&self, problem: BlobProblem) -> Error {
        Error::Blob {
            endpoint: self.endpoint.clone(),
            digest: self.digest.clone(),
            problem,
        }
    }
}

/// `sha256:` and 64 lowercase hex digits.
pub(crate) fn is_sha256(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// The failure a record's error describes by itself: with the details it carries inline (older
/// daemons), else the message alone.
pub(crate) fn inline_failure(error: &RecordError) -> FailureReport {
    error
        .details
        .as_deref()
        .and_then(|d| base64::engine::general_purpose::STANDARD.decode(d).ok())
        .and_then(|bytes| failure_of(&error.message, &bytes).ok())
        .unwrap_or_else(|| FailureReport {
            message: error.message.clone(),
            ..Default::default()
        })
}

/// The failure a `google.rpc.Status` blob describes: the record's message, and the failing
/// step and Dockerfile lines of its details.
pub(crate) fn failure_of(message: &str, status_blob: &[u8]) -> Result<FailureReport, BlobProblem> {
    let status =
        GoogleStatus::decode(status_blob).map_err(|e| BlobProblem::NotAStatus(e.to_string()))?;
    Ok(super::solve::report_from_details(
        message.to_owned(),
        &status.details,
    ))
}
