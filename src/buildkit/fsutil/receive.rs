//! The receiving end of DiffCopy (the `local` exporter): applies the STAT stream to a
//! directory in fsutil's "merge" mode, asks for every regular file and writes the data as it
//! arrives.
//!
//! Packets are applied on a blocking thread (every step is a system call); REQs and the final
//! FIN go out through an unbounded queue so that asking for data never waits on the sender
//! reading, which could otherwise deadlock against a sender blocked on sending data.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, FileTimes, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;

use super::{Packet, PacketType, Stat, TransferStats, io_reason, mode};

/// Why receiving into a directory failed.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// Writing into the destination failed.
    #[error("cannot write {path}: {}", io_reason(error))]
    Write {
        /// The path written to.
        path: PathBuf,
        /// The underlying error.
        error: io::Error,
    },
    /// The sender sent a path that is not a clean relative path inside the destination.
    #[error("the sender sent an invalid path {path:?}: {reason}")]
    InvalidPath {
        /// The path as sent.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The sender's entries are not in walk order (or a parent directory is missing).
    #[error("the sender sent {path:?} out of order (after {previous:?})")]
    OutOfOrder {
        /// The path as sent.
        path: String,
        /// The entry before it in the same directory, if any.
        previous: String,
    },
    /// A hardlink names a file that was not sent before it.
    #[error("the sender sent a hardlink {path:?} to unknown path {target:?}")]
    UnknownLink {
        /// The link.
        path: String,
        /// Its target.
        target: String,
    },
    /// Data arrived for an ID that was not requested or is already complete.
    #[error("the sender sent data for file id {0}, which was not requested")]
    UnexpectedData(u32),
    /// The sender aborted with an error message.
    #[error("the sender reported an error: {0}")]
    Sender(String),
    /// The incoming stream failed.
    #[error("the file transfer stream failed: {}", .0.message())]
    Transport(tonic::Status),
    /// The sender ended its stream before the transfer finished.
    #[error("the sender closed the transfer before it finished")]
    SenderClosed,
    /// The outgoing stream is gone (the call ended).
    #[error("the file transfer stream was closed while receiving")]
    OutgoingClosed,
    /// A task of the transfer panicked or was cancelled.
    #[error("the file transfer was interrupted: {0}")]
    Interrupted(String),
}

/// Receives a DiffCopy stream into `dest` (created if missing): directories, files, symlinks,
/// hardlinks, FIFOs and (when permitted) devices, with modes and modification times. Existing
/// files in `dest` that are not in the stream are kept ("merge" mode); uid and gid are left
/// as the local user's. Every regular file is requested. Answers with FIN when all is written.
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
    S: Stream<Item = Result<Packet, tonic::Status>> + Send + Unpin + 'static,
{
    tokio::fs::create_dir_all(&dest)
        .await
        .map_err(|source| ReceiveError::Write {
            path: dest.clone(),
            error: source,
        })?;

    // Incoming packets go to the blocking applier through a small bounded queue (backpressure
    // on the sender); this side's REQs and FIN go out unbounded.
    let (in_tx, in_rx) = mpsc::channel::<Result<Packet, tonic::Status>>(64);
    let pump = tokio::spawn(async move {
        while let Some(item) = incoming.next().await {
            if in_tx.send(item).await.is_err() {
                break;
            }
        }
    });
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Packet>();
    let forwarder = tokio::spawn(async move {
        while let Some(p) = out_rx.recv().await {
            if outgoing.send(p).await.is_err() {
                return Err(ReceiveError::OutgoingClosed);
            }
        }
        Ok(())
    });

    let applier = tokio::task::spawn_blocking(move || {
        let mut r = Receiver::new(dest, out_tx, stats);
        let result = r.run(in_rx);
        if let Err(e) = &result
            && !matches!(
                e,
                ReceiveError::Sender(_) | ReceiveError::Transport(_) | ReceiveError::OutgoingClosed
            )
        {
            let _ = r.out.send(Packet {
                r#type: PacketType::PacketErr as i32,
                data: bytes::Bytes::from(e.to_string()),
                ..Packet::default()
            });
        }
        result
    });
    let result = applier
        .await
        .map_err(|e| ReceiveError::Interrupted(e.to_string()))
        .and_then(|r| r);
    // The applier dropped its end of the queue; the forwarder drains what is left.
    let forwarded = forwarder
        .await
        .map_err(|e| ReceiveError::Interrupted(e.to_string()))
        .and_then(|r| r);
    pump.abort();
    result?;
    forwarded
}

/// A regular file whose data is still coming.
struct Pending {
    rel: String,
    path: PathBuf,
    tmp: PathBuf,
    stat: Stat,
    /// Open once the first byte (or the EOF) arrives, so only files in flight hold descriptors.
    file: Option<File>,
    /// Hardlinks to this file that arrived before its data did: created once it is in place.
    links: Vec<PathBuf>,
}

struct Receiver {
    dest: PathBuf,
    out: mpsc::UnboundedSender<Packet>,
    stats: Arc<TransferStats>,
    next_id: u32,
    pending: HashMap<u32, Pending>,
    /// Path of each pending file, to find it when a hardlink names it.
    pending_by_path: HashMap<String, u32>,
    /// Regular files seen, the only valid hardlink targets.
    files_seen: HashSet<String>,
    /// Directories whose mode and times are set at the end, after their children.
    dirs: Vec<(PathBuf, Stat)>,
    validator: Validator,
    stats_done: bool,
    /// This receiver's number in the process, for temporary names.
    serial: u64,
}

/// Numbers the receivers of this process.
static RECEIVERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn system_time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

/// Sets access and modification time of `path` itself (not a symlink's target).
fn set_times_nofollow(path: &Path, ns: i64) -> io::Result<()> {
    use rustix::fs::{AtFlags, CWD, Timespec, Timestamps};
    let ts = Timespec {
        tv_sec: ns.div_euclid(1_000_000_000),
        tv_nsec: ns.rem_euclid(1_000_000_000) as _,
    };
    let times = Timestamps {
        last_access: ts,
        last_modification: ts,
    };
    rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}

fn set_xattrs(path: &Path, stat: &Stat) {
    for (name, value) in &stat.xattrs {
        if let Err(e) =
            rustix::fs::lsetxattr(path, name.as_str(), value, rustix::fs::XattrFlags::empty())
        {
            tracing::debug!(path = %path.display(), name, "cannot set extended attribute: {e}");
        }
    }
}

/// Special files the receiver can create.
#[derive(Clone, Copy)]
enum Node {
    Fifo,
    CharDevice,
    BlockDevice,
}

/// Creates a FIFO or device node (devices need privileges).
#[cfg(target_os = "linux")]
fn make_node(path: &Path, node: Node, perms: u32, major: i64, minor: i64) -> io::Result<()> {
    use rustix::fs::{CWD, FileType, Mode};
    let file_type = match node {
        Node::Fifo => FileType::Fifo,
        Node::CharDevice => FileType::CharacterDevice,
        Node::BlockDevice => FileType::BlockDevice,
    };
    let dev = rustix::fs::makedev(major as u32, minor as u32);
    rustix::fs::mknodat(CWD, path, file_type, Mode::from_raw_mode(perms as _), dev)?;
    Ok(())
}

/// Creates a FIFO or device node: not supported off Linux.
#[cfg(not(target_os = "linux"))]
fn make_node(_path: &Path, _node: Node, _perms: u32, _major: i64, _minor: i64) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// Removes whatever is at `path` unless it is a directory (which is kept and reused).
fn make_room_for_dir(path: &Path) -> io::Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Ok(true),
        Ok(_) => fs::remove_file(path).map(|_| false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

impl Drop for Receiver {
    /// A transfer that ends early (an error, the daemon going away, Ctrl-C) leaves no
    /// half-written temporary files in the destination.
    fn drop(&mut self) {
        for pending in self.pending.values() {
            if pending.file.is_some() {
                let _ = fs::remove_file(&pending.tmp);
            }
        }
    }
}

/// Moves `tmp` to `path`, replacing what is there (a directory in the way is removed).
fn replace(tmp: &Path, path: &Path) -> io::Result<()> {
    if let Ok(m) = fs::symlink_metadata(path)
        && m.is_dir()
    {
        fs::remove_dir_all(path)?;
    }
    fs::rename(tmp, path)
}

impl Receiver {
    fn new(dest: PathBuf, out: mpsc::UnboundedSender<Packet>, stats: Arc<TransferStats>) -> Self {
        Receiver {
            dest,
            out,
            stats,
            next_id: 0,
            pending: HashMap::new(),
            pending_by_path: HashMap::new(),
            files_seen: HashSet::new(),
            dirs: Vec::new(),
            validator: Validator::default(),
            stats_done: false,
            serial: RECEIVERS.fetch_add(1, Ordering::Relaxed),
        }
    }

    fn write_err(path: &Path) -> impl FnOnce(io::Error) -> ReceiveError + '_ {
        move |source| ReceiveError::Write {
            path: path.to_path_buf(),
            error: source,
        }
    }

    fn send(&self, p: Packet) -> Result<(), ReceiveError> {
        self.out.send(p).map_err(|_| ReceiveError::OutgoingClosed)
    }

    fn run(
        &mut self,
        mut incoming: mpsc::Receiver<Result<Packet, tonic::Status>>,
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
            if !finished && self.stats_done && self.pending.is_empty() {
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
        for (path, stat) in self.dirs.drain(..).rev() {
            fs::set_permissions(
                &path,
                Permissions::from_mode(mode::to_unix_permissions(stat.mode)),
            )
            .map_err(Self::write_err(&path))?;
            set_times_nofollow(&path, stat.mod_time).map_err(Self::write_err(&path))?;
        }
        self.send(Packet {
            r#type: PacketType::PacketFin as i32,
            ..Packet::default()
        })
    }

    /// A temporary name beside `path`, unique across processes and concurrent receivers (the
    /// local exporter runs one per platform, possibly into the same directory), and short
    /// whatever the length of the final name.
    fn tmp_path(&self, path: &Path, id: u32) -> PathBuf {
        path.with_file_name(format!(
            ".pf-tmp-{}-{}-{id}",
            std::process::id(),
            self.serial
        ))
    }

    fn on_stat(&mut self, stat: Stat) -> Result<(), ReceiveError> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.stats.entries.fetch_add(1, Ordering::Relaxed);
        let is_dir = stat.mode & mode::DIR != 0;
        self.validator.check(&stat.path, is_dir)?;
        let path = self.dest.join(&stat.path);
        let tmp = self.tmp_path(&path, id);
        let kind = stat.mode & mode::TYPE;
        let perms = mode::to_unix_permissions(stat.mode);

        if is_dir {
            if !make_room_for_dir(&path).map_err(Self::write_err(&path))? {
                // Writable for now so that children can be created; the real mode comes last.
                match fs::DirBuilder::new().mode(perms | 0o700).create(&path) {
                    Ok(()) => {}
                    // Another receiver into the same destination made it first.
                    Err(e)
                        if e.kind() == io::ErrorKind::AlreadyExists
                            && fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) => {}
                    Err(e) => return Err(Self::write_err(&path)(e)),
                }
            } else {
                let current = fs::symlink_metadata(&path).map_err(Self::write_err(&path))?;
                let m = current.permissions().mode();
                if m & 0o700 != 0o700 {
                    fs::set_permissions(&path, Permissions::from_mode(m | 0o700))
                        .map_err(Self::write_err(&path))?;
                }
            }
            set_xattrs(&path, &stat);
            self.dirs.push((path, stat));
            return Ok(());
        }

        if kind & mode::SYMLINK != 0 {
            let _ = fs::remove_file(&tmp);
            std::os::unix::fs::symlink(&stat.linkname, &tmp).map_err(Self::write_err(&path))?;
            set_xattrs(&tmp, &stat);
            set_times_nofollow(&tmp, stat.mod_time).map_err(Self::write_err(&path))?;
            return replace(&tmp, &path).map_err(Self::write_err(&path));
        }

        if kind == 0 && !stat.linkname.is_empty() {
            // A hardlink to a file sent earlier.
            if !self.files_seen.contains(&stat.linkname) {
                return Err(ReceiveError::UnknownLink {
                    path: stat.path,
                    target: stat.linkname,
                });
            }
            if let Some(orig) = self
                .pending_by_path
                .get(&stat.linkname)
                .and_then(|id| self.pending.get_mut(id))
            {
                orig.links.push(path);
                return Ok(());
            }
            let target = self.dest.join(&stat.linkname);
            let _ = fs::remove_file(&tmp);
            fs::hard_link(&target, &tmp).map_err(Self::write_err(&path))?;
            return replace(&tmp, &path).map_err(Self::write_err(&path));
        }

        if kind == 0 {
            self.files_seen.insert(stat.path.clone());
            self.pending_by_path.insert(stat.path.clone(), id);
            self.pending.insert(
                id,
                Pending {
                    rel: stat.path.clone(),
                    path,
                    tmp,
                    stat,
                    file: None,
                    links: Vec::new(),
                },
            );
            return self.send(Packet {
                r#type: PacketType::PacketReq as i32,
                id,
                ..Packet::default()
            });
        }

        // Devices and FIFOs.
        let node = if kind & mode::NAMED_PIPE != 0 {
            Node::Fifo
        } else if kind & mode::CHAR_DEVICE != 0 {
            Node::CharDevice
        } else if kind & mode::DEVICE != 0 {
            Node::BlockDevice
        } else {
            tracing::warn!(
                path = stat.path,
                "skipping an entry of unsupported type {:#x}",
                stat.mode
            );
            return Ok(());
        };
        let _ = fs::remove_file(&tmp);
        match make_node(&tmp, node, perms, stat.devmajor, stat.devminor) {
            Ok(()) => {
                set_times_nofollow(&tmp, stat.mod_time).map_err(Self::write_err(&path))?;
                replace(&tmp, &path).map_err(Self::write_err(&path))
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
                Ok(())
            }
            Err(source) => Err(ReceiveError::Write {
                path,
                error: source,
            }),
        }
    }

    fn on_data(&mut self, id: u32, data: bytes::Bytes) -> Result<(), ReceiveError> {
        let Some(p) = self.pending.get_mut(&id) else {
            return Err(ReceiveError::UnexpectedData(id));
        };
        if p.file.is_none() {
            let _ = fs::remove_file(&p.tmp);
            let file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&p.tmp)
                .map_err(Self::write_err(&p.path))?;
            p.file = Some(file);
        }
        if !data.is_empty() {
            if let Some(file) = p.file.as_mut() {
                file.write_all(&data).map_err(Self::write_err(&p.path))?;
            }
            self.stats
                .bytes
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            return Ok(());
        }
        // EOF: metadata last, then into place, then any hardlinks waiting for it.
        let Some(p) = self.pending.remove(&id) else {
            return Err(ReceiveError::UnexpectedData(id));
        };
        self.pending_by_path.remove(&p.rel);
        let err = Self::write_err(&p.path);
        if let Some(file) = &p.file {
            file.set_permissions(Permissions::from_mode(mode::to_unix_permissions(
                p.stat.mode,
            )))
            .map_err(err)?;
            set_xattrs(&p.tmp, &p.stat);
            let t = system_time(p.stat.mod_time);
            file.set_times(FileTimes::new().set_accessed(t).set_modified(t))
                .map_err(Self::write_err(&p.path))?;
        }
        drop(p.file);
        replace(&p.tmp, &p.path).map_err(Self::write_err(&p.path))?;
        for link in &p.links {
            let tmp = self.tmp_path(link, id);
            let _ = fs::remove_file(&tmp);
            fs::hard_link(&p.path, &tmp).map_err(Self::write_err(link))?;
            replace(&tmp, link).map_err(Self::write_err(link))?;
        }
        self.stats.files.fetch_add(1, Ordering::Relaxed);
        Ok(())
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
