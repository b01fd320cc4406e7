//! `rawjson` progress: one JSON object per status update, with buildctl's field names
//! (`vertexes`, `statuses`, `logs`, `warnings`; byte fields base64, times RFC 3339), and a
//! last one with the context transfer's counters (`context`).

use std::io::Write;
use std::time::SystemTime;

use base64::Engine as _;
use serde::Serialize;
use serde_json::Value;

use super::{
    FailureReport, ProgressSink, SolveStatus, SourcePosition, TransferSummary, Vertex, VertexLog,
    VertexStatus, VertexWarning,
};

/// JSON-lines progress written to `W`.
pub struct RawJsonProgress<W: Write + Send> {
    out: W,
}

impl<W: Write + Send> RawJsonProgress<W> {
    /// Renders to `out`.
    pub fn new(out: W) -> Self {
        RawJsonProgress { out }
    }
}

/// One status update as buildctl's `SolveStatus` marshals it. Empty fields are left out.
#[derive(Serialize)]
struct SolveStatusJson {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    vertexes: Vec<VertexJson>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    statuses: Vec<StatusJson>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    logs: Vec<LogJson>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<WarningJson>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct VertexJson {
    #[serde(skip_serializing_if = "str::is_empty")]
    digest: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    inputs: Vec<String>,
    #[serde(skip_serializing_if = "str::is_empty")]
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    started: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    completed: Option<String>,
    #[serde(skip_serializing_if = "is_false")]
    cached: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    progress_group: Option<GroupJson>,
}

#[derive(Serialize)]
struct GroupJson {
    id: String,
    name: String,
    weak: bool,
}

#[derive(Serialize)]
struct StatusJson {
    #[serde(skip_serializing_if = "str::is_empty")]
    id: String,
    #[serde(skip_serializing_if = "str::is_empty")]
    vertex: String,
    #[serde(skip_serializing_if = "str::is_empty")]
    name: String,
    #[serde(skip_serializing_if = "is_zero")]
    total: i64,
    #[serde(skip_serializing_if = "is_zero")]
    current: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    started: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    completed: Option<String>,
}

#[derive(Serialize)]
struct LogJson {
    #[serde(skip_serializing_if = "str::is_empty")]
    vertex: String,
    #[serde(skip_serializing_if = "is_zero")]
    stream: i64,
    data: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<String>,
}

/// A warning as buildctl marshals `client.VertexWarning` (bytes in base64).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WarningJson {
    #[serde(skip_serializing_if = "str::is_empty")]
    vertex: String,
    #[serde(skip_serializing_if = "is_zero")]
    level: i64,
    #[serde(skip_serializing_if = "str::is_empty")]
    short: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    detail: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_info: Option<SourceInfoJson>,
    #[serde(skip_serializing_if = "Vec::is_empty", rename = "range")]
    ranges: Vec<RangeJson>,
}

#[derive(Serialize)]
struct SourceInfoJson {
    filename: String,
    data: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    language: Option<String>,
}

#[derive(Serialize)]
struct RangeJson {
    start: PositionJson,
    end: PositionJson,
}

#[derive(Serialize, Default)]
struct PositionJson {
    line: i32,
    character: i32,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn time(t: Option<SystemTime>) -> Option<String> {
    t.map(rfc3339)
}

impl From<&Vertex> for VertexJson {
    fn from(v: &Vertex) -> Self {
        VertexJson {
            digest: v.digest.clone(),
            inputs: v.inputs.clone(),
            name: v.name.clone(),
            started: time(v.started),
            completed: time(v.completed),
            cached: v.cached,
            error: v.error.clone(),
            progress_group: v.progress_group.as_ref().map(|g| GroupJson {
                id: g.id.clone(),
                name: g.name.clone(),
                weak: g.weak,
            }),
        }
    }
}

impl From<&VertexStatus> for StatusJson {
    fn from(s: &VertexStatus) -> Self {
        StatusJson {
            id: s.id.clone(),
            vertex: s.vertex.clone(),
            name: s.name.clone(),
            total: s.total,
            current: s.current,
            timestamp: time(s.timestamp),
            started: time(s.started),
            completed: time(s.completed),
        }
    }
}

impl From<&VertexLog> for LogJson {
    fn from(l: &VertexLog) -> Self {
        LogJson {
            vertex: l.vertex.clone(),
            stream: l.stream,
            data: b64(&l.data),
            timestamp: time(l.timestamp),
        }
    }
}

impl From<&VertexWarning> for WarningJson {
    fn from(w: &VertexWarning) -> Self {
        let position = |p: &SourcePosition| PositionJson {
            line: p.line,
            character: p.character,
        };
        WarningJson {
            vertex: w.vertex.clone(),
            level: w.level,
            short: b64(&w.short),
            detail: w.detail.iter().map(|d| b64(d)).collect(),
            url: w.url.clone(),
            source_info: w.source.as_ref().map(|i| SourceInfoJson {
                filename: i.filename.clone(),
                data: b64(&i.data),
                language: i.language.clone(),
            }),
            ranges: w
                .ranges
                .iter()
                .map(|r| RangeJson {
                    start: position(&r.start),
                    end: position(&r.end),
                })
                .collect(),
        }
    }
}

/// The JSON form of one status update, as buildctl's `--progress rawjson` prints it.
pub fn status_json(status: &SolveStatus) -> Value {
    let json = SolveStatusJson {
        vertexes: status.vertexes.iter().map(VertexJson::from).collect(),
        statuses: status.statuses.iter().map(StatusJson::from).collect(),
        logs: status.logs.iter().map(LogJson::from).collect(),
        warnings: status.warnings.iter().map(WarningJson::from).collect(),
    };
    serde_json::to_value(json).unwrap_or(Value::Null)
}

/// Warnings as a JSON array, the form buildx writes to `--metadata-file` under
/// `buildx.build.warnings`.
pub fn warnings_json(warnings: &[VertexWarning]) -> Value {
    let list: Vec<WarningJson> = warnings.iter().map(WarningJson::from).collect();
    serde_json::to_value(list).unwrap_or(Value::Null)
}

/// RFC 3339 with nanoseconds in UTC, as Go's `time.Time` marshals.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    // Seconds since the epoch (negative before it) and the nanoseconds past them.
    let t = prost_types::Timestamp::from(t);
    let secs = t.seconds;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, mo, d) = civil_from_days(days);
    let (h, mi, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let mut out = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}");
    if t.nanos > 0 {
        let frac = format!("{:09}", t.nanos);
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

impl<W: Write + Send> ProgressSink for RawJsonProgress<W> {
    fn update(&mut self, status: &SolveStatus) {
        let _ = writeln!(self.out, "{}", status_json(status));
    }

    /// The last line holds the context transfer's exact counters,
    /// `{"context":{"entries":12,"files":10,"bytes":40960}}`: a key no status has, so a reader
    /// that decodes each line as a status sees an empty one.
    fn finish(&mut self, transfer: &TransferSummary, _failure: Option<&FailureReport>) {
        let line = serde_json::json!({ "context": transfer });
        let _ = writeln!(self.out, "{line}");
        let _ = self.out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buildkit::progress::{SourceInfo, SourceRange};
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn the_last_line_holds_the_exact_transfer_counters() {
        let mut out = Vec::new();
        let sent = TransferSummary {
            entries: 12,
            files: 10,
            bytes: 40_960,
        };
        RawJsonProgress::new(&mut out).finish(&sent, None);
        let line: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            line,
            serde_json::json!({"context": {"entries": 12, "files": 10, "bytes": 40_960}})
        );
    }

    #[test]
    fn times_are_rfc3339() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 120_000_000);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.12Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        // Go's zero time, which the daemon sends for a status's unset reading time.
        let zero = UNIX_EPOCH - Duration::from_secs(62_135_596_800);
        assert_eq!(rfc3339(zero), "0001-01-01T00:00:00Z");
        let before = UNIX_EPOCH - Duration::new(1, 500_000_000);
        assert_eq!(rfc3339(before), "1969-12-31T23:59:58.5Z");
    }

    #[test]
    fn warnings_carry_their_source() {
        let w = VertexWarning {
            vertex: "sha256:b".into(),
            level: 1,
            short: b"FromAsCasing: casing (line 1)".to_vec(),
            url: Some("https://docs.docker.com/go/dockerfile/rule/from-as-casing/".into()),
            source: Some(SourceInfo {
                filename: "Dockerfile".into(),
                data: b"FROM x as b\n".to_vec(),
                ..Default::default()
            }),
            ranges: vec![SourceRange {
                start: SourcePosition {
                    line: 1,
                    character: 0,
                },
                end: SourcePosition {
                    line: 1,
                    character: 0,
                },
            }],
            ..Default::default()
        };
        let v = warnings_json(std::slice::from_ref(&w));
        assert_eq!(v[0]["vertex"], "sha256:b");
        assert_eq!(v[0]["level"], 1);
        assert_eq!(v[0]["short"], b64(&w.short));
        assert_eq!(v[0]["sourceInfo"]["filename"], "Dockerfile");
        assert_eq!(v[0]["range"][0]["start"]["line"], 1);
        assert!(v[0].get("detail").is_none());
        let status = SolveStatus {
            warnings: vec![w],
            ..Default::default()
        };
        assert_eq!(status_json(&status)["warnings"], v);
    }

    #[test]
    fn json_uses_buildctl_names() {
        let status = SolveStatus {
            vertexes: vec![Vertex {
                digest: "sha256:a".into(),
                name: "[1/2] RUN x".into(),
                cached: true,
                ..Default::default()
            }],
            logs: vec![VertexLog {
                vertex: "sha256:a".into(),
                stream: 1,
                data: b"hi\n".to_vec(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let v = status_json(&status);
        assert_eq!(v["vertexes"][0]["digest"], "sha256:a");
        assert_eq!(v["vertexes"][0]["cached"], true);
        assert_eq!(v["logs"][0]["data"], "aGkK");
        assert!(v.get("statuses").is_none());
    }
}

/// The line a wire status becomes, whole: what buildctl prints for the same message.
#[cfg(test)]
mod wire_tests {
    use super::*;
    use crate::buildkit::proto::control as wire;
    use crate::buildkit::proto::pb;

    #[test]
    fn a_wire_status_prints_as_buildctl_prints_it() {
        let at = |seconds, nanos| Some(prost_types::Timestamp { seconds, nanos });
        let status = wire::StatusResponse {
            vertexes: vec![wire::Vertex {
                digest: "sha256:a".into(),
                inputs: vec!["sha256:b".into()],
                name: "[1/2] RUN x".into(),
                started: at(1_700_000_000, 120_000_000),
                completed: at(1_700_000_001, 0),
                error: "exit code: 1".into(),
                progress_group: Some(pb::ProgressGroup {
                    id: "g".into(),
                    name: "group".into(),
                    weak: false,
                }),
                ..Default::default()
            }],
            statuses: vec![wire::VertexStatus {
                id: "transferring context".into(),
                vertex: "sha256:a".into(),
                current: 4,
                timestamp: at(-62_135_596_800, 0),
                ..Default::default()
            }],
            logs: vec![wire::VertexLog {
                vertex: "sha256:a".into(),
                stream: 1,
                msg: b"hi\n".to_vec().into(),
                timestamp: at(1_700_000_000, 5),
            }],
            warnings: vec![wire::VertexWarning {
                vertex: "sha256:a".into(),
                level: 1,
                short: b"s".to_vec().into(),
                url: "https://x".into(),
                info: Some(pb::SourceInfo {
                    filename: "Dockerfile".into(),
                    data: b"FROM x\n".to_vec().into(),
                    language: "Dockerfile".into(),
                    ..Default::default()
                }),
                ranges: vec![pb::Range {
                    start: Some(pb::Position {
                        line: 1,
                        character: 0,
                    }),
                    end: None,
                }],
                ..Default::default()
            }],
        };
        let mut out = Vec::new();
        RawJsonProgress::new(&mut out).update(&SolveStatus::from_proto(status));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            concat!(
                r#"{"logs":[{"data":"aGkK","stream":1,"timestamp":"2023-11-14T22:13:20.000000005Z","vertex":"sha256:a"}],"#,
                r#""statuses":[{"current":4,"id":"transferring context","timestamp":"0001-01-01T00:00:00Z","vertex":"sha256:a"}],"#,
                r#""vertexes":[{"completed":"2023-11-14T22:13:21Z","digest":"sha256:a","error":"exit code: 1","inputs":["sha256:b"],"name":"[1/2] RUN x","progressGroup":{"id":"g","name":"group","weak":false},"started":"2023-11-14T22:13:20.12Z"}],"#,
                r#""warnings":[{"level":1,"range":[{"end":{"character":0,"line":0},"start":{"character":0,"line":1}}],"short":"cw==","sourceInfo":{"data":"RlJPTSB4Cg==","filename":"Dockerfile","language":"Dockerfile"},"url":"https://x","vertex":"sha256:a"}]}"#,
                "\n"
            )
        );
    }
}
