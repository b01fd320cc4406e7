//! A connected BuildKit client and the daemon operations: workers, info, disk usage, prune.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tonic::transport::Channel;

use super::connector::Connectors;
use super::endpoint::{DockerHost, Endpoint};
use super::error::{Error, Result, tls_problem_of};
use super::proto::control::control_client::ControlClient;
use super::proto::control::{self as pb_control, InfoRequest, ListWorkersRequest};
use super::proto::moby::buildkit::v1::types::WorkerRecord;
use super::tls::TlsOptions;
use super::transport::{Dialer, EndpointDialer, read_ahead};
use crate::registry::Platform;
use crate::setters::with_setters;

/// BuildKit's message size limit in both directions (containerd's defaults, 16 MiB).
pub const MAX_MESSAGE_SIZE: usize = 16 << 20;

/// How long a connection attempt may take before it fails.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Receive window of each stream of the Control connection. The session stream
/// (`Control.Session`) carries exported files to us, so this is what one round trip can
/// bring: 4 MiB keeps a local export fast over a port-forward too.
const CONTROL_STREAM_WINDOW: u32 = 4 << 20;

/// Receive window of the whole Control connection, fixed (not hyper's adaptive window) because
/// it sizes h2's DATA-frame budget: h2 charges `256 - len` for each DATA frame under 256
/// bytes not yet read by us and ends the connection with GOAWAY `ENHANCE_YOUR_CALM
/// "too_many_data_frames"` past half the connection window. The session stream brings one
/// small frame per message of the daemon (a REQ, a window update: ~20 bytes at the least),
/// and the adaptive window starts at 64 KiB, a budget of about 140 such frames: any pause of
/// the reader on a busy machine ended the session. With 128 MiB (a 64 MiB budget), even a
/// whole [`CONTROL_STREAM_WINDOW`] of 20-byte frames left unread (~49 MiB) fits, so no
/// scheduling delay can end it; each stream still holds at most its own window.
const CONTROL_CONNECTION_WINDOW: u32 = 128 << 20;

/// A connected BuildKit client. Cheap to clone: clones share one HTTP/2 connection.
#[derive(Clone)]
pub struct Client {
    control: ControlClient<Channel>,
    /// The same connection, for the daemon's other services (its content store).
    channel: Channel,
    dialer: Arc<dyn Dialer>,
    endpoint: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to an address of a built-in scheme (`tcp://`, `unix://`, `docker://`,
    /// `docker+unix://`); [`Client::connect_with`] for the schemes of connectors.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), pf_buildkit::buildkit::Error> {
    /// use pf_buildkit::buildkit::{Client, Endpoint, TlsOptions};
    /// let endpoint: Endpoint = "unix:///run/buildkit/buildkitd.sock".parse()?;
    /// let client = Client::connect(endpoint, &TlsOptions::default()).await?;
    /// for worker in client.workers().await? {
    ///     for platform in &worker.platforms {
    ///         println!("{} builds {platform}", worker.id);
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Connect`] or [`Error::ConnectTimeout`] when the daemon cannot be reached within
    /// [`CONNECT_TIMEOUT`]; [`Error::Tls`] for unusable TLS material; [`Error::UnknownScheme`]
    /// for an endpoint of a connector's scheme.
    pub async fn connect(endpoint: Endpoint, tls: &TlsOptions) -> Result<Self> {
        Self::connect_with(endpoint, tls, &Connectors::new()).await
    }

    /// Connects to an address of a built-in scheme or of one of `connectors` (such as the
    /// fleet's `kube-pod://`, `fleet::connectors()`), whose connector makes the dialer.
    ///
    /// # Errors
    /// As [`Client::connect`]; [`Error::Scheme`] when the connector cannot make its dialer,
    /// [`Error::UnknownScheme`] when `connectors` has none for the endpoint's scheme.
    pub async fn connect_with(
        endpoint: Endpoint,
        tls: &TlsOptions,
        connectors: &Connectors,
    ) -> Result<Self> {
        if let Endpoint::Custom { scheme, address } = &endpoint {
            let connector = connectors.get(scheme).ok_or_else(|| Error::UnknownScheme {
                endpoint: endpoint.to_string(),
                scheme: scheme.clone(),
            })?;
            let dialer = connector
                .dialer(address.clone(), tls.clone())
                .await
                .map_err(|source| Error::Scheme {
                    endpoint: endpoint.to_string(),
                    source,
                })?;
            return Self::connect_with_shared_dialer(dialer).await;
        }
        let dialer = EndpointDialer::new(endpoint, tls)?;
        Self::connect_with_dialer(dialer).await
    }

    /// Connects over streams from a caller-supplied [`Dialer`]. The dialer is called again
    /// whenever the connection must be re-established.
    ///
    /// # Errors
    /// [`Error::Connect`] or [`Error::ConnectTimeout`] when the first stream cannot be opened.
    pub async fn connect_with_dialer(dialer: impl Dialer) -> Result<Self> {
        Self::connect_with_shared_dialer(Arc::new(dialer)).await
    }

    /// [`Client::connect_with_dialer`] for a dialer already shared, as a
    /// [`Connector`](super::Connector) makes one.
    ///
    /// # Errors
    /// [`Error::Connect`] or [`Error::ConnectTimeout`] when the first stream cannot be opened.
    pub async fn connect_with_shared_dialer(dialer: Arc<dyn Dialer>) -> Result<Self> {
        let endpoint = dialer.describe();
        // One deadline for the connection and the probe together: "fails within
        // CONNECT_TIMEOUT" holds even when the connection takes most of it.
        let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
        // The first stream is dialled here rather than by tonic, so that a failure keeps the
        // dialer's own error (a scheme's typed error inside it) as the source; tonic would
        // hand it back only behind its transport layers, by reference.
        let first = match tokio::time::timeout_at(deadline, dialer.dial()).await {
            Ok(Ok(io)) => io,
            Ok(Err(source)) if source.kind() != std::io::ErrorKind::TimedOut => {
                return Err(Error::Connect {
                    tls: tls_problem_of(&source),
                    endpoint,
                    source,
                });
            }
            Ok(Err(_)) | Err(_) => {
                return Err(Error::ConnectTimeout {
                    endpoint,
                    seconds: CONNECT_TIMEOUT.as_secs(),
                });
            }
        };
        let first = Arc::new(std::sync::Mutex::new(Some(first)));
        let connector_dialer = dialer.clone();
        let connector = tower::service_fn(move |_uri: http::Uri| {
            // Reconnections dial again; the first connection takes the stream above.
            let ready = first.lock().ok().and_then(|mut first| first.take());
            let dialer = connector_dialer.clone();
            async move {
                let io = match ready {
                    Some(io) => io,
                    None => dialer.dial().await?,
                };
                Ok::<_, std::io::Error>(TokioIo::new(read_ahead(io)))
            }
        });
        let builder = tonic::transport::Endpoint::from_static("http://buildkit")
            .connect_timeout(CONNECT_TIMEOUT)
            // grpc-go servers allow one ping per 5 minutes by default; more earns a GOAWAY.
            .http2_keep_alive_interval(Duration::from_secs(300))
            .keep_alive_timeout(Duration::from_secs(20))
            .initial_stream_window_size(CONTROL_STREAM_WINDOW)
            .initial_connection_window_size(CONTROL_CONNECTION_WINDOW);
        let channel = builder.connect_with_connector(connector);
        let channel = match tokio::time::timeout_at(deadline, channel).await {
            Err(_) => {
                return Err(Error::ConnectTimeout {
                    endpoint,
                    seconds: CONNECT_TIMEOUT.as_secs(),
                });
            }
            Ok(Err(err)) => return Err(handshake_error(endpoint, err)),
            Ok(Ok(channel)) => channel,
        };
        let control = ControlClient::new(channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        let client = Client {
            control,
            channel,
            dialer,
            endpoint,
        };
        client.probe(deadline).await?;
        Ok(client)
    }

    /// Checks that the peer answers gRPC at all, by `deadline`: a TCP connection can succeed
    /// to a peer that never speaks, and every later call would then hang.
    async fn probe(&self, deadline: tokio::time::Instant) -> Result<()> {
        let mut control = self.control();
        let call = control.info(InfoRequest {});
        match tokio::time::timeout_at(deadline, call).await {
            Err(_) => Err(Error::ConnectTimeout {
                endpoint: self.endpoint.clone(),
                seconds: CONNECT_TIMEOUT.as_secs(),
            }),
            // Daemons older than v0.11 have no Info; they are still BuildKit.
            Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => Ok(()),
            Ok(Err(status)) => Err(Error::probe(
                &self.endpoint,
                status,
                self.dialer.tls_without_client_certificate(),
            )),
            Ok(Ok(_)) => Ok(()),
        }
    }

    /// The daemon's address, for messages.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The generated Control client, for calls this type does not wrap. Unstable, as
    /// [`proto`](super::proto) is: it follows the wire and the gRPC library's versions.
    #[doc(hidden)]
    pub fn control(&self) -> ControlClient<Channel> {
        self.control.clone()
    }

    /// The connection, for the daemon's services other than Control.
    pub(crate) fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// The Docker Engine behind this client, if any (sessions then use `/session`).
    pub fn docker_host(&self) -> Option<&DockerHost> {
        self.dialer.docker_host()
    }

    /// The workers the daemon runs builds on.
    ///
    /// # Errors
    /// [`Error::Rpc`] when the call fails.
    pub async fn workers(&self) -> Result<Vec<Worker>> {
        let response = self
            .first_call(
                self.control().list_workers(ListWorkersRequest::default()),
                "ListWorkers",
            )
            .await?;
        Ok(response.record.into_iter().map(Worker::from).collect())
    }

    /// The daemon's version.
    ///
    /// # Errors
    /// [`Error::Rpc`] when the call fails.
    pub async fn info(&self) -> Result<DaemonInfo> {
        let response = self
            .first_call(self.control().info(InfoRequest {}), "Info")
            .await?;
        let version = response.buildkit_version.unwrap_or_default();
        Ok(DaemonInfo {
            package: version.package,
            version: version.version,
            revision: version.revision,
        })
    }

    /// The build cache records and their sizes.
    ///
    /// # Errors
    /// [`Error::Rpc`] when the call fails.
    pub async fn disk_usage(&self) -> Result<Vec<CacheRecord>> {
        let response = self
            .first_call(
                self.control()
                    .disk_usage(pb_control::DiskUsageRequest::default()),
                "DiskUsage",
            )
            .await?;
        Ok(response.record.into_iter().map(CacheRecord::from).collect())
    }

    /// Frees build cache; returns the records the daemon deleted.
    ///
    /// # Errors
    /// [`Error::Rpc`] when the call fails.
    pub async fn prune(&self, options: &PruneOptions) -> Result<Vec<CacheRecord>> {
        let request = pb_control::PruneRequest {
            filter: options.filters.clone(),
            all: options.all,
            keep_duration: options
                .keep_duration
                .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)),
            reserved_space: options
                .keep_storage
                .map_or(0, |b| i64::try_from(b).unwrap_or(i64::MAX)),
            ..Default::default()
        };
        let mut stream = self
            .first_call(self.control().prune(request), "Prune")
            .await?;
        let mut freed = Vec::new();
        while let Some(record) = stream.next().await {
            let record = record.map_err(|s| Error::rpc(&self.endpoint, "Prune", s))?;
            freed.push(CacheRecord::from(record));
        }
        Ok(freed)
    }

    /// The refs of the builds running now, from the daemon's build history
    /// (`ListenBuildHistory` with `activeOnly` and `earlyExit`): `None` when the daemon has no
    /// history API (BuildKit before v0.11, or an embedding that leaves it out).
    ///
    /// Unlike cache records "in use", which a finished build's history record can keep
    /// holding, this names only builds in progress.
    ///
    /// # Errors
    /// [`Error::Rpc`] when the call fails for another reason.
    pub async fn active_builds(&self) -> Result<Option<Vec<String>>> {
        let request = pb_control::BuildHistoryRequest {
            active_only: true,
            early_exit: true,
            ..Default::default()
        };
        let mut stream = match self.control().listen_build_history(request).await {
            Ok(response) => response.into_inner(),
            Err(status) if status.code() == tonic::Code::Unimplemented => return Ok(None),
            Err(status) => return Err(Error::rpc(&self.endpoint, "ListenBuildHistory", status)),
        };
        let mut refs = Vec::new();
        while let Some(event) = stream.next().await {
            let event = event.map_err(|s| Error::rpc(&self.endpoint, "ListenBuildHistory", s))?;
            // A daemon answering activeOnly sends STARTED events; anything with a completion
            // time is not running, whatever its event type says.
            if let Some(record) = event.record
                && record.completed_at.is_none()
                && event.r#type != pb_control::BuildHistoryEventType::Deleted as i32
            {
                refs.push(record.r#ref);
            }
        }
        Ok(Some(refs))
    }

    /// Awaits a unary call (or a stream's headers) and maps its failure.
    pub(super) async fn first_call<T>(
        &self,
        call: impl Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
        name: &'static str,
    ) -> Result<T> {
        call.await
            .map(tonic::Response::into_inner)
            .map_err(|s| Error::rpc(&self.endpoint, name, s))
    }
}

/// The HTTP/2 handshake on a dialled stream failed: the I/O error under it, when there is
/// one, says what went wrong.
fn handshake_error(endpoint: String, err: tonic::transport::Error) -> Error {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return Error::ConnectTimeout {
                    endpoint,
                    seconds: CONNECT_TIMEOUT.as_secs(),
                };
            }
            let tls = tls_problem_of(io);
            return Error::Connect {
                endpoint,
                tls,
                source: std::io::Error::other(err),
            };
        }
        next = e.source();
    }
    Error::Connect {
        endpoint,
        tls: None,
        source: std::io::Error::other(err),
    }
}

/// A BuildKit worker: where builds run, and for which platforms.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Worker {
    /// The worker's id, as the daemon reports it.
    pub id: String,
    /// Platforms it can build for (in JSON, as `os/arch[/variant]` strings, as buildctl
    /// prints them).
    #[serde(serialize_with = "platforms_as_text")]
    pub platforms: Vec<Platform>,
    /// Worker labels (executor, snapshotter, hostname, …).
    pub labels: BTreeMap<String, String>,
    /// The worker's garbage-collection rules, as the daemon reports them; empty when it has none.
    pub gc_policies: Vec<GcPolicy>,
    /// The BuildKit version running the worker, when reported.
    pub buildkit_version: Option<DaemonInfo>,
}

/// One garbage-collection rule of a worker.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct GcPolicy {
    /// Applies to all records, not only unused ones.
    pub all: bool,
    /// Keep records used within this many seconds.
    pub keep_duration_seconds: i64,
    /// Bytes of cache the rule always keeps (0: no floor).
    pub reserved_space: i64,
    /// Bytes of cache above which the rule prunes (0: no ceiling).
    pub max_used_space: i64,
    /// Bytes of the disk the rule keeps free (0: no such target).
    pub min_free_space: i64,
    /// containerd-style filters choosing the records the rule covers; empty covers all.
    pub filters: Vec<String>,
}

/// The daemon's version.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct DaemonInfo {
    /// Package, e.g. `github.com/moby/buildkit` or `github.com/docker/docker`.
    pub package: String,
    /// Version, e.g. `v0.13.2`.
    pub version: String,
    /// The source revision (git commit) the daemon was built from.
    pub revision: String,
}

/// One record of the build cache.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct CacheRecord {
    /// The record's id, as `parents` of other records name it.
    pub id: String,
    /// Mutable (a working snapshot, such as a local source) rather than a committed layer.
    pub mutable: bool,
    /// Held by a running build.
    pub in_use: bool,
    /// Bytes on disk, as the daemon counted them.
    pub size: i64,
    /// Its data is also held by another record.
    pub shared: bool,
    /// Kind of record (`regular`, `source.local`, `exec.cachemount`, …).
    pub record_type: String,
    /// What created it, in the daemon's words (e.g. the `RUN` command); may be empty.
    pub description: String,
    /// Creation time, seconds since the Unix epoch; `None` when the daemon sent none.
    pub created_at: Option<i64>,
    /// Last use, seconds since the Unix epoch; `None` when the daemon sent none.
    pub last_used_at: Option<i64>,
    /// How many times builds have used it.
    pub usage_count: i64,
    /// The ids of the records it was built on; empty for a base record.
    pub parents: Vec<String>,
}

/// What to prune.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct PruneOptions {
    /// Prune everything, not only records the GC would consider unused.
    pub all: bool,
    /// Keep records used more recently than this; with `None`, age protects no record.
    pub keep_duration: Option<Duration>,
    /// Stop pruning once the cache is down to this many bytes; `None` has no such floor.
    pub keep_storage: Option<u64>,
    /// containerd-style filters (e.g. `type==source.local`) choosing what may be pruned.
    pub filters: Vec<String>,
}

impl From<WorkerRecord> for Worker {
    fn from(r: WorkerRecord) -> Self {
        Worker {
            id: r.id,
            platforms: r.platforms.iter().map(platform_of).collect(),
            labels: r.labels.into_iter().collect(),
            gc_policies: r
                .gc_policy
                .into_iter()
                .map(|p| GcPolicy {
                    all: p.all,
                    keep_duration_seconds: p.keep_duration / 1_000_000_000,
                    reserved_space: p.reserved_space,
                    max_used_space: p.max_used_space,
                    min_free_space: p.min_free_space,
                    filters: p.filters,
                })
                .collect(),
            buildkit_version: r.buildkit_version.map(|v| DaemonInfo {
                package: v.package,
                version: v.version,
                revision: v.revision,
            }),
        }
    }
}

impl From<pb_control::UsageRecord> for CacheRecord {
    fn from(r: pb_control::UsageRecord) -> Self {
        CacheRecord {
            id: r.id,
            mutable: r.mutable,
            in_use: r.in_use,
            size: r.size,
            shared: r.shared,
            record_type: r.record_type,
            description: r.description,
            created_at: r.created_at.map(|t| t.seconds),
            last_used_at: r.last_used_at.map(|t| t.seconds),
            usage_count: r.usage_count,
            parents: r.parents,
        }
    }
}

/// A platform the daemon names, as the crate's own type.
fn platform_of(p: &super::proto::pb::Platform) -> Platform {
    let given = |s: &String| Some(s.clone()).filter(|s| !s.is_empty());
    let mut platform = Platform::new(&p.os, &p.architecture);
    platform.variant = given(&p.variant);
    platform.os_version = given(&p.os_version);
    platform.os_features = Some(p.os_features.clone()).filter(|f| !f.is_empty());
    platform
}

/// Serialises platforms as `os/arch[/variant]` strings, the shape `workers --format json`
/// has always had.
fn platforms_as_text<S: serde::Serializer>(
    platforms: &[Platform],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(platforms.iter().map(ToString::to_string))
}

with_setters!(PruneOptions {
    with_all => all: bool,
    with_keep_duration => keep_duration: Option<Duration>,
    with_keep_storage => keep_storage: Option<u64>,
    with_filters => filters: Vec<String>,
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_platforms_are_the_crates_own_and_print_as_buildctl_does() {
        let wire = |os: &str, arch: &str, variant: &str| super::super::proto::pb::Platform {
            os: os.into(),
            architecture: arch.into(),
            variant: variant.into(),
            ..Default::default()
        };
        let worker = Worker {
            id: "w".into(),
            platforms: [wire("linux", "amd64", ""), wire("linux", "arm", "v7")]
                .iter()
                .map(platform_of)
                .collect(),
            labels: BTreeMap::new(),
            gc_policies: Vec::new(),
            buildkit_version: None,
        };
        assert_eq!(
            worker.platforms,
            [
                Platform::new("linux", "amd64"),
                Platform::new("linux", "arm").with_variant("v7")
            ]
        );
        // `workers --format json` keeps its strings.
        let json = serde_json::to_value(&worker).unwrap();
        assert_eq!(
            json["platforms"],
            serde_json::json!(["linux/amd64", "linux/arm/v7"])
        );
    }
}
