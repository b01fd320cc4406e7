//! Errors of the AWS layer. Each names the AWS call and, where known, the region. What AWS
//! answered (its error code and message) is kept as text, as it came over the wire; a failure
//! of the SDK or the connection is kept as the typed source. Neither holds a secret.

use std::time::Duration;

use aws_credential_types::provider::error::CredentialsError;

/// A failure inside the AWS SDK, boxed: its types are generic over each operation.
pub type SdkFailure = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An AWS call, or the credentials for it, failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AwsError {
    /// No source in the credential chain had credentials.
    #[error("no AWS credentials for {call}: looked in {looked}")]
    NoCredentials {
        /// The call that needed them, [`ecr::CALL`](super::ecr::CALL) or
        /// [`eks::CALL`](super::eks::CALL).
        call: &'static str,
        /// Where the chain looked, in order.
        looked: String,
    },
    /// A credential source was configured but failed (a profile that does not parse, a web
    /// identity exchange STS refused, a container endpoint that answered an error).
    #[error("cannot load AWS credentials for {call}")]
    CredentialsFailed {
        /// The call that needed them, [`ecr::CALL`](super::ecr::CALL) or
        /// [`eks::CALL`](super::eks::CALL).
        call: &'static str,
        /// What the failing source reported.
        #[source]
        source: CredentialsError,
    },
    /// AWS answered that the identity may not make this call.
    #[error("AWS denied {call} in {region} (access denied): {reason}")]
    AccessDenied {
        /// The AWS call, [`ecr::CALL`](super::ecr::CALL) or [`eks::CALL`](super::eks::CALL).
        call: &'static str,
        /// The region the call was made in, e.g. `us-east-2`.
        region: String,
        /// AWS's error code and message as it sent them, e.g. `AccessDeniedException: …`.
        reason: String,
    },
    /// AWS did not accept the credentials (unknown key, wrong secret, expired session).
    #[error("AWS rejected the credentials for {call} in {region}: {reason}")]
    BadCredentials {
        /// The AWS call, [`ecr::CALL`](super::ecr::CALL) or [`eks::CALL`](super::eks::CALL).
        call: &'static str,
        /// The region the call was made in, e.g. `us-east-2`.
        region: String,
        /// AWS's error code and message as it sent them.
        reason: String,
    },
    /// A region name that no AWS partition has.
    #[error("unknown AWS region {region:?} for {call}: expected a name such as us-east-1")]
    UnknownRegion {
        /// The AWS call, [`ecr::CALL`](super::ecr::CALL) or [`eks::CALL`](super::eks::CALL).
        call: &'static str,
        /// The region name as given (in the ECR host, the exec arguments or the environment).
        region: String,
    },
    /// No region anywhere (`AWS_REGION`, `AWS_DEFAULT_REGION`, the profile, the arguments).
    #[error("no AWS region for {call}: set AWS_REGION or pass --region in the exec arguments")]
    NoRegion {
        /// The AWS call, [`ecr::CALL`](super::ecr::CALL) or [`eks::CALL`](super::eks::CALL).
        call: &'static str,
    },
    /// No answer from AWS (refused, timed out, name not resolved).
    #[error("cannot reach AWS for {call} in {region}")]
    Unreachable {
        /// The AWS call, [`ecr::CALL`](super::ecr::CALL) or [`eks::CALL`](super::eks::CALL).
        call: &'static str,
        /// The region the call was aimed at.
        region: String,
        /// What the SDK reported of the connection attempt.
        #[source]
        source: SdkFailure,
    },
    /// The whole lookup (credentials, role assumption, the call and its retries) ran out of
    /// time.
    #[error("cannot reach AWS for {call} in {region}: no answer within {} s", .waited.as_secs())]
    NoAnswer {
        /// The AWS call, [`ecr::CALL`](super::ecr::CALL) or [`eks::CALL`](super::eks::CALL).
        call: &'static str,
        /// The region the call was aimed at; empty when none was known yet.
        region: String,
        /// How long was waited: the whole lookup's bound,
        /// [`LOOKUP_DEADLINE`](super::LOOKUP_DEADLINE).
        waited: Duration,
    },
    /// AWS answered the call with another error.
    #[error("{call} failed in {region}: {reason}")]
    Call {
        /// The AWS call, [`ecr::CALL`](super::ecr::CALL) or [`eks::CALL`](super::eks::CALL).
        call: &'static str,
        /// The region the call was made in.
        region: String,
        /// AWS's error code and message (or the HTTP status when it sent no code).
        reason: String,
    },
    /// The SDK failed the call on its side (a request it could not build, an answer it could
    /// not read).
    #[error("{call} failed in {region}")]
    Sdk {
        /// The AWS call, [`ecr::CALL`](super::ecr::CALL) or [`eks::CALL`](super::eks::CALL).
        call: &'static str,
        /// The region the call was made in.
        region: String,
        /// What the SDK reported.
        #[source]
        source: SdkFailure,
    },
    /// AWS answered, but without what the call exists for.
    #[error("{call} in {region} answered without {missing}")]
    Incomplete {
        /// The AWS call, [`ecr::CALL`](super::ecr::CALL) or [`eks::CALL`](super::eks::CALL).
        call: &'static str,
        /// The region the call was made in.
        region: String,
        /// What the answer lacked, in words, e.g. "an authorization token".
        missing: &'static str,
    },
    /// A request could not be signed or formed (a bad endpoint URL, a bad cluster name).
    #[error("cannot form the {call} request: {reason}")]
    Request {
        /// The AWS call, [`ecr::CALL`](super::ecr::CALL) or [`eks::CALL`](super::eks::CALL).
        call: &'static str,
        /// What is wrong, naming the value.
        reason: String,
        /// The parser's or signer's error, when one said why.
        #[source]
        source: Option<SdkFailure>,
    },
}
