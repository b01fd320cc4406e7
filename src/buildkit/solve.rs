//! A build on one BuildKit: [`BuildOptions`] become a `SolveRequest`, for the `dockerfile.v0`
//! frontend or for an LLB definition the caller marshalled, run together with a session and the
//! status stream.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine as _;
use futures_util::StreamExt;
use prost::Message;

use super::Client;
pub use super::build_error::BuildError;
pub use super::options::{BuildOptions, new_build_ref};
use super::progress::{
    FailureReport, ProgressSink, SolveStatus, SourceSnippet, TransferSummary, VertexWarning,
};
use super::proto::control::StatusRequest;
use super::proto::google::rpc::Status as GoogleStatus;
use super::session::{Session, SessionOptions};
use super::stores::{BuildStores, RollbackOnDrop};

/// After Solve returns, how long the status stream may stay silent before we stop waiting
/// for its end (buildctl's value).
const STATUS_DRAIN: Duration = Duration::from_secs(5);

/// What a finished build produced.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct BuildResult {
    /// The build's ref (its id in the daemon's history).
    pub reference: String,
    /// The exporters' response (`containerimage.digest`, `image.name`, …).
    pub exporter_response: BTreeMap<String, String>,
    /// What this client sent of the build context (the Dockerfile's own transfer excluded).
    pub transfer: TransferSummary,
    /// The daemon's warnings (Dockerfile checks and others), in the order they came.
    pub warnings: Vec<VertexWarning>,
}

impl Client {
    /// Runs a build (a Dockerfile's, or an LLB definition's): opens a session serving the
    /// context or locals, secrets and exports,
    /// sends the Solve, and feeds the status stream to `progress`. Dropping the future
    /// cancels the build on the daemon.
    ///
    /// # Errors
    /// [`BuildError::Invalid`] for options that fail [`BuildOptions::validate`];
    /// [`BuildError::Failed`] when the build fails; [`BuildError::Rpc`] when the daemon cannot
    /// be reached.
    #[tracing::instrument(skip_all, fields(endpoint = %self.endpoint(), context = %options.context.display()))]
    pub async fn build(
        &self,
        options: &BuildOptions,
        progress: &mut dyn ProgressSink,
    ) -> Result<BuildResult, BuildError> {
        // Reading secrets, statting destinations, the Docker config and the node id are file
        // work: a slow disk or network file system must not stall the runtime's threads.
        let (options, stores, session_options) = {
            let options = options.clone();
            crate::files::off_runtime(move || prepare(&options)).await?
        };
        let options = &options;
        // From here on, whatever ends the build takes back what it wrote to the stores.
        let stores = Arc::new(stores);
        let _rollback = RollbackOnDrop(stores.clone());
        let session = Session::start(self, session_options);
        let reference = options.reference.clone().unwrap_or_else(new_build_ref);
        let request = options.solve_request(&reference, session.id());
        tracing::debug!(reference, session = session.id(), "solving");

        let mut control = self.control();
        let solve = async move { control.solve(request).await };
        let mut status_control = self.control();
        let status_ref = reference.clone();
        let (status_tx, mut status_rx) = tokio::sync::mpsc::channel(64);
        // The status stream runs beside Solve; it ends on its own after the build.
        let status_task = tokio::spawn(async move {
            let Ok(response) = status_control
                .status(StatusRequest { r#ref: status_ref })
                .await
            else {
                return;
            };
            let mut stream = response.into_inner();
            while let Some(Ok(update)) = stream.next().await {
                if status_tx
                    .send(SolveStatus::from_proto(update))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        // Stops the status task when the build is cancelled (this future dropped).
        let _status_guard = tokio_util::task::AbortOnDropHandle::new(status_task);

        tokio::pin!(solve);
        let mut ticker = tokio::time::interval(Duration::from_millis(150));
        let mut status_open = true;
        let mut warnings = Vec::new();
        let solved = loop {
            tokio::select! {
                result = &mut solve => break result,
                update = status_rx.recv(), if status_open => match update {
                    Some(update) => {
                        warnings.extend(update.warnings.iter().cloned());
                        progress.update(&update);
                    }
                    None => status_open = false,
                },
                _ = ticker.tick() => progress.tick(),
            }
        };
        // Drain the rest of the status stream (the final vertex states) briefly.
        while status_open {
            match tokio::time::timeout(STATUS_DRAIN, status_rx.recv()).await {
                Ok(Some(update)) => {
                    warnings.extend(update.warnings.iter().cloned());
                    progress.update(&update);
                }
                _ => status_open = false,
            }
        }
        let transfer = session
            .stats("context")
            .map(|stats| TransferSummary {
                entries: stats.entries.load(Ordering::Relaxed),
                files: stats.files.load(Ordering::Relaxed),
                bytes: stats.bytes.load(Ordering::Relaxed),
            })
            .unwrap_or_default();
        let session_failure = session.failure();
        // The Solve has returned, so every export stream has ended: the files received are
        // all staged. Out of the session they go, to await the verdict; then it ends.
        let staged = session.take_staged_exports();
        session.close();
        match solved {
            Ok(response) => {
                let exporter_response: BTreeMap<String, String> = response
                    .into_inner()
                    .exporter_response
                    .into_iter()
                    .collect();
                // Only now, with the Solve's verdict in, do results appear at their
                // destinations: index.json entries first, then exported files.
                let finish = {
                    let (stores, response) = (stores.clone(), exporter_response.clone());
                    crate::files::off_runtime(move || stores.finish(&response))
                };
                finish.await?;
                crate::files::off_runtime(move || staged.place())
                    .await
                    .map_err(|(path, source)| BuildError::PlaceOutput { path, source })?;
                progress.finish(&transfer, None);
                Ok(BuildResult {
                    reference,
                    exporter_response,
                    transfer,
                    warnings,
                })
            }
            Err(status) => {
                // Nothing of a failed build stays in the user's layout directories.
                stores.rollback();
                if let Some((path, source)) = stores.take_failure() {
                    // The progress view's last words: the error and its cause as text.
                    let report = FailureReport {
                        message: format!("cannot write to OCI layout {}: {source}", path.display()),
                        ..Default::default()
                    };
                    progress.finish(&transfer, Some(&report));
                    return Err(BuildError::Store { path, source });
                }
                let mut report = failure_report(&status);
                // The session's end, unless the failure already says the same.
                if let Some(reason) = session_failure
                    && !report.message.contains(&reason)
                {
                    report.message = format!("{} (session: {reason})", report.message);
                }
                progress.finish(&transfer, Some(&report));
                if is_transport_failure(&status) {
                    return Err(BuildError::Rpc(super::Error::rpc(
                        self.endpoint(),
                        "Solve",
                        status,
                    )));
                }
                Err(BuildError::Failed {
                    report,
                    status: super::RpcStatus::from(&status),
                })
            }
        }
    }
}

/// The blocking part of starting a build: checks the options, opens the stores and reads
/// what the session serves.
fn prepare(
    options: &BuildOptions,
) -> Result<(BuildOptions, BuildStores, SessionOptions), BuildError> {
    options.validate()?;
    let (options, stores) = BuildStores::prepare(options)?;
    let mut session_options = options.session_options()?;
    session_options.content_stores = stores.by_id.clone();
    Ok((options, stores, session_options))
}

/// A Solve that ended because of the connection (or a peer without Solve), not because the
/// build failed: told by the status's typed source, never by its text.
fn is_transport_failure(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unimplemented
        || !matches!(super::error::classify(status), super::error::Cause::Daemon)
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct SourceDetail {
    info: Option<SourceInfoJson>,
    ranges: Vec<RangeJson>,
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct SourceInfoJson {
    filename: String,
    data: String,
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct RangeJson {
    start: PositionJson,
    end: PositionJson,
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct PositionJson {
    line: i64,
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct VertexDetail {
    digest: String,
}

/// Reads BuildKit's error details: the failing step (`errdefs.Vertex`) and the Dockerfile
/// lines (`errdefs.Source`), whose values are JSON despite the protobuf envelope.
pub(crate) fn failure_report(status: &tonic::Status) -> FailureReport {
    let message = super::error::describe_status(status);
    match GoogleStatus::decode(status.details()) {
        Ok(details) => report_from_details(message, &details.details),
        Err(_) => FailureReport {
            message,
            ..Default::default()
        },
    }
}

/// The report of a failure whose `google.rpc.Status` details are `details`: the live Solve's
/// status, or a history record's error blob.
pub(crate) fn report_from_details(message: String, details: &[prost_types::Any]) -> FailureReport {
    let mut report = FailureReport {
        message,
        ..Default::default()
    };
    for any in details {
        if any.type_url.ends_with("errdefs.Source+json") {
            let Ok(source) = serde_json::from_slice::<SourceDetail>(&any.value) else {
                continue;
            };
            // Every range gets its snippet: several files, named contexts.
            if let Some(snippet) = source_snippet(&source) {
                report.sources.push(snippet);
            }
        } else if any.type_url.ends_with("errdefs.Vertex+json")
            && let Ok(v) = serde_json::from_slice::<VertexDetail>(&any.value)
            && !v.digest.is_empty()
        {
            report.vertex = Some(v.digest);
        }
    }
    report
}

fn source_snippet(source: &SourceDetail) -> Option<SourceSnippet> {
    let info = source.info.as_ref()?;
    let data = base64::engine::general_purpose::STANDARD
        .decode(info.data.as_bytes())
        .ok()?;
    let line = |n: i64| u32::try_from(n).unwrap_or(0);
    let ranges: Vec<(u32, u32)> = source
        .ranges
        .iter()
        .map(|r| (line(r.start.line), line(r.end.line)))
        .collect();
    SourceSnippet::new(&info.filename, &String::from_utf8_lossy(&data), &ranges)
}

/// Writes the exporter response as a JSON object to `path` (through a temporary file, so a
/// reader never sees half of it). `containerimage.descriptor` is decoded from base64 into
/// JSON, as buildctl does. Warnings go under `buildx.build.warnings`, as buildx writes them.
///
/// # Errors
/// The I/O error writing the file.
pub fn write_metadata_file(
    path: &Path,
    response: &BTreeMap<String, String>,
    warnings: &[VertexWarning],
) -> std::io::Result<()> {
    let mut out: HashMap<&str, serde_json::Value> = HashMap::new();
    if !warnings.is_empty() {
        out.insert(
            "buildx.build.warnings",
            super::progress::warnings_json(warnings),
        );
    }
    for (k, v) in response {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(v.as_bytes())
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .filter(|j| j.is_object());
        let value = match decoded {
            Some(json) if k.ends_with(".descriptor") || k == "containerimage.descriptor" => json,
            _ => serde_json::Value::String(v.clone()),
        };
        out.insert(k, value);
    }
    let sorted: BTreeMap<_, _> = out.into_iter().collect();
    let text = serde_json::to_vec_pretty(&sorted).map_err(std::io::Error::other)?;
    crate::files::write_atomically(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buildkit::invalid::{DestinationProblem, InvalidOptions};
    use crate::buildkit::oci_layout::LayoutError;
    use crate::buildkit::output::{Cache, CacheDirection};
    use crate::buildkit::proto::pb::Definition;
    use crate::buildkit::session::{ExportTarget, SecretSource};
    use crate::registry::Platform;
    use std::path::PathBuf;

    fn options() -> BuildOptions {
        let mut o = BuildOptions::new("/ctx");
        o.dockerfile = Some(PathBuf::from("/df/Build.dockerfile"));
        o.target = Some("final".into());
        o.build_args.insert("A".into(), "1".into());
        o.labels.insert("org.x".into(), "y".into());
        o.platforms = vec![
            Platform::new("linux", "amd64"),
            "linux/arm64".parse().unwrap(),
        ];
        o.no_cache = true;
        o.outputs.push("type=tar,dest=/out/a.tar".parse().unwrap());
        o.outputs
            .push("type=image,name=r/x:1,push=true".parse().unwrap());
        o.cache_imports
            .push(Cache::parse("type=registry,ref=r/c", CacheDirection::Import).unwrap());
        o.frontend_attrs
            .insert("force-network-mode".into(), "none".into());
        o
    }

    /// The `io::Error` somewhere under `err`.
    fn io_cause<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
        let mut next = Some(err);
        while let Some(e) = next {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                return Some(io);
            }
            next = e.source();
        }
        None
    }

    /// A context directory with a Dockerfile, and options for it.
    fn valid() -> (tempfile::TempDir, BuildOptions) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        let mut o = BuildOptions::new(dir.path());
        o.registry_auth = false;
        (dir, o)
    }

    #[test]
    fn a_missing_dockerfile_is_named_with_its_io_error() {
        let (dir, mut o) = valid();
        let missing = dir.path().join("nope/Dockerfile");
        o.dockerfile = Some(missing.clone());
        let err = o.validate().unwrap_err();
        let BuildError::Invalid(InvalidOptions::Dockerfile { path, source }) = &err else {
            panic!("{err:?}");
        };
        assert_eq!(path, &missing);
        assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        assert_eq!(
            io_cause(&err).map(std::io::Error::kind),
            Some(std::io::ErrorKind::NotFound)
        );
        assert_eq!(
            err.to_string(),
            format!("cannot read the Dockerfile {}", missing.display())
        );
    }

    #[test]
    fn a_file_output_in_a_missing_directory_keeps_the_io_error() {
        let (dir, mut o) = valid();
        let dest = dir.path().join("no-such-dir/out.tar");
        o.outputs
            .push(format!("type=tar,dest={}", dest.display()).parse().unwrap());
        let err = o.validate().unwrap_err();
        let BuildError::Invalid(InvalidOptions::OutputDestination { path, problem }) = &err else {
            panic!("{err:?}");
        };
        assert_eq!(path, &dest);
        let DestinationProblem::Parent { parent, .. } = problem else {
            panic!("{problem:?}");
        };
        assert_eq!(parent, &dir.path().join("no-such-dir"));
        assert_eq!(
            io_cause(&err).map(std::io::Error::kind),
            Some(std::io::ErrorKind::NotFound)
        );
        assert!(!err.to_string().contains("--"), "{err}");
    }

    #[test]
    fn output_destinations_of_the_wrong_kind_say_which() {
        let (dir, mut o) = valid();
        let file = dir.path().join("Dockerfile");
        o.outputs.push(
            format!("type=local,dest={}", file.display())
                .parse()
                .unwrap(),
        );
        let err = o.validate().unwrap_err();
        assert!(
            matches!(
                &err,
                BuildError::Invalid(InvalidOptions::OutputDestination {
                    problem: DestinationProblem::NotADirectory,
                    ..
                })
            ),
            "{err:?}"
        );
        o.outputs = vec![
            format!("type=tar,dest={}", dir.path().display())
                .parse()
                .unwrap(),
        ];
        let err = o.validate().unwrap_err();
        let BuildError::Invalid(InvalidOptions::OutputDestination {
            problem: DestinationProblem::IsADirectory { kind },
            ..
        }) = &err
        else {
            panic!("{err:?}");
        };
        assert_eq!(kind, "tar");
    }

    #[test]
    fn a_cache_destination_that_is_a_file_is_a_typed_store_error() {
        let (dir, mut o) = valid();
        let file = dir.path().join("Dockerfile");
        o.cache_exports.push(
            Cache::parse(
                &format!("type=local,dest={}", file.display()),
                CacheDirection::Export,
            )
            .unwrap(),
        );
        o.validate().unwrap();
        let err = BuildStores::prepare(&o).unwrap_err();
        let InvalidOptions::Store { role, path, source } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(role, &crate::buildkit::StoreRole::CacheExport);
        assert_eq!(path, &file);
        assert!(
            matches!(source, LayoutError::NotADirectory { .. }),
            "{source:?}"
        );
        assert_eq!(err.to_string(), "cannot use the cache export destination");
        assert_eq!(
            source.to_string(),
            format!("{} is not a directory", file.display())
        );
        assert_eq!(std::fs::read(&file).unwrap(), b"FROM scratch\n");
    }

    #[test]
    fn an_unreadable_secret_keeps_its_io_error_and_never_its_value() {
        let (dir, mut o) = valid();
        let missing = dir.path().join("token");
        o.secrets
            .insert("tok".into(), SecretSource::File(missing.clone()));
        let err = o.validate().unwrap_err();
        let BuildError::Invalid(InvalidOptions::Secret { id, source }) = &err else {
            panic!("{err:?}");
        };
        assert_eq!(id, "tok");
        assert!(
            matches!(source, super::super::session::SecretError::Unreadable { path, .. } if path == &missing),
            "{source:?}"
        );
        assert_eq!(
            io_cause(&err).map(std::io::Error::kind),
            Some(std::io::ErrorKind::NotFound)
        );
    }

    #[test]
    fn request_carries_attrs_exporters_and_caches() {
        let req = options().solve_request("ref1", "sess1");
        assert_eq!(req.frontend, "dockerfile.v0");
        assert_eq!(req.session, "sess1");
        let a = &req.frontend_attrs;
        assert_eq!(a["filename"], "Build.dockerfile");
        assert_eq!(a["vcs:localdir:context"], "ctx");
        assert_eq!(a["target"], "final");
        assert_eq!(a["build-arg:A"], "1");
        assert_eq!(a["label:org.x"], "y");
        assert_eq!(a["platform"], "linux/amd64,linux/arm64");
        assert_eq!(a["no-cache"], "");
        assert_eq!(a["force-network-mode"], "none");
        assert_eq!(
            a["cache-imports"],
            r#"[{"Attrs":{"ref":"r/c"},"Type":"registry"}]"#
        );
        assert_eq!(req.exporters.len(), 2);
        assert_eq!(req.exporters[0].r#type, "tar");
        assert!(
            req.exporters[0].attrs.is_empty(),
            "dest stays on the client"
        );
        assert_eq!(req.exporter_deprecated, "tar");
        assert_eq!(req.exporters[1].attrs["push"], "true");
        assert_eq!(req.cache.unwrap().imports[0].attrs["ref"], "r/c");
    }

    #[test]
    fn a_definition_solve_sends_the_graph_and_no_frontend() {
        let definition = Definition {
            def: vec![bytes::Bytes::from_static(b"\x0a\x00")],
            ..Default::default()
        };
        let mut o = BuildOptions::for_definition(definition.clone());
        o.registry_auth = false;
        o.locals.insert("context".into(), PathBuf::from("/ctx"));
        o.validate().unwrap_err(); // /ctx does not exist: locals are still checked
        let req = o.solve_request("ref1", "sess1");
        assert_eq!(req.frontend, "");
        assert_eq!(req.definition, Some(definition));
        assert!(req.frontend_attrs.is_empty());
        let s = o.session_options().unwrap();
        assert_eq!(s.dirs.keys().collect::<Vec<_>>(), ["context"]);
    }

    #[test]
    fn session_serves_context_and_dockerfile_dirs() {
        let mut o = options();
        o.registry_auth = false;
        let s = o.session_options().unwrap();
        assert_eq!(s.dirs["context"].path(), Some(Path::new("/ctx")));
        assert_eq!(s.dirs["dockerfile"].path(), Some(Path::new("/df")));
        assert_eq!(s.exports[0], ExportTarget::File("/out/a.tar".into()));
        assert_eq!(s.exports[1], ExportTarget::None);
    }

    #[test]
    fn source_details_give_the_failing_line() {
        let source = serde_json::json!({
            "info": {"filename": "Dockerfile", "data": base64::engine::general_purpose::STANDARD.encode("FROM x\nRUN false\n")},
            "ranges": [{"start": {"line": 2}, "end": {"line": 2}}]
        });
        let status = GoogleStatus {
            code: 2,
            message: "failed".into(),
            details: vec![prost_types::Any {
                type_url: "github.com/moby/buildkit/errdefs.Source+json".into(),
                value: serde_json::to_vec(&source).unwrap(),
            }],
        };
        let status = tonic::Status::with_details(
            tonic::Code::Unknown,
            "process did not complete successfully",
            status.encode_to_vec().into(),
        );
        let report = failure_report(&status);
        assert_eq!(report.sources.len(), 1);
        assert_eq!(report.sources[0].filename, "Dockerfile");
        assert_eq!(report.sources[0].line, 2);
        assert!(
            report.sources[0]
                .lines
                .contains(&(2, true, "RUN false".into()))
        );
        assert!(
            report.sources[0]
                .lines
                .contains(&(1, false, "FROM x".into()))
        );
    }

    #[test]
    fn every_source_range_gets_a_snippet() {
        let source = |file: &str, text: &str, line: i64| {
            prost_types::Any {
            type_url: "github.com/moby/buildkit/errdefs.Source+json".into(),
            value: serde_json::to_vec(&serde_json::json!({
                "info": {"filename": file, "data": base64::engine::general_purpose::STANDARD.encode(text)},
                "ranges": [{"start": {"line": line}, "end": {"line": line}}]
            }))
            .unwrap(),
        }
        };
        let status = GoogleStatus {
            code: 2,
            message: "failed".into(),
            details: vec![
                source("Dockerfile", "FROM x\nCOPY --from=assets a /\n", 2),
                source("assets/Dockerfile", "FROM y\n", 1),
            ],
        };
        let status = tonic::Status::with_details(
            tonic::Code::Unknown,
            "failed",
            status.encode_to_vec().into(),
        );
        let report = failure_report(&status);
        let names: Vec<(&str, u32)> = report
            .sources
            .iter()
            .map(|s| (s.filename.as_str(), s.line))
            .collect();
        assert_eq!(names, vec![("Dockerfile", 2), ("assets/Dockerfile", 1)]);
    }
}
