//! Errors of the AWS layer. Each names the AWS call and, where known, the region; the cause
//! is a reason string (AWS's own code and message), never a secret.

/// An AWS call, or the credentials for it, failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AwsError {
    /// No source in the credential chain had credentials.
    #[error("no AWS credentials for {call}: looked in {looked}")]
    NoCredentials {
        /// The call that needed them (`ecr:GetAuthorizationToken`, `eks token`).
        call: &'static str,
        /// Where the chain looked, in order.
        looked: String,
    },
    /// A credential source was configured but failed (a profile that does not parse, a web
    /// identity exchange STS refused, a container endpoint that answered an error).
    #[error("cannot load AWS credentials for {call}: {reason}")]
    CredentialsFailed {
        /// The call that needed them.
        call: &'static str,
        /// What the failing source said.
        reason: String,
    },
    /// AWS answered that the identity may not make this call.
    #[error("AWS denied {call} in {region} (access denied): {reason}")]
    AccessDenied {
        /// The call.
        call: &'static str,
        /// The region it was made in.
        region: String,
        /// AWS's code and message.
        reason: String,
    },
    /// AWS did not accept the credentials (unknown key, wrong secret, expired session).
    #[error("AWS rejected the credentials for {call} in {region}: {reason}")]
    BadCredentials {
        /// The call.
        call: &'static str,
        /// The region it was made in.
        region: String,
        /// AWS's code and message.
        reason: String,
    },
    /// A region name that no AWS partition has.
    #[error("unknown AWS region {region:?} for {call}: expected a name such as us-east-1")]
    UnknownRegion {
        /// The call.
        call: &'static str,
        /// The name given.
        region: String,
    },
    /// No region anywhere (`AWS_REGION`, `AWS_DEFAULT_REGION`, the profile, the arguments).
    #[error("no AWS region for {call}: set AWS_REGION or pass --region in the exec arguments")]
    NoRegion {
        /// The call.
        call: &'static str,
    },
    /// No answer from AWS (refused, timed out, name not resolved).
    #[error("cannot reach AWS for {call} in {region}: {reason}")]
    Unreachable {
        /// The call.
        call: &'static str,
        /// The region.
        region: String,
        /// What the connection attempt said.
        reason: String,
    },
    /// Any other failed call.
    #[error("{call} failed in {region}: {reason}")]
    Call {
        /// The call.
        call: &'static str,
        /// The region.
        region: String,
        /// AWS's code and message, or the client's reason.
        reason: String,
    },
    /// AWS answered, but without what the call exists for.
    #[error("{call} in {region} answered without {missing}")]
    Incomplete {
        /// The call.
        call: &'static str,
        /// The region.
        region: String,
        /// What was missing.
        missing: &'static str,
    },
    /// A request could not be signed or formed (a bad endpoint URL, a bad cluster name).
    #[error("cannot form the {call} request: {reason}")]
    Request {
        /// The call.
        call: &'static str,
        /// Why.
        reason: String,
    },
}
