//! `moby.filesync.v1.Auth`: registry credentials from the Docker configuration. Token
//! authority calls answer Unavailable, so the daemon falls back to `Credentials` and fetches
//! tokens itself.

use std::sync::Arc;

use crate::buildkit::proto::moby::filesync::v1::auth_server::{Auth, AuthServer};
use crate::buildkit::proto::moby::filesync::v1::{
    CredentialsRequest, CredentialsResponse, FetchTokenRequest, FetchTokenResponse,
    GetTokenAuthorityRequest, GetTokenAuthorityResponse, VerifyTokenAuthorityRequest,
    VerifyTokenAuthorityResponse,
};
use crate::credentials::DockerConfig;

pub(super) fn service(config: Option<Arc<DockerConfig>>) -> AuthServer<AuthService> {
    AuthServer::new(AuthService { config })
}

pub(super) struct AuthService {
    config: Option<Arc<DockerConfig>>,
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
        // Credential helpers are programs: keep them off the async threads.
        let lookup_host = host.clone();
        let found = tokio::task::spawn_blocking(move || config.credentials_for(&lookup_host))
            .await
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        match found {
            Ok(Some(creds)) => {
                tracing::debug!(%host, "serving registry credentials");
                Ok(tonic::Response::new(CredentialsResponse {
                    username: creds.username,
                    secret: creds.secret,
                }))
            }
            // Empty credentials mean anonymous access to the daemon.
            Ok(None) => Ok(tonic::Response::new(CredentialsResponse::default())),
            Err(err) => Err(tonic::Status::unavailable(err.to_string())),
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
