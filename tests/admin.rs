//! The admin role end to end: the real `callbox` binary, its `/admin/v1` API over real
//! sockets, the relay driven by our TURN client and coturn's `turnutils_uclient`, and
//! signaling by WebSocket clients. Loopback only (run inside a loopback-only namespace).

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use callbox_core::Secret;
use callbox_core::credentials::mint;
use serde_json::{Value, json};
use test_support::ws::{Closed, WsClient};
use test_support::{CallboxProcess, TurnClient, coturn_tool, http_request, metric, turnutils_peer};
use turn_proto::stun::Class;

const BIN: &str = env!("CARGO_BIN_EXE_callbox");

fn config(extra: &str) -> String {
    format!(
        "[turn]\nlisten = [\"127.0.0.1:0\"]\nhttp_listen = \"127.0.0.1:0\"\nrelay_ip = \"127.0.0.1\"\nrelay_port_min = 20000\nrelay_port_max = 30000\nallow_peers = [\"127.0.0.1/32\"]\n{extra}\n"
    )
}

fn start(extra: &str) -> CallboxProcess {
    CallboxProcess::start(BIN, &config(extra))
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Polls `f` until it is true or `within` passes.
fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn code(r: &test_support::HttpResponse) -> String {
    r.json()["error"]["code"].as_str().unwrap_or("").to_string()
}

/// An Allocate with REST credentials for `user` minted with `secret`: the error code, or
/// 0 on success.
fn allocate_with(server: SocketAddr, secret: &str, user: &str) -> u16 {
    let (username, password) = mint(&Secret::new(secret), user, now(), 600);
    allocate_as(server, &username, &password)
}

fn allocate_as(server: SocketAddr, username: &str, password: &str) -> u16 {
    let mut c = TurnClient::new(server, username, password, "callbox");
    let r = c.allocate();
    if r.class == Class::Success {
        0
    } else {
        r.code.unwrap_or(1)
    }
}

fn callbox_cli(state_dir: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .arg("admin")
        .arg("--state-dir")
        .arg(state_dir)
        .args(args)
        .env_remove("CALLBOX_ADMIN_TOKEN")
        .output()
        .expect("run callbox admin");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_token_is_required_compared_and_rotatable() {
    let cb = start("");
    let admin = cb.admin.expect("admin listener");
    let token_file = cb.state_dir.path().join("admin-token");
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the token file is private");

    let r = http_request(admin, "GET", "/admin/v1/status", &[], b"");
    assert_eq!(r.status, 401);
    assert_eq!(code(&r), "unauthorized");
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
    for bad in ["Bearer nope", "Basic YTpi", "Bearer ", "bearer"] {
        let r = http_request(admin, "GET", "/admin/v1/status", &[("Authorization", bad)], b"");
        assert_eq!(r.status, 401, "{bad}");
    }
    // The OpenAPI document is behind the token too.
    assert_eq!(
        http_request(admin, "GET", "/admin/v1/openapi.json", &[], b"").status,
        401
    );
    let doc = cb.admin("GET", "/admin/v1/openapi.json", None);
    assert_eq!(doc.status, 200);
    assert!(doc.json()["paths"]["/admin/v1/bans"]["post"].is_object());
    // Health and metrics are open, as on every role.
    assert_eq!(http_request(admin, "GET", "/healthz", &[], b"").status, 200);
    assert_eq!(http_request(admin, "GET", "/readyz", &[], b"").status, 200);
    let m = http_request(admin, "GET", "/metrics", &[], b"").body;
    assert!(
        metric(&m, "callbox_admin_auth_failures_total").unwrap() >= 5.0,
        "{m}"
    );

    let status = cb.admin("GET", "/admin/v1/status", None);
    assert_eq!(status.status, 200);
    let s = status.json();
    assert_eq!(s["roles"], json!(["signal", "turn", "admin"]));
    assert_eq!(s["allocations"], 0);
    assert_eq!(s["active_secrets"], 1);

    // Rotation from the command line: the old token stops working at once.
    let old = cb.admin_token();
    let (ok, out, err) = callbox_cli(cb.state_dir.path(), &["token", "rotate"]);
    assert!(ok, "{out}{err}");
    let new = cb.admin_token();
    assert_ne!(old, new);
    let with_old = http_request(
        admin,
        "GET",
        "/admin/v1/status",
        &[("Authorization", &format!("Bearer {old}"))],
        b"",
    );
    assert_eq!(with_old.status, 401);
    assert_eq!(cb.admin("GET", "/admin/v1/status", None).status, 200);
    let audit = cb.admin("GET", "/admin/v1/audit?limit=1", None).json();
    assert_eq!(audit["items"][0]["action"], "admin_token.rotate");
    assert_eq!(audit["items"][0]["actor"], "cli");
}

#[test]
fn repeated_token_failures_are_rate_limited() {
    let cb = start("[admin]\nauth_failures_per_minute = 3\n");
    let admin = cb.admin.unwrap();
    for _ in 0..3 {
        let r = http_request(
            admin,
            "GET",
            "/admin/v1/status",
            &[("Authorization", "Bearer x")],
            b"",
        );
        assert_eq!(r.status, 401);
    }
    let r = http_request(
        admin,
        "GET",
        "/admin/v1/status",
        &[("Authorization", "Bearer x")],
        b"",
    );
    assert_eq!(r.status, 429);
    assert_eq!(code(&r), "rate-limited");
    let secs: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&secs));
    // Limited by address: the right token waits too, so guessing gains nothing.
    assert_eq!(cb.admin("GET", "/admin/v1/status", None).status, 429);
    assert!(cb.output().contains("admin: request without a valid token"));
}

#[test]
fn bad_input_gets_a_json_error_with_a_code() {
    let cb = start("[admin]\nmax_body_bytes = 2048\n");
    let admin = cb.admin.unwrap();
    let auth = format!("Bearer {}", cb.admin_token());
    let post = |path: &str, ctype: Option<&str>, body: &[u8]| {
        let mut h = vec![("Authorization", auth.as_str())];
        if let Some(c) = ctype {
            h.push(("Content-Type", c));
        }
        http_request(admin, "POST", path, &h, body)
    };
    let json = Some("application/json");
    for (path, ctype, body, status, want) in [
        ("/admin/v1/users", json, &b"{"[..], 400, "bad-json"),
        ("/admin/v1/users", json, b"[1,2]", 422, "invalid-body"),
        ("/admin/v1/users", json, b"{\"name\":\"a\"}", 422, "invalid-body"),
        (
            "/admin/v1/users",
            json,
            b"{\"name\":5,\"password\":\"p\"}",
            422,
            "invalid-body",
        ),
        (
            "/admin/v1/users",
            json,
            b"{\"name\":\"a\",\"password\":\"p\",\"admin\":true}",
            422,
            "invalid-body",
        ),
        (
            "/admin/v1/users",
            None,
            b"{\"name\":\"a\",\"password\":\"p\"}",
            415,
            "unsupported-media-type",
        ),
        (
            "/admin/v1/users",
            json,
            b"{\"name\":\"1:x\",\"password\":\"p\"}",
            400,
            "invalid",
        ),
        (
            "/admin/v1/users",
            json,
            b"{\"name\":\"a\",\"password\":\"\"}",
            400,
            "invalid",
        ),
        (
            "/admin/v1/bans",
            json,
            b"{\"network\":\"10.0.0.1/8\"}",
            400,
            "bad-network",
        ),
        (
            "/admin/v1/bans",
            json,
            b"{\"network\":\"not an address\"}",
            400,
            "bad-network",
        ),
        (
            "/admin/v1/bans",
            json,
            b"{\"network\":\"10.0.0.0/33\"}",
            400,
            "bad-network",
        ),
        (
            "/admin/v1/bans",
            json,
            b"{\"network\":\"10.0.0.0/8\",\"expires_in_seconds\":-1}",
            422,
            "invalid-body",
        ),
        (
            "/admin/v1/bans",
            json,
            b"{\"network\":\"10.0.0.0/8\",\"expires_in_seconds\":0}",
            400,
            "invalid",
        ),
        (
            "/admin/v1/api-keys",
            json,
            b"{\"name\":\"no spaces\"}",
            400,
            "invalid",
        ),
        (
            "/admin/v1/secrets",
            json,
            b"{\"secret\":\"short\"}",
            400,
            "invalid",
        ),
        (
            "/admin/v1/secrets",
            json,
            b"{\"overlap_seconds\":\"soon\"}",
            422,
            "invalid-body",
        ),
    ] {
        let r = post(path, ctype, body);
        assert_eq!(
            r.status,
            status,
            "{path} {}: {}",
            String::from_utf8_lossy(body),
            r.body
        );
        assert_eq!(code(&r), want, "{path} {}", String::from_utf8_lossy(body));
        assert!(!r.json()["error"]["message"].as_str().unwrap().is_empty());
    }
    let huge = format!("{{\"name\":\"a\",\"password\":\"{}\"}}", "x".repeat(4096));
    let r = post("/admin/v1/users", json, huge.as_bytes());
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(code(&r), "too-large");

    for (method, path, status, want) in [
        ("GET", "/admin/v1/history/allocations?limit=0", 400, "bad-query"),
        ("GET", "/admin/v1/history/allocations?limit=abc", 400, "bad-query"),
        ("GET", "/admin/v1/history/sessions?from=10&to=5", 400, "bad-query"),
        ("GET", "/admin/v1/audit?offset=-1", 400, "bad-query"),
        ("GET", "/admin/v1/nothing-here", 404, "not-found"),
        ("DELETE", "/admin/v1/allocations/abc", 400, "bad-path"),
        ("DELETE", "/admin/v1/allocations/12345", 404, "not-found"),
        ("DELETE", "/admin/v1/bans/x", 400, "bad-path"),
        ("DELETE", "/admin/v1/bans/999", 404, "not-found"),
        ("DELETE", "/admin/v1/users/nobody", 404, "not-found"),
        ("DELETE", "/admin/v1/api-keys/nobody", 404, "not-found"),
        ("DELETE", "/admin/v1/rooms/nowhere", 404, "not-found"),
        ("DELETE", "/admin/v1/rooms/nowhere/peers/p-1", 404, "not-found"),
    ] {
        let r = cb.admin(method, path, None);
        assert_eq!(r.status, status, "{method} {path}: {}", r.body);
        assert_eq!(code(&r), want, "{method} {path}");
    }
    // Nothing above changed anything.
    let audit = cb.admin("GET", "/admin/v1/audit", None).json();
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["admin_token.rotate", "secret.rotate"],
        "only the first start's entries"
    );
}

#[test]
fn users_api_keys_bans_config_and_audit() {
    let cb = start(
        "[signal]\nice_auth = \"api-key\"\n[auth]\nstatic_users = [{ name = \"carol\", password = \"from-config-pw\" }]\n",
    );
    let udp = cb.udp_v4();
    let signal = cb.signal.unwrap();

    // A static user from the store works on the relay within a second; removed, it fails.
    assert_eq!(allocate_as(udp, "alice", "alice-pw"), 401);
    let r = cb.admin(
        "POST",
        "/admin/v1/users",
        Some(&json!({"name": "alice", "password": "alice-pw"})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["realm"], "callbox");
    assert!(r.json().get("password").is_none());
    assert!(eventually(Duration::from_secs(1), || allocate_as(
        udp, "alice", "alice-pw"
    ) == 0));
    assert_eq!(
        allocate_as(udp, "carol", "from-config-pw"),
        0,
        "config users still work"
    );
    let dup = cb.admin(
        "POST",
        "/admin/v1/users",
        Some(&json!({"name": "alice", "password": "x"})),
    );
    assert_eq!((dup.status, code(&dup).as_str()), (409, "exists"));
    let users = cb.admin("GET", "/admin/v1/users", None).json();
    assert_eq!(users[0]["name"], "alice");
    let live = cb.admin("GET", "/admin/v1/allocations?user=alice", None).json();
    assert_eq!(live.as_array().unwrap().len(), 1, "{live}");
    assert_eq!(cb.admin("DELETE", "/admin/v1/users/alice", None).status, 204);
    assert!(eventually(Duration::from_secs(1), || allocate_as(
        udp, "alice", "alice-pw"
    ) == 401));
    assert!(
        eventually(Duration::from_secs(1), || cb
            .admin("GET", "/admin/v1/allocations?user=alice", None)
            .json()
            .as_array()
            .unwrap()
            .is_empty()),
        "a removed user's allocations are closed"
    );

    // API keys: issued once, accepted by /v1/ice-servers within a second, revocable.
    let ice = |key: &str| http_request(signal, "GET", &format!("/v1/ice-servers?key={key}"), &[], b"").status;
    let r = cb.admin("POST", "/admin/v1/api-keys", Some(&json!({"name": "janus"})));
    assert_eq!(r.status, 201, "{}", r.body);
    let key = r.json()["key"].as_str().unwrap().to_string();
    assert!(eventually(Duration::from_secs(1), || ice(&key) == 200));
    let listed = cb.admin("GET", "/admin/v1/api-keys", None);
    assert!(!listed.body.contains(&key), "the key is shown only once");
    assert_eq!(listed.json()[0]["name"], "janus");
    let body = http_request(signal, "GET", &format!("/v1/ice-servers?key={key}"), &[], b"").json();
    assert!(body["iceServers"].to_string().contains(":janus"), "{body}");
    assert_eq!(cb.admin("DELETE", "/admin/v1/api-keys/janus", None).status, 204);
    assert!(eventually(Duration::from_secs(1), || ice(&key) == 401));

    // Bans: listed, expiring, removable.
    let r = cb.admin(
        "POST",
        "/admin/v1/bans",
        Some(&json!({"network": "198.51.100.0/24", "reason": "abuse", "expires_in_seconds": 3600})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["id"].as_i64().unwrap();
    assert!(r.json()["expires_at"].as_i64().unwrap() > now() as i64);
    let bans = cb.admin("GET", "/admin/v1/bans", None).json();
    assert_eq!(bans[0]["network"], "198.51.100.0/24");
    assert_eq!(bans[0]["reason"], "abuse");
    assert_eq!(
        cb.admin("DELETE", &format!("/admin/v1/bans/{id}"), None).status,
        204
    );
    assert_eq!(cb.admin("GET", "/admin/v1/bans", None).json(), json!([]));

    // The effective config hides secrets; the audit log has every change, newest first.
    let cfg = cb.admin("GET", "/admin/v1/config", None);
    assert_eq!(cfg.status, 200);
    assert!(!cfg.body.contains("from-config-pw"), "{}", cfg.body);
    assert!(cfg.body.contains("<redacted>"));
    assert_eq!(cfg.json()["signal"]["ice_auth"], "api-key");
    let audit = cb.admin("GET", "/admin/v1/audit", None).json();
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        &actions[..6],
        [
            "ban.remove",
            "ban.add",
            "api_key.remove",
            "api_key.add",
            "user.remove",
            "user.add"
        ]
    );
    let page = cb.admin("GET", "/admin/v1/audit?limit=2&offset=1", None).json();
    assert_eq!(page["items"][0]["action"], "ban.add");
    assert_eq!(page["next_offset"], 3);

    // The same through the CLI, as tables and as JSON.
    let (ok, out, err) = callbox_cli(
        cb.state_dir.path(),
        &[
            "--admin",
            &cb.admin.unwrap().to_string(),
            "bans",
            "add",
            "203.0.113.7",
            "--reason",
            "cli",
        ],
    );
    assert!(ok, "{out}{err}");
    assert!(out.contains("network: 203.0.113.7/32"), "{out}");
    let (ok, out, _) = callbox_cli(
        cb.state_dir.path(),
        &["--admin", &cb.admin.unwrap().to_string(), "bans", "list"],
    );
    assert!(
        ok && out.starts_with("ID ") && out.contains("203.0.113.7/32"),
        "{out}"
    );
    let (ok, out, _) = callbox_cli(
        cb.state_dir.path(),
        &["--admin", &cb.admin.unwrap().to_string(), "--json", "status"],
    );
    assert!(ok);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["active_bans"], 1);
    let (ok, _, err) = callbox_cli(
        cb.state_dir.path(),
        &[
            "--admin",
            &cb.admin.unwrap().to_string(),
            "users",
            "remove",
            "ghost",
        ],
    );
    assert!(!ok && err.contains("404 not-found"), "{err}");
}

#[test]
fn secrets_in_the_config_file_are_not_rotated_here() {
    let cb = start("[auth]\nsecrets = [\"configured-secret-0123456789\"]\n");
    let r = cb.admin("POST", "/admin/v1/secrets", Some(&json!({})));
    assert_eq!((r.status, code(&r).as_str()), (409, "secrets-in-config"));
    let list = cb.admin("GET", "/admin/v1/secrets", None).json();
    assert_eq!(list["managed_by"], "config");
    assert_eq!(allocate_with(cb.udp_v4(), "configured-secret-0123456789", "u"), 0);
}

#[test]
fn rotation_keeps_old_credentials_through_the_overlap_only() {
    let cb = start("");
    let udp = cb.udp_v4();
    let old = cb.secret();
    assert_eq!(allocate_with(udp, &old, "before"), 0);

    let r = cb.admin("POST", "/admin/v1/secrets", Some(&json!({"overlap_seconds": 3})));
    assert_eq!(r.status, 201, "{}", r.body);
    let rotated_at = Instant::now();
    let new = r.json()["secret"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    // The new secret works at once (the change is applied within a second at most).
    assert!(eventually(Duration::from_secs(1), || allocate_with(
        udp, &new, "new"
    ) == 0));
    // /v1/ice-servers signs with the new one.
    let ice = http_request(cb.signal.unwrap(), "GET", "/v1/ice-servers?username=x", &[], b"").json();
    let turn = ice["iceServers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["credential"].is_string())
        .unwrap()
        .clone();
    let username = turn["username"].as_str().unwrap();
    assert_eq!(
        turn["credential"].as_str().unwrap(),
        callbox_core::credentials::rest_password(&Secret::new(new.as_str()), username)
    );
    // The old one keeps working through the overlap...
    assert_eq!(allocate_with(udp, &old, "during"), 0);
    let secrets = cb.admin("GET", "/admin/v1/secrets", None).json();
    assert_eq!(secrets["secrets"][0]["signing"], true);
    assert_eq!(secrets["secrets"][1]["active"], true);
    assert!(!cb.admin("GET", "/admin/v1/secrets", None).body.contains(&old));
    // ...and not after it.
    std::thread::sleep(Duration::from_secs(3).saturating_sub(rotated_at.elapsed()));
    assert!(eventually(Duration::from_secs(2), || allocate_with(
        udp, &old, "after"
    ) == 401));
    assert_eq!(allocate_with(udp, &new, "still"), 0);
    let secrets = cb.admin("GET", "/admin/v1/secrets", None).json();
    assert_eq!(secrets["secrets"][1]["active"], false);
}

#[test]
fn allocations_are_listed_filtered_closed_and_kept_in_history() {
    let cb = start("");
    let udp = cb.udp_v4();
    let secret = cb.secret();
    let mut clients = Vec::new();
    for user in ["ann", "bob"] {
        let (u, p) = mint(&Secret::new(secret.as_str()), user, now(), 600);
        let mut c = TurnClient::new(udp, &u, &p, "callbox");
        assert_eq!(c.allocate().class, Class::Success);
        clients.push(c);
    }
    let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
    assert_eq!(clients[0].create_permission(&[peer]).class, Class::Success);
    let all = cb.admin("GET", "/admin/v1/allocations", None).json();
    assert_eq!(all.as_array().unwrap().len(), 2, "{all}");
    let ann = cb.admin("GET", "/admin/v1/allocations?user=ann", None).json();
    assert_eq!(ann.as_array().unwrap().len(), 1);
    let a = &ann[0];
    assert_eq!(a["user"], "ann");
    assert_eq!(a["permissions"], json!(["127.0.0.1"]));
    assert!(a["relay"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(a["expires_in_seconds"].as_u64().unwrap() > 0);
    let id = a["id"].as_str().unwrap().to_string();
    let ann_username = a["username"].as_str().unwrap().to_string();
    assert_eq!(cb.admin("GET", "/admin/v1/status", None).json()["allocations"], 2);

    assert_eq!(
        cb.admin("DELETE", &format!("/admin/v1/allocations/{id}"), None)
            .status,
        204
    );
    assert_eq!(
        cb.admin("DELETE", &format!("/admin/v1/allocations/{id}"), None)
            .status,
        404
    );
    assert_eq!(
        clients[0].refresh(600).code,
        Some(437),
        "the client learns it is gone"
    );
    assert_eq!(
        cb.admin("GET", "/admin/v1/allocations", None)
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // History is written in batches, off the relay's path.
    assert!(eventually(Duration::from_secs(3), || {
        let h = cb.admin("GET", "/admin/v1/history/allocations?user=", None);
        h.status == 200
            && h.json()["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["alloc_id"] == id.as_str() && r["close_reason"] == "kicked")
    }));
    let page = cb
        .admin("GET", "/admin/v1/history/allocations?limit=1", None)
        .json();
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(page["next_offset"], 1);
    let only = cb
        .admin(
            "GET",
            &format!("/admin/v1/history/allocations?user={ann_username}"),
            None,
        )
        .json();
    assert_eq!(only["items"].as_array().unwrap().len(), 1, "{only}");
    assert_eq!(only["items"][0]["username"], ann_username.as_str());
    let from = now() as i64 + 100;
    let none = cb
        .admin("GET", &format!("/admin/v1/history/allocations?from={from}"), None)
        .json();
    assert_eq!(none["items"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_are_listed_kicked_and_closed() {
    let cb = start("");
    let signal = cb.signal.unwrap();
    let mut a = WsClient::connect(signal, "room=r1", &[]).await.unwrap();
    let mut b = WsClient::connect(signal, "room=r1", &[]).await.unwrap();
    assert_eq!(a.recv().await.unwrap()["type"], "peer-joined");
    assert!(a.send(json!({"type": "ping"})).await);
    assert_eq!(a.recv().await.unwrap()["type"], "pong");

    let rooms = cb.admin("GET", "/admin/v1/rooms", None).json();
    assert_eq!(rooms[0]["room"], "r1");
    assert_eq!(rooms[0]["peers"].as_array().unwrap().len(), 2);
    assert_eq!(rooms[0]["peers"][0]["address"], "127.0.0.1");
    assert_eq!(rooms[0]["peers"][0]["messages_in"], 1);
    let room = cb.admin("GET", "/admin/v1/rooms/r1", None);
    assert_eq!(room.status, 200);
    let status = cb.admin("GET", "/admin/v1/status", None).json();
    assert_eq!(
        (status["rooms"].as_u64(), status["peers"].as_u64()),
        (Some(1), Some(2))
    );

    // Kick: 4003 for the peer, `peer-left` `kicked` for the others, and no resume.
    let a_id = a.peer_id();
    let r = cb.admin("DELETE", &format!("/admin/v1/rooms/r1/peers/{a_id}"), None);
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(a.closed().await, Closed::Code(4003));
    let left = b.recv().await.unwrap();
    assert_eq!(
        (left["type"].as_str(), left["reason"].as_str()),
        (Some("peer-left"), Some("kicked"))
    );
    let resume = WsClient::connect(
        signal,
        &format!("room=r1&resume={}&last_seq=0", a.resume_token()),
        &[],
    )
    .await
    .unwrap_err();
    assert_eq!((resume.status, resume.code()), (410, "resume-expired"));

    // Close the room: 4009 for everyone in it.
    let r = cb.admin("DELETE", "/admin/v1/rooms/r1", None);
    assert_eq!((r.status, r.json()["closed"].as_u64()), (200, Some(1)));
    assert_eq!(b.closed().await, Closed::Code(4009));
    assert_eq!(cb.admin("GET", "/admin/v1/rooms/r1", None).status, 404);
    assert_eq!(cb.admin("GET", "/admin/v1/rooms", None).json(), json!([]));

    // Both sessions are in history with why they ended.
    assert!(eventually(Duration::from_secs(3), || {
        let h = cb.admin("GET", "/admin/v1/history/sessions?room=r1", None).json();
        let items = h["items"].as_array().unwrap().clone();
        items.len() == 2 && items.iter().all(|s| s["close_reason"] == "kicked")
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_ends_a_live_uclient_relay_and_a_live_websocket() {
    let cb = start("");
    let udp = cb.udp_v4();
    let signal = cb.signal.unwrap();
    let mut ws = WsClient::connect(signal, "room=banned", &[]).await.unwrap();
    let (peer_port, _peer) = turnutils_peer();

    // A long uclient run (2 clients, 400 messages 20 ms apart: about 8 s).
    let mut cmd = Command::new(coturn_tool("turnutils_uclient"));
    cmd.args(["-c", "-p", &udp.port().to_string(), "-W", &cb.secret()])
        .args(["-e", "127.0.0.1", "-r", &peer_port.to_string()])
        .args(["-m", "2", "-n", "400", "-l", "100", "-z", "20"])
        .arg("127.0.0.1");
    let uclient =
        std::thread::spawn(move || test_support::run_with_timeout(&mut cmd, Duration::from_secs(60)));
    let relaying = |cb: &CallboxProcess| -> usize {
        cb.admin("GET", "/admin/v1/allocations", None)
            .json()
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["packets_to_peer"].as_u64().unwrap_or(0) > 0)
            .count()
    };
    assert!(
        eventually(Duration::from_secs(10), || relaying(&cb) >= 2),
        "uclient is relaying"
    );

    let r = cb.admin(
        "POST",
        "/admin/v1/bans",
        Some(&json!({"network": "127.0.0.1", "reason": "test"})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let banned_at = Instant::now();
    // The live WebSocket is closed with 4003...
    assert_eq!(ws.closed().await, Closed::Code(4003));
    // ...the live allocations are gone...
    assert!(eventually(Duration::from_secs(1), || cb
        .admin("GET", "/admin/v1/allocations", None)
        .json()
        .as_array()
        .unwrap()
        .is_empty()));
    assert!(banned_at.elapsed() < Duration::from_secs(2));
    // ...and nothing new gets in: 403 to Allocate, 403 `banned` before the upgrade.
    assert_eq!(allocate_with(udp, &cb.secret(), "again"), 403);
    let refused = WsClient::connect(signal, "room=banned", &[]).await.unwrap_err();
    assert_eq!((refused.status, refused.code()), (403, "banned"));
    let (_, out) = uclient.join().unwrap();
    let lost = test_support::uclient_lost_packets(&out).unwrap_or(u64::MAX);
    assert!(lost > 0, "uclient's relay was cut:\n{out}");
    let (_, m) = cb.http_get("/metrics");
    assert!(metric(&m, "callbox_turn_banned_total").unwrap() >= 1.0, "{m}");
    assert!(eventually(Duration::from_secs(3), || {
        cb.admin("GET", "/admin/v1/history/allocations", None).json()["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["close_reason"] == "kicked")
            .count()
            >= 2
    }));

    // Lifting the ban lets the address back in.
    let id = r.json()["id"].as_i64().unwrap();
    assert_eq!(
        cb.admin("DELETE", &format!("/admin/v1/bans/{id}"), None).status,
        204
    );
    assert!(eventually(Duration::from_secs(1), || allocate_with(
        udp,
        &cb.secret(),
        "back"
    ) == 0));
    assert!(WsClient::connect(signal, "room=banned", &[]).await.is_ok());
}

#[test]
fn allocations_closed_by_the_shutdown_are_in_history() {
    let cb = start("");
    let (u, p) = mint(&Secret::new(cb.secret().as_str()), "dora", now(), 600);
    let mut c = TurnClient::new(cb.udp_v4(), &u, &p, "callbox");
    assert_eq!(c.allocate().class, Class::Success);
    let id = cb.admin("GET", "/admin/v1/allocations", None).json()[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, state) = cb.terminate_keeping_state();
    assert_eq!(code, Some(0), "a clean exit on SIGTERM");
    // The writer finished before the process exited: the row is there on the next start.
    let cb = CallboxProcess::start_in(BIN, &config(""), &[], &[], state);
    let h = cb.admin("GET", "/admin/v1/history/allocations", None).json();
    let row = h["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["alloc_id"] == id.as_str())
        .unwrap_or_else(|| panic!("allocation {id} in history: {h}"));
    assert_eq!(row["close_reason"], "shutdown", "{row}");
    assert_eq!(row["username"], u.as_str());
}

#[test]
fn acknowledged_changes_survive_kill_9() {
    let cb = start("");
    let admin = cb.admin.unwrap();
    let auth = format!("Bearer {}", cb.admin_token());
    let stop_at = Instant::now() + Duration::from_millis(1500);
    // Two writers race each other and the kill.
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let auth = auth.clone();
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                for i in 0.. {
                    if Instant::now() > stop_at + Duration::from_secs(5) {
                        break;
                    }
                    let name = format!("w{w}-user{i}");
                    let body = json!({"name": name, "password": "pw"}).to_string();
                    let r = callbox_admin::client::request(
                        admin,
                        "POST",
                        "/admin/v1/users",
                        &[
                            ("Authorization", auth.as_str()),
                            ("Content-Type", "application/json"),
                        ],
                        body.as_bytes(),
                        Duration::from_secs(5),
                    );
                    match r {
                        Ok(r) if r.status == 201 => acked.push(name),
                        Ok(r) => panic!("unexpected {}", r.status),
                        Err(_) => break, // the process is gone
                    }
                }
                acked
            })
        })
        .collect();
    std::thread::sleep(stop_at.saturating_duration_since(Instant::now()));
    let state = cb.kill9();
    let acked: Vec<String> = writers.into_iter().flat_map(|w| w.join().unwrap()).collect();
    assert!(
        acked.len() > 10,
        "the writers got going ({} acknowledged)",
        acked.len()
    );

    let db = state.path().join("callbox.db");
    {
        let store = callbox_store::Store::open(&db).unwrap();
        assert!(
            store.integrity_ok().unwrap(),
            "PRAGMA integrity_check after kill -9"
        );
    }
    let cb = CallboxProcess::start_in(BIN, &config(""), &[], &[], state);
    let users = cb.admin("GET", "/admin/v1/users", None).json();
    let names: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    for a in &acked {
        assert!(names.contains(&a.as_str()), "{a} was acknowledged but is missing");
    }
    let store = callbox_store::Store::open(&cb.state_dir.path().join("callbox.db")).unwrap();
    let added = store
        .audit_page(u32::MAX, 0)
        .unwrap()
        .iter()
        .filter(|e| e.action == "user.add")
        .count();
    assert_eq!(added, names.len(), "every stored change has its audit entry");
}

/// Holds `db`'s write lock until the returned sender is used (or 30 s pass).
fn hold_lock(db: std::path::PathBuf) -> (std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let conn = rusqlite_lock(&db);
        locked_tx.send(()).unwrap();
        let _ = release_rx.recv_timeout(Duration::from_secs(30));
        drop(conn);
    });
    locked_rx.recv().unwrap();
    (release_tx, holder)
}

/// Allocations in the history whose username contains `user`.
fn allocations_in_history(cb: &CallboxProcess, user: &str) -> usize {
    let r = cb.admin("GET", "/admin/v1/history/allocations?limit=1000", None);
    r.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["username"].as_str().unwrap_or("").contains(user))
        .count()
}

#[test]
fn a_locked_database_delays_history_and_fails_admin_writes_but_not_relaying() {
    let cb = start("");
    let udp = cb.udp_v4();
    // Another process-like holder takes the write lock and keeps it.
    let (release, holder) = hold_lock(cb.state_dir.path().join("callbox.db"));

    // The relay keeps allocating (the history rows wait for the store).
    let started = Instant::now();
    for i in 0..5 {
        assert_eq!(allocate_with(udp, &cb.secret(), &format!("locked{i}")), 0);
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the relay never waits on the store"
    );
    // An admin write waits out the busy timeout, then says so; nothing half-done.
    let r = cb.admin(
        "POST",
        "/admin/v1/users",
        Some(&json!({"name": "late", "password": "pw"})),
    );
    assert_eq!(
        (r.status, code(&r).as_str()),
        (503, "store-unavailable"),
        "{}",
        r.body
    );
    assert!(r.header("retry-after").is_some());
    let admin = cb.admin.unwrap();
    // The history writer's retries fail meanwhile (the failure is counted, then logged).
    assert!(eventually(Duration::from_secs(15), || {
        let m = http_request(admin, "GET", "/metrics", &[], b"").body;
        metric(&m, "callbox_store_errors_total").unwrap_or(0.0) >= 2.0
            && cb.output().contains("history not written; retrying")
    }));
    release.send(()).unwrap();
    holder.join().unwrap();
    // Once the lock is gone, writes work again and the waiting history lands: none lost.
    let r = cb.admin(
        "POST",
        "/admin/v1/users",
        Some(&json!({"name": "late", "password": "pw"})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(eventually(Duration::from_secs(5), || allocations_in_history(
        &cb, "locked"
    ) == 5));
    let m = http_request(admin, "GET", "/metrics", &[], b"").body;
    assert_eq!(metric(&m, "callbox_store_history_lost_total"), Some(0.0));
}

#[test]
fn history_past_the_backlog_cap_loses_its_oldest_rows_counted() {
    // Five allocations leave five rows; three are kept while the store is locked.
    let cb = CallboxProcess::start(
        BIN,
        &format!("[general]\nhistory_backlog_rows = 3\n{}", config("")),
    );
    let udp = cb.udp_v4();
    let (release, holder) = hold_lock(cb.state_dir.path().join("callbox.db"));
    for i in 0..5 {
        assert_eq!(allocate_with(udp, &cb.secret(), &format!("capped{i}")), 0);
    }
    let admin = cb.admin.unwrap();
    let lost = || {
        let m = http_request(admin, "GET", "/metrics", &[], b"").body;
        metric(&m, "callbox_store_history_lost_total").unwrap_or(0.0)
    };
    assert!(eventually(Duration::from_secs(15), || lost() >= 2.0));
    release.send(()).unwrap();
    holder.join().unwrap();
    // The three newest land; the two oldest were dropped and counted.
    assert!(eventually(Duration::from_secs(5), || allocations_in_history(
        &cb, "capped"
    ) == 3));
    assert_eq!(lost(), 2.0);
    assert_eq!(
        allocations_in_history(&cb, "capped0") + allocations_in_history(&cb, "capped1"),
        0
    );
}

/// A connection holding SQLite's write lock on `db` (an exclusive transaction).
fn rusqlite_lock(db: &std::path::Path) -> callbox_store::RawLock {
    callbox_store::RawLock::exclusive(db).expect("lock the database")
}

#[test]
fn the_binary_migrates_a_database_from_the_first_schema() {
    let state = tempfile::tempdir().unwrap();
    let db = state.path().join("callbox.db");
    callbox_store::Store::create_at_version(&db, 1).unwrap();
    callbox_store::Store::execute_raw(
        &db,
        "INSERT INTO turn_secrets (secret, created_at) VALUES ('secret-from-schema-one-0123', 1);
         INSERT INTO bans (network, reason, created_at) VALUES ('192.0.2.0/24', 'old', 1);",
    )
    .unwrap();
    let cb = CallboxProcess::start_in(BIN, &config(""), &[], &[], state);
    assert_eq!(allocate_with(cb.udp_v4(), "secret-from-schema-one-0123", "u"), 0);
    let bans = cb.admin("GET", "/admin/v1/bans", None).json();
    assert_eq!(bans[0]["reason"], "old");
    let store = callbox_store::Store::open(&cb.state_dir.path().join("callbox.db")).unwrap();
    assert_eq!(
        store.schema_version().unwrap(),
        callbox_store::MIGRATIONS.len() as i64
    );
}

#[test]
fn backup_while_serving() {
    let cb = start("");
    for i in 0..20 {
        let r = cb.admin(
            "POST",
            "/admin/v1/users",
            Some(&json!({"name": format!("b{i}"), "password": "pw"})),
        );
        assert_eq!(r.status, 201);
    }
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("backup.db");
    let (ok, stdout, err) = callbox_cli(cb.state_dir.path(), &["backup", file.to_str().unwrap()]);
    assert!(ok, "{stdout}{err}");
    assert!(stdout.contains("integrity ok"));
    let copy = callbox_store::Store::open(&file).unwrap();
    assert_eq!(copy.user_list().unwrap().len(), 20);
    let (ok, _, err) = callbox_cli(cb.state_dir.path(), &["backup", file.to_str().unwrap()]);
    assert!(!ok && err.contains("exists"), "{err}");
    // The server kept serving throughout.
    assert_eq!(cb.admin("GET", "/admin/v1/status", None).status, 200);
}

#[test]
fn admin_alone_says_which_roles_do_not_run_here() {
    let cb = CallboxProcess::start_with(BIN, &config(""), &["--roles", "admin"], &[]);
    assert!(cb.udp.is_empty() && cb.signal.is_none());
    let status = cb.admin("GET", "/admin/v1/status", None).json();
    assert_eq!(status["roles"], json!(["admin"]));
    assert_eq!(status["allocations"], Value::Null);
    assert_eq!(status["rooms"], Value::Null);
    for (method, path) in [
        ("GET", "/admin/v1/allocations"),
        ("DELETE", "/admin/v1/allocations/1"),
        ("GET", "/admin/v1/rooms"),
        ("GET", "/admin/v1/rooms/r"),
        ("DELETE", "/admin/v1/rooms/r"),
        ("DELETE", "/admin/v1/rooms/r/peers/p"),
    ] {
        let r = cb.admin(method, path, None);
        assert_eq!(
            (r.status, code(&r).as_str()),
            (404, "role-not-running"),
            "{method} {path}"
        );
    }
    // The store is still managed here: a relay elsewhere on this database picks it up.
    let r = cb.admin(
        "POST",
        "/admin/v1/bans",
        Some(&json!({"network": "192.0.2.0/24"})),
    );
    assert_eq!(r.status, 201);
}
