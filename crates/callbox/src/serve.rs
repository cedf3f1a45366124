//! `callbox serve`: derive the role settings from configuration, bind, run, join.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use callbox_core::credentials::{LongTermKey, SecretSet, long_term_key};
use callbox_core::ice::{self, TurnEndpoints};
use callbox_core::{Config, PeerPolicy, Secret};
use callbox_turn::{EventRecord, TurnRole, TurnSettings, UdpListeners};
use turn_proto::Event;
use turn_proto::server::{Credentials, Quotas, RelayIp, ServerConfig};

use crate::access::{Access, Snapshot};
use crate::settings::Loaded;
use crate::state;

const ROLES: &[&str] = &["signal", "turn", "admin"];
/// The store's file in the state directory.
pub const STORE_FILE: &str = "callbox.db";

/// The secrets of `auth.secrets`, if the configuration sets any.
fn config_secrets(loaded: &Loaded) -> Option<SecretSet> {
    SecretSet::new(loaded.config.auth.secrets.clone())
}

/// The secret generated into the state directory on first start: it seeds the store, and
/// serves alone when the store cannot be opened.
fn file_secret(loaded: &Loaded) -> anyhow::Result<SecretSet> {
    SecretSet::new(vec![state::shared_secret(&loaded.state_dir)?]).context("no shared secret")
}

/// Seeds the store with the generated secret when it holds none (first start, or a
/// store created before secrets lived there), so rotation through admin starts from the
/// secret already in use.
fn seed_secrets(loaded: &Loaded, store: &mut callbox_store::Store) -> anyhow::Result<()> {
    if config_secrets(loaded).is_some() || !store.active_secrets(callbox_core::time::unix_now())?.is_empty() {
        return Ok(());
    }
    let secret = state::shared_secret(&loaded.state_dir)?;
    store.rotate_secret(secret.expose(), 0, callbox_core::time::unix_now(), "bootstrap")?;
    tracing::info!("TURN secret moved into the store (rotate it with `callbox admin secrets rotate`)");
    Ok(())
}

/// The active secrets for commands that run without the roles (`callbox credentials`):
/// the configuration's, else the store's, else the generated file.
fn secrets(loaded: &Loaded) -> anyhow::Result<SecretSet> {
    if let Some(c) = config_secrets(loaded) {
        return Ok(c);
    }
    let path = loaded.state_dir.join(STORE_FILE);
    if path.exists()
        && let Ok(store) = callbox_store::Store::open(&path)
        && let Ok(list) = store.active_secrets(callbox_core::time::unix_now())
        && let Some(set) = SecretSet::new(list.into_iter().map(|s| Secret::new(s.secret)).collect())
    {
        return Ok(set);
    }
    file_secret(loaded)
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

/// `auth.static_users` as long-term keys for the realm.
fn config_users(config: &Config) -> HashMap<String, LongTermKey> {
    let realm = &config.turn.realm;
    config
        .auth
        .static_users
        .iter()
        .map(|u| (u.name.clone(), long_term_key(&u.name, realm, u.password.expose())))
        .collect()
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
        callbox_core::time::unix_now(),
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

type SharedStore = Arc<std::sync::Mutex<callbox_store::Store>>;

/// Where history rows go: the store (if open) and its health counters.
#[derive(Clone)]
struct HistorySink {
    store: Option<SharedStore>,
    health: Arc<callbox_store::Health>,
}

/// Writes what arrives on `rx` to the store in batches (every 500 ms, or at 512 rows),
/// off the relay's and signaling's paths: they only ever `try_send` into the channel, so
/// a slow or failing database costs history rows (counted and logged), never their time.
async fn write_history<I, T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<I>,
    mut map: impl FnMut(I) -> Option<T>,
    write: fn(&mut callbox_store::Store, &[T]) -> callbox_store::Result<()>,
    sink: HistorySink,
    what: &'static str,
) {
    let mut batch: Vec<T> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            got = rx.recv() => {
                let Some(item) = got else { break };
                batch.extend(map(item));
                if batch.len() < 512 {
                    continue;
                }
            }
            _ = tick.tick() => {}
        }
        flush(&sink, &mut batch, write, what).await;
    }
    flush(&sink, &mut batch, write, what).await;
}

async fn flush<T: Send + 'static>(
    sink: &HistorySink,
    batch: &mut Vec<T>,
    write: fn(&mut callbox_store::Store, &[T]) -> callbox_store::Result<()>,
    what: &'static str,
) {
    let Some(store) = &sink.store else {
        batch.clear();
        return;
    };
    if batch.is_empty() {
        return;
    }
    let rows = std::mem::take(batch);
    let store = Arc::clone(store);
    let n = rows.len();
    let written = tokio::task::spawn_blocking(move || {
        write(&mut store.lock().unwrap_or_else(|e| e.into_inner()), &rows)
    })
    .await;
    let failure = match written {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    };
    sink.health.failed();
    sink.health
        .history_lost
        .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    tracing::warn!(error = %failure, lost = n, "{what} history not written");
}

/// Logs an allocation event and turns it into a history row.
fn allocation_row(r: EventRecord) -> Option<callbox_store::HistoryEvent> {
    use callbox_store::HistoryEvent;
    let at = r.unix_time;
    match r.event {
        Event::Created {
            id,
            username,
            client,
            relay,
            lifetime,
        } => {
            tracing::info!(alloc = id.0, %username, %client, %relay, lifetime = lifetime.as_secs(), "allocation created");
            Some(HistoryEvent::Created {
                alloc_id: id.0 as i64,
                username,
                client: client.to_string(),
                relay: relay.to_string(),
                at,
            })
        }
        Event::Refreshed { id, lifetime } => {
            tracing::debug!(
                alloc = id.0,
                lifetime = lifetime.as_secs(),
                "allocation refreshed"
            );
            None
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
            Some(HistoryEvent::Closed {
                alloc_id: id.0 as i64,
                at,
                reason: format!("{reason:?}"),
                packets_to_peer: traffic.packets_to_peer as i64,
                bytes_to_peer: traffic.bytes_to_peer as i64,
                packets_to_client: traffic.packets_to_client as i64,
                bytes_to_client: traffic.bytes_to_client as i64,
            })
        }
    }
}

fn session_row(r: callbox_signal::SessionRecord) -> Option<callbox_store::SessionRecord> {
    Some(callbox_store::SessionRecord {
        room: r.room,
        peer_id: r.peer_id,
        client: r.addr.to_string(),
        started_at: r.joined_unix,
        ended_at: r.left_unix,
        close_reason: r.reason.to_string(),
        messages_in: r.messages_in as i64,
        messages_out: r.messages_out as i64,
    })
}

/// Data path threads: `turn.workers`, or one per core.
fn turn_workers(config: &Config) -> usize {
    match config.turn.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// Limits of an HTTP listener from its configuration keys.
fn http_limits(
    max: usize,
    per_address: usize,
    ipv6_prefix: u8,
    header_timeout_ms: u64,
) -> callbox_http::Limits {
    callbox_http::Limits {
        max_connections: max,
        max_per_address: per_address,
        ipv6_prefix,
        header_timeout: Duration::from_millis(header_timeout_ms),
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
    credentials: Credentials,
    history: HistorySink,
) -> anyhow::Result<TurnBound> {
    let t = &config.turn;
    let workers = turn_workers(config);
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
            software: t
                .software
                .then(|| concat!("callbox ", env!("CARGO_PKG_VERSION")).to_string()),
            max_credential_expiry: Duration::from_secs(
                config
                    .auth
                    .max_credential_ttl
                    .saturating_add(config.auth.clock_skew),
            ),
            unauthenticated_rate: t.unauthenticated_rate,
            unauthenticated_burst: t.unauthenticated_burst,
            ipv6_prefix_len: t.ipv6_prefix_len,
            ..ServerConfig::default()
        },
        workers,
        port_range: (t.relay_port_min, t.relay_port_max),
        credentials: Arc::new(ArcSwap::from_pointee(credentials)),
        policy: Arc::new(ArcSwap::from_pointee(policy)),
        quotas: Arc::new(Quotas::new(t.total_quota, t.user_quota)),
        reservation_lifetime: Duration::from_secs(t.reservation_lifetime),
        max_reservations: t.max_reservations,
    };
    let (role, events) = TurnRole::new(settings, udp, rand::random()).context("starting the turn role")?;
    tokio::spawn(write_history(
        events,
        allocation_row,
        callbox_store::Store::record_history,
        history,
        "allocation",
    ));
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

/// The store in the state directory. When it cannot be opened the relay and signaling
/// still start (on the configured or generated secret), without history or admin: a
/// read-only or full disk never keeps calls from working.
fn open_store(loaded: &Loaded) -> Option<SharedStore> {
    let path = loaded.state_dir.join(STORE_FILE);
    if let Err(e) = std::fs::create_dir_all(&loaded.state_dir) {
        tracing::warn!(error = %e, "state directory unavailable; running without the store");
        return None;
    }
    match callbox_store::Store::open(&path) {
        Ok(s) => Some(Arc::new(std::sync::Mutex::new(s))),
        Err(e) => {
            tracing::warn!(error = %e, path = %path.display(), "store unavailable; running without history and admin");
            None
        }
    }
}

/// The admin token file in the state directory.
pub const TOKEN_FILE: &str = "admin-token";

/// Makes a new admin token: its digest goes to the store, the token itself to
/// `STATE_DIR/admin-token` (mode 0600, written to a temporary name and renamed).
pub fn write_new_token(
    store: &callbox_store::Store,
    state_dir: &std::path::Path,
    actor: &str,
) -> anyhow::Result<std::path::PathBuf> {
    let token = callbox_admin::new_token();
    let path = state_dir.join(TOKEN_FILE);
    // The digest is stored first: a crash before the file is written leaves the old file
    // (no longer valid) and the way in is another rotation; never a working token that
    // the store does not know.
    store.set_admin_token(callbox_admin::token_digest(&token), callbox_core::time::unix_now(), actor)?;
    state::write_private(&path, format!("{token}\n").as_bytes())?;
    Ok(path)
}

/// A token is made on first start; later starts keep the stored one.
fn ensure_admin_token(store: &SharedStore, state_dir: &std::path::Path) -> anyhow::Result<()> {
    let s = store.lock().unwrap_or_else(|e| e.into_inner());
    if s.admin_token()?.is_some() {
        if !state_dir.join(TOKEN_FILE).exists() {
            tracing::warn!(
                "the admin token file is missing; make a new one with `callbox admin token rotate`"
            );
        }
        return Ok(());
    }
    let path = write_new_token(&s, state_dir, "bootstrap")?;
    tracing::info!(path = %path.display(), "admin token generated");
    Ok(())
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
    let mut run_admin = roles.iter().any(|r| r == "admin");
    let mut loaded = loaded;
    match crate::descriptors::raise_limit() {
        Ok((before, after)) => {
            if after != before {
                tracing::info!(before, after, "raised the open-files limit to the hard limit");
            }
            let workers = turn_workers(&loaded.config);
            for note in crate::descriptors::fit(&mut loaded.config, after, &roles, workers) {
                tracing::warn!("{note}");
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not read or raise the open-files limit"),
    }
    let config = &loaded.config;
    let started = std::time::Instant::now();

    // The store, and the first snapshot of what the roles read from it.
    let health = Arc::new(callbox_store::Health::default());
    let store = open_store(&loaded);
    if let Some(st) = &store {
        let mut s = st.lock().unwrap_or_else(|e| e.into_inner());
        seed_secrets(&loaded, &mut s)?;
    }
    if run_admin && store.is_none() {
        tracing::error!("the admin role needs the store; it does not run");
        run_admin = false;
    }
    let realm = config.turn.realm.clone();
    let snapshot = match &store {
        Some(st) => Snapshot::read(
            &st.lock().unwrap_or_else(|e| e.into_inner()),
            &realm,
            callbox_core::time::unix_now(),
        )
        .context("reading the store")?,
        None => Snapshot::default(),
    };
    let mut access = Access {
        store: store.clone(),
        health: Arc::clone(&health),
        realm,
        config_secrets: config_secrets(&loaded),
        config_users: config_users(config),
        retention_days: config.admin.history_retention_days,
        changed: Arc::new(tokio::sync::Notify::new()),
        turn: None,
        signal: None,
        ice_secrets: None,
    };
    let secrets = match access.secret_set(&snapshot) {
        Some(s) => s,
        None => file_secret(&loaded)?,
    };
    let history = HistorySink {
        store: store.clone(),
        health: Arc::clone(&health),
    };

    // Bind everything before running anything, so a bad address fails the start.
    let turn = if run_turn {
        let creds = access.credentials(&snapshot, secrets.clone());
        Some(bind_turn(config, creds, history.clone()).await?)
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
    let admin_listener = if run_admin {
        let a = config.admin.listen;
        Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("binding admin.listen {a}"))?,
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
        access.turn = Some(tb.role.control());
        let http_addr = tb.http.as_ref().and_then(|h| h.local_addr().ok());
        if let Some(http) = tb.http {
            let router = callbox_turn::http_router(tb.role.metrics(), tb.role.ready_flag());
            let t = &config.turn;
            let limits = callbox_http::ConnectionLimits::new(http_limits(
                t.http_max_connections,
                t.http_max_connections,
                t.ipv6_prefix_len,
                t.http_header_timeout_ms,
            ));
            let metrics = Arc::new(callbox_http::ListenerMetrics::default());
            tokio::spawn(async move {
                if let Err(e) =
                    callbox_http::serve(http, router, limits, metrics, std::future::pending()).await
                {
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
        let ice_secrets = Arc::new(ArcSwap::from_pointee(secrets));
        let ice = callbox_signal::IceSource {
            stun_urls,
            turn_urls,
            secrets: Arc::clone(&ice_secrets),
            default_ttl: auth.credential_ttl,
            max_ttl: auth.max_credential_ttl,
        };
        let app = callbox_signal::state(config.signal.clone(), ice);
        app.set_api_keys(snapshot.api_keys.iter().cloned().collect());
        app.set_bans(snapshot.bans.iter().map(|(_, n)| *n).collect());
        if let Some(sessions) = app.take_session_events() {
            tokio::spawn(write_history(
                sessions,
                session_row,
                callbox_store::Store::record_sessions,
                history.clone(),
                "session",
            ));
        }
        access.signal = Some(Arc::clone(&app));
        access.ice_secrets = Some(ice_secrets);
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
    if let (Some(listener), Some(st)) = (admin_listener, &store) {
        ensure_admin_token(st, &loaded.state_dir)?;
        let live = crate::live::LiveRoles {
            turn: access.turn.clone(),
            signal: access.signal.clone(),
        };
        let redacted: toml::Value = toml::from_str(&config.to_redacted_toml()).context("redacted config")?;
        let info = callbox_admin::AdminInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            roles: roles.clone(),
            started,
            realm: config.turn.realm.clone(),
            config: serde_json::to_value(redacted).context("redacted config")?,
            secrets_from_config: access.config_secrets.is_some(),
            rotation_overlap: config
                .admin
                .rotation_overlap
                .unwrap_or(config.auth.max_credential_ttl),
            max_body_bytes: config.admin.max_body_bytes,
            auth_failures_per_minute: config.admin.auth_failures_per_minute,
            listener: http_limits(
                config.admin.max_connections,
                config.admin.max_connections_per_address,
                callbox_core::limit_key::DEFAULT_IPV6_PREFIX,
                config.admin.header_timeout_ms,
            ),
        };
        let app = callbox_admin::AdminState::new(
            Arc::clone(st),
            Arc::clone(&health),
            Arc::new(live),
            info,
            Arc::clone(&access.changed),
        );
        ready_fields.push((
            "admin",
            listener.local_addr().map_or("-".into(), |a| a.to_string()),
        ));
        let (connections, listener_metrics) =
            (Arc::clone(&app.connections), Arc::clone(&app.listener_metrics));
        let router = callbox_admin::router(app);
        let stop = on_shutdown(&stop_rx);
        tasks.push((
            "admin",
            tokio::spawn(async move {
                callbox_http::serve(listener, router, connections, listener_metrics, stop)
                    .await
                    .context("admin role")
            }),
        ));
    }
    if store.is_some() {
        tokio::spawn(access.run(snapshot));
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
