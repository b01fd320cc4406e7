//! A session service of the caller's own: this program answers the daemon's secret requests
//! itself (say, from a vault it is logged in to) instead of from files, and a Dockerfile step
//! reaches it through `RUN --mount=type=secret`. Only a digest of the secret leaves the build:
//! `cargo run --example custom_attachable -- docker:// BASE_IMAGE` (BASE_IMAGE: any image
//! with a shell and `sha256sum`, e.g. busybox).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use pf_buildkit::buildkit::fsutil::MemoryTree;
use pf_buildkit::buildkit::progress::ProgressMode;
use pf_buildkit::buildkit::proto::moby::buildkit::secrets::v1::secrets_server::{
    Secrets, SecretsServer,
};
use pf_buildkit::buildkit::proto::moby::buildkit::secrets::v1::{
    GetSecretRequest, GetSecretResponse,
};
use pf_buildkit::buildkit::{Attachable, BuildOptions, Client, Endpoint, Output, TlsOptions};
use sha2::{Digest, Sha256};

/// The secret store: one token, made in this process, never written anywhere.
#[derive(Clone)]
struct Vault {
    token: String,
    asked: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl Secrets for Vault {
    async fn get_secret(
        &self,
        request: tonic::Request<GetSecretRequest>,
    ) -> Result<tonic::Response<GetSecretResponse>, tonic::Status> {
        self.asked.fetch_add(1, Ordering::Relaxed);
        match request.into_inner().id.as_str() {
            "token" => Ok(tonic::Response::new(GetSecretResponse {
                data: self.token.clone().into_bytes().into(),
            })),
            other => Err(tonic::Status::not_found(format!("no secret {other:?}"))),
        }
    }
}

impl Attachable for Vault {
    fn methods(&self) -> Vec<String> {
        vec!["/moby.buildkit.secrets.v1.Secrets/GetSecret".into()]
    }

    fn register(&self, routes: &mut tonic::service::RoutesBuilder) {
        routes.add_service(SecretsServer::new(self.clone()));
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(base)) = (args.next(), args.next()) else {
        eprintln!("usage: custom_attachable ADDR BASE_IMAGE");
        std::process::exit(2);
    };
    let vault = Vault {
        token: format!("token-{}", std::process::id()),
        asked: Arc::default(),
    };
    let dockerfile = format!(
        "FROM {base} AS work\n\
         RUN --mount=type=secret,id=token,required=true sha256sum /run/secrets/token | cut -c1-64 > /digest\n\
         FROM scratch\n\
         COPY --from=work /digest /\n"
    );
    let out = tempfile::tempdir()?;
    let options = BuildOptions::from_memory(MemoryTree::new().file("Dockerfile", dockerfile))
        .with_attachable(vault.clone())
        // RUN steps get no network: a Docker Engine started without a bridge has none to give.
        .with_frontend_attr("force-network-mode", "none")
        // The token changes with each run, but the daemon caches the RUN step by its command.
        .with_no_cache(true)
        .with_output(Output::local(out.path()));

    let client = Client::connect(addr.parse::<Endpoint>()?, &TlsOptions::default()).await?;
    let mut progress = ProgressMode::Plain.stderr_sink();
    client.build(&options, progress.as_mut()).await?;

    let digest = std::fs::read_to_string(out.path().join("digest"))?;
    let expected: String = Sha256::digest(vault.token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if digest.trim() != expected {
        return Err(
            format!("the build saw a secret with digest {digest:?}, not {expected}").into(),
        );
    }
    println!(
        "the Dockerfile read the secret from this program's own service ({} request(s))",
        vault.asked.load(Ordering::Relaxed)
    );
    Ok(())
}
