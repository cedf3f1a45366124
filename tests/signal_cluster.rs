//! Signaling instances sharing their rooms through a real `redis-server` (PROTOCOL.md
//! section 2 across instances): each instance on its own loopback address, as on separate
//! machines. Peers on different instances meet and relay in order; capacity holds under
//! concurrent joins; a resume works through the other instance (after an abrupt close and
//! after kill -9) and fences the old connection; a killed instance leaves no ghosts; Redis
//! stopped and restarted empty costs live sessions nothing they can keep. Run inside a
//! namespace that has only `lo` (see scripts/test.sh).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use test_support::redis::Redis;
use test_support::ws::{Closed, WsClient};
use test_support::{CallboxProcess, TurnClient, http_get};
use turn_proto::stun::Class;

const BIN: &str = env!("CARGO_BIN_EXE_callbox");

/// A signal-only instance on 127.0.0.`n`, sharing rooms through `redis`.
fn instance(redis: &Redis, n: u8, capacity: usize) -> CallboxProcess {
    instance_with(redis, n, capacity, 1_000_000, "")
}

/// [`instance`] with a per-room message rate and more configuration (other sections)
/// after `[signal]`.
fn instance_with(redis: &Redis, n: u8, capacity: usize, rate_per_room: u32, more: &str) -> CallboxProcess {
    let p = CallboxProcess::start_with(
        BIN,
        &format!(
            "[signal]\nlisten = \"127.0.0.{n}:0\"\nredis_url = \"{}\"\nredis_timeout_ms = 300\n\
             redis_lease_ms = 1000\nresume_grace = 2\nroom_capacity = {capacity}\n\
             rate_per_connection = 1000000\nrate_per_address = 1000000\nrate_per_room = {rate_per_room}\n\
             max_connections_per_address = 500\nsend_buffer_bytes = 16777216\n{more}",
            redis.url()
        ),
        &["--roles", "signal"],
        &[],
    );
    wait_ready(&p, true, Duration::from_secs(10));
    p
}

fn addr(p: &CallboxProcess) -> SocketAddr {
    p.signal.expect("a signal listener")
}

/// Waits until `/readyz` says `ready`; how long it took.
fn wait_ready(p: &CallboxProcess, ready: bool, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let (status, _) = http_get(addr(p), "/readyz");
        if (status == 200) == ready {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "readyz {ready} within {within:?} (last {status})"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn join(p: &CallboxProcess, room: &str) -> WsClient {
    WsClient::connect(addr(p), &format!("room={room}"), &[])
        .await
        .expect("joined")
}

/// The next message that is not a `pong` or an `ice-servers` push.
async fn next(c: &mut WsClient) -> Value {
    loop {
        let m = c.recv().await.expect("a message within 5 s");
        if m["type"] != "ice-servers" {
            return m;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_on_two_instances_meet_relay_in_order_and_capacity_holds() {
    let redis = Redis::start();
    let a = instance(&redis, 2, 8);
    let b = instance(&redis, 3, 8);

    let mut pa = join(&a, "r1").await;
    let mut pb = join(&b, "r1").await;
    let peers = pb.welcome["peers"].as_array().unwrap().clone();
    assert_eq!(peers.len(), 1, "{}", pb.welcome);
    assert_eq!(peers[0]["peer_id"], pa.peer_id().as_str());
    let joined = next(&mut pa).await;
    assert_eq!(
        (joined["type"].as_str(), joined["peer_id"].as_str()),
        (Some("peer-joined"), Some(pb.peer_id().as_str()))
    );

    // Offer, answer and candidates, in order both ways, across the instances.
    pa.send(json!({"type": "offer", "sdp": "v=0 offer", "to": pb.peer_id()}))
        .await;
    for i in 0..5 {
        pa.send(json!({"type": "candidate", "candidate": format!("c{i}"), "to": pb.peer_id()}))
            .await;
    }
    let offer = next(&mut pb).await;
    assert_eq!(
        (offer["type"].as_str(), offer["from"].as_str()),
        (Some("offer"), Some(pa.peer_id().as_str()))
    );
    assert!(offer.get("to").is_none(), "{offer}");
    for i in 0..5 {
        assert_eq!(next(&mut pb).await["candidate"], format!("c{i}"));
    }
    pb.send(json!({"type": "answer", "sdp": "v=0 answer"})).await;
    let answer = next(&mut pa).await;
    assert_eq!(
        (answer["type"].as_str(), answer["from"].as_str()),
        (Some("answer"), Some(pb.peer_id().as_str()))
    );
    // seq runs 1, 2, 3... per receiver, across instances.
    assert_eq!(answer["seq"], 2, "peer-joined was 1: {answer}");

    // A `to` naming nobody in the room.
    pa.send(json!({"type": "message", "data": 1, "to": "p-0000000000000000"}))
        .await;
    assert_eq!(next(&mut pa).await["code"], "unknown-peer");

    // 10,000 messages from a (on A) to b (on B): none lost, none reordered.
    let n = 10_000u64;
    let started = Instant::now();
    for i in 0..n {
        pa.send(json!({"type": "message", "data": i, "to": pb.peer_id()}))
            .await;
    }
    for i in 0..n {
        let m = next(&mut pb).await;
        assert_eq!(m["data"], i, "message {i} in order: {m}");
    }
    eprintln!("10000 cross-instance messages in {:?}", started.elapsed());

    // Broadcast reaches peers on both instances.
    let mut pc = join(&a, "r1").await;
    assert_eq!(next(&mut pa).await["type"], "peer-joined");
    assert_eq!(next(&mut pb).await["type"], "peer-joined");
    pb.send(json!({"type": "message", "data": "all"})).await;
    assert_eq!(next(&mut pa).await["data"], "all");
    assert_eq!(next(&mut pc).await["data"], "all");

    // Presence: a leave is a peer-left `left` everywhere.
    pc.send(json!({"type": "leave"})).await;
    assert_eq!(pc.closed().await, Closed::Code(1000));
    for c in [&mut pa, &mut pb] {
        let left = next(c).await;
        assert_eq!(
            (left["type"].as_str(), left["reason"].as_str()),
            (Some("peer-left"), Some("left"))
        );
    }

    // Capacity: 50 concurrent joins of one room over both instances; exactly 8 get in.
    let (aa, ba) = (addr(&a), addr(&b));
    let tries: Vec<_> = (0..50)
        .map(|i| {
            let to = if i % 2 == 0 { aa } else { ba };
            tokio::spawn(async move { WsClient::connect(to, "room=race", &[]).await })
        })
        .collect();
    let mut won = Vec::new();
    let mut full = 0;
    for t in tries {
        match t.await.unwrap() {
            Ok(c) => won.push(c),
            Err(r) => {
                assert_eq!((r.status, r.code()), (409, "room-full"), "{:?}", r.body);
                full += 1;
            }
        }
    }
    assert_eq!((won.len(), full), (8, 42));
}

fn resume_query(room: &str, c: &WsClient) -> String {
    format!("room={room}&resume={}&last_seq={}", c.resume_token(), c.last_seq)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_through_the_other_instance_fences_the_old_one_and_kill9_leaves_no_ghost() {
    let redis = Redis::start();
    let a = instance(&redis, 2, 3);
    let b = instance(&redis, 3, 3);

    let mut pa = join(&a, "r2").await;
    let pb = join(&b, "r2").await;
    assert_eq!(next(&mut pa).await["type"], "peer-joined");
    let pb_id = pb.peer_id();
    let query = resume_query("r2", &pb);

    // b's connection to B drops without a close; what a sends meanwhile is logged.
    pb.drop_abruptly();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..3 {
        pa.send(json!({"type": "message", "data": i, "to": pb_id})).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // b comes back through A and gets them, in order, with the same id.
    let mut pb = WsClient::connect(addr(&a), &query, &[])
        .await
        .expect("resumed on A");
    assert_eq!(pb.welcome["resumed"], true);
    assert_eq!(pb.peer_id(), pb_id);
    assert_eq!(pb.welcome["peers"][0]["peer_id"], pa.peer_id().as_str());
    for i in 0..3 {
        let m = next(&mut pb).await;
        assert_eq!(
            (m["data"].as_u64(), m["from"].as_str()),
            (Some(i), Some(pa.peer_id().as_str())),
            "{m}"
        );
    }
    // The others were told nothing.
    assert!(pa.recv_within(Duration::from_millis(300)).await.is_none());
    // A used token is refused.
    let again = WsClient::connect(addr(&b), &query, &[]).await.unwrap_err();
    assert_eq!((again.status, again.code()), (410, "resume-expired"));

    // A resume through B while the connection on A looks open takes over: 4000 there.
    let mut old = pb;
    let mut pb = WsClient::connect(addr(&b), &resume_query("r2", &old), &[])
        .await
        .expect("resumed on B");
    assert_eq!(old.closed().await, Closed::Code(4000));
    pa.send(json!({"type": "message", "data": "to-new", "to": pb_id}))
        .await;
    assert_eq!(next(&mut pb).await["data"], "to-new");

    // A third peer on B; the room (capacity 3) is full everywhere.
    let pd = join(&b, "r2").await;
    let pd_id = pd.peer_id();
    assert_eq!(next(&mut pa).await["peer_id"], pd_id.as_str());
    assert_eq!(next(&mut pb).await["peer_id"], pd_id.as_str());
    let full = WsClient::connect(addr(&a), "room=r2", &[]).await.unwrap_err();
    assert_eq!(full.status, 409);

    // B dies with kill -9. b resumes through A at once; d never comes back.
    let query = resume_query("r2", &pb);
    let killed = Instant::now();
    drop(b.kill9());
    drop(pd);
    let mut pb = WsClient::connect(addr(&a), &query, &[])
        .await
        .expect("resumed on A after kill -9");
    assert_eq!(pb.welcome["resumed"], true);
    // d's lease lapses (1 s), then its grace (2 s): peer-left `timeout` for the others.
    for c in [&mut pa, &mut pb] {
        let left = loop {
            let m = c
                .recv_within(Duration::from_secs(10))
                .await
                .expect("peer-left for d");
            if m["type"] == "peer-left" {
                break m;
            }
        };
        assert_eq!(
            (left["peer_id"].as_str(), left["reason"].as_str()),
            (Some(pd_id.as_str()), Some("timeout"))
        );
    }
    let took = killed.elapsed();
    assert!(took >= Duration::from_secs(2), "not before the grace: {took:?}");
    eprintln!("ghost removed {took:?} after kill -9");
    // Its slot is free again.
    let _pe = WsClient::connect(addr(&a), "room=r2", &[])
        .await
        .expect("a slot after the ghost left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_and_restarted_empty() {
    let mut redis = Redis::start();
    let a = instance(&redis, 2, 8);
    let b = instance(&redis, 3, 8);
    let mut pa = join(&a, "r3").await;
    let mut pb = join(&b, "r3").await;
    assert_eq!(next(&mut pa).await["type"], "peer-joined");

    redis.stop();
    let took = wait_ready(&a, false, Duration::from_secs(5));
    eprintln!("readyz 503 {took:?} after redis stopped");
    let refused = WsClient::connect(addr(&a), "room=r3", &[]).await.unwrap_err();
    assert_eq!(
        (refused.status, refused.code()),
        (503, "unavailable"),
        "{:?}",
        refused.body
    );
    // Live sessions stay open; what needs Redis is dropped meanwhile.
    assert!(pa.send(json!({"type": "ping"})).await);
    assert!(pa.recv_within(Duration::from_millis(500)).await.is_none());

    // Redis comes back empty: both instances register their peers again.
    redis.run();
    let took = wait_ready(&a, true, Duration::from_secs(10));
    wait_ready(&b, true, Duration::from_secs(10));
    eprintln!("readyz 200 {took:?} after redis restarted");
    // Until both have re-registered, a message may find nobody.
    let start = Instant::now();
    loop {
        pa.send(json!({"type": "message", "data": "after", "to": pb.peer_id()}))
            .await;
        if let Some(m) = pb.recv_within(Duration::from_millis(500)).await {
            assert_eq!(
                (m["data"].as_str(), m["from"].as_str()),
                (Some("after"), Some(pa.peer_id().as_str())),
                "{m}"
            );
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "relay after recovery");
    }
    pb.send(json!({"type": "message", "data": "back"})).await;
    let m = loop {
        let m = next(&mut pa).await;
        if m["type"] == "message" {
            break m;
        }
    };
    assert_eq!(m["data"], "back");
    // New joins work and are announced to the old peers.
    let pc = join(&b, "r3").await;
    assert_eq!(pc.welcome["peers"].as_array().unwrap().len(), 2, "{}", pc.welcome);
    let j = loop {
        let m = next(&mut pa).await;
        if m["type"] == "peer-joined" {
            break m;
        }
    };
    assert_eq!(j["peer_id"], pc.peer_id().as_str());
    for p in [&a, &b] {
        assert!(!p.output().contains("panicked"), "{}", p.output());
    }
}

/// `[cluster]` on `redis` for node `id`.
fn cluster(redis: &Redis, id: &str) -> String {
    format!(
        "[cluster]\nredis_url = \"{}\"\nnode_id = \"{id}\"\nheartbeat_ms = 200\nnode_ttl_ms = 1500\ntimeout_ms = 500\n",
        redis.url()
    )
}

/// The layout of separate machines: an admin node, two signaling instances and a TURN-only
/// node, one Redis. Peers on the two instances negotiate, and the TURN credentials of a
/// `welcome` relay through the TURN node (coturn's uclient); admin lists the room on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_credentials_from_either_instance_relay_through_a_turn_node_elsewhere() {
    let redis = Redis::start();
    let admin = CallboxProcess::start_with(BIN, &cluster(&redis, "admin-1"), &["--roles", "admin"], &[]);
    // The relay range stays below the kernel's ephemeral ports, where turnutils_peer's
    // port lands: a peer port inside the relay range on a local address is refused (403).
    let turn = CallboxProcess::start_with(
        BIN,
        &format!(
            "[turn]\nlisten = [\"127.0.0.4:0\"]\nhttp_listen = \"127.0.0.4:0\"\nrelay_ip = \"127.0.0.4\"\n\
             relay_port_min = 24000\nrelay_port_max = 30000\nallow_peers = [\"127.0.0.1/32\"]\n{}",
            cluster(&redis, "turn-1")
        ),
        &["--roles", "turn"],
        &[],
    );
    let a = instance_with(&redis, 2, 8, 1_000_000, &cluster(&redis, "signal-a"));
    let b = instance_with(&redis, 3, 8, 1_000_000, &cluster(&redis, "signal-b"));
    let turn_url = format!("turn:127.0.0.4:{}?transport=udp", turn.udp_v4().port());

    // New ICE lists carry the TURN node once it registered, and its secret is the admin's.
    let start = Instant::now();
    let (mut pa, mut pb) = loop {
        let pa = join(&a, "r4").await;
        let pb = join(&b, "r4").await;
        if pb.welcome["ice_servers"].to_string().contains(&turn_url) {
            break (pa, pb);
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{}", pb.welcome);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Earlier tries left; the two newest meet.
    loop {
        let m = next(&mut pa).await;
        if m["type"] == "peer-joined" && m["peer_id"] == pb.peer_id().as_str() {
            break;
        }
    }
    pa.send(json!({"type": "offer", "sdp": "v=0 offer", "to": pb.peer_id()}))
        .await;
    assert_eq!(next(&mut pb).await["type"], "offer");
    pb.send(json!({"type": "answer", "sdp": "v=0 answer", "to": pa.peer_id()}))
        .await;
    assert_eq!(next(&mut pa).await["type"], "answer");

    // Admin sees the room on both instances.
    let start = Instant::now();
    loop {
        let r = admin.admin("GET", "/admin/v1/rooms", None);
        let nodes: Vec<String> = r
            .json()
            .as_array()
            .map(|rooms| {
                rooms
                    .iter()
                    .filter(|x| x["room"] == "r4")
                    .filter_map(|x| x["node"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if nodes.contains(&"signal-a".to_string()) && nodes.contains(&"signal-b".to_string()) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{}", r.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The credentials verify on the TURN node once the admin's secret reached both sides
    // (each node bootstrapped a secret of its own before).
    let start = Instant::now();
    let (user, pass) = loop {
        let fresh = join(&b, "r4").await;
        let server = fresh.welcome["ice_servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["urls"].to_string().contains(&turn_url))
            .unwrap()
            .clone();
        let (user, pass) = (
            server["username"].as_str().unwrap().to_string(),
            server["credential"].as_str().unwrap().to_string(),
        );
        let mut c = TurnClient::new(turn.udp_v4(), &user, &pass, "callbox");
        if c.allocate().class == Class::Success {
            break (user, pass);
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the cluster's secret everywhere"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (peer_port, _peer) = test_support::turnutils_peer();
    let turn_addr = turn.udp_v4();
    let (code, out) = tokio::task::spawn_blocking(move || {
        test_support::uclient_with_password(turn_addr, &user, &pass, peer_port)
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("Total lost packets 0 "), "{out}");
}

/// The per-room window is one window however many instances the room's peers use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rooms_rate_window_is_shared_by_its_instances() {
    let redis = Redis::start();
    let a = instance_with(&redis, 2, 8, 20, "");
    let b = instance_with(&redis, 3, 8, 20, "");
    let mut pa = join(&a, "rl").await;
    let mut pb = join(&b, "rl").await;
    assert_eq!(next(&mut pa).await["type"], "peer-joined");
    // Start early in a 10-second window (Redis's clock is this machine's), so the 30
    // messages below fall into one.
    loop {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        if ms % 10_000 < 5_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // 15 each way: 30 in the room's window, 20 allowed wherever they were sent from.
    for i in 0..15 {
        pa.send(json!({"type": "message", "data": i, "to": pb.peer_id()}))
            .await;
        pb.send(json!({"type": "message", "data": i, "to": pa.peer_id()}))
            .await;
    }
    let mut relayed = 0;
    let mut limited = 0;
    for c in [&mut pa, &mut pb] {
        while let Some(m) = c.recv_within(Duration::from_millis(700)).await {
            match (m["type"].as_str(), m["code"].as_str()) {
                (Some("message"), _) => relayed += 1,
                (Some("error"), Some("rate-limited")) => limited += 1,
                other => panic!("{other:?}: {m}"),
            }
        }
    }
    assert_eq!(relayed, 20, "the room's 20 across both instances");
    assert!(
        (1..=2).contains(&limited),
        "one error per connection and window: {limited}"
    );
}

/// A log that overflows while its peer is away ends the grace at once, across instances:
/// the others hear `peer-left` `timeout`, and the token answers `resume-gap`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overflowed_log_ends_the_grace_and_the_resume_is_a_gap() {
    let redis = Redis::start();
    let a = instance_with(&redis, 2, 8, 1_000_000, "resume_log_messages = 8\n");
    let b = instance_with(&redis, 3, 8, 1_000_000, "resume_log_messages = 8\n");
    let mut pa = join(&a, "gap").await;
    let pb = join(&b, "gap").await;
    assert_eq!(next(&mut pa).await["type"], "peer-joined");
    let pb_id = pb.peer_id();
    let query = resume_query("gap", &pb);
    pb.drop_abruptly();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Nine messages for a log of eight: the first one no longer fits.
    for i in 0..9 {
        pa.send(json!({"type": "message", "data": i, "to": pb_id})).await;
    }
    let left = next(&mut pa).await;
    assert_eq!(
        (
            left["type"].as_str(),
            left["peer_id"].as_str(),
            left["reason"].as_str()
        ),
        (Some("peer-left"), Some(pb_id.as_str()), Some("timeout")),
        "{left}"
    );
    let refused = WsClient::connect(addr(&a), &query, &[]).await.unwrap_err();
    assert_eq!(
        (refused.status, refused.code()),
        (410, "resume-gap"),
        "{:?}",
        refused.body
    );
}
