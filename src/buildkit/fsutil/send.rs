//! The sending end of DiffCopy: the walk streams STATs from a blocking thread while the
//! receiver's REQs are read concurrently and served by a small pool of file readers.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::filter::{Filter, ResolveError};
use super::walk::{self, WalkError};
use super::{
    CHUNK_SIZE, Packet, PacketType, PatternError, SEND_CONCURRENCY, TransferStats, io_reason, mode,
};

/// Why sending a directory failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The directory to send cannot be used.
    #[error("cannot use {path} as a directory to send: {}", io_reason(error))]
    Root {
        /// The directory as given, or its canonical path when only the check after resolving
        /// failed.
        path: PathBuf,
        /// The OS error (not a `source`: its reason is in the message, the text that travels to the
        /// receiver); `NotADirectory` when it is a file.
        error: io::Error,
    },
    /// The filter's patterns (with the follow paths added) do not compile.
    #[error(transparent)]
    Pattern(#[from] PatternError),
    /// A follow path could not be resolved.
    #[error("cannot resolve followpath {path}: {}", io_reason(error))]
    FollowPath {
        /// The follow path, relative to the directory.
        path: String,
        /// The OS error (not a `source`, as in [`Self::Root`]).
        error: io::Error,
    },
    /// An entry of the directory could not be read.
    #[error("cannot read {path}: {}", io_reason(error))]
    Read {
        /// The entry's path relative to the directory, as it would be sent.
        path: String,
        /// The OS error (not a `source`, as in [`Self::Root`]).
        error: io::Error,
    },
    /// The extended attributes of an entry could not be read.
    #[error("cannot read the extended attributes of {path}: {}", io_reason(error))]
    Xattr {
        /// The entry's path relative to the directory, as it would be sent.
        path: String,
        /// The OS error (not a `source`, as in [`Self::Root`]).
        error: io::Error,
    },
    /// A file name cannot travel in the protocol (its paths are UTF-8 strings).
    #[error("cannot send {path}: its name is not valid UTF-8")]
    NotUtf8 {
        /// The path inside the directory, with invalid bytes replaced.
        path: String,
    },
    /// The receiver asked for a file that is not in the stream or was already sent.
    #[error("the receiver asked for file id {0}, which is unknown or already sent")]
    UnknownFileId(u32),
    /// The receiver aborted with an error message.
    #[error("the receiver reported an error: {0}")]
    Receiver(String),
    /// The incoming stream failed.
    #[error("the file transfer stream failed: {}", .0.message())]
    Transport(tonic::Status),
    /// The receiver ended its stream before finishing the transfer.
    #[error("the receiver closed the transfer before it finished")]
    ReceiverClosed,
    /// The outgoing stream is gone (the call ended).
    #[error("the file transfer stream was closed while sending")]
    OutgoingClosed,
    /// A task of the transfer panicked or was cancelled. (Its text is in the message, as
    /// the other causes here: the message is what travels to the peer.)
    #[error("the file transfer was interrupted: {0}")]
    Interrupted(tokio::task::JoinError),
    /// A task of the transfer panicked while holding a lock the others share (named).
    #[error("the file transfer was interrupted: a task panicked holding the {0}")]
    Poisoned(&'static str),
}

impl From<WalkError> for SendError {
    fn from(e: WalkError) -> Self {
        match e {
            WalkError::Read { path, error } => SendError::Read { path, error },
            WalkError::Xattr { path, error } => SendError::Xattr { path, error },
            WalkError::NotUtf8 { path } => SendError::NotUtf8 { path },
            WalkError::Stopped => SendError::OutgoingClosed,
        }
    }
}

/// IDs of the regular files sent so far that have not been requested yet, with their paths
/// (relative to the root). This table is the only record kept per file.
type FileTable = Arc<Mutex<HashMap<u32, String>>>;

/// Sends `root` (filtered) over DiffCopy: STATs from the walk, then file data for each REQ,
/// until the receiver's FIN (answered with FIN). On a walk error, sends `PACKET_ERR` with the
/// message and returns the error.
///
/// `incoming` carries the receiver's packets (REQ, FIN, ERR); `outgoing` takes this side's.
/// Memory stays bounded whatever the size of the tree: file data moves in [`CHUNK_SIZE`]
/// chunks through `outgoing`, and only the path of each not-yet-requested file is kept.
///
/// # Errors
///
/// [`SendError`] names the file when the walk cannot read something (permission denied, a
/// name that is not UTF-8), and says which side stopped when the stream fails, the receiver
/// aborts or asks for a file id it was never sent. A file that cannot be opened when the
/// receiver asks for it is not an error: it is sent empty with a warning, as fsutil does.
#[tracing::instrument(level = "debug", skip_all, fields(root = %root.display()))]
pub async fn send<S>(
    root: PathBuf,
    filter: Filter,
    incoming: S,
    outgoing: mpsc::Sender<Packet>,
    stats: Arc<TransferStats>,
) -> Result<(), SendError>
where
    S: Stream<Item = Result<Packet, tonic::Status>> + Send + Unpin + 'static,
{
    let root = tokio::fs::canonicalize(&root)
        .await
        .map_err(|source| SendError::Root {
            path: root.clone(),
            error: source,
        })?;
    match tokio::fs::metadata(&root).await {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(SendError::Root {
                path: root,
                error: io::Error::from(io::ErrorKind::NotADirectory),
            });
        }
        Err(source) => {
            return Err(SendError::Root {
                path: root,
                error: source,
            });
        }
    }

    let files: FileTable = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let result = run(
        root,
        filter,
        incoming,
        outgoing.clone(),
        stats,
        files,
        stop.clone(),
    )
    .await;
    // Whatever happened, let blocking readers and the walk wind down on their own.
    stop.store(true, Ordering::Relaxed);
    if let Err(e) = &result
        && matches!(
            e,
            SendError::Read { .. }
                | SendError::Xattr { .. }
                | SendError::NotUtf8 { .. }
                | SendError::FollowPath { .. }
                | SendError::Pattern(_)
        )
    {
        let _ = outgoing
            .send(Packet {
                r#type: PacketType::PacketErr as i32,
                data: Bytes::from(crate::buildkit::error::wire_text(e)),
                ..Packet::default()
            })
            .await;
    }
    result
}

async fn run<S>(
    root: PathBuf,
    filter: Filter,
    mut incoming: S,
    outgoing: mpsc::Sender<Packet>,
    stats: Arc<TransferStats>,
    files: FileTable,
    stop: Arc<AtomicBool>,
) -> Result<(), SendError>
where
    S: Stream<Item = Result<Packet, tonic::Status>> + Send + Unpin + 'static,
{
    let root = Arc::new(root);
    let mut walker = {
        let (root, outgoing, stats, files, stop) = (
            root.clone(),
            outgoing.clone(),
            stats.clone(),
            files.clone(),
            stop.clone(),
        );
        tokio::task::spawn_blocking(move || {
            walk_and_send(&root, &filter, &outgoing, &stats, &files, &stop)
        })
    };
    let mut walk_done = false;

    // REQs queue up without a bound (one small entry per file at most), so that reading them
    // never waits for file data to drain: that could deadlock with a receiver that waits for
    // its REQs to be taken before it reads more data.
    //
    // The readers are long-lived blocking threads that take jobs until the queue closes: a
    // blocking task per file cost a thread hand-off (and a wake-up) per file, which dominated
    // the CPU time of a context of many small files.
    let (job_tx, job_rx) = mpsc::unbounded_channel::<(u32, String)>();
    let job_rx = Arc::new(Mutex::new(job_rx));
    let mut workers: JoinSet<Result<(), SendError>> = JoinSet::new();
    for _ in 0..SEND_CONCURRENCY {
        let (root, outgoing, stats, stop, job_rx) = (
            root.clone(),
            outgoing.clone(),
            stats.clone(),
            stop.clone(),
            job_rx.clone(),
        );
        workers.spawn_blocking(move || {
            let opener = Opener::new(&root).map_err(|error| SendError::Root {
                path: root.to_path_buf(),
                error,
            })?;
            loop {
                // Waiting for a job holds the lock, so idle readers queue on the mutex and
                // exactly one of them sleeps in the channel.
                let job = job_rx
                    .lock()
                    .map_err(|_| SendError::Poisoned("job queue"))?
                    .blocking_recv();
                let Some((id, rel)) = job else {
                    return Ok(());
                };
                send_file(&opener, id, &rel, &outgoing, &stats, &stop)?;
            }
        });
    }
    loop {
        tokio::select! {
            packet = incoming.next() => {
                let packet = match packet {
                    None => return Err(SendError::ReceiverClosed),
                    Some(Err(status)) => return Err(SendError::Transport(status)),
                    Some(Ok(p)) => p,
                };
                match PacketType::try_from(packet.r#type) {
                    Ok(PacketType::PacketReq) => {
                        let path = files
                            .lock()
                            .map_err(|_| SendError::Poisoned("file table"))?
                            .remove(&packet.id);
                        let Some(path) = path else {
                            return Err(SendError::UnknownFileId(packet.id));
                        };
                        // The workers outlive the queue's sender, so this cannot fail.
                        let _ = job_tx.send((packet.id, path));
                    }
                    Ok(PacketType::PacketFin) => break,
                    Ok(PacketType::PacketErr) => {
                        return Err(SendError::Receiver(String::from_utf8_lossy(&packet.data).into_owned()));
                    }
                    // fsutil's sender ignores anything else from the receiver.
                    _ => {}
                }
            }
            res = &mut walker, if !walk_done => {
                res.map_err(SendError::Interrupted)??;
                walk_done = true;
            }
            Some(res) = workers.join_next() => {
                res.map_err(SendError::Interrupted)??;
            }
        }
    }

    // FIN: the receiver has everything it asked for. Let the pool and the walk finish.
    drop(job_tx);
    while let Some(res) = workers.join_next().await {
        res.map_err(SendError::Interrupted)??;
    }
    if !walk_done {
        walker.await.map_err(SendError::Interrupted)??;
    }
    outgoing
        .send(Packet {
            r#type: PacketType::PacketFin as i32,
            ..Packet::default()
        })
        .await
        .map_err(|_| SendError::OutgoingClosed)
}

/// The walk, on a blocking thread: registers each regular file's ID before its STAT leaves, so
/// that a REQ can never overtake the table entry it needs.
fn walk_and_send(
    root: &Path,
    filter: &Filter,
    outgoing: &mpsc::Sender<Packet>,
    stats: &TransferStats,
    files: &FileTable,
    stop: &AtomicBool,
) -> Result<(), SendError> {
    let resolved = filter.resolve(root).map_err(|e| match e {
        ResolveError::Pattern(e) => SendError::Pattern(e),
        ResolveError::Io { path, error } => SendError::FollowPath { path, error },
    })?;
    let mut next_id: u32 = 0;
    walk::walk(root, &resolved, &mut |stat| {
        if stop.load(Ordering::Relaxed) {
            return Err(WalkError::Stopped);
        }
        let id = next_id;
        next_id = next_id.wrapping_add(1);
        if stat.mode & mode::TYPE == 0 {
            files
                .lock()
                .map_err(|_| WalkError::Stopped)?
                .insert(id, stat.path.clone());
        }
        let packet = Packet {
            r#type: PacketType::PacketStat as i32,
            stat: Some(stat),
            ..Packet::default()
        };
        outgoing
            .blocking_send(packet)
            .map_err(|_| WalkError::Stopped)?;
        stats.entries.fetch_add(1, Ordering::Relaxed);
        Ok(())
    })?;
    // The end of the STATs is a STAT packet with no stat at all (not an empty one).
    outgoing
        .blocking_send(Packet {
            r#type: PacketType::PacketStat as i32,
            stat: None,
            ..Packet::default()
        })
        .map_err(|_| SendError::OutgoingClosed)
}

/// Opens the files of the walk for reading, relative to the root. On Linux it holds the root
/// open, so each file costs one `openat2` rather than an open of the root as well.
struct Opener {
    root: PathBuf,
    #[cfg(target_os = "linux")]
    root_fd: rustix::fd::OwnedFd,
}

/// A path of the walk that is no longer a regular file when it is opened to be sent (it was
/// replaced since the walk); the caller names the path.
#[derive(Debug, thiserror::Error)]
#[error("not a regular file")]
struct NotARegularFile;

impl Opener {
    fn new(root: &Path) -> io::Result<Opener> {
        Ok(Opener {
            root: root.to_owned(),
            #[cfg(target_os = "linux")]
            root_fd: rustix::fs::open(
                root,
                rustix::fs::OFlags::PATH
                    | rustix::fs::OFlags::DIRECTORY
                    | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )?,
        })
    }

    /// Opens a file of the walk, never following a symlink, and only if it is still a regular
    /// file (`O_NONBLOCK` keeps a FIFO swapped in since the walk from blocking the open).
    /// On Linux the path is resolved with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` from
    /// the root, so no symlink anywhere on the path (even one swapped in after the walk) can
    /// lead outside the root.
    /// Returns the file with its size at open.
    fn open_regular(&self, rel: &str) -> io::Result<(File, u64)> {
        use rustix::fs::{Mode, OFlags};
        let flags =
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY;
        #[cfg(target_os = "linux")]
        let fd = {
            use rustix::fs::ResolveFlags;
            let resolve =
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
            match rustix::fs::openat2(&self.root_fd, rel, flags, Mode::empty(), resolve) {
                // Kernels before 5.6 have no openat2.
                Err(rustix::io::Errno::NOSYS) => {
                    rustix::fs::open(self.root.join(rel), flags, Mode::empty())?
                }
                other => other?,
            }
        };
        #[cfg(not(target_os = "linux"))]
        let fd = rustix::fs::open(self.root.join(rel), flags, Mode::empty())?;
        let file = File::from(fd);
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, NotARegularFile));
        }
        Ok((file, meta.len()))
    }
}

/// Reads up to `len` bytes (stopping early only at the end of the file), straight into the
/// buffer that becomes the packet's data. The buffer is exactly as large as asked, so a small
/// file's packet does not hold a whole [`CHUNK_SIZE`] allocation while it is queued.
fn read_chunk(file: &File, len: usize) -> io::Result<Bytes> {
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    while buf.len() < len {
        match rustix::io::read(file, rustix::buffer::spare_capacity(&mut buf)) {
            Ok(0) => break,
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Bytes::from(buf))
}

/// Reads once into a small stack buffer: checks for the end of a file that has already given
/// all the bytes it had when opened, without allocating (it has usually not grown).
fn read_probe(file: &File) -> io::Result<Bytes> {
    let mut buf = [0u8; 8192];
    loop {
        match rustix::io::read(file, &mut buf) {
            Ok(n) => return Ok(Bytes::copy_from_slice(&buf[..n])),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Sends one requested file: its data in chunks, then the empty EOF packet. A file that cannot
/// be opened is sent as just the EOF packet, as fsutil does (the receiver gets an empty file);
/// a read error part-way aborts the transfer.
fn send_file(
    opener: &Opener,
    id: u32,
    rel: &str,
    outgoing: &mpsc::Sender<Packet>,
    stats: &TransferStats,
    stop: &AtomicBool,
) -> Result<(), SendError> {
    let data_packet = |data: Bytes| Packet {
        r#type: PacketType::PacketData as i32,
        id,
        data,
        ..Packet::default()
    };
    match opener.open_regular(rel) {
        Ok((file, size)) => {
            // Bytes still expected from the size at open; the file may shrink or grow since,
            // so the end is always confirmed by a read that returns nothing.
            let mut expected = size;
            loop {
                if stop.load(Ordering::Relaxed) {
                    return Err(SendError::OutgoingClosed);
                }
                let chunk = if expected > 0 {
                    read_chunk(&file, expected.min(CHUNK_SIZE as u64) as usize)
                } else {
                    read_probe(&file)
                }
                .map_err(|source| SendError::Read {
                    path: rel.to_string(),
                    error: source,
                })?;
                if chunk.is_empty() {
                    break;
                }
                let len = chunk.len() as u64;
                expected = match expected.checked_sub(len) {
                    Some(left) => left,
                    // It grew: go on in whole chunks.
                    None => CHUNK_SIZE as u64,
                };
                outgoing
                    .blocking_send(data_packet(chunk))
                    .map_err(|_| SendError::OutgoingClosed)?;
                stats.bytes.fetch_add(len, Ordering::Relaxed);
            }
            stats.files.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            tracing::warn!(
                path = rel,
                "cannot open {rel}: {}; sending it as an empty file",
                io_reason(&e)
            );
        }
    }
    outgoing
        .blocking_send(data_packet(Bytes::new()))
        .map_err(|_| SendError::OutgoingClosed)
}
