//! PROTOCOL.md section 1: `/v1/ice-servers` in each auth mode, its parameters, headers and
//! refusals, and credentials that our relay accepts (coturn's client uses them).

use serde_json::{Value, json};
use test_support::{CallboxProcess, http_request};

const BIN: &str = env!("CARGO_BIN_EXE_callbox");

fn server(extra: &str) -> CallboxProcess {
    CallboxProcess::start(
        BIN,
        &format!(
            "[turn]\nlisten = [\"127.0.0.1:0\"]\nhttp_listen = \"127.0.0.1:0\"\nrelay_ip = \"127.0.0.1\"\nrelay_port_min = 20000\nrelay_port_max = 30000\nallow_peers = [\"127.0.0.1/32\"]\n{extra}\n"
        ),
    )
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn open_mode_shape_headers_and_parameters() {
    let s = server("[signal]\nallowed_origins = [\"https://app.example\"]\nhttp_rate_per_address = 1000");
    let a = s.signal.unwrap();
    let r = http_request(
        a,
        "GET",
        "/v1/ice-servers?username=alice&ttl=600",
        &[("Origin", "https://app.example")],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let username = v["username"].as_str().unwrap();
    let (expiry, user) = username.split_once(':').unwrap();
    assert_eq!(user, "alice");
    let expiry: u64 = expiry.parse().unwrap();
    assert!((now() + 595..=now() + 605).contains(&expiry));
    assert_eq!(v["ttl"], 600);
    assert_eq!(v["password"], v["iceServers"][1]["credential"]);
    assert_eq!(v["iceServers"][1]["username"], username);
    let port = s.udp_v4().port();
    assert_eq!(
        v["iceServers"][0]["urls"],
        json!([format!("stun:127.0.0.1:{port}")])
    );
    assert_eq!(
        v["uris"],
        json!([
            format!("turn:127.0.0.1:{port}?transport=udp"),
            format!("turn:127.0.0.1:{port}?transport=tcp")
        ]),
        "the listeners that run, in the order a browser should try them"
    );
    assert!(v["expiresAt"].as_str().unwrap().ends_with('Z'));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert!(
        r.header("access-control-expose-headers")
            .unwrap()
            .contains("Link")
    );
    let links = r.headers_named("link");
    assert_eq!(links.len(), 3, "one per URL: {links:?}");
    assert_eq!(links[0], format!("<stun:127.0.0.1:{port}>; rel=\"ice-server\""));
    for (link, transport) in links[1..].iter().zip(["udp", "tcp"]) {
        assert!(
            link.starts_with(&format!("<turn:127.0.0.1:{port}?transport={transport}>")),
            "{link}"
        );
        assert!(link.contains("rel=\"ice-server\"") && link.contains(&format!("username=\"{username}\"")));
        assert!(link.contains("credential-type=\"password\""));
    }
    // The secret the relay uses verifies it.
    let set = callbox_core::SecretSet::new(vec![callbox_core::Secret::new(s.secret())]).unwrap();
    assert!(set.verify_password(username, v["password"].as_str().unwrap(), now()));

    // POST as a form and as JSON; ttl as a number or a digit string, clamped.
    let r = http_request(
        a,
        "POST",
        "/v1/ice-servers",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"service=turn&username=bob%40x&ttl=99999999",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["ttl"], 604_800, "clamped to auth.max_credential_ttl");
    assert!(r.json()["username"].as_str().unwrap().ends_with(":bob@x"));
    let r = http_request(
        a,
        "POST",
        "/v1/ice-servers",
        &[("Content-Type", "application/json")],
        br#"{"username":"carol","ttl":"0"}"#,
    );
    assert_eq!(
        (r.status, r.json()["ttl"].as_u64()),
        (200, Some(1)),
        "clamped to 1"
    );
    // However many digits: a string or number of digits is clamped, never refused.
    let digits = "1".repeat(30);
    for (path, body) in [
        (format!("/v1/ice-servers?ttl={digits}"), String::new()),
        ("/v1/ice-servers".to_string(), format!(r#"{{"ttl":"{digits}"}}"#)),
        ("/v1/ice-servers".to_string(), format!(r#"{{"ttl":{digits}}}"#)),
    ] {
        let method = if body.is_empty() { "GET" } else { "POST" };
        let r = http_request(
            a,
            method,
            &path,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        );
        assert_eq!(
            (r.status, r.json()["ttl"].as_u64()),
            (200, Some(604_800)),
            "{path} {body}: {}",
            r.body
        );
    }
    let r = http_request(a, "GET", "/v1/ice-servers", &[], b"");
    assert!(r.json()["username"].as_str().unwrap().contains(":anon-"));
    // Refusals.
    for (path, body, code) in [
        ("/v1/ice-servers?username=bad%20name", &b""[..], "bad-username"),
        ("/v1/ice-servers?username=", b"", "bad-username"),
        ("/v1/ice-servers?ttl=-5", b"", "bad-ttl"),
        ("/v1/ice-servers?ttl=1.5", b"", "bad-ttl"),
        ("/v1/ice-servers", br#"{"ttl":true}"#, "bad-ttl"),
        ("/v1/ice-servers", br#"{"ttl":1.5}"#, "bad-ttl"),
        ("/v1/ice-servers", br#"{"ttl":-3}"#, "bad-ttl"),
        ("/v1/ice-servers", br#"{"username":5}"#, "bad-username"),
        ("/v1/ice-servers", br#"[1]"#, "bad-request"),
        ("/v1/ice-servers?service=stun", b"", "bad-request"),
    ] {
        let method = if body.is_empty() { "GET" } else { "POST" };
        let r = http_request(a, method, path, &[("Content-Type", "application/json")], body);
        assert_eq!(r.status, 400, "{path} {}", String::from_utf8_lossy(body));
        assert_eq!(r.json()["error"]["code"], code, "{path}");
    }
    let r = http_request(
        a,
        "GET",
        "/v1/ice-servers",
        &[("Origin", "https://evil.example")],
        b"",
    );
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (403, Some("origin"))
    );
    let r = http_request(
        a,
        "OPTIONS",
        "/v1/ice-servers",
        &[
            ("Origin", "https://app.example"),
            ("Access-Control-Request-Method", "POST"),
        ],
        b"",
    );
    assert_eq!(r.status, 204);
    assert!(r.header("access-control-allow-methods").unwrap().contains("POST"));
}

#[test]
fn open_mode_is_rate_limited_per_address() {
    let s = server("[signal]\nhttp_rate_per_address = 5");
    let a = s.signal.unwrap();
    let statuses: Vec<u16> = (0..8)
        .map(|_| http_request(a, "GET", "/v1/ice-servers", &[], b"").status)
        .collect();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);
    let r = http_request(a, "GET", "/v1/ice-servers", &[], b"");
    assert_eq!(r.json()["error"]["code"], "rate-limited");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=10).contains(&retry));
}

#[test]
fn api_key_mode_in_every_place_a_client_puts_it() {
    let s = server(
        "[signal]\nice_auth = \"api-key\"\napi_keys = [{ name = \"janus\", key = \"k-0123456789abcdef\" }]",
    );
    let a = s.signal.unwrap();
    let r = http_request(a, "GET", "/v1/ice-servers", &[], b"");
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let r = http_request(a, "GET", "/v1/ice-servers?key=wrong-wrong-wrong", &[], b"");
    assert_eq!(r.status, 401);
    for (path, headers) in [
        ("/v1/ice-servers", vec![("X-Api-Key", "k-0123456789abcdef")]),
        (
            "/v1/ice-servers",
            vec![("Authorization", "Bearer k-0123456789abcdef")],
        ),
        ("/v1/ice-servers?key=k-0123456789abcdef", vec![]),
        ("/v1/ice-servers?api=k-0123456789abcdef", vec![]),
    ] {
        let r = http_request(a, "GET", path, &headers, b"");
        assert_eq!(r.status, 200, "{path} {headers:?}");
        assert!(
            r.json()["username"].as_str().unwrap().ends_with(":janus"),
            "the key's name is the user id"
        );
    }
    // Janus' turn_rest_api: POST form with service, username and key.
    let r = http_request(
        a,
        "POST",
        "/v1/ice-servers",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"service=turn&username=janus-session&key=k-0123456789abcdef",
    );
    assert_eq!(r.status, 200);
    let v: Value = r.json();
    assert!(v["username"].as_str().unwrap().ends_with(":janus-session"));
    assert!(
        v["uris"].as_array().unwrap()[0]
            .as_str()
            .unwrap()
            .starts_with("turn:")
    );
}

#[test]
fn credentials_from_the_endpoint_relay_through_our_turn() {
    let s = server("");
    let r = http_request(
        s.signal.unwrap(),
        "GET",
        "/v1/ice-servers?username=e2e&ttl=600",
        &[],
        b"",
    );
    let v = r.json();
    let (user, pass) = (v["username"].as_str().unwrap(), v["password"].as_str().unwrap());
    let (port, _peer) = test_support::turnutils_peer();
    let (code, out) = test_support::uclient_with_password(s.udp_v4(), user, pass, port);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("Total lost packets 0 "), "{out}");
}
