//! The HTTP surface over a real listener on loopback, and the admin hooks on
//! [`AppState`].

use super::*;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use axum::http::HeaderMap;
use callbox_core::config::IceAuth;
use callbox_core::config::Signal as SignalConfig;
use callbox_core::policy::Cidr;
use callbox_core::{Secret, SecretSet};
use futures_util::StreamExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::admission::admit;
use crate::protocol::CloseCode;
use crate::upgrade::run_connection;
use callbox_core::config::ApiKey;
use futures_channel::mpsc as fmpsc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn app(cfg: SignalConfig) -> Arc<AppState> {
    let secrets = SecretSet::new(vec![Secret::new("turn-secret")]).expect("one secret");
    state(
        cfg,
        IceSource {
            urls: ArcSwap::from_pointee(crate::IceUrls {
                stun: vec![],
                turn: vec!["turn:turn.example.invalid:3478".into()],
            }),
            secrets: ArcSwap::from_pointee(secrets),
            default_ttl: 600,
            max_ttl: 3600,
        },
        Arc::new(callbox_core::metrics::MetricsRegistry::new()),
    )
    .expect("no redis url")
}

async fn serve(app: Arc<AppState>) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(l, router(app).into_make_service_with_connect_info::<SocketAddr>()).await
    });
    addr
}

/// One HTTP/1.1 GET: status and body.
async fn get(addr: SocketAddr, path: &str, headers: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{headers}\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    let status = resp[9..12].parse().unwrap();
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    (status, body)
}

fn code(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{body}"));
    v["error"]["code"].as_str().unwrap_or("").to_string()
}

const UPGRADE: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

#[tokio::test]
async fn banned_addresses_are_refused_before_the_upgrade() {
    let app = app(SignalConfig::default());
    let addr = serve(Arc::clone(&app)).await;
    assert_eq!(get(addr, "/v1/signal/validate?room=r", "").await.0, 200);
    app.set_bans(vec!["127.0.0.0/8".parse().unwrap()]);
    for (path, headers) in [
        ("/v1/signal?room=r", UPGRADE),
        ("/v1/signal/validate?room=r", ""),
        ("/v1/ice-servers", ""),
        // Banned first: a bad room or a bad resume tells a banned client nothing.
        ("/v1/signal/validate?room=bad%20room", ""),
        ("/v1/signal/validate?room=r&resume=nope", ""),
    ] {
        let (status, body) = get(addr, path, headers).await;
        assert_eq!((status, code(&body).as_str()), (403, "banned"), "{path}");
    }
    assert_eq!(app.metrics.rejects("banned"), 5);
    assert_eq!(
        app.hub.address_entries(),
        0,
        "nothing counted for a refused upgrade"
    );
    // A ban elsewhere lets us in again.
    app.set_bans(vec!["192.0.2.0/24".parse().unwrap()]);
    assert_eq!(get(addr, "/v1/signal/validate?room=r", "").await.0, 200);
    assert_eq!(get(addr, "/v1/ice-servers", "").await.0, 200);
}

#[test]
fn bans_cover_ipv4_mapped_spellings() {
    let app = app(SignalConfig::default());
    let mapped: IpAddr = "::ffff:203.0.113.9".parse().unwrap();
    let v4: IpAddr = "203.0.113.9".parse().unwrap();
    // Written in IPv4, client seen as IPv4-mapped IPv6 (a dual-stack listener).
    app.set_bans(vec!["203.0.113.0/24".parse().unwrap()]);
    assert!(app.is_banned(mapped) && app.is_banned(v4));
    // Written IPv4-mapped: parsing makes it the IPv4 network; Cidr::new does not.
    app.set_bans(vec!["::ffff:203.0.113.0/120".parse().unwrap()]);
    assert!(app.is_banned(mapped) && app.is_banned(v4));
    app.set_bans(vec![Cidr::new(mapped, 120).unwrap()]);
    assert!(app.is_banned(mapped) && app.is_banned(v4));
    assert!(!app.is_banned("203.0.114.9".parse().unwrap()));
    // IPv6 stays IPv6.
    app.set_bans(vec!["2001:db8::/32".parse().unwrap()]);
    assert!(app.is_banned("2001:db8::1".parse().unwrap()));
    assert!(!app.is_banned(v4));
}

/// A connection for tests: what the hub sends, and whether it was asked to close.
#[derive(Default)]
struct Probe {
    sent: Mutex<Vec<Value>>,
    closed: Mutex<Option<u16>>,
}

impl hub::Outbox for Probe {
    fn send(&self, text: Arc<str>) -> bool {
        self.sent
            .lock()
            .unwrap()
            .push(serde_json::from_str(&text).unwrap());
        true
    }
    fn close(&self, code: CloseCode, _reason: &str) {
        self.closed.lock().unwrap().get_or_insert(code.code());
    }
}

#[test]
fn set_bans_kicks_covered_live_peers_and_records_them() {
    let app = app(SignalConfig::default());
    let mut events = app.take_session_events().expect("first take");
    assert!(app.take_session_events().is_none(), "taken once");
    let join = |ip: &str| {
        let p = Arc::new(Probe::default());
        app.hub.reserve("r").unwrap();
        let j = app
            .hub
            .join("r", json!({}), ip.parse().unwrap(), p.clone(), (&json!([]), 60));
        (j, p)
    };
    let (bad, pbad) = join("10.1.2.3");
    let (_good, pgood) = join("10.9.9.9");
    pgood.sent.lock().unwrap().clear();
    app.set_bans(vec!["10.1.0.0/16".parse().unwrap()]);
    assert_eq!(*pbad.closed.lock().unwrap(), Some(4003));
    assert_eq!(*pgood.closed.lock().unwrap(), None);
    let got = std::mem::take(&mut *pgood.sent.lock().unwrap());
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0]["type"].as_str(), got[0]["reason"].as_str()),
        (Some("peer-left"), Some("kicked"))
    );
    assert_eq!(got[0]["peer_id"], bad.peer_id.as_str());
    let rec = events.try_recv().unwrap();
    assert_eq!(
        (rec.peer_id.as_str(), rec.reason.as_str()),
        (bad.peer_id.as_str(), "kicked")
    );
    assert_eq!(app.hub.counts(), (1, 1));
    assert_eq!(app.metrics.peers.load(Ordering::Relaxed), 1);
}

/// A ban stored between a request's admission and its join: the join sees it and the
/// connection is closed with 4003 right after its welcome.
#[tokio::test]
async fn a_ban_racing_an_upgrade_still_closes_the_connection() {
    let app = app(SignalConfig::default());
    let mut events = app.take_session_events().unwrap();
    let ip: IpAddr = "10.1.2.3".parse().unwrap();
    let admission = admit(
        &app,
        &HeaderMap::new(),
        &[("room".to_string(), "r".to_string())].into(),
        ip,
        true,
    )
    .await
    .unwrap_or_else(|_| panic!("admitted"));
    app.hub.reserve("r").unwrap();
    app.set_bans(vec![Cidr::new(ip, 32).unwrap()]);
    let (_to_server, stream) = fmpsc::unbounded::<Result<axum::extract::ws::Message, String>>();
    let (sink, mut from_server) = fmpsc::unbounded::<axum::extract::ws::Message>();
    run_connection(
        Arc::clone(&app),
        Box::new(crate::upgrade::Setup {
            admission,
            reservation: None,
        }),
        ip,
        sink,
        stream,
    )
    .await;
    let mut frames = Vec::new();
    while let Some(m) = from_server.next().await {
        frames.push(m);
    }
    assert!(
        matches!(
            frames.last(),
            Some(axum::extract::ws::Message::Close(Some(f))) if f.code == 4003
        ),
        "{frames:?}"
    );
    assert_eq!(app.hub.counts(), (0, 0));
    assert_eq!(events.try_recv().unwrap().reason.as_str(), "kicked");
    assert!(events.try_recv().is_err(), "one record");
}

#[tokio::test]
async fn store_api_keys_are_matched_by_digest() {
    let app = app(SignalConfig {
        ice_auth: IceAuth::ApiKey,
        api_keys: vec![ApiKey {
            name: "from-config".into(),
            key: Secret::new("config-key"),
        }],
        ..SignalConfig::default()
    });
    let addr = serve(Arc::clone(&app)).await;
    let digest: [u8; 32] = Sha256::digest(b"store-key").into();
    app.set_api_keys([(digest, "from-store".to_string())].into());
    let (status, body) = get(addr, "/v1/ice-servers", "X-Api-Key: store-key\r\n").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(":from-store\""),
        "the key's name is the user id: {body}"
    );
    let (status, body) = get(addr, "/v1/ice-servers?key=config-key", "").await;
    assert_eq!(status, 200);
    assert!(body.contains(":from-config\""), "{body}");
    let (status, body) = get(addr, "/v1/ice-servers", "X-Api-Key: other\r\n").await;
    assert_eq!((status, code(&body).as_str()), (401, "unauthorized"));
    // Revoked in the store: refused at once.
    app.set_api_keys(HashMap::new());
    let (status, _) = get(addr, "/v1/ice-servers", "X-Api-Key: store-key\r\n").await;
    assert_eq!(status, 401);
}
