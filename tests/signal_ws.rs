//! PROTOCOL.md section 2 against the real binary, with real WebSocket clients: every
//! refusal status, every message type, every close code, resume, ordering, limits.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use test_support::ws::{Closed, WsClient};
use test_support::{CallboxProcess, http_request, metric};
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_callbox");

fn server(signal: &str) -> CallboxProcess {
    CallboxProcess::start(
        BIN,
        &format!(
            "[turn]\nlisten = [\"127.0.0.1:0\"]\nhttp_listen = \"127.0.0.1:0\"\nrelay_ip = \"127.0.0.1\"\nrelay_port_min = 20000\nrelay_port_max = 30000\n[signal]\n{signal}\n"
        ),
    )
}

fn addr(s: &CallboxProcess) -> SocketAddr {
    s.signal.expect("signal listener")
}

async fn join(s: &CallboxProcess, room: &str) -> WsClient {
    WsClient::connect(addr(s), &format!("room={room}"), &[])
        .await
        .expect("joined")
}

fn types(v: &[Value]) -> Vec<&str> {
    v.iter().map(|m| m["type"].as_str().unwrap_or("?")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_presence_relay_and_errors() {
    let s = server("");
    let mut a = join(&s, "room1").await;
    let w = &a.welcome;
    assert_eq!(w["room"], "room1");
    assert_eq!(w["peers"], json!([]));
    assert_eq!(w["resumed"], false);
    assert!(w["heartbeat_ms"].as_u64().unwrap() > 0);
    assert!(w["resume_token"].as_str().unwrap().len() >= 16);
    assert!(w.get("seq").is_none());
    let ice = &w["ice_servers"];
    assert!(
        ice[0]["urls"][0].as_str().unwrap().starts_with("stun:127.0.0.1:"),
        "{ice}"
    );
    assert!(ice[1]["username"].as_str().unwrap().contains(':'), "{ice}");
    assert!(w["ice_ttl"].as_u64().unwrap() > 0);

    let mut b = join(&s, "room1").await;
    assert_eq!(b.welcome["peers"][0]["peer_id"], a.peer_id().as_str());
    assert_eq!(b.welcome["peers"][0]["meta"], json!({}));
    let joined = a.recv().await.unwrap();
    assert_eq!(
        (joined["type"].as_str(), joined["seq"].as_u64()),
        (Some("peer-joined"), Some(1))
    );
    assert_eq!(joined["peer_id"], b.peer_id().as_str());

    // Broadcast (no `to`), with unknown fields and forged from/seq.
    a.send(json!({"type": "offer", "sdp": "v=0 offer", "extra": {"k": 1}, "from": "x", "seq": 77}))
        .await;
    let m = b.recv().await.unwrap();
    assert_eq!(m["type"], "offer");
    assert_eq!(m["sdp"], "v=0 offer");
    assert_eq!(m["extra"], json!({"k": 1}));
    assert_eq!(m["from"], a.peer_id().as_str());
    assert_eq!(m["seq"], 1);
    // `to` one peer; `to: null` is a broadcast.
    b.send(json!({"type": "answer", "sdp": "v=0 answer", "to": a.peer_id()}))
        .await;
    let m = a.recv().await.unwrap();
    assert_eq!((m["type"].as_str(), m["seq"].as_u64()), (Some("answer"), Some(2)));
    assert!(m.get("to").is_none());
    b.send(json!({"type": "candidate", "candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host", "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": null, "to": null})).await;
    assert_eq!(a.recv().await.unwrap()["type"], "candidate");
    b.send(json!({"type": "candidate", "candidate": ""})).await;
    assert_eq!(a.recv().await.unwrap()["candidate"], "");
    b.send(json!({"type": "message", "data": {"chat": "hi"}})).await;
    assert_eq!(a.recv().await.unwrap()["data"], json!({"chat": "hi"}));

    // Errors: not JSON, wrong types, unknown type, unknown peer (incl. self), bad `to`.
    for (bad, code) in [
        (Message::Text("{nope".into()), "bad-message"),
        (Message::Text(r#"{"type":"offer","sdp":5}"#.into()), "bad-message"),
        (Message::Text(r#"{"type":"teleport"}"#.into()), "bad-message"),
        (Message::Text(r#"{"type":"message"}"#.into()), "bad-message"),
        (
            Message::Text(r#"{"type":"message","data":1,"to":7}"#.into()),
            "bad-message",
        ),
        (
            Message::Text(r#"{"type":"message","data":1,"to":"nobody"}"#.into()),
            "unknown-peer",
        ),
    ] {
        a.send_raw(bad.clone()).await;
        let e = a.recv().await.unwrap();
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str()),
            (Some("error"), Some(code)),
            "{bad:?}"
        );
        assert!(e["seq"].as_u64().is_some() && e["message"].is_string());
    }
    a.send(json!({"type": "message", "data": 1, "to": a.peer_id()}))
        .await;
    assert_eq!(a.recv().await.unwrap()["code"], "unknown-peer");
    // Nothing of that reached b: its next message is the ping answer it asks for.
    b.send(json!({"type": "ping"})).await;
    let pong = b.recv().await.unwrap();
    assert_eq!(pong["type"], "pong");
    assert!(pong["seq"].as_u64().is_some());
    // Fresh ICE servers on request.
    b.send(json!({"type": "ice-servers"})).await;
    let ice = b.recv().await.unwrap();
    assert_eq!(ice["type"], "ice-servers");
    assert!(ice["ice_servers"].is_array() && ice["ice_ttl"].as_u64().unwrap() > 0);

    // leave: closed with 1000, the other sees peer-left `left`.
    b.send(json!({"type": "leave"})).await;
    assert_eq!(b.closed().await, Closed::Code(1000));
    let left = a.recv().await.unwrap();
    assert_eq!(
        (left["type"].as_str(), left["reason"].as_str()),
        (Some("peer-left"), Some("left"))
    );
    assert_eq!(left["peer_id"], b.peer_id().as_str());

    // A close frame 1000 from the client: `left` too.
    let mut c = join(&s, "room1").await;
    a.recv().await.unwrap();
    c.ws.close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: 1000.into(),
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    let left = a.recv().await.unwrap();
    assert_eq!(left["reason"], "left");

    let (_, body) = http_get(&s, "/metrics");
    assert!(
        metric(&body, "callbox_signal_messages_total{type=\"offer\"}").unwrap() >= 1.0,
        "{body}"
    );
    assert!(
        metric(&body, "callbox_signal_rejects_total{reason=\"bad-message\"}").unwrap() >= 5.0,
        "{body}"
    );
    assert!(body.contains("callbox_signal_relay_seconds_bucket"), "{body}");
}

fn http_get(s: &CallboxProcess, path: &str) -> (u16, String) {
    test_support::http_get(addr(s), path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_before_the_upgrade_and_validate() {
    let s = server(
        "room_capacity = 2\nmax_connections_per_address = 6\nallowed_origins = [\"https://app.example\"]",
    );
    let a = addr(&s);
    for (query, status, code) in [
        ("", 400, "bad-room"),
        ("room=", 400, "bad-room"),
        ("room=has%20space", 400, "bad-room"),
        (&format!("room={}", "x".repeat(65)), 400, "bad-room"),
        ("room=ok&resume=unknown", 410, "resume-expired"),
        ("room=ok&resume=unknown&last_seq=x", 400, "bad-resume"),
    ] {
        let r = WsClient::connect(a, query, &[]).await.unwrap_err();
        assert_eq!((r.status, r.code()), (status, code), "{query}: {:?}", r.body);
        let v = http_request(a, "GET", &format!("/v1/signal/validate?{query}"), &[], b"");
        assert_eq!(v.status, status, "{query}");
        assert_eq!(v.json()["error"]["code"], code);
    }
    let ok = http_request(a, "GET", "/v1/signal/validate?room=fine", &[], b"");
    assert_eq!((ok.status, ok.json()), (200, json!({"ok": true})));
    // Origins: allowed, same-origin, refused.
    let r = WsClient::connect(a, "room=o", &[("Origin", "https://evil.example")])
        .await
        .unwrap_err();
    assert_eq!((r.status, r.code()), (403, "origin"));
    let _ok1 = WsClient::connect(a, "room=o", &[("Origin", "https://app.example")])
        .await
        .unwrap();
    let host = format!("http://{a}");
    let _ok2 = WsClient::connect(a, "room=o", &[("Origin", &host)])
        .await
        .unwrap();
    // Room full.
    let r = WsClient::connect(a, "room=o", &[]).await.unwrap_err();
    assert_eq!((r.status, r.code()), (409, "room-full"));
    assert_eq!(
        http_request(a, "GET", "/v1/signal/validate?room=o", &[], b"").status,
        409
    );
    // Too many connections from this address (two are open; six allowed).
    let mut open = Vec::new();
    for i in 0..4 {
        open.push(join(&s, &format!("many{i}")).await);
    }
    let r = WsClient::connect(a, "room=more", &[]).await.unwrap_err();
    assert_eq!((r.status, r.code()), (429, "too-many-connections"));
    drop(open);
    // Subprotocol: selected when offered.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = WsClient::connect(a, "room=proto", &[("Sec-WebSocket-Protocol", "foo, callbox.v1")])
        .await
        .unwrap();
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subprotocol_can_be_required() {
    let s = server("require_subprotocol = true");
    let r = WsClient::connect(addr(&s), "room=p", &[("Sec-WebSocket-Protocol", "other")])
        .await
        .unwrap_err();
    assert_eq!((r.status, r.code()), (400, "subprotocol"));
    let c = WsClient::connect(addr(&s), "room=p", &[("Sec-WebSocket-Protocol", "callbox.v1")]).await;
    assert!(c.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_auth_rooms_claim_meta_and_expiry() {
    let s = server("auth = \"jwt\"\nice_auth = \"jwt\"\njwt_secret = \"jwt-secret-for-tests\"");
    let a = addr(&s);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = |claims: Value| callbox_core::jwt::sign_hs256(&claims, b"jwt-secret-for-tests");
    let r = WsClient::connect(a, "room=j", &[]).await.unwrap_err();
    assert_eq!((r.status, r.code()), (401, "unauthorized"));
    let bad = callbox_core::jwt::sign_hs256(&json!({"sub": "x"}), b"wrong");
    let r = WsClient::connect(a, &format!("room=j&token={bad}"), &[])
        .await
        .unwrap_err();
    assert_eq!(r.status, 401);
    let expired = token(json!({"sub": "x", "exp": now - 3600}));
    let r = WsClient::connect(a, &format!("room=j&token={expired}"), &[])
        .await
        .unwrap_err();
    assert_eq!(r.status, 401);
    let limited = token(json!({"sub": "x", "rooms": ["other"], "exp": now + 600}));
    let r = WsClient::connect(a, &format!("room=j&token={limited}"), &[])
        .await
        .unwrap_err();
    assert_eq!((r.status, r.code()), (403, "room-not-allowed"));
    let alice = token(json!({"sub": "alice", "rooms": ["j"], "meta": {"name": "Alice"}, "exp": now + 600}));
    let mut c1 = WsClient::connect(a, &format!("room=j&token={alice}"), &[])
        .await
        .unwrap();
    let ice_user = c1.welcome["ice_servers"][1]["username"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(ice_user.ends_with(":alice"), "{ice_user}");
    let bob = token(json!({"sub": "bob", "meta": "not an object"}));
    let auth = format!("Bearer {bob}");
    let c2 = WsClient::connect(a, "room=j", &[("Authorization", &auth)])
        .await
        .unwrap();
    assert_eq!(c2.welcome["peers"][0]["meta"], json!({"name": "Alice"}));
    let joined = c1.recv().await.unwrap();
    assert_eq!(joined["meta"], json!({}));
    // The ICE endpoint in jwt mode.
    let r = http_request(a, "GET", "/v1/ice-servers", &[], b"");
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "unauthorized");
    let r = http_request(a, "GET", "/v1/ice-servers", &[("Authorization", &auth)], b"");
    assert_eq!(r.status, 200);
    assert!(r.json()["username"].as_str().unwrap().ends_with(":bob"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_and_oversized_frames_are_closed() {
    let s = server("max_message_bytes = 1024");
    let mut a = join(&s, "big").await;
    let mut b = join(&s, "big").await;
    a.recv().await.unwrap();
    b.send_raw(Message::Binary(vec![1, 2, 3].into())).await;
    assert_eq!(b.closed().await, Closed::Code(1003));
    let left = a.recv().await.unwrap();
    assert_eq!(
        (left["type"].as_str(), left["reason"].as_str()),
        (Some("peer-left"), Some("error"))
    );
    // Exactly the limit passes; one byte more is 1009.
    let mut c = join(&s, "big").await;
    a.recv().await.unwrap();
    let pad = 1024 - r#"{"type":"message","data":""}"#.len();
    c.send(json!({"type": "message", "data": "x".repeat(pad)})).await;
    assert_eq!(a.recv().await.unwrap()["type"], "message");
    c.send(json!({"type": "message", "data": "x".repeat(pad + 1)}))
        .await;
    assert_eq!(c.closed().await, Closed::Code(1009));
    assert_eq!(a.recv().await.unwrap()["reason"], "error");
    // 10 MB of candidates in one frame.
    let mut d = join(&s, "big").await;
    a.recv().await.unwrap();
    d.send(json!({"type": "candidate", "candidate": "c".repeat(10 << 20)}))
        .await;
    // The server answers 1009 as soon as it reads the frame header; the client may still be
    // writing, so the kernel can turn the rest into a reset before the close frame is read.
    let end = d.closed().await;
    assert!(matches!(end, Closed::Code(1009) | Closed::Abrupt), "{end:?}");
    assert_eq!(a.recv().await.unwrap()["reason"], "error");
    // The room still works.
    let mut e = join(&s, "big").await;
    assert_eq!(a.recv().await.unwrap()["type"], "peer-joined");
    e.send(json!({"type": "ping"})).await;
    assert_eq!(e.recv().await.unwrap()["type"], "pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_drops_with_one_error_per_window() {
    let s = server("rate_per_connection = 20");
    let mut a = join(&s, "rl").await;
    let mut b = join(&s, "rl").await;
    a.recv().await.unwrap();
    for _ in 0..30 {
        b.send(json!({"type": "message", "data": 1})).await;
    }
    let mut got = Vec::new();
    while let Some(m) = b.recv_within(Duration::from_millis(500)).await {
        got.push(m);
    }
    assert_eq!(types(&got), ["error"], "one rate-limited error in the window");
    assert_eq!(got[0]["code"], "rate-limited");
    let mut relayed = 0;
    while a.recv_within(Duration::from_millis(300)).await.is_some() {
        relayed += 1;
    }
    assert_eq!(relayed, 20);
    // Other rooms are unaffected.
    let mut other = join(&s, "quiet").await;
    other.send(json!({"type": "ping"})).await;
    assert_eq!(other.recv().await.unwrap()["type"], "pong");
    let (_, body) = http_get(&s, "/metrics");
    assert!(metric(&body, "callbox_signal_rejects_total{reason=\"rate-limited\"}").unwrap() >= 10.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_over_three_windows_is_closed_4029() {
    // 10-second windows: the abuser stays over its limit for three consecutive windows.
    let s = server("rate_per_connection = 5");
    let mut a = join(&s, "flood").await;
    let start = Instant::now();
    let mut code = None;
    while start.elapsed() < Duration::from_secs(35) {
        for _ in 0..10 {
            a.send_raw(Message::Text(r#"{"type":"ping"}"#.into())).await;
        }
        match tokio::time::timeout(Duration::from_millis(500), a.closed()).await {
            Ok(c) => {
                code = Some(c);
                break;
            }
            Err(_) => continue,
        }
    }
    assert_eq!(code, Some(Closed::Code(4029)));
    assert!(
        start.elapsed() >= Duration::from_secs(19),
        "not before the third window"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_within_grace_replays_in_order() {
    let s = server("resume_grace = 2");
    let mut a = join(&s, "res").await;
    let mut b = join(&s, "res").await;
    a.recv().await.unwrap();
    a.send(json!({"type": "message", "data": 0})).await;
    assert_eq!(b.recv().await.unwrap()["data"], 0);
    let (token, peer, last) = (b.resume_token(), b.peer_id(), b.last_seq);
    b.drop_abruptly();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 1..=5 {
        a.send(json!({"type": "message", "data": i})).await;
    }
    a.send(json!({"type": "offer", "sdp": "v=0", "to": peer})).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut b2 = WsClient::connect(addr(&s), &format!("room=res&resume={token}&last_seq={last}"), &[])
        .await
        .unwrap();
    assert_eq!(b2.welcome["resumed"], true);
    assert_eq!(b2.peer_id(), peer);
    assert_eq!(b2.welcome["peers"][0]["peer_id"], a.peer_id().as_str());
    assert_ne!(b2.resume_token(), token, "a new token");
    let mut got = Vec::new();
    for _ in 0..6 {
        got.push(b2.recv().await.unwrap());
    }
    let data: Vec<Value> = got.iter().map(|m| m["data"].clone()).collect();
    assert_eq!(&data[..5], &[json!(1), json!(2), json!(3), json!(4), json!(5)]);
    assert_eq!(got[5]["type"], "offer");
    let seqs: Vec<u64> = got.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (last + 1..=last + 6).collect::<Vec<_>>());
    // The others were told nothing.
    assert!(a.recv_within(Duration::from_millis(300)).await.is_none());
    // The token works once.
    let r = WsClient::connect(addr(&s), &format!("room=res&resume={token}"), &[])
        .await
        .unwrap_err();
    assert_eq!((r.status, r.code()), (410, "resume-expired"));
    // last_seq above what was sent.
    let t2 = b2.resume_token();
    let r = WsClient::connect(addr(&s), &format!("room=res&resume={t2}&last_seq=999"), &[])
        .await
        .unwrap_err();
    assert_eq!((r.status, r.code()), (400, "bad-resume"));
    // A resume while the old connection is open takes over: the old one gets 4000.
    let mut b3 = WsClient::connect(
        addr(&s),
        &format!("room=res&resume={t2}&last_seq={}", b2.last_seq),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(b2.closed().await, Closed::Code(4000));
    b3.send(json!({"type": "ping"})).await;
    assert_eq!(b3.recv().await.unwrap()["type"], "pong");
    // Drop and let the grace (2 s) pass: 410, and the others see `timeout`.
    let t3 = b3.resume_token();
    b3.drop_abruptly();
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let left = a.recv().await.unwrap();
    assert_eq!(
        (left["type"].as_str(), left["reason"].as_str()),
        (Some("peer-left"), Some("timeout"))
    );
    let r = WsClient::connect(addr(&s), &format!("room=res&resume={t3}"), &[])
        .await
        .unwrap_err();
    assert_eq!((r.status, r.code()), (410, "resume-expired"));
    let (_, body) = http_get(&s, "/metrics");
    assert!(metric(&body, "callbox_signal_resumes_total").unwrap() >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_gap_when_the_log_no_longer_reaches_back() {
    let s = server("resume_log_messages = 4\nresume_grace = 5");
    let mut a = join(&s, "gap").await;
    let mut b = join(&s, "gap").await;
    a.recv().await.unwrap();
    for i in 0..6 {
        a.send(json!({"type": "message", "data": i})).await;
    }
    for _ in 0..6 {
        b.recv().await.unwrap();
    }
    let token = b.resume_token();
    b.drop_abruptly();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = WsClient::connect(addr(&s), &format!("room=gap&resume={token}&last_seq=0"), &[])
        .await
        .unwrap_err();
    assert_eq!((r.status, r.code()), (410, "resume-gap"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_keep_their_order() {
    let s = server("rate_per_connection = 100000\nrate_per_address = 100000\nrate_per_room = 100000");
    let mut a = join(&s, "order").await;
    let mut b = join(&s, "order").await;
    a.recv().await.unwrap();
    let sender = tokio::spawn(async move {
        for i in 0..10_000u32 {
            b.send(json!({"type": "message", "data": i})).await;
        }
        b
    });
    for i in 0..10_000u32 {
        let m = a.recv().await.expect("message");
        assert_eq!(m["data"], i);
        assert_eq!(m["seq"], u64::from(i) + 2);
    }
    drop(sender.await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_is_closed_4013() {
    let s = server(
        "send_buffer_bytes = 65536\nrate_per_connection = 100000\nrate_per_address = 100000\nrate_per_room = 100000",
    );
    let a = join(&s, "slow").await;
    let mut b = join(&s, "slow").await;
    // `a` never reads; `b` sends 40 MB.
    let chunk = "y".repeat(60_000);
    for _ in 0..700 {
        b.send(json!({"type": "message", "data": chunk})).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut saw_left = false;
    while let Some(m) = b.recv_within(Duration::from_secs(2)).await {
        if m["type"] == "peer-left" {
            assert_eq!(m["reason"], "error");
            saw_left = true;
            break;
        }
    }
    assert!(saw_left, "the slow reader was closed and the others told");
    let mut a = a;
    // Its close (4013) comes after whatever the kernel buffered.
    assert_eq!(a.closed().await, Closed::Code(4013));
    let (_, body) = http_get(&s, "/metrics");
    assert_eq!(metric(&body, "callbox_signal_queue_drops_total"), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connection_is_dropped_after_two_heartbeats() {
    let s = server("heartbeat_ms = 200\nresume_grace = 1");
    let mut a = join(&s, "hb").await;
    // A raw client: handshake, then never reads or writes (so it never answers pings).
    let mut raw = std::net::TcpStream::connect(addr(&s)).unwrap();
    use std::io::{Read, Write};
    write!(
        raw,
        "GET /v1/signal?room=hb HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut buf = [0u8; 12];
    raw.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"HTTP/1.1 101");
    let joined = a.recv().await.unwrap();
    assert_eq!(joined["type"], "peer-joined");
    // Dropped after ~2 heartbeats, then the 1 s grace: peer-left timeout.
    let left = a.recv_within(Duration::from_secs(4)).await.expect("peer-left");
    assert_eq!(
        (left["type"].as_str(), left["reason"].as_str()),
        (Some("peer-left"), Some("timeout"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_servers_pushed_before_expiry() {
    let s = CallboxProcess::start(
        BIN,
        "[auth]\ncredential_ttl = 2\n[turn]\nlisten = [\"127.0.0.1:0\"]\nhttp_listen = \"127.0.0.1:0\"\nrelay_ip = \"127.0.0.1\"\n",
    );
    let mut a = join(&s, "push").await;
    assert_eq!(a.welcome["ice_ttl"], 2);
    let m = a
        .recv_within(Duration::from_secs(3))
        .await
        .expect("a push at about half the TTL");
    assert_eq!(m["type"], "ice-servers");
    assert_eq!(m["ice_ttl"], 2);
    let first = a.welcome["ice_servers"][1]["username"]
        .as_str()
        .unwrap()
        .to_string();
    let pushed = m["ice_servers"][1]["username"].as_str().unwrap().to_string();
    assert_ne!(first, pushed, "fresh credentials");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_from_one_address() {
    let s = server("max_connections_per_address = 500\nroom_capacity = 1000");
    let mut open = Vec::new();
    let mut refused = 0;
    for i in 0..1000 {
        match WsClient::connect(addr(&s), &format!("room=crowd{}", i % 50), &[]).await {
            Ok(c) => open.push(c),
            Err(r) => {
                assert_eq!((r.status, r.code()), (429, "too-many-connections"));
                refused += 1;
            }
        }
    }
    assert_eq!((open.len(), refused), (500, 500));
    // The cap counts TCP connections from accept: this address gets 429 for anything.
    let v = http_request(addr(&s), "GET", "/v1/signal/validate?room=x", &[], b"");
    assert_eq!(v.status, 429, "the validate endpoint counts connections too");
    let pid = s.pid();
    let rss = test_support::rss_kib(pid);
    assert!(rss < 200 * 1024, "RSS {rss} KiB with 500 connections");
    // Another address is not held back by this one's cap.
    let (_, body) = test_support::http_get_from("127.0.0.2".parse().unwrap(), addr(&s), "/metrics");
    assert_eq!(metric(&body, "callbox_signal_connections"), Some(500.0), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_on_sigterm() {
    let s = server("drain_seconds = 3");
    let mut a = join(&s, "drain").await;
    let signal = addr(&s);
    std::process::Command::new("kill")
        .arg("-TERM")
        .arg(s.pid().to_string())
        .status()
        .unwrap();
    assert_eq!(a.closed().await, Closed::Code(4012));
    let r = test_support::http_get(signal, "/readyz");
    assert_eq!(r.0, 503);
    let v = http_request(signal, "GET", "/v1/signal/validate?room=drain", &[], b"");
    assert_eq!(
        (v.status, v.json()["error"]["code"].as_str()),
        (503, Some("draining"))
    );
    let start = Instant::now();
    let code = s.terminate();
    assert_eq!(code, Some(0));
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_role_alone_points_at_turn_elsewhere() {
    let s = CallboxProcess::start_with(
        BIN,
        "[auth]\nsecrets = [\"shared-with-the-turn-servers\"]\n[signal]\nturn_urls = [\"turn:turn.example.com:3478?transport=udp\", \"turns:turn.example.com:5349?transport=tcp\"]\nstun_urls = [\"stun:turn.example.com:3478\"]\n",
        &["--roles", "signal"],
        &[],
    );
    assert!(
        s.udp.is_empty() && s.http.is_none(),
        "no turn role in this process"
    );
    let c = join(&s, "alone").await;
    let ice = &c.welcome["ice_servers"];
    assert_eq!(ice[0]["urls"], json!(["stun:turn.example.com:3478"]));
    assert_eq!(ice[1]["urls"][1], "turns:turn.example.com:5349?transport=tcp");
    let set = callbox_core::SecretSet::new(vec![callbox_core::Secret::new("shared-with-the-turn-servers")])
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(set.verify_password(
        ice[1]["username"].as_str().unwrap(),
        ice[1]["credential"].as_str().unwrap(),
        now
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_credentials_relay_through_our_turn() {
    let s = CallboxProcess::start(
        BIN,
        "[turn]\nlisten = [\"127.0.0.1:0\"]\nhttp_listen = \"127.0.0.1:0\"\nrelay_ip = \"127.0.0.1\"\nrelay_port_min = 20000\nrelay_port_max = 30000\nallow_peers = [\"127.0.0.1/32\"]\n",
    );
    let c = join(&s, "media").await;
    let turn = &c.welcome["ice_servers"][1];
    let (user, pass) = (
        turn["username"].as_str().unwrap(),
        turn["credential"].as_str().unwrap(),
    );
    let url = turn["urls"][0].as_str().unwrap();
    let port: u16 = url
        .rsplit(':')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let (peer_port, _peer) = test_support::turnutils_peer();
    let turn_addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (user, pass) = (user.to_string(), pass.to_string());
    let (code, out) = tokio::task::spawn_blocking(move || {
        test_support::uclient_with_password(turn_addr, &user, &pass, peer_port)
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("Total lost packets 0 "), "{out}");
}
