//! TLS to a BuildKit daemon: the settings ([`TlsOptions`], whose PEM material comes from files
//! or from memory), the rustls client configuration made from them, and the errors of both.
//!
//! Border: a leaf of `buildkit`. It knows rustls and nothing of endpoints, dialers or calls;
//! `transport` uses the configuration it makes, and `error` names its problems.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Where one piece of PEM material comes from.
///
/// Files are read when the client is made (a bad file fails before any connection); bytes are
/// used as given, so material from a secret store never touches the disk. `Debug` never shows
/// the bytes.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Pem {
    /// A PEM file.
    File(PathBuf),
    /// PEM text held in memory.
    Bytes(Vec<u8>),
}

impl Pem {
    /// PEM text held in memory.
    pub fn bytes(pem: impl Into<Vec<u8>>) -> Self {
        Pem::Bytes(pem.into())
    }

    /// The file it is read from, if it is a file.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            Pem::File(path) => Some(path),
            Pem::Bytes(_) => None,
        }
    }

    fn load(&self, file: TlsFile) -> Result<std::borrow::Cow<'_, [u8]>, TlsConfigError> {
        match self {
            Pem::File(path) => std::fs::read(path)
                .map(std::borrow::Cow::Owned)
                .map_err(|source| TlsConfigError::Read {
                    file,
                    path: path.clone(),
                    source,
                }),
            Pem::Bytes(bytes) => Ok(std::borrow::Cow::Borrowed(bytes)),
        }
    }
}

impl fmt::Debug for Pem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pem::File(path) => f.debug_tuple("File").field(path).finish(),
            Pem::Bytes(bytes) => write!(f, "Bytes(<{} bytes>)", bytes.len()),
        }
    }
}

impl From<PathBuf> for Pem {
    fn from(path: PathBuf) -> Self {
        Pem::File(path)
    }
}

impl From<&std::path::Path> for Pem {
    fn from(path: &std::path::Path) -> Self {
        Pem::File(path.to_owned())
    }
}

/// TLS settings (in the binary, buildctl's `--tlscacert`, `--tlscert`, `--tlskey` and
/// `--tlsservername`). The default is no TLS; setting anything turns it on.
///
/// ```
/// use pf_buildkit::buildkit::{Pem, TlsOptions};
///
/// // A CA from a file; the client identity from memory (say, a secret store).
/// # let (cert_pem, key_pem) = (String::new(), String::new());
/// let tls = TlsOptions::new()
///     .ca_cert("/etc/buildkit/ca.pem".as_ref())
///     .client_identity(Pem::bytes(cert_pem), Pem::bytes(key_pem))
///     .server_name("buildkitd.internal");
/// assert!(tls.is_enabled());
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct TlsOptions {
    /// PEM of the CA that signs the daemon's certificate; the system roots when absent.
    pub ca_cert: Option<Pem>,
    /// PEM client certificate, for mTLS (needs `key`).
    pub cert: Option<Pem>,
    /// PEM client key, for mTLS (needs `cert`).
    pub key: Option<Pem>,
    /// The name to verify in the daemon's certificate; the address's host when absent.
    pub server_name: Option<String>,
}

impl TlsOptions {
    /// No TLS (the same as `default()`), to set from.
    pub fn new() -> Self {
        Self::default()
    }

    /// Verifies the daemon's certificate against this CA rather than the system's roots.
    pub fn ca_cert(mut self, pem: impl Into<Pem>) -> Self {
        self.ca_cert = Some(pem.into());
        self
    }

    /// Offers this client certificate and key (mTLS).
    pub fn client_identity(mut self, cert: impl Into<Pem>, key: impl Into<Pem>) -> Self {
        self.cert = Some(cert.into());
        self.key = Some(key.into());
        self
    }

    /// Verifies this name in the daemon's certificate rather than the address's host.
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

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
#[non_exhaustive]
pub enum TlsConfigError {
    /// A file could not be read.
    #[error("cannot read the {file} {}", path.display())]
    Read {
        /// Which piece of [`TlsOptions`] it is.
        file: TlsFile,
        /// The path as set in [`TlsOptions`].
        path: PathBuf,
        /// The I/O error from reading it.
        #[source]
        source: io::Error,
    },
    /// A piece of material holds no usable PEM data.
    #[error("the {file} {} holds no {expected}", Origin(path.as_deref()))]
    Pem {
        /// Which piece of [`TlsOptions`] it is.
        file: TlsFile,
        /// The path as set in [`TlsOptions`]; `None` when the PEM was given as bytes.
        path: Option<PathBuf>,
        /// What it should hold.
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

/// Where PEM material came from, in a message: its path, or that it was given in memory.
struct Origin<'a>(Option<&'a std::path::Path>);

impl fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(path) => write!(f, "{}", path.display()),
            None => f.write_str("(given in memory)"),
        }
    }
}

/// One piece of the material of [`TlsOptions`].
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

/// What TLS said when it is what ended a connection: the certificate material a user would
/// change. `Error::tls_problem` gives it, so a caller can name its own way of setting that
/// material (the binary names its flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsProblem {
    /// The daemon's certificate is not signed by a trusted CA (the one given, or the
    /// system's).
    UnknownIssuer,
    /// The daemon's certificate is not valid for the server name used.
    WrongServerName,
    /// The daemon refused the connection with a TLS alert, or closed it as soon as it was
    /// open while no client certificate was offered: it most likely requires one (mTLS).
    ClientCertificateWanted,
}

/// The rustls client configuration `opts` stands for: its CA (else the system's roots), its
/// client identity, HTTP/2 by ALPN.
pub(crate) fn client_config(opts: &TlsOptions) -> Result<rustls::ClientConfig, TlsConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    match &opts.ca_cert {
        Some(pem) => {
            for cert in certificates(pem, TlsFile::CaCertificate)? {
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
            let chain = certificates(cert, TlsFile::ClientCertificate)?;
            builder.with_client_auth_cert(chain, private_key(key)?)?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(TlsConfigError::HalfIdentity),
    };
    // BuildKit is gRPC: HTTP/2 only, and grpc-go checks ALPN.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

fn certificates(pem: &Pem, file: TlsFile) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let text = pem.load(file)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&text)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsConfigError::Pem {
            file,
            path: pem.path().map(ToOwned::to_owned),
            expected: "PEM certificate",
        });
    }
    Ok(certs)
}

fn private_key(pem: &Pem) -> Result<PrivateKeyDer<'static>, TlsConfigError> {
    let text = pem.load(TlsFile::ClientKey)?;
    PrivateKeyDer::from_pem_slice(&text).map_err(|_| TlsConfigError::Pem {
        file: TlsFile::ClientKey,
        path: pem.path().map(ToOwned::to_owned),
        expected: "PEM private key",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_client_key_names_the_file_and_keeps_the_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert_path = dir.path().join("cert.pem");
        std::fs::write(&cert_path, cert.cert.pem()).unwrap();
        let key_path = dir.path().join("missing-key.pem");
        let tls = TlsOptions::new().client_identity(cert_path, key_path.clone());
        let err = client_config(&tls).expect_err("a missing key was accepted");
        let TlsConfigError::Read { file, path, .. } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(*file, TlsFile::ClientKey);
        assert_eq!(path, &key_path);
        let io = std::error::Error::source(&err)
            .and_then(|s| s.downcast_ref::<io::Error>())
            .expect("the I/O error is the source");
        assert_eq!(io.kind(), io::ErrorKind::NotFound);
        assert_eq!(
            err.to_string(),
            format!("cannot read the client key {}", key_path.display())
        );
    }

    #[test]
    fn half_an_identity_speaks_of_the_certificate_and_key_not_flags() {
        let tls = TlsOptions {
            key: Some(Pem::bytes("key")),
            ..TlsOptions::default()
        };
        let err = client_config(&tls).expect_err("half an identity was accepted");
        assert!(matches!(err, TlsConfigError::HalfIdentity), "{err:?}");
        assert_eq!(
            err.to_string(),
            "mTLS needs both a client certificate and its key"
        );
    }

    #[test]
    fn material_without_pem_says_what_it_should_hold_and_where_it_came_from() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not PEM").unwrap();
        let err = client_config(&TlsOptions::new().ca_cert(ca.clone()))
            .expect_err("a CA file without PEM was accepted");
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
        let err = client_config(&TlsOptions::new().ca_cert(Pem::bytes("not PEM")))
            .expect_err("CA bytes without PEM were accepted");
        assert_eq!(
            err.to_string(),
            "the CA certificate (given in memory) holds no PEM certificate"
        );
    }

    #[test]
    fn pem_bytes_make_a_client_identity_and_never_show_in_debug() {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let key = cert.signing_key.serialize_pem();
        let tls = TlsOptions::new()
            .ca_cert(Pem::bytes(cert.cert.pem()))
            .client_identity(Pem::bytes(cert.cert.pem()), Pem::bytes(key.clone()));
        client_config(&tls).expect("PEM bytes are usable material");
        let shown = format!("{tls:?}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
        assert!(shown.contains(&format!("Bytes(<{} bytes>)", key.len())));
    }
}
