//! EKS cluster tokens made in-process, for kubeconfig exec plugins that would run
//! `aws eks get-token` or `aws-iam-authenticator token`.
//!
//! A token is `k8s-aws-v1.` and the unpadded base64url of a presigned STS
//! `GetCallerIdentity` URL. The API server's authenticator replays that URL against STS to
//! learn who signed it; the `x-k8s-aws-id` header binds the token to one cluster. The URL is
//! valid for 15 minutes after signing, so tokens are remade well before that.
//!
//! Border: part of [`crate::aws`], a leaf; it uses only that module's SDK setup and errors, and
//! knows nothing of kubeconfig files or kube clients (the fleet hands it the exec entry's values).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aws_config::{Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_sigv4::http_request::{
    SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign,
};
use aws_sigv4::sign::v4;
use base64::Engine;

use super::error::{AwsError, SdkFailure};
use super::sdk::{self, CredentialCache, LOOKUP_DEADLINE, LoadOptions};

/// What errors call the token request.
pub const CALL: &str = "EKS token (sts:GetCallerIdentity presign)";

/// The prefix of every EKS token.
pub const TOKEN_PREFIX: &str = "k8s-aws-v1.";

/// The header that binds a token to its cluster.
pub const CLUSTER_HEADER: &str = "x-k8s-aws-id";

/// How long the presigned URL says it is valid; the API server allows 15 minutes from the
/// signing time regardless.
const PRESIGN_EXPIRES: Duration = Duration::from_secs(60);

/// A token is remade after this long (the server accepts it for 15 minutes).
pub const TOKEN_REFRESH: Duration = Duration::from_secs(10 * 60);

/// What a kubeconfig exec entry asks for, when it is one of the forms made in-process.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EksTokenRequest {
    /// The cluster name (`--cluster-name`, `-i`).
    pub cluster: String,
    /// `--region`, else the entry's `env`, else the environment and profile.
    pub region: Option<String>,
    /// A role to assume first (`--role-arn`, `-r`).
    pub role_arn: Option<String>,
    /// `--profile`, or `AWS_PROFILE` in the entry's `env`.
    pub profile: Option<String>,
    /// The rest of the entry's `env` (names and values), applied where the SDK allows.
    pub env: Vec<(String, String)>,
}

impl fmt::Debug for EksTokenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The env may hold keys: show only the names.
        let names: Vec<&str> = self.env.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("EksTokenRequest")
            .field("cluster", &self.cluster)
            .field("region", &self.region)
            .field("role_arn", &self.role_arn)
            .field("profile", &self.profile)
            .field("env", &names)
            .finish()
    }
}

impl EksTokenRequest {
    /// Recognises the exec entries made in-process: `aws [GLOBAL…] eks get-token
    /// --cluster-name NAME [--region R] [--role-arn ARN]` and `aws-iam-authenticator token -i
    /// NAME [-r ARN]`. Anything else (another program, an unknown flag) is `None`, and the
    /// plugin runs as a program.
    pub fn from_exec(
        command: &str,
        args: &[String],
        env: &[HashMap<String, String>],
    ) -> Option<EksTokenRequest> {
        let program = command.rsplit(['/', '\\']).next().unwrap_or(command);
        let program = program.strip_suffix(".exe").unwrap_or(program);
        let mut request = match program {
            "aws" => parse_aws(args)?,
            "aws-iam-authenticator" => parse_authenticator(args)?,
            _ => return None,
        };
        for entry in env {
            let (Some(name), Some(value)) = (entry.get("name"), entry.get("value")) else {
                continue;
            };
            match name.as_str() {
                "AWS_PROFILE" if request.profile.is_none() => request.profile = Some(value.clone()),
                "AWS_REGION" | "AWS_DEFAULT_REGION" if request.region.is_none() => {
                    request.region = Some(value.clone())
                }
                _ => request.env.push((name.clone(), value.clone())),
            }
        }
        Some(request)
    }

    fn var(&self, name: &str) -> Option<String> {
        self.env
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var(name).ok())
            .filter(|v| !v.is_empty())
    }

    /// The STS endpoint the token names: `AWS_ENDPOINT_URL_STS`, else `AWS_ENDPOINT_URL`,
    /// else `https://sts.REGION.amazonaws.com` (`.com.cn` in China).
    pub fn sts_endpoint(&self, region: &str) -> String {
        self.var("AWS_ENDPOINT_URL_STS")
            .or_else(|| self.var("AWS_ENDPOINT_URL"))
            .unwrap_or_else(|| {
                let suffix = if region.starts_with("cn-") {
                    "amazonaws.com.cn"
                } else {
                    "amazonaws.com"
                };
                format!("https://sts.{region}.{suffix}")
            })
    }
}

/// Value of `--flag VALUE` or `--flag=VALUE` at `args[i]`; advances `i` past it.
fn take_value(args: &[String], i: &mut usize, names: &[&str]) -> Option<Option<String>> {
    let arg = &args[*i];
    for name in names {
        if arg == name {
            *i += 1;
            return Some(args.get(*i).cloned());
        }
        if let Some(value) = arg.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
            return Some(Some(value.to_owned()));
        }
    }
    None
}

fn parse_aws(args: &[String]) -> Option<EksTokenRequest> {
    let mut request = EksTokenRequest {
        cluster: String::new(),
        region: None,
        role_arn: None,
        profile: None,
        env: Vec::new(),
    };
    let mut words = Vec::new();
    let mut i = 0;
    while i < args.len() {
        if let Some(v) = take_value(args, &mut i, &["--region"]) {
            request.region = Some(v?);
        } else if let Some(v) = take_value(args, &mut i, &["--profile"]) {
            request.profile = Some(v?);
        } else if let Some(v) = take_value(args, &mut i, &["--cluster-name"]) {
            request.cluster = v?;
        } else if let Some(v) = take_value(args, &mut i, &["--role-arn"]) {
            request.role_arn = Some(v?);
        } else if let Some(v) = take_value(args, &mut i, &["--output"]) {
            // The token is the same whatever the CLI would print it as.
            v?;
        } else if args[i].starts_with('-') {
            // A flag we do not know changes what the CLI would do: let it run.
            return None;
        } else {
            words.push(args[i].as_str());
        }
        i += 1;
    }
    (words == ["eks", "get-token"] && !request.cluster.is_empty()).then_some(request)
}

fn parse_authenticator(args: &[String]) -> Option<EksTokenRequest> {
    let mut request = EksTokenRequest {
        cluster: String::new(),
        region: None,
        role_arn: None,
        profile: None,
        env: Vec::new(),
    };
    let (first, rest) = args.split_first()?;
    if first != "token" {
        return None;
    }
    let mut i = 0;
    while i < rest.len() {
        if let Some(v) = take_value(rest, &mut i, &["-i", "--cluster-id"]) {
            request.cluster = v?;
        } else if let Some(v) = take_value(rest, &mut i, &["-r", "--role"]) {
            request.role_arn = Some(v?);
        } else if let Some(v) = take_value(rest, &mut i, &["--region"]) {
            request.region = Some(v?);
        } else {
            return None;
        }
        i += 1;
    }
    (!request.cluster.is_empty()).then_some(request)
}

/// Makes the token for `cluster` from `credentials`, signed at `now` for `region` and the STS
/// `endpoint` (a URL without path).
///
/// # Errors
/// An endpoint that is not a URL, or a cluster name that cannot be a header value.
pub fn presign_token(
    cluster: &str,
    region: &str,
    endpoint: &str,
    credentials: &Credentials,
    now: SystemTime,
) -> Result<String, AwsError> {
    let bad = |reason: String| AwsError::Request {
        call: CALL,
        reason,
        source: None,
    };
    // The signer's own errors: what failed is the signing, its error says why.
    let unsigned = |source: SdkFailure| AwsError::Request {
        call: CALL,
        reason: "the request could not be signed".into(),
        source: Some(source),
    };
    let base: http::Uri =
        endpoint
            .parse()
            .map_err(|e: http::uri::InvalidUri| AwsError::Request {
                call: CALL,
                reason: format!("STS endpoint {endpoint:?} is not a URL"),
                source: Some(e.into()),
            })?;
    let (Some(scheme), Some(authority)) = (base.scheme_str(), base.authority()) else {
        return Err(bad(format!(
            "STS endpoint {endpoint:?} is not an absolute URL"
        )));
    };
    // The host header carries a port only when it is not the scheme's default.
    let host = match (scheme, authority.port_u16()) {
        ("https", Some(443)) | ("http", Some(80)) => authority.host().to_owned(),
        _ => authority.as_str().to_owned(),
    };
    if cluster.is_empty() || !cluster.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad(format!(
            "cluster name {cluster:?} cannot be sent as a header"
        )));
    }
    let url = format!("{scheme}://{host}/?Action=GetCallerIdentity&Version=2011-06-15");
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(PRESIGN_EXPIRES);
    let identity = credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("sts")
        .time(now)
        .settings(settings)
        .build()
        .map_err(|e| unsigned(e.into()))?
        .into();
    let headers = [("host", host.as_str()), (CLUSTER_HEADER, cluster)];
    let signable = SignableRequest::new(
        "GET",
        url.as_str(),
        headers.into_iter(),
        SignableBody::Bytes(&[]),
    )
    .map_err(|e| unsigned(e.into()))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| unsigned(e.into()))?
        .into_parts();
    let mut request = http::Request::builder()
        .uri(url.as_str())
        .body(())
        .map_err(|e| unsigned(e.into()))?;
    instructions.apply_to_request_http1x(&mut request);
    let signed = request.uri().to_string();
    Ok(format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signed)
    ))
}

/// A token and when it was made.
#[derive(Clone)]
pub struct EksToken {
    /// The bearer token for the API server, `k8s-aws-v1.` and a presigned URL in base64url; a
    /// secret, so `Debug` leaves it out.
    pub token: String,
    /// When it was made (it is accepted for 15 minutes from then).
    pub made: SystemTime,
    made_at: Instant,
    credentials_expiry: Option<SystemTime>,
}

impl fmt::Debug for EksToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EksToken")
            .field("made", &self.made)
            .finish_non_exhaustive()
    }
}

impl EksToken {
    /// Whether to keep using it: younger than [`TOKEN_REFRESH`], and made with credentials
    /// that are not about to expire.
    fn fresh(&self) -> bool {
        self.made_at.elapsed() < TOKEN_REFRESH
            && sdk::still_good(self.credentials_expiry, SystemTime::now())
    }
}

/// Makes and caches the tokens of one kubeconfig user.
pub struct EksTokenSource {
    request: EksTokenRequest,
    setup: tokio::sync::Mutex<Option<Setup>>,
    current: std::sync::Mutex<Option<EksToken>>,
}

struct Setup {
    region: String,
    provider: SharedCredentialsProvider,
    cache: Arc<CredentialCache>,
    config: SdkConfig,
}

impl fmt::Debug for EksTokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EksTokenSource")
            .field("request", &self.request)
            .finish_non_exhaustive()
    }
}

impl EksTokenSource {
    /// A source for `request`; AWS is not contacted until a token is asked for.
    pub fn new(request: EksTokenRequest) -> Self {
        Self {
            request,
            setup: tokio::sync::Mutex::new(None),
            current: std::sync::Mutex::new(None),
        }
    }

    /// What the exec entry asked for.
    pub fn request(&self) -> &EksTokenRequest {
        &self.request
    }

    /// The current token when it is still fresh (no I/O).
    pub fn cached(&self) -> Option<EksToken> {
        let current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        current.as_ref().filter(|t| t.fresh()).cloned()
    }

    /// A fresh token: the cached one, or a new one.
    ///
    /// # Errors
    /// No credentials, no or an unknown region, a role that cannot be assumed, or no answer
    /// from AWS within [`LOOKUP_DEADLINE`].
    pub async fn token(&self) -> Result<EksToken, AwsError> {
        if let Some(token) = self.cached() {
            return Ok(token);
        }
        let made = tokio::time::timeout(LOOKUP_DEADLINE, self.make())
            .await
            .map_err(|_| AwsError::NoAnswer {
                call: CALL,
                region: self.request.region.clone().unwrap_or_default(),
                waited: LOOKUP_DEADLINE,
            })??;
        *self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(made.clone());
        Ok(made)
    }

    async fn make(&self) -> Result<EksToken, AwsError> {
        let mut setup = self.setup.lock().await;
        // Another caller may have made one while this one waited.
        if let Some(token) = self.cached() {
            return Ok(token);
        }
        if setup.is_none() {
            *setup = Some(self.set_up().await?);
        }
        let Some(setup) = setup.as_ref() else {
            return Err(AwsError::NoRegion { call: CALL });
        };
        let credentials = setup
            .cache
            .get_from(Some(&setup.provider), &setup.config, CALL)
            .await?;
        let now = SystemTime::now();
        let endpoint = self.request.sts_endpoint(&setup.region);
        let token = presign_token(
            &self.request.cluster,
            &setup.region,
            &endpoint,
            &credentials,
            now,
        )?;
        tracing::debug!(cluster = %self.request.cluster, region = %setup.region, "made an EKS token");
        Ok(EksToken {
            token,
            made: now,
            made_at: Instant::now(),
            credentials_expiry: credentials.expiry(),
        })
    }

    async fn set_up(&self) -> Result<Setup, AwsError> {
        let static_keys = match (
            self.request.var("AWS_ACCESS_KEY_ID"),
            self.request.var("AWS_SECRET_ACCESS_KEY"),
        ) {
            // Keys in the exec entry's env win over the chain, as they would for the CLI.
            (Some(id), Some(secret))
                if self
                    .request
                    .env
                    .iter()
                    .any(|(k, _)| k == "AWS_ACCESS_KEY_ID") =>
            {
                Some(Credentials::new(
                    id,
                    secret,
                    self.request.var("AWS_SESSION_TOKEN"),
                    None,
                    "kubeconfig exec env",
                ))
            }
            _ => None,
        };
        // The SDK reads the process environment itself; an override in the exec entry's env
        // is applied here (EKS tokens only involve STS).
        let env_only = |name: &str| {
            self.request
                .env
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let endpoint_url =
            env_only("AWS_ENDPOINT_URL_STS").or_else(|| env_only("AWS_ENDPOINT_URL"));
        let config = sdk::load(&LoadOptions {
            region: self.request.region.clone(),
            profile: self.request.profile.clone(),
            static_keys,
            endpoint_url,
        })
        .await;
        let region = config
            .region()
            .map(|r| r.as_ref().to_owned())
            .ok_or(AwsError::NoRegion { call: CALL })?;
        if !sdk::known_region(&region) {
            return Err(AwsError::UnknownRegion { call: CALL, region });
        }
        let base = config
            .credentials_provider()
            .ok_or_else(|| AwsError::NoCredentials {
                call: CALL,
                looked: sdk::chain_description(),
            })?;
        let provider = match &self.request.role_arn {
            None => base,
            Some(arn) => {
                let assume = aws_config::sts::AssumeRoleProvider::builder(arn.clone())
                    .session_name(format!("pf-buildkit-{}", std::process::id()))
                    .region(Region::new(region.clone()))
                    .configure(&config)
                    .build()
                    .await;
                SharedCredentialsProvider::new(assume)
            }
        };
        Ok(Setup {
            region,
            provider,
            cache: Arc::default(),
            config,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_three_exec_forms_are_recognised() {
        let r = EksTokenRequest::from_exec(
            "aws",
            &strings(&[
                "eks",
                "get-token",
                "--cluster-name",
                "prod",
                "--region",
                "eu-west-1",
                "--role-arn",
                "arn:aws:iam::1:role/x",
            ]),
            &[],
        )
        .unwrap();
        assert_eq!(r.cluster, "prod");
        assert_eq!(r.region.as_deref(), Some("eu-west-1"));
        assert_eq!(r.role_arn.as_deref(), Some("arn:aws:iam::1:role/x"));

        // What `aws eks update-kubeconfig` writes, with the profile in the entry's env.
        let env = vec![HashMap::from([
            ("name".to_string(), "AWS_PROFILE".to_string()),
            ("value".to_string(), "ci".to_string()),
        ])];
        let r = EksTokenRequest::from_exec(
            "/usr/local/bin/aws",
            &strings(&[
                "--region",
                "us-west-2",
                "eks",
                "get-token",
                "--cluster-name",
                "c1",
                "--output",
                "json",
            ]),
            &env,
        )
        .unwrap();
        assert_eq!(
            (
                r.cluster.as_str(),
                r.region.as_deref(),
                r.profile.as_deref()
            ),
            ("c1", Some("us-west-2"), Some("ci"))
        );

        let r = EksTokenRequest::from_exec(
            "aws-iam-authenticator",
            &strings(&["token", "-i", "c2", "-r", "arn:aws:iam::1:role/y"]),
            &[],
        )
        .unwrap();
        assert_eq!(
            (r.cluster.as_str(), r.role_arn.as_deref()),
            ("c2", Some("arn:aws:iam::1:role/y"))
        );
    }

    #[test]
    fn other_plugins_and_unknown_flags_still_run() {
        for (cmd, args) in [
            ("gke-gcloud-auth-plugin", vec![]),
            ("aws", strings(&["eks", "get-token"])),
            (
                "aws",
                strings(&["eks", "get-token", "--cluster-name", "c", "--debug"]),
            ),
            ("aws", strings(&["sts", "get-caller-identity"])),
            ("aws-iam-authenticator", strings(&["verify", "-i", "c"])),
            ("aws", strings(&["eks", "get-token", "--cluster-name"])),
        ] {
            assert_eq!(
                EksTokenRequest::from_exec(cmd, &args, &[]),
                None,
                "{cmd} {args:?}"
            );
        }
    }

    #[test]
    fn token_is_a_presigned_get_caller_identity_url() {
        let creds = Credentials::new("AKIDEXAMPLE", "secret", Some("sess".into()), None, "test");
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let token = presign_token(
            "prod",
            "eu-west-1",
            "https://sts.eu-west-1.amazonaws.com",
            &creds,
            now,
        )
        .unwrap();
        let encoded = token.strip_prefix(TOKEN_PREFIX).unwrap();
        assert!(!encoded.contains('='), "unpadded");
        let url = String::from_utf8(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(encoded)
                .unwrap(),
        )
        .unwrap();
        assert!(
            url.starts_with(
                "https://sts.eu-west-1.amazonaws.com/?Action=GetCallerIdentity&Version=2011-06-15&"
            ),
            "{url}"
        );
        for part in [
            "X-Amz-Algorithm=AWS4-HMAC-SHA256",
            "X-Amz-Credential=AKIDEXAMPLE%2F20231114%2Feu-west-1%2Fsts%2Faws4_request",
            "X-Amz-Date=20231114T221320Z",
            "X-Amz-Expires=60",
            "X-Amz-SignedHeaders=host%3Bx-k8s-aws-id",
            "X-Amz-Security-Token=sess",
        ] {
            assert!(url.contains(part), "{part} in {url}");
        }
    }

    #[test]
    fn sts_endpoint_follows_overrides_and_partition() {
        let mut r = EksTokenRequest::from_exec(
            "aws-iam-authenticator",
            &strings(&["token", "-i", "c"]),
            &[],
        )
        .unwrap();
        r.env
            .push(("AWS_ENDPOINT_URL_STS".into(), "http://127.0.0.1:1".into()));
        assert_eq!(r.sts_endpoint("us-east-1"), "http://127.0.0.1:1");
        r.env.clear();
        if std::env::var_os("AWS_ENDPOINT_URL_STS").is_none()
            && std::env::var_os("AWS_ENDPOINT_URL").is_none()
        {
            assert_eq!(
                r.sts_endpoint("cn-north-1"),
                "https://sts.cn-north-1.amazonaws.com.cn"
            );
            assert_eq!(
                r.sts_endpoint("us-east-1"),
                "https://sts.us-east-1.amazonaws.com"
            );
        }
    }

    #[test]
    fn debug_shows_env_names_only() {
        let env = vec![HashMap::from([
            ("name".to_string(), "AWS_SECRET_ACCESS_KEY".to_string()),
            ("value".to_string(), "hunter2".to_string()),
        ])];
        let r = EksTokenRequest::from_exec(
            "aws-iam-authenticator",
            &strings(&["token", "-i", "c"]),
            &env,
        )
        .unwrap();
        assert!(!format!("{r:?}").contains("hunter2"));
    }

    #[test]
    fn a_bad_sts_endpoint_keeps_the_parsers_error() {
        use std::error::Error as _;
        let creds = Credentials::new("AKIDEXAMPLE", "secret", None, None, "test");
        let err = presign_token(
            "prod",
            "eu-west-1",
            "https://sts eu-west-1",
            &creds,
            SystemTime::now(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "cannot form the {CALL} request: STS endpoint \"https://sts eu-west-1\" is not a URL"
            )
        );
        assert!(
            err.source()
                .is_some_and(|e| e.downcast_ref::<http::uri::InvalidUri>().is_some()),
            "{err:?}"
        );
        // A value that is wrong by itself has no cause beyond its description.
        let err = presign_token(
            "bad cluster",
            "eu-west-1",
            "https://sts.eu-west-1.amazonaws.com",
            &creds,
            SystemTime::now(),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("cannot be sent as a header"),
            "{err}"
        );
        assert!(err.source().is_none());
    }
}
