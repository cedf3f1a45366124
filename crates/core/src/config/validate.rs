//! The rules types alone cannot state (ranges, rules across keys), each problem named by
//! its dotted key.

use super::*;

impl Config {
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
        at_least_one(
            &mut p,
            &[
                ("turn.http_max_connections", t.http_max_connections as u64),
                ("turn.tcp_max_connections", t.tcp_max_connections as u64),
                (
                    "turn.tcp_max_connections_per_address",
                    t.tcp_max_connections_per_address as u64,
                ),
                ("turn.tcp_idle_timeout_ms", t.tcp_idle_timeout_ms),
                ("turn.reservation_lifetime", t.reservation_lifetime),
                ("turn.max_reservations", t.max_reservations as u64),
            ],
        );
        // One largest STUN message (and its header) must fit, or a client could never be
        // answered.
        if t.tcp_send_buffer_bytes < 65_536 + 20 {
            p.push((
                "turn.tcp_send_buffer_bytes".into(),
                "must be at least 65556 (one largest STUN message)".into(),
            ));
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
        listeners.extend(
            self.signal
                .tls_listen
                .map(|a| ("signal.tls_listen".to_string(), a)),
        );
        for (i, a) in t.tls_listen_addrs(&self.tls).into_iter().enumerate() {
            listeners.push((format!("turn.tls_listen.{i}"), a));
        }
        for (i, a) in self.tls.listen_addrs().into_iter().enumerate() {
            listeners.push((format!("tls.listen.{i}"), a));
        }
        for (i, a) in self.tls.http_listen_addrs().into_iter().enumerate() {
            listeners.push((format!("tls.http_listen.{i}"), a));
        }
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
        let uses_jwt = sg.auth == SignalAuth::Jwt || sg.ice_auth == IceAuth::Jwt;
        if uses_jwt && sg.jwt_secret.is_none() {
            p.push((
                "signal.jwt_secret".into(),
                "is required when signal.auth or signal.ice_auth is `jwt`".into(),
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
        at_least_one(
            &mut p,
            &[
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
            ],
        );
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
        for (key, url) in [
            ("turn.metadata_ec2_url", &t.metadata_ec2_url),
            ("turn.metadata_gce_url", &t.metadata_gce_url),
        ] {
            let host = url.strip_prefix("http://").unwrap_or("");
            if host.is_empty() || host.contains('/') && !host.ends_with('/') {
                p.push((key.into(), format!("`{url}` is not http://HOST[:PORT]")));
            }
        }
        if t.external_ip_timeout_ms == 0 {
            p.push(("turn.external_ip_timeout_ms".into(), "must be at least 1".into()));
        }
        for (i, s) in t.external_ip_stun.iter().enumerate() {
            if s.rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            {
                p.push((
                    format!("turn.external_ip_stun.{i}"),
                    format!("`{s}` is not HOST:PORT"),
                ));
            }
        }
        let tls = &self.tls;
        match (&tls.cert_file, &tls.key_file) {
            (Some(_), None) => p.push(("tls.key_file".into(), "is required with tls.cert_file".into())),
            (None, Some(_)) => p.push(("tls.cert_file".into(), "is required with tls.key_file".into())),
            _ => {}
        }
        validate_acme(tls, &mut p);
        validate_cluster(&self.cluster, &mut p);
        validate_signal_redis(&self.signal, &mut p);
        if !tls.enabled() {
            let asked = [
                ("tls.listen", tls.listen.as_ref().is_some_and(|l| !l.is_empty())),
                (
                    "turn.tls_listen",
                    t.tls_listen.as_ref().is_some_and(|l| !l.is_empty()),
                ),
                ("signal.tls_listen", sg.tls_listen.is_some()),
                (
                    "tls.http_listen",
                    tls.http_listen.as_ref().is_some_and(|l| !l.is_empty()),
                ),
            ];
            for (key, set) in asked {
                if set {
                    p.push((
                        key.into(),
                        "needs a certificate: set tls.cert_file and tls.key_file, or tls.acme_domains".into(),
                    ));
                }
            }
        }
        at_least_one(
            &mut p,
            &[
                ("tls.handshake_timeout_ms", tls.handshake_timeout_ms),
                ("tls.max_handshakes", tls.max_handshakes as u64),
                ("tls.max_connections", tls.max_connections as u64),
                (
                    "tls.max_connections_per_address",
                    tls.max_connections_per_address as u64,
                ),
            ],
        );
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
}

/// The ACME keys: names a CA can issue for by HTTP-01 or TLS-ALPN-01, one source of the
/// certificate, a listener to answer the chosen challenge on, sane retry bounds.
fn validate_acme(tls: &super::Tls, p: &mut Vec<(String, String)>) {
    if !tls.acme() {
        return;
    }
    if tls.cert_file.is_some() {
        p.push((
            "tls.acme_domains".into(),
            "cannot be used with tls.cert_file: the certificate comes from one or the other".into(),
        ));
    }
    for (i, d) in tls.acme_domains.iter().enumerate() {
        if !crate::names::valid_dns_name(d) {
            p.push((
                format!("tls.acme_domains.{i}"),
                format!(
                    "`{d}` is not a DNS name (HTTP-01 and TLS-ALPN-01 cannot issue wildcards or IP addresses)"
                ),
            ));
        }
    }
    if let Some(e) = &tls.acme_email
        && (e.contains(char::is_whitespace)
            || e.split_once('@')
                .is_none_or(|(u, h)| u.is_empty() || h.is_empty()))
    {
        p.push(("tls.acme_email".into(), format!("`{e}` is not an email address")));
    }
    if !(tls.acme_directory.starts_with("https://") || tls.acme_directory.starts_with("http://")) {
        p.push((
            "tls.acme_directory".into(),
            format!("`{}` is not an http(s) URL", tls.acme_directory),
        ));
    }
    let http = !tls.http_listen_addrs().is_empty();
    let alpn = !tls.listen_addrs().is_empty();
    let (ok, needs) = match tls.acme_challenge {
        super::AcmeChallenge::Auto => (http || alpn, "tls.http_listen or tls.listen"),
        super::AcmeChallenge::Http01 => (http, "tls.http_listen"),
        super::AcmeChallenge::TlsAlpn01 => (alpn, "tls.listen"),
    };
    if !ok {
        p.push((
            "tls.acme_challenge".into(),
            format!("the challenge is answered on {needs}, which is turned off"),
        ));
    }
    if !(1..=90).contains(&tls.acme_renew_remaining_percent) {
        p.push(("tls.acme_renew_remaining_percent".into(), "must be 1-90".into()));
    }
    at_least_one(
        p,
        &[
            ("tls.acme_retry_min_ms", tls.acme_retry_min_ms),
            ("tls.acme_order_timeout_ms", tls.acme_order_timeout_ms),
        ],
    );
    if tls.acme_retry_max_ms < tls.acme_retry_min_ms {
        p.push((
            "tls.acme_retry_max_ms".into(),
            "must be at least tls.acme_retry_min_ms".into(),
        ));
    }
}

/// A Redis URL's scheme, under `key`.
fn validate_redis_url(key: &str, url: Option<&super::Secret>, p: &mut Vec<(String, String)>) {
    if let Some(url) = url {
        let u = url.expose();
        if !(u.starts_with("redis://")
            || u.starts_with("rediss://")
            || u.starts_with("redis+unix://")
            || u.starts_with("unix://"))
        {
            p.push((
                key.into(),
                "must start with redis://, rediss:// or unix://".into(),
            ));
        }
    }
}

/// A name that fits into Redis keys and node lists: 1-64 of A-Za-z0-9._-.
fn label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// The shared rooms' keys: a Redis URL, a key prefix, timings that make sense.
fn validate_signal_redis(s: &super::Signal, p: &mut Vec<(String, String)>) {
    validate_redis_url("signal.redis_url", s.redis_url.as_ref(), p);
    if !label(&s.redis_key_prefix) {
        p.push((
            "signal.redis_key_prefix".into(),
            "must be 1-64 of A-Za-z0-9._-".into(),
        ));
    }
    at_least_one(
        p,
        &[
            ("signal.redis_timeout_ms", s.redis_timeout_ms),
            ("signal.redis_inbox_max", s.redis_inbox_max),
        ],
    );
    if s.redis_lease_ms < s.redis_timeout_ms.saturating_mul(2) {
        p.push((
            "signal.redis_lease_ms".into(),
            "must be at least twice signal.redis_timeout_ms (renewals must fit in it)".into(),
        ));
    }
}

/// The cluster keys: a Redis URL, names that fit into Redis keys, timings that make sense.
fn validate_cluster(c: &super::Cluster, p: &mut Vec<(String, String)>) {
    validate_redis_url("cluster.redis_url", c.redis_url.as_ref(), p);
    if let Some(id) = &c.node_id
        && !label(id)
    {
        p.push((
            "cluster.node_id".into(),
            format!("`{id}` must be 1-64 of A-Za-z0-9._-"),
        ));
    }
    if !c.region.is_empty() && !label(&c.region) {
        p.push((
            "cluster.region".into(),
            format!("`{}` must be 1-64 of A-Za-z0-9._-", c.region),
        ));
    }
    if !label(&c.key_prefix) {
        p.push(("cluster.key_prefix".into(), "must be 1-64 of A-Za-z0-9._-".into()));
    }
    at_least_one(
        p,
        &[
            ("cluster.heartbeat_ms", c.heartbeat_ms),
            ("cluster.timeout_ms", c.timeout_ms),
        ],
    );
    if c.node_ttl_ms < c.heartbeat_ms.saturating_mul(2) {
        p.push((
            "cluster.node_ttl_ms".into(),
            "must be at least twice cluster.heartbeat_ms (a node must miss two heartbeats to be gone)".into(),
        ));
    }
}

/// Each of `fields` (key, value) must be at least 1.
fn at_least_one(p: &mut Vec<(String, String)>, fields: &[(&str, u64)]) {
    for (key, v) in fields {
        if *v == 0 {
            p.push(((*key).into(), "must be at least 1".into()));
        }
    }
}
