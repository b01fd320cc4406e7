//! `moby.filesync.v1.FileSync/DiffCopy`: the daemon pulls a local directory (`context`,
//! `dockerfile`, named contexts) from us with the fsutil protocol; we are the sender.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};

use crate::buildkit::MAX_MESSAGE_SIZE;
use crate::buildkit::fsutil;
use crate::buildkit::proto::fsutil::types::Packet;
use crate::buildkit::proto::moby::filesync::v1::file_sync_server::{FileSync, FileSyncServer};
use crate::buildkit::status::RpcStatus;

use super::tasks::Tasks;

pub(super) fn service(
    dirs: BTreeMap<String, Arc<dyn fsutil::Source>>,
    stats: BTreeMap<String, Arc<fsutil::TransferStats>>,
    tasks: Tasks,
) -> FileSyncServer<FileSyncService> {
    FileSyncServer::new(FileSyncService { dirs, stats, tasks })
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE)
}

pub(super) struct FileSyncService {
    dirs: BTreeMap<String, Arc<dyn fsutil::Source>>,
    stats: BTreeMap<String, Arc<fsutil::TransferStats>>,
    tasks: Tasks,
}

type PacketStream = Pin<Box<dyn Stream<Item = Result<Packet, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl FileSync for FileSyncService {
    type DiffCopyStream = PacketStream;

    async fn diff_copy(
        &self,
        request: tonic::Request<tonic::Streaming<Packet>>,
    ) -> Result<tonic::Response<PacketStream>, tonic::Status> {
        let metadata = request.metadata();
        let name = values(metadata, "dir-name")
            .into_iter()
            .next()
            .unwrap_or_default();
        let root = self.dirs.get(&name).cloned().ok_or_else(|| {
            tonic::Status::not_found(format!("no access allowed to dir {name:?}"))
        })?;
        let includes = values(metadata, "include-patterns");
        let excludes = values(metadata, "exclude-patterns");
        let follow = values(metadata, "followpaths");
        tracing::debug!(dir = %name, source = ?root, ?includes, ?excludes, ?follow, "sending local directory");
        let filter = fsutil::Filter::new(includes, excludes, follow).map_err(|e| {
            tonic::Status::invalid_argument(format!(
                "bad file patterns for {name}: {}",
                crate::buildkit::error::wire_text(&e)
            ))
        })?;
        let incoming = request.into_inner();
        let stats = self.stats.get(&name).cloned().unwrap_or_default();
        let (tx, rx) = tokio::sync::mpsc::channel::<Vec<Packet>>(fsutil::SEND_QUEUE);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<tonic::Status>();
        let transfer = fsutil::Transfer {
            filter,
            incoming: Box::pin(
                incoming.map(|item| item.map_err(|status| RpcStatus::from(&status))),
            ),
            outgoing: tx,
            stats,
        };
        self.tasks.spawn(async move {
            let result = root.send(transfer).await;
            if let Err(err) = result {
                let place = match root.path() {
                    Some(path) => path.display().to_string(),
                    None => name,
                };
                let _ = done_tx.send(tonic::Status::internal(format!("sending {place}: {err}")));
            }
        });
        // The packets go straight from the sender's queue to the response, a batch at a time
        // (tonic's encoder then writes all of a batch in one piece); the error, if any,
        // follows the last of them: the queue ends only once every sending thread has let go.
        let failure = futures_util::stream::once(done_rx)
            .filter_map(|done| async move { done.ok().map(Err) });
        let packets = tokio_stream::wrappers::ReceiverStream::new(rx)
            .flat_map(futures_util::stream::iter)
            .map(Ok);
        Ok(tonic::Response::new(Box::pin(packets.chain(failure))))
    }

    type TarStreamStream = PacketStream;

    async fn tar_stream(
        &self,
        _request: tonic::Request<tonic::Streaming<Packet>>,
    ) -> Result<tonic::Response<PacketStream>, tonic::Status> {
        Err(tonic::Status::unimplemented(
            "TarStream is not served; the daemon uses DiffCopy",
        ))
    }
}

/// All values of a metadata key; `<key>-encoded: 1` means each value is URL-query-escaped.
fn values(metadata: &tonic::metadata::MetadataMap, key: &str) -> Vec<String> {
    let encoded = metadata
        .get(format!("{key}-encoded").as_str())
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "1");
    metadata
        .get_all(key)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| {
            if encoded {
                query_unescape(v)
            } else {
                v.to_owned()
            }
        })
        .collect()
}

/// Undoes Go's `url.QueryEscape` (`+` is a space, `%XX` a byte).
fn query_unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_unescape_handles_plus_percent_and_utf8() {
        assert_eq!(query_unescape("a+b%2Fc"), "a b/c");
        assert_eq!(query_unescape("%C3%A9t%C3%A9"), "été");
        assert_eq!(query_unescape("100%"), "100%");
        assert_eq!(query_unescape("%zz"), "%zz");
    }
}
