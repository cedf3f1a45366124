//! `callbox serve`: derive the role settings from configuration, bind, run, join.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use callbox_core::Config;
use callbox_core::ice::{self, TurnEndpoints};
use callbox_core::metrics::MetricsRegistry;
use callbox_turn::{Credentials, TcpListeners, TurnRole, TurnSettings, UdpListeners};

use crate::access::{Access, Snapshot};
use crate::bootstrap::{config_secrets, ensure_admin_token, file_secret, open_store, secrets, seed_secrets};
use crate::history::{HistorySink, HistoryWriter, allocation_row, session_row};
use crate::role::Role;
use crate::settings::Loaded;
use crate::supervisor;
use crate::tls::Tls;

/// What `turns:` URLs advertise: the TURN/TLS ports (`turn.tls_listen`, then the one TLS
/// port's) and the name the certificate is valid for.
#[derive(Debug, Clone, Default)]
struct TurnsUrls {
    ports: Vec<u16>,
    host: Option<String>,
}

impl TurnsUrls {
    fn new(addrs: impl IntoIterator<Item = SocketAddr>, host: Option<String>) -> Self {
        let mut ports: Vec<u16> = Vec::new();
        for a in addrs {
            if !ports.contains(&a.port()) {
                ports.push(a.port());
            }
        }
        Self { ports, host }
    }

    /// From configuration alone (`callbox credentials`, where nothing is bound).
    fn configured(config: &Config) -> Self {
        let t = &config.tls;
        if !t.enabled() {
            return Self::default();
        }
        let name = match (&t.cert_file, &t.key_file) {
            (Some(cert), Some(key)) => callbox_tls::LoadedCert::from_files(cert, key)
                .ok()
                .and_then(|c| c.dns_names.first().cloned()),
            _ => t.acme_domains.first().cloned(),
        };
        let addrs = config
            .turn
            .tls_listen_addrs(t)
            .into_iter()
            .chain(t.listen_addrs());
        Self::new(addrs, config.turn.public_host.clone().or(name))
    }
}

fn endpoints(config: &Config, advertise: IpAddr, udp_port: u16, turns: TurnsUrls) -> TurnEndpoints {
    TurnEndpoints {
        host: config
            .turn
            .public_host
            .clone()
            .unwrap_or_else(|| advertise.to_string()),
        udp_port: Some(udp_port),
        // TCP listens on the UDP listeners' ports.
        tcp_port: config.turn.tcp.then_some(udp_port),
        tls_ports: turns.ports,
        tls_host: turns.host,
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
    let port = loaded.config.turn.listen.first().map_or(3478, |a| a.port());
    let list = ice::build(
        &endpoints(
            &loaded.config,
            callbox_turn::advertised_ipv4(&loaded.config),
            port,
            TurnsUrls::configured(&loaded.config),
        ),
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
    supervisor::stopping();
}

/// Limits of an HTTP listener from its configuration keys.
pub(crate) fn http_limits(
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
    events: tokio::sync::mpsc::Receiver<callbox_turn::AllocationEvent>,
    http: Option<tokio::net::TcpListener>,
    udp: Vec<SocketAddr>,
    tls: Vec<SocketAddr>,
    advertise: IpAddr,
    workers: usize,
}

async fn bind_turn(
    config: &Config,
    credentials: Credentials,
    registry: &Arc<MetricsRegistry>,
    tls: Option<&Tls>,
) -> anyhow::Result<TurnBound> {
    let t = &config.turn;
    let workers = callbox_turn::workers(config);
    let mut udp_parts = Vec::new();
    let mut tcp_parts = Vec::new();
    for addr in &t.listen {
        match bind_listener(*addr, workers, t.tcp) {
            Ok((udp, tcp)) => {
                udp_parts.push(udp);
                tcp_parts.push(tcp);
            }
            // The default configuration listens on [::] too; a host without IPv6 runs on IPv4.
            Err(e) if addr.is_ipv6() && t.listen.len() > 1 => {
                tracing::warn!(%addr, error = %e, "IPv6 listener not available; continuing without it");
            }
            Err(e) => return Err(e).with_context(|| format!("binding turn.listen {addr}")),
        }
    }
    anyhow::ensure!(!udp_parts.is_empty(), "no TURN listener could be bound");
    let tls_listen = t.tls_listen_addrs(&config.tls);
    for (i, addr) in tls_listen.iter().enumerate() {
        match TcpListeners::bind_tls(&[*addr], workers) {
            Ok(l) => tcp_parts.push(l),
            Err(e) if addr.is_ipv6() && t.tls_listen.is_none() => {
                tracing::warn!(%addr, error = %e, "IPv6 TURN/TLS listener not available; continuing without it");
            }
            Err(e) => return Err(e).with_context(|| format!("binding turn.tls_listen.{i} {addr}")),
        }
    }
    let udp = UdpListeners::merge(udp_parts);
    let tcp = TcpListeners::merge(tcp_parts);
    let tls_addrs = tcp.local_addrs(callbox_turn::Transport::Tls);
    let addrs = udp.local_addrs().to_vec();
    let http = match t.http_listen {
        Some(a) => Some(bind_tcp("turn.http_listen", a).await?),
        None => None,
    };
    // The relay must not be pointed at any of its own listeners.
    let own: Vec<SocketAddr> = addrs.iter().chain(&tls_addrs).copied().collect();
    let mut settings = TurnSettings::from_config(config, &own, credentials);
    settings.streams.tls = tls.map(|t| t.turn(registry));
    let advertise = settings.advertised_ipv4();
    let (role, events) = TurnRole::new(settings, udp, tcp, rand::random(), Arc::clone(registry))
        .context("starting the turn role")?;
    Ok(TurnBound {
        role,
        events,
        http,
        udp: addrs,
        tls: tls_addrs,
        advertise,
        workers,
    })
}

/// The UDP listeners on `addr`, and TCP on the same port when `tcp`. With port 0 the
/// kernel picks the UDP port, which another process may hold over TCP: then another port
/// is tried, a few times.
fn bind_listener(
    addr: SocketAddr,
    workers: usize,
    tcp: bool,
) -> std::io::Result<(UdpListeners, TcpListeners)> {
    let mut tries = if addr.port() == 0 { 16 } else { 1 };
    loop {
        let udp = UdpListeners::bind(&[addr], workers)?;
        if !tcp {
            return Ok((udp, TcpListeners::none()));
        }
        match TcpListeners::bind(udp.local_addrs(), workers) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries > 1 => tries -= 1,
            Err(e) => return Err(e),
        }
    }
}

/// The ICE URLs the signal role hands out: this process's turn listeners when the turn
/// role runs here, else `signal.turn_urls` and `signal.stun_urls`.
fn ice_urls(config: &Config, turn: Option<&TurnBound>, turns: TurnsUrls) -> (Vec<String>, Vec<String>) {
    match turn {
        Some(tb) => {
            let port = tb.udp.first().map_or(3478, |a| a.port());
            let ep = endpoints(config, tb.advertise, port, turns);
            (ep.stun_urls(), ep.turn_urls())
        }
        None => (config.signal.stun_urls.clone(), config.signal.turn_urls.clone()),
    }
}

/// The shutdown flag every role watches, raised by SIGTERM or SIGINT.
#[derive(Debug, Clone)]
struct Shutdown(tokio::sync::watch::Receiver<bool>);

impl Shutdown {
    fn on_signals() -> Shutdown {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = tx.send(true);
        });
        Shutdown(rx)
    }

    /// A future that resolves when the flag is raised.
    fn wait(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.0.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }
}

/// Binds a TCP listener, naming the configuration key when it fails.
async fn bind_tcp(key: &str, addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {key} {addr}"))
}

/// Binds every address of the list `key`. When the list is the default (`defaulted`), an
/// IPv6 address that cannot be bound is skipped with a warning: a host without IPv6 runs on
/// IPv4.
pub(crate) async fn bind_tcp_all(
    key: &str,
    addrs: &[SocketAddr],
    defaulted: bool,
) -> anyhow::Result<Vec<tokio::net::TcpListener>> {
    let mut out = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => out.push(l),
            Err(e) if addr.is_ipv6() && defaulted => {
                tracing::warn!(%addr, error = %e, "IPv6 {key} listener not available; continuing without it");
            }
            Err(e) => return Err(e).with_context(|| format!("binding {key}.{i} {addr}")),
        }
    }
    Ok(out)
}

fn join_addrs(addrs: &[SocketAddr]) -> String {
    addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(",")
}

/// The signal role's TLS listeners, bound.
#[derive(Debug, Default)]
struct TlsListeners {
    listeners: Vec<callbox_signal::TlsListener>,
    one_port_addrs: Vec<SocketAddr>,
}

/// Binds `signal.tls_listen` (HTTPS and WSS) and the one TLS port (`tls.listen`), whose
/// TURN connections go to `turn` when the turn role runs in this process.
async fn bind_tls_listeners(
    config: &Config,
    tls: &Tls,
    turn: Option<callbox_turn::TurnControl>,
    registry: &Arc<MetricsRegistry>,
) -> anyhow::Result<TlsListeners> {
    let sg = &config.signal;
    let mut out = TlsListeners::default();
    if let Some(addr) = sg.tls_listen {
        let listener = bind_tcp("signal.tls_listen", addr).await?;
        // The same caps as `signal.listen`, counted apart.
        let limits = callbox_http::ConnectionLimits::new(http_limits(
            sg.max_connections,
            sg.max_connections_per_address,
            sg.ipv6_prefix_len,
            sg.header_timeout_ms,
        ));
        out.listeners.push(callbox_signal::TlsListener {
            listener,
            metrics: callbox_http::ListenerMetrics::register(registry, "signal_tls", Arc::clone(&limits)),
            limits,
            tls: tls.https(registry),
        });
    }
    let t = &config.tls;
    let limits = callbox_http::ConnectionLimits::new(http_limits(
        t.max_connections,
        t.max_connections_per_address,
        sg.ipv6_prefix_len,
        sg.header_timeout_ms,
    ));
    let serve = tls.one_port(turn, registry);
    let metrics = callbox_http::ListenerMetrics::register(registry, "tls", Arc::clone(&limits));
    for listener in bind_tcp_all("tls.listen", &t.listen_addrs(), t.listen.is_none()).await? {
        out.one_port_addrs.extend(listener.local_addr().ok());
        out.listeners.push(callbox_signal::TlsListener {
            listener,
            tls: serve.clone(),
            limits: Arc::clone(&limits),
            metrics: Arc::clone(&metrics),
        });
    }
    Ok(out)
}

fn local_addr(l: &tokio::net::TcpListener) -> String {
    l.local_addr().map_or("-".into(), |a| a.to_string())
}

/// What runs: the roles' tasks, the history writers behind them, and the fields of the
/// "callbox ready" line.
#[derive(Default)]
struct Running {
    roles: Vec<(&'static str, tokio::task::JoinHandle<anyhow::Result<()>>)>,
    history: Vec<HistoryWriter>,
    ready: Vec<(&'static str, String)>,
}

impl Running {
    fn role(
        &mut self,
        name: &'static str,
        run: impl std::future::Future<Output = std::io::Result<()>> + Send + 'static,
    ) {
        self.roles.push((
            name,
            tokio::spawn(async move { run.await.with_context(|| format!("{name} role")) }),
        ));
    }

    /// Waits for every role to stop, then for the history writers to write what the
    /// roles queued until the end (the allocations the shutdown closed among them).
    async fn join(self) -> anyhow::Result<()> {
        let mut result = Ok(());
        for (name, task) in self.roles {
            match task.await.with_context(|| format!("{name} role task")) {
                Ok(Ok(())) => tracing::info!(role = name, "role stopped"),
                Ok(Err(e)) | Err(e) => {
                    tracing::error!(role = name, "role failed: {e:#}");
                    result = Err(e);
                }
            }
        }
        for writer in self.history {
            writer.finish().await;
        }
        result
    }
}

pub async fn serve(
    loaded: Loaded,
    mut roles: Vec<Role>,
    reload: crate::reload::LoadConfig,
) -> anyhow::Result<()> {
    roles.sort();
    roles.dedup();
    let run_turn = roles.contains(&Role::Turn);
    let run_signal = roles.contains(&Role::Signal);
    let mut loaded = loaded;
    // What SIGHUP compares a reloaded configuration with: the sources' values, before
    // start-up adjusts them.
    let as_loaded = loaded.config.clone();
    fit_descriptors(&mut loaded, &roles);
    if run_turn || run_signal {
        crate::cloud::resolve_external_ip(&mut loaded.config).await;
    }
    let config = &loaded.config;
    let started = std::time::Instant::now();

    // The store, and the first snapshot of what the roles read from it.
    let health = Arc::new(callbox_store::Health::default());
    let store = open_store(&loaded);
    if let Some(st) = &store {
        seed_secrets(&loaded, &mut st.lock().unwrap_or_else(|e| e.into_inner()))?;
    }
    let run_admin = roles.contains(&Role::Admin) && store.is_some();
    if roles.contains(&Role::Admin) && !run_admin {
        tracing::error!("the admin role needs the store; it does not run");
    }
    let realm = config.turn.realm.clone();
    // One registry for the process: every role's /metrics serves all of it.
    let registry = Arc::new(MetricsRegistry::new());
    // In a cluster the admin node publishes access snapshots and every other node takes
    // them from there instead of from a store.
    let cluster = crate::cluster::open(config, &loaded.state_dir, &registry)?;
    let subscriber = cluster.as_ref().filter(|_| !run_admin);
    let from_cluster = match subscriber {
        Some(c) => crate::cluster::initial_snapshot(c, &crate::cluster::cache_file(&loaded.state_dir)).await,
        None => None,
    };
    let snapshot = match (from_cluster, &store) {
        (Some(s), _) => s,
        (None, Some(st)) => Snapshot::read(
            &st.lock().unwrap_or_else(|e| e.into_inner()),
            &realm,
            callbox_core::time::unix_now(),
        )
        .context("reading the store")?,
        (None, None) => Snapshot::default(),
    };
    let mut access = Access {
        store: store.clone(),
        health: Arc::clone(&health),
        realm,
        config_secrets: config_secrets(&loaded),
        config_users: crate::access::FromConfig::of(config).users,
        retention_days: config.admin.history_retention_days,
        changed: Arc::new(tokio::sync::Notify::new()),
        cluster: cluster.clone().map(|c| match run_admin {
            true => crate::access::AccessLink::Publish(c),
            false => crate::access::AccessLink::Subscribe(c),
        }),
        cache_file: subscriber.map(|_| crate::cluster::cache_file(&loaded.state_dir)),
        reloaded: None,
        turn: None,
        signal: None,
    };
    // A reload hands new `auth.secrets` and `auth.static_users` to the access loop.
    let (access_reload, reloaded) = tokio::sync::mpsc::channel(4);
    access.reloaded = Some(reloaded);
    let secrets = match access.secret_set(&snapshot) {
        Some(s) => s,
        None => file_secret(&loaded)?,
    };
    let history = HistorySink {
        store: store.clone(),
        health: Arc::clone(&health),
        backlog_rows: usize::try_from(config.general.history_backlog_rows).unwrap_or(usize::MAX),
    };

    let tls = Tls::open(config, &loaded.state_dir, &registry)?;
    // Bind everything before running anything, so a bad address fails the start.
    let turn = match run_turn {
        true => Some(
            bind_turn(
                config,
                access.credentials(&snapshot, secrets.clone()),
                &registry,
                tls.as_ref(),
            )
            .await?,
        ),
        false => None,
    };
    let signal_listener = match run_signal {
        true => Some(bind_tcp("signal.listen", config.signal.listen).await?),
        false => None,
    };
    let tls_listeners = match (&tls, run_signal) {
        (Some(tls), true) => {
            let turn_control = turn.as_ref().map(|tb| tb.role.control());
            bind_tls_listeners(config, tls, turn_control, &registry).await?
        }
        _ => TlsListeners::default(),
    };
    // Port 80 (HTTP-01 and redirects) goes with the one TLS port.
    let port80 = match (&tls, run_signal) {
        (Some(tls), true) => {
            let https = tls_listeners.one_port_addrs.first().copied().or_else(|| {
                tls_listeners
                    .listeners
                    .iter()
                    .find_map(|l| l.listener.local_addr().ok())
            });
            Some(crate::tls::Port80::bind(config, tls, https, &registry).await?)
        }
        _ => None,
    };
    let admin_listener = match run_admin {
        true => Some(bind_tcp("admin.listen", config.admin.listen).await?),
        false => None,
    };
    // Every listener of this process, bound (ports 0 resolved): the relay refuses them as
    // peers on every port class, not only its own TURN listeners.
    let local = |l: &tokio::net::TcpListener| l.local_addr().ok();
    let service_addrs: Vec<SocketAddr> = turn
        .iter()
        .flat_map(|tb| {
            tb.udp
                .iter()
                .chain(&tb.tls)
                .copied()
                .chain(tb.http.as_ref().and_then(local))
        })
        .chain(signal_listener.as_ref().and_then(local))
        .chain(tls_listeners.listeners.iter().filter_map(|l| local(&l.listener)))
        .chain(port80.iter().flat_map(|p| p.listeners.iter().filter_map(local)))
        .chain(admin_listener.as_ref().and_then(local))
        .collect();
    if let Some(tb) = &turn {
        tb.role
            .control()
            .set_policy(callbox_turn::peer_policy_for(config, &service_addrs));
    }
    if run_signal && !run_turn && config.signal.turn_urls.is_empty() && config.signal.stun_urls.is_empty() {
        tracing::warn!(
            "the signal role runs without a turn role and signal.turn_urls is empty: ICE lists will be empty"
        );
    }

    let shutdown = Shutdown::on_signals();
    let mut running = Running::default();
    let turns = TurnsUrls::new(
        turn.iter().flat_map(|tb| tb.tls.iter().copied()).chain(
            tls_listeners
                .one_port_addrs
                .iter()
                .copied()
                .filter(|_| turn.is_some()),
        ),
        tls.as_ref().and_then(|t| t.turns_host(config)),
    );
    let (stun_urls, turn_urls) = ice_urls(config, turn.as_ref(), turns);
    if let Some(tls) = &tls {
        tls.spawn_watch(Duration::from_millis(config.tls.reload_interval_ms));
        // The process that answers challenges orders the certificate; others on the same
        // state directory pick its files up through the watch.
        let port80_runs = port80.as_ref().is_some_and(|p| !p.listeners.is_empty());
        if run_signal && let Some(acme) = crate::tls::acme_settings(config, &loaded.state_dir, port80_runs) {
            tracing::info!(names = ?acme.domains, directory = %acme.directory, challenge = ?acme.challenge, "ACME client started");
            callbox_acme::spawn(acme, Arc::clone(&tls.certs), &registry);
        }
    }
    crate::reload::Reloader {
        load: reload,
        as_loaded,
        running: config.clone(),
        tls: tls.clone(),
        access: access_reload,
        turn: turn.as_ref().map(|tb| tb.role.control()),
        turn_listeners: service_addrs,
    }
    .spawn();
    // The watchdog pings while every relay worker goes round its loop (and the runtime
    // that sends them runs).
    let workers = turn.as_ref().map(|tb| tb.role.metrics());
    let turn_metrics = workers.clone();
    supervisor::spawn_watchdog(move || {
        workers
            .as_ref()
            .is_none_or(|m| m.workers_alive(supervisor::WORKER_STALL))
    });
    if let Some(tb) = turn {
        start_turn(tb, &mut access, &history, &shutdown, &mut running).await;
    }
    if let Some(listener) = signal_listener {
        let auth = &config.auth;
        let own = callbox_signal::IceUrls {
            stun: stun_urls.clone(),
            turn: turn_urls.clone(),
        };
        let ice = callbox_signal::IceSource {
            urls: ArcSwap::from_pointee(own.clone()),
            secrets: ArcSwap::from_pointee(secrets),
            default_ttl: auth.credential_ttl,
            max_ttl: auth.max_credential_ttl,
        };
        let role = callbox_signal::SignalRole::new(config.signal.clone(), ice, Arc::clone(&registry))
            .map_err(anyhow::Error::msg)?;
        let control = role.control();
        control.set_api_keys(snapshot.api_keys.iter().cloned().collect());
        control.set_bans(snapshot.bans.iter().map(|(_, n)| *n).collect());
        if let Some(sessions) = control.take_session_events() {
            running.history.push(HistoryWriter::spawn(
                sessions,
                session_row,
                callbox_store::Store::record_sessions,
                history.clone(),
                "session",
            ));
        }
        if let Some(c) = &cluster {
            crate::cluster::spawn_ice_refresh(
                c.clone(),
                control.clone(),
                own,
                config.cluster.ice_regions.clone(),
            );
        }
        access.signal = Some(control);
        running.ready.push(("signal", local_addr(&listener)));
        if let Some(l) = tls_listeners.listeners.iter().find(|l| l.tls.stun.is_none()) {
            running.ready.push(("signal_tls", local_addr(&l.listener)));
        }
        if !tls_listeners.one_port_addrs.is_empty() {
            running
                .ready
                .push(("tls", join_addrs(&tls_listeners.one_port_addrs)));
        }
        running.role(
            "signal",
            role.run(listener, tls_listeners.listeners, shutdown.wait()),
        );
    }
    if let Some(port80) = port80
        && !port80.listeners.is_empty()
    {
        running.ready.push(("port80", join_addrs(&port80.local_addrs())));
        for run in port80.serve(|| shutdown.wait()) {
            running.role("port80", run);
        }
    }
    if let (Some(listener), Some(st)) = (admin_listener, &store) {
        ensure_admin_token(st, &loaded.state_dir)?;
        let live = crate::live::LiveRoles {
            turn: access.turn.clone(),
            signal: access.signal.clone(),
            cluster: cluster.clone(),
        };
        let app = callbox_admin::AdminState::new(
            Arc::clone(st),
            Arc::clone(&health),
            Arc::new(live),
            admin_info(config, &roles, started, access.config_secrets.is_some())?,
            Arc::clone(&access.changed),
            Arc::clone(&registry),
        );
        running.ready.push(("admin", local_addr(&listener)));
        running.role(
            "admin",
            callbox_admin::AdminRole::new(app).run(listener, shutdown.wait()),
        );
    }
    let access_signal = access.signal.clone();
    let access_turn = access.turn.clone();
    // Without a store it still applies reloaded configuration keys.
    tokio::spawn(access.run(snapshot));
    let fields: Vec<String> = running.ready.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
    tracing::info!(
        roles = %names.join(","),
        state_dir = %loaded.state_dir.display(),
        config = %loaded.source,
        "callbox ready {}",
        fields.join(" ")
    );
    if let Some(c) = cluster {
        // Other nodes' admins ask this one about its allocations and rooms.
        c.serve_rpc(Arc::new(crate::live::LiveRoles {
            turn: access_turn,
            signal: access_signal.clone(),
            cluster: Some(c.clone()),
        }));
        let hb = crate::cluster::Heartbeat {
            roles: names.iter().map(|n| n.to_string()).collect(),
            listeners: fields.clone(),
            ice: callbox_signal::IceUrls {
                stun: if run_turn { stun_urls } else { vec![] },
                turn: if run_turn { turn_urls } else { vec![] },
            },
            turn: turn_metrics,
            signal: access_signal,
        };
        crate::cluster::spawn_heartbeat(c, hb, shutdown.wait());
    }
    supervisor::ready(&format!("serving {}", names.join(",")));
    running.join().await
}

/// Raises the open-files limit to the hard limit and fits the listeners' caps under it.
fn fit_descriptors(loaded: &mut Loaded, roles: &[Role]) {
    match crate::descriptors::raise_limit() {
        Ok((before, after)) => {
            if after != before {
                tracing::info!(before, after, "raised the open-files limit to the hard limit");
            }
            let workers = callbox_turn::workers(&loaded.config);
            for note in crate::descriptors::fit(&mut loaded.config, after, roles, workers) {
                tracing::warn!("{note}");
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not read or raise the open-files limit"),
    }
}

/// What `/admin/v1/status` and `/admin/v1/config` tell about this process.
fn admin_info(
    config: &Config,
    roles: &[Role],
    started: std::time::Instant,
    secrets_from_config: bool,
) -> anyhow::Result<callbox_admin::AdminInfo> {
    let redacted: toml::Value = toml::from_str(&config.to_redacted_toml()).context("redacted config")?;
    Ok(callbox_admin::AdminInfo {
        version: env!("CARGO_PKG_VERSION").to_string(),
        roles: roles.iter().map(|r| r.as_str().to_string()).collect(),
        started,
        realm: config.turn.realm.clone(),
        config: serde_json::to_value(redacted).context("redacted config")?,
        secrets_from_config,
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
    })
}

/// Starts the turn role (its HTTP listener stops with it) and its history writer.
async fn start_turn(
    tb: TurnBound,
    access: &mut Access,
    history: &HistorySink,
    shutdown: &Shutdown,
    running: &mut Running,
) {
    access.turn = Some(tb.role.control());
    running.history.push(HistoryWriter::spawn(
        tb.events,
        allocation_row,
        callbox_store::Store::record_history,
        history.clone(),
        "allocation",
    ));
    running.ready.push(("udp", join_addrs(&tb.udp)));
    if !tb.tls.is_empty() {
        running.ready.push(("turn_tls", join_addrs(&tb.tls)));
    }
    running
        .ready
        .push(("http", tb.http.as_ref().map_or("-".into(), local_addr)));
    running.ready.push(("relay", tb.advertise.to_string()));
    running.ready.push(("workers", tb.workers.to_string()));
    let ready = tb.role.ready_flag();
    let role = tb.role;
    let (http, stop) = (tb.http, shutdown.wait());
    let run = tokio::spawn(async move { role.run(http, stop).await.context("turn role") });
    // "ready" is logged once the data path threads run, so /readyz already says 200.
    while !ready.load(std::sync::atomic::Ordering::Relaxed) && !run.is_finished() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    running.roles.push(("turn", run));
}
