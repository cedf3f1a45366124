//! Loading and validation, errors with their keys and origins.

use super::*;

fn file(text: &str) -> ConfigFile {
    ConfigFile {
        path: "test.toml".into(),
        text: text.into(),
    }
}

#[test]
fn empty_is_default() {
    assert_eq!(Config::load(Some(&file("")), &[]).unwrap(), Config::default());
    assert_eq!(Config::load(None, &[]).unwrap(), Config::default());
}

#[test]
fn unknown_key_names_key_line_and_column() {
    let errs = Config::load(Some(&file("[turn]\nrealm = \"x\"\nuser_qota = 3\n")), &[]).unwrap_err();
    assert_eq!(errs.len(), 1);
    let e = &errs[0];
    assert_eq!(
        e.origin,
        Origin::File {
            path: "test.toml".into(),
            line: 3,
            column: 1
        }
    );
    assert_eq!(e.key.as_deref(), Some("turn.user_qota"));
    assert!(e.message.contains("unknown field"), "{e}");
}

#[test]
fn a_listener_inside_the_relay_range_names_both_keys() {
    let text = "[turn]\nlisten = [\"0.0.0.0:3478\", \"127.0.0.1:50000\"]\nhttp_listen = \"127.0.0.1:0\"\n[signal]\nlisten = \"0.0.0.0:49152\"\n";
    let errs = Config::load(Some(&file(text)), &[]).unwrap_err();
    let keys: Vec<&str> = errs.iter().filter_map(|e| e.key.as_deref()).collect();
    assert_eq!(keys, ["turn.listen.1", "signal.listen"], "{errs:?}");
    for e in &errs {
        assert!(
            e.message
                .contains("turn.relay_port_min..turn.relay_port_max (49152-65535)"),
            "{e}"
        );
    }
    // Moving the range clears it; port 0 (any free port) is never refused.
    let ok = "[turn]\nrelay_port_min = 20000\nrelay_port_max = 30000\nlisten = [\"127.0.0.1:50000\"]\nhttp_listen = \"127.0.0.1:0\"\n";
    assert!(Config::load(Some(&file(ok)), &[]).is_ok());
}

#[test]
fn wrong_type_names_key() {
    let errs = Config::load(Some(&file("[turn]\n\nuser_quota = \"many\"\n")), &[]).unwrap_err();
    let e = &errs[0];
    assert_eq!(e.key.as_deref(), Some("turn.user_quota"));
    assert!(
        matches!(
            e.origin,
            Origin::File {
                line: 3,
                column: 14,
                ..
            }
        ),
        "{e}"
    );
    let errs = Config::load(Some(&file("[turn]\nallow_peers = [\"10.0.0.1/8\"]\n")), &[]).unwrap_err();
    assert_eq!(errs[0].key.as_deref(), Some("turn.allow_peers"), "{}", errs[0]);
    assert!(
        errs[0].message.contains("did you mean `10.0.0.0/8`"),
        "{}",
        errs[0]
    );
}

#[test]
fn syntax_error_has_line() {
    let errs = Config::load(Some(&file("[turn]\nrealm = \n")), &[]).unwrap_err();
    assert!(
        matches!(errs[0].origin, Origin::File { line: 2, .. }),
        "{}",
        errs[0]
    );
}

#[test]
fn semantic_errors_point_at_the_key() {
    let errs = Config::load(
        Some(&file("[turn]\nrelay_port_min = 60000\nrelay_port_max = 50000\n")),
        &[],
    )
    .unwrap_err();
    assert_eq!(errs[0].key.as_deref(), Some("turn.relay_port_min"));
    assert!(
        matches!(
            errs[0].origin,
            Origin::File {
                line: 2,
                column: 1,
                ..
            }
        ),
        "{}",
        errs[0]
    );
}

#[test]
fn overrides_win_in_order_and_are_named_in_errors() {
    let env = Override::from_env(vec![
        ("CALLBOX_TURN__USER_QUOTA".to_string(), "4".to_string()),
        ("CALLBOX_TURN__REALM".to_string(), "example.com".to_string()),
        ("CALLBOX_CONFIG".to_string(), "ignored".to_string()),
        ("HOME".to_string(), "/root".to_string()),
    ]);
    assert_eq!(env.len(), 2);
    let flag = Override::from_flag("turn.user_quota=7").unwrap();
    let mut all = env.clone();
    all.push(flag);
    let c = Config::load(Some(&file("[turn]\nuser_quota = 2\n")), &all).unwrap();
    assert_eq!(c.turn.user_quota, 7);
    assert_eq!(c.turn.realm, "example.com");

    let bad = Override::from_env(vec![("CALLBOX_TURN__USER_QUOTA".into(), "lots".into())]);
    let errs = Config::load(None, &bad).unwrap_err();
    assert_eq!(errs[0].origin, Origin::Env("CALLBOX_TURN__USER_QUOTA".into()));
    assert_eq!(errs[0].key.as_deref(), Some("turn.user_quota"));

    let errs = Config::load(None, &[Override::from_flag("turn.nope=1").unwrap()]).unwrap_err();
    assert_eq!(errs[0].origin, Origin::Flag("turn.nope=1".into()));
    assert!(Override::from_flag("novalue").is_err());
}

#[test]
fn redacted_output_hides_secrets() {
    let c = Config::load(
        Some(&file(
            "[auth]\nsecrets = [\"topsecret\"]\nstatic_users = [{name = \"bob\", password = \"pw123\"}]\n",
        )),
        &[],
    )
    .unwrap();
    let out = c.to_redacted_toml();
    assert!(!out.contains("topsecret") && !out.contains("pw123"), "{out}");
    assert!(out.contains("<redacted>"));
    // The printed form of a config without secrets parses back to the same config.
    let plain = Config::default().to_redacted_toml();
    assert_eq!(Config::load(Some(&file(&plain)), &[]).unwrap(), Config::default());
}

#[test]
fn external_ip_forms() {
    let e: ExternalIp = "203.0.113.4/10.0.0.5".parse().unwrap();
    assert_eq!(e.public.to_string(), "203.0.113.4");
    assert_eq!(e.private.unwrap().to_string(), "10.0.0.5");
    assert!("203.0.113.4".parse::<ExternalIp>().unwrap().private.is_none());
    assert!("203.0.113.4/::1".parse::<ExternalIp>().is_err());
    assert!("nope".parse::<ExternalIp>().is_err());
    assert_eq!("auto".parse::<ExternalIpSetting>(), Ok(ExternalIpSetting::Auto));
    let err = Config::load(Some(&file("[turn]\nexternal_ip = \"autom\"\n")), &[]).unwrap_err();
    assert_eq!(err[0].key.as_deref(), Some("turn.external_ip"), "{}", err[0]);
    assert!(err[0].to_string().contains("\"auto\""), "{}", err[0]);
}

#[test]
fn static_user_error_names_index() {
    let errs = Config::load(
        Some(&file(
            "[auth]\n[[auth.static_users]]\nname = \"123:x\"\npassword = \"p\"\n",
        )),
        &[],
    )
    .unwrap_err();
    assert_eq!(errs[0].key.as_deref(), Some("auth.static_users.0.name"));
    assert!(
        matches!(errs[0].origin, Origin::File { line: 3, .. }),
        "{}",
        errs[0]
    );
}

#[test]
fn api_keys_are_no_signal_auth_mode() {
    let errs = Config::load(Some(&file("[signal]\nauth = \"api-key\"\n")), &[]).unwrap_err();
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].key.as_deref(), Some("signal.auth"), "{errs:?}");
    assert!(
        errs[0].message.contains("`open`") && errs[0].message.contains("`jwt`"),
        "{}",
        errs[0]
    );
    assert!(
        matches!(errs[0].origin, Origin::File { line: 2, .. }),
        "{}",
        errs[0]
    );
    let ok = Config::load(Some(&file("[signal]\nice_auth = \"api-key\"\n")), &[]).unwrap();
    assert_eq!(ok.signal.ice_auth, IceAuth::ApiKey);
}

#[test]
fn tls_listeners_need_a_certificate_and_default_with_one() {
    let errs = Config::load(
        Some(&file(
            "[tls]\nlisten = [\"0.0.0.0:443\"]\n[signal]\ntls_listen = \"0.0.0.0:8443\"\n",
        )),
        &[],
    )
    .unwrap_err();
    let keys: Vec<_> = errs.iter().filter_map(|e| e.key.clone()).collect();
    assert!(keys.contains(&"tls.listen".to_string()), "{keys:?}");
    assert!(keys.contains(&"signal.tls_listen".to_string()), "{keys:?}");
    assert!(
        matches!(errs[0].origin, Origin::File { line: 2, .. }),
        "{}",
        errs[0]
    );
    let errs = Config::load(Some(&file("[tls]\ncert_file = \"c.pem\"\n")), &[]).unwrap_err();
    assert_eq!(errs[0].key.as_deref(), Some("tls.key_file"));

    let none = Config::default();
    assert!(none.tls.listen_addrs().is_empty() && none.turn.tls_listen_addrs(&none.tls).is_empty());
    let c = Config::load(
        Some(&file("[tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\n")),
        &[],
    )
    .unwrap();
    let ports = |v: Vec<SocketAddr>| v.iter().map(|a| a.port()).collect::<Vec<_>>();
    assert_eq!(ports(c.tls.listen_addrs()), [443, 443]);
    assert_eq!(ports(c.turn.tls_listen_addrs(&c.tls)), [5349, 5349]);
    let off = Config::load(
        Some(&file(
            "[tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\nlisten = []\n[turn]\ntls_listen = []\n",
        )),
        &[],
    )
    .unwrap();
    assert!(off.tls.listen_addrs().is_empty() && off.turn.tls_listen_addrs(&off.tls).is_empty());
}

#[test]
fn acme_keys_are_checked_with_their_names() {
    let errs = |text: &str| -> Vec<String> {
        Config::load(Some(&file(text)), &[])
            .err()
            .unwrap_or_default()
            .iter()
            .map(|e| format!("{}: {}", e.key.as_deref().unwrap_or("-"), e.message))
            .collect()
    };
    let ok = "[tls]\nacme_domains = [\"callbox.example.com\"]\nacme_email = \"ops@example.com\"\n";
    assert_eq!(errs(ok), Vec::<String>::new());
    let c = Config::load(Some(&file(ok)), &[]).unwrap();
    assert!(c.tls.enabled() && c.tls.acme());
    assert_eq!(c.tls.http_listen_addrs().len(), 2, "port 80 by default with ACME");
    assert_eq!(c.tls.listen_addrs().len(), 2, "port 443 by default with ACME");

    let bad = "[tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\n\
               acme_domains = [\"ok.example.com\", \"*.example.com\", \"192.0.2.1\"]\n\
               acme_email = \"not-an-address\"\nacme_directory = \"ftp://ca\"\n\
               acme_renew_remaining_percent = 95\nacme_retry_min_ms = 10\nacme_retry_max_ms = 5\n\
               acme_order_timeout_ms = 0\n";
    let got = errs(bad);
    for key in [
        "tls.acme_domains:",
        "tls.acme_domains.1:",
        "tls.acme_domains.2:",
        "tls.acme_email:",
        "tls.acme_directory:",
        "tls.acme_renew_remaining_percent:",
        "tls.acme_retry_max_ms:",
        "tls.acme_order_timeout_ms:",
    ] {
        assert!(got.iter().any(|e| e.starts_with(key)), "{key} in {got:?}");
    }

    let nowhere = "[tls]\nacme_domains = [\"a.example.com\"]\nlisten = []\nhttp_listen = []\n";
    assert!(
        errs(nowhere).iter().any(|e| e.starts_with("tls.acme_challenge:")),
        "{:?}",
        errs(nowhere)
    );
    let alpn_without_port =
        "[tls]\nacme_domains = [\"a.example.com\"]\nlisten = []\nacme_challenge = \"tls-alpn-01\"\n";
    assert!(errs(alpn_without_port)[0].contains("tls.listen"));
    let unknown = "[tls]\nacme_domains = [\"a.example.com\"]\nacme_challenge = \"dns-01\"\n";
    assert!(
        errs(unknown)[0].starts_with("tls.acme_challenge:"),
        "{:?}",
        errs(unknown)
    );
    let http_without_tls = "[tls]\nhttp_listen = [\"127.0.0.1:8080\"]\n";
    assert!(errs(http_without_tls)[0].starts_with("tls.http_listen:"));
}

#[test]
fn cluster_keys_are_checked_with_their_names() {
    let ok =
        "[cluster]\nredis_url = \"redis://:pw@10.0.0.5:6379\"\nnode_id = \"turn-eu-1\"\nregion = \"eu\"\n";
    let c = Config::load(Some(&file(ok)), &[]).unwrap();
    assert_eq!(c.cluster.region, "eu");
    assert!(
        !c.to_redacted_toml().contains(":pw@"),
        "the URL (and its password) is redacted"
    );
    let bad = "[cluster]\nredis_url = \"http://x\"\nnode_id = \"a b\"\nregion = \"eu/west\"\n\
               key_prefix = \"\"\nheartbeat_ms = 1000\nnode_ttl_ms = 1500\ntimeout_ms = 0\n";
    let errs = Config::load(Some(&file(bad)), &[]).unwrap_err();
    let keys: Vec<&str> = errs.iter().filter_map(|e| e.key.as_deref()).collect();
    for key in [
        "cluster.redis_url",
        "cluster.node_id",
        "cluster.region",
        "cluster.key_prefix",
        "cluster.timeout_ms",
        "cluster.node_ttl_ms",
    ] {
        assert!(keys.contains(&key), "{key} in {keys:?}");
    }
}

#[test]
fn shared_rooms_keys_are_checked_with_their_names() {
    let ok = "[signal]\nredis_url = \"redis://:pw@10.0.0.5:6379\"\nredis_lease_ms = 3000\n";
    let c = Config::load(Some(&file(ok)), &[]).unwrap();
    assert_eq!(c.signal.redis_lease_ms, 3000);
    assert!(
        !c.to_redacted_toml().contains(":pw@"),
        "the URL (and its password) is redacted"
    );
    let bad = "[signal]\nredis_url = \"http://x\"\nredis_key_prefix = \"a b\"\nredis_timeout_ms = 1000\n\
               redis_lease_ms = 1500\nredis_inbox_max = 0\n";
    let errs = Config::load(Some(&file(bad)), &[]).unwrap_err();
    let keys: Vec<&str> = errs.iter().filter_map(|e| e.key.as_deref()).collect();
    for key in [
        "signal.redis_url",
        "signal.redis_key_prefix",
        "signal.redis_lease_ms",
        "signal.redis_inbox_max",
    ] {
        assert!(keys.contains(&key), "{key} in {keys:?}");
    }
}
