//! Every HTTP request names the client, `User-Agent: pf-buildkit/VERSION`, so registry and API
//! server logs can tell it apart. (The Kubernetes side is asserted on the fake API server's
//! recorded requests in `fleet.rs`.)

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::util;

/// A TCP relay to `upstream` on 127.0.0.1 that keeps a copy of every byte clients send.
async fn recording_relay(upstream: String) -> (u16, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let sent = Arc::new(Mutex::new(Vec::new()));
    let log = sent.clone();
    tokio::spawn(async move {
        loop {
            let (client, _) = listener.accept().await.unwrap();
            let server = TcpStream::connect(&upstream).await.unwrap();
            let log = log.clone();
            tokio::spawn(async move {
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let answers = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                });
                let mut buf = vec![0; 16 << 10];
                loop {
                    let n = match client_read.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    log.lock().unwrap().extend_from_slice(&buf[..n]);
                    if server_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = server_write.shutdown().await;
                let _ = answers.await;
            });
        }
    });
    (port, sent)
}

#[tokio::test]
async fn registry_requests_carry_the_user_agent() {
    let (port, sent) = recording_relay(util::env("PF_TEST_REGISTRY")).await;
    let config = tempfile::tempdir().unwrap();
    let o = util::tokio_bin()
        .args([
            "manifest",
            "inspect",
            &format!("127.0.0.1:{port}/pf-test/busybox:latest"),
            "--insecure-registry",
        ])
        .env("DOCKER_CONFIG", config.path())
        .output()
        .await
        .unwrap();
    assert!(o.status.success(), "{}", util::stderr(&o));
    // `manifest inspect` sends only GET and HEAD requests, so the bytes are request heads.
    let sent = String::from_utf8(sent.lock().unwrap().clone()).unwrap();
    let requests = sent
        .lines()
        .filter(|l| {
            ["GET ", "HEAD ", "POST ", "PUT ", "PATCH "]
                .iter()
                .any(|m| l.starts_with(m))
        })
        .count();
    let agents: Vec<&str> = sent
        .lines()
        .filter_map(|l| {
            l.split_once(':')
                .filter(|(name, _)| name.eq_ignore_ascii_case("user-agent"))
                .map(|(_, value)| value.trim())
        })
        .collect();
    assert!(requests > 0, "{sent}");
    assert_eq!(agents.len(), requests, "{sent}");
    assert!(
        agents.iter().all(|a| *a == pf_buildkit::USER_AGENT),
        "{sent}"
    );
    assert_eq!(
        pf_buildkit::USER_AGENT,
        concat!("pf-buildkit/", env!("CARGO_PKG_VERSION"))
    );
}
