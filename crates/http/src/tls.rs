//! HTTPS listeners, and the one TLS port that also carries TURN.
//!
//! Each admitted connection gets a handshake slot (bounded across the process; past the
//! bound it is closed at once) and a deadline for its handshake. Then ALPN decides: `h2`
//! is served as HTTP/2, `http/1.1` as HTTP/1.1 (WebSocket upgrades included), `stun.turn`
//! goes to TURN. Without ALPN, an HTTPS-only listener serves HTTP/1.1, and the one TLS port
//! reads the first decrypted bytes (within the header timeout) and routes by them
//! ([`callbox_tls::sniff`]): browsers' TURN/TLS clients send no ALPN.
//!
//! A connection for TURN leaves the async world whole: its socket (back in blocking-free
//! std form), its rustls state, the plaintext read so far and its connection permit go to
//! the turn role's worker through [`StunHandoff`], so nothing is decrypted twice and the
//! connection stays counted on this listener until it closes.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use callbox_tls::{Alpn, HandshakeLimit, Sniff, TlsMetrics, sniff};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::counted::CountedStream;
use crate::limits::{ConnectionLimits, Permit};
use crate::metrics::ListenerMetrics;
use crate::serve::{ConnContext, Protocol, accept_loop};

/// A TLS connection whose first bytes were STUN (or whose ALPN was `stun.turn`), on its
/// way to the turn role.
#[derive(Debug)]
pub struct TlsHandoff {
    /// The socket, non-blocking.
    pub stream: std::net::TcpStream,
    pub peer: SocketAddr,
    /// The TLS state after the handshake (and after the plaintext in `prefix`).
    pub tls: callbox_tls::rustls::ServerConnection,
    /// Plaintext already read from the connection.
    pub prefix: Vec<u8>,
    /// The connection's place under this listener's caps.
    pub permit: Permit,
}

/// Where TURN connections of the one TLS port go.
pub type StunHandoff = Arc<dyn Fn(TlsHandoff) + Send + Sync>;

/// The TLS side of a listener.
#[derive(Clone)]
pub struct TlsServe {
    /// The server configuration (certificate resolver and offered ALPN names).
    pub config: Arc<callbox_tls::rustls::ServerConfig>,
    pub handshakes: HandshakeLimit,
    pub metrics: Arc<TlsMetrics>,
    /// The one TLS port: where STUN goes. `None` for an HTTPS-only listener; on the one
    /// port without a turn role in the process, STUN connections are closed (counted).
    pub stun: Option<Option<StunHandoff>>,
}

impl fmt::Debug for TlsServe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsServe")
            .field("handshakes", &self.handshakes)
            .field("one_port", &self.stun.is_some())
            .finish_non_exhaustive()
    }
}

/// As [`crate::serve`], over TLS.
pub async fn serve_tls(
    listener: TcpListener,
    router: Router,
    limits: Arc<ConnectionLimits>,
    metrics: Arc<ListenerMetrics>,
    tls: TlsServe,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let acceptor = TlsAcceptor::from(Arc::clone(&tls.config));
    accept_loop(
        listener,
        router,
        limits,
        metrics,
        shutdown,
        move |stream, remote, conn| {
            let Some(slot) = tls.handshakes.try_acquire() else {
                TlsMetrics::count(&tls.metrics.handshakes_refused);
                return;
            };
            let (acceptor, tls) = (acceptor.clone(), tls.clone());
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(tls.handshakes.timeout, acceptor.accept(stream)).await;
                drop(slot);
                let stream = match handshake {
                    Ok(Ok(s)) => s,
                    Ok(Err(_)) => return TlsMetrics::count(&tls.metrics.handshakes_failed),
                    Err(_) => return TlsMetrics::count(&tls.metrics.handshake_timeouts),
                };
                TlsMetrics::count(&tls.metrics.handshakes_ok);
                route(stream, remote, conn, &tls).await;
            });
        },
    )
    .await
}

type TlsStream = tokio_rustls::server::TlsStream<CountedStream>;

/// Serves a connection after its handshake, by ALPN or by its first bytes.
async fn route(stream: TlsStream, remote: SocketAddr, conn: ConnContext, tls: &TlsServe) {
    let m = &tls.metrics;
    match (Alpn::of(stream.get_ref().1), &tls.stun) {
        (Alpn::H2, _) => {
            TlsMetrics::count(&m.to_http_by_alpn);
            conn.serve(stream, remote, Protocol::H2).await;
        }
        (Alpn::Http1, _) => {
            TlsMetrics::count(&m.to_http_by_alpn);
            conn.serve(stream, remote, Protocol::Http1).await;
        }
        (Alpn::Stun, Some(Some(handoff))) => {
            TlsMetrics::count(&m.to_turn_by_alpn);
            hand_off(stream, remote, Vec::new(), handoff);
        }
        (Alpn::Stun, _) => TlsMetrics::count(&m.turn_unavailable),
        // The validator has seen the challenge certificate; there is nothing to serve.
        (Alpn::Acme, _) => {}
        (Alpn::None, None) => conn.serve(stream, remote, Protocol::Http1).await,
        (Alpn::None, Some(handoff)) => {
            let mut stream = stream;
            let mut first = Vec::with_capacity(callbox_tls::SNIFF_BYTES);
            let read =
                tokio::time::timeout(conn.header_timeout, read_until_decided(&mut stream, &mut first)).await;
            match (read, handoff) {
                (Ok(Ok(Sniff::Stun)), Some(handoff)) => {
                    TlsMetrics::count(&m.to_turn_by_sniff);
                    hand_off(stream, remote, first, handoff);
                }
                (Ok(Ok(Sniff::Stun)), None) => TlsMetrics::count(&m.turn_unavailable),
                (Ok(Ok(_)), _) => {
                    TlsMetrics::count(&m.to_http_by_sniff);
                    conn.serve(Rewound::new(first, stream), remote, Protocol::Http1)
                        .await;
                }
                // The client went away or sent nothing in time: as a slow request head.
                (Ok(Err(_)), _) => {}
                (Err(_), _) => conn.count_header_timeout(),
            }
        }
    }
}

/// Reads until [`sniff`] can tell (or the stream ends: then what came is HTTP's to judge).
async fn read_until_decided(stream: &mut TlsStream, first: &mut Vec<u8>) -> io::Result<Sniff> {
    let mut buf = [0u8; callbox_tls::SNIFF_BYTES];
    loop {
        match sniff(first) {
            Sniff::NeedMore => {}
            decided => return Ok(decided),
        }
        let want = callbox_tls::SNIFF_BYTES - first.len();
        let n = stream.read(&mut buf[..want]).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        first.extend_from_slice(&buf[..n]);
    }
}

/// Gives a TURN connection to the turn role with everything it needs to go on.
fn hand_off(stream: TlsStream, peer: SocketAddr, prefix: Vec<u8>, handoff: &StunHandoff) {
    let (counted, tls) = stream.into_inner();
    let (tcp, permit) = counted.into_parts();
    let Ok(stream) = tcp.into_std() else {
        return;
    };
    handoff(TlsHandoff {
        stream,
        peer,
        tls,
        prefix,
        permit,
    });
}

/// A stream whose first bytes were already read: they are read again first.
struct Rewound<S> {
    first: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Rewound<S> {
    fn new(first: Vec<u8>, inner: S) -> Self {
        Self { first, pos: 0, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewound<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.first.len() {
            let n = buf.remaining().min(this.first.len() - this.pos);
            buf.put_slice(&this.first[this.pos..this.pos + n]);
            this.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewound<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rewound_reads_its_first_bytes_then_the_rest() {
        let inner: &[u8] = b"T / HTTP/1.1\r\n";
        let mut r = Rewound::new(b"GE".to_vec(), inner);
        let mut out = String::new();
        r.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "GET / HTTP/1.1\r\n");
    }
}
