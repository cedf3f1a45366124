//! The configuration model and its loading: one TOML file, then environment overrides,
//! then command-line overrides (each later source wins). Unknown keys are errors, and
//! every error names its key and where it came from (file line and column, environment
//! variable, or flag).

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

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
    pub tls: Tls,
    pub cluster: Cluster,
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
    /// History rows (allocations, sessions) kept in memory for a retry while the store
    /// refuses writes (disk full, read-only, locked); beyond it the oldest are dropped
    /// and counted.
    pub history_backlog_rows: u64,
}

impl Default for General {
    fn default() -> Self {
        Self {
            state_dir: None,
            log_level: "info".into(),
            log_format: LogFormat::Auto,
            reserved_descriptors: 256,
            history_backlog_rows: 100_000,
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
    /// Listeners for STUN and TURN: UDP, and TCP on the same address and port unless
    /// `tcp` is off.
    pub listen: Vec<SocketAddr>,
    /// STUN and TURN over TCP beside each UDP listener (RFC 8656 section 12).
    pub tcp: bool,
    /// Listeners for STUN and TURN over TLS (RFC 8656 section 12, RFC 7443). Default when
    /// a certificate is configured (`tls.cert_file`): `["0.0.0.0:5349", "[::]:5349"]`;
    /// none without one. `[]` turns them off. They share the `tcp_*` caps and timeouts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_listen: Option<Vec<SocketAddr>>,
    /// TCP connections the relay holds at once, and per client address (IPv6 by
    /// `ipv6_prefix_len`); past them a new connection is closed at accept.
    pub tcp_max_connections: usize,
    pub tcp_max_connections_per_address: usize,
    /// Milliseconds a TCP connection may stay silent without an allocation, or stopped in
    /// the middle of a message, before it is closed.
    pub tcp_idle_timeout_ms: u64,
    /// Bytes queued for a TCP client that reads too slowly; what does not fit is dropped
    /// (counted as send drops), as the network would drop it over UDP.
    pub tcp_send_buffer_bytes: usize,
    /// The IPv4 address relay sockets bind to. Default: the address of the default
    /// route's interface, 127.0.0.1 when there is none.
    pub relay_ip: Option<IpAddr>,
    /// The IPv6 address relay sockets bind to; without it IPv6 allocations get 440.
    pub relay_ipv6: Option<Ipv6Addr>,
    /// 1:1 NAT (EC2, GCE): `"PUBLIC"` or `"PUBLIC/PRIVATE"`. Relay sockets bind to PRIVATE
    /// (or `relay_ip`) and PUBLIC is what clients are told. `"auto"` finds both at start.
    pub external_ip: Option<ExternalIpSetting>,
    /// Where `external_ip = "auto"` looks, in order: EC2 instance metadata (IMDSv2), Compute
    /// Engine metadata, then a STUN Binding to each of `external_ip_stun`. Base URLs are
    /// `http://HOST[:PORT]` (no TLS: metadata services are plain HTTP on a link-local address).
    pub metadata_ec2_url: String,
    pub metadata_gce_url: String,
    /// STUN servers (`host:port`) asked for this host's public address when the metadata
    /// services do not answer.
    pub external_ip_stun: Vec<String>,
    /// Milliseconds each of those lookups may take.
    pub external_ip_timeout_ms: u64,
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
            metadata_ec2_url: "http://169.254.169.254".into(),
            metadata_gce_url: "http://169.254.169.254".into(),
            external_ip_stun: vec![],
            external_ip_timeout_ms: 1000,
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
            tcp: true,
            tls_listen: None,
            tcp_max_connections: 4096,
            tcp_max_connections_per_address: 64,
            tcp_idle_timeout_ms: 30_000,
            tcp_send_buffer_bytes: 256 * 1024,
            software: false,
            unauthenticated_rate: 50,
            unauthenticated_burst: 200,
            ipv6_prefix_len: crate::limit_key::DEFAULT_IPV6_PREFIX,
            reservation_lifetime: 30,
            max_reservations: 1024,
        }
    }
}

/// Who may open `/v1/signal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SignalAuth {
    /// Anyone (connections per address are capped).
    Open,
    /// An HS256 JWT signed with `signal.jwt_secret`, in `?token=` or `Authorization: Bearer`.
    Jwt,
}

/// Who may call `/v1/ice-servers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IceAuth {
    /// Anyone (rate-limited per address).
    Open,
    /// `X-Api-Key`, `Authorization: Bearer`, `?key=` or `?api=`.
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
    /// An HTTPS and WSS listener beside `listen`, with the certificate of `tls.cert_file`
    /// (the one TLS port, `tls.listen`, serves the same and TURN too). Shares the caps
    /// and limits of `listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_listen: Option<SocketAddr>,
    /// Who may open `/v1/signal`: `open` or `jwt`.
    pub auth: SignalAuth,
    /// Who may call `/v1/ice-servers`: `open`, `api-key` or `jwt`.
    pub ice_auth: IceAuth,
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
    /// Rooms shared by every signaling instance on this Redis (`redis://`, `rediss://`);
    /// unset: the rooms of this process alone. See docs/cluster.md.
    pub redis_url: Option<Secret>,
    /// Prefix of the shared rooms' Redis keys (several deployments can share one Redis).
    pub redis_key_prefix: String,
    /// Milliseconds a Redis command (or connecting) may take before it counts as failed.
    pub redis_timeout_ms: u64,
    /// Milliseconds an instance's lease lasts without renewal (renewed every fifth of
    /// it): past it, other instances put its peers into their resume grace.
    pub redis_lease_ms: u64,
    /// Entries an instance's inbox stream keeps at most while unread.
    pub redis_inbox_max: u64,
}

impl Default for Signal {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".parse().expect("literal"),
            tls_listen: None,
            auth: SignalAuth::Open,
            ice_auth: IceAuth::Open,
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
            redis_url: None,
            redis_key_prefix: "callbox-signal".into(),
            redis_timeout_ms: 1000,
            redis_lease_ms: 5000,
            redis_inbox_max: 100_000,
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

/// TLS: the certificate every TLS listener presents, and the one TLS port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// The certificate chain (leaf first) in PEM, e.g. a `fullchain.pem`. Reloaded when
    /// the file changes (`reload_interval_ms`) and on SIGHUP.
    pub cert_file: Option<PathBuf>,
    /// Its private key in PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// The one TLS port: TLS ends here, then each connection goes to TURN or to HTTP (the
    /// call page, `/v1/signal`, `/v1/ice-servers`) by ALPN, else by its first bytes.
    /// Default when a certificate is configured: `["0.0.0.0:443", "[::]:443"]`; `[]` turns
    /// it off. Runs with the signal role (TURN connections go to the turn role when it runs
    /// in the same process).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<Vec<SocketAddr>>,
    /// Milliseconds a TLS handshake may take from accept, on every TLS listener.
    pub handshake_timeout_ms: u64,
    /// TLS handshakes in flight at once across every TLS listener; past it a new
    /// connection is closed at accept.
    pub max_handshakes: usize,
    /// Milliseconds between checks of the certificate files for a change; 0 checks only on
    /// SIGHUP.
    pub reload_interval_ms: u64,
    /// TCP connections the one TLS port holds at once, and per client address (IPv6 by
    /// `signal.ipv6_prefix_len`). A connection handed to TURN stays counted here.
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    /// Plain HTTP (port 80): answers ACME HTTP-01 challenges and redirects every other
    /// request to https on the same host. Default when a certificate or ACME is
    /// configured: `["0.0.0.0:80", "[::]:80"]`; `[]` turns it off. Runs with the signal
    /// role.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_listen: Option<Vec<SocketAddr>>,
    /// Names to obtain a certificate for by ACME (RFC 8555); the first is the certificate's
    /// subject. Empty: no ACME. Not with `cert_file`/`key_file`.
    pub acme_domains: Vec<String>,
    /// The account's contact address (optional; the CA mails expiry warnings to it).
    pub acme_email: Option<String>,
    /// The ACME directory URL. Let's Encrypt by default; its staging directory is
    /// `https://acme-staging-v02.api.letsencrypt.org/directory`.
    pub acme_directory: String,
    /// A PEM file with the root the ACME server's HTTPS certificate chains to, for a
    /// private CA (step-ca, pebble); unset: the system's roots.
    pub acme_ca_file: Option<PathBuf>,
    /// Which challenge to answer: `auto` (HTTP-01 when `http_listen` runs, else
    /// TLS-ALPN-01 on the one TLS port), `http-01` or `tls-alpn-01`.
    pub acme_challenge: AcmeChallenge,
    /// Renew once less than this percentage of the certificate's lifetime remains (33:
    /// day 60 of a 90-day certificate, as Let's Encrypt advises; day 4 of a 6-day one).
    pub acme_renew_remaining_percent: u8,
    /// The first retry after a failed order, in milliseconds; doubled after each failure
    /// up to `acme_retry_max_ms`.
    pub acme_retry_min_ms: u64,
    pub acme_retry_max_ms: u64,
    /// Milliseconds one order may take, from creating it to downloading the certificate.
    pub acme_order_timeout_ms: u64,
}

/// The control plane across machines, over Redis: access snapshots from the admin role to
/// every node, and a registry of live nodes. Without `redis_url` each process is on its
/// own (today's single-box behaviour).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cluster {
    /// `redis://[user:password@]host:port[/db]` or `rediss://` (TLS). It carries the TURN
    /// secrets and static users' keys between nodes: keep it private (a password, a
    /// private network or TLS).
    pub redis_url: Option<Secret>,
    /// This node's name in the registry. Default: generated once and kept in the state
    /// directory (`node-id`).
    pub node_id: Option<String>,
    /// A label for where this node runs (e.g. `eu-west`); signaling can hand out TURN
    /// nodes by it.
    pub region: String,
    /// For the signal role: the regions whose TURN nodes go into ICE lists; empty: every
    /// healthy TURN node.
    pub ice_regions: Vec<String>,
    /// Milliseconds between a node's registry heartbeats and between access checks.
    pub heartbeat_ms: u64,
    /// Milliseconds without a heartbeat after which a node is gone (from the node list
    /// and from new ICE lists).
    pub node_ttl_ms: u64,
    /// Milliseconds a Redis command (or connecting) may take before it counts as failed.
    pub timeout_ms: u64,
    /// Prefix of every Redis key callbox uses (several clusters can share one Redis).
    pub key_prefix: String,
}

impl Default for Cluster {
    fn default() -> Self {
        Self {
            redis_url: None,
            node_id: None,
            region: String::new(),
            ice_regions: Vec::new(),
            heartbeat_ms: 1000,
            node_ttl_ms: 5000,
            timeout_ms: 2000,
            key_prefix: "callbox".into(),
        }
    }
}

/// The ACME challenge type callbox answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum AcmeChallenge {
    #[default]
    #[serde(rename = "auto")]
    Auto,
    #[serde(rename = "http-01")]
    Http01,
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

/// Let's Encrypt's production directory.
pub const LETS_ENCRYPT_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";

impl Default for Tls {
    fn default() -> Self {
        Self {
            cert_file: None,
            key_file: None,
            listen: None,
            handshake_timeout_ms: 10_000,
            max_handshakes: 256,
            reload_interval_ms: 5_000,
            max_connections: 4096,
            max_connections_per_address: 64,
            http_listen: None,
            acme_domains: Vec::new(),
            acme_email: None,
            acme_directory: LETS_ENCRYPT_DIRECTORY.to_string(),
            acme_ca_file: None,
            acme_challenge: AcmeChallenge::Auto,
            acme_renew_remaining_percent: 33,
            acme_retry_min_ms: 60_000,
            acme_retry_max_ms: 6 * 3600 * 1000,
            acme_order_timeout_ms: 120_000,
        }
    }
}

impl Tls {
    /// Whether a certificate is configured: files, or names to obtain one for by ACME.
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some() || self.acme()
    }

    /// Whether the certificate comes from ACME.
    pub fn acme(&self) -> bool {
        !self.acme_domains.is_empty()
    }

    /// The plain HTTP listener's addresses in force (defaults applied).
    pub fn http_listen_addrs(&self) -> Vec<SocketAddr> {
        match (&self.http_listen, self.enabled()) {
            (Some(l), true) => l.clone(),
            (None, true) => vec![
                "0.0.0.0:80".parse().expect("literal"),
                "[::]:80".parse().expect("literal"),
            ],
            (_, false) => vec![],
        }
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    /// The one TLS port's addresses in force (defaults applied).
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        match (&self.listen, self.enabled()) {
            (Some(l), true) => l.clone(),
            (None, true) => vec![
                "0.0.0.0:443".parse().expect("literal"),
                "[::]:443".parse().expect("literal"),
            ],
            (_, false) => vec![],
        }
    }
}

impl Turn {
    /// The TURN/TLS listeners in force (defaults applied; none without a certificate).
    pub fn tls_listen_addrs(&self, tls: &Tls) -> Vec<SocketAddr> {
        match (&self.tls_listen, tls.enabled()) {
            (Some(l), true) => l.clone(),
            (None, true) => vec![
                "0.0.0.0:5349".parse().expect("literal"),
                "[::]:5349".parse().expect("literal"),
            ],
            (_, false) => vec![],
        }
    }
}

/// `turn.external_ip`: an address given, or `"auto"` (found at start from cloud metadata or
/// STUN; see `turn.metadata_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExternalIpSetting {
    Auto,
    Fixed(ExternalIp),
}

impl ExternalIpSetting {
    /// The mapping, when one is given (after start, `auto` has been replaced by what was
    /// found, or by nothing).
    pub fn fixed(self) -> Option<ExternalIp> {
        match self {
            ExternalIpSetting::Fixed(e) => Some(e),
            ExternalIpSetting::Auto => None,
        }
    }
}

impl FromStr for ExternalIpSetting {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim() == "auto" {
            return Ok(ExternalIpSetting::Auto);
        }
        s.parse()
            .map(ExternalIpSetting::Fixed)
            .map_err(|e| format!("{e}, or \"auto\""))
    }
}

impl fmt::Display for ExternalIpSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExternalIpSetting::Auto => f.write_str("auto"),
            ExternalIpSetting::Fixed(e) => e.fmt(f),
        }
    }
}

impl Serialize for ExternalIpSetting {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ExternalIpSetting {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
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

impl Config {
    /// The effective configuration as TOML, with every secret shown as `<redacted>`.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serializes")
    }
}

mod load;
#[cfg(test)]
mod tests;
mod validate;

pub use load::{ConfigError, ConfigFile, Origin, Override};
