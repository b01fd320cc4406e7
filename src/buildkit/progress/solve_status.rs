//! The status of a running solve in the crate's own types: what progress sinks receive and
//! what a build's result keeps of its warnings.
//!
//! The daemon sends `StatusResponse` messages of its wire API; they are turned into a
//! [`SolveStatus`] in one place ([`SolveStatus::from_proto`]) so that nothing a caller sees
//! changes when the generated code or the gRPC library does. The fields follow Go's
//! `client.SolveStatus` (the shape buildctl's `rawjson` prints), with times as
//! [`SystemTime`] and "not set" as `None` rather than an empty string.

use std::borrow::Cow;
use std::time::SystemTime;

use crate::buildkit::proto::control as wire;
use crate::buildkit::proto::pb;

/// One status update of a solve: steps that changed, progress of their transfers, output
/// lines and warnings. Sinks get them in the order the daemon sent them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SolveStatus {
    /// Steps (vertexes) whose state changed, each as a full snapshot.
    pub vertexes: Vec<Vertex>,
    /// Progress of work inside steps (a layer pull, the context transfer).
    pub statuses: Vec<VertexStatus>,
    /// Output of steps (a `RUN`'s stdout and stderr), in chunks as they came.
    pub logs: Vec<VertexLog>,
    /// Warnings (Dockerfile checks and others).
    pub warnings: Vec<VertexWarning>,
}

/// A snapshot of one step of the build graph.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Vertex {
    /// The step's digest (`sha256:…`): its identity across updates.
    pub digest: String,
    /// The digests of the steps it takes its inputs from.
    pub inputs: Vec<String>,
    /// What it does, as progress shows it (`[2/3] RUN make`).
    pub name: String,
    /// When it started; `None` before it has.
    pub started: Option<SystemTime>,
    /// When it stopped; `None` while it runs or before it started.
    pub completed: Option<SystemTime>,
    /// Its result came from the cache.
    pub cached: bool,
    /// Why it failed; `None` unless it did. A cancelled step's error ends with
    /// `context canceled`.
    pub error: Option<String>,
    /// The group the step is shown in, when the frontend put it in one.
    pub progress_group: Option<ProgressGroup>,
}

/// A group of steps that progress may show as one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProgressGroup {
    /// The group's identity.
    pub id: String,
    /// Its display name.
    pub name: String,
    /// A weak group is shown as one only while its steps run together.
    pub weak: bool,
}

/// Progress of one piece of work inside a step (`transferring context: 1.2MB`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VertexStatus {
    /// The work's identity within its step (also what progress shows).
    pub id: String,
    /// The digest of the step it belongs to.
    pub vertex: String,
    /// A display name, when it has one besides its `id`.
    pub name: String,
    /// How much there is in all (bytes, usually); 0 when unknown.
    pub total: i64,
    /// How much is done.
    pub current: i64,
    /// When the daemon took this reading.
    pub timestamp: Option<SystemTime>,
    /// When the work started.
    pub started: Option<SystemTime>,
    /// When it finished; `None` while it runs.
    pub completed: Option<SystemTime>,
}

/// A chunk of a step's output. Chunks are not split at line ends: a line may span several.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VertexLog {
    /// The digest of the step that wrote it.
    pub vertex: String,
    /// The stream it was written to: 1 for stdout, 2 for stderr.
    pub stream: i64,
    /// The bytes, as written (not necessarily UTF-8).
    pub data: Vec<u8>,
    /// When the daemon read them.
    pub timestamp: Option<SystemTime>,
}

/// A warning about the build, usually a Dockerfile check, with the source lines it is about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VertexWarning {
    /// The digest of the step it came from.
    pub vertex: String,
    /// Its level, as the daemon rates it (1 for a check's warning).
    pub level: i64,
    /// One line saying what is wrong, as sent (see [`VertexWarning::short_text`]).
    pub short: Vec<u8>,
    /// Paragraphs of explanation, as sent.
    pub detail: Vec<Vec<u8>>,
    /// A page that explains it.
    pub url: Option<String>,
    /// The source file the warning is about.
    pub source: Option<SourceInfo>,
    /// The ranges of `source` it points at.
    pub ranges: Vec<SourceRange>,
}

impl VertexWarning {
    /// [`short`](VertexWarning::short) as text (invalid UTF-8 replaced).
    pub fn short_text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.short)
    }
}

/// A source file a warning or error points into (a Dockerfile).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SourceInfo {
    /// Its name as the frontend gave it (`Dockerfile`).
    pub filename: String,
    /// Its whole content.
    pub data: Vec<u8>,
    /// Its language (`Dockerfile`), when the frontend named one.
    pub language: Option<String>,
}

/// A range of a source file, from `start` to `end`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SourceRange {
    /// Where it begins.
    pub start: SourcePosition,
    /// Where it ends.
    pub end: SourcePosition,
}

/// A place in a source file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SourcePosition {
    /// The line, 1-based.
    pub line: i32,
    /// The column, 0-based (0 when the frontend gives lines only).
    pub character: i32,
}

impl SolveStatus {
    /// Nothing in it.
    pub fn is_empty(&self) -> bool {
        self.vertexes.is_empty()
            && self.statuses.is_empty()
            && self.logs.is_empty()
            && self.warnings.is_empty()
    }

    /// The crate's form of a status message of the wire API: the one place the wire's types
    /// turn into these.
    pub(crate) fn from_proto(status: wire::StatusResponse) -> SolveStatus {
        SolveStatus {
            vertexes: status
                .vertexes
                .into_iter()
                .map(Vertex::from_proto)
                .collect(),
            statuses: status
                .statuses
                .into_iter()
                .map(VertexStatus::from_proto)
                .collect(),
            logs: status.logs.into_iter().map(VertexLog::from_proto).collect(),
            warnings: status
                .warnings
                .into_iter()
                .map(VertexWarning::from_proto)
                .collect(),
        }
    }
}

/// A wire timestamp as a [`SystemTime`]; `None` when unset or beyond what the platform's
/// clock type holds.
fn time(t: Option<prost_types::Timestamp>) -> Option<SystemTime> {
    t.and_then(|t| SystemTime::try_from(t).ok())
}

/// An empty string of the wire as "not set".
fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

impl Vertex {
    fn from_proto(v: wire::Vertex) -> Vertex {
        Vertex {
            digest: v.digest,
            inputs: v.inputs,
            name: v.name,
            started: time(v.started),
            completed: time(v.completed),
            cached: v.cached,
            error: non_empty(v.error),
            progress_group: v.progress_group.map(|g| ProgressGroup {
                id: g.id,
                name: g.name,
                weak: g.weak,
            }),
        }
    }
}

impl VertexStatus {
    fn from_proto(s: wire::VertexStatus) -> VertexStatus {
        VertexStatus {
            id: s.id,
            vertex: s.vertex,
            name: s.name,
            total: s.total,
            current: s.current,
            timestamp: time(s.timestamp),
            started: time(s.started),
            completed: time(s.completed),
        }
    }
}

impl VertexLog {
    fn from_proto(l: wire::VertexLog) -> VertexLog {
        VertexLog {
            vertex: l.vertex,
            stream: l.stream,
            data: l.msg.into(),
            timestamp: time(l.timestamp),
        }
    }
}

impl VertexWarning {
    fn from_proto(w: wire::VertexWarning) -> VertexWarning {
        let position = |p: Option<pb::Position>| {
            p.map_or_else(SourcePosition::default, |p| SourcePosition {
                line: p.line,
                character: p.character,
            })
        };
        VertexWarning {
            vertex: w.vertex,
            level: w.level,
            short: w.short.into(),
            detail: w.detail.into_iter().map(Into::into).collect(),
            url: non_empty(w.url),
            source: w.info.map(|i| SourceInfo {
                filename: i.filename,
                data: i.data.into(),
                language: non_empty(i.language),
            }),
            ranges: w
                .ranges
                .into_iter()
                .map(|r| SourceRange {
                    start: position(r.start),
                    end: position(r.end),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn the_wire_status_converts_field_by_field() {
        let at = |seconds, nanos| Some(prost_types::Timestamp { seconds, nanos });
        let status = wire::StatusResponse {
            vertexes: vec![wire::Vertex {
                digest: "sha256:a".into(),
                inputs: vec!["sha256:b".into()],
                name: "[1/2] RUN x".into(),
                started: at(1_700_000_000, 5),
                progress_group: Some(pb::ProgressGroup {
                    id: "g".into(),
                    name: "group".into(),
                    weak: true,
                }),
                ..Default::default()
            }],
            statuses: vec![wire::VertexStatus {
                id: "transferring context".into(),
                vertex: "sha256:a".into(),
                total: 10,
                current: 4,
                // Go's zero time: what an unset non-pointer time is sent as.
                timestamp: at(-62_135_596_800, 0),
                ..Default::default()
            }],
            logs: vec![wire::VertexLog {
                vertex: "sha256:a".into(),
                stream: 2,
                msg: b"hi\n".to_vec().into(),
                timestamp: None,
            }],
            warnings: vec![wire::VertexWarning {
                vertex: "sha256:a".into(),
                level: 1,
                short: b"casing".to_vec().into(),
                detail: vec![b"d".to_vec().into()],
                info: Some(pb::SourceInfo {
                    filename: "Dockerfile".into(),
                    data: b"FROM x as b\n".to_vec().into(),
                    ..Default::default()
                }),
                ranges: vec![pb::Range {
                    start: Some(pb::Position {
                        line: 1,
                        character: 2,
                    }),
                    end: None,
                }],
                ..Default::default()
            }],
        };
        let s = SolveStatus::from_proto(status);
        let v = &s.vertexes[0];
        assert_eq!(
            v.started,
            Some(UNIX_EPOCH + Duration::new(1_700_000_000, 5))
        );
        assert_eq!((v.completed, v.error.as_deref()), (None, None));
        assert_eq!(v.inputs, vec!["sha256:b"]);
        assert!(v.progress_group.as_ref().is_some_and(|g| g.weak));
        let st = &s.statuses[0];
        assert_eq!((st.total, st.current), (10, 4));
        assert_eq!(
            st.timestamp,
            Some(UNIX_EPOCH - Duration::from_secs(62_135_596_800))
        );
        assert_eq!(
            (s.logs[0].stream, s.logs[0].data.as_slice()),
            (2, &b"hi\n"[..])
        );
        let w = &s.warnings[0];
        assert_eq!(w.short_text(), "casing");
        assert_eq!(w.url, None);
        let source = w.source.as_ref().unwrap();
        assert_eq!(
            (source.filename.as_str(), source.language.as_deref()),
            ("Dockerfile", None)
        );
        assert_eq!(
            w.ranges[0],
            SourceRange {
                start: SourcePosition {
                    line: 1,
                    character: 2
                },
                end: SourcePosition::default(),
            }
        );
        assert!(!s.is_empty());
        assert!(SolveStatus::default().is_empty());
    }
}
