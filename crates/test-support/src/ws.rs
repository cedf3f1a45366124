//! A WebSocket test client speaking PROTOCOL.md section 2 (tokio-tungstenite).

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How a connection attempt was refused before the upgrade.
#[derive(Debug, Clone)]
pub struct Refused {
    pub status: u16,
    pub body: Value,
}

impl Refused {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

/// One signaling connection.
#[derive(Debug)]
pub struct WsClient {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The `welcome` (first message).
    pub welcome: Value,
    /// The highest `seq` received so far.
    pub last_seq: u64,
}

/// The end of a connection as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    Code(u16),
    /// Dropped without a close frame.
    Abrupt,
}

impl WsClient {
    /// Connects to `/v1/signal?{query}` with extra headers; reads the `welcome`.
    pub async fn connect(
        addr: SocketAddr,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Result<WsClient, Refused> {
        let local = if addr.is_ipv4() { "127.0.0.1" } else { "::1" };
        Self::connect_from(local.parse().unwrap(), addr, query, headers).await
    }

    /// [`WsClient::connect`] from the local address `source` (another loopback address
    /// is another client as far as per-address limits go).
    pub async fn connect_from(
        source: std::net::IpAddr,
        addr: SocketAddr,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Result<WsClient, Refused> {
        let mut req = format!("ws://{addr}/v1/signal?{query}")
            .into_client_request()
            .unwrap();
        for (k, v) in headers {
            let name = tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap();
            req.headers_mut().insert(name, HeaderValue::from_str(v).unwrap());
        }
        let config = WebSocketConfig::default()
            .max_message_size(Some(64 << 20))
            .max_frame_size(Some(64 << 20));
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .expect("socket");
        socket
            .bind(SocketAddr::new(source, 0))
            .expect("bind the source address");
        let tcp = socket.connect(addr).await.expect("TCP connect");
        let _ = tcp.set_nodelay(true);
        match tokio_tungstenite::client_async_with_config(req, MaybeTlsStream::Plain(tcp), Some(config)).await
        {
            Ok((ws, _)) => {
                let mut c = WsClient {
                    ws,
                    welcome: Value::Null,
                    last_seq: 0,
                };
                c.welcome = c.recv().await.expect("a welcome");
                assert_eq!(c.welcome["type"], "welcome", "{}", c.welcome);
                Ok(c)
            }
            Err(Error::Http(resp)) => {
                let status = resp.status().as_u16();
                let body = resp
                    .body()
                    .as_ref()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or(Value::Null);
                Err(Refused { status, body })
            }
            Err(e) => panic!("connect failed: {e}"),
        }
    }

    pub fn peer_id(&self) -> String {
        self.welcome["peer_id"].as_str().unwrap().to_string()
    }

    pub fn resume_token(&self) -> String {
        self.welcome["resume_token"].as_str().unwrap().to_string()
    }

    /// Sends a JSON message; false if the connection is gone.
    pub async fn send(&mut self, v: Value) -> bool {
        self.ws.send(Message::Text(v.to_string().into())).await.is_ok()
    }

    pub async fn send_raw(&mut self, m: Message) {
        let _ = self.ws.send(m).await;
    }

    /// The next JSON message (pings are answered by the library), within 5 s.
    pub async fn recv(&mut self) -> Option<Value> {
        self.recv_within(Duration::from_secs(5)).await
    }

    pub async fn recv_within(&mut self, d: Duration) -> Option<Value> {
        loop {
            let m = tokio::time::timeout(d, self.ws.next()).await.ok()??;
            match m {
                Ok(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(&t).expect("server sends JSON");
                    if let Some(s) = v["seq"].as_u64() {
                        self.last_seq = s;
                    }
                    return Some(v);
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// Reads until the server closes; returns the close code.
    pub async fn closed(&mut self) -> Closed {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), self.ws.next()).await {
                Ok(Some(Ok(Message::Close(Some(CloseFrame { code, .. }))))) => {
                    return Closed::Code(code.into());
                }
                Ok(Some(Ok(Message::Close(None)))) => return Closed::Code(1005),
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_))) | Ok(None) => return Closed::Abrupt,
                Err(_) => panic!("the server did not close within 10 s"),
            }
        }
    }

    /// Drops the TCP connection without a close frame.
    pub fn drop_abruptly(self) {
        let stream = self.ws.into_inner();
        if let MaybeTlsStream::Plain(s) = stream {
            let std = s.into_std().unwrap();
            let _ = std.shutdown(std::net::Shutdown::Both);
        }
    }
}
