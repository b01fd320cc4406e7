//! Address schemes beyond the built-in ones (`tcp`, `unix`, `docker`, `docker+unix`,
//! `docker+tcp`). A scheme registered here parses like a built-in one and connects through the
//! [`Dialer`] it makes; this is how the fleet module adds `kube-pod://` without this module
//! knowing anything of Kubernetes, and how a library user adds a transport of their own.
//!
//! ```no_run
//! use std::sync::Arc;
//! use futures_util::future::BoxFuture;
//! use pf_buildkit::buildkit::{BoxedIo, Dialer, Endpoint, Scheme, SchemeError, TlsOptions};
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
//! impl Scheme for Relay {
//!     fn check(&self, address: &str) -> Result<(), String> {
//!         address.contains(':').then_some(()).ok_or_else(|| "expected HOST:PORT".into())
//!     }
//!     fn dialer(&self, address: String, _tls: TlsOptions)
//!         -> BoxFuture<'static, Result<Arc<dyn Dialer>, SchemeError>> {
//!         Box::pin(async move { Ok(Arc::new(RelayDialer(address)) as Arc<dyn Dialer>) })
//!     }
//! }
//!
//! pf_buildkit::buildkit::register_scheme("relay", Relay);
//! let endpoint: Endpoint = "relay://127.0.0.1:1234".parse().unwrap();
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};

use futures_util::future::BoxFuture;

use super::transport::{Dialer, TlsOptions};

/// Why a registered scheme could not make a dialer; shown as the source of
/// [`Error::Scheme`](super::Error::Scheme).
pub type SchemeError = Box<dyn std::error::Error + Send + Sync>;

/// An address scheme: checks the part after `SCHEME://` when an address is parsed, and makes
/// the dialer that connects to it.
pub trait Scheme: Send + Sync + 'static {
    /// Checks `address` (everything after `SCHEME://`), so a malformed one fails when it is
    /// parsed, not when it is used. The error says what is wrong in a few words.
    ///
    /// # Errors
    /// What is wrong with the address.
    fn check(&self, address: &str) -> Result<(), String>;

    /// Makes the dialer for `address`, given the caller's TLS options (a scheme that cannot
    /// honour them says so).
    fn dialer(
        &self,
        address: String,
        tls: TlsOptions,
    ) -> BoxFuture<'static, Result<Arc<dyn Dialer>, SchemeError>>;
}

type Registry = BTreeMap<String, Arc<dyn Scheme>>;

static SCHEMES: RwLock<Registry> = RwLock::new(BTreeMap::new());

/// Registers `scheme` under `name` (without `://`) for every later parse and connect in this
/// process; registering a name again replaces the earlier scheme.
pub fn register_scheme(name: impl Into<String>, scheme: impl Scheme) {
    SCHEMES
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(name.into(), Arc::new(scheme));
}

/// The scheme registered under `name`.
pub(crate) fn find(name: &str) -> Option<Arc<dyn Scheme>> {
    SCHEMES
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(name)
        .cloned()
}

/// The names registered, for messages.
pub(crate) fn names() -> Vec<String> {
    SCHEMES
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .keys()
        .cloned()
        .collect()
}
