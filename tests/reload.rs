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
