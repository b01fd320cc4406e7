//! Byte streams to a BuildKit daemon: TCP, unix sockets, TLS, the Docker Engine's HTTP/1.1
//! upgrade, or any stream a caller hands in. Everything above this module sees only a
//! [`Dialer`], so gRPC runs the same way over every transport.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::rustls::pki_types::ServerName;

use super::endpoint::{DockerHost, Endpoint};
use super::tls::{TlsConfigError, TlsOptions, client_config};

/// A connected, bidirectional byte stream.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A boxed [`Io`].
pub type BoxedIo = Pin<Box<dyn Io>>;

/// Bytes taken from a connection in one read. HTTP/2 asks for little more than the frame it
/// is decoding (grpc-go sends 16 KiB frames), so without this an exported tar of 380 MB cost
/// 47,000 `recvfrom`s of 7 KiB each, about two system calls per file of a 20,000-file
/// context; reading ahead takes whatever the socket holds, up to this, in one call.
const READ_AHEAD: usize = 256 << 10;

/// `io` with its reads buffered [`READ_AHEAD`] bytes at a time; writes pass straight through.
pub(crate) fn read_ahead(io: BoxedIo) -> BoxedIo {
    Box::pin(tokio::io::BufReader::with_capacity(READ_AHEAD, io))
}

/// Opens a fresh byte stream to one BuildKit daemon each time it is called.
///
/// Implement this to carry BuildKit's gRPC over a transport of your own (an SSH channel, a
/// Kubernetes port-forward, an in-memory pipe). The stream must reach the daemon's gRPC
/// listener directly: the client speaks HTTP/2 with prior knowledge on it.
///
/// ```no_run
/// use pf_buildkit::buildkit::{BoxedIo, Client, Dialer};
/// use futures_util::future::BoxFuture;
///
/// struct Relay;
/// impl Dialer for Relay {
///     fn dial(&self) -> BoxFuture<'static, std::io::Result<BoxedIo>> {
///         Box::pin(async {
///             let s = tokio::net::TcpStream::connect("127.0.0.1:1234").await?;
///             Ok(Box::pin(s) as BoxedIo)
///         })
///     }
///     fn describe(&self) -> String { "relay to 127.0.0.1:1234".into() }
/// }
///
/// # async fn run() -> Result<(), pf_buildkit::buildkit::Error> {
/// let client = Client::connect_with_dialer(Relay).await?;
/// println!("{:?}", client.workers().await?);
/// # Ok(()) }
/// ```
pub trait Dialer: Send + Sync + 'static {
    /// Opens one new connection.
    fn dial(&self) -> BoxFuture<'static, io::Result<BoxedIo>>;

    /// Names the peer in messages, e.g. `tcp://10.0.0.5:1234`.
    fn describe(&self) -> String;

    /// The Docker Engine behind this dialer, when there is one: sessions then use the
    /// Engine's `/session` upgrade rather than `Control.Session`.
    fn docker_host(&self) -> Option<&DockerHost> {
        None
    }

    /// Whether this dialer speaks TLS without offering a client certificate: a peer that
    /// closes the connection before answering then most likely requires one (the error says
    /// so, as [`TlsProblem::ClientCertificateWanted`](super::TlsProblem::ClientCertificateWanted)).
    fn tls_without_client_certificate(&self) -> bool {
        false
    }
}

/// A dialer for one built-in [`Endpoint`] (connectors make their own): opens raw
/// streams that carry BuildKit's gRPC, e.g. to relay them elsewhere.
pub struct EndpointDialer {
    endpoint: Endpoint,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    client_identity: bool,
}

impl EndpointDialer {
    /// Prepares a dialer; TLS files are read now, so bad ones fail before any connection.
    ///
    /// # Errors
    /// When TLS files cannot be read or parsed, or TLS is asked for a non-TCP endpoint.
    pub fn new(endpoint: Endpoint, tls: &TlsOptions) -> Result<Self, TlsConfigError> {
        let tls_connector = if tls.is_enabled() {
            let host = endpoint.tls_server_name().ok_or(TlsConfigError::NotTcp)?;
            let name = tls.server_name.clone().unwrap_or_else(|| host.to_owned());
            let server_name =
                ServerName::try_from(name.clone()).map_err(|_| TlsConfigError::ServerName(name))?;
            Some((
                tokio_rustls::TlsConnector::from(Arc::new(client_config(tls)?)),
                server_name,
            ))
        } else {
            None
        };
        Ok(EndpointDialer {
            endpoint,
            tls: tls_connector,
            client_identity: tls.cert.is_some(),
        })
    }
}

impl Dialer for EndpointDialer {
    fn dial(&self) -> BoxFuture<'static, io::Result<BoxedIo>> {
        let endpoint = self.endpoint.clone();
        let tls = self.tls.clone();
        Box::pin(async move {
            match endpoint {
                Endpoint::Tcp { host, port } => {
                    let tcp = TcpStream::connect((host.as_str(), port)).await?;
                    tcp.set_nodelay(true)?;
                    match tls {
                        None => Ok(Box::pin(tcp) as BoxedIo),
                        Some((connector, name)) => {
                            let stream = connector.connect(name, tcp).await?;
                            Ok(Box::pin(stream) as BoxedIo)
                        }
                    }
                }
                Endpoint::Unix(path) => Ok(Box::pin(UnixStream::connect(path).await?) as BoxedIo),
                Endpoint::Docker(host) => docker_upgrade(&host, "/grpc", &[]).await,
                Endpoint::Custom { scheme, .. } => Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    DialledByConnector { scheme },
                )),
            }
        })
    }

    fn describe(&self) -> String {
        self.endpoint.to_string()
    }

    fn tls_without_client_certificate(&self) -> bool {
        // TLS 1.3 servers refuse a missing client certificate after the handshake, and the
        // alert can be lost when the close wins the race.
        self.tls.is_some() && !self.client_identity
    }

    fn docker_host(&self) -> Option<&DockerHost> {
        match &self.endpoint {
            Endpoint::Docker(host) => Some(host),
            _ => None,
        }
    }
}

/// A custom scheme's endpoint given to the built-in dialer, which cannot dial it.
#[derive(Debug, thiserror::Error)]
#[error("{scheme}:// endpoints are dialled by their connector")]
struct DialledByConnector {
    scheme: String,
}

/// Opens a connection to the Docker Engine API and upgrades `POST {path}` to a raw stream
/// (`/grpc`: we are the HTTP/2 client; `/session`: the Engine is).
pub(crate) async fn docker_upgrade(
    host: &DockerHost,
    path: &str,
    headers: &[(String, String)],
) -> io::Result<BoxedIo> {
    let (stream, host_header): (BoxedIo, String) = match host {
        DockerHost::Unix(socket) => (
            Box::pin(UnixStream::connect(socket).await?),
            "docker".into(),
        ),
        DockerHost::Tcp { host, port } => {
            let tcp = TcpStream::connect((host.as_str(), *port)).await?;
            tcp.set_nodelay(true)?;
            (Box::pin(tcp), format!("{host}:{port}"))
        }
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(io::Error::other)?;
    tokio::spawn(async move {
        // Ends when the upgrade hands the socket over, or when the request fails.
        let _ = conn.with_upgrades().await;
    });
    let mut request = http::Request::post(path)
        .header(http::header::HOST, host_header)
        .header(http::header::CONNECTION, "Upgrade")
        .header(http::header::UPGRADE, "h2c");
    for (name, value) in headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(io::Error::other)?;
    let response = sender
        .send_request(request)
        .await
        .map_err(io::Error::other)?;
    if response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&body[..body.len().min(300)])
            .trim()
            .to_owned();
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            UpgradeRefused {
                path: path.to_owned(),
                status,
                body: text,
            },
        ));
    }
    let upgraded = hyper::upgrade::on(response)
        .await
        .map_err(io::Error::other)?;
    Ok(Box::pin(TokioIo::new(upgraded)))
}

/// The Docker Engine answered an upgrade request with something other than `101`.
#[derive(Debug)]
pub(crate) struct UpgradeRefused {
    path: String,
    status: http::StatusCode,
    body: String,
}

impl fmt::Display for UpgradeRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the Docker Engine API refused the {} upgrade with HTTP {}",
            self.path, self.status
        )?;
        if !self.body.is_empty() {
            write!(f, " ({})", self.body)?;
        }
        f.write_str("; is this a Docker Engine with BuildKit (API 1.39 or newer)?")
    }
}

impl std::error::Error for UpgradeRefused {}
