//! `callbox serve`: derive the role settings from configuration, bind, run, join.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use callbox_core::credentials::{SecretSet, long_term_key};
use callbox_core::ice::{self, TurnEndpoints};
use callbox_core::{Config, PeerPolicy};
use callbox_turn::{EventRecord, TurnRole, TurnSettings, UdpListeners};
use turn_proto::Event;
use turn_proto::server::{Credentials, Quotas, RelayIp, ServerConfig};

use crate::settings::Loaded;
use crate::state;

const ROLES: &[&str] = &["signal", "turn"];

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The active secrets: from configuration, else the generated one in the state directory.
fn secrets(loaded: &Loaded) -> anyhow::Result<SecretSet> {
    let configured = loaded.config.auth.secrets.clone();
    let list = if configured.is_empty() {
        vec![state::shared_secret(&loaded.state_dir)?]
    } else {
        configured
    };
    SecretSet::new(list).context("no shared secret")
}

/// Relay addresses: (bind, advertise) for IPv4 and IPv6.
fn relay_addresses(config: &Config) -> (RelayIp, Option<RelayIp>) {
    let t = &config.turn;
    let detected = || IpAddr::V4(callbox_turn::net::detect_relay_ipv4());
    let (bind_v4, advertise_v4) = match t.external_ip {
        Some(ext) if ext.public.is_ipv4() => {
            let bind = ext.private.or(t.relay_ip).unwrap_or_else(detected);
            (bind, ext.public)
        }
        _ => {
            let bind = t.relay_ip.unwrap_or_else(detected);
            (bind, bind)
        }
    };
    let v6 = t.relay_ipv6.map(|ip| {
        let bind = IpAddr::V6(ip);
        let advertise = match t.external_ip {
            Some(ext) if ext.public.is_ipv6() => ext.public,
            _ => bind,
        };
        RelayIp { bind, advertise }
    });
    (
        RelayIp {
            bind: bind_v4,
            advertise: advertise_v4,
        },
        v6,
    )
}

fn credentials_snapshot(config: &Config, secrets: SecretSet) -> Credentials {
    let realm = &config.turn.realm;
    let static_users: HashMap<String, _> = config
        .auth
        .static_users
        .iter()
        .map(|u| (u.name.clone(), long_term_key(&u.name, realm, u.password.expose())))
        .collect();
    Credentials {
        secrets: Some(secrets),
        static_users,
    }
}

fn peer_policy(
    config: &Config,
    relay_v4: &RelayIp,
    relay_v6: Option<&RelayIp>,
    listeners: &[SocketAddr],
) -> PeerPolicy {
    let t = &config.turn;
    let mut own: Vec<IpAddr> = vec![relay_v4.bind, relay_v4.advertise];
    if let Some(v6) = relay_v6 {
        own.extend([v6.bind, v6.advertise]);
    }
    own.extend(listeners.iter().map(|a| a.ip()).filter(|ip| !ip.is_unspecified()));
    if let Some(ext) = t.external_ip {
        own.push(ext.public);
        own.extend(ext.private);
    }
    if listeners.iter().any(|a| a.ip().is_unspecified()) {
        own.extend(
            callbox_turn::net::interface_addresses()
                .into_iter()
                .map(|(_, ip)| ip),
        );
    }
    own.sort();
    own.dedup();
    let mut ports: Vec<(u16, u16)> = listeners.iter().map(|a| (a.port(), a.port())).collect();
    if let Some(http) = t.http_listen {
        ports.push((http.port(), http.port()));
    }
    ports.push((config.signal.listen.port(), config.signal.listen.port()));
    let mut relays = vec![relay_v4.bind, relay_v4.advertise];
    if let Some(v6) = relay_v6 {
        relays.extend([v6.bind, v6.advertise]);
    }
    PeerPolicy::new(t.allow_peers.clone(), t.deny_peers.clone(), own, ports)
        .with_relays(relays, (t.relay_port_min, t.relay_port_max))
}

fn endpoints(config: &Config, advertise: IpAddr, udp_port: u16) -> TurnEndpoints {
    TurnEndpoints {
        host: config
            .turn
            .public_host
            .clone()
            .unwrap_or_else(|| advertise.to_string()),
        udp_port: Some(udp_port),
        tcp_port: None,
        tls_port: None,
    }
}

/// `callbox credentials`: the ICE server JSON minted with the configured secret.
pub fn credentials(loaded: &Loaded, user: &str, ttl: Option<u64>) -> anyhow::Result<String> {
    anyhow::ensure!(
        callbox_core::credentials::valid_user_id(user),
        "--user must be 1-64 of A-Za-z0-9_.@-"
    );
    let secrets = secrets(loaded)?;
    let auth = &loaded.config.auth;
    let ttl = ttl
        .unwrap_or(auth.credential_ttl)
        .clamp(1, auth.max_credential_ttl);
    let (relay_v4, _) = relay_addresses(&loaded.config);
    let port = loaded.config.turn.listen.first().map_or(3478, |a| a.port());
    let list = ice::build(
        &endpoints(&loaded.config, relay_v4.advertise, port),
        &secrets,
        user,
        unix_now(),
        ttl,
    );
    Ok(serde_json::to_string_pretty(&list)?)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}

/// Logs allocation events and writes them to the store's history in batches, off the
/// relay's path: a slow or failing database costs history rows (logged), never relay time,
/// since the relay only ever `try_send`s into this channel.
async fn consume_events(
    mut rx: tokio::sync::mpsc::Receiver<EventRecord>,
    store: Option<Arc<std::sync::Mutex<callbox_store::Store>>>,
) {
    use callbox_store::HistoryEvent;
    let mut batch: Vec<HistoryEvent> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            got = rx.recv() => {
                let Some(r) = got else { break };
                let at = r.unix_time as i64;
                match r.event {
                    Event::Created { id, username, client, relay, lifetime } => {
                        tracing::info!(alloc = id.0, %username, %client, %relay, lifetime = lifetime.as_secs(), "allocation created");
                        batch.push(HistoryEvent::Created {
                            alloc_id: id.0 as i64,
                            username,
                            client: client.to_string(),
                            relay: relay.to_string(),
                            at,
                        });
                    }
                    Event::Refreshed { id, lifetime } => {
                        tracing::debug!(alloc = id.0, lifetime = lifetime.as_secs(), "allocation refreshed");
                    }
                    Event::Closed { id, reason, traffic } => {
                        tracing::info!(
                            alloc = id.0,
                            ?reason,
                            packets_to_peer = traffic.packets_to_peer,
                            bytes_to_peer = traffic.bytes_to_peer,
                            packets_to_client = traffic.packets_to_client,
                            bytes_to_client = traffic.bytes_to_client,
                            "allocation closed"
                        );
                        batch.push(HistoryEvent::Closed {
                            alloc_id: id.0 as i64,
                            at,
                            reason: format!("{reason:?}"),
                            packets_to_peer: traffic.packets_to_peer as i64,
                            bytes_to_peer: traffic.bytes_to_peer as i64,
                            packets_to_client: traffic.packets_to_client as i64,
                            bytes_to_client: traffic.bytes_to_client as i64,
                        });
                    }
                }
                if batch.len() < 512 {
                    continue;
                }
            }
            _ = tick.tick() => {}
        }
        flush_history(&store, &mut batch).await;
    }
    flush_history(&store, &mut batch).await;
}

async fn flush_history(
    store: &Option<Arc<std::sync::Mutex<callbox_store::Store>>>,
    batch: &mut Vec<callbox_store::HistoryEvent>,
) {
    let Some(store) = store else {
        batch.clear();
        return;
    };
    if batch.is_empty() {
        return;
    }
    let events = std::mem::take(batch);
    let store = Arc::clone(store);
    let n = events.len();
    let written = tokio::task::spawn_blocking(move || {
        store
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record_history(&events)
    })
    .await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, lost = n, "allocation history not written"),
        Err(e) => tracing::warn!(error = %e, lost = n, "allocation history writer failed"),
    }
}

/// A bound turn role, ready to run.
struct TurnBound {
    role: TurnRole,
    http: Option<tokio::net::TcpListener>,
    udp: Vec<SocketAddr>,
    relay: RelayIp,
    workers: usize,
}

async fn bind_turn(
    config: &Config,
    secrets: SecretSet,
    store: Option<Arc<std::sync::Mutex<callbox_store::Store>>>,
) -> anyhow::Result<TurnBound> {
    let t = &config.turn;
    let workers = if t.workers == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        t.workers
    };
    let mut listen = Vec::new();
    for addr in &t.listen {
        match UdpListeners::bind(&[*addr], workers) {
            Ok(l) => listen.push(l),
            // The default configuration listens on [::] too; a host without IPv6 runs on IPv4.
            Err(e) if addr.is_ipv6() && t.listen.len() > 1 => {
                tracing::warn!(%addr, error = %e, "IPv6 listener not available; continuing without it");
            }
            Err(e) => return Err(e).with_context(|| format!("binding turn.listen {addr}")),
        }
    }
    anyhow::ensure!(!listen.is_empty(), "no TURN listener could be bound");
    let addrs: Vec<SocketAddr> = listen.iter().flat_map(|l| l.local_addrs().to_vec()).collect();
    let udp = UdpListeners::bind_merge(listen);
    let http = match t.http_listen {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("binding turn.http_listen {a}"))?,
        ),
        None => None,
    };
    let (relay_v4, relay_v6) = relay_addresses(config);
    let policy = peer_policy(config, &relay_v4, relay_v6.as_ref(), &addrs);
    let settings = TurnSettings {
        server: ServerConfig {
            realm: t.realm.clone(),
            relay_v4: Some(relay_v4),
            relay_v6,
            default_lifetime: Duration::from_secs(u64::from(t.default_lifetime)),
            max_lifetime: Duration::from_secs(u64::from(t.max_lifetime)),
            max_allocation_age: Duration::from_secs(t.max_allocation_age),
            nonce_lifetime: Duration::from_secs(u64::from(t.nonce_lifetime)),
            bandwidth_limit: t.bandwidth_limit,
            ..ServerConfig::default()
        },
        workers,
        port_range: (t.relay_port_min, t.relay_port_max),
        credentials: Arc::new(ArcSwap::from_pointee(credentials_snapshot(config, secrets))),
        policy: Arc::new(ArcSwap::from_pointee(policy)),
        quotas: Arc::new(Quotas::new(t.total_quota, t.user_quota)),
    };
    let (role, events) = TurnRole::new(settings, udp, rand::random()).context("starting the turn role")?;
    tokio::spawn(consume_events(events, store));
    Ok(TurnBound {
        role,
        http,
        udp: addrs,
        relay: relay_v4,
        workers,
    })
}

/// The ICE URLs the signal role hands out: this process's turn listeners when the turn
/// role runs here, else `signal.turn_urls` and `signal.stun_urls`.
fn ice_urls(config: &Config, turn: Option<&TurnBound>) -> (Vec<String>, Vec<String>) {
    match turn {
        Some(tb) => {
            let port = tb.udp.first().map_or(3478, |a| a.port());
            let ep = endpoints(config, tb.relay.advertise, port);
            (ep.stun_urls(), ep.turn_urls())
        }
        None => (config.signal.stun_urls.clone(), config.signal.turn_urls.clone()),
    }
}

/// The store in the state directory; history is skipped (with a warning) when it cannot
/// be opened, so a read-only or full disk never keeps the relay from starting.
fn open_store(loaded: &Loaded) -> Option<Arc<std::sync::Mutex<callbox_store::Store>>> {
    let path = loaded.state_dir.join("callbox.db");
    if let Err(e) = std::fs::create_dir_all(&loaded.state_dir) {
        tracing::warn!(error = %e, "state directory unavailable; allocation history is off");
        return None;
    }
    match callbox_store::Store::open(&path) {
        Ok(s) => Some(Arc::new(std::sync::Mutex::new(s))),
        Err(e) => {
            tracing::warn!(error = %e, path = %path.display(), "store unavailable; allocation history is off");
            None
        }
    }
}

/// A future that resolves when the shared shutdown flag is raised.
fn on_shutdown(
    rx: &tokio::sync::watch::Receiver<bool>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let mut rx = rx.clone();
    async move {
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

pub async fn serve(loaded: Loaded, roles: Vec<String>) -> anyhow::Result<()> {
    for r in &roles {
        anyhow::ensure!(
            ROLES.contains(&r.as_str()),
            "unknown role `{r}` (known: {})",
            ROLES.join(", ")
        );
    }
    let run_turn = roles.iter().any(|r| r == "turn");
    let run_signal = roles.iter().any(|r| r == "signal");
    let config = &loaded.config;
    let secrets = secrets(&loaded)?;

    // Bind everything before running anything, so a bad address fails the start.
    let turn = if run_turn {
        Some(bind_turn(config, secrets.clone(), open_store(&loaded)).await?)
    } else {
        None
    };
    let signal_listener = if run_signal {
        let a = config.signal.listen;
        Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("binding signal.listen {a}"))?,
        )
    } else {
        None
    };
    if run_signal && !run_turn && config.signal.turn_urls.is_empty() && config.signal.stun_urls.is_empty() {
        tracing::warn!(
            "the signal role runs without a turn role and signal.turn_urls is empty: ICE lists will be empty"
        );
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });

    let mut tasks: Vec<(&str, tokio::task::JoinHandle<anyhow::Result<()>>)> = Vec::new();
    let mut ready_fields: Vec<(&str, String)> = Vec::new();
    let (stun_urls, turn_urls) = ice_urls(config, turn.as_ref());
    if let Some(tb) = turn {
        let http_addr = tb.http.as_ref().and_then(|h| h.local_addr().ok());
        if let Some(http) = tb.http {
            let router = callbox_turn::http_router(tb.role.metrics(), tb.role.ready_flag());
            tokio::spawn(async move {
                if let Err(e) = axum::serve(http, router).await {
                    tracing::error!(error = %e, "turn HTTP listener stopped");
                }
            });
        }
        let ready = tb.role.ready_flag();
        let run = tokio::spawn({
            let stop = on_shutdown(&stop_rx);
            async move { tb.role.run(stop).await.context("turn role") }
        });
        // "ready" is logged once the data path threads run, so /readyz already says 200.
        while !ready.load(std::sync::atomic::Ordering::Relaxed) && !run.is_finished() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let udp_list: Vec<String> = tb.udp.iter().map(|a| a.to_string()).collect();
        ready_fields.push(("udp", udp_list.join(",")));
        ready_fields.push(("http", http_addr.map_or("-".into(), |a| a.to_string())));
        ready_fields.push(("relay", tb.relay.advertise.to_string()));
        ready_fields.push(("workers", tb.workers.to_string()));
        tasks.push(("turn", run));
    }
    if let Some(listener) = signal_listener {
        let auth = &config.auth;
        let ice = callbox_signal::IceSource {
            stun_urls,
            turn_urls,
            secrets: Arc::new(ArcSwap::from_pointee(secrets)),
            default_ttl: auth.credential_ttl,
            max_ttl: auth.max_credential_ttl,
        };
        let app = callbox_signal::state(config.signal.clone(), ice);
        ready_fields.push((
            "signal",
            listener.local_addr().map_or("-".into(), |a| a.to_string()),
        ));
        let role = callbox_signal::SignalRole::new(app);
        let stop = on_shutdown(&stop_rx);
        tasks.push((
            "signal",
            tokio::spawn(async move { role.run(listener, stop).await.context("signal role") }),
        ));
    }
    let fields: Vec<String> = ready_fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
    tracing::info!(
        roles = %roles.join(","),
        state_dir = %loaded.state_dir.display(),
        config = %loaded.source,
        "callbox ready {}",
        fields.join(" ")
    );
    let mut result = Ok(());
    for (name, task) in tasks {
        let r = task.await.with_context(|| format!("{name} role task"));
        match r {
            Ok(Ok(())) => tracing::info!(role = name, "role stopped"),
            Ok(Err(e)) | Err(e) => {
                tracing::error!(role = name, "role failed: {e:#}");
                result = Err(e);
            }
        }
    }
    result
}
