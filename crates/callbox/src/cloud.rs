//! `turn.external_ip = "auto"`: this host's public address (and the private one it owns
//! behind a cloud's 1:1 NAT), found at start from EC2 instance metadata (IMDSv2: a token
//! PUT first), then Compute Engine metadata (`Metadata-Flavor: Google`), then a STUN Binding
//! to each of `turn.external_ip_stun`, each within `turn.external_ip_timeout_ms`. What is
//! found, and where from, is logged; with nothing found callbox advertises the address it
//! binds, as without the setting.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use callbox_core::Config;
use callbox_core::config::{ExternalIp, ExternalIpSetting};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The most a metadata answer may be: an address, or a short token.
const MAX_ANSWER: usize = 16 * 1024;

/// Replaces `auto` in `config.turn.external_ip` with what was found (or nothing).
pub async fn resolve_external_ip(config: &mut Config) {
    if config.turn.external_ip != Some(ExternalIpSetting::Auto) {
        return;
    }
    let found = detect(config).await;
    config.turn.external_ip = found.map(|(ext, _)| ExternalIpSetting::Fixed(ext));
    match found {
        Some((ext, source)) => tracing::info!(
            public = %ext.public,
            private = ?ext.private,
            source,
            "external address found"
        ),
        None => tracing::warn!(
            "turn.external_ip = \"auto\": no metadata service or STUN server told this host's public address; \
             advertising the relay's own address"
        ),
    }
}

/// The mapping and where it came from (`ec2-metadata`, `gce-metadata`, `stun`).
async fn detect(config: &Config) -> Option<(ExternalIp, &'static str)> {
    let t = &config.turn;
    let timeout = Duration::from_millis(t.external_ip_timeout_ms);
    if let Some(ext) = ec2(&t.metadata_ec2_url, timeout).await {
        return Some((ext, "ec2-metadata"));
    }
    if let Some(ext) = gce(&t.metadata_gce_url, timeout).await {
        return Some((ext, "gce-metadata"));
    }
    for server in &t.external_ip_stun {
        if let Some(public) = stun(server, timeout).await {
            return Some((
                ExternalIp {
                    public,
                    private: None,
                },
                "stun",
            ));
        }
    }
    None
}

/// EC2 (IMDSv2): a session token by PUT, then the public and the private IPv4 address.
async fn ec2(base: &str, timeout: Duration) -> Option<ExternalIp> {
    let token = request(
        base,
        "PUT",
        "/latest/api/token",
        &[("X-aws-ec2-metadata-token-ttl-seconds", "60")],
        timeout,
    )
    .await
    .filter(|r| r.status == 200)?;
    let token = String::from_utf8(token.body).ok()?;
    let token = token.trim();
    let header = [("X-aws-ec2-metadata-token", token)];
    let public = address(request(base, "GET", "/latest/meta-data/public-ipv4", &header, timeout).await)?;
    let private = address(request(base, "GET", "/latest/meta-data/local-ipv4", &header, timeout).await);
    Some(ExternalIp { public, private })
}

/// Compute Engine: the first interface's access config (public) and address (private).
async fn gce(base: &str, timeout: Duration) -> Option<ExternalIp> {
    let flavor = [("Metadata-Flavor", "Google")];
    let get = |path: &'static str| async move {
        // A server that does not answer as Google's metadata server is not one.
        request(base, "GET", path, &flavor, timeout)
            .await
            .filter(|r| r.header("metadata-flavor") == Some("Google"))
    };
    let public =
        address(get("/computeMetadata/v1/instance/network-interfaces/0/access-configs/0/external-ip").await)?;
    let private = address(get("/computeMetadata/v1/instance/network-interfaces/0/ip").await);
    Some(ExternalIp { public, private })
}

/// A 200 answer whose body is one IP address.
fn address(r: Option<callbox_core::http1::Response>) -> Option<IpAddr> {
    let r = r.filter(|r| r.status == 200)?;
    std::str::from_utf8(&r.body).ok()?.trim().parse().ok()
}

/// The server-reflexive address from a STUN server (`host:port`).
async fn stun(server: &str, timeout: Duration) -> Option<IpAddr> {
    let addr: SocketAddr = tokio::time::timeout(timeout, tokio::net::lookup_host(server))
        .await
        .ok()?
        .ok()?
        .next()?;
    let found = tokio::task::spawn_blocking(move || callbox_turn::net::stun_reflexive_address(addr, timeout))
        .await
        .ok()?;
    match found {
        Ok(a) => Some(a.ip()),
        Err(e) => {
            tracing::debug!(%server, error = %e, "no STUN answer");
            None
        }
    }
}

/// One HTTP/1.1 request to `base` (`http://HOST[:PORT]`), answer read to the end, all
/// within `timeout`. `None` on any failure: the caller moves on to the next source.
async fn request(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Option<callbox_core::http1::Response> {
    let host = base.strip_prefix("http://")?.trim_end_matches('/');
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(host).await.ok()?;
        let mut req =
            format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: 0\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        s.take(MAX_ANSWER as u64).read_to_end(&mut raw).await.ok()?;
        callbox_core::http1::parse_response(&raw).ok()
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => {
            tracing::debug!(%base, path, "metadata request timed out");
            None
        }
    }
}
