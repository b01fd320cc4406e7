//! The sending end of DiffCopy: the walk streams STATs from a blocking thread while the
//! receiver's REQs are read concurrently and served by a small pool of file readers.
//!
//! Packets leave in batches ([`Outbox`]): the gRPC encoder writes every packet it finds ready
//! into one buffer, so a batch of STATs goes out in a few large writes instead of a write (and
//! a wake-up) per file. Per entry, the only state kept is a fixed-size record in the
//! [`FileTable`], which a warm rebuild (the receiver asks for nothing) keeps to the end.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use prost::Message;
use tokio::sync::mpsc;

use crate::buildkit::status::RpcStatus;
use tokio::task::JoinSet;

use super::arena::{Chunked, Runs, Strings};
use super::filter::{Filter, ResolveError};
use super::walk::{self, WalkError};
use super::{
    CHUNK_SIZE, Packet, PacketType, PatternError, SEND_CONCURRENCY, TransferStats, io_reason, mode,
};

/// Why sending a directory failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    /// The directory holds more entries (or longer names) than one transfer can number: the
    /// protocol's file ids are 32-bit.
    #[error("the directory has more entries than one file transfer can carry ({0} sent)")]
    TooManyEntries(usize),
    /// The receiver aborted with an error message.
    #[error("the receiver reported an error: {0}")]
    Receiver(String),
    /// The incoming stream failed.
    #[error("the file transfer stream failed: {}", .0.message)]
    Transport(RpcStatus),
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

/// Every entry sent so far, by id (its index among the STATs), with what serving a REQ
/// needs: for a regular file, its directory and name. It lives in fixed-size chunks that are
/// never moved or copied (see [`arena`](super::arena)): a name and 4 bytes per entry, a
/// directory per run of files, a bit per entry for the REQs. A million-file context costs
/// about 4 bytes a file plus its name, kept to the end: a warm rebuild asks for nothing, and
/// any entry may be asked for until the FIN.
#[derive(Debug, Default)]
struct FileTable {
    /// One per id: the name (last path component) of a regular file, empty for any other
    /// entry.
    names: Strings,
    /// The directory of each id, an index in `dirs`.
    runs: Runs,
    /// Directory paths relative to the root (the root itself is the empty one), in the order
    /// the walk met them; a directory whose files resume after a subdirectory's is there again.
    dirs: Strings,
    /// One bit per id: the receiver has asked for it (a second REQ is refused).
    requested: Chunked<u64>,
}

/// A record or name past what 32-bit ids and offsets can address.
#[derive(Debug)]
struct TableFull;

type SharedTable = Arc<Mutex<FileTable>>;

impl FileTable {
    /// Records the next entry (its id is the number of entries before it), with its path
    /// when it is a regular file.
    fn push(&mut self, path: &str, regular: bool) -> Result<(), TableFull> {
        let id = u32::try_from(self.names.len()).map_err(|_| TableFull)?;
        let mut name = "";
        if regular {
            let (dir_path, file) = path.rsplit_once('/').unwrap_or(("", path));
            // Walk order keeps a directory's files together (a subdirectory's entries only
            // interrupt them once), so comparing with the last directory finds nearly all.
            if self.dirs.last() != Some(dir_path) {
                self.dirs.push(dir_path).ok_or(TableFull)?;
            }
            name = file;
        }
        // Entries other than files stay in the current directory's run.
        let dir = self.dirs.len().saturating_sub(1) as u32;
        self.names.push(name).ok_or(TableFull)?;
        self.runs.push(id, dir).ok_or(TableFull)?;
        if id.is_multiple_of(64) {
            self.requested.push(0);
        }
        Ok(())
    }

    /// How many entries were recorded.
    fn len(&self) -> usize {
        self.names.len()
    }

    /// Marks regular file `id` as asked for; false if there is no such file or it was
    /// asked for before.
    fn request(&mut self, id: u32) -> bool {
        let id = id as usize;
        if self.names.get(id).is_none_or(str::is_empty) {
            return false;
        }
        let (word, bit) = (id / 64, 1u64 << (id % 64));
        match self.requested.get_mut(word) {
            Some(w) if *w & bit == 0 => {
                *w |= bit;
                true
            }
            _ => false,
        }
    }

    /// The path (relative to the root) of regular file `id`.
    fn path(&self, id: u32) -> Option<String> {
        let name = self.names.get(id as usize).filter(|n| !n.is_empty())?;
        let (_, dir) = self.runs.get(id as usize)?;
        Some(match self.dirs.get(dir as usize)? {
            "" => name.to_owned(),
            dir => format!("{dir}/{name}"),
        })
    }
}

/// Encoded bytes of STATs gathered before they are queued together: the gRPC encoder's own
/// buffer size (it writes out what it has gathered at 32 KiB), so each batch is one write.
const STAT_BATCH: usize = 32 * 1024;

/// What a packet costs on the wire beyond its payload (gRPC prefix, tag and length bytes, id).
const PACKET_OVERHEAD: usize = 16;

/// What a queued DATA packet costs in memory beyond its data: the `Packet` itself (with room
/// for a STAT it does not carry) and the data buffer's allocation. Batches of file data are
/// counted by this, not by their size on the wire: a batch of 256 KiB of small files' data
/// and EOFs held ~650 KB (two ~200-byte packets a file beside ~225 bytes of data), so a full
/// queue held 20 MB rather than the 8 MiB [`SEND_QUEUE`](super::SEND_QUEUE) promises.
const DATA_PACKET_MEMORY: usize = std::mem::size_of::<Packet>() + 16;

/// Packets gathered to go on the outgoing queue together, up to `limit` bytes: the queue then
/// holds batches, and the encoder on its other end finds a whole batch ready at once.
struct Outbox<'a> {
    outgoing: &'a mpsc::Sender<Vec<Packet>>,
    packets: Vec<Packet>,
    bytes: usize,
    limit: usize,
}

impl<'a> Outbox<'a> {
    fn new(outgoing: &'a mpsc::Sender<Vec<Packet>>, limit: usize) -> Self {
        Outbox {
            outgoing,
            packets: Vec::new(),
            bytes: 0,
            limit,
        }
    }

    /// Whether a packet of `size` bytes must wait for the gathered ones to be sent first.
    fn full_for(&self, size: usize) -> bool {
        !self.packets.is_empty() && self.bytes + size > self.limit
    }

    fn push(&mut self, packet: Packet, size: usize) {
        self.bytes += size;
        self.packets.push(packet);
    }

    /// Queues the gathered packets (blocking while the queue is full).
    fn send(&mut self) -> Result<(), SendError> {
        if self.packets.is_empty() {
            return Ok(());
        }
        let next = Vec::with_capacity(self.packets.len());
        let batch = std::mem::replace(&mut self.packets, next);
        self.bytes = 0;
        self.outgoing
            .blocking_send(batch)
            .map_err(|_| SendError::OutgoingClosed)
    }
}

/// Sends `root` (filtered) over DiffCopy: STATs from the walk, then file data for each REQ,
/// until the receiver's FIN (answered with FIN). On a walk error, sends `PACKET_ERR` with the
/// message and returns the error.
///
/// `incoming` carries the receiver's packets (REQ, FIN, ERR); `outgoing` takes this side's in
/// batches, each to be sent in order as consecutive messages (flatten them into the stream:
/// the gRPC encoder then writes a batch in one piece). Memory stays bounded whatever the size
/// of the tree: file data moves in batches of at most [`CHUNK_SIZE`] bytes through
/// `outgoing`, and each entry sent costs a fixed-size record and its file name.
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
    outgoing: mpsc::Sender<Vec<Packet>>,
    stats: Arc<TransferStats>,
) -> Result<(), SendError>
where
    S: Stream<Item = Result<Packet, RpcStatus>> + Send + Unpin + 'static,
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

    let files: SharedTable = Arc::default();
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
                | SendError::TooManyEntries(_)
        )
    {
        let _ = outgoing
            .send(vec![Packet {
                r#type: PacketType::PacketErr as i32,
                data: Bytes::from(crate::buildkit::error::wire_text(e)),
                ..Packet::default()
            }])
            .await;
    }
    result
}

async fn run<S>(
    root: PathBuf,
    filter: Filter,
    mut incoming: S,
    outgoing: mpsc::Sender<Vec<Packet>>,
    stats: Arc<TransferStats>,
    files: SharedTable,
    stop: Arc<AtomicBool>,
) -> Result<(), SendError>
where
    S: Stream<Item = Result<Packet, RpcStatus>> + Send + Unpin + 'static,
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

    // REQs queue up without a bound (4 bytes per file at most: each id is taken once), so
    // that reading them never waits for file data to drain: that could deadlock with a
    // receiver that waits for its REQs to be taken before it reads more data.
    //
    // The readers are long-lived blocking threads that take jobs until the queue closes: a
    // blocking task per file cost a thread hand-off (and a wake-up) per file, which dominated
    // the CPU time of a context of many small files. A reader gathers the packets of the
    // files it finds queued into one batch, sent when it is full or the queue is empty.
    let (job_tx, job_rx) = mpsc::unbounded_channel::<u32>();
    let job_rx = Arc::new(Mutex::new(job_rx));
    let mut workers: JoinSet<Result<(), SendError>> = JoinSet::new();
    for _ in 0..SEND_CONCURRENCY {
        let (root, outgoing, stats, stop, job_rx, files) = (
            root.clone(),
            outgoing.clone(),
            stats.clone(),
            stop.clone(),
            job_rx.clone(),
            files.clone(),
        );
        workers.spawn_blocking(move || {
            let opener = Opener::new(&root).map_err(|error| SendError::Root {
                path: root.to_path_buf(),
                error,
            })?;
            let mut outbox = Outbox::new(&outgoing, CHUNK_SIZE);
            loop {
                // A reader that holds the lock may be asleep waiting for a job (the queue is
                // empty): never wait for the lock with packets gathered, or the receiver
                // would wait for them while that reader waits for the receiver.
                let queued = match job_rx.try_lock() {
                    Ok(mut rx) => rx.try_recv(),
                    Err(std::sync::TryLockError::WouldBlock) => {
                        Err(mpsc::error::TryRecvError::Empty)
                    }
                    Err(std::sync::TryLockError::Poisoned(_)) => {
                        return Err(SendError::Poisoned("job queue"));
                    }
                };
                let job = match queued {
                    Ok(id) => Some(id),
                    Err(mpsc::error::TryRecvError::Disconnected) => None,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        // Nothing more to gather: what is gathered goes now, then wait.
                        // Waiting holds the lock, so idle readers queue on the mutex and
                        // exactly one of them sleeps in the channel.
                        outbox.send()?;
                        job_rx
                            .lock()
                            .map_err(|_| SendError::Poisoned("job queue"))?
                            .blocking_recv()
                    }
                };
                let Some(id) = job else {
                    return outbox.send();
                };
                let rel = files
                    .lock()
                    .map_err(|_| SendError::Poisoned("file table"))?
                    .path(id)
                    .ok_or(SendError::UnknownFileId(id))?;
                send_file(&opener, id, &rel, &mut outbox, &stats, &stop)?;
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
                        let known = files
                            .lock()
                            .map_err(|_| SendError::Poisoned("file table"))?
                            .request(packet.id);
                        if !known {
                            return Err(SendError::UnknownFileId(packet.id));
                        }
                        // The workers outlive the queue's sender, so this cannot fail.
                        let _ = job_tx.send(packet.id);
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
        .send(vec![Packet {
            r#type: PacketType::PacketFin as i32,
            ..Packet::default()
        }])
        .await
        .map_err(|_| SendError::OutgoingClosed)
}

/// The walk, on a blocking thread: STATs go out in batches of [`STAT_BATCH`] bytes, each
/// batch's entries recorded in the table before it leaves, so that a REQ can never overtake
/// the record it needs.
fn walk_and_send(
    root: &Path,
    filter: &Filter,
    outgoing: &mpsc::Sender<Vec<Packet>>,
    stats: &TransferStats,
    files: &SharedTable,
    stop: &AtomicBool,
) -> Result<(), SendError> {
    let resolved = filter.resolve(root).map_err(|e| match e {
        ResolveError::Pattern(e) => SendError::Pattern(e),
        ResolveError::Io { path, error } => SendError::FollowPath { path, error },
    })?;
    let mut outbox = Outbox::new(outgoing, STAT_BATCH);
    // The walk's callback can only stop the walk; why it stopped is kept here.
    let mut failure = None;
    let walked = walk::walk(root, &resolved, &mut |stat| {
        if stop.load(Ordering::Relaxed) {
            return Err(WalkError::Stopped);
        }
        let size = stat.encoded_len() + PACKET_OVERHEAD;
        if outbox.full_for(size)
            && let Err(e) = send_stats(&mut outbox, stats, files)
        {
            failure = Some(e);
            return Err(WalkError::Stopped);
        }
        let packet = Packet {
            r#type: PacketType::PacketStat as i32,
            stat: Some(stat),
            ..Packet::default()
        };
        outbox.push(packet, size);
        Ok(())
    });
    if let Some(e) = failure {
        return Err(e);
    }
    walked?;
    // The end of the STATs is a STAT packet with no stat at all (not an empty one).
    let end = Packet {
        r#type: PacketType::PacketStat as i32,
        stat: None,
        ..Packet::default()
    };
    outbox.push(end, PACKET_OVERHEAD);
    send_stats(&mut outbox, stats, files)
}

/// Records the gathered STATs' entries in the table, then queues them.
fn send_stats(
    outbox: &mut Outbox<'_>,
    stats: &TransferStats,
    files: &SharedTable,
) -> Result<(), SendError> {
    let mut entries = 0;
    {
        let mut table = files
            .lock()
            .map_err(|_| SendError::Poisoned("file table"))?;
        for stat in outbox.packets.iter().filter_map(|p| p.stat.as_ref()) {
            table
                .push(&stat.path, stat.mode & mode::TYPE == 0)
                .map_err(|TableFull| SendError::TooManyEntries(table.len()))?;
            entries += 1;
        }
    }
    outbox.send()?;
    stats.entries.fetch_add(entries, Ordering::Relaxed);
    Ok(())
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

/// Gathers one requested file into `outbox`: its data in chunks, then the empty EOF packet.
/// A file that cannot be opened is sent as just the EOF packet, as fsutil does (the receiver
/// gets an empty file); a read error part-way aborts the transfer.
fn send_file(
    opener: &Opener,
    id: u32,
    rel: &str,
    outbox: &mut Outbox<'_>,
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
                let size = chunk.len() + DATA_PACKET_MEMORY;
                if outbox.full_for(size) {
                    outbox.send()?;
                }
                outbox.push(data_packet(chunk), size);
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
    if outbox.full_for(DATA_PACKET_MEMORY) {
        outbox.send()?;
    }
    outbox.push(data_packet(Bytes::new()), DATA_PACKET_MEMORY);
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    /// Paths come back whole, directories are shared, and only regular files not asked for
    /// before can be asked for.
    #[test]
    fn table_serves_each_file_once() {
        let mut table = FileTable::default();
        // The walk order of: top, a/, a/x, a/b/, a/b/y, a/z (a's files resume after b).
        for (path, regular) in [
            ("top", true),
            ("a", false),
            ("a/x", true),
            ("a/b", false),
            ("a/b/y", true),
            ("a/z", true),
        ] {
            table.push(path, regular).unwrap();
        }
        let paths: Vec<Option<String>> = (0..7).map(|id| table.path(id)).collect();
        assert_eq!(
            paths,
            [
                Some("top".into()),
                None,
                Some("a/x".into()),
                None,
                Some("a/b/y".into()),
                Some("a/z".into()),
                None,
            ]
        );
        let dirs: Vec<&str> = (0..table.dirs.len())
            .filter_map(|d| table.dirs.get(d))
            .collect();
        assert_eq!(dirs, ["", "a", "a/b", "a"], "a again after a/b");
        assert!(!table.request(1), "a directory has no data");
        assert!(!table.request(6), "no such id");
        assert!(!table.request(u32::MAX));
        assert!(table.request(5));
        assert!(!table.request(5), "asked for twice");
        assert!(table.request(0));
        assert_eq!(
            table.path(5).as_deref(),
            Some("a/z"),
            "still known once asked for"
        );
    }

    /// Ids past the first 64 land in the next word of the request bits.
    #[test]
    fn table_request_bits_grow_with_the_ids() {
        let mut table = FileTable::default();
        for i in 0..130 {
            table.push(&format!("d/f{i}"), true).unwrap();
        }
        assert_eq!(table.requested.len(), 3);
        assert!(table.request(129));
        assert!(table.request(64));
        assert!(!table.request(129));
        assert!(table.request(63));
        assert_eq!(table.dirs.len(), 1);
    }
}
