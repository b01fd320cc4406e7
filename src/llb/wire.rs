//! Encoding ops and Definitions exactly as Go's deterministic protobuf marshalling does, so
//! digests match. prost agrees with Go on everything but three points, handled here:
//!
//! - Go writes a oneof member after all regular fields (`Op`'s body comes after `platform`
//!   and `constraints`); prost writes it at its field number.
//! - Go writes both halves of every map entry, even a zero value (an empty string, `false`, an
//!   empty message); prost leaves zero halves out.
//! - Map entries in key order: prost does that for the `BTreeMap`s build.rs asks for.
//!
//! Every other message has no oneof before its last field and no map, so prost's own
//! encoding of it is Go's.

use prost::Message;
use prost::encoding::{self, WireType};

use crate::buildkit::proto::pb;

/// Writes `body` as length-delimited field `tag`.
fn put_message_bytes(tag: u32, body: &[u8], buf: &mut Vec<u8>) {
    encoding::encode_key(tag, WireType::LengthDelimited, buf);
    encoding::encode_varint(body.len() as u64, buf);
    buf.extend_from_slice(body);
}

/// Writes one map entry as Go does: key and value always present.
fn put_entry(tag: u32, entry: impl FnOnce(&mut Vec<u8>), buf: &mut Vec<u8>) {
    let mut body = Vec::new();
    entry(&mut body);
    put_message_bytes(tag, &body, buf);
}

fn put_string_map<'a>(
    tag: u32,
    map: impl IntoIterator<Item = (&'a String, &'a String)>,
    buf: &mut Vec<u8>,
) {
    for (k, v) in map {
        put_entry(
            tag,
            |e| {
                encoding::string::encode(1, k, e);
                encoding::string::encode(2, v, e);
            },
            buf,
        );
    }
}

/// An op's bytes, as its digest is computed.
pub(crate) fn encode_op(op: &pb::Op) -> Vec<u8> {
    let mut buf = Vec::new();
    for input in &op.inputs {
        encoding::message::encode(1, input, &mut buf);
    }
    if let Some(platform) = &op.platform {
        encoding::message::encode(10, platform, &mut buf);
    }
    if let Some(constraints) = &op.constraints {
        encoding::message::encode(11, constraints, &mut buf);
    }
    match &op.op {
        Some(pb::op::Op::Source(source)) => put_message_bytes(3, &encode_source(source), &mut buf),
        Some(body) => body.encode(&mut buf),
        None => {}
    }
    buf
}

fn encode_source(source: &pb::SourceOp) -> Vec<u8> {
    let mut buf = Vec::new();
    if !source.identifier.is_empty() {
        encoding::string::encode(1, &source.identifier, &mut buf);
    }
    put_string_map(2, &source.attrs, &mut buf);
    buf
}

fn encode_op_metadata(meta: &pb::OpMetadata) -> Vec<u8> {
    let mut buf = Vec::new();
    if meta.ignore_cache {
        encoding::bool::encode(1, &meta.ignore_cache, &mut buf);
    }
    put_string_map(2, &meta.description, &mut buf);
    if let Some(export) = &meta.export_cache {
        encoding::message::encode(4, export, &mut buf);
    }
    for (k, v) in &meta.caps {
        put_entry(
            5,
            |e| {
                encoding::string::encode(1, k, e);
                encoding::bool::encode(2, v, e);
            },
            &mut buf,
        );
    }
    if let Some(group) = &meta.progress_group {
        encoding::message::encode(6, group, &mut buf);
    }
    if let Some(resources) = &meta.linux_resources {
        encoding::message::encode(7, resources, &mut buf);
    }
    buf
}

fn encode_source_map(source: &pb::Source) -> Vec<u8> {
    let mut buf = Vec::new();
    for (k, v) in &source.locations {
        put_entry(
            1,
            |e| {
                encoding::string::encode(1, k, e);
                encoding::message::encode(2, v, e);
            },
            &mut buf,
        );
    }
    for info in &source.infos {
        encoding::message::encode(2, info, &mut buf);
    }
    buf
}

/// A Definition's bytes, as Go's deterministic marshalling writes them (what a `.pb` file
/// from `llb.WriteTo` holds, up to map order).
pub(crate) fn encode_definition(def: &pb::Definition) -> Vec<u8> {
    let mut buf = Vec::new();
    for op in &def.def {
        encoding::bytes::encode(1, op, &mut buf);
    }
    for (digest, meta) in &def.metadata {
        put_entry(
            2,
            |e| {
                encoding::string::encode(1, digest, e);
                put_message_bytes(2, &encode_op_metadata(meta), e);
            },
            &mut buf,
        );
    }
    if let Some(source) = &def.source {
        put_message_bytes(3, &encode_source_map(source), &mut buf);
    }
    buf
}

/// Decodes a Definition (any field order; prost reads what Go writes).
pub(crate) fn decode_definition(bytes: &[u8]) -> Result<pb::Definition, prost::DecodeError> {
    pb::Definition::decode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_op_body_comes_after_platform_and_constraints() {
        let op = pb::Op {
            platform: Some(pb::Platform {
                architecture: "amd64".into(),
                os: "linux".into(),
                ..Default::default()
            }),
            constraints: Some(pb::WorkerConstraints::default()),
            op: Some(pb::op::Op::Source(pb::SourceOp {
                identifier: "x".into(),
                attrs: [("k".to_owned(), String::new())].into(),
            })),
            ..Default::default()
        };
        let bytes = encode_op(&op);
        // platform (10), constraints (11) = 5a 00, then source (3) with an entry whose empty
        // value is still written (12 00).
        assert_eq!(
            bytes,
            [
                &[0x52, 0x0e, 0x0a, 0x05][..],
                b"amd64",
                &[0x12, 0x05],
                b"linux",
                &[
                    0x5a, 0x00, 0x1a, 0x0a, 0x0a, 0x01, b'x', 0x12, 0x05, 0x0a, 0x01, b'k', 0x12,
                    0x00
                ],
            ]
            .concat()
        );
        assert_eq!(pb::Op::decode(bytes.as_slice()).unwrap(), op);
    }
}
