//! The instance's lease and readiness: every fifth of `signal.redis_lease_ms` it renews
//! its lease and pings itself through its own inbox (Redis and the reader both answer,
//! not only a TCP connection), runs the sweep, and after any failure claims its live
//! connections again and reports the ends that Redis missed. Never ends for good.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::Value as Rv;

use super::inbox::jitter;
use super::{SharedRooms, bytes, items, scripts};
use crate::protocol::CloseCode;

/// Graces ended per sweep (the next sweep takes the rest).
const SWEEP_LIMIT: u64 = 256;
/// Connections claimed per reattach script.
const REATTACH_BATCH: usize = 100;

pub(super) fn spawn(rooms: Arc<SharedRooms>) {
    tokio::spawn(async move {
        loop {
            let r = Arc::clone(&rooms);
            if let Err(e) = tokio::spawn(renew_forever(r)).await {
                tracing::error!(error = %e, "signaling lease loop stopped; restarting");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
}

async fn renew_forever(rooms: Arc<SharedRooms>) {
    let every = rooms.settings.lease / 5;
    loop {
        let ok = tick(&rooms).await;
        if rooms.ready.swap(ok, Ordering::Relaxed) != ok {
            if ok {
                tracing::info!(instance = %rooms.instance, "signaling redis reachable; shared rooms ready");
            } else {
                tracing::warn!(instance = %rooms.instance, "signaling redis unreachable; joins refused with 503");
            }
        }
        tokio::time::sleep(if ok { every } else { jitter(every) }).await;
    }
}

/// One round; whether the instance is ready.
async fn tick(rooms: &SharedRooms) -> bool {
    let sent = rooms.now_ms().max(1);
    let mut conn = rooms.conn.clone();
    let mut pipe = redis::pipe();
    pipe.cmd("SET")
        .arg(rooms.key(&format!("i:{}", rooms.instance)))
        .arg(1)
        .arg("PX")
        .arg(rooms.settings.lease.as_millis() as u64)
        .ignore()
        .cmd("XADD")
        .arg(rooms.key(&format!("x:{}", rooms.instance)))
        .arg("MAXLEN")
        .arg("~")
        .arg(rooms.settings.inbox_max)
        .arg("*")
        .arg("k")
        .arg(sent)
        .ignore();
    let renew = pipe.query_async::<()>(&mut conn);
    match tokio::time::timeout(rooms.settings.timeout, renew).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            rooms.failed(&e.to_string());
            return false;
        }
        Err(_) => {
            rooms.failed("timed out");
            return false;
        }
    }
    if rooms.lost.swap(false, Ordering::Relaxed) {
        reattach(rooms).await;
        report_unreported(rooms).await;
    }
    if let Ok(v) = rooms.run(&scripts::SWEEP, &[&SWEEP_LIMIT]).await {
        let mut f = items(v);
        rooms.record(f.pop().unwrap_or(Rv::Nil));
    }
    // Ready once the ping came back through the inbox.
    let deadline = tokio::time::Instant::now() + rooms.settings.timeout;
    while rooms.inbox_seen_ms.load(Ordering::Relaxed) < sent {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    !rooms.lost.load(Ordering::Relaxed)
}

/// Claims this instance's live connections again and hands them what they missed; a
/// peer removed meanwhile (its grace ended, or it resumed elsewhere) is closed with 4012.
/// Runs after every outage, with no connections too: it learns Redis's generation.
async fn reattach(rooms: &SharedRooms) {
    let attached = rooms.local.attached();
    let mut claimed = 0;
    let fresh = format!("{:016x}", rand::random::<u64>());
    // One script for no connections at all: it learns the generation.
    let batches: Vec<&[super::local::Known]> = if attached.is_empty() {
        vec![&[]]
    } else {
        attached.chunks(REATTACH_BATCH).collect()
    };
    // The generation known before this outage decides for every batch.
    let known = rooms.generation.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for batch in batches {
        let mut args: Vec<String> = vec![rooms.instance.clone(), known.clone(), fresh.clone()];
        for k in batch {
            args.extend([
                k.room.clone(),
                k.peer.clone(),
                k.epoch.to_string(),
                k.delivered.to_string(),
                k.token.clone(),
                k.meta.clone(),
                k.addr.clone(),
                k.joined_unix.to_string(),
            ]);
        }
        let refs: Vec<&(dyn std::fmt::Display + Sync)> = args
            .iter()
            .map(|a| a as &(dyn std::fmt::Display + Sync))
            .collect();
        let Ok(v) = rooms.run(&scripts::REATTACH, &refs).await else {
            rooms.lost.store(true, Ordering::Relaxed);
            return;
        };
        let mut v = items(v).into_iter();
        let generation = v.next().map(|g| bytes(&g)).unwrap_or_default();
        for (k, answer) in batch.iter().zip(items(v.next().unwrap_or(Rv::Nil))) {
            let mut a = items(answer).into_iter();
            if a.next().map(|s| bytes(&s)).as_deref() == Some("ok") {
                claimed += 1;
                for text in items(a.next().unwrap_or(Rv::Nil)) {
                    rooms
                        .local
                        .deliver(&k.room, &k.peer, k.epoch, Arc::from(bytes(&text)));
                }
            } else {
                rooms.local.close(
                    &k.room,
                    &k.peer,
                    k.epoch,
                    CloseCode::Draining,
                    "the session was lost while the server was cut off; reconnect",
                );
            }
        }
        *rooms.generation.lock().unwrap_or_else(|e| e.into_inner()) = generation;
    }
    if !attached.is_empty() {
        tracing::info!(
            claimed,
            total = attached.len(),
            "signaling connections claimed again after a redis outage"
        );
    }
}

/// Tells Redis about connections that ended while it did not answer.
async fn report_unreported(rooms: &SharedRooms) {
    let pending = std::mem::take(&mut *rooms.unreported.lock().unwrap_or_else(|e| e.into_inner()));
    for (i, e) in pending.iter().enumerate() {
        if !rooms.report_end(&e.room, &e.peer, e.epoch, e.how).await {
            // Redis went away again: the rest waits for the next recovery.
            let mut q = rooms.unreported.lock().unwrap_or_else(|e| e.into_inner());
            for e in pending.into_iter().skip(i) {
                q.push(e);
            }
            return;
        }
    }
}
