use super::*;

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
    s.add_user("bob", "callbox", "hunter2", 1, "test").unwrap();
    assert!(matches!(
        s.add_user("bob", "callbox", "x", 1, "test"),
        Err(StoreError::Exists(_))
    ));
    assert!(matches!(
        s.add_user("123:x", "callbox", "x", 1, "test"),
        Err(StoreError::Invalid(_))
    ));
    let users = s.users("callbox").unwrap();
    assert_eq!(users[0].0, "bob");
    assert_eq!(
        users[0].1,
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
    s.add_api_key("janus", "k-0123456789abcdef", 1, "test").unwrap();
    assert_eq!(
        s.api_key_name("k-0123456789abcdef").unwrap().as_deref(),
        Some("janus")
    );
    assert_eq!(s.api_key_name("k-0123456789abcdeX").unwrap(), None);
    assert!(matches!(
        s.add_api_key("janus", "k-other-0123456789", 1, "t"),
        Err(StoreError::Exists(_))
    ));
    assert!(matches!(
        s.add_api_key("bad name", "k-0123456789abcdef0", 1, "t"),
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
    let id = s.add_ban(&net, "abuse", Some(1000), 10, "test").unwrap();
    s.add_ban(&"203.0.113.7".parse().unwrap(), "", None, 10, "test")
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
        s.add_api_key(&format!("key{i}"), &format!("k-0123456789abcdef-{i}"), i, "test")
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
            at: 100,
        },
        HistoryEvent::Created {
            alloc_id: 8,
            username: "bob".into(),
            client: "192.0.2.2:5000".into(),
            relay: "203.0.113.1:50002".into(),
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
    assert_eq!(rows[0].ended_at, None, "still open");
    assert_eq!(s.prune_history(150).unwrap(), 1);
    assert_eq!(s.allocation_history(0, 1000, 10).unwrap().len(), 1);
}
