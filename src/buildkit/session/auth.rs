//! `moby.filesync.v1.Auth`: registry credentials from a provider (the Docker configuration,
//! with ECR logins for ECR hosts it has nothing for, or the caller's own), so the daemon itself
//! can push. Token
//! authority calls answer Unavailable, so the daemon falls back to `Credentials` and fetches
//! tokens itself.

use std::sync::Arc;

use crate::buildkit::proto::moby::filesync::v1::auth_server::{Auth, AuthServer};
use crate::buildkit::proto::moby::filesync::v1::{
    CredentialsRequest, CredentialsResponse, FetchTokenRequest, FetchTokenResponse,
    GetTokenAuthorityRequest, GetTokenAuthorityResponse, VerifyTokenAuthorityRequest,
    VerifyTokenAuthorityResponse,
};
use crate::registry::{Credential, CredentialsProvider};

pub(super) fn service(config: Option<Arc<dyn CredentialsProvider>>) -> AuthServer<AuthService> {
    AuthServer::new(AuthService { config })
}

pub(super) struct AuthService {
    config: Option<Arc<dyn CredentialsProvider>>,
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn credentials(
        &self,
        request: tonic::Request<CredentialsRequest>,
    ) -> Result<tonic::Response<CredentialsResponse>, tonic::Status> {
        let host = request.into_inner().host;
        let Some(config) = self.config.clone() else {
            return Ok(tonic::Response::new(CredentialsResponse::default()));
        };
        // Helpers (programs) and ECR (an AWS call) are both behind the Docker config's
        // provider; a provider of the caller's may do anything.
        let found = config.credentials(&host).await;
        match found {
            Ok(Some(credential)) => {
                tracing::debug!(%host, "serving registry credentials");
                // BuildKit's convention: an identity token travels as the secret of an empty
                // user name.
                let (username, secret) = match credential {
                    Credential::Basic { username, password } => (username, password),
                    Credential::IdentityToken(token) => (String::new(), token),
                };
                Ok(tonic::Response::new(CredentialsResponse {
                    username,
                    secret,
                }))
            }
            // Empty credentials mean anonymous access to the daemon.
            Ok(None) => Ok(tonic::Response::new(CredentialsResponse::default())),
            // The whole chain: the daemon shows it in the build error, and the AWS reason is
            // what the user needs.
            Err(err) => Err(tonic::Status::unavailable(
                crate::buildkit::error::wire_text(&err),
            )),
        }
    }

    async fn fetch_token(
        &self,
        _request: tonic::Request<FetchTokenRequest>,
    ) -> Result<tonic::Response<FetchTokenResponse>, tonic::Status> {
        Err(tonic::Status::unavailable(
            "tokens are fetched by the daemon from the credentials",
        ))
    }

    async fn get_token_authority(
        &self,
        _request: tonic::Request<GetTokenAuthorityRequest>,
    ) -> Result<tonic::Response<GetTokenAuthorityResponse>, tonic::Status> {
        Err(tonic::Status::unavailable("no token authority"))
    }

    async fn verify_token_authority(
        &self,
        _request: tonic::Request<VerifyTokenAuthorityRequest>,
    ) -> Result<tonic::Response<VerifyTokenAuthorityResponse>, tonic::Status> {
        Err(tonic::Status::unavailable("no token authority"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(json: &str) -> AuthService {
        AuthService {
            config: Some(Arc::new(
                crate::registry::DockerConfig::from_json(json).unwrap(),
            )),
        }
    }

    async fn ask(service: &AuthService, host: &str) -> CredentialsResponse {
        service
            .credentials(tonic::Request::new(CredentialsRequest {
                host: host.into(),
            }))
            .await
            .unwrap()
            .into_inner()
    }

    #[tokio::test]
    async fn docker_hub_credentials_come_from_the_legacy_key() {
        // base64("me:pw")
        let s = service(r#"{"auths":{"https://index.docker.io/v1/":{"auth":"bWU6cHc="}}}"#);
        let r = ask(&s, "registry-1.docker.io").await;
        assert_eq!((r.username.as_str(), r.secret.as_str()), ("me", "pw"));
        let r = ask(&s, "ghcr.io").await;
        assert!(
            r.username.is_empty() && r.secret.is_empty(),
            "anonymous elsewhere"
        );
    }

    #[tokio::test]
    async fn identity_tokens_travel_as_the_secret_of_an_empty_user() {
        let s = service(r#"{"auths":{"r.example":{"identitytoken":"tok"}}}"#);
        let r = ask(&s, "r.example").await;
        assert_eq!((r.username.as_str(), r.secret.as_str()), ("", "tok"));
    }

    #[tokio::test]
    async fn token_authority_is_unavailable_so_the_daemon_falls_back() {
        let s = service("{}");
        let err = s
            .get_token_authority(tonic::Request::new(GetTokenAuthorityRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
    }
}
