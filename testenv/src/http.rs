//! Just enough HTTP for health checks, image uploads and the Kubernetes API, over TCP, TLS or
//! a unix socket: one HTTP/1.0 request per connection (so the answer ends when the server
//! closes, never chunked), and a probe that a port speaks HTTP/2 (gRPC). The components need
//! nothing more, and a client crate would bring a runtime for it. TLS is rustls with ring,
//! the crypto the main crate already uses.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::error::{Error, Result};

/// How long one check may take before it counts as "no answer".
const TIMEOUT: Duration = Duration::from_secs(5);
/// How long a TLS request may take: the Kubernetes API server answers writes slowly on a
/// loaded machine, and a seed request that timed out would fail the start.
const API_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a request goes.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// `HOST:PORT` over TCP.
    Tcp(&'a str),
    /// A unix socket (the Host header is a placeholder).
    Unix(&'a Path),
    /// `HOST:PORT` over TLS with these settings (see [`tls_from_files`]); the server's
    /// certificate must name HOST.
    Tls(&'a str, &'a Tls),
}

/// TLS settings for a [`Target::Tls`]: the CAs to trust and, optionally, the client
/// certificate to present.
pub type Tls = Arc<rustls::ClientConfig>;

/// An answer: status, headers and body.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header names (lower case) and values.
    pub headers: Vec<(String, String)>,
    /// The body as sent.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

fn connect(target: Target<'_>) -> io::Result<Box<dyn Stream>> {
    Ok(match target {
        Target::Tcp(addr) => {
            let s = TcpStream::connect(addr)?;
            s.set_read_timeout(Some(TIMEOUT))?;
            s.set_write_timeout(Some(TIMEOUT))?;
            Box::new(s)
        }
        Target::Unix(path) => {
            let s = UnixStream::connect(path)?;
            s.set_read_timeout(Some(TIMEOUT))?;
            s.set_write_timeout(Some(TIMEOUT))?;
            Box::new(s)
        }
        Target::Tls(addr, tls) => {
            let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
            let name = ServerName::try_from(host.to_owned()).map_err(io::Error::other)?;
            let conn =
                rustls::ClientConnection::new(Arc::clone(tls), name).map_err(io::Error::other)?;
            let tcp = TcpStream::connect(addr)?;
            tcp.set_read_timeout(Some(API_TIMEOUT))?;
            tcp.set_write_timeout(Some(API_TIMEOUT))?;
            Box::new(rustls::StreamOwned::new(conn, tcp))
        }
    })
}

/// TLS that trusts the CA certificates in the PEM file `ca`, presenting the certificate and
/// key in the PEM files `client` when given.
pub fn tls_from_files(ca: &Path, client: Option<(&Path, &Path)>) -> Result<Tls> {
    let certs = |path: &Path| {
        CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
            .map_err(|e| Error::msg(format!("read the certificates in {}: {e}", path.display())))
    };
    let mut roots = rustls::RootCertStore::empty();
    for root in certs(ca)? {
        roots
            .add(root)
            .map_err(|e| Error::msg(format!("{} holds no usable CA: {e}", ca.display())))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::msg(format!("TLS settings: {e}")))?
    .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| Error::msg(format!("read the key in {}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(certs(cert)?, key)
                .map_err(|e| Error::msg(format!("{} is not usable: {e}", cert.display())))?
        }
    };
    Ok(Arc::new(config))
}

/// Sends one request and reads the whole answer.
pub fn request(
    target: Target<'_>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<Response> {
    let mut stream = connect(target)?;
    let host = match target {
        Target::Tcp(addr) | Target::Tls(addr, _) => addr,
        Target::Unix(_) => "localhost",
    };
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: {host}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || matches!(method, "PUT" | "POST") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()?;
    let mut raw = Vec::new();
    match stream.read_to_end(&mut raw) {
        Ok(_) => {}
        // A TLS server that closes without close_notify: HTTP/1.0 ends at the connection's
        // end all the same.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e),
    }
    parse(&raw, method == "HEAD")
}

/// A GET's status code, or 0 when nothing answers.
pub fn status(target: Target<'_>, path: &str) -> u16 {
    request(target, "GET", path, &[], &[]).map_or(0, |r| r.status)
}

fn parse(raw: &[u8], head_only: bool) -> io::Result<Response> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of the HTTP header"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("HTTP header is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no HTTP status line"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let body = if head_only {
        Vec::new()
    } else {
        raw[end + 4..].to_vec()
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// Whether an HTTP/2 server answers at `addr` (how a gRPC server such as buildkitd shows it
/// serves): the client preface and an empty SETTINGS frame must be answered by a SETTINGS
/// frame.
pub fn speaks_h2(addr: &str) -> bool {
    let probe = || -> io::Result<bool> {
        let mut s = connect(Target::Tcp(addr))?;
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")?;
        // length 0, type 4 (SETTINGS), flags 0, stream 0
        s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])?;
        let mut frame = [0u8; 9];
        s.read_exact(&mut frame)?;
        Ok(frame[3] == 4)
    };
    probe().unwrap_or(false)
}

/// The status line's code of an HTTP/1.1 upgrade request to h2c at `path` (101 when the
/// server switches protocols), or 0 when nothing answers. Only the status line is read.
pub fn upgrade_status(target: Target<'_>, path: &str) -> u16 {
    let probe = || -> io::Result<u16> {
        let mut s = connect(target)?;
        s.write_all(
            format!(
                "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: 0\r\n\r\n"
            )
            .as_bytes(),
        )?;
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\r\n") && line.len() < 256 {
            s.read_exact(&mut byte)?;
            line.push(byte[0]);
        }
        Ok(String::from_utf8_lossy(&line)
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0))
    };
    probe().unwrap_or(0)
}

/// Whether anything accepts TCP connections on `127.0.0.1:port`.
pub fn port_taken(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)).is_ok()
}
