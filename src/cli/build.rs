//! `build`: one Dockerfile build on one BuildKit, with buildctl's flags.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr as _;

use anyhow::Context as _;
use clap::{Args, ValueEnum};

use pf_buildkit::buildkit::attest::{AttestSpec, Attestations};
use pf_buildkit::buildkit::progress::ProgressMode;
use pf_buildkit::buildkit::spec::{SecretSpec, SpecError, SshSpec, parse_key_value};
use pf_buildkit::buildkit::{
    BuildError, BuildOptions, Cache, CacheDirection, InvalidOptions, Output, write_metadata_file,
};
use pf_buildkit::registry::Platform;

use super::usage::UsageError;
use super::{GlobalArgs, Outcome};

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Build context directory
    #[arg(long, value_name = "DIR", default_value = ".")]
    context: PathBuf,
    /// Dockerfile (default: DIR/Dockerfile)
    #[arg(long, short = 'f', value_name = "PATH")]
    file: Option<PathBuf>,
    /// Stage to build
    #[arg(long)]
    target: Option<String>,
    /// Build argument (repeatable)
    #[arg(long = "build-arg", value_name = "K=V", value_parser = key_value)]
    build_args: Vec<(String, String)>,
    /// Image label (repeatable)
    #[arg(long = "label", value_name = "K=V", value_parser = key_value)]
    labels: Vec<(String, String)>,
    /// Target platforms, comma-separated (repeatable)
    #[arg(long = "platform", value_name = "P[,P]")]
    platforms: Vec<String>,
    /// Do not use the build cache
    #[arg(long)]
    no_cache: bool,
    /// Secret for RUN --mount=type=secret: id=ID,src=PATH or id=ID,env=VAR (repeatable)
    #[arg(long = "secret", value_name = "SPEC", value_parser = SecretSpec::from_str)]
    secrets: Vec<SecretSpec>,
    /// SSH agent for RUN --mount=type=ssh: default, ID or ID=SOCKET (repeatable)
    #[arg(long = "ssh", value_name = "SPEC", value_parser = SshSpec::from_str)]
    ssh: Vec<SshSpec>,
    /// Extra local directory served to the daemon, as buildctl's --local; use it with
    /// --opt context:NAME=local:NAME (repeatable)
    #[arg(long = "local", value_name = "NAME=DIR", value_parser = key_value)]
    locals: Vec<(String, String)>,
    /// OCI layout directory offered to the daemon by name, as buildctl's --oci-layout; use it
    /// with --opt context:NAME=oci-layout://NAME:TAG or …@sha256:DIGEST (repeatable)
    #[arg(long = "oci-layout", value_name = "NAME=DIR", value_parser = key_value)]
    oci_layouts: Vec<(String, String)>,
    /// Attestation, as buildx: type=provenance[,mode=min|max][,version=v0.2|v1][,builder-id=URI]
    /// or type=sbom[,generator=IMAGE][,scan-context=true] (repeatable, one per type)
    #[arg(long = "attest", value_name = "SPEC", value_parser = AttestSpec::from_str)]
    attest: Vec<AttestSpec>,
    /// Shorthand for --attest type=provenance: true, false or mode=min|max,…
    #[arg(long, value_name = "VALUE", num_args = 0..=1,
          default_missing_value = "true", value_parser = provenance_shorthand)]
    provenance: Option<AttestSpec>,
    /// Shorthand for --attest type=sbom: true, false or generator=IMAGE,…
    #[arg(long, value_name = "VALUE", num_args = 0..=1,
          default_missing_value = "true", value_parser = sbom_shorthand)]
    sbom: Option<AttestSpec>,
    /// Raw frontend attribute, e.g. force-network-mode=none (repeatable)
    #[arg(long = "opt", value_name = "K=V", value_parser = key_value)]
    opts: Vec<(String, String)>,
    /// Progress output on stderr
    #[arg(long, value_enum, default_value_t = Progress::Auto)]
    progress: Progress,
    /// Write the exporter response as JSON to FILE
    #[arg(long, value_name = "FILE")]
    metadata_file: Option<PathBuf>,
    /// Output in buildctl syntax, e.g. type=image,name=R,push=true, type=local,dest=DIR or
    /// type=oci,dest=DIR,tar=false
    /// (repeatable)
    #[arg(long = "output", short = 'o', value_name = "SPEC", value_parser = Output::from_str)]
    outputs: Vec<Output>,
    /// Cache export, e.g. type=registry,ref=R,mode=max or type=local,dest=DIR (repeatable)
    #[arg(long = "export-cache", value_name = "SPEC", value_parser = cache_export)]
    export_cache: Vec<Cache>,
    /// Cache import, e.g. type=registry,ref=R or type=local,src=DIR (repeatable)
    #[arg(long = "import-cache", value_name = "SPEC", value_parser = cache_import)]
    import_cache: Vec<Cache>,
    /// How long to wait for a lock another build, buildctl or buildx holds on a local cache
    /// or OCI layout directory before failing [default: 60]
    #[arg(long, value_name = "SECONDS", value_parser = super::units::parse_seconds)]
    lock_wait: Option<std::time::Duration>,
    #[command(flatten)]
    multi: super::multiplatform::MultiArgs,
}

impl BuildArgs {
    /// How many builds this command runs at once: one per architecture with `--repo`, else
    /// one.
    pub fn concurrent_builds(&self) -> usize {
        self.multi.concurrent_builds()
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Progress {
    /// tty on a terminal, else plain
    Auto,
    /// Live view
    Tty,
    /// Plain text
    Plain,
    /// One JSON status per line
    Rawjson,
    /// Nothing
    Quiet,
}

impl From<Progress> for ProgressMode {
    fn from(p: Progress) -> Self {
        match p {
            Progress::Auto => ProgressMode::Auto,
            Progress::Tty => ProgressMode::Tty,
            Progress::Plain => ProgressMode::Plain,
            Progress::Rawjson => ProgressMode::RawJson,
            Progress::Quiet => ProgressMode::Quiet,
        }
    }
}

// The flags' values are parsed by clap, so a malformed one is a usage error (exit 2) found
// before anything is read or sent.

fn key_value(text: &str) -> Result<(String, String), SpecError> {
    parse_key_value("value", text)
}

fn provenance_shorthand(text: &str) -> Result<AttestSpec, SpecError> {
    AttestSpec::shorthand("provenance", text)
}

fn sbom_shorthand(text: &str) -> Result<AttestSpec, SpecError> {
    AttestSpec::shorthand("sbom", text)
}

/// `--attest` and the shorthands together; a type given twice is a usage error, as in buildx.
fn attestations(args: &BuildArgs) -> Result<Attestations, UsageError> {
    let mut attestations = Attestations::default();
    for spec in args.attest.iter().chain(&args.provenance).chain(&args.sbom) {
        attestations.add(spec.clone()).map_err(|reason| {
            UsageError::Combination(format!(
                "--attest/--provenance/--sbom: {reason}; give each type once"
            ))
        })?;
    }
    Ok(attestations)
}

fn cache_export(text: &str) -> Result<Cache, SpecError> {
    Cache::parse(text, CacheDirection::Export)
}

fn cache_import(text: &str) -> Result<Cache, SpecError> {
    Cache::parse(text, CacheDirection::Import)
}

/// `K=V` pairs as a map; a key given twice keeps its last value, as in buildctl.
fn key_values(pairs: &[(String, String)]) -> BTreeMap<String, String> {
    pairs.iter().cloned().collect()
}

/// Paths of `NAME=DIR` pairs.
fn named_dirs(pairs: &[(String, String)]) -> BTreeMap<String, PathBuf> {
    pairs
        .iter()
        .map(|(name, dir)| (name.clone(), PathBuf::from(dir)))
        .collect()
}

impl TryFrom<&BuildArgs> for BuildOptions {
    type Error = anyhow::Error;

    fn try_from(args: &BuildArgs) -> anyhow::Result<Self> {
        let mut options = BuildOptions::new(&args.context);
        options.dockerfile = args.file.clone();
        options.target = args.target.clone();
        options.build_args = key_values(&args.build_args);
        options.labels = key_values(&args.labels);
        options.frontend_attrs = key_values(&args.opts);
        options.platforms = args
            .platforms
            .iter()
            .flat_map(|p| p.split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::parse::<Platform>)
            .collect::<Result<_, _>>()
            .map_err(UsageError::of("--platform"))?;
        options.no_cache = args.no_cache;
        options.store_lock_wait = args.lock_wait;
        options.attestations = attestations(args)?;
        options.locals = named_dirs(&args.locals);
        options.oci_layouts = named_dirs(&args.oci_layouts);
        for secret in &args.secrets {
            options
                .secrets
                .insert(secret.id.clone(), secret.source.clone());
        }
        for ssh in &args.ssh {
            let socket = match &ssh.socket {
                Some(socket) => socket.clone(),
                None => std::env::var_os("SSH_AUTH_SOCK")
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "--ssh {}: SSH_AUTH_SOCK is not set; start an agent or give ID=SOCKET",
                            ssh.id
                        )
                    })?,
            };
            options.ssh.insert(ssh.id.clone(), socket);
        }
        options.outputs = args.outputs.clone();
        options.cache_exports = args.export_cache.clone();
        options.cache_imports = args.import_cache.clone();
        options.validate().map_err(flag_error)?;
        Ok(options)
    }
}

/// A build option error that is the command line's own (flags that contradict each other, a
/// malformed name) is a usage error; the others (a missing file, an unreadable secret) are
/// failures.
fn flag_error(err: BuildError) -> anyhow::Error {
    match &err {
        BuildError::Invalid(
            InvalidOptions::TwoLayoutOutputs
            | InvalidOptions::OciLayoutName { .. }
            | InvalidOptions::UnknownOciLayout { .. },
        ) => UsageError::Rejected(Box::new(err)).into(),
        _ => err.into(),
    }
}

/// Flags of the single build that the multi-platform build replaces.
fn check_combinations(args: &BuildArgs) -> Result<(), UsageError> {
    if args.multi.repo.is_none() {
        return Ok(());
    }
    if !args.outputs.is_empty() {
        return Err(UsageError::Combination(
            "--output cannot be combined with --repo: the images go to REGISTRY/REPO:TAG-ARCH"
                .into(),
        ));
    }
    if !args.platforms.is_empty() {
        return Err(UsageError::Combination(
            "--platform cannot be combined with --repo: use --arch".into(),
        ));
    }
    Ok(())
}

pub async fn build(global: &GlobalArgs, args: &BuildArgs) -> anyhow::Result<Outcome> {
    check_combinations(args)?;
    let options = BuildOptions::try_from(args)?;
    if let Some(path) = &args.metadata_file
        && let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.is_dir()
    {
        anyhow::bail!(
            "--metadata-file {}: directory {} does not exist",
            path.display(),
            parent.display()
        );
    }
    if args.multi.repo.is_some() {
        return super::multiplatform::run(
            global,
            &args.multi,
            options,
            args.progress.into(),
            args.metadata_file.as_ref(),
        )
        .await;
    }
    let client = global.connect().await?;
    let mut progress = ProgressMode::from(args.progress).stderr_sink();
    let result = match client.build(&options, progress.as_mut()).await {
        Ok(result) => result,
        // The progress output already showed the failing step and its output.
        Err(BuildError::Failed { report, .. }) => {
            anyhow::bail!("build failed: {}", report.message)
        }
        Err(err) => return Err(err.into()),
    };
    if let Some(path) = &args.metadata_file {
        write_metadata_file(path, &result.exporter_response, &result.warnings)
            .with_context(|| format!("cannot write --metadata-file {}", path.display()))?;
    }
    if let Some(digest) = result.exporter_response.get("containerimage.digest") {
        super::print_line(digest)?;
    }
    Ok(Outcome::Success)
}
