//! BuildKit addresses: what `--addr` and `BUILDKIT_HOST` accept, parsed into a typed value.
//!
//! Border: pure parsing, no I/O: connecting is [`Client::connect`](super::Client::connect)'s job.
//! It knows the built-in schemes, and asks the caller's [`Connectors`](super::Connectors) about
//! others through its `CustomSchemes` trait (`kube-pod://` is the fleet's). A leaf: it imports nothing
//! of the crate.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Where a BuildKit daemon listens.
///
/// ```
/// use pf_buildkit::buildkit::Endpoint;
///
/// let ep: Endpoint = "tcp://buildkit.example:1234".parse().unwrap();
/// assert_eq!(ep, Endpoint::Tcp { host: "buildkit.example".into(), port: 1234 });
/// let ep: Endpoint = "unix:///run/buildkit/buildkitd.sock".parse().unwrap();
/// assert_eq!(ep.to_string(), "unix:///run/buildkit/buildkitd.sock");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Endpoint {
    /// `tcp://HOST:PORT`: gRPC over HTTP/2 (cleartext, or TLS when TLS options are given).
    Tcp {
        /// Host name or IP address (IPv6 without brackets).
        host: String,
        /// TCP port.
        port: u16,
    },
    /// `unix:///PATH`: a unix socket.
    Unix(PathBuf),
    /// `docker://` or `docker+unix:///PATH`: the Docker Engine's embedded BuildKit, reached
    /// through the Engine API's `/grpc` and `/session` upgrades.
    Docker(DockerHost),
    /// `SCHEME://ADDRESS` for a scheme of a [`Connector`](super::Connector), such as the
    /// fleet's `kube-pod://POD?namespace=NS`: parsed by
    /// [`Endpoint::parse_with`](Endpoint::parse_with) (the connector checked the address) and
    /// connected by [`Client::connect_with`](super::Client::connect_with) with the same
    /// connectors.
    Custom {
        /// The scheme name, without `://`, e.g. `kube-pod`.
        scheme: String,
        /// Everything after `://`, for the scheme to interpret (e.g. `POD?namespace=NS`).
        address: String,
    },
}

/// How to reach a Docker Engine's API.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DockerHost {
    /// A unix socket, `/var/run/docker.sock` by default.
    Unix(PathBuf),
    /// A plain TCP Engine API (`DOCKER_HOST=tcp://HOST:PORT`).
    Tcp {
        /// Host name or IP address.
        host: String,
        /// TCP port.
        port: u16,
    },
}

/// The default Docker Engine socket.
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// The port BuildKit listens on by convention.
pub const DEFAULT_BUILDKIT_PORT: u16 = 1234;

/// Why an address could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid BuildKit address {addr:?}: {reason}")]
#[non_exhaustive]
pub struct ParseEndpointError {
    /// The address text exactly as passed to the parser, before any `DOCKER_HOST` was applied.
    pub addr: String,
    /// What is wrong with it and what would be right.
    pub reason: String,
}

/// What the parser asks about a scheme it does not know itself; the caller's connectors
/// answer (so this file needs nothing of them).
pub(crate) trait CustomSchemes {
    /// `None` when no connector has `scheme`; else its verdict on `address`.
    fn check(&self, scheme: &str, address: &str) -> Option<Result<(), String>>;
    /// The schemes there are connectors for, for messages.
    fn names(&self) -> Vec<String>;
}

/// The built-in schemes alone.
struct NoCustomSchemes;

impl CustomSchemes for NoCustomSchemes {
    fn check(&self, _: &str, _: &str) -> Option<Result<(), String>> {
        None
    }
    fn names(&self) -> Vec<String> {
        Vec::new()
    }
}

impl Endpoint {
    /// Parses an address of a built-in scheme, resolving `docker://` against `DOCKER_HOST`
    /// from the environment. For other schemes (such as the fleet's `kube-pod://`) use
    /// [`Endpoint::parse_with`].
    ///
    /// # Errors
    /// When the scheme is unknown or the rest of the address is malformed.
    pub fn parse(addr: &str) -> Result<Self, ParseEndpointError> {
        Self::parse_with_docker_host(addr, std::env::var("DOCKER_HOST").ok().as_deref())
    }

    /// Parses an address of a built-in scheme, resolving `docker://` against the given
    /// `DOCKER_HOST` value.
    ///
    /// # Errors
    /// When the scheme is unknown or the rest of the address is malformed.
    pub fn parse_with_docker_host(
        addr: &str,
        docker_host: Option<&str>,
    ) -> Result<Self, ParseEndpointError> {
        Self::parse_inner(addr, docker_host, &NoCustomSchemes)
    }

    /// Parses `addr`, asking `custom` about schemes that are not built in.
    pub(crate) fn parse_inner(
        addr: &str,
        docker_host: Option<&str>,
        custom: &dyn CustomSchemes,
    ) -> Result<Self, ParseEndpointError> {
        let fail = |reason: &str| ParseEndpointError {
            addr: addr.to_owned(),
            reason: reason.to_owned(),
        };
        let Some((scheme, rest)) = addr.split_once("://") else {
            return Err(fail(
                "expected SCHEME://…, one of tcp://HOST:PORT, unix:///PATH, docker://, docker+unix:///PATH, or a connector's scheme such as kube-pod://POD",
            ));
        };
        match scheme {
            "tcp" => {
                let (host, port) = parse_host_port(rest).map_err(|r| fail(&r))?;
                Ok(Endpoint::Tcp { host, port })
            }
            "unix" => Ok(Endpoint::Unix(parse_unix_path(rest).map_err(|r| fail(&r))?)),
            "docker" => {
                if !rest.is_empty() && rest != "/" {
                    return Err(fail(
                        "docker:// takes no host; the Engine is found through DOCKER_HOST (or use docker+unix:///PATH)",
                    ));
                }
                match docker_host.filter(|h| !h.is_empty()) {
                    None => Ok(Endpoint::Docker(DockerHost::Unix(
                        DEFAULT_DOCKER_SOCKET.into(),
                    ))),
                    Some(h) => parse_docker_host(h)
                        .map(Endpoint::Docker)
                        .map_err(|reason| ParseEndpointError {
                            addr: addr.to_owned(),
                            reason: format!("DOCKER_HOST={h:?}: {reason}"),
                        }),
                }
            }
            "docker+unix" => Ok(Endpoint::Docker(DockerHost::Unix(
                parse_unix_path(rest).map_err(|r| fail(&r))?,
            ))),
            "docker+tcp" => {
                let (host, port) = parse_host_port(rest).map_err(|r| fail(&r))?;
                Ok(Endpoint::Docker(DockerHost::Tcp { host, port }))
            }
            other => match custom.check(other, rest) {
                Some(verdict) => {
                    verdict.map_err(|r| fail(&r))?;
                    Ok(Endpoint::Custom {
                        scheme: other.to_owned(),
                        address: rest.to_owned(),
                    })
                }
                None => {
                    let mut known: Vec<String> = ["tcp", "unix", "docker", "docker+unix"]
                        .iter()
                        .map(|s| format!("{s}://"))
                        .collect();
                    known.extend(custom.names().iter().map(|s| format!("{s}://")));
                    Err(fail(&format!(
                        "unknown scheme {other:?}; use {}",
                        known.join(", ")
                    )))
                }
            },
        }
    }

    /// The host name TLS verifies by default: the host of a `tcp://` address.
    pub fn tls_server_name(&self) -> Option<&str> {
        match self {
            Endpoint::Tcp { host, .. } => Some(host),
            _ => None,
        }
    }
}

impl FromStr for Endpoint {
    type Err = ParseEndpointError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Endpoint::parse(s)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp { host, port } if host.contains(':') => {
                write!(f, "tcp://[{host}]:{port}")
            }
            Endpoint::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            Endpoint::Unix(path) => write!(f, "unix://{}", path.display()),
            Endpoint::Docker(DockerHost::Unix(path)) => {
                write!(f, "docker+unix://{}", path.display())
            }
            Endpoint::Docker(DockerHost::Tcp { host, port }) => {
                write!(f, "docker+tcp://{host}:{port}")
            }
            Endpoint::Custom { scheme, address } => write!(f, "{scheme}://{address}"),
        }
    }
}

fn parse_docker_host(value: &str) -> Result<DockerHost, String> {
    if let Some(rest) = value.strip_prefix("unix://") {
        return parse_unix_path(rest).map(DockerHost::Unix);
    }
    if let Some(rest) = value.strip_prefix("tcp://") {
        let (host, port) = parse_host_port(rest)?;
        return Ok(DockerHost::Tcp { host, port });
    }
    Err("only unix:// and tcp:// Docker hosts are supported".into())
}

fn parse_unix_path(rest: &str) -> Result<PathBuf, String> {
    if rest.is_empty() {
        return Err("missing socket path (unix:///PATH)".into());
    }
    Ok(PathBuf::from(rest))
}

fn parse_host_port(rest: &str) -> Result<(String, u16), String> {
    let rest = rest.trim_end_matches('/');
    if rest.contains('/') || rest.contains('?') {
        return Err("expected HOST:PORT with no path".into());
    }
    let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| "unclosed '[' in IPv6 address".to_string())?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| "missing :PORT".to_string())?;
        (host, port)
    } else {
        rest.rsplit_once(':')
            .ok_or_else(|| "missing :PORT (BuildKit's conventional port is 1234)".to_string())?
    };
    if host.is_empty() {
        return Err("missing host".into());
    }
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("port {port:?} is not a number from 1 to 65535"))?;
    if port == 0 {
        return Err("port 0 is not a port to connect to".into());
    }
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Endpoint, ParseEndpointError> {
        Endpoint::parse_with_docker_host(s, None)
    }

    #[test]
    fn parses_each_scheme() {
        assert_eq!(
            parse("tcp://10.0.0.1:1234").unwrap(),
            Endpoint::Tcp {
                host: "10.0.0.1".into(),
                port: 1234
            }
        );
        assert_eq!(
            parse("tcp://[::1]:1234").unwrap(),
            Endpoint::Tcp {
                host: "::1".into(),
                port: 1234
            }
        );
        assert_eq!(
            parse("unix:///run/b.sock").unwrap(),
            Endpoint::Unix("/run/b.sock".into())
        );
        assert_eq!(
            parse("docker://").unwrap(),
            Endpoint::Docker(DockerHost::Unix(DEFAULT_DOCKER_SOCKET.into()))
        );
        assert_eq!(
            Endpoint::parse_with_docker_host("docker://", Some("unix:///tmp/d.sock")).unwrap(),
            Endpoint::Docker(DockerHost::Unix("/tmp/d.sock".into()))
        );
        assert_eq!(
            parse("docker+unix:///tmp/d.sock").unwrap(),
            Endpoint::Docker(DockerHost::Unix("/tmp/d.sock".into()))
        );
    }

    #[test]
    fn rejects_bad_addresses_with_a_reason() {
        for (addr, needle) in [
            ("ftp://x:1", "unknown scheme"),
            ("localhost:1234", "expected SCHEME://"),
            ("tcp://host", "missing :PORT"),
            ("tcp://host:99999", "not a number"),
            ("tcp://:1234", "missing host"),
            ("unix://", "missing socket path"),
        ] {
            let err = parse(addr).unwrap_err().to_string();
            assert!(err.contains(needle), "{addr}: {err}");
        }
    }

    #[test]
    fn display_round_trips() {
        for addr in [
            "tcp://h:1234",
            "unix:///a/b.sock",
            "docker+unix:///x.sock",
            "tcp://[::1]:5",
        ] {
            assert_eq!(parse(addr).unwrap().to_string(), addr);
        }
    }
}
