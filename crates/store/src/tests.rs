use super::*;
use callbox_core::names::{ApiKeyName, BanReason, UserName};
use callbox_core::policy::Cidr;

fn user(name: &str) -> UserName {
    UserName::parse(name).unwrap()
}

fn key_name(name: &str) -> ApiKeyName {
    ApiKeyName::parse(name).unwrap()
}

fn reason(text: &str) -> BanReason {
    BanReason::parse(text).unwrap()
}

#[test]
fn migrates_fresh_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("callbox.db");
    {
        let s = Store::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        let mode: String = s.conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
    }
    let s = Store::open(&path).unwrap();
    assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
    assert!(s.integrity_ok().unwrap());
}

#[test]
fn refuses_a_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("callbox.db");
    {
        let s = Store::open(&path).unwrap();
        s.conn
            .execute("INSERT INTO schema_version (version) VALUES (999)", [])
            .unwrap();
    }
    assert!(matches!(
        Store::open(&path),
        Err(StoreError::TooNew { found: 999, .. })
    ));
}

#[test]
fn secret_rotation_with_overlap() {
    let mut s = Store::in_memory().unwrap();
    s.rotate_secret("first-secret-0123456789", 0, 100, "test")
        .unwrap();
    assert_eq!(s.active_secrets(100).unwrap().len(), 1);
    s.rotate_secret("second-secret-0123456789", 600, 200, "test")
        .unwrap();
    let active = s.active_secrets(300).unwrap();
    assert_eq!(active.len(), 2);
    assert_eq!(active[0].secret, "second-secret-0123456789", "the newest signs");
    let later = s.active_secrets(801).unwrap();
    assert_eq!(later.len(), 1, "the old one retired after the overlap");
    assert!(s.rotate_secret("short", 0, 900, "test").is_err());
    assert_eq!(s.audit_log(10).unwrap()[0].action, "secret.rotate");
}

#[test]
fn users_keep_only_the_long_term_key() {
    let s = Store::in_memory().unwrap();
    s.add_user(&user("bob"), "callbox", "hunter2", 1, "test").unwrap();
    assert!(matches!(
        s.add_user(&user("bob"), "callbox", "x", 1, "test"),
        Err(StoreError::Exists(_))
    ));
    // A REST-form name cannot reach the store: the name's type refuses it.
    assert!(UserName::parse("123:x").is_err());
    let users = s.users("callbox").unwrap();
    assert_eq!(users[0].name, "bob");
    assert_eq!(
        users[0].long_term_key,
        callbox_core::credentials::long_term_key("bob", "callbox", "hunter2")
    );
    let dump: Vec<String> = s
        .conn
        .prepare("SELECT quote(long_term_key) || name FROM turn_users")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert!(!dump.concat().contains("hunter2"));
    s.remove_user("bob", 2, "test").unwrap();
    assert!(matches!(
        s.remove_user("bob", 2, "test"),
        Err(StoreError::NotFound(_))
    ));
}

#[test]
fn api_keys_are_hashed() {
    let s = Store::in_memory().unwrap();
    s.add_api_key(&key_name("janus"), "k-0123456789abcdef", 1, "test")
        .unwrap();
    assert_eq!(
        s.api_key_name("k-0123456789abcdef").unwrap().as_deref(),
        Some("janus")
    );
    assert_eq!(s.api_key_name("k-0123456789abcdeX").unwrap(), None);
    assert!(matches!(
        s.add_api_key(&key_name("janus"), "k-other-0123456789", 1, "t"),
        Err(StoreError::Exists(_))
    ));
    // A bad name cannot reach the store: the name's type refuses it.
    assert!(ApiKeyName::parse("bad name").is_err());
    assert!(matches!(
        s.add_api_key(&key_name("short"), "k-0123", 1, "t"),
        Err(StoreError::Invalid(_))
    ));
    let stored: Vec<u8> = s
        .conn
        .query_row("SELECT key_sha256 FROM api_keys", [], |r| r.get(0))
        .unwrap();
    assert_eq!(stored.len(), 32);
    s.remove_api_key("janus", 2, "test").unwrap();
    assert_eq!(s.api_key_name("k-0123456789abcdef").unwrap(), None);
}

#[test]
fn bans_with_expiry() {
    let s = Store::in_memory().unwrap();
    let net: Cidr = "198.51.100.0/24".parse().unwrap();
    let id = s.add_ban(&net, &reason("abuse"), Some(1000), 10, "test").unwrap();
    s.add_ban(&"203.0.113.7".parse().unwrap(), &reason(""), None, 10, "test")
        .unwrap();
    let bans = s.active_bans(500).unwrap();
    assert_eq!(bans.len(), 2);
    assert!(bans[0].covers("198.51.100.9".parse().unwrap()));
    assert_eq!(s.active_bans(1000).unwrap().len(), 1, "expired");
    s.remove_ban(id, 20, "test").unwrap();
    assert!(matches!(
        s.remove_ban(id, 20, "test"),
        Err(StoreError::NotFound(_))
    ));
}

#[test]
fn online_backup_while_writing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("live.db")).unwrap();
    for i in 0..200 {
        s.add_api_key(
            &key_name(&format!("key{i}")),
            &format!("k-0123456789abcdef-{i}"),
            i,
            "test",
        )
        .unwrap();
    }
    let dest = dir.path().join("backup.db");
    s.backup(&dest).unwrap();
    let b = Store::open(&dest).unwrap();
    assert!(b.integrity_ok().unwrap());
    assert_eq!(
        b.api_key_name("k-0123456789abcdef-7").unwrap().as_deref(),
        Some("key7")
    );
}

#[test]
fn history_in_batches_and_retention() {
    let mut s = Store::in_memory().unwrap();
    s.record_history(&[
        HistoryEvent::Created {
            alloc_id: 7,
            username: "1:alice".into(),
            client: "192.0.2.1:5000".into(),
            relay: "203.0.113.1:50000".into(),
            transport: "tls".into(),
            at: 100,
        },
        HistoryEvent::Created {
            alloc_id: 8,
            username: "bob".into(),
            client: "192.0.2.2:5000".into(),
            relay: "203.0.113.1:50002".into(),
            transport: "udp".into(),
            at: 200,
        },
        HistoryEvent::Closed {
            alloc_id: 7,
            at: 160,
            reason: "Deleted".into(),
            packets_to_peer: 10,
            bytes_to_peer: 1000,
            packets_to_client: 9,
            bytes_to_client: 900,
        },
    ])
    .unwrap();
    let rows = s.allocation_history(0, 1000, 10).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].alloc_id, 7);
    assert_eq!(
        (
            rows[1].ended_at,
            rows[1].bytes_to_peer,
            rows[1].close_reason.as_deref()
        ),
        (Some(160), 1000, Some("Deleted"))
    );
    assert_eq!(
        (rows[0].transport.as_str(), rows[1].transport.as_str()),
        ("udp", "tls")
    );
    assert_eq!(rows[0].ended_at, None, "still open");
    assert_eq!(s.prune_history(150).unwrap(), 1);
    assert_eq!(s.allocation_history(0, 1000, 10).unwrap().len(), 1);
}

/// A row that the schema at `version` can hold, written the way that release wrote it.
fn fill_schema(path: &std::path::Path, version: usize) {
    let sql = match version {
        1 => {
            "INSERT INTO turn_secrets (secret, created_at) VALUES ('secret-from-v1-0123456789', 10);
             INSERT INTO turn_users (name, realm, long_term_key, created_at) VALUES ('v1user', 'callbox', zeroblob(16), 10);
             INSERT INTO api_keys (name, key_sha256, created_at) VALUES ('v1key', zeroblob(32), 10);
             INSERT INTO bans (network, reason, created_at) VALUES ('192.0.2.0/24', 'v1', 10);
             INSERT INTO allocation_history (alloc_id, username, client, relay, started_at) VALUES (7, '99:v1', '192.0.2.1:1', '198.51.100.1:2', 10);
             INSERT INTO audit_log (at, actor, action) VALUES (10, 'v1', 'user.add');"
        }
        2 => {
            "INSERT INTO session_history (room, peer_id, client, started_at, ended_at, close_reason) VALUES ('r', 'p', '192.0.2.1', 10, 20, 'left');
             INSERT INTO admin_token (id, token_sha256, created_at) VALUES (1, zeroblob(32), 10);"
        }
        // 3 rewrote close reasons; nothing new to hold.
        3 => "",
        4 => "INSERT INTO allocation_history (alloc_id, username, client, relay, transport, started_at) VALUES (8, '99:v4', '192.0.2.1:1', '198.51.100.1:2', 'tcp', 11);",
        v => panic!("add the rows schema version {v} holds to fill_schema"),
    };
    Store::execute_raw(path, sql).unwrap();
}

#[test]
fn migrates_a_database_made_by_every_earlier_schema() {
    for version in 1..MIGRATIONS.len() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("callbox.db");
        Store::create_at_version(&path, version).unwrap();
        for v in 1..=version {
            fill_schema(&path, v);
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(
            s.schema_version().unwrap(),
            MIGRATIONS.len() as i64,
            "from {version}"
        );
        assert!(s.integrity_ok().unwrap());
        // Everything written under the old schema is still there and usable.
        assert_eq!(
            s.active_secrets(20).unwrap()[0].secret,
            "secret-from-v1-0123456789"
        );
        assert_eq!(s.user_list().unwrap()[0].name, "v1user");
        assert_eq!(s.api_key_list().unwrap()[0].name, "v1key");
        assert_eq!(s.active_bans(20).unwrap()[0].reason, "v1");
        let history = s.allocation_history(0, 100, 10).unwrap();
        let v1 = history.iter().find(|r| r.alloc_id == 7).unwrap();
        assert_eq!(v1.transport, "udp", "rows from before TCP were UDP");
        assert_eq!(s.audit_log(10).unwrap().last().unwrap().actor, "v1");
        // And the new tables work.
        s.set_admin_token([1; 32], 30, "test").unwrap();
        assert_eq!(s.admin_token().unwrap(), Some([1; 32]));
    }
    // Every migration has its fill: a new migration without one fails above.
    fill_schema_covers(MIGRATIONS.len());
}

fn fill_schema_covers(versions: usize) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("all.db");
    Store::create_at_version(&path, versions).unwrap();
    for v in 1..=versions {
        fill_schema(&path, v);
    }
}

#[test]
fn sessions_history_pages_and_filters() {
    let mut s = Store::in_memory().unwrap();
    let rec = |room: &str, at: UnixSecs| SessionRecord {
        room: room.into(),
        peer_id: format!("p-{at}"),
        client: "192.0.2.1".into(),
        started_at: at,
        ended_at: at + 5,
        close_reason: "left".into(),
        messages_in: 3,
        messages_out: 4,
    };
    s.record_sessions(&[rec("a", 10), rec("b", 20), rec("a", 30)])
        .unwrap();
    let q = |filter: Option<&str>, limit, offset| HistoryQuery {
        filter: filter.map(str::to_string),
        limit,
        offset,
        ..HistoryQuery::default()
    };
    let all = s.session_history_page(&q(None, 10, 0)).unwrap();
    assert_eq!(all.iter().map(|r| r.started_at).collect::<Vec<_>>(), [30, 20, 10]);
    let a = s.session_history_page(&q(Some("a"), 10, 0)).unwrap();
    assert_eq!(a.len(), 2);
    let page2 = s.session_history_page(&q(None, 1, 1)).unwrap();
    assert_eq!(page2[0].started_at, 20);
    assert_eq!(s.prune_history(25).unwrap(), 2);
    assert_eq!(s.session_history_page(&q(None, 10, 0)).unwrap().len(), 1);
}

#[test]
fn allocation_history_filters_by_user() {
    let mut s = Store::in_memory().unwrap();
    let created = |id, user: &str, at| HistoryEvent::Created {
        alloc_id: id,
        username: user.into(),
        client: "192.0.2.1:1".into(),
        relay: "198.51.100.1:2".into(),
        transport: "udp".into(),
        at,
    };
    s.record_history(&[
        created(1, "alice", 10),
        created(2, "bob", 11),
        created(3, "alice", 12),
    ])
    .unwrap();
    let q = HistoryQuery {
        filter: Some("alice".into()),
        ..HistoryQuery::default()
    };
    let rows = s.allocation_history_page(&q).unwrap();
    assert_eq!(rows.iter().map(|r| r.alloc_id).collect::<Vec<_>>(), [3, 1]);
}

#[test]
fn secrets_overview_never_shows_values() {
    let mut s = Store::in_memory().unwrap();
    s.rotate_secret("first-secret-0123456789", 0, 100, "t").unwrap();
    s.rotate_secret("second-secret-0123456789", 50, 200, "t").unwrap();
    let o = s.secrets_overview(300).unwrap();
    assert_eq!(o.len(), 2);
    assert!(o[0].active && o[0].valid_until.is_none());
    assert!(!o[1].active && o[1].valid_until == Some(250));
    let c = s.counts(300).unwrap();
    assert_eq!(c.active_secrets, 1);
}

#[test]
fn api_key_digests_and_admin_token() {
    let s = Store::in_memory().unwrap();
    s.add_api_key(&key_name("svc"), "0123456789abcdef-key", 1, "t")
        .unwrap();
    let d = s.api_key_digests().unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].sha256.to_vec(), sha256(b"0123456789abcdef-key"));
    assert_eq!(d[0].name, "svc");
    assert_eq!(s.admin_token().unwrap(), None);
    s.set_admin_token([7; 32], 1, "t").unwrap();
    s.set_admin_token([8; 32], 2, "t").unwrap();
    assert_eq!(s.admin_token().unwrap(), Some([8; 32]));
    assert_eq!(s.audit_log(1).unwrap()[0].action, "admin_token.rotate");
}

#[test]
fn a_failed_change_leaves_no_audit_entry() {
    let s = Store::in_memory().unwrap();
    s.add_user(&user("bob"), "callbox", "pw", 1, "t").unwrap();
    let before = s.audit_log(100).unwrap().len();
    assert!(s.add_user(&user("bob"), "callbox", "pw", 2, "t").is_err());
    assert!(s.remove_user("nobody", 2, "t").is_err());
    assert_eq!(s.audit_log(100).unwrap().len(), before);
}

#[test]
fn migration_3_lower_cases_allocation_close_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("callbox.db");
    Store::create_at_version(&path, 2).unwrap();
    // What releases at schema 2 wrote: the relay's Debug names.
    let mut sql = String::new();
    for (id, reason) in [
        (1, "'Deleted'"),
        (2, "'Expired'"),
        (3, "'Kicked'"),
        (4, "'Shutdown'"),
        (5, "NULL"),
        (6, "'other'"),
    ] {
        sql.push_str(&format!(
            "INSERT INTO allocation_history (alloc_id, username, client, relay, started_at, ended_at, close_reason)
             VALUES ({id}, 'u', '192.0.2.1:1', '198.51.100.1:2', {id}, 100, {reason});"
        ));
    }
    Store::execute_raw(&path, &sql).unwrap();
    let s = Store::open(&path).unwrap();
    assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
    let mut rows = s.allocation_history(0, UnixSecs::MAX, 10).unwrap();
    rows.sort_by_key(|r| r.alloc_id);
    let reasons: Vec<Option<&str>> = rows.iter().map(|r| r.close_reason.as_deref()).collect();
    assert_eq!(
        reasons,
        [
            Some("deleted"),
            Some("expired"),
            Some("kicked"),
            Some("shutdown"),
            None,
            Some("other")
        ]
    );
}

#[test]
fn rows_that_do_not_parse_are_left_out_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("callbox.db");
    drop(Store::open(&path).unwrap());
    Store::execute_raw(
        &path,
        "INSERT INTO bans (network, reason, created_at) VALUES ('192.0.2.0/24', 'good', 10);
         INSERT INTO bans (network, reason, created_at) VALUES ('not a network', 'bad', 10);
         INSERT INTO bans (network, reason, created_at) VALUES ('198.51.100.0/24', 'before 1970', -5);",
    )
    .unwrap();
    let s = Store::open(&path).unwrap();
    let bans = s.active_bans(20).unwrap();
    assert_eq!(
        bans.iter().map(|b| b.reason.as_str()).collect::<Vec<_>>(),
        ["good"]
    );
}

#[test]
fn time_bounds_past_i64_mean_no_end() {
    let mut s = Store::in_memory().unwrap();
    s.record_history(&[HistoryEvent::Created {
        alloc_id: 1,
        username: "u".into(),
        client: "192.0.2.1:1".into(),
        relay: "198.51.100.1:2".into(),
        transport: "udp".into(),
        at: 10,
    }])
    .unwrap();
    assert_eq!(s.allocation_history(0, UnixSecs::MAX, 10).unwrap().len(), 1);
    assert!(s.active_secrets(UnixSecs::MAX).unwrap().is_empty());
    assert_eq!(s.prune_history(UnixSecs::MAX).unwrap(), 1);
}
