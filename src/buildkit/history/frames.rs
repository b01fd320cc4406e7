//! The framing of a build's logs blob (`application/vnd.buildkit.status.v0`): the daemon
//! writes each status update of the build as a 4-byte little-endian length, then that many
//! bytes of a protobuf `StatusResponse`, one after another, nothing before or after
//! (`solver/llbsolver/history.go`, `ImportStatus`).

use bytes::{Buf, BytesMut};
use prost::Message;

use crate::buildkit::client::MAX_MESSAGE_SIZE;
use crate::buildkit::proto::control::StatusResponse;

/// The media type of a logs blob.
pub const LOGS_MEDIA_TYPE: &str = "application/vnd.buildkit.status.v0";

/// What is wrong with a logs blob's bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A frame claims more than any status update can be.
    #[error("a frame at byte {offset} claims {length} bytes, more than a status update can be")]
    TooLong {
        /// Where the frame starts.
        offset: u64,
        /// The length it claims.
        length: u64,
    },
    /// A frame is not a status update.
    #[error("the frame at byte {offset} is not a status update: {reason}")]
    Undecodable {
        /// Where the frame starts.
        offset: u64,
        /// What the protobuf decoder said.
        reason: String,
    },
    /// The blob ends inside a frame.
    #[error("the blob ends inside the frame at byte {offset}")]
    Truncated {
        /// Where the unfinished frame starts.
        offset: u64,
    },
}

/// Splits a logs blob, given in pieces of any size, into its status updates. Holds at most one
/// frame (and the piece that brought it) at a time.
#[derive(Debug, Default)]
pub(crate) struct StatusFrames {
    pending: BytesMut,
    /// Offset in the blob of `pending`'s first byte.
    offset: u64,
}

impl StatusFrames {
    /// A decoder at the start of a blob.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Adds the next bytes of the blob.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    /// The next whole status update, `None` when more bytes are needed.
    ///
    /// # Errors
    /// When a frame is too long for a status update or does not decode as one.
    pub(crate) fn next_status(&mut self) -> Result<Option<StatusResponse>, FrameError> {
        if self.pending.len() < 4 {
            return Ok(None);
        }
        let length = u64::from(u32::from_le_bytes([
            self.pending[0],
            self.pending[1],
            self.pending[2],
            self.pending[3],
        ]));
        if length > MAX_MESSAGE_SIZE as u64 {
            return Err(FrameError::TooLong {
                offset: self.offset,
                length,
            });
        }
        // `length` is at most MAX_MESSAGE_SIZE, so it fits a usize.
        let length = length as usize;
        if self.pending.len() < 4 + length {
            return Ok(None);
        }
        self.pending.advance(4);
        let frame = self.pending.split_to(length).freeze();
        let status = StatusResponse::decode(frame).map_err(|e| FrameError::Undecodable {
            offset: self.offset,
            reason: e.to_string(),
        })?;
        self.offset += 4 + length as u64;
        Ok(Some(status))
    }

    /// Checks that the blob ended between frames.
    ///
    /// # Errors
    /// [`FrameError::Truncated`] when bytes of an unfinished frame are left.
    pub(crate) fn finish(&self) -> Result<(), FrameError> {
        if self.pending.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated {
                offset: self.offset,
            })
        }
    }
}

/// Encodes status updates as a logs blob, as the daemon does.
#[cfg(test)]
pub(crate) fn encode_frames<'a>(updates: impl IntoIterator<Item = &'a StatusResponse>) -> Vec<u8> {
    let mut out = Vec::new();
    for update in updates {
        let bytes = update.encode_to_vec();
        let length = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&length.to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buildkit::proto::control::Vertex;

    fn update(name: &str) -> StatusResponse {
        StatusResponse {
            vertexes: vec![Vertex {
                digest: format!("sha256:{name}"),
                name: name.to_owned(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn frames_split_at_any_byte_decode_in_order() {
        let updates = [update("a"), update("bb"), StatusResponse::default()];
        let blob = encode_frames(&updates);
        for piece in [1, 3, 7, blob.len()] {
            let mut frames = StatusFrames::new();
            let mut got = Vec::new();
            for chunk in blob.chunks(piece) {
                frames.push(chunk);
                while let Some(status) = frames.next_status().unwrap() {
                    got.push(status);
                }
            }
            frames.finish().unwrap();
            assert_eq!(got, updates, "pieces of {piece}");
        }
    }

    #[test]
    fn a_cut_or_corrupt_blob_is_an_error_naming_the_offset() {
        let blob = encode_frames(&[update("a"), update("b")]);
        let mut frames = StatusFrames::new();
        frames.push(&blob[..blob.len() - 1]);
        assert!(frames.next_status().unwrap().is_some());
        assert!(frames.next_status().unwrap().is_none());
        let first = blob.len() / 2;
        assert_eq!(
            frames.finish(),
            Err(FrameError::Truncated {
                offset: first as u64
            })
        );

        let mut frames = StatusFrames::new();
        frames.push(&u32::MAX.to_le_bytes());
        assert!(matches!(
            frames.next_status(),
            Err(FrameError::TooLong { offset: 0, .. })
        ));

        let mut frames = StatusFrames::new();
        frames.push(&[2, 0, 0, 0, 0xff, 0xff]);
        assert!(matches!(
            frames.next_status(),
            Err(FrameError::Undecodable { offset: 0, .. })
        ));
    }
}
