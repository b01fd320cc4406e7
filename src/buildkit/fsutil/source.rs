//! What a session serves as a local directory (the build context, the Dockerfile's directory,
//! named contexts): a [`Source`], on a disk ([`Directory`]) or in memory
//! ([`MemoryTree`](super::MemoryTree)), or of the caller's own making.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

use crate::buildkit::status::RpcStatus;

use super::{Filter, Packet, SendError, TransferStats};

/// The receiver's packets (REQ, FIN, ERR) of one DiffCopy call.
pub type Incoming = Pin<Box<dyn Stream<Item = Result<Packet, RpcStatus>> + Send>>;

/// One DiffCopy call the daemon made for a local directory: what it asked to see, and the two
/// directions of the stream.
#[non_exhaustive]
pub struct Transfer {
    /// The daemon's include and exclude patterns and follow paths for this call.
    pub filter: Filter,
    /// The receiver's packets.
    pub incoming: Incoming,
    /// Where this side's packets go (STATs, DATA, FIN, ERR), in batches: each batch is sent
    /// as consecutive messages, and all of one batch in one write, so a source sends many
    /// small packets (a directory's STATs, small files' data with their ends) together.
    pub outgoing: mpsc::Sender<Vec<Packet>>,
    /// Counters to add what is sent to.
    pub stats: Arc<TransferStats>,
}

/// A tree the session can send as a local directory over fsutil's DiffCopy protocol (see the
/// [module](super) docs for its packets).
///
/// The crate has two: [`Directory`] and [`MemoryTree`](super::MemoryTree). Implement it to send
/// a tree of your own (from an archive, a virtual file system) exactly as the protocol wants it.
pub trait Source: Send + Sync + 'static {
    /// Sends the tree, filtered by `transfer.filter`, until the receiver's FIN (answered with
    /// FIN).
    ///
    /// # Errors
    /// Why the transfer failed; the session reports it to the daemon as the call's status.
    fn send(&self, transfer: Transfer) -> BoxFuture<'static, Result<(), SendError>>;

    /// The directory on disk behind it, if any: the session's shared key (which lets the
    /// daemon reuse its last copy) is made from it.
    fn path(&self) -> Option<&std::path::Path> {
        None
    }
}

impl std::fmt::Debug for dyn Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.path() {
            Some(path) => write!(f, "Source({})", path.display()),
            None => f.write_str("Source(<not on disk>)"),
        }
    }
}

/// A directory on disk, sent as buildctl sends it (see [`send`](super::send)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directory(pub PathBuf);

impl Source for Directory {
    fn send(&self, transfer: Transfer) -> BoxFuture<'static, Result<(), SendError>> {
        Box::pin(super::send(
            self.0.clone(),
            transfer.filter,
            transfer.incoming,
            transfer.outgoing,
            transfer.stats,
        ))
    }

    fn path(&self) -> Option<&std::path::Path> {
        Some(&self.0)
    }
}
