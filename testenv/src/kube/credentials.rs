//! Who may talk to whom in a control plane: its certificate authority and the certificates it
//! signs (the API server's and the kubelet's serving certificates, the API server's client
//! certificate for the kubelet), the service-account signing key, the users' bearer tokens,
//! the audit policy, and the kubeconfig that sends unknown tokens to the token webhook.
//!
//! Written with rcgen (no openssl CLI): P-256 keys everywhere, the service-account key too
//! (the API server signs its tokens ES256 with it).

use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::error::{Error, Result};

/// The CA's common name (its whole subject: a signer rebuilt from its key names it so).
pub const CA_NAME: &str = "pf-testenv-kube-ca";

/// The administrator (group `system:masters`).
pub const ADMIN: &str = "pf-admin";
/// The user the fleet's ClusterRole is bound to in namespace `buildkit`.
pub const BUILDER: &str = "pf-builder";
/// Users without rights (`pf-user-0` … `pf-user-9`): tests bind what they need.
pub const PLAIN_USERS: usize = 10;

/// The credential files of a control plane, in one folder (`pki/`, `tokens.csv`, `audit.yaml`,
/// `token-webhook.kubeconfig`). Other control planes may share them (the fault tests' private
/// ones do, so the tests' kubeconfigs trust every plane).
#[derive(Debug, Clone)]
pub struct Credentials {
    dir: PathBuf,
}

impl Credentials {
    /// Writes a fresh set into `dir`: unknown tokens go to a webhook on 127.0.0.1:`webhook_port`.
    pub fn write(dir: &Path, webhook_port: u16) -> Result<Credentials> {
        let creds = Credentials {
            dir: dir.to_path_buf(),
        };
        let pki = creds.pki("");
        fs::create_dir_all(&pki).map_err(|e| file_error("create", &pki, e))?;
        let (ca_cert, ca) = new_ca(CA_NAME)?;
        creds.put("pki/ca.crt", &ca_cert)?;
        creds.put("pki/ca.key", &ca.key().serialize_pem())?;
        let (cert, key) = apiserver_leaf(&ca)?;
        creds.put("pki/apiserver.crt", &cert)?;
        creds.put("pki/apiserver.key", &key)?;
        let (cert, key) = leaf(
            &ca,
            vec!["127.0.0.1".into()],
            &[(DnType::CommonName, "node-1")],
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        creds.put("pki/kubelet.crt", &cert)?;
        creds.put("pki/kubelet.key", &key)?;
        // The API server's client certificate for the kubelet (an admin there).
        let (cert, key) = leaf(
            &ca,
            Vec::new(),
            &[
                (DnType::OrganizationName, "system:masters"),
                (DnType::CommonName, "kube-apiserver-kubelet-client"),
            ],
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        creds.put("pki/kubelet-client.crt", &cert)?;
        creds.put("pki/kubelet-client.key", &key)?;
        let sa = KeyPair::generate().map_err(key_error)?;
        creds.put("pki/sa.key", &sa.serialize_pem())?;
        creds.put("pki/sa.pub", &sa.public_key_pem())?;
        creds.put("tokens.csv", &tokens()?)?;
        creds.put("audit.yaml", AUDIT_POLICY)?;
        creds.put(
            "token-webhook.kubeconfig",
            &webhook_kubeconfig(webhook_port),
        )?;
        Ok(creds)
    }

    /// The set another control plane wrote into `dir`.
    pub fn at(dir: &Path) -> Credentials {
        Credentials {
            dir: dir.to_path_buf(),
        }
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `pki/NAME` (`ca.crt`, `apiserver.key`, …).
    pub fn pki(&self, name: &str) -> PathBuf {
        self.dir.join("pki").join(name)
    }

    /// The CA certificate.
    pub fn ca(&self) -> PathBuf {
        self.pki("ca.crt")
    }

    /// The bearer token of `user` in `tokens.csv`.
    pub fn token(&self, user: &str) -> Result<String> {
        let path = self.dir.join("tokens.csv");
        let text = fs::read_to_string(&path).map_err(|e| file_error("read", &path, e))?;
        text.lines()
            .find_map(|l| {
                let mut fields = l.split(',');
                let token = fields.next()?;
                (fields.next()? == user).then(|| token.to_owned())
            })
            .ok_or_else(|| Error::msg(format!("{} has no token for {user}", path.display())))
    }

    /// A new key and serving certificate for the API server signed by this set's CA, as PEM
    /// (the CA's key signs under the CA's name, so what trusts `pki/ca.crt` trusts it).
    pub fn new_apiserver_certificate(&self) -> Result<(String, String)> {
        let path = self.pki("ca.key");
        let pem = fs::read_to_string(&path).map_err(|e| file_error("read", &path, e))?;
        let key = KeyPair::from_pem(&pem)
            .map_err(|e| Error::msg(format!("{} is not a key: {e}", path.display())))?;
        apiserver_leaf(&Issuer::new(ca_params(CA_NAME)?, key))
    }

    /// The paths the API server's command line names, as the flags that name them.
    pub fn apiserver_flags(&self) -> Vec<String> {
        let p = |n: &str| self.pki(n).display().to_string();
        let f = |n: &str| self.dir.join(n).display().to_string();
        vec![
            format!("--client-ca-file={}", p("ca.crt")),
            format!("--token-auth-file={}", f("tokens.csv")),
            format!(
                "--authentication-token-webhook-config-file={}",
                f("token-webhook.kubeconfig")
            ),
            format!("--kubelet-certificate-authority={}", p("ca.crt")),
            format!("--kubelet-client-certificate={}", p("kubelet-client.crt")),
            format!("--kubelet-client-key={}", p("kubelet-client.key")),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            format!("--audit-policy-file={}", f("audit.yaml")),
        ]
    }

    /// Writes `text` to `name` in the folder, readable by its owner only (keys and tokens).
    fn put(&self, name: &str, text: &str) -> Result<()> {
        super::write(&self.dir.join(name), text)
    }
}

/// A new CA named `name`: its certificate (PEM) and the signer.
pub fn new_ca(name: &str) -> Result<(String, Issuer<'static, KeyPair>)> {
    let key = KeyPair::generate().map_err(key_error)?;
    let params = ca_params(name)?;
    let cert = params.self_signed(&key).map_err(key_error)?;
    Ok((cert.pem(), Issuer::new(params, key)))
}

/// A key and serving certificate for the API server signed by `ca`, as PEM.
pub fn apiserver_leaf(ca: &Issuer<'_, KeyPair>) -> Result<(String, String)> {
    leaf(
        ca,
        vec![
            "127.0.0.1".into(),
            "localhost".into(),
            "kubernetes.default.svc".into(),
        ],
        &[(DnType::CommonName, "kube-apiserver")],
        ExtendedKeyUsagePurpose::ServerAuth,
    )
}

fn ca_params(name: &str) -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(key_error)?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// A key and a certificate for `sans` (IP addresses or DNS names) and `subject`, signed by
/// `ca`, as PEM.
fn leaf(
    ca: &Issuer<'_, KeyPair>,
    sans: Vec<String>,
    subject: &[(DnType, &str)],
    usage: ExtendedKeyUsagePurpose,
) -> Result<(String, String)> {
    let key = KeyPair::generate().map_err(key_error)?;
    let mut params = CertificateParams::new(sans).map_err(key_error)?;
    for (ty, value) in subject {
        params.distinguished_name.push(ty.clone(), *value);
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, ca).map_err(key_error)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// `tokens.csv`: random tokens for [`ADMIN`] (in `system:masters`), [`BUILDER`] and the
/// plain users.
fn tokens() -> Result<String> {
    let mut users = vec![
        (ADMIN.to_owned(), ",\"system:masters\""),
        (BUILDER.to_owned(), ""),
    ];
    users.extend((0..PLAIN_USERS).map(|i| (format!("pf-user-{i}"), "")));
    let mut random = vec![0u8; 16 * users.len()];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut random))
        .map_err(|e| Error::msg(format!("read /dev/urandom: {e}")))?;
    Ok(users
        .iter()
        .zip(random.chunks(16))
        .map(|((user, groups), bytes)| {
            let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            format!("{token},{user},{user}{groups}\n")
        })
        .collect())
}

/// Every request, with its metadata (user, verb, URI, User-Agent, code): what the tests read.
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
";

/// Tokens `tokens.csv` does not know go to a webhook on a fixed port that a test serves (as
/// EKS asks aws-iam-authenticator); with nobody listening they are refused.
fn webhook_kubeconfig(port: u16) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: token-webhook
  cluster:
    server: http://127.0.0.1:{port}/authenticate
users:
- name: kube-apiserver
contexts:
- name: webhook
  context: {{cluster: token-webhook, user: kube-apiserver}}
current-context: webhook
"
    )
}

fn file_error(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::msg(format!("{what} {}: {e}", path.display()))
}

fn key_error(e: rcgen::Error) -> Error {
    Error::msg(format!("make a key or certificate: {e}"))
}
