//! Relays that expose the Engine's embedded BuildKit on other transports: a TCP or unix
//! listener whose every connection is upgraded through the Engine's `/grpc` endpoint and then
//! copied byte for byte, optionally behind TLS that the test terminates itself.

use std::path::Path;
use std::sync::Arc;

use pf_buildkit::buildkit::{Dialer, Endpoint, EndpointDialer, TlsOptions};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio_rustls::TlsAcceptor;

use crate::util;

fn engine_dialer() -> Arc<EndpointDialer> {
    let endpoint: Endpoint = util::docker_addr().parse().unwrap();
    Arc::new(EndpointDialer::new(endpoint, &TlsOptions::default()).unwrap())
}

async fn pipe<S: AsyncRead + AsyncWrite + Unpin>(mut inbound: S, dialer: &EndpointDialer) {
    if let Ok(mut engine) = dialer.dial().await {
        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut engine).await;
    }
}

/// A TCP listener on 127.0.0.1 relaying to the Engine's BuildKit; returns its port.
pub async fn tcp(tls: Option<TlsAcceptor>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let dialer = engine_dialer();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let dialer = dialer.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    None => pipe(socket, &dialer).await,
                    // A failed handshake is what some tests expect; the client reports it.
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(socket).await {
                            pipe(stream, &dialer).await;
                        }
                    }
                }
            });
        }
    });
    port
}

/// A unix socket at `path` relaying to the Engine's BuildKit.
pub async fn unix(path: &Path) {
    let listener = UnixListener::bind(path).unwrap();
    let dialer = engine_dialer();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let dialer = dialer.clone();
            tokio::spawn(async move { pipe(socket, &dialer).await });
        }
    });
}
