//! SIGHUP re-reads the configuration: a change of the peer policy takes effect at once on a
//! live allocation, other changes are logged as waiting for a restart, and a configuration
//! with an error is refused (the error named in the log) while the running one stays.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use callbox_core::Secret;
use callbox_core::credentials::mint;
use test_support::{CallboxProcess, TurnClient};
use turn_proto::stun::Class;

const BIN: &str = env!("CARGO_BIN_EXE_callbox");

fn config(extra: &str) -> String {
    format!(
        "[turn]\nlisten = [\"127.0.0.1:0\"]\nhttp_listen = \"127.0.0.1:0\"\nrelay_ip = \"127.0.0.1\"\n\
         relay_port_min = 20000\nrelay_port_max = 30000\n{extra}"
    )
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Rewrites the process's configuration file and sends SIGHUP; waits for the `count`th
/// reload line.
fn reload(server: &CallboxProcess, text: &str, count: usize) -> String {
    std::fs::write(server.state_dir.path().join("test.toml"), text).unwrap();
    server.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let out = server.output();
        let seen = out.matches("configuration reloaded").count()
            + out.matches("the running configuration stays").count();
        if seen >= count {
            return out;
        }
        assert!(std::time::Instant::now() < deadline, "no reload logged:\n{out}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_peer_policy_changes_live_other_keys_wait_and_errors_are_refused() {
    let server = CallboxProcess::start(BIN, &config(""));
    let (user, pass) = mint(&Secret::new(server.secret()), "alice", now(), 600);
    let mut client = TurnClient::new(server.udp_v4(), &user, &pass, "callbox");
    assert_eq!(client.allocate().class, Class::Success);
    let peer = "127.0.0.1:9".parse().unwrap();
    assert_eq!(
        client.create_permission(&[peer]).code,
        Some(403),
        "loopback refused by default"
    );

    let out = reload(
        &server,
        &config("allow_peers = [\"127.0.0.1/32\"]\n[signal]\nroom_capacity = 4\n"),
        1,
    );
    let line = out
        .lines()
        .find(|l| l.contains("configuration reloaded"))
        .unwrap();
    assert!(line.contains("applied=turn.allow_peers"), "{line}");
    assert!(line.contains("at_next_restart=signal.room_capacity"), "{line}");
    assert_eq!(
        client.create_permission(&[peer]).class,
        Class::Success,
        "the same allocation, under the new policy"
    );

    // An error: refused with its key and line, and the running configuration stays.
    let out = reload(
        &server,
        &config("allow_peers = [\"127.0.0.1/32\"]\nuser_quota = -1\n"),
        2,
    );
    assert!(
        out.contains("configuration not reloaded") && out.contains("turn.user_quota"),
        "{out}"
    );
    assert!(out.contains("the running configuration stays"), "{out}");
    assert_eq!(client.create_permission(&[peer]).class, Class::Success);
    assert_eq!(server.http_get("/healthz").0, 200);
}

#[test]
fn secrets_static_users_and_the_log_level_change_live() {
    const OLD: &str = "first-shared-secret-0123456789abcdef";
    const NEW: &str = "second-shared-secret-0123456789abcdef";
    let auth = |secrets: &[&str], bob: &str, level: &str| {
        let list: Vec<String> = secrets.iter().map(|s| format!("\"{s}\"")).collect();
        config(&format!(
            "[general]\nlog_level = \"{level}\"\n[auth]\nsecrets = [{}]\n\
             static_users = [{{ name = \"bob\", password = \"{bob}\" }}]\n",
            list.join(", ")
        ))
    };
    // CALLBOX_LOG empty: the configuration decides the level.
    let server = CallboxProcess::start_with(
        BIN,
        &auth(&[OLD], "bob-password-one", "info"),
        &[],
        &[("CALLBOX_LOG", "")],
    );
    let rest = |secret: &str| {
        let (user, pass) = mint(&Secret::new(secret), "carol", now(), 600);
        TurnClient::new(server.udp_v4(), &user, &pass, "callbox").allocate()
    };
    assert_eq!(rest(OLD).class, Class::Success);
    assert_eq!(rest(NEW).code, Some(401));
    let mut bob = TurnClient::new(server.udp_v4(), "bob", "bob-password-one", "callbox");
    assert_eq!(bob.allocate().class, Class::Success);
    assert_eq!(bob.refresh(600).class, Class::Success);
    assert!(!server.output().contains("allocation refreshed"), "debug is off");

    let out = reload(&server, &auth(&[NEW], "bob-password-two", "debug"), 1);
    let line = out
        .lines()
        .find(|l| l.contains("configuration reloaded"))
        .unwrap();
    assert!(
        line.contains("applied=auth.secrets,auth.static_users,general.log_level"),
        "{line}"
    );
    // The access loop applies them within its next turn.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while rest(NEW).class != Class::Success {
        assert!(
            std::time::Instant::now() < deadline,
            "the new secret never verified:\n{}",
            server.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(rest(OLD).code, Some(401), "the old secret is gone");
    let mut bob2 = TurnClient::new(server.udp_v4(), "bob", "bob-password-two", "callbox");
    assert_eq!(bob2.allocate().class, Class::Success);
    assert_eq!(bob2.refresh(600).class, Class::Success);
    // The kick travels through each worker's control queue: it lands within a loop turn.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while bob.refresh(600).class == Class::Success {
        assert!(
            std::time::Instant::now() < deadline,
            "bob's allocation under the old password was not ended:\n{}",
            server.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut bob_old = TurnClient::new(server.udp_v4(), "bob", "bob-password-one", "callbox");
    assert_eq!(bob_old.allocate().code, Some(401));
    // Allocation events are logged by their own task: the line comes a moment later.
    assert!(
        server.wait_for_output("allocation refreshed", Duration::from_secs(5)),
        "debug is on"
    );

    // Moving secrets from the file to the store waits for a restart.
    let out = reload(
        &server,
        &config(
            "[general]\nlog_level = \"debug\"\n[auth]\nstatic_users = [{ name = \"bob\", password = \"bob-password-two\" }]\n",
        ),
        2,
    );
    let line = out
        .lines()
        .filter(|l| l.contains("configuration reloaded"))
        .nth(1)
        .unwrap();
    assert!(line.contains("at_next_restart=auth.secrets"), "{line}");
    assert_eq!(rest(NEW).class, Class::Success);
}
