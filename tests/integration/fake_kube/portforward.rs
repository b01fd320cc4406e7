//! The fake's port-forward: the checks a real API server makes before the 101, then the
//! kubelet's `v4.channel.k8s.io` framing: per port i, announcements `[2i,lo,hi]` and
//! `[2i+1,lo,hi]`, data on channel 2i (one message per target read, up to 32 KiB), an error text
//! on channel 2i+1 when the target cannot be dialled, and Close(1000) once every port is done.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{Empty, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, frame::coding::CloseCode};

use super::rest::{Body, State, status};
use super::{DialFn, Stream};

/// Largest data message, as the kubelet's io.Copy buffer.
const MAX_FRAME: usize = 32 * 1024;

/// The port-forward subprotocols a kubelet / CRI streaming server supports.
const SUPPORTED: [&str; 2] = ["v4.channel.k8s.io", "v4.base64.channel.k8s.io"];

/// One upgraded port-forward, for the test's switches.
#[derive(Clone)]
pub(crate) struct PortForward {
    kill: Arc<Notify>,
    closed: Arc<AtomicBool>,
}

impl PortForward {
    pub fn kill(&self) {
        self.kill.notify_one();
    }
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn upgrade(
    state: Arc<Mutex<State>>,
    parts: http::request::Parts,
    ns: &str,
    pod: &str,
    params: &[(String, String)],
    is_upgrade: bool,
    key: &str,
    offered: &str,
) -> Response<Body> {
    if !is_upgrade || key.is_empty() {
        return status(400, "BadRequest", "Upgrade request required", Value::Null);
    }
    let (dial, node) = {
        let s = state.lock().unwrap();
        let Some(obj) = s.get("pods", pod).filter(|_| ns == s.namespace) else {
            return status(
                404,
                "NotFound",
                &format!("pods \"{pod}\" not found"),
                json!({ "name": pod, "kind": "pods" }),
            );
        };
        (
            s.dials.get(pod).cloned(),
            obj["spec"]["nodeName"].as_str().map(str::to_owned),
        )
    };
    if node.is_none() {
        return status(
            400,
            "BadRequest",
            &format!("pod {pod} does not have a host assigned"),
            Value::Null,
        );
    }
    // The API server turns `ports=a,b` (and repeated `ports`) into the kubelet's port list.
    let mut ports = Vec::new();
    for (k, v) in params.iter().filter(|(k, _)| k == "ports" || k == "port") {
        let _ = k;
        for p in v.split(',').filter(|p| !p.is_empty()) {
            match p.trim().parse::<u16>() {
                Ok(port) if port > 0 => ports.push(port),
                _ => {
                    return status(
                        400,
                        "BadRequest",
                        &format!("invalid port value \"{p}\""),
                        Value::Null,
                    );
                }
            }
        }
    }
    if ports.is_empty() {
        return status(
            400,
            "BadRequest",
            "at least 1 port must be specified",
            Value::Null,
        );
    }
    // The first protocol the client offers that the server supports wins.
    let chosen = offered
        .split(',')
        .map(str::trim)
        .find(|p| SUPPORTED.contains(p));
    let Some(chosen) = chosen else {
        return status(
            400,
            "BadRequest",
            &format!(
                "unable to upgrade: unable to negotiate protocol: client supports [{offered}], server supports [{}]",
                SUPPORTED.join(" ")
            ),
            Value::Null,
        );
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let record = PortForward {
        kill: Arc::new(Notify::new()),
        closed: Arc::new(AtomicBool::new(false)),
    };
    state.lock().unwrap().portforwards.push(record.clone());
    let pod = pod.to_owned();
    let request = Request::from_parts(parts, Empty::<Bytes>::new());
    let task_state = state.clone();
    tokio::spawn(async move {
        if let Ok(upgraded) = hyper::upgrade::on(request).await {
            let ws =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            run(ws, ports, dial, pod, record.kill.clone()).await;
        }
        record.closed.store(true, Ordering::SeqCst);
        task_state.lock().unwrap().notify();
    });
    state.lock().unwrap().notify();
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-accept", accept)
        .header("sec-websocket-protocol", chosen)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

fn frame(channel: u8, payload: &[u8]) -> Message {
    let mut data = Vec::with_capacity(payload.len() + 1);
    data.push(channel);
    data.extend_from_slice(payload);
    Message::Binary(Bytes::from(data))
}

async fn run<S>(
    ws: WebSocketStream<S>,
    ports: Vec<u16>,
    dial: Option<DialFn>,
    pod: String,
    kill: Arc<Notify>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Message>();
    let writer = tokio::spawn(async move {
        while let Some(message) = out_rx.recv().await {
            let close = matches!(message, Message::Close(_));
            if sink.send(message).await.is_err() || close {
                break;
            }
        }
        // Also flushes tungstenite's automatic reply to a client's Close.
        let _ = sink.close().await;
    });

    for (i, port) in ports.iter().enumerate() {
        let le = port.to_le_bytes();
        let _ = out_tx.send(frame(2 * i as u8, &le));
        let _ = out_tx.send(frame(2 * i as u8 + 1, &le));
    }

    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<usize>();
    let mut inputs: Vec<Option<mpsc::UnboundedSender<Bytes>>> = Vec::new();
    let mut tasks: Vec<Vec<tokio::task::JoinHandle<()>>> = Vec::new();
    let mut done = vec![false; ports.len()];
    let mut remaining = ports.len();
    for (i, &port) in ports.iter().enumerate() {
        let target: io::Result<std::pin::Pin<Box<dyn Stream>>> = match &dial {
            Some(d) => d(port).await,
            None => Err(io::Error::from(io::ErrorKind::ConnectionRefused)),
        };
        match target {
            Err(err) => {
                let text = format!(
                    "error forwarding port {port} to pod {pod}, uid : failed to execute portforward in network namespace \"/var/run/netns/cni-fake\": failed to connect to localhost:{port} inside namespace \"{pod}\", IPv4: dial tcp4 127.0.0.1:{port}: connect: {err} IPv6 dial tcp6 [::1]:{port}: connect: {err} "
                );
                let _ = out_tx.send(frame(2 * i as u8 + 1, text.as_bytes()));
                done[i] = true;
                remaining -= 1;
                inputs.push(None);
                tasks.push(Vec::new());
            }
            Ok(target) => {
                let (mut rd, mut wr) = tokio::io::split(target);
                let (in_tx, mut in_rx) = mpsc::unbounded_channel::<Bytes>();
                let out = out_tx.clone();
                let d1 = done_tx.clone();
                let reader = tokio::spawn(async move {
                    let mut buf = vec![0u8; MAX_FRAME];
                    loop {
                        match rd.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if out.send(frame(2 * i as u8, &buf[..n])).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = d1.send(i);
                });
                let d2 = done_tx.clone();
                let writer = tokio::spawn(async move {
                    while let Some(data) = in_rx.recv().await {
                        if wr.write_all(&data).await.is_err() {
                            break;
                        }
                    }
                    let _ = d2.send(i);
                });
                inputs.push(Some(in_tx));
                tasks.push(vec![reader, writer]);
            }
        }
    }

    let abort_all = |tasks: &mut Vec<Vec<tokio::task::JoinHandle<()>>>| {
        for t in tasks.iter().flatten() {
            t.abort();
        }
    };
    loop {
        if remaining == 0 {
            let _ = out_tx.send(Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            })));
            break;
        }
        tokio::select! {
            _ = kill.notified() => {
                // The connection dies with no close frame, as when an API server goes away.
                abort_all(&mut tasks);
                writer.abort();
                return;
            }
            Some(i) = done_rx.recv() => {
                if !done[i] {
                    done[i] = true;
                    remaining -= 1;
                    inputs[i] = None;
                    for t in &tasks[i] { t.abort(); }
                }
            }
            message = stream.next() => match message {
                Some(Ok(Message::Binary(data))) if data.len() > 1 => {
                    let ch = data[0] as usize;
                    // Client data on error channels or unknown channels is ignored.
                    if ch.is_multiple_of(2)
                        && ch / 2 < ports.len()
                        && let Some(tx) = &inputs[ch / 2]
                    {
                            let _ = tx.send(data.slice(1..));
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    abort_all(&mut tasks);
                    break;
                }
                _ => {}
            }
        }
    }
    drop(out_tx);
    drop(inputs);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), writer).await;
    abort_all(&mut tasks);
}

/// A dial hook reaching the Docker Engine's embedded BuildKit at `socket` through the Engine
/// API's `POST /grpc` HTTP/1.1 upgrade: the stream it returns speaks BuildKit's gRPC (HTTP/2
/// with prior knowledge), as a pod's port 1234 would.
pub fn docker_engine(socket: PathBuf) -> DialFn {
    Arc::new(move |_port| {
        let socket = socket.clone();
        Box::pin(async move {
            let unix = tokio::net::UnixStream::connect(&socket).await?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(unix))
                .await
                .map_err(io::Error::other)?;
            tokio::spawn(async move {
                let _ = conn.with_upgrades().await;
            });
            let request = Request::post("/grpc")
                .header("host", "docker")
                .header("connection", "Upgrade")
                .header("upgrade", "h2c")
                .body(Empty::<Bytes>::new())
                .map_err(io::Error::other)?;
            let response = sender
                .send_request(request)
                .await
                .map_err(io::Error::other)?;
            if response.status() != StatusCode::SWITCHING_PROTOCOLS {
                return Err(io::Error::other(format!(
                    "engine refused /grpc: {}",
                    response.status()
                )));
            }
            let upgraded = hyper::upgrade::on(response)
                .await
                .map_err(io::Error::other)?;
            Ok(Box::pin(TokioIo::new(upgraded)) as std::pin::Pin<Box<dyn Stream>>)
        })
    })
}

/// A dial hook reaching a standalone buildkitd listening on `host:port` (TCP, h2c): what a
/// pod's port 1234 is in production.
pub fn tcp(host_port: String) -> DialFn {
    Arc::new(move |_port| {
        let host_port = host_port.clone();
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(host_port.as_str()).await?;
            Ok(Box::pin(stream) as std::pin::Pin<Box<dyn Stream>>)
        })
    })
}

/// Port-forwards to a daemon's unix socket (a test's private buildkitd).
pub fn unix(socket: std::path::PathBuf) -> DialFn {
    Arc::new(move |_port| {
        let socket = socket.clone();
        Box::pin(async move {
            let stream = tokio::net::UnixStream::connect(&socket).await?;
            Ok(Box::pin(stream) as std::pin::Pin<Box<dyn Stream>>)
        })
    })
}

/// Port-forwards to the BuildKit `inner` reaches, as a daemon without the build history API
/// would answer: `Control.ListenBuildHistory` is UNIMPLEMENTED, every other call reaches the
/// real daemon (an HTTP/2 relay in between, per connection).
pub fn without_build_history(inner: DialFn) -> DialFn {
    use http_body_util::BodyExt;
    use http_body_util::combinators::BoxBody;
    use hyper_util::rt::TokioExecutor;

    Arc::new(move |port| {
        let inner = inner.clone();
        Box::pin(async move {
            let upstream = inner(port).await?;
            let (sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(upstream))
                    .await
                    .map_err(io::Error::other)?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let (ours, theirs) = tokio::io::duplex(1 << 20);
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                // HTTP/2 senders are cheap handles onto one connection.
                let mut sender = sender.clone();
                let forward = (req.uri().path() != "/moby.buildkit.v1.Control/ListenBuildHistory")
                    .then(move || sender.send_request(req));
                async move {
                    let response: Response<BoxBody<Bytes, hyper::Error>> = match forward {
                        Some(call) => call.await?.map(BodyExt::boxed),
                        None => Response::builder()
                            .header("content-type", "application/grpc")
                            .header("grpc-status", "12")
                            .header("grpc-message", "unknown method ListenBuildHistory")
                            .body(
                                Empty::<Bytes>::new()
                                    .map_err(|never| match never {})
                                    .boxed(),
                            )
                            .unwrap(),
                    };
                    Ok::<_, hyper::Error>(response)
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(theirs), service)
                    .await;
            });
            Ok(Box::pin(ours) as std::pin::Pin<Box<dyn Stream>>)
        })
    })
}
