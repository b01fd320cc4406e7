//! From a request to connected builders: the registry, architectures and S3 cache resolved
//! from the request plus `buildkit.json`, each architecture placed on an explicit endpoint,
//! the shared endpoint, or the Kubernetes fleet, and cluster builders leased for the build.
//!
//! The order of precedence is the CLI's: a per-architecture builder, then the shared endpoint
//! (`--addr`/`BUILDKIT_HOST` in the binary), then the cluster named by the request or
//! `buildkit.json`, then the fallback endpoint (the binary's default socket).
//!
//! Border: part of [`crate::multiplatform`]; it may use `config`, `fleet`, `buildkit` and
//! `registry`, and prints nothing (what a user should see arrives as [`Event`]s).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::try_join_all;

use super::{
    Builder, DEFAULT_ARCHES, Error, MultiPlatformBuild, MultiPlatformResult, PushMode, S3Cache,
};
use crate::buildkit::attest::{Attest, AttestSpec, Provenance, Sbom};
use crate::buildkit::progress::ProgressSink;
use crate::buildkit::{BuildOptions, Endpoint, TlsOptions};
use crate::config::{BuildkitConfig, ConfigError, Toggle};
use crate::files::off_runtime;
use crate::fleet::{Arch, Fleet, Lease, LeaseOptions, PodAddress, ReadyProgress};
use crate::registry::{CredentialsProvider, DockerConfig};
use crate::setters::with_setters;

/// What a caller asks of a multi-platform build; what it leaves out comes from
/// `buildkit.json` or the defaults when the request is planned.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BuildRequest {
    /// The build (context, Dockerfile, args, secrets, cache specs). It must not name outputs
    /// or platforms: each architecture gets its own.
    pub options: BuildOptions,
    /// Repository inside the registry, e.g. `team/app`.
    pub repository: String,
    /// The index tag; architecture images get `TAG-ARCH`.
    pub tag: String,
    /// Registry host (`host[:port]`); `None` takes `registry` from `buildkit.json`.
    pub registry: Option<String>,
    /// Architectures to build; empty means those of [`BuildRequest::builders`], or
    /// [`DEFAULT_ARCHES`] when there are none.
    pub arches: Vec<String>,
    /// A BuildKit for particular architectures; these win over every other source.
    pub builders: BTreeMap<String, Endpoint>,
    /// The BuildKit for every architecture without its own builder, ahead of the cluster.
    pub shared: Option<Endpoint>,
    /// The BuildKit used when there is no `buildkit.json` and no other source names one.
    pub fallback: Option<Endpoint>,
    /// Kubeconfig context of the BuildKit fleet; `None` takes `cluster` from `buildkit.json`.
    pub kube_context: Option<String>,
    /// How long cluster architectures may wait to scale up (one deadline for all).
    pub scale_up_wait: Duration,
    /// TLS for the endpoints (not for `kube-pod://`, whose port-forward is already private).
    pub tls: TlsOptions,
    /// Speak plain HTTP to the registry.
    pub insecure_registry: bool,
    /// How each architecture's image reaches the registry.
    pub push: PushMode,
    /// Where registry logins come from: for the index, client-side pushes, the ECR check
    /// before anything starts, and the daemons' pushes unless [`BuildRequest::options`] names
    /// its own [`credentials`](BuildOptions::credentials). `None` reads the Docker CLI's
    /// config as `docker push` would (with ECR logins from AWS under the `aws` feature).
    pub registry_credentials: Option<Arc<dyn CredentialsProvider>>,
    /// A local cache per architecture in `DIR/ARCH`; `None` takes `cache_dir` from
    /// `buildkit.json` (relative to that file's directory).
    pub cache_dir: Option<std::path::PathBuf>,
}

with_setters!(BuildRequest {
    with_arches => arches: Vec<String>,
    with_shared => shared: Option<Endpoint>,
    with_fallback => fallback: Option<Endpoint>,
    with_scale_up_wait => scale_up_wait: Duration,
    with_tls => tls: TlsOptions,
    with_insecure_registry => insecure_registry: bool,
    with_push => push: PushMode,
} optional {
    with_registry => registry: String,
    with_kube_context => kube_context: String,
    with_cache_dir => cache_dir: std::path::PathBuf,
});

impl BuildRequest {
    /// Builds `arch` on `endpoint`, whatever else would be chosen for it.
    #[must_use]
    pub fn with_builder(mut self, arch: impl Into<String>, endpoint: Endpoint) -> Self {
        self.builders.insert(arch.into(), endpoint);
        self
    }

    /// Takes registry logins from `provider` (a [`DockerConfig`], or a store of your own)
    /// instead of the Docker CLI's config.
    #[must_use]
    pub fn with_registry_credentials(mut self, provider: impl CredentialsProvider) -> Self {
        self.registry_credentials = Some(Arc::new(provider));
        self
    }
}

/// The attestations `buildkit.json` asks every build for (`provenance`, `sbom`,
/// `sbom_generator`); `Unset` where it says nothing.
fn configured_attestations(
    config: &BuildkitConfig,
) -> Result<(Attest<Provenance>, Attest<Sbom>), ConfigError> {
    let bad = |field, reason: String| ConfigError::BadValue {
        path: config.path.clone(),
        field,
        reason,
    };
    let provenance = match &config.provenance {
        None => Attest::Unset,
        Some(toggle) => {
            let text = match toggle {
                Toggle::Bool(on) => on.to_string(),
                Toggle::Options(text) => text.clone(),
            };
            match AttestSpec::shorthand("provenance", &text) {
                Ok(AttestSpec::Provenance(p)) => p,
                Ok(AttestSpec::Sbom(_)) => Attest::Unset,
                Err(e) => return Err(bad("provenance", e.reason)),
            }
        }
    };
    let generator = config
        .sbom_generator
        .as_deref()
        .map(str::trim)
        .filter(|g| !g.is_empty());
    let sbom = match (config.sbom, generator) {
        (Some(false), _) => Attest::Off,
        (Some(true), generator) => Attest::On(Sbom {
            generator: generator.map(str::to_owned),
            scan_context: None,
        }),
        (None, Some(_)) => {
            return Err(bad(
                "sbom_generator",
                "it is set but \"sbom\" is not true; set \"sbom\": true, or remove it".into(),
            ));
        }
        (None, None) => Attest::Unset,
    };
    Ok((provenance, sbom))
}

impl BuildRequest {
    /// A request for `options` pushed as `repository:tag`, every other choice left to
    /// `buildkit.json` and the defaults (amd64 and arm64, a 600 s scale-up wait).
    pub fn new(
        options: BuildOptions,
        repository: impl Into<String>,
        tag: impl Into<String>,
    ) -> Self {
        BuildRequest {
            options,
            repository: repository.into(),
            tag: tag.into(),
            registry: None,
            arches: Vec::new(),
            builders: BTreeMap::new(),
            shared: None,
            fallback: None,
            kube_context: None,
            scale_up_wait: Duration::from_secs(600),
            tls: TlsOptions::default(),
            insecure_registry: false,
            push: PushMode::Auto,
            registry_credentials: None,
            cache_dir: None,
        }
    }

    /// Plans the build with the `buildkit.json` of the repository holding `dir`. That file
    /// may be absent when the request names the registry itself. The files are read on
    /// tokio's blocking threads, never on the runtime's workers.
    ///
    /// # Errors
    /// [`Error::Config`] when `buildkit.json` is needed and cannot be read, or a field it must
    /// supply is missing; the errors of [`BuildRequest::plan`].
    pub async fn plan_in(self, dir: &Path) -> Result<Plan, Error> {
        let dir = dir.to_owned();
        let config = match off_runtime(move || BuildkitConfig::discover(&dir)).await {
            Ok(config) => Some(config),
            Err(ConfigError::NoRepository { .. } | ConfigError::Missing { .. })
                if self.registry.is_some() =>
            {
                None
            }
            Err(err) => return Err(err.into()),
        };
        self.plan(config.as_ref()).await
    }

    /// Resolves the registry, architectures, S3 cache and where each architecture builds, and
    /// checks the references; nothing is contacted yet. What reads files (the Docker config
    /// when the request brings no credentials, and the build options' check of the context,
    /// Dockerfile and secret files) runs on tokio's blocking threads.
    ///
    /// # Errors
    /// [`Error::NoRegistry`], [`Error::Config`] for a malformed cache setting,
    /// [`Error::UnusedBuilder`], [`Error::NotInFleet`], [`Error::Invalid`],
    /// [`Error::Options`], and the Docker config's errors.
    pub async fn plan(self, config: Option<&BuildkitConfig>) -> Result<Plan, Error> {
        let registry = match (&self.registry, config) {
            (Some(registry), _) => registry.clone(),
            (None, Some(config)) => config.registry()?.to_owned(),
            (None, None) => return Err(Error::NoRegistry),
        };
        let arches: Vec<String> = if !self.arches.is_empty() {
            self.arches.iter().map(|a| a.trim().to_owned()).collect()
        } else if !self.builders.is_empty() {
            self.builders.keys().cloned().collect()
        } else {
            DEFAULT_ARCHES.iter().map(|a| (*a).to_owned()).collect()
        };
        if let Some(extra) = self.builders.keys().find(|a| !arches.contains(a)) {
            return Err(Error::UnusedBuilder {
                arch: extra.clone(),
            });
        }

        let mut build = MultiPlatformBuild::new(self.options, registry, self.repository, self.tag);
        build.insecure_registry = self.insecure_registry;
        build.push = self.push;
        if let Some(config) = config
            && let Some((bucket, region)) = config.s3_cache()?
        {
            build.s3_cache = Some(S3Cache {
                bucket: bucket.to_owned(),
                region: region.to_owned(),
            });
        }
        if let Some(config) = config {
            let wanted = &mut build.options.attestations;
            let (provenance, sbom) = configured_attestations(config)?;
            wanted.provenance = std::mem::take(&mut wanted.provenance).or(provenance);
            wanted.sbom = std::mem::take(&mut wanted.sbom).or(sbom);
        }
        build.cache_dir = self
            .cache_dir
            .clone()
            .or_else(|| config.and_then(BuildkitConfig::local_cache_dir));
        let arch_refs: Vec<&str> = arches.iter().map(String::as_str).collect();
        build.validate(&arch_refs)?;
        let given = self.registry_credentials;
        let build = off_runtime(move || {
            build.registry_credentials = Some(match given {
                Some(credentials) => credentials,
                None => Arc::new(DockerConfig::load()?),
            });
            build
                .options
                .validate()
                .map_err(|e| Error::Options(Box::new(e)))?;
            Ok::<_, Error>(build)
        })
        .await?;

        // The cluster counts only when one is named; an empty "cluster" is not one.
        let cluster = self.kube_context.clone().or_else(|| {
            config
                .and_then(|c| c.cluster.as_deref())
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
        });
        let mut placements = Vec::with_capacity(arches.len());
        for arch in &arches {
            let placement = match (self.builders.get(arch), &self.shared, &cluster) {
                (Some(endpoint), _, _) | (None, Some(endpoint), _) => {
                    Placement::Endpoint(endpoint.clone())
                }
                (None, None, Some(context)) => {
                    let fleet_arch = arch.parse::<Arch>().map_err(|_| Error::NotInFleet {
                        arch: arch.clone(),
                        context: context.clone(),
                    })?;
                    Placement::Cluster {
                        context: context.clone(),
                        arch: fleet_arch,
                    }
                }
                // A buildkit.json without a cluster is asked for one by name; the fallback
                // serves only a repository that has no configuration at all.
                (None, None, None) => {
                    if let Some(config) = config {
                        // Names the file and the empty field.
                        config.cluster()?;
                    }
                    match (config, &self.fallback) {
                        (None, Some(endpoint)) => Placement::Endpoint(endpoint.clone()),
                        _ => return Err(Error::NoBuilder { arch: arch.clone() }),
                    }
                }
            };
            placements.push((arch.clone(), placement));
        }
        Ok(Plan {
            build,
            placements,
            tls: self.tls,
            scale_up_wait: self.scale_up_wait,
        })
    }
}

/// Where one architecture builds.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Placement {
    /// A BuildKit at this endpoint (`kube-pod://` ones through a port-forward).
    Endpoint(Endpoint),
    /// The least-loaded pod of the fleet in this kubeconfig context, scaled up if need be.
    Cluster {
        /// The kubeconfig context of the cluster, from the request or `buildkit.json`'s `cluster`.
        context: String,
        /// The fleet's StatefulSet that builds it.
        arch: Arch,
    },
}

/// What happens on the way to the builders, for a caller that tells its user.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Event<'a> {
    /// The fleet is being scaled up for `arch`; the lease may wait up to `wait`.
    WaitingForCluster {
        /// The architecture whose fleet is being scaled up, e.g. `arm64`.
        arch: &'a str,
        /// The kubeconfig context of the fleet.
        context: &'a str,
        /// The longest the wait may take.
        wait: Duration,
    },
    /// How making `arch`'s pod ready goes: the scale-up, then each look at its replicas.
    Ready {
        /// The architecture whose pod is being made ready.
        arch: &'a str,
        /// The step reached: the scale-up's outcome, or the latest count of available replicas.
        progress: ReadyProgress<'a>,
    },
    /// `arch` builds on this pod of the fleet.
    Leased {
        /// The architecture the pod will build.
        arch: &'a str,
        /// The pod leased: the least-loaded ready pod of `arch`'s StatefulSet, with its IP and
        /// load.
        pod: &'a PodAddress,
    },
}

/// A planned multi-platform build: every choice made, nothing contacted.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The build, its registry, repository, tag, cache and push mode resolved.
    pub build: MultiPlatformBuild,
    /// Each architecture and where it builds, in the order requested.
    pub placements: Vec<(String, Placement)>,
    tls: TlsOptions,
    scale_up_wait: Duration,
}

/// Connected builders, in the order requested, with the fleet leases that keep the cluster
/// ones recorded as building. Dropping it releases the leases and closes their
/// port-forwards (on success, failure and cancellation alike).
#[derive(Debug)]
pub struct Builders {
    /// One connected BuildKit per architecture.
    pub builders: Vec<Builder>,
    leases: Vec<Lease>,
}

impl Builders {
    /// The fleet leases held for the cluster architectures.
    pub fn leases(&self) -> &[Lease] {
        &self.leases
    }
}

impl Plan {
    /// Connects every builder before anything is built, so a bad address fails the whole
    /// build up front: endpoints first, then the cluster architectures, leased concurrently
    /// under one scale-up deadline.
    ///
    /// # Errors
    /// [`Error::Connect`] naming the architecture and endpoint, [`Error::Fleet`] when the
    /// cluster's configuration cannot be used, [`Error::Lease`] naming the architecture.
    pub async fn connect(&self, events: &(dyn Fn(Event<'_>) + Sync)) -> Result<Builders, Error> {
        let mut builders = Vec::with_capacity(self.placements.len());
        let mut cluster: BTreeMap<&str, Vec<(&str, Arch)>> = BTreeMap::new();
        for (arch, placement) in &self.placements {
            match placement {
                Placement::Endpoint(endpoint) => {
                    let client = crate::fleet::connect(endpoint.clone(), &self.tls)
                        .await
                        .map_err(|source| Error::Connect {
                            arch: arch.clone(),
                            source: Box::new(source),
                        })?;
                    builders.push(Builder {
                        arch: arch.clone(),
                        client,
                    });
                }
                Placement::Cluster { context, arch: a } => {
                    cluster.entry(context).or_default().push((arch, *a));
                }
            }
        }
        let mut leases = Vec::new();
        for (context, arches) in cluster {
            let fleet = Fleet::connect(Some(context))
                .await
                .map_err(|source| Error::Fleet {
                    context: context.to_owned(),
                    source: Box::new(source),
                })?;
            let options = LeaseOptions {
                scale_up_wait: Some(self.scale_up_wait),
                ..LeaseOptions::default()
            };
            let leased = try_join_all(arches.iter().map(|&(name, arch)| {
                let (fleet, options) = (&fleet, &options);
                async move {
                    events(Event::WaitingForCluster {
                        arch: name,
                        context,
                        wait: self.scale_up_wait,
                    });
                    let lease = fleet
                        .lease(arch, options, &|progress| {
                            events(Event::Ready {
                                arch: name,
                                progress,
                            });
                        })
                        .await
                        .map_err(|source| Error::Lease {
                            arch: name.to_owned(),
                            source: Box::new(source),
                        })?;
                    Ok::<_, Error>((name, lease))
                }
            }))
            .await?;
            for (name, lease) in leased {
                events(Event::Leased {
                    arch: name,
                    pod: lease.pod(),
                });
                builders.push(Builder {
                    arch: name.to_owned(),
                    client: lease.client().clone(),
                });
                leases.push(lease);
            }
        }
        // Keep the requested order (amd64 before arm64) for progress and metadata.
        builders.sort_by_key(|b| self.placements.iter().position(|(a, _)| *a == b.arch));
        Ok(Builders { builders, leases })
    }

    /// Connects the builders, builds every architecture, pushes the index, and releases the
    /// leases.
    ///
    /// # Errors
    /// Those of [`Plan::connect`] and [`MultiPlatformBuild::run`].
    pub async fn run(
        &self,
        events: &(dyn Fn(Event<'_>) + Sync),
        progress: &(dyn Fn(&str) -> Box<dyn ProgressSink> + Sync),
    ) -> Result<MultiPlatformResult, Error> {
        // Before scaling anything up: a missing ECR login would fail the build anyway.
        self.build.check_registry_login().await?;
        let builders = self.connect(events).await?;
        self.build.run(&builders.builders, progress).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request whose context holds a Dockerfile, so its build options validate; keep the
    /// directory while the request is used.
    fn request() -> (tempfile::TempDir, BuildRequest) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        let mut request = BuildRequest::new(BuildOptions::new(dir.path()), "team/app", "v1");
        request.registry_credentials = Some(Arc::new(DockerConfig::empty()));
        (dir, request)
    }

    fn config(json: &str) -> BuildkitConfig {
        let mut config: BuildkitConfig = serde_json::from_str(json).unwrap();
        config.path = "/repo/.buildkit/buildkit.json".into();
        config
    }

    fn endpoint(s: &str) -> Endpoint {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn builders_win_then_the_shared_endpoint_then_the_cluster_then_the_fallback() {
        let with_cluster = config(r#"{"registry": "r.example", "cluster": "prod"}"#);
        let (_dir, mut req) = request();
        req.builders
            .insert("arm64".into(), endpoint("tcp://10.0.0.7:1234"));
        req.arches = vec!["amd64".into(), "arm64".into()];
        req.fallback = Some(endpoint("unix:///run/buildkit/buildkitd.sock"));

        let plan = req.clone().plan(Some(&with_cluster)).await.unwrap();
        assert_eq!(plan.build.registry, "r.example");
        assert_eq!(
            plan.placements,
            [
                (
                    "amd64".to_owned(),
                    Placement::Cluster {
                        context: "prod".into(),
                        arch: Arch::Amd64
                    }
                ),
                (
                    "arm64".to_owned(),
                    Placement::Endpoint(endpoint("tcp://10.0.0.7:1234"))
                ),
            ]
        );

        let mut shared = req.clone();
        shared.shared = Some(endpoint("tcp://127.0.0.1:1"));
        let plan = shared.plan(Some(&with_cluster)).await.unwrap();
        assert_eq!(
            plan.placements[0].1,
            Placement::Endpoint(endpoint("tcp://127.0.0.1:1"))
        );

        // An empty "cluster" is no cluster, and buildkit.json is asked for one by name.
        let err = req
            .clone()
            .plan(Some(&config(
                r#"{"registry": "r.example", "cluster": " "}"#,
            )))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Config(c) if matches!(**c, ConfigError::Field { field: "cluster", .. })),
            "{err}"
        );
        // Without any buildkit.json, the fallback builds.
        req.registry = Some("r.example".into());
        let plan = req.plan(None).await.unwrap();
        assert_eq!(
            plan.placements[0].1,
            Placement::Endpoint(endpoint("unix:///run/buildkit/buildkitd.sock"))
        );
    }

    #[tokio::test]
    async fn architectures_default_to_the_builders_then_the_fleet() {
        let (_dir, mut req) = request();
        req.registry = Some("r.example".into());
        req.fallback = Some(endpoint("tcp://127.0.0.1:1"));
        let plan = req.clone().plan(None).await.unwrap();
        let arches: Vec<_> = plan.placements.iter().map(|(a, _)| a.as_str()).collect();
        assert_eq!(arches, DEFAULT_ARCHES);

        req.builders
            .insert("arm".into(), endpoint("tcp://127.0.0.1:2"));
        let plan = req.plan(None).await.unwrap();
        let arches: Vec<_> = plan.placements.iter().map(|(a, _)| a.as_str()).collect();
        assert_eq!(arches, ["arm"]);
    }

    #[tokio::test]
    async fn unusable_requests_say_which_value_is_wrong() {
        let (_dir, req) = request();
        let err = req.plan(None).await.unwrap_err();
        assert!(matches!(err, Error::NoRegistry), "{err}");

        let (_dir, mut req) = request();
        req.registry = Some("r.example".into());
        req.arches = vec!["amd64".into()];
        req.builders
            .insert("arm64".into(), endpoint("tcp://127.0.0.1:1"));
        let err = req.plan(None).await.unwrap_err();
        assert!(
            matches!(&err, Error::UnusedBuilder { arch } if arch == "arm64"),
            "{err}"
        );

        let (_dir, mut req) = request();
        req.registry = Some("r.example".into());
        req.arches = vec!["riscv64".into()];
        req.kube_context = Some("prod".into());
        let err = req.plan(None).await.unwrap_err();
        assert!(
            matches!(&err, Error::NotInFleet { arch, .. } if arch == "riscv64"),
            "{err}"
        );

        let (_dir, mut req) = request();
        req.registry = Some("r.example".into());
        let err = req.plan(None).await.unwrap_err();
        assert!(
            matches!(&err, Error::NoBuilder { arch } if arch == "amd64"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn the_s3_cache_comes_from_buildkit_json() {
        let (_dir, req) = request();
        let plan = req
            .clone()
            .plan(Some(&config(
                r#"{"registry": "r.example", "cluster": "prod", "cache_bucket": "b", "cache_bucket_region": "us-east-2"}"#,
            )))
            .await
            .unwrap();
        assert_eq!(
            plan.build.s3_cache,
            Some(S3Cache {
                bucket: "b".into(),
                region: "us-east-2".into()
            })
        );
        let err = req
            .plan(Some(&config(
                r#"{"registry": "r.example", "cluster": "prod", "cache_bucket": "b"}"#,
            )))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("cache_bucket_region"), "{err}");
    }

    /// Planning reads `buildkit.json` off the runtime: here it is a FIFO, whose open blocks
    /// until a writer comes, on a single-threaded runtime. A timer on that runtime must fire
    /// while the open waits; only then is the file written. Read on the runtime, the open
    /// would block the timer too, until the watchdog thread gives up and writes it anyway.
    #[tokio::test]
    async fn planning_reads_files_off_the_runtime() {
        let (dir, mut req) = request();
        std::fs::create_dir(dir.path().join(".git")).unwrap();
        std::fs::create_dir(dir.path().join(".buildkit")).unwrap();
        let fifo = dir.path().join(".buildkit/buildkit.json");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        req.shared = Some(endpoint("tcp://127.0.0.1:1"));
        let (go, went) = std::sync::mpsc::channel::<()>();
        let writer = std::thread::spawn(move || {
            let stalled = went.recv_timeout(Duration::from_secs(10)).is_err();
            std::fs::write(&fifo, r#"{"registry": "r.example"}"#).unwrap();
            stalled
        });
        let path = dir.path().to_owned();
        let planning = tokio::spawn(async move { req.plan_in(&path).await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let _ = go.send(());
        let plan = planning.await.unwrap().unwrap();
        assert_eq!(plan.build.registry, "r.example");
        assert!(
            !writer.join().unwrap(),
            "reading buildkit.json blocked the runtime"
        );
    }
}
