//! `history ls|logs|inspect|rm|export`: the build history of one daemon (`--addr`) or of the
//! whole fleet (`--context`, `--fleet`); the work is in `pf_buildkit::buildkit::history` and
//! `pf_buildkit::fleet::Fleet::build_history`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde::Serialize;

use pf_buildkit::buildkit::Client;
use pf_buildkit::buildkit::history::archive::{self, HistoryArchive};
use pf_buildkit::buildkit::history::{
    BuildRecord, BuildStatus, HistoryQuery, RefSelector, select, utc_text,
};
use pf_buildkit::buildkit::progress::{FailureReport, PlainProgress, ProgressSink};
use pf_buildkit::fleet::{Fleet, FleetHistory};

use super::daemon::write_table;
use super::usage::UsageError;
use super::{Format, GlobalArgs, Outcome};

#[derive(Debug, Subcommand)]
pub enum HistoryCommand {
    /// List the builds of the daemon's (or the fleet's) history, newest first
    Ls(LsArgs),
    /// Print a finished build's whole progress in plain form, as it showed live
    Logs(LogsArgs),
    /// Show a build: its inputs, timing, result, error and attachments
    Inspect(InspectArgs),
    /// Delete build records
    Rm(RmArgs),
    /// Write a build's record, logs, error and attachments to one file (a CI artifact)
    Export(ExportArgs),
}

/// Whose history: the daemon of `--addr`, or the fleet's running pods.
#[derive(Debug, Args)]
pub struct ScopeArgs {
    /// Every running pod of the fleet in this kubeconfig context, instead of --addr
    #[arg(long, value_name = "CTX")]
    context: Option<String>,
    /// Every running pod of the fleet (the current kubeconfig context, or in a pod its
    /// service account), instead of --addr
    #[arg(long, conflicts_with = "context")]
    fleet: bool,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only builds matching: status=running|completed|failed|canceled (repeatable: all must match)
    #[arg(long = "filter", value_name = "FILTER", value_parser = parse_filter)]
    filters: Vec<BuildStatus>,
    /// Output format
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    #[command(flatten)]
    scope: ScopeArgs,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The build: a ref, the start of one, or ^N (^0 the newest build, ^1 the one before)
    #[arg(value_name = "REF", value_parser = parse_selector, required_unless_present = "file")]
    reference: Option<RefSelector>,
    /// Read the build from an archive `history export` wrote, instead of a daemon
    #[arg(long, value_name = "FILE", conflicts_with_all = ["reference", "context", "fleet"])]
    file: Option<PathBuf>,
    #[command(flatten)]
    scope: ScopeArgs,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The build: a ref, the start of one, or ^N (^0 the newest build, ^1 the one before)
    #[arg(value_name = "REF", value_parser = parse_selector, required_unless_present = "file")]
    reference: Option<RefSelector>,
    /// Read the build from an archive `history export` wrote, instead of a daemon
    #[arg(long, value_name = "FILE", conflicts_with_all = ["reference", "context", "fleet"])]
    file: Option<PathBuf>,
    /// Output format
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    #[command(flatten)]
    scope: ScopeArgs,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// The builds: refs, starts of refs, or ^N
    #[arg(value_name = "REF", value_parser = parse_selector, required = true)]
    references: Vec<RefSelector>,
    #[command(flatten)]
    scope: ScopeArgs,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The build: a ref, the start of one, or ^N (^0 the newest build, ^1 the one before)
    #[arg(value_name = "REF", value_parser = parse_selector)]
    reference: RefSelector,
    /// The archive to write (a tar; see the README's "Build history archives")
    #[arg(long, short = 'o', value_name = "FILE")]
    output: PathBuf,
    #[command(flatten)]
    scope: ScopeArgs,
}

fn parse_selector(text: &str) -> Result<RefSelector, String> {
    text.parse()
}

/// `status=VALUE`, the one filter there is.
fn parse_filter(text: &str) -> Result<BuildStatus, String> {
    match text.split_once('=') {
        Some(("status", value)) => value.parse(),
        _ => Err(format!(
            "{text:?} is not a filter: status=running, status=completed, status=failed or status=canceled"
        )),
    }
}

/// Runs a history command.
pub async fn run(global: &GlobalArgs, command: HistoryCommand) -> anyhow::Result<Outcome> {
    match command {
        HistoryCommand::Ls(args) => ls(global, args).await,
        HistoryCommand::Logs(args) => logs(global, args).await,
        HistoryCommand::Inspect(args) => inspect(global, args).await,
        HistoryCommand::Rm(args) => rm(global, args).await,
        HistoryCommand::Export(args) => export(global, args).await,
    }
}

/// The history asked for, with the connection to each daemon that holds a record.
enum Scope {
    /// One daemon: its address and connection.
    Daemon {
        address: String,
        client: Box<Client>,
        records: Vec<BuildRecord>,
    },
    /// The fleet: each record's pod.
    Fleet(FleetHistory),
}

/// A record and where it is: the address of `--addr`, or its pod.
struct Located<'a> {
    place: &'a str,
    record: &'a BuildRecord,
    client: &'a Client,
}

impl Scope {
    async fn load(
        global: &GlobalArgs,
        scope: &ScopeArgs,
        query: &HistoryQuery,
    ) -> anyhow::Result<Scope> {
        if scope.context.is_some() || scope.fleet {
            if global.addr.is_some() {
                return Err(UsageError::Combination(
                    "--addr names one daemon and --context/--fleet the fleet's pods: give one of them"
                        .into(),
                )
                .into());
            }
            let fleet = Fleet::connect(scope.context.as_deref()).await?;
            return Ok(Scope::Fleet(fleet.build_history(query).await?));
        }
        let client = global.connect().await?;
        let records = client.build_history(query).await?;
        Ok(Scope::Daemon {
            address: global.addr().to_owned(),
            client: Box::new(client),
            records,
        })
    }

    /// The column naming where a record is.
    fn place_column(&self) -> &'static str {
        match self {
            Scope::Daemon { .. } => "ADDRESS",
            Scope::Fleet(_) => "POD",
        }
    }

    /// Every record, newest first, with where it is.
    fn located(&self) -> Vec<Located<'_>> {
        match self {
            Scope::Daemon {
                address,
                client,
                records,
            } => records
                .iter()
                .map(|record| Located {
                    place: address,
                    record,
                    client,
                })
                .collect(),
            Scope::Fleet(history) => history
                .records
                .iter()
                .filter_map(|r| {
                    Some(Located {
                        place: &r.pod,
                        record: &r.record,
                        client: history.client(&r.pod)?,
                    })
                })
                .collect(),
        }
    }

    /// The one record `selector` names.
    fn find(&self, selector: &RefSelector) -> anyhow::Result<Located<'_>> {
        let mut located = self.located();
        let index = {
            let found = select(&located, |l| &l.record.reference, selector)?;
            let reference = &found.record.reference;
            located
                .iter()
                .position(|l| &l.record.reference == reference)
                .unwrap_or(0)
        };
        Ok(located.swap_remove(index))
    }

    /// The command line that prints a record's logs, for people to copy.
    fn logs_command(&self, located: &Located<'_>, global: &GlobalArgs) -> String {
        match self {
            Scope::Daemon { .. } => format!(
                "pf-buildkit history logs {} --addr {}",
                located.record.reference,
                global.addr()
            ),
            Scope::Fleet(_) => format!(
                "pf-buildkit history logs {} --fleet",
                located.record.reference
            ),
        }
    }
}

/// One row of `history ls --format json`: the record and what the table shows of it.
#[derive(Serialize)]
struct ListEntry<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    address: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod: Option<&'a str>,
    name: String,
    status: BuildStatus,
    duration_seconds: Option<f64>,
    #[serde(flatten)]
    record: &'a BuildRecord,
}

async fn ls(global: &GlobalArgs, args: LsArgs) -> anyhow::Result<Outcome> {
    let query = HistoryQuery::default();
    let scope = Scope::load(global, &args.scope, &query).await?;
    let now = SystemTime::now();
    let rows: Vec<Located<'_>> = scope
        .located()
        .into_iter()
        .filter(|l| args.filters.iter().all(|s| l.record.status() == *s))
        .collect();
    let mut out = std::io::stdout().lock();
    match args.format {
        Format::Json => {
            let fleet = matches!(scope, Scope::Fleet(_));
            let entries: Vec<ListEntry<'_>> = rows
                .iter()
                .map(|l| ListEntry {
                    address: (!fleet).then_some(l.place),
                    pod: fleet.then_some(l.place),
                    name: l.record.name(),
                    status: l.record.status(),
                    duration_seconds: l.record.duration(now).map(|d| d.as_secs_f64()),
                    record: l.record,
                })
                .collect();
            serde_json::to_writer_pretty(&mut out, &entries)?;
            writeln!(out)?;
        }
        Format::Table => {
            let mut table = vec![
                [
                    "REF",
                    scope.place_column(),
                    "NAME",
                    "STATUS",
                    "STARTED",
                    "DURATION",
                    "STEPS",
                ]
                .map(str::to_owned)
                .to_vec(),
            ];
            for l in &rows {
                let r = l.record;
                table.push(vec![
                    r.reference.clone(),
                    l.place.to_owned(),
                    r.name(),
                    r.status().to_string(),
                    r.created_at
                        .map_or_else(String::new, |t| format_age(now, t)),
                    r.duration(now).map_or_else(String::new, |d| {
                        let mut text = format_duration(d);
                        if r.status() == BuildStatus::Running {
                            text.push('+');
                        }
                        text
                    }),
                    format!("{}/{}", r.steps.cached, r.steps.total),
                ]);
            }
            write_table(&mut out, &table)?;
        }
    }
    Ok(Outcome::Success)
}

async fn logs(global: &GlobalArgs, args: LogsArgs) -> anyhow::Result<Outcome> {
    let mut plain = PlainProgress::replay(std::io::stderr());
    if let Some(file) = args.file {
        // Local file work, off the runtime's workers.
        let failure = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let archive = HistoryArchive::open(&file)?;
            archive.logs(|update| plain.update(&update))?;
            Ok((plain, archive.failure()?))
        })
        .await??;
        let (mut plain, failure) = failure;
        plain.finish(&Default::default(), failure.as_ref());
        return Ok(Outcome::Success);
    }
    let selector = args
        .reference
        .context("a build ref (or --file) is needed")?;
    let scope = Scope::load(global, &args.scope, &HistoryQuery::default()).await?;
    let located = scope.find(&selector)?;
    let client = located.client;
    let record = located.record;
    let failure = client.build_failure(record).await?;
    let mut logs = client.build_logs(record).await?;
    while let Some(update) = logs.next().await {
        plain.update(&update?);
    }
    plain.finish(&Default::default(), failure.as_ref());
    Ok(Outcome::Success)
}

async fn inspect(global: &GlobalArgs, args: InspectArgs) -> anyhow::Result<Outcome> {
    let now = SystemTime::now();
    if let Some(file) = args.file {
        let path = file.clone();
        let (archive, failure) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let archive = HistoryArchive::open(&path)?;
            let failure = archive.failure()?;
            Ok((archive, failure))
        })
        .await??;
        let shown = Shown {
            place: ("Source", archive.index.source.as_str()),
            record: archive.record(),
            failure: failure.as_ref(),
            logs_command: format!("pf-buildkit history logs --file {}", file.display()),
            now,
        };
        return print_inspect(&shown, args.format);
    }
    let selector = args
        .reference
        .context("a build ref (or --file) is needed")?;
    let scope = Scope::load(global, &args.scope, &HistoryQuery::default()).await?;
    let located = scope.find(&selector)?;
    let failure = located.client.build_failure(located.record).await?;
    let place_name = match scope {
        Scope::Daemon { .. } => "Address",
        Scope::Fleet(_) => "Pod",
    };
    let shown = Shown {
        place: (place_name, located.place),
        record: located.record,
        failure: failure.as_ref(),
        logs_command: scope.logs_command(&located, global),
        now,
    };
    print_inspect(&shown, args.format)
}

/// What `history inspect` shows.
struct Shown<'a> {
    place: (&'static str, &'a str),
    record: &'a BuildRecord,
    failure: Option<&'a FailureReport>,
    logs_command: String,
    now: SystemTime,
}

/// `history inspect --format json`: the record, what the text view derives from it, and the
/// failure's source lines as text.
#[derive(Serialize)]
struct InspectJson<'a> {
    name: String,
    status: BuildStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    address: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'a str>,
    duration_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failure: Option<FailureJson>,
    record: &'a BuildRecord,
}

#[derive(Serialize)]
struct FailureJson {
    message: String,
    vertex: Option<String>,
    /// The Dockerfile snippets as `history logs` prints them.
    sources: Vec<String>,
}

fn print_inspect(shown: &Shown<'_>, format: Format) -> anyhow::Result<Outcome> {
    let r = shown.record;
    let mut out = std::io::stdout().lock();
    if let Format::Json = format {
        let (kind, place) = shown.place;
        let json = InspectJson {
            name: r.name(),
            status: r.status(),
            address: (kind == "Address").then_some(place),
            pod: (kind == "Pod").then_some(place),
            source: (kind == "Source").then_some(place),
            duration_seconds: r.duration(shown.now).map(|d| d.as_secs_f64()),
            failure: shown.failure.map(|f| FailureJson {
                message: f.message.clone(),
                vertex: f.vertex.clone(),
                sources: f
                    .sources
                    .iter()
                    .map(|s| {
                        let mut text = Vec::new();
                        let _ = s.write(&mut text);
                        String::from_utf8_lossy(&text).into_owned()
                    })
                    .collect(),
            }),
            record: r,
        };
        serde_json::to_writer_pretty(&mut out, &json)?;
        writeln!(out)?;
        return Ok(Outcome::Success);
    }
    let mut fields: Vec<(String, String)> = vec![
        ("Name".into(), r.name()),
        ("Ref".into(), r.reference.clone()),
        (shown.place.0.into(), shown.place.1.to_owned()),
    ];
    let attr = |k: &str| r.frontend_attrs.get(k).filter(|v| !v.is_empty());
    if let Some(context) = attr("vcs:localdir:context").or_else(|| attr("context")) {
        fields.push(("Context".into(), context.clone()));
    }
    if let Some(dockerfile) = attr("filename") {
        fields.push(("Dockerfile".into(), dockerfile.clone()));
    }
    if let Some(target) = attr("target") {
        fields.push(("Target".into(), target.clone()));
    }
    let platforms = r.platforms();
    if !platforms.is_empty() {
        fields.push(("Platforms".into(), platforms.join(", ")));
    }
    write_fields(&mut out, &fields)?;
    writeln!(out)?;

    let mut fields: Vec<(String, String)> = Vec::new();
    if let Some(started) = r.created_at {
        fields.push(("Started".into(), utc_text(started)));
    }
    if let Some(d) = r.duration(shown.now) {
        let running = if r.status() == BuildStatus::Running {
            " (running)"
        } else {
            ""
        };
        fields.push((
            "Duration".into(),
            format!("{}{running}", format_duration(d)),
        ));
    }
    fields.push(("Status".into(), r.status().to_string()));
    if let Some(error) = &r.error {
        fields.push(("Error".into(), error.status().to_string()));
    }
    let cached = if r.steps.total > 0 {
        f64::from(r.steps.cached) / f64::from(r.steps.total) * 100.0
    } else {
        0.0
    };
    fields.push((
        "Build Steps".into(),
        format!(
            "{}/{} ({cached:.0}% cached)",
            r.steps.completed, r.steps.total
        ),
    ));
    if r.warnings > 0 {
        fields.push(("Warnings".into(), r.warnings.to_string()));
    }
    write_fields(&mut out, &fields)?;
    writeln!(out)?;

    let response = &r.exporter_response;
    let mut fields: Vec<(String, String)> = Vec::new();
    if let Some(name) = response.get("image.name") {
        fields.push(("Image".into(), name.clone()));
    }
    if let Some(digest) = response.get("containerimage.digest") {
        fields.push(("Digest".into(), digest.clone()));
    }
    for e in &r.exporters {
        fields.push(("Exporter".into(), e.kind.clone()));
    }
    if !fields.is_empty() {
        write_fields(&mut out, &fields)?;
        writeln!(out)?;
    }

    for (title, prefix) in [("BUILD ARG", "build-arg:"), ("LABEL", "label:")] {
        let values = r.attrs_under(prefix);
        if values.is_empty() {
            continue;
        }
        let mut rows = vec![vec![title.to_owned(), "VALUE".to_owned()]];
        rows.extend(values.into_iter().map(|(k, v)| vec![k, v]));
        write_table(&mut out, &rows)?;
        writeln!(out)?;
    }

    if !r.attachments.is_empty() {
        writeln!(out, "Attachments:")?;
        let mut rows = vec![vec!["DIGEST".into(), "PLATFORM".into(), "TYPE".into()]];
        rows.extend(r.attachments.iter().map(|a| {
            vec![
                a.descriptor.digest.clone(),
                a.platform.clone().unwrap_or_default(),
                a.kind.clone(),
            ]
        }));
        write_table(&mut out, &rows)?;
        writeln!(out)?;
    }

    if let Some(failure) = shown.failure {
        for snippet in &failure.sources {
            snippet.write(&mut out)?;
        }
        if !failure.sources.is_empty() {
            writeln!(out)?;
        }
    }
    writeln!(out, "Print build logs: {}", shown.logs_command)?;
    Ok(Outcome::Success)
}

/// `Name:   value` lines, the values aligned.
fn write_fields(out: &mut impl Write, fields: &[(String, String)]) -> std::io::Result<()> {
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 2;
    for (k, v) in fields {
        writeln!(out, "{:<width$}{v}", format!("{k}:"))?;
    }
    Ok(())
}

async fn rm(global: &GlobalArgs, args: RmArgs) -> anyhow::Result<Outcome> {
    let scope = Scope::load(global, &args.scope, &HistoryQuery::default()).await?;
    // Every name resolved before anything is deleted: a bad one deletes nothing.
    let mut chosen: Vec<Located<'_>> = Vec::new();
    for selector in &args.references {
        let located = scope.find(selector)?;
        if located.record.status() == BuildStatus::Running {
            anyhow::bail!(
                "build {} on {} is still running: cancel it, or wait for it to end, before deleting its record",
                located.record.reference,
                located.place
            );
        }
        if !chosen
            .iter()
            .any(|c| c.record.reference == located.record.reference)
        {
            chosen.push(located);
        }
    }
    for located in chosen {
        located
            .client
            .delete_build_record(&located.record.reference)
            .await
            .with_context(|| format!("deleting build {}", located.record.reference))?;
        super::print_line(&located.record.reference)?;
    }
    Ok(Outcome::Success)
}

async fn export(global: &GlobalArgs, args: ExportArgs) -> anyhow::Result<Outcome> {
    check_output(&args.output)?;
    let scope = Scope::load(global, &args.scope, &HistoryQuery::default()).await?;
    let located = scope.find(&args.reference)?;
    if located.record.status() == BuildStatus::Running {
        anyhow::bail!(
            "build {} is still running: its logs are kept when it ends; export it then",
            located.record.reference
        );
    }
    let summary =
        archive::export(located.client, located.record, located.place, &args.output).await?;
    for digest in &summary.missing {
        eprintln!(
            "pf-buildkit: warning: attachment {digest} of build {} is gone from the daemon; left out",
            located.record.reference
        );
    }
    Ok(Outcome::Success)
}

/// The archive's directory must exist and the path must not be a directory.
fn check_output(path: &Path) -> anyhow::Result<()> {
    if path.is_dir() {
        return Err(UsageError::Value {
            flag: "--output",
            source: format!("{} is a directory; name the file to write", path.display()).into(),
        }
        .into());
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(UsageError::Value {
            flag: "--output",
            source: format!("directory {} does not exist", dir.display()).into(),
        }
        .into());
    }
    Ok(())
}

/// A duration as buildx shows it: `3.2s` under a minute, else `2m 05s`.
fn format_duration(d: Duration) -> String {
    if d < Duration::from_secs(60) {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}m {:02}s", d.as_secs() / 60, d.as_secs() % 60)
    }
}

/// How long ago `then` was: `5 seconds ago`, `3 minutes ago`, `2 hours ago`, `4 days ago`.
fn format_age(now: SystemTime, then: SystemTime) -> String {
    let seconds = now.duration_since(then).map_or(0, |d| d.as_secs());
    let (n, unit) = match seconds {
        s if s < 60 => (s, "second"),
        s if s < 3600 => (s / 60, "minute"),
        s if s < 86_400 => (s / 3600, "hour"),
        s => (s / 86_400, "day"),
    };
    let plural = if n == 1 { "" } else { "s" };
    format!("{n} {unit}{plural} ago")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_ages_read_as_buildx_shows_them() {
        assert_eq!(format_duration(Duration::from_millis(3240)), "3.2s");
        assert_eq!(format_duration(Duration::from_secs(125)), "2m 05s");
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(100_000);
        assert_eq!(
            format_age(now, now - Duration::from_secs(1)),
            "1 second ago"
        );
        assert_eq!(
            format_age(now, now - Duration::from_secs(7200)),
            "2 hours ago"
        );
    }

    #[test]
    fn filters_name_a_status() {
        assert_eq!(parse_filter("status=failed"), Ok(BuildStatus::Failed));
        assert!(parse_filter("status=error").is_err());
        assert!(parse_filter("ref=abc").is_err());
    }
}
