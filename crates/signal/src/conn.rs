//! One signaling connection, generic over the WebSocket's `Sink` and `Stream` so tests can
//! drive it with channels. It feeds frames to the [`Hub`], writes what the hub queues,
//! pings, pushes fresh ICE servers, and reports how it ended.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message};

use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use serde_json::Value;
use tokio::sync::Notify;

use crate::hub::{Ended, Hub, Outbox, Verdict};
use crate::metrics::SignalMetrics;
use crate::protocol::CloseCode;
use crate::shared::SharedRooms;

/// The hub's handle on a connection: a queue whose bytes are counted against the send
/// buffer limit, and a close request, both behind one wake-up for the connection task.
///
/// The queue is a `VecDeque` that allocates when a message arrives and is given back when
/// it drains (not a channel, whose first block of slots every connection would hold even
/// when idle): an idle connection costs a few hundred bytes here, not a kilobyte.
pub struct ConnOutbox {
    queue: Mutex<VecDeque<Arc<str>>>,
    queued: AtomicUsize,
    limit: usize,
    close: Mutex<Option<(CloseCode, String)>>,
    /// Set by the first close request: the hub may ask again (more messages overflow the
    /// buffer) until the connection has reported its end, and only the first one counts.
    close_requested: AtomicBool,
    /// Wakes the connection task: messages queued, or a close requested.
    notify: Notify,
    /// Wakes it out of a flush that waits for a reader that may never read.
    closing: Notify,
    metrics: Arc<SignalMetrics>,
}

impl std::fmt::Debug for ConnOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnOutbox")
            .field("queued", &self.queued)
            .finish()
    }
}

/// Queue capacity kept after a drain; a burst's larger buffer is given back.
const KEEP_QUEUE: usize = 4;

impl ConnOutbox {
    pub fn new(limit: usize, metrics: Arc<SignalMetrics>) -> Arc<Self> {
        Arc::new(Self {
            queue: Mutex::new(VecDeque::new()),
            queued: AtomicUsize::new(0),
            limit,
            close: Mutex::new(None),
            close_requested: AtomicBool::new(false),
            notify: Notify::new(),
            closing: Notify::new(),
            metrics,
        })
    }

    fn take_close(&self) -> Option<(CloseCode, String)> {
        self.close.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// The next queued message, uncounted from the send buffer.
    fn pop(&self) -> Option<Arc<str>> {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let text = q.pop_front();
        match &text {
            Some(t) => {
                self.queued.fetch_sub(t.len(), Ordering::AcqRel);
            }
            None if q.capacity() > KEEP_QUEUE => *q = VecDeque::new(),
            None => {}
        }
        text
    }
}

#[cfg(test)]
impl ConnOutbox {
    pub(crate) fn pop_for_tests(&self) -> Option<Arc<str>> {
        self.pop()
    }

    pub(crate) fn close_requested_for_tests(&self) -> bool {
        self.close_requested.load(Ordering::Acquire)
    }
}

impl Outbox for ConnOutbox {
    fn send(&self, text: Arc<str>) -> bool {
        let n = text.len();
        if self.queued.fetch_add(n, Ordering::AcqRel) + n > self.limit {
            self.queued.fetch_sub(n, Ordering::AcqRel);
            return false;
        }
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(text);
        self.notify.notify_one();
        true
    }

    fn close(&self, code: CloseCode, reason: &str) {
        if self.close_requested.swap(true, Ordering::AcqRel) {
            return;
        }
        if code == CloseCode::TooSlow {
            self.metrics.queue_drops.fetch_add(1, Ordering::Relaxed);
            self.metrics.reject("slow-reader");
        }
        *self.close.lock().unwrap_or_else(|e| e.into_inner()) = Some((code, reason.to_string()));
        self.notify.notify_one();
        self.closing.notify_one();
    }
}

/// How long a close frame (and the closing handshake) may wait for a reader.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Everything a connection needs besides its socket.
pub struct ConnContext {
    pub hub: Arc<Hub>,
    /// The rooms shared through Redis, when configured: then they, not `hub`, hold the
    /// peer (the hub still counts addresses and metrics).
    pub shared: Option<Arc<SharedRooms>>,
    /// The peer's epoch in the shared rooms.
    pub epoch: u64,
    pub room: String,
    pub peer_id: String,
    pub conn: u64,
    pub addr: IpAddr,
    pub outbox: Arc<ConnOutbox>,
    pub heartbeat: Duration,
    pub max_message: usize,
    /// Fresh ICE servers and their TTL for this peer.
    pub ice: Arc<dyn Fn() -> (Value, u64) + Send + Sync>,
    pub ice_ttl: u64,
}

impl std::fmt::Debug for ConnContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnContext")
            .field("room", &self.room)
            .field("peer_id", &self.peer_id)
            .field("conn", &self.conn)
            .finish_non_exhaustive()
    }
}

fn close_message(code: CloseCode, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code: code.code(),
        reason: reason.into(),
    }))
}

/// How the server's own close codes end a peer's membership.
fn ended_by(code: CloseCode) -> Ended {
    match code {
        CloseCode::Left => Ended::Left,
        CloseCode::Replaced => Ended::Replaced,
        CloseCode::Kicked | CloseCode::RoomClosed => Ended::Kicked,
        // Draining: the client reconnects elsewhere with its resume token.
        CloseCode::Draining => Ended::Dropped,
        CloseCode::BinaryFrame
        | CloseCode::TooLarge
        | CloseCode::TooSlow
        | CloseCode::RateLimited
        | CloseCode::ResumeRefused => Ended::Error,
    }
}

/// Runs the connection until it ends, then tells the hub how.
pub async fn drive<S, R, E>(mut sink: S, stream: R, ctx: ConnContext)
where
    S: Sink<Message> + Unpin,
    R: Stream<Item = Result<Message, E>> + Unpin,
    E: std::fmt::Display,
{
    // Peekable: the shared rooms take the frames already waiting along with one.
    let mut stream = stream.peekable();
    let mut last_rx = Instant::now();
    // Whether the hub has been told how the connection ended.
    let mut reported = false;
    // Each connection's pings start at a random point of the first interval, so thousands of
    // connections opened together do not ping (and get ponged) in one burst.
    let first = ctx.heartbeat.mul_f64(0.5 + rand::random::<f64>() / 2.0);
    let mut next_ping = tokio::time::Instant::now() + first;
    // Fresh credentials at about half their lifetime, before the last ones expire.
    let ice_every = Duration::from_secs((ctx.ice_ttl / 2).max(1));
    let mut next_ice = tokio::time::Instant::now() + ice_every;
    // One timer for both, pinned inside this future: no timer allocations of their own on
    // every idle connection.
    let timer = tokio::time::sleep_until(next_ping.min(next_ice));
    tokio::pin!(timer);
    let hub = Arc::clone(&ctx.hub);
    let ended = loop {
        tokio::select! {
            biased;
            () = ctx.outbox.notify.notified() => {
                if let Some((code, reason)) = ctx.outbox.take_close() {
                    // The hub hears first: a slow reader may never take the close frame.
                    let ended = ended_by(code);
                    report(&ctx, ended).await;
                    reported = true;
                    let _ = tokio::time::timeout(CLOSE_WAIT, sink.send(close_message(code, &reason))).await;
                    break ended;
                }
                // Whatever is queued goes out in one write: one system call for a burst (20
                // candidates) instead of one per message; past 64 the other branches get a
                // turn first and this one is woken again for the rest.
                let mut ok = true;
                let mut batched = 0;
                while ok && batched < 64 {
                    let Some(text) = ctx.outbox.pop() else { break };
                    ok = sink.feed(Message::Text(text.as_ref().into())).await.is_ok();
                    batched += 1;
                }
                if batched == 64 {
                    ctx.outbox.notify.notify_one();
                }
                if batched > 0 {
                    // A close requested meanwhile ends the wait (the notify branch takes it).
                    let flushed = tokio::select! {
                        biased;
                        () = ctx.outbox.closing.notified() => {
                            ctx.outbox.notify.notify_one();
                            true
                        }
                        r = sink.flush() => ok && r.is_ok(),
                    };
                    if !flushed {
                        break Ended::Dropped;
                    }
                }
            }
            frame = stream.next() => {
                last_rx = Instant::now();
                match frame {
                    Some(Ok(Message::Text(text))) => {
                        if text.len() > ctx.max_message {
                            hub.metrics.reject("too-large");
                            let _ = sink.send(close_message(CloseCode::TooLarge, "message too large")).await;
                            break Ended::Error;
                        }
                        let ice = Arc::clone(&ctx.ice);
                        let verdict = match &ctx.shared {
                            // Boxed: the shared path's future lives only while a message
                            // is handled, not inside every idle connection's future.
                            Some(s) => {
                                // Frames already read and waiting go into the same script
                                // (up to 64): one round trip to Redis for a burst of
                                // candidates, still in order.
                                let mut batch = vec![text];
                                while batch.len() < 64 {
                                    let more = std::pin::Pin::new(&mut stream)
                                        .next_if(|f| matches!(f, Ok(Message::Text(t)) if t.len() <= ctx.max_message))
                                        .now_or_never();
                                    let Some(Some(Ok(Message::Text(t)))) = more else { break };
                                    last_rx = Instant::now();
                                    batch.push(t);
                                }
                                Box::pin(s.messages(&ctx.room, &ctx.peer_id, ctx.conn, ctx.epoch, ctx.addr, &batch, &*ice)).await
                            }
                            None => hub.message(&ctx.room, &ctx.peer_id, ctx.conn, text.as_str(), Instant::now(), &*ice),
                        };
                        match verdict {
                            Verdict::Continue => {}
                            Verdict::Close(code) => {
                                // Whatever the hub queued before (e.g. the last error) goes first.
                                while let Some(t) = ctx.outbox.pop() {
                                    let _ = sink.send(Message::Text(t.as_ref().into())).await;
                                }
                                let reason = if code == CloseCode::Left { "left" } else { "rate limit exceeded repeatedly" };
                                let _ = sink.send(close_message(code, reason)).await;
                                // After `leave` the hub has removed the peer already.
                                break ended_by(code);
                            }
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        hub.metrics.message("binary");
                        let _ = sink.send(close_message(CloseCode::BinaryFrame, "binary frames are not accepted")).await;
                        break Ended::Error;
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Close(frame))) => {
                        let code = frame.as_ref().map_or(1005, |f| f.code);
                        // tungstenite answers the close frame itself.
                        // 1005 is a close frame without a code (what a browser's close()
                        // sends): as deliberate as 1000.
                        break if matches!(code, 1000 | 1001 | 1005) { Ended::Left } else { Ended::Dropped };
                    }
                    Some(Err(e)) => {
                        let text = e.to_string();
                        if text.contains("limit exceeded") || text.contains("too long") || text.contains("too big") {
                            hub.metrics.reject("too-large");
                            let _ = sink.send(close_message(CloseCode::TooLarge, "message too large")).await;
                            break Ended::Error;
                        }
                        break Ended::Dropped;
                    }
                    None => break Ended::Dropped,
                }
            }
            () = &mut timer => {
                let now = tokio::time::Instant::now();
                if now >= next_ping {
                    if last_rx.elapsed() >= ctx.heartbeat * 2 {
                        break Ended::Dropped;
                    }
                    if sink.send(Message::Ping(Default::default())).await.is_err() {
                        break Ended::Dropped;
                    }
                    next_ping = now + ctx.heartbeat;
                }
                if now >= next_ice {
                    let (list, ttl) = (ctx.ice)();
                    match &ctx.shared {
                        Some(s) => Box::pin(s.push_ice(&ctx.room, &ctx.peer_id, ctx.epoch, &list, ttl)).await,
                        None => hub.push_ice(&ctx.room, &ctx.peer_id, ctx.conn, &list, ttl),
                    }
                    next_ice = now + ice_every;
                }
                timer.as_mut().reset(next_ping.min(next_ice));
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_WAIT, sink.close()).await;
    tracing::info!(room = %ctx.room, peer = %ctx.peer_id, ?ended, "peer disconnected");
    // `leave` already removed the peer (reported as Replaced so nothing happens twice).
    if !reported {
        report(&ctx, ended).await;
    }
}

/// Tells the hub (or the shared rooms) how the connection ended.
async fn report(ctx: &ConnContext, ended: Ended) {
    match &ctx.shared {
        Some(s) => Box::pin(s.ended(&ctx.room, &ctx.peer_id, ctx.conn, ctx.epoch, ended)).await,
        None => ctx
            .hub
            .ended(&ctx.room, &ctx.peer_id, ctx.conn, ended, Instant::now()),
    }
}

#[cfg(test)]
mod tests {
    //! The connection driver over in-memory channels instead of a socket.

    use super::*;
    use crate::hub::HubConfig;
    use futures_channel::mpsc as fmpsc;
    use serde_json::json;

    async fn start(
        hub: &Arc<Hub>,
    ) -> (
        fmpsc::UnboundedSender<Result<Message, String>>,
        fmpsc::UnboundedReceiver<Message>,
        tokio::task::JoinHandle<()>,
    ) {
        let (to_server, stream) = fmpsc::unbounded::<Result<Message, String>>();
        let (sink, from_server) = fmpsc::unbounded::<Message>();
        let outbox = ConnOutbox::new(1 << 20, Arc::clone(&hub.metrics));
        hub.reserve("r").unwrap();
        let j = hub.join(
            "r",
            json!({}),
            "127.0.0.1".parse().unwrap(),
            outbox.clone(),
            (&json!([]), 60),
        );
        let ctx = ConnContext {
            hub: Arc::clone(hub),
            shared: None,
            epoch: 0,
            room: "r".into(),
            peer_id: j.peer_id,
            conn: j.conn,
            addr: "127.0.0.1".parse().unwrap(),
            outbox,
            heartbeat: Duration::from_secs(60),
            max_message: 100,
            ice: Arc::new(|| (json!([]), 60)),
            ice_ttl: 60,
        };
        let task = tokio::spawn(drive(sink, stream, ctx));
        (to_server, from_server, task)
    }

    fn text(m: &Message) -> Value {
        match m {
            Message::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    fn close_code(m: &Message) -> u16 {
        match m {
            Message::Close(Some(f)) => f.code,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_slow_reader_is_closed_and_counted_once() {
        let metrics = Arc::new(SignalMetrics::default());
        let outbox = ConnOutbox::new(8, Arc::clone(&metrics));
        outbox.close(CloseCode::TooSlow, "too slow to read");
        // The connection takes the request, and more messages overflow before it reports.
        assert_eq!(outbox.take_close().map(|(c, _)| c), Some(CloseCode::TooSlow));
        outbox.close(CloseCode::TooSlow, "too slow to read");
        outbox.close(CloseCode::Kicked, "kicked by admin");
        assert_eq!(outbox.take_close(), None);
        assert_eq!(metrics.queue_drops.load(Ordering::Relaxed), 1);
        assert_eq!(metrics.rejects("slow-reader"), 1);
    }

    #[tokio::test]
    async fn ping_pong_and_close_codes_over_channels() {
        let hub = Arc::new(Hub::new(
            HubConfig::default(),
            Arc::new(SignalMetrics::default()),
            Box::new(rand::random::<u128>),
        ));
        let (tx, mut rx, task) = start(&hub).await;
        assert_eq!(text(&rx.next().await.unwrap())["type"], "welcome");
        tx.unbounded_send(Ok(Message::Text(r#"{"type":"ping"}"#.into())))
            .unwrap();
        assert_eq!(text(&rx.next().await.unwrap())["type"], "pong");
        tx.unbounded_send(Ok(Message::Text(
            format!(r#"{{"type":"message","data":"{}"}}"#, "x".repeat(200)).into(),
        )))
        .unwrap();
        assert_eq!(close_code(&rx.next().await.unwrap()), 1009);
        task.await.unwrap();
        assert_eq!(hub.counts(), (0, 0), "closed for an error: no resume");

        let (tx, mut rx, task) = start(&hub).await;
        rx.next().await.unwrap();
        tx.unbounded_send(Ok(Message::Binary(vec![1].into()))).unwrap();
        assert_eq!(close_code(&rx.next().await.unwrap()), 1003);
        task.await.unwrap();

        // A dropped stream keeps the peer for its grace.
        let (tx, mut rx, task) = start(&hub).await;
        rx.next().await.unwrap();
        drop(tx);
        task.await.unwrap();
        assert_eq!(hub.counts(), (1, 1));
    }

    /// Admin closes reach the socket with their code, and the hub's removal (at once) and
    /// the connection's later report (`Ended::Kicked`) count as one.
    #[tokio::test]
    async fn kick_and_room_close_reach_the_socket_and_remove_once() {
        let hub = Arc::new(Hub::new(
            HubConfig::default(),
            Arc::new(SignalMetrics::default()),
            Box::new(rand::random::<u128>),
        ));
        let gauges = |hub: &Hub| {
            (
                hub.metrics.rooms.load(Ordering::Relaxed),
                hub.metrics.peers.load(Ordering::Relaxed),
            )
        };
        let (_ta, mut ra, task_a) = start(&hub).await;
        assert_eq!(text(&ra.next().await.unwrap())["type"], "welcome");
        let (_tb, mut rb, task_b) = start(&hub).await;
        let b_id = text(&rb.next().await.unwrap())["peer_id"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(text(&ra.next().await.unwrap())["type"], "peer-joined");

        assert!(hub.kick_peer("r", &b_id));
        assert_eq!(close_code(&rb.next().await.unwrap()), 4003);
        task_b.await.unwrap();
        let left = text(&ra.next().await.unwrap());
        assert_eq!(
            (left["type"].as_str(), left["reason"].as_str()),
            (Some("peer-left"), Some("kicked"))
        );
        assert_eq!(hub.counts(), (1, 1));
        assert_eq!(gauges(&hub), (1, 1));

        assert_eq!(hub.close_room("r"), 1);
        // The very next frame is the close: no second peer-left for b.
        assert_eq!(close_code(&ra.next().await.unwrap()), 4009);
        task_a.await.unwrap();
        assert_eq!(hub.counts(), (0, 0));
        assert_eq!(gauges(&hub), (0, 0));
    }
}
