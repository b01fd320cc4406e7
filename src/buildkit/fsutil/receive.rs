//! The receiving end of DiffCopy (the `local` exporter): applies the STAT stream to a
//! directory in fsutil's "merge" mode, asks for every regular file and writes the data as it
//! arrives.
//!
//! Packets are applied on a blocking thread (every step is a system call); REQs and the final
//! FIN go out through an unbounded queue so that asking for data never waits on the sender
//! reading, which could otherwise deadlock against a sender blocked on sending data.
//!
//! Memory: the daemon's sender walks and sends every STAT up front, whatever data is
//! outstanding, so a 100,000-file export announces 100,000 files long before their data
//! arrives. Each announced file is kept as its name (the last component of its path) in one
//! arena, 4 bytes saying where it begins, and a 10-byte [`FileMeta`] (mode, time); its
//! directory and id are kept per run of files (a directory's files have consecutive ids), so
//! a million-file export costs about 14 bytes a file plus its name. Walk order is sorted:
//! hardlinks find their target by binary search, with no per-file map or allocation. Only
//! [`REQUEST_WINDOW`] files are asked for at a time: the full per-file state ([`Pending`]:
//! path, temporary name, descriptors) exists only for those. The REQ queue is bounded by the
//! same window.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use rustix::fs::FileType;

use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;

use crate::buildkit::status::RpcStatus;
use tokio_util::task::AbortOnDropHandle;

use super::arena::{Chunked, Runs, Strings};
use super::{Packet, PacketType, Stat, TransferStats, beneath, io_reason, mode};

/// Why receiving into a directory failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiveError {
    /// Creating or writing an entry under the destination failed.
    #[error("cannot write {path}: {}", io_reason(error))]
    Write {
        /// The destination, or the entry's path joined onto it.
        path: PathBuf,
        /// The OS error (not a `source`: its reason is in the message, the text that travels to the
        /// sender).
        error: io::Error,
    },
    /// The sender sent a path that is not a clean relative path inside the destination.
    #[error("the sender sent an invalid path {path:?}: {reason}")]
    InvalidPath {
        /// The path exactly as the sender's STAT packet carried it.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The sender's entries are not in walk order (or a parent directory is missing).
    #[error("the sender sent {path:?} out of order (after {previous:?})")]
    OutOfOrder {
        /// The path exactly as the sender's STAT packet carried it.
        path: String,
        /// The entry before it in the same directory, if any.
        previous: String,
    },
    /// A hardlink names a file that was not sent before it.
    #[error("the sender sent a hardlink {path:?} to unknown path {target:?}")]
    UnknownLink {
        /// The hardlink's own path, relative to the destination, as sent.
        path: String,
        /// The path it links to, relative to the destination, as sent.
        target: String,
    },
    /// Data arrived for an ID that was not requested or is already complete.
    #[error("the sender sent data for file id {0}, which was not requested")]
    UnexpectedData(u32),
    /// The sender aborted with an error message.
    #[error("the sender reported an error: {0}")]
    Sender(String),
    /// The incoming stream failed.
    #[error("the file transfer stream failed: {}", .0.message)]
    Transport(RpcStatus),
    /// The sender ended its stream before the transfer finished.
    #[error("the sender closed the transfer before it finished")]
    SenderClosed,
    /// The outgoing stream is gone (the call ended).
    #[error("the file transfer stream was closed while receiving")]
    OutgoingClosed,
    /// A task of the transfer panicked or was cancelled. (Its text is in the message, as
    /// the other causes here: the message is what travels to the peer.)
    #[error("the file transfer was interrupted: {0}")]
    Interrupted(tokio::task::JoinError),
    /// A task of the transfer panicked while holding a lock the others share (named).
    #[error("the file transfer was interrupted: a task panicked holding the {0}")]
    Poisoned(&'static str),
}

/// Receives a DiffCopy stream into `dest` (created if missing): directories, files, symlinks,
/// hardlinks, FIFOs and (when permitted) devices, with modes and modification times. Existing
/// files in `dest` that are not in the stream are kept ("merge" mode); uid and gid are left
/// as the local user's. Every regular file is requested, at most `REQUEST_WINDOW` (256) at a
/// time, in the order announced. Answers with FIN when all is written.
///
/// # Errors
///
/// [`ReceiveError`] names the path that could not be written, rejects paths that would
/// escape `dest` or break the walk order (as fsutil's validator does), and reports a sender's
/// `PACKET_ERR` or a stream that ends early. On an error of its own it sends `PACKET_ERR`.
#[tracing::instrument(level = "debug", skip_all, fields(dest = %dest.display()))]
pub async fn receive<S>(
    dest: PathBuf,
    mut incoming: S,
    outgoing: mpsc::Sender<Packet>,
    stats: Arc<TransferStats>,
) -> Result<(), ReceiveError>
where
    S: Stream<Item = Result<Packet, RpcStatus>> + Send + Unpin + 'static,
{
    tokio::fs::create_dir_all(&dest)
        .await
        .map_err(|source| ReceiveError::Write {
            path: dest.clone(),
            error: source,
        })?;

    // Incoming packets go to the blocking applier through a small bounded queue (backpressure
    // on the sender); this side's REQs and FIN go out unbounded.
    // Both tasks are aborted when this future is dropped (a cancelled build): they belong
    // to the transfer, not to their streams.
    let (in_tx, in_rx) = mpsc::channel::<Result<Packet, RpcStatus>>(64);
    let pump = AbortOnDropHandle::new(tokio::spawn(async move {
        while let Some(item) = incoming.next().await {
            if in_tx.send(item).await.is_err() {
                break;
            }
        }
    }));
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Packet>();
    let forwarder = AbortOnDropHandle::new(tokio::spawn(async move {
        while let Some(p) = out_rx.recv().await {
            if outgoing.send(p).await.is_err() {
                return Err(ReceiveError::OutgoingClosed);
            }
        }
        Ok(())
    }));

    let applier = tokio::task::spawn_blocking(move || {
        let result = match Receiver::new(dest, out_tx.clone(), stats) {
            Ok(mut r) => r.run(in_rx),
            Err(e) => Err(e),
        };
        if let Err(e) = &result
            && !matches!(
                e,
                ReceiveError::Sender(_) | ReceiveError::Transport(_) | ReceiveError::OutgoingClosed
            )
        {
            let _ = out_tx.send(Packet {
                r#type: PacketType::PacketErr as i32,
                data: bytes::Bytes::from(e.to_string()),
                ..Packet::default()
            });
        }
        result
    });
    let result = applier
        .await
        .map_err(ReceiveError::Interrupted)
        .and_then(|r| r);
    // The applier dropped its end of the queue; the forwarder drains what is left.
    let forwarded = forwarder
        .await
        .map_err(ReceiveError::Interrupted)
        .and_then(|r| r);
    drop(pump);
    result?;
    forwarded
}

/// How many files are asked for (REQ sent, data not yet complete) at once. fsutil's sender
/// accepts a REQ at any time for any file it announced, queues up to 128 and reads them with
/// 4 workers; 256 keeps that queue full (no throughput lost to the round trip of a REQ)
/// while bounding the per-file state and the REQs in flight.
const REQUEST_WINDOW: usize = 256;

/// The mode and time of an announced regular file or directory, and no more, since every
/// announced file may wait at once (a million-file export holds a million of these). Bytes,
/// not integers: with no alignment to pad to, it is 10 bytes rather than 16.
struct FileMeta {
    /// The modification time, nanoseconds since the epoch.
    mod_time: [u8; 8],
    /// Unix permission bits (with setuid, setgid and sticky).
    mode: [u8; 2],
}

impl FileMeta {
    fn new(stat: &Stat) -> FileMeta {
        FileMeta {
            mod_time: stat.mod_time.to_le_bytes(),
            // At most 0o7777: fits.
            mode: (mode::to_unix_permissions(stat.mode) as u16).to_le_bytes(),
        }
    }

    fn mod_time(&self) -> i64 {
        i64::from_le_bytes(self.mod_time)
    }

    fn mode(&self) -> u32 {
        u32::from(u16::from_le_bytes(self.mode))
    }
}

/// The directory index that stands for the destination itself (files at the top).
const ROOT_DIR: u32 = u32::MAX;

/// A regular file asked for: what placing it needs, its path owned.
struct Wanted {
    /// Unix permission bits.
    mode: u32,
    mod_time: i64,
    path: Box<str>,
    /// The whole STAT, only for a file with extended attributes.
    xattrs: Option<Box<Stat>>,
}

/// A file whose end arrived before the file was created to hold its data (an invariant of
/// the receiver; the caller names the path).
#[derive(Debug, thiserror::Error)]
#[error("the file was never created")]
struct NeverCreated;

/// A regular file asked for, whose data is still coming.
struct Pending {
    entry: Wanted,
    /// The temporary file's name, in the directory `parent`.
    tmp: String,
    /// The directory the temporary file was created in, held so that it is removed from
    /// there (and only there) if the transfer fails.
    parent: Option<OwnedFd>,
    /// Open once the first byte (or the EOF) arrives, so only files in flight hold descriptors.
    file: Option<File>,
    /// Renamed into place: nothing to clean up.
    placed: bool,
}

impl Drop for Pending {
    /// A transfer that ends early (an error, the daemon going away, Ctrl-C) or a file that
    /// cannot be put in place leaves no temporary file in the destination.
    fn drop(&mut self) {
        if let (Some(parent), false) = (&self.parent, self.placed) {
            let _ = beneath::unlink(parent, &self.tmp);
        }
    }
}

/// A temporary entry (symlink, hardlink, node) removed unless it was put in place.
struct TmpGuard<'a> {
    dir: BorrowedFd<'a>,
    name: &'a str,
    armed: bool,
}

impl Drop for TmpGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = beneath::unlink(self.dir, self.name);
        }
    }
}

struct Receiver {
    dest: PathBuf,
    /// The destination, held open: every operation resolves from it (see [`beneath`]).
    root: beneath::Root,
    out: mpsc::UnboundedSender<Packet>,
    stats: Arc<TransferStats>,
    next_id: u32,
    /// The names of every regular file announced (the only valid hardlink targets), in walk
    /// order: sorted by path component by component, as the validator enforces.
    files: Strings,
    /// Their modes and times.
    file_meta: Chunked<FileMeta>,
    /// Their ids and directories (indices in `dirs`, or [`ROOT_DIR`]).
    file_runs: Runs,
    /// How many of `files` were asked for; the rest wait their turn.
    requested: usize,
    /// The paths of every directory announced, in walk order (sorted as `files` is).
    dirs: Strings,
    /// Their modes and times, set at the end, after their children.
    dir_meta: Chunked<FileMeta>,
    /// The directory of the last file announced (its files come together).
    last_dir: u32,
    /// The STATs of the files with extended attributes, by id (rare).
    xattrs: HashMap<u32, Box<Stat>>,
    /// Files asked for (at most [`REQUEST_WINDOW`]), by id.
    in_flight: HashMap<u32, Pending>,
    /// Hardlinks to a file not yet in place, by the file's id: created once it is.
    early_links: HashMap<u32, Vec<String>>,
    validator: Validator,
    stats_done: bool,
    /// This receiver's number in the process, for temporary names.
    serial: u64,
}

/// Numbers the receivers of this process.
static RECEIVERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Creates a FIFO or device node `name` in `dir` (devices need privileges).
#[cfg(target_os = "linux")]
fn make_node(dir: BorrowedFd<'_>, name: &str, stat: &Stat) -> io::Result<bool> {
    use rustix::fs::FileType;
    let kind = stat.mode & mode::TYPE;
    let file_type = if kind & mode::NAMED_PIPE != 0 {
        FileType::Fifo
    } else if kind & mode::CHAR_DEVICE != 0 {
        FileType::CharacterDevice
    } else if kind & mode::DEVICE != 0 {
        FileType::BlockDevice
    } else {
        return Ok(false);
    };
    let dev = rustix::fs::makedev(stat.devmajor as u32, stat.devminor as u32);
    beneath::mknod(
        dir,
        name,
        file_type,
        mode::to_unix_permissions(stat.mode),
        dev,
    )?;
    Ok(true)
}

/// Creates a FIFO or device node: not supported off Linux.
#[cfg(not(target_os = "linux"))]
fn make_node(_dir: BorrowedFd<'_>, _name: &str, stat: &Stat) -> io::Result<bool> {
    let kind = stat.mode & mode::TYPE;
    if kind & (mode::NAMED_PIPE | mode::DEVICE) == 0 {
        return Ok(false);
    }
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

impl Receiver {
    fn new(
        dest: PathBuf,
        out: mpsc::UnboundedSender<Packet>,
        stats: Arc<TransferStats>,
    ) -> Result<Self, ReceiveError> {
        let root = beneath::Root::open(&dest).map_err(|error| ReceiveError::Write {
            path: dest.clone(),
            error,
        })?;
        Ok(Receiver {
            dest,
            root,
            out,
            stats,
            next_id: 0,
            files: Strings::default(),
            file_meta: Chunked::default(),
            file_runs: Runs::default(),
            requested: 0,
            dirs: Strings::default(),
            dir_meta: Chunked::default(),
            last_dir: ROOT_DIR,
            xattrs: HashMap::new(),
            in_flight: HashMap::new(),
            early_links: HashMap::new(),
            validator: Validator::default(),
            stats_done: false,
            serial: RECEIVERS.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// Maps an I/O error on the entry `rel` to the error that names it.
    fn write_err<'a>(&'a self, rel: &'a str) -> impl FnOnce(io::Error) -> ReceiveError + 'a {
        move |error| ReceiveError::Write {
            path: self.dest.join(rel),
            error,
        }
    }

    fn send(&self, p: Packet) -> Result<(), ReceiveError> {
        self.out.send(p).map_err(|_| ReceiveError::OutgoingClosed)
    }

    fn run(
        &mut self,
        mut incoming: mpsc::Receiver<Result<Packet, RpcStatus>>,
    ) -> Result<(), ReceiveError> {
        let mut finished = false;
        while let Some(item) = incoming.blocking_recv() {
            let packet = item.map_err(ReceiveError::Transport)?;
            match PacketType::try_from(packet.r#type) {
                Ok(PacketType::PacketStat) => match packet.stat {
                    Some(stat) => self.on_stat(stat)?,
                    None => self.stats_done = true,
                },
                Ok(PacketType::PacketData) => self.on_data(packet.id, packet.data)?,
                Ok(PacketType::PacketFin) => {
                    if finished {
                        // The sender's answer to our FIN: drain what is left and stop.
                        while incoming.blocking_recv().is_some() {}
                        return Ok(());
                    }
                    return Err(ReceiveError::SenderClosed);
                }
                Ok(PacketType::PacketErr) => {
                    return Err(ReceiveError::Sender(
                        String::from_utf8_lossy(&packet.data).into_owned(),
                    ));
                }
                // REQs make no sense towards a receiver; fsutil ignores unknown packets.
                _ => {}
            }
            self.request_more()?;
            if !finished
                && self.stats_done
                && self.in_flight.is_empty()
                && self.requested == self.files.len()
            {
                self.finish()?;
                finished = true;
            }
        }
        if finished {
            Ok(())
        } else {
            Err(ReceiveError::SenderClosed)
        }
    }

    /// Applies the directories' modes and times (children first) and sends FIN.
    fn finish(&mut self) -> Result<(), ReceiveError> {
        for index in (0..self.dirs.len()).rev() {
            let (Some(path), Some(meta)) = (self.dirs.get(index), self.dir_meta.get(index)) else {
                continue;
            };
            let fd = self.root.open_dir_rdonly(path);
            fd.and_then(|fd| {
                beneath::chmod_fd(&fd, meta.mode())?;
                beneath::set_times_fd(&fd, meta.mod_time())
            })
            .map_err(self.write_err(path))?;
        }
        self.send(Packet {
            r#type: PacketType::PacketFin as i32,
            ..Packet::default()
        })
    }

    /// A temporary name in the entry's directory, unique across processes and concurrent
    /// receivers (the local exporter runs one per platform, possibly into the same
    /// directory), and short whatever the length of the final name.
    fn tmp_name(&self, id: u32) -> String {
        format!(".pf-tmp-{}-{}-{id}", std::process::id(), self.serial)
    }

    /// Asks for waiting files, in order, until [`REQUEST_WINDOW`] are in flight.
    fn request_more(&mut self) -> Result<(), ReceiveError> {
        while self.in_flight.len() < REQUEST_WINDOW {
            let index = self.requested;
            let (Some(meta), Some((id, _))) =
                (self.file_meta.get(index), self.file_runs.get(index))
            else {
                return Ok(());
            };
            self.requested += 1;
            let entry = Wanted {
                mode: meta.mode(),
                mod_time: meta.mod_time(),
                path: self.file_path(index).into(),
                xattrs: self.xattrs.remove(&id),
            };
            let tmp = self.tmp_name(id);
            self.in_flight.insert(
                id,
                Pending {
                    entry,
                    tmp,
                    parent: None,
                    file: None,
                    placed: false,
                },
            );
            self.send(Packet {
                r#type: PacketType::PacketReq as i32,
                id,
                ..Packet::default()
            })?;
        }
        Ok(())
    }

    /// The path of directory `dir` (empty for [`ROOT_DIR`]).
    fn dir_path(&self, dir: u32) -> &str {
        if dir == ROOT_DIR {
            return "";
        }
        self.dirs.get(dir as usize).unwrap_or_default()
    }

    /// The directory and name of announced file `index`.
    fn file_parts(&self, index: usize) -> (&str, &str) {
        let dir = self.file_runs.get(index).map_or(ROOT_DIR, |(_, dir)| dir);
        (
            self.dir_path(dir),
            self.files.get(index).unwrap_or_default(),
        )
    }

    /// The path of announced file `index`.
    fn file_path(&self, index: usize) -> String {
        match self.file_parts(index) {
            ("", name) => name.to_owned(),
            (dir, name) => format!("{dir}/{name}"),
        }
    }

    /// The index and id of the announced regular file at `path`, by binary search: `files`
    /// is in walk order.
    fn find_file(&self, path: &str) -> Option<(usize, u32)> {
        let (mut low, mut high) = (0, self.files.len());
        while low < high {
            let mid = low + (high - low) / 2;
            let (dir, name) = self.file_parts(mid);
            let parts = dir.split('/').filter(|c| !c.is_empty());
            match parts.chain(std::iter::once(name)).cmp(path.split('/')) {
                std::cmp::Ordering::Less => low = mid + 1,
                std::cmp::Ordering::Greater => high = mid,
                std::cmp::Ordering::Equal => return Some((mid, self.file_runs.get(mid)?.0)),
            }
        }
        None
    }

    /// The index of the announced directory `path` (its parent was announced before it, as
    /// the validator checked), or [`ROOT_DIR`] for the destination itself.
    fn find_dir(&self, path: &str) -> Option<u32> {
        if path.is_empty() {
            return Some(ROOT_DIR);
        }
        if self.dir_path(self.last_dir) == path {
            return Some(self.last_dir);
        }
        let (mut low, mut high) = (0, self.dirs.len());
        while low < high {
            let mid = low + (high - low) / 2;
            match self.dirs.get(mid)?.split('/').cmp(path.split('/')) {
                std::cmp::Ordering::Less => low = mid + 1,
                std::cmp::Ordering::Greater => high = mid,
                std::cmp::Ordering::Equal => return u32::try_from(mid).ok(),
            }
        }
        None
    }

    fn on_stat(&mut self, stat: Stat) -> Result<(), ReceiveError> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.stats.entries.fetch_add(1, Ordering::Relaxed);
        let is_dir = stat.mode & mode::DIR != 0;
        self.validator.check(&stat.path, is_dir)?;
        let kind = stat.mode & mode::TYPE;

        if kind == 0 && stat.linkname.is_empty() {
            // A regular file: asked for in turn (see `request_more`), written when its data
            // arrives.
            let (parent, name) = stat.path.rsplit_once('/').unwrap_or(("", &stat.path));
            let dir = self
                .find_dir(parent)
                .ok_or_else(|| ReceiveError::OutOfOrder {
                    path: stat.path.clone(),
                    previous: parent.to_owned(),
                })?;
            self.last_dir = dir;
            self.files
                .push(name)
                .and_then(|_| self.file_runs.push(id, dir))
                .ok_or_else(|| too_many(&stat.path))?;
            self.file_meta.push(FileMeta::new(&stat));
            if !stat.xattrs.is_empty() {
                self.xattrs.insert(id, Box::new(stat));
            }
            return Ok(());
        }
        if kind == 0 {
            // A hardlink to a file sent earlier: made now if that file is in place, else
            // once it is.
            let Some((index, target)) = self.find_file(&stat.linkname) else {
                return Err(ReceiveError::UnknownLink {
                    path: stat.path,
                    target: stat.linkname,
                });
            };
            if index >= self.requested || self.in_flight.contains_key(&target) {
                self.early_links.entry(target).or_default().push(stat.path);
                return Ok(());
            }
            let tmp = self.tmp_name(id);
            return self
                .link(&stat.linkname, &stat.path, &tmp)
                .map_err(self.write_err(&stat.path));
        }
        let result = if is_dir {
            self.make_dir(&stat)
        } else {
            self.make_special(&stat, id)
        };
        result.map_err(self.write_err(&stat.path))?;
        if is_dir {
            self.dirs
                .push(&stat.path)
                .ok_or_else(|| too_many(&stat.path))?;
            self.dir_meta.push(FileMeta::new(&stat));
        }
        Ok(())
    }

    /// Creates (or reuses) the directory `stat.path`, writable by us until [`Self::finish`]
    /// sets its real mode, so that children can be created.
    fn make_dir(&self, stat: &Stat) -> io::Result<()> {
        let perms = mode::to_unix_permissions(stat.mode);
        let (parent, name) = self.root.parent(&stat.path)?;
        match beneath::lstat_at(&parent, name)? {
            Some((FileType::Directory, current)) => {
                if current & 0o700 != 0o700 {
                    let fd = self.root.open_dir_path(&stat.path)?;
                    beneath::chmod_path_fd(&fd, current | 0o700)?;
                }
            }
            existing => {
                if existing.is_some() {
                    beneath::unlink(&parent, name)?;
                }
                match beneath::mkdir(&parent, name, perms | 0o700) {
                    Ok(()) => {}
                    // Another receiver into the same destination made it first.
                    Err(e)
                        if e.kind() == io::ErrorKind::AlreadyExists
                            && matches!(
                                beneath::lstat_at(&parent, name),
                                Ok(Some((FileType::Directory, _)))
                            ) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if !stat.xattrs.is_empty() {
            let fd = self.root.open_dir_rdonly(&stat.path)?;
            beneath::set_xattrs_fd(&fd, stat);
        }
        Ok(())
    }

    /// Creates a symlink, FIFO or device node under a temporary name, then moves it onto
    /// its path.
    fn make_special(&self, stat: &Stat, id: u32) -> io::Result<()> {
        let (parent, name) = self.root.parent(&stat.path)?;
        let tmp = self.tmp_name(id);
        let dir = parent.as_fd();
        beneath::unlink(dir, &tmp)?;
        let mut guard = TmpGuard {
            dir,
            name: &tmp,
            armed: true,
        };
        if stat.mode & mode::SYMLINK != 0 {
            beneath::symlink(&stat.linkname, dir, &tmp)?;
        } else {
            match make_node(dir, &tmp, stat) {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(
                        path = stat.path,
                        "skipping an entry of unsupported type {:#x}",
                        stat.mode
                    );
                    return Ok(());
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::PermissionDenied | io::ErrorKind::Unsupported
                    ) =>
                {
                    tracing::warn!(
                        path = stat.path,
                        "skipping a device or FIFO: {}",
                        io_reason(&e)
                    );
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        beneath::set_xattrs_at(dir, &tmp, stat);
        beneath::set_times_at(dir, &tmp, stat.mod_time)?;
        beneath::replace(dir, &tmp, dir, name)?;
        guard.armed = false;
        Ok(())
    }

    /// Makes `rel` a hardlink to the regular file `target` (both under the root), through
    /// the temporary name `tmp` in `rel`'s directory.
    fn link(&self, target: &str, rel: &str, tmp: &str) -> io::Result<()> {
        let (target_dir, target_name) = self.root.parent(target)?;
        let (parent, name) = self.root.parent(rel)?;
        let dir = parent.as_fd();
        beneath::unlink(dir, tmp)?;
        let mut guard = TmpGuard {
            dir,
            name: tmp,
            armed: true,
        };
        beneath::hard_link(&target_dir, target_name, dir, tmp)?;
        beneath::replace(dir, tmp, dir, name)?;
        guard.armed = false;
        Ok(())
    }

    fn on_data(&mut self, id: u32, data: bytes::Bytes) -> Result<(), ReceiveError> {
        let Some(p) = self.in_flight.get_mut(&id) else {
            return Err(ReceiveError::UnexpectedData(id));
        };
        if p.file.is_none() {
            let opened = (|| {
                let (parent, _) = self.root.parent(&p.entry.path)?;
                let parent = parent.to_owned_fd()?;
                beneath::unlink(&parent, &p.tmp)?;
                let file = beneath::create_new(&parent, &p.tmp)?;
                Ok::<_, io::Error>((parent, file))
            })();
            let (parent, file) = opened.map_err(|error| ReceiveError::Write {
                path: self.dest.join(&*p.entry.path),
                error,
            })?;
            p.parent = Some(parent);
            p.file = Some(file);
        }
        if !data.is_empty() {
            if let Some(file) = p.file.as_mut() {
                file.write_all(&data).map_err(|error| ReceiveError::Write {
                    path: self.dest.join(&*p.entry.path),
                    error,
                })?;
            }
            self.stats
                .bytes
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            return Ok(());
        }
        // EOF: metadata last, then into place, then any hardlinks waiting for it. On any
        // error `p` is dropped, which removes its temporary file.
        let Some(mut p) = self.in_flight.remove(&id) else {
            return Err(ReceiveError::UnexpectedData(id));
        };
        let rel = p.entry.path.clone();
        self.place(&mut p).map_err(self.write_err(&rel))?;
        for link in self.early_links.remove(&id).unwrap_or_default() {
            let tmp = self.tmp_name(id);
            self.link(&rel, &link, &tmp)
                .map_err(self.write_err(&link))?;
        }
        self.stats.files.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Sets a finished file's metadata and moves it onto its path, resolved again now: the
    /// directory it was created in may have been replaced since.
    fn place(&self, p: &mut Pending) -> io::Result<()> {
        if let Some(file) = p.file.take() {
            beneath::chmod_fd(&file, p.entry.mode)?;
            if let Some(stat) = &p.entry.xattrs {
                beneath::set_xattrs_fd(&file, stat);
            }
            beneath::set_times_fd(&file, p.entry.mod_time)?;
        }
        let Some(from) = &p.parent else {
            return Err(io::Error::other(NeverCreated));
        };
        let (to, name) = self.root.parent(&p.entry.path)?;
        beneath::replace(from, &p.tmp, &to, name)?;
        p.placed = true;
        Ok(())
    }
}

/// A path past what one transfer can hold: 2^32 entries, 4 GiB of names, or a directory path
/// longer than 65,535 bytes.
fn too_many(path: &str) -> ReceiveError {
    ReceiveError::InvalidPath {
        path: path.to_owned(),
        reason: "more entries, or longer paths, than one transfer can hold",
    }
}

/// fsutil's validator: paths clean, relative and inside the destination; each entry's parent
/// sent before it as a directory; siblings in strictly increasing byte order.
#[derive(Default)]
struct Validator {
    /// The directories that are open: (path, last child name seen). The root is "".
    stack: Vec<(String, String)>,
}

impl Validator {
    fn check(&mut self, path: &str, is_dir: bool) -> Result<(), ReceiveError> {
        let invalid = |reason| ReceiveError::InvalidPath {
            path: path.to_string(),
            reason,
        };
        if path.is_empty() {
            return Err(invalid("empty path"));
        }
        if path.starts_with('/') {
            return Err(invalid("absolute path"));
        }
        if path.contains('\0') {
            return Err(invalid("NUL byte in path"));
        }
        for part in path.split('/') {
            match part {
                "" | "." => return Err(invalid("unclean path")),
                ".." => return Err(invalid("path escapes the destination")),
                _ => {}
            }
        }
        if self.stack.is_empty() {
            self.stack.push((String::new(), String::new()));
        }
        let (parent, base) = match path.rfind('/') {
            Some(i) => (&path[..i], &path[i + 1..]),
            None => ("", path),
        };
        while self.stack.len() > 1 && self.stack.last().is_some_and(|(d, _)| d != parent) {
            self.stack.pop();
        }
        let Some((dir, last)) = self.stack.last_mut() else {
            return Err(invalid("no parent"));
        };
        if dir != parent || (!last.is_empty() && last.as_bytes() >= base.as_bytes()) {
            let previous = if dir.is_empty() {
                last.clone()
            } else {
                format!("{dir}/{last}")
            };
            return Err(ReceiveError::OutOfOrder {
                path: path.to_string(),
                previous,
            });
        }
        *last = base.to_string();
        if is_dir {
            self.stack.push((path.to_string(), String::new()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file's metadata stays 10 bytes: a million-file export keeps a million of them.
    #[test]
    fn file_meta_is_compact() {
        assert_eq!(std::mem::size_of::<FileMeta>(), 10);
    }
}
