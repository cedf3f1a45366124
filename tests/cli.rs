//! The `callbox` command line: configuration checking, credentials, zero-config start.

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use callbox_core::{Config, Secret, SecretSet};
use test_support::{CallboxProcess, run_with_timeout};

const BIN: &str = env!("CARGO_BIN_EXE_callbox");

fn callbox(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("JOURNAL_STREAM");
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_with_timeout(&mut cmd, Duration::from_secs(20))
}

fn repo_file(rel: &str) -> String {
    format!("{}/../../{rel}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_shipped_config_file_is_valid() {
    let dir = repo_file("config");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let (code, out) = callbox(&["check-config", "--config", path.to_str().unwrap()], &[]);
            assert_eq!(code, Some(0), "{}: {out}", path.display());
            n += 1;
        }
    }
    assert!(n >= 3, "config/ has the example files");
    // The full example documents every key: it parses to exactly the defaults.
    let text = std::fs::read_to_string(repo_file("config/callbox.toml")).unwrap();
    let file = callbox_core::config::ConfigFile {
        path: "callbox.toml".into(),
        text,
    };
    assert_eq!(Config::load(Some(&file), &[]).unwrap(), Config::default());
}

#[test]
fn check_config_names_key_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[turn]\nrealm = \"x\"\n\nuser_quota = -3\n").unwrap();
    let (code, out) = callbox(&["check-config", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("bad.toml:4:14"), "{out}");
    assert!(out.contains("turn.user_quota"), "{out}");

    std::fs::write(
        &path,
        "[turn]\nrelay_port_min = 9000\nrelay_port_max = 8000\n[tsl]\n",
    )
    .unwrap();
    let (code, out) = callbox(&["check-config", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(code, Some(2));
    assert!(
        out.contains("bad.toml:4:2") && out.contains("`tsl`"),
        "unknown section: {out}"
    );

    let (code, out) = callbox(&["check-config", "--set", "turn.relay_port_min=70000"], &[]);
    assert_eq!(code, Some(2));
    assert!(
        out.contains("flag --set turn.relay_port_min=70000") && out.contains("turn.relay_port_min"),
        "{out}"
    );

    let (code, out) = callbox(&["check-config"], &[("CALLBOX_TURN__USER_QUOTA", "many")]);
    assert_eq!(code, Some(2));
    assert!(
        out.contains("environment variable CALLBOX_TURN__USER_QUOTA"),
        "{out}"
    );

    let (code, out) = callbox(&["check-config", "--config", "/nonexistent/callbox.toml"], &[]);
    assert_eq!(code, Some(2));
    assert!(
        out.contains("/nonexistent/callbox.toml") && out.contains("cannot read"),
        "{out}"
    );
}

#[test]
fn precedence_file_then_env_then_flags_and_redaction() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[turn]\nrealm = \"file\"\nuser_quota = 1\ntotal_quota = 1\n[auth]\nsecrets = [\"sup3r-secret\"]\n",
    )
    .unwrap();
    let (code, out) = callbox(
        &[
            "check-config",
            "--print",
            "--config",
            path.to_str().unwrap(),
            "--set",
            "turn.user_quota=3",
        ],
        &[
            ("CALLBOX_TURN__USER_QUOTA", "2"),
            ("CALLBOX_TURN__REALM", "env.example"),
        ],
    );
    assert_eq!(code, Some(0), "{out}");
    let printed: Config = toml::from_str(&out.replace("\"<redacted>\"", "\"x\"")).unwrap();
    assert_eq!(printed.turn.realm, "env.example");
    assert_eq!(printed.turn.user_quota, 3);
    assert_eq!(printed.turn.total_quota, 1);
    assert!(
        !out.contains("sup3r-secret") && out.contains("<redacted>"),
        "{out}"
    );
}

#[test]
fn credentials_command_mints_with_the_state_secret() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().to_str().unwrap();
    let (code, out) = callbox(
        &[
            "credentials",
            "--state-dir",
            state,
            "--user",
            "alice",
            "--ttl",
            "600",
            "--set",
            "turn.public_host=turn.example.com",
            "--set",
            "turn.listen=[\"0.0.0.0:3478\"]",
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let username = v["username"].as_str().unwrap();
    let (expiry, user) = username.split_once(':').unwrap();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let expiry: u64 = expiry.parse().unwrap();
    assert!((now + 595..=now + 605).contains(&expiry));
    assert_eq!(user, "alice");
    assert_eq!(v["ttl"], 600);
    assert_eq!(v["iceServers"][0]["urls"][0], "stun:turn.example.com:3478");
    assert_eq!(
        v["iceServers"][1]["urls"][0],
        "turn:turn.example.com:3478?transport=udp"
    );
    assert_eq!(v["iceServers"][1]["credential"], v["password"]);
    assert!(v["expiresAt"].as_str().unwrap().ends_with('Z'));
    // The generated secret verifies it, the coturn way.
    let secret = std::fs::read_to_string(dir.path().join("turn-secret")).unwrap();
    let set = SecretSet::new(vec![Secret::new(secret.trim())]).unwrap();
    assert!(set.verify_password(username, v["password"].as_str().unwrap(), now));
    let (code, out) = callbox(&["credentials", "--state-dir", state, "--user", "bad user"], &[]);
    assert_ne!(code, Some(0), "{out}");
}

#[test]
fn serve_with_no_config_file_runs_on_defaults() {
    // Inside the test namespace ports 3478 and 9478 are free; `serve` with no file binds them.
    let dir = tempfile::tempdir().unwrap();
    let secret_path = dir.path().join("turn-secret");
    let mut secrets = Vec::new();
    for _run in 0..2 {
        let mut child = Command::new(BIN)
            .args(["serve", "--state-dir", dir.path().to_str().unwrap()])
            .env_remove("JOURNAL_STREAM")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut ready = false;
        for _ in 0..100 {
            std::thread::sleep(Duration::from_millis(100));
            if std::net::TcpStream::connect("127.0.0.1:9478").is_ok()
                && test_support::http_get("127.0.0.1:9478".parse().unwrap(), "/readyz").0 == 200
            {
                ready = true;
                break;
            }
        }
        let binding = ready && {
            let mut cmd = Command::new(test_support::coturn_tool("turnutils_stunclient"));
            cmd.arg("127.0.0.1");
            run_with_timeout(&mut cmd, Duration::from_secs(10))
                .1
                .contains("reflexive addr")
        };
        let _ = child.kill();
        let _ = child.wait();
        assert!(ready, "callbox serve did not come up on its defaults");
        assert!(binding, "no STUN binding on the default port 3478");
        secrets.push(std::fs::read_to_string(&secret_path).unwrap());
    }
    assert_eq!(
        secrets[0], secrets[1],
        "the generated secret is kept across restarts"
    );
    assert_eq!(secrets[0].len(), 64);
    let _ = CallboxProcess::start;
}
