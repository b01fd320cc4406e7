//! Errors of the BuildKit client.

use super::endpoint::ParseEndpointError;
use super::status::RpcStatus;
use super::tls::{TlsConfigError, TlsProblem};

/// Everything that can go wrong talking to BuildKit.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The address could not be parsed.
    #[error(transparent)]
    Endpoint(#[from] ParseEndpointError),
    /// TLS material could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsConfigError),
    /// The daemon could not be reached: the dialer's error is the source (for a custom
    /// scheme such as `kube-pod://`, it wraps that scheme's own typed error).
    #[error("cannot connect to BuildKit at {endpoint}{}", tls_words(*.tls))]
    Connect {
        /// The daemon's address as the dialer describes it: the endpoint URL (`tcp://HOST:PORT`,
        /// `kube-pod://…`) or a custom dialer's own words.
        endpoint: String,
        /// The TLS problem behind it, when TLS is what failed.
        tls: Option<TlsProblem>,
        /// What the dialer (or, past it, the HTTP/2 handshake) reported.
        #[source]
        source: std::io::Error,
    },
    /// Connecting took longer than the connect timeout.
    #[error(
        "timed out after {seconds} s connecting to BuildKit at {endpoint}; is the address reachable?"
    )]
    ConnectTimeout {
        /// The daemon's address as the dialer describes it, as in [`Self::Connect`].
        endpoint: String,
        /// The bound that ran out, in whole seconds: [`CONNECT_TIMEOUT`](super::CONNECT_TIMEOUT)
        /// for dialling and the first call together.
        seconds: u64,
    },
    /// The connector of the endpoint's scheme could not make a dialer for it.
    #[error("{endpoint}")]
    Scheme {
        /// The endpoint URL as the caller wrote it, e.g.
        /// `kube-pod://buildkit-amd64-0?namespace=buildkit`.
        endpoint: String,
        /// The connector's reason.
        #[source]
        source: super::ConnectorError,
    },
    /// No connector for the endpoint's scheme was given to the client (it was parsed with
    /// one, and connected without: use [`Client::connect_with`](super::Client::connect_with)).
    #[error("{endpoint}: no connector for {scheme}:// was given")]
    UnknownScheme {
        /// The endpoint URL as the caller wrote it.
        endpoint: String,
        /// The scheme name without `://`, e.g. `kube-pod`.
        scheme: String,
    },
    /// A call to the daemon failed.
    #[error("BuildKit at {endpoint}: {call} failed: {message}")]
    Rpc {
        /// The daemon's address, as [`Client::endpoint`](super::Client::endpoint) gives it.
        endpoint: String,
        /// The gRPC method, e.g. `ListWorkers`.
        call: &'static str,
        /// What happened, in words a user can act on.
        message: String,
        /// The status the call ended with: the daemon's code and message (not a `#[source]`:
        /// its text is already in `message`). Boxed to keep the error small.
        status: Box<RpcStatus>,
        /// The TLS problem behind it, when TLS is what failed.
        tls: Option<TlsProblem>,
    },
    /// The daemon has no build history API (BuildKit before v0.11, or an embedding that
    /// leaves it out): it answered a history call with UNIMPLEMENTED.
    #[error(
        "BuildKit at {endpoint} keeps no build history ({call} is not implemented there; BuildKit v0.11 or later has it)"
    )]
    NoHistory {
        /// The daemon's address, as [`Client::endpoint`](super::Client::endpoint) gives it.
        endpoint: String,
        /// The history call it refused, e.g. `ListenBuildHistory`.
        call: &'static str,
    },
    /// A blob of the daemon's content store (a history record's logs, error or attachment)
    /// is missing or not what the record describes.
    #[error("BuildKit at {endpoint}: blob {digest}: {problem}")]
    Blob {
        /// The daemon's address.
        endpoint: String,
        /// The blob's digest as the record gives it (empty when the record names none).
        digest: String,
        /// What is wrong.
        problem: super::history::problem::BlobProblem,
    },
}

/// What a TLS failure means for the user, in the connect error's own words (the TLS
/// library's text follows as the source).
fn tls_words(tls: Option<TlsProblem>) -> &'static str {
    match tls {
        Some(TlsProblem::UnknownIssuer) => " (TLS: its certificate is not signed by a trusted CA)",
        Some(TlsProblem::WrongServerName) => {
            " (TLS: its certificate is not valid for this host name)"
        }
        Some(TlsProblem::ClientCertificateWanted) => " (TLS: it wants a client certificate)",
        None => "",
    }
}

impl Error {
    /// The TLS problem behind a failed connection or call, if TLS is what failed.
    pub fn tls_problem(&self) -> Option<TlsProblem> {
        match self {
            Error::Connect { tls, .. } | Error::Rpc { tls, .. } => *tls,
            _ => None,
        }
    }
}

/// An error as text for the daemon (a session service's status, an fsutil error packet):
/// the message, then each cause. The wire carries only text, so this is where a cause chain becomes words;
/// what the library returns to its caller keeps the typed chain, and only the binary formats it.
pub(crate) fn wire_text(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

/// The result type of the BuildKit client.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The connect probe (the first call on a new connection) failed. Only a peer that never
    /// answered HTTP/2 and gRPC at all is called "not BuildKit".
    /// `closed_means_mtls`: the dialer offered TLS without a client certificate, so a peer
    /// that closes at once most likely wants one (TLS 1.3 servers refuse a missing client
    /// certificate after the handshake, and the alert can be lost when the close wins the
    /// race).
    pub(crate) fn probe(endpoint: &str, status: tonic::Status, closed_means_mtls: bool) -> Self {
        let cause = classify(&status);
        let mut tls = cause.tls_problem();
        let message = match cause {
            Cause::Protocol(detail) => {
                format!("the peer did not answer as a gRPC server: this is not BuildKit ({detail})")
            }
            Cause::GoAway {
                remote: false,
                code,
                ..
            } => format!(
                "the peer did not answer as an HTTP/2 gRPC server (our HTTP/2 layer saw {code}): this is not BuildKit"
            ),
            Cause::Closed(detail) => {
                let mut message = format!(
                    "the peer closed the connection without answering as a gRPC server: this is not BuildKit, or it refused us ({detail})"
                );
                if closed_means_mtls {
                    message.push_str("; it may require a client certificate (mTLS)");
                    tls = Some(TlsProblem::ClientCertificateWanted);
                }
                message
            }
            _ => describe_status(&status),
        };
        Error::Rpc {
            endpoint: endpoint.to_owned(),
            call: "connect",
            message,
            status: Box::new(RpcStatus::from(&status)),
            tls,
        }
    }

    /// Wraps a failed call with words that say what most likely happened.
    pub(crate) fn rpc(endpoint: &str, call: &'static str, status: tonic::Status) -> Self {
        let message = describe_status(&status);
        let tls = classify(&status).tls_problem();
        Error::Rpc {
            endpoint: endpoint.to_owned(),
            call,
            message,
            status: Box::new(RpcStatus::from(&status)),
            tls,
        }
    }
}

/// Turns a gRPC status into a message a user can act on. A status the daemon sent keeps its
/// text as is; a status tonic made from a local failure (it then has a `source()`) says what
/// the connection did, read from the typed errors under it.
pub(crate) fn describe_status(status: &tonic::Status) -> String {
    tracing::debug!(?status, "call failed");
    let raw = status.message().trim();
    match status.code() {
        // The peer's gRPC server has no such method: the daemon's own answer, with a hint.
        tonic::Code::Unimplemented if std::error::Error::source(status).is_none() => format!(
            "the peer does not implement this call: it is not BuildKit, or a BuildKit too old ({raw})"
        ),
        _ => match classify(status) {
            Cause::Daemon if raw.is_empty() => format!("{:?}", status.code()),
            Cause::Daemon => raw.to_owned(),
            cause => cause.to_string(),
        },
    }
}

/// What ended a call, told by the gRPC status and the typed errors found by walking its
/// `source()` chain, never by searching the text (the daemon's own message may say anything).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cause {
    /// The daemon answered with a gRPC status: its message is the whole story.
    Daemon,
    /// An HTTP/2 GOAWAY ended the connection.
    GoAway {
        /// The daemon sent it (else our HTTP/2 layer did).
        remote: bool,
        /// The error code, e.g. `ENHANCE_YOUR_CALM`.
        code: String,
        /// The GOAWAY's debug text, if any.
        debug: String,
    },
    /// An HTTP/2 RST_STREAM ended the call's stream.
    Reset {
        /// The daemon sent it (else our HTTP/2 layer did).
        remote: bool,
        /// The HTTP/2 error code, e.g. `CANCEL` or `PROTOCOL_ERROR`.
        code: String,
    },
    /// The connection closed under the call (EOF, reset, broken pipe): the daemon went away.
    Closed(String),
    /// A TLS alert or failure: what it says, and what the user would change, when known.
    Tls(String, Option<TlsProblem>),
    /// Any other local failure of the HTTP/2 connection: the peer broke the protocol.
    Protocol(String),
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let side = |remote: bool| {
            if remote {
                "the daemon"
            } else {
                "our HTTP/2 layer"
            }
        };
        match self {
            Cause::Daemon => f.write_str("the daemon answered with an error"),
            Cause::GoAway {
                remote,
                code,
                debug,
            } => {
                write!(
                    f,
                    "{} closed the connection (HTTP/2 GOAWAY {code}",
                    side(*remote)
                )?;
                if !debug.is_empty() {
                    write!(f, ", {debug:?}")?;
                }
                f.write_str(")")
            }
            Cause::Reset { remote, code } => {
                write!(
                    f,
                    "{} reset the call's stream (HTTP/2 RST_STREAM {code})",
                    side(*remote)
                )
            }
            Cause::Closed(detail) => write!(
                f,
                "the daemon went away: the connection closed before the call finished ({detail})"
            ),
            Cause::Tls(detail, _) => f.write_str(detail),
            Cause::Protocol(detail) => write!(f, "the HTTP/2 connection failed ({detail})"),
        }
    }
}

impl Cause {
    pub(crate) fn tls_problem(&self) -> Option<TlsProblem> {
        match self {
            Cause::Tls(_, problem) => *problem,
            _ => None,
        }
    }
}

/// Reads what ended a call from `status` (see [`Cause`]).
pub(crate) fn classify(status: &tonic::Status) -> Cause {
    match std::error::Error::source(status) {
        // tonic sets a source only when it made the status from a local error; a status
        // the daemon sent has none.
        None => Cause::Daemon,
        Some(source) => classify_error(source),
    }
}

/// Reads what ended a connection or call from a local error and everything under it.
pub(crate) fn classify_error(err: &(dyn std::error::Error + 'static)) -> Cause {
    // hyper saying the connection closed, in case nothing under it says more.
    let mut closed = None;
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            if let Some(cause) = from_h2(h2) {
                return cause;
            }
        } else if let Some(hyper) = e.downcast_ref::<hyper::Error>() {
            if hyper.is_closed() || hyper.is_incomplete_message() || hyper.is_canceled() {
                closed.get_or_insert_with(|| hyper.to_string());
            }
        } else if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(cause) = from_io(io) {
                return cause;
            }
        } else if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return tls_cause(tls);
        }
        next = e.source();
    }
    let text = chain_text(err);
    // h2 hands an I/O failure of the connection to each of its streams as a copy holding only
    // the kind and the text, so a TLS alert can reach a call with its type gone. This looks
    // at our own transport's text only: a daemon's status never gets here (see `classify`).
    if let Some(at) = text.find("received fatal alert: ") {
        let alert = text[at + "received fatal alert: ".len()..]
            .split(|c: char| !c.is_ascii_alphanumeric())
            .next()
            .unwrap_or_default();
        return Cause::Tls(
            format!("TLS: the daemon rejected the connection (alert {alert})"),
            Some(TlsProblem::ClientCertificateWanted),
        );
    }
    match closed {
        Some(detail) => Cause::Closed(detail),
        None => Cause::Protocol(text),
    }
}

/// `err` and its sources as one text, for the search above and for a detail in
/// [`Cause::Protocol`]: each message that adds something, joined by `: `.
fn chain_text(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = String::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let message = e.to_string();
        if !message.is_empty() && !text.contains(&message) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&message);
        }
        next = e.source();
    }
    text.replace('\n', " ")
}

fn from_io(io: &std::io::Error) -> Option<Cause> {
    // io::Error's source() skips the error it wraps: look at that one first.
    if let Some(inner) = io.get_ref() {
        if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
            return Some(tls_cause(tls));
        }
        let cause = classify_error(inner);
        if !matches!(cause, Cause::Protocol(_)) {
            return Some(cause);
        }
    }
    let closed = is_closed_kind(io.kind())
        || (io.kind() == std::io::ErrorKind::Other && io.to_string() == EOF_MID_FRAME);
    closed.then(|| Cause::Closed(io.to_string()))
}

/// How h2's frame reader (tokio-util's decoder) reports a connection that ended in the middle
/// of a frame: an `Other` error with only this text. The peer went away while sending (a
/// daemon killed mid-export), so it is a closed connection, not a protocol failure.
const EOF_MID_FRAME: &str = "bytes remaining on stream";

fn from_h2(err: &h2::Error) -> Option<Cause> {
    if let Some(io) = err.get_io() {
        return from_io(io);
    }
    let code = format!("{:?}", err.reason()?);
    if err.is_go_away() {
        Some(Cause::GoAway {
            remote: err.is_remote(),
            code,
            debug: goaway_debug(&err.to_string()),
        })
    } else if err.is_reset() {
        Some(Cause::Reset {
            remote: err.is_remote(),
            code,
        })
    } else {
        None
    }
}

/// The GOAWAY debug data out of h2's rendering of the error, `… (b"text")`: h2 keeps the
/// bytes but has no accessor for them.
fn goaway_debug(rendered: &str) -> String {
    rendered
        .rfind("(b\"")
        .and_then(|at| rendered[at + 3..].strip_suffix("\")"))
        .unwrap_or_default()
        .to_owned()
}

fn is_closed_kind(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        kind,
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof | NotConnected
    )
}

/// The TLS problem behind a failed dial, when TLS is what failed (rustls's error travels
/// inside the `io::Error` the TLS stream returns).
pub(crate) fn tls_problem_of(err: &std::io::Error) -> Option<TlsProblem> {
    let tls = err.get_ref()?.downcast_ref::<rustls::Error>()?;
    tls_cause(tls).tls_problem()
}

/// What a TLS failure says, in words a user can act on, and what they would change.
pub(crate) fn tls_cause(err: &rustls::Error) -> Cause {
    use rustls::CertificateError;
    match err {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => Cause::Tls(
            "TLS: the daemon's certificate is not signed by the given CA".into(),
            Some(TlsProblem::UnknownIssuer),
        ),
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => Cause::Tls(
            "TLS: the daemon's certificate is not valid for this host name".into(),
            Some(TlsProblem::WrongServerName),
        ),
        // TLS 1.3 servers reject a missing or unknown client certificate after the handshake,
        // so it shows on the first call rather than while connecting.
        rustls::Error::AlertReceived(alert) => Cause::Tls(
            format!("TLS: the daemon rejected the connection (alert {alert:?})"),
            Some(TlsProblem::ClientCertificateWanted),
        ),
        other => Cause::Tls(format!("TLS: {other}"), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_ending_mid_frame_is_the_daemon_going_away() {
        // As h2 hands it to each stream: a copy holding the kind and the text only.
        let io = std::io::Error::other(EOF_MID_FRAME);
        assert!(matches!(classify_error(&io), Cause::Closed(_)));
        let status = tonic::Status::from_error(Box::new(io));
        assert!(matches!(classify(&status), Cause::Closed(_)));
        // Another `Other` error is not read as a closed connection.
        let other = std::io::Error::other("something else");
        assert!(matches!(classify_error(&other), Cause::Protocol(_)));
    }

    #[test]
    fn a_daemon_status_keeps_its_text_whatever_words_it_uses() {
        // The daemon's own error for `COPY connection.py /app/` with the file missing: words
        // like "connection" and "frame" must not turn it into a transport error.
        let text = "failed to compute cache key: \"/connection.py\": not found (frame 3)";
        for code in [
            tonic::Code::Unknown,
            tonic::Code::Unavailable,
            tonic::Code::Internal,
        ] {
            let status = tonic::Status::new(code, text);
            assert_eq!(classify(&status), Cause::Daemon);
            assert_eq!(describe_status(&status), text);
        }
    }

    #[test]
    fn goaway_names_the_side_the_code_and_the_debug_text() {
        let cause = Cause::GoAway {
            remote: false,
            code: "ENHANCE_YOUR_CALM".into(),
            debug: "too_many_data_frames".into(),
        };
        assert_eq!(
            cause.to_string(),
            "our HTTP/2 layer closed the connection (HTTP/2 GOAWAY ENHANCE_YOUR_CALM, \"too_many_data_frames\")"
        );
        assert_eq!(
            goaway_debug(
                "connection error detected: enhance your calm (b\"too_many_data_frames\")"
            ),
            "too_many_data_frames"
        );
        assert_eq!(
            goaway_debug("connection error received: not a result of an error"),
            ""
        );
    }

    #[test]
    fn a_closed_connection_under_a_status_is_the_daemon_going_away() {
        let io = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "early eof");
        let status = tonic::Status::from_error(Box::new(io));
        let cause = classify(&status);
        assert!(matches!(cause, Cause::Closed(_)), "{cause:?}");
        assert!(describe_status(&status).starts_with("the daemon went away"));
    }

    #[test]
    fn a_tls_alert_known_only_by_its_text_is_a_client_certificate_problem() {
        // What h2 hands each stream: the I/O error's kind and text, its type gone.
        let io = std::io::Error::other("received fatal alert: CertificateRequired");
        let status = tonic::Status::from_error(Box::new(io));
        let cause = classify(&status);
        assert_eq!(
            cause,
            Cause::Tls(
                "TLS: the daemon rejected the connection (alert CertificateRequired)".into(),
                Some(TlsProblem::ClientCertificateWanted)
            )
        );
        let err = Error::rpc("tcp://localhost:1234", "ListWorkers", status);
        assert_eq!(err.tls_problem(), Some(TlsProblem::ClientCertificateWanted));
        assert!(!err.to_string().contains("--"), "{err}");
    }
}
