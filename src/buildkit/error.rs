//! Errors of the BuildKit client.

use super::endpoint::ParseEndpointError;
use super::transport::TlsConfigError;

/// Everything that can go wrong talking to BuildKit.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address could not be parsed.
    #[error(transparent)]
    Endpoint(#[from] ParseEndpointError),
    /// TLS material could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsConfigError),
    /// The daemon could not be reached.
    #[error("cannot connect to BuildKit at {endpoint}: {reason}")]
    Connect {
        /// The address tried.
        endpoint: String,
        /// Why, in words a user can act on.
        reason: String,
    },
    /// Connecting took longer than the connect timeout.
    #[error(
        "timed out after {seconds} s connecting to BuildKit at {endpoint}; is the address reachable?"
    )]
    ConnectTimeout {
        /// The address tried.
        endpoint: String,
        /// The timeout.
        seconds: u64,
    },
    /// The registered scheme of the endpoint could not make a dialer for it.
    #[error("{endpoint}")]
    Scheme {
        /// The address given.
        endpoint: String,
        /// The scheme's reason.
        #[source]
        source: super::SchemeError,
    },
    /// The endpoint's scheme is no longer registered (it was when the address was parsed).
    #[error("{endpoint}: no scheme {scheme}:// is registered")]
    UnknownScheme {
        /// The address given.
        endpoint: String,
        /// The scheme.
        scheme: String,
    },
    /// A call to the daemon failed.
    #[error("BuildKit at {endpoint}: {call} failed: {message}")]
    Rpc {
        /// The daemon's address.
        endpoint: String,
        /// The gRPC method, e.g. `ListWorkers`.
        call: &'static str,
        /// What happened, in words a user can act on.
        message: String,
        /// The status the call ended with (not a `#[source]`: its text is already in `message`,
        /// and tonic's own rendering is meant for debugging).
        status: Box<tonic::Status>,
    },
}

/// The result type of the BuildKit client.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps a failed call with words that say what most likely happened.
    pub(crate) fn rpc(endpoint: &str, call: &'static str, status: tonic::Status) -> Self {
        let message = describe_status(&status);
        Error::Rpc {
            endpoint: endpoint.to_owned(),
            call,
            message,
            status: Box::new(status),
        }
    }
}

/// Turns a gRPC status into a message a user can act on.
pub(crate) fn describe_status(status: &tonic::Status) -> String {
    let raw = status.message().trim();
    let chain = source_chain(status);
    tracing::debug!(?status, %chain, "call failed");
    if let Some(at) = chain.find("fatal alert") {
        // TLS 1.3 servers reject a missing or unknown client certificate after the handshake,
        // so it shows on the first call rather than while connecting.
        let alert = chain[at..].split(':').nth(1).map_or("", str::trim);
        return format!(
            "TLS: the daemon rejected the connection (alert {alert}); does it need a client certificate (--tlscert, --tlskey)?"
        );
    }
    match status.code() {
        tonic::Code::Unimplemented => format!(
            "the peer does not implement this call: it is not BuildKit, or a BuildKit too old ({raw})"
        ),
        tonic::Code::Unavailable
        | tonic::Code::Unknown
        | tonic::Code::Internal
        | tonic::Code::Cancelled
            if looks_like_transport(&chain) || looks_like_transport(raw) =>
        {
            if chain.contains("connection reset")
                || chain.contains("broken pipe")
                || chain.contains("connection closed")
                || chain.contains("unexpected end")
                || chain.contains("operation was canceled")
            {
                "the connection closed before the call finished (the daemon went away, or this is not BuildKit)".to_owned()
            } else {
                format!(
                    "the peer did not answer as a gRPC server: this is not BuildKit ({})",
                    first_non_empty(raw, &chain)
                )
            }
        }
        _ if raw.is_empty() => format!("{:?}", status.code()),
        _ => raw.to_owned(),
    }
}

fn first_non_empty<'a>(a: &'a str, b: &'a str) -> &'a str {
    if a.is_empty() { b } else { a }
}

fn looks_like_transport(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("transport")
        || t.contains("connection")
        || t.contains("h2 protocol")
        || t.contains("frame")
        || t.contains("broken pipe")
        || t.contains("http2")
        || t.contains("unexpected end")
}

fn source_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    let mut next = err.source();
    while let Some(e) = next {
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&e.to_string());
        next = e.source();
    }
    out.to_ascii_lowercase()
}
