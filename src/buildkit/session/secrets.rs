//! `moby.buildkit.secrets.v1.Secrets`: values for `RUN --mount=type=secret`. Values are read
//! when asked for and never logged.

use std::collections::BTreeMap;

use crate::buildkit::proto::moby::buildkit::secrets::v1::secrets_server::{Secrets, SecretsServer};
use crate::buildkit::proto::moby::buildkit::secrets::v1::{GetSecretRequest, GetSecretResponse};

use super::SecretSource;

pub(super) fn service(secrets: BTreeMap<String, SecretSource>) -> SecretsServer<SecretsService> {
    SecretsServer::new(SecretsService { secrets })
}

pub(super) struct SecretsService {
    secrets: BTreeMap<String, SecretSource>,
}

#[tonic::async_trait]
impl Secrets for SecretsService {
    async fn get_secret(
        &self,
        request: tonic::Request<GetSecretRequest>,
    ) -> Result<tonic::Response<GetSecretResponse>, tonic::Status> {
        let id = request.into_inner().id;
        // The daemon maps NotFound to "secret not found", which the user then sees.
        let source = self
            .secrets
            .get(&id)
            .ok_or_else(|| tonic::Status::not_found(format!("secret {id} not provided")))?;
        let data = source
            .read()
            .map_err(|reason| tonic::Status::not_found(format!("secret {id}: {reason}")))?;
        Ok(tonic::Response::new(GetSecretResponse {
            data: data.into(),
        }))
    }
}
