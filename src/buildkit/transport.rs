//! Byte streams to a BuildKit daemon: TCP, unix sockets, TLS, the Docker Engine's HTTP/1.1
//! upgrade, or any stream a caller hands in. Everything above this module sees only a
//! [`Dialer`], so gRPC runs the same way over every transport.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::endpoint::{DockerHost, Endpoint};
use super::error::{TlsProblem, tls_cause};

/// A connected, bidirectional byte stream.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A boxed [`Io`].
pub type BoxedIo = Pin<Box<dyn Io>>;

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
    /// so, as [`super::TlsProblem::ClientCertificateWanted`]).
    fn tls_without_client_certificate(&self) -> bool {
        false
    }
}

/// TLS settings (in the binary, buildctl's `--tlscacert`, `--tlscert`, `--tlskey` and
/// `--tlsservername`).
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// PEM file of the CA that signs the daemon's certificate; the system roots when absent.
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate, for mTLS (needs `key`).
    pub cert: Option<PathBuf>,
    /// PEM client key, for mTLS (needs `cert`).
    pub key: Option<PathBuf>,
    /// The name to verify in the daemon's certificate; the address's host when absent.
    pub server_name: Option<String>,
}

impl TlsOptions {
    /// Whether any TLS option was given, so TLS should be used at all.
    pub fn is_enabled(&self) -> bool {
        self.ca_cert.is_some()
            || self.cert.is_some()
            || self.key.is_some()
            || self.server_name.is_some()
    }
}

/// Problems with TLS material, found before any connection is made.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// A file could not be read.
    #[error("cannot read the {file} {}", path.display())]
    Read {
        /// Which file of [`TlsOptions`] it is.
        file: TlsFile,
        /// The path as set in [`TlsOptions`].
        path: PathBuf,
        /// The I/O error from reading it.
        #[source]
        source: io::Error,
    },
    /// A file holds no usable PEM data.
    #[error("the {file} {} holds no {expected}", path.display())]
    Pem {
        /// Which file of [`TlsOptions`] it is.
        file: TlsFile,
        /// The path as set in [`TlsOptions`].
        path: PathBuf,
        /// What the file should hold.
        expected: &'static str,
    },
    /// Only one half of the client identity was given.
    #[error("mTLS needs both a client certificate and its key")]
    HalfIdentity,
    /// rustls refused the material.
    #[error("invalid TLS material")]
    Rustls(#[from] rustls::Error),
    /// The server name is not a valid DNS name or IP address.
    #[error("TLS server name {0:?} is not a valid host name")]
    ServerName(String),
    /// TLS on a transport that does not support it.
    #[error("TLS options apply only to tcp:// addresses")]
    NotTcp,
}

/// One of the files of [`TlsOptions`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsFile {
    /// [`TlsOptions::ca_cert`].
    CaCertificate,
    /// [`TlsOptions::cert`].
    ClientCertificate,
    /// [`TlsOptions::key`].
    ClientKey,
}

impl fmt::Display for TlsFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsFile::CaCertificate => "CA certificate",
            TlsFile::ClientCertificate => "client certificate",
            TlsFile::ClientKey => "client key",
        })
    }
}

/// A dialer for one built-in [`Endpoint`] (registered schemes make their own): opens raw
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
                Endpoint::Registered { scheme, .. } => Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    DialledByScheme { scheme },
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

/// A registered scheme's endpoint given to the built-in dialer, which cannot dial it.
#[derive(Debug, thiserror::Error)]
#[error("{scheme}:// endpoints are dialled by their registered scheme")]
struct DialledByScheme {
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

fn client_config(opts: &TlsOptions) -> Result<rustls::ClientConfig, TlsConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    match &opts.ca_cert {
        Some(path) => {
            let certs = read_certs(path, TlsFile::CaCertificate)?;
            for cert in certs {
                roots.add(cert)?;
            }
        }
        None => {
            // As buildctl: no CA given means the system's roots.
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                let _ = roots.add(cert);
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut config = match (&opts.cert, &opts.key) {
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert, TlsFile::ClientCertificate)?;
            let key = read_key(key)?;
            builder.with_client_auth_cert(chain, key)?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(TlsConfigError::HalfIdentity),
    };
    // BuildKit is gRPC: HTTP/2 only, and grpc-go checks ALPN.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

fn read_file(path: &Path, file: TlsFile) -> Result<Vec<u8>, TlsConfigError> {
    std::fs::read(path).map_err(|source| TlsConfigError::Read {
        file,
        path: path.to_owned(),
        source,
    })
}

fn read_certs(path: &Path, file: TlsFile) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let pem = read_file(path, file)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsConfigError::Pem {
            file,
            path: path.to_owned(),
            expected: "PEM certificate",
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsConfigError> {
    let pem = read_file(path, TlsFile::ClientKey)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| TlsConfigError::Pem {
        file: TlsFile::ClientKey,
        path: path.to_owned(),
        expected: "PEM private key",
    })
}

/// The TLS problem behind a failed dial, when TLS is what failed (rustls's error travels
/// inside the `io::Error` the TLS stream returns).
pub(crate) fn tls_problem_of(err: &io::Error) -> Option<TlsProblem> {
    let tls = err.get_ref()?.downcast_ref::<rustls::Error>()?;
    tls_cause(tls).tls_problem()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `tcp://` endpoint; nothing is dialled.
    fn endpoint() -> Endpoint {
        "tcp://127.0.0.1:1234".parse().unwrap()
    }

    #[test]
    fn an_unreadable_client_key_names_the_file_and_keeps_the_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert_path = dir.path().join("cert.pem");
        std::fs::write(&cert_path, cert.cert.pem()).unwrap();
        let key_path = dir.path().join("missing-key.pem");
        let tls = TlsOptions {
            cert: Some(cert_path),
            key: Some(key_path.clone()),
            ..TlsOptions::default()
        };
        let Err(err) = EndpointDialer::new(endpoint(), &tls) else {
            panic!("a missing key was accepted");
        };
        let TlsConfigError::Read { file, path, .. } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(*file, TlsFile::ClientKey);
        assert_eq!(path, &key_path);
        let io = std::error::Error::source(&err)
            .and_then(|s| s.downcast_ref::<io::Error>())
            .expect("the I/O error is the source");
        assert_eq!(io.kind(), io::ErrorKind::NotFound);
        let text = err.to_string();
        assert_eq!(
            text,
            format!("cannot read the client key {}", key_path.display())
        );
    }

    #[test]
    fn half_an_identity_speaks_of_the_certificate_and_key_not_flags() {
        let dir = tempfile::tempdir().unwrap();
        let tls = TlsOptions {
            key: Some(dir.path().join("key.pem")),
            ..TlsOptions::default()
        };
        let Err(err) = EndpointDialer::new(endpoint(), &tls) else {
            panic!("half an identity was accepted");
        };
        assert!(matches!(err, TlsConfigError::HalfIdentity), "{err:?}");
        assert_eq!(
            err.to_string(),
            "mTLS needs both a client certificate and its key"
        );
    }

    #[test]
    fn a_certificate_file_without_pem_says_what_it_should_hold() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not PEM").unwrap();
        let tls = TlsOptions {
            ca_cert: Some(ca.clone()),
            ..TlsOptions::default()
        };
        let Err(err) = EndpointDialer::new(endpoint(), &tls) else {
            panic!("a CA file without PEM was accepted");
        };
        assert!(
            matches!(
                err,
                TlsConfigError::Pem {
                    file: TlsFile::CaCertificate,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "the CA certificate {} holds no PEM certificate",
                ca.display()
            )
        );
    }
}
