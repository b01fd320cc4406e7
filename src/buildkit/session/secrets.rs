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
        let data = source.read().map_err(|e| {
            tonic::Status::not_found(format!(
                "secret {id}: {}",
                crate::buildkit::error::wire_text(&e)
            ))
        })?;
        Ok(tonic::Response::new(GetSecretResponse {
            data: data.into(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn known_ids_are_read_and_unknown_ones_are_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s");
        std::fs::write(&file, "value").unwrap();
        let service = SecretsService {
            secrets: BTreeMap::from([("a".to_owned(), SecretSource::File(file))]),
        };
        let got = service
            .get_secret(tonic::Request::new(GetSecretRequest {
                id: "a".into(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(&got.data[..], b"value");
        let err = service
            .get_secret(tonic::Request::new(GetSecretRequest {
                id: "b".into(),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
        assert!(!err.message().contains("value"));
    }
}
