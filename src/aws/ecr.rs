//! ECR registry credentials: which hosts are ECR registries, and their login from
//! `ecr:GetAuthorizationToken` (what `docker login` with `aws ecr get-login-password` does),
//! made in-process and cached until shortly before the token expires.
//!
//! Border: part of [`crate::aws`], a leaf; it uses only that module's SDK setup and errors, and
//! knows nothing of registries beyond the host name it is given.

use std::collections::HashMap;
use std::fmt;
use std::time::SystemTime;

use aws_sdk_ecr::error::{ProvideErrorMetadata, SdkError};
use base64::Engine;
use tokio::sync::Mutex;

use super::error::AwsError;
use super::sdk::{self, CredentialCache, LOOKUP_DEADLINE, LoadOptions};

/// The AWS call this module makes, as errors name it.
pub const CALL: &str = "ecr:GetAuthorizationToken";

/// A registry host that is an ECR private registry.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EcrHost {
    /// The 12-digit AWS account id, the host's first label.
    pub account: String,
    /// The region named in the host.
    pub region: String,
    /// Whether it is a FIPS endpoint (`dkr.ecr-fips`).
    pub fips: bool,
}

impl EcrHost {
    /// Recognises `ACCOUNT.dkr.ecr[-fips].REGION.amazonaws.com[.cn][:PORT]`.
    pub fn parse(host: &str) -> Option<EcrHost> {
        let name = match host.rsplit_once(':') {
            Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
                name
            }
            Some(_) => return None,
            None => host,
        };
        let name = name.to_ascii_lowercase();
        let rest = name
            .strip_suffix(".amazonaws.com")
            .or_else(|| name.strip_suffix(".amazonaws.com.cn"))?;
        let mut labels = rest.split('.');
        let (account, dkr, ecr, region) = (
            labels.next()?,
            labels.next()?,
            labels.next()?,
            labels.next()?,
        );
        if labels.next().is_some()
            || dkr != "dkr"
            || account.len() != 12
            || !account.bytes().all(|b| b.is_ascii_digit())
            || region.is_empty()
        {
            return None;
        }
        let fips = match ecr {
            "ecr" => false,
            "ecr-fips" => true,
            _ => return None,
        };
        Some(EcrHost {
            account: account.to_owned(),
            region: region.to_owned(),
            fips,
        })
    }
}

/// A registry login: `AWS` and a token valid for hours.
#[derive(Clone)]
#[non_exhaustive]
pub struct EcrLogin {
    /// Always `AWS` for ECR, but taken from the token.
    pub username: String,
    /// The registry password: the decoded token's part after `USER:`, valid until `expires`;
    /// `Debug` never shows it.
    pub password: String,
    /// When the token stops working, as ECR says.
    pub expires: Option<SystemTime>,
}

impl fmt::Debug for EcrLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EcrLogin")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("expires", &self.expires)
            .finish()
    }
}

/// Gets and caches ECR logins. Cheap to share behind an `Arc`; concurrent lookups (the
/// daemons of several architectures ask at once) make one AWS call.
#[derive(Debug, Default)]
pub struct EcrCredentials {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Per region: the SDK configuration and its credentials.
    regions: HashMap<(String, bool), (aws_config::SdkConfig, std::sync::Arc<CredentialCache>)>,
    /// Per host: the login and when to renew it.
    logins: HashMap<String, EcrLogin>,
}

impl EcrCredentials {
    /// A provider with nothing cached; AWS is not contacted until a login is asked for.
    pub fn new() -> Self {
        Self::default()
    }

    /// The process-wide provider: every docker config loaded in this process (the client's,
    /// each build session's) shares its logins.
    pub fn shared() -> std::sync::Arc<EcrCredentials> {
        static SHARED: std::sync::OnceLock<std::sync::Arc<EcrCredentials>> =
            std::sync::OnceLock::new();
        SHARED.get_or_init(Default::default).clone()
    }

    /// The login for `registry`, an ECR host as [`EcrHost::parse`] recognises.
    ///
    /// # Errors
    /// No credentials, access denied, an unknown region, AWS unreachable (within
    /// [`LOOKUP_DEADLINE`] at most), or an unusable answer.
    pub async fn login(&self, host: &EcrHost) -> Result<EcrLogin, AwsError> {
        if !sdk::known_region(&host.region) {
            return Err(AwsError::UnknownRegion {
                call: CALL,
                region: host.region.clone(),
            });
        }
        let key = format!("{}.{}.{}", host.account, host.region, host.fips);
        // One lookup at a time: the others then find the cached login.
        let mut state = self.state.lock().await;
        if let Some(login) = state.logins.get(&key)
            && sdk::still_good(login.expires, SystemTime::now())
        {
            return Ok(login.clone());
        }
        let region = host.region.clone();
        let fetched = tokio::time::timeout(LOOKUP_DEADLINE, fetch(&mut state, host))
            .await
            .map_err(|_| AwsError::NoAnswer {
                call: CALL,
                region: region.clone(),
                waited: LOOKUP_DEADLINE,
            })??;
        // A token that is already stale (moto's are dated 2015) is used once, not kept.
        if fetched
            .expires
            .is_some_and(|at| sdk::still_good(Some(at), SystemTime::now()))
        {
            state.logins.insert(key, fetched.clone());
        }
        Ok(fetched)
    }
}

async fn fetch(state: &mut State, host: &EcrHost) -> Result<EcrLogin, AwsError> {
    let region_key = (host.region.clone(), host.fips);
    if !state.regions.contains_key(&region_key) {
        let config = sdk::load(&LoadOptions {
            region: Some(host.region.clone()),
            ..Default::default()
        })
        .await;
        state
            .regions
            .insert(region_key.clone(), (config, Default::default()));
    }
    let Some((config, cache)) = state.regions.get(&region_key) else {
        return Err(AwsError::Request {
            call: CALL,
            reason: "no configuration for the region".into(),
            source: None,
        });
    };
    let creds = cache.get(config, CALL).await?;
    let ecr_config = aws_sdk_ecr::config::Builder::from(config)
        .credentials_provider(creds)
        .use_fips(host.fips)
        .build();
    let client = aws_sdk_ecr::Client::from_conf(ecr_config);
    let answer = client
        .get_authorization_token()
        .send()
        .await
        .map_err(|err| call_error(CALL, &host.region, err))?;
    let data = answer
        .authorization_data()
        .first()
        .ok_or(AwsError::Incomplete {
            call: CALL,
            region: host.region.clone(),
            missing: "authorization data",
        })?;
    let token = data.authorization_token().ok_or(AwsError::Incomplete {
        call: CALL,
        region: host.region.clone(),
        missing: "an authorization token",
    })?;
    let (username, password) = decode_token(token).ok_or(AwsError::Incomplete {
        call: CALL,
        region: host.region.clone(),
        missing: "a token of the form base64(user:password)",
    })?;
    let expires = data
        .expires_at()
        .and_then(|at| SystemTime::try_from(*at).ok());
    tracing::debug!(region = %host.region, account = %host.account, "got an ECR login");
    Ok(EcrLogin {
        username,
        password,
        expires,
    })
}

/// `base64(user:password)` → its two halves.
fn decode_token(token: &str) -> Option<(String, String)> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// Sorts a failed SDK call into the messages users act on.
pub(crate) fn call_error<E>(
    call: &'static str,
    region: &str,
    err: SdkError<E, aws_smithy_runtime_api::http::Response>,
) -> AwsError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let region = region.to_owned();
    match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => AwsError::Unreachable {
            call,
            region,
            source: Box::new(err),
        },
        SdkError::ServiceError(service) => {
            // Some endpoints (and stand-ins such as moto) answer auth failures in the query
            // protocol's XML even for JSON services; read the code from there too.
            let body = service.raw().body().bytes().unwrap_or_default();
            let body = String::from_utf8_lossy(body);
            let (code, message) = match service.err().code() {
                Some(code) => (code.to_owned(), service.err().message().map(str::to_owned)),
                None => (
                    xml_field(&body, "Code")
                        .unwrap_or_else(|| format!("HTTP {}", service.raw().status().as_u16())),
                    xml_field(&body, "Message"),
                ),
            };
            let reason = match message {
                Some(message) => format!("{code}: {message}"),
                None => code.clone(),
            };
            let code = code.as_str();
            match code {
                "AccessDenied" | "AccessDeniedException" => AwsError::AccessDenied {
                    call,
                    region,
                    reason,
                },
                "UnrecognizedClientException"
                | "InvalidClientTokenId"
                | "InvalidSignatureException"
                | "SignatureDoesNotMatch"
                | "ExpiredToken"
                | "ExpiredTokenException" => AwsError::BadCredentials {
                    call,
                    region,
                    reason,
                },
                _ => AwsError::Call {
                    call,
                    region,
                    reason,
                },
            }
        }
        _ => AwsError::Sdk {
            call,
            region,
            source: Box::new(err),
        },
    }
}

/// The text of the first `<name>…</name>` in an XML error body.
fn xml_field(body: &str, name: &str) -> Option<String> {
    let start = body.find(&format!("<{name}>"))? + name.len() + 2;
    let len = body[start..].find(&format!("</{name}>"))?;
    Some(body[start..start + len].trim().to_owned()).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecr_hosts_in_every_form() {
        let h = EcrHost::parse("123456789012.dkr.ecr.us-east-1.amazonaws.com").unwrap();
        assert_eq!(
            h,
            EcrHost {
                account: "123456789012".into(),
                region: "us-east-1".into(),
                fips: false
            }
        );
        let h =
            EcrHost::parse("123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com:443").unwrap();
        assert!(h.fips && h.region == "us-gov-west-1");
        let h = EcrHost::parse("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn:5000").unwrap();
        assert_eq!(h.region, "cn-north-1");
        for not in [
            "ghcr.io",
            "127.0.0.1:5000",
            "12345678901.dkr.ecr.us-east-1.amazonaws.com",
            "123456789012.dkr.ecr.us-east-1.amazonaws.com:",
            "123456789012.dkr.ecr.us-east-1.amazonaws.com:x",
            "123456789012.dkr.ecr.us-east-1.amazonaws.org",
            "123456789012.dkr.ecr.us-east-1.example.amazonaws.com",
            "public.ecr.aws",
            "x.123456789012.dkr.ecr.us-east-1.amazonaws.com",
        ] {
            assert_eq!(EcrHost::parse(not), None, "{not}");
        }
    }

    #[test]
    fn tokens_are_base64_of_user_and_password() {
        assert_eq!(
            decode_token("QVdTOnNlY3JldDpwYXJ0"),
            Some(("AWS".into(), "secret:part".into()))
        );
        assert_eq!(decode_token("!!"), None);
        assert_eq!(decode_token("bm9jb2xvbg=="), None);
    }

    #[test]
    fn xml_error_fields() {
        let body = "<ErrorResponse><Error><Code>AccessDenied</Code><Message>no</Message></Error></ErrorResponse>";
        assert_eq!(xml_field(body, "Code").as_deref(), Some("AccessDenied"));
        assert_eq!(xml_field(body, "Message").as_deref(), Some("no"));
        assert_eq!(xml_field(body, "Type"), None);
    }

    #[test]
    fn debug_hides_the_password() {
        let login = EcrLogin {
            username: "AWS".into(),
            password: "hunter2".into(),
            expires: None,
        };
        assert!(!format!("{login:?}").contains("hunter2"));
    }

    type TokenError = SdkError<
        aws_sdk_ecr::operation::get_authorization_token::GetAuthorizationTokenError,
        aws_smithy_runtime_api::http::Response,
    >;

    #[test]
    fn an_unreachable_aws_keeps_the_sdk_error_as_the_source() {
        use std::error::Error as _;
        let timeout: TokenError =
            SdkError::timeout_error(std::io::Error::from(std::io::ErrorKind::TimedOut));
        let err = call_error(CALL, "eu-west-1", timeout);
        assert_eq!(
            err.to_string(),
            "cannot reach AWS for ecr:GetAuthorizationToken in eu-west-1"
        );
        let sdk = err
            .source()
            .and_then(|e| e.downcast_ref::<TokenError>())
            .expect("the SDK's error is the source");
        assert!(matches!(sdk, SdkError::TimeoutError(_)), "{sdk:?}");

        let unbuilt: TokenError = SdkError::construction_failure("no endpoint");
        let err = call_error(CALL, "eu-west-1", unbuilt);
        assert!(matches!(err, AwsError::Sdk { .. }), "{err:?}");
        assert!(
            err.source()
                .and_then(|e| e.downcast_ref::<TokenError>())
                .is_some_and(|e| matches!(e, SdkError::ConstructionFailure(_))),
            "{err:?}"
        );
    }
}
