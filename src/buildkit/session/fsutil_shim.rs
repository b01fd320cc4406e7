//! Stand-in for `crate::buildkit::fsutil` until that module lands: the same API, with a
//! minimal sender (no filtering, no hardlinks) and no receiver. Removed once it is wired in.
#![allow(dead_code)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::{Stream, StreamExt};
use tokio::io::AsyncReadExt;

use crate::buildkit::proto::fsutil::types::{Packet, Stat, packet::PacketType};

/// Counters of one or more transfers.
#[derive(Debug, Default)]
pub struct TransferStats {
    /// Entries (stat packets) sent or received.
    pub entries: AtomicU64,
    /// Files whose content crossed the wire.
    pub files: AtomicU64,
    /// Bytes of file content that crossed the wire.
    pub bytes: AtomicU64,
}

/// File patterns (ignored by this stand-in).
#[derive(Debug, Clone, Default)]
pub struct Filter;

impl Filter {
    /// Builds a filter.
    pub fn new(
        _includes: Vec<String>,
        _excludes: Vec<String>,
        _follow_paths: Vec<String>,
    ) -> Result<Filter, std::io::Error> {
        Ok(Filter)
    }
    /// Everything.
    pub fn all() -> Filter {
        Filter
    }
}

/// Sends `root`.
pub async fn send<S>(
    root: PathBuf,
    _filter: Filter,
    mut incoming: S,
    outgoing: tokio::sync::mpsc::Sender<Packet>,
    stats: Arc<TransferStats>,
) -> Result<(), std::io::Error>
where
    S: Stream<Item = Result<Packet, tonic::Status>> + Send + Unpin + 'static,
{
    let mut entries = Vec::new();
    walk(&root, "", &mut entries)?;
    let mut files = Vec::new();
    for (i, (stat, path)) in entries.into_iter().enumerate() {
        if stat.mode & 0xfff8_0000 == 0 {
            files.push((i, path));
        } else {
            files.push((i, PathBuf::new()));
        }
        stats.entries.fetch_add(1, Ordering::Relaxed);
        outgoing
            .send(Packet {
                r#type: PacketType::PacketStat as i32,
                stat: Some(stat),
                id: 0,
                data: Default::default(),
            })
            .await
            .map_err(std::io::Error::other)?;
    }
    outgoing
        .send(Packet::default())
        .await
        .map_err(std::io::Error::other)?;
    while let Some(packet) = incoming.next().await {
        let packet = packet.map_err(std::io::Error::other)?;
        if packet.r#type == PacketType::PacketReq as i32 {
            let path = &files
                .get(packet.id as usize)
                .ok_or_else(|| std::io::Error::other("bad id"))?
                .1;
            let mut file = tokio::fs::File::open(path).await?;
            stats.files.fetch_add(1, Ordering::Relaxed);
            loop {
                let mut buf = vec![0u8; 32 << 10];
                let n = file.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                buf.truncate(n);
                stats.bytes.fetch_add(n as u64, Ordering::Relaxed);
                outgoing
                    .send(Packet {
                        r#type: PacketType::PacketData as i32,
                        stat: None,
                        id: packet.id,
                        data: buf.into(),
                    })
                    .await
                    .map_err(std::io::Error::other)?;
            }
            outgoing
                .send(Packet {
                    r#type: PacketType::PacketData as i32,
                    stat: None,
                    id: packet.id,
                    data: Default::default(),
                })
                .await
                .map_err(std::io::Error::other)?;
        } else if packet.r#type == PacketType::PacketFin as i32 {
            outgoing
                .send(Packet {
                    r#type: PacketType::PacketFin as i32,
                    ..Default::default()
                })
                .await
                .map_err(std::io::Error::other)?;
            return Ok(());
        }
    }
    Ok(())
}

fn walk(dir: &Path, prefix: &str, out: &mut Vec<(Stat, PathBuf)>) -> std::io::Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<Vec<_>, _>>()?;
    names.sort_by_key(|e| e.file_name().into_encoded_bytes());
    for entry in names {
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let meta = std::fs::symlink_metadata(entry.path())?;
        let perm = meta.mode() & 0o777;
        let mut stat = Stat {
            path: rel.clone(),
            mode: perm,
            uid: meta.uid(),
            gid: meta.gid(),
            size: meta.size() as i64,
            mod_time: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ..Default::default()
        };
        if meta.is_dir() {
            stat.mode |= 1 << 31;
            stat.size = 0;
            out.push((stat, entry.path()));
            walk(&entry.path(), &rel, out)?;
        } else if meta.file_type().is_symlink() {
            stat.mode |= 1 << 27;
            stat.linkname = std::fs::read_link(entry.path())?
                .to_string_lossy()
                .into_owned();
            out.push((stat, entry.path()));
        } else {
            out.push((stat, entry.path()));
        }
    }
    Ok(())
}

/// Receives into `dest` (not in this stand-in).
pub async fn receive<S>(
    _dest: PathBuf,
    _incoming: S,
    _outgoing: tokio::sync::mpsc::Sender<Packet>,
    _stats: Arc<TransferStats>,
) -> Result<(), std::io::Error>
where
    S: Stream<Item = Result<Packet, tonic::Status>> + Send + Unpin + 'static,
{
    Err(std::io::Error::other(
        "the local exporter is not available yet",
    ))
}
