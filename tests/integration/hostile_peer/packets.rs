//! Builders for fsutil packets and stats, as a daemon (or an attacker) would send them.

use bytes::Bytes;
use pf_buildkit::buildkit::fsutil::mode;
use pf_buildkit::buildkit::proto::fsutil::types::packet::PacketType;
use pf_buildkit::buildkit::proto::fsutil::types::{Packet, Stat};

/// A `PACKET_STAT` carrying `stat`.
pub fn stat(stat: Stat) -> Packet {
    Packet {
        r#type: PacketType::PacketStat as i32,
        stat: Some(stat),
        ..Packet::default()
    }
}

/// The `PACKET_STAT` without a stat that ends the list of entries.
pub fn stats_end() -> Packet {
    Packet {
        r#type: PacketType::PacketStat as i32,
        ..Packet::default()
    }
}

/// A `PACKET_REQ` for entry `id`.
pub fn req(id: u32) -> Packet {
    Packet {
        r#type: PacketType::PacketReq as i32,
        id,
        ..Packet::default()
    }
}

/// A `PACKET_DATA` chunk for entry `id`.
pub fn data(id: u32, bytes: impl Into<Bytes>) -> Packet {
    Packet {
        r#type: PacketType::PacketData as i32,
        id,
        data: bytes.into(),
        ..Packet::default()
    }
}

/// The empty `PACKET_DATA` that ends entry `id`'s data.
pub fn eof(id: u32) -> Packet {
    data(id, Bytes::new())
}

/// `PACKET_FIN`.
pub fn fin() -> Packet {
    Packet {
        r#type: PacketType::PacketFin as i32,
        ..Packet::default()
    }
}

/// Whether `p` is of type `t`.
pub fn is(p: &Packet, t: PacketType) -> bool {
    p.r#type == t as i32
}

/// A directory entry, mode 0755.
pub fn dir(path: &str) -> Stat {
    Stat {
        path: path.to_owned(),
        mode: mode::DIR | 0o755,
        mod_time: 1_600_000_000_000_000_000,
        ..Stat::default()
    }
}

/// A regular file entry of `size` bytes, mode 0644.
pub fn file(path: &str, size: i64) -> Stat {
    Stat {
        path: path.to_owned(),
        mode: 0o644,
        size,
        mod_time: 1_600_000_000_000_000_000,
        ..Stat::default()
    }
}

/// A symlink entry pointing at `target`.
pub fn symlink(path: &str, target: &str) -> Stat {
    Stat {
        path: path.to_owned(),
        mode: mode::SYMLINK | 0o777,
        linkname: target.to_owned(),
        mod_time: 1_600_000_000_000_000_000,
        ..Stat::default()
    }
}

/// A hardlink entry to the file sent earlier at `target`.
pub fn hardlink(path: &str, target: &str) -> Stat {
    Stat {
        linkname: target.to_owned(),
        ..file(path, 0)
    }
}
