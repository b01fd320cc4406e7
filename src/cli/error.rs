//! The binary's one error formatter. A failure prints as one line: the error and its causes,
//! each said once, then — where the library's error names a situation a flag fixes — which
//! flag. Library errors speak of values (a path, a pod, an architecture); only this module
//! knows the command line, so the flag hints live here and nowhere in `pf_buildkit`.

use pf_buildkit::buildkit::oci_layout::LayoutError;
use pf_buildkit::buildkit::{
    self, BuildError, InvalidOptions, StoreRole, TlsConfigError, TlsFile, TlsProblem,
};
use pf_buildkit::{config, fleet, multiplatform, registry};

/// One line for an error: the message and its causes, each said once, and a hint naming the
/// flag or command that fixes it, when there is one.
pub fn format_error(err: &anyhow::Error) -> String {
    let mut line = chain(err.as_ref());
    if let Some(hint) = hint(err) {
        line.push_str("; ");
        line.push_str(&hint);
    }
    line
}

/// An error and its `source()` chain: each message that adds something, joined by `: ` (a
/// cause whose text its parent already quotes, or an empty one, is left out; line breaks
/// become spaces).
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        if !text.is_empty() && !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        next = e.source();
    }
    out.replace('\n', " ")
}

/// The command-line fix for the first error in the chain that has one. An `io::Error`'s
/// `source()` skips the error it wraps (a `kube-pod://` dialer's fleet error, inside the
/// connect error), so what each one wraps is looked at too.
fn hint(err: &anyhow::Error) -> Option<String> {
    err.chain().find_map(|cause| {
        let mut next = Some(cause);
        while let Some(e) = next {
            if let Some(hint) = cause_hint(e) {
                return Some(hint);
            }
            next = e
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .map(|inner| inner as &(dyn std::error::Error + 'static));
        }
        None
    })
}

/// The command-line fix for `cause` itself, if it has one.
fn cause_hint(cause: &(dyn std::error::Error + 'static)) -> Option<String> {
    if let Some(e) = as_error::<fleet::Error>(cause) {
        return fleet_hint(e);
    }
    buildkit_hint(cause)
        .or_else(|| registry_hint(cause))
        .or_else(|| multiplatform_hint(cause))
        .or_else(|| as_error::<config::ConfigError>(cause).and_then(config_hint))
}

/// `cause` as a `T`, whether it is one or a `Box<T>` (a boxed `#[source]` is the box).
fn as_error<'a, T: std::error::Error + 'static>(
    cause: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    cause
        .downcast_ref::<T>()
        .or_else(|| cause.downcast_ref::<Box<T>>().map(|b| &**b))
}

/// Hints for the BuildKit client's errors: connecting (TLS) and the build's options.
fn buildkit_hint(cause: &(dyn std::error::Error + 'static)) -> Option<String> {
    if let Some(e) = as_error::<buildkit::Error>(cause) {
        return connect_hint(e);
    }
    match as_error::<BuildError>(cause)? {
        BuildError::Invalid(invalid) => options_hint(invalid),
        BuildError::Rpc(e) => connect_hint(e),
        BuildError::Store {
            source: LayoutError::LockTimeout { .. },
            ..
        } => Some("to wait longer, raise --lock-wait".into()),
        _ => None,
    }
}

/// The TLS flag that sets `file`.
fn tls_flag(file: TlsFile) -> &'static str {
    match file {
        TlsFile::CaCertificate => "--tlscacert",
        TlsFile::ClientCertificate => "--tlscert",
        TlsFile::ClientKey => "--tlskey",
        // A file the binary has no flag for: the flags together.
        _ => "--tlscacert, --tlscert and --tlskey",
    }
}

fn connect_hint(err: &buildkit::Error) -> Option<String> {
    if let buildkit::Error::Tls(tls) = err {
        return match tls {
            TlsConfigError::Read { file, .. } | TlsConfigError::Pem { file, .. } => {
                Some(format!("check {}", tls_flag(*file)))
            }
            TlsConfigError::HalfIdentity => Some("pass both --tlscert and --tlskey".into()),
            TlsConfigError::ServerName(_) => Some("check --tlsservername".into()),
            TlsConfigError::NotTcp => Some(
                "--tlscacert, --tlscert, --tlskey and --tlsservername need a tcp:// --addr".into(),
            ),
            _ => None,
        };
    }
    if let buildkit::Error::Connect {
        tls: None, source, ..
    } = err
        && matches!(
            source.kind(),
            std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
        )
    {
        return Some("is BuildKit running at that address?".into());
    }
    match err.tls_problem()? {
        TlsProblem::UnknownIssuer => Some("check --tlscacert".into()),
        TlsProblem::WrongServerName => {
            Some("set --tlsservername to a name the daemon's certificate holds".into())
        }
        TlsProblem::ClientCertificateWanted => {
            Some("if the daemon requires mTLS, pass --tlscert and --tlskey".into())
        }
        _ => None,
    }
}

/// The flag and attribute that name a content store.
fn store_flag(role: &StoreRole) -> String {
    match role {
        StoreRole::CacheExport => "--export-cache type=local,dest=DIR".into(),
        StoreRole::CacheImport => "--import-cache type=local,src=DIR".into(),
        StoreRole::LayoutOutput => "--output type=oci,dest=DIR,tar=false".into(),
        StoreRole::OciLayout { name } => format!("--oci-layout {name}=DIR"),
        _ => "--export-cache, --import-cache, --output and --oci-layout".into(),
    }
}

fn options_hint(err: &InvalidOptions) -> Option<String> {
    Some(match err {
        InvalidOptions::ContextNotADirectory { .. } => "check --context".into(),
        InvalidOptions::Dockerfile { .. } | InvalidOptions::DockerfileNotAFile { .. } => {
            "give the Dockerfile's path with --file".into()
        }
        InvalidOptions::LocalNotADirectory { name, .. } => format!("check --local {name}=DIR"),
        InvalidOptions::Secret { id, .. } => format!("check --secret id={id}"),
        InvalidOptions::SshSocketMissing { id, .. } => format!("check --ssh {id}=SOCKET"),
        InvalidOptions::OutputDestination { .. } => "check --output dest=".into(),
        InvalidOptions::NotUtf8 { role, .. }
        | InvalidOptions::Store { role, .. }
        | InvalidOptions::NoDigest { role, .. } => format!("check {}", store_flag(role)),
        InvalidOptions::TwoLayoutOutputs => "give at most one --output type=oci,tar=false".into(),
        InvalidOptions::OciLayoutName { .. } => "check --oci-layout NAME=DIR".into(),
        InvalidOptions::UnknownOciLayout { name, .. } => {
            format!("offer it with --oci-layout {name}=DIR")
        }
        _ => return None,
    })
}

fn registry_hint(cause: &(dyn std::error::Error + 'static)) -> Option<String> {
    match as_error::<registry::Error>(cause)? {
        registry::Error::Connect { source, .. } if signed_by_unknown_ca(source) => Some(
            "if a private CA signs it, set SSL_CERT_FILE to a PEM file holding that CA \
             (SSL_CERT_DIR=/etc/ssl/certs:DIR adds a directory of them to the system's)"
                .into(),
        ),
        registry::Error::Connect {
            mismatch: Some(mismatch),
            ..
        } => match mismatch {
            registry::ProtocolMismatch::PlainHttpAnswer => {
                Some("pass --insecure-registry for a plain-HTTP registry".into())
            }
            registry::ProtocolMismatch::NotHttpAnswer => {
                Some("if the registry needs HTTPS, drop --insecure-registry".into())
            }
            _ => None,
        },
        registry::Error::NoAttestations { kind, .. } => {
            Some(if *kind == registry::AttestationKind::Sbom.name() {
                "build with --sbom (or --attest type=sbom) to attach one".into()
            } else {
                "build with --provenance (or --attest type=provenance) to attach one".into()
            })
        }
        _ => None,
    }
}

/// Whether TLS refused a peer's certificate as signed by no CA it trusts, anywhere in the
/// chain. reqwest and hyper keep rustls's error inside an `io::Error` (hyper-rustls wraps that
/// in another one), and an `io::Error`'s `source()` skips what it wraps, so each `io::Error`
/// is looked into, however deep.
fn signed_by_unknown_ca(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        let mut wrapped = Some(e);
        while let Some(w) = wrapped {
            if let Some(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            )) = w.downcast_ref::<rustls::Error>()
            {
                return true;
            }
            wrapped = w
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .map(|inner| inner as &(dyn std::error::Error + 'static));
        }
        next = e.source();
    }
    false
}

/// The multi-platform build wraps the errors above transparently: the chain skips them.
fn multiplatform_hint(cause: &(dyn std::error::Error + 'static)) -> Option<String> {
    match as_error::<multiplatform::Error>(cause)? {
        multiplatform::Error::Options(build) => buildkit_hint(build),
        multiplatform::Error::Registry(e) => registry_hint(e),
        multiplatform::Error::Config(e) => config_hint(e),
        multiplatform::Error::NoRegistry => Some("pass --registry HOST".into()),
        multiplatform::Error::NoBuilder { arch }
        | multiplatform::Error::NotInFleet { arch, .. } => {
            Some(format!("pass --builder {arch}=ENDPOINT"))
        }
        multiplatform::Error::UnusedBuilder { arch } => {
            Some(format!("add {arch} to --arch, or drop --builder {arch}=…"))
        }
        _ => None,
    }
}

/// A missing `buildkit.json` field that a flag can stand in for.
fn config_hint(err: &config::ConfigError) -> Option<String> {
    match err {
        config::ConfigError::Field { field, .. } if *field == "registry" => {
            Some("on the command line: --registry HOST".into())
        }
        config::ConfigError::Field { field, .. } if *field == "cluster" => {
            Some("on the command line: --builder ARCH=ENDPOINT for each architecture".into())
        }
        _ => None,
    }
}

fn fleet_hint(err: &fleet::Error) -> Option<String> {
    match err {
        fleet::Error::NoRunningPods { arch, .. } => Some(format!(
            "scale up first: pf-buildkit scale up --only {arch} --wait"
        )),
        // Advice that names a program the library does not use: the binary's to give.
        fleet::Error::ScaleUpTimeout { namespace, .. } => Some(format!(
            "check the pods with `kubectl get pods -n {namespace}`"
        )),
        // rustls says only "UnknownIssuer": name the CA that was used, and where it comes from.
        fleet::Error::Request { source, .. } if signed_by_unknown_ca(source) => Some(
            "the API server's certificate is not signed by the certificate authority the \
             kubeconfig gives for its cluster (certificate-authority or \
             certificate-authority-data); if the cluster's CA changed, get a new kubeconfig"
                .into(),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_ca_is_found_inside_nested_io_errors() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        // hyper-rustls's wrapping of tokio-rustls's error.
        let outer = std::io::Error::other(io);
        assert!(signed_by_unknown_ca(&outer));
        let other = std::io::Error::other(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Expired,
        ));
        assert!(!signed_by_unknown_ca(&other));
    }

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct Quoting(#[source] std::io::Error);

    #[test]
    fn a_cause_the_parent_quotes_is_said_once() {
        let err = anyhow::Error::new(Quoting(std::io::Error::other("disk full")))
            .context("cannot write /x");
        assert_eq!(format_error(&err), "cannot write /x: outer: disk full");
    }

    #[test]
    fn a_scale_up_timeout_names_the_kubectl_command() {
        let err = anyhow::Error::new(fleet::Error::ScaleUpTimeout {
            statefulsets: "buildkit-amd64".into(),
            seconds: 3,
            namespace: "ci-builds".into(),
        });
        assert_eq!(
            format_error(&err),
            "timed out after 3 s waiting for an available BuildKit replica of buildkit-amd64 in namespace ci-builds; check the pods with `kubectl get pods -n ci-builds`"
        );
    }

    #[test]
    fn a_missing_pod_names_the_scale_up_command() {
        let err = anyhow::Error::new(fleet::Error::NoRunningPods {
            arch: fleet::Arch::Arm64,
            namespace: "buildkit".into(),
        });
        let line = format_error(&err);
        assert!(
            line.ends_with("; scale up first: pf-buildkit scale up --only arm64 --wait"),
            "{line}"
        );
    }

    #[test]
    fn a_missing_pod_under_the_cluster_build_names_the_scale_up_command() {
        // The multi-platform build boxes the fleet's error as its source.
        let err = anyhow::Error::new(multiplatform::Error::Lease {
            arch: "arm64".into(),
            source: Box::new(fleet::Error::NoRunningPods {
                arch: fleet::Arch::Arm64,
                namespace: "buildkit".into(),
            }),
        });
        assert_hint(
            err,
            "scale up first: pf-buildkit scale up --only arm64 --wait",
        );
    }

    /// The line for `err`, checked to end with `; HINT`.
    fn assert_hint(err: anyhow::Error, hint: &str) {
        let line = format_error(&err);
        assert!(line.ends_with(&format!("; {hint}")), "{line}");
    }

    fn tls_read(file: TlsFile) -> buildkit::Error {
        buildkit::Error::Tls(TlsConfigError::Read {
            file,
            path: "/etc/x.pem".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })
    }

    #[test]
    fn an_unreadable_tls_file_names_its_flag() {
        for (file, flag) in [
            (TlsFile::CaCertificate, "--tlscacert"),
            (TlsFile::ClientCertificate, "--tlscert"),
            (TlsFile::ClientKey, "--tlskey"),
        ] {
            let err = anyhow::Error::new(tls_read(file));
            let line = format_error(&err);
            assert!(line.starts_with("cannot read the "), "{line}");
            assert_hint(err, &format!("check {flag}"));
        }
    }

    #[test]
    fn half_an_identity_names_both_flags() {
        let err = anyhow::Error::new(buildkit::Error::Tls(TlsConfigError::HalfIdentity));
        assert_hint(err, "pass both --tlscert and --tlskey");
    }

    #[test]
    fn a_tls_refusal_names_the_client_certificate_flags() {
        let err = anyhow::Error::new(buildkit::Error::Connect {
            endpoint: "tcp://localhost:1234".into(),
            tls: Some(TlsProblem::ClientCertificateWanted),
            source: std::io::Error::other("received fatal alert: CertificateRequired"),
        });
        assert_hint(
            err,
            "if the daemon requires mTLS, pass --tlscert and --tlskey",
        );
        let err = anyhow::Error::new(buildkit::Error::Connect {
            endpoint: "tcp://localhost:1234".into(),
            tls: Some(TlsProblem::WrongServerName),
            source: std::io::Error::other("invalid peer certificate: NotValidForName"),
        });
        assert_hint(
            err,
            "set --tlsservername to a name the daemon's certificate holds",
        );
    }

    #[test]
    fn nothing_listening_asks_whether_buildkit_runs_there() {
        for kind in [
            std::io::ErrorKind::ConnectionRefused,
            std::io::ErrorKind::NotFound,
        ] {
            let err = anyhow::Error::new(buildkit::Error::Connect {
                endpoint: "unix:///run/buildkit/buildkitd.sock".into(),
                tls: None,
                source: std::io::Error::from(kind),
            });
            assert_hint(err, "is BuildKit running at that address?");
        }
    }

    #[test]
    fn build_option_errors_name_their_flags() {
        let io = || std::io::Error::from(std::io::ErrorKind::NotFound);
        let cases: Vec<(InvalidOptions, &str)> = vec![
            (
                InvalidOptions::Dockerfile {
                    path: "/ctx/Dockerfile".into(),
                    source: io(),
                },
                "give the Dockerfile's path with --file",
            ),
            (
                InvalidOptions::OutputDestination {
                    path: "/x/out.tar".into(),
                    problem: buildkit::DestinationProblem::Parent {
                        parent: "/x".into(),
                        source: io(),
                    },
                },
                "check --output dest=",
            ),
            (
                InvalidOptions::Store {
                    role: StoreRole::CacheExport,
                    path: "/cache".into(),
                    source: buildkit::oci_layout::LayoutError::NotADirectory {
                        path: "/cache".into(),
                    },
                },
                "check --export-cache type=local,dest=DIR",
            ),
            (
                InvalidOptions::UnknownOciLayout {
                    key: "context:base".into(),
                    value: "oci-layout://base:v1".into(),
                    name: "base".into(),
                },
                "offer it with --oci-layout base=DIR",
            ),
            (
                InvalidOptions::SshSocketMissing {
                    id: "git".into(),
                    path: "/run/agent.sock".into(),
                },
                "check --ssh git=SOCKET",
            ),
        ];
        for (invalid, hint) in cases {
            let line = invalid.to_string();
            assert!(!line.contains("--"), "the library names no flag: {line}");
            assert_hint(anyhow::Error::new(BuildError::Invalid(invalid)), hint);
        }
    }

    #[test]
    fn a_build_option_error_inside_the_multi_platform_build_gets_its_hint() {
        let err = multiplatform::Error::Options(Box::new(BuildError::Invalid(
            InvalidOptions::DockerfileNotAFile {
                path: "/ctx/Dockerfile".into(),
            },
        )));
        assert_hint(
            anyhow::Error::new(err),
            "give the Dockerfile's path with --file",
        );
        assert_hint(
            anyhow::Error::new(multiplatform::Error::NoRegistry),
            "pass --registry HOST",
        );
    }

    #[test]
    fn a_missing_config_field_names_the_flag_that_stands_in() {
        let err = multiplatform::Error::Config(Box::new(config::ConfigError::Field {
            path: "/repo/.buildkit/buildkit.json".into(),
            field: "registry",
            hint: "set it to the registry host images are pushed to, or give the registry explicitly",
        }));
        assert_hint(
            anyhow::Error::new(err),
            "on the command line: --registry HOST",
        );
    }

    #[test]
    fn a_registry_protocol_mismatch_names_insecure_registry() {
        // A reqwest::Error to carry, made without any I/O.
        let response = http::Response::builder()
            .status(502)
            .body(String::new())
            .unwrap();
        let source = reqwest::Response::from(response)
            .error_for_status()
            .unwrap_err();
        let err = registry::Error::Connect {
            registry: "127.0.0.1:5000".into(),
            attempts: 1,
            mismatch: Some(registry::ProtocolMismatch::PlainHttpAnswer),
            source,
        };
        let line = format_error(&anyhow::Error::new(err));
        assert!(
            line.starts_with(
                "cannot talk to registry 127.0.0.1:5000 (after 1 attempt(s)): it answered HTTPS with plain HTTP"
            ),
            "{line}"
        );
        assert!(
            line.ends_with("; pass --insecure-registry for a plain-HTTP registry"),
            "{line}"
        );
    }
}
