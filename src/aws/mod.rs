//! AWS without the aws CLI: the standard credential chain (through the official SDK, on
//! rustls with ring), ECR registry logins, and EKS cluster tokens, all made in-process.
//!
//! Borders: a leaf. `registry` uses it for ECR logins and `fleet` for EKS tokens; it imports
//! neither, nor `buildkit`, `multiplatform`, `config` or kube.
//!
//! ```no_run
//! # async fn run() -> Result<(), pf_buildkit::aws::AwsError> {
//! use pf_buildkit::aws::{EcrCredentials, EcrHost};
//!
//! let host = EcrHost::parse("123456789012.dkr.ecr.eu-west-1.amazonaws.com").expect("an ECR host");
//! let login = EcrCredentials::new().login(&host).await?;
//! println!("{} until {:?}", login.username, login.expires);
//! # Ok(()) }
//! ```

pub mod ecr;
pub mod eks;
mod error;
mod sdk;

pub use ecr::{EcrCredentials, EcrHost, EcrLogin};
pub use eks::{EksToken, EksTokenRequest, EksTokenSource, presign_token};
pub use error::{AwsError, SdkFailure};
pub use sdk::LOOKUP_DEADLINE;
