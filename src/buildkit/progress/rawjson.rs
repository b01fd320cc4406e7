//! `rawjson` progress: one JSON object per status update, with buildctl's field names
//! (`vertexes`, `statuses`, `logs`, `warnings`; byte fields base64, times RFC 3339).

use std::io::Write;

use base64::Engine as _;
use serde_json::{Map, Value, json};

use super::{FailureReport, ProgressSink, TransferSummary};
use crate::buildkit::proto::control::StatusResponse;

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

/// The JSON form of one status update, as buildctl's `--progress rawjson` prints it.
pub fn status_json(status: &StatusResponse) -> Value {
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let mut root = Map::new();
    if !status.vertexes.is_empty() {
        let vertexes: Vec<Value> = status
            .vertexes
            .iter()
            .map(|v| {
                let mut m = Map::new();
                put_str(&mut m, "digest", &v.digest);
                if !v.inputs.is_empty() {
                    m.insert("inputs".into(), json!(v.inputs));
                }
                put_str(&mut m, "name", &v.name);
                put_time(&mut m, "started", v.started.as_ref());
                put_time(&mut m, "completed", v.completed.as_ref());
                if v.cached {
                    m.insert("cached".into(), json!(true));
                }
                put_str(&mut m, "error", &v.error);
                if let Some(g) = &v.progress_group {
                    m.insert(
                        "progressGroup".into(),
                        json!({"id": g.id, "name": g.name, "weak": g.weak}),
                    );
                }
                Value::Object(m)
            })
            .collect();
        root.insert("vertexes".into(), Value::Array(vertexes));
    }
    if !status.statuses.is_empty() {
        let statuses: Vec<Value> = status
            .statuses
            .iter()
            .map(|s| {
                let mut m = Map::new();
                put_str(&mut m, "id", &s.id);
                put_str(&mut m, "vertex", &s.vertex);
                put_str(&mut m, "name", &s.name);
                if s.total != 0 {
                    m.insert("total".into(), json!(s.total));
                }
                if s.current != 0 {
                    m.insert("current".into(), json!(s.current));
                }
                put_time(&mut m, "timestamp", s.timestamp.as_ref());
                put_time(&mut m, "started", s.started.as_ref());
                put_time(&mut m, "completed", s.completed.as_ref());
                Value::Object(m)
            })
            .collect();
        root.insert("statuses".into(), Value::Array(statuses));
    }
    if !status.logs.is_empty() {
        let logs: Vec<Value> = status
            .logs
            .iter()
            .map(|l| {
                let mut m = Map::new();
                put_str(&mut m, "vertex", &l.vertex);
                if l.stream != 0 {
                    m.insert("stream".into(), json!(l.stream));
                }
                m.insert("data".into(), json!(b64(&l.msg)));
                put_time(&mut m, "timestamp", l.timestamp.as_ref());
                Value::Object(m)
            })
            .collect();
        root.insert("logs".into(), Value::Array(logs));
    }
    if !status.warnings.is_empty() {
        let warnings: Vec<Value> = status
            .warnings
            .iter()
            .map(|w| {
                let mut m = Map::new();
                put_str(&mut m, "vertex", &w.vertex);
                if w.level != 0 {
                    m.insert("level".into(), json!(w.level));
                }
                if !w.short.is_empty() {
                    m.insert("short".into(), json!(b64(&w.short)));
                }
                if !w.detail.is_empty() {
                    let d: Vec<String> = w.detail.iter().map(|d| b64(d)).collect();
                    m.insert("detail".into(), json!(d));
                }
                put_str(&mut m, "url", &w.url);
                if let Some(info) = &w.info {
                    m.insert(
                        "sourceInfo".into(),
                        json!({"filename": info.filename, "data": b64(&info.data), "language": info.language}),
                    );
                }
                if !w.ranges.is_empty() {
                    let r: Vec<Value> = w
                        .ranges
                        .iter()
                        .map(|r| {
                            let pos = |p: &Option<crate::buildkit::proto::pb::Position>| {
                                p.as_ref().map_or(json!({}), |p| {
                                    json!({"line": p.line, "character": p.character})
                                })
                            };
                            json!({"start": pos(&r.start), "end": pos(&r.end)})
                        })
                        .collect();
                    m.insert("range".into(), json!(r));
                }
                Value::Object(m)
            })
            .collect();
        root.insert("warnings".into(), Value::Array(warnings));
    }
    Value::Object(root)
}

fn put_str(m: &mut Map<String, Value>, key: &str, value: &str) {
    if !value.is_empty() {
        m.insert(key.into(), Value::String(value.to_owned()));
    }
}

fn put_time(m: &mut Map<String, Value>, key: &str, t: Option<&prost_types::Timestamp>) {
    if let Some(t) = t {
        m.insert(key.into(), Value::String(rfc3339(t)));
    }
}

/// RFC 3339 with nanoseconds in UTC, as Go's `time.Time` marshals.
pub(crate) fn rfc3339(t: &prost_types::Timestamp) -> String {
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
fn civil_from_days(z: i64) -> (i64, u32, u32) {
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
    fn update(&mut self, status: &StatusResponse) {
        let _ = writeln!(self.out, "{}", status_json(status));
    }

    fn finish(&mut self, _transfer: &TransferSummary, _failure: Option<&FailureReport>) {
        let _ = self.out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buildkit::proto::control::{Vertex, VertexLog};

    #[test]
    fn times_are_rfc3339() {
        let t = prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 120_000_000,
        };
        assert_eq!(rfc3339(&t), "2023-11-14T22:13:20.12Z");
        assert_eq!(
            rfc3339(&prost_types::Timestamp {
                seconds: 0,
                nanos: 0
            }),
            "1970-01-01T00:00:00Z"
        );
    }

    #[test]
    fn json_uses_buildctl_names() {
        let status = StatusResponse {
            vertexes: vec![Vertex {
                digest: "sha256:a".into(),
                name: "[1/2] RUN x".into(),
                cached: true,
                ..Default::default()
            }],
            logs: vec![VertexLog {
                vertex: "sha256:a".into(),
                stream: 1,
                msg: "hi\n".into(),
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
