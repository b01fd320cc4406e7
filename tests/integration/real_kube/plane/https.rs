//! One request at a time to the control plane's daemons (etcd's plain HTTP, the API server's
//! and the kubelet handler's HTTPS), blocking, over a fresh connection each: what starting and
//! seeding a control plane needs, and no more. HTTP/1.0, so every answer is its bytes up to
//! the connection's end (Go's server neither chunks nor keeps such a connection open).

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::error::{Error, Result};

/// How long one request may take (the API server answers slowly on a loaded machine).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// TLS settings for one server: the CA it must present a certificate from, and optionally
/// the client certificate to present.
pub type Tls = Arc<rustls::ClientConfig>;

/// An answer: its status code and body.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status code.
    pub code: u16,
    /// The body, as text.
    pub body: String,
}

impl Answer {
    /// 2xx.
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.code)
    }
}

/// A request to `127.0.0.1:port`.
pub struct Request<'a> {
    /// `GET`, `POST`, `PATCH`, …
    pub method: &'a str,
    /// Path and query.
    pub path: &'a str,
    /// A bearer token.
    pub token: Option<&'a str>,
    /// Content type and body.
    pub body: Option<(&'a str, &'a [u8])>,
}

impl<'a> Request<'a> {
    /// A `GET` of `path` without credentials.
    pub fn get(path: &'a str) -> Request<'a> {
        Request {
            method: "GET",
            path,
            token: None,
            body: None,
        }
    }
}

/// TLS that trusts the CA certificate(s) in the PEM file `ca`, presenting the certificate and
/// key in `client` when given.
pub fn tls_from_files(ca: &Path, client: Option<(&Path, &Path)>) -> Result<Tls> {
    let roots = CertificateDer::pem_file_iter(ca)
        .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| Error::msg(format!("read the CA certificate {}: {e}", ca.display())))?;
    let identity = match client {
        None => None,
        Some((cert, key)) => Some((
            CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(|e| Error::msg(format!("read {}: {e}", cert.display())))?,
            PrivateKeyDer::from_pem_file(key)
                .map_err(|e| Error::msg(format!("read {}: {e}", key.display())))?,
        )),
    };
    tls(roots, identity)
}

/// TLS that trusts `roots`, presenting `identity` (certificate chain and key) when given.
pub fn tls(
    roots: Vec<CertificateDer<'static>>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<Tls> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store
            .add(root)
            .map_err(|e| Error::msg(format!("a CA certificate is not usable: {e}")))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::msg(format!("TLS settings: {e}")))?
    .with_root_certificates(store);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| Error::msg(format!("the client certificate is not usable: {e}")))?,
    };
    Ok(Arc::new(config))
}

/// Sends `req` to `127.0.0.1:port` (over TLS when `tls` is given) and reads the answer.
pub fn send(port: u16, tls: Option<&Tls>, req: &Request<'_>) -> io::Result<Answer> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let tcp = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT)?;
    tcp.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    tcp.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let mut head = format!(
        "{} {} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: pf-testenv\r\nAccept: application/json, */*\r\n",
        req.method, req.path
    );
    if let Some(token) = req.token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    let body: &[u8] = match req.body {
        Some((content_type, body)) => {
            head.push_str(&format!(
                "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
                body.len()
            ));
            body
        }
        None => &[],
    };
    head.push_str("\r\n");
    let bytes = match tls {
        None => exchange(tcp, head.as_bytes(), body)?,
        Some(config) => {
            let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
            let conn =
                rustls::ClientConnection::new(config.clone(), name).map_err(io::Error::other)?;
            exchange(rustls::StreamOwned::new(conn, tcp), head.as_bytes(), body)?
        }
    };
    parse(&bytes)
}

/// Writes the request and reads until the server closes the connection.
fn exchange(
    mut stream: impl io::Read + io::Write,
    head: &[u8],
    body: &[u8],
) -> io::Result<Vec<u8>> {
    stream.write_all(head)?;
    stream.write_all(body)?;
    stream.flush()?;
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => Ok(answer),
        // A server that closes without TLS's close_notify: the answer is complete all the same
        // when it has a head (HTTP/1.0 ends at the connection's end).
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !answer.is_empty() => Ok(answer),
        Err(e) => Err(e),
    }
}

fn parse(bytes: &[u8]) -> io::Result<Answer> {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::other("the answer has no end of headers"))?;
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::other(format!("not an HTTP status line: {head:.80}")))?;
    Ok(Answer {
        code,
        body: body.to_owned(),
    })
}
