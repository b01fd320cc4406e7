//! The gRPC status a daemon call ended with, in types of the crate's own: errors carry the
//! daemon's code and message without exposing the gRPC library (whose upgrades would otherwise
//! break every caller that matches on them).

use std::fmt;

/// A gRPC status code (the 17 of the gRPC specification).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RpcCode {
    /// 0: not an error.
    Ok,
    /// 1: the call was cancelled (usually by the caller).
    Cancelled,
    /// 2: an error with no better code; BuildKit's usual one for a failed build.
    Unknown,
    /// 3: the request is invalid whatever the state.
    InvalidArgument,
    /// 4: the deadline passed first.
    DeadlineExceeded,
    /// 5: something asked for does not exist.
    NotFound,
    /// 6: what was to be created exists.
    AlreadyExists,
    /// 7: the caller may not do this.
    PermissionDenied,
    /// 8: a resource (quota, disk, memory) ran out.
    ResourceExhausted,
    /// 9: the system is not in the state the call needs.
    FailedPrecondition,
    /// 10: aborted, e.g. by a conflict.
    Aborted,
    /// 11: past the valid range.
    OutOfRange,
    /// 12: the peer does not implement the call.
    Unimplemented,
    /// 13: an internal error of the peer.
    Internal,
    /// 14: the peer is unavailable (often passing); the connection failed.
    Unavailable,
    /// 15: data was lost or corrupted.
    DataLoss,
    /// 16: the caller is not authenticated.
    Unauthenticated,
}

impl RpcCode {
    /// The gRPC name, e.g. `Unimplemented`.
    pub fn as_str(self) -> &'static str {
        match self {
            RpcCode::Ok => "Ok",
            RpcCode::Cancelled => "Cancelled",
            RpcCode::Unknown => "Unknown",
            RpcCode::InvalidArgument => "InvalidArgument",
            RpcCode::DeadlineExceeded => "DeadlineExceeded",
            RpcCode::NotFound => "NotFound",
            RpcCode::AlreadyExists => "AlreadyExists",
            RpcCode::PermissionDenied => "PermissionDenied",
            RpcCode::ResourceExhausted => "ResourceExhausted",
            RpcCode::FailedPrecondition => "FailedPrecondition",
            RpcCode::Aborted => "Aborted",
            RpcCode::OutOfRange => "OutOfRange",
            RpcCode::Unimplemented => "Unimplemented",
            RpcCode::Internal => "Internal",
            RpcCode::Unavailable => "Unavailable",
            RpcCode::DataLoss => "DataLoss",
            RpcCode::Unauthenticated => "Unauthenticated",
        }
    }
}

impl fmt::Display for RpcCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<tonic::Code> for RpcCode {
    fn from(code: tonic::Code) -> Self {
        use tonic::Code as C;
        match code {
            C::Ok => RpcCode::Ok,
            C::Cancelled => RpcCode::Cancelled,
            C::Unknown => RpcCode::Unknown,
            C::InvalidArgument => RpcCode::InvalidArgument,
            C::DeadlineExceeded => RpcCode::DeadlineExceeded,
            C::NotFound => RpcCode::NotFound,
            C::AlreadyExists => RpcCode::AlreadyExists,
            C::PermissionDenied => RpcCode::PermissionDenied,
            C::ResourceExhausted => RpcCode::ResourceExhausted,
            C::FailedPrecondition => RpcCode::FailedPrecondition,
            C::Aborted => RpcCode::Aborted,
            C::OutOfRange => RpcCode::OutOfRange,
            C::Unimplemented => RpcCode::Unimplemented,
            C::Internal => RpcCode::Internal,
            C::Unavailable => RpcCode::Unavailable,
            C::DataLoss => RpcCode::DataLoss,
            C::Unauthenticated => RpcCode::Unauthenticated,
        }
    }
}

/// The status a call ended with: its code and message, as the daemon (or, for a failure of the
/// connection, the local gRPC layer) gave them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RpcStatus {
    /// The gRPC code.
    pub code: RpcCode,
    /// The message, as sent (may be empty).
    pub message: String,
}

impl RpcStatus {
    /// A status of `code` with `message`.
    pub fn new(code: RpcCode, message: impl Into<String>) -> Self {
        RpcStatus {
            code,
            message: message.into(),
        }
    }
}

impl From<&tonic::Status> for RpcStatus {
    fn from(status: &tonic::Status) -> Self {
        RpcStatus::new(status.code().into(), status.message())
    }
}

impl fmt::Display for RpcStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}
