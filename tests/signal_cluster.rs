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
use test_support::{CallboxProcess, http_get};

const BIN: &str = env!("CARGO_BIN_EXE_callbox");

/// A signal-only instance on 127.0.0.`n`, sharing rooms through `redis`.
fn instance(redis: &Redis, n: u8, capacity: usize) -> CallboxProcess {
    let p = CallboxProcess::start_with(
        BIN,
        &format!(
            "[signal]\nlisten = \"127.0.0.{n}:0\"\nredis_url = \"{}\"\nredis_timeout_ms = 300\n\
             redis_lease_ms = 1000\nresume_grace = 2\nroom_capacity = {capacity}\n\
             rate_per_connection = 1000000\nrate_per_address = 1000000\nrate_per_room = 1000000\n\
             max_connections_per_address = 500\nsend_buffer_bytes = 16777216\n",
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
