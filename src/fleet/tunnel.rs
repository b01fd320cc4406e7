//! A local TCP port that carries each connection over its own port-forward to one BuildKit pod,
//! and a [`Lease`] on a pod for builds; both stamp the last-build annotation while open.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::address::PodAddress;
use super::error::{Error, Result};
use super::kube_client::Fleet;
use super::portforward::PodDialer;
use super::scale::{ScaleUpOptions, ScaleUpReport, WaitState};
use super::{Arch, PORT};
use crate::buildkit::Client;
use crate::setters::with_setters;

/// How often an open tunnel or lease records a build: well inside the scale-to-zero job's
/// 30 minutes, so a long build is never scaled away under its client.
pub const RECORD_INTERVAL: Duration = Duration::from_secs(180);

/// Options of [`Fleet::tunnel`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TunnelOptions {
    /// Local port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// Scale up and wait at most this long for a replica; `None` uses running pods only.
    pub scale_up_wait: Option<Duration>,
    /// How often to record a build while the tunnel is open.
    pub record_interval: Duration,
}

impl Default for TunnelOptions {
    fn default() -> Self {
        TunnelOptions {
            port: 0,
            scale_up_wait: Some(DEFAULT_SCALE_UP_WAIT),
            record_interval: RECORD_INTERVAL,
        }
    }
}

/// How long a tunnel or lease waits for its architecture to scale up unless told otherwise
/// (Panfactum's 600 s).
pub const DEFAULT_SCALE_UP_WAIT: Duration = Duration::from_secs(600);

/// What happens while [`Fleet::tunnel`] or [`Fleet::lease`] makes a pod ready, for a caller
/// that shows it.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum ReadyProgress<'a> {
    /// The StatefulSet was looked at and scaled from 0 to 1 if it had no replica.
    Scaled(&'a ScaleUpReport),
    /// A look at the replicas while waiting for one to become available.
    Waiting(&'a [WaitState]),
}

/// An open tunnel: a listener on 127.0.0.1 relaying to one pod. Dropping it (or
/// [`Tunnel::close`]) stops the listener, every relayed connection and the build stamps.
#[derive(Debug)]
pub struct Tunnel {
    local_addr: SocketAddr,
    pod: PodAddress,
    accept: JoinHandle<()>,
    recorder: JoinHandle<()>,
}

impl Tunnel {
    /// The local address the tunnel listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The pod the tunnel relays to.
    pub fn pod(&self) -> &PodAddress {
        &self.pod
    }

    /// Runs until the listener fails (it does not end on its own otherwise).
    pub async fn wait(&mut self) {
        let _ = (&mut self.accept).await;
    }

    /// Closes the listener and every connection, and waits for them to be gone.
    pub async fn close(mut self) {
        self.accept.abort();
        self.recorder.abort();
        let _ = (&mut self.accept).await;
        let _ = (&mut self.recorder).await;
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.accept.abort();
        self.recorder.abort();
    }
}

/// Aborts a task when dropped.
#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Options of [`Fleet::lease`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LeaseOptions {
    /// Scale up and wait at most this long for a replica; `None` uses running pods only.
    pub scale_up_wait: Option<Duration>,
    /// How often to record a build while the lease is held.
    pub record_interval: Duration,
}

impl Default for LeaseOptions {
    fn default() -> Self {
        LeaseOptions {
            scale_up_wait: Some(DEFAULT_SCALE_UP_WAIT),
            record_interval: RECORD_INTERVAL,
        }
    }
}

/// A BuildKit client on one chosen pod of the fleet, for a build. While held, the pod's
/// architecture is stamped as building every [`LeaseOptions::record_interval`]; dropping it
/// stops that (and the connection closes with the last clone of the client).
#[derive(Debug)]
pub struct Lease {
    client: Client,
    pod: PodAddress,
    _recorder: AbortOnDrop,
}

impl Lease {
    /// The connected BuildKit client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The pod the lease connected to: the least-loaded ready pod of the architecture when the
    /// lease was taken.
    pub fn pod(&self) -> &PodAddress {
        &self.pod
    }
}

impl Fleet {
    fn spawn_recorder(&self, arch: Arch, interval: Duration) -> JoinHandle<()> {
        let fleet = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await; // the first tick is immediate; the caller has just recorded
            loop {
                ticks.tick().await;
                if let Err(err) = fleet.record_build(arch).await {
                    tracing::warn!("cannot record a build for {arch}: {err}");
                }
            }
        })
    }

    /// The one path to a pod a tunnel or lease uses: with `wait`, scale `arch` from 0 to 1 and
    /// wait for an available replica (which records a build); without, record a build. Then
    /// choose its least-loaded pod.
    async fn ready_pod(
        &self,
        arch: Arch,
        wait: Option<Duration>,
        progress: &(dyn Fn(ReadyProgress<'_>) + Send + Sync),
    ) -> Result<PodAddress> {
        match wait {
            Some(timeout) => {
                let reports = self
                    .scale_up(&[arch], &ScaleUpOptions::default(), &|_| {})
                    .await?;
                for report in &reports {
                    progress(ReadyProgress::Scaled(report));
                }
                self.wait_available(&[arch], timeout, &|states| {
                    progress(ReadyProgress::Waiting(states));
                })
                .await?;
            }
            None => self.record_build(arch).await?,
        }
        self.get_address(arch).await
    }

    /// Makes a pod of `arch` ready (scaling up per [`TunnelOptions::scale_up_wait`]), checks
    /// that a port-forward to it is allowed, then listens on 127.0.0.1 and relays each
    /// accepted connection over a new port-forward to the pod's BuildKit port. Builds are
    /// recorded periodically while the tunnel is open. `progress` sees the scale-up.
    ///
    /// # Errors
    /// Errors of [`Fleet::scale_up`], [`Fleet::wait_available`], [`Fleet::get_address`] and
    /// [`Fleet::record_build`]; [`Error::Forbidden`] when port-forwarding is not allowed;
    /// [`Error::Bind`] when the port is taken.
    pub async fn tunnel(
        &self,
        arch: Arch,
        options: &TunnelOptions,
        progress: &(dyn Fn(ReadyProgress<'_>) + Send + Sync),
    ) -> Result<Tunnel> {
        let pod = self
            .ready_pod(arch, options.scale_up_wait, progress)
            .await?;
        let dialer = PodDialer::new(self, pod.pod.clone(), PORT);
        // Fail now, not on the first client connection, when RBAC, the pod or its BuildKit
        // says no.
        drop(dialer.open_checked().await?);
        let addr = format!("127.0.0.1:{}", options.port);
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|source| Error::Bind {
                addr: addr.clone(),
                source,
            })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| Error::Bind { addr, source })?;
        let recorder = self.spawn_recorder(arch, options.record_interval);
        let accept = tokio::spawn(accept_loop(listener, dialer));
        Ok(Tunnel {
            local_addr,
            pod,
            accept,
            recorder,
        })
    }

    /// Makes a pod of `arch` ready the same way as [`Fleet::tunnel`] and connects a BuildKit
    /// client to it; the returned lease keeps recording builds until dropped. This is what a
    /// cluster build uses for each architecture.
    ///
    /// # Errors
    /// Errors of [`Fleet::scale_up`], [`Fleet::wait_available`], [`Fleet::get_address`], and
    /// [`Error::Buildkit`] when the pod's BuildKit cannot be reached.
    pub async fn lease(
        &self,
        arch: Arch,
        options: &LeaseOptions,
        progress: &(dyn Fn(ReadyProgress<'_>) + Send + Sync),
    ) -> Result<Lease> {
        let pod = self
            .ready_pod(arch, options.scale_up_wait, progress)
            .await?;
        let client = self.pod_client(&pod.pod, Some(&pod.ip)).await?;
        let recorder = AbortOnDrop(self.spawn_recorder(arch, options.record_interval));
        Ok(Lease {
            client,
            pod,
            _recorder: recorder,
        })
    }
}

async fn accept_loop(listener: TcpListener, dialer: PodDialer) {
    // Connections live in a JoinSet so that aborting this task aborts them all.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let dialer = dialer.clone();
                    connections.spawn(relay(socket, peer, dialer));
                }
                Err(err) => {
                    tracing::warn!("tunnel: accept failed: {err}");
                    // Transient (e.g. too many open files): back off briefly rather than spin.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn relay(mut socket: tokio::net::TcpStream, peer: SocketAddr, dialer: PodDialer) {
    let _ = socket.set_nodelay(true);
    // Strict flushes here (no `coalesce_flushes`): the copy flushes only once the local
    // socket has nothing more to read, so its frames are already gathered, and a flush put
    // off would wait for the other way's next read, which a client that is not reading
    // would hold up.
    let mut upstream = match dialer.open().await {
        Ok(stream) => stream,
        Err(err) => {
            tracing::warn!("tunnel: connection from {peer}: {err}");
            return;
        }
    };
    match tokio::io::copy_bidirectional(&mut socket, &mut upstream).await {
        Ok((up, down)) => tracing::debug!(%peer, up, down, "tunnel connection closed"),
        Err(err) => tracing::warn!(
            "tunnel: connection from {peer} to pod {}: {err}",
            dialer.pod()
        ),
    }
}

with_setters!(TunnelOptions {
    with_port => port: u16,
    with_scale_up_wait => scale_up_wait: Option<Duration>,
    with_record_interval => record_interval: Duration,
});

with_setters!(LeaseOptions {
    with_scale_up_wait => scale_up_wait: Option<Duration>,
    with_record_interval => record_interval: Duration,
});
