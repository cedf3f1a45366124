//! The accept loop: count, refuse or hand to hyper, and shut down gracefully.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::counted::CountedStream;
use crate::limits::{ConnectionLimits, Refusal};
use crate::metrics::ListenerMetrics;

/// A complete, short HTTP answer with a JSON error body.
fn canned(status: &str, retry_after: u32, code: &str, message: &str) -> Vec<u8> {
    let body = format!("{{\"error\":{{\"code\":\"{code}\",\"message\":\"{message}\"}}}}");
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\nretry-after: {retry_after}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

static TOO_MANY_FROM_ADDRESS: LazyLock<Vec<u8>> = LazyLock::new(|| {
    canned(
        "429 Too Many Requests",
        10,
        "too-many-connections",
        "too many connections from this address",
    )
});
static LISTENER_FULL: LazyLock<Vec<u8>> = LazyLock::new(|| {
    canned(
        "503 Service Unavailable",
        5,
        "server-busy",
        "too many connections; try again",
    )
});

/// The answer to a connection past a cap, written without waiting (a client that does
/// not read it just loses it); then the socket is closed.
fn refusal_bytes(why: Refusal) -> &'static [u8] {
    match why {
        Refusal::PerAddress => &TOO_MANY_FROM_ADDRESS,
        Refusal::Total => &LISTENER_FULL,
    }
}

/// Refusals answered at once at most: each holds its descriptor for up to
/// [`REFUSAL_LINGER`]; past this many, a refused connection is just closed.
const MAX_LINGERING_REFUSALS: usize = 64;
/// How long a refused connection is kept to let the client read the answer.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// Answers a refused connection and closes it. The client's request is read and thrown
/// away meanwhile: closing a socket with unread input sends a reset, which can destroy
/// the answer before the client reads it.
fn refuse(stream: TcpStream, why: Refusal, lingering: &Arc<Semaphore>) {
    let Ok(slot) = Arc::clone(lingering).try_acquire_owned() else {
        let _ = stream.try_write(refusal_bytes(why));
        return;
    };
    tokio::spawn(async move {
        let _slot = slot;
        let mut stream = stream;
        let _ = tokio::time::timeout(REFUSAL_LINGER, async {
            stream.write_all(refusal_bytes(why)).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 1024];
            while stream.read(&mut sink).await? > 0 {}
            Ok::<(), io::Error>(())
        })
        .await;
    });
}

/// Serves `router` on `listener` under `limits` until `shutdown`, then stops accepting,
/// asks open connections to finish their current request and waits for them. Handlers
/// see the client address as [`ConnectInfo<SocketAddr>`]. Upgraded connections
/// (WebSocket) belong to their handlers from then on, still counted until they close.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Arc<ConnectionLimits>,
    metrics: Arc<ListenerMetrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    accept_loop(
        listener,
        router,
        limits,
        metrics,
        shutdown,
        |stream, remote, conn| {
            tokio::spawn(conn.serve(stream, remote, Protocol::Http1));
        },
    )
    .await
}

/// The HTTP version a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// HTTP/1.1, with upgrades (WebSocket).
    Http1,
    /// HTTP/2 (agreed by ALPN).
    H2,
}

/// What serving one accepted connection needs: the router, the listener's counters and
/// the shutdown handshake with the accept loop (it waits until every `done` is dropped).
#[derive(Clone)]
pub(crate) struct ConnContext {
    router: Router,
    metrics: Arc<ListenerMetrics>,
    pub(crate) header_timeout: Duration,
    stop: watch::Receiver<bool>,
    done: watch::Receiver<()>,
}

impl ConnContext {
    /// Counts a connection that did not send its first bytes within the header timeout.
    pub(crate) fn count_header_timeout(&self) {
        self.metrics.header_timeouts.fetch_add(1, Relaxed);
    }

    /// Serves HTTP on `io` until the client is done or the listener shuts down (then the
    /// request in progress finishes first).
    pub(crate) async fn serve<I>(self, io: I, remote: SocketAddr, protocol: Protocol)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let router = self.router;
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(remote));
            let mut router = router.clone();
            async move { tower_service::Service::call(&mut router, req).await }
        });
        let mut stop = self.stop;
        let io = TokioIo::new(io);
        let result = match protocol {
            Protocol::Http1 => {
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(self.header_timeout)
                    .serve_connection(io, service)
                    .with_upgrades();
                tokio::pin!(conn);
                loop {
                    tokio::select! {
                        r = conn.as_mut() => break r,
                        _ = stop.wait_for(|s| *s) => conn.as_mut().graceful_shutdown(),
                    }
                }
            }
            Protocol::H2 => {
                let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .serve_connection(io, service);
                tokio::pin!(conn);
                loop {
                    tokio::select! {
                        r = conn.as_mut() => break r,
                        _ = stop.wait_for(|s| *s) => conn.as_mut().graceful_shutdown(),
                    }
                }
            }
        };
        if let Err(e) = result
            && e.is_timeout()
        {
            self.metrics.header_timeouts.fetch_add(1, Relaxed);
        }
        drop(self.done);
    }
}

/// Accepts until `shutdown`, admits each connection under `limits` (refusing past a cap),
/// and gives it to `on_conn` with a [`ConnContext`]; then waits for every connection's
/// context to be dropped.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    router: Router,
    limits: Arc<ConnectionLimits>,
    metrics: Arc<ListenerMetrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_conn: impl Fn(CountedStream, SocketAddr, ConnContext),
) -> io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, done_rx) = watch::channel(());
    let context = ConnContext {
        router,
        metrics: Arc::clone(&metrics),
        header_timeout: limits.limits().header_timeout,
        stop: stop_rx,
        done: done_rx,
    };
    let mut last_error_log: Option<Instant> = None;
    let lingering = Arc::new(Semaphore::new(MAX_LINGERING_REFUSALS));
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors (EMFILE/ENFILE) or a connection reset before it was
                    // accepted: wait a moment instead of spinning, log once a second at most.
                    metrics.accept_errors.fetch_add(1, Relaxed);
                    if last_error_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        last_error_log = Some(Instant::now());
                        tracing::warn!(error = %e, "accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let permit = match limits.admit(remote.ip()) {
            Ok(p) => p,
            Err(why) => {
                metrics.refused(why);
                refuse(stream, why, &lingering);
                continue;
            }
        };
        metrics.accepted.fetch_add(1, Relaxed);
        // Signaling is small messages both ways: Nagle's algorithm would hold each one
        // back until the previous is acknowledged (40 ms with delayed ACKs).
        let _ = stream.set_nodelay(true);
        on_conn(CountedStream::new(stream, permit), remote, context.clone());
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(context);
    done_tx.closed().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_complete_responses() {
        for why in [Refusal::PerAddress, Refusal::Total] {
            let text = std::str::from_utf8(refusal_bytes(why)).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(len, body.len(), "{text}");
            assert!(body.starts_with("{\"error\":{\"code\":"));
        }
    }
}
