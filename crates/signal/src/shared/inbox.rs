//! The instance's inbox reader: `XREAD BLOCK` on a connection of its own (a blocked
//! connection answers nothing else), entries handed to the local connections in stream
//! order, then trimmed. Reconnects with backoff and jitter; never ends for good.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::AsyncConnectionConfig;
use redis::Value as Rv;

use super::{SharedRooms, bytes, items};
use crate::protocol::CloseCode;

/// Entries taken per read.
const BATCH: usize = 512;
/// How long one XREAD waits for an entry.
const BLOCK_MS: u64 = 1000;
/// Read entries are trimmed at most this often (or after `TRIM_AFTER` entries): one
/// command per message would cost as much as the message.
const TRIM_EVERY: Duration = Duration::from_millis(250);
const TRIM_AFTER: usize = 4096;

pub(super) fn spawn(rooms: Arc<SharedRooms>) {
    tokio::spawn(async move {
        loop {
            let r = Arc::clone(&rooms);
            // A panic in one entry's handling must not end the reader for good.
            if let Err(e) = tokio::spawn(read_forever(r)).await {
                tracing::error!(error = %e, "signaling inbox reader stopped; restarting");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
}

async fn read_forever(rooms: Arc<SharedRooms>) {
    let stream = rooms.key(&format!("x:{}", rooms.instance));
    let mut last_id = "0-0".to_string();
    let mut backoff = Duration::from_millis(100);
    let mut untrimmed = 0usize;
    let mut trimmed_at = tokio::time::Instant::now();
    loop {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(rooms.settings.timeout))
            .set_response_timeout(Some(rooms.settings.timeout + Duration::from_millis(BLOCK_MS)));
        let mut conn = match rooms
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                rooms.failed(&e.to_string());
                tokio::time::sleep(jitter(backoff)).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        loop {
            let reply: Result<Rv, _> = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(BATCH)
                .arg("BLOCK")
                .arg(BLOCK_MS)
                .arg("STREAMS")
                .arg(&stream)
                .arg(&last_id)
                .query_async(&mut conn)
                .await;
            let reply = match reply {
                Ok(r) => r,
                Err(e) => {
                    rooms.failed(&e.to_string());
                    break;
                }
            };
            let mut n = 0;
            for s in items(reply) {
                let mut s = items(s).into_iter();
                let _key = s.next();
                for entry in items(s.next().unwrap_or(Rv::Nil)) {
                    let mut e = items(entry).into_iter();
                    let id = e.next().map(|v| bytes(&v)).unwrap_or_default();
                    handle(&rooms, items(e.next().unwrap_or(Rv::Nil)));
                    if !id.is_empty() {
                        last_id = id;
                    }
                    n += 1;
                }
            }
            untrimmed += n;
            if untrimmed > 0 && (untrimmed >= TRIM_AFTER || trimmed_at.elapsed() >= TRIM_EVERY) {
                untrimmed = 0;
                trimmed_at = tokio::time::Instant::now();
                // What was read is done: the stream keeps only what is not.
                let trimmed: Result<Rv, _> = redis::cmd("XTRIM")
                    .arg(&stream)
                    .arg("MINID")
                    .arg(&last_id)
                    .query_async(&mut conn)
                    .await;
                if let Err(e) = trimmed {
                    rooms.failed(&e.to_string());
                    break;
                }
            }
        }
        tokio::time::sleep(jitter(backoff)).await;
    }
}

/// Between half and all of `d`, so instances do not retry in step.
pub(super) fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.5 + rand::random::<f64>() / 2.0)
}

/// One entry: `r room p peer e epoch` then `t text`, `c "CODE reason"`, or `k` (this
/// instance's own readiness ping, with the time it was sent).
fn handle(rooms: &SharedRooms, fields: Vec<Rv>) {
    let mut room = String::new();
    let mut peer = String::new();
    let mut epoch = 0u64;
    for pair in fields.chunks(2) {
        let [name, value] = pair else { continue };
        match bytes(name).as_str() {
            "r" => room = bytes(value),
            "p" => peer = bytes(value),
            "e" => epoch = bytes(value).parse().unwrap_or(0),
            "t" => rooms.local.deliver(&room, &peer, epoch, Arc::from(bytes(value))),
            "c" => {
                let text = bytes(value);
                let (code, reason) = text.split_once(' ').unwrap_or((&text, ""));
                let code = match code {
                    "4000" => CloseCode::Replaced,
                    "4009" => CloseCode::RoomClosed,
                    _ => CloseCode::Kicked,
                };
                rooms.local.close(&room, &peer, epoch, code, reason);
            }
            "k" => {
                let sent: u64 = bytes(value).parse().unwrap_or(0);
                rooms.inbox_seen_ms.fetch_max(sent, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}
