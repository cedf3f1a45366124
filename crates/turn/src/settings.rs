//! The relay's settings derived from the configuration: relay addresses (bind and
//! advertise, with `turn.external_ip`), the peer policy with the process's own addresses
//! and ports, the shard template, quotas and limits. Pure functions of the configuration
//! and of what the host reports (interfaces), so every rule is unit-tested.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use callbox_core::{Config, PeerPolicy};
use turn_proto::server::{Credentials, Quotas, RelayIp, ServerConfig};

use crate::TurnSettings;

/// Data path threads: `turn.workers`, or one per core.
pub fn workers(config: &Config) -> usize {
    match config.turn.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// The addresses relayed traffic uses: (bind, advertise) for IPv4 and, when
/// `turn.relay_ipv6` is set, IPv6. `detected_v4` is the host's default-route address, used
/// when the configuration names none.
pub(crate) fn relay_addresses(
    config: &Config,
    detected_v4: impl FnOnce() -> IpAddr,
) -> (RelayIp, Option<RelayIp>) {
    let t = &config.turn;
    let external = t.external_ip.and_then(|e| e.fixed());
    let (bind, advertise) = match external {
        Some(ext) if ext.public.is_ipv4() => {
            (ext.private.or(t.relay_ip).unwrap_or_else(detected_v4), ext.public)
        }
        _ => {
            let bind = t.relay_ip.unwrap_or_else(detected_v4);
            (bind, bind)
        }
    };
    let v6 = t.relay_ipv6.map(|ip| {
        let bind = IpAddr::V6(ip);
        let advertise = match external {
            Some(ext) if ext.public.is_ipv6() => ext.public,
            _ => bind,
        };
        RelayIp { bind, advertise }
    });
    (RelayIp { bind, advertise }, v6)
}

/// The peer policy `config` gives a relay listening on `listeners` (for a configuration
/// reload: the relay addresses are derived as at start).
pub fn peer_policy_for(config: &Config, listeners: &[SocketAddr]) -> PeerPolicy {
    let (v4, v6) = relay_addresses(config, detect_v4);
    peer_policy(config, &v4, v6.as_ref(), listeners, host_addresses)
}

/// Every address of the host's interfaces.
fn host_addresses() -> Vec<IpAddr> {
    crate::net::interface_addresses()
        .into_iter()
        .map(|(_, ip)| ip)
        .collect()
}

/// The IPv4 address clients are told to relay through (what ICE URLs name when
/// `turn.public_host` is not set).
pub fn advertised_ipv4(config: &Config) -> IpAddr {
    relay_addresses(config, detect_v4).0.advertise
}

fn detect_v4() -> IpAddr {
    IpAddr::V4(crate::net::detect_relay_ipv4())
}

/// The peer policy: `turn.allow_peers` and `turn.deny_peers` over the built-in denials,
/// with this process's own addresses and ports (listeners, relay addresses, the external
/// address, and every interface address when a listener is on the unspecified address)
/// refused as peers, and relaying onto our own relay range allowed only where a live
/// allocation holds the port.
pub(crate) fn peer_policy(
    config: &Config,
    relay_v4: &RelayIp,
    relay_v6: Option<&RelayIp>,
    listeners: &[SocketAddr],
    interfaces: impl FnOnce() -> Vec<IpAddr>,
) -> PeerPolicy {
    let t = &config.turn;
    let mut relays = vec![relay_v4.bind, relay_v4.advertise];
    if let Some(v6) = relay_v6 {
        relays.extend([v6.bind, v6.advertise]);
    }
    let mut own = relays.clone();
    own.extend(listeners.iter().map(|a| a.ip()).filter(|ip| !ip.is_unspecified()));
    if let Some(ext) = t.external_ip.and_then(|e| e.fixed()) {
        own.push(ext.public);
        own.extend(ext.private);
    }
    if listeners.iter().any(|a| a.ip().is_unspecified()) {
        own.extend(interfaces());
    }
    own.sort();
    own.dedup();
    let mut ports: Vec<(u16, u16)> = listeners.iter().map(|a| (a.port(), a.port())).collect();
    if let Some(http) = t.http_listen {
        ports.push((http.port(), http.port()));
    }
    ports.push((config.signal.listen.port(), config.signal.listen.port()));
    PeerPolicy::new(t.allow_peers.clone(), t.deny_peers.clone(), own, ports)
        .with_relays(relays, (t.relay_port_min, t.relay_port_max))
}

/// The shard template (`shard` is set per worker).
pub(crate) fn server_config(config: &Config, relay_v4: RelayIp, relay_v6: Option<RelayIp>) -> ServerConfig {
    let t = &config.turn;
    ServerConfig {
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
        // A REST username may not expire later than the longest credential lifetime from
        // now, plus the tolerated skew between the minting host's clock and ours.
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
    }
}

/// Limits of the turn role's `/metrics`, `/healthz`, `/readyz` listener.
pub(crate) fn http_limits(config: &Config) -> callbox_http::Limits {
    let t = &config.turn;
    callbox_http::Limits {
        max_connections: t.http_max_connections,
        max_per_address: t.http_max_connections,
        ipv6_prefix: t.ipv6_prefix_len,
        header_timeout: Duration::from_millis(t.http_header_timeout_ms),
    }
}

/// Caps and timeouts of STUN/TURN over TCP (`turn.tcp_*`).
pub(crate) fn stream_settings(config: &Config) -> crate::StreamSettings {
    let t = &config.turn;
    crate::StreamSettings {
        limits: callbox_http::ConnectionLimits::new(callbox_http::Limits {
            max_connections: t.tcp_max_connections,
            max_per_address: t.tcp_max_connections_per_address,
            ipv6_prefix: t.ipv6_prefix_len,
            header_timeout: Duration::from_millis(t.tcp_idle_timeout_ms),
        }),
        idle_timeout: Duration::from_millis(t.tcp_idle_timeout_ms),
        send_buffer: t.tcp_send_buffer_bytes,
        // The certificate is the binary's to load; it sets this with the TLS listeners.
        tls: None,
    }
}

impl TurnSettings {
    /// The IPv4 address these settings advertise for relayed traffic.
    pub fn advertised_ipv4(&self) -> IpAddr {
        self.server
            .relay_v4
            .map_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |r| r.advertise)
    }

    /// The relay's settings for `config`, relaying for clients of the bound `listeners`
    /// with `credentials`. Reads the host's default-route and interface addresses where
    /// the configuration leaves them open.
    pub fn from_config(config: &Config, listeners: &[SocketAddr], credentials: Credentials) -> TurnSettings {
        Self::derive(config, listeners, credentials, detect_v4, host_addresses)
    }

    fn derive(
        config: &Config,
        listeners: &[SocketAddr],
        credentials: Credentials,
        detected_v4: impl FnOnce() -> IpAddr,
        interfaces: impl FnOnce() -> Vec<IpAddr>,
    ) -> TurnSettings {
        let t = &config.turn;
        let (relay_v4, relay_v6) = relay_addresses(config, detected_v4);
        let policy = peer_policy(config, &relay_v4, relay_v6.as_ref(), listeners, interfaces);
        TurnSettings {
            server: server_config(config, relay_v4, relay_v6),
            workers: workers(config),
            port_range: (t.relay_port_min, t.relay_port_max),
            credentials: Arc::new(ArcSwap::from_pointee(credentials)),
            policy: Arc::new(ArcSwap::from_pointee(policy)),
            quotas: Arc::new(Quotas::new(t.total_quota, t.user_quota)),
            reservation_lifetime: Duration::from_secs(t.reservation_lifetime),
            max_reservations: t.max_reservations,
            http: http_limits(config),
            streams: stream_settings(config),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use callbox_core::config::{ConfigFile, ExternalIp};

    fn config(text: &str) -> Config {
        let file = ConfigFile {
            path: "test.toml".into(),
            text: text.into(),
        };
        Config::load(Some(&file), &[]).expect("valid")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn never() -> IpAddr {
        panic!("the configuration names the address")
    }

    #[test]
    fn relay_addresses_follow_relay_ip_external_ip_and_detection() {
        let detected = || ip("192.0.2.10");
        let (v4, v6) = relay_addresses(&Config::default(), detected);
        assert_eq!(
            (v4.bind, v4.advertise, v6),
            (ip("192.0.2.10"), ip("192.0.2.10"), None)
        );

        let c = config("[turn]\nrelay_ip = \"10.0.0.5\"\n");
        assert_eq!(relay_addresses(&c, never).0.bind, ip("10.0.0.5"));

        // Behind 1:1 NAT: bind the private address, advertise the public one.
        let c = config("[turn]\nexternal_ip = \"203.0.113.7/10.0.0.5\"\n");
        let (v4, _) = relay_addresses(&c, never);
        assert_eq!((v4.bind, v4.advertise), (ip("10.0.0.5"), ip("203.0.113.7")));
        assert_eq!(
            c.turn
                .external_ip
                .and_then(|e| e.fixed())
                .map(|e: ExternalIp| e.public),
            Some(ip("203.0.113.7"))
        );

        // A public address alone binds the detected (or relay_ip) address.
        let c = config("[turn]\nexternal_ip = \"203.0.113.7\"\n");
        let (v4, _) = relay_addresses(&c, detected);
        assert_eq!((v4.bind, v4.advertise), (ip("192.0.2.10"), ip("203.0.113.7")));

        let c = config("[turn]\nrelay_ip = \"10.0.0.5\"\nrelay_ipv6 = \"2001:db8::5\"\n");
        let (_, v6) = relay_addresses(&c, never);
        let v6 = v6.expect("IPv6 relay");
        assert_eq!((v6.bind, v6.advertise), (ip("2001:db8::5"), ip("2001:db8::5")));
    }

    #[test]
    fn own_addresses_and_ports_are_refused_as_peers() {
        let c = config(
            "[turn]\nrelay_ip = \"10.0.0.5\"\nallow_peers = [\"10.0.0.0/8\"]\nhttp_listen = \"127.0.0.1:9478\"\n",
        );
        let listeners: Vec<SocketAddr> = vec!["0.0.0.0:3478".parse().unwrap()];
        let s = TurnSettings::derive(&c, &listeners, Credentials::default(), never, || {
            vec![ip("10.1.1.1")]
        });
        let policy = s.policy.load();
        let peer = |a: &str| a.parse::<SocketAddr>().unwrap();
        // An allowed network, but our own services on our own addresses are not peers.
        assert!(
            policy.check(peer("10.9.9.9:3478")).is_ok(),
            "someone else's port 3478"
        );
        assert!(
            policy.check(peer("10.0.0.5:3478")).is_err(),
            "our listener on the relay address"
        );
        assert!(
            policy.check(peer("10.1.1.1:3478")).is_err(),
            "our listener on an interface address"
        );
        assert!(policy.check(peer("10.1.1.1:9478")).is_err(), "our turn HTTP port");
        assert!(policy.check(peer("10.1.1.1:8080")).is_err(), "our signal port");
        // Our relay range is reached only where a live allocation holds the port.
        assert!(policy.is_own_relay(peer("10.0.0.5:50000")));
        assert!(!policy.is_own_relay(peer("10.9.9.9:50000")));
        assert_eq!(s.port_range, (c.turn.relay_port_min, c.turn.relay_port_max));
        assert_eq!(s.http.max_connections, c.turn.http_max_connections);
    }

    #[test]
    fn the_shard_template_carries_lifetimes_limits_and_expiry_bound() {
        let c = config(
            "[turn]\nrelay_ip = \"10.0.0.5\"\nrealm = \"example.org\"\ndefault_lifetime = 300\nsoftware = true\n[auth]\ncredential_ttl = 600\nmax_credential_ttl = 3600\nclock_skew = 60\n",
        );
        let s = TurnSettings::derive(&c, &[], Credentials::default(), never, Vec::new);
        assert_eq!(s.server.realm, "example.org");
        assert_eq!(s.server.default_lifetime, Duration::from_secs(300));
        assert_eq!(s.server.max_credential_expiry, Duration::from_secs(3660));
        assert!(
            s.server
                .software
                .as_deref()
                .is_some_and(|v| v.starts_with("callbox "))
        );
        assert_eq!(s.server.relay_v4.map(|r| r.bind), Some(ip("10.0.0.5")));
    }
}
