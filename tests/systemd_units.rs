//! The systemd units in `systemd/`: `systemd-analyze verify` prints nothing for them and
//! `systemd-analyze security --offline=true` rates each at or under 2.0 (coturn's and
//! eturnal's Debian units rate 9.0). And the binary's side of `Type=notify`: READY=1 once it
//! serves, watchdog pings, RELOADING=1 on SIGHUP, STOPPING=1 at shutdown, over a real
//! notification socket. Fails (never skips) without systemd-analyze.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use test_support::CallboxProcess;

const BIN: &str = env!("CARGO_BIN_EXE_callbox");
/// The highest overall exposure a unit may have.
const MAX_EXPOSURE: f64 = 2.0;

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel)
}

fn analyze(args: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("systemd-analyze is needed: apt-get install systemd");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The units as installed, with `ExecStart` pointing at the binary under test (verify
/// checks that the command exists), written to a fresh directory under the names systemd
/// would see: the template also as an instance.
fn units() -> (tempfile::TempDir, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let mut names = Vec::new();
    for (file, instance) in [
        ("callbox.service", None),
        ("callbox@.service", Some("callbox@turn.service")),
    ] {
        let text = std::fs::read_to_string(repo_file(&format!("systemd/{file}"))).unwrap();
        assert!(
            text.contains("ExecStart=/usr/bin/callbox "),
            "{file} runs the packaged binary"
        );
        let text = text.replace("/usr/bin/callbox", BIN);
        std::fs::write(dir.path().join(file), &text).unwrap();
        names.push(file.to_string());
        if let Some(instance) = instance {
            std::fs::write(dir.path().join(instance), &text).unwrap();
            names.push(instance.to_string());
        }
    }
    (dir, names)
}

#[test]
fn verify_prints_nothing() {
    let (dir, names) = units();
    for name in &names {
        let (ok, out) = analyze(&["verify", "--man=no", &format!("./{name}")], dir.path());
        assert!(ok && out.trim().is_empty(), "{name}: {out}");
    }
}

#[test]
fn every_unit_is_hardened_to_the_threshold() {
    let (dir, names) = units();
    for name in names.iter().filter(|n| !n.ends_with("@.service")) {
        let (_, out) = analyze(&["security", "--offline=true", &format!("./{name}")], dir.path());
        let exposure: f64 = out
            .lines()
            .find_map(|l| l.split("Overall exposure level for").nth(1))
            .and_then(|rest| rest.split(':').nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name}: no exposure level in: {out}"));
        assert!(
            exposure <= MAX_EXPOSURE,
            "{name}: {exposure} > {MAX_EXPOSURE}:\n{out}"
        );
    }
}

#[test]
fn units_notify_watch_and_keep_their_state_where_the_package_puts_it() {
    for file in ["callbox.service", "callbox@.service"] {
        let text = std::fs::read_to_string(repo_file(&format!("systemd/{file}"))).unwrap();
        for line in [
            "Type=notify",
            "WatchdogSec=",
            "StateDirectory=callbox",
            "ConfigurationDirectory=callbox",
            "LimitNOFILE=",
            "AmbientCapabilities=CAP_NET_BIND_SERVICE",
            "ExecReload=/bin/sh -c \"kill -HUP ${MAINPID}\"",
            "--state-dir /var/lib/callbox",
            "--config /etc/callbox/callbox.toml",
        ] {
            assert!(text.contains(line), "{file} lacks {line}");
        }
    }
}

/// Reads notification datagrams until one contains `what` (or `within` passes).
fn wait_for(sock: &UnixDatagram, what: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf)
            && String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == what)
        {
            return true;
        }
    }
    false
}

#[test]
fn the_binary_notifies_ready_pings_the_watchdog_and_says_reloading_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let socket = path.display().to_string();
    let server = CallboxProcess::start_with(
        BIN,
        "[turn]\nlisten = [\"127.0.0.1:0\"]\nhttp_listen = \"127.0.0.1:0\"\nrelay_ip = \"127.0.0.1\"\n",
        &[],
        &[("NOTIFY_SOCKET", socket.as_str()), ("WATCHDOG_USEC", "400000")],
    );
    // The ready line is printed when everything is bound; READY=1 follows it.
    assert!(wait_for(&sock, "READY=1", Duration::from_secs(5)));
    // Pings at half the 400 ms interval, several of them.
    for _ in 0..3 {
        assert!(wait_for(&sock, "WATCHDOG=1", Duration::from_secs(2)));
    }
    server.signal("HUP");
    assert!(wait_for(&sock, "RELOADING=1", Duration::from_secs(5)));
    assert!(
        wait_for(&sock, "READY=1", Duration::from_secs(5)),
        "ready again after the reload"
    );
    server.signal("TERM");
    assert!(wait_for(&sock, "STOPPING=1", Duration::from_secs(5)));
}
