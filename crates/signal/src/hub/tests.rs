//! The room state machine on its own: in-memory outboxes, simulated time.

use super::*;
use std::sync::Mutex as StdMutex;
use tokio::sync::mpsc;

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
    fn close(&self, code: CloseCode, _reason: &str) {
        self.closed.lock().unwrap().get_or_insert(code.code());
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
        Verdict::Close(CloseCode::Left)
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
            IP,
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
    h.resume("r", &token, 0, IP, m2.clone(), (&json!([]), 60), now)
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
    // PROTOCOL.md section 2: an overflow during the grace is a gap, for as long as the
    // token would have lived; after that the token is simply expired.
    assert_eq!(h.check("r", Some((&token, 6)), now), Err(JoinError::ResumeGap));
    let later = now + HubConfig::default().grace - Duration::from_millis(1);
    h.tick(later);
    assert_eq!(h.check("r", Some((&token, 6)), later), Err(JoinError::ResumeGap));
    let (_, mc) = join(&h, "r", later);
    let outbox: Arc<dyn Outbox> = mc.clone();
    assert!(matches!(
        h.resume(
            "r",
            &token,
            6,
            "192.0.2.1".parse().unwrap(),
            outbox,
            (&json!([]), 60),
            later
        ),
        Err(JoinError::ResumeGap)
    ));
    let after = now + HubConfig::default().grace;
    h.tick(after);
    assert_eq!(
        h.check("r", Some((&token, 6)), after),
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
                Some(&Verdict::Close(CloseCode::RateLimited)),
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

// Admin hooks: kicks, room closes, listings, session records, gauges.

fn hub_with_sessions(cfg: HubConfig, capacity: usize) -> (Hub, mpsc::Receiver<SessionRecord>) {
    let (tx, rx) = mpsc::channel(capacity);
    (hub(cfg).with_session_events(tx), rx)
}

fn join_from(h: &Hub, room: &str, addr: IpAddr) -> (Joined, Arc<Memory>) {
    h.reserve(room).unwrap();
    let m = Arc::new(Memory::default());
    let j = h.join(room, json!({"name": room}), addr, m.clone(), (&json!([]), 60));
    (j, m)
}

fn token_of(m: &Memory) -> String {
    m.take()[0]["resume_token"].as_str().unwrap().to_string()
}

fn records(rx: &mut mpsc::Receiver<SessionRecord>) -> Vec<SessionRecord> {
    std::iter::from_fn(|| rx.try_recv().ok()).collect()
}

/// The rooms and peers gauges agree with the hub's actual state.
fn assert_gauges(h: &Hub) {
    let (rooms, peers) = h.counts();
    assert_eq!(
        (
            h.metrics.rooms.load(Ordering::Relaxed),
            h.metrics.peers.load(Ordering::Relaxed)
        ),
        (rooms as i64, peers as i64),
        "gauges vs state"
    );
}

fn peer_left(v: &[Value]) -> Vec<(String, String)> {
    v.iter()
        .filter(|m| m["type"] == "peer-left")
        .map(|m| {
            (
                m["peer_id"].as_str().unwrap().to_string(),
                m["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn kick_peer_closes_4003_removes_at_once_and_kills_the_resume_token() {
    let (h, mut rx) = hub_with_sessions(HubConfig::default(), 16);
    let now = Instant::now();
    let (a, ma) = join(&h, "r", now);
    let (b, mb) = join(&h, "r", now);
    let (c, mc) = join(&h, "r", now);
    let b_token = token_of(&mb);
    let c_token = token_of(&mc);
    ma.take();
    mb.take();

    assert!(h.kick_peer("r", &b.peer_id));
    assert_eq!(mb.closed(), Some(4003));
    assert_eq!(peer_left(&ma.take()), [(b.peer_id.clone(), "kicked".to_string())]);
    assert_eq!(peer_left(&mc.take()), [(b.peer_id.clone(), "kicked".to_string())]);
    assert_eq!(
        h.counts(),
        (1, 2),
        "removed at once, not when the connection reports"
    );
    assert_gauges(&h);
    // No resume into a kicked peer's place.
    assert_eq!(
        h.check("r", Some((&b_token, 0)), now),
        Err(JoinError::ResumeExpired)
    );
    let m2 = Arc::new(Memory::default());
    assert_eq!(
        h.resume("r", &b_token, 0, IP, m2.clone(), (&json!([]), 60), now),
        Err(JoinError::ResumeExpired)
    );
    assert!(m2.take().is_empty());
    // The connection's own report (4003 -> Kicked) comes later and changes nothing.
    h.ended("r", &b.peer_id, b.conn, Ended::Kicked, now);
    assert!(ma.take().is_empty(), "one peer-left only");
    assert_eq!(h.counts(), (1, 2));
    assert_gauges(&h);
    let recs = records(&mut rx);
    assert_eq!(recs.len(), 1, "one record per session");
    assert_eq!(
        (recs[0].peer_id.as_str(), recs[0].reason.as_str()),
        (b.peer_id.as_str(), "kicked")
    );

    // A peer in its grace is just removed (no connection to close).
    h.ended("r", &c.peer_id, c.conn, Ended::Dropped, now);
    assert!(h.kick_peer("r", &c.peer_id));
    assert_eq!(mc.closed(), None);
    assert_eq!(peer_left(&ma.take()), [(c.peer_id.clone(), "kicked".to_string())]);
    assert_eq!(
        h.check("r", Some((&c_token, 0)), now),
        Err(JoinError::ResumeExpired)
    );
    // Its grace ending later does not remove it twice.
    h.tick(now + Duration::from_secs(60));
    assert!(ma.take().is_empty());
    assert_eq!(records(&mut rx).len(), 1);

    assert!(!h.kick_peer("r", &c.peer_id), "already gone");
    assert!(!h.kick_peer("r", "p-nobody"));
    assert!(!h.kick_peer("elsewhere", &a.peer_id));
    assert_eq!(h.counts(), (1, 1));
    assert_gauges(&h);
}

#[test]
fn close_room_removes_everyone_including_peers_in_grace() {
    let (h, mut rx) = hub_with_sessions(HubConfig::default(), 16);
    let now = Instant::now();
    let (a, ma) = join(&h, "r", now);
    let (b, mb) = join(&h, "r", now);
    let (c, mc) = join(&h, "r", now);
    let c_token = token_of(&mc);
    let (_o, mo) = join(&h, "other", now);
    ma.take();
    mb.take();
    mo.take();
    h.ended("r", &c.peer_id, c.conn, Ended::Dropped, now);

    assert_eq!(h.close_room("r"), 3, "two live, one in grace");
    assert_eq!(
        (ma.closed(), mb.closed(), mc.closed()),
        (Some(4009), Some(4009), None)
    );
    assert!(
        ma.take().is_empty() && mb.take().is_empty(),
        "nobody left to tell"
    );
    assert_eq!(h.room("r"), None);
    assert_eq!(h.counts(), (1, 1), "the other room stays");
    assert_gauges(&h);
    assert!(mo.take().is_empty() && mo.closed().is_none());
    assert_eq!(
        h.check("r", Some((&c_token, 0)), now),
        Err(JoinError::ResumeExpired)
    );
    // The connections report 4009 -> Kicked afterwards: nothing more happens.
    h.ended("r", &a.peer_id, a.conn, Ended::Kicked, now);
    h.ended("r", &b.peer_id, b.conn, Ended::Kicked, now);
    assert_gauges(&h);
    let mut recs = records(&mut rx);
    recs.sort_by(|x, y| x.peer_id.cmp(&y.peer_id));
    let mut want = vec![a.peer_id.clone(), b.peer_id.clone(), c.peer_id.clone()];
    want.sort();
    assert_eq!(recs.iter().map(|r| r.peer_id.clone()).collect::<Vec<_>>(), want);
    assert!(
        recs.iter()
            .all(|r| r.reason.as_str() == "kicked" && r.room == "r")
    );

    assert_eq!(h.close_room("r"), 0, "gone");
    assert_eq!(h.close_room("never"), 0);
    // A room with only an upgrade in progress has nobody to close; the upgrade then joins.
    h.reserve("pending").unwrap();
    assert_eq!(h.close_room("pending"), 0);
    h.join(
        "pending",
        json!({}),
        IP,
        Arc::new(Memory::default()),
        (&json!([]), 60),
    );
    // The room is not blocked: joining it again works.
    join(&h, "r", now);
    assert_eq!(h.counts(), (3, 3));
    assert_gauges(&h);
}

#[test]
fn close_room_while_an_upgrade_holds_a_slot() {
    let h = hub(HubConfig::default());
    let now = Instant::now();
    let (_a, ma) = join(&h, "r", now);
    h.reserve("r").unwrap();
    assert_eq!(h.close_room("r"), 1);
    assert_eq!(ma.closed(), Some(4009));
    assert_eq!(h.counts(), (0, 0));
    assert_gauges(&h);
    // The upgrade fails: nothing is left behind and the gauge does not go negative.
    h.unreserve("r");
    assert_eq!(h.counts(), (0, 0));
    assert_gauges(&h);
    assert_eq!(h.metrics.rooms.load(Ordering::Relaxed), 0);
}

#[test]
fn kick_addresses_sweeps_every_room_and_grace() {
    let (h, mut rx) = hub_with_sessions(HubConfig::default(), 16);
    let now = Instant::now();
    let bad1: IpAddr = "10.0.0.1".parse().unwrap();
    let bad2: IpAddr = "10.0.0.2".parse().unwrap();
    let good: IpAddr = "192.0.2.1".parse().unwrap();
    let (x1, mx1) = join_from(&h, "one", bad1);
    let (y1, my1) = join_from(&h, "one", bad2);
    let (g1, mg1) = join_from(&h, "one", good);
    let (x2, mx2) = join_from(&h, "two", bad1);
    let (_g2, mg2) = join_from(&h, "two", good);
    let (z3, mz3) = join_from(&h, "three", bad1);
    for m in [&mx1, &my1, &mg1, &mx2, &mg2, &mz3] {
        m.take();
    }
    // One of them is away, in its grace.
    h.ended("two", &x2.peer_id, x2.conn, Ended::Dropped, now);

    let net: callbox_core::policy::Cidr = "10.0.0.0/30".parse().unwrap();
    assert_eq!(h.kick_addresses(|ip| net.contains(ip)), 4);
    assert_eq!(
        (mx1.closed(), my1.closed(), mz3.closed(), mx2.closed()),
        (Some(4003), Some(4003), Some(4003), None)
    );
    assert_eq!((mg1.closed(), mg2.closed()), (None, None));
    // The survivors hear about each removed peer once, in join order; the removed peers
    // are not told about each other.
    assert_eq!(
        peer_left(&mg1.take()),
        [
            (x1.peer_id.clone(), "kicked".to_string()),
            (y1.peer_id.clone(), "kicked".to_string())
        ]
    );
    assert_eq!(
        peer_left(&mg2.take()),
        [(x2.peer_id.clone(), "kicked".to_string())]
    );
    assert!(mx1.take().is_empty() && my1.take().is_empty());
    assert!(h.room("three").is_none());
    assert_eq!(h.counts(), (2, 2));
    assert_gauges(&h);
    let recs = records(&mut rx);
    assert_eq!(recs.len(), 4);
    assert!(
        recs.iter()
            .all(|r| r.reason.as_str() == "kicked" && net.contains(r.addr))
    );
    assert_eq!(h.kick_addresses(|ip| net.contains(ip)), 0);
    assert_eq!(h.room("one").unwrap().peers[0].peer_id, g1.peer_id);
    let _ = z3;
}

#[test]
fn rooms_lists_peers_with_address_state_and_counters() {
    let h = hub(HubConfig::default());
    let now = Instant::now();
    let before = callbox_core::time::unix_now();
    let ip_a: IpAddr = "192.0.2.10".parse().unwrap();
    let ip_b: IpAddr = "2001:db8::7".parse().unwrap();
    let (a, ma) = join_from(&h, "zeta", ip_a);
    let (b, mb) = join_from(&h, "zeta", ip_b);
    join_from(&h, "alpha", ip_a);
    join_from(&h, "mid", ip_a);
    h.reserve("reserved-only").unwrap();
    let after = callbox_core::time::unix_now();
    ma.take();
    mb.take();
    for i in 0..2 {
        h.message(
            "zeta",
            &a.peer_id,
            a.conn,
            &json!({"type": "message", "data": i}).to_string(),
            now,
            &no_ice,
        );
    }
    h.message("zeta", &a.peer_id, a.conn, r#"{"type":"ping"}"#, now, &no_ice);
    h.message("zeta", &a.peer_id, a.conn, "junk", now, &no_ice);
    h.ended("zeta", &b.peer_id, b.conn, Ended::Dropped, now);

    let rooms = h.rooms();
    let names: Vec<&str> = rooms.iter().map(|r| r.room.as_str()).collect();
    assert_eq!(names, ["alpha", "mid", "zeta"], "sorted, rooms with peers only");
    let zeta = &rooms[2];
    assert_eq!(h.room("zeta").as_ref(), Some(zeta));
    assert_eq!(zeta.peers.len(), 2);
    let (pa, pb) = (&zeta.peers[0], &zeta.peers[1]);
    assert_eq!(
        (pa.peer_id.as_str(), pa.addr, pa.connected),
        (a.peer_id.as_str(), ip_a, true)
    );
    assert_eq!(
        (pb.peer_id.as_str(), pb.addr, pb.connected),
        (b.peer_id.as_str(), ip_b, false)
    );
    assert_eq!(pa.meta, json!({"name": "zeta"}));
    assert!((before..=after).contains(&pa.joined_unix));
    // a: four frames in (two relayed, a ping, junk); out: peer-joined, pong, error.
    assert_eq!((pa.messages_in, pa.messages_out), (4, 3));
    // b: nothing in; out: the two relayed messages.
    assert_eq!((pb.messages_in, pb.messages_out), (0, 2));
    assert_eq!(h.room("reserved-only"), None);
    assert_eq!(h.room("nowhere"), None);
    // Listing serializes as admin will answer it.
    let v = serde_json::to_value(zeta).unwrap();
    assert_eq!(v["peers"][1]["addr"], "2001:db8::7");
    assert_eq!(v["peers"][1]["connected"], false);
}

#[test]
fn session_records_carry_reason_counters_and_span_resumes() {
    let (h, mut rx) = hub_with_sessions(HubConfig::default(), 16);
    let now = Instant::now();
    let ip2: IpAddr = "198.51.100.4".parse().unwrap();
    let (a, ma) = join(&h, "r", now);
    let (b, mb) = join(&h, "r", now);
    let b_token = token_of(&mb);
    ma.take();
    h.message(
        "r",
        &a.peer_id,
        a.conn,
        r#"{"type":"message","data":1}"#,
        now,
        &no_ice,
    );
    // b drops into its grace: no record yet.
    h.ended("r", &b.peer_id, b.conn, Ended::Dropped, now);
    assert!(records(&mut rx).is_empty());
    // b resumes from another address and talks; its session goes on.
    let m2 = Arc::new(Memory::default());
    let jb = h
        .resume("r", &b_token, 1, ip2, m2.clone(), (&json!([]), 60), now)
        .unwrap();
    assert_eq!(h.room("r").unwrap().peers[1].addr, ip2);
    h.message("r", &b.peer_id, jb.conn, r#"{"type":"ping"}"#, now, &no_ice);
    h.message("r", &b.peer_id, jb.conn, r#"{"type":"leave"}"#, now, &no_ice);
    let recs = records(&mut rx);
    assert_eq!(recs.len(), 1);
    let r = &recs[0];
    assert_eq!(
        (r.room.as_str(), r.peer_id.as_str(), r.addr, r.reason.as_str()),
        ("r", b.peer_id.as_str(), ip2, "left")
    );
    // In: ping and leave; out: the relayed message and the pong (not the replay).
    assert_eq!((r.messages_in, r.messages_out), (2, 2));
    assert!(r.joined_unix <= r.left_unix && r.left_unix <= callbox_core::time::unix_now());

    // error and timeout.
    let (c, _mc) = join(&h, "r", now);
    h.ended("r", &c.peer_id, c.conn, Ended::Error, now);
    h.ended("r", &a.peer_id, a.conn, Ended::Dropped, now);
    h.tick(now + Duration::from_secs(31));
    let recs = records(&mut rx);
    let got: Vec<(&str, &str)> = recs
        .iter()
        .map(|r| (r.peer_id.as_str(), r.reason.as_str()))
        .collect();
    assert_eq!(
        got,
        [(c.peer_id.as_str(), "error"), (a.peer_id.as_str(), "timeout")]
    );
    // a: in, its one message; out, presence: b joined and left, c joined and left.
    assert_eq!((recs[1].messages_in, recs[1].messages_out), (1, 4));
    assert_eq!(h.counts(), (0, 0));
    assert_gauges(&h);
    assert_eq!(h.metrics.session_events_dropped.load(Ordering::Relaxed), 0);
}

#[test]
fn session_records_never_block_and_drops_are_counted() {
    let (h, mut rx) = hub_with_sessions(HubConfig::default(), 1);
    let now = Instant::now();
    for _ in 0..3 {
        let (j, _m) = join(&h, "r", now);
        h.ended("r", &j.peer_id, j.conn, Ended::Left, now);
    }
    assert_eq!(records(&mut rx).len(), 1, "the channel holds one");
    assert_eq!(h.metrics.session_events_dropped.load(Ordering::Relaxed), 2);
    assert!(
        h.metrics
            .render()
            .contains("callbox_signal_session_events_dropped_total 2\n")
    );
    // A consumer that went away: records are dropped and counted, nothing waits.
    drop(rx);
    let (j, _m) = join(&h, "r", now);
    assert!(h.kick_peer("r", &j.peer_id));
    assert_eq!(h.metrics.session_events_dropped.load(Ordering::Relaxed), 3);
    // Without a channel nothing is sent or counted.
    let h = hub(HubConfig::default());
    let (j, _m) = join(&h, "r", now);
    h.ended("r", &j.peer_id, j.conn, Ended::Left, now);
    assert_eq!(h.metrics.session_events_dropped.load(Ordering::Relaxed), 0);
}

#[test]
fn gauges_follow_reservations_leaves_and_rejoins() {
    let h = hub(HubConfig::default());
    let now = Instant::now();
    // A failed upgrade into a new room never counted it, and does not uncount it.
    h.reserve("new").unwrap();
    h.unreserve("new");
    assert_gauges(&h);
    assert_eq!(h.metrics.rooms.load(Ordering::Relaxed), 0);
    // The last peer leaves while an upgrade holds a slot, then the upgrade joins.
    let (a, _ma) = join(&h, "r", now);
    h.reserve("r").unwrap();
    h.ended("r", &a.peer_id, a.conn, Ended::Left, now);
    assert_gauges(&h);
    h.join("r", json!({}), IP, Arc::new(Memory::default()), (&json!([]), 60));
    assert_gauges(&h);
    assert_eq!(h.metrics.rooms.load(Ordering::Relaxed), 1);
}
