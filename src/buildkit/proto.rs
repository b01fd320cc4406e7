//! The generated BuildKit wire types and gRPC stubs (from `vendor-protos/`).
//!
//! **Unstable: no semver promise.** These types follow BuildKit's wire protocol and the
//! prost and tonic versions that generate them, and may change in any release of this crate.
//! Nothing in the rest of the API needs them; reach for them only for what it does not wrap,
//! such as the generated server of a session service of your own
//! ([`Attachable`](super::Attachable)).
//!
//! The module tree mirrors the proto packages because prost refers across packages with
//! `super::` paths.
//!
//! Border: generated code only; it imports nothing of the crate, and hand-written code stays out.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// `moby.*` packages.
pub mod moby {
    pub mod buildkit {
        pub mod v1 {
            tonic::include_proto!("moby.buildkit.v1");
            pub mod types {
                tonic::include_proto!("moby.buildkit.v1.types");
            }
        }
        pub mod secrets {
            pub mod v1 {
                tonic::include_proto!("moby.buildkit.secrets.v1");
            }
        }
    }
    pub mod filesync {
        pub mod v1 {
            tonic::include_proto!("moby.filesync.v1");
        }
    }
    pub mod sshforward {
        pub mod v1 {
            tonic::include_proto!("moby.sshforward.v1");
        }
    }
}

/// LLB types (`pb`).
pub mod pb {
    tonic::include_proto!("pb");
}

/// fsutil's file-transfer types.
pub mod fsutil {
    pub mod types {
        tonic::include_proto!("fsutil.types");
    }
}

/// containerd's content store API (`containerd.services.content.v1`).
pub mod containerd {
    pub mod services {
        pub mod content {
            pub mod v1 {
                tonic::include_proto!("containerd.services.content.v1");
            }
        }
    }
}

/// Google's API types: `google.rpc.Status`, the error of a failed build in its history record.
pub mod google {
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

/// gRPC's health service.
pub mod grpc {
    pub mod health {
        pub mod v1 {
            tonic::include_proto!("grpc.health.v1");
        }
    }
}

pub use moby::buildkit::v1 as control;
