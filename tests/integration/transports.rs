//! Every transport reaches `ListWorkers` on the real BuildKit, and every way of getting the
//! address wrong ends in one clear line and exit 1.

use std::process::Output;

use crate::relay;
use crate::tls::Pki;
use crate::util::{self, Tier, assert_fails_with, stderr, stdout};

async fn workers(args: &[&str]) -> Output {
    util::tokio_bin()
        .args(args)
        .arg("workers")
        .output()
        .await
        .unwrap()
}

/// The platforms column of the daemon's worker: what a working transport must show.
fn assert_lists_worker(out: &Output) {
    assert!(out.status.success(), "stderr: {}", stderr(out));
    let text = stdout(out);
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("ID") && header.contains("PLATFORMS"),
        "{text}"
    );
    let row = lines.next().expect("one worker row");
    let arch = match std::env::consts::ARCH {
        "x86_64" => "linux/amd64",
        "aarch64" => "linux/arm64",
        other => panic!("unexpected test architecture {other}"),
    };
    assert!(row.contains(arch), "worker row {row:?} lacks {arch}");
}

#[tokio::test]
async fn docker_scheme_uses_docker_host() {
    let out = util::tokio_bin()
        .env("DOCKER_HOST", util::env("PF_TEST_DOCKER_HOST"))
        .args(["--addr", "docker://", "workers"])
        .output()
        .await
        .unwrap();
    assert_lists_worker(&out);
}

#[tokio::test]
async fn buildkit_host_is_the_default_address() {
    let out = util::tokio_bin()
        .env("BUILDKIT_HOST", util::docker_addr())
        .arg("workers")
        .output()
        .await
        .unwrap();
    assert_lists_worker(&out);
}

#[tokio::test]
async fn tcp_h2c() {
    let port = relay::tcp(None).await;
    assert_lists_worker(&workers(&["--addr", &format!("tcp://127.0.0.1:{port}")]).await);
}

#[tokio::test]
async fn unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("buildkitd.sock");
    relay::unix(&socket).await;
    assert_lists_worker(&workers(&["--addr", &format!("unix://{}", socket.display())]).await);
}

/// The standalone daemon straight on its own TCP port and unix socket: h2c with prior
/// knowledge, with no relay and no Engine upgrade in between.
#[tokio::test]
async fn standalone_daemon_on_its_tcp_port_and_unix_socket() {
    if Tier::Standalone.present(module_path!()).is_none() {
        return;
    }
    for var in ["PF_TEST_BUILDKIT_ADDR", "PF_TEST_BUILDKIT_UNIX"] {
        assert_lists_worker(&workers(&["--addr", &util::env(var)]).await);
    }
}

#[tokio::test]
async fn tls_with_ca_and_server_name() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let port = relay::tcp(Some(pki.acceptor(false))).await;
    let out = workers(&[
        "--addr",
        &format!("tcp://127.0.0.1:{port}"),
        "--tlscacert",
        pki.ca.to_str().unwrap(),
        "--tlsservername",
        "localhost",
    ])
    .await;
    assert_lists_worker(&out);
}

#[tokio::test]
async fn mtls_with_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let port = relay::tcp(Some(pki.acceptor(true))).await;
    let addr = format!("tcp://localhost:{port}");
    let ca = pki.ca.to_str().unwrap();
    let out = workers(&[
        "--addr",
        &addr,
        "--tlscacert",
        ca,
        "--tlscert",
        pki.client_cert.to_str().unwrap(),
        "--tlskey",
        pki.client_key.to_str().unwrap(),
    ])
    .await;
    assert_lists_worker(&out);

    // The same server without a client certificate: the handshake is refused, and we say why.
    let out = workers(&["--addr", &addr, "--tlscacert", ca]).await;
    assert_fails_with(&out, &[&addr, "--tlscert"]);
}

#[tokio::test]
async fn certificate_not_signed_by_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let port = relay::tcp(Some(pki.acceptor(false))).await;
    let addr = format!("tcp://localhost:{port}");
    let out = workers(&[
        "--addr",
        &addr,
        "--tlscacert",
        pki.other_ca.to_str().unwrap(),
    ])
    .await;
    assert_fails_with(
        &out,
        &[
            &addr,
            "not signed by a trusted CA",
            "UnknownIssuer",
            "--tlscacert",
        ],
    );
}

#[tokio::test]
async fn unreadable_tls_file_is_named() {
    let out = workers(&[
        "--addr",
        "tcp://localhost:1234",
        "--tlscacert",
        "/nonexistent/ca.pem",
    ])
    .await;
    assert_fails_with(&out, &["/nonexistent/ca.pem", "--tlscacert"]);
}

#[tokio::test]
async fn unknown_scheme() {
    // A malformed address is a usage error: exit 2, before anything is dialled.
    let out = workers(&["--addr", "ftp://example:21"]).await;
    let line = util::assert_usage_error(&out);
    for needle in ["ftp://example:21", "unknown scheme"] {
        assert!(line.contains(needle), "{needle:?} not in {line:?}");
    }
}

#[tokio::test]
async fn refused_address_is_named() {
    // Bind then drop: the port is known to be closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = workers(&["--addr", &format!("tcp://127.0.0.1:{port}")]).await;
    assert_fails_with(
        &out,
        &[
            &format!("tcp://127.0.0.1:{port}"),
            "Connection refused",
            "is BuildKit running at that address?",
        ],
    );
}

#[tokio::test]
async fn silent_peer_times_out_instead_of_hanging() {
    // A listener that never accepts: the kernel completes the TCP handshake, then nothing.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let started = std::time::Instant::now();
    let out = workers(&["--addr", &format!("tcp://127.0.0.1:{port}")]).await;
    assert_fails_with(&out, &[&format!("tcp://127.0.0.1:{port}"), "timed out"]);
    // The promise to users is "fails within 10 s, never hangs": one deadline for connecting
    // and the first call together (two would make 20 s). Allow process start-up on top.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(12),
        "took {:?}",
        started.elapsed()
    );
    drop(listener);
}

#[tokio::test]
async fn peer_that_is_not_buildkit() {
    // The registry speaks HTTP/1.1, not gRPC.
    let registry = util::env("PF_TEST_REGISTRY");
    let out = workers(&["--addr", &format!("tcp://{registry}")]).await;
    assert_fails_with(&out, &[&registry, "not BuildKit"]);
}

#[tokio::test]
async fn daemon_that_closes_the_connection() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            drop(socket);
        }
    });
    let out = workers(&["--addr", &format!("tcp://127.0.0.1:{port}")]).await;
    assert_fails_with(&out, &[&format!("127.0.0.1:{port}"), "closed"]);
}

#[tokio::test]
async fn docker_host_that_is_not_an_engine() {
    // An HTTP server that is not the Engine API refuses the /grpc upgrade.
    let registry = util::env("PF_TEST_REGISTRY");
    let out = workers(&["--addr", &format!("docker+tcp://{registry}")]).await;
    assert_fails_with(&out, &["/grpc upgrade", "Docker Engine"]);
}
