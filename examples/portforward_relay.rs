//! A kubectl-style port-forward, for comparing with `kube-pod://` (scripts/bench-portforward.sh):
//! listens on 127.0.0.1, and carries each accepted connection over its own port-forward
//! WebSocket to a pod, the way client-go's port-forward copies: every read of up to 32 KiB from
//! the local connection goes out as one message, written and flushed on its own.
//! `cargo run --release --example portforward_relay -- NAMESPACE POD PORT` prints the local
//! port, then relays until killed (kubeconfig from `KUBECONFIG`).

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// client-go copies each stream with `io.Copy`, whose buffer is 32 KiB.
const COPY_BUFFER: usize = 32 * 1024;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(namespace), Some(pod), Some(port)) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: portforward_relay NAMESPACE POD PORT");
        std::process::exit(2);
    };
    let port: u16 = port.parse()?;
    let client = kube::Client::try_default().await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("{}", listener.local_addr()?.port());
    loop {
        let (tcp, _) = listener.accept().await?;
        let (client, namespace, pod) = (client.clone(), namespace.clone(), pod.clone());
        tokio::spawn(async move {
            if let Err(err) = relay(client, &namespace, &pod, port, tcp).await {
                eprintln!("portforward_relay: {err}");
            }
        });
    }
}

/// One local connection over one port-forward (v4.channel.k8s.io: data on channel 0).
async fn relay(
    client: kube::Client,
    namespace: &str,
    pod: &str,
    port: u16,
    tcp: tokio::net::TcpStream,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let request = kube::core::Request::new(format!("/api/v1/namespaces/{namespace}/pods"))
        .portforward(pod, &[port])?;
    let ws = client.connect(request).await?.into_stream();
    let (mut sink, mut stream) = ws.split();
    let (mut tcp_read, mut tcp_write) = tcp.into_split();
    let up = async move {
        let mut buf = vec![0u8; COPY_BUFFER + 1];
        loop {
            let n = tcp_read.read(&mut buf[1..]).await?;
            if n == 0 {
                break;
            }
            buf[0] = 0;
            sink.send(Message::binary(buf[..=n].to_vec())).await?;
        }
        sink.close().await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    };
    let down = async move {
        let mut headers = 0;
        while let Some(message) = stream.next().await {
            let Message::Binary(data) = message? else {
                continue;
            };
            // Each channel's first message is the port number.
            if headers < 2 {
                headers += 1;
                continue;
            }
            match data.first() {
                Some(0) => tcp_write.write_all(&data[1..]).await?,
                Some(1) => return Err(String::from_utf8_lossy(&data[1..]).into_owned().into()),
                _ => {}
            }
        }
        Ok(())
    };
    tokio::select! {
        r = up => r,
        r = down => r,
    }
}
