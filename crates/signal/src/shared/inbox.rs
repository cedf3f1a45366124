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

/// One inbox entry, as the scripts write it (`push` in `lua/prelude.lua`) and the lease
/// loop its ping. Parsed from untrusted-shaped bytes: whatever Redis holds, parsing gives
/// an entry or `None`, never a panic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboxEntry {
    /// A text for the peer's connection of `epoch`.
    Text {
        room: String,
        peer: String,
        epoch: u64,
        text: String,
    },
    /// A close for the peer's connection of `epoch`.
    Close {
        room: String,
        peer: String,
        epoch: u64,
        code: CloseCode,
        reason: String,
    },
    /// This instance's own readiness ping, with the time it was sent.
    Ping(u64),
}

impl InboxEntry {
    /// From the entry's field/value pairs: `r room p peer e epoch` then `t text` or
    /// `c "CODE reason"`, or `k` alone. `None` for anything else (ignored).
    pub fn parse<'a>(fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Option<InboxEntry> {
        let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
        let (mut room, mut peer, mut epoch) = (None, None, None);
        for (name, value) in fields {
            match name {
                b"r" => room = Some(text(value)),
                b"p" => peer = Some(text(value)),
                b"e" => epoch = std::str::from_utf8(value).ok()?.parse::<u64>().ok(),
                b"k" => {
                    return std::str::from_utf8(value)
                        .ok()?
                        .parse()
                        .ok()
                        .map(InboxEntry::Ping);
                }
                b"t" => {
                    return Some(InboxEntry::Text {
                        room: room?,
                        peer: peer?,
                        epoch: epoch?,
                        text: std::str::from_utf8(value).ok()?.to_string(),
                    });
                }
                b"c" => {
                    let close = text(value);
                    let (code, reason) = close.split_once(' ').unwrap_or((&close, ""));
                    let code = match code {
                        "4000" => CloseCode::Replaced,
                        "4009" => CloseCode::RoomClosed,
                        "4003" => CloseCode::Kicked,
                        _ => return None,
                    };
                    return Some(InboxEntry::Close {
                        room: room?,
                        peer: peer?,
                        epoch: epoch?,
                        code,
                        reason: reason.to_string(),
                    });
                }
                _ => {}
            }
        }
        None
    }
}

/// Hands one entry (its field/value pairs) to the local connections.
fn handle(rooms: &SharedRooms, fields: Vec<Rv>) {
    let raw = |v: &Rv| match v {
        Rv::BulkString(b) => b.clone(),
        other => bytes(other).into_bytes(),
    };
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = fields
        .chunks(2)
        .filter_map(|p| match p {
            [n, v] => Some((raw(n), raw(v))),
            _ => None,
        })
        .collect();
    match InboxEntry::parse(pairs.iter().map(|(n, v)| (n.as_slice(), v.as_slice()))) {
        Some(InboxEntry::Text {
            room,
            peer,
            epoch,
            text,
        }) => rooms.local.deliver(&room, &peer, epoch, Arc::from(text)),
        Some(InboxEntry::Close {
            room,
            peer,
            epoch,
            code,
            reason,
        }) => rooms.local.close(&room, &peer, epoch, code, &reason),
        Some(InboxEntry::Ping(sent)) => {
            rooms.inbox_seen_ms.fetch_max(sent, Ordering::Relaxed);
        }
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::seq_of;

    fn parse(pairs: &[(&str, &str)]) -> Option<InboxEntry> {
        InboxEntry::parse(pairs.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
    }

    #[test]
    fn entries_as_the_scripts_write_them() {
        assert_eq!(
            parse(&[
                ("r", "a:b"),
                ("p", "p-1"),
                ("e", "3"),
                ("t", "{\"seq\":9,\"type\":\"pong\"}")
            ]),
            Some(InboxEntry::Text {
                room: "a:b".into(),
                peer: "p-1".into(),
                epoch: 3,
                text: "{\"seq\":9,\"type\":\"pong\"}".into()
            })
        );
        assert_eq!(
            parse(&[
                ("r", "a"),
                ("p", "p-1"),
                ("e", "1"),
                ("c", "4000 replaced by a resumed connection")
            ]),
            Some(InboxEntry::Close {
                room: "a".into(),
                peer: "p-1".into(),
                epoch: 1,
                code: CloseCode::Replaced,
                reason: "replaced by a resumed connection".into()
            })
        );
        assert_eq!(parse(&[("k", "1234")]), Some(InboxEntry::Ping(1234)));
        assert_eq!(seq_of("{\"seq\":9,\"type\":\"pong\"}"), 9);
    }

    #[test]
    fn malformed_entries_are_ignored() {
        for bad in [
            &[][..],
            &[("t", "x")][..],
            &[("r", "a"), ("p", "p"), ("t", "no epoch")][..],
            &[("r", "a"), ("p", "p"), ("e", "-1"), ("t", "x")][..],
            &[
                ("r", "a"),
                ("p", "p"),
                ("e", "99999999999999999999999"),
                ("t", "x"),
            ][..],
            &[("r", "a"), ("p", "p"), ("e", "1"), ("c", "1000 not ours")][..],
            &[("r", "a"), ("p", "p"), ("e", "1"), ("c", "")][..],
            &[("k", "soon")][..],
            &[("z", "unknown")][..],
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        let not_utf8 = InboxEntry::parse([
            (&b"r"[..], &b"a"[..]),
            (b"p", b"p"),
            (b"e", b"1"),
            (b"t", b"\xff\xfe"),
        ]);
        assert_eq!(not_utf8, None);
        for text in [
            "",
            "{",
            "{\"seq\":",
            "{\"seq\":-1,",
            "{\"seq\":99999999999999999999999,",
            "seq",
        ] {
            assert_eq!(seq_of(text), 0, "{text}");
        }
    }
}
