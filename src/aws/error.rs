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
        /// The call that needed them (`ecr:GetAuthorizationToken`, `eks token`).
        call: &'static str,
        /// Where the chain looked, in order.
        looked: String,
    },
    /// A credential source was configured but failed (a profile that does not parse, a web
    /// identity exchange STS refused, a container endpoint that answered an error).
    #[error("cannot load AWS credentials for {call}")]
    CredentialsFailed {
        /// The call that needed them.
        call: &'static str,
        /// What the failing source reported.
        #[source]
        source: CredentialsError,
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
    #[error("cannot reach AWS for {call} in {region}")]
    Unreachable {
        /// The call.
        call: &'static str,
        /// The region.
        region: String,
        /// What the SDK reported of the connection attempt.
        #[source]
        source: SdkFailure,
    },
    /// The whole lookup (credentials, role assumption, the call and its retries) ran out of
    /// time.
    #[error("cannot reach AWS for {call} in {region}: no answer within {} s", .waited.as_secs())]
    NoAnswer {
        /// The call.
        call: &'static str,
        /// The region (empty when none was known yet).
        region: String,
        /// How long was waited.
        waited: Duration,
    },
    /// AWS answered the call with another error.
    #[error("{call} failed in {region}: {reason}")]
    Call {
        /// The call.
        call: &'static str,
        /// The region.
        region: String,
        /// AWS's error code and message (or the HTTP status when it sent no code).
        reason: String,
    },
    /// The SDK failed the call on its side (a request it could not build, an answer it could
    /// not read).
    #[error("{call} failed in {region}")]
    Sdk {
        /// The call.
        call: &'static str,
        /// The region.
        region: String,
        /// What the SDK reported.
        #[source]
        source: SdkFailure,
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
        /// What is wrong, naming the value.
        reason: String,
        /// The parser's or signer's error, when one said why.
        #[source]
        source: Option<SdkFailure>,
    },
}
