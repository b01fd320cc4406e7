//! Session services of the caller's own ([`Attachable`]), served beside the built-in ones, as
//! Go's `session.Attachable`: a frontend or an LLB step reaches them through the session, e.g.
//! a `RUN --mount=type=secret` answered by a secret store of the caller's instead of a file.

use std::fmt;

/// A gRPC service (or several) the session serves for the caller.
///
/// `methods` are announced to the daemon when the session opens (BuildKit calls only what was
/// announced); `register` adds the services to the session's router. A service whose name is
/// one of the built-in ones (`moby.buildkit.secrets.v1.Secrets`,
/// `moby.sshforward.v1.SSH`, `moby.filesync.v1.Auth`, …) replaces the built-in one for this
/// session. The generated server types of BuildKit's protocols are in
/// [`proto`](crate::buildkit::proto) (no semver promise: they follow the wire).
///
/// See `examples/custom_attachable.rs` for a secret store served this way.
pub trait Attachable: Send + Sync + 'static {
    /// The full names of the gRPC methods served, `/PACKAGE.SERVICE/METHOD`.
    fn methods(&self) -> Vec<String>;

    /// Adds the services to the session's router.
    fn register(&self, routes: &mut tonic::service::RoutesBuilder);
}

impl fmt::Debug for dyn Attachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Attachable").field(&self.methods()).finish()
    }
}

/// The service a method name belongs to: `/a.b.Service/Method` -> `a.b.Service`.
pub(super) fn service_of(method: &str) -> &str {
    let method = method.strip_prefix('/').unwrap_or(method);
    method
        .split_once('/')
        .map_or(method, |(service, _)| service)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_method_names_its_service() {
        assert_eq!(
            super::service_of("/moby.buildkit.secrets.v1.Secrets/GetSecret"),
            "moby.buildkit.secrets.v1.Secrets"
        );
        assert_eq!(super::service_of("bare"), "bare");
    }
}
