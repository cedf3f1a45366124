//! The baseline: the least a section-2 relay can do. Rooms of peers with a peer id; each
//! text frame is parsed, gets `from` and a per-receiver `seq`, and goes to `to` or to
//! everyone else. No validation, limits, resume logs, heartbeats or metrics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

type Rooms = Arc<Mutex<HashMap<String, Vec<(String, mpsc::UnboundedSender<String>, Arc<AtomicU64>)>>>>;

#[allow(clippy::result_large_err)] // the handshake callback's error type is tungstenite's
pub async fn serve(listener: TcpListener) -> anyhow::Result<()> {
    let rooms: Rooms = Arc::default();
    let ids = Arc::new(AtomicU64::new(1));
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let rooms = Arc::clone(&rooms);
        let ids = Arc::clone(&ids);
        tokio::spawn(async move {
            let mut room = String::new();
            let Ok(ws) = tokio_tungstenite::accept_hdr_async(
                stream,
                |req: &tokio_tungstenite::tungstenite::handshake::server::Request, resp| {
                    room = req
                        .uri()
                        .query()
                        .and_then(|q| q.strip_prefix("room="))
                        .unwrap_or("")
                        .to_string();
                    Ok(resp)
                },
            )
            .await
            else {
                return;
            };
            let id = format!("p-{}", ids.fetch_add(1, Ordering::Relaxed));
            let (tx, mut rx) = mpsc::unbounded_channel::<String>();
            let seq = Arc::new(AtomicU64::new(0));
            let (mut sink, mut stream) = ws.split();
            let welcome = json!({"type": "welcome", "peer_id": id, "room": room, "peers": []}).to_string();
            let _ = tx.send(welcome);
            rooms
                .lock()
                .unwrap()
                .entry(room.clone())
                .or_default()
                .push((id.clone(), tx, Arc::clone(&seq)));
            let writer = tokio::spawn(async move {
                while let Some(t) = rx.recv().await {
                    if sink.send(Message::Text(t.into())).await.is_err() {
                        break;
                    }
                }
            });
            while let Some(Ok(m)) = stream.next().await {
                let Message::Text(t) = m else { continue };
                let Ok(Value::Object(mut o)) = serde_json::from_str::<Value>(&t) else {
                    continue;
                };
                let to = o.remove("to").and_then(|v| v.as_str().map(str::to_string));
                o.insert("from".into(), Value::String(id.clone()));
                let body = Value::Object(o).to_string();
                let rooms = rooms.lock().unwrap();
                for (pid, ptx, pseq) in rooms.get(&room).into_iter().flatten() {
                    if *pid == id || to.as_ref().is_some_and(|t| t != pid) {
                        continue;
                    }
                    let s = pseq.fetch_add(1, Ordering::Relaxed) + 1;
                    let _ = ptx.send(format!("{{\"seq\":{s},{}", &body[1..]));
                }
            }
            writer.abort();
            let mut rooms = rooms.lock().unwrap();
            if let Some(peers) = rooms.get_mut(&room) {
                peers.retain(|(pid, _, _)| *pid != id);
                if peers.is_empty() {
                    rooms.remove(&room);
                }
            }
        });
    }
}
