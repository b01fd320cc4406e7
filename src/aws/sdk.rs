//! The AWS SDK set up the way this crate needs it: the SDK's HTTP client on rustls with ring,
//! bounded timeouts and retries (a build must fail within a minute when AWS is unreachable),
//! the standard credential chain, and a credentials cache that renews shortly before expiry.

use std::time::{Duration, SystemTime};

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{AppName, BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use tokio::sync::Mutex;

use super::error::AwsError;

/// Longest wait for a TCP connection to an AWS endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest wait for one attempt of a call.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a call with its retries.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(25);
/// Attempts per call, the first included.
const ATTEMPTS: u32 = 3;
/// Upper bound for everything one credential lookup may take (credential chain, role
/// assumption and the call): well inside the minute a failing build is allowed.
pub const LOOKUP_DEADLINE: Duration = Duration::from_secs(45);
/// Credentials are renewed this long before they expire.
const RENEW_BEFORE: Duration = Duration::from_secs(5 * 60);

/// Overrides for one configuration, as a kubeconfig exec entry's `env` can give them.
#[derive(Debug, Clone, Default)]
pub(crate) struct LoadOptions {
    /// The region; else the environment and profile decide.
    pub region: Option<String>,
    /// The profile (`AWS_PROFILE`); else the environment decides.
    pub profile: Option<String>,
    /// Static keys that replace the credential chain.
    pub static_keys: Option<Credentials>,
    /// An endpoint for every service (the environment's `AWS_ENDPOINT_URL*` apply otherwise).
    pub endpoint_url: Option<String>,
}

/// Loads the SDK configuration: region, endpoints, credential chain.
pub(crate) async fn load(options: &LoadOptions) -> SdkConfig {
    let http = WithUserAgent(
        aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build_https(),
    );
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_attempt_timeout(ATTEMPT_TIMEOUT)
        .operation_timeout(OPERATION_TIMEOUT)
        .build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .timeout_config(timeouts)
        .retry_config(RetryConfig::standard().with_max_attempts(ATTEMPTS));
    if let Ok(name) = AppName::new("pf-buildkit") {
        loader = loader.app_name(name);
    }
    if let Some(region) = &options.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(profile) = &options.profile {
        loader = loader.profile_name(profile);
    }
    if let Some(url) = &options.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    if let Some(keys) = &options.static_keys {
        loader = loader.credentials_provider(keys.clone());
    }
    loader.load().await
}

/// The SDK's HTTP client, sending [`crate::USER_AGENT`] as the `User-Agent` (the SDK's own
/// details stay in `x-amz-user-agent`; SigV4 never signs `User-Agent`, so this is safe after
/// signing).
#[derive(Debug)]
struct WithUserAgent(SharedHttpClient);

#[derive(Debug)]
struct UserAgentConnector(SharedHttpConnector);

impl HttpClient for WithUserAgent {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(UserAgentConnector(
            self.0.http_connector(settings, components),
        ))
    }
}

impl HttpConnector for UserAgentConnector {
    fn call(&self, mut request: HttpRequest) -> HttpConnectorFuture {
        request
            .headers_mut()
            .insert("user-agent", crate::USER_AGENT);
        self.0.call(request)
    }
}

/// Where the standard chain looks, for the "no credentials" message.
pub(crate) fn chain_description() -> String {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let profile = var("AWS_PROFILE").unwrap_or_else(|| "default".into());
    let config = var("AWS_CONFIG_FILE").unwrap_or_else(|| "~/.aws/config".into());
    let shared = var("AWS_SHARED_CREDENTIALS_FILE").unwrap_or_else(|| "~/.aws/credentials".into());
    let imds = match var("AWS_EC2_METADATA_SERVICE_ENDPOINT") {
        Some(endpoint) => format!("EC2 instance metadata at {endpoint}"),
        None => "EC2 instance metadata".into(),
    };
    format!(
        "the environment (AWS_ACCESS_KEY_ID), profile {profile:?} in {config} and {shared}, \
         web identity (AWS_ROLE_ARN, AWS_WEB_IDENTITY_TOKEN_FILE), container credentials \
         (AWS_CONTAINER_CREDENTIALS_RELATIVE_URI/_FULL_URI) and {imds}"
    )
}

/// Credentials from one provider, kept until shortly before they expire.
#[derive(Debug, Default)]
pub(crate) struct CredentialCache {
    held: Mutex<Option<Credentials>>,
}

impl CredentialCache {
    /// Cached credentials, or fresh ones from `config`'s provider.
    pub async fn get(
        &self,
        config: &SdkConfig,
        call: &'static str,
    ) -> Result<Credentials, AwsError> {
        let provider = config.credentials_provider();
        self.get_from(provider.as_ref(), config, call).await
    }

    /// Cached credentials, or fresh ones from `provider`.
    pub async fn get_from(
        &self,
        provider: Option<&SharedCredentialsProvider>,
        _config: &SdkConfig,
        call: &'static str,
    ) -> Result<Credentials, AwsError> {
        let mut held = self.held.lock().await;
        if let Some(creds) = held.as_ref()
            && still_good(creds.expiry(), SystemTime::now())
        {
            return Ok(creds.clone());
        }
        let provider = provider.ok_or_else(|| AwsError::NoCredentials {
            call,
            looked: chain_description(),
        })?;
        let creds = provider
            .provide_credentials()
            .await
            .map_err(|err| credentials_error(call, err))?;
        *held = Some(creds.clone());
        Ok(creds)
    }
}

/// Whether credentials expiring at `expiry` may still be used at `now`.
pub(crate) fn still_good(expiry: Option<SystemTime>, now: SystemTime) -> bool {
    match expiry {
        None => true,
        Some(at) => at.duration_since(now).is_ok_and(|left| left > RENEW_BEFORE),
    }
}

/// Maps a credential chain failure: nothing found anywhere, or a source that failed.
pub(crate) fn credentials_error(call: &'static str, err: CredentialsError) -> AwsError {
    match err {
        CredentialsError::CredentialsNotLoaded(_) => AwsError::NoCredentials {
            call,
            looked: chain_description(),
        },
        source => AwsError::CredentialsFailed { call, source },
    }
}

/// Whether `region` has the shape of a region of one of AWS's partitions (commercial, China,
/// GovCloud, the isolated ones). New regions keep these shapes, so no list needs updating.
pub(crate) fn known_region(region: &str) -> bool {
    let parts: Vec<&str> = region.split('-').collect();
    let word = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase());
    let number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    const PREFIXES: [&str; 11] = [
        "us", "eu", "ap", "sa", "ca", "me", "af", "il", "mx", "cn", "us-gov",
    ];
    match parts.as_slice() {
        [prefix, name, n] => PREFIXES.contains(prefix) && word(name) && number(n),
        ["us", "gov" | "iso" | "isob", name, n] => word(name) && number(n),
        ["eu", "isoe", name, n] => word(name) && number(n),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_of_every_partition_are_known() {
        for r in [
            "us-east-1",
            "eu-central-2",
            "ap-southeast-5",
            "cn-north-1",
            "us-gov-west-1",
            "il-central-1",
            "us-iso-east-1",
        ] {
            assert!(known_region(r), "{r}");
        }
        for r in [
            "xx-nowhere-1",
            "us-east",
            "useast1",
            "",
            "us-east-1a",
            "US-EAST-1",
        ] {
            assert!(!known_region(r), "{r}");
        }
    }

    #[test]
    fn credentials_are_renewed_five_minutes_before_expiry() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert!(still_good(None, now));
        assert!(still_good(Some(now + Duration::from_secs(301)), now));
        assert!(!still_good(Some(now + Duration::from_secs(299)), now));
        assert!(!still_good(Some(now - Duration::from_secs(1)), now));
    }

    #[test]
    fn a_failing_credential_source_is_kept_as_the_source() {
        use std::error::Error as _;
        let err = credentials_error(
            "eks token",
            CredentialsError::provider_error("the role could not be assumed"),
        );
        assert_eq!(err.to_string(), "cannot load AWS credentials for eks token");
        assert!(
            err.source()
                .and_then(|e| e.downcast_ref::<CredentialsError>())
                .is_some_and(|e| matches!(e, CredentialsError::ProviderError(_))),
            "{err:?}"
        );
        // Nothing configured anywhere is its own message, listing where the chain looked.
        let err = credentials_error("eks token", CredentialsError::not_loaded_no_source());
        assert!(matches!(err, AwsError::NoCredentials { .. }), "{err:?}");
    }
}
