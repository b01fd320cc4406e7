//! `grpc.health.v1.Health`: the daemon checks every 5 s and drops the session after two
//! failures, so this always answers SERVING while the session runs.

use std::pin::Pin;

use futures_util::Stream;

use crate::buildkit::proto::grpc::health::v1::health_check_response::ServingStatus;
use crate::buildkit::proto::grpc::health::v1::health_server::{Health, HealthServer};
use crate::buildkit::proto::grpc::health::v1::{HealthCheckRequest, HealthCheckResponse};

pub(super) fn service() -> HealthServer<HealthService> {
    HealthServer::new(HealthService)
}

pub(super) struct HealthService;

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        _request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(HealthCheckResponse {
            status: ServingStatus::Serving as i32,
        }))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        _request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("health watch is not served"))
    }
}
