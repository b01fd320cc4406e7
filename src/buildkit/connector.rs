//! Address schemes beyond the built-in ones (`tcp`, `unix`, `docker`, `docker+unix`,
//! `docker+tcp`), passed explicitly: a [`Connector`] checks the addresses of its scheme and
//! makes the [`Dialer`] that reaches them, and a [`Connectors`] set of them goes to
//! [`Endpoint::parse_with`] and [`Client::connect_with`](super::Client::connect_with). There is
//! no process-wide registry: two parts of one program can give the same scheme different
//! meanings. This is how the fleet module offers `kube-pod://` (`fleet::connectors()`) without
//! this module knowing anything of Kubernetes, and how a library user adds a transport.
//!
//! Border: uses `endpoint` (to parse), `transport` (the [`Dialer`] it makes) and `tls` (the
//! options it is given); nothing here imports it but the client.
//!
//! ```no_run
//! use std::sync::Arc;
//! use futures_util::future::BoxFuture;
//! use pf_buildkit::buildkit::{
//!     BoxedIo, Client, Connector, ConnectorError, Connectors, Dialer, Endpoint, TlsOptions,
//! };
//!
//! /// `relay://HOST:PORT`: plain TCP, under a name of our own.
//! struct Relay;
//! struct RelayDialer(String);
//!
//! impl Dialer for RelayDialer {
//!     fn dial(&self) -> BoxFuture<'static, std::io::Result<BoxedIo>> {
//!         let addr = self.0.clone();
//!         Box::pin(async move {
//!             Ok(Box::pin(tokio::net::TcpStream::connect(addr).await?) as BoxedIo)
//!         })
//!     }
//!     fn describe(&self) -> String { format!("relay://{}", self.0) }
//! }
//!
//! impl Connector for Relay {
//!     fn check(&self, address: &str) -> Result<(), String> {
//!         address.contains(':').then_some(()).ok_or_else(|| "expected HOST:PORT".into())
//!     }
//!     fn dialer(&self, address: String, _tls: TlsOptions)
//!         -> BoxFuture<'static, Result<Arc<dyn Dialer>, ConnectorError>> {
//!         Box::pin(async move { Ok(Arc::new(RelayDialer(address)) as Arc<dyn Dialer>) })
//!     }
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let connectors = Connectors::new().with("relay", Relay);
//! let endpoint = Endpoint::parse_with("relay://127.0.0.1:1234", &connectors)?;
//! let client = Client::connect_with(endpoint, &TlsOptions::default(), &connectors).await?;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::endpoint::{CustomSchemes, Endpoint, ParseEndpointError};
use super::tls::TlsOptions;
use super::transport::Dialer;

/// Why a connector could not make a dialer; shown as the source of
/// [`Error::Scheme`](super::Error::Scheme).
pub type ConnectorError = Box<dyn std::error::Error + Send + Sync>;

/// An address scheme: checks the part after `SCHEME://` when an address is parsed, and makes
/// the dialer that connects to it.
pub trait Connector: Send + Sync + 'static {
    /// Checks `address` (everything after `SCHEME://`), so a malformed one fails when it is
    /// parsed, not when it is used. The error says what is wrong in a few words.
    ///
    /// # Errors
    /// What is wrong with the address.
    fn check(&self, address: &str) -> Result<(), String>;

    /// Makes the dialer for `address`, given the caller's TLS options (a connector that cannot
    /// honour them says so).
    fn dialer(
        &self,
        address: String,
        tls: TlsOptions,
    ) -> BoxFuture<'static, Result<Arc<dyn Dialer>, ConnectorError>>;
}

/// The connectors a caller offers, by scheme name. Cheap to clone.
#[derive(Clone, Default)]
pub struct Connectors {
    by_scheme: BTreeMap<String, Arc<dyn Connector>>,
}

impl Connectors {
    /// No connectors: the built-in schemes alone.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `connector` for `scheme` (without `://`), replacing one already there.
    pub fn with(mut self, scheme: impl Into<String>, connector: impl Connector) -> Self {
        self.by_scheme.insert(scheme.into(), Arc::new(connector));
        self
    }

    /// Adds every connector of `other`, replacing those of the same schemes.
    pub fn merge(mut self, other: &Connectors) -> Self {
        self.by_scheme.extend(
            other
                .by_scheme
                .iter()
                .map(|(name, c)| (name.clone(), c.clone())),
        );
        self
    }

    /// The connector for `scheme`.
    pub fn get(&self, scheme: &str) -> Option<&Arc<dyn Connector>> {
        self.by_scheme.get(scheme)
    }

    /// The schemes there are connectors for.
    pub fn schemes(&self) -> impl Iterator<Item = &str> {
        self.by_scheme.keys().map(String::as_str)
    }
}

impl fmt::Debug for Connectors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.schemes()).finish()
    }
}

impl CustomSchemes for Connectors {
    fn check(&self, scheme: &str, address: &str) -> Option<Result<(), String>> {
        self.get(scheme).map(|c| c.check(address))
    }
    fn names(&self) -> Vec<String> {
        self.schemes().map(str::to_owned).collect()
    }
}

impl Endpoint {
    /// Parses an address of a built-in scheme or of one of `connectors` (whose connector checks
    /// it), resolving `docker://` against `DOCKER_HOST` from the environment.
    ///
    /// # Errors
    /// When the scheme is neither built in nor among `connectors`, or the rest of the address
    /// is malformed.
    pub fn parse_with(addr: &str, connectors: &Connectors) -> Result<Self, ParseEndpointError> {
        Self::parse_inner(
            addr,
            std::env::var("DOCKER_HOST").ok().as_deref(),
            connectors,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fussy;

    impl Connector for Fussy {
        fn check(&self, address: &str) -> Result<(), String> {
            if address == "good" {
                Ok(())
            } else {
                Err("only `good` will do".into())
            }
        }
        fn dialer(
            &self,
            _: String,
            _: TlsOptions,
        ) -> BoxFuture<'static, Result<Arc<dyn Dialer>, ConnectorError>> {
            Box::pin(async { Err("not dialled in this test".into()) })
        }
    }

    #[test]
    fn a_custom_scheme_parses_only_with_its_connector() {
        let connectors = Connectors::new().with("fussy", Fussy);
        let endpoint = Endpoint::parse_with("fussy://good", &connectors).unwrap();
        assert_eq!(
            endpoint,
            Endpoint::Custom {
                scheme: "fussy".into(),
                address: "good".into()
            }
        );
        assert_eq!(endpoint.to_string(), "fussy://good");
        let err = Endpoint::parse_with("fussy://bad", &connectors).unwrap_err();
        assert!(err.reason.contains("only `good` will do"), "{err}");
        // Without the connector the scheme is unknown, and the message lists what is known.
        let err = "fussy://good".parse::<Endpoint>().unwrap_err();
        assert!(err.reason.contains("unknown scheme \"fussy\""), "{err}");
        let err = Endpoint::parse_with("other://x", &connectors).unwrap_err();
        assert!(err.reason.contains("fussy://"), "{err}");
    }
}
