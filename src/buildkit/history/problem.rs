//! What can be wrong with a blob of a history record (its logs, error or an attachment), read
//! from the daemon or from an archive. A file of its own: the client's error type names it.

use super::frames::FrameError;

/// What is wrong with a blob the daemon sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BlobProblem {
    /// The record names no such blob.
    #[error("the record has no {0}")]
    Missing(&'static str),
    /// Its size is not the one its descriptor gives.
    #[error("{got} bytes arrived where the record gives {expected}")]
    Size {
        /// The descriptor's size.
        expected: u64,
        /// What arrived (so far, when it is already more).
        got: u64,
    },
    /// Its bytes do not hash to its digest.
    #[error("its content hashes to {got}")]
    Digest {
        /// The digest of what arrived.
        got: String,
    },
    /// A chunk came out of order.
    #[error("a chunk for offset {got} came where offset {expected} was due")]
    Offset {
        /// The offset due.
        expected: u64,
        /// The chunk's.
        got: i64,
    },
    /// The digest is not `sha256:` and 64 hex digits.
    #[error("its digest is not a sha256 digest")]
    Algorithm,
    /// A logs blob's frames are broken.
    #[error(transparent)]
    Frames(#[from] FrameError),
    /// An error blob is not a `google.rpc.Status`.
    #[error("it is not a google.rpc.Status: {0}")]
    NotAStatus(String),
}
