//! fsutil's DiffCopy protocol (the file-sync wire format of BuildKit sessions), both ends:
//! [`send()`] streams a directory the way buildctl does (FileSync, the build context) and
//! [`receive()`] writes a stream into a directory (FileSend, the `local` exporter).
//!
//! Pure protocol over streams of [`Packet`]s: the session code owns the gRPC calls and hands
//! their two directions in. The protocol (see fsutil's `send.go`/`receive.go`):
//! 1. the sender sends one `PACKET_STAT` per entry, depth-first pre-order with siblings in byte
//!    order, then a `PACKET_STAT` without a stat;
//! 2. the receiver asks for file contents with `PACKET_REQ{ID}`, where an entry's ID is its index
//!    among all STATs; the sender answers with `PACKET_DATA{ID}` chunks and an empty one for EOF,
//!    files interleaving;
//! 3. the receiver sends `PACKET_FIN` when done, the sender answers `PACKET_FIN` and ends;
//!    either side may abort with `PACKET_ERR{data: message}`.
//!
//! Border: it uses only the generated fsutil types and the client's error text helper; it must
//! not import the session, `registry`, `fleet` or anything above `buildkit`.

mod arena;
mod beneath;
mod filter;
mod memory;
mod pattern;
mod receive;
mod send;
mod source;
mod walk;

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests;

use std::io;
use std::sync::atomic::AtomicU64;

// The DiffCopy packets a `Source` reads and writes: this crate's own definitions of fsutil's
// wire messages (vendor-protos/fsutil/), shaped by the protocol, not by a library. Stream
// failures reach a `Source` as the crate's `RpcStatus`, never as a gRPC library's type.
pub use crate::buildkit::proto::fsutil::types::{Packet, Stat, packet::PacketType};
pub use filter::Filter;
pub use memory::MemoryTree;
pub use pattern::PatternError;
pub use receive::{ReceiveError, receive};
pub use send::{SendError, send};
pub use source::{Directory, Incoming, Source, Transfer};

/// Bytes of file data per `PACKET_DATA`.
///
/// buildctl sends 32 KiB chunks; BuildKit's receiver accepts any size well under gRPC's 16 MiB
/// message limit. Larger chunks mean fewer messages (each one a protobuf encode, an HTTP/2
/// frame header and a channel hop), which is what bounds throughput on a fast link. 256 KiB
/// keeps the worst-case memory of a full outgoing queue small ([`SEND_QUEUE`] × chunk size)
/// while cutting the message count 8-fold against buildctl.
pub const CHUNK_SIZE: usize = 256 * 1024;

/// Batches of packets queued between the sender's threads and the outgoing stream. A batch
/// holds at most [`CHUNK_SIZE`] bytes of file data (or 32 KiB of encoded STATs), so this
/// bounds the file data waiting to be encoded (32 × 256 KiB = 8 MiB). Measured on a cold
/// 20,000-file context: 16 costs ~10% more CPU (the encoder drains the queue and sleeps more
/// often), 64 saves little more and adds ~6 MiB of peak RSS.
pub const SEND_QUEUE: usize = 32;

/// How many files the sender reads and sends at once (fsutil uses 4 workers). Each reader
/// is a thread; with files in the page cache more readers than cores only add context
/// switches (4 readers cost ~10% more CPU than 2 on a 2-core machine for the same time).
pub const SEND_CONCURRENCY: usize = 2;

/// Counters shared with the caller, for progress reporting and tests.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct TransferStats {
    /// Entries (STAT packets) sent or received, the end-of-stats marker excluded.
    pub entries: AtomicU64,
    /// Files whose data was sent or written.
    pub files: AtomicU64,
    /// Bytes of file data sent or written.
    pub bytes: AtomicU64,
}

/// Go `os.FileMode` bits, as carried in [`Stat::mode`] (the low 9 bits are the permissions).
pub mod mode {
    /// The entry is a directory (Go's `ModeDir`, the top bit).
    pub const DIR: u32 = 1 << 31;
    /// Append-only (unused on Linux).
    pub const APPEND: u32 = 1 << 30;
    /// Exclusive use (unused on Linux).
    pub const EXCLUSIVE: u32 = 1 << 29;
    /// Temporary file (unused on Linux).
    pub const TEMPORARY: u32 = 1 << 28;
    /// The entry is a symbolic link; its target travels in
    /// [`Stat::linkname`](super::Stat::linkname).
    pub const SYMLINK: u32 = 1 << 27;
    /// A device file (block, or character with [`CHAR_DEVICE`]).
    pub const DEVICE: u32 = 1 << 26;
    /// A named pipe (FIFO).
    pub const NAMED_PIPE: u32 = 1 << 25;
    /// A Unix socket (fsutil clears it before sending).
    pub const SOCKET: u32 = 1 << 24;
    /// Set-user-ID, as in `chmod u+s`.
    pub const SETUID: u32 = 1 << 23;
    /// Set-group-ID, as in `chmod g+s`.
    pub const SETGID: u32 = 1 << 22;
    /// A character device (set together with [`DEVICE`]).
    pub const CHAR_DEVICE: u32 = 1 << 21;
    /// Sticky bit, as in `chmod +t`.
    pub const STICKY: u32 = 1 << 20;
    /// A non-regular file of unknown type.
    pub const IRREGULAR: u32 = 1 << 19;
    /// The permission bits, `rwxrwxrwx` (Go keeps the setuid, setgid and sticky bits apart, above).
    pub const PERM: u32 = 0o777;
    /// Go's `os.ModeType`: the bits that make an entry something other than a regular file.
    /// Entries with none of them carry data (and are the only ones a REQ may name).
    pub const TYPE: u32 = DIR | SYMLINK | NAMED_PIPE | SOCKET | DEVICE | CHAR_DEVICE | IRREGULAR;

    /// The Unix permission bits (with setuid, setgid and sticky) of a Go file mode.
    pub fn to_unix_permissions(mode: u32) -> u32 {
        let mut m = mode & PERM;
        if mode & SETUID != 0 {
            m |= 0o4000;
        }
        if mode & SETGID != 0 {
            m |= 0o2000;
        }
        if mode & STICKY != 0 {
            m |= 0o1000;
        }
        m
    }
}

/// An I/O error's reason as one lowercase phrase ("permission denied", not
/// "Permission denied (os error 13)").
pub(crate) fn io_reason(e: &io::Error) -> String {
    let text = e.to_string();
    let text = match text.find(" (os error ") {
        Some(i) => &text[..i],
        None => text.as_str(),
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}
