//! The control plane across machines over a real `redis-server` on loopback: an admin node
//! (admin and signal roles, its own store) and TURN-only nodes on other loopback addresses
//! with stores of their own, as on separate machines. Bans and secret rotations made
//! through admin reach a TURN-only node within a second; nodes register with their ICE
//! URLs and signaling hands those out; a node that dies leaves the registry; Redis
//! stopped and restarted mid-test costs nothing that needs it not. Run inside a namespace
//! that has only `lo` (see scripts/test.sh).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use callbox_core::Secret;
use callbox_core::credentials::mint;
use serde_json::{Value, json};
use test_support::redis::Redis;
use test_support::{CallboxProcess, TurnClient, http_get, metric};
use turn_proto::stun::Class;

const BIN: &str = env!("CARGO_BIN_EXE_callbox");

fn cluster(redis: &Redis, node_id: &str, region: &str) -> String {
    format!(
        "[cluster]\nredis_url = \"{}\"\nnode_id = \"{node_id}\"\nregion = \"{region}\"\n\
         heartbeat_ms = 200\nnode_ttl_ms = 1500\ntimeout_ms = 500\n",
        redis.url()
    )
}

/// The admin node: admin and signal roles, its own store.
fn admin_node(redis: &Redis) -> CallboxProcess {
    CallboxProcess::start_with(
        BIN,
        &format!(
            "[admin]\nrotation_overlap = 0\n{}",
            cluster(redis, "admin-1", "eu")
        ),
        &["--roles", "admin,signal"],
        &[],
    )
}

/// A TURN-only node on `ip` (its own loopback address, as another machine), with a store
/// of its own: its secrets and bans come from the cluster.
fn turn_node(redis: &Redis, ip: &str, id: &str, region: &str) -> CallboxProcess {
    CallboxProcess::start_with(
        BIN,
        &format!(
            "[turn]\nlisten = [\"{ip}:0\"]\nhttp_listen = \"{ip}:0\"\nrelay_ip = \"{ip}\"\n\
             relay_port_min = 20000\nrelay_port_max = 30000\nallow_peers = [\"127.0.0.1/32\"]\n{}",
            cluster(redis, id, region)
        ),
        &["--roles", "turn"],
        &[],
    )
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < within, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

fn allocate(node: &CallboxProcess, from: &str, secret: &str, user: &str) -> (TurnClient, Option<u16>) {
    let (username, password) = mint(&Secret::new(secret), user, now(), 600);
    let mut c = TurnClient::new_from(
        format!("{from}:0").parse().unwrap(),
        node.udp_v4(),
        &username,
        &password,
        "callbox",
    );
    let r = c.allocate();
    let code = if r.class == Class::Success { None } else { r.code };
    (c, code)
}

fn node_ids(admin: &CallboxProcess) -> Vec<String> {
    let r = admin.admin("GET", "/admin/v1/nodes", None);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_string())
        .collect()
}

fn ice_turn_urls(admin: &CallboxProcess) -> Vec<String> {
    let (status, body) = http_get(admin.signal.unwrap(), "/v1/ice-servers");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["iceServers"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["urls"].as_array().cloned().unwrap_or_default())
        .filter_map(|u| u.as_str().map(str::to_string))
        .filter(|u| u.starts_with("turn:"))
        .collect()
}

#[test]
fn bans_and_rotations_reach_a_turn_node_elsewhere_and_the_registry_follows_nodes() {
    let mut redis = Redis::start();
    let admin = admin_node(&redis);
    let turn = turn_node(&redis, "127.0.0.2", "turn-eu-1", "eu");
    let turn_us = turn_node(&redis, "127.0.0.3", "turn-us-1", "us");

    // Every node registers; signaling hands out both TURN nodes' URLs.
    wait_until("three nodes registered", Duration::from_secs(5), || {
        node_ids(&admin) == ["admin-1", "turn-eu-1", "turn-us-1"]
    });
    let nodes = admin.admin("GET", "/admin/v1/nodes", None).json();
    let eu = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "turn-eu-1")
        .unwrap();
    assert_eq!(eu["roles"], json!(["turn"]));
    assert_eq!(eu["region"], "eu");
    let eu_url = format!("turn:127.0.0.2:{}?transport=udp", turn.udp_v4().port());
    assert!(
        eu["turn_urls"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u == &json!(eu_url)),
        "{eu}"
    );
    wait_until("both TURN nodes in ICE lists", Duration::from_secs(5), || {
        let urls = ice_turn_urls(&admin);
        urls.contains(&eu_url) && urls.iter().any(|u| u.starts_with("turn:127.0.0.3:"))
    });

    // The admin node's secret verifies on the TURN nodes (their own stores hold others).
    let first = admin.secret();
    wait_until(
        "the cluster's secret on the TURN node",
        Duration::from_secs(5),
        || allocate(&turn, "127.0.0.1", &first, "alice").1.is_none(),
    );
    assert_eq!(allocate(&turn, "127.0.0.1", &turn.secret(), "alice").1, Some(401));

    // A ban through admin ends a live allocation on the TURN node within a second.
    let (mut victim, code) = allocate(&turn, "127.0.0.5", &first, "mallory");
    assert_eq!(code, None);
    let r = admin.admin(
        "POST",
        "/admin/v1/bans",
        Some(&json!({"network": "127.0.0.5/32"})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let took = wait_until("the ban on the TURN node", Duration::from_secs(1), || {
        victim.refresh(600).class != Class::Success
    });
    eprintln!("ban reached the TURN node in {took:?}");
    assert_eq!(allocate(&turn, "127.0.0.5", &first, "mallory").1, Some(403));

    // A rotation without overlap: the new secret verifies and the old one stops, within a
    // second.
    let second = "rotated-secret-0123456789abcdef0123456789";
    let r = admin.admin(
        "POST",
        "/admin/v1/secrets",
        Some(&json!({"secret": second, "overlap_seconds": 0})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let took = wait_until("the rotation on the TURN node", Duration::from_secs(1), || {
        allocate(&turn, "127.0.0.1", second, "bob").1.is_none()
    });
    eprintln!("rotation reached the TURN node in {took:?}");
    assert_eq!(allocate(&turn, "127.0.0.1", &first, "bob").1, Some(401));

    // Redis stops: the TURN node serves from its last snapshot (REST credentials are
    // HMACs), says Redis is down, and does not crash.
    redis.stop();
    assert_eq!(allocate(&turn, "127.0.0.1", second, "carol").1, None);
    wait_until(
        "redis down in the TURN node's metrics",
        Duration::from_secs(5),
        || metric(&turn.http_get("/metrics").1, "callbox_cluster_redis_up") == Some(0.0),
    );
    assert_eq!(
        admin.admin("GET", "/admin/v1/nodes", None).status,
        503,
        "the node list needs Redis"
    );

    // Redis comes back empty: the admin node publishes again, the nodes register again,
    // and a new ban reaches the TURN node.
    redis.run();
    wait_until("nodes registered again", Duration::from_secs(10), || {
        let r = admin.admin("GET", "/admin/v1/nodes", None);
        r.status == 200 && r.json().as_array().is_some_and(|a| a.len() == 3)
    });
    let (mut victim, code) = allocate(&turn, "127.0.0.6", second, "eve");
    assert_eq!(code, None);
    let r = admin.admin(
        "POST",
        "/admin/v1/bans",
        Some(&json!({"network": "127.0.0.6/32"})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    wait_until("a ban after Redis came back", Duration::from_secs(3), || {
        victim.refresh(600).class != Class::Success
    });

    // A TURN node that dies leaves the registry and new ICE lists.
    let _ = turn_us.kill9();
    wait_until("the dead node gone", Duration::from_secs(5), || {
        node_ids(&admin) == ["admin-1", "turn-eu-1"]
    });
    wait_until("the dead node out of ICE lists", Duration::from_secs(5), || {
        let urls = ice_turn_urls(&admin);
        !urls.iter().any(|u| u.starts_with("turn:127.0.0.3:")) && urls.contains(&eu_url)
    });
    drop(turn);
}

#[test]
fn signaling_hands_out_only_the_wanted_regions_and_a_lone_node_has_no_cluster() {
    let redis = Redis::start();
    let signal = CallboxProcess::start_with(
        BIN,
        &format!("{}ice_regions = [\"us\"]\n", cluster(&redis, "signal-us", "us")),
        &["--roles", "admin,signal"],
        &[],
    );
    let eu = turn_node(&redis, "127.0.0.2", "turn-eu", "eu");
    let us = turn_node(&redis, "127.0.0.3", "turn-us", "us");
    let us_url = format!("turn:127.0.0.3:{}?transport=udp", us.udp_v4().port());
    wait_until("the us node in ICE lists", Duration::from_secs(5), || {
        ice_turn_urls(&signal).contains(&us_url)
    });
    assert!(
        !ice_turn_urls(&signal)
            .iter()
            .any(|u| u.starts_with("turn:127.0.0.2:")),
        "the eu node is left out"
    );
    drop(eu);

    let lone = CallboxProcess::start_with(BIN, "", &["--roles", "admin"], &[]);
    let r = lone.admin("GET", "/admin/v1/nodes", None);
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "no-cluster");
}

#[test]
fn admin_lists_and_closes_allocations_and_rooms_on_other_nodes() {
    let redis = Redis::start();
    let admin = CallboxProcess::start_with(
        BIN,
        &cluster(&redis, "admin-only", ""),
        &["--roles", "admin"],
        &[],
    );
    let turn = turn_node(&redis, "127.0.0.2", "turn-a", "eu");
    let signal = CallboxProcess::start_with(
        BIN,
        &format!(
            "[signal]\nlisten = \"127.0.0.4:0\"\n{}",
            cluster(&redis, "signal-b", "eu")
        ),
        &["--roles", "signal"],
        &[("CALLBOX_SIGNAL__LISTEN", "\"127.0.0.4:0\"")],
    );
    wait_until("three nodes registered", Duration::from_secs(5), || {
        node_ids(&admin) == ["admin-only", "signal-b", "turn-a"]
    });

    // An allocation on the TURN node, listed and closed through the admin-only node.
    let secret = admin.secret();
    let mut client = wait_for_allocation(&turn, &secret);
    let r = admin.admin("GET", "/admin/v1/allocations", None);
    assert_eq!(r.status, 200, "{}", r.body);
    let list = r.json();
    let a = list
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["node"] == "turn-a")
        .unwrap_or_else(|| panic!("no allocation of turn-a in {list}"));
    let id = a["id"].as_str().unwrap();
    let r = admin.admin("DELETE", &format!("/admin/v1/allocations/{id}?node=turn-a"), None);
    assert_eq!(r.status, 204, "{}", r.body);
    assert_ne!(client.refresh(600).class, Class::Success, "closed on its node");
    let r = admin.admin("DELETE", &format!("/admin/v1/allocations/{id}?node=turn-a"), None);
    assert_eq!(r.status, 404, "already gone: {}", r.body);
    let r = admin.admin("DELETE", "/admin/v1/allocations/1", None);
    assert_eq!(
        r.json()["error"]["code"],
        "role-not-running",
        "no turn role on the admin node itself"
    );

    // A peer on the other signal instance, listed and kicked from admin.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut peer = test_support::ws::WsClient::connect(signal.signal.unwrap(), "room=far", &[])
            .await
            .unwrap();
        let rooms = admin.admin("GET", "/admin/v1/rooms", None).json();
        let room = rooms
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["room"] == "far")
            .unwrap_or_else(|| panic!("room far in {rooms}"));
        assert_eq!(room["node"], "signal-b");
        let pid = peer.peer_id();
        let r = admin.admin(
            "DELETE",
            &format!("/admin/v1/rooms/far/peers/{pid}?node=signal-b"),
            None,
        );
        assert_eq!(r.status, 204, "{}", r.body);
        assert_eq!(peer.closed().await, test_support::ws::Closed::Code(4003));
    });
    let r = admin.admin("DELETE", "/admin/v1/rooms/far?node=nobody", None);
    assert_eq!(r.status, 404, "no such node: {}", r.body);
}

/// A client with an allocation on `node` once the cluster's `secret` reached it.
fn wait_for_allocation(node: &CallboxProcess, secret: &str) -> TurnClient {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (c, code) = allocate(node, "127.0.0.1", secret, "dave");
        if code.is_none() {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "the cluster's secret never reached the node"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
