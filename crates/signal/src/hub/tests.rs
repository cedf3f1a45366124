//! The room state machine on its own: in-memory outboxes, simulated time.

use super::*;
use std::sync::Mutex as StdMutex;

#[derive(Default)]
struct Memory {
    sent: StdMutex<Vec<Value>>,
    closed: StdMutex<Option<u16>>,
    limit: Option<usize>,
}

impl Outbox for Memory {
    fn send(&self, text: Arc<str>) -> bool {
        let mut sent = self.sent.lock().unwrap();
        if self.limit.is_some_and(|l| sent.len() >= l) {
            return false;
        }
        sent.push(serde_json::from_str(&text).unwrap());
        true
    }
    fn close(&self, code: u16, _reason: &str) {
        self.closed.lock().unwrap().get_or_insert(code);
    }
}

impl Memory {
    fn take(&self) -> Vec<Value> {
        std::mem::take(&mut *self.sent.lock().unwrap())
    }
    fn closed(&self) -> Option<u16> {
        *self.closed.lock().unwrap()
    }
}

fn hub(cfg: HubConfig) -> Hub {
    let counter = std::sync::atomic::AtomicU64::new(1);
    Hub::new(
        cfg,
        Arc::new(SignalMetrics::default()),
        Box::new(move || u128::from(counter.fetch_add(1, Ordering::Relaxed)) * 0x9E37_79B9_7F4A_7C15),
    )
}

const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

fn no_ice() -> (Value, u64) {
    (json!([]), 60)
}

fn join(h: &Hub, room: &str, _now: Instant) -> (Joined, Arc<Memory>) {
    h.reserve(room).unwrap();
    let m = Arc::new(Memory::default());
    let j = h.join(room, json!({"name": room}), IP, m.clone(), (&json!([]), 60));
    (j, m)
}

fn types(v: &[Value]) -> Vec<String> {
    v.iter()
        .map(|m| m["type"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn welcome_presence_and_relay() {
    let h = hub(HubConfig::default());
    let now = Instant::now();
    let (a, ma) = join(&h, "r", now);
    let w = ma.take();
    assert_eq!(w[0]["type"], "welcome");
    assert_eq!(w[0]["peers"], json!([]));
    assert!(w[0].get("seq").is_none(), "welcome carries no seq");
    let (b, mb) = join(&h, "r", now);
    let w = mb.take();
    assert_eq!(w[0]["peers"][0]["peer_id"], a.peer_id.as_str());
    assert_eq!(w[0]["peers"][0]["meta"], json!({"name": "r"}));
    let got = ma.take();
    assert_eq!(got[0]["type"], "peer-joined");
    assert_eq!(got[0]["seq"], 1);
    assert_eq!(got[0]["peer_id"], b.peer_id.as_str());

    // Broadcast and `to`; unknown fields kept, `to` removed, `from` and `seq` overwritten.
    let msg = json!({"type": "offer", "sdp": "v=0", "x-extra": [1], "from": "forged", "seq": 99}).to_string();
    assert_eq!(
        h.message("r", &a.peer_id, a.conn, &msg, now, &no_ice),
        Verdict::Continue
    );
    let got = mb.take();
    assert_eq!(got[0]["from"], a.peer_id.as_str());
    assert_eq!(got[0]["seq"], 1);
    assert_eq!(got[0]["x-extra"], json!([1]));
    let msg = json!({"type": "answer", "sdp": "v=0", "to": a.peer_id}).to_string();
    h.message("r", &b.peer_id, b.conn, &msg, now, &no_ice);
    let got = ma.take();
    assert!(got[0].get("to").is_none());
    assert_eq!(got[0]["seq"], 2);
    // `to` naming nobody else (itself included): unknown-peer.
    for to in [json!("nobody"), json!(a.peer_id)] {
        let msg = json!({"type": "message", "data": 1, "to": to}).to_string();
        h.message("r", &a.peer_id, a.conn, &msg, now, &no_ice);
        assert_eq!(ma.take()[0]["code"], "unknown-peer");
    }
    assert!(mb.take().is_empty());
}

#[test]
fn bad_messages_get_errors_and_are_not_forwarded() {
    let h = hub(HubConfig::default());
    let now = Instant::now();
    let (a, ma) = join(&h, "r", now);
    let (_b, mb) = join(&h, "r", now);
    ma.take();
    mb.take();
    for bad in [
        "not json",
        "[1,2]",
        r#"{"sdp":"x"}"#,
        r#"{"type":5}"#,
        r#"{"type":"dance"}"#,
        r#"{"type":"offer"}"#,
        r#"{"type":"offer","sdp":""}"#,
        r#"{"type":"offer","sdp":7}"#,
        r#"{"type":"candidate"}"#,
        r#"{"type":"candidate","candidate":"c","sdpMLineIndex":-1}"#,
        r#"{"type":"candidate","candidate":"c","sdpMLineIndex":"0"}"#,
        r#"{"type":"candidate","candidate":"c","sdpMid":5}"#,
        r#"{"type":"candidate","candidate":"c","usernameFragment":[]}"#,
        r#"{"type":"message"}"#,
        r#"{"type":"message","data":1,"to":5}"#,
    ] {
        assert_eq!(
            h.message("r", &a.peer_id, a.conn, bad, now, &no_ice),
            Verdict::Continue
        );
        let got = ma.take();
        assert_eq!(got.len(), 1, "{bad}");
        assert_eq!(got[0]["type"], "error", "{bad}");
        assert_eq!(got[0]["code"], "bad-message", "{bad}");
    }
    assert!(mb.take().is_empty());
    // Valid edge cases pass.
    for good in [
        r#"{"type":"candidate","candidate":""}"#,
        r#"{"type":"candidate","candidate":"c","sdpMid":null,"sdpMLineIndex":null,"usernameFragment":null}"#,
        r#"{"type":"message","data":null,"to":null}"#,
    ] {
        h.message("r", &a.peer_id, a.conn, good, now, &no_ice);
        assert_eq!(mb.take().len(), 1, "{good}");
    }
}

#[test]
fn ping_ice_and_leave() {
    let h = hub(HubConfig::default());
    let now = Instant::now();
    let (a, ma) = join(&h, "r", now);
    let (b, mb) = join(&h, "r", now);
    ma.take();
    mb.take();
    h.message("r", &a.peer_id, a.conn, r#"{"type":"ping"}"#, now, &no_ice);
    let got = ma.take();
    assert_eq!(
        (got[0]["type"].as_str(), got[0]["seq"].as_u64()),
        (Some("pong"), Some(2))
    );
    h.message("r", &a.peer_id, a.conn, r#"{"type":"ice-servers"}"#, now, &|| {
        (json!([{"urls": ["stun:x"]}]), 7)
    });
    let got = ma.take();
    assert_eq!(got[0]["ice_ttl"], 7);
    assert_eq!(got[0]["ice_servers"][0]["urls"][0], "stun:x");
    assert_eq!(
        h.message("r", &b.peer_id, b.conn, r#"{"type":"leave"}"#, now, &no_ice),
        Verdict::Close(1000)
    );
    let got = ma.take();
    assert_eq!(
        (got[0]["type"].as_str(), got[0]["reason"].as_str()),
        (Some("peer-left"), Some("left"))
    );
    assert_eq!(h.counts(), (1, 1));
}

#[test]
fn capacity_and_reservations() {
    let h = hub(HubConfig {
        capacity: 2,
        ..HubConfig::default()
    });
    let now = Instant::now();
    join(&h, "r", now);
    h.reserve("r").unwrap();
    assert_eq!(h.reserve("r"), Err(JoinError::Full));
    assert_eq!(h.check("r", None, now), Err(JoinError::Full));
    h.unreserve("r");
    assert_eq!(h.check("r", None, now), Ok(()));
    // Reserving in an empty room and giving it back leaves nothing behind.
    h.reserve("other").unwrap();
    h.unreserve("other");
    assert_eq!(h.counts(), (1, 1));
}

#[test]
fn resume_replays_in_order_and_grace_expires() {
    let h = hub(HubConfig::default());
    let now = Instant::now();
    let (a, ma) = join(&h, "r", now);
    let (b, mb) = join(&h, "r", now);
    let token = mb.take()[0]["resume_token"].as_str().unwrap().to_string();
    ma.take();
    for i in 0..3 {
        h.message(
            "r",
            &a.peer_id,
            a.conn,
            &json!({"type":"message","data":i}).to_string(),
            now,
            &no_ice,
        );
    }
    assert_eq!(mb.take().len(), 3);
    // b drops; a keeps talking; nobody is told.
    h.ended("r", &b.peer_id, b.conn, Ended::Dropped, now);
    for i in 3..6 {
        h.message(
            "r",
            &a.peer_id,
            a.conn,
            &json!({"type":"message","data":i}).to_string(),
            now,
            &no_ice,
        );
    }
    assert!(ma.take().is_empty());
    // Bad resumes.
    assert_eq!(h.check("r", Some((&token, 99)), now), Err(JoinError::BadResume));
    assert_eq!(
        h.check("r", Some(("nope", 0)), now),
        Err(JoinError::ResumeExpired)
    );
    assert_eq!(
        h.check("x", Some((&token, 0)), now),
        Err(JoinError::ResumeExpired)
    );
    // Resume from seq 2: messages 3..=6 (seq), in order.
    let m2 = Arc::new(Memory::default());
    let j = h
        .resume(
            "r",
            &token,
            2,
            m2.clone(),
            (&json!([]), 60),
            now + Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(j.peer_id, b.peer_id);
    let got = m2.take();
    assert_eq!(got[0]["type"], "welcome");
    assert_eq!(got[0]["resumed"], true);
    assert_eq!(got[0]["peers"][0]["peer_id"], a.peer_id.as_str());
    let seqs: Vec<u64> = got[1..].iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [3, 4, 5, 6]);
    let data: Vec<i64> = got[1..].iter().map(|m| m["data"].as_i64().unwrap()).collect();
    assert_eq!(data, [2, 3, 4, 5]);
    // The token worked once.
    assert_eq!(
        h.check("r", Some((&token, 0)), now),
        Err(JoinError::ResumeExpired)
    );
    // The old connection's late report changes nothing.
    h.ended("r", &b.peer_id, b.conn, Ended::Dropped, now);
    assert_eq!(h.counts(), (1, 2));
    // Drop again and let the grace expire: peer-left timeout.
    h.ended("r", &b.peer_id, j.conn, Ended::Dropped, now);
    h.tick(now + Duration::from_secs(29));
    assert!(ma.take().is_empty());
    h.tick(now + Duration::from_secs(31));
    let got = ma.take();
    assert_eq!(
        (got[0]["type"].as_str(), got[0]["reason"].as_str()),
        (Some("peer-left"), Some("timeout"))
    );
}

#[test]
fn resume_takes_over_a_live_connection() {
    let h = hub(HubConfig::default());
    let now = Instant::now();
    let (_a, ma) = join(&h, "r", now);
    let token = ma.take()[0]["resume_token"].as_str().unwrap().to_string();
    let m2 = Arc::new(Memory::default());
    h.resume("r", &token, 0, m2.clone(), (&json!([]), 60), now)
        .unwrap();
    assert_eq!(ma.closed(), Some(4000));
}

#[test]
fn log_overflow_during_grace_ends_it_and_gap_refuses_resume() {
    let h = hub(HubConfig {
        log_messages: 4,
        ..HubConfig::default()
    });
    let now = Instant::now();
    let (a, ma) = join(&h, "r", now);
    let (b, mb) = join(&h, "r", now);
    let token = mb.take()[0]["resume_token"].as_str().unwrap().to_string();
    ma.take();
    for i in 0..6 {
        h.message(
            "r",
            &a.peer_id,
            a.conn,
            &json!({"type":"message","data":i}).to_string(),
            now,
            &no_ice,
        );
    }
    // b received all 6 live, but its log keeps the last 4 only: resuming from 0 is a gap.
    assert_eq!(mb.take().len(), 6);
    assert_eq!(h.check("r", Some((&token, 0)), now), Err(JoinError::ResumeGap));
    assert_eq!(h.check("r", Some((&token, 2)), now), Ok(()));
    h.ended("r", &b.peer_id, b.conn, Ended::Dropped, now);
    // One more message overflows the log while b is away: b's grace ends at once.
    h.message(
        "r",
        &a.peer_id,
        a.conn,
        r#"{"type":"message","data":"x"}"#,
        now,
        &no_ice,
    );
    let got = ma.take();
    assert_eq!(got.last().unwrap()["reason"], "timeout");
    assert_eq!(
        h.check("r", Some((&token, 6)), now),
        Err(JoinError::ResumeExpired)
    );
}

#[test]
fn rate_limits_warn_once_then_close() {
    let h = hub(HubConfig {
        rate_per_connection: 5,
        ..HubConfig::default()
    });
    let t0 = Instant::now();
    let (a, ma) = join(&h, "r", t0);
    let (_b, mb) = join(&h, "r", t0);
    ma.take();
    mb.take();
    let msg = r#"{"type":"message","data":1}"#;
    for window in 0..3u64 {
        let now = t0 + Duration::from_secs(10 * window);
        let mut verdicts = Vec::new();
        for _ in 0..8 {
            verdicts.push(h.message("r", &a.peer_id, a.conn, msg, now, &no_ice));
        }
        assert_eq!(mb.take().len(), 5, "window {window}: 5 relayed");
        let errors: Vec<Value> = ma.take();
        if window < 2 {
            assert_eq!(types(&errors), ["error"], "one rate-limited error per window");
            assert_eq!(errors[0]["code"], "rate-limited");
            assert!(verdicts.iter().all(|v| *v == Verdict::Continue));
        } else {
            assert_eq!(
                verdicts.last(),
                Some(&Verdict::Close(4029)),
                "third window over the limit"
            );
        }
    }
    // A pause resets the streak.
    let h = hub(HubConfig {
        rate_per_connection: 5,
        ..HubConfig::default()
    });
    let (a, _ma) = join(&h, "r", t0);
    for w in [0u64, 1, 3, 4] {
        for _ in 0..8 {
            let v = h.message(
                "r",
                &a.peer_id,
                a.conn,
                msg,
                t0 + Duration::from_secs(10 * w),
                &no_ice,
            );
            assert_eq!(v, Verdict::Continue, "window {w}");
        }
    }
}

#[test]
fn slow_reader_is_closed_with_4013() {
    let h = hub(HubConfig::default());
    let now = Instant::now();
    let (a, ma) = join(&h, "r", now);
    h.reserve("r").unwrap();
    let slow = Arc::new(Memory {
        limit: Some(3),
        ..Memory::default()
    });
    h.join("r", json!({}), IP, slow.clone(), (&json!([]), 60));
    ma.take();
    for _ in 0..5 {
        h.message(
            "r",
            &a.peer_id,
            a.conn,
            r#"{"type":"message","data":1}"#,
            now,
            &no_ice,
        );
    }
    assert_eq!(slow.closed(), Some(4013));
}

#[test]
fn address_table_is_bounded_by_connections() {
    let h = hub(HubConfig::default());
    for i in 0..100u8 {
        let ip = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, i));
        assert!(h.connect_address(ip, 2));
        assert!(h.connect_address(ip, 2));
        assert!(!h.connect_address(ip, 2));
    }
    assert_eq!(h.address_entries(), 100);
    for i in 0..100u8 {
        let ip = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, i));
        h.disconnect_address(ip);
        h.disconnect_address(ip);
    }
    assert_eq!(h.address_entries(), 0);
}

#[test]
fn address_window_spans_rooms() {
    let h = hub(HubConfig {
        rate_per_address: 5,
        ..HubConfig::default()
    });
    let now = Instant::now();
    assert!(h.connect_address(IP, 10));
    assert!(h.connect_address(IP, 10));
    let (a, ma) = join(&h, "one", now);
    let (b, mb) = join(&h, "two", now);
    ma.take();
    mb.take();
    for _ in 0..3 {
        h.message("one", &a.peer_id, a.conn, r#"{"type":"ping"}"#, now, &no_ice);
        h.message("two", &b.peer_id, b.conn, r#"{"type":"ping"}"#, now, &no_ice);
    }
    let (ga, gb) = (ma.take(), mb.take());
    let pongs = types(&ga)
        .iter()
        .chain(types(&gb).iter())
        .filter(|t| **t == "pong")
        .count();
    assert_eq!(pongs, 5, "five messages from the address pass in the window");
    assert!(types(&gb).contains(&"error".to_string()));
    // The next window lets them through again.
    h.message(
        "one",
        &a.peer_id,
        a.conn,
        r#"{"type":"ping"}"#,
        now + Duration::from_secs(11),
        &no_ice,
    );
    assert_eq!(ma.take()[0]["type"], "pong");
}
