//! `build`: one Dockerfile build on one BuildKit, with buildctl's flags.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, ValueEnum};

use pf_buildkit::buildkit::progress::ProgressMode;
use pf_buildkit::buildkit::spec::{
    CacheDirection, CacheSpec, OutputSpec, SecretSpec, SshSpec, parse_key_value,
};
use pf_buildkit::buildkit::{BuildError, BuildOptions, write_metadata_file};

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
    #[arg(long = "build-arg", value_name = "K=V")]
    build_args: Vec<String>,
    /// Image label (repeatable)
    #[arg(long = "label", value_name = "K=V")]
    labels: Vec<String>,
    /// Target platforms, comma-separated (repeatable)
    #[arg(long = "platform", value_name = "P[,P]")]
    platforms: Vec<String>,
    /// Do not use the build cache
    #[arg(long)]
    no_cache: bool,
    /// Secret for RUN --mount=type=secret: id=ID,src=PATH or id=ID,env=VAR (repeatable)
    #[arg(long = "secret", value_name = "SPEC")]
    secrets: Vec<String>,
    /// SSH agent for RUN --mount=type=ssh: default, ID or ID=SOCKET (repeatable)
    #[arg(long = "ssh", value_name = "SPEC")]
    ssh: Vec<String>,
    /// Extra local directory served to the daemon, as buildctl's --local; use it with
    /// --opt context:NAME=local:NAME (repeatable)
    #[arg(long = "local", value_name = "NAME=DIR")]
    locals: Vec<String>,
    /// OCI layout directory offered to the daemon by name, as buildctl's --oci-layout; use it
    /// with --opt context:NAME=oci-layout://NAME:TAG or …@sha256:DIGEST (repeatable)
    #[arg(long = "oci-layout", value_name = "NAME=DIR")]
    oci_layouts: Vec<String>,
    /// Raw frontend attribute, e.g. force-network-mode=none (repeatable)
    #[arg(long = "opt", value_name = "K=V")]
    opts: Vec<String>,
    /// Progress output on stderr
    #[arg(long, value_enum, default_value_t = Progress::Auto)]
    progress: Progress,
    /// Write the exporter response as JSON to FILE
    #[arg(long, value_name = "FILE")]
    metadata_file: Option<PathBuf>,
    /// Output in buildctl syntax, e.g. type=image,name=R,push=true, type=local,dest=DIR or
    /// type=oci,dest=DIR,tar=false
    /// (repeatable)
    #[arg(long = "output", short = 'o', value_name = "SPEC")]
    outputs: Vec<String>,
    /// Cache export, e.g. type=registry,ref=R,mode=max or type=local,dest=DIR (repeatable)
    #[arg(long = "export-cache", value_name = "SPEC")]
    export_cache: Vec<String>,
    /// Cache import, e.g. type=registry,ref=R or type=local,src=DIR (repeatable)
    #[arg(long = "import-cache", value_name = "SPEC")]
    import_cache: Vec<String>,
    #[command(flatten)]
    multi: super::multiplatform::MultiArgs,
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

fn key_values(what: &'static str, values: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    for v in values {
        let (k, v) = parse_key_value(what, v)?;
        map.insert(k, v);
    }
    Ok(map)
}

impl TryFrom<&BuildArgs> for BuildOptions {
    type Error = anyhow::Error;

    fn try_from(args: &BuildArgs) -> anyhow::Result<Self> {
        let mut options = BuildOptions::new(&args.context);
        options.dockerfile = args.file.clone();
        options.target = args.target.clone();
        options.build_args = key_values("--build-arg", &args.build_args)?;
        options.labels = key_values("--label", &args.labels)?;
        options.frontend_attrs = key_values("--opt", &args.opts)?;
        options.platforms = args
            .platforms
            .iter()
            .flat_map(|p| p.split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect();
        options.no_cache = args.no_cache;
        options.locals = key_values("--local", &args.locals)?
            .into_iter()
            .map(|(name, dir)| (name, PathBuf::from(dir)))
            .collect();
        options.oci_layouts = key_values("--oci-layout", &args.oci_layouts)?
            .into_iter()
            .map(|(name, dir)| (name, PathBuf::from(dir)))
            .collect();
        for spec in &args.secrets {
            let secret: SecretSpec = spec.parse().context("--secret")?;
            options.secrets.insert(secret.id, secret.source);
        }
        for spec in &args.ssh {
            let ssh: SshSpec = spec.parse().context("--ssh")?;
            let socket = match ssh.socket {
                Some(socket) => socket,
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
            options.ssh.insert(ssh.id, socket);
        }
        for spec in &args.outputs {
            options
                .outputs
                .push(spec.parse::<OutputSpec>().context("--output")?);
        }
        for spec in &args.export_cache {
            options
                .cache_exports
                .push(CacheSpec::parse(spec, CacheDirection::Export).context("--export-cache")?);
        }
        for spec in &args.import_cache {
            options
                .cache_imports
                .push(CacheSpec::parse(spec, CacheDirection::Import).context("--import-cache")?);
        }
        options.validate()?;
        Ok(options)
    }
}

pub async fn build(global: &GlobalArgs, args: &BuildArgs) -> anyhow::Result<Outcome> {
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
