//! The turn role: callbox's STUN/TURN relay over UDP.
//!
//! Shape: the binary binds the listeners ([`UdpListeners::bind`], N SO_REUSEPORT sockets per
//! address, one per worker) and calls [`TurnRole::run`]. Each worker is an OS thread with
//! a mio loop that owns a `turn_proto::Server` shard; the kernel hashes each client's
//! 5-tuple to one socket, so one worker sees all of a client's packets and no state is
//! shared on the packet path.
//!
//! Architecture invariant: the data path depends only on `callbox-core` and `turn-proto`.
//! The rest of the appliance reaches it through [`TurnControl`] (credentials, bans,
//! kicks, the live allocation list), the peer policy snapshot of [`TurnSettings`] and the
//! event channel (allocation history), none of which can block it: control messages and
//! snapshots are read between batches, and answered on oneshot channels.

pub mod batch;
mod events;
pub mod metrics;
pub mod net;
pub mod reservations;
mod settings;
mod stream;
mod worker;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use callbox_core::metrics::{CONTENT_TYPE as METRICS_CONTENT_TYPE, MetricsRegistry};
use callbox_core::{Cidr, PeerPolicy};
use tokio::sync::oneshot;
use turn_proto::server::{Quotas, ServerConfig};
use turn_proto::{RelayPorts, Server};

pub use events::{AllocId, AllocationEvent, CloseReason, Traffic, Transport};
pub use metrics::Metrics;
pub use reservations::Reservations;
pub use settings::{advertised_ipv4, peer_policy_for, workers};
pub use stream::{StreamSettings, TcpListeners, TlsSettings};
pub use turn_proto::server::{AllocationInfo, Credentials};
pub use worker::Control;
use worker::{Worker, WorkerHandle, WorkerParts};

/// Capacity of the event channel; events past it are dropped and counted.
pub const EVENT_QUEUE: usize = 65_536;

/// Everything the role needs besides its sockets.
#[derive(Debug, Clone)]
pub struct TurnSettings {
    /// Shard template; `shard` is set per worker.
    pub server: ServerConfig,
    pub workers: usize,
    pub port_range: (u16, u16),
    pub credentials: Arc<ArcSwap<Credentials>>,
    /// The peer policy; a policy stored here is picked up by the workers between batches
    /// and judged against live permissions at their next packet.
    pub policy: Arc<ArcSwap<PeerPolicy>>,
    pub quotas: Arc<Quotas>,
    /// How long an EVEN-PORT reservation is kept, and how many are held at once.
    pub reservation_lifetime: Duration,
    pub max_reservations: usize,
    /// Limits of the `/metrics`, `/healthz`, `/readyz` listener.
    pub http: callbox_http::Limits,
    /// Caps and timeouts of STUN/TURN over TCP.
    pub streams: StreamSettings,
}

/// The bound UDP listeners: for each address, one socket per worker.
#[derive(Debug)]
pub struct UdpListeners {
    addrs: Vec<SocketAddr>,
    sockets: Vec<Vec<std::net::UdpSocket>>,
}

impl UdpListeners {
    /// Binds `workers` SO_REUSEPORT sockets on each address. Port 0 picks one port per
    /// address, shared by its sockets.
    pub fn bind(addrs: &[SocketAddr], workers: usize) -> io::Result<Self> {
        let mut bound = Vec::new();
        let mut sockets = Vec::new();
        for addr in addrs {
            let mut group = Vec::new();
            let mut actual = *addr;
            for _ in 0..workers.max(1) {
                let s = bind_reuseport(actual)?;
                actual = s.local_addr()?;
                group.push(s);
            }
            bound.push(actual);
            sockets.push(group);
        }
        Ok(Self {
            addrs: bound,
            sockets,
        })
    }

    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }
}

fn bind_reuseport(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_port(true)?;
    // Bigger kernel buffers absorb bursts; the kernel caps them at net.core.*mem_max.
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// How long the awaitable [`TurnControl`] calls wait for the workers, all together; a
/// worker that has not answered by then (or is not running) is left out of the answer.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(1);

/// The running relay's control surface for the other roles.
#[derive(Debug, Clone)]
pub struct TurnControl {
    workers: Vec<WorkerHandle>,
    credentials: Arc<ArcSwap<Credentials>>,
    policy: Arc<ArcSwap<PeerPolicy>>,
}

impl TurnControl {
    /// Installs new credentials (secrets, static users, bans) and wakes the workers, which
    /// pick them up at once. Every control sent after this call is handled with them in
    /// force: for a ban, call this with the network in [`Credentials::banned`], then
    /// [`TurnControl::kick_clients`].
    pub fn set_credentials(&self, c: Credentials) {
        self.credentials.store(Arc::new(c));
        self.wake_all();
    }

    /// Installs a new peer policy (a configuration reload) and wakes the workers: live
    /// permissions and channels are judged again at their next packet.
    pub fn set_policy(&self, policy: PeerPolicy) {
        self.policy.store(Arc::new(policy));
        self.wake_all();
    }

    fn wake_all(&self) {
        for w in &self.workers {
            let _ = w.waker.wake();
        }
    }

    /// Closes every allocation of a user id (a ban or a removed user). Fire and forget;
    /// the Closed events (reason kicked) tell what was closed.
    pub fn kick_user(&self, user: &str) {
        for w in &self.workers {
            w.send(Control::KickUser(user.to_string()));
        }
    }

    /// Closes one allocation (asking only the worker that owns it) and returns whether it
    /// existed. False too when that worker does not answer within [`CONTROL_TIMEOUT`].
    pub async fn close_allocation(&self, id: AllocId) -> bool {
        let Some(w) = self.owner(id) else {
            return false;
        };
        let (tx, rx) = oneshot::channel();
        w.send(Control::Close(id, tx));
        matches!(tokio::time::timeout(CONTROL_TIMEOUT, rx).await, Ok(Ok(true)))
    }

    /// Closes every live allocation whose client address is in one of `nets` (a ban of a
    /// network; new Allocates from it are refused through [`Credentials::banned`]). Fire
    /// and forget; the Closed events (reason kicked) tell what was closed.
    pub fn kick_clients(&self, nets: Vec<Cidr>) {
        for w in &self.workers {
            w.send(Control::KickClients(nets.clone()));
        }
    }

    /// Hands a TLS connection from the one TLS port (its first bytes were STUN) to a
    /// worker, which serves it from then on. Workers are picked by the client's port, so
    /// connections spread over them as SO_REUSEPORT spreads the others.
    pub fn adopt(&self, conn: callbox_http::TlsHandoff) {
        let n = self.workers.len().max(1);
        if let Some(w) = self.workers.get(usize::from(conn.peer.port()) % n) {
            w.send(Control::Adopt(Box::new(conn)));
        }
    }

    /// The live allocations of every worker, sorted by id. A worker that does not answer
    /// within [`CONTROL_TIMEOUT`] is left out. Must be called from a tokio runtime.
    pub async fn allocations(&self) -> Vec<AllocationInfo> {
        let mut all: Vec<AllocationInfo> = self.ask_all(Control::List).await.into_iter().flatten().collect();
        all.sort_by_key(|a| a.id);
        all
    }

    /// The worker owning an allocation: ids carry their shard, which is the worker index.
    fn owner(&self, id: AllocId) -> Option<&WorkerHandle> {
        self.workers.get(usize::from(id.shard()))
    }

    /// Sends one question to every worker and collects the answers that arrive before one
    /// shared deadline.
    async fn ask_all<T>(&self, question: impl Fn(oneshot::Sender<T>) -> Control) -> Vec<T> {
        let deadline = tokio::time::Instant::now() + CONTROL_TIMEOUT;
        let pending: Vec<oneshot::Receiver<T>> = self
            .workers
            .iter()
            .map(|w| {
                let (tx, rx) = oneshot::channel();
                w.send(question(tx));
                rx
            })
            .collect();
        let mut answers = Vec::with_capacity(pending.len());
        for rx in pending {
            if let Ok(Ok(v)) = tokio::time::timeout_at(deadline, rx).await {
                answers.push(v);
            }
        }
        answers
    }
}

/// The turn role, ready to run.
#[derive(Debug)]
pub struct TurnRole {
    workers: Vec<(usize, PendingWorker)>,
    stop: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    control: TurnControl,
    ready: Arc<AtomicBool>,
    registry: Arc<MetricsRegistry>,
    http_limits: callbox_http::Limits,
}

/// A worker built but not yet running (its thread starts in `run`).
struct PendingWorker(Worker);

impl std::fmt::Debug for PendingWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Worker")
    }
}

impl TurnRole {
    /// Builds the workers over bound listeners; their counters go into `registry`, which
    /// the role's `/metrics` serves. `nonce_key` must be random.
    pub fn new(
        settings: TurnSettings,
        listeners: UdpListeners,
        tcp: TcpListeners,
        nonce_key: [u8; 32],
        registry: Arc<MetricsRegistry>,
    ) -> io::Result<(TurnRole, tokio::sync::mpsc::Receiver<AllocationEvent>)> {
        let n = settings.workers.max(1);
        let metrics = Arc::new(Metrics::new(n, Arc::clone(&settings.quotas)));
        metrics.register(&registry);
        let (events_tx, events_rx) = tokio::sync::mpsc::channel(EVENT_QUEUE);
        let stop = Arc::new(AtomicBool::new(false));
        let mut per_worker: Vec<Vec<std::net::UdpSocket>> = (0..n).map(|_| Vec::new()).collect();
        for group in listeners.sockets {
            for (i, s) in group.into_iter().enumerate() {
                per_worker[i % n].push(s);
            }
        }
        let mut tcp_per_worker: Vec<Vec<(std::net::TcpListener, Transport)>> =
            (0..n).map(|_| Vec::new()).collect();
        for (transport, group) in tcp.sockets {
            for (i, s) in group.into_iter().enumerate() {
                tcp_per_worker[i % n].push((s, transport));
            }
        }
        let mut tcp_per_worker = tcp_per_worker.into_iter();
        let now = std::time::Instant::now();
        let reservations = Arc::new(Reservations::new(
            Arc::clone(&settings.quotas),
            settings.reservation_lifetime,
            settings.max_reservations,
        ));
        let relay_ports = Arc::new(RelayPorts::new());
        let mut workers = Vec::new();
        let mut handles = Vec::new();
        for (index, sockets) in per_worker.into_iter().enumerate() {
            let mut cfg = settings.server.clone();
            cfg.shard = index as u16;
            let server = Server::new(
                cfg,
                nonce_key,
                settings.credentials.load_full(),
                settings.policy.load_full(),
                Arc::clone(&settings.quotas),
                now,
            )
            .with_relay_ports(Arc::clone(&relay_ports));
            let (w, h) = Worker::new(WorkerParts {
                index,
                server,
                listeners: sockets,
                tcp_listeners: tcp_per_worker.next().unwrap_or_default(),
                streams: settings.streams.clone(),
                port_range: settings.port_range,
                stop: Arc::clone(&stop),
                credentials: Arc::clone(&settings.credentials),
                policy: Arc::clone(&settings.policy),
                events: events_tx.clone(),
                metrics: Arc::clone(&metrics),
                reservations: Arc::clone(&reservations),
            })?;
            workers.push((index, PendingWorker(w)));
            handles.push(h);
        }
        let control = TurnControl {
            workers: handles,
            credentials: settings.credentials,
            policy: settings.policy,
        };
        Ok((
            TurnRole {
                workers,
                stop,
                metrics,
                control,
                ready: Arc::new(AtomicBool::new(false)),
                registry,
                http_limits: settings.http,
            },
            events_rx,
        ))
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    pub fn control(&self) -> TurnControl {
        self.control.clone()
    }

    /// True while the workers run (for `/readyz`).
    pub fn ready_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.ready)
    }

    /// Runs the workers, and `/metrics`, `/healthz` and `/readyz` on `http` when given,
    /// until `shutdown` resolves or a worker fails; the HTTP listener stops with them.
    pub async fn run(
        self,
        http: Option<tokio::net::TcpListener>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> io::Result<()> {
        let (http_stop, http_stopped) = oneshot::channel::<()>();
        let http_task = http.map(|listener| {
            let router = http_router(Arc::clone(&self.registry), Arc::clone(&self.ready));
            let limits = callbox_http::ConnectionLimits::new(self.http_limits);
            let metrics = Arc::new(callbox_http::ListenerMetrics::default());
            tokio::spawn(callbox_http::serve(
                listener,
                router,
                limits,
                metrics,
                async move {
                    let _ = http_stopped.await;
                },
            ))
        });
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut threads = Vec::new();
        for (index, PendingWorker(w)) in self.workers {
            let done = done_tx.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("turn-worker-{index}"))
                    .spawn(move || {
                        let r = w.run();
                        let _ = done.send((index, r.as_ref().err().map(|e| e.to_string())));
                        r
                    })?,
            );
        }
        drop(done_tx);
        self.ready.store(true, Ordering::Relaxed);
        tracing::info!(workers = threads.len(), "turn role running");
        let failure = tokio::select! {
            () = shutdown => None,
            Some((index, err)) = done_rx.recv() => Some(format!("worker {index} stopped: {}", err.unwrap_or_default())),
        };
        self.ready.store(false, Ordering::Relaxed);
        self.stop.store(true, Ordering::Relaxed);
        for w in &self.control.workers {
            let _ = w.waker.wake();
        }
        let joined = tokio::task::spawn_blocking(move || {
            threads
                .into_iter()
                .map(|t| t.join())
                .filter_map(|r| match r {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(_) => Some("worker panicked".to_string()),
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let _ = http_stop.send(());
        let http_failure = match http_task {
            Some(task) => match task.await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(format!("HTTP listener: {e}")),
                Err(e) => Some(format!("HTTP listener: {e}")),
            },
            None => None,
        };
        match failure.or_else(|| joined.into_iter().next()).or(http_failure) {
            Some(msg) => Err(io::Error::other(msg)),
            None => Ok(()),
        }
    }
}

/// `/metrics` (everything in `registry`), `/healthz` and `/readyz` of the turn role.
pub fn http_router(registry: Arc<MetricsRegistry>, ready: Arc<AtomicBool>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let text = registry.encode();
                async move { ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], text) }
            }),
        )
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.load(Ordering::Relaxed);
                async move {
                    if ready {
                        (StatusCode::OK, "ready\n").into_response()
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
                    }
                }
            }),
        )
}

impl UdpListeners {
    /// One set of listeners from several already bound (each by [`UdpListeners::bind`]).
    pub fn merge(parts: Vec<UdpListeners>) -> UdpListeners {
        let mut out = UdpListeners {
            addrs: Vec::new(),
            sockets: Vec::new(),
        };
        for p in parts {
            out.addrs.extend(p.addrs);
            out.sockets.extend(p.sockets);
        }
        out
    }
}
