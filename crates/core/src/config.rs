//! The configuration model and its loading: one TOML file, then environment overrides,
//! then command-line overrides (each later source wins). Unknown keys are errors, and
//! every error names its key and where it came from (file line and column, environment
//! variable, or flag).

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::policy::Cidr;
use crate::secret::Secret;

/// Environment variables with this prefix and a `__` override config keys:
/// `CALLBOX_TURN__USER_QUOTA=4` sets `turn.user_quota`.
pub const ENV_PREFIX: &str = "CALLBOX_";

/// The whole configuration. Every field has a default, so an empty file is valid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub general: General,
    pub auth: Auth,
    pub turn: Turn,
    pub signal: Signal,
    pub admin: Admin,
}

/// Process-wide settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct General {
    /// Where generated state (the shared secret, later the store) lives. Default:
    /// `$STATE_DIRECTORY` under systemd, else `./callbox-data`.
    pub state_dir: Option<PathBuf>,
    /// A tracing filter, e.g. `info` or `callbox_turn=debug,info`.
    pub log_level: String,
    /// `auto` (journald when started by systemd, else stdout), `journald`, `stdout` or `json`.
    pub log_format: LogFormat,
    /// File descriptors kept out of every listener's connection cap, so that the relay
    /// can still bind sockets, the store can open files and `/healthz` can answer while
    /// the listeners are full. The soft `RLIMIT_NOFILE` is raised to the hard limit at
    /// start; when the caps do not fit under it, the signal listener's cap is lowered.
    pub reserved_descriptors: u64,
}

impl Default for General {
    fn default() -> Self {
        Self {
            state_dir: None,
            log_level: "info".into(),
            log_format: LogFormat::Auto,
            reserved_descriptors: 256,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Auto,
    Journald,
    Stdout,
    Json,
}

/// Credentials: TURN REST shared secrets and static users.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// Shared secrets, newest first: the first signs new credentials, all verify.
    /// Empty: a secret is generated on first start and kept in the state directory.
    pub secrets: Vec<Secret>,
    /// Users with a fixed password (long-term credentials).
    pub static_users: Vec<StaticUser>,
    /// Lifetime of minted REST credentials, in seconds.
    pub credential_ttl: u64,
    /// Upper bound for a requested credential lifetime, in seconds.
    pub max_credential_ttl: u64,
    /// Seconds a REST username's expiry may lie beyond `now + max_credential_ttl` (clock
    /// difference between the minting and the verifying host). A later expiry is one that
    /// no mint of ours made: refused with 401.
    pub clock_skew: u64,
}

impl Default for Auth {
    fn default() -> Self {
        Self {
            secrets: vec![],
            static_users: vec![],
            credential_ttl: 86_400,
            max_credential_ttl: 7 * 86_400,
            clock_skew: 300,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticUser {
    pub name: String,
    pub password: Secret,
}

/// The STUN/TURN role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Turn {
    /// The long-term credential realm.
    pub realm: String,
    /// UDP listeners for STUN and TURN.
    pub listen: Vec<SocketAddr>,
    /// The IPv4 address relay sockets bind to. Default: the address of the default
    /// route's interface, 127.0.0.1 when there is none.
    pub relay_ip: Option<IpAddr>,
    /// The IPv6 address relay sockets bind to; without it IPv6 allocations get 440.
    pub relay_ipv6: Option<Ipv6Addr>,
    /// 1:1 NAT (EC2, GCE): `"PUBLIC"` or `"PUBLIC/PRIVATE"`. Relay sockets bind to PRIVATE
    /// (or `relay_ip`) and PUBLIC is what clients are told.
    pub external_ip: Option<ExternalIp>,
    /// The host name or address put in ICE server URLs. Default: the advertised address.
    pub public_host: Option<String>,
    pub relay_port_min: u16,
    pub relay_port_max: u16,
    /// Data path threads; 0 means one per CPU core.
    pub workers: usize,
    /// Allocation lifetime when the client asks for less (seconds).
    pub default_lifetime: u32,
    /// Longest lifetime one Allocate or Refresh grants (seconds).
    pub max_lifetime: u32,
    /// Longest an allocation may live in total through refreshes (seconds), so credentials
    /// that expired after the allocation was made cannot keep it forever.
    pub max_allocation_age: u64,
    /// A NONCE older than this is stale (438).
    pub nonce_lifetime: u32,
    /// Allocations one user may hold at once (486 past it).
    pub user_quota: u32,
    /// Allocations the server holds at once (508 past it).
    pub total_quota: u32,
    /// Per-allocation cap in bytes per second, each direction; 0 = no cap.
    pub bandwidth_limit: u64,
    /// Peer ranges allowed although the default policy refuses them (a LAN deployment).
    pub allow_peers: Vec<Cidr>,
    /// Peer ranges refused in addition to the defaults.
    pub deny_peers: Vec<Cidr>,
    /// HTTP listener for `/metrics`, `/healthz` and `/readyz` of this role.
    pub http_listen: Option<SocketAddr>,
    /// Connections the role's HTTP listener holds at once (also per address).
    pub http_max_connections: usize,
    /// Milliseconds a connection to the role's HTTP listener has to send its request head.
    pub http_header_timeout_ms: u64,
    /// Send the SOFTWARE attribute (callbox's name and version) in every answer.
    pub software: bool,
    /// Answers per second per source to requests from 5-tuples without an allocation
    /// (Binding, 401 challenges, errors): the cap on reflection from spoofed sources.
    /// Per data path thread; 0 turns the limit off.
    pub unauthenticated_rate: u32,
    /// Burst of such answers a source may get at once.
    pub unauthenticated_burst: u32,
    /// IPv6 sources count under their first this-many bits for per-source limits.
    pub ipv6_prefix_len: u8,
    /// Seconds a port reserved by EVEN-PORT's R bit is kept for its RESERVATION-TOKEN.
    pub reservation_lifetime: u64,
    /// Reservations held at once (each holds a socket and a unit of its user's quota).
    pub max_reservations: usize,
}

impl Default for Turn {
    fn default() -> Self {
        Self {
            realm: "callbox".into(),
            listen: vec![
                "0.0.0.0:3478".parse().expect("literal"),
                "[::]:3478".parse().expect("literal"),
            ],
            relay_ip: None,
            relay_ipv6: None,
            external_ip: None,
            public_host: None,
            relay_port_min: 49152,
            relay_port_max: 65535,
            workers: 0,
            default_lifetime: 600,
            max_lifetime: 3600,
            max_allocation_age: 86_400,
            nonce_lifetime: 600,
            user_quota: 10,
            total_quota: 10_000,
            bandwidth_limit: 0,
            allow_peers: vec![],
            deny_peers: vec![],
            http_listen: Some("127.0.0.1:9478".parse().expect("literal")),
            http_max_connections: 64,
            http_header_timeout_ms: 5000,
            software: false,
            unauthenticated_rate: 50,
            unauthenticated_burst: 200,
            ipv6_prefix_len: crate::limit_key::DEFAULT_IPV6_PREFIX,
            reservation_lifetime: 30,
            max_reservations: 1024,
        }
    }
}

/// How a client proves who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMode {
    /// Anyone (rate-limited per address).
    Open,
    /// `X-Api-Key`, `Authorization: Bearer`, `?key=` or `?api=` (ICE endpoint only).
    ApiKey,
    /// An HS256 JWT signed with `signal.jwt_secret`.
    Jwt,
}

/// An API key for `/v1/ice-servers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// Becomes the user id of credentials minted with this key.
    pub name: String,
    pub key: Secret,
}

/// The signaling role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Signal {
    /// HTTP and WebSocket listener.
    pub listen: SocketAddr,
    /// Who may open `/v1/signal`: `open` or `jwt`.
    pub auth: AuthMode,
    /// Who may call `/v1/ice-servers`: `open`, `api-key` or `jwt`.
    pub ice_auth: AuthMode,
    /// HS256 key for `jwt` modes.
    pub jwt_secret: Option<Secret>,
    pub api_keys: Vec<ApiKey>,
    /// Origins allowed for browsers (exact `scheme://host[:port]`, or `*`). Requests
    /// without an Origin header (non-browser clients) and same-origin requests are always
    /// allowed.
    pub allowed_origins: Vec<String>,
    /// Refuse clients that do not offer the `callbox.v1` subprotocol.
    pub require_subprotocol: bool,
    pub room_capacity: usize,
    /// Largest message accepted, in bytes (close 1009 past it).
    pub max_message_bytes: usize,
    pub heartbeat_ms: u64,
    /// Seconds a dropped connection keeps its place for a resume.
    pub resume_grace: u64,
    pub resume_log_messages: usize,
    pub resume_log_bytes: usize,
    /// Bytes queued for a slow reader before it is closed with 4013.
    pub send_buffer_bytes: usize,
    /// TCP connections one address (an IPv6 /`ipv6_prefix_len`) holds at once, counted
    /// from accept: requests in progress, keep-alive and WebSocket connections alike.
    pub max_connections_per_address: usize,
    /// TCP connections the listener holds at once.
    pub max_connections: usize,
    /// Milliseconds a connection has to send a complete request head (also between
    /// keep-alive requests); slower ones are closed.
    pub header_timeout_ms: u64,
    /// IPv6 clients count under their first this-many bits for per-address limits.
    pub ipv6_prefix_len: u8,
    /// Messages per 10-second window.
    pub rate_per_connection: u32,
    pub rate_per_address: u32,
    pub rate_per_room: u32,
    /// `/v1/ice-servers` and `/v1/signal/validate` requests per address per 10 s (open mode).
    pub http_rate_per_address: u32,
    /// Seconds between SIGTERM and exit, for clients to move elsewhere.
    pub drain_seconds: u64,
    /// TURN/STUN URLs to hand out when the turn role does not run in this process.
    pub turn_urls: Vec<String>,
    pub stun_urls: Vec<String>,
}

impl Default for Signal {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".parse().expect("literal"),
            auth: AuthMode::Open,
            ice_auth: AuthMode::Open,
            jwt_secret: None,
            api_keys: vec![],
            allowed_origins: vec![],
            require_subprotocol: false,
            room_capacity: 8,
            max_message_bytes: 64 * 1024,
            heartbeat_ms: 15_000,
            resume_grace: 30,
            resume_log_messages: 256,
            resume_log_bytes: 1 << 20,
            send_buffer_bytes: 1 << 20,
            max_connections_per_address: 50,
            max_connections: 10_000,
            header_timeout_ms: 5000,
            ipv6_prefix_len: crate::limit_key::DEFAULT_IPV6_PREFIX,
            rate_per_connection: 500,
            rate_per_address: 2000,
            rate_per_room: 2000,
            http_rate_per_address: 100,
            drain_seconds: 20,
            turn_urls: vec![],
            stun_urls: vec![],
        }
    }
}

/// The admin role: the token-protected API over the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    /// The API listener. Loopback by default: put a TLS proxy in front to reach it remotely.
    pub listen: SocketAddr,
    /// Days of allocation and session history kept (0 keeps everything).
    pub history_retention_days: u64,
    /// Largest request body accepted, in bytes (413 past it).
    pub max_body_bytes: usize,
    /// Failed token checks allowed per client address per minute (429 past it).
    pub auth_failures_per_minute: u32,
    /// Seconds the previous TURN secret keeps verifying after a rotation. Default: the
    /// longest credential lifetime (`auth.max_credential_ttl`), so nothing minted before
    /// a rotation stops working early.
    pub rotation_overlap: Option<u64>,
    /// TCP connections the admin listener holds at once.
    pub max_connections: usize,
    /// TCP connections one address (an IPv6 /64) holds at once.
    pub max_connections_per_address: usize,
    /// Milliseconds a connection has to send a complete request head.
    pub header_timeout_ms: u64,
}

impl Default for Admin {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8081".parse().expect("literal"),
            history_retention_days: 30,
            max_body_bytes: 64 * 1024,
            auth_failures_per_minute: 10,
            rotation_overlap: None,
            max_connections: 128,
            max_connections_per_address: 32,
            header_timeout_ms: 5000,
        }
    }
}

/// A 1:1 NAT mapping: the public address clients see, and optionally the private one the
/// host owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExternalIp {
    pub public: IpAddr,
    pub private: Option<IpAddr>,
}

impl FromStr for ExternalIp {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (public, private) = match s.split_once('/') {
            Some((p, q)) => (p, Some(q)),
            None => (s, None),
        };
        let public: IpAddr = public
            .trim()
            .parse()
            .map_err(|_| format!("`{public}` is not an IP address (expected PUBLIC or PUBLIC/PRIVATE)"))?;
        let private =
            match private {
                None => None,
                Some(p) => Some(p.trim().parse::<IpAddr>().map_err(|_| {
                    format!("`{p}` is not an IP address (expected PUBLIC or PUBLIC/PRIVATE)")
                })?),
            };
        if let Some(private) = private
            && private.is_ipv4() != public.is_ipv4()
        {
            return Err("PUBLIC and PRIVATE must be of the same address family".into());
        }
        Ok(Self { public, private })
    }
}

impl fmt::Display for ExternalIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.private {
            Some(p) => write!(f, "{}/{}", self.public, p),
            None => write!(f, "{}", self.public),
        }
    }
}

impl Serialize for ExternalIp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ExternalIp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// Where a configuration value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File {
        path: String,
        line: usize,
        column: usize,
    },
    Env(String),
    Flag(String),
    /// A rule that spans keys in a file without a single place to point at.
    Config(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line, column } => write!(f, "{path}:{line}:{column}"),
            Origin::Env(var) => write!(f, "environment variable {var}"),
            Origin::Flag(arg) => write!(f, "flag --set {arg}"),
            Origin::Config(path) => write!(f, "{path}"),
        }
    }
}

/// One configuration error: where, which key, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub origin: Origin,
    /// The dotted key, e.g. `turn.user_quota`, when one could be named.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(k) => write!(f, "{}: key `{}`: {}", self.origin, k, self.message),
            None => write!(f, "{}: {}", self.origin, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The configuration text of a file.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    /// Shown in errors.
    pub path: String,
    pub text: String,
}

/// One `key=value` override from the environment or a flag.
#[derive(Debug, Clone)]
pub struct Override {
    pub key: String,
    pub value: String,
    pub origin: Origin,
}

impl Override {
    /// Config overrides among environment variables (`CALLBOX_SECTION__KEY=value`).
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> Vec<Override> {
        let mut out: Vec<Override> = vars
            .into_iter()
            .filter_map(|(name, value)| {
                let rest = name.strip_prefix(ENV_PREFIX)?;
                rest.contains("__").then(|| Override {
                    key: rest.to_ascii_lowercase().replace("__", "."),
                    value,
                    origin: Origin::Env(name.clone()),
                })
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// A `--set key=value` flag.
    pub fn from_flag(arg: &str) -> Result<Override, ConfigError> {
        let (key, value) = arg.split_once('=').ok_or_else(|| ConfigError {
            origin: Origin::Flag(arg.to_string()),
            key: None,
            message: "expected KEY=VALUE, e.g. turn.realm=example.com".into(),
        })?;
        Ok(Override {
            key: key.trim().to_string(),
            value: value.to_string(),
            origin: Origin::Flag(arg.to_string()),
        })
    }

    /// The value as TOML (`5`, `true`, `["a", "b"]`), or as a plain string when it is not
    /// valid TOML (so `CALLBOX_TURN__REALM=example.com` needs no quotes).
    fn toml_value(&self) -> toml::Value {
        toml::from_str::<toml::Table>(&format!("v = {}", self.value))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(self.value.clone()))
    }
}

impl Config {
    /// Loads a file (if any), then applies overrides in order and validates the result.
    /// Returns every error found, each with its origin.
    pub fn load(file: Option<&ConfigFile>, overrides: &[Override]) -> Result<Config, Vec<ConfigError>> {
        let mut table = toml::Table::new();
        if let Some(file) = file {
            // Deserializing from text keeps spans, so the first error has a line and column.
            if let Err(e) = toml::from_str::<Config>(&file.text) {
                return Err(vec![file_error(file, &e)]);
            }
            table = toml::from_str(&file.text).expect("parsed above");
        }
        for o in overrides {
            set_path(&mut table, &o.key, o.toml_value()).map_err(|message| {
                vec![ConfigError {
                    origin: o.origin.clone(),
                    key: Some(o.key.clone()),
                    message,
                }]
            })?;
            if let Err(e) = toml::Value::Table(table.clone()).try_into::<Config>() {
                return Err(vec![ConfigError {
                    origin: o.origin.clone(),
                    key: Some(o.key.clone()),
                    message: e.message().to_string(),
                }]);
            }
        }
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| {
                vec![ConfigError {
                    origin: Origin::Config("configuration".into()),
                    key: None,
                    message: e.message().to_string(),
                }]
            })?;
        let problems = config.validate();
        if problems.is_empty() {
            return Ok(config);
        }
        Err(problems
            .into_iter()
            .map(|(key, message)| {
                let origin = overrides
                    .iter()
                    .rev()
                    .find(|o| key.starts_with(&o.key) || o.key.starts_with(&key))
                    .map(|o| o.origin.clone())
                    .or_else(|| file.and_then(|f| locate_key(f, &key)))
                    .unwrap_or_else(|| Origin::Config(file.map_or("defaults".into(), |f| f.path.clone())));
                ConfigError {
                    origin,
                    key: Some(key),
                    message,
                }
            })
            .collect())
    }

    /// Rules that types alone can't state. Each problem names its key.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        let t = &self.turn;
        if t.realm.is_empty() || t.realm.len() > 127 || t.realm.contains('"') {
            p.push((
                "turn.realm".into(),
                "must be 1-127 characters without `\"`".into(),
            ));
        }
        if t.listen.is_empty() {
            p.push(("turn.listen".into(), "at least one listener is needed".into()));
        }
        if t.relay_port_min > t.relay_port_max {
            p.push((
                "turn.relay_port_min".into(),
                format!(
                    "{} is above turn.relay_port_max ({})",
                    t.relay_port_min, t.relay_port_max
                ),
            ));
        }
        if t.relay_port_min == 0 {
            p.push(("turn.relay_port_min".into(), "must be at least 1".into()));
        }
        if t.default_lifetime == 0 {
            p.push(("turn.default_lifetime".into(), "must be at least 1 second".into()));
        }
        if t.max_lifetime < t.default_lifetime {
            p.push((
                "turn.max_lifetime".into(),
                format!(
                    "{} is below turn.default_lifetime ({})",
                    t.max_lifetime, t.default_lifetime
                ),
            ));
        }
        if t.nonce_lifetime < 10 {
            p.push(("turn.nonce_lifetime".into(), "must be at least 10 seconds".into()));
        }
        if t.total_quota == 0 {
            p.push(("turn.total_quota".into(), "must be at least 1".into()));
        }
        if t.workers > 256 {
            p.push(("turn.workers".into(), "must be 0 (one per core) to 256".into()));
        }
        if let Some(ip) = t.relay_ip
            && (ip.is_unspecified() || ip.is_multicast())
        {
            p.push(("turn.relay_ip".into(), format!("{ip} cannot be a relay address")));
        }
        if let Some(ip) = t.relay_ipv6
            && (ip.is_unspecified() || ip.is_multicast() || ip.to_ipv4_mapped().is_some())
        {
            p.push((
                "turn.relay_ipv6".into(),
                format!("{ip} cannot be a relay address"),
            ));
        }
        for (key, v) in [
            ("turn.http_max_connections", t.http_max_connections as u64),
            ("turn.reservation_lifetime", t.reservation_lifetime),
            ("turn.max_reservations", t.max_reservations as u64),
        ] {
            if v == 0 {
                p.push((key.into(), "must be at least 1".into()));
            }
        }
        if t.unauthenticated_rate > 0 && t.unauthenticated_burst == 0 {
            p.push((
                "turn.unauthenticated_burst".into(),
                "must be at least 1 when turn.unauthenticated_rate is set".into(),
            ));
        }
        // A listener inside the relay range could be handed out as a relay port (or
        // taken by one), and the relay could be pointed at its own listener.
        let relay_range = t.relay_port_min..=t.relay_port_max;
        let mut listeners: Vec<(String, SocketAddr)> = t
            .listen
            .iter()
            .enumerate()
            .map(|(i, a)| (format!("turn.listen.{i}"), *a))
            .collect();
        listeners.extend(t.http_listen.map(|a| ("turn.http_listen".to_string(), a)));
        listeners.push(("signal.listen".into(), self.signal.listen));
        listeners.push(("admin.listen".into(), self.admin.listen));
        for (key, addr) in listeners {
            if addr.port() != 0 && relay_range.contains(&addr.port()) {
                p.push((
                    key,
                    format!(
                        "port {} is inside the relay port range turn.relay_port_min..turn.relay_port_max ({}-{}); move one of them",
                        addr.port(),
                        t.relay_port_min,
                        t.relay_port_max
                    ),
                ));
            }
        }
        for (key, v) in [
            ("turn.ipv6_prefix_len", t.ipv6_prefix_len),
            ("signal.ipv6_prefix_len", self.signal.ipv6_prefix_len),
        ] {
            if v == 0 || v > 128 {
                p.push((key.into(), "must be 1..=128".into()));
            }
        }
        let sg = &self.signal;
        let uses_jwt = sg.auth == AuthMode::Jwt || sg.ice_auth == AuthMode::Jwt;
        if uses_jwt && sg.jwt_secret.is_none() {
            p.push((
                "signal.jwt_secret".into(),
                "is required when signal.auth or signal.ice_auth is `jwt`".into(),
            ));
        }
        if sg.auth == AuthMode::ApiKey {
            p.push((
                "signal.auth".into(),
                "must be `open` or `jwt` (API keys are for signal.ice_auth)".into(),
            ));
        }
        for (i, k) in sg.api_keys.iter().enumerate() {
            if !crate::credentials::valid_user_id(&k.name) {
                p.push((
                    format!("signal.api_keys.{i}.name"),
                    "must be 1-64 of A-Za-z0-9_.@-".into(),
                ));
            }
            if k.key.expose().len() < 16 {
                p.push((
                    format!("signal.api_keys.{i}.key"),
                    "must be at least 16 characters".into(),
                ));
            }
        }
        for (key, v) in [
            ("signal.room_capacity", sg.room_capacity as u64),
            ("signal.max_message_bytes", sg.max_message_bytes as u64),
            ("signal.heartbeat_ms", sg.heartbeat_ms),
            ("signal.resume_log_messages", sg.resume_log_messages as u64),
            ("signal.resume_log_bytes", sg.resume_log_bytes as u64),
            ("signal.send_buffer_bytes", sg.send_buffer_bytes as u64),
            (
                "signal.max_connections_per_address",
                sg.max_connections_per_address as u64,
            ),
            ("signal.rate_per_connection", u64::from(sg.rate_per_connection)),
            ("signal.rate_per_address", u64::from(sg.rate_per_address)),
            ("signal.rate_per_room", u64::from(sg.rate_per_room)),
            (
                "signal.http_rate_per_address",
                u64::from(sg.http_rate_per_address),
            ),
            ("signal.max_connections", sg.max_connections as u64),
            ("admin.max_connections", self.admin.max_connections as u64),
            (
                "admin.max_connections_per_address",
                self.admin.max_connections_per_address as u64,
            ),
        ] {
            if v == 0 {
                p.push((key.into(), "must be at least 1".into()));
            }
        }
        if sg.room_capacity > 1000 {
            p.push(("signal.room_capacity".into(), "must be at most 1000".into()));
        }
        if sg.heartbeat_ms < 100 {
            p.push(("signal.heartbeat_ms".into(), "must be at least 100".into()));
        }
        for (key, v) in [
            ("signal.header_timeout_ms", sg.header_timeout_ms),
            ("admin.header_timeout_ms", self.admin.header_timeout_ms),
            ("turn.http_header_timeout_ms", t.http_header_timeout_ms),
        ] {
            if v < 100 {
                p.push((key.into(), "must be at least 100".into()));
            }
        }
        for (i, o) in sg.allowed_origins.iter().enumerate() {
            if o != "*" && !(o.starts_with("http://") || o.starts_with("https://")) {
                p.push((
                    format!("signal.allowed_origins.{i}"),
                    format!("`{o}` is not `*` or an http(s) origin"),
                ));
            }
        }
        for (name, urls) in [
            ("signal.turn_urls", &sg.turn_urls),
            ("signal.stun_urls", &sg.stun_urls),
        ] {
            for (i, u) in urls.iter().enumerate() {
                let ok = if name == "signal.turn_urls" {
                    u.starts_with("turn:") || u.starts_with("turns:")
                } else {
                    u.starts_with("stun:") || u.starts_with("stuns:")
                };
                if !ok {
                    p.push((
                        format!("{name}.{i}"),
                        format!("`{u}` is not a {} URL", &name[7..11]),
                    ));
                }
            }
        }
        let ad = &self.admin;
        if ad.max_body_bytes < 1024 {
            p.push(("admin.max_body_bytes".into(), "must be at least 1024".into()));
        }
        if ad.auth_failures_per_minute == 0 {
            p.push((
                "admin.auth_failures_per_minute".into(),
                "must be at least 1".into(),
            ));
        }
        let a = &self.auth;
        if a.credential_ttl == 0 || a.credential_ttl > a.max_credential_ttl {
            p.push((
                "auth.credential_ttl".into(),
                format!("must be 1..=auth.max_credential_ttl ({})", a.max_credential_ttl),
            ));
        }
        for (i, u) in a.static_users.iter().enumerate() {
            if u.name.is_empty()
                || u.name.len() > 255
                || crate::credentials::RestUsername::parse(&u.name).is_some()
            {
                p.push((
                    format!("auth.static_users.{i}.name"),
                    "must be 1-255 characters and not look like a REST username (`<digits>:...`)".into(),
                ));
            }
        }
        p
    }

    /// The effective configuration as TOML, with every secret shown as `<redacted>`.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serializes")
    }
}

fn set_path(table: &mut toml::Table, key: &str, value: toml::Value) -> Result<(), String> {
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err("is not a dotted key such as turn.realm".into());
    }
    let (last, parents) = parts.split_last().expect("split yields one part");
    let mut cur = table;
    for p in parents {
        let entry = cur
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{p}` is not a table"))?;
    }
    cur.insert(last.to_string(), value);
    Ok(())
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

fn file_error(file: &ConfigFile, e: &toml::de::Error) -> ConfigError {
    let span = e.span();
    let (line, column) = span.as_ref().map_or((1, 1), |s| line_col(&file.text, s.start));
    let key = span.and_then(|s| key_at(&file.text, s.start));
    ConfigError {
        origin: Origin::File {
            path: file.path.clone(),
            line,
            column,
        },
        key,
        message: e.message().trim().to_string(),
    }
}

/// The dotted key whose key or value covers `offset` in `text`.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let doc = toml_edit::Document::parse(text).ok()?;
    let mut path = Vec::new();
    fn walk(t: &dyn toml_edit::TableLike, offset: usize, path: &mut Vec<String>) -> bool {
        for (k, item) in t.iter() {
            let key_span = t.key(k).and_then(|k| k.span());
            let item_span = item.span();
            let hit = |s: Option<std::ops::Range<usize>>| s.is_some_and(|s| s.contains(&offset));
            if hit(key_span.clone()) || hit(item_span.clone()) {
                path.push(k.to_string());
                if let Some(inner) = item.as_table_like() {
                    walk(inner, offset, path);
                }
                return true;
            }
            if let Some(inner) = item.as_table_like() {
                path.push(k.to_string());
                if walk(inner, offset, path) {
                    return true;
                }
                path.pop();
            }
            if let Some(arr) = item.as_array_of_tables() {
                for (i, inner) in arr.iter().enumerate() {
                    path.push(format!("{k}.{i}"));
                    if walk(inner, offset, path) {
                        return true;
                    }
                    path.pop();
                }
            }
        }
        false
    }
    walk(doc.as_table(), offset, &mut path).then(|| path.join("."))
}

/// Where `key` (dotted) is written in the file, if it is.
fn locate_key(file: &ConfigFile, key: &str) -> Option<Origin> {
    let doc = toml_edit::Document::parse(file.text.as_str()).ok()?;
    let mut table: &dyn toml_edit::TableLike = doc.as_table();
    let parts: Vec<&str> = key.split('.').collect();
    let mut span = None;
    let mut i = 0;
    while i < parts.len() {
        let part = parts[i];
        let (k, item) = table.get_key_value(part)?;
        span = k.span().or(span);
        if let Some(arr) = item.as_array_of_tables() {
            let idx: usize = parts.get(i + 1)?.parse().ok()?;
            table = arr.get(idx)?;
            i += 2;
            continue;
        }
        match item.as_table_like() {
            Some(t) => table = t,
            None => break,
        }
        i += 1;
    }
    let (line, column) = line_col(&file.text, span?.start);
    Some(Origin::File {
        path: file.path.clone(),
        line,
        column,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> ConfigFile {
        ConfigFile {
            path: "test.toml".into(),
            text: text.into(),
        }
    }

    #[test]
    fn empty_is_default() {
        assert_eq!(Config::load(Some(&file("")), &[]).unwrap(), Config::default());
        assert_eq!(Config::load(None, &[]).unwrap(), Config::default());
    }

    #[test]
    fn unknown_key_names_key_line_and_column() {
        let errs = Config::load(Some(&file("[turn]\nrealm = \"x\"\nuser_qota = 3\n")), &[]).unwrap_err();
        assert_eq!(errs.len(), 1);
        let e = &errs[0];
        assert_eq!(
            e.origin,
            Origin::File {
                path: "test.toml".into(),
                line: 3,
                column: 1
            }
        );
        assert_eq!(e.key.as_deref(), Some("turn.user_qota"));
        assert!(e.message.contains("unknown field"), "{e}");
    }

    #[test]
    fn a_listener_inside_the_relay_range_names_both_keys() {
        let text = "[turn]\nlisten = [\"0.0.0.0:3478\", \"127.0.0.1:50000\"]\nhttp_listen = \"127.0.0.1:0\"\n[signal]\nlisten = \"0.0.0.0:49152\"\n";
        let errs = Config::load(Some(&file(text)), &[]).unwrap_err();
        let keys: Vec<&str> = errs.iter().filter_map(|e| e.key.as_deref()).collect();
        assert_eq!(keys, ["turn.listen.1", "signal.listen"], "{errs:?}");
        for e in &errs {
            assert!(
                e.message
                    .contains("turn.relay_port_min..turn.relay_port_max (49152-65535)"),
                "{e}"
            );
        }
        // Moving the range clears it; port 0 (any free port) is never refused.
        let ok = "[turn]\nrelay_port_min = 20000\nrelay_port_max = 30000\nlisten = [\"127.0.0.1:50000\"]\nhttp_listen = \"127.0.0.1:0\"\n";
        assert!(Config::load(Some(&file(ok)), &[]).is_ok());
    }

    #[test]
    fn wrong_type_names_key() {
        let errs = Config::load(Some(&file("[turn]\n\nuser_quota = \"many\"\n")), &[]).unwrap_err();
        let e = &errs[0];
        assert_eq!(e.key.as_deref(), Some("turn.user_quota"));
        assert!(
            matches!(
                e.origin,
                Origin::File {
                    line: 3,
                    column: 14,
                    ..
                }
            ),
            "{e}"
        );
        let errs = Config::load(Some(&file("[turn]\nallow_peers = [\"10.0.0.1/8\"]\n")), &[]).unwrap_err();
        assert_eq!(errs[0].key.as_deref(), Some("turn.allow_peers"), "{}", errs[0]);
        assert!(
            errs[0].message.contains("did you mean `10.0.0.0/8`"),
            "{}",
            errs[0]
        );
    }

    #[test]
    fn syntax_error_has_line() {
        let errs = Config::load(Some(&file("[turn]\nrealm = \n")), &[]).unwrap_err();
        assert!(
            matches!(errs[0].origin, Origin::File { line: 2, .. }),
            "{}",
            errs[0]
        );
    }

    #[test]
    fn semantic_errors_point_at_the_key() {
        let errs = Config::load(
            Some(&file("[turn]\nrelay_port_min = 60000\nrelay_port_max = 50000\n")),
            &[],
        )
        .unwrap_err();
        assert_eq!(errs[0].key.as_deref(), Some("turn.relay_port_min"));
        assert!(
            matches!(
                errs[0].origin,
                Origin::File {
                    line: 2,
                    column: 1,
                    ..
                }
            ),
            "{}",
            errs[0]
        );
    }

    #[test]
    fn overrides_win_in_order_and_are_named_in_errors() {
        let env = Override::from_env(vec![
            ("CALLBOX_TURN__USER_QUOTA".to_string(), "4".to_string()),
            ("CALLBOX_TURN__REALM".to_string(), "example.com".to_string()),
            ("CALLBOX_CONFIG".to_string(), "ignored".to_string()),
            ("HOME".to_string(), "/root".to_string()),
        ]);
        assert_eq!(env.len(), 2);
        let flag = Override::from_flag("turn.user_quota=7").unwrap();
        let mut all = env.clone();
        all.push(flag);
        let c = Config::load(Some(&file("[turn]\nuser_quota = 2\n")), &all).unwrap();
        assert_eq!(c.turn.user_quota, 7);
        assert_eq!(c.turn.realm, "example.com");

        let bad = Override::from_env(vec![("CALLBOX_TURN__USER_QUOTA".into(), "lots".into())]);
        let errs = Config::load(None, &bad).unwrap_err();
        assert_eq!(errs[0].origin, Origin::Env("CALLBOX_TURN__USER_QUOTA".into()));
        assert_eq!(errs[0].key.as_deref(), Some("turn.user_quota"));

        let errs = Config::load(None, &[Override::from_flag("turn.nope=1").unwrap()]).unwrap_err();
        assert_eq!(errs[0].origin, Origin::Flag("turn.nope=1".into()));
        assert!(Override::from_flag("novalue").is_err());
    }

    #[test]
    fn redacted_output_hides_secrets() {
        let c = Config::load(
            Some(&file("[auth]\nsecrets = [\"topsecret\"]\nstatic_users = [{name = \"bob\", password = \"pw123\"}]\n")),
            &[],
        )
        .unwrap();
        let out = c.to_redacted_toml();
        assert!(!out.contains("topsecret") && !out.contains("pw123"), "{out}");
        assert!(out.contains("<redacted>"));
        // The printed form of a config without secrets parses back to the same config.
        let plain = Config::default().to_redacted_toml();
        assert_eq!(Config::load(Some(&file(&plain)), &[]).unwrap(), Config::default());
    }

    #[test]
    fn external_ip_forms() {
        let e: ExternalIp = "203.0.113.4/10.0.0.5".parse().unwrap();
        assert_eq!(e.public.to_string(), "203.0.113.4");
        assert_eq!(e.private.unwrap().to_string(), "10.0.0.5");
        assert!("203.0.113.4".parse::<ExternalIp>().unwrap().private.is_none());
        assert!("203.0.113.4/::1".parse::<ExternalIp>().is_err());
        assert!("nope".parse::<ExternalIp>().is_err());
    }

    #[test]
    fn static_user_error_names_index() {
        let errs = Config::load(
            Some(&file(
                "[auth]\n[[auth.static_users]]\nname = \"123:x\"\npassword = \"p\"\n",
            )),
            &[],
        )
        .unwrap_err();
        assert_eq!(errs[0].key.as_deref(), Some("auth.static_users.0.name"));
        assert!(
            matches!(errs[0].origin, Origin::File { line: 3, .. }),
            "{}",
            errs[0]
        );
    }
}
