//! One build as the daemon's history keeps it, in types of the crate's own: what `history ls`
//! and `history inspect` show, and what an export archive holds as JSON.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::buildkit::proto::control as pb;
use crate::buildkit::status::{RpcCode, RpcStatus};

/// A finished or running build of the daemon's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BuildRecord {
    /// The build's ref: the id the client gave its Solve.
    #[serde(rename = "ref")]
    pub reference: String,
    /// The frontend that ran it (`dockerfile.v0`), empty for an LLB definition.
    pub frontend: String,
    /// The frontend's attributes: `filename`, `target`, `build-arg:*`, `platform`, …
    pub frontend_attrs: BTreeMap<String, String>,
    /// The exporters it ran, in order.
    pub exporters: Vec<ExporterRecord>,
    /// Why it failed; `None` for a build that succeeded or still runs.
    pub error: Option<RecordError>,
    /// When it started.
    #[serde(with = "rfc3339_opt")]
    pub created_at: Option<SystemTime>,
    /// When it ended; `None` while it runs.
    #[serde(with = "rfc3339_opt")]
    pub completed_at: Option<SystemTime>,
    /// Its progress stream, a blob of the daemon's content store.
    pub logs: Option<BlobDescriptor>,
    /// What its exporters answered (`containerimage.digest`, `image.name`, …).
    pub exporter_response: BTreeMap<String, String>,
    /// Provenance, SBOM and result manifests, per platform when the build had several.
    pub attachments: Vec<Attachment>,
    /// How many times the record was rewritten (a trace added, …).
    pub generation: i32,
    /// Its OpenTelemetry trace, a blob.
    pub trace: Option<BlobDescriptor>,
    /// Kept by the daemon's history cleanup.
    pub pinned: bool,
    /// Step counts.
    pub steps: StepCounts,
    /// The whole error of a failed build (its Dockerfile lines and failing step), a blob.
    pub external_error: Option<BlobDescriptor>,
    /// How many warnings the build had.
    pub warnings: i32,
}

/// One exporter of a build: its type and attributes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ExporterRecord {
    /// `image`, `local`, `tar`, `oci`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// Its attributes (`name`, `push`, …).
    pub attrs: BTreeMap<String, String>,
}

/// The error a record keeps: the gRPC code and message of the failed Solve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RecordError {
    /// The gRPC status code, as a number (2: unknown, 1: cancelled).
    pub code: i32,
    /// The daemon's message, as the Solve returned it.
    pub message: String,
    /// The whole `google.rpc.Status`, details included (the Dockerfile lines, the failing
    /// step), protobuf in base64, when the record carries them itself: daemons before
    /// external error blobs ([`BuildRecord::external_error`]) kept them here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
}

impl RecordError {
    /// The status in the crate's own types.
    pub fn status(&self) -> RpcStatus {
        RpcStatus::new(code_of(self.code), self.message.clone())
    }
}

/// A blob of the daemon's content store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BlobDescriptor {
    /// What the blob holds, e.g. `application/vnd.buildkit.status.v0`.
    pub media_type: String,
    /// Its digest, `sha256:…`.
    pub digest: String,
    /// Its size in bytes.
    pub size: i64,
    /// OCI annotations (an attestation's `in-toto.io/predicate-type`, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A blob a build produced beside its result: an attestation (provenance, SBOM) or a result
/// manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Attachment {
    /// The platform it belongs to (`linux/arm64`), for a build of several.
    pub platform: Option<String>,
    /// What it is: an attestation's predicate type (`https://slsa.dev/provenance/v1`), else
    /// its media type.
    #[serde(rename = "type")]
    pub kind: String,
    /// The blob.
    pub descriptor: BlobDescriptor,
}

/// How many steps a build had, and how they ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StepCounts {
    /// Steps the cache answered.
    pub cached: i32,
    /// Every step.
    pub total: i32,
    /// Steps that finished (cached ones included).
    pub completed: i32,
}

/// Where a build stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum BuildStatus {
    /// Still building.
    Running,
    /// Succeeded.
    Completed,
    /// Failed.
    Failed,
    /// Cancelled before it ended.
    Canceled,
}

impl BuildStatus {
    /// `running`, `completed`, `failed` or `canceled`, as `history ls` shows it and
    /// `--filter status=` names it.
    pub fn as_str(self) -> &'static str {
        match self {
            BuildStatus::Running => "running",
            BuildStatus::Completed => "completed",
            BuildStatus::Failed => "failed",
            BuildStatus::Canceled => "canceled",
        }
    }

    /// Every status, in the order above.
    pub const ALL: [BuildStatus; 4] = [
        BuildStatus::Running,
        BuildStatus::Completed,
        BuildStatus::Failed,
        BuildStatus::Canceled,
    ];
}

impl std::fmt::Display for BuildStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for BuildStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BuildStatus::ALL
            .into_iter()
            .find(|b| b.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown build status {s:?}: expected running, completed, failed or canceled"
                )
            })
    }
}

impl BuildRecord {
    /// Where the build stands: running until it has an end time; then failed or canceled
    /// when it has an error (a cancelled Solve's error says `context canceled`).
    pub fn status(&self) -> BuildStatus {
        match (&self.completed_at, &self.error) {
            (None, _) => BuildStatus::Running,
            (Some(_), None) => BuildStatus::Completed,
            (Some(_), Some(e))
                if e.code == tonic::Code::Cancelled as i32
                    || e.message.ends_with("context canceled") =>
            {
                BuildStatus::Canceled
            }
            (Some(_), Some(_)) => BuildStatus::Failed,
        }
    }

    /// How long it took, or has run until `now` while it runs.
    pub fn duration(&self, now: SystemTime) -> Option<Duration> {
        let start = self.created_at?;
        self.completed_at.unwrap_or(now).duration_since(start).ok()
    }

    /// A short name for people: the `BUILDKIT_BUILD_NAME` build argument when given; else
    /// the context's directory and, when not `Dockerfile`, the Dockerfile's name, and the
    /// target in parentheses; else the frontend (an LLB definition has none).
    pub fn name(&self) -> String {
        let attrs = &self.frontend_attrs;
        if let Some(name) = attrs
            .get("build-arg:BUILDKIT_BUILD_NAME")
            .filter(|n| !n.is_empty())
        {
            return name.clone();
        }
        let context = attrs
            .get("vcs:localdir:context")
            .or_else(|| attrs.get("context"))
            .filter(|c| !c.is_empty() && c.as_str() != ".");
        let dockerfile = attrs
            .get("filename")
            .filter(|f| !f.is_empty() && f.as_str() != "Dockerfile");
        let mut name = match (context, dockerfile) {
            (Some(c), Some(f)) => format!("{c}/{f}"),
            (Some(c), None) => c.clone(),
            (None, Some(f)) => f.clone(),
            (None, None) => String::new(),
        };
        if let Some(target) = attrs.get("target").filter(|t| !t.is_empty()) {
            if name.is_empty() {
                name.clone_from(target);
            } else {
                name = format!("{name} ({target})");
            }
        }
        if name.is_empty() {
            name = if self.frontend.is_empty() {
                "LLB definition".to_owned()
            } else {
                self.frontend.clone()
            };
        }
        name
    }

    /// The platforms it built for (`platform` attribute), when it named any.
    pub fn platforms(&self) -> Vec<String> {
        self.frontend_attrs
            .get("platform")
            .map(|p| {
                p.split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The frontend attributes under `prefix` (`build-arg:`, `label:`), the prefix removed.
    pub fn attrs_under(&self, prefix: &str) -> BTreeMap<String, String> {
        self.frontend_attrs
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.to_owned(), v.clone())))
            .collect()
    }

    /// Every blob the record names: logs, trace, external error and attachments.
    pub fn blobs(&self) -> Vec<&BlobDescriptor> {
        self.logs
            .iter()
            .chain(self.trace.iter())
            .chain(self.external_error.iter())
            .chain(self.attachments.iter().map(|a| &a.descriptor))
            .collect()
    }
}

impl From<pb::BuildHistoryRecord> for BuildRecord {
    fn from(r: pb::BuildHistoryRecord) -> Self {
        let mut attachments = Vec::new();
        if let Some(result) = r.result {
            attachments.extend(attachments_of(None, result));
        }
        for (platform, result) in r.results {
            attachments.extend(attachments_of(Some(platform), result));
        }
        BuildRecord {
            reference: r.r#ref,
            frontend: r.frontend,
            frontend_attrs: r.frontend_attrs.into_iter().collect(),
            exporters: r
                .exporters
                .into_iter()
                .map(|e| ExporterRecord {
                    kind: e.r#type,
                    attrs: e.attrs.into_iter().collect(),
                })
                .collect(),
            error: r.error.map(|e| RecordError {
                code: e.code,
                details: (!e.details.is_empty()).then(|| {
                    base64::engine::general_purpose::STANDARD
                        .encode(prost::Message::encode_to_vec(&e))
                }),
                message: e.message,
            }),
            created_at: r.created_at.as_ref().and_then(system_time),
            completed_at: r.completed_at.as_ref().and_then(system_time),
            logs: r.logs.map(BlobDescriptor::from),
            exporter_response: r.exporter_response.into_iter().collect(),
            attachments,
            generation: r.generation,
            trace: r.trace.map(BlobDescriptor::from),
            pinned: r.pinned,
            steps: StepCounts {
                cached: r.num_cached_steps,
                total: r.num_total_steps,
                completed: r.num_completed_steps,
            },
            external_error: r.external_error.map(BlobDescriptor::from),
            warnings: r.num_warnings,
        }
    }
}

impl From<pb::Descriptor> for BlobDescriptor {
    fn from(d: pb::Descriptor) -> Self {
        BlobDescriptor {
            media_type: d.media_type,
            digest: d.digest,
            size: d.size,
            annotations: d.annotations.into_iter().collect(),
        }
    }
}

/// The attestations and result manifests of one result, typed by their predicate type when
/// they have one (buildx's order: by platform, then type).
fn attachments_of(platform: Option<String>, result: pb::BuildResultInfo) -> Vec<Attachment> {
    let descriptors = result
        .attestations
        .into_iter()
        .chain(result.results.into_values())
        .chain(result.result_deprecated);
    let mut out: Vec<Attachment> = descriptors
        .map(BlobDescriptor::from)
        .map(|descriptor| Attachment {
            platform: platform.clone(),
            kind: descriptor
                .annotations
                .get("in-toto.io/predicate-type")
                .unwrap_or(&descriptor.media_type)
                .clone(),
            descriptor,
        })
        .collect();
    out.sort_by(|a, b| a.kind.cmp(&b.kind));
    out
}

fn code_of(code: i32) -> RpcCode {
    RpcCode::from(tonic::Code::from_i32(code))
}

/// A protobuf timestamp as a time, `None` before the epoch or out of range.
pub(crate) fn system_time(t: &prost_types::Timestamp) -> Option<SystemTime> {
    let seconds = u64::try_from(t.seconds).ok()?;
    let nanos = u32::try_from(t.nanos).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(seconds, nanos))
}

/// A time as RFC 3339 in UTC, as Go marshals it: `2026-12-07T09:43:46.123456789Z`.
pub fn rfc3339(t: SystemTime) -> String {
    crate::buildkit::progress::rfc3339(t)
}

/// A time in UTC as people read it, `2026-12-07 09:43:46 UTC`.
pub fn utc_text(t: SystemTime) -> String {
    let seconds = i64::try_from(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs())
        .unwrap_or(i64::MAX);
    let (year, month, day) = crate::buildkit::progress::civil_from_days(seconds.div_euclid(86_400));
    let rest = seconds.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// Parses what [`rfc3339`] writes (UTC, `Z`, up to nanoseconds).
fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut d = date.splitn(3, '-').map(str::parse::<i64>);
    let (year, month, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (clock, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut c = clock.splitn(3, ':').map(str::parse::<u64>);
    let (h, m, s) = (c.next()?.ok()?, c.next()?.ok()?, c.next()?.ok()?);
    let nanos: u32 = if fraction.is_empty() {
        0
    } else {
        let digits = &fraction[..fraction.len().min(9)];
        digits.parse::<u32>().ok()? * 10u32.pow(9 - u32::try_from(digits.len()).ok()?)
    };
    // civil-to-days, the inverse of the above.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(days * 86_400 + h * 3600 + m * 60 + s, nanos))
}

/// Optional times as RFC 3339 strings in JSON.
mod rfc3339_opt {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_some(&super::rfc3339(*t)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(text) => super::parse_rfc3339(&text)
                .map(Some)
                .ok_or_else(|| serde::de::Error::custom(format!("not an RFC 3339 time: {text}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_through_rfc3339() {
        let t = UNIX_EPOCH + Duration::new(1_796_636_626, 123_456_789);
        assert_eq!(rfc3339(t), "2026-12-07T09:43:46.123456789Z");
        assert_eq!(utc_text(t), "2026-12-07 09:43:46 UTC");
        assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t));
        assert_eq!(
            parse_rfc3339("2000-02-29T00:00:00Z"),
            Some(UNIX_EPOCH + Duration::from_secs(951_782_400))
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    fn record(attrs: &[(&str, &str)]) -> BuildRecord {
        BuildRecord::from(pb::BuildHistoryRecord {
            r#ref: "r".into(),
            frontend: "dockerfile.v0".into(),
            frontend_attrs: attrs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Default::default()
        })
    }

    #[test]
    fn names_come_from_the_build_name_context_dockerfile_and_target() {
        assert_eq!(record(&[]).name(), "dockerfile.v0");
        assert_eq!(
            record(&[("vcs:localdir:context", "app"), ("filename", "Dockerfile")]).name(),
            "app"
        );
        assert_eq!(
            record(&[
                ("vcs:localdir:context", "app"),
                ("filename", "Build.dockerfile"),
                ("target", "final")
            ])
            .name(),
            "app/Build.dockerfile (final)"
        );
        assert_eq!(record(&[("target", "final")]).name(), "final");
        assert_eq!(
            record(&[
                ("build-arg:BUILDKIT_BUILD_NAME", "web"),
                ("vcs:localdir:context", "app")
            ])
            .name(),
            "web"
        );
    }

    #[test]
    fn status_follows_the_end_time_and_the_error() {
        let mut r = record(&[]);
        assert_eq!(r.status(), BuildStatus::Running);
        r.completed_at = Some(UNIX_EPOCH);
        assert_eq!(r.status(), BuildStatus::Completed);
        r.error = Some(RecordError {
            details: None,
            code: 2,
            message: "process \"/bin/sh -c false\" did not complete successfully".into(),
        });
        assert_eq!(r.status(), BuildStatus::Failed);
        r.error = Some(RecordError {
            details: None,
            code: 1,
            message: "context canceled".into(),
        });
        assert_eq!(r.status(), BuildStatus::Canceled);
        assert_eq!("failed".parse::<BuildStatus>(), Ok(BuildStatus::Failed));
        assert!("error".parse::<BuildStatus>().is_err());
    }
}
