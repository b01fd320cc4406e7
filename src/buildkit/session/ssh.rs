//! `moby.sshforward.v1.SSH`: forwards `RUN --mount=type=ssh` connections to a local SSH agent
//! socket, by id (metadata `buildkit.ssh.id`, `default` when absent).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::pin::Pin;

use bytes::BytesMut;
use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::tasks::Tasks;
use crate::buildkit::proto::moby::sshforward::v1::ssh_server::{Ssh, SshServer};
use crate::buildkit::proto::moby::sshforward::v1::{
    BytesMessage, CheckAgentRequest, CheckAgentResponse,
};

pub(super) fn service(agents: BTreeMap<String, PathBuf>, tasks: Tasks) -> SshServer<SshService> {
    SshServer::new(SshService { agents, tasks })
}

pub(super) struct SshService {
    agents: BTreeMap<String, PathBuf>,
    tasks: Tasks,
}

impl SshService {
    fn socket(&self, id: &str) -> Result<&PathBuf, tonic::Status> {
        let id = if id.is_empty() { "default" } else { id };
        self.agents
            .get(id)
            .ok_or_else(|| tonic::Status::not_found(format!("no SSH agent is offered for id {id}")))
    }
}

type ForwardStream = Pin<Box<dyn Stream<Item = Result<BytesMessage, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl Ssh for SshService {
    async fn check_agent(
        &self,
        request: tonic::Request<CheckAgentRequest>,
    ) -> Result<tonic::Response<CheckAgentResponse>, tonic::Status> {
        let id = request.into_inner().id;
        let socket = self.socket(&id)?;
        tokio::net::UnixStream::connect(socket).await.map_err(|e| {
            tonic::Status::unavailable(format!("cannot reach SSH agent {}: {e}", socket.display()))
        })?;
        Ok(tonic::Response::new(CheckAgentResponse {}))
    }

    type ForwardAgentStream = ForwardStream;

    async fn forward_agent(
        &self,
        request: tonic::Request<tonic::Streaming<BytesMessage>>,
    ) -> Result<tonic::Response<Self::ForwardAgentStream>, tonic::Status> {
        let id = request
            .metadata()
            .get("buildkit.ssh.id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("default")
            .to_owned();
        let socket = self.socket(&id)?.clone();
        let stream = tokio::net::UnixStream::connect(&socket)
            .await
            .map_err(|e| {
                tonic::Status::unavailable(format!(
                    "cannot reach SSH agent {}: {e}",
                    socket.display()
                ))
            })?;
        let (mut read, mut write) = stream.into_split();
        let mut inbound = request.into_inner();
        self.tasks.spawn(async move {
            while let Some(Ok(message)) = inbound.next().await {
                if write.write_all(&message.data).await.is_err() {
                    break;
                }
            }
            let _ = write.shutdown().await;
        });
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        self.tasks.spawn(async move {
            let mut buf = BytesMut::with_capacity(32 << 10);
            loop {
                buf.reserve(32 << 10);
                match read.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let data = buf.split().freeze();
                        if tx.send(Ok(BytesMessage { data })).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
